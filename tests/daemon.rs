//! The daemon end to end: real socketmap clients over TCP and unix sockets, the
//! loopback DNS and HTTPS servers, and a manual clock for cache time.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{ENFORCE, InProcess, ask, ask_once, connect_tcp};
use futures::{SinkExt, StreamExt};
use mta_stsd::cache::policy_cache::PolicyService;
use mta_stsd::clock::{Clock, ManualClock, SystemClock};
use mta_stsd::protocol::codec::NetstringCodec;
use mta_stsd_testkit::{RecordType, World, policy_text};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_util::codec::Framed;

const SECURE: &str = "OK secure match=mx1.example.com:.example.net servername=hostname";

struct Running {
    inner: InProcess,
    tcp: SocketAddr,
    unix: PathBuf,
    clock: ManualClock,
    service: Arc<PolicyService>,
}

impl Running {
    async fn shutdown(self) {
        self.inner.shutdown().await;
    }

    async fn tcp(&self) -> Framed<TcpStream, NetstringCodec> {
        connect_tcp(self.tcp).await
    }

    async fn unix(&self) -> Framed<UnixStream, NetstringCodec> {
        Framed::new(
            UnixStream::connect(&self.unix).await.unwrap(),
            NetstringCodec::new(200_000),
        )
    }

    /// One request on a fresh TCP connection.
    async fn ask(&self, map: &str, key: &str) -> String {
        ask_once(self.tcp, map, key).await
    }
}

async fn start_with(world: &World, dir: &Path, extra: &str, clock: ManualClock) -> Running {
    let inner = InProcess::builder(world, dir)
        .unix()
        .toml(extra)
        .clock(Arc::new(clock.clone()))
        .start()
        .await;
    Running {
        tcp: inner.tcp,
        service: inner.service.clone(),
        inner,
        unix: dir.join("mta-stsd.sock"),
        clock,
    }
}

async fn start(world: &World, dir: &Path, extra: &str) -> Running {
    start_with(world, dir, extra, ManualClock::new(SystemClock.now())).await
}

#[tokio::test]
async fn answers_over_tcp_and_unix_sockets_with_zones() {
    let w = World::start().await;
    w.publish("enforce.example", "1", ENFORCE);
    w.publish(
        "testing.example",
        "1",
        &policy_text("testing", &["mx.testing.example"], 86400),
    );
    w.publish("none.example", "1", &policy_text("none", &[], 86400));
    let dir = tempfile::tempdir().unwrap();
    let d = start(
        &w,
        dir.path(),
        "[zones.strict]\nstrict_testing = true\n[zones.old]\nrequire_sni = false\n",
    )
    .await;

    let mut tcp = d.tcp().await;
    let mut unix = d.unix().await;
    // Several requests on one connection, answered in order.
    let over_tcp = [
        ("postfix", "enforce.example", SECURE),
        ("postfix", "testing.example", "NOTFOUND "),
        ("postfix", "none.example", "NOTFOUND "),
        ("postfix", ".enforce.example", "NOTFOUND "),
        ("postfix", "[192.0.2.1]:25", "NOTFOUND "),
    ];
    for (map, key, expected) in over_tcp {
        assert_eq!(
            ask(&mut tcp, map, key).await.unwrap(),
            expected,
            "tcp {map} {key}"
        );
    }
    let over_unix = [
        ("postfix", "ENFORCE.example.", SECURE),
        (
            "strict",
            "testing.example",
            "OK secure match=mx.testing.example servername=hostname",
        ),
        ("strict", "none.example", "NOTFOUND "),
        (
            "old",
            "enforce.example",
            "OK secure match=mx1.example.com:.example.net",
        ),
    ];
    for (map, key, expected) in over_unix {
        assert_eq!(
            ask(&mut unix, map, key).await.unwrap(),
            expected,
            "unix {map} {key}"
        );
    }
    // Every policy was fetched once, whatever the number of lookups.
    assert_eq!(w.https.hits("enforce.example"), 1);
    let mode = std::fs::metadata(&d.unix).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o666);
    d.shutdown().await;
    assert!(
        !dir.path().join("mta-stsd.sock").exists(),
        "unix socket removed on shutdown"
    );
}

