//! The connection to Redis (or Valkey) that the fleet's shared state goes through:
//! the policy cache a fleet shares ([`crate::cache::redis_cache`]) and TLSRPT's fleet
//! ledger ([`crate::tlsrpt::ledger`]) both build on it.
//!
//! Redis is never on the path of an answer memory can give, and every operation has a
//! short timeout. When Redis fails, the daemon logs one line, counts the error, and
//! stops asking for a back-off period (1 s doubling to 30 s); its callers meanwhile
//! carry on with what they hold locally.
//!
//! With Redis Sentinel ([`sentinel`] asks them), the node in use is the master the
//! sentinels name: a watcher ([`follow`]) asks them every few seconds, and at once when
//! a write is refused (`READONLY`: the node was demoted) or the connection fails; a new
//! master replaces the connection, resets the back-off and makes subscribers subscribe
//! again.

mod follow;
pub mod sentinel;
pub mod tls;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use futures::StreamExt;
use thiserror::Error;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::config::RedisConfig;
use crate::locks::lock;
use crate::metrics::Metrics;

pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, Error)]
pub enum RedisError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis is unreachable; next attempt in {0:?}")]
    BackingOff(Duration),
    #[error("value in redis: {0}")]
    Value(String),
    #[error("no Redis master is known for {0:?} (the sentinels name none yet)")]
    NoMaster(String),
    #[error("{setting}: cannot use {path}: {message}")]
    File {
        setting: &'static str,
        path: String,
        message: String,
    },
}

impl RedisError {
    /// An error after which the sentinels should be asked again: the node refused a
    /// write as a replica, or could not be reached.
    fn master_suspect(&self) -> bool {
        match self {
            RedisError::Redis(e) => {
                matches!(
                    e.kind(),
                    ::redis::ErrorKind::Server(::redis::ServerErrorKind::ReadOnly)
                ) || e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
            }
            RedisError::Timeout(_) => true,
            _ => false,
        }
    }
}

/// The data node in use.
#[derive(Clone)]
struct Node {
    /// `host:port`, as shown in logs and metrics.
    addr: String,
    client: ::redis::Client,
    conn: ConnectionManager,
}

/// Whether Redis answers, and when to try again if it does not.
struct Health {
    up: bool,
    retry_at: Option<Instant>,
    backoff: Duration,
}

/// One daemon's connection to the fleet's Redis, with its key prefix, its name in the
/// fleet and the back-off that keeps a dead Redis from slowing anything down.
pub struct Redis {
    /// With Redis Sentinel: who to ask for the master.
    sentinels: Option<sentinel::Sentinels>,
    /// The node in use: the `url`'s, or the master the sentinels named last (none
    /// before they have named one).
    current: Mutex<Option<Node>>,
    /// Bumped whenever the node in use changes (subscribers subscribe again at once).
    generation: watch::Sender<u64>,
    /// Wakes the sentinel watcher before its next poll.
    recheck: Arc<Notify>,
    /// Since when no writable master has answered (Sentinel only).
    masterless_since: Mutex<Option<Instant>>,
    prefix: String,
    timeout: Duration,
    /// This daemon's name in the fleet (announcements and lease tokens carry it).
    node: String,
    health: Mutex<Health>,
    metrics: Arc<Metrics>,
}

