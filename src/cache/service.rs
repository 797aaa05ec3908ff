//! The policy service: answers lookups from the cache, discovers on a miss, and keeps
//! cached policies fresh (RFC 8461 §3.3, §5.1, §10.2; SPEC §4).
//!
//! - A valid cached policy is answered from memory with no I/O. When its TXT record
//!   was last checked more than `grace` ago, a background check runs; a changed id
//!   triggers a fetch, an unchanged id does not extend max_age.
//! - A miss runs discovery, shared by all concurrent lookups of the domain
//!   (single-flight) and bounded by `lookup.deadline`; past the deadline the lookup
//!   answers `NOTFOUND ` and discovery finishes into the cache.
//! - Failures never remove a valid policy. After a failed fetch the same domain is
//!   not fetched again for `retry_after` (at least 5 minutes).
//! - The refresher re-fetches policies before they expire, whatever the TXT says.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, OnceLock, RwLock};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio::sync::{Notify, Semaphore};

use crate::cache::store::{CachedPolicy, Entry, Failure, PolicyStore};
use crate::clock::Clock;
use crate::config::{CacheConfig, LookupConfig};
use crate::locks::{lock, read, write};
use crate::metrics::Metrics;
use crate::mtasts::discovery::{Discoverer, TxtLookup};
use crate::mtasts::domain::normalize_key;
use crate::mtasts::policy::Mode;
use crate::protocol::answer::{ZoneOptions, render};
use crate::protocol::codec::MAX_REPLY;

/// How a lookup was served (for logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// A valid cached policy.
    Hit,
    /// A cached "no policy".
    NegativeHit,
    /// Discovery ran (or was joined) for this lookup.
    Miss,
    /// The deadline passed before discovery finished.
    Timeout,
    /// The key names no domain (IP literal, parent domain, invalid).
    Skipped,
}

impl CacheOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::NegativeHit => "negative_hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Timeout => "timeout",
            CacheOutcome::Skipped => "skipped",
        }
    }
}

/// What triggered a discovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// A lookup found nothing valid in the cache.
    Miss,
    /// A lookup found a valid policy whose TXT check is older than `grace`.
    Recheck,
    /// The refresher: fetch whatever the TXT record says.
    Refresh,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Miss => "miss",
            Trigger::Recheck => "recheck",
            Trigger::Refresh => "refresh",
        }
    }
}

type Flight = Shared<BoxFuture<'static, ()>>;

/// A rendered socketmap reply: the netstring payload and a short label for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub wire: Arc<str>,
    /// `secure` or `notfound` (see `Reply::kind`).
    pub kind: &'static str,
}

static NOT_FOUND: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("NOTFOUND "));

impl Answer {
    pub fn not_found() -> Answer {
        Answer {
            wire: NOT_FOUND.clone(),
            kind: "notfound",
        }
    }
}

/// A cache entry in memory. Its replies are rendered once per combination of zone
/// options and then shared, so a cache hit allocates nothing.
#[derive(Debug)]
struct Slot {
    entry: Entry,
    replies: [OnceLock<Answer>; 8],
}

impl Slot {
    fn new(entry: Entry) -> Self {
        Slot {
            entry,
            replies: Default::default(),
        }
    }
}

impl std::ops::Deref for Slot {
    type Target = Entry;
    fn deref(&self) -> &Entry {
        &self.entry
    }
}

fn zone_index(zone: &ZoneOptions) -> usize {
    usize::from(zone.strict_testing)
        | usize::from(zone.require_sni) << 1
        | usize::from(zone.tlsrpt) << 2
}

/// Settings the service reads on every operation.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    pub cache: CacheConfig,
    pub lookup: LookupConfig,
}

pub struct PolicyService {
    discoverer: RwLock<Discoverer>,
    store: Arc<dyn PolicyStore>,
    clock: Arc<dyn Clock>,
    settings: RwLock<Arc<ServiceSettings>>,
    entries: RwLock<HashMap<String, Arc<Slot>>>,
    inflight: Mutex<HashMap<String, Flight>>,
    idle: Notify,
    metrics: Arc<Metrics>,
    /// Set once `load` has brought the whole store into memory.
    loaded: std::sync::atomic::AtomicBool,
    /// Domains removed while `load` runs, so that it does not bring them back.
    removed_while_loading: Mutex<std::collections::HashSet<String>>,
}