#[tokio::test]
async fn id_change_fetches_the_new_policy() {
    let w = World::start().await;
    w.publish("idchange.example", "1", ENFORCE);
    let dir = tempfile::tempdir().unwrap();
    let d = start(&w, dir.path(), "").await;
    assert_eq!(d.ask("postfix", "idchange.example").await, SECURE);
    w.publish(
        "idchange.example",
        "2",
        &policy_text("enforce", &["mx.new.example"], 86400),
    );
    // Within grace: answered from cache, no DNS.
    let before = w
        .dns
        .query_count("_mta-sts.idchange.example", RecordType::TXT);
    assert_eq!(d.ask("postfix", "idchange.example").await, SECURE);
    assert_eq!(
        w.dns
            .query_count("_mta-sts.idchange.example", RecordType::TXT),
        before
    );
    // After grace: still answered from cache at once, while a background check runs.
    d.clock.advance(61);
    assert_eq!(d.ask("postfix", "idchange.example").await, SECURE);
    d.service.settle().await;
    assert_eq!(w.https.hits("idchange.example"), 2);
    assert_eq!(
        d.ask("postfix", "idchange.example").await,
        "OK secure match=mx.new.example servername=hostname"
    );
    assert_eq!(
        d.service
            .cached("idchange.example")
            .unwrap()
            .policy
            .unwrap()
            .id,
        "2"
    );
    d.shutdown().await;
}

#[tokio::test]
async fn same_id_keeps_the_old_policy_until_it_expires() {
    let w = World::start().await;
    w.publish(
        "sameid.example",
        "1",
        &policy_text("enforce", &["mx1.example.com", "*.example.net"], 3600),
    );
    let dir = tempfile::tempdir().unwrap();
    let d = start(&w, dir.path(), "").await;
    assert_eq!(d.ask("postfix", "sameid.example").await, SECURE);
    let fetched_at = d
        .service
        .cached("sameid.example")
        .unwrap()
        .policy
        .unwrap()
        .fetched_at;
    w.https.set_policy(
        "sameid.example",
        &policy_text("enforce", &["mx.changed.example"], 3600),
    );
    d.clock.advance(600);
    assert_eq!(d.ask("postfix", "sameid.example").await, SECURE);
    d.service.settle().await;
    assert_eq!(
        w.https.hits("sameid.example"),
        1,
        "unchanged id: nothing to fetch"
    );
    let entry = d.service.cached("sameid.example").unwrap();
    let cached = entry.policy.unwrap();
    assert_eq!(
        cached.fetched_at, fetched_at,
        "an unchanged id does not extend max_age"
    );
    assert_eq!(cached.expires_at, fetched_at + 3600);
    assert!(entry.last_check > fetched_at);
    // Past max_age the policy is gone; the next lookup discovers the current file.
    d.clock.advance(3001);
    assert_eq!(
        d.ask("postfix", "sameid.example").await,
        "OK secure match=mx.changed.example servername=hostname"
    );
    assert_eq!(w.https.hits("sameid.example"), 2);
    d.shutdown().await;
}

#[tokio::test]
async fn expiry_without_policy_answers_notfound() {
    let w = World::start().await;
    w.publish(
        "expire.example",
        "1",
        &policy_text("enforce", &["mx1.example.com", "*.example.net"], 600),
    );
    let dir = tempfile::tempdir().unwrap();
    let d = start(&w, dir.path(), "").await;
    assert_eq!(d.ask("postfix", "expire.example").await, SECURE);
    w.dns.remove("_mta-sts.expire.example", RecordType::TXT);
    w.https.remove("expire.example");
    d.clock.advance(601);
    assert_eq!(d.ask("postfix", "expire.example").await, "NOTFOUND ");
    d.shutdown().await;
}

