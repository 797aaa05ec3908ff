//! The policy cache a fleet of daemons shares in Redis (or Valkey).
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
//! The connection, its timeouts and back-off are [`crate::redis`]'s: while Redis
//! fails, the daemon answers from memory and discovers on its own, exactly as a
//! daemon without Redis would.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::entry::Entry;
use super::store::format::{decode_entry, encode_entry};
use crate::config::RedisConfig;
use crate::redis::{Redis, RedisError};

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

/// Announcements remembered for [`RedisCache::wait_applied`].
const RECENT_EVENTS: usize = 64;

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

pub struct RedisCache {
    redis: Arc<Redis>,
    channel: String,
    lock_ttl: Duration,
    tokens: AtomicU64,
    put: redis::Script,
    unlock: redis::Script,
    remove: redis::Script,
    /// Woken on every announced update, for daemons waiting on another's fetch.
    updated: Notify,
    /// Test hooks: whether the invalidation channel is subscribed, and the last
    /// announcements applied (at most [`RECENT_EVENTS`]).
    subscribed: watch::Sender<bool>,
    applied: watch::Sender<VecDeque<Event>>,
    /// Domains whose policy could not be written (Redis down, no master): shared
    /// again when the channel is subscribed again. Bounded by [`UNSHARED_MAX`].
    unshared: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

/// The most domains remembered as not shared; past it, the rest waits for its next
/// refresh to reach the fleet.
const UNSHARED_MAX: usize = 100_000;

/// The outcome of asking for a domain's fetch lock.
#[derive(Debug)]
pub enum Lock {
    /// This daemon holds it; release it with the token.
    Held(String),
    /// Another daemon is fetching.
    Busy,
}

impl RedisCache {
    /// The fleet's policy cache on `redis`.
    pub fn new(redis: Arc<Redis>, config: &RedisConfig) -> Arc<Self> {
        Arc::new(RedisCache {
            channel: format!("{}events", config.prefix),
            lock_ttl: config.lock_ttl,
            redis,
            tokens: AtomicU64::new(0),
            put: redis::Script::new(PUT_SCRIPT),
            unlock: redis::Script::new(UNLOCK_SCRIPT),
            remove: redis::Script::new(REMOVE_SCRIPT),
            updated: Notify::new(),
            subscribed: watch::Sender::new(false),
            applied: watch::Sender::new(VecDeque::new()),
            unshared: std::sync::Mutex::new(std::collections::BTreeSet::new()),
        })
    }

    /// Remembers a domain whose policy could not be written to the fleet.
    pub fn remember_unshared(&self, domain: &str) {
        let mut set = crate::locks::lock(&self.unshared);
        if set.len() < UNSHARED_MAX {
            set.insert(domain.to_owned());
        }
    }

    /// The domains remembered as not shared, forgotten.
    pub fn take_unshared(&self) -> Vec<String> {
        std::mem::take(&mut *crate::locks::lock(&self.unshared))
            .into_iter()
            .collect()
    }

    /// Whether the invalidation channel is subscribed (Redis, or its master, in use),
    /// as it changes.
    pub fn subscriptions(&self) -> watch::Receiver<bool> {
        self.subscribed.subscribe()
    }

    /// The connection this cache goes through (TLSRPT's fleet ledger shares it).
    pub fn redis(&self) -> &Arc<Redis> {
        &self.redis
    }

    pub fn lock_ttl(&self) -> Duration {
        self.lock_ttl
    }

    fn entry_key(&self, domain: &str) -> String {
        format!("{}policy:{domain}", self.redis.prefix())
    }

    fn lock_key(&self, domain: &str) -> String {
        format!("{}lock:{domain}", self.redis.prefix())
    }

    fn message(&self, event: &Event) -> String {
        let (kind, domain) = event.kind();
        format!("{} {kind} {domain}", self.redis.node())
    }

    /// The fleet's entry for `domain`, if any.
    pub async fn get(&self, domain: &str) -> Result<Option<Entry>, RedisError> {
        let mut conn = self.redis.connection()?;
        let key = self.entry_key(domain);
        let bytes: Option<Vec<u8>> = self
            .redis
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
                .map_err(|e| RedisError::Value(e.to_string())),
        }
    }

