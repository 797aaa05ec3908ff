//! mta-stsd benchmark: the daemon against the loopback floor and against the Python
//! resolver, in one run on one machine. See benches/README.md.
//!
//!   cargo build --release && sudo cargo bench --bench mta-stsd-bench -- [--smoke]
//!       [--daemon target/release/mta-stsd] [--python VENV] [--report benches/REPORT.md]
//!
//! It needs root: it re-executes itself inside `unshare --net --mount` so that it can
//! serve DNS on 127.0.0.1:53 and the policy host on 127.0.0.1:443 and give the daemons
//! a private /etc/resolv.conf. Every daemon runs as its own process.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mta_stsd::cache::entry::{CachedPolicy, Entry};
use mta_stsd::cache::store::{PolicyStore, SledStore};
use mta_stsd::mtasts::policy::parse_policy;
use mta_stsd_testkit::{RecordType, TestCa, TestDns, TestHttps, policy_text};

#[path = "tlsrpt/ingest.rs"]
mod tlsrpt_ingest;

#[path = "sentinel/failover.rs"]
mod failover;

const HOT: &str = "hot.bench.test";
const ECHO_REPLY: &[u8] = b"OK secure match=mx1.hot.bench.test:.mx.bench.test servername=hostname";

struct Opts {
    smoke: bool,
    daemon: PathBuf,
    python: Option<PathBuf>,
    /// A venv with tlsrpt-reporter, for section 9's reference collector.
    tlsrpt_venv: Option<PathBuf>,
    report: PathBuf,
    /// `--only failover`: section 10 alone, written into the existing report.
    only: Option<String>,
}

fn opts() -> Opts {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    Opts {
        smoke: args.iter().any(|a| a == "--smoke"),
        daemon: value("--daemon")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("target/release/mta-stsd")),
        python: value("--python").map(PathBuf::from),
        tlsrpt_venv: value("--tlsrpt-venv").map(PathBuf::from),
        report: value("--report")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("benches/REPORT.md")),
        only: value("--only"),
    }
}

// ---------------------------------------------------------------------------
// A blocking socketmap client: one per connection, in its own thread.
// ---------------------------------------------------------------------------

struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> std::io::Result<Client> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Client {
            stream,
            buf: Vec::with_capacity(512),
        })
    }

    /// One request, one reply (the netstring payload).
    fn ask(&mut self, key: &str) -> std::io::Result<Vec<u8>> {
        let payload = format!("postfix {key}");
        let req = format!("{}:{payload},", payload.len());
        self.stream.write_all(req.as_bytes())?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
            if let Some(colon) = self.buf.iter().position(|b| *b == b':') {
                let len: usize = std::str::from_utf8(&self.buf[..colon])
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                if self.buf.len() > colon + len {
                    return Ok(self.buf[colon + 1..colon + 1 + len].to_vec());
                }
            }
        }
    }
}

#[derive(Default, Clone)]
struct Stats {
    requests: usize,
    errors: usize,
    elapsed: Duration,
    latencies_ns: Vec<u64>,
}

impl Stats {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn pct(&self, p: f64) -> Duration {
        if self.latencies_ns.is_empty() {
            return Duration::ZERO;
        }
        let mut v = self.latencies_ns.clone();
        v.sort_unstable();
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        Duration::from_nanos(v[i])
    }
}

/// `conns` connections, each asking `keys` round-robin for `duration`.
fn load(addr: SocketAddr, keys: &[String], conns: usize, duration: Duration) -> Stats {
    let keys = Arc::new(keys.to_vec());
    let start = Instant::now();
    let handles: Vec<_> = (0..conns)
        .map(|c| {
            let keys = keys.clone();
            std::thread::spawn(move || {
                let mut st = Stats::default();
                let Ok(mut client) = Client::connect(addr) else {
                    st.errors += 1;
                    return st;
                };
                let mut i = c;
                let t0 = Instant::now();
                while t0.elapsed() < duration {
                    let k = &keys[i % keys.len()];
                    i += conns;
                    let t = Instant::now();
                    match client.ask(k) {
                        Ok(_) => {
                            st.latencies_ns.push(t.elapsed().as_nanos() as u64);
                            st.requests += 1;
                        }
                        Err(_) => {
                            st.errors += 1;
                            break;
                        }
                    }
                }
                st
            })
        })
        .collect();
    join_stats(handles, start)
}

/// Joins the client threads and adds up what they measured.
fn join_stats(handles: Vec<std::thread::JoinHandle<Stats>>, start: Instant) -> Stats {
    let mut total = Stats::default();
    for h in handles {
        let st = h.join().unwrap_or_default();
        total.requests += st.requests;
        total.errors += st.errors;
        total.latencies_ns.extend(st.latencies_ns);
    }
    total.elapsed = start.elapsed();
    total
}

fn wait_ready(addr: SocketAddr, key: &str, child: &mut Child) -> Duration {
    let t0 = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{addr}: process exited early: {status}");
        }
        if Client::connect(addr).and_then(|mut c| c.ask(key)).is_ok() {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "{addr} not ready");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A plain HTTP/1.0 GET on loopback; the body, or "" on any error.
fn http_get(addr: &str, path: &str) -> String {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    if s.write_all(format!("GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n").as_bytes())
        .is_err()
    {
        return String::new();
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn proc_status(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// User + system CPU time of a process, in clock ticks (1/100 s on Linux).
fn proc_cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces) end with ')'.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

fn du(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(path) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                total += du(&p);
            } else if let Ok(m) = e.metadata() {
                total += m.len();
            }
        }
    }
    total
}

fn stop(mut child: Child) {
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let _ = child.wait();
}

// ---------------------------------------------------------------------------
// Processes under test.
// ---------------------------------------------------------------------------

fn spawn_daemon(opts: &Opts, work: &Path, cache: &Path, port: u16, metrics: Option<u16>) -> Child {
    spawn_daemon_with(opts, work, cache, port, metrics, "")
}