#[tokio::test]
async fn vanished_txt_keeps_a_valid_policy_enforced() {
    let w = World::start().await;
    w.publish("gone.example", "1", ENFORCE);
    let dir = tempfile::tempdir().unwrap();
    let d = start(&w, dir.path(), "").await;
    assert_eq!(d.ask("postfix", "gone.example").await, SECURE);
    w.dns.remove("_mta-sts.gone.example", RecordType::TXT);
    d.clock.advance(3600);
    assert_eq!(d.ask("postfix", "gone.example").await, SECURE);
    d.service.settle().await;
    assert_eq!(d.ask("postfix", "gone.example").await, SECURE);
    d.shutdown().await;
}

#[tokio::test]
async fn policy_server_down_keeps_the_cached_policy_and_backs_off() {
    let w = World::start().await;
    w.publish("down.example", "1", ENFORCE);
    let dir = tempfile::tempdir().unwrap();
    let d = start(&w, dir.path(), "").await;
    assert_eq!(d.ask("postfix", "down.example").await, SECURE);
    // A new id announces a new policy, but the policy server is down.
    w.dns.set_txt("_mta-sts.down.example", &["v=STSv1; id=2"]);
    w.https.remove("down.example");
    d.clock.advance(120);
    assert_eq!(d.ask("postfix", "down.example").await, SECURE);
    d.service.settle().await;
    let entry = d.service.cached("down.example").unwrap();
    assert_eq!(
        entry.failure.as_ref().unwrap().class.as_str(),
        "tls",
        "{:?}",
        entry.failure
    );
    assert_eq!(entry.policy.unwrap().id, "1");
    assert_eq!(d.ask("postfix", "down.example").await, SECURE);
    // Within 5 minutes of the failure the same id is not fetched again.
    w.https.set_policy("down.example", ENFORCE);
    d.clock.advance(120);
    assert_eq!(d.ask("postfix", "down.example").await, SECURE);
    d.service.settle().await;
    assert_eq!(w.https.hits("down.example"), 1);
    // After retry_after it is.
    d.clock.advance(300);
    assert_eq!(d.ask("postfix", "down.example").await, SECURE);
    d.service.settle().await;
    assert_eq!(w.https.hits("down.example"), 2);
    assert_eq!(
        d.service.cached("down.example").unwrap().policy.unwrap().id,
        "2"
    );
    d.shutdown().await;
}

#[tokio::test]
async fn restart_serves_cached_policies_without_network() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(SystemClock.now());
    {
        let w = World::start().await;
        w.publish("persist.example", "1", ENFORCE);
        let d = start_with(&w, dir.path(), "", clock.clone()).await;
        assert_eq!(d.ask("postfix", "persist.example").await, SECURE);
        d.shutdown().await;
    }
    // DNS and HTTPS are both gone now: a fresh world whose servers know nothing.
    let w = World::start().await;
    clock.advance(10);
    let d = start_with(&w, dir.path(), "", clock).await;
    assert_eq!(d.ask("postfix", "persist.example").await, SECURE);
    assert_eq!(
        w.dns.total_queries(),
        0,
        "answered from the persistent cache"
    );
    d.shutdown().await;
}

