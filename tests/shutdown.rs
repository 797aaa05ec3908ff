//! Shutdown is bounded: with thousands of refreshes due against a policy server that
//! never answers, the daemon stops within the settle bound, answers the lookup in
//! progress, flushes the cache and loses nothing.

mod common;

use std::sync::Arc;
use std::time::Duration;

use mta_stsd::cache::entry::{CachedPolicy, Entry};
use mta_stsd::cache::store::{PolicyStore, SledStore};
use mta_stsd::clock::{Clock, ManualClock, SystemClock};
use mta_stsd::config::Config;
use mta_stsd::mtasts::policy::parse_policy;
use mta_stsd::server::daemon::{Daemon, SHUTDOWN_SETTLE};
use mta_stsd_testkit::{HttpResponse, World};

const DUE: usize = 2000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_bounded_with_thousands_of_hanging_refreshes() {
    let w = World::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache");
    let now = SystemClock.now();
    // Policies fetched two days ago with a week's max_age: all due for a refresh.
    {
        let store = SledStore::open(&path).unwrap();
        let policy = parse_policy(common::ENFORCE.as_bytes()).unwrap();
        for i in 0..DUE {
            let e = Entry {
                policy: Some(CachedPolicy {
                    policy: policy.clone(),
                    id: "1".into(),
                    fetched_at: now - 2 * 86_400,
                    expires_at: now - 2 * 86_400 + 604_800,
                }),
                last_check: now - 2 * 86_400,
                ..Entry::default()
            };
            store.put(&format!("due{i}.example"), &e).unwrap();
        }
        store.flush().unwrap();
    }
    w.dns.batch(|_| {
        for i in 0..DUE {
            w.point_policy_host(&format!("due{i}.example"));
        }
    });
    for i in 0..DUE {
        w.https
            .set_response(&format!("due{i}.example"), HttpResponse::Hang);
    }
    // A miss whose fetch hangs too: its lookup is in progress at shutdown.
    w.publish("miss.example", "1", common::ENFORCE);
    w.https.set_response("miss.example", HttpResponse::Hang);

    let mut config = Config::from_toml(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[metrics]\nlisten = \"\"\n\
         [cache]\nrefresh_interval = \"100ms\"\nrefresh_concurrency = 64\n",
        "test",
    )
    .unwrap();
    config.cache.path = Some(path.clone());
    let mut opts = common::options(&w);
    // Far longer than the settle bound: only abandoning them can stop in time.
    opts.fetch.timeout = Duration::from_secs(300);
    let clock = ManualClock::new(now);
    let daemon = Daemon::build(config, opts, Arc::new(clock)).await.unwrap();
    let addr = daemon.tcp_addrs()[0];
    let service = daemon.state.service.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(daemon.run(async {
        let _ = stopped.await;
    }));

    // Wait until the refresher has filled its concurrency with hanging fetches.
    tokio::time::timeout(Duration::from_secs(20), async {
        while service.inflight() < 64 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("refreshes started");
    let lookup = tokio::spawn(async move {
        let mut conn = common::connect_tcp(addr).await;
        common::ask(&mut conn, "postfix", "miss.example").await
    });
    w.https.wait_for_hits("miss.example", 1).await;

    let _ = stop.send(());
    let stopped = tokio::time::timeout(SHUTDOWN_SETTLE * 3, task)
        .await
        .expect("the daemon stops")
        .unwrap();
    assert!(!stopped.settled, "the hanging work had to be abandoned");
    assert!(stopped.flushed);
    assert!(
        stopped.elapsed < SHUTDOWN_SETTLE + Duration::from_secs(3),
        "stopped in {:?}",
        stopped.elapsed
    );
    assert_eq!(
        lookup.await.unwrap().as_deref(),
        Some("NOTFOUND "),
        "the lookup in progress is answered before its connection closes"
    );
    drop(service);

    // Nothing cached was lost.
    let store = SledStore::open(&path).unwrap();
    let (entries, errors) = mta_stsd::cache::store::read_all(&store).unwrap();
    assert!(errors.is_empty());
    let valid = entries
        .iter()
        .filter(|(d, e)| d.starts_with("due") && e.valid_policy(now).is_some())
        .count();
    assert_eq!(valid, DUE);
}

/// An admin request in progress when shutdown begins (a refresh runs a whole
/// discovery) is answered before the daemon stops. The daemon runs on a runtime of its
/// own that is dropped when it returns, as in the binary, so a connection left behind
/// would be cut off rather than finish on the test's runtime.
#[test]
fn an_admin_request_in_progress_at_shutdown_is_answered() {
    let test_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let w = test_rt.block_on(World::start());
    w.publish("slow.example", "1", common::ENFORCE);
    w.https.set_response(
        "slow.example",
        HttpResponse::Delay(
            Duration::from_millis(1500),
            Box::new(HttpResponse::Policy(common::ENFORCE.into())),
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let config = common::config_in(dir.path(), common::LOOPBACK);
    let opts = common::options(&w);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon_thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let stopped = rt.block_on(async {
            let daemon = Daemon::build(config, opts, Arc::new(SystemClock))
                .await
                .unwrap();
            let admin = daemon.metrics_addr().unwrap();
            ready_tx
                .send((admin, daemon.state.service.clone()))
                .unwrap();
            daemon
                .run(async {
                    let _ = stop_rx.await;
                })
                .await
        });
        // Dropping the runtime ends whatever the daemon left running.
        drop(rt);
        stopped
    });
    let (admin, service) = ready_rx.recv().unwrap();
    let stopped = test_rt.block_on(async {
        let client = mta_stsd::admin::client::AdminClient::new(
            &format!("http://{admin}"),
            Duration::from_secs(30),
        )
        .unwrap();
        let request = tokio::spawn(async move { client.refresh("slow.example").await });
        // The refresh is running once its discovery is in flight.
        tokio::time::timeout(Duration::from_secs(10), async {
            while service.inflight() == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the refresh started");
        let _ = stop_tx.send(());
        let stopped = tokio::task::spawn_blocking(move || daemon_thread.join().unwrap())
            .await
            .unwrap();
        let entry = tokio::time::timeout(Duration::from_secs(5), request)
            .await
            .expect("an answer")
            .unwrap()
            .expect("the refresh was answered, not cut off");
        assert_eq!(entry.state, "enforce");
        stopped
    });
    assert!(stopped.settled);
}
