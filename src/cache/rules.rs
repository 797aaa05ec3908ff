//! The cache's rules as pure functions: what a lookup may answer from an entry, when a
//! policy is due for a refresh, and how an entry changes after a discovery step.
//! Nothing here does I/O, reads a clock or takes a lock; the service performs the
//! lookups and applies what these functions decide.
//!
//! The rules (RFC 8461):
//! - §5.1: a valid cached policy is used until it expires; a TXT id equal to the
//!   cached policy's id means "nothing new" and must not extend max_age.
//! - §3.3 / §5.1: a changed id means a new policy is fetched.
//! - §5.1, §10.2: failures (DNS, HTTPS, a vanished TXT record) never remove a valid
//!   cached policy; only a successfully fetched policy replaces it, whatever its mode
//!   (so `none` or `testing` replace `enforce` at once).
//! - §3.3: after a failed fetch, the same id is not fetched again for at least
//!   `retry_after` (5 minutes or more).
//! - §10.2 (and §5.1's advice to refresh before expiry): cached policies are
//!   re-fetched in the background before they expire, whatever the TXT record says,
//!   so that an attacker who suppresses the TXT record cannot let them lapse.

use std::time::Duration;

use crate::config::CacheConfig;
use crate::mtasts::discovery::{FetchError, TxtLookup};
use crate::mtasts::policy::{Mode, Policy};

use super::entry::{CachedPolicy, Entry, Failure, FailureClass, Outline};

/// The cache settings the rules read, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Re-check a valid policy's TXT id once the last check is this old.
    pub grace: u64,
    /// How long "no policy" is remembered.
    pub negative_ttl: u64,
    /// Back-off after a failed fetch.
    pub retry_after: u64,
    /// Re-fetch at the latest this long after a fetch (or at max_age / 2).
    pub refresh_after: u64,
}

/// After a failed TXT lookup with nothing cached, the domain is asked again after at
/// most this long: a DNS hiccup must not hide a new policy for a whole negative TTL.
const TXT_FAILURE_RETRY: u64 = 60;

impl Rules {
    pub fn from_config(c: &CacheConfig) -> Self {
        let secs = |d: Duration| d.as_secs();
        Rules {
            grace: secs(c.grace),
            negative_ttl: secs(c.negative_ttl),
            retry_after: secs(c.retry_after),
            refresh_after: secs(c.refresh_after),
        }
    }
}

/// What started a discovery step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A lookup found nothing valid in the cache.
    Miss,
    /// A lookup found a valid policy whose TXT check is older than `grace`.
    Recheck,
    /// The refresher (or an operator): fetch whatever the TXT record says.
    Refresh,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Miss => "miss",
            Trigger::Recheck => "recheck",
            Trigger::Refresh => "refresh",
        }
    }
}

/// What a lookup may do with the cached entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupRule {
    /// Answer from the valid policy; `recheck` starts a background TXT check.
    Hit { recheck: bool },
    /// Answer "no policy" from the negative cache.
    NegativeHit,
    /// Nothing usable: discover now.
    Miss,
}

/// The rule for a lookup of a domain whose entry (if any) is `entry`.
pub fn on_lookup(entry: Option<&Entry>, now: u64, rules: &Rules) -> LookupRule {
    let Some(entry) = entry else {
        return LookupRule::Miss;
    };
    if entry.valid_policy(now).is_some() {
        LookupRule::Hit {
            recheck: now.saturating_sub(entry.last_check) >= rules.grace,
        }
    } else if entry.is_negative(now) {
        LookupRule::NegativeHit
    } else {
        LookupRule::Miss
    }
}

/// The trigger for an operator's "refresh now": a refresh when a valid policy is
/// cached (fetch whatever the TXT says), otherwise an ordinary miss.
pub fn manual_trigger(entry: Option<&Entry>, now: u64) -> Trigger {
    if entry.is_some_and(|e| e.valid_policy(now).is_some()) {
        Trigger::Refresh
    } else {
        Trigger::Miss
    }
}

