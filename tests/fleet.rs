//! A fleet of daemons sharing one real `redis-server` (`cache.backend = "redis"`):
//! what one learns the others answer without DNS or HTTPS, a policy is fetched once
//! however many daemons miss it at once, purges reach every daemon, an older fetch
//! never replaces a newer one, and Redis stopping, restarting or missing at start costs
//! no answer.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mta_stsd::cache::entry::{CachedPolicy, Entry};
use mta_stsd::cache::redis_cache::Event;
use mta_stsd::clock::{Clock, SystemClock};
use mta_stsd::config::Config;
use mta_stsd::mtasts::policy::parse_policy;
use mta_stsd_testkit::{HttpResponse, RedisServer, World, free_port};

const SECURE: &str = "OK secure match=mx1.example.com:.example.net servername=hostname";

fn config(cache: &Path, redis_url: &str) -> Config {
    // The Redis timeout is generous for a loaded CI machine (the default is 250ms).
    let mut c = Config::from_toml(
        &format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[metrics]\nlisten = \"\"\n\
             [dane]\nmode = \"off\"\n\
             [cache]\nbackend = \"redis\"\n\
             [cache.redis]\nurl = \"{redis_url}\"\ntimeout = \"2s\"\n"
        ),
        "test",
    )
    .unwrap();
    c.cache.path = Some(cache.to_owned());
    c
}

/// Waits until the load has made `n` more lookups.
async fn after(counter: &tokio::sync::watch::Receiver<usize>, n: usize) {
    let target = *counter.borrow() + n;
    let _ = counter.clone().wait_for(|v| *v >= target).await;
}

fn redis() -> RedisServer {
    assert!(
        RedisServer::installed(),
        "these tests need Debian's redis-server (apt-get install redis-server)"
    );
    RedisServer::start_unix()
}

