//! A fleet on Redis Sentinel (and Valkey's): one master, one replica, three sentinels,
//! two daemons sharing them. The master is killed (SIGKILL) while both daemons answer
//! lookups and count TLSRPT datagrams: every lookup is answered within its deadline,
//! the fleet shares again through the promoted replica, policies learned meanwhile
//! reach it, and the day's counts carry every datagram once. The old master comes
//! back as a replica and is not used; an operator's `SENTINEL FAILOVER` moves the
//! fleet back.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{InProcess, LOOPBACK, config_in, datagram, send, wait_sessions};
use mta_stsd::admin::client::AdminClient;
use mta_stsd::clock::{Clock, SystemClock};
use mta_stsd::tlsrpt::day::Day;
use mta_stsd_testkit::{Access, Flavour, RedisServer, RedisTls, Sentinels, World};

const SECURE: &str = "OK secure match=mx1.example.com:.example.net servername=hostname";
const NAME: &str = "mta-stsd";
const RECORD: &str = "v=TLSRPTv1; rua=mailto:tlsrpt@counted.test";

/// Whether `flavour` can run here; in CI it must.
fn installed(flavour: Flavour) -> bool {
    if flavour.installed() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must install {flavour:?}'s server and sentinel (.ci/run)"
    );
    eprintln!("skipped: {flavour:?}'s server or sentinel is not installed");
    false
}

