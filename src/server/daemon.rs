//! Assembling the long-running service: cache store, discovery, policy service,
//! listeners, refresher, and the one way it shuts down.
//!
//! Shutdown: one cancellation token reaches the socketmap listener, the HTTP listener
//! and the refresher. Accepting stops, idle connections close, the refresher starts
//! nothing new; in-flight lookups and discoveries get [`SHUTDOWN_SETTLE`] to finish,
//! then running discoveries are abandoned (their results would only have been cached)
//! and the cache is flushed. So stopping takes a bounded time, well inside systemd's
//! `TimeoutStopSec`, whatever the network does.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::cache::policy_cache::{PolicyService, ServiceSettings};
use crate::cache::redis_cache::RedisCache;
use crate::cache::store::guard::Reopen;
use crate::cache::store::{GuardedStore, PolicyStore, SledStore, StoreError, Unavailable};
use crate::clock::Clock;
use crate::config::{CacheBackend, Config};
use crate::dane::verdict_cache::{DaneService, DaneSettings};
use crate::metrics::Metrics;
use crate::mtasts::discovery::{Discoverer, DiscoveryOptions};
use crate::net::SetupError;
use crate::server::socketmap::{self, Listener};
use crate::server::state::{LogReloader, State};

/// How long in-flight work may take to finish at shutdown before it is abandoned.
pub const SHUTDOWN_SETTLE: Duration = Duration::from_secs(5);

/// Optional parts of a daemon; the defaults bind `server.listen`, open the cache at
/// `cache.path`, and have no configuration file to reload.
#[derive(Default)]
pub struct Parts {
    /// Listeners passed in (systemd socket activation) instead of `server.listen`.
    pub activated: Option<Vec<Listener>>,
    /// The configuration file, re-read on reload.
    pub config_path: Option<PathBuf>,
    /// Applies a new log level on reload.
    pub log: Option<LogReloader>,
    /// A store to use instead of the sled cache at `cache.path` (it is guarded like
    /// any store: its failures and panics never reach the daemon).
    pub store: Option<Arc<dyn PolicyStore>>,
    /// DANE settings already resolved (by [`crate::setup::prepare`]); else resolved
    /// here from the configuration.
    pub dane: Option<DaneSettings>,
    /// The discoverer already built (by [`crate::setup::prepare`]); else built here
    /// from the discovery options.
    pub discoverer: Option<Discoverer>,
    /// A TLSRPT store to use instead of the sled one at `tlsrpt.path`.
    pub tlsrpt_store: Option<Arc<dyn crate::tlsrpt::store::ReportStore>>,
}

/// Remembered DANE verdicts, saved beside the policies in the cache directory.
pub const DANE_VERDICTS_FILE: &str = "dane-verdicts.json";

/// Saves DANE verdicts every `every` until `stop`, off the async threads.
async fn save_dane_verdicts(dane: Arc<DaneService>, every: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let d = dane.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || d.save()).await {
            tracing::warn!(error = %e, "cannot save DANE verdicts");
        }
    }
}

/// Opens the sled cache at `path`; one that cannot be opened (an error, or a panic
/// inside sled on a damaged file) is moved aside to `PATH.broken-TIMESTAMP`, counted,
/// logged in one line, and replaced by an empty one.
pub fn open_sled(path: &Path, metrics: &Metrics) -> Result<Arc<dyn PolicyStore>, StoreError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| {
            StoreError::Backend(
                crate::storage::Store::Policies,
                format!("cannot create {}: {e}", parent.display()),
            )
        })?;
    }
    let (store, moved) = SledStore::open_or_recover(path)?;
    if let Some((aside, why)) = moved {
        metrics.cache.cache_moved_aside.inc();
        tracing::error!(cache = %path.display(), moved_to = %aside.display(), reason = %why, "cache could not be opened; moved it aside and started with an empty cache");
    }
    Ok(Arc::new(store))
}

/// How a daemon stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// In-flight work finished within [`SHUTDOWN_SETTLE`]; otherwise it was abandoned.
    pub settled: bool,
    /// The cache was flushed to disk.
    pub flushed: bool,
    /// From the shutdown signal to the end of the flush.
    pub elapsed: Duration,
}

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("cannot set up metrics: {0}")]
    Metrics(String),
    #[error("cannot set up the shared cache: {0}")]
    Redis(#[from] crate::redis::RedisError),
    #[error("cannot listen on {addr}: {message}")]
    Listen { addr: String, message: String },
}

