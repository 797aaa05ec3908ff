//! The policy service: answers lookups from the cache, discovers on a miss, and keeps
//! cached policies fresh. What to do is decided by [`super::lifecycle`]; this module runs
//! the DNS and HTTPS work and applies the decisions, with one component per concern:
//!
//! - [`super::hot`]: what memory holds (the hot set of policies, the bounded negatives);
//! - [`super::durability`]: group commit of new policies, checkpoints, loss detection;
//! - [`super::survey`]: walks of the store (gauges, pruning, what is due);
//! - [`super::refresher`]: refreshing policies before they expire;
//! - [`super::fleet`]: the steps shared with other daemons through Redis;
//! - [`super::events`]: log lines and metrics;
//! - `service/operations.rs`: what operators do (list, purge, import, discover now).
//!
//! A lookup of a domain with a valid policy is answered from memory with no I/O. A miss
//! runs discovery, shared by all concurrent lookups of the domain (single-flight) and
//! bounded by `lookup.deadline`; past the deadline the lookup answers `NOTFOUND ` and
//! discovery finishes into the cache. The store is the source of truth for policies.
//!
//! Lock order: the single-flight lock (held by `remove_where`) may be
//! held while the hot set's locks and the checkpoint lock are taken, never the
//! reverse; no other lock is held while another is taken.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::durability::{Durability, lost_policies};
use super::entry::Entry;
use super::events;
use super::fleet;
use super::hot::{Found, HotSet, Slot};
use super::lifecycle::{self as rules, LookupRule, Outcome, Rules, Step, Trigger};
use super::redis_cache::{self, RedisCache};
use super::store::PolicyStore;
use super::survey::{Census, release_freed_memory, survey};
use crate::clock::Clock;
use crate::config::CacheConfig;
use crate::flight::{Flight, SingleFlight};
use crate::locks::{read, write};
use crate::metrics::Metrics;
use crate::mtasts::discovery::Discoverer;
use crate::mtasts::domain::Domain;

mod operations;

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

/// Settings the service reads on every operation; replaced as a whole on reload.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    pub cache: CacheConfig,
    pub rules: Rules,
}

impl ServiceSettings {
    /// The settings from `[cache]`; how long a lookup waits comes with each lookup
    /// (the asking zone's deadline).
    pub fn new(cache: CacheConfig) -> Self {
        let rules = Rules::from_config(&cache);
        Self { cache, rules }
    }
}

pub struct PolicyService {
    discoverer: RwLock<Discoverer>,
    store: Arc<dyn PolicyStore>,
    clock: Arc<dyn Clock>,
    settings: RwLock<Arc<ServiceSettings>>,
    hot: HotSet,
    discoveries: SingleFlight<()>,
    durability: Durability,
    census: Census,
    metrics: Arc<Metrics>,
    /// Set once `load` has walked the store (loss check, pruning, gauges).
    loaded: AtomicBool,
    loaded_signal: Notify,
    /// Cancelled at shutdown, once in-flight discoveries have had their time.
    abort: CancellationToken,
    /// The cache shared with the rest of the fleet (`cache.backend = "redis"`).
    shared: OnceLock<Arc<RedisCache>>,
}

