//! The socketmap server: accepts Postfix connections on TCP and unix sockets and
//! answers each request in order. A connection cap applies back-pressure (further
//! connections wait in the kernel's accept queue), and a connection waiting for a
//! slot makes idle ones close, so silent clients cannot lock Postfix out. A malformed
//! request closes only its own connection, and so does a client that stays silent
//! too long (see `connection::wait_limit`). On shutdown, accepting stops, idle connections close, and the
//! request in progress on each connection is answered first.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::answer::Reply;
use crate::config::ListenAddr;
use crate::protocol::codec::parse_request;
use crate::server::connection::{Closed, Connection, Next, Wake};
use crate::server::state::State;

/// A bound listener.
pub enum Listener {
    Tcp(TcpListener),
    /// A unix socket we created (and remove on shutdown).
    Unix(UnixListener, PathBuf),
    /// A unix socket systemd passed us (systemd owns the file).
    Activated(UnixListener, PathBuf),
}

impl Listener {
    /// Binds a configured address. A stale unix socket file is replaced; the socket
    /// gets `mode`.
    pub async fn bind(addr: &ListenAddr, mode: u32) -> std::io::Result<Listener> {
        match addr {
            ListenAddr::Tcp(a) => Ok(Listener::Tcp(TcpListener::bind(a).await?)),
            ListenAddr::Unix(path) => {
                crate::remove_stale_socket(path)?;
                let l = UnixListener::bind(path)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
                Ok(Listener::Unix(l, path.clone()))
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "tcp".into()),
            Listener::Unix(_, p) => format!("unix:{}", p.display()),
            Listener::Activated(_, p) => format!("unix:{} (socket-activated)", p.display()),
        }
    }
}

/// The connection slots, shared by every listener.
struct Slots {
    limit: Arc<Semaphore>,
    /// Signalled while a new connection waits for a slot: connections idle for
    /// [`EVICT_IDLE_AFTER`] or longer then close, so that silent connections holding
    /// every slot cannot keep a real client waiting for the whole idle timeout.
    pressure: Notify,
}

use crate::server::connection::EVICT_IDLE_AFTER;

/// Serves until `stop` is cancelled, then drains connections and returns.
pub async fn run(listeners: Vec<Listener>, ctx: Arc<State>, stop: CancellationToken) {
    let max = ctx.config().server.max_connections;
    let slots = Arc::new(Slots {
        limit: Arc::new(Semaphore::new(max.get())),
        pressure: Notify::new(),
    });
    let mut accept_tasks = JoinSet::new();
    let mut unix_paths = Vec::new();
    for listener in listeners {
        if let Listener::Unix(_, p) = &listener {
            unix_paths.push(p.clone());
        }
        accept_tasks.spawn(accept_loop(
            listener,
            ctx.clone(),
            slots.clone(),
            stop.clone(),
        ));
    }
    stop.cancelled().await;
    tracing::info!("shutting down: no new connections, finishing requests in progress");
    // Each accept loop returns after all its connections have finished.
    while accept_tasks.join_next().await.is_some() {}
    for p in unix_paths {
        let _ = std::fs::remove_file(p);
    }
}

