//! The cache shared by a fleet of daemons, in Redis (or Valkey).
//!
//! Every daemon keeps its own memory and its own sled copy; Redis is where they meet:
//!
//! - A daemon that misses a domain reads Redis before discovering it itself, and takes
//!   a policy another daemon fetched (no DNS or HTTPS of its own).
//! - Before fetching, a daemon takes a short per-domain lock (`SET NX PX`); the others
//!   wait for its result instead of fetching the same policy again.
//! - A policy is written with a compare on its fetch time (a Lua script, atomic on the
//!   server), so that an older fetch that finishes late never replaces a newer one.
//!   The key expires when the policy does (RFC 8461 §3.2: `max_age`).
//! - Writes and purges are announced on a pub/sub channel, so that every daemon drops
//!   or updates the copy it holds in memory.
//!
//! Redis is never on the path of an answer that memory can give, and every operation
//! has a short timeout. When Redis fails, the daemon logs one line, counts the error,
//! stops asking for a back-off period (1 s doubling to 30 s), and meanwhile answers
//! from memory and discovers on its own, exactly as a daemon without Redis would.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use thiserror::Error;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::entry::Entry;
use super::store::format::{decode_entry, encode_entry};
use crate::config::RedisConfig;
use crate::locks::lock;
use crate::metrics::Metrics;

/// Writes an entry unless the stored one was fetched later; sets the key to expire
/// with the policy and announces the write. Atomic on the server.
/// KEYS[1] entry; ARGV: fetched_at, entry bytes, expiry (ms since the epoch),
/// channel, message.
const PUT_SCRIPT: &str = r"
local stored = redis.call('HGET', KEYS[1], 'fetched_at')
if stored and tonumber(stored) > tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'fetched_at', ARGV[1], 'entry', ARGV[2])
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
";

/// Releases a lock only if this daemon still holds it (it may have expired and been
/// taken by another). KEYS[1] lock; ARGV[1] token.
const UNLOCK_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Removes an entry and announces it. KEYS[1] entry; ARGV: channel, message.
const REMOVE_SCRIPT: &str = r"
local removed = redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return removed
";

/// Announcements remembered for [`SharedCache::wait_applied`].
const RECENT_EVENTS: usize = 64;

const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, Error)]
pub enum SharedError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis is unreachable; next attempt in {0:?}")]
    BackingOff(Duration),
    #[error("shared cache entry: {0}")]
    Entry(String),
}

/// A change another daemon announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A policy was written for the domain: a copy held in memory may be stale.
    Updated(String),
    /// An operator purged the domain.
    Purged(String),
}

impl Event {
    fn kind(&self) -> (&'static str, &str) {
        match self {
            Event::Updated(d) => ("update", d),
            Event::Purged(d) => ("purge", d),
        }
    }
}

/// Whether Redis answers, and when to try again if it does not.
struct Health {
    up: bool,
    retry_at: Option<Instant>,
    backoff: Duration,
}

pub struct SharedCache {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: String,
    channel: String,
    timeout: Duration,
    lock_ttl: Duration,
    /// This daemon's name on the channel, so that it skips its own announcements.
    node: String,
    tokens: AtomicU64,
    put: redis::Script,
    unlock: redis::Script,
    remove: redis::Script,
    health: Mutex<Health>,
    metrics: Arc<Metrics>,
    /// Woken on every announced update, for daemons waiting on another's fetch.
    updated: Notify,
    /// Test hooks: whether the invalidation channel is subscribed, and the last
    /// announcements applied (at most [`RECENT_EVENTS`]).
    subscribed: watch::Sender<bool>,
    applied: watch::Sender<VecDeque<Event>>,
}

/// The outcome of asking for a domain's fetch lock.
#[derive(Debug)]
pub enum Lock {
    /// This daemon holds it; release it with the token.
    Held(String),
    /// Another daemon is fetching.
    Busy,
}

