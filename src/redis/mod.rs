//! The connection to Redis (or Valkey) that the fleet's shared state goes through:
//! the policy cache a fleet shares ([`crate::cache::redis_cache`]) and TLSRPT's fleet
//! ledger ([`crate::tlsrpt::ledger`]) both build on it.
//!
//! Redis is never on the path of an answer memory can give, and every operation has a
//! short timeout. When Redis fails, the daemon logs one line, counts the error, and
//! stops asking for a back-off period (1 s doubling to 30 s); its callers meanwhile
//! carry on with what they hold locally.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use futures::StreamExt;
use thiserror::Error;
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
    client: ::redis::Client,
    conn: ConnectionManager,
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
        let client = ::redis::Client::open(config.url.as_str())?;
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
        Ok(Arc::new(Redis {
            client,
            conn,
            prefix: config.prefix.clone(),
            timeout: config.timeout,
            node: format!("{:x}-{started:x}", std::process::id()),
            health: Mutex::new(Health {
                up: true,
                retry_at: None,
                backoff: BACKOFF_FIRST,
            }),
            metrics,
        }))
    }

    /// A handle on the shared connection (cheap: it is multiplexed).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
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
            Err(e) => self.mark_down(op, e),
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
        let mut conn = self.conn.clone();
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
        let mut conn = self.conn.clone();
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
        loop {
            let subscribe = async {
                let mut pubsub = self.client.get_async_pubsub().await?;
                pubsub.subscribe(channel).await?;
                Ok::<_, ::redis::RedisError>(pubsub)
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
            let mut conn = self.conn.clone();
            let cmd = ::redis::cmd("PING");
            let ping = cmd.query_async::<String>(&mut conn);
            if let Ok(Ok(_)) = tokio::time::timeout(self.timeout, ping).await {
                self.mark_up();
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