impl PolicyService {
    /// Builds the service over `store`. It answers at once: a domain not yet in
    /// memory is read from the store on first use, and [`PolicyService::load`] walks
    /// the store in the background (loss check, pruning, gauges).
    pub fn new(
        discoverer: Discoverer,
        store: Arc<dyn PolicyStore>,
        clock: Arc<dyn Clock>,
        settings: ServiceSettings,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            discoverer: RwLock::new(discoverer),
            hot: HotSet::new(negative_cap(&settings.cache)),
            durability: Durability::new(store.clone()),
            store,
            clock,
            settings: RwLock::new(Arc::new(settings)),
            discoveries: SingleFlight::default(),
            census: Census::default(),
            metrics,
            loaded: AtomicBool::new(false),
            loaded_signal: Notify::new(),
            abort: CancellationToken::new(),
            shared: OnceLock::new(),
        })
    }

    /// Joins a fleet: policies are shared through `shared` from now on.
    pub fn share_with(&self, shared: Arc<RedisCache>) {
        let _ = self.shared.set(shared);
    }

    /// The fleet's shared cache, if this daemon is part of one.
    pub fn shared(&self) -> Option<&Arc<RedisCache>> {
        self.shared.get()
    }

    /// Applies new settings and a new discoverer (resolver, fetch settings) at once.
    pub fn reconfigure(&self, settings: ServiceSettings, discoverer: Discoverer) {
        self.hot.resize_negatives(negative_cap(&settings.cache));
        *write(&self.settings) = Arc::new(settings);
        *write(&self.discoverer) = discoverer;
    }

    fn discoverer(&self) -> Discoverer {
        read(&self.discoverer).clone()
    }

    /// Discovery's HTTPS client as currently configured (TLSRPT uploads use it).
    pub fn http_client(&self) -> reqwest::Client {
        read(&self.discoverer).http().clone()
    }

    pub(super) fn settings(&self) -> Arc<ServiceSettings> {
        read(&self.settings).clone()
    }

    pub(super) fn store(&self) -> &dyn PolicyStore {
        self.store.as_ref()
    }

    pub(super) fn durability(&self) -> &Durability {
        &self.durability
    }

    pub(super) fn census(&self) -> &Census {
        &self.census
    }

    /// The entry in memory, else the one in the store (a policy read from the store
    /// joins the hot set).
    fn found(&self, domain: &str) -> Option<Found> {
        if let Some(found) = self.hot.get(domain) {
            return Some(found);
        }
        match self.store.get(domain) {
            Ok(Some(entry)) if entry.policy.is_some() => {
                let slot = self.hot.admit(domain, entry);
                self.evict();
                Some(Found::Policy(slot))
            }
            // A negative entry stored by an older version: `load` moves it to memory.
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(domain, error = %e, "unreadable cache entry ignored");
                None
            }
        }
    }

    /// The entry in memory, else the one in the store, leaving memory as it is (for
    /// work that is not a lookup).
    fn peek(&self, domain: &str) -> Option<Entry> {
        if let Some(entry) = self.hot.peek(domain) {
            return Some(entry);
        }
        // A "no policy" entry in the store was written by an older version: nothing.
        self.store
            .get(domain)
            .ok()
            .flatten()
            .filter(|e| e.policy.is_some())
    }

    /// Whether `domain`'s policy is in memory's hot set.
    pub fn is_hot(&self, domain: &str) -> bool {
        self.hot.is_hot(domain)
    }

    /// Keeps the hot set within `cache.memory_entries`. Nothing is dropped while the
    /// store fails: memory is then the only copy of what was learnt meanwhile.
    fn evict(&self) {
        if self.store.healthy() {
            self.hot.evict(self.settings().cache.memory_entries);
        }
    }

    /// Puts a decided entry in memory (see [`HotSet::publish`]).
    fn publish(&self, domain: &str, entry: Entry, wanted: bool) {
        if self.hot.publish(domain, entry, wanted) {
            self.evict();
        }
    }

    /// Walks the store at start: reports policies lost since the last checkpoint,
    /// prunes dead entries, moves old stored negatives to memory and sets the gauges.
    /// Lookups are answered meanwhile (from the store, one domain at a time).
    pub fn load(&self) {
        let now = self.clock.now();
        let recorded = self.store.checkpoint();
        let survey = survey(self.store.as_ref(), now, &self.settings().rules, true);
        if let Some(e) = &survey.incomplete {
            tracing::error!(error = %e, "the cache could not be read to the end; the rest is discovered again on its next lookup");
        }
        if let Some(lost) = lost_policies(recorded, survey.policies) {
            self.metrics.cache.cache_policies_lost.inc_by(lost);
            tracing::warn!(
                lost,
                recorded = recorded.unwrap_or_default(),
                found = survey.policies,
                "the cache holds fewer policies than it did at its last checkpoint (damaged cache file?); the lost domains are discovered again on their next lookup"
            );
        }
        let pruned = survey
            .dead
            .iter()
            .filter(|(domain, _)| self.prune_if_dead(domain, now))
            .count();
        // Negative entries written by older versions: kept in memory (up to the cap)
        // and no longer on disk.
        for (domain, entry) in &survey.negatives {
            if self.drop_stored_negative(domain) {
                self.hot.keep_negative(domain, entry);
            }
        }
        self.census.apply(&survey, &self.metrics);
        let policies = survey.policies.saturating_sub(pruned as u64);
        drop(survey);
        release_freed_memory();
        tracing::info!(policies, pruned, "cache checked");
        self.loaded.store(true, Ordering::Release);
        self.loaded_signal.notify_waiters();
    }

    /// Removes `domain` from memory and the store if it says nothing at `now`.
    pub(super) fn prune_if_dead(&self, domain: &str, now: u64) -> bool {
        self.remove_where(domain, |e| !e.is_live(now))
    }

    /// Removes a negative entry (written by an older version) from the store, unless a
    /// discovery is running for the domain or has given it a policy meanwhile.
    fn drop_stored_negative(&self, domain: &str) -> bool {
        self.remove_where(domain, |e| e.policy.is_none())
    }

    /// Removes `domain` from memory and the store if every copy of its entry is
    /// `removable`, checking while no discovery of the domain can run, so that an
    /// entry a discovery is about to write, or has just written, is never deleted.
    fn remove_where(&self, domain: &str, removable: impl Fn(&Entry) -> bool) -> bool {
        self.discoveries
            .unless_running(domain, || {
                let in_memory = self.hot.slot(domain);
                if in_memory.as_ref().is_some_and(|s| !removable(&s.entry)) {
                    return false;
                }
                let stored = self.store.get(domain);
                if matches!(&stored, Ok(Some(e)) if !removable(e)) {
                    return false;
                }
                if in_memory.is_some_and(|s| s.entry.policy.is_some())
                    || matches!(&stored, Ok(Some(e)) if e.policy.is_some())
                {
                    self.durability.withdraw_checkpoint();
                }
                if let Err(e) = self.store.remove(domain) {
                    tracing::warn!(domain, error = %e, "cannot remove cache entry");
                }
                self.hot.remove_policy(domain);
                true
            })
            .unwrap_or(false)
    }

    /// A snapshot of one domain's cache entry.
    pub fn cached(&self, domain: &str) -> Option<Entry> {
        self.found(domain).map(|f| f.entry().clone())
    }

    /// Policies in the store at its last walk (at start, then every refresher pass).
    pub fn policies(&self) -> u64 {
        self.census.policies()
    }

    /// Number of entries in memory (with and without a policy).
    pub fn len(&self) -> usize {
        self.hot.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of discoveries running now.
    pub fn inflight(&self) -> usize {
        self.discoveries.len()
    }

    /// Writes a decided entry to the store: an entry with a policy is stored; one
    /// without is not, and replaces (removes) a stored policy.
    fn persist(&self, domain: &str, old: &Entry, entry: &Entry) {
        // A failing store is logged once per change of state by the store's guard.
        let written = if entry.policy.is_some() {
            self.store.put(domain, entry)
        } else if old.policy.is_some() {
            self.durability.withdraw_checkpoint();
            self.store.remove(domain)
        } else {
            Ok(())
        };
        match written {
            Ok(()) => events::count_modes(&self.metrics, old, entry, self.clock.now()),
            Err(e) => tracing::debug!(domain, error = %e, "cannot persist cache entry"),
        }
    }

    /// The policy for a domain already normalised by
    /// [`crate::mtasts::domain::normalize_key`]: the cache rules decide between the
    /// cached entry and a discovery, which the lookup waits for up to its deadline.
    /// `None`: no usable policy (the answer is "no policy"). `deadline` is the
    /// asking zone's (`lookup.deadline` unless the zone sets its own).
    pub async fn lookup_domain(
        self: &Arc<Self>,
        domain: Domain,
        deadline: std::time::Duration,
    ) -> (Option<Arc<Slot>>, CacheOutcome) {
        let settings = self.settings();
        let found = self.found(&domain);
        match rules::on_lookup(
            found.as_ref().map(Found::entry),
            self.clock.now(),
            &settings.rules,
        ) {
            LookupRule::Hit { recheck } => {
                if recheck {
                    drop(self.discovery(&domain, Trigger::Recheck, true));
                }
                if let Some(Found::Policy(slot)) = found {
                    return (Some(slot), CacheOutcome::Hit);
                }
            }
            LookupRule::NegativeHit => return (None, CacheOutcome::NegativeHit),
            LookupRule::Miss => {}
        }
        let flight = self.discovery(&domain, Trigger::Miss, true);
        if tokio::time::timeout(deadline, flight).await.is_err() {
            tracing::warn!(
                domain = domain.as_str(),
                ?deadline,
                "discovery did not finish before the lookup deadline; answering NOTFOUND for now"
            );
            return (None, CacheOutcome::Timeout);
        }
        let now = self.clock.now();
        let slot = match self.found(&domain) {
            Some(Found::Policy(slot)) if slot.entry.valid_policy(now).is_some() => Some(slot),
            _ => None,
        };
        (slot, CacheOutcome::Miss)
    }

    /// Starts (or joins) the discovery for `domain`; it runs as its own task, so it
    /// finishes even when nobody waits for it any more. `consult`: whether the fleet's
    /// shared cache may settle it (see [`rules::fleet_settles`]).
    pub(super) fn discovery(
        self: &Arc<Self>,
        domain: &str,
        trigger: Trigger,
        consult: bool,
    ) -> Flight<()> {
        let this = self.clone();
        let owned = domain.to_owned();
        self.discoveries.join_or_start(
            domain,
            move || async move {
                tokio::select! {
                    () = this.discover(&owned, trigger, consult) => {}
                    () = this.abort.cancelled() => {
                        tracing::debug!(domain = %owned, "discovery abandoned at shutdown");
                    }
                }
            },
            || (),
        )
    }

    /// Waits until [`PolicyService::load`] has finished.
    pub async fn wait_loaded(&self) {
        loop {
            let notified = self.loaded_signal.notified();
            if self.loaded.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// Waits until no discovery is running.
    pub async fn settle(&self) {
        self.discoveries.settle().await;
    }

    /// Abandons every running discovery and refuses new ones' work (shutdown).
    pub fn abort_discoveries(&self) {
        self.abort.cancel();
    }

    /// One discovery of `domain`: the fleet's step first, then the lookups the rules
    /// ask for (RFC 8461 §3.3: the TXT record, then the policy if its id changed), and
    /// the rules' decision applied: shared, stored (durably if new), put in memory.
    async fn discover(&self, domain: &str, trigger: Trigger, consult: bool) {
        let settings = self.settings();
        let discoverer = self.discoverer();
        // A refresh is not a lookup: it leaves memory's hot set as it is.
        let wanted = trigger != Trigger::Refresh;
        let old = self.peek(domain).unwrap_or_default();
        let mut fetch_lock = None;
        if let Some(shared) = self.shared().filter(|_| consult) {
            let now = || self.clock.now();
            match fleet::consult(shared, domain, &old, trigger, &settings.rules, now).await {
                fleet::Step::Adopt(theirs) => return self.adopt(domain, *theirs, wanted),
                fleet::Step::Discover { lock } => fetch_lock = lock,
            }
        }
        let txt = discoverer.lookup_txt(domain).await;
        let decision =
            match rules::after_txt(&old, trigger, &txt, self.clock.now(), &settings.rules) {
                Step::Done(d) => d,
                Step::Fetch(pending) => {
                    let started = std::time::Instant::now();
                    let fetched = discoverer.fetch_policy(domain).await;
                    events::fetched(&self.metrics, domain, started, &fetched);
                    rules::after_fetch(pending, fetched, self.clock.now(), &settings.rules)
                }
            };
        events::decided(&self.metrics, domain, trigger, &txt, &decision);
        let mut entry = decision.entry;
        if decision.outcome == Outcome::Fetched
            && let Some(shared) = self.shared()
        {
            entry = fleet::share(shared, domain, entry, &self.metrics).await;
        }
        self.persist(domain, &old, &entry);
        if decision.outcome == Outcome::Fetched {
            // A newly fetched or changed policy must survive a crash (kill -9, power
            // loss) once any lookup has been answered with it, so it is on disk before
            // it goes into memory, where lookups see it. Negative entries and
            // unchanged re-checks are left to the store's periodic flush.
            self.durability.make_durable().await;
        }
        self.publish(domain, entry, wanted);
        if let (Some(shared), Some(token)) = (self.shared(), fetch_lock) {
            shared.unlock(domain, &token).await;
        }
    }

    /// Takes a policy from the fleet's shared cache: into the local store (this
    /// daemon's own copy, which outlives a Redis outage) and memory.
    fn adopt(&self, domain: &str, entry: Entry, wanted: bool) {
        let old = self.peek(domain).unwrap_or_default();
        if entry.policy.is_none() || fleet::newer(&old, &entry) {
            return;
        }
        self.persist(domain, &old, &entry);
        tracing::debug!(domain, "policy taken from the shared cache");
        self.metrics.fleet.redis_adopted.inc();
        self.publish(domain, entry, wanted);
    }

    /// Applies an announcement from another daemon of the fleet.
    pub async fn apply_fleet_event(&self, event: redis_cache::Event) {
        match event {
            redis_cache::Event::Purged(domain) => {
                self.purge(&domain);
            }
            redis_cache::Event::Updated(domain) => {
                // Only a copy held here (in memory or the local store) can be stale
                // now; a domain not held here is read from the shared cache on its
                // next miss.
                let Some(held) = self.peek(&domain).filter(|e| e.policy.is_some()) else {
                    return;
                };
                let Some(shared) = self.shared() else { return };
                if let Ok(Some(theirs)) = shared.get(&domain).await
                    && fleet::newer(&theirs, &held)
                {
                    self.adopt(&domain, theirs, false);
                }
            }
        }
    }

    /// One refresher pass to the end (see [`super::refresher::pass`]).
    pub async fn refresh_due(self: &Arc<Self>) -> usize {
        super::refresher::pass(self, &CancellationToken::new()).await
    }

    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Recomputes the gauges memory can answer (called when metrics are scraped); the
    /// ones about stored policies are set by each walk of the store (at start, then
    /// every `cache.refresh_interval`).
    pub fn update_gauges(&self) {
        let negative = self.hot.live_negatives(self.clock.now());
        self.metrics
            .cache
            .cache_entries
            .with_label_values(&["negative"])
            .set(i64::try_from(negative).unwrap_or(i64::MAX));
    }

    /// Writes everything to disk and records the checkpoint (blocking: call it from a
    /// blocking thread, or at shutdown).
    pub fn flush(&self) -> bool {
        self.durability.record_checkpoint()
    }
}

fn negative_cap(cache: &CacheConfig) -> NonZeroUsize {
    cache.negative_entries
}
