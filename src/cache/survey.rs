//! One walk of the store: the counts behind the gauges and the checkpoint, the
//! entries that no longer say anything (to prune), and the policies due for a refresh.
//! The store is the source of truth, so these come from it, not from memory.

use std::sync::atomic::{AtomicU64, Ordering};

use super::entry::{Entry, Outline};
use super::lifecycle::{self as rules, Rules};
use super::store::PolicyStore;
use crate::metrics::Metrics;
use crate::mtasts::policy::Mode;

/// What one walk of the store found.
#[derive(Debug, Default)]
pub struct Survey {
    /// Stored policies (valid or not yet pruned).
    pub policies: u64,
    /// Valid policies by mode: enforce, testing, none.
    pub modes: [i64; 3],
    pub oldest: u64,
    pub expiring: i64,
    pub failing: i64,
    /// Entries that no longer say anything (pruned), and whether each held a policy.
    pub dead: Vec<(String, bool)>,
    /// Policies due for a refresh.
    pub due: Vec<String>,
    /// "No policy" entries stored by an older version: moved to memory.
    pub negatives: Vec<(String, Entry)>,
    /// The walk ended early (a damaged store).
    pub incomplete: Option<String>,
}

/// Walks `store` once (blocking: call it on a blocking thread). `whole`: read whole
/// entries (the walk at start, which also rewrites old formats and finds old stored
/// negatives); otherwise outlines, which cost a fraction.
pub fn survey(store: &dyn PolicyStore, now: u64, rules: &Rules, whole: bool) -> Survey {
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
        store.scan(&mut |domain, entry| match entry {
            Ok(entry) => {
                // A live entry without a valid policy: a negative stored by an older
                // version.
                if let Some(domain) = note(&mut s, domain, &Outline::from(&entry)) {
                    s.negatives.push((domain, entry));
                }
            }
            // Said once, at start; the refresher's walks pass over it quietly.
            Err(e) => tracing::warn!(error = %e, "ignoring unreadable cache entry"),
        })
    } else {
        store.scan_outlines(&mut |domain, outline| {
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

/// The store's census as the last walk found it: the gauges, and the policy count.
#[derive(Default)]
pub struct Census {
    policies: AtomicU64,
}

impl Census {
    /// Takes a survey's counts: sets the gauges that describe the store.
    pub fn apply(&self, s: &Survey, metrics: &Metrics) {
        let g = &metrics.cache.cache_entries;
        for (mode, n) in ["enforce", "testing", "none"].iter().zip(s.modes) {
            g.with_label_values(&[mode]).set(n);
        }
        metrics
            .cache
            .oldest_policy_age
            .set(i64::try_from(s.oldest).unwrap_or(i64::MAX));
        metrics.cache.expiring_soon.set(s.expiring);
        metrics.cache.failing.set(s.failing);
        self.policies.store(s.policies, Ordering::Release);
    }

    /// Policies in the store at its last walk.
    pub fn policies(&self) -> u64 {
        self.policies.load(Ordering::Acquire)
    }
}

/// Hands memory freed after a walk of the store back to the system. A walk decodes
/// every entry on a blocking thread; glibc keeps what such a thread freed in its
/// arena, which would otherwise show as resident memory that never shrinks.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it is safe to
    // call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