#[tokio::test]
async fn concurrent_misses_share_one_fetch() {
    let w = World::start().await;
    w.publish("herd.example", "1", ENFORCE);
    w.https.set_response(
        "herd.example",
        mta_stsd_testkit::HttpResponse::Delay(
            std::time::Duration::from_millis(200),
            Box::new(mta_stsd_testkit::HttpResponse::Policy(ENFORCE.into())),
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let d = Arc::new(start(&w, dir.path(), "").await);
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let d = d.clone();
        tasks.push(tokio::spawn(async move {
            d.ask("postfix", "herd.example").await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), SECURE);
    }
    assert_eq!(w.https.hits("herd.example"), 1);
    assert_eq!(
        w.dns.query_count("_mta-sts.herd.example", RecordType::TXT),
        1
    );
}

#[tokio::test]
async fn negative_answers_are_cached_for_the_negative_ttl() {
    let w = World::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = start(&w, dir.path(), "[cache]\nnegative_ttl = \"10m\"\n").await;
    let mut conn = d.tcp().await;
    for _ in 0..1000 {
        assert_eq!(
            ask(&mut conn, "postfix", "plain.example").await.unwrap(),
            "NOTFOUND "
        );
    }
    assert_eq!(
        w.dns.query_count("_mta-sts.plain.example", RecordType::TXT),
        1
    );
    d.clock.advance(601);
    for _ in 0..1000 {
        assert_eq!(
            ask(&mut conn, "postfix", "plain.example").await.unwrap(),
            "NOTFOUND "
        );
    }
    assert_eq!(
        w.dns.query_count("_mta-sts.plain.example", RecordType::TXT),
        2
    );
}

/// Memory holds at most `cache.memory_entries` policies: past that the least recently
/// used are dropped from memory, stay in the store, and are read back from it on their
/// next lookup, with no DNS or HTTPS. The refresher and the gauges still see them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_holds_a_bounded_hot_set_and_reads_the_rest_from_the_store() {
    let w = World::start().await;
    for i in 0..60 {
        w.publish(&format!("hot{i}.example"), "1", ENFORCE);
    }
    let dir = tempfile::tempdir().unwrap();
    let d = start(&w, dir.path(), "[cache]\nmemory_entries = 10\n").await;
    let mut conn = d.tcp().await;
    for i in 0..60 {
        let reply = ask(&mut conn, "postfix", &format!("hot{i}.example")).await;
        assert_eq!(reply.as_deref(), Some(SECURE));
        assert!(
            d.service.len() <= 10,
            "hot set {} after {i}",
            d.service.len()
        );
    }
    let queries = w.dns.total_queries();
    // Every policy is still answered, the dropped ones from the store.
    for i in (0..60).rev() {
        let reply = ask(&mut conn, "postfix", &format!("hot{i}.example")).await;
        assert_eq!(reply.as_deref(), Some(SECURE));
        assert!(d.service.len() <= 10);
    }
    assert_eq!(w.dns.total_queries(), queries, "no DNS");
    let fetches: usize = (0..60)
        .map(|i| w.https.hits(&format!("hot{i}.example")))
        .sum();
    assert_eq!(fetches, 60, "each fetched once");
    // The store holds them all: the walk that the refresher and gauges use counts 60.
    d.service.refresh_due().await;
    assert_eq!(d.service.policies(), 60);
    assert_eq!(d.service.snapshot().len(), 60);
    // A day later every policy is due: the refresher fetches all 60, and the hot set
    // is still the domains lookups used last (hot0..hot9), not what was refreshed.
    let hot: Vec<String> = (0..60)
        .map(|i| format!("hot{i}.example"))
        .filter(|dom| d.service.is_hot(dom))
        .collect();
    assert!(!hot.is_empty() && hot.len() <= 10, "{hot:?}");
    d.clock.advance(2 * 86_400);
    assert_eq!(d.service.refresh_due().await, 60);
    let fetches: usize = (0..60)
        .map(|i| w.https.hits(&format!("hot{i}.example")))
        .sum();
    assert_eq!(fetches, 120, "each refreshed once");
    let after: Vec<String> = (0..60)
        .map(|i| format!("hot{i}.example"))
        .filter(|dom| d.service.is_hot(dom))
        .collect();
    assert_eq!(after, hot, "refreshes leave the hot set alone");
}

/// Domains without a policy are remembered in memory only, at most
/// `cache.negative_entries` of them (least recently used forgotten first), and never
/// push a policy out: a flood of lookups for random domains leaves every cached policy
/// answered and writes nothing to disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_entries_are_bounded_memory_only_and_never_evict_policies() {
    let w = World::start().await;
    for i in 0..20 {
        w.publish(&format!("p{i}.example"), "1", ENFORCE);
    }
    let dir = tempfile::tempdir().unwrap();
    let d = start(&w, dir.path(), "[cache]\nnegative_entries = 100\n").await;
    let mut conn = d.tcp().await;
    for i in 0..20 {
        let reply = ask(&mut conn, "postfix", &format!("p{i}.example")).await;
        assert_eq!(reply.as_deref(), Some(SECURE));
    }
    for i in 0..1000 {
        let reply = ask(&mut conn, "postfix", &format!("random{i}.example")).await;
        assert_eq!(reply.as_deref(), Some("NOTFOUND "));
    }
    assert_eq!(
        d.service.len(),
        20 + 100,
        "20 policies and the 100 newest negatives"
    );
    // The most recent negatives are answered from memory; the oldest were forgotten.
    let before = w
        .dns
        .query_count("_mta-sts.random999.example", RecordType::TXT);
    ask(&mut conn, "postfix", "random999.example").await;
    assert_eq!(
        w.dns
            .query_count("_mta-sts.random999.example", RecordType::TXT),
        before
    );
    assert!(d.service.cached("random0.example").is_none());
    for i in 0..20 {
        let reply = ask(&mut conn, "postfix", &format!("p{i}.example")).await;
        assert_eq!(reply.as_deref(), Some(SECURE));
    }
    drop(conn);
    d.shutdown().await;
    // Only the policies were written to disk.
    use mta_stsd::cache::store::{SledStore, read_all};
    let store = SledStore::open(&dir.path().join("cache")).unwrap();
    let (stored, errors) = read_all(&store).unwrap();
    assert!(errors.is_empty());
    assert_eq!(stored.len(), 20);
    assert!(stored.iter().all(|(_, e)| e.policy.is_some()));
}