impl SharedCache {
    /// Sets up the connection without connecting: a daemon starts and serves whether
    /// Redis is up or not.
    pub fn new(config: &RedisConfig, metrics: Arc<Metrics>) -> Result<Arc<Self>, SharedError> {
        let client = redis::Client::open(config.url.as_str())?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            // Back-off is ours (see `Health`): one attempt per request.
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager)?;
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        metrics.fleet.redis_healthy.set(1);
        Ok(Arc::new(SharedCache {
            client,
            conn,
            channel: format!("{}events", config.prefix),
            prefix: config.prefix.clone(),
            timeout: config.timeout,
            lock_ttl: config.lock_ttl,
            node: format!("{:x}-{started:x}", std::process::id()),
            tokens: AtomicU64::new(0),
            put: redis::Script::new(PUT_SCRIPT),
            unlock: redis::Script::new(UNLOCK_SCRIPT),
            remove: redis::Script::new(REMOVE_SCRIPT),
            health: Mutex::new(Health {
                up: true,
                retry_at: None,
                backoff: BACKOFF_FIRST,
            }),
            metrics,
            updated: Notify::new(),
            subscribed: watch::Sender::new(false),
            applied: watch::Sender::new(VecDeque::new()),
        }))
    }

    pub fn lock_ttl(&self) -> Duration {
        self.lock_ttl
    }

    fn entry_key(&self, domain: &str) -> String {
        format!("{}policy:{domain}", self.prefix)
    }

    fn lock_key(&self, domain: &str) -> String {
        format!("{}lock:{domain}", self.prefix)
    }

    fn message(&self, event: &Event) -> String {
        let (kind, domain) = event.kind();
        format!("{} {kind} {domain}", self.node)
    }

    /// The connection, the key prefix and this daemon's name on the channel, for
    /// other fleet-wide state kept in the same Redis (TLSRPT's counters).
    pub(crate) fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Runs one Redis operation within the timeout, unless Redis is backing off.
    pub(crate) async fn call<T>(
        &self,
        op: &'static str,
        f: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, SharedError> {
        if let Some(at) = lock(&self.health).retry_at {
            let now = Instant::now();
            if now < at {
                return Err(SharedError::BackingOff(at - now));
            }
        }
        let result = match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(SharedError::Redis(e)),
            Err(_) => Err(SharedError::Timeout(self.timeout)),
        };
        match &result {
            Ok(_) => self.mark_up(),
            Err(e) => self.mark_down(op, e),
        }
        result
    }

    fn mark_up(&self) {
        let mut h = lock(&self.health);
        if !h.up {
            tracing::info!("Redis answers again; the shared cache is back in use");
        }
        h.up = true;
        h.retry_at = None;
        h.backoff = BACKOFF_FIRST;
        self.metrics.fleet.redis_healthy.set(1);
    }

    fn mark_down(&self, op: &'static str, e: &SharedError) {
        self.metrics
            .store
            .store_errors
            .with_label_values(&[op])
            .inc();
        let mut h = lock(&self.health);
        if h.up {
            tracing::warn!(op, error = %e, "Redis unreachable; answering from memory and discovering locally until it is back");
            h.backoff = BACKOFF_FIRST;
        } else {
            h.backoff = (h.backoff * 2).min(BACKOFF_MAX);
        }
        h.up = false;
        h.retry_at = Some(Instant::now() + h.backoff);
        self.metrics.fleet.redis_healthy.set(0);
    }

    /// The fleet's entry for `domain`, if any.
    pub async fn get(&self, domain: &str) -> Result<Option<Entry>, SharedError> {
        let mut conn = self.conn.clone();
        let key = self.entry_key(domain);
        let bytes: Option<Vec<u8>> = self
            .call("redis_get", async move {
                redis::cmd("HGET")
                    .arg(key)
                    .arg("entry")
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        match bytes {
            None => Ok(None),
            // Written by another daemon, perhaps another version: a damaged or unknown
            // entry is "nothing shared", never an error that stops the lookup.
            Some(b) => decode_entry(domain, &b)
                .map(Some)
                .map_err(|e| SharedError::Entry(e.to_string())),
        }
    }

    /// Writes a fetched policy unless the fleet has one fetched later. Returns whether
    /// it was written.
    pub async fn put(&self, domain: &str, entry: &Entry) -> Result<bool, SharedError> {
        let Some(policy) = &entry.policy else {
            return Ok(false);
        };
        let bytes = encode_entry(entry).map_err(|e| SharedError::Entry(e.to_string()))?;
        let mut conn = self.conn.clone();
        let mut call = self.put.key(self.entry_key(domain));
        call.arg(policy.fetched_at)
            .arg(bytes)
            .arg(policy.expires_at.saturating_mul(1000))
            .arg(&self.channel)
            .arg(self.message(&Event::Updated(domain.to_owned())));
        let written: i64 = self
            .call(
                "redis_put",
                async move { call.invoke_async(&mut conn).await },
            )
            .await?;
        Ok(written == 1)
    }

    /// Removes the fleet's entry and tells every daemon to drop its copy.
    pub async fn remove(&self, domain: &str) -> Result<bool, SharedError> {
        let mut conn = self.conn.clone();
        let mut call = self.remove.key(self.entry_key(domain));
        call.arg(&self.channel)
            .arg(self.message(&Event::Purged(domain.to_owned())));
        let removed: i64 = self
            .call(
                "redis_remove",
                async move { call.invoke_async(&mut conn).await },
            )
            .await?;
        Ok(removed > 0)
    }

    /// Tries to take the fetch lock for `domain` for `lock_ttl`.
    pub async fn try_lock(&self, domain: &str) -> Result<Lock, SharedError> {
        let token = format!(
            "{}-{}",
            self.node,
            self.tokens.fetch_add(1, Ordering::Relaxed)
        );
        let set = self
            .set_nx(self.lock_key(domain), &token, self.lock_ttl)
            .await?;
        Ok(if set { Lock::Held(token) } else { Lock::Busy })
    }

    /// Sets `key` to `value` for `ttl` unless it exists (a lock or lease); whether it
    /// was set.
    pub(crate) async fn set_nx(
        &self,
        key: String,
        value: &str,
        ttl: Duration,
    ) -> Result<bool, SharedError> {
        let mut conn = self.conn.clone();
        let value = value.to_owned();
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let set: Option<String> = self
            .call("redis_lock", async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(set.is_some())
    }

    /// Releases a lock this daemon holds (if it expired meanwhile, nothing happens).
    pub async fn unlock(&self, domain: &str, token: &str) {
        let mut conn = self.conn.clone();
        let mut call = self.unlock.key(self.lock_key(domain));
        call.arg(token);
        // A lock left behind expires by itself after `lock_ttl`.
        let _: Result<i64, _> = self
            .call(
                "redis_lock",
                async move { call.invoke_async(&mut conn).await },
            )
            .await;
    }

    /// Waits until another daemon announces an update, or `at_most`.
    pub async fn wait_update(&self, at_most: Duration) {
        let _ = tokio::time::timeout(at_most, self.updated.notified()).await;
    }

    /// Listens to the fleet's announcements and hands each one (other than this
    /// daemon's own) to `apply`, until `stop`. A lost subscription is re-established
    /// with back-off; what was announced meanwhile is missed (copies in memory then
    /// stay as they are until they are refreshed or expire).
    pub async fn run_subscriber<F, Fut>(self: Arc<Self>, apply: F, stop: CancellationToken)
    where
        F: Fn(Event) -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut backoff = BACKOFF_FIRST;
        let mut failing = false;
        loop {
            let subscribe = async {
                let mut pubsub = self.client.get_async_pubsub().await?;
                pubsub.subscribe(&self.channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            let attempt = tokio::select! {
                () = stop.cancelled() => return,
                r = tokio::time::timeout(self.timeout.max(BACKOFF_FIRST), subscribe) => r,
            };
            match attempt {
                Ok(Ok(mut pubsub)) => {
                    if failing {
                        tracing::info!("Redis invalidation channel subscribed again");
                    }
                    backoff = BACKOFF_FIRST;
                    self.subscribed.send_replace(true);
                    let mut messages = pubsub.on_message();
                    loop {
                        let msg = tokio::select! {
                            () = stop.cancelled() => return,
                            m = messages.next() => m,
                        };
                        let Some(msg) = msg else { break };
                        let Ok(text) = msg.get_payload::<String>() else {
                            continue;
                        };
                        if let Some(event) = self.parse(&text) {
                            if matches!(event, Event::Updated(_)) {
                                self.updated.notify_waiters();
                            }
                            apply(event.clone()).await;
                            self.applied.send_modify(|recent| {
                                if recent.len() == RECENT_EVENTS {
                                    recent.pop_front();
                                }
                                recent.push_back(event);
                            });
                        }
                    }
                    self.subscribed.send_replace(false);
                    self.metrics
                        .store
                        .store_errors
                        .with_label_values(&["redis_subscribe"])
                        .inc();
                    tracing::warn!("Redis invalidation channel lost; subscribing again");
                    failing = true;
                }
                Ok(Err(e)) if !failing => {
                    failing = true;
                    self.note_subscribe_failure(&e.to_string());
                }
                Err(_) if !failing => {
                    failing = true;
                    self.note_subscribe_failure("timed out");
                }
                _ => {
                    self.metrics
                        .store
                        .store_errors
                        .with_label_values(&["redis_subscribe"])
                        .inc();
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn note_subscribe_failure(&self, error: &str) {
        self.metrics
            .store
            .store_errors
            .with_label_values(&["redis_subscribe"])
            .inc();
        tracing::warn!(
            error,
            "cannot subscribe to the Redis invalidation channel; retrying"
        );
    }

    /// An announcement by another daemon; `None` for this daemon's own or for text
    /// that is not one (anything may be published on a channel).
    fn parse(&self, text: &str) -> Option<Event> {
        let mut parts = text.splitn(3, ' ');
        let (node, kind, domain) = (parts.next()?, parts.next()?, parts.next()?);
        if node == self.node || domain.is_empty() {
            return None;
        }
        match kind {
            "update" => Some(Event::Updated(domain.to_owned())),
            "purge" => Some(Event::Purged(domain.to_owned())),
            _ => None,
        }
    }

    /// Test hook: waits until Redis answers a PING (asked whatever the back-off says),
    /// and takes it as back in use.
    pub async fn wait_reachable(&self) {
        loop {
            let mut conn = self.conn.clone();
            let cmd = redis::cmd("PING");
            let ping = cmd.query_async::<String>(&mut conn);
            if let Ok(Ok(_)) = tokio::time::timeout(self.timeout, ping).await {
                self.mark_up();
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Test hook: waits until the invalidation channel is subscribed.
    pub async fn wait_subscribed(&self) {
        let mut rx = self.subscribed.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Test hook: waits until `event`, announced by another daemon, has been applied.
    pub async fn wait_applied(&self, event: &Event) {
        let mut rx = self.applied.subscribe();
        let _ = rx.wait_for(|recent| recent.contains(event)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> Arc<SharedCache> {
        let metrics = Arc::new(Metrics::new().unwrap());
        SharedCache::new(&RedisConfig::default(), metrics).unwrap()
    }

    #[tokio::test]
    async fn announcements_are_parsed_and_our_own_are_skipped() {
        let c = cache();
        let other = "1234-abcd";
        assert_eq!(
            c.parse(&format!("{other} update example.com")),
            Some(Event::Updated("example.com".into()))
        );
        assert_eq!(
            c.parse(&format!("{other} purge example.com")),
            Some(Event::Purged("example.com".into()))
        );
        assert_eq!(
            c.parse(&c.message(&Event::Purged("a.example".into()))),
            None
        );
        for junk in ["", "x", "a b", "a frob example.com", "a update "] {
            assert_eq!(c.parse(junk), None, "{junk:?}");
        }
    }
}
