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
mod tests;
