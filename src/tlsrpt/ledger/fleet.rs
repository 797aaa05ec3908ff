//! TLSRPT across a fleet (`cache.backend = "redis"`): every daemon adds its counters
//! to the same counters in Redis, and exactly one sends each report, so that a
//! receiving domain gets one report per day from the organisation, not one per MTA.
//!
//! - Counting stays local first: a daemon stores what it counted in its own store's
//!   outbox (durable within a second, Redis up or down) and moves each outbox batch
//!   to Redis with one script that applies the batch only if its id was never applied
//!   (`SET ... NX` on the id). A batch applied just before a crash is skipped when the
//!   outbox is replayed: never lost, never counted twice. While Redis is down the
//!   outbox grows, and is merged when Redis is back. With Redis Sentinel a batch
//!   leaves the outbox only once a replica has it (`WAIT`): replication is
//!   asynchronous, and a batch the old master took just before it died would
//!   otherwise be lost; kept, it is applied on the new master (once: the id marker
//!   travels with the counters).
//! - Keys (under the cache's prefix): `tlsrpt:days` (a sorted set of days with
//!   counters), `tlsrpt:DAY:groups` (the group hashes of a day), one hash per group
//!   `tlsrpt:DAY:DOMAIN:TAG` (`domain`, `record`, and `s\tPOLICY`, `f\tPOLICY`,
//!   `d\tPOLICY\tDETAIL` counters), `tlsrpt:DAY:deliveries` (report id and
//!   destination → delivery record), `tlsrpt:DAY:cuts` (a list of partial sends'
//!   cuts), `tlsrpt:lease:REPORT:DEST` (who is sending), and `tlsrpt:node` (the
//!   fleet's id in its report ids: one fleet, one sender). Everything but the node
//!   expires after `keep_days`.
//! - Sending: a daemon takes a delivery's lease (`SET NX PX`) before it sends and
//!   records the outcome before it releases it. A daemon that dies mid-send leaves a
//!   lease that expires, and another daemon takes the delivery over.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::redis::{Redis, RedisError};

use futures::FutureExt;
use futures::future::BoxFuture;

use super::{Ledger, Pending};
use crate::metrics::Metrics;
use crate::storage::{Store, StoreError};
use crate::tlsrpt::counts::{Counts, Group, Tally};
use crate::tlsrpt::day::Day;
use crate::tlsrpt::period::Cut;
use crate::tlsrpt::report::record_tag;
use crate::tlsrpt::schedule::Delivery;
use crate::tlsrpt::store::{DayCounts, ReportStore};

/// Applies one outbox batch once: KEYS[1] the batch's id key, KEYS[2] the days set;
/// ARGV[1] the TTL in seconds, then per counter: hash, field, value, day, groups set.
/// Field `domain` and `record` are set, every other field is incremented.
const APPLY_SCRIPT: &str = r"
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
local i = 2
while i <= #ARGV do
  local h, f, v, day, set = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4]
  if f == 'domain' or f == 'record' then
    redis.call('HSET', h, f, v)
  else
    redis.call('HINCRBY', h, f, v)
  end
  redis.call('EXPIRE', h, ARGV[1])
  redis.call('SADD', set, h)
  redis.call('EXPIRE', set, ARGV[1])
  redis.call('ZADD', KEYS[2], day, day)
  i = i + 5
end
return 1
";

/// How long a daemon of a fleet may take to send one report before another may.
const LEASE: Duration = Duration::from_secs(300);

/// Releases a lease only if this daemon still holds it.
const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// The fleet's counters, deliveries, cuts and leases in Redis.
pub struct FleetReports {
    shared: Arc<Redis>,
    /// How long everything is kept (keep_days, plus a day for the last one's sending).
    ttl: Duration,
    apply: redis::Script,
    release: redis::Script,
    /// The fleet's id, once read from Redis.
    node: OnceLock<String>,
}

impl FleetReports {
    pub fn new(shared: Arc<Redis>, keep_days: u64) -> Self {
        Self {
            shared,
            ttl: Duration::from_secs((keep_days + 1) * 86_400),
            apply: redis::Script::new(APPLY_SCRIPT),
            release: redis::Script::new(RELEASE_SCRIPT),
            node: OnceLock::new(),
        }
    }

