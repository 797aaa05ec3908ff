//! Containment for any store: a failing or panicking store must never end the
//! process, poison a lock, or stop lookups. The daemon keeps answering from memory,
//! the store is marked unhealthy (a gauge, and one log line per change of state), and
//! a store that keeps failing is reopened (or moved aside and recreated) without a
//! restart.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::{PolicyStore, StoreError, Unavailable, Visit, VisitOutline, contain};
use crate::cache::entry::Entry;
use crate::locks::{lock, read, write};
use crate::metrics::Metrics;

/// Opens the store again (for sled: reopen, or move aside and start a new one).
pub type Reopen = Box<dyn Fn() -> Result<Arc<dyn PolicyStore>, StoreError> + Send + Sync>;

/// How long an unhealthy store is left alone before it is reopened.
pub const REOPEN_AFTER: Duration = Duration::from_secs(30);

pub struct GuardedStore {
    inner: RwLock<Arc<dyn PolicyStore>>,
    healthy: AtomicBool,
    /// The store has failed at least once since the daemon started: writes may have
    /// been lost (or the store replaced), so memory no longer proves what it holds,
    /// and no checkpoint is recorded until the next start.
    failed_once: AtomicBool,
    /// When the store became unhealthy or was last reopened.
    since: Mutex<Option<Instant>>,
    reopen: Option<Reopen>,
    reopen_after: Duration,
    metrics: Arc<Metrics>,
}

impl GuardedStore {
    /// Guards `inner`; `reopen`, if given, replaces a store that keeps failing.
    pub fn new(inner: Arc<dyn PolicyStore>, reopen: Option<Reopen>, metrics: Arc<Metrics>) -> Self {
        metrics.store.store_healthy.set(1);
        GuardedStore {
            inner: RwLock::new(inner),
            healthy: AtomicBool::new(true),
            failed_once: AtomicBool::new(false),
            since: Mutex::new(None),
            reopen,
            reopen_after: REOPEN_AFTER,
            metrics,
        }
    }

    /// Sets how long an unhealthy store is left alone before a reopen (tests).
    pub fn with_reopen_after(mut self, d: Duration) -> Self {
        self.reopen_after = d;
        self
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    fn call<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&dyn PolicyStore) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.call_with(op, true, f)
    }

    /// `vouches`: whether success shows the store works again. The checkpoint is a
    /// small file beside the store's data; writing it proves nothing about the store.
    fn call_with<T>(
        &self,
        op: &'static str,
        vouches: bool,
        f: impl FnOnce(&dyn PolicyStore) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.maybe_reopen();
        let store = read(&self.inner).clone();
        let result = contain(op, || f(&*store));
        match &result {
            Ok(_) if vouches => self.set_health(true, None),
            Ok(_) => {}
            // One unreadable entry is not a failing store.
            Err(StoreError::Decode { .. }) => {}
            Err(e) => {
                self.failed_once.store(true, Ordering::Release);
                self.metrics
                    .store
                    .store_errors
                    .with_label_values(&[op])
                    .inc();
                self.set_health(false, Some(e));
            }
        }
        result
    }

    fn set_health(&self, ok: bool, error: Option<&StoreError>) {
        if self.healthy.swap(ok, Ordering::AcqRel) == ok {
            return;
        }
        self.metrics.store.store_healthy.set(i64::from(ok));
        if ok {
            tracing::info!("cache store healthy again");
            *lock(&self.since) = None;
        } else {
            let error = error.map(ToString::to_string).unwrap_or_default();
            tracing::error!(%error, "cache store failing; answering from memory, changes are not persisted until it recovers");
            *lock(&self.since) = Some(Instant::now());
        }
    }

    /// Reopens a store that has been failing for `reopen_after`, at most once per
    /// `reopen_after`.
    fn maybe_reopen(&self) {
        if self.is_healthy() {
            return;
        }
        let Some(reopen) = &self.reopen else { return };
        {
            let mut since = lock(&self.since);
            match *since {
                Some(t) if t.elapsed() >= self.reopen_after => *since = Some(Instant::now()),
                _ => return,
            }
        }
        // Let go of the old store first: sled holds a lock on its directory.
        let old = std::mem::replace(
            &mut *write(&self.inner),
            Arc::new(Unavailable("being reopened".into())),
        );
        drop(old);
        let fresh = contain("reopen", reopen);
        match fresh {
            Ok(store) => {
                tracing::warn!("cache store reopened");
                *write(&self.inner) = store;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot reopen the cache store; retrying later");
                *write(&self.inner) = Arc::new(Unavailable(e.to_string()));
            }
        }
    }
}

impl PolicyStore for GuardedStore {
    fn scan(&self, visit: &mut Visit<'_>) -> Result<(), StoreError> {
        self.call("load", |s| s.scan(visit))
    }

    fn scan_outlines(&self, visit: &mut VisitOutline<'_>) -> Result<(), StoreError> {
        self.call("load", |s| s.scan_outlines(visit))
    }

    fn healthy(&self) -> bool {
        self.is_healthy()
    }

    fn get(&self, domain: &str) -> Result<Option<Entry>, StoreError> {
        self.call("get", |s| s.get(domain))
    }

