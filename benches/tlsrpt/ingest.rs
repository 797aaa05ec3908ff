//! Section 9: TLSRPT datagram ingest. N datagrams over D recipient domains (as
//! Postfix's libtlsrpt sends them: one per delivery attempt, 10% failures with a
//! failure detail) through a unix datagram socket, into mta-stsd and, when its venv is
//! given, into sys4's tlsrpt-collectd (the reference collector, SQLite). The sender
//! blocks when the socket's queue is full, so the rate is the collector's.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{du, http_get, proc_status, stop};

/// What one collector did with the datagrams.
pub struct Run {
    /// From the first datagram sent to the last one stored (durable).
    pub elapsed: Duration,
    pub peak_rss_kib: u64,
    pub disk_bytes: u64,
}

impl Run {
    pub fn rate(&self, n: usize) -> f64 {
        n as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

pub struct Figures {
    pub n: usize,
    pub domains: usize,
    pub ours: Run,
    pub reference: Option<Run>,
}

fn datagram(i: usize, domains: usize) -> Vec<u8> {
    let d = i % domains;
    let record = format!("v=TLSRPTv1; rua=mailto:tlsrpt@d{d}.bench.test");
    let failed = i.is_multiple_of(10);
    let details = if failed {
        format!(
            r#","failure-details":[{{"c":202,"s":"192.0.2.1","n":"mx.d{d}.bench.test","h":"250-mx.d{d}.bench.test\r\n250-PIPELINING\r\n250 STARTTLS","r":"198.51.100.{}"}}],"t":1"#,
            d % 250
        )
    } else {
        String::new()
    };
    format!(
        r#"{{"d":"d{d}.bench.test","pr":"{record}","policies":[{{"policy-type":2,"policy-domain":"d{d}.bench.test","policy-string":["version: STSv1","mode: enforce","mx: mx.d{d}.bench.test","max_age: 604800"],"mx-host":["mx.d{d}.bench.test"]{details},"f":{}}}]}}"#,
        u8::from(failed)
    )
    .into_bytes()
}

/// Sends the N datagrams to `socket`, blocking while its queue is full.
fn send_all(socket: &Path, n: usize, domains: usize) {
    let s = UnixDatagram::unbound().expect("datagram socket");
    for i in 0..n {
        let d = datagram(i, domains);
        while let Err(e) = s.send_to(&d, socket) {
            // ENOBUFS/EAGAIN under pressure: the collector is behind; try again.
            if e.kind() != std::io::ErrorKind::WouldBlock && e.raw_os_error() != Some(libc::ENOBUFS)
            {
                panic!("send to {}: {e}", socket.display());
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

fn wait_for_socket(path: &Path, child: &mut Child) {
    for _ in 0..500 {
        if path.exists() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("collector exited: {status}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("no socket at {}", path.display());
}

fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

fn ours(daemon: &Path, work: &Path, n: usize, domains: usize) -> Run {
    let dir = work.join("tlsrpt-ours");
    std::fs::create_dir_all(&dir).expect("dir");
    let socket = dir.join("tlsrpt.sock");
    let cfg = dir.join("mta-stsd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = [\"127.0.0.1:8491\"]\n[metrics]\nlisten = \"127.0.0.1:9491\"\n\
             [cache]\npath = \"{}\"\n[dane]\nmode = \"off\"\n[log]\nlevel = \"warn\"\nformat = \"plain\"\n\
             [tlsrpt]\nenable = true\nsocket = \"{}\"\norganization_name = \"Bench\"\n\
             contact_info = \"postmaster@bench.test\"\nreport_from = \"tlsrpt@bench.test\"\n",
            dir.join("cache").display(),
            socket.display()
        ),
    )
    .expect("config");
    let mut child = Command::new(daemon)
        .args(["serve", "--config"])
        .arg(&cfg)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start mta-stsd");
    wait_for_socket(&socket, &mut child);
    let start = Instant::now();
    send_all(&socket, n, domains);
    loop {
        let text = http_get("127.0.0.1:9491", "/metrics");
        let counted = metric(&text, "mta_stsd_tlsrpt_datagrams_total{result=\"counted\"}");
        let unstored = metric(&text, "mta_stsd_tlsrpt_datagrams_unstored");
        if counted == Some(n as u64) && unstored == Some(0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = start.elapsed();
    let peak_rss_kib = proc_status(child.id(), "VmHWM:");
    stop(child);
    Run {
        elapsed,
        peak_rss_kib,
        disk_bytes: du(&dir.join("cache-tlsrpt")),
    }
}

fn reference(venv: &Path, work: &Path, n: usize, domains: usize) -> Run {
    let dir = work.join("tlsrpt-reference");
    std::fs::create_dir_all(&dir).expect("dir");
    let socket = dir.join("collectd.sock");
    let db: PathBuf = dir.join("collectd.sqlite");
    let mut child = Command::new(venv.join("bin/tlsrpt-collectd"))
        .arg("--storage")
        .arg(format!("sqlite://{}", db.display()))
        .arg("--socketname")
        .arg(&socket)
        .args(["--sockettimeout", "1", "--log_level", "warn"])
        .stderr(Stdio::null())
        .spawn()
        .expect("start tlsrpt-collectd");
    wait_for_socket(&socket, &mut child);
    let start = Instant::now();
    send_all(&socket, n, domains);
    // Stored means committed: the reference commits every 1000 datagrams and after
    // a second without any.
    loop {
        let total: Option<i64> =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .ok()
                .and_then(|c| {
                    c.query_row("SELECT SUM(cntrtotal) FROM finalresults", [], |r| r.get(0))
                        .ok()
                });
        if total == Some(n as i64) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let elapsed = start.elapsed();
    let peak_rss_kib = proc_status(child.id(), "VmHWM:");
    stop(child);
    Run {
        elapsed,
        peak_rss_kib,
        disk_bytes: du(&dir),
    }
}

pub fn run(daemon: &Path, work: &Path, n: usize, domains: usize, venv: Option<&Path>) -> Figures {
    let ours = ours(daemon, work, n, domains);
    let reference = venv.map(|v| reference(v, work, n, domains));
    Figures {
        n,
        domains,
        ours,
        reference,
    }
}

/// The report's section.
pub fn section(f: &Figures) -> String {
    let row = |name: &str, r: &Run| {
        format!(
            "| {name} | {:.0} /s | {:.2} s | {:.1} MiB | {:.2} MiB |\n",
            r.rate(f.n),
            r.elapsed.as_secs_f64(),
            r.peak_rss_kib as f64 / 1024.0,
            r.disk_bytes as f64 / 1048576.0
        )
    };
    let mut s = format!(
        "\n## 9. TLSRPT datagram ingest\n\n{} datagrams (as Postfix's libtlsrpt sends them, 10% failures with a detail) over {} recipient domains, sent as fast as the collector takes them through its unix datagram socket; timed until the last one is stored (committed to disk).\n\n| collector | datagrams/s | all stored after | peak RSS | on disk |\n| --- | ---: | ---: | ---: | ---: |\n",
        f.n, f.domains
    );
    s.push_str(&row("mta-stsd", &f.ours));
    match &f.reference {
        Some(r) => s.push_str(&row("tlsrpt-collectd 0.6.0 (SQLite)", r)),
        None => s.push_str("\n(tlsrpt-collectd not measured: no `--tlsrpt-venv`.)\n"),
    }
    s
}