/// A cache written by an older version holds negative entries on disk: they are
/// still honoured after the upgrade, from memory, and removed from the disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_negative_entries_move_to_memory() {
    use mta_stsd::cache::entry::Entry;
    use mta_stsd::cache::store::{PolicyStore, SledStore};
    let w = World::start().await;
    let dir = tempfile::tempdir().unwrap();
    let now = SystemClock.now();
    {
        let store = SledStore::open(&dir.path().join("cache")).unwrap();
        let negative = Entry {
            no_policy_until: Some(now + 600),
            last_check: now,
            ..Entry::default()
        };
        store.put("old-negative.example", &negative).unwrap();
        store.flush().unwrap();
    }
    let d = start(&w, dir.path(), "").await;
    d.service.wait_loaded().await;
    assert_eq!(d.ask("postfix", "old-negative.example").await, "NOTFOUND ");
    assert_eq!(
        w.dns
            .query_count("_mta-sts.old-negative.example", RecordType::TXT),
        0,
        "answered from the negative entry"
    );
    d.shutdown().await;
    let store = SledStore::open(&dir.path().join("cache")).unwrap();
    assert_eq!(store.get("old-negative.example").unwrap(), None);
}

#[tokio::test]
async fn deadline_answers_notfound_and_discovery_finishes_into_the_cache() {
    let w = World::start().await;
    w.publish("slowfetch.example", "1", ENFORCE);
    w.https.set_response(
        "slowfetch.example",
        mta_stsd_testkit::HttpResponse::Delay(
            std::time::Duration::from_millis(1500),
            Box::new(mta_stsd_testkit::HttpResponse::Policy(ENFORCE.into())),
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let d = start(&w, dir.path(), "[lookup]\ndeadline = \"300ms\"\n").await;
    assert_eq!(d.ask("postfix", "slowfetch.example").await, "NOTFOUND ");
    d.service.settle().await;
    assert_eq!(d.ask("postfix", "slowfetch.example").await, SECURE);
    assert_eq!(w.https.hits("slowfetch.example"), 1);
    d.shutdown().await;
}

/// A zone's own deadline: a client that gives up sooner than `lookup.deadline` gets
/// its answer first. Sendmail's `sts` zone answers within 4 s by default, under
/// Sendmail's 5 s socket map timeout.
#[tokio::test]
async fn zones_answer_within_their_own_deadline() {
    let w = World::start().await;
    for domain in ["slow1.example", "slow2.example"] {
        w.publish(domain, "1", ENFORCE);
        w.https.set_response(
            domain,
            mta_stsd_testkit::HttpResponse::Delay(
                std::time::Duration::from_secs(6),
                Box::new(mta_stsd_testkit::HttpResponse::Policy(ENFORCE.into())),
            ),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    // Fetches slower than Sendmail's 5 s, so that only the deadline answers sooner.
    let d = InProcess::builder(&w, dir.path())
        .toml("[lookup]\ndeadline = \"20s\"\n[zones.quick]\ndeadline = \"300ms\"")
        .fetch_timeout(std::time::Duration::from_secs(10))
        .start()
        .await;
    let ask = |map: &'static str, key: &'static str| common::ask_once(d.tcp, map, key);
    let started = std::time::Instant::now();
    assert_eq!(ask("quick", "slow1.example").await, "NOTFOUND ");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let started = std::time::Instant::now();
    assert_eq!(ask("sts", "slow2.example").await, "NOTFOUND ");
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(3900) && took < std::time::Duration::from_secs(5),
        "the sts zone answers after its 4 s deadline, before Sendmail's 5 s: {took:?}"
    );
    d.shutdown().await;
}

#[tokio::test]
async fn garbage_closes_only_its_own_connection() {
    let w = World::start().await;
    w.publish("ok.example", "1", ENFORCE);
    let dir = tempfile::tempdir().unwrap();
    let d = start(&w, dir.path(), "").await;
    let mut good = d.tcp().await;
    assert_eq!(
        ask(&mut good, "postfix", "ok.example").await.unwrap(),
        SECURE
    );
    for garbage in [
        &b"hello world\r\n"[..],
        b"05:abcde,",
        b"3:abcX",
        b"99999999:",
        b"10001:",
        b"7:nospace,",
    ] {
        let mut bad = TcpStream::connect(d.tcp).await.unwrap();
        bad.write_all(garbage).await.unwrap();
        let mut buf = Vec::new();
        // The daemon closes the connection: read returns EOF (no reply).
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), bad.read_to_end(&mut buf))
            .await
            .expect("connection closed")
            .unwrap_or(0);
        assert_eq!(n, 0, "{garbage:?} got {buf:?}");
    }
    // Oversize over a unix socket too.
    let mut bad = UnixStream::connect(&d.unix).await.unwrap();
    bad.write_all(format!("20000:{}", "a".repeat(100)).as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    assert_eq!(bad.read_to_end(&mut buf).await.unwrap_or(0), 0);
    // The first connection and new ones keep working.
    assert_eq!(
        ask(&mut good, "postfix", "ok.example").await.unwrap(),
        SECURE
    );
    assert_eq!(d.ask("postfix", "ok.example").await, SECURE);
    d.shutdown().await;
}

/// A request that stops half-way is closed after `server.read_timeout` counted from
/// its first byte, even while the client keeps trickling bytes; a connection that
/// sends nothing is closed after `server.idle_timeout`. Both are counted.
#[tokio::test]
async fn half_sent_requests_are_closed_after_the_read_timeout() {
    let w = World::start().await;
    w.publish("ok.example", "1", ENFORCE);
    let dir = tempfile::tempdir().unwrap();
    let d = start(&w, dir.path(), "read_timeout = \"1s\"\n").await;
    let started = std::time::Instant::now();
    let mut slow = TcpStream::connect(d.tcp).await.unwrap();
    slow.write_all(b"22:postfix ok").await.unwrap();
    // Trickle one byte every 300 ms: each byte alone would reset a per-read timer.
    let trickle = async {
        for b in b".example" {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            if slow.write_all(&[*b]).await.is_err() {
                break;
            }
        }
    };
    trickle.await;
    let mut buf = Vec::new();
    let n = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        slow.read_to_end(&mut buf),
    )
    .await
    .expect("closed by the daemon")
    .unwrap_or(0);
    assert_eq!(n, 0, "no reply to an incomplete request: {buf:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
    let closed = &d.service.metrics().server.connections_closed;
    assert_eq!(closed.with_label_values(&["read_timeout"]).get(), 1);
    // Others are served as before.
    assert_eq!(d.ask("postfix", "ok.example").await, SECURE);
    d.shutdown().await;
}

#[tokio::test]
async fn corrupt_cache_directory_is_moved_aside() {
    let w = World::start().await;
    w.publish("fresh.example", "1", ENFORCE);
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    std::fs::write(cache.join("conf"), b"\xff\xfe not a sled config").unwrap();
    std::fs::write(cache.join("db"), vec![0x5Au8; 8192]).unwrap();
    let d = start(&w, dir.path(), "").await;
    assert_eq!(d.ask("postfix", "fresh.example").await, SECURE);
    let moved: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("cache.broken-"))
        .collect();
    assert_eq!(moved.len(), 1);
    d.shutdown().await;
}

#[tokio::test]
async fn refresher_refetches_before_expiry_whatever_the_txt_says() {
    let w = World::start().await;
    w.publish(
        "refresh.example",
        "1",
        &policy_text("enforce", &["mx1.example.com", "*.example.net"], 7 * 86400),
    );
    let dir = tempfile::tempdir().unwrap();
    let d = start(&w, dir.path(), "").await;
    assert_eq!(d.ask("postfix", "refresh.example").await, SECURE);
    let first = d.service.cached("refresh.example").unwrap().policy.unwrap();
    // Not due yet.
    d.clock.advance(3600);
    assert_eq!(d.service.refresh_due().await, 0);
    // A day later it is due, even with an unchanged id and even without the TXT record.
    w.dns.remove("_mta-sts.refresh.example", RecordType::TXT);
    d.clock.advance(86400);
    assert_eq!(d.service.refresh_due().await, 1);
    assert_eq!(w.https.hits("refresh.example"), 2);
    let second = d.service.cached("refresh.example").unwrap().policy.unwrap();
    assert!(
        second.expires_at > first.expires_at,
        "a successful refresh restarts max_age"
    );
    // A refresh that fails keeps the policy until it expires.
    w.https.remove("refresh.example");
    d.clock.advance(86400 + 1);
    assert_eq!(d.service.refresh_due().await, 1);
    assert_eq!(d.ask("postfix", "refresh.example").await, SECURE);
    assert!(
        d.service
            .cached("refresh.example")
            .unwrap()
            .failure
            .is_some()
    );
    d.shutdown().await;
}

#[tokio::test]
async fn mode_none_replaces_an_enforced_policy_at_once() {
    let w = World::start().await;
    w.publish("downgrade.example", "1", ENFORCE);
    let dir = tempfile::tempdir().unwrap();
    let d = start(&w, dir.path(), "").await;
    assert_eq!(d.ask("postfix", "downgrade.example").await, SECURE);
    w.publish("downgrade.example", "2", &policy_text("none", &[], 86400));
    d.clock.advance(61);
    d.ask("postfix", "downgrade.example").await;
    d.service.settle().await;
    assert_eq!(d.ask("postfix", "downgrade.example").await, "NOTFOUND ");
    d.shutdown().await;
}

#[tokio::test]
async fn shutdown_finishes_the_request_in_progress() {
    let w = World::start().await;
    w.publish("inflight.example", "1", ENFORCE);
    w.https.set_response(
        "inflight.example",
        mta_stsd_testkit::HttpResponse::Delay(
            std::time::Duration::from_millis(300),
            Box::new(mta_stsd_testkit::HttpResponse::Policy(ENFORCE.into())),
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut d = start(&w, dir.path(), "").await;
    let mut conn = d.tcp().await;
    let mut idle = d.tcp().await;
    assert_eq!(
        ask(&mut idle, "postfix", ".x.example").await.unwrap(),
        "NOTFOUND "
    );
    conn.send(&b"postfix inflight.example"[..]).await.unwrap();
    w.https.wait_for_hits("inflight.example", 1).await;
    let _ = d.inner.stop.take().unwrap().send(());
    let reply = conn.next().await.unwrap().unwrap();
    assert_eq!(&reply[..], SECURE.as_bytes());
    // The idle connection is closed, and the server task ends.
    assert!(idle.next().await.is_none());
    d.inner.task.await.unwrap();
}

#[tokio::test]
async fn answers_from_the_store_before_the_cache_is_loaded() {
    use mta_stsd::cache::entry::{CachedPolicy, Entry};
    use mta_stsd::cache::policy_cache::ServiceSettings;
    use mta_stsd::cache::store::{PolicyStore, SledStore};
    use mta_stsd::config::CacheConfig;
    use mta_stsd::mtasts::discovery::Discoverer;
    use mta_stsd::mtasts::policy::parse_policy;

    let w = World::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(&dir.path().join("cache")).unwrap());
    let now = SystemClock.now();
    let policy = parse_policy(ENFORCE.as_bytes()).unwrap();
    let live = Entry {
        policy: Some(CachedPolicy {
            policy: policy.clone(),
            id: "1".into(),
            fetched_at: now,
            expires_at: now + 3600,
        }),
        no_policy_until: None,
        last_check: now,
        failure: None,
        txt_failure: None,
    };
    let expired = Entry {
        policy: Some(CachedPolicy {
            policy,
            id: "1".into(),
            fetched_at: now - 7200,
            expires_at: now - 3600,
        }),
        ..live.clone()
    };
    store.put("stored.example", &live).unwrap();
    store.put("old.example", &expired).unwrap();
    let service = PolicyService::new(
        Discoverer::new(common::options(&w)).unwrap(),
        store.clone(),
        Arc::new(SystemClock),
        ServiceSettings::new(CacheConfig::default()),
        Arc::new(mta_stsd::metrics::Metrics::new().expect("metrics")),
    );
    assert!(service.is_empty(), "nothing is loaded up front");
    let answer = mta_stsd::answer::answer(
        "stored.example",
        &Default::default(),
        std::time::Duration::from_secs(10),
        &service,
        &mta_stsd::answer::NoDane,
    )
    .await;
    assert_eq!(answer.reply.wire(), SECURE);
    assert_eq!(
        answer.outcome,
        mta_stsd::cache::policy_cache::CacheOutcome::Hit
    );
    assert_eq!(w.dns.total_queries(), 0);
    assert_eq!(service.len(), 1);
    // A purge before the bulk load has run must stay purged.
    store.put("purged.example", &live).unwrap();
    assert!(service.cached("purged.example").is_some());
    assert!(service.purge("purged.example"));
    service.load();
    assert_eq!(
        service.len(),
        1,
        "the expired entry is pruned, the purged one stays out"
    );
    assert!(store.get("old.example").unwrap().is_none());
    assert!(service.cached("purged.example").is_none());
}

/// A key that is not UTF-8 (an old client's Latin-1, say) is a whole, well-formed
/// request: it gets NOTFOUND, and the connection stays open for the next one (a
/// closed connection would make Postfix defer the delivery).
#[tokio::test]
async fn a_key_that_is_not_utf8_gets_notfound_and_keeps_the_connection() {
    let w = World::start().await;
    w.publish("example.com", "1", ENFORCE);
    let dir = tempfile::tempdir().unwrap();
    let d = start(&w, dir.path(), "").await;
    let mut conn = connect_tcp(d.tcp).await;
    conn.send(&b"postfix b\xe9b\xe9.example"[..]).await.unwrap();
    let reply = conn.next().await.expect("a reply").expect("a netstring");
    assert_eq!(&reply[..], b"NOTFOUND ");
    assert_eq!(
        ask(&mut conn, "postfix", "example.com").await.as_deref(),
        Some("OK secure match=mx1.example.com:.example.net servername=hostname")
    );
    d.shutdown().await;
}
