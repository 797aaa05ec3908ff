//! Section 10: a Redis Sentinel failover under load. Two daemons (their own
//! processes) share a master with one replica and three sentinels
//! (`down-after-milliseconds 1000`); eight connections ask cached policies of both
//! daemons all the time while the master is killed (SIGKILL). Measured: the lookups
//! answered in the seconds after the kill and their latency, the time until both
//! daemons use the promoted replica, and the time until the fleet shares again (a
//! policy one daemon learns, the other serves from Redis).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use mta_stsd_testkit::{Flavour, RedisServer, Sentinels, TestDns, TestHttps, policy_text};

use super::{Client, Opts, Stats, fmt_us, http_get, load, spawn_daemon_with, stop, wait_ready};

pub struct Figures {
    /// The load after the kill.
    pub stats: Stats,
    pub window: Duration,
    pub to_master: Duration,
    pub to_shared: Duration,
}

/// Until `check` holds (every 10 ms, at most 60 s); how long it took.
fn until(what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !check() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{what}: not within 60 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    t0.elapsed()
}

fn uses_master(metrics: &str, port: u16) -> bool {
    http_get(metrics, "/metrics").contains(&format!(
        "mta_stsd_redis_master{{address=\"127.0.0.1:{port}\"}} 1"
    ))
}

fn publish(dns: &TestDns, https: &TestHttps, domain: &str) {
    dns.set_txt(&format!("_mta-sts.{domain}"), &["v=STSv1; id=1"]);
    dns.set_a(&format!("mta-sts.{domain}"), Ipv4Addr::LOCALHOST);
    https.set_policy(
        domain,
        &policy_text("enforce", &[&format!("mx.{domain}")], 86400),
    );
}

fn ask(addr: SocketAddr, key: &str) -> bool {
    Client::connect(addr)
        .and_then(|mut c| c.ask(key))
        .is_ok_and(|r| r.starts_with(b"OK secure"))
}

/// `None` when Debian's redis-server and redis-sentinel are not installed.
pub fn run(opts: &Opts, work: &Path, dns: &TestDns, https: &TestHttps) -> Option<Figures> {
    if !Flavour::Redis.installed() {
        eprintln!("section 10 skipped: redis-server and redis-sentinel are not installed");
        return None;
    }
    let mut master = RedisServer::start_node(Flavour::Redis, None);
    let replica = RedisServer::start_node(Flavour::Redis, Some(master.port()));
    until("the replica in sync", || {
        replica
            .cli(&["INFO", "replication"])
            .contains("master_link_status:up")
    });
    let sentinels = Sentinels::start(Flavour::Redis, "mta-stsd", master.port());
    let list = sentinels
        .addrs()
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let cache = format!(
        "backend = \"redis\"\n[cache.redis]\nsentinels = [{list}]\nmaster_name = \"mta-stsd\"\n"
    );
    let daemons: Vec<(SocketAddr, String, std::process::Child)> = [(8481, 9481), (8482, 9482)]
        .into_iter()
        .map(|(port, metrics)| {
            let dir = work.join(format!("failover-{port}"));
            let mut child = spawn_daemon_with(opts, work, &dir, port, Some(metrics), &cache);
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            wait_ready(addr, "[192.0.2.1]", &mut child);
            (addr, format!("127.0.0.1:{metrics}"), child)
        })
        .collect();
    for (_, metrics, _) in &daemons {
        until("a master in use", || uses_master(metrics, master.port()));
    }
    let domains: Vec<String> = (0..20).map(|i| format!("fo{i}.bench.test")).collect();
    for d in &domains {
        publish(dns, https, d);
        for (addr, _, _) in &daemons {
            assert!(ask(*addr, d), "{d} answered secure before the failover");
        }
    }

    let window = if opts.smoke {
        Duration::from_secs(6)
    } else {
        Duration::from_secs(10)
    };
    let loads: Vec<_> = daemons
        .iter()
        .map(|(addr, _, _)| {
            let (addr, domains) = (*addr, domains.clone());
            std::thread::spawn(move || load(addr, &domains, 4, window))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    master.stop();
    let killed = Instant::now();
    for (_, metrics, _) in &daemons {
        until("the promoted replica in use", || {
            uses_master(metrics, replica.port())
        });
    }
    let to_master = killed.elapsed();
    let (a, b) = (daemons[0].0, daemons[1].0);
    let mut n = 0;
    loop {
        let d = format!("shared{n}.bench.test");
        publish(dns, https, &d);
        if ask(a, &d) && ask(b, &d) && https.hits(&d) == 1 {
            break;
        }
        n += 1;
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "not shared again within 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let to_shared = killed.elapsed();
    let mut stats = Stats::default();
    for l in loads {
        let s = l.join().unwrap_or_default();
        stats.requests += s.requests;
        stats.errors += s.errors;
        stats.latencies_ns.extend(s.latencies_ns);
    }
    stats.elapsed = window;
    for (_, _, child) in daemons {
        stop(child);
    }
    Some(Figures {
        stats,
        window,
        to_master,
        to_shared,
    })
}

pub fn section(f: &Option<Figures>) -> String {
    let mut out = String::from("\n## 10. Redis Sentinel failover under load\n\n");
    let Some(f) = f else {
        out.push_str("Not measured: redis-server and redis-sentinel are not installed.\n");
        return out;
    };
    let max = f
        .stats
        .latencies_ns
        .iter()
        .max()
        .map(|n| Duration::from_nanos(*n))
        .unwrap_or_default();
    out.push_str(&format!(
        "Two daemons, one master, one replica, three sentinels (`down-after-milliseconds 1000`, so a dead master is noticed after 1 s; Sentinel's default is 30 s, which adds 29 s to both times below). Eight connections (four per daemon) ask cached policies from 0.1 s before the master's SIGKILL for {} s.\n\n| lookups answered | errors | req/s | p99 | max | to the promoted replica | to sharing again |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n| {} | {} | {:.0} | {} | {} | {:.2} s | {:.2} s |\n",
        f.window.as_secs(),
        f.stats.requests,
        f.stats.errors,
        f.stats.rps(),
        fmt_us(f.stats.pct(0.99)),
        fmt_us(max),
        f.to_master.as_secs_f64(),
        f.to_shared.as_secs_f64(),
    ));
    out
}