impl Redis {
    /// Sets up the connection without connecting: a daemon starts and serves whether
    /// Redis is up or not.
    pub fn new(config: &RedisConfig, metrics: Arc<Metrics>) -> Result<Arc<Self>, RedisError> {
        let tls = tls::TlsFiles::load(config)?;
        let sentinels = sentinel::Sentinels::new(config, tls.clone())?;
        let current = match &sentinels {
            Some(_) => None,
            None => {
                let client = tls.client(&config.url)?;
                let addr = client.get_connection_info().addr().to_string();
                Some(Self::open_node(client, addr, config.timeout)?)
            }
        };
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        metrics.fleet.redis_healthy.set(1);
        let with_sentinels = sentinels.is_some();
        let redis = Arc::new(Redis {
            sentinels,
            current: Mutex::new(current),
            generation: watch::Sender::new(0),
            recheck: Arc::new(Notify::new()),
            masterless_since: Mutex::new(with_sentinels.then(Instant::now)),
            prefix: config.prefix.clone(),
            timeout: config.timeout,
            node: format!("{:x}-{started:x}", std::process::id()),
            health: Mutex::new(Health {
                up: true,
                retry_at: None,
                backoff: BACKOFF_FIRST,
            }),
            metrics,
        });
        if with_sentinels {
            // The watcher holds the connection weakly: it ends when the daemon drops it.
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(follow::watch_sentinels(
                        Arc::downgrade(&redis),
                        redis.recheck.clone(),
                    ));
                }
                Err(_) => tracing::warn!("no runtime to follow the Redis sentinels in"),
            }
        }
        Ok(redis)
    }

    /// A node's client and its (lazy) connection.
    fn open_node(
        client: ::redis::Client,
        addr: String,
        timeout: Duration,
    ) -> Result<Node, RedisError> {
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // Back-off is ours (see `Health`): one attempt per request.
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager)?;
        Ok(Node { addr, client, conn })
    }

    /// The address of the node in use (`None` while the sentinels name no master).
    pub fn master(&self) -> Option<String> {
        lock(&self.current).as_ref().map(|n| n.addr.clone())
    }

    /// A handle on the node in use (cheap: it is multiplexed); none while the
    /// sentinels name no master.
    pub fn connection(&self) -> Result<ConnectionManager, RedisError> {
        match lock(&self.current).as_ref() {
            Some(n) => Ok(n.conn.clone()),
            None => Err(RedisError::NoMaster(
                self.sentinels
                    .as_ref()
                    .map(|s| s.master_name().to_owned())
                    .unwrap_or_default(),
            )),
        }
    }

    fn client(&self) -> Option<::redis::Client> {
        lock(&self.current).as_ref().map(|n| n.client.clone())
    }

    /// The prefix every key of this fleet starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// This daemon's name in the fleet.
    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Runs one Redis operation within the timeout, unless Redis is backing off.
    pub async fn call<T>(
        &self,
        op: &'static str,
        f: impl Future<Output = ::redis::RedisResult<T>>,
    ) -> Result<T, RedisError> {
        if let Some(at) = lock(&self.health).retry_at {
            let now = Instant::now();
            if now < at {
                return Err(RedisError::BackingOff(at - now));
            }
        }
        let result = match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(RedisError::Redis(e)),
            Err(_) => Err(RedisError::Timeout(self.timeout)),
        };
        match &result {
            Ok(_) => self.mark_up(),
            Err(e) => {
                if self.sentinels.is_some() && e.master_suspect() {
                    self.recheck.notify_one();
                }
                self.mark_down(op, e);
            }
        }
        result
    }

    fn mark_up(&self) {
        let mut h = lock(&self.health);
        if !h.up {
            tracing::info!("Redis answers again; the fleet's shared state is back in use");
        }
        h.up = true;
        h.retry_at = None;
        h.backoff = BACKOFF_FIRST;
        self.metrics.fleet.redis_healthy.set(1);
        drop(h);
        if self.sentinels.is_some() {
            self.note_master(true);
        }
    }

    fn mark_down(&self, op: &'static str, e: &RedisError) {
        self.count_error(op);
        let mut h = lock(&self.health);
        if h.up {
            tracing::warn!(op, error = %e, "Redis unreachable; answering from memory and working locally until it is back");
            h.backoff = BACKOFF_FIRST;
        } else {
            h.backoff = (h.backoff * 2).min(BACKOFF_MAX);
        }
        h.up = false;
        h.retry_at = Some(Instant::now() + h.backoff);
        self.metrics.fleet.redis_healthy.set(0);
    }

    /// Counts a failed operation in `mta_stsd_store_errors_total{op}`.
    pub fn count_error(&self, op: &'static str) {
        self.metrics
            .store
            .store_errors
            .with_label_values(&[op])
            .inc();
    }

    /// Sets `key` to `value` for `ttl` unless it exists (a lock or lease); whether it
    /// was set.
    pub async fn set_nx(
        &self,
        key: String,
        value: &str,
        ttl: Duration,
    ) -> Result<bool, RedisError> {
        let mut conn = self.connection()?;
        let value = value.to_owned();
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let set: Option<String> = self
            .call("redis_lock", async move {
                ::redis::cmd("SET")
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

    /// Runs `cmd` and then sets `key` to expire after `ttl`, in one round trip
    /// (a pipeline): for values that must not outlive their purpose.
    pub async fn with_expiry(
        &self,
        op: &'static str,
        cmd: ::redis::Cmd,
        key: &str,
        ttl: Duration,
    ) -> Result<(), RedisError> {
        let mut conn = self.connection()?;
        let mut pipe = ::redis::pipe();
        pipe.add_command(cmd)
            .ignore()
            .cmd("PEXPIRE")
            .arg(key)
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
            .ignore();
        self.call(op, async move { pipe.query_async::<()>(&mut conn).await })
            .await
    }

    /// Listens on `channel` and hands every message's text to `apply`, until `stop`.
    /// `subscribed` is told whenever the subscription is made or lost. A lost
    /// subscription is made again with back-off; what was published meanwhile is
    /// missed (its subscribers must tolerate that).
    pub async fn listen<F, Fut>(
        &self,
        channel: &str,
        mut apply: F,
        subscribed: impl Fn(bool),
        stop: CancellationToken,
    ) where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut backoff = BACKOFF_FIRST;
        let mut failing = false;
        let mut generation = self.generation.subscribe();
        loop {
            generation.mark_unchanged();
            let client = self.client();
            let subscribe = async {
                let Some(client) = client else {
                    return Err(RedisError::NoMaster(String::new()));
                };
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(channel).await?;
                Ok::<_, RedisError>(pubsub)
            };
            let attempt = tokio::select! {
                () = stop.cancelled() => return,
                r = tokio::time::timeout(self.timeout.max(BACKOFF_FIRST), subscribe) => r,
            };
            match attempt {
                Ok(Ok(mut pubsub)) => {
                    if failing {
                        tracing::info!(channel, "Redis channel subscribed again");
                    }
                    backoff = BACKOFF_FIRST;
                    subscribed(true);
                    let mut messages = pubsub.on_message();
                    loop {
                        let msg = tokio::select! {
                            () = stop.cancelled() => return,
                            m = messages.next() => m,
                            // A new master: subscribe there.
                            _ = generation.changed() => None,
                        };
                        let Some(msg) = msg else { break };
                        if let Ok(text) = msg.get_payload::<String>() {
                            apply(text).await;
                        }
                    }
                    subscribed(false);
                    self.count_error("redis_subscribe");
                    tracing::warn!(channel, "Redis channel lost; subscribing again");
                    failing = true;
                }
                Ok(Err(e)) if !failing => {
                    failing = true;
                    self.note_subscribe_failure(channel, &e.to_string());
                }
                Err(_) if !failing => {
                    failing = true;
                    self.note_subscribe_failure(channel, "timed out");
                }
                _ => self.count_error("redis_subscribe"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
                _ = generation.changed() => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn note_subscribe_failure(&self, channel: &str, error: &str) {
        self.count_error("redis_subscribe");
        tracing::warn!(
            channel,
            error,
            "cannot subscribe to the Redis channel; retrying"
        );
    }

    /// Test hook: waits until Redis answers a PING (asked whatever the back-off says),
    /// and takes it as back in use.
    pub async fn wait_reachable(&self) {
        loop {
            if let Ok(mut conn) = self.connection() {
                let cmd = ::redis::cmd("PING");
                let ping = cmd.query_async::<String>(&mut conn);
                if let Ok(Ok(_)) = tokio::time::timeout(self.timeout, ping).await {
                    self.mark_up();
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether what this daemon wrote so far would survive the master's loss: with
    /// Sentinel, a replica has acknowledged it (`WAIT 1`), or the master has no replica
    /// to wait for. Redis replicates asynchronously; without this, a write the master
    /// accepted just before it died is missing on the replica promoted in its place.
    /// Without Sentinel there is no failover to survive: always true.
    pub async fn replicated(&self) -> Result<bool, RedisError> {
        if self.sentinels.is_none() {
            return Ok(true);
        }
        let mut conn = self.connection()?;
        let wait_ms = u64::try_from((self.timeout / 2).as_millis()).unwrap_or(100);
        let (acked, role): (i64, Vec<::redis::Value>) = self
            .call("redis_wait", async move {
                ::redis::pipe()
                    .cmd("WAIT")
                    .arg(1)
                    .arg(wait_ms)
                    .cmd("ROLE")
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(acked >= 1 || lone_master(&role))
    }

    /// Test hook: asks the sentinels now and waits until a master is in use.
    pub async fn wait_master(&self) -> String {
        let mut generation = self.generation.subscribe();
        loop {
            if let Some(m) = self.master() {
                return m;
            }
            self.recheck.notify_one();
            let _ = tokio::time::timeout(Duration::from_millis(200), generation.changed()).await;
        }
    }
}

/// Whether a `ROLE` reply is a master's with no replica attached (`["master", offset,
/// []]`): nothing for `WAIT` to wait for.
fn lone_master(role: &[::redis::Value]) -> bool {
    let is_master = sentinel::role_name(role).is_some_and(|r| r == "master");
    let replicas = role
        .get(2)
        .and_then(|v| ::redis::from_redis_value_ref::<Vec<::redis::Value>>(v).ok());
    is_master && replicas.is_some_and(|r| r.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::redis::Value;

    #[test]
    fn a_master_without_replicas_has_nothing_to_wait_for() {
        let master = |replicas: Vec<Value>| {
            vec![
                Value::BulkString(b"master".to_vec()),
                Value::Int(42),
                Value::Array(replicas),
            ]
        };
        assert!(lone_master(&master(vec![])));
        let replica = Value::Array(vec![
            Value::BulkString(b"127.0.0.1".to_vec()),
            Value::BulkString(b"6380".to_vec()),
            Value::BulkString(b"42".to_vec()),
        ]);
        assert!(!lone_master(&master(vec![replica])));
        assert!(!lone_master(&[Value::BulkString(b"slave".to_vec())]));
    }
}