    /// Writes a fetched policy unless the fleet has one fetched later. Returns whether
    /// it was written.
    pub async fn put(&self, domain: &str, entry: &Entry) -> Result<bool, RedisError> {
        let Some(policy) = &entry.policy else {
            return Ok(false);
        };
        let bytes = encode_entry(entry).map_err(|e| RedisError::Value(e.to_string()))?;
        let mut conn = self.redis.connection()?;
        let mut call = self.put.key(self.entry_key(domain));
        call.arg(policy.fetched_at)
            .arg(bytes)
            .arg(policy.expires_at.saturating_mul(1000))
            .arg(&self.channel)
            .arg(self.message(&Event::Updated(domain.to_owned())));
        let written: i64 = self
            .redis
            .call(
                "redis_put",
                async move { call.invoke_async(&mut conn).await },
            )
            .await?;
        Ok(written == 1)
    }

    /// Removes the fleet's entry and tells every daemon to drop its copy.
    pub async fn remove(&self, domain: &str) -> Result<bool, RedisError> {
        let mut conn = self.redis.connection()?;
        let mut call = self.remove.key(self.entry_key(domain));
        call.arg(&self.channel)
            .arg(self.message(&Event::Purged(domain.to_owned())));
        let removed: i64 = self
            .redis
            .call(
                "redis_remove",
                async move { call.invoke_async(&mut conn).await },
            )
            .await?;
        Ok(removed > 0)
    }

    /// Tries to take the fetch lock for `domain` for `lock_ttl`.
    pub async fn try_lock(&self, domain: &str) -> Result<Lock, RedisError> {
        let token = format!(
            "{}-{}",
            self.redis.node(),
            self.tokens.fetch_add(1, Ordering::Relaxed)
        );
        let set = self
            .redis
            .set_nx(self.lock_key(domain), &token, self.lock_ttl)
            .await?;
        Ok(if set { Lock::Held(token) } else { Lock::Busy })
    }

    /// Releases a lock this daemon holds (if it expired meanwhile, nothing happens).
    pub async fn unlock(&self, domain: &str, token: &str) {
        // Nothing to release without a master: the lock expires by itself.
        let Ok(mut conn) = self.redis.connection() else {
            return;
        };
        let mut call = self.unlock.key(self.lock_key(domain));
        call.arg(token);
        // A lock left behind expires by itself after `lock_ttl`.
        let _: Result<i64, _> = self
            .redis
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
    /// daemon's own) to `apply`, until `stop`. What is announced while the
    /// subscription is lost is missed: copies in memory then stay as they are until
    /// they are refreshed or expire.
    pub async fn run_subscriber<F, Fut>(self: Arc<Self>, apply: F, stop: CancellationToken)
    where
        F: Fn(Event) -> Fut,
        Fut: Future<Output = ()>,
    {
        let this = self.clone();
        let on_message = |text: String| {
            let event = this.parse(&text);
            let this = this.clone();
            let applied = event.map(|event| {
                if matches!(event, Event::Updated(_)) {
                    this.updated.notify_waiters();
                }
                (apply(event.clone()), event)
            });
            async move {
                if let Some((done, event)) = applied {
                    done.await;
                    this.applied.send_modify(|recent| {
                        if recent.len() == RECENT_EVENTS {
                            recent.pop_front();
                        }
                        recent.push_back(event);
                    });
                }
            }
        };
        let subscribed = |up: bool| {
            self.subscribed.send_replace(up);
        };
        self.redis
            .listen(&self.channel, on_message, subscribed, stop)
            .await;
    }

    /// An announcement by another daemon; `None` for this daemon's own or for text
    /// that is not one (anything may be published on a channel).
    fn parse(&self, text: &str) -> Option<Event> {
        let mut parts = text.splitn(3, ' ');
        let (node, kind, domain) = (parts.next()?, parts.next()?, parts.next()?);
        if node == self.redis.node() || domain.is_empty() {
            return None;
        }
        match kind {
            "update" => Some(Event::Updated(domain.to_owned())),
            "purge" => Some(Event::Purged(domain.to_owned())),
            _ => None,
        }
    }

    /// Test hook: waits until Redis answers a PING, and takes it as back in use.
    pub async fn wait_reachable(&self) {
        self.redis.wait_reachable().await;
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

    fn cache() -> Arc<RedisCache> {
        let metrics = Arc::new(crate::metrics::Metrics::new().unwrap());
        let config = RedisConfig::default();
        RedisCache::new(Redis::new(&config, metrics).unwrap(), &config)
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