/// Waits until `check` holds (every 50 ms, at most `within`).
async fn until(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let end = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < end, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn today() -> Day {
    Day::of(SystemClock.now())
}

struct Daemon {
    d: InProcess,
    admin: AdminClient,
    socket: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn daemon(w: &World, sentinels: &Sentinels) -> Daemon {
    daemon_with(w, sentinels, "").await
}

/// A daemon of the fleet, `more` added to its `[cache.redis]`.
async fn daemon_with(w: &World, sentinels: &Sentinels, more: &str) -> Daemon {
    fleet_daemon(w, &(sentinel_lines(&sentinels.addrs(), NAME) + more)).await
}

/// A daemon sharing through Redis, `redis` its `[cache.redis]` (a one-second
/// timeout added).
async fn fleet_daemon(w: &World, redis: &str) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("tlsrpt.sock");
    let toml = format!(
        "{LOOPBACK}[dane]\nmode = \"off\"\n[cache]\nbackend = \"redis\"\n\
         [cache.redis]\ntimeout = \"1s\"\n{redis}\
         [tlsrpt]\nenable = true\nsocket = {socket:?}\n\
         organization_name = \"Example Mail\"\ncontact_info = \"postmaster@sender.test\"\nreport_from = \"tlsrpt@sender.test\"\n"
    );
    let d = InProcess::start(w, config_in(dir.path(), &toml), Arc::new(SystemClock)).await;
    let admin = AdminClient::new(d.http.as_deref().unwrap(), Duration::from_secs(10)).unwrap();
    Daemon {
        d,
        admin,
        socket,
        _dir: dir,
    }
}

impl Daemon {
    fn redis(&self) -> &Arc<mta_stsd::redis::Redis> {
        self.d.service.shared().unwrap().redis()
    }
}

/// Lookups of cached domains on `conns` connections per daemon until `stop`; each
/// answer's latency, and the answers that were not the policy.
async fn load(
    addrs: Vec<std::net::SocketAddr>,
    domains: Vec<String>,
    stop: tokio_util::sync::CancellationToken,
) -> (Vec<Duration>, Vec<String>) {
    let mut set = tokio::task::JoinSet::new();
    for (n, addr) in addrs.into_iter().enumerate() {
        let (domains, stop) = (domains.clone(), stop.clone());
        set.spawn(async move {
            let mut conn = common::connect_tcp(addr).await;
            let (mut took, mut wrong) = (Vec::new(), Vec::new());
            let mut i = n;
            while !stop.is_cancelled() {
                let d = &domains[i % domains.len()];
                let started = Instant::now();
                match common::ask(&mut conn, "postfix", d).await {
                    Some(r) if r == SECURE => {}
                    other => wrong.push(format!("{d}: {other:?}")),
                }
                let t = started.elapsed();
                if t > Duration::from_millis(500) {
                    eprintln!(
                        "slow: {addr} {d} {t:?} at {:?}",
                        std::time::SystemTime::now()
                    );
                }
                took.push(t);
                i += 1;
            }
            (took, wrong)
        });
    }
    let (mut took, mut wrong) = (Vec::new(), Vec::new());
    while let Some(r) = set.join_next().await {
        let (t, w) = r.unwrap();
        took.extend(t);
        wrong.extend(w);
    }
    took.sort();
    (took, wrong)
}

/// A policy learned by A is served by B from Redis (B fetches nothing). `tag` names
/// a fresh domain.
async fn shares(w: &World, a: &Daemon, b: &Daemon, tag: &str) -> bool {
    let domain = format!("{tag}.example");
    w.publish(&domain, "1", common::ENFORCE);
    common::ask_once(a.d.tcp, "postfix", &domain).await == SECURE
        && common::ask_once(b.d.tcp, "postfix", &domain).await == SECURE
        && w.https.hits(&domain) == 1
}

/// Tries [`shares`] with fresh domains (`{tag}0.example`, ...) every 100 ms until it
/// works (at most 60 s); how many tries failed before.
async fn until_shared(w: &World, a: &Daemon, b: &Daemon, tag: &str) -> usize {
    let started = Instant::now();
    let mut tries = 0;
    while !shares(w, a, b, &format!("{tag}{tries}")).await {
        tries += 1;
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{tag}: the fleet did not share again within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tries
}

async fn failover(flavour: Flavour) {
    if !installed(flavour) {
        return;
    }
    let mut master = RedisServer::start_node(flavour, None);
    let replica = RedisServer::start_node(flavour, Some(master.port()));
    until(Duration::from_secs(20), "the replica in sync", || {
        replica
            .cli(&["INFO", "replication"])
            .contains("master_link_status:up")
    })
    .await;
    let sentinels = Sentinels::start(flavour, NAME, master.port());
    let w = World::start().await;
    let domains: Vec<String> = (0..20).map(|i| format!("load{i}.example")).collect();
    for d in &domains {
        w.publish(d, "1", common::ENFORCE);
    }
    let a = daemon(&w, &sentinels).await;
    let b = daemon(&w, &sentinels).await;
    let master_addr = format!("127.0.0.1:{}", master.port());
    let replica_addr = format!("127.0.0.1:{}", replica.port());
    for x in [&a, &b] {
        assert_eq!(x.redis().wait_master().await, master_addr);
        x.d.service.shared().unwrap().wait_subscribed().await;
    }
    assert!(shares(&w, &a, &b, "before").await, "the fleet shares");
    for d in &domains {
        assert_eq!(common::ask_once(a.d.tcp, "postfix", d).await, SECURE);
        assert_eq!(common::ask_once(b.d.tcp, "postfix", d).await, SECURE);
    }

    // Datagrams both daemons counted and the fleet holds (replicated: the outbox
    // keeps a batch until a replica has it).
    for _ in 0..5 {
        send(&a.socket, &[datagram("counted.test", RECORD, false)]);
        send(&b.socket, &[datagram("counted.test", RECORD, true)]);
    }
    wait_sessions(&a.admin, today(), "counted.test", 10).await;

    // Lookups all the time on two connections per daemon; then the master dies.
    let stop = tokio_util::sync::CancellationToken::new();
    let traffic = tokio::spawn(load(
        vec![a.d.tcp, a.d.tcp, b.d.tcp, b.d.tcp],
        domains.clone(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    master.stop();
    let killed = Instant::now();
    // Counted during the failover, by both daemons.
    for _ in 0..5 {
        send(&a.socket, &[datagram("counted.test", RECORD, false)]);
        send(&b.socket, &[datagram("counted.test", RECORD, false)]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Until the fleet shares again: a policy learned by A served by B from Redis.
    let tries = until_shared(&w, &a, &b, "window").await;
    let shared_again = killed.elapsed();
    stop.cancel();
    let (took, wrong) = traffic.await.unwrap();
    assert!(wrong.is_empty(), "answers lost: {wrong:?}");
    let p99 = took[took.len() * 99 / 100];
    let max = took[took.len() - 1];
    eprintln!(
        "{flavour:?}: fleet shares again {shared_again:?} after the master's kill; {} lookups meanwhile, p99 {p99:?}, max {max:?}",
        took.len()
    );
    // Within the socketmap's deadline (the daemon never waits on Redis for them).
    assert!(max < Duration::from_secs(1), "slowest answer {max:?}");

    for x in [&a, &b] {
        assert_eq!(x.redis().master().as_deref(), Some(replica_addr.as_str()));
        let fleet = &x.d.service.metrics().fleet;
        assert_eq!(fleet.redis_failovers.get(), 1);
        assert_eq!(
            fleet.redis_master.with_label_values(&[&replica_addr]).get(),
            1
        );
    }
    // Policies learned while no master took them reach the fleet now.
    until(Duration::from_secs(20), "window policies shared", || {
        (0..tries)
            .all(|i| replica.cli(&["EXISTS", &format!("mta-stsd:policy:window{i}.example")]) == "1")
    })
    .await;
    // Every datagram counted once: 10 before, 10 during the failover.
    wait_sessions(&a.admin, today(), "counted.test", 20).await;
    wait_sessions(&b.admin, today(), "counted.test", 20).await;

    // The old master comes back (empty, and a master in its own eyes until the
    // sentinels make it a replica): the fleet stays on the promoted one.
    master.start();
    until(Duration::from_secs(30), "the old master demoted", || {
        master.cli(&["ROLE"]).starts_with("slave")
            && master
                .cli(&["INFO", "replication"])
                .contains("master_link_status:up")
    })
    .await;
    assert!(shares(&w, &a, &b, "returned").await);
    for x in [&a, &b] {
        assert_eq!(x.redis().master().as_deref(), Some(replica_addr.as_str()));
        assert_eq!(x.d.service.metrics().fleet.redis_failovers.get(), 1);
    }

    // An operator's failover: the fleet follows to the old master, now promoted.
    assert_eq!(sentinels.failover(), "OK");
    until(Duration::from_secs(30), "the old master promoted", || {
        sentinels.master_port() == Some(master.port())
    })
    .await;
    let moved = Instant::now();
    let mut n = 0;
    while !shares(&w, &a, &b, &format!("manual{n}")).await {
        n += 1;
        assert!(
            moved.elapsed() < Duration::from_secs(30),
            "not shared after SENTINEL FAILOVER"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for x in [&a, &b] {
        until(
            Duration::from_secs(10),
            "following the manual failover",
            || x.redis().master().as_deref() == Some(master_addr.as_str()),
        )
        .await;
        assert_eq!(x.d.service.metrics().fleet.redis_failovers.get(), 2);
    }
    send(&a.socket, &[datagram("counted.test", RECORD, false)]);
    wait_sessions(&b.admin, today(), "counted.test", 21).await;
    a.d.shutdown().await;
    b.d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sentinel_failover_costs_no_answer_and_no_count() {
    failover(Flavour::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_sentinel_failover_costs_no_answer_and_no_count() {
    failover(Flavour::Valkey).await;
}

/// A master, a replica in sync with it and three sentinels, of `flavour`, the nodes
/// behind `access`, the sentinels behind `sentinel_password`.
struct HighAvailability {
    master: RedisServer,
    replica: RedisServer,
    sentinels: Sentinels,
}

async fn high_availability(
    flavour: Flavour,
    access: Access<'_>,
    sentinel_password: Option<&str>,
) -> HighAvailability {
    let master = RedisServer::start_node_with(flavour, None, access);
    let replica = RedisServer::start_node_with(flavour, Some(master.port()), access);
    until(Duration::from_secs(20), "the replica in sync", || {
        replica
            .cli(&["INFO", "replication"])
            .contains("master_link_status:up")
    })
    .await;
    let sentinels = Sentinels::start_with(flavour, NAME, master.port(), access, sentinel_password);
    HighAvailability {
        master,
        replica,
        sentinels,
    }
}

impl HighAvailability {
    /// Two daemons configured with `lines` find the master, share through it (fresh
    /// domains named after `tag`) and follow an operator's failover to the replica; a
    /// third configured with `lacking` is refused by the sentinels and never uses a
    /// master.
    async fn follows_with(&self, lines: &str, lacking: &str, tag: &str) {
        let w = World::start().await;
        let a = daemon_with(&w, &self.sentinels, lines).await;
        let b = daemon_with(&w, &self.sentinels, lines).await;
        for x in [&a, &b] {
            assert_eq!(
                x.redis().wait_master().await,
                format!("127.0.0.1:{}", self.master.port())
            );
        }
        until_shared(&w, &a, &b, tag).await;
        assert_eq!(
            self.master
                .cli(&["EXISTS", &format!("mta-stsd:policy:{tag}0.example")]),
            "1"
        );

        assert_eq!(self.sentinels.failover(), "OK");
        until_shared(&w, &a, &b, &format!("{tag}-moved")).await;
        let promoted = format!("127.0.0.1:{}", self.replica.port());
        for x in [&a, &b] {
            until(Duration::from_secs(10), "following the failover", || {
                x.redis().master().as_deref() == Some(promoted.as_str())
            })
            .await;
        }
        let c = daemon_with(&w, &self.sentinels, lacking).await;
        let masterless = &c.d.service.metrics().fleet.redis_without_master;
        until(
            Duration::from_secs(10),
            "a second of asking in vain",
            || masterless.get() >= 1.0,
        )
        .await;
        assert_eq!(c.redis().master(), None);
        for x in [a, b, c] {
            x.d.shutdown().await;
        }
    }
}

/// Data nodes behind a password, sentinels behind one of their own: the daemon gives
/// the nodes `url`'s and the sentinels `sentinel_password`, finds the master, writes
/// to it, and follows an operator's failover. Without `sentinel_password` the
/// sentinels refuse it, no master is used, and doctor says which setting is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_and_nodes_behind_passwords_of_their_own() {
    if !installed(Flavour::Redis) {
        return;
    }
    const PASSWORD: &str = "fleet-secret";
    const SENTINEL_PASSWORD: &str = "watch/secret";
    let access = Access {
        password: Some(PASSWORD),
        ..Access::default()
    };
    let set = high_availability(Flavour::Redis, access, Some(SENTINEL_PASSWORD)).await;
    let url = format!("url = \"redis://:{PASSWORD}@placeholder/0\"\n");
    let both = format!("{url}sentinel_password = {SENTINEL_PASSWORD:?}\n");
    // The nodes' password alone does not open the sentinels.
    set.follows_with(&both, &url, "locked").await;
    let addrs = set.sentinels.addrs();
    let found =
        tokio::task::spawn_blocking(move || doctor_redis(&(sentinel_lines(&addrs, NAME) + &url)))
            .await
            .unwrap();
    assert!(
        found[0].starts_with("redis.sentinel warning: no sentinel names a master")
            && found[0].contains("NOAUTH"),
        "{found:?}"
    );
}

/// Debian's sentinels have no password; the data nodes may: the daemon offers the
/// sentinels none (a sentinel without a password refuses one) and the nodes `url`'s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_without_a_password_before_nodes_with_one() {
    if !installed(Flavour::Redis) {
        return;
    }
    const PASSWORD: &str = "fleet-secret";
    let access = Access {
        password: Some(PASSWORD),
        ..Access::default()
    };
    let master = RedisServer::start_node_with(Flavour::Redis, None, access);
    let sentinels = Sentinels::start_with(Flavour::Redis, NAME, master.port(), access, None);
    let w = World::start().await;
    let url = format!("url = \"redis://:{PASSWORD}@placeholder/0\"\n");
    let a = daemon_with(&w, &sentinels, &url).await;
    let b = daemon_with(&w, &sentinels, &url).await;
    until_shared(&w, &a, &b, "open").await;
    assert_eq!(
        master.cli(&["EXISTS", "mta-stsd:policy:open0.example"]),
        "1"
    );
    for x in [a, b] {
        x.d.shutdown().await;
    }
}

/// The ACL the docs recommend: a user of its own, limited to the fleet's prefix (keys
/// and channels) and kept from dangerous commands but `ROLE`, with the default user
/// off. Policies are shared and TLSRPT counts reach the fleet's ledger through it;
/// without the user's name and password the daemon is refused and works alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_limited_to_the_prefix_is_enough() {
    if !installed(Flavour::Redis) {
        return;
    }
    const RULES: &str = "~mta-stsd:* &mta-stsd:* +@all -@dangerous +role";
    let node = RedisServer::start_node_with(
        Flavour::Redis,
        None,
        Access {
            password: Some("fleet-secret"),
            acl_user: Some(("mta-stsd", RULES)),
            ..Access::default()
        },
    );
    assert_eq!(node.cli(&["ACL", "WHOAMI"]), "mta-stsd");
    let w = World::start().await;
    let url = format!(
        "url = \"redis://mta-stsd:fleet-secret@127.0.0.1:{}/0\"\n",
        node.port()
    );
    let a = fleet_daemon(&w, &url).await;
    let b = fleet_daemon(&w, &url).await;
    until_shared(&w, &a, &b, "acl").await;
    send(&a.socket, &[datagram("counted.test", RECORD, false)]);
    send(&b.socket, &[datagram("counted.test", RECORD, true)]);
    wait_sessions(&a.admin, today(), "counted.test", 2).await;
    let errors = a.d.service.metrics().render();
    assert!(
        !errors
            .lines()
            .any(|l| l.starts_with("mta_stsd_store_errors_total{op=\"redis") && !l.ends_with(" 0")),
        "no Redis operation refused: {}",
        errors
            .lines()
            .filter(|l| l.contains("redis"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    let anonymous = fleet_daemon(&w, &format!("url = {:?}\n", node.url())).await;
    assert_eq!(
        common::ask_once(anonymous.d.tcp, "postfix", "acl0.example").await,
        SECURE
    );
    assert_eq!(anonymous.d.service.metrics().fleet.redis_healthy.get(), 0);
    for x in [a, b, anonymous] {
        x.d.shutdown().await;
    }
}

/// `[cache.redis]` lines for TLS with `tls`'s CA (`rediss://`, so `url` included,
/// its host and port only used without sentinels), with the client certificate too
/// when `client` is set.
fn tls_lines(url: &str, tls: &RedisTls, client: bool) -> String {
    let mut lines = format!("url = {url:?}\nca_file = {:?}\n", tls.ca_file());
    if client {
        let (cert, key) = tls.client_files();
        lines += &format!("client_cert = {cert:?}\nclient_key = {key:?}\n");
    }
    lines
}

/// A Redis that speaks only TLS, with a certificate from its own CA: daemons given
/// that CA (`ca_file`) share through it; a daemon that trusts only the system's roots
/// refuses the certificate and carries on alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_over_tls_trusts_its_own_ca() {
    if !installed(Flavour::Redis) {
        return;
    }
    let tls = RedisTls::new(false);
    let node = RedisServer::start_node_with(
        Flavour::Redis,
        None,
        Access {
            tls: Some(&tls),
            ..Access::default()
        },
    );
    assert!(node.url().starts_with("rediss://"));
    assert_eq!(node.cli(&["PING"]), "PONG");
    let w = World::start().await;
    let lines = tls_lines(&node.url(), &tls, false);
    let a = fleet_daemon(&w, &lines).await;
    let b = fleet_daemon(&w, &lines).await;
    until_shared(&w, &a, &b, "tls").await;
    assert_eq!(node.cli(&["EXISTS", "mta-stsd:policy:tls0.example"]), "1");

    let alone = fleet_daemon(&w, &format!("url = {:?}\n", node.url())).await;
    assert_eq!(
        common::ask_once(alone.d.tcp, "postfix", "tls0.example").await,
        SECURE,
        "answered from its own discovery"
    );
    assert_eq!(
        w.https.hits("tls0.example"),
        2,
        "fetched again: nothing shared"
    );
    let healthy = &alone.d.service.metrics().fleet.redis_healthy;
    assert_eq!(healthy.get(), 0, "the certificate is not trusted");
    // doctor writes with the daemon's settings: with the CA, and without.
    let url = node.url();
    let found = tokio::task::spawn_blocking(move || {
        [
            doctor_redis(&lines),
            doctor_redis(&format!("url = {url:?}\n")),
        ]
    })
    .await
    .unwrap();
    let addr = format!("127.0.0.1:{}", node.port());
    assert_eq!(
        found[0],
        [format!(
            "redis.server ok: {addr} answers, and this daemon can write to it"
        )]
    );
    assert!(
        found[1][0].starts_with(&format!("redis.server warning: {addr} refuses")),
        "{found:?}"
    );
    for x in [a, b, alone] {
        x.d.shutdown().await;
    }
}

/// Sentinels and data nodes that speak only TLS and demand a client certificate: the
/// daemon reaches both with `ca_file` and its `client_cert`, shares, and follows an
/// operator's failover; without the client certificate no master is ever used.
async fn sentinels_over_tls(flavour: Flavour) {
    if !installed(flavour) {
        return;
    }
    let tls = RedisTls::new(true);
    let access = Access {
        tls: Some(&tls),
        ..Access::default()
    };
    let set = high_availability(flavour, access, None).await;
    set.follows_with(
        &tls_lines("rediss://placeholder/0", &tls, true),
        &tls_lines("rediss://placeholder/0", &tls, false),
        "sealed",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sentinels_and_nodes_over_tls_with_client_certificates() {
    sentinels_over_tls(Flavour::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_sentinels_and_nodes_over_tls_with_client_certificates() {
    sentinels_over_tls(Flavour::Valkey).await;
}

/// `mta-stsd doctor` asks the sentinels who the master is and writes to it with the
/// daemon's settings; a master name the sentinels do not monitor is a problem.
#[test]
fn doctor_asks_the_sentinels() {
    if !installed(Flavour::Redis) {
        return;
    }
    let master = RedisServer::start_node(Flavour::Redis, None);
    let sentinels = Sentinels::start(Flavour::Redis, NAME, master.port());
    let doctor = |name: &str| doctor_redis(&sentinel_lines(&sentinels.addrs(), name));
    let found = doctor(NAME);
    assert!(
        found[0].starts_with("redis.sentinel ok: all 3 sentinels answer"),
        "{found:?}"
    );
    assert_eq!(
        found[1],
        format!(
            "redis.master ok: the master is 127.0.0.1:{}, and this daemon can write to it",
            master.port()
        )
    );
    assert_eq!(master.cli(&["EXISTS", "mta-stsd:doctor:probe"]), "1");
    let unknown = doctor("nobody");
    assert_eq!(unknown.len(), 1, "{unknown:?}");
    assert!(
        unknown[0].starts_with("redis.sentinel warning: no sentinel names a master"),
        "{unknown:?}"
    );
}

/// `mta-stsd doctor`'s `redis.*` findings ("CHECK LEVEL: MESSAGE") for a daemon
/// configured with the `[cache.redis]` lines `redis`.
fn doctor_redis(redis: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mta-stsd.toml");
    std::fs::write(
        &config,
        format!(
            "[metrics]\nlisten = \"\"\n[dane]\nmode = \"off\"\n[cache]\npath = {:?}\nbackend = \"redis\"\n[cache.redis]\n{redis}",
            dir.path().join("cache")
        ),
    )
    .unwrap();
    common::doctor_findings(&config, None)
        .into_iter()
        .filter(|(check, _, _)| check.starts_with("redis."))
        .map(|(check, level, message)| format!("{check} {level}: {message}"))
        .collect()
}

/// `[cache.redis]` lines naming `sentinels` (`host:port`) and the master's name.
fn sentinel_lines(sentinels: &[String], master_name: &str) -> String {
    let list = sentinels
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("sentinels = [{list}]\nmaster_name = \"{master_name}\"\n")
}