/// Whether a policy another daemon of the fleet stored (`shared`) settles a discovery
/// this daemon was about to run for `trigger`, so that it takes that policy instead of
/// fetching. A miss takes any valid policy at least as recent as its own; a refresh
/// only a strictly newer one that is not itself due. A re-check of the TXT id is this
/// daemon's own (it is cheap, and is what notices a new id).
pub fn fleet_settles(
    domain: &str,
    own: &Entry,
    shared: &Entry,
    trigger: Trigger,
    now: u64,
    rules: &Rules,
) -> bool {
    let Some(theirs) = shared.valid_policy(now) else {
        return false;
    };
    let ours = own.policy.as_ref().map(|p| p.fetched_at);
    match trigger {
        Trigger::Miss => ours.is_none_or(|t| theirs.fetched_at >= t),
        Trigger::Refresh => {
            ours.is_none_or(|t| theirs.fetched_at > t) && !is_due(domain, shared, now, rules)
        }
        Trigger::Recheck => false,
    }
}

/// When the refresher should re-fetch this entry's policy, if it has a valid one:
/// `refresh_after` (or half the max_age, if shorter) after the fetch, minus a
/// per-domain spread so that policies fetched together do not all fall due together;
/// never while a failed fetch is backing off.
pub fn refresh_due_at(domain: &str, entry: &Entry, now: u64, rules: &Rules) -> Option<u64> {
    outline_due_at(domain, &Outline::from(entry), now, rules)
}

/// [`refresh_due_at`] from an entry's outline (what walks of the store read).
pub fn outline_due_at(domain: &str, entry: &Outline, now: u64, rules: &Rules) -> Option<u64> {
    let p = entry.valid_policy(now)?;
    let age_limit = rules.refresh_after.min(p.max_age / 2).max(1);
    let due = p.fetched_at + age_limit.saturating_sub(jitter(domain, age_limit / 10));
    let backoff_end = entry.failure_at.map_or(0, |at| at + rules.retry_after);
    Some(due.max(backoff_end))
}

/// Whether the refresher should re-fetch this entry's policy at `now`.
pub fn is_due(domain: &str, entry: &Entry, now: u64, rules: &Rules) -> bool {
    refresh_due_at(domain, entry, now, rules).is_some_and(|t| now >= t)
}

/// A per-domain spread in [0, max] seconds (FNV-1a of the name: stable across
/// restarts, so a policy's due time does not move).
pub fn jitter(domain: &str, max: u64) -> u64 {
    if max == 0 {
        return 0;
    }
    let h = domain.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    h % (max + 1)
}

/// How a discovery step ended: the `result` label of the discoveries metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The TXT id matches the cached policy: nothing to fetch.
    Unchanged,
    /// The TXT record is gone but a valid policy stays in force.
    Kept,
    /// The domain has no policy (negative cache).
    NoPolicy,
    /// The TXT lookup failed.
    TxtFailed,
    /// A fetch was due but the last one failed less than `retry_after` ago.
    Backoff,
    /// A policy was fetched and cached.
    Fetched,
    /// The fetch failed.
    FetchFailed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Unchanged => "unchanged",
            Outcome::Kept => "kept",
            Outcome::NoPolicy => "no_policy",
            Outcome::TxtFailed => "txt_failed",
            Outcome::Backoff => "backoff",
            Outcome::Fetched => "fetched",
            Outcome::FetchFailed => "fetch_failed",
        }
    }
}

/// A change of a valid cached policy to a newly fetched one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Nothing valid was cached before.
    New,
    /// A valid policy was replaced.
    Replaced {
        from: Mode,
        to: Mode,
        mx_changed: bool,
    },
}