    fn put(&self, domain: &str, entry: &Entry) -> Result<(), StoreError> {
        self.call("put", |s| s.put(domain, entry))
    }

    fn remove(&self, domain: &str) -> Result<(), StoreError> {
        self.call("remove", |s| s.remove(domain))
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.call("flush", |s| s.flush())
    }

    fn checkpoint(&self) -> Option<u64> {
        self.call("checkpoint", |s| Ok(s.checkpoint()))
            .ok()
            .flatten()
    }

    fn set_checkpoint(&self, policies: Option<u64>) -> Result<(), StoreError> {
        let policies = policies.filter(|_| !self.failed_once.load(Ordering::Acquire));
        self.call_with("checkpoint", false, |s| s.set_checkpoint(policies))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Store;
    use std::sync::atomic::AtomicU8;

    /// 0 works, 1 errors, 2 panics.
    #[derive(Default)]
    struct Flaky(AtomicU8);

    impl Flaky {
        fn go(&self) -> Result<(), StoreError> {
            match self.0.load(Ordering::SeqCst) {
                0 => Ok(()),
                1 => Err(StoreError::Backend(Store::Policies, "disk on fire".into())),
                _ => panic!("sled assertion"),
            }
        }
    }

    impl PolicyStore for Flaky {
        fn scan(&self, _: &mut Visit<'_>) -> Result<(), StoreError> {
            self.go()
        }
        fn get(&self, _: &str) -> Result<Option<Entry>, StoreError> {
            self.go().map(|()| None)
        }
        fn put(&self, _: &str, _: &Entry) -> Result<(), StoreError> {
            self.go()
        }
        fn remove(&self, _: &str) -> Result<(), StoreError> {
            self.go()
        }
        fn flush(&self) -> Result<(), StoreError> {
            self.go()
        }
    }

    #[test]
    fn errors_and_panics_become_unhealthy_and_recover() {
        let flaky = Arc::new(Flaky::default());
        let metrics = Arc::new(Metrics::new().unwrap());
        let g = GuardedStore::new(flaky.clone(), None, metrics.clone());
        assert!(g.put("a.example", &Entry::default()).is_ok());
        flaky.0.store(1, Ordering::SeqCst);
        assert!(g.put("a.example", &Entry::default()).is_err());
        assert!(!g.is_healthy());
        assert_eq!(metrics.store.store_healthy.get(), 0);
        flaky.0.store(2, Ordering::SeqCst);
        match g.get("a.example") {
            Err(StoreError::Panic { op, message, .. }) => {
                assert_eq!(op, "get");
                assert!(message.contains("sled assertion"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            metrics.store.store_errors.with_label_values(&["get"]).get(),
            1
        );
        flaky.0.store(0, Ordering::SeqCst);
        assert!(g.flush().is_ok());
        assert!(g.is_healthy());
        assert_eq!(metrics.store.store_healthy.get(), 1);
    }

    #[test]
    fn a_failing_store_is_reopened() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let broken = Arc::new(Flaky(AtomicU8::new(2)));
        let reopen: Reopen = Box::new(|| Ok(Arc::new(Flaky::default()) as Arc<dyn PolicyStore>));
        let g = GuardedStore::new(broken, Some(reopen), metrics).with_reopen_after(Duration::ZERO);
        assert!(g.put("a.example", &Entry::default()).is_err());
        assert!(g.put("a.example", &Entry::default()).is_ok(), "reopened");
        assert!(g.is_healthy());
    }

    /// Records what it is given, to see what the guard passes on.
    #[derive(Default)]
    struct Recorder(Mutex<Option<Option<u64>>>);

    impl PolicyStore for Recorder {
        fn scan(&self, _: &mut Visit<'_>) -> Result<(), StoreError> {
            Ok(())
        }
        fn get(&self, _: &str) -> Result<Option<Entry>, StoreError> {
            Err(StoreError::Backend(Store::Policies, "get fails".into()))
        }
        fn put(&self, _: &str, _: &Entry) -> Result<(), StoreError> {
            Ok(())
        }
        fn remove(&self, _: &str) -> Result<(), StoreError> {
            Ok(())
        }
        fn flush(&self) -> Result<(), StoreError> {
            Ok(())
        }
        fn set_checkpoint(&self, policies: Option<u64>) -> Result<(), StoreError> {
            *lock(&self.0) = Some(policies);
            Ok(())
        }
    }

    #[test]
    fn after_a_failure_no_checkpoint_is_recorded() {
        let rec = Arc::new(Recorder::default());
        let g = GuardedStore::new(rec.clone(), None, Arc::new(Metrics::new().unwrap()));
        g.set_checkpoint(Some(7)).unwrap();
        assert_eq!(*lock(&rec.0), Some(Some(7)));
        assert!(g.get("a.example").is_err());
        g.set_checkpoint(Some(7)).unwrap();
        assert!(
            !g.is_healthy(),
            "a checkpoint write says nothing of the store"
        );
        assert!(g.flush().is_ok(), "healthy again");
        g.set_checkpoint(Some(7)).unwrap();
        assert_eq!(*lock(&rec.0), Some(None), "withdrawn instead");
    }
}