/// Binds every `server.listen` address (a stale unix socket is replaced; unix sockets
/// get `server.socket_mode`).
async fn bind_socketmap(config: &Config) -> Result<Vec<Listener>, DaemonError> {
    let mut listeners = Vec::new();
    for addr in &config.server.listen {
        let l = Listener::bind(addr, config.server.socket_mode.0)
            .await
            .map_err(|e| listen_error(addr, &e))?;
        listeners.push(l);
    }
    Ok(listeners)
}

fn listen_error(addr: &impl std::fmt::Display, e: &std::io::Error) -> DaemonError {
    DaemonError::Listen {
        addr: addr.to_string(),
        message: crate::io_error_text(e),
    }
}

/// A daemon ready to serve: its shared state and bound listeners.
pub struct Daemon {
    pub state: Arc<State>,
    pub listeners: Vec<Listener>,
    /// Metrics and admin API, unless `metrics.listen` is empty.
    pub metrics_listener: Option<tokio::net::TcpListener>,
    /// The TLSRPT collector's socket, with `[tlsrpt] enable`.
    pub tlsrpt_socket: Option<tokio::net::UnixDatagram>,
}

impl Daemon {
    /// Opens the cache (moving a broken one aside), sets up discovery and binds every
    /// listener. `opts` and `clock` are the library's test hooks; the binary passes
    /// `DiscoveryOptions::from_config` and the system clock.
    pub async fn build(
        config: Config,
        opts: DiscoveryOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Daemon, DaemonError> {
        Self::build_with(config, opts, clock, Parts::default()).await
    }

    /// Like [`Daemon::build`], with optional parts.
    pub async fn build_with(
        config: Config,
        opts: DiscoveryOptions,
        clock: Arc<dyn Clock>,
        parts: Parts,
    ) -> Result<Daemon, DaemonError> {
        config.validate()?;
        let path = config.cache.resolved_path().ok_or_else(|| {
            crate::config::ConfigError::from(crate::config::Problem {
                setting: "cache.path",
                message: "no default location; set it".into(),
            })
        })?;
        let metrics = Arc::new(
            crate::metrics::Metrics::new().map_err(|e| DaemonError::Metrics(e.to_string()))?,
        );
        let store = policy_store(parts.store, &path, &metrics);
        let dane_settings = match parts.dane {
            Some(settings) => settings,
            None => DaneSettings::resolve(&config.dane, &opts.resolver)?,
        };
        let dane = DaneService::new(dane_settings, clock.clone(), metrics.clone());
        dane.start();
        let restored = dane.restore(path.join(DANE_VERDICTS_FILE));
        if restored > 0 {
            tracing::info!(verdicts = restored, "DANE verdicts restored");
        }
        let discoverer = match parts.discoverer {
            Some(discoverer) => discoverer,
            None => Discoverer::new(opts)?,
        };
        let settings = ServiceSettings::new(config.cache.clone());
        let service =
            PolicyService::new(discoverer, store, clock.clone(), settings, metrics.clone());
        if config.cache.backend == CacheBackend::Redis {
            // Connects lazily: the daemon starts and serves with Redis down.
            let redis = crate::redis::Redis::new(&config.cache.redis, metrics)?;
            service.share_with(RedisCache::new(redis, &config.cache.redis));
            tracing::info!(prefix = %config.cache.redis.prefix, "policies shared with the fleet through Redis");
        }
        let listeners = match parts.activated {
            Some(l) => l,
            None => bind_socketmap(&config).await?,
        };
        let metrics_listener = bind_metrics(&config).await?;
        // Bound by now: said before "ready", which is the signal that all of them are.
        for l in &listeners {
            tracing::info!(listen = %l.describe(), "listening");
        }
        if let Some(addr) = metrics_listener.as_ref().and_then(|l| l.local_addr().ok()) {
            tracing::info!(listen = %addr, "metrics and admin API listening");
        }
        let (tlsrpt, tlsrpt_socket) = start_tlsrpt(&config, &service, clock, parts.tlsrpt_store);
        tracing::info!(cache = %path.display(), "mta-stsd ready");
        Ok(Daemon {
            state: State::new(service, dane, tlsrpt, config, parts.config_path, parts.log),
            listeners,
            metrics_listener,
            tlsrpt_socket,
        })
    }

    /// The addresses of the bound TCP socketmap listeners (useful with port 0).
    pub fn tcp_addrs(&self) -> Vec<std::net::SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| match l {
                Listener::Tcp(t) => t.local_addr().ok(),
                _ => None,
            })
            .collect()
    }

    /// The address of the metrics and admin listener, if any.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` resolves, then stops as the module documentation says.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Stopped {
        let stop = CancellationToken::new();
        let service = self.state.service.clone();
        let dane = self.state.dane.clone();
        let dane_saver = tokio::spawn(save_dane_verdicts(
            dane.clone(),
            self.state.config().cache.refresh_interval,
            stop.clone(),
        ));
        // Serve at once; bring the rest of the cache into memory meanwhile.
        let loader = {
            let service = service.clone();
            tokio::task::spawn_blocking(move || service.load())
        };
        // Everything but the socketmap server stops on the same token and is waited
        // for (or abandoned) together.
        let mut background = vec![tokio::spawn(crate::cache::refresher::run(
            service.clone(),
            stop.clone(),
        ))];
        if let Some(shared) = service.shared().cloned() {
            let held = service.clone();
            background.push(tokio::spawn(crate::cache::fleet::share_again(
                shared.clone(),
                move |domain| held.cached(domain),
                service.metrics().clone(),
                stop.clone(),
            )));
            let service = service.clone();
            background.push(tokio::spawn(shared.run_subscriber(
                move |event| {
                    let service = service.clone();
                    async move { service.apply_fleet_event(event).await }
                },
                stop.clone(),
            )));
        }
        if let (Some(tlsrpt), Some(socket)) = (self.state.tlsrpt.clone(), self.tlsrpt_socket) {
            background.push(tokio::spawn(tlsrpt.clone().collect(socket, stop.clone())));
            background.push(tokio::spawn(tlsrpt.send_loop(stop.clone())));
        }
        if let Some(l) = self.metrics_listener {
            background.push(tokio::spawn(crate::server::http::run(
                l,
                self.state.clone(),
                stop.clone(),
            )));
        }
        let mut server = tokio::spawn(socketmap::run(self.listeners, self.state, stop.clone()));
        shutdown.await;
        let started = Instant::now();
        stop.cancel();
        let settle = async {
            let _ = (&mut server).await;
            for task in &mut background {
                let _ = task.await;
            }
            service.settle().await;
        };
        let settled = tokio::time::timeout(SHUTDOWN_SETTLE, settle).await.is_ok();
        if !settled {
            abandon(&service, &mut server, &background).await;
        }
        if !loader.is_finished() {
            tracing::info!("shutdown while the cache was still loading");
        }
        let flushed = service.flush();
        dane_saver.abort();
        if let Err(e) = tokio::task::spawn_blocking(move || dane.save())
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        {
            tracing::warn!(error = %e, "cannot save DANE verdicts");
        }
        let elapsed = started.elapsed();
        tracing::info!(?elapsed, settled, flushed, "stopped");
        Stopped {
            settled,
            flushed,
            elapsed,
        }
    }
}