    /// The fleet's id in report ids: drawn by the first daemon that asks (`SETNX`),
    /// the same for every daemon after.
    pub async fn node(&self) -> Result<String, RedisError> {
        if let Some(n) = self.node.get() {
            return Ok(n.clone());
        }
        let key = self.key("node");
        let mine = format!("{:016x}", {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write(self.shared.node().as_bytes());
            h.finish()
        });
        let mut conn = self.shared.connection()?;
        let node: String = self
            .shared
            .call("redis_put", async move {
                // The SETNX is ignored: the pipe answers with the GET alone.
                let (node,): (String,) = redis::pipe()
                    .cmd("SETNX")
                    .arg(&key)
                    .arg(&mine)
                    .ignore()
                    .cmd("GET")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await?;
                Ok(node)
            })
            .await?;
        let node: String = node.chars().filter(char::is_ascii_alphanumeric).collect();
        Ok(self.node.get_or_init(|| node).clone())
    }

    fn cuts_key(&self, day: Day) -> String {
        self.key(&format!("{}:cuts", day.0))
    }

    /// Every element of a list (`LRANGE`) or sorted set (`ZRANGE`), in order.
    async fn whole<T: redis::FromRedisValue + Send + 'static>(
        &self,
        range: &'static str,
        key: String,
    ) -> Result<Vec<T>, RedisError> {
        let mut conn = self.shared.connection()?;
        self.shared
            .call("redis_get", async move {
                redis::cmd(range)
                    .arg(key)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut conn)
                    .await
            })
            .await
    }

    /// A day's cuts, oldest first.
    pub async fn cuts(&self, day: Day) -> Result<Vec<Cut>, RedisError> {
        let texts: Vec<String> = self.whole("LRANGE", self.cuts_key(day)).await?;
        texts
            .iter()
            .map(|t| serde_json::from_str(t).map_err(|e| RedisError::Value(e.to_string())))
            .collect()
    }

    /// Records a cut for the whole fleet.
    pub async fn add_cut(&self, day: Day, cut: &Cut) -> Result<(), RedisError> {
        let key = self.cuts_key(day);
        let value = serde_json::to_string(cut).map_err(|e| RedisError::Value(e.to_string()))?;
        let mut push = redis::cmd("RPUSH");
        push.arg(&key).arg(value);
        self.shared
            .with_expiry("redis_put", push, &key, self.ttl)
            .await
    }

    fn key(&self, rest: &str) -> String {
        format!("{}tlsrpt:{rest}", self.shared.prefix())
    }

    fn group_key(&self, g: &Group) -> String {
        self.key(&format!(
            "{}:{}:{}",
            g.day.0,
            g.domain,
            record_tag(&g.record)
        ))
    }

    fn groups_key(&self, day: Day) -> String {
        self.key(&format!("{}:groups", day.0))
    }

    fn deliveries_key(&self, day: Day) -> String {
        self.key(&format!("{}:deliveries", day.0))
    }

    /// Applies an outbox batch unless a batch with this id was applied before; returns
    /// whether it was applied now.
    pub async fn apply(&self, batch: &str, tally: &Tally) -> Result<bool, RedisError> {
        let ttl = self.ttl.as_secs();
        let mut call = self.apply.key(self.key(&format!("applied:{batch}")));
        call.key(self.key("days")).arg(ttl);
        for ((group, policy), counts) in &tally.counts {
            let (h, set, day) = (
                self.group_key(group),
                self.groups_key(group.day),
                group.day.0,
            );
            let mut field = |f: &str, v: String| {
                call.arg(&h).arg(f).arg(v).arg(day).arg(&set);
            };
            field("domain", group.domain.clone());
            field("record", group.record.clone());
            field(&format!("s\t{policy}"), counts.sessions.to_string());
            field(&format!("f\t{policy}"), counts.failures.to_string());
            for (detail, n) in &counts.details {
                field(&format!("d\t{policy}\t{detail}"), n.to_string());
            }
        }
        let mut conn = self.shared.connection()?;
        let applied: i64 = self
            .shared
            .call(
                "redis_put",
                async move { call.invoke_async(&mut conn).await },
            )
            .await?;
        Ok(applied == 1)
    }

    /// Whether the batches applied so far would survive losing the master (see
    /// [`Redis::replicated`]); an error counts as no.
    pub async fn replicated(&self) -> bool {
        self.shared.replicated().await.unwrap_or(false)
    }

    /// The days with counters in the fleet, oldest first.
    pub async fn days(&self) -> Result<Vec<Day>, RedisError> {
        let days: Vec<u64> = self.whole("ZRANGE", self.key("days")).await?;
        Ok(days.into_iter().map(Day).collect())
    }

    /// One day's counters, fleet-wide.
    pub async fn day(&self, day: Day) -> Result<DayCounts, RedisError> {
        let mut conn = self.shared.connection()?;
        let set = self.groups_key(day);
        let mut hashes: Vec<String> = self
            .shared
            .call("redis_get", async move {
                redis::cmd("SMEMBERS").arg(set).query_async(&mut conn).await
            })
            .await?;
        hashes.sort();
        let mut out = Vec::new();
        for h in hashes {
            let mut conn = self.shared.connection()?;
            let fields: BTreeMap<String, String> = self
                .shared
                .call("redis_get", async move {
                    redis::cmd("HGETALL").arg(h).query_async(&mut conn).await
                })
                .await?;
            if let Some(group) = group_of(day, &fields) {
                out.push(group);
            }
        }
        Ok(out)
    }

    pub async fn delivery(
        &self,
        day: Day,
        report: &str,
        dest: &str,
    ) -> Result<Option<Delivery>, RedisError> {
        let mut conn = self.shared.connection()?;
        let (key, field) = (self.deliveries_key(day), format!("{report}\n{dest}"));
        let text: Option<String> = self
            .shared
            .call("redis_get", async move {
                redis::cmd("HGET")
                    .arg(key)
                    .arg(field)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// Records a delivery; with `only_new`, only if none is recorded yet (the first
    /// daemon to schedule a delivery fixes its time). Returns the recorded one.
    pub async fn set_delivery(
        &self,
        day: Day,
        report: &str,
        dest: &str,
        d: &Delivery,
        only_new: bool,
    ) -> Result<Delivery, RedisError> {
        let (key, field) = (self.deliveries_key(day), format!("{report}\n{dest}"));
        let value = serde_json::to_string(d).map_err(|e| RedisError::Value(e.to_string()))?;
        let mut set = redis::cmd(if only_new { "HSETNX" } else { "HSET" });
        set.arg(&key).arg(field).arg(value);
        self.shared
            .with_expiry("redis_put", set, &key, self.ttl)
            .await?;
        if only_new {
            return Ok(self
                .delivery(day, report, dest)
                .await?
                .unwrap_or_else(|| d.clone()));
        }
        Ok(d.clone())
    }

    /// Takes the lease on a delivery for `ttl`; the token to release it with, or
    /// `None` while another daemon holds it.
    pub async fn lease(
        &self,
        report: &str,
        dest: &str,
        ttl: Duration,
    ) -> Result<Option<String>, RedisError> {
        let token = format!("{}-{}", self.shared.node(), std::process::id());
        let key = self.key(&format!("lease:{report}:{dest}"));
        let set = self.shared.set_nx(key, &token, ttl).await?;
        Ok(set.then_some(token))
    }

    pub async fn release(&self, report: &str, dest: &str, token: &str) {
        // Nothing to release without a master: the lock expires by itself.
        let Ok(mut conn) = self.shared.connection() else {
            return;
        };
        let mut call = self
            .release
            .key(self.key(&format!("lease:{report}:{dest}")));
        call.arg(token);
        // A lease left behind expires by itself.
        let _: Result<i64, _> = self
            .shared
            .call(
                "redis_lock",
                async move { call.invoke_async(&mut conn).await },
            )
            .await;
    }

    /// Forgets days before `day` in the days set (their keys expire by themselves).
    pub async fn prune_before(&self, day: Day) -> Result<(), RedisError> {
        let mut conn = self.shared.connection()?;
        let key = self.key("days");
        let last = day.0.saturating_sub(1);
        self.shared
            .call("redis_put", async move {
                redis::cmd("ZREMRANGEBYSCORE")
                    .arg(key)
                    .arg(0)
                    .arg(last)
                    .query_async::<i64>(&mut conn)
                    .await
            })
            .await?;
        Ok(())
    }
}

/// A group's counters from its hash's fields.
fn group_of(day: Day, fields: &BTreeMap<String, String>) -> Option<(Group, Vec<(String, Counts)>)> {
    let group = Group {
        day,
        domain: fields.get("domain")?.clone(),
        record: fields.get("record")?.clone(),
    };
    let mut policies: BTreeMap<String, Counts> = BTreeMap::new();
    for (field, value) in fields {
        let n: u64 = value.parse().unwrap_or(0);
        let mut parts = field.splitn(3, '\t');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("s"), Some(p), None) => policies.entry(p.to_owned()).or_default().sessions += n,
            (Some("f"), Some(p), None) => policies.entry(p.to_owned()).or_default().failures += n,
            (Some("d"), Some(p), Some(detail)) => {
                *policies
                    .entry(p.to_owned())
                    .or_default()
                    .details
                    .entry(detail.to_owned())
                    .or_default() += n;
            }
            _ => {}
        }
    }
    Some((group, policies.into_iter().collect()))
}

