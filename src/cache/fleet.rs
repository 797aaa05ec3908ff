//! The fleet's steps around a discovery (`cache.backend = "redis"`): before it, take a
//! policy another daemon already fetched, or the domain's fetch lock so that one
//! daemon fetches for all; after it, share what was fetched. Redis failing at any
//! point means discovering here, as a daemon on its own would. What settles a
//! discovery is decided by [`rules::fleet_settles`]; the transport is [`RedisCache`].

use std::time::{Duration, Instant};

use super::entry::Entry;
use super::lifecycle::{self as rules, Rules, Trigger};
use super::redis_cache::{self, RedisCache};
use crate::metrics::Metrics;

/// How long a daemon waiting on another's fetch goes between reads of the shared
/// cache when no announcement wakes it.
const FLEET_POLL: Duration = Duration::from_millis(100);

/// What the fleet's shared cache did for a discovery about to run.
pub enum Step {
    /// It had the answer: take this entry instead of discovering.
    Adopt(Box<Entry>),
    /// Discover here, holding the fetch lock if one was taken.
    Discover { lock: Option<String> },
}

/// Before discovering `domain`: the fleet's policy if it settles the discovery;
/// otherwise the domain's fetch lock, or a wait (up to the lock's lifetime) while
/// another daemon holds it, then that daemon's result.
pub async fn consult(
    shared: &RedisCache,
    domain: &str,
    own: &Entry,
    trigger: Trigger,
    rules: &Rules,
    now: impl Fn() -> u64,
) -> Step {
    let settles = |theirs: &Entry| rules::fleet_settles(domain, own, theirs, trigger, now(), rules);
    match shared.get(domain).await {
        Ok(Some(theirs)) if settles(&theirs) => return Step::Adopt(Box::new(theirs)),
        Ok(_) => {}
        Err(e) => {
            tracing::debug!(domain, error = %e, "shared cache not consulted");
            return Step::Discover { lock: None };
        }
    }
    let give_up = Instant::now() + shared.lock_ttl();
    loop {
        let lock = shared.try_lock(domain).await;
        if let Ok(redis_cache::Lock::Busy) = lock {
            // Another daemon is fetching: its result is announced when written.
            shared.wait_update(FLEET_POLL).await;
        }
        // Read again in both cases: a daemon may have written and released the lock
        // between the first read and the lock.
        if let Ok(Some(theirs)) = shared.get(domain).await
            && settles(&theirs)
        {
            if let Ok(redis_cache::Lock::Held(token)) = &lock {
                shared.unlock(domain, token).await;
            }
            return Step::Adopt(Box::new(theirs));
        }
        match lock {
            Ok(redis_cache::Lock::Held(token)) => return Step::Discover { lock: Some(token) },
            Ok(redis_cache::Lock::Busy) if Instant::now() < give_up => {}
            Ok(redis_cache::Lock::Busy) => {
                tracing::info!(
                    domain,
                    "another daemon's fetch did not finish in time; fetching here"
                );
                return Step::Discover { lock: None };
            }
            Err(_) => return Step::Discover { lock: None },
        }
    }
}

/// Writes a fetched policy to the fleet's shared cache. If the fleet already has one
/// fetched later (another daemon's fetch finished first with a newer id), that one is
/// kept everywhere and returned instead: an older fetch never wins.
pub async fn share(shared: &RedisCache, domain: &str, entry: Entry, metrics: &Metrics) -> Entry {
    match shared.put(domain, &entry).await {
        Ok(false) => match shared.get(domain).await {
            Ok(Some(theirs)) if newer(&theirs, &entry) => {
                tracing::info!(
                    domain,
                    "the fleet has a newer policy than this fetch; keeping that one"
                );
                metrics.fleet.redis_adopted.inc();
                theirs
            }
            _ => entry,
        },
        Ok(true) => entry,
        Err(e) => {
            // Shared once Redis (or a new master) is back: see `share_again`.
            tracing::debug!(domain, error = %e, "policy not shared yet");
            shared.remember_unshared(domain);
            entry
        }
    }
}

/// Each time the fleet's channel is subscribed again (Redis back, or a new master
/// after a failover), shares the policies this daemon learned while it could not:
/// what `held` gives for each (the entry held here now), until `stop`.
pub async fn share_again<F>(
    shared: std::sync::Arc<RedisCache>,
    held: F,
    metrics: std::sync::Arc<Metrics>,
    stop: tokio_util::sync::CancellationToken,
) where
    F: Fn(&str) -> Option<Entry>,
{
    let mut subscribed = shared.subscriptions();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            changed = subscribed.wait_for(|up| *up) => {
                if changed.is_err() {
                    return;
                }
            }
        }
        let domains = shared.take_unshared();
        if !domains.is_empty() {
            tracing::info!(
                policies = domains.len(),
                "sharing the policies learned while Redis could not take them"
            );
        }
        for domain in domains {
            if let Some(entry) = held(&domain).filter(|e| e.policy.is_some()) {
                share(&shared, &domain, entry, &metrics).await;
            }
        }
        // Wait for the next loss before looking again.
        tokio::select! {
            () = stop.cancelled() => return,
            changed = subscribed.wait_for(|up| !*up) => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// Whether `a` holds a policy fetched later than `b`'s.
pub fn newer(a: &Entry, b: &Entry) -> bool {
    match (&a.policy, &b.policy) {
        (Some(a), Some(b)) => a.fetched_at > b.fetched_at,
        (Some(_), None) => true,
        _ => false,
    }
}