/// The policy store: one the caller gives (tests), or the sled store at `path`,
/// guarded; a store that cannot be opened stands in as unavailable while the guard
/// retries, so the daemon serves from memory.
fn policy_store(
    given: Option<Arc<dyn PolicyStore>>,
    path: &Path,
    metrics: &Arc<Metrics>,
) -> Arc<dyn PolicyStore> {
    if let Some(store) = given {
        return Arc::new(GuardedStore::new(store, None, metrics.clone()));
    }
    let reopen: Reopen = {
        let (path, metrics) = (path.to_owned(), metrics.clone());
        Box::new(move || open_sled(&path, &metrics))
    };
    let store = open_sled(path, metrics).unwrap_or_else(|e| {
        tracing::error!(cache = %path.display(), error = %e, "cannot open or recreate the cache; serving from memory and retrying");
        Arc::new(Unavailable(e.to_string()))
    });
    Arc::new(GuardedStore::new(store, Some(reopen), metrics.clone()))
}

/// The metrics and admin API listener, when `[metrics] listen` names one.
async fn bind_metrics(config: &Config) -> Result<Option<tokio::net::TcpListener>, DaemonError> {
    let Some(addr) = config.metrics.addr() else {
        return Ok(None);
    };
    tokio::net::TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|e| listen_error(&addr, &e))
}

