//! The policy service: answers lookups from the cache, discovers on a miss, and keeps
//! cached policies fresh. What to do is decided by [`super::rules`]; this module
//! performs the DNS and HTTPS work, applies the decisions to memory and the store, and
//! logs and counts what happened.
//!
//! - A lookup of a domain with a valid policy is answered from memory with no I/O.
//! - A miss runs discovery, shared by all concurrent lookups of the domain
//!   (single-flight) and bounded by `lookup.deadline`; past the deadline the lookup
//!   answers `NOTFOUND ` and discovery finishes into the cache.
//! - The refresher re-fetches policies before they expire.
//!
//! The store is the source of truth for policies; memory holds two bounded sets.
//! Domains with a policy that lookups used recently live in `entries`, at most
//! `cache.memory_entries` of them: one dropped from memory is read back from the store
//! on its next lookup, so memory does not grow with the number of cached policies. The
//! refresher, the gauges and the checkpoint walk the store, not memory. Domains
//! without a policy ("no policy", or a failure back-off) live only in memory, in a
//! least-recently-used set of `cache.negative_entries`: anyone who can make the server
//! send mail to random domains can create them, so they are bounded, cost no disk
//! writes, need no pruning (an expired one is simply a miss), and can never push a
//! policy out.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use lru::LruCache;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::entry::{Entry, Outline};
use super::rules::{self, Decision, LookupRule, Outcome, Rules, Step, Transition, Trigger};
use super::shared::{self, SharedCache};
use super::store::PolicyStore;
use crate::clock::Clock;
use crate::config::{CacheConfig, LookupConfig};
use crate::locks::{lock, read, write};
use crate::metrics::Metrics;
use crate::mtasts::discovery::{Discoverer, TxtLookup};
use crate::mtasts::domain::normalize_key;
use crate::mtasts::policy::Mode;
use crate::protocol::answer::{Reply, ReplyMemo, ZoneOptions, render};

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

type Flight = Shared<BoxFuture<'static, ()>>;

/// A cache entry in memory, with its rendered replies memoized per zone options.
#[derive(Debug)]
struct Slot {
    entry: Entry,
    replies: ReplyMemo,
    /// Used since the last eviction sweep (second chance: see
    /// [`PolicyService::evict`]).
    used: AtomicBool,
}

impl Slot {
    fn new(entry: Entry) -> Arc<Self> {
        Arc::new(Slot {
            entry,
            replies: ReplyMemo::default(),
            used: AtomicBool::new(true),
        })
    }

    fn touch(&self) {
        // Read first: hits on a hot slot then share its cache line instead of
        // writing it from every core.
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
    }
}

/// Policies a walk of the store counted, and the removal count they are valid for.
#[derive(Debug, Clone, Copy)]
struct Walk {
    policies: u64,
    removals: u64,
}

/// What one walk of the store found: the counts behind the gauges and the
/// checkpoint, and the domains the refresher has work for.
#[derive(Debug, Default)]
struct Survey {
    /// Stored policies (valid or not yet pruned).
    policies: u64,
    /// Valid policies by mode: enforce, testing, none.
    modes: [i64; 3],
    oldest: u64,
    expiring: i64,
    failing: i64,
    /// Entries that no longer say anything (pruned), and whether each held a policy.
    dead: Vec<(String, bool)>,
    /// Policies due for a refresh.
    due: Vec<String>,
    /// "No policy" entries stored by an older version: moved to memory.
    negatives: Vec<(String, Entry)>,
    /// The walk ended early (a damaged store).
    incomplete: Option<String>,
}

/// What memory holds for a domain: a policy entry with its memoized replies, or a
/// negative entry (kept lean: there are many, and they render no reply).
enum Found {
    Policy(Arc<Slot>),
    Negative(Arc<Entry>),
}

impl Found {
    fn entry(&self) -> &Entry {
        match self {
            Found::Policy(slot) => &slot.entry,
            Found::Negative(entry) => entry,
        }
    }
}

/// Settings the service reads on every operation; replaced as a whole on reload.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    pub cache: CacheConfig,
    pub lookup: LookupConfig,
    pub rules: Rules,
}

impl ServiceSettings {
    pub fn new(cache: CacheConfig, lookup: LookupConfig) -> Self {
        let rules = Rules::from_config(&cache);
        Self {
            cache,
            lookup,
            rules,
        }
    }
}

pub struct PolicyService {
    discoverer: RwLock<Discoverer>,
    store: Arc<dyn PolicyStore>,
    clock: Arc<dyn Clock>,
    settings: RwLock<Arc<ServiceSettings>>,
    /// Domains with a policy that lookups used recently (at most
    /// `cache.memory_entries`); every one is also in the store.
    entries: RwLock<HashMap<String, Arc<Slot>>>,
    /// Domains without a policy, memory only, bounded.
    negatives: Mutex<LruCache<String, Arc<Entry>>>,
    inflight: Mutex<HashMap<String, Flight>>,
    idle: Notify,
    metrics: Arc<Metrics>,
    /// Set once `load` has walked the store (loss check, pruning, gauges).
    loaded: AtomicBool,
    loaded_signal: Notify,
    /// Cancelled at shutdown, once in-flight discoveries have had their time.
    abort: CancellationToken,
    /// Policy writes so far, and (under the lock) how many of them a flush has made
    /// durable: concurrent writers share one flush (group commit).
    policy_writes: AtomicU64,
    durable: tokio::sync::Mutex<u64>,
    /// Policies removed from the store so far, and whether a checkpoint is on record:
    /// see [`PolicyService::record_checkpoint`].
    policy_removals: AtomicU64,
    checkpoint_on_record: Mutex<bool>,
    /// Policies in the store at its last walk.
    surveyed_policies: AtomicU64,
    /// What the refresher's last walk counted, for the checkpoint that follows it.
    last_walk: Mutex<Option<Walk>>,
    /// The cache shared with the rest of the fleet (`cache.backend = "redis"`).
    shared: OnceLock<Arc<SharedCache>>,
}