impl Transition {
    /// A weaker mode replaced a stronger one (worth a warning: it may be an attack,
    /// or the domain retiring MTA-STS).
    pub fn is_downgrade(&self) -> bool {
        matches!(
            self,
            Transition::Replaced {
                from: Mode::Enforce,
                to: Mode::Testing | Mode::None,
                ..
            } | Transition::Replaced {
                from: Mode::Testing,
                to: Mode::None,
                ..
            }
        )
    }
}

/// The result of a discovery step: the entry to store and what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub entry: Entry,
    pub outcome: Outcome,
    /// Set when a fetched policy was cached.
    pub transition: Option<Transition>,
    /// The mode of the valid policy that stays in force after a failed fetch or TXT
    /// lookup, if any (a failing refresh of an enforced policy needs attention).
    pub kept_mode: Option<Mode>,
}

/// A fetch that [`after_txt`] asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The entry as updated by the TXT lookup.
    pub entry: Entry,
    /// The id the fetched policy will be cached under.
    pub id: String,
    /// The id the TXT record gave, if it gave one (a failure is backed off per id).
    pub txt_id: Option<String>,
}

/// What to do after the TXT lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Fetch the policy file, then call [`after_fetch`].
    Fetch(Pending),
    Done(Decision),
}

/// The first half of a discovery step: given the old entry and the TXT lookup's
/// result, either decide now or ask for a fetch.
pub fn after_txt(old: &Entry, trigger: Trigger, txt: &TxtLookup, now: u64, rules: &Rules) -> Step {
    let valid = old.valid_policy(now);
    let mut entry = old.clone();
    entry.last_check = now;
    let done = |entry: Entry, outcome: Outcome| {
        Step::Done(Decision {
            entry,
            outcome,
            transition: None,
            kept_mode: valid.map(|p| p.policy.mode),
        })
    };
    // The id a fetch would be made under; None when the TXT record gave none.
    let txt_id = match txt {
        TxtLookup::Found { record } => {
            entry.txt_failure = None;
            if valid.is_some_and(|p| p.id == record.id) && trigger != Trigger::Refresh {
                // §5.1: nothing new; max_age still counts from the original fetch.
                entry.no_policy_until = None;
                return done(entry, Outcome::Unchanged);
            }
            Some(record.id.clone())
        }
        TxtLookup::NoPolicy { .. } => {
            entry.txt_failure = None;
            match valid {
                // §10.2: the refresher fetches whatever the TXT record says.
                Some(_) if trigger == Trigger::Refresh => None,
                // §5.1: a vanished TXT record alone does not remove a valid policy.
                Some(_) => return done(entry, Outcome::Kept),
                None => {
                    entry.policy = None;
                    entry.failure = None;
                    entry.no_policy_until = Some(now + rules.negative_ttl);
                    return done(entry, Outcome::NoPolicy);
                }
            }
        }
        TxtLookup::Failed { reason } => {
            entry.txt_failure = Some(Failure {
                at: now,
                id: None,
                class: FailureClass::Txt,
                message: reason.clone(),
            });
            match valid {
                Some(_) if trigger == Trigger::Refresh => None,
                Some(_) => return done(entry, Outcome::TxtFailed),
                None => {
                    let retry = rules.negative_ttl.min(TXT_FAILURE_RETRY);
                    entry.no_policy_until = Some(now + retry);
                    return done(entry, Outcome::TxtFailed);
                }
            }
        }
    };
    // §3.3: after a failed fetch, wait retry_after before fetching the same id again.
    // A fetch under a new id is not held back by an old id's failure.
    if let Some(f) = &old.failure {
        let until = f.at + rules.retry_after;
        if now < until && (txt_id.is_none() || f.id == txt_id) {
            if valid.is_none() {
                entry.no_policy_until = Some(until);
            }
            return done(entry, Outcome::Backoff);
        }
    }
    let id = txt_id
        .clone()
        .or_else(|| old.policy.as_ref().map(|p| p.id.clone()))
        .unwrap_or_default();
    Step::Fetch(Pending { entry, id, txt_id })
}

