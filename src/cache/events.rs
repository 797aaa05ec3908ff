//! What the cache tells operators: one log line and the counters for each discovery's
//! decision, the fetch timings, and the per-mode gauges as entries change.

use std::time::Instant;

use super::entry::Entry;
use super::lifecycle::{Decision, Outcome, Transition, Trigger};
use crate::metrics::Metrics;
use crate::mtasts::discovery::{FetchError, TxtLookup};
use crate::mtasts::policy::{Mode, Policy};

/// A policy fetch finished: its duration, and the notes of a leniently accepted one.
pub fn fetched(
    metrics: &Metrics,
    domain: &str,
    started: Instant,
    result: &Result<Policy, FetchError>,
) {
    for note in result.iter().flat_map(|p| &p.notes) {
        tracing::info!(domain, note, "policy accepted leniently");
    }
    let label = if result.is_ok() { "ok" } else { "error" };
    metrics
        .discovery
        .fetch_duration
        .with_label_values(&[label])
        .observe(started.elapsed().as_secs_f64());
}

/// Moves the per-mode entry gauges from `old` to `new` at once; each walk of the store
/// sets them exactly again.
pub fn count_modes(metrics: &Metrics, old: &Entry, new: &Entry, now: u64) {
    let g = &metrics.cache.cache_entries;
    if let Some(p) = old.valid_policy(now) {
        g.with_label_values(&[p.policy.mode.as_str()]).dec();
    }
    if let Some(p) = new.valid_policy(now) {
        g.with_label_values(&[p.policy.mode.as_str()]).inc();
    }
}

/// One log line and the counters for a discovery's decision.
pub fn decided(m: &Metrics, domain: &str, trigger: Trigger, txt: &TxtLookup, d: &Decision) {
    m.discovery
        .discoveries
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
            m.discovery
                .fetch_failures
                .with_label_values(&[f.class.as_str()])
                .inc();
            if let Some(mode) = d.kept_mode.filter(|m| *m != Mode::None) {
                m.discovery
                    .refresh_failures
                    .with_label_values(&[mode.as_str()])
                    .inc();
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
                        m.discovery
                            .transitions
                            .with_label_values(&[from, to, "mode"])
                            .inc();
                    }
                    if *mx_changed {
                        m.discovery
                            .transitions
                            .with_label_values(&[from, to, "mx"])
                            .inc();
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