impl PolicyService {
    /// Builds the service over `store`. It answers at once: a domain not yet in
    /// memory is read from the store on first use, and [`PolicyService::load`] brings
    /// the rest into memory (for the refresher and the gauges).
    pub fn new(
        discoverer: Discoverer,
        store: Arc<dyn PolicyStore>,
        clock: Arc<dyn Clock>,
        settings: ServiceSettings,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            discoverer: RwLock::new(discoverer),
            store,
            clock,
            settings: RwLock::new(Arc::new(settings)),
            entries: RwLock::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            idle: Notify::new(),
            metrics,
            loaded: std::sync::atomic::AtomicBool::new(false),
            removed_while_loading: Mutex::new(std::collections::HashSet::new()),
        })
    }

    pub fn set_settings(&self, settings: ServiceSettings) {
        *write(&self.settings) = Arc::new(settings);
    }

    /// Replaces the discoverer (new resolver or fetch settings after a reload).
    pub fn set_discoverer(&self, discoverer: Discoverer) {
        *write(&self.discoverer) = discoverer;
    }

    fn discoverer(&self) -> Discoverer {
        read(&self.discoverer).clone()
    }

    fn settings(&self) -> Arc<ServiceSettings> {
        read(&self.settings).clone()
    }

    /// The in-memory entry, falling back to the store for one not loaded yet.
    fn entry(&self, domain: &str) -> Option<Arc<Slot>> {
        let found = read(&self.entries).get(domain).cloned();
        if found.is_some() || self.loaded.load(std::sync::atomic::Ordering::Acquire) {
            return found;
        }
        match self.store.get(domain) {
            Ok(Some(entry)) => {
                let mut m = write(&self.entries);
                Some(
                    m.entry(domain.to_owned())
                        .or_insert_with(|| Arc::new(Slot::new(entry)))
                        .clone(),
                )
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(domain, error = %e, "unreadable cache entry ignored");
                None
            }
        }
    }

    /// Loads every live entry from the store into memory, pruning expired ones from
    /// it. Entries that lookups already brought in (or updated) are kept as they are.
    pub fn load(&self) {
        let now = self.clock.now();
        match self.store.load_all() {
            Ok((loaded, errors)) => {
                for e in &errors {
                    tracing::warn!(error = %e, "dropping unreadable cache entry");
                }
                let mut pruned = 0usize;
                let mut live = Vec::with_capacity(loaded.len());
                for (domain, entry) in loaded {
                    if entry.is_live(now) {
                        live.push((domain, entry));
                    } else {
                        pruned += 1;
                        if let Err(e) = self.store.remove(&domain) {
                            tracing::warn!(%domain, error = %e, "cannot prune cache entry");
                        }
                    }
                }
                let count = live.len();
                // Insert in chunks so lookups are not held up by one long write lock.
                for chunk in live.chunks(4096) {
                    let removed = lock(&self.removed_while_loading);
                    let mut m = write(&self.entries);
                    for (domain, entry) in chunk.iter().filter(|(d, _)| !removed.contains(d)) {
                        m.entry(domain.clone())
                            .or_insert_with(|| Arc::new(Slot::new(entry.clone())));
                    }
                }
                tracing::info!(entries = count, pruned, "cache loaded");
            }
            Err(e) => tracing::error!(error = %e, "cannot read the cache; starting empty"),
        }
        self.loaded
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// A snapshot of one domain's cache entry.
    pub fn cached(&self, domain: &str) -> Option<Entry> {
        self.entry(domain).map(|e| (*e).clone())
    }

    /// Number of entries in memory.
    pub fn len(&self) -> usize {
        read(&self.entries).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn save(&self, domain: &str, entry: Entry) {
        if let Err(e) = self.store.put(domain, &entry) {
            tracing::error!(domain, error = %e, "cannot persist cache entry");
        }
        write(&self.entries).insert(domain.to_owned(), Arc::new(Slot::new(entry)));
    }

    fn forget(&self, domain: &str) {
        if !self.loaded.load(std::sync::atomic::Ordering::Acquire) {
            lock(&self.removed_while_loading).insert(domain.to_owned());
        }
        if let Err(e) = self.store.remove(domain) {
            tracing::warn!(domain, error = %e, "cannot remove cache entry");
        }
        write(&self.entries).remove(domain);
    }

    /// Answers one socketmap lookup.
    pub async fn lookup(self: &Arc<Self>, key: &str, zone: &ZoneOptions) -> (Answer, CacheOutcome) {
        let domain = match normalize_key(key) {
            Ok(d) => d,
            Err(skip) => {
                tracing::debug!(key, reason = %skip, "no lookup");
                return (Answer::not_found(), CacheOutcome::Skipped);
            }
        };
        let now = self.clock.now();
        if let Some(slot) = self.entry(&domain) {
            if slot.valid_policy(now).is_some() {
                let grace = self.settings().cache.grace.as_secs();
                if now.saturating_sub(slot.last_check) >= grace {
                    drop(self.flight(&domain, Trigger::Recheck));
                }
                return (self.answer(&domain, &slot, zone), CacheOutcome::Hit);
            }
            if slot.no_policy_until.is_some_and(|t| t > now) {
                return (Answer::not_found(), CacheOutcome::NegativeHit);
            }
        }
        let deadline = self.settings().lookup.deadline;
        let flight = self.flight(&domain, Trigger::Miss);
        if tokio::time::timeout(deadline, flight).await.is_err() {
            tracing::warn!(
                domain,
                ?deadline,
                "discovery did not finish before the lookup deadline; answering NOTFOUND for now"
            );
            return (Answer::not_found(), CacheOutcome::Timeout);
        }
        let now = self.clock.now();
        let answer = match self.entry(&domain) {
            Some(slot) if slot.valid_policy(now).is_some() => self.answer(&domain, &slot, zone),
            _ => Answer::not_found(),
        };
        (answer, CacheOutcome::Miss)
    }

    /// The memoized reply for a slot with a valid policy under `zone`.
    fn answer(&self, domain: &str, slot: &Slot, zone: &ZoneOptions) -> Answer {
        slot.replies[zone_index(zone)]
            .get_or_init(|| match &slot.policy {
                Some(cached) => {
                    let reply = self.render(domain, cached, zone);
                    Answer {
                        wire: Arc::from(reply.to_wire()),
                        kind: reply.kind(),
                    }
                }
                None => Answer::not_found(),
            })
            .clone()
    }

    fn render(
        &self,
        domain: &str,
        cached: &CachedPolicy,
        zone: &ZoneOptions,
    ) -> crate::protocol::answer::Reply {
        let rendered = render(domain, Some(&cached.policy), zone);
        if !rendered.dropped_lines.is_empty() {
            tracing::warn!(domain, lines = ?rendered.dropped_lines, "policy lines with '{{' or '}}' left out of TLSRPT attributes");
        }
        if rendered.reply.to_wire().len() > MAX_REPLY {
            // Only TLSRPT attributes can make a reply this long; keep enforcement.
            tracing::warn!(
                domain,
                "reply too long for Postfix; TLSRPT attributes left out"
            );
            let plain = ZoneOptions {
                tlsrpt: false,
                ..zone.clone()
            };
            return render(domain, Some(&cached.policy), &plain).reply;
        }
        rendered.reply
    }

    /// Starts (or joins) the discovery for `domain`; it runs as its own task, so it
    /// finishes even when nobody waits for it any more.
    fn flight(self: &Arc<Self>, domain: &str, trigger: Trigger) -> Flight {
        let mut inflight = lock(&self.inflight);
        if let Some(f) = inflight.get(domain) {
            return f.clone();
        }
        let this = self.clone();
        let owned = domain.to_owned();
        let task = tokio::spawn(async move {
            this.discover(&owned, trigger).await;
            let mut inflight = lock(&this.inflight);
            inflight.remove(&owned);
            if inflight.is_empty() {
                this.idle.notify_waiters();
            }
        });
        let flight: Flight = async move {
            let _ = task.await;
        }
        .boxed()
        .shared();
        inflight.insert(domain.to_owned(), flight.clone());
        flight
    }

    /// Waits until no discovery is running (for tests and orderly shutdown).
    pub async fn settle(&self) {
        loop {
            let notified = self.idle.notified();
            if lock(&self.inflight).is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// One discovery step for `domain`, updating the cache and counting the result.
    async fn discover(&self, domain: &str, trigger: Trigger) {
        let result = self.discover_inner(domain, trigger).await;
        self.metrics
            .discoveries
            .with_label_values(&[trigger.as_str(), result])
            .inc();
    }

    async fn discover_inner(&self, domain: &str, trigger: Trigger) -> &'static str {
        let settings = self.settings();
        let started = self.clock.now();
        let old = self.entry(domain).map(|e| (*e).clone()).unwrap_or_default();
        let mut entry = old.clone();
        let have_valid = old.valid_policy(started).is_some();

        let discoverer = self.discoverer();
        let txt = discoverer.lookup_txt(domain).await;
        let now = self.clock.now();
        entry.last_check = now;
        let fetch_id = match &txt {
            TxtLookup::Found { record } => {
                let same_id = old.valid_policy(now).is_some_and(|p| p.id == record.id);
                if same_id && trigger != Trigger::Refresh {
                    // Nothing new; max_age still counts from the original fetch.
                    entry.no_policy_until = None;
                    self.save(domain, entry);
                    return "unchanged";
                }
                Some(record.id.clone())
            }
            TxtLookup::NoPolicy { reason } => {
                if have_valid && trigger == Trigger::Refresh {
                    tracing::info!(domain, %reason, "TXT record gone; refreshing the cached policy anyway");
                    None
                } else if have_valid {
                    // A vanished TXT record alone does not remove a cached policy.
                    tracing::info!(domain, %reason, "TXT record gone; cached policy stays in force until it expires");
                    self.save(domain, entry);
                    return "kept";
                } else {
                    tracing::debug!(domain, %reason, "no policy");
                    entry.policy = None;
                    entry.failure = None;
                    entry.no_policy_until = Some(now + settings.cache.negative_ttl.as_secs());
                    self.save(domain, entry);
                    return "no_policy";
                }
            }
            TxtLookup::Failed { reason } => {
                tracing::warn!(domain, %reason, cached = have_valid, "TXT lookup failed");
                if have_valid && trigger == Trigger::Refresh {
                    None
                } else {
                    entry.failure = Some(Failure {
                        at: now,
                        id: None,
                        class: "dns".into(),
                        message: reason.clone(),
                    });
                    if !have_valid {
                        let retry = settings.cache.negative_ttl.min(Duration::from_secs(60));
                        entry.no_policy_until = Some(now + retry.as_secs());
                    }
                    self.save(domain, entry);
                    return "txt_failed";
                }
            }
        };

        // Back off after a failed fetch (RFC 8461 §3.3: at least 5 minutes per id).
        if let Some(f) = &old.failure {
            let retry = settings.cache.retry_after.as_secs();
            if f.class != "dns" && now < f.at + retry && (fetch_id.is_none() || f.id == fetch_id) {
                tracing::debug!(
                    domain,
                    "fetch skipped: last attempt failed less than retry_after ago"
                );
                if !have_valid {
                    entry.no_policy_until = Some(f.at + retry);
                }
                self.save(domain, entry);
                return "backoff";
            }
        }

        let id = fetch_id
            .clone()
            .or_else(|| old.policy.as_ref().map(|p| p.id.clone()))
            .unwrap_or_default();
        let fetch_started = std::time::Instant::now();
        let fetched = discoverer.fetch_policy(domain).await;
        self.metrics
            .fetch_duration
            .with_label_values(&[if fetched.is_ok() { "ok" } else { "error" }])
            .observe(fetch_started.elapsed().as_secs_f64());
        match fetched {
            Ok(policy) => {
                let now = self.clock.now();
                let cached = CachedPolicy {
                    expires_at: now + policy.max_age,
                    fetched_at: now,
                    id,
                    policy,
                };
                log_transition(
                    &self.metrics,
                    domain,
                    old.policy.as_ref(),
                    &cached,
                    have_valid,
                );
                entry.policy = Some(cached);
                entry.failure = None;
                entry.no_policy_until = None;
                self.save(domain, entry);
                "fetched"
            }
            Err(e) => {
                let now = self.clock.now();
                if have_valid {
                    tracing::warn!(domain, class = e.class(), error = %e, "policy fetch failed; cached policy stays in force");
                } else {
                    tracing::warn!(domain, class = e.class(), error = %e, "policy fetch failed; treating the domain as having no policy");
                    entry.no_policy_until = Some(now + settings.cache.retry_after.as_secs());
                }
                self.metrics
                    .fetch_failures
                    .with_label_values(&[e.class()])
                    .inc();
                if let Some(p) = old
                    .valid_policy(now)
                    .filter(|p| p.policy.mode != Mode::None)
                {
                    self.metrics
                        .refresh_failures
                        .with_label_values(&[p.policy.mode.as_str()])
                        .inc();
                }
                entry.failure = Some(Failure {
                    at: now,
                    id: fetch_id,
                    class: e.class().into(),
                    message: e.to_string(),
                });
                self.save(domain, entry);
                "fetch_failed"
            }
        }
    }

    /// Domains whose policy is due for a refresh at `now`.
    fn due_for_refresh(&self, now: u64, settings: &ServiceSettings) -> Vec<String> {
        let refresh_after = settings.cache.refresh_after.as_secs();
        let retry = settings.cache.retry_after.as_secs();
        read(&self.entries)
            .iter()
            .filter_map(|(domain, entry)| {
                let p = entry.valid_policy(now)?;
                let age_limit = refresh_after.min(p.policy.max_age / 2).max(1);
                let due = p.fetched_at + age_limit.saturating_sub(jitter(domain, age_limit / 10));
                let backing_off = entry.failure.as_ref().is_some_and(|f| now < f.at + retry);
                (now >= due && !backing_off).then(|| domain.clone())
            })
            .collect()
    }

    /// Removes entries that no longer say anything.
    fn prune(&self, now: u64) -> usize {
        let dead: Vec<String> = read(&self.entries)
            .iter()
            .filter(|(_, e)| !e.is_live(now))
            .map(|(d, _)| d.clone())
            .collect();
        for d in &dead {
            self.forget(d);
        }
        dead.len()
    }

    /// One refresher pass: prune dead entries and refresh due policies, at most
    /// `refresh_concurrency` at a time. Returns how many refreshes ran.
    pub async fn refresh_due(self: &Arc<Self>) -> usize {
        let settings = self.settings();
        let now = self.clock.now();
        let pruned = self.prune(now);
        if pruned > 0 {
            tracing::debug!(pruned, "expired cache entries pruned");
        }
        let due = self.due_for_refresh(now, &settings);
        let limit = Arc::new(Semaphore::new(settings.cache.refresh_concurrency));
        let mut tasks = Vec::with_capacity(due.len());
        for domain in &due {
            let Ok(permit) = limit.clone().acquire_owned().await else {
                break;
            };
            let flight = self.flight(domain, Trigger::Refresh);
            tasks.push(tokio::spawn(async move {
                flight.await;
                drop(permit);
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        due.len()
    }

    /// Runs the refresher until `shutdown` resolves.
    pub async fn run_refresher(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let interval = self.settings().cache.refresh_interval;
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(interval) => {}
            }
            let n = self.refresh_due().await;
            if n > 0 {
                tracing::info!(refreshed = n, "policies refreshed");
            }
        }
    }

    /// A snapshot of every entry, sorted by domain.
    pub fn snapshot(&self) -> Vec<(String, Entry)> {
        let mut all: Vec<(String, Entry)> = read(&self.entries)
            .iter()
            .map(|(d, e)| (d.clone(), (**e).clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Removes a domain from the cache (memory and disk). Returns whether it was there.
    pub fn purge(&self, domain: &str) -> bool {
        let present = self.entry(domain).is_some();
        self.forget(domain);
        if present {
            tracing::info!(domain, "cache entry purged");
        }
        present
    }

    /// Runs a discovery for `domain` now (fetching whatever the TXT id says when a
    /// policy is cached) and returns the resulting entry.
    pub async fn refresh_now(self: &Arc<Self>, domain: &str) -> Option<Entry> {
        let trigger = if self
            .entry(domain)
            .is_some_and(|e| e.valid_policy(self.clock.now()).is_some())
        {
            Trigger::Refresh
        } else {
            Trigger::Miss
        };
        self.flight(domain, trigger).await;
        self.cached(domain)
    }

    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Recomputes the cache gauges (called when metrics are scraped).
    pub fn update_gauges(&self) {
        let now = self.clock.now();
        let (mut enforce, mut testing, mut none, mut negative) = (0i64, 0i64, 0i64, 0i64);
        let (mut oldest, mut expiring, mut failing) = (0u64, 0i64, 0i64);
        for entry in read(&self.entries).values() {
            match entry.valid_policy(now) {
                Some(p) => {
                    match p.policy.mode {
                        Mode::Enforce => enforce += 1,
                        Mode::Testing => testing += 1,
                        Mode::None => none += 1,
                    }
                    oldest = oldest.max(now.saturating_sub(p.fetched_at));
                    if p.expires_at <= now + 86_400 {
                        expiring += 1;
                    }
                    if entry.failure.is_some() && p.policy.mode != Mode::None {
                        failing += 1;
                    }
                }
                None if entry.no_policy_until.is_some_and(|t| t > now) => negative += 1,
                None => {}
            }
        }
        let g = &self.metrics.cache_entries;
        g.with_label_values(&["enforce"]).set(enforce);
        g.with_label_values(&["testing"]).set(testing);
        g.with_label_values(&["none"]).set(none);
        g.with_label_values(&["negative"]).set(negative);
        self.metrics
            .oldest_policy_age
            .set(i64::try_from(oldest).unwrap_or(i64::MAX));
        self.metrics.expiring_soon.set(expiring);
        self.metrics.failing.set(failing);
    }

    /// Writes everything to disk.
    pub fn flush(&self) {
        if let Err(e) = self.store.flush() {
            tracing::error!(error = %e, "cannot flush the cache");
        }
    }
}

/// A per-domain spread in [0, max] seconds, so refreshes of policies fetched together
/// do not all fall due in the same pass.
fn jitter(domain: &str, max: u64) -> u64 {
    if max == 0 {
        return 0;
    }
    let h = domain.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    h % (max + 1)
}

fn log_transition(
    metrics: &Metrics,
    domain: &str,
    old: Option<&CachedPolicy>,
    new: &CachedPolicy,
    was_valid: bool,
) {
    let Some(old) = old.filter(|_| was_valid) else {
        tracing::info!(domain, id = %new.id, mode = %new.policy.mode, max_age = new.policy.max_age, "policy cached");
        return;
    };
    let (from, to) = (old.policy.mode, new.policy.mode);
    let downgrade = matches!(
        (from, to),
        (Mode::Enforce, Mode::Testing | Mode::None) | (Mode::Testing, Mode::None)
    );
    if from != to {
        metrics
            .transitions
            .with_label_values(&[from.as_str(), to.as_str(), "mode"])
            .inc();
    }
    if downgrade {
        tracing::warn!(domain, from = %from, to = %to, id = %new.id, "policy downgraded");
    } else if from != to {
        tracing::info!(domain, from = %from, to = %to, id = %new.id, "policy mode changed");
    }
    if old.policy.mx != new.policy.mx {
        metrics
            .transitions
            .with_label_values(&[from.as_str(), to.as_str(), "mx"])
            .inc();
        tracing::warn!(domain, id = %new.id, "policy mx set changed");
    }
    tracing::info!(domain, id = %new.id, mode = %to, max_age = new.policy.max_age, "policy refreshed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_zone_option_combination_has_its_own_memo_slot() {
        let mut seen = std::collections::HashSet::new();
        for bits in 0..8u8 {
            let z = ZoneOptions {
                strict_testing: bits & 1 != 0,
                require_sni: bits & 2 != 0,
                tlsrpt: bits & 4 != 0,
            };
            let i = zone_index(&z);
            assert!(i < 8);
            assert!(seen.insert(i));
        }
    }

    #[test]
    fn jitter_is_bounded_and_stable() {
        for d in ["a.example", "b.example", "example.com"] {
            assert!(jitter(d, 100) <= 100);
            assert_eq!(jitter(d, 100), jitter(d, 100));
        }
        assert_eq!(jitter("x", 0), 0);
    }
}
