//! One socketmap connection's framing and timing: reading whole netstrings, the idle
//! and read limits, giving way to a connection that waits for a slot, and writing
//! replies. What a request means and how it is answered is the server's business.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::sync::CancellationToken;

use crate::answer::Reply;
use crate::config::ServerConfig;
use crate::protocol::codec::{CodecError, NetstringCodec};

/// How long a connection must have been idle to be closed for a waiting one.
pub const EVICT_IDLE_AFTER: Duration = Duration::from_secs(1);

/// Why a connection ended early; the label of `mta_stsd_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// No request began within `server.idle_timeout`.
    Idle,
    /// A request began but did not complete within `server.read_timeout`.
    Slow,
    /// Idle while a new connection waited for a slot.
    Evicted,
}

impl Closed {
    pub fn as_str(self) -> &'static str {
        match self {
            Closed::Idle => "idle_timeout",
            Closed::Slow => "read_timeout",
            Closed::Evicted => "evicted",
        }
    }
}

/// How long to wait for more bytes: what is left of the idle timeout (counted from the
/// last reply, or the connection's start) while no request has begun, otherwise what
/// is left of the read timeout counted from the request's first byte.
/// Postfix's socketmap client sends a request in one write and closes a connection it
/// has not used for 10 s, so neither limit costs a real client anything; they stop a
/// local process from holding every connection slot with silent connections.
fn wait_limit(
    request_began: Option<Instant>,
    idle_since: Instant,
    idle: Duration,
    read: Duration,
    now: Instant,
) -> (Duration, Closed) {
    match request_began {
        None => (
            idle.saturating_sub(now.saturating_duration_since(idle_since)),
            Closed::Idle,
        ),
        Some(t) => (
            read.saturating_sub(now.saturating_duration_since(t)),
            Closed::Slow,
        ),
    }
}

/// What wakes a connection waiting for its next request besides the client.
pub struct Wake<'a> {
    /// Notified while a new connection waits for a slot.
    pub pressure: &'a Notify,
    /// Cancelled at shutdown.
    pub stop: &'a CancellationToken,
}

/// What came of waiting for the next request.
pub enum Next {
    /// A whole netstring's payload.
    Request(BytesMut),
    /// The connection ends: the client closed it, an I/O error, shutdown (no reason),
    /// or a limit (the reason, for the metrics).
    Closed(Option<Closed>),
    /// Bytes that are not a netstring (or one over the size limit).
    Malformed(CodecError),
}

/// A socketmap connection.
pub struct Connection<S> {
    stream: S,
    codec: NetstringCodec,
    buf: BytesMut,
    out: BytesMut,
    idle: Duration,
    read: Duration,
    /// When the first byte of the request now in `buf` arrived.
    request_began: Option<Instant>,
    /// When the connection last became idle (its start, or the last reply).
    idle_since: Instant,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub fn new(stream: S, server: &ServerConfig) -> Self {
        Self {
            stream,
            codec: NetstringCodec::new(server.max_request_size),
            buf: BytesMut::with_capacity(512),
            out: BytesMut::with_capacity(512),
            idle: server.idle_timeout,
            read: server.read_timeout,
            request_began: None,
            idle_since: Instant::now(),
        }
    }

    /// Reads until a whole request is in, within the limits.
    pub async fn next_request(&mut self, wake: &Wake<'_>) -> Next {
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(payload)) => {
                    // Bytes left over belong to a pipelined next request, which
                    // begins now.
                    self.request_began = (!self.buf.is_empty()).then(Instant::now);
                    return Next::Request(payload);
                }
                Ok(None) => {}
                Err(e) => return Next::Malformed(e),
            }
            let (limit, why) = wait_limit(
                self.request_began,
                self.idle_since,
                self.idle,
                self.read,
                Instant::now(),
            );
            let idle_now = self.request_began.is_none();
            let got = tokio::select! {
                r = tokio::time::timeout(limit, self.stream.read_buf(&mut self.buf)) => r,
                () = wake.pressure.notified(), if idle_now => {
                    if self.idle_since.elapsed() >= EVICT_IDLE_AFTER {
                        return Next::Closed(Some(Closed::Evicted));
                    }
                    continue;
                }
                () = wake.stop.cancelled() => return Next::Closed(None),
            };
            match got {
                Err(_elapsed) => return Next::Closed(Some(why)),
                Ok(Ok(0)) => {
                    if !self.buf.is_empty() {
                        tracing::debug!("connection closed in the middle of a request");
                    }
                    return Next::Closed(None);
                }
                Ok(Ok(_)) => {
                    self.request_began.get_or_insert_with(Instant::now);
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "connection error");
                    return Next::Closed(None);
                }
            }
        }
    }

    /// Writes a reply; the connection is idle from then on unless a pipelined request
    /// has begun.
    pub async fn send(&mut self, reply: &Reply) -> Result<(), ()> {
        self.out.clear();
        if let Err(e) = self.codec.encode(reply.wire().as_bytes(), &mut self.out) {
            tracing::warn!(error = %e, "cannot send reply");
            return Err(());
        }
        if let Err(e) = self.stream.write_all(&self.out).await {
            tracing::debug!(error = %e, "cannot send reply");
            return Err(());
        }
        if self.request_began.is_none() {
            self.idle_since = Instant::now();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_connections_get_the_idle_limit_and_begun_requests_what_is_left_of_the_read_limit() {
        let (idle, read) = (Duration::from_secs(30), Duration::from_secs(10));
        let now = Instant::now();
        assert_eq!(wait_limit(None, now, idle, read, now), (idle, Closed::Idle));
        let idle_since = now - Duration::from_secs(20);
        assert_eq!(
            wait_limit(None, idle_since, idle, read, now),
            (Duration::from_secs(10), Closed::Idle)
        );
        let began = now - Duration::from_secs(4);
        assert_eq!(
            wait_limit(Some(began), idle_since, idle, read, now),
            (Duration::from_secs(6), Closed::Slow)
        );
        let long_ago = now - Duration::from_secs(60);
        assert_eq!(
            wait_limit(Some(long_ago), long_ago, idle, read, now),
            (Duration::ZERO, Closed::Slow)
        );
    }
}