/// `cache_extra`: more settings for the `[cache]` table.
fn spawn_daemon_with(
    opts: &Opts,
    work: &Path,
    cache: &Path,
    port: u16,
    metrics: Option<u16>,
    cache_extra: &str,
) -> Child {
    let cfg = work.join(format!("mta-stsd-{port}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\n[metrics]\nlisten = \"{}\"\n[resolver]\nnameservers = [\"127.0.0.1:53\"]\n\
             [fetch]\nca_file = \"{}\"\nallow_private_addresses = true\n[cache]\npath = \"{}\"\n{cache_extra}[log]\nlevel = \"warn\"\nformat = \"plain\"\n",
            metrics.map(|p| format!("127.0.0.1:{p}")).unwrap_or_default(),
            work.join("ca.pem").display(),
            cache.display()
        ),
    )
    .expect("write config");
    Command::new(&opts.daemon)
        .args(["serve", "--config"])
        .arg(&cfg)
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {}: {e} (cargo build --release first)",
                opts.daemon.display()
            )
        })
}

fn spawn_python(venv: &Path, work: &Path) -> Child {
    let cfg = work.join("mta-sts-daemon.yml");
    std::fs::write(
        &cfg,
        "host: 127.0.0.1\nport: 8462\nreuse_port: true\nshutdown_timeout: 1\ncache:\n  type: internal\n  options:\n    cache_size: 100000\ndefault_zone:\n  strict_testing: false\n  timeout: 4\n",
    )
    .expect("write python config");
    Command::new(venv.join("bin/mta-sts-daemon"))
        .arg("-c")
        .arg(&cfg)
        .arg("-v")
        .arg("warn")
        .env("SSL_CERT_FILE", work.join("ca.pem"))
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start mta-sts-daemon")
}

fn echo_server(addr: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        use futures::{SinkExt, StreamExt};
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind echo");
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut f = tokio_util::codec::Framed::new(
                    s,
                    mta_stsd::protocol::codec::NetstringCodec::default(),
                );
                while let Some(Ok(_req)) = f.next().await {
                    if f.send(ECHO_REPLY).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}

// ---------------------------------------------------------------------------
// The run.
// ---------------------------------------------------------------------------

fn enter_namespace() {
    if std::env::var_os("MTA_STSD_BENCH_NETNS").is_some() {
        return;
    }
    assert!(
        unsafe { libc::geteuid() } == 0,
        "the benchmark needs root (it runs in its own network namespace)"
    );
    let exe = std::env::current_exe().expect("current exe");
    let status = Command::new("unshare")
        .args(["--net", "--mount", "--propagation", "private"])
        .arg(exe)
        .args(std::env::args().skip(1))
        .env("MTA_STSD_BENCH_NETNS", "1")
        .status()
        .expect("unshare");
    std::process::exit(status.code().unwrap_or(1));
}

fn sh(cmd: &str, args: &[&str]) {
    let ok = Command::new(cmd)
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "{cmd} {args:?} failed");
}