/// The second half of a discovery step: the fetch's result applied to the entry that
/// [`after_txt`] left pending.
pub fn after_fetch(
    pending: Pending,
    fetched: Result<Policy, FetchError>,
    now: u64,
    rules: &Rules,
) -> Decision {
    let Pending {
        mut entry,
        id,
        txt_id,
    } = pending;
    let valid = entry
        .valid_policy(now)
        .map(|p| (p.policy.mode, p.policy.mx.clone()));
    match fetched {
        Ok(policy) => {
            let transition = match valid {
                None => Transition::New,
                Some((from, mx)) => Transition::Replaced {
                    from,
                    to: policy.mode,
                    mx_changed: mx != policy.mx,
                },
            };
            entry.policy = Some(CachedPolicy {
                expires_at: now + policy.max_age,
                fetched_at: now,
                id,
                policy,
            });
            entry.failure = None;
            entry.no_policy_until = None;
            Decision {
                entry,
                outcome: Outcome::Fetched,
                transition: Some(transition),
                kept_mode: None,
            }
        }
        Err(e) => {
            if valid.is_none() {
                // Treated as "no policy" until the back-off ends (§3.3, §5.1).
                entry.no_policy_until = Some(now + rules.retry_after);
            }
            entry.failure = Some(Failure {
                at: now,
                id: txt_id,
                class: e.class(),
                message: e.to_string(),
            });
            Decision {
                entry,
                outcome: Outcome::FetchFailed,
                transition: None,
                kept_mode: valid.map(|(mode, _)| mode),
            }
        }
    }
}

/// What to do with a policy learned elsewhere (another resolver's cache), fetched at
/// `fetched_at` under TXT id `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Import {
    /// Its max_age has run out: it says nothing any more (RFC 8461 §3.2).
    Expired,
    /// The cache holds a policy fetched at the same time or later: importing the same
    /// file twice changes nothing, and an older copy never replaces a newer one.
    KeepNewer,
    /// Take it, as if fetched then: its age counts from `fetched_at`, so the refresher
    /// and the TXT re-check treat it like any other cached policy.
    Replace(Box<Entry>),
}