/// What the fleet's shared cache did for a discovery about to run.
enum FleetStep {
    /// It had the answer; it is now in memory and the local store.
    Settled,
    /// Discover here, holding the fetch lock if one was taken.
    Discover { lock: Option<String> },
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
        let negative_cap = negative_cap(&settings.cache);
        Arc::new(Self {
            discoverer: RwLock::new(discoverer),
            store,
            clock,
            settings: RwLock::new(Arc::new(settings)),
            entries: RwLock::new(HashMap::new()),
            negatives: Mutex::new(LruCache::new(negative_cap)),
            inflight: Mutex::new(HashMap::new()),
            idle: Notify::new(),
            metrics,
            loaded: AtomicBool::new(false),
            loaded_signal: Notify::new(),
            abort: CancellationToken::new(),
            policy_writes: AtomicU64::new(0),
            durable: tokio::sync::Mutex::new(0),
            policy_removals: AtomicU64::new(0),
            checkpoint_on_record: Mutex::new(true),
            surveyed_policies: AtomicU64::new(0),
            last_walk: Mutex::new(None),
            shared: OnceLock::new(),
        })
    }

    /// Joins a fleet: policies are shared through `shared` from now on.
    pub fn share_with(&self, shared: Arc<SharedCache>) {
        let _ = self.shared.set(shared);
    }

    /// The fleet's shared cache, if this daemon is part of one.
    pub fn shared(&self) -> Option<&Arc<SharedCache>> {
        self.shared.get()
    }

    /// Applies new settings and a new discoverer (resolver, fetch settings) at once.
    pub fn reconfigure(&self, settings: ServiceSettings, discoverer: Discoverer) {
        lock(&self.negatives).resize(negative_cap(&settings.cache));
        *write(&self.settings) = Arc::new(settings);
        *write(&self.discoverer) = discoverer;
    }

    fn discoverer(&self) -> Discoverer {
        read(&self.discoverer).clone()
    }

    fn settings(&self) -> Arc<ServiceSettings> {
        read(&self.settings).clone()
    }

    /// The entry in memory, else the one in the store (a policy read from the store
    /// joins the hot set).
    fn found(&self, domain: &str) -> Option<Found> {
        if let Some(slot) = read(&self.entries).get(domain).cloned() {
            slot.touch();
            return Some(Found::Policy(slot));
        }
        if let Some(entry) = lock(&self.negatives).get(domain).cloned() {
            return Some(Found::Negative(entry));
        }
        match self.store.get(domain) {
            Ok(Some(entry)) if entry.policy.is_some() => {
                let slot = write(&self.entries)
                    .entry(domain.to_owned())
                    .or_insert_with(|| Slot::new(entry))
                    .clone();
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
        if let Some(slot) = read(&self.entries).get(domain) {
            return Some(slot.entry.clone());
        }
        if let Some(entry) = lock(&self.negatives).peek(domain) {
            return Some(Entry::clone(entry));
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
        read(&self.entries).contains_key(domain)
    }

    /// Keeps the hot set within `cache.memory_entries`. When it is over, one sweep
    /// drops slots not used since the previous sweep (and clears the mark on the
    /// others) until a tenth of the room is free, so sweeps are rare and lookups only
    /// ever set a flag. Nothing is dropped while the store fails: memory is then the
    /// only copy of what was learnt meanwhile.
    fn evict(&self) {
        let cap = self.settings().cache.memory_entries.max(1);
        if read(&self.entries).len() <= cap || !self.store.healthy() {
            return;
        }
        let mut entries = write(&self.entries);
        let target = cap - cap / 10;
        let mut excess = entries.len().saturating_sub(target);
        entries.retain(|_, slot| {
            if excess == 0 || slot.used.swap(false, Ordering::Relaxed) {
                true
            } else {
                excess -= 1;
                false
            }
        });
        // Everything was used since the last sweep: drop arbitrary ones.
        entries.retain(|_, _| {
            if excess == 0 {
                true
            } else {
                excess -= 1;
                false
            }
        });
    }

    /// Walks the store once (blocking: call it on a blocking thread). `whole`: read
    /// whole entries (the walk at start, which also rewrites old formats and moves old
    /// stored negatives to memory); otherwise outlines, which cost a fraction.
    fn survey(&self, now: u64, rules: &Rules, whole: bool) -> Survey {
        let mut s = Survey::default();
        let note = |s: &mut Survey, domain: String, outline: &Outline| {
            if outline.policy.is_some() {
                s.policies += 1;
            }
            if !outline.is_live(now) {
                s.dead.push((domain, outline.policy.is_some()));
                return None;
            }
            let Some(p) = outline.valid_policy(now) else {
                return Some(domain);
            };
            s.modes[match p.mode {
                Mode::Enforce => 0,
                Mode::Testing => 1,
                Mode::None => 2,
            }] += 1;
            s.oldest = s.oldest.max(now.saturating_sub(p.fetched_at));
            if p.expires_at <= now + 86_400 {
                s.expiring += 1;
            }
            if outline.failed && p.mode != Mode::None {
                s.failing += 1;
            }
            if rules::outline_due_at(&domain, outline, now, rules).is_some_and(|t| now >= t) {
                s.due.push(domain);
            }
            None
        };
        let walked = if whole {
            self.store.scan(&mut |domain, entry| match entry {
                Ok(entry) => {
                    // A live entry without a valid policy: a negative stored by an
                    // older version.
                    if let Some(domain) = note(&mut s, domain, &Outline::from(&entry)) {
                        s.negatives.push((domain, entry));
                    }
                }
                // Said once, at start; the refresher's walks pass over it quietly.
                Err(e) => tracing::warn!(error = %e, "ignoring unreadable cache entry"),
            })
        } else {
            self.store.scan_outlines(&mut |domain, outline| {
                if let Ok(outline) = outline {
                    note(&mut s, domain, &outline);
                }
            })
        };
        if let Err(e) = walked {
            s.incomplete = Some(e.to_string());
        }
        s
    }

    /// Sets the gauges that describe the store from a survey.
    fn apply_survey(&self, s: &Survey) {
        let g = &self.metrics.cache_entries;
        for (mode, n) in ["enforce", "testing", "none"].iter().zip(s.modes) {
            g.with_label_values(&[mode]).set(n);
        }
        self.metrics
            .oldest_policy_age
            .set(i64::try_from(s.oldest).unwrap_or(i64::MAX));
        self.metrics.expiring_soon.set(s.expiring);
        self.metrics.failing.set(s.failing);
        self.surveyed_policies.store(s.policies, Ordering::Release);
    }

    /// Walks the store at start: reports policies lost since the last checkpoint,
    /// prunes dead entries, moves old stored negatives to memory and sets the gauges.
    /// Lookups are answered meanwhile (from the store, one domain at a time).
    pub fn load(&self) {
        let now = self.clock.now();
        let recorded = self.store.checkpoint();
        let survey = self.survey(now, &self.settings().rules, true);
        if let Some(e) = &survey.incomplete {
            tracing::error!(error = %e, "the cache could not be read to the end; the rest is discovered again on its next lookup");
        }
        if let Some(lost) = lost_policies(recorded, survey.policies) {
            self.metrics.cache_policies_lost.inc_by(lost);
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
                lock(&self.negatives).get_or_insert(domain.clone(), || Arc::new(entry.clone()));
            }
        }
        self.apply_survey(&survey);
        let policies = survey.policies.saturating_sub(pruned as u64);
        drop(survey);
        release_freed_memory();
        tracing::info!(policies, pruned, "cache checked");
        self.loaded.store(true, Ordering::Release);
        self.loaded_signal.notify_waiters();
    }

    /// Removes `domain` from memory and the store if it says nothing at `now`.
    fn prune_if_dead(&self, domain: &str, now: u64) -> bool {
        self.remove_where(domain, |e| !e.is_live(now))
    }

    /// Removes a negative entry (written by an older version) from the store, unless a
    /// discovery is running for the domain or has given it a policy meanwhile.
    fn drop_stored_negative(&self, domain: &str) -> bool {
        self.remove_where(domain, |e| e.policy.is_none())
    }

    /// Removes `domain` from memory and the store if every copy of its entry is
    /// `removable`, re-checking under the in-flight lock so that an entry a running
    /// discovery is about to write, or has just written, is never deleted.
    fn remove_where(&self, domain: &str, removable: impl Fn(&Entry) -> bool) -> bool {
        let inflight = lock(&self.inflight);
        if inflight.contains_key(domain) {
            return false;
        }
        let in_memory = read(&self.entries).get(domain).cloned();
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
            self.withdraw_checkpoint();
        }
        if let Err(e) = self.store.remove(domain) {
            tracing::warn!(domain, error = %e, "cannot remove cache entry");
        }
        write(&self.entries).remove(domain);
        drop(inflight);
        true
    }

    /// A snapshot of one domain's cache entry.
    pub fn cached(&self, domain: &str) -> Option<Entry> {
        self.found(domain).map(|f| f.entry().clone())
    }

    /// Policies in the store at its last walk (at start, then every refresher pass).
    pub fn policies(&self) -> u64 {
        self.surveyed_policies.load(Ordering::Acquire)
    }

    /// Number of entries in memory (with and without a policy).
    pub fn len(&self) -> usize {
        read(&self.entries).len() + lock(&self.negatives).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of discoveries running now.
    pub fn inflight(&self) -> usize {
        lock(&self.inflight).len()
    }

    /// Writes a decided entry to the store: an entry with a policy is stored; one
    /// without is not, and replaces (removes) a stored policy.
    fn persist(&self, domain: &str, old: &Entry, entry: &Entry) {
        // A failing store is logged once per change of state by the store's guard.
        let written = if entry.policy.is_some() {
            self.store.put(domain, entry)
        } else if old.policy.is_some() {
            self.withdraw_checkpoint();
            self.store.remove(domain)
        } else {
            Ok(())
        };
        match written {
            Ok(()) => self.count_modes(old, entry),
            Err(e) => tracing::debug!(domain, error = %e, "cannot persist cache entry"),
        }
    }

    /// Moves the per-mode entry gauges from `old` to `new` at once; each walk of the
    /// store sets them exactly again.
    fn count_modes(&self, old: &Entry, new: &Entry) {
        let now = self.clock.now();
        let g = &self.metrics.cache_entries;
        if let Some(p) = old.valid_policy(now) {
            g.with_label_values(&[p.policy.mode.as_str()]).dec();
        }
        if let Some(p) = new.valid_policy(now) {
            g.with_label_values(&[p.policy.mode.as_str()]).inc();
        }
    }

    /// Puts a decided entry in memory: in `entries` with a policy, else among the
    /// bounded negatives.
    /// `wanted`: a lookup asked for the domain. A policy nobody looked up (a refresh of
    /// a domain no longer in memory, an import) stays in the store only, so that such
    /// work never pushes the lookups' hot set out.
    fn publish(&self, domain: &str, entry: Entry, wanted: bool) {
        if entry.policy.is_some() {
            lock(&self.negatives).pop(domain);
            let mut entries = write(&self.entries);
            if wanted || entries.contains_key(domain) {
                entries.insert(domain.to_owned(), Slot::new(entry));
                drop(entries);
                self.evict();
            }
        } else {
            if read(&self.entries).contains_key(domain) {
                write(&self.entries).remove(domain);
            }
            lock(&self.negatives).put(domain.to_owned(), Arc::new(entry));
        }
    }

    /// Answers one socketmap lookup.
    pub async fn lookup(self: &Arc<Self>, key: &str, zone: &ZoneOptions) -> (Reply, CacheOutcome) {
        match normalize_key(key) {
            Ok(domain) => self.lookup_domain(domain, zone).await,
            Err(skip) => {
                tracing::debug!(key, reason = %skip, "no lookup");
                (Reply::NotFound, CacheOutcome::Skipped)
            }
        }
    }

    /// Answers a lookup for a domain already normalised by
    /// [`crate::mtasts::domain::normalize_key`].
    pub async fn lookup_domain(
        self: &Arc<Self>,
        domain: String,
        zone: &ZoneOptions,
    ) -> (Reply, CacheOutcome) {
        let settings = self.settings();
        let found = self.found(&domain);
        match rules::on_lookup(
            found.as_ref().map(Found::entry),
            self.clock.now(),
            &settings.rules,
        ) {
            LookupRule::Hit { recheck } => {
                if recheck {
                    drop(self.flight(&domain, Trigger::Recheck, true));
                }
                if let Some(Found::Policy(slot)) = found {
                    return (self.reply(&domain, &slot, zone), CacheOutcome::Hit);
                }
            }
            LookupRule::NegativeHit => return (Reply::NotFound, CacheOutcome::NegativeHit),
            LookupRule::Miss => {}
        }
        let deadline = settings.lookup.deadline;
        let flight = self.flight(&domain, Trigger::Miss, true);
        if tokio::time::timeout(deadline, flight).await.is_err() {
            tracing::warn!(
                domain,
                ?deadline,
                "discovery did not finish before the lookup deadline; answering NOTFOUND for now"
            );
            return (Reply::NotFound, CacheOutcome::Timeout);
        }
        let now = self.clock.now();
        let reply = match self.found(&domain) {
            Some(Found::Policy(slot)) if slot.entry.valid_policy(now).is_some() => {
                self.reply(&domain, &slot, zone)
            }
            _ => Reply::NotFound,
        };
        (reply, CacheOutcome::Miss)
    }

    /// The memoized reply for a slot under `zone`.
    fn reply(&self, domain: &str, slot: &Slot, zone: &ZoneOptions) -> Reply {
        slot.replies.get_or_render(zone, || {
            let Some(cached) = &slot.entry.policy else {
                return Reply::NotFound;
            };
            let rendered = render(domain, Some(&cached.policy), zone);
            if !rendered.dropped_lines.is_empty() {
                tracing::warn!(domain, lines = ?rendered.dropped_lines, "policy lines with '{{' or '}}' left out of TLSRPT attributes");
            }
            if rendered.tlsrpt_dropped_for_size {
                tracing::warn!(
                    domain,
                    "reply too long for Postfix; TLSRPT attributes left out"
                );
            }
            rendered.reply
        })
    }

    /// Starts (or joins) the discovery for `domain`; it runs as its own task, so it
    /// finishes even when nobody waits for it any more. `consult`: whether the fleet's
    /// shared cache may settle it (see [`rules::fleet_settles`]).
    fn flight(self: &Arc<Self>, domain: &str, trigger: Trigger, consult: bool) -> Flight {
        let mut inflight = lock(&self.inflight);
        if let Some(f) = inflight.get(domain) {
            return f.clone();
        }
        let this = self.clone();
        let owned = domain.to_owned();
        let task = tokio::spawn(async move {
            tokio::select! {
                () = this.discover(&owned, trigger, consult) => {}
                () = this.abort.cancelled() => {
                    tracing::debug!(domain = %owned, "discovery abandoned at shutdown");
                }
            }
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
        loop {
            let notified = self.idle.notified();
            if lock(&self.inflight).is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// Abandons every running discovery and refuses new ones' work (shutdown).
    pub fn abort_discoveries(&self) {
        self.abort.cancel();
    }

    /// One discovery step for `domain`: the lookups the rules ask for, then the
    /// rules' decision applied, logged and counted.
    async fn discover(&self, domain: &str, trigger: Trigger, consult: bool) {
        let settings = self.settings();
        let discoverer = self.discoverer();
        // A refresh is not a lookup: it leaves memory's hot set as it is.
        let wanted = trigger != Trigger::Refresh;
        let old = self.peek(domain).unwrap_or_default();
        let mut fetch_lock = None;
        if let Some(shared) = self.shared().filter(|_| consult) {
            match self.consult_fleet(shared, domain, &old, trigger).await {
                FleetStep::Settled => return,
                FleetStep::Discover { lock } => fetch_lock = lock,
            }
        }
        let txt = discoverer.lookup_txt(domain).await;
        let decision =
            match rules::after_txt(&old, trigger, &txt, self.clock.now(), &settings.rules) {
                Step::Done(d) => d,
                Step::Fetch(pending) => {
                    let started = std::time::Instant::now();
                    let fetched = discoverer.fetch_policy(domain).await;
                    for note in fetched.iter().flat_map(|p| &p.notes) {
                        tracing::info!(domain, note, "policy accepted leniently");
                    }
                    let result = if fetched.is_ok() { "ok" } else { "error" };
                    self.metrics
                        .fetch_duration
                        .with_label_values(&[result])
                        .observe(started.elapsed().as_secs_f64());
                    rules::after_fetch(pending, fetched, self.clock.now(), &settings.rules)
                }
            };
        self.report(domain, trigger, &txt, &decision);
        let mut entry = decision.entry;
        if decision.outcome == Outcome::Fetched
            && let Some(shared) = self.shared()
        {
            entry = self.share(shared, domain, entry).await;
        }
        self.persist(domain, &old, &entry);
        if decision.outcome == Outcome::Fetched {
            // A newly fetched or changed policy must survive a crash (kill -9, power
            // loss) once any lookup has been answered with it, so it is on disk before
            // it goes into memory, where lookups see it. Negative entries and
            // unchanged re-checks are left to the store's periodic flush.
            self.make_durable().await;
        }
        self.publish(domain, entry, wanted);
        if let (Some(shared), Some(token)) = (self.shared(), fetch_lock) {
            shared.unlock(domain, &token).await;
        }
    }

    /// Before discovering `domain`: takes the fleet's policy if it settles the
    /// discovery; otherwise takes the domain's fetch lock, or waits (up to the lock's
    /// lifetime) while another daemon holds it and takes that daemon's result. Redis
    /// failing at any point means discovering here, as a daemon on its own would.
    async fn consult_fleet(
        &self,
        shared: &Arc<SharedCache>,
        domain: &str,
        own: &Entry,
        trigger: Trigger,
    ) -> FleetStep {
        let settles = |theirs: &Entry| {
            let rules = self.settings().rules;
            rules::fleet_settles(domain, own, theirs, trigger, self.clock.now(), &rules)
        };
        match shared.get(domain).await {
            Ok(Some(theirs)) if settles(&theirs) => {
                self.adopt(domain, theirs, trigger != Trigger::Refresh);
                return FleetStep::Settled;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(domain, error = %e, "shared cache not consulted");
                return FleetStep::Discover { lock: None };
            }
        }
        let give_up = std::time::Instant::now() + shared.lock_ttl();
        loop {
            let lock = shared.try_lock(domain).await;
            if let Ok(shared::Lock::Busy) = lock {
                // Another daemon is fetching: its result is announced when written.
                shared.wait_update(FLEET_POLL).await;
            }
            // Read again in both cases: a daemon may have written and released the
            // lock between the first read and the lock.
            if let Ok(Some(theirs)) = shared.get(domain).await
                && settles(&theirs)
            {
                if let Ok(shared::Lock::Held(token)) = &lock {
                    shared.unlock(domain, token).await;
                }
                self.adopt(domain, theirs, trigger != Trigger::Refresh);
                return FleetStep::Settled;
            }
            match lock {
                Ok(shared::Lock::Held(token)) => return FleetStep::Discover { lock: Some(token) },
                Ok(shared::Lock::Busy) if std::time::Instant::now() < give_up => {}
                Ok(shared::Lock::Busy) => {
                    tracing::info!(
                        domain,
                        "another daemon's fetch did not finish in time; fetching here"
                    );
                    return FleetStep::Discover { lock: None };
                }
                Err(_) => return FleetStep::Discover { lock: None },
            }
        }
    }

    /// Writes a fetched policy to the fleet's shared cache. If the fleet already has
    /// one fetched later (another daemon's fetch finished first with a newer id), that
    /// one is kept everywhere and taken here instead: an older fetch never wins.
    async fn share(&self, shared: &SharedCache, domain: &str, entry: Entry) -> Entry {
        match shared.put(domain, &entry).await {
            Ok(false) => match shared.get(domain).await {
                Ok(Some(theirs)) if newer(&theirs, &entry) => {
                    tracing::info!(
                        domain,
                        "the fleet has a newer policy than this fetch; keeping that one"
                    );
                    self.metrics.redis_adopted.inc();
                    theirs
                }
                _ => entry,
            },
            Ok(true) => entry,
            Err(e) => {
                tracing::debug!(domain, error = %e, "policy not shared");
                entry
            }
        }
    }

    /// Takes a policy from the fleet's shared cache: into the local store (this
    /// daemon's own copy, which outlives a Redis outage) and memory.
    fn adopt(&self, domain: &str, entry: Entry, wanted: bool) {
        let old = self.peek(domain).unwrap_or_default();
        if entry.policy.is_none() || newer(&old, &entry) {
            return;
        }
        self.persist(domain, &old, &entry);
        tracing::debug!(domain, "policy taken from the shared cache");
        self.metrics.redis_adopted.inc();
        self.publish(domain, entry, wanted);
    }

    /// Applies an announcement from another daemon of the fleet.
    pub async fn apply_fleet_event(&self, event: shared::Event) {
        match event {
            shared::Event::Purged(domain) => {
                self.purge(&domain);
            }
            shared::Event::Updated(domain) => {
                // Only a copy held here (in memory or the local store) can be stale
                // now; a domain not held here is read from the shared cache on its
                // next miss.
                let Some(held) = self.peek(&domain).filter(|e| e.policy.is_some()) else {
                    return;
                };
                let Some(shared) = self.shared() else { return };
                if let Ok(Some(theirs)) = shared.get(&domain).await
                    && newer(&theirs, &held)
                {
                    self.adopt(&domain, theirs, false);
                }
            }
        }
    }

    /// Purges `domain` here and from the fleet's shared cache, which tells every other
    /// daemon to purge it too. Returns whether it was cached anywhere.
    pub async fn purge_everywhere(&self, domain: &str) -> bool {
        let here = self.purge(domain);
        let there = match self.shared() {
            Some(shared) => shared.remove(domain).await.unwrap_or_else(|e| {
                tracing::warn!(domain, error = %e, "purged here only: the shared cache is unreachable");
                false
            }),
            None => false,
        };
        here || there
    }

    /// Flushes the store so that every write made before this call is durable. The
    /// flush runs on a blocking thread (it waits for fsync), and concurrent callers
    /// share one flush: a caller whose write a flush already covered returns at once.
    async fn make_durable(&self) {
        let mine = self.policy_writes.fetch_add(1, Ordering::AcqRel) + 1;
        let mut durable = self.durable.lock().await;
        if *durable >= mine {
            return;
        }
        let covers = self.policy_writes.load(Ordering::Acquire);
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.flush()).await {
            Ok(Ok(())) => *durable = covers,
            // A failing store is logged once per change of state by the store's guard.
            Ok(Err(e)) => tracing::debug!(error = %e, "cannot flush the cache"),
            Err(e) => tracing::error!(error = %e, "cache flush task failed"),
        }
    }

    /// One log line and the counters for a decision.
    fn report(&self, domain: &str, trigger: Trigger, txt: &TxtLookup, d: &Decision) {
        let m = &self.metrics;
        m.discoveries
            .with_label_values(&[trigger.as_str(), d.outcome.as_str()])
            .inc();
        let cached = d.kept_mode.is_some();
        match d.outcome {
            Outcome::Unchanged | Outcome::Backoff | Outcome::NoPolicy => {
                tracing::debug!(domain, result = d.outcome.as_str(), "discovery");
            }
            Outcome::Kept => {
                tracing::info!(
                    domain,
                    "TXT record gone; cached policy stays in force until it expires"
                );
            }
            Outcome::TxtFailed => {
                if let TxtLookup::Failed { reason } = txt {
                    tracing::warn!(domain, %reason, cached, "TXT lookup failed");
                }
            }
            Outcome::FetchFailed => {
                let Some(f) = &d.entry.failure else { return };
                m.fetch_failures
                    .with_label_values(&[f.class.as_str()])
                    .inc();
                if let Some(mode) = d.kept_mode.filter(|m| *m != Mode::None) {
                    m.refresh_failures.with_label_values(&[mode.as_str()]).inc();
                }
                if cached {
                    tracing::warn!(domain, class = %f.class, error = %f.message, "policy fetch failed; cached policy stays in force");
                } else {
                    tracing::warn!(domain, class = %f.class, error = %f.message, "policy fetch failed; treating the domain as having no policy");
                }
            }
            Outcome::Fetched => {
                let Some(p) = &d.entry.policy else { return };
                match &d.transition {
                    Some(Transition::Replaced {
                        from,
                        to,
                        mx_changed,
                    }) => {
                        let (from, to) = (from.as_str(), to.as_str());
                        if from != to {
                            m.transitions.with_label_values(&[from, to, "mode"]).inc();
                        }
                        if *mx_changed {
                            m.transitions.with_label_values(&[from, to, "mx"]).inc();
                        }
                        if d.transition.as_ref().is_some_and(Transition::is_downgrade) {
                            tracing::warn!(domain, from, to, id = %p.id, mx_changed, "policy downgraded");
                        } else if from != to || *mx_changed {
                            tracing::warn!(domain, from, to, id = %p.id, mx_changed, "policy changed");
                        } else {
                            tracing::info!(domain, id = %p.id, mode = to, max_age = p.policy.max_age, "policy refreshed");
                        }
                    }
                    _ => {
                        tracing::info!(domain, id = %p.id, mode = %p.policy.mode, max_age = p.policy.max_age, "policy cached");
                    }
                }
            }
        }
    }

    /// One refresher pass to the end (see [`PolicyService::refresh_pass`]).
    pub async fn refresh_due(self: &Arc<Self>) -> usize {
        self.refresh_pass(&CancellationToken::new()).await
    }

    /// One refresher pass: prune dead entries and refresh due policies, at most
    /// `refresh_concurrency` at a time, until done or `stop` is cancelled. Returns how
    /// many refreshes were started.
    pub async fn refresh_pass(self: &Arc<Self>, stop: &CancellationToken) -> usize {
        let settings = self.settings();
        let rules = settings.rules;
        let now = self.clock.now();
        // One walk of the store finds the dead and the due, and counts for the gauges.
        // Walking and pruning read and delete in the store: on a blocking thread, so
        // that lookups on the runtime's workers never wait behind them.
        let this = self.clone();
        let walked = tokio::task::spawn_blocking(move || {
            // Removals counted from before the walk: the checkpoint this walk allows is
            // recorded only if no removal but its own pruning happened meanwhile.
            let removals = this.policy_removals.load(Ordering::Acquire);
            let survey = this.survey(now, &rules, false);
            this.apply_survey(&survey);
            release_freed_memory();
            let (mut pruned, mut pruned_policies) = (0, 0);
            for (domain, had_policy) in &survey.dead {
                if this.prune_if_dead(domain, now) {
                    pruned += 1;
                    pruned_policies += u64::from(*had_policy);
                }
            }
            if survey.incomplete.is_none() {
                *lock(&this.last_walk) = Some(Walk {
                    policies: survey.policies.saturating_sub(pruned_policies),
                    removals: removals + pruned_policies,
                });
            }
            (survey.due, pruned)
        })
        .await;
        let (due, pruned) = walked.unwrap_or_else(|e| {
            tracing::error!(error = %e, "cache walk task failed");
            (Vec::new(), 0)
        });
        if pruned > 0 {
            tracing::debug!(pruned, "expired cache entries pruned");
        }
        let limit = Arc::new(Semaphore::new(settings.cache.refresh_concurrency));
        let mut tasks = tokio::task::JoinSet::new();
        let mut started = 0;
        for domain in &due {
            let permit = tokio::select! {
                p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                () = stop.cancelled() => break,
            };
            let flight = self.flight(domain, Trigger::Refresh, true);
            started += 1;
            tasks.spawn(async move {
                flight.await;
                drop(permit);
            });
        }
        tokio::select! {
            () = async { while tasks.join_next().await.is_some() {} } => {}
            () = stop.cancelled() => {}
        }
        started
    }

    /// Runs the refresher until `stop` is cancelled.
    pub async fn run_refresher(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let interval = self.settings().cache.refresh_interval;
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            let n = self.refresh_pass(&stop).await;
            if n > 0 {
                tracing::info!(refreshed = n, "policies refreshed");
            }
            let this = self.clone();
            let walk = lock(&self.last_walk).take();
            let recorded = tokio::task::spawn_blocking(move || match walk {
                Some(walk) => this.flush_and_record(Some(walk)),
                None => this.record_checkpoint(),
            });
            if let Err(e) = recorded.await {
                tracing::error!(error = %e, "cache checkpoint task failed");
            }
        }
    }

    /// A snapshot of every entry, sorted by domain: the store's policies (newer copies
    /// in memory win) and memory's negative entries. Walks the store: blocking.
    pub fn snapshot(&self) -> Vec<(String, Entry)> {
        let mut all: HashMap<String, Entry> = HashMap::new();
        let walked = self.store.scan(&mut |domain, entry| {
            if let Ok(e) = entry {
                all.insert(domain, e);
            }
        });
        if let Err(e) = walked {
            tracing::warn!(error = %e, "the cache listing is incomplete");
        }
        for (d, slot) in read(&self.entries).iter() {
            all.insert(d.clone(), slot.entry.clone());
        }
        for (d, e) in lock(&self.negatives).iter() {
            all.insert(d.clone(), Entry::clone(e));
        }
        let mut all: Vec<(String, Entry)> = all.into_iter().collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Removes a domain from the cache (memory and store). Returns whether it was there.
    pub fn purge(&self, domain: &str) -> bool {
        let found = self.found(domain);
        let present = found.is_some();
        if let Some(Found::Policy(slot)) = &found {
            self.withdraw_checkpoint();
            self.count_modes(&slot.entry, &Entry::default());
        }
        if let Err(e) = self.store.remove(domain) {
            tracing::warn!(domain, error = %e, "cannot remove cache entry");
        }
        write(&self.entries).remove(domain);
        lock(&self.negatives).pop(domain);
        if present {
            tracing::info!(domain, "cache entry purged");
        }
        present
    }

    /// Puts a policy learned elsewhere into the cache (`mta-stsd import`): taken as if
    /// fetched at `fetched_at` under `id` unless it has expired or the cache already
    /// has one fetched at the same time or later. Written and flushed before it is
    /// used, like a fetched policy.
    pub async fn import_policy(
        &self,
        domain: &str,
        id: &str,
        fetched_at: u64,
        policy: crate::mtasts::policy::Policy,
    ) -> rules::Import {
        let old = self.found(domain).map(|f| f.entry().clone());
        let decision = rules::on_import(old.as_ref(), policy, id, fetched_at, self.clock.now());
        if let rules::Import::Replace(entry) = &decision {
            if let Some(shared) = self.shared() {
                // Imported into one daemon, known to the whole fleet.
                if let Err(e) = shared.put(domain, entry).await {
                    tracing::debug!(domain, error = %e, "imported policy not shared");
                }
            }
            self.persist(domain, &old.unwrap_or_default(), entry);
            self.make_durable().await;
            self.publish(domain, (**entry).clone(), false);
            tracing::info!(domain, id, fetched_at, "policy imported");
        }
        decision
    }

    /// Runs a discovery for `domain` now (fetching whatever the TXT id says when a
    /// policy is cached) and returns the resulting entry.
    pub async fn refresh_now(self: &Arc<Self>, domain: &str) -> Option<Entry> {
        let entry = self.cached(domain);
        let trigger = rules::manual_trigger(entry.as_ref(), self.clock.now());
        // An operator asked for this daemon to look now: not settled by the fleet.
        self.flight(domain, trigger, false).await;
        self.cached(domain)
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
        let now = self.clock.now();
        let negative = lock(&self.negatives)
            .iter()
            .filter(|(_, e)| e.is_negative(now))
            .count();
        self.metrics
            .cache_entries
            .with_label_values(&["negative"])
            .set(i64::try_from(negative).unwrap_or(i64::MAX));
    }

    /// Writes everything to disk and records the checkpoint (blocking: call it from a
    /// blocking thread, or at shutdown).
    pub fn flush(&self) -> bool {
        self.record_checkpoint()
    }

    /// Flushes the store and records how many policies it now holds durably, so that
    /// the next start can tell if a damaged store lost some (see
    /// [`PolicyStore::checkpoint`]). The count is taken by walking the store before
    /// the flush, so the flush makes every policy counted durable. A removal of a
    /// policy withdraws the record first, and a removal that races with this call keeps
    /// it withdrawn, so the record never claims more than the store holds.
    fn record_checkpoint(&self) -> bool {
        let removals = self.policy_removals.load(Ordering::Acquire);
        let mut policies = 0u64;
        let walked = self.store.scan_outlines(&mut |_, outline| {
            if outline.is_ok_and(|o| o.policy.is_some()) {
                policies += 1;
            }
        });
        // Not counted to the end: flush, record nothing.
        let walk = walked.is_ok().then_some(Walk { policies, removals });
        self.flush_and_record(walk)
    }

    /// Flushes the store, then records `walk.policies` as the checkpoint unless a
    /// policy was removed since the walk counted them.
    fn flush_and_record(&self, walk: Option<Walk>) -> bool {
        if let Err(e) = self.store.flush() {
            tracing::error!(error = %e, "cannot flush the cache");
            return false;
        }
        let Some(walk) = walk else { return true };
        let mut on_record = lock(&self.checkpoint_on_record);
        if self.policy_removals.load(Ordering::Acquire) == walk.removals {
            match self.store.set_checkpoint(Some(walk.policies)) {
                Ok(()) => *on_record = true,
                Err(e) => tracing::debug!(error = %e, "cannot record the cache checkpoint"),
            }
        }
        true
    }

    /// Withdraws the checkpoint before a policy is removed from the store.
    fn withdraw_checkpoint(&self) {
        let mut on_record = lock(&self.checkpoint_on_record);
        self.policy_removals.fetch_add(1, Ordering::AcqRel);
        if *on_record {
            if let Err(e) = self.store.set_checkpoint(None) {
                tracing::debug!(error = %e, "cannot withdraw the cache checkpoint");
            }
            *on_record = false;
        }
    }
}

/// Hands memory freed after a walk of the store back to the system. A walk decodes
/// every entry on a blocking thread; glibc keeps what such a thread freed in its
/// arena, which would otherwise show as resident memory that never shrinks.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it is safe to
    // call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How long a daemon waiting on another's fetch goes between reads of the shared
/// cache when no announcement wakes it.
const FLEET_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Whether `a` holds a policy fetched later than `b`'s.
fn newer(a: &Entry, b: &Entry) -> bool {
    match (&a.policy, &b.policy) {
        (Some(a), Some(b)) => a.fetched_at > b.fetched_at,
        (Some(_), None) => true,
        _ => false,
    }
}

fn negative_cap(cache: &CacheConfig) -> NonZeroUsize {
    NonZeroUsize::new(cache.negative_entries).unwrap_or(NonZeroUsize::MIN)
}

/// How many policies a store lost, given the checkpoint on record and the number it
/// holds now (a store may hold more: policies learnt after the checkpoint).
fn lost_policies(recorded: Option<u64>, found: u64) -> Option<u64> {
    recorded.filter(|&r| r > found).map(|r| r - found)
}

#[cfg(test)]
mod tests {
    use super::lost_policies;

    #[test]
    fn only_a_shortfall_against_a_recorded_checkpoint_is_a_loss() {
        assert_eq!(lost_policies(None, 0), None);
        assert_eq!(lost_policies(Some(300), 300), None);
        assert_eq!(lost_policies(Some(300), 310), None, "learnt since");
        assert_eq!(lost_policies(Some(300), 245), Some(55));
        assert_eq!(lost_policies(Some(300), 0), Some(300));
    }
}