fn fmt_us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--echo-server") {
        echo_server(&args[i + 1]);
        return;
    }
    enter_namespace();
    let opts = opts();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let work = std::env::temp_dir().join(format!("mta-stsd-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("work dir");
    sh("ip", &["link", "set", "lo", "up"]);
    std::fs::write(work.join("resolv.conf"), "nameserver 127.0.0.1\n").expect("resolv.conf");
    sh(
        "mount",
        &[
            "--bind",
            work.join("resolv.conf").to_str().expect("path"),
            "/etc/resolv.conf",
        ],
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (dur, levels, cold_n, scales): (Duration, Vec<usize>, usize, Vec<usize>) = if opts.smoke {
        (Duration::from_millis(300), vec![1, 8], 200, vec![1_000])
    } else {
        (
            Duration::from_secs(5),
            vec![1, 8, 64, 512],
            10_000,
            vec![10_000, 100_000, 1_000_000],
        )
    };

    // The world: DNS on :53, policy host on :443, a test CA.
    let ca = TestCa::new();
    std::fs::write(work.join("ca.pem"), ca.cert_pem()).expect("ca.pem");
    let (dns, https) = rt.block_on(async {
        let dns = TestDns::start_on(Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 53)))).await;
        let l = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 443))
            .await
            .expect("bind 443");
        (dns, TestHttps::serve(ca.clone(), l))
    });
    let hot_policy = policy_text("enforce", &["mx1.hot.bench.test", "*.mx.bench.test"], 86400);
    dns.batch(|d| {
        d.set_txt(&format!("_mta-sts.{HOT}"), &["v=STSv1; id=1"]);
        d.set_a(&format!("mta-sts.{HOT}"), Ipv4Addr::LOCALHOST);
        for i in 0..cold_n {
            d.set_txt(&format!("_mta-sts.cold{i}.bench.test"), &["v=STSv1; id=1"]);
            d.set_a(&format!("mta-sts.cold{i}.bench.test"), Ipv4Addr::LOCALHOST);
        }
    });
    https.set_policy(HOT, &hot_policy);
    for i in 0..cold_n {
        https.set_policy(
            &format!("cold{i}.bench.test"),
            &policy_text("enforce", &[&format!("mx.cold{i}.bench.test")], 86400),
        );
    }
    if opts.only.as_deref() == Some("failover") {
        let figures = failover::run(&opts, &work, &dns, &https);
        let section = failover::section(&figures);
        println!("{section}");
        // Replaces section 10 of the existing report (or adds it before History).
        let old = std::fs::read_to_string(&opts.report).unwrap_or_default();
        let start = old.find("\n## 10.").or_else(|| old.find(HISTORY_HEADING));
        let end = old.find(HISTORY_HEADING).unwrap_or(old.len());
        let new = match start {
            Some(at) => format!("{}{section}\n{}", &old[..at], &old[end..]),
            None => format!("{old}{section}"),
        };
        std::fs::write(&opts.report, new).expect("write report");
        let _ = std::fs::remove_dir_all(&work);
        if let Some(f) = &figures {
            assert_eq!(
                f.stats.errors, 0,
                "every lookup answered during the failover"
            );
        }
        return;
    }
    let negatives: Vec<String> = (0..1000).map(|i| format!("neg{i}.bench.test")).collect();
    let hot = vec![HOT.to_owned()];

    let mut report = String::new();
    let mut results: BTreeMap<&str, BTreeMap<usize, Stats>> = BTreeMap::new();

    // Floor: a netstring echo server, its own process.
    let echo_addr: SocketAddr = "127.0.0.1:8470".parse().expect("addr");
    let mut echo = Command::new(std::env::current_exe().expect("exe"))
        .args(["--echo-server", "127.0.0.1:8470"])
        .spawn()
        .expect("echo server");
    wait_ready(echo_addr, HOT, &mut echo);

    let ours: SocketAddr = "127.0.0.1:8461".parse().expect("addr");
    let mut daemon = spawn_daemon(&opts, &work, &work.join("cache"), 8461, None);
    wait_ready(ours, "[192.0.2.1]", &mut daemon);

    let python_addr: SocketAddr = "127.0.0.1:8462".parse().expect("addr");
    let mut python = opts.python.as_ref().map(|v| spawn_python(v, &work));
    if let Some(p) = python.as_mut() {
        wait_ready(python_addr, "[192.0.2.1]", p);
    }

    let mut targets: Vec<(&str, SocketAddr)> = vec![("echo floor", echo_addr), ("mta-stsd", ours)];
    if python.is_some() {
        targets.push(("postfix-mta-sts-resolver", python_addr));
    }

    // Warm the hot entry everywhere, and check the answer.
    for (name, addr) in &targets {
        let r = Client::connect(*addr)
            .and_then(|mut c| c.ask(HOT))
            .unwrap_or_default();
        eprintln!("{name}: {}", String::from_utf8_lossy(&r));
        if *name != "echo floor" {
            assert!(
                r.starts_with(b"OK secure match="),
                "{name} answered {:?}",
                String::from_utf8_lossy(&r)
            );
        }
    }

    // 1: one connection, sequential: rounds interleaved across the servers (this is
    // the most noise-sensitive number), the median round by throughput reported.
    for (_, addr) in &targets {
        let _ = load(*addr, &hot, 8, dur / 2); // warm-up
    }
    let rounds = if opts.smoke { 1 } else { 3 };
    let mut seq: BTreeMap<&str, Vec<Stats>> = BTreeMap::new();
    for _ in 0..rounds {
        for (name, addr) in &targets {
            seq.entry(name).or_default().push(load(*addr, &hot, 1, dur));
        }
    }
    for (name, mut runs) in seq {
        runs.sort_by(|a, b| a.rps().total_cmp(&b.rps()));
        let st = runs.swap_remove(runs.len() / 2);
        eprintln!(
            "{name} c=1: {:.0} req/s p50 {} p99 {}",
            st.rps(),
            fmt_us(st.pct(0.5)),
            fmt_us(st.pct(0.99))
        );
        results.entry(name).or_default().insert(1, st);
    }
    // 2: concurrent connections.
    for (name, addr) in &targets {
        for &c in levels.iter().filter(|c| **c > 1) {
            let st = load(*addr, &hot, c, dur);
            eprintln!(
                "{name} c={c}: {:.0} req/s p99 {}",
                st.rps(),
                fmt_us(st.pct(0.99))
            );
            results.entry(name).or_default().insert(c, st);
        }
    }

    // 3: negative lookups after warm-up.
    let mut negative: Vec<(String, Stats, f64)> = Vec::new();
    for (name, addr) in targets.iter().filter(|(n, _)| *n != "echo floor") {
        // Warm-up: every domain once, so that each has had its one DNS lookup.
        if let Ok(mut c) = Client::connect(*addr) {
            for k in &negatives {
                let _ = c.ask(k);
            }
        }
        let before = dns.total_queries();
        let st = load(*addr, &negatives, 8, dur);
        let q = (dns.total_queries() - before) as f64 * 1000.0 / st.requests.max(1) as f64;
        eprintln!(
            "{name} negative: {:.0} req/s, {q:.1} DNS queries per 1000 lookups",
            st.rps()
        );
        negative.push((name.to_string(), st, q));
    }

    // 0: the daemon's own cost per cached lookup, in process (no sockets).
    let in_process_ns = rt.block_on(async {
        let service = inproc_service(&work.join("inproc"), &ca);
        let zone = mta_stsd::config::ZoneOptions::default();
        let deadline = Duration::from_secs(10);
        let no_dane = mta_stsd::answer::NoDane;
        let a = mta_stsd::answer::answer(HOT, &zone, deadline, &service, &no_dane).await;
        assert!(
            a.reply.wire().starts_with("OK secure"),
            "{}",
            a.reply.wire()
        );
        let n = if opts.smoke { 100_000 } else { 2_000_000 };
        let t0 = Instant::now();
        for _ in 0..n {
            let a = mta_stsd::answer::answer(HOT, &zone, deadline, &service, &no_dane).await;
            std::hint::black_box(a);
        }
        t0.elapsed().as_nanos() as f64 / n as f64
    });
    eprintln!("in-process cached lookup: {in_process_ns:.0} ns");

    // 8: DANE precedence, in process: the cost of a cold DANE verdict (MX, A, AAAA and
    // TLSA per host, validated from a signed root), and a cached answer with DANE on
    // against the same answer with DANE off.
    // BENCH_DANE=N overrides the number of domains (e.g. full size in a smoke run).
    let dane_n = std::env::var("BENCH_DANE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if opts.smoke { 50 } else { 1000 });
    let dane = rt.block_on(dane_workload(&work, &ca, dane_n));
    eprintln!("DANE: {dane:?}");

    // 9: TLSRPT datagram ingest, against the reference collector when its venv is
    // given. BENCH_TLSRPT=N,DOMAINS overrides the size.
    let (tlsrpt_n, tlsrpt_domains) = std::env::var("BENCH_TLSRPT")
        .ok()
        .and_then(|v| {
            let (a, b) = v.split_once(',')?;
            Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
        })
        .unwrap_or(if opts.smoke {
            (20_000, 1_000)
        } else {
            (1_000_000, 10_000)
        });
    let tlsrpt = tlsrpt_ingest::run(
        &opts.daemon,
        &work,
        tlsrpt_n,
        tlsrpt_domains,
        opts.tlsrpt_venv.as_deref(),
    );
    eprintln!("section 10: Redis Sentinel failover under load");
    let failover = failover::run(&opts, &work, &dns, &https);
    eprintln!(
        "TLSRPT ingest: {:.0} datagrams/s, peak RSS {} KiB",
        tlsrpt.ours.rate(tlsrpt_n),
        tlsrpt.ours.peak_rss_kib
    );

    // 4: cold start, 256 connections over distinct domains.
    let cold: Vec<String> = (0..cold_n).map(|i| format!("cold{i}.bench.test")).collect();
    let t0 = Instant::now();
    let cold_stats = {
        let keys = Arc::new(cold.clone());
        let conns = 256.min(cold_n);
        let handles: Vec<_> = (0..conns)
            .map(|c| {
                let keys = keys.clone();
                std::thread::spawn(move || {
                    let mut ok = 0usize;
                    let mut client = Client::connect(ours).expect("connect");
                    for k in keys.iter().skip(c).step_by(conns) {
                        if client
                            .ask(k)
                            .map(|r| r.starts_with(b"OK secure"))
                            .unwrap_or(false)
                        {
                            ok += 1;
                        }
                    }
                    ok
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(0))
            .sum::<usize>()
    };
    let cold_time = t0.elapsed();
    let fetches: usize = cold.iter().map(|d| https.hits(d)).sum();
    let cold_rss = proc_status(daemon.id(), "VmHWM:");
    eprintln!(
        "cold start: {cold_n} domains in {cold_time:?}, {cold_stats} secure, {fetches} fetches, peak RSS {cold_rss} kB"
    );
    let txt_queries: usize = cold
        .iter()
        .map(|d| dns.query_count(&format!("_mta-sts.{d}"), RecordType::TXT))
        .sum();
    stop(daemon);
    if let Some(p) = python.take() {
        stop(p);
    }
    stop(echo);

    // 6: flood of random domains without a policy, with a short negative TTL so that
    // the flood's entries expire while it runs; a probe asks a cached domain every
    // 5 ms throughout and records its worst latency.
    let flood_n: usize = std::env::var("BENCH_FLOOD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if opts.smoke { 20_000 } else { 1_000_000 });
    let flood = {
        let cache = work.join("flood");
        let addr: SocketAddr = "127.0.0.1:8464".parse().expect("addr");
        let extra = match std::env::var("BENCH_NEGATIVE_ENTRIES") {
            Ok(n) => format!("negative_ttl = \"30s\"\nnegative_entries = {n}\n"),
            Err(_) => "negative_ttl = \"30s\"\n".to_owned(),
        };
        let mut d = spawn_daemon_with(&opts, &work, &cache, 8464, None, &extra);
        wait_ready(addr, HOT, &mut d);
        let rss_before = proc_status(d.id(), "VmRSS:");
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let probe = {
            let done = done.clone();
            std::thread::spawn(move || {
                let mut client = Client::connect(addr).expect("probe connect");
                let mut worst = Duration::ZERO;
                let mut lat = Vec::new();
                let mut errors = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let t = Instant::now();
                    match client.ask(HOT) {
                        Ok(r) if r.starts_with(b"OK secure") => {}
                        _ => errors += 1,
                    }
                    let e = t.elapsed();
                    worst = worst.max(e);
                    lat.push(e.as_nanos() as u64);
                    std::thread::sleep(Duration::from_millis(5));
                }
                (worst, lat, errors)
            })
        };
        let conns = 64;
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let t0 = Instant::now();
        let pid = d.id();
        let handles: Vec<_> = (0..conns)
            .map(|_| {
                let (next, peak) = (next.clone(), peak.clone());
                std::thread::spawn(move || {
                    let mut client = Client::connect(addr).expect("connect");
                    let mut errors = 0usize;
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= flood_n {
                            return errors;
                        }
                        match client.ask(&format!("r{i:07}x{}.flood.test", i % 9973)) {
                            Ok(r) if r == b"NOTFOUND " => {}
                            _ => errors += 1,
                        }
                        if i % 10_000 == 0 {
                            peak.fetch_max(
                                proc_status(pid, "VmRSS:"),
                                std::sync::atomic::Ordering::Relaxed,
                            );
                        }
                    }
                })
            })
            .collect();
        let errors: usize = handles.into_iter().map(|h| h.join().unwrap_or(1)).sum();
        let elapsed = t0.elapsed();
        // Let the last entries expire, with the probe still asking.
        std::thread::sleep(Duration::from_secs(if opts.smoke { 1 } else { 35 }));
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let (worst, mut lat, probe_errors) = probe.join().expect("probe");
        lat.sort_unstable();
        let p99 = Duration::from_nanos(lat.get(lat.len() * 99 / 100).copied().unwrap_or(0));
        let hwm = proc_status(d.id(), "VmHWM:");
        let rss_after = proc_status(d.id(), "VmRSS:");
        stop(d);
        let disk = du(&cache);
        eprintln!(
            "flood: {flood_n} random domains in {elapsed:?} ({:.0}/s), {errors} errors; peak RSS {hwm} kB (sampled {} kB, before {rss_before} kB, after {rss_after} kB), disk {disk} B; cached probe worst {worst:?} p99 {p99:?} ({probe_errors} errors)",
            flood_n as f64 / elapsed.as_secs_f64(),
            peak.load(std::sync::atomic::Ordering::Relaxed)
        );
        (
            elapsed,
            errors,
            hwm,
            rss_before,
            rss_after,
            disk,
            worst,
            p99,
            probe_errors,
        )
    };

    // 7: soak: many connections, a mix of cached policies, cached negatives and new
    // domains (misses), RSS sampled once a second.
    // BENCH_SOAK=CONNSxREQUESTS overrides the size (e.g. a full-size soak in a smoke run).
    let (soak_conns, soak_total) = std::env::var("BENCH_SOAK")
        .ok()
        .and_then(|v| {
            let (c, n) = v.split_once('x')?;
            Some((c.parse().ok()?, n.parse().ok()?))
        })
        .unwrap_or(if opts.smoke {
            (100, 20_000)
        } else {
            (1000, 1_000_000)
        });
    let soak = {
        let cache = work.join("soak");
        let addr: SocketAddr = "127.0.0.1:8465".parse().expect("addr");
        // A negative set small enough to fill during warm-up (5% of the requests are
        // new domains), so that a flat RSS afterwards means no growth beyond caps.
        let mut d = spawn_daemon_with(
            &opts,
            &work,
            &cache,
            8465,
            None,
            "negative_entries = 10000\n",
        );
        wait_ready(addr, HOT, &mut d);
        let pid = d.id();
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = {
            let done = done.clone();
            std::thread::spawn(move || {
                let mut samples = Vec::new();
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    samples.push(proc_status(pid, "VmRSS:"));
                    std::thread::sleep(Duration::from_secs(1));
                }
                samples
            })
        };
        let t0 = Instant::now();
        let handles: Vec<_> = (0..soak_conns)
            .map(|_| {
                let next = next.clone();
                std::thread::spawn(move || {
                    let mut st = Stats::default();
                    let Ok(mut client) = Client::connect(addr) else {
                        st.errors += 1;
                        return st;
                    };
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= soak_total {
                            return st;
                        }
                        // 80% cached policy, 15% known negatives, 5% new domains.
                        let (key, want): (String, &[u8]) = match i % 20 {
                            0 => (format!("soak-miss{i}.bench.test"), b"NOTFOUND "),
                            1..=3 => (format!("neg{}.bench.test", i % 1000), b"NOTFOUND "),
                            _ => (HOT.to_owned(), b"OK secure"),
                        };
                        let t = Instant::now();
                        match client.ask(&key) {
                            Ok(r) if r.starts_with(want) => {
                                st.latencies_ns.push(t.elapsed().as_nanos() as u64);
                                st.requests += 1;
                            }
                            _ => st.errors += 1,
                        }
                    }
                })
            })
            .collect();
        let total = join_stats(handles, t0);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let samples = sampler.join().unwrap_or_default();
        stop(d);
        // Warm-up: the first fifth of the samples.
        let warm = &samples[samples.len() / 5..];
        let (lo, hi) = (
            warm.iter().copied().min().unwrap_or(0),
            warm.iter().copied().max().unwrap_or(0),
        );
        eprintln!(
            "soak: {} requests over {soak_conns} connections in {:?} ({:.0}/s), {} errors, p99 {}, RSS after warm-up {lo}..{hi} kB",
            total.requests,
            total.elapsed,
            total.rps(),
            total.errors,
            fmt_us(total.pct(0.99))
        );
        (total, lo, hi)
    };

    // 5: cache scale.
    let mut scale_rows = Vec::new();
    // BENCH_SCALES=N,N,... overrides the cache sizes (e.g. a large one in a smoke run).
    let scales: Vec<usize> = std::env::var("BENCH_SCALES")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or(scales);
    for &n in &scales {
        let dir = work.join(format!("scale-{n}"));
        let t_fill = Instant::now();
        {
            let store = SledStore::open(&dir).expect("store");
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let policy = parse_policy(
                policy_text("enforce", &["mx1.example.net", "*.mx.example.net"], 604800).as_bytes(),
            )
            .expect("policy");
            for i in 0..n {
                let e = Entry {
                    policy: Some(CachedPolicy {
                        policy: policy.clone(),
                        id: "20261122".into(),
                        fetched_at: now,
                        expires_at: now + 604800,
                    }),
                    no_policy_until: None,
                    last_check: now,
                    failure: None,
                    txt_failure: None,
                };
                store.put(&format!("scale{i}.bench.test"), &e).expect("put");
            }
            store.flush().expect("flush");
        }
        let fill = t_fill.elapsed();
        let disk = du(&dir);
        let t0 = Instant::now();
        // A short refresher interval, so that the steady state below includes
        // several walks of the store.
        let mut d = spawn_daemon_with(
            &opts,
            &work,
            &dir,
            8463,
            Some(9463),
            "refresh_interval = \"5s\"\n",
        );
        let first = wait_ready(
            "127.0.0.1:8463".parse().expect("addr"),
            "scale0.bench.test",
            &mut d,
        );
        let answer = Client::connect("127.0.0.1:8463".parse().expect("addr"))
            .and_then(|mut c| c.ask("scale0.bench.test"))
            .unwrap_or_default();
        assert!(
            answer.starts_with(b"OK secure"),
            "scale {n}: {:?}",
            String::from_utf8_lossy(&answer)
        );
        let rss_first = proc_status(d.id(), "VmRSS:");
        // Then wait until the walk at start has seen every policy (the gauge says so).
        let want = format!("mta_stsd_cache_entries{{mode=\"enforce\"}} {n}");
        while !http_get("127.0.0.1:9463", "/metrics").contains(&want) {
            assert!(
                t0.elapsed() < Duration::from_secs(600),
                "scale {n}: cache never fully loaded"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let loaded = t0.elapsed();
        // Steady state: lookups of up to 50,000 distinct cached domains (more than the
        // hot set holds), then three refresher passes; RSS and the CPU the walks cost.
        let touched = n.min(50_000);
        let mut client = Client::connect("127.0.0.1:8463".parse().expect("addr")).expect("connect");
        let t_touch = Instant::now();
        for i in 0..touched {
            let d = format!("scale{}.bench.test", (i * 7919) % n);
            let answer = client.ask(&d).unwrap_or_default();
            assert!(answer.starts_with(b"OK secure"), "scale {n}: {d}");
        }
        let touch = t_touch.elapsed();
        let cpu_before = proc_cpu_ticks(d.id());
        std::thread::sleep(Duration::from_secs(15));
        let walk_cpu = (proc_cpu_ticks(d.id()) - cpu_before) as f64 / 100.0 / 3.0;
        let rss = proc_status(d.id(), "VmRSS:");
        stop(d);
        eprintln!(
            "scale {n}: fill {fill:?}, {disk} bytes on disk, first answer after {first:?} (RSS {rss_first} kB), walked after {loaded:?}, {touched} distinct lookups in {touch:?}, refresher walk {walk_cpu:.2} s CPU, RSS {rss} kB"
        );
        scale_rows.push((n, disk, first, rss_first, loaded, rss, fill, walk_cpu));
    }

    // ------------------------------------------------------------------ report
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let rustc = Command::new("rustc")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let pyver = opts.python.as_ref().map(|v| {
        Command::new(v.join("bin/pip"))
            .args(["show", "postfix-mta-sts-resolver"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .find(|l| l.starts_with("Version:"))
                    .unwrap_or("")
                    .replace("Version: ", "")
            })
            .unwrap_or_default()
    });

    report.push_str("# mta-stsd benchmark report\n\n");
    report.push_str(&format!(
        "Generated by `cargo bench --bench mta-stsd-bench{}`{}.\n\n",
        if opts.smoke { " -- --smoke" } else { "" },
        if opts.smoke {
            " (smoke run: short, not for comparison)"
        } else {
            ""
        }
    ));
    report.push_str(&format!(
        "- Machine: {cpu}, {cores} cores, Linux {}\n- mta-stsd {} ({}), release build\n- postfix-mta-sts-resolver: {}\n- Every daemon and the echo floor run as separate processes on loopback; the load generator uses one blocking client thread per connection; each measurement runs {:?}.\n\n",
        kernel.trim(), env!("CARGO_PKG_VERSION"), rustc, pyver.clone().unwrap_or_else(|| "not measured (no --python)".into()), dur
    ));

    report.push_str(&format!(
        "## 0. The daemon's own cost per cached lookup\n\n`PolicyService::lookup` on a cache hit, in process (key normalisation, cache lookup, memoized reply): **{in_process_ns:.0} ns** per lookup. Everything else in the numbers below is the loopback round trip, the kernel and the codec.\n\n"
    ));
    report.push_str(&format!(
        "## 8. DANE precedence (in process)\n\nA signed root zone (Ed25519) on a loopback test DNS server; {} domains, each with 2 MX hosts, A records and a usable TLSA record per host. Validation is the daemon's own (`validation = \"internal\"`).\n\n| cold verdict, one at a time: p50 | p99 | mean | DNS queries per verdict | cold verdicts, all at once | cached answer, DANE off | cached answer, DANE on |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n| {} | {} | {} | {:.1} | {:.0} /s | {:.0} ns | {:.0} ns |\n\n",
        dane.domains,
        fmt_us(dane.cold_p50),
        fmt_us(dane.cold_p99),
        fmt_us(dane.cold_mean),
        dane.queries_per_verdict,
        dane.parallel_per_sec,
        dane.hit_off_ns,
        dane.hit_on_ns,
    ));
    report.push_str(&format!("## 1. Cached lookups, one connection, sequential\n\nMedian of {rounds} rounds interleaved across the servers.\n\n"));
    report.push_str("| server | req/s | p50 | p99 | p99.9 | vs floor (latency p50) |\n| --- | ---: | ---: | ---: | ---: | ---: |\n");
    let floor_p50 = results
        .get("echo floor")
        .and_then(|m| m.get(&1))
        .map(|s| s.pct(0.5))
        .unwrap_or_default();
    for (name, m) in &results {
        if let Some(s) = m.get(&1) {
            report.push_str(&format!(
                "| {name} | {:.0} | {} | {} | {} | {:.2}× |\n",
                s.rps(),
                fmt_us(s.pct(0.5)),
                fmt_us(s.pct(0.99)),
                fmt_us(s.pct(0.999)),
                s.pct(0.5).as_secs_f64() / floor_p50.as_secs_f64().max(1e-12)
            ));
        }
    }
    report.push_str("\n## 2. Cached lookups by concurrent connections\n\n| server | connections | req/s | p99 | errors |\n| --- | ---: | ---: | ---: | ---: |\n");
    for (name, m) in &results {
        for (c, s) in m {
            report.push_str(&format!(
                "| {name} | {c} | {:.0} | {} | {} |\n",
                s.rps(),
                fmt_us(s.pct(0.99)),
                s.errors
            ));
        }
    }
    if let (Some(ours), Some(py)) = (
        results.get("mta-stsd"),
        results.get("postfix-mta-sts-resolver"),
    ) {
        report.push_str("\nThroughput ratio mta-stsd / postfix-mta-sts-resolver: ");
        let ratios: Vec<String> = ours
            .iter()
            .filter_map(|(c, s)| {
                py.get(c)
                    .map(|p| format!("{c} conn: {:.1}×", s.rps() / p.rps().max(1e-9)))
            })
            .collect();
        report.push_str(&ratios.join(", "));
        report.push('\n');
    }
    report.push_str("\n![throughput vs connections](throughput.svg)\n");
    report.push_str("\n## 3. Negative lookups (domains without a policy), after warm-up, 8 connections\n\n| server | req/s | p99 | DNS queries per 1000 lookups |\n| --- | ---: | ---: | ---: |\n");
    for (name, s, q) in &negative {
        report.push_str(&format!(
            "| {name} | {:.0} | {} | {q:.1} |\n",
            s.rps(),
            fmt_us(s.pct(0.99))
        ));
    }
    report.push_str(&format!(
        "\n## 4. Cold start\n\n{cold_n} distinct domains with policies, 256 connections: {:.2} s in total ({:.0} domains/s), {cold_stats} answered `secure` at once, {fetches} policy fetches ({:.2} per domain), {txt_queries} TXT queries, daemon peak RSS {:.1} MiB.\n",
        cold_time.as_secs_f64(), cold_n as f64 / cold_time.as_secs_f64(), fetches as f64 / cold_n as f64, cold_rss as f64 / 1024.0
    ));
    {
        let (elapsed, errors, hwm, before, after, disk, worst, p99, probe_errors) = flood;
        report.push_str(&format!(
            "\n## 6. Flood of random domains without a policy\n\n{flood_n} lookups of distinct non-existent domains through 64 connections, `negative_ttl = \"30s\"` (so the flood's entries expire while it runs) and the default `cache.negative_entries` (50,000); a probe asks a cached domain every 5 ms throughout and for 35 s after.\n\n| lookups/s | errors | peak RSS | RSS before / after | cache on disk | cached probe: worst | p99 | probe errors |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n| {:.0} | {errors} | {:.1} MiB | {:.1} / {:.1} MiB | {:.2} MiB | {:.1} ms | {} | {probe_errors} |\n",
            flood_n as f64 / elapsed.as_secs_f64(),
            hwm as f64 / 1024.0,
            before as f64 / 1024.0,
            after as f64 / 1024.0,
            disk as f64 / 1048576.0,
            worst.as_secs_f64() * 1000.0,
            fmt_us(p99),
        ));
    }
    {
        let (st, lo, hi) = &soak;
        report.push_str(&format!(
            "\n## 7. Soak: {soak_conns} connections, {soak_total} requests\n\n80% cached policy, 15% cached negatives, 5% new domains (each a discovery); `negative_entries = 10000`, so the negative set is full before warm-up ends.\n\n| req/s | errors | p50 | p99 | p99.9 | RSS after warm-up (min..max) |\n| ---: | ---: | ---: | ---: | ---: | ---: |\n| {:.0} | {} | {} | {} | {} | {:.1}..{:.1} MiB |\n",
            st.rps(),
            st.errors,
            fmt_us(st.pct(0.5)),
            fmt_us(st.pct(0.99)),
            fmt_us(st.pct(0.999)),
            *lo as f64 / 1024.0,
            *hi as f64 / 1024.0,
        ));
    }
    report.push_str("\n## 5. Cache scale\n\nThe daemon answers from the store at once and walks it in the background (loss check, pruning, gauges). Memory holds at most `cache.memory_entries` (10,000 by default) policies. Steady state: after lookups of up to 50,000 distinct cached domains and three refresher passes (`refresh_interval = \"5s\"`, each a walk of the store).\n\n| cached policies | on disk | start to first answer | RSS then | walked after | RSS steady | CPU per refresher walk | (fill time) |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for (n, disk, first, rss_first, loaded, rss, fill, walk_cpu) in &scale_rows {
        report.push_str(&format!(
            "| {n} | {:.1} MiB | {:.0} ms | {:.1} MiB | {:.2} s | {:.1} MiB | {walk_cpu:.2} s | {:.1} s |\n",
            *disk as f64 / 1048576.0,
            first.as_secs_f64() * 1000.0,
            *rss_first as f64 / 1024.0,
            loaded.as_secs_f64(),
            *rss as f64 / 1024.0,
            fill.as_secs_f64()
        ));
    }
    report.push_str(&tlsrpt_ingest::section(&tlsrpt));
    report.push_str(&failover::section(&failover));
    if let Some(parent) = opts.report.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    // The report is one current document; what earlier runs measured (before/after
    // figures of past changes) is kept, by hand, under its History heading at the end.
    if let Ok(old) = std::fs::read_to_string(&opts.report)
        && let Some(at) = old.find(HISTORY_HEADING)
    {
        report.push('\n');
        report.push_str(&old[at..]);
    }
    std::fs::write(&opts.report, &report).expect("write report");
    let svg = opts.report.with_file_name("throughput.svg");
    std::fs::write(&svg, plot(&results, &levels)).expect("write plot");
    println!("{report}");
    eprintln!(
        "report written to {} and {}",
        opts.report.display(),
        svg.display()
    );
    let _ = std::fs::remove_dir_all(&work);
    // Checks that must hold even in a smoke run.
    assert_eq!(cold_stats, cold_n, "every cold domain answered secure");
    assert_eq!(fetches, cold_n, "exactly one fetch per domain");
    assert_eq!(flood.1, 0, "flood lookups all answered NOTFOUND");
    assert_eq!(
        flood.8, 0,
        "the cached probe was answered throughout the flood"
    );
    assert_eq!(soak.0.errors, 0, "soak without errors");
    if let Some(f) = &failover {
        assert_eq!(
            f.stats.errors, 0,
            "every lookup answered during the failover"
        );
    }
    for (name, m) in &results {
        for (c, s) in m {
            assert_eq!(s.errors, 0, "{name} at {c} connections had errors");
        }
    }
}

/// Where the hand-kept history of the report starts; a run keeps it (and what follows).
const HISTORY_HEADING: &str = "## History";

/// A policy service in this process, with its store at `path`, discovering from the
/// benchmark's world (DNS on 127.0.0.1:53, policies signed by `ca`).
fn inproc_service(path: &Path, ca: &TestCa) -> Arc<mta_stsd::cache::policy_cache::PolicyService> {
    use mta_stsd::cache::policy_cache::{PolicyService, ServiceSettings};
    use mta_stsd::config::{CacheConfig, FetchConfig, ResolverConfig};
    use mta_stsd::mtasts::discovery::{Discoverer, DiscoveryOptions};
    let discoverer = Discoverer::new(DiscoveryOptions {
        resolver: ResolverConfig {
            nameservers: vec!["127.0.0.1:53".parse().expect("addr")],
            ..Default::default()
        },
        fetch: FetchConfig {
            allow_private_addresses: true,
            ..Default::default()
        },
        system_roots: false,
        extra_roots: vec![ca.cert_der()],
        https_port: None,
    })
    .expect("discoverer");
    let store = Arc::new(SledStore::open(path).expect("store"));
    PolicyService::new(
        discoverer,
        store,
        Arc::new(mta_stsd::clock::SystemClock),
        ServiceSettings::new(CacheConfig::default()),
        Arc::new(mta_stsd::metrics::Metrics::new().expect("metrics")),
    )
}

#[derive(Debug)]
struct DaneFigures {
    domains: usize,
    cold_p50: Duration,
    cold_p99: Duration,
    cold_mean: Duration,
    queries_per_verdict: f64,
    parallel_per_sec: f64,
    hit_off_ns: f64,
    hit_on_ns: f64,
}

async fn dane_workload(work: &Path, ca: &TestCa, n: usize) -> DaneFigures {
    use mta_stsd::config::ZoneOptions;
    use mta_stsd::config::{Config, DaneConfig, DaneMode, ResolverConfig};
    use mta_stsd::dane::verdict::Verdict;
    use mta_stsd::dane::verdict_cache::{DaneService, DaneSettings};
    use mta_stsd::server::state::State;

    let signed = TestDns::start_signed().await;
    let digest = [9u8; 32];
    signed.batch(|d| {
        for i in 0..n {
            let domain = format!("d{i}.dane.bench.test");
            let hosts = [format!("mx1.{domain}"), format!("mx2.{domain}")];
            d.set_mx(&domain, &[(10, &hosts[0]), (20, &hosts[1])]);
            for h in &hosts {
                d.set_a(h, Ipv4Addr::new(192, 0, 2, 1));
                d.set_tlsa(&format!("_25._tcp.{h}"), &[(3, 1, 1, &digest)]);
            }
        }
    });
    let anchor = work.join("dane-root.key");
    std::fs::write(&anchor, signed.trust_anchor().expect("anchor")).expect("anchor file");
    let dane_resolver = ResolverConfig {
        nameservers: vec![signed.addr()],
        ..Default::default()
    };
    let dane_config = |mode| DaneConfig {
        mode,
        trust_anchor: Some(anchor.clone()),
        ..Default::default()
    };
    let clock = Arc::new(mta_stsd::clock::SystemClock);
    let metrics = Arc::new(mta_stsd::metrics::Metrics::new().expect("metrics"));
    let dane = DaneService::new(
        DaneSettings::resolve(&dane_config(DaneMode::On), &dane_resolver).expect("dane"),
        clock.clone(),
        metrics.clone(),
    );
    let deadline = Duration::from_secs(10);

    // Cold, one at a time.
    let before = signed.total_queries();
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let c = dane
            .verdict(&format!("d{i}.dane.bench.test"), deadline)
            .await;
        times.push(t.elapsed());
        assert_eq!(c.verdict, Verdict::DaneOnly, "{c:?}");
    }
    let queries = (signed.total_queries() - before) as f64 / n as f64;
    times.sort();
    let mean = times.iter().sum::<Duration>() / n as u32;
    let p = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];

    // Cold, all at once (a fresh service, so nothing is remembered).
    let fresh = DaneService::new(
        DaneSettings::resolve(&dane_config(DaneMode::On), &dane_resolver).expect("dane"),
        clock.clone(),
        metrics.clone(),
    );
    let t = Instant::now();
    let all = futures::future::join_all((0..n).map(|i| {
        let fresh = fresh.clone();
        async move {
            fresh
                .verdict(&format!("d{i}.dane.bench.test"), deadline)
                .await
        }
    }))
    .await;
    let parallel = n as f64 / t.elapsed().as_secs_f64();
    assert!(all.iter().all(|c| c.verdict == Verdict::DaneOnly));

    // Cached answers through the daemon's one answer path, DANE off and on.
    let service = inproc_service(&work.join("inproc-dane"), ca);
    let zone = ZoneOptions::default();
    let rounds = if n >= 1000 { 2_000_000 } else { 100_000 };
    let mut per_call = Vec::new();
    for mode in [DaneMode::Off, DaneMode::On] {
        let dane = DaneService::new(
            DaneSettings::resolve(&dane_config(mode), &dane_resolver).expect("dane"),
            clock.clone(),
            metrics.clone(),
        );
        let state = State::new(service.clone(), dane, None, Config::default(), None, None);
        let (a, _) = state.answer(HOT, &zone, deadline).await;
        assert!(a.wire().starts_with("OK secure"), "{}", a.wire());
        let t = Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(state.answer(HOT, &zone, deadline).await);
        }
        per_call.push(t.elapsed().as_nanos() as f64 / rounds as f64);
    }
    DaneFigures {
        domains: n,
        cold_p50: p(0.5),
        cold_p99: p(0.99),
        cold_mean: mean,
        queries_per_verdict: queries,
        parallel_per_sec: parallel,
        hit_off_ns: per_call[0],
        hit_on_ns: per_call[1],
    }
}