pub fn on_import(
    old: Option<&Entry>,
    policy: Policy,
    id: &str,
    fetched_at: u64,
    now: u64,
) -> Import {
    let expires_at = fetched_at.saturating_add(policy.max_age);
    if expires_at <= now {
        return Import::Expired;
    }
    if old
        .and_then(|e| e.policy.as_ref())
        .is_some_and(|p| p.fetched_at >= fetched_at)
    {
        return Import::KeepNewer;
    }
    Import::Replace(Box::new(Entry {
        policy: Some(CachedPolicy {
            policy,
            id: id.to_owned(),
            fetched_at,
            expires_at,
        }),
        no_policy_until: None,
        last_check: fetched_at.min(now),
        failure: None,
        txt_failure: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mtasts::policy::{StsRecord, parse_policy};

    const RULES: Rules = Rules {
        grace: 60,
        negative_ttl: 300,
        retry_after: 300,
        refresh_after: 86_400,
    };
    const T0: u64 = 1_000_000;

    fn policy(mode: &str, mx: &str, max_age: u64) -> Policy {
        let body = format!("version: STSv1\nmode: {mode}\nmx: {mx}\nmax_age: {max_age}\n");
        parse_policy(body.as_bytes()).unwrap()
    }

    #[test]
    fn the_fleets_policy_settles_a_miss_and_only_a_newer_one_a_refresh() {
        let now = T0 + 50_000;
        let theirs = cached("enforce", "2", T0 + 40_000);
        let none = Entry::default();
        let settles = |own: &Entry, shared: &Entry, t| {
            fleet_settles("a.example", own, shared, t, now, &RULES)
        };
        assert!(settles(&none, &theirs, Trigger::Miss));
        assert!(!settles(&none, &none, Trigger::Miss), "nothing shared");
        let expired = cached("enforce", "0", T0 - 100_000);
        assert!(
            !settles(&none, &expired, Trigger::Miss),
            "an expired policy"
        );
        assert!(
            settles(&theirs, &theirs, Trigger::Miss),
            "as recent as ours"
        );
        let ours_newer = cached("enforce", "3", T0 + 45_000);
        assert!(
            !settles(&ours_newer, &theirs, Trigger::Miss),
            "older than ours"
        );
        let ours_old = cached("enforce", "1", T0);
        assert!(
            settles(&ours_old, &theirs, Trigger::Refresh),
            "newer, not due"
        );
        assert!(!settles(&theirs, &theirs, Trigger::Refresh), "not newer");
        let theirs_due = cached("enforce", "2", T0 + 1_000);
        assert!(is_due("a.example", &theirs_due, now, &RULES));
        assert!(
            !settles(&ours_old, &theirs_due, Trigger::Refresh),
            "itself due"
        );
        assert!(
            !settles(&none, &theirs, Trigger::Recheck),
            "re-checks are ours"
        );
    }

    fn cached(mode: &str, id: &str, fetched_at: u64) -> Entry {
        let p = policy(mode, "mx.example.com", 86_400);
        Entry {
            policy: Some(CachedPolicy {
                expires_at: fetched_at + p.max_age,
                fetched_at,
                id: id.into(),
                policy: p,
            }),
            last_check: fetched_at,
            ..Entry::default()
        }
    }

    fn found(id: &str) -> TxtLookup {
        TxtLookup::Found {
            record: StsRecord {
                id: id.into(),
                raw: format!("v=STSv1; id={id}"),
            },
        }
    }

    fn gone() -> TxtLookup {
        TxtLookup::NoPolicy {
            reason: "NXDOMAIN".into(),
        }
    }

    fn servfail() -> TxtLookup {
        TxtLookup::Failed {
            reason: "SERVFAIL".into(),
        }
    }

    fn tls_error() -> FetchError {
        FetchError::Tls("bad certificate".into())
    }

    fn decided(step: Step) -> Decision {
        match step {
            Step::Done(d) => d,
            Step::Fetch(p) => panic!("expected a decision, got a fetch of id {}", p.id),
        }
    }

    fn pending(step: Step) -> Pending {
        match step {
            Step::Fetch(p) => p,
            Step::Done(d) => panic!("expected a fetch, got {:?}", d.outcome),
        }
    }

    fn fetch_id(step: Step) -> String {
        pending(step).id
    }

    /// A whole discovery step that reaches a fetch with the given result.
    fn fetched(
        old: &Entry,
        trigger: Trigger,
        txt: &TxtLookup,
        result: Result<Policy, FetchError>,
        now: u64,
    ) -> Decision {
        after_fetch(
            pending(after_txt(old, trigger, txt, now, &RULES)),
            result,
            now,
            &RULES,
        )
    }

    #[test]
    fn lookups() {
        let e = cached("enforce", "1", T0);
        let table = [
            (None, T0, LookupRule::Miss),
            (Some(&e), T0 + 59, LookupRule::Hit { recheck: false }),
            (Some(&e), T0 + 60, LookupRule::Hit { recheck: true }),
            (Some(&e), T0 + 86_400, LookupRule::Miss),
        ];
        for (entry, now, want) in table {
            assert_eq!(on_lookup(entry, now, &RULES), want, "at {now}");
        }
        let negative = Entry {
            no_policy_until: Some(T0 + 300),
            ..Entry::default()
        };
        assert_eq!(
            on_lookup(Some(&negative), T0 + 299, &RULES),
            LookupRule::NegativeHit
        );
        assert_eq!(
            on_lookup(Some(&negative), T0 + 300, &RULES),
            LookupRule::Miss
        );
    }

    #[test]
    fn same_id_never_extends_max_age() {
        let old = cached("enforce", "1", T0);
        for trigger in [Trigger::Miss, Trigger::Recheck] {
            let d = decided(after_txt(&old, trigger, &found("1"), T0 + 5000, &RULES));
            assert_eq!(d.outcome, Outcome::Unchanged);
            assert_eq!(d.entry.policy, old.policy, "fetched_at and expires_at kept");
            assert_eq!(d.entry.last_check, T0 + 5000);
        }
    }

    #[test]
    fn changed_id_fetches_and_replaces() {
        let old = cached("enforce", "1", T0);
        let now = T0 + 100;
        assert_eq!(
            fetch_id(after_txt(&old, Trigger::Recheck, &found("2"), now, &RULES)),
            "2"
        );
        let new = policy("enforce", "mx2.example.com", 1000);
        let d = fetched(&old, Trigger::Recheck, &found("2"), Ok(new), now);
        assert_eq!(d.outcome, Outcome::Fetched);
        let p = d.entry.policy.unwrap();
        assert_eq!(
            (p.id.as_str(), p.fetched_at, p.expires_at),
            ("2", now, now + 1000)
        );
        assert_eq!(
            d.transition,
            Some(Transition::Replaced {
                from: Mode::Enforce,
                to: Mode::Enforce,
                mx_changed: true
            })
        );
    }

    #[test]
    fn a_first_fetch_is_a_new_policy() {
        let old = Entry::default();
        assert_eq!(
            fetch_id(after_txt(&old, Trigger::Miss, &found("7"), T0, &RULES)),
            "7"
        );
        let d = fetched(
            &old,
            Trigger::Miss,
            &found("7"),
            Ok(policy("testing", "mx.a", 60)),
            T0,
        );
        assert_eq!(d.transition, Some(Transition::New));
        assert_eq!(
            on_lookup(Some(&d.entry), T0 + 59, &RULES),
            LookupRule::Hit { recheck: false }
        );
    }

    #[test]
    fn txt_gone_keeps_a_valid_policy() {
        let old = cached("enforce", "1", T0);
        let d = decided(after_txt(&old, Trigger::Recheck, &gone(), T0 + 100, &RULES));
        assert_eq!(d.outcome, Outcome::Kept);
        assert_eq!(d.entry.policy, old.policy);
        assert_eq!(d.entry.no_policy_until, None);
    }

    #[test]
    fn txt_gone_with_nothing_valid_is_a_negative_entry() {
        for old in [Entry::default(), cached("enforce", "1", T0 - 90_000)] {
            let d = decided(after_txt(&old, Trigger::Miss, &gone(), T0, &RULES));
            assert_eq!(d.outcome, Outcome::NoPolicy);
            assert_eq!(d.entry.policy, None);
            assert_eq!(d.entry.no_policy_until, Some(T0 + RULES.negative_ttl));
            assert_eq!(
                on_lookup(Some(&d.entry), T0 + 299, &RULES),
                LookupRule::NegativeHit
            );
            assert_eq!(
                on_lookup(Some(&d.entry), T0 + 300, &RULES),
                LookupRule::Miss
            );
        }
    }

    #[test]
    fn failures_never_remove_a_valid_policy() {
        let old = cached("enforce", "1", T0);
        let now = T0 + 100;
        let d = decided(after_txt(&old, Trigger::Recheck, &servfail(), now, &RULES));
        assert_eq!(d.outcome, Outcome::TxtFailed);
        assert_eq!(d.entry.policy, old.policy);
        assert_eq!(d.kept_mode, Some(Mode::Enforce));

        let d = fetched(&old, Trigger::Recheck, &found("2"), Err(tls_error()), now);
        assert_eq!(d.outcome, Outcome::FetchFailed);
        assert_eq!(d.entry.policy, old.policy);
        assert_eq!(d.entry.no_policy_until, None);
        assert_eq!(d.kept_mode, Some(Mode::Enforce));
        assert_eq!(
            on_lookup(Some(&d.entry), now, &RULES),
            LookupRule::Hit { recheck: false }
        );
    }

    #[test]
    fn txt_failure_with_nothing_cached_retries_within_a_minute() {
        let d = decided(after_txt(
            &Entry::default(),
            Trigger::Miss,
            &servfail(),
            T0,
            &RULES,
        ));
        assert_eq!(d.outcome, Outcome::TxtFailed);
        assert_eq!(d.entry.no_policy_until, Some(T0 + 60));
        assert_eq!(d.entry.txt_failure.unwrap().class, FailureClass::Txt);
        assert_eq!(d.entry.failure, None);
    }

    #[test]
    fn fetch_failure_backs_off_per_id() {
        let old = Entry::default();
        let d = fetched(&old, Trigger::Miss, &found("1"), Err(tls_error()), T0);
        assert_eq!(
            d.entry.no_policy_until,
            Some(T0 + 300),
            "negative until the back-off ends"
        );
        let failed = d.entry;
        assert_eq!(failed.failure.as_ref().unwrap().class, FailureClass::Tls);

        // Same id within retry_after: no fetch.
        let d = decided(after_txt(
            &failed,
            Trigger::Miss,
            &found("1"),
            T0 + 299,
            &RULES,
        ));
        assert_eq!(d.outcome, Outcome::Backoff);
        assert_eq!(d.entry.no_policy_until, Some(T0 + 300));
        // After retry_after: fetch again.
        assert_eq!(
            fetch_id(after_txt(
                &failed,
                Trigger::Miss,
                &found("1"),
                T0 + 300,
                &RULES
            )),
            "1"
        );
        // A new id is fetched at once.
        assert_eq!(
            fetch_id(after_txt(
                &failed,
                Trigger::Miss,
                &found("2"),
                T0 + 10,
                &RULES
            )),
            "2"
        );
    }

    #[test]
    fn policy_host_dns_failure_backs_off_like_any_fetch_failure() {
        let e = FetchError::Dns {
            host: "mta-sts.example.com".into(),
            reason: "NXDOMAIN".into(),
        };
        let d = fetched(&Entry::default(), Trigger::Miss, &found("1"), Err(e), T0);
        assert_eq!(d.entry.failure.as_ref().unwrap().class, FailureClass::Dns);
        let d = decided(after_txt(
            &d.entry,
            Trigger::Miss,
            &found("1"),
            T0 + 61,
            &RULES,
        ));
        assert_eq!(d.outcome, Outcome::Backoff);
    }

    #[test]
    fn a_txt_failure_does_not_erase_a_fetch_back_off() {
        let failed = fetched(
            &Entry::default(),
            Trigger::Miss,
            &found("1"),
            Err(tls_error()),
            T0,
        )
        .entry;
        let after_servfail = decided(after_txt(
            &failed,
            Trigger::Miss,
            &servfail(),
            T0 + 60,
            &RULES,
        ))
        .entry;
        assert_eq!(after_servfail.failure, failed.failure, "fetch failure kept");
        let d = decided(after_txt(
            &after_servfail,
            Trigger::Miss,
            &found("1"),
            T0 + 200,
            &RULES,
        ));
        assert_eq!(d.outcome, Outcome::Backoff);
    }

    #[test]
    fn refresh_fetches_whatever_the_txt_says() {
        let old = cached("enforce", "1", T0);
        let now = T0 + 50_000;
        for txt in [found("1"), gone(), servfail()] {
            assert_eq!(
                fetch_id(after_txt(&old, Trigger::Refresh, &txt, now, &RULES)),
                "1",
                "{txt:?}"
            );
        }
        assert_eq!(
            fetch_id(after_txt(&old, Trigger::Refresh, &found("2"), now, &RULES)),
            "2"
        );
        // A refresh that fails keeps the policy and backs off.
        let d = fetched(&old, Trigger::Refresh, &gone(), Err(tls_error()), now);
        assert_eq!(d.entry.policy, old.policy);
        assert_eq!(
            d.entry.failure.as_ref().unwrap().id,
            None,
            "no id from the TXT record"
        );
        assert!(!is_due("example.com", &d.entry, now + 299, &RULES));
        let d = decided(after_txt(
            &d.entry,
            Trigger::Refresh,
            &gone(),
            now + 10,
            &RULES,
        ));
        assert_eq!(d.outcome, Outcome::Backoff);
    }

    #[test]
    fn none_and_testing_replace_enforce_at_once() {
        let old = cached("enforce", "1", T0);
        for (mode, to) in [("none", Mode::None), ("testing", Mode::Testing)] {
            let d = fetched(
                &old,
                Trigger::Recheck,
                &found("2"),
                Ok(policy(mode, "mx.example.com", 100)),
                T0 + 10,
            );
            let t = d.transition.unwrap();
            assert!(t.is_downgrade(), "{t:?}");
            assert_eq!(d.entry.policy.unwrap().policy.mode, to);
        }
        let up = Transition::Replaced {
            from: Mode::Testing,
            to: Mode::Enforce,
            mx_changed: false,
        };
        assert!(!up.is_downgrade());
    }

    #[test]
    fn refresh_is_due_before_expiry_with_a_stable_spread() {
        let e = cached("enforce", "1", T0); // max_age 1 day: due at half, minus jitter
        let at = refresh_due_at("example.com", &e, T0, &RULES).unwrap();
        assert!((T0 + 43_200 - 4_320..=T0 + 43_200).contains(&at), "{at}");
        assert!(!is_due("example.com", &e, at - 1, &RULES));
        assert!(is_due("example.com", &e, at, &RULES));
        assert_eq!(
            refresh_due_at("example.com", &e, T0 + 86_400, &RULES),
            None,
            "expired"
        );
        let negative = Entry {
            no_policy_until: Some(T0 + 10),
            ..Entry::default()
        };
        assert_eq!(refresh_due_at("example.com", &negative, T0, &RULES), None);
    }

    #[test]
    fn jitter_is_bounded_and_stable() {
        for d in ["a.example", "b.example", "example.com"] {
            assert!(jitter(d, 100) <= 100);
            assert_eq!(jitter(d, 100), jitter(d, 100));
        }
        assert_eq!(jitter("x", 0), 0);
    }

    #[test]
    fn manual_refresh_trigger() {
        let e = cached("enforce", "1", T0);
        assert_eq!(manual_trigger(Some(&e), T0), Trigger::Refresh);
        assert_eq!(manual_trigger(Some(&e), T0 + 86_400), Trigger::Miss);
        assert_eq!(manual_trigger(None, T0), Trigger::Miss);
    }

    #[test]
    fn imports_keep_the_newer_policy_and_drop_expired_ones() {
        let policy = crate::mtasts::policy::parse_policy(
            b"version: STSv1\nmode: enforce\nmx: mx.example\nmax_age: 1000\n",
        )
        .unwrap();
        assert_eq!(
            on_import(None, policy.clone(), "1", 100, 1100),
            Import::Expired
        );
        let Import::Replace(e) = on_import(None, policy.clone(), "1", 500, 1000) else {
            panic!("a live policy is taken")
        };
        let p = e.policy.clone().unwrap();
        assert_eq!(
            (p.fetched_at, p.expires_at, p.id.as_str()),
            (500, 1500, "1")
        );
        assert_eq!(e.last_check, 500);
        // Importing it again, or an older copy, changes nothing.
        assert_eq!(
            on_import(Some(&e), policy.clone(), "1", 500, 1000),
            Import::KeepNewer
        );
        assert_eq!(
            on_import(Some(&e), policy.clone(), "0", 400, 1000),
            Import::KeepNewer
        );
        // A newer one replaces it.
        assert!(matches!(
            on_import(Some(&e), policy, "2", 600, 1000),
            Import::Replace(_)
        ));
    }
}
