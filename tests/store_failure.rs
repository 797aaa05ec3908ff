//! A store that fails or panics while the daemon runs leaves lookups answered: the
//! daemon serves from memory and reports the store unhealthy until it works again.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use mta_stsd::cache::entry::Entry;
use mta_stsd::cache::store::{PolicyStore, SledStore, Store, StoreError, Visit};
use mta_stsd::clock::SystemClock;
use mta_stsd::config::Config;
use mta_stsd::server::daemon::{Daemon, Parts};
use mta_stsd_testkit::World;

const SECURE: &str = "OK secure match=mx1.example.com:.example.net servername=hostname";

/// A real sled store behind a switch: 0 works, 1 errors, 2 panics.
struct Switched {
    inner: SledStore,
    mode: AtomicU8,
}

impl Switched {
    fn check(&self) -> Result<(), StoreError> {
        match self.mode.load(Ordering::SeqCst) {
            0 => Ok(()),
            1 => Err(StoreError::Backend(
                Store::Policies,
                "injected failure".into(),
            )),
            _ => panic!("injected panic"),
        }
    }
}

impl PolicyStore for Switched {
    fn scan(&self, visit: &mut Visit<'_>) -> Result<(), StoreError> {
        self.check()?;
        self.inner.scan(visit)
    }
    fn get(&self, d: &str) -> Result<Option<Entry>, StoreError> {
        self.check()?;
        self.inner.get(d)
    }
    fn put(&self, d: &str, e: &Entry) -> Result<(), StoreError> {
        self.check()?;
        self.inner.put(d, e)
    }
    fn remove(&self, d: &str) -> Result<(), StoreError> {
        self.check()?;
        self.inner.remove(d)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.check()?;
        self.inner.flush()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_are_answered_while_the_store_fails_or_panics() {
    let w = World::start().await;
    for d in ["a.example", "b.example", "c.example"] {
        w.publish(d, "1", common::ENFORCE);
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Switched {
        inner: SledStore::open(&dir.path().join("cache")).unwrap(),
        mode: AtomicU8::new(0),
    });
    let config = Config::from_toml(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[metrics]\nlisten = \"\"\n",
        "test",
    )
    .unwrap();
    let parts = Parts {
        store: Some(store.clone()),
        ..Parts::default()
    };
    let daemon = Daemon::build_with(config, common::options(&w), Arc::new(SystemClock), parts)
        .await
        .unwrap();
    let addr = daemon.tcp_addrs()[0];
    let service = daemon.state.service.clone();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(daemon.run(async {
        let _ = rx.await;
    }));
    assert_eq!(common::ask_once(addr, "postfix", "a.example").await, SECURE);
    let healthy = || service.metrics().store.store_healthy.get();
    assert_eq!(healthy(), 1);

    for (mode, domain) in [(1, "b.example"), (2, "c.example")] {
        store.mode.store(mode, Ordering::SeqCst);
        // A new discovery whose write fails, and a hit served from memory.
        assert_eq!(
            common::ask_once(addr, "postfix", domain).await,
            SECURE,
            "mode {mode}"
        );
        assert_eq!(
            common::ask_once(addr, "postfix", "a.example").await,
            SECURE,
            "mode {mode}"
        );
        assert_eq!(
            common::ask_once(addr, "postfix", domain).await,
            SECURE,
            "mode {mode}"
        );
        assert_eq!(healthy(), 0, "mode {mode}");
    }
    assert!(
        service
            .metrics()
            .store
            .store_errors
            .with_label_values(&["put"])
            .get()
            >= 2
    );

    store.mode.store(0, Ordering::SeqCst);
    let _ = stop.send(());
    let stopped = task.await.unwrap();
    assert!(stopped.flushed, "the store works again at shutdown");
    assert_eq!(healthy(), 1);
}