/// Throughput vs connections, log-x, as a small self-contained SVG.
fn plot(results: &BTreeMap<&str, BTreeMap<usize, Stats>>, levels: &[usize]) -> String {
    let (w, h, l, r, t, b) = (720.0, 420.0, 80.0, 200.0, 30.0, 50.0);
    let max = results
        .values()
        .flat_map(|m| m.values().map(Stats::rps))
        .fold(1.0f64, f64::max)
        * 1.1;
    let xmax = levels.len().saturating_sub(1).max(1) as f64;
    let x = |i: usize| l + (w - l - r) * i as f64 / xmax;
    let y = |v: f64| t + (h - t - b) * (1.0 - v / max);
    let colors = ["#888888", "#1f77b4", "#d62728", "#2ca02c"];
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    s.push_str(&format!("<text x=\"{}\" y=\"18\" text-anchor=\"middle\">cached lookups: throughput vs concurrent connections</text>\n", (w - r + l) / 2.0));
    for k in 0..=4 {
        let v = max * k as f64 / 4.0;
        s.push_str(&format!("<line x1=\"{l}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{:.0}</text>\n", w - r, l - 6.0, y(v) + 4.0, v, y = y(v)));
    }
    for (i, c) in levels.iter().enumerate() {
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{c}</text>\n",
            x(i),
            h - b + 18.0
        ));
    }
    s.push_str(&format!("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">connections</text>\n<text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">requests/s</text>\n", (w - r + l) / 2.0, h - 12.0, h / 2.0, h / 2.0));
    for (k, (name, m)) in results.iter().enumerate() {
        let color = colors[k % colors.len()];
        let pts: Vec<String> = levels
            .iter()
            .enumerate()
            .filter_map(|(i, c)| m.get(c).map(|st| format!("{:.1},{:.1}", x(i), y(st.rps()))))
            .collect();
        s.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n",
            pts.join(" ")
        ));
        for p in &pts {
            let (px, py) = p.split_once(',').unwrap_or(("0", "0"));
            s.push_str(&format!(
                "<circle cx=\"{px}\" cy=\"{py}\" r=\"3\" fill=\"{color}\"/>\n"
            ));
        }
        s.push_str(&format!("<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"3\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\">{name}</text>\n", w - r + 12.0, t + 20.0 * k as f64 + 6.0, w - r + 30.0, t + 20.0 * k as f64 + 10.0));
    }
    s.push_str("</svg>\n");
    s
}
