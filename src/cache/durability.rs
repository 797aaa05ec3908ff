//! Making the store's writes durable, and noticing when a damaged store lost policies.
//!
//! - Group commit: a newly fetched policy must be on disk before any lookup is
//!   answered with it; concurrent writers share one flush (fsync) instead of one each.
//! - Checkpoints: after a flush, the number of policies the store durably holds is
//!   recorded in the store. A start that finds fewer (a damaged cache file) reports the
//!   loss. Removing a policy withdraws the record first, so it never claims more than
//!   the store holds; it is recorded again after the next full count.
//!
//! Lock order: `durable` (held across a flush) is never taken while `on_record` is
//! held; callers may hold the single-flight lock when they call
//! [`Durability::withdraw_checkpoint`], which takes `on_record` only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::store::PolicyStore;
use crate::locks::lock;

/// Policies a walk of the store counted, and the removal count they are valid for.
#[derive(Debug, Clone, Copy)]
pub struct Walk {
    pub policies: u64,
    pub removals: u64,
}

pub struct Durability {
    store: Arc<dyn PolicyStore>,
    /// Policy writes so far, and (under the lock) how many of them a flush has made
    /// durable.
    policy_writes: AtomicU64,
    durable: tokio::sync::Mutex<u64>,
    /// Policies removed from the store so far, and whether a checkpoint is on record.
    policy_removals: AtomicU64,
    on_record: Mutex<bool>,
    /// What the refresher's last walk counted, for the checkpoint that follows it.
    last_walk: Mutex<Option<Walk>>,
}

impl Durability {
    pub fn new(store: Arc<dyn PolicyStore>) -> Self {
        Self {
            store,
            policy_writes: AtomicU64::new(0),
            durable: tokio::sync::Mutex::new(0),
            policy_removals: AtomicU64::new(0),
            on_record: Mutex::new(true),
            last_walk: Mutex::new(None),
        }
    }

    /// Flushes the store so that every write made before this call is durable. The
    /// flush runs on a blocking thread (it waits for fsync), and concurrent callers
    /// share one flush: a caller whose write a flush already covered returns at once.
    pub async fn make_durable(&self) {
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

    /// Policies removed so far: a walk notes it before it starts counting.
    pub fn removals(&self) -> u64 {
        self.policy_removals.load(Ordering::Acquire)
    }

    /// Remembers what a complete walk counted, for the next checkpoint.
    pub fn note_walk(&self, walk: Walk) {
        *lock(&self.last_walk) = Some(walk);
    }

    /// Flushes, then records a checkpoint: from the refresher's last walk if there
    /// was one since the previous checkpoint, else from a count made now (blocking).
    pub fn checkpoint_after_walk(&self) -> bool {
        let walk = lock(&self.last_walk).take();
        match walk {
            Some(walk) => self.flush_and_record(Some(walk)),
            None => self.record_checkpoint(),
        }
    }

    /// Flushes the store and records how many policies it now holds durably, so that
    /// the next start can tell if a damaged store lost some (see
    /// [`PolicyStore::checkpoint`]). The count is taken by walking the store before
    /// the flush, so the flush makes every policy counted durable. A removal that
    /// races with this call keeps the record withdrawn (blocking).
    pub fn record_checkpoint(&self) -> bool {
        let removals = self.removals();
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
        let mut on_record = lock(&self.on_record);
        if self.removals() == walk.removals {
            match self.store.set_checkpoint(Some(walk.policies)) {
                Ok(()) => *on_record = true,
                Err(e) => tracing::debug!(error = %e, "cannot record the cache checkpoint"),
            }
        }
        true
    }

    /// Withdraws the checkpoint before a policy is removed from the store.
    pub fn withdraw_checkpoint(&self) {
        let mut on_record = lock(&self.on_record);
        self.policy_removals.fetch_add(1, Ordering::AcqRel);
        if *on_record {
            if let Err(e) = self.store.set_checkpoint(None) {
                tracing::debug!(error = %e, "cannot withdraw the cache checkpoint");
            }
            *on_record = false;
        }
    }
}

/// How many policies a store lost, given the checkpoint on record and the number it
/// holds now (a store may hold more: policies learnt after the checkpoint).
pub fn lost_policies(recorded: Option<u64>, found: u64) -> Option<u64> {
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