/// TLSRPT's service and socket, with `[tlsrpt] enable`. Reports are secondary to
/// answering Postfix: a store or socket that cannot be opened is logged and leaves
/// TLSRPT off, never stops the daemon (which would defer mail).
fn start_tlsrpt(
    config: &Config,
    service: &Arc<PolicyService>,
    clock: Arc<dyn Clock>,
    store: Option<Arc<dyn crate::tlsrpt::store::ReportStore>>,
) -> (
    Option<Arc<crate::tlsrpt::collector::Tlsrpt>>,
    Option<tokio::net::UnixDatagram>,
) {
    let t = &config.tlsrpt;
    if !t.enable {
        return (None, None);
    }
    let mut damage = None;
    let store = match store {
        Some(store) => store,
        None => {
            let Some(path) = config.cache.tlsrpt_path(t) else {
                return (None, None);
            };
            match crate::tlsrpt::salvage::open(&path) {
                Ok((s, found)) => {
                    if let Some(d) = found {
                        let message = d.message(&path);
                        tracing::error!(path = %path.display(), lost = d.lost, kept = d.kept, moved_to = %d.aside.display(), "{message}");
                        service.metrics().tlsrpt.store_lost.set(d.lost as i64);
                        damage = Some(message);
                    }
                    Arc::new(s)
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot open the TLSRPT report store; TLSRPT is off until restart");
                    return (None, None);
                }
            }
        }
    };
    let socket = match crate::tlsrpt::socket::bind(t) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(socket = %t.socket.display(), error = %crate::io_error_text(&e), "cannot bind the TLSRPT socket; TLSRPT is off until restart");
            return (None, None);
        }
    };
    tracing::info!(socket = %t.socket.display(), "TLSRPT datagrams collected");
    let http: crate::tlsrpt::collector::HttpClient = {
        let service = service.clone();
        Box::new(move || service.http_client())
    };
    let known: crate::tlsrpt::collector::KnownFailures = {
        let service = service.clone();
        Box::new(move |domain| known_failure(&service, domain))
    };
    let fleet = service.shared().map(|shared| {
        Arc::new(crate::tlsrpt::ledger::FleetReports::new(
            shared.redis().clone(),
            t.keep_days.get() as u64,
        ))
    });
    if fleet.is_some() {
        tracing::info!(
            "TLSRPT counters shared with the fleet through Redis; one daemon sends each report"
        );
    }
    let links = crate::tlsrpt::collector::Links {
        http,
        known,
        fleet,
        damage,
    };
    let tlsrpt = crate::tlsrpt::collector::Tlsrpt::new(
        t.clone(),
        store,
        clock,
        service.metrics().clone(),
        links,
    );
    (Some(tlsrpt), Some(socket))
}

/// Whether `domain` is answered "no policy" now because its published policy could
/// not be used: no valid policy, the back-off after a failed fetch (RFC 8461 §3.3)
/// still running, and that failure recorded (a TXT record without a policy clears it).
fn known_failure(
    service: &PolicyService,
    domain: &str,
) -> Option<(crate::tlsrpt::known::PolicyFailure, String)> {
    let entry = service.cached(domain)?;
    let now = service.now();
    if entry.valid_policy(now).is_some() || !entry.is_negative(now) {
        return None;
    }
    let failure = entry.failure.as_ref()?;
    let kind = crate::tlsrpt::known::PolicyFailure::of(failure.class)?;
    Some((kind, format!("{}: {}", failure.class, failure.message)))
}

/// Shutdown took longer than `SHUTDOWN_SETTLE`: abandon the discoveries still running,
/// so that lookups waiting on them answer at once, and stop the tasks left.
async fn abandon(
    service: &PolicyService,
    server: &mut tokio::task::JoinHandle<()>,
    background: &[tokio::task::JoinHandle<()>],
) {
    tracing::warn!(
        discoveries = service.inflight(),
        settle = ?SHUTDOWN_SETTLE,
        "shutdown: abandoning work still running"
    );
    service.abort_discoveries();
    // (A task the settle step already saw finish must not be awaited again.)
    if !server.is_finished()
        && tokio::time::timeout(Duration::from_secs(1), &mut *server)
            .await
            .is_err()
    {
        server.abort();
    }
    for task in background {
        task.abort();
    }
}
