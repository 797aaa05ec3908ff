//! Single-flight: at most one task per key at a time, shared by everyone who asks for
//! that key while it runs. Both lookup paths need it: a cache miss must cause one
//! discovery however many lookups of the domain arrive meanwhile (RFC 8461 §3.3 asks
//! senders not to hammer a domain's policy host), and one domain's DANE lookups run
//! once for all the lookups that wait for them.
//!
//! The work runs as its own task, so it finishes (and fills whatever cache it fills)
//! even when every caller stopped waiting at its deadline.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio::sync::Notify;

use crate::locks::lock;

/// A running task's result, awaited by as many callers as ask for it.
pub type Flight<T> = Shared<BoxFuture<'static, T>>;

/// The tasks running now, by key.
pub struct SingleFlight<T: Clone> {
    inner: Arc<Inner<T>>,
}

struct Inner<T: Clone> {
    running: Mutex<HashMap<String, Flight<T>>>,
    /// Notified whenever the last running task ends.
    idle: Notify,
}

impl<T: Clone> Default for SingleFlight<T> {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                running: Mutex::new(HashMap::new()),
                idle: Notify::new(),
            }),
        }
    }
}

impl<T: Clone + Send + Sync + 'static> SingleFlight<T> {
    /// Joins the task running for `key`, or starts `work()` as a new one. A task that
    /// panics or is cancelled resolves to `failed()` for its waiters.
    pub fn join_or_start<F>(
        &self,
        key: &str,
        work: impl FnOnce() -> F,
        failed: impl FnOnce() -> T + Send + 'static,
    ) -> Flight<T>
    where
        F: Future<Output = T> + Send + 'static,
    {
        let mut running = lock(&self.inner.running);
        if let Some(flight) = running.get(key) {
            return flight.clone();
        }
        let inner = self.inner.clone();
        let owned = key.to_owned();
        let future = work();
        let task = tokio::spawn(async move {
            // Removed only after the work is done (so that whatever it wrote is
            // visible to anyone who finds the key no longer running), and also if it
            // panics or is cancelled, so a key is never stuck on a dead task.
            let _done = Done { inner, key: owned };
            future.await
        });
        let flight: Flight<T> = async move {
            match task.await {
                Ok(result) => result,
                Err(_) => failed(),
            }
        }
        .boxed()
        .shared();
        running.insert(key.to_owned(), flight.clone());
        flight
    }

    /// Runs `f` while no task runs for `key` and none can start, or returns `None` if
    /// one is running: for work that must not race with the key's task.
    pub fn unless_running<R>(&self, key: &str, f: impl FnOnce() -> R) -> Option<R> {
        let running = lock(&self.inner.running);
        if running.contains_key(key) {
            return None;
        }
        let result = f();
        drop(running);
        Some(result)
    }

    /// How many tasks run now.
    pub fn len(&self) -> usize {
        lock(&self.inner.running).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until no task runs.
    pub async fn settle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            if self.is_empty() {
                return;
            }
            notified.await;
        }
    }
}

/// Takes a key off the running set when its task ends, however it ends.
struct Done<T: Clone> {
    inner: Arc<Inner<T>>,
    key: String,
}

impl<T: Clone> Drop for Done<T> {
    fn drop(&mut self) {
        let mut running = lock(&self.inner.running);
        running.remove(&self.key);
        if running.is_empty() {
            self.inner.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn one_task_per_key_shared_by_every_caller() {
        let flights: SingleFlight<usize> = SingleFlight::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let wait = wait.shared();
        let start = |runs: Arc<AtomicUsize>| {
            let wait = wait.clone();
            flights.join_or_start(
                "example.com",
                move || async move {
                    let _ = wait.await;
                    runs.fetch_add(1, Ordering::SeqCst) + 1
                },
                || 0,
            )
        };
        let a = start(runs.clone());
        let b = start(runs.clone());
        assert_eq!(flights.len(), 1);
        assert_eq!(flights.unless_running("example.com", || ()), None);
        assert_eq!(flights.unless_running("other.example", || 7), Some(7));
        release.send(()).unwrap();
        assert_eq!((a.await, b.await), (1, 1));
        flights.settle().await;
        assert!(flights.is_empty());
        // The next caller starts a new task.
        assert_eq!(start(runs.clone()).await, 2);
    }

    #[tokio::test]
    async fn a_task_that_panics_resolves_to_the_fallback() {
        let flights: SingleFlight<&'static str> = SingleFlight::default();
        let f = flights.join_or_start(
            "x",
            || async {
                if true {
                    panic!("boom");
                }
                "done"
            },
            || "failed",
        );
        assert_eq!(f.await, "failed");
        // And the key is free again.
        flights.settle().await;
        assert!(flights.is_empty());
    }
}