/// Two daemons, each with its own local cache, sharing `url`.
struct Fleet {
    a: common::InProcess,
    b: common::InProcess,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Fleet {
    async fn start(w: &World, url: &str) -> Fleet {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let a = common::InProcess::start(w, config(da.path(), url), clock.clone()).await;
        let b = common::InProcess::start(w, config(db.path(), url), clock).await;
        Fleet {
            a,
            b,
            _dirs: (da, db),
        }
    }

    async fn subscribed(&self) {
        for d in [&self.a, &self.b] {
            d.service.shared().unwrap().wait_subscribed().await;
        }
    }

    async fn stop(self) {
        self.a.shutdown().await;
        self.b.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_one_daemon_learns_the_other_answers_without_network() {
    let redis = redis();
    let w = World::start().await;
    w.publish("shared.example", "1", common::ENFORCE);
    let f = Fleet::start(&w, &redis.url()).await;

    assert_eq!(
        common::ask_once(f.a.tcp, "postfix", "shared.example").await,
        SECURE
    );
    assert_eq!(w.https.hits("shared.example"), 1);
    let queries = w.dns.total_queries();

    assert_eq!(
        common::ask_once(f.b.tcp, "postfix", "shared.example").await,
        SECURE
    );
    assert_eq!(w.dns.total_queries(), queries, "B asked no DNS");
    assert_eq!(w.https.hits("shared.example"), 1, "B fetched nothing");
    assert_eq!(f.b.service.metrics().fleet.redis_adopted.get(), 1);
    // B keeps its own copy, which outlives Redis.
    assert_eq!(
        f.b.service
            .cached("shared.example")
            .unwrap()
            .policy
            .unwrap()
            .id,
        "1"
    );
    // The key expires with the policy (max_age 604800).
    let ttl: i64 = redis
        .cli(&["TTL", "mta-stsd:policy:shared.example"])
        .parse()
        .unwrap();
    assert!((604_000..=604_800).contains(&ttl), "TTL {ttl}");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_misses_over_two_daemons_fetch_once() {
    let redis = redis();
    let w = World::start().await;
    w.publish("busy.example", "1", common::ENFORCE);
    // A slow policy server, so that every lookup arrives while the fetch runs.
    w.https.set_response(
        "busy.example",
        HttpResponse::Delay(
            Duration::from_millis(400),
            Box::new(HttpResponse::Policy(common::ENFORCE.into())),
        ),
    );
    let f = Fleet::start(&w, &redis.url()).await;
    f.subscribed().await;

    let mut asks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let addr = if i % 2 == 0 { f.a.tcp } else { f.b.tcp };
        asks.spawn(async move { common::ask_once(addr, "postfix", "busy.example").await });
    }
    while let Some(reply) = asks.join_next().await {
        assert_eq!(reply.unwrap(), SECURE);
    }
    assert_eq!(w.https.hits("busy.example"), 1, "one fetch for the fleet");
    let adopted = f.a.service.metrics().fleet.redis_adopted.get()
        + f.b.service.metrics().fleet.redis_adopted.get();
    assert_eq!(adopted, 1, "the other daemon took the fetched policy");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_on_one_daemon_reaches_the_other() {
    let redis = redis();
    let w = World::start().await;
    w.publish("purged.example", "1", common::ENFORCE);
    let f = Fleet::start(&w, &redis.url()).await;
    f.subscribed().await;
    assert_eq!(
        common::ask_once(f.a.tcp, "postfix", "purged.example").await,
        SECURE
    );
    assert_eq!(
        common::ask_once(f.b.tcp, "postfix", "purged.example").await,
        SECURE
    );
    assert!(f.b.service.cached("purged.example").is_some());

    // What the admin API's DELETE runs.
    assert!(f.a.service.purge_everywhere("purged.example").await);
    let purged = Event::Purged("purged.example".into());
    f.b.service.shared().unwrap().wait_applied(&purged).await;
    assert!(
        f.b.service.cached("purged.example").is_none(),
        "B dropped it"
    );
    assert_eq!(
        redis.cli(&["EXISTS", "mta-stsd:policy:purged.example"]),
        "0"
    );

    // The next lookup anywhere discovers it again.
    assert_eq!(
        common::ask_once(f.b.tcp, "postfix", "purged.example").await,
        SECURE
    );
    assert_eq!(w.https.hits("purged.example"), 2);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_fetch_never_replaces_a_newer_one() {
    let redis = redis();
    let w = World::start().await;
    // The domain serves id 1 (mx1.example.com) ...
    w.publish("race.example", "1", common::ENFORCE);
    let f = Fleet::start(&w, &redis.url()).await;
    f.subscribed().await;
    assert_eq!(
        common::ask_once(f.a.tcp, "postfix", "race.example").await,
        SECURE
    );

    // ... while another daemon of the fleet has meanwhile stored id 2, fetched later.
    let newer_body = "version: STSv1\nmode: enforce\nmx: mx2.example.org\nmax_age: 86400\n";
    let fetched_at = SystemClock.now() + 30;
    let newer = Entry {
        policy: Some(CachedPolicy {
            policy: parse_policy(newer_body.as_bytes()).unwrap(),
            id: "2".into(),
            fetched_at,
            expires_at: fetched_at + 86_400,
        }),
        last_check: fetched_at,
        ..Entry::default()
    };
    let shared = f.b.service.shared().unwrap();
    assert!(shared.put("race.example", &newer).await.unwrap());
    let updated = Event::Updated("race.example".into());
    f.a.service.shared().unwrap().wait_applied(&updated).await;
    // A's copy was updated from the announcement.
    assert_eq!(
        f.a.service
            .cached("race.example")
            .unwrap()
            .policy
            .unwrap()
            .id,
        "2"
    );

    // A's operator forces a refresh: A fetches id 1 again, finishing after id 2 was
    // stored. The compare in Redis refuses it, and A takes id 2 back.
    let refreshed = f.a.service.refresh_now("race.example").await.unwrap();
    assert_eq!(w.https.hits("race.example"), 2, "A did fetch");
    assert_eq!(refreshed.policy.unwrap().id, "2");
    assert_eq!(
        shared
            .get("race.example")
            .await
            .unwrap()
            .unwrap()
            .policy
            .unwrap()
            .id,
        "2",
        "Redis kept the newer one"
    );
    assert_eq!(
        common::ask_once(f.a.tcp, "postfix", "race.example").await,
        "OK secure match=mx2.example.org servername=hostname"
    );
    // An older write straight to Redis is refused as well.
    let mut older = newer.clone();
    if let Some(p) = older.policy.as_mut() {
        p.fetched_at -= 60;
        p.id = "0".into();
    }
    assert!(!shared.put("race.example", &older).await.unwrap());
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_under_load_costs_no_answer() {
    let mut redis = redis();
    let w = World::start().await;
    let domains: Vec<String> = (0..20).map(|i| format!("load{i}.example")).collect();
    for d in &domains {
        w.publish(d, "1", common::ENFORCE);
    }
    let f = Fleet::start(&w, &redis.url()).await;
    f.subscribed().await;
    for d in &domains {
        assert_eq!(common::ask_once(f.a.tcp, "postfix", d).await, SECURE);
        assert_eq!(common::ask_once(f.b.tcp, "postfix", d).await, SECURE);
    }
    let fetched: usize = domains.iter().map(|d| w.https.hits(d)).sum();
    assert_eq!(fetched, domains.len(), "B fetched none of them");

    // Four Postfix connections, two per daemon, asking all the time.
    let (count, counter) = tokio::sync::watch::channel(0usize);
    let count = Arc::new(count);
    let stop = tokio_util::sync::CancellationToken::new();
    let mut load = tokio::task::JoinSet::new();
    for client in 0..4 {
        let addr = if client % 2 == 0 { f.a.tcp } else { f.b.tcp };
        let (domains, count, stop) = (domains.clone(), count.clone(), stop.clone());
        load.spawn(async move {
            let mut conn = common::connect_tcp(addr).await;
            let mut wrong = Vec::new();
            let mut i = client;
            while !stop.is_cancelled() {
                let d = &domains[i % domains.len()];
                match common::ask(&mut conn, "postfix", d).await {
                    Some(r) if r == SECURE => {}
                    other => wrong.push(format!("{d}: {other:?}")),
                }
                count.send_modify(|n| *n += 1);
                i += 1;
            }
            wrong
        });
    }
    after(&counter, 500).await;
    redis.stop();
    after(&counter, 500).await;
    // A miss while Redis is down is discovered locally.
    w.publish("during.example", "1", common::ENFORCE);
    assert_eq!(
        common::ask_once(f.a.tcp, "postfix", "during.example").await,
        SECURE
    );
    redis.start();
    for d in [&f.a, &f.b] {
        d.service.shared().unwrap().wait_reachable().await;
    }
    f.subscribed().await;
    after(&counter, 500).await;
    stop.cancel();
    let mut total_wrong = Vec::new();
    while let Some(wrong) = load.join_next().await {
        total_wrong.extend(wrong.unwrap());
    }
    assert!(total_wrong.is_empty(), "answers lost: {total_wrong:?}");

    // The fleet works again: what A learns now, B answers without fetching.
    w.publish("after.example", "1", common::ENFORCE);
    assert_eq!(
        common::ask_once(f.a.tcp, "postfix", "after.example").await,
        SECURE
    );
    assert_eq!(
        common::ask_once(f.b.tcp, "postfix", "after.example").await,
        SECURE
    );
    assert_eq!(w.https.hits("after.example"), 1);
    let errors =
        f.a.service
            .metrics()
            .store
            .store_errors
            .with_label_values(&["redis_get"]);
    assert!(errors.get() >= 1, "the outage was counted");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_starts_and_serves_with_redis_unreachable() {
    let w = World::start().await;
    w.publish("alone.example", "1", common::ENFORCE);
    w.publish("later.example", "1", common::ENFORCE);
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let dir = tempfile::tempdir().unwrap();
    let d = common::InProcess::start(&w, config(dir.path(), &url), Arc::new(SystemClock)).await;

    assert_eq!(
        common::ask_once(d.tcp, "postfix", "alone.example").await,
        SECURE
    );
    let m = d.service.metrics();
    assert_eq!(m.fleet.redis_healthy.get(), 0);
    assert!(m.store.store_errors.with_label_values(&["redis_get"]).get() >= 1);

    // Redis comes up: the daemon connects and shares what it learns from then on.
    assert!(RedisServer::installed());
    let redis = RedisServer::start_on_port(port);
    d.service.shared().unwrap().wait_reachable().await;
    assert_eq!(
        common::ask_once(d.tcp, "postfix", "later.example").await,
        SECURE
    );
    assert_eq!(m.fleet.redis_healthy.get(), 1);
    assert_eq!(redis.cli(&["EXISTS", "mta-stsd:policy:later.example"]), "1");
    d.shutdown().await;
}