/// A fleet daemon's ledger: counts go to this daemon's outbox first (durable whether
/// Redis is up or not) and from there to the fleet's counters; everything else is
/// read and recorded in Redis.
pub struct FleetLedger {
    fleet: Arc<FleetReports>,
    store: Arc<dyn ReportStore>,
    metrics: Arc<Metrics>,
}

impl FleetLedger {
    pub fn new(
        fleet: Arc<FleetReports>,
        store: Arc<dyn ReportStore>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            fleet,
            store,
            metrics,
        }
    }

    /// Moves stored outbox batches into the fleet's counters, oldest first, until the
    /// outbox is empty or Redis fails (the rest waits for the next call).
    async fn sync(&self) {
        // Every failure ends the pass (labelled break): retrying at once would spin
        // without yielding while Redis backs off, and starve the lookups.
        'pass: loop {
            let batches = match self.store.outbox(64) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the TLSRPT outbox");
                    break 'pass;
                }
            };
            if batches.is_empty() {
                break;
            }
            for (key, id, tally) in batches {
                if self.fleet.apply(&id, &tally).await.is_err() {
                    // Logged by the Redis connection; kept for the next try.
                    break 'pass;
                }
                // Removed from the outbox only once it would survive a failover (a
                // replica has it). If not yet, the next try applies nothing (its id
                // is known) unless a failover lost it, and then applies it once.
                if !self.fleet.replicated().await {
                    break 'pass;
                }
                if let Err(e) = self.store.outbox_remove(key) {
                    tracing::warn!(error = %e, "cannot remove a TLSRPT outbox batch the fleet holds");
                    break 'pass;
                }
            }
        }
        self.metrics
            .tlsrpt
            .unsynced
            .set(self.store.outbox_len() as i64);
    }
}

