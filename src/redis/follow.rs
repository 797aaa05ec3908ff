//! Following the master the sentinels name: a watcher task asks them on a timer and
//! when a call suspects the master, and a new master replaces the node in use (one
//! log line, a failover counted, the back-off reset, subscribers told). Asking the
//! sentinels themselves is [`super::sentinel`]'s.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::{BACKOFF_FIRST, Redis, RedisError, sentinel};
use crate::locks::lock;

/// How often the sentinels are asked while the master answers, and while it does
/// not (or none is known).
const SENTINEL_POLL: Duration = Duration::from_secs(5);
const SENTINEL_RETRY: Duration = Duration::from_millis(250);

impl Redis {
    /// Takes `host:port`, which the sentinels name and which says it is a master, as
    /// the node in use. A change is one log line, a failover counted, the back-off
    /// reset (the fleet's state is shared again at once) and subscribers told.
    pub(super) fn use_master(&self, host: &str, port: u16) -> Result<(), RedisError> {
        let addr = sentinel::display_addr(host, port);
        let previous = lock(&self.current).as_ref().map(|n| n.addr.clone());
        if previous.as_deref() != Some(addr.as_str()) {
            let Some(sentinels) = &self.sentinels else {
                return Ok(());
            };
            let node = Self::open_node(
                sentinels.node_client(host, port)?,
                addr.clone(),
                self.timeout,
            )?;
            *lock(&self.current) = Some(node);
            let fleet = &self.metrics.fleet;
            let _ = fleet
                .redis_master
                .remove_label_values(&[crate::metrics::NO_MASTER]);
            if let Some(old) = &previous {
                fleet.redis_failovers.inc();
                let _ = fleet.redis_master.remove_label_values(&[old]);
                tracing::warn!(master = %addr, previous = %old, name = sentinels.master_name(), "Redis master changed (failover); the fleet's shared state goes to the new master");
            } else {
                tracing::info!(master = %addr, name = sentinels.master_name(), "Redis master found through the sentinels");
            }
            fleet.redis_master.with_label_values(&[&addr]).set(1);
            {
                let mut h = lock(&self.health);
                h.retry_at = None;
                h.backoff = BACKOFF_FIRST;
            }
            self.generation.send_modify(|g| *g += 1);
        }
        Ok(())
    }

    /// Whether a writable master is known; keeps `without_master` current.
    pub(super) fn note_master(&self, found: bool) {
        let mut since = lock(&self.masterless_since);
        match (found, *since) {
            (true, _) => *since = None,
            (false, None) => *since = Some(Instant::now()),
            (false, Some(_)) => {}
        }
        let secs = since.map_or(0.0, |t| t.elapsed().as_secs_f64());
        self.metrics.fleet.redis_without_master.set(secs);
    }
}

/// Follows the sentinels while the connection lives: every [`SENTINEL_POLL`] while the
/// master answers, every [`SENTINEL_RETRY`] while none does, and at once when a call
/// suspects the master ([`Redis::call`]).
pub(super) async fn watch_sentinels(redis: Weak<Redis>, recheck: Arc<Notify>) {
    let mut failing = false;
    loop {
        let Some(this) = redis.upgrade() else { return };
        let Some(sentinels) = &this.sentinels else {
            return;
        };
        let found = match sentinels.master().await {
            Ok((host, port)) => this.use_master(&host, port),
            Err(e) => Err(e),
        };
        match &found {
            Ok(()) => {
                if failing {
                    tracing::info!(
                        master = this.master().unwrap_or_default(),
                        "Redis master confirmed by the sentinels"
                    );
                }
                failing = false;
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "no writable Redis master; answering from memory and working locally until the sentinels name one");
            }
            Err(_) => {}
        }
        this.note_master(found.is_ok());
        let pause = if found.is_ok() {
            SENTINEL_POLL
        } else {
            SENTINEL_RETRY
        };
        drop(this);
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = recheck.notified() => {}
        }
    }
}