async fn accept_loop(
    listener: Listener,
    ctx: Arc<State>,
    slots: Arc<Slots>,
    stop: CancellationToken,
) {
    let mut conns = JoinSet::new();
    loop {
        // With every slot taken, one more connection is accepted and waits for a slot
        // (the rest wait in the kernel's queue: back-pressure), while idle connections
        // are asked to make room.
        let free = slots.limit.clone().try_acquire_owned().ok();
        let accepted = tokio::select! {
            a = accept(&listener) => a,
            () = stop.cancelled() => break,
        };
        let permit = match free {
            Some(p) => p,
            None => match wait_for_slot(&slots, &stop).await {
                Some(p) => p,
                None => break,
            },
        };
        match accepted {
            Ok(Conn::Tcp(s)) => {
                let _ = s.set_nodelay(true);
                conns.spawn(serve_conn(
                    s,
                    ctx.clone(),
                    slots.clone(),
                    stop.clone(),
                    permit,
                ));
            }
            Ok(Conn::Unix(s)) => {
                conns.spawn(serve_conn(
                    s,
                    ctx.clone(),
                    slots.clone(),
                    stop.clone(),
                    permit,
                ));
            }
            Err(e) => {
                // EMFILE and friends: log, pause briefly, keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
        // Reap finished connections so the set does not grow without bound.
        while conns.try_join_next().is_some() {}
    }
    while conns.join_next().await.is_some() {}
}

/// Waits for a free slot, asking idle connections to close once a second meanwhile.
/// `None` at shutdown.
async fn wait_for_slot(slots: &Slots, stop: &CancellationToken) -> Option<OwnedSemaphorePermit> {
    loop {
        slots.pressure.notify_waiters();
        tokio::select! {
            p = slots.limit.clone().acquire_owned() => return p.ok(),
            () = tokio::time::sleep(EVICT_IDLE_AFTER) => {}
            () = stop.cancelled() => return None,
        }
    }
}

enum Conn {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> std::io::Result<Conn> {
    match listener {
        Listener::Tcp(l) => l.accept().await.map(|(s, _)| Conn::Tcp(s)),
        Listener::Unix(l, _) | Listener::Activated(l, _) => {
            l.accept().await.map(|(s, _)| Conn::Unix(s))
        }
    }
}

/// Serves one connection: requests in order, each answered before the next is read.
async fn serve_conn<S>(
    stream: S,
    ctx: Arc<State>,
    slots: Arc<Slots>,
    stop: CancellationToken,
    _permit: OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = ctx.config();
    let metrics = ctx.service.metrics().clone();
    metrics.server.connections_open.inc();
    let _open = GaugeGuard(metrics.server.connections_open.clone());
    let mut conn = Connection::new(stream, &config.server);
    let wake = Wake {
        pressure: &slots.pressure,
        stop: &stop,
    };
    loop {
        let payload = match conn.next_request(&wake).await {
            Next::Request(payload) => payload,
            Next::Closed(reason) => {
                if let Some(why) = reason {
                    count_closed(&metrics, why);
                }
                return;
            }
            Next::Malformed(e) => {
                metrics.server.malformed_requests.inc();
                tracing::warn!(error = %e, "malformed socketmap request; closing the connection");
                return;
            }
        };
        let reply = match parse_request(&payload) {
            Ok(request) => answer(&ctx, &request).await,
            // A whole netstring whose key is not UTF-8 (Latin-1 from an old client,
            // say) names no domain this daemon could have a policy for: answered
            // NOTFOUND like any key without a policy, and the connection stays open.
            Err(crate::protocol::codec::CodecError::NotUtf8) => {
                tracing::debug!("socketmap key is not UTF-8; answering NOTFOUND");
                crate::answer::render::not_found(crate::answer::render::Format::Postfix)
            }
            Err(e) => {
                metrics.server.malformed_requests.inc();
                tracing::warn!(error = %e, "malformed socketmap request; closing the connection");
                return;
            }
        };
        if conn.send(&reply).await.is_err() {
            return;
        }
    }
}

/// Answers one parsed request and records it in the metrics.
async fn answer(ctx: &State, request: &crate::protocol::codec::Request) -> Reply {
    let metrics = ctx.service.metrics();
    let started = Instant::now();
    metrics.server.requests_in_flight.inc();
    // The zone options are read per request, so a reload applies at once.
    let current = ctx.config();
    let zone = current.zone(&request.map);
    let (reply, outcome) = ctx
        .answer(&request.key, &zone, current.deadline(&zone))
        .await;
    metrics.server.requests_in_flight.dec();
    let zone_label = if current.zones.contains_key(&request.map) {
        request.map.as_str()
    } else {
        "default"
    };
    metrics
        .server
        .lookups
        .with_label_values(&[zone_label, reply.kind().as_str(), outcome.as_str()])
        .inc();
    metrics
        .server
        .lookup_duration
        .observe(started.elapsed().as_secs_f64());
    tracing::debug!(map = %request.map, key = %request.key, cache = outcome.as_str(), reply = reply.kind().as_str(), "lookup");
    reply
}

fn count_closed(metrics: &crate::metrics::Metrics, why: Closed) {
    metrics
        .server
        .connections_closed
        .with_label_values(&[why.as_str()])
        .inc();
    tracing::debug!(reason = why.as_str(), "closing a silent connection");
}

/// Decrements a gauge when dropped.
struct GaugeGuard(prometheus::IntGauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