fn fleet_error(e: RedisError) -> StoreError {
    StoreError::Backend(Store::Reports, e.to_string())
}

/// A Redis call as a ledger answer.
fn later<'a, T: Send + 'a>(
    call: impl Future<Output = Result<T, RedisError>> + Send + 'a,
) -> Pending<'a, T> {
    call.map(|r| r.map_err(fleet_error)).boxed()
}

impl Ledger for FleetLedger {
    fn record(&self, tally: &Tally) -> Result<(), StoreError> {
        self.store.outbox_add(tally)
    }

    fn share(&self) -> BoxFuture<'_, ()> {
        self.sync().boxed()
    }

    fn days(&self) -> Pending<'_, Vec<Day>> {
        later(self.fleet.days())
    }

    fn day_counts(&self, day: Day) -> Pending<'_, DayCounts> {
        later(self.fleet.day(day))
    }

    fn delivery<'a>(
        &'a self,
        day: Day,
        report: &'a str,
        dest: &'a str,
    ) -> Pending<'a, Option<Delivery>> {
        later(self.fleet.delivery(day, report, dest))
    }

    fn record_delivery<'a>(
        &'a self,
        day: Day,
        report: &'a str,
        dest: &'a str,
        delivery: &'a Delivery,
        only_new: bool,
    ) -> Pending<'a, Delivery> {
        later(
            self.fleet
                .set_delivery(day, report, dest, delivery, only_new),
        )
    }

    fn lease<'a>(&'a self, report: &'a str, dest: &'a str) -> Pending<'a, Option<String>> {
        later(self.fleet.lease(report, dest, LEASE))
    }

    fn release<'a>(&'a self, report: &'a str, dest: &'a str, token: &'a str) -> BoxFuture<'a, ()> {
        self.fleet.release(report, dest, token).boxed()
    }

    fn node(&self) -> Pending<'_, String> {
        later(self.fleet.node())
    }

    fn cuts(&self, day: Day) -> Pending<'_, Vec<Cut>> {
        later(self.fleet.cuts(day))
    }

    fn add_cut<'a>(&'a self, day: Day, cut: &'a Cut) -> Pending<'a, ()> {
        later(self.fleet.add_cut(day, cut))
    }

    fn prune_before(&self, day: Day) -> Pending<'_, usize> {
        async move {
            self.fleet.prune_before(day).await.map_err(fleet_error)?;
            self.store.prune_before(day)
        }
        .boxed()
    }
}
