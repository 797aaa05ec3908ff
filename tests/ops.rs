//! Operations: metrics, the admin API and `mta-stsd cache`, and the real binary's
//! lifecycle (sd_notify readiness, SIGHUP reload, SIGTERM, socket activation).

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use common::{ENFORCE, InProcess, ask_once, cli};
use mta_stsd_testkit::World;

const SECURE: &str = "OK secure match=mx1.example.com:.example.net servername=hostname";

async fn start(w: &World, dir: &Path) -> InProcess {
    InProcess::builder(w, dir).start().await
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_real_lookups() {
    let w = World::start().await;
    w.publish("m.example", "1", ENFORCE);
    let dir = tempfile::tempdir().unwrap();
    let d = start(&w, dir.path()).await;
    assert_eq!(ask_once(d.tcp, "postfix", "m.example").await, SECURE);
    assert_eq!(ask_once(d.tcp, "postfix", "m.example").await, SECURE);
    assert_eq!(
        ask_once(d.tcp, "postfix", "nope.example").await,
        "NOTFOUND "
    );
    assert_eq!(
        ask_once(d.tcp, "postfix", "nope.example").await,
        "NOTFOUND "
    );
    assert_eq!(ask_once(d.tcp, "postfix", "[192.0.2.1]").await, "NOTFOUND ");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let text = reqwest::get(format!("{}/metrics", d.http.as_deref().unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let l = |answer: &str, cache: &str| {
        metric(
            &text,
            &format!(
                "mta_stsd_lookups_total{{answer=\"{answer}\",cache=\"{cache}\",zone=\"default\"}}"
            ),
        )
    };
    assert_eq!(l("secure", "miss"), 1.0);
    assert_eq!(l("secure", "hit"), 1.0);
    assert_eq!(l("notfound", "miss"), 1.0);
    assert_eq!(l("notfound", "negative_hit"), 1.0);
    assert_eq!(l("notfound", "skipped"), 1.0);
    assert_eq!(metric(&text, "mta_stsd_lookup_duration_seconds_count"), 5.0);
    assert_eq!(
        metric(&text, "mta_stsd_cache_entries{mode=\"enforce\"}"),
        1.0
    );
    assert_eq!(
        metric(&text, "mta_stsd_cache_entries{mode=\"negative\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "mta_stsd_discoveries_total{result=\"fetched\",trigger=\"miss\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "mta_stsd_discoveries_total{result=\"no_policy\",trigger=\"miss\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "mta_stsd_fetch_duration_seconds_count{result=\"ok\"}"
        ),
        1.0
    );
    assert_eq!(metric(&text, "mta_stsd_connections_open"), 0.0);
    assert!(text.contains(&format!(
        "mta_stsd_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));

    // promtool (Debian's prometheus package) must accept a real scrape; CI installs it.
    let scrape = dir.path().join("scrape.txt");
    std::fs::write(&scrape, &text).unwrap();
    match Command::new("promtool")
        .arg("check")
        .arg("metrics")
        .stdin(std::fs::File::open(&scrape).unwrap())
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!("CI must install promtool (apt-get install prometheus)")
        }
        Err(_) => eprintln!("skipped promtool check: promtool not installed"),
    }
    d.shutdown().await;
}

async fn cli_async(args: Vec<String>) -> (Option<i32>, String, String) {
    tokio::task::spawn_blocking(move || cli(&args.iter().map(String::as_str).collect::<Vec<_>>()))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_through_the_cache_command() {
    let w = World::start().await;
    w.publish("admin.example", "7", ENFORCE);
    let dir = tempfile::tempdir().unwrap();
    let d = start(&w, dir.path()).await;
    assert_eq!(ask_once(d.tcp, "postfix", "admin.example").await, SECURE);
    let a = |args: &[&str]| {
        let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        v.extend(["--admin".to_string(), d.http.clone().unwrap()]);
        v
    };
    let (code, out, _) = cli_async(a(&["cache", "list"])).await;
    assert_eq!(code, Some(0));
    assert!(
        out.contains("admin.example") && out.contains("enforce") && out.contains("1 entries"),
        "{out}"
    );
    let (code, out, _) = cli_async(a(&["cache", "show", "Admin.Example"])).await;
    assert_eq!(code, Some(0));
    assert!(out.contains("id:          7"), "{out}");
    assert!(
        out.contains("mx:          mx1.example.com, *.example.net"),
        "{out}"
    );
    assert!(out.contains("    mode: enforce"), "{out}");
    let (code, out, _) = cli_async(a(&["cache", "show", "admin.example", "--json"])).await;
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["state"], "enforce");
    // Refresh fetches again, whatever the id.
    let (code, _, _) = cli_async(a(&["cache", "refresh", "admin.example"])).await;
    assert_eq!(code, Some(0));
    assert_eq!(w.https.hits("admin.example"), 2);
    // Purge removes it; show then fails with exit 1.
    let (code, out, _) = cli_async(a(&["cache", "purge", "admin.example"])).await;
    assert_eq!((code, out.trim()), (Some(0), "admin.example: purged"));
    let (code, _, err) = cli_async(a(&["cache", "show", "admin.example"])).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("not in the cache"), "{err}");
    // Refresh of an unknown domain runs a discovery.
    let (code, out, _) = cli_async(a(&["cache", "refresh", "admin.example"])).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("state:       enforce"), "{out}");
    d.shutdown().await;
}

fn serve(config: &Path, notify_socket: &Path) -> Child {
    common::bin()
        .args(["serve", "--config"])
        .arg(config)
        .env("NOTIFY_SOCKET", notify_socket)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Fills a cache directory with a fetched policy, using an in-process daemon.
async fn warm_cache(dir: &Path) {
    let w = World::start().await;
    w.publish("cached.example", "1", ENFORCE);
    let d = start(&w, dir).await;
    assert_eq!(ask_once(d.tcp, "postfix", "cached.example").await, SECURE);
    d.shutdown().await;
}

fn signal(child: &Child, sig: i32) {
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_lifecycle_notify_reload_and_stop() {
    let dir = tempfile::tempdir().unwrap();
    warm_cache(dir.path()).await;
    let port = free_port();
    let cfg = dir.path().join("mta-stsd.toml");
    let base = format!(
        "[server]\nlisten = [\"127.0.0.1:{port}\"]\n[metrics]\nlisten = \"\"\n[cache]\npath = \"{}\"\n[resolver]\nnameservers = [\"127.0.0.1:9\"]\ntimeout = \"200ms\"\n[log]\nformat = \"json\"\n",
        dir.path().join("cache").display()
    );
    std::fs::write(&cfg, &base).unwrap();
    let notify = common::Notify::new(dir.path());
    let child = serve(&cfg, &notify.path);
    let notify = Arc::new(notify);
    let wait = |want: &'static str| {
        let n = notify.clone();
        tokio::task::spawn_blocking(move || n.expect(want))
    };
    wait("READY=1").await.unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Served from the persistent cache, without network.
    assert_eq!(ask_once(addr, "postfix", "cached.example").await, SECURE);

    // SIGHUP with a new zone setting: applied without a restart.
    std::fs::write(
        &cfg,
        format!("{base}[zones.default]\nrequire_sni = false\n"),
    )
    .unwrap();
    let reloaded = wait("READY=1");
    signal(&child, libc::SIGHUP);
    reloaded.await.unwrap();
    assert_eq!(
        ask_once(addr, "postfix", "cached.example").await,
        "OK secure match=mx1.example.com:.example.net"
    );

    // An invalid file is rejected and the old configuration kept.
    std::fs::write(&cfg, "[zones.default]\nrequire_sni = maybe\n").unwrap();
    let reloaded = wait("READY=1");
    signal(&child, libc::SIGHUP);
    reloaded.await.unwrap();
    assert_eq!(
        ask_once(addr, "postfix", "cached.example").await,
        "OK secure match=mx1.example.com:.example.net"
    );

    let stopping = wait("STOPPING=1");
    signal(&child, libc::SIGTERM);
    stopping.await.unwrap();
    let status = tokio::task::spawn_blocking(move || {
        let out = child.wait_with_output().unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap();
    assert_eq!(status.0.code(), Some(0), "{}", status.1);
    assert!(
        status.1.contains("new configuration rejected"),
        "{}",
        status.1
    );
    // JSON log lines, one object per line.
    let first = status.1.lines().next().unwrap();
    assert!(
        serde_json::from_str::<serde_json::Value>(first).is_ok(),
        "{first}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_activation_replaces_listen() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    warm_cache(dir.path()).await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = dir.path().join("mta-stsd.toml");
    // listen names a port that is never bound: the activated socket must be used instead.
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = [\"127.0.0.1:{}\"]\n[metrics]\nlisten = \"\"\n[cache]\npath = \"{}\"\n[resolver]\nnameservers = [\"127.0.0.1:9\"]\n",
            free_port(),
            dir.path().join("cache").display()
        ),
    )
    .unwrap();
    let notify = common::Notify::new(dir.path());
    let log = dir.path().join("stderr.log");
    let fd = listener.as_raw_fd();
    // LISTEN_PID must be the daemon's own pid: sh sets it to $$ and execs in place.
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_mta-stsd"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &notify.path)
        .env("LISTEN_FDS", "1")
        .stderr(std::fs::File::create(&log).unwrap());
    // SAFETY: dup2 and fcntl are async-signal-safe. dup2 onto fd 3 clears CLOEXEC,
    // but when the listener already is fd 3, dup2 does nothing and the flag must be
    // cleared by hand, or exec closes the socket.
    unsafe {
        cmd.pre_exec(move || {
            let rc = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    let notify = Arc::new(notify);
    let n = notify.clone();
    let ready = tokio::task::spawn_blocking(move || n.wait_for("READY=1"))
        .await
        .unwrap();
    if let Err(e) = ready {
        // Say why: the daemon's own log is the only witness.
        let stderr = std::fs::read_to_string(&log).unwrap_or_default();
        panic!("waiting for READY=1: {e}; daemon stderr:\n{stderr}");
    }
    assert_eq!(ask_once(addr, "postfix", "cached.example").await, SECURE);
    signal(&child, libc::SIGTERM);
    let mut child = child;
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());
}

/// Every metric the shipped dashboard and alert rules use must exist.
#[test]
fn dashboard_and_alerts_use_existing_metrics() {
    let metrics = mta_stsd::metrics::Metrics::new().unwrap();
    let exported = metrics.names();
    for file in [
        "contrib/grafana/mta-stsd-dashboard.json",
        "contrib/prometheus/mta-stsd-alerts.yml",
    ] {
        let text =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
        let mut found = 0;
        for (i, _) in text.match_indices("mta_stsd_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            assert!(
                exported.iter().any(|n| n == base),
                "{file} uses {name}, which mta-stsd does not export"
            );
            found += 1;
        }
        assert!(found > 3, "{file}");
    }
}

/// `mta-stsd warm --from-maillog` discovers the recipient domains of delivered mail
/// through the admin API, so that the first lookup of each is already a cache hit,
/// and summarises what it found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_from_the_mail_log_fills_the_cache() {
    let w = World::start().await;
    w.publish("a.example", "1", ENFORCE);
    w.publish(
        "b.example",
        "1",
        &mta_stsd_testkit::policy_text("testing", &["mx.b.example"], 86400),
    );
    // Announced, but the policy host has no certificate for it: a failed fetch.
    w.dns.set_txt("_mta-sts.fail.example", &["v=STSv1; id=1;"]);
    w.point_policy_host("fail.example");
    let dir = tempfile::tempdir().unwrap();
    let d = start(&w, dir.path()).await;
    let log = dir.path().join("mail.log");
    let line = |n: u32, to: &str, status: &str| {
        format!(
            "Nov 23 10:00:{n:02} mx postfix/smtp[{n}]: 4F{n}: to=<{to}>, relay=mx[192.0.2.1]:25, delay=1, status={status} (x)\n"
        )
    };
    let mut text = String::new();
    for (n, to) in [
        "u@a.example",
        "v@a.example",
        "w@A.Example",
        "u@none.example",
        "v@none.example",
        "u@b.example",
        "u@fail.example",
    ]
    .iter()
    .enumerate()
    {
        text.push_str(&line(n as u32, to, "sent"));
    }
    text.push_str(&line(50, "u@deferred.example", "deferred"));
    std::fs::write(&log, text).unwrap();

    let (code, out, err) = cli_async(vec![
        "warm".into(),
        "--from-maillog".into(),
        log.display().to_string(),
        "--admin".into(),
        d.http.clone().unwrap(),
    ])
    .await;
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        out.contains("4 domains: 1 enforce, 1 no policy, 1 testing; 1 failed (tls 1)"),
        "{out}"
    );
    assert!(out.contains("a.example: enforce"), "{out}");
    assert!(
        d.service.cached("deferred.example").is_none(),
        "only delivered mail counts"
    );
    // The first lookup after warming is a hit: no second fetch.
    assert_eq!(ask_once(d.tcp, "postfix", "a.example").await, SECURE);
    assert_eq!(w.https.hits("a.example"), 1);

    let admin = d.http.clone().unwrap();
    // A rotated, gzip-compressed log.
    let gz = dir.path().join("mail.log.2.gz");
    {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(
            std::fs::File::create(&gz).unwrap(),
            flate2::Compression::default(),
        );
        enc.write_all(line(60, "u@a.example", "sent").as_bytes())
            .unwrap();
        enc.finish().unwrap();
    }
    let (code, out, err) = cli_async(vec![
        "warm".into(),
        "--from-maillog".into(),
        gz.display().to_string(),
        "--admin".into(),
        admin.clone(),
    ])
    .await;
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("1 domains: 1 enforce"), "{out}");

    // The journal piped in (`journalctl -t postfix/smtp | mta-stsd warm --from-maillog -`).
    let piped = line(61, "u@b.example", "sent");
    let (code, out, err) =
        cli_with_stdin(&["warm", "--from-maillog", "-", "--admin", &admin], &piped).await;
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("1 domains: 1 testing"), "{out}");

    // A log with no delivered mail says so, rather than "give a FILE".
    let (code, _, err) = cli_with_stdin(
        &["warm", "--from-maillog", "-", "--admin", &admin],
        &line(62, "u@deferred.example", "deferred"),
    )
    .await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("standard input: no mail delivered"), "{err}");
    assert!(!err.contains("give a FILE"), "{err}");

    // Every domain failed: not a success.
    let (code, out, err) =
        cli_with_stdin(&["warm", "-", "--admin", &admin], "fail.example\n").await;
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert!(
        out.contains("1 domains: nothing discovered; 1 failed"),
        "{out}"
    );
}

async fn cli_with_stdin(args: &[&str], input: &str) -> (Option<i32>, String, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let input = input.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = common::bin()
            .args(&args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// A cache file in postfix-mta-sts-resolver's sqlite format (its schema, its JSON).
fn python_cache(path: &Path, rows: &[(&str, u64, &str, &str)]) {
    let db = rusqlite::Connection::open(path).unwrap();
    db.execute_batch(
        "create table if not exists sts_policy_cache (domain text, ts integer, pol_id text, pol_body text);
         create unique index if not exists sts_policy_domain on sts_policy_cache (domain);",
    )
    .unwrap();
    for (domain, ts, id, body) in rows {
        db.execute(
            "insert into sts_policy_cache (domain, ts, pol_id, pol_body) values (?1, ?2, ?3, ?4)",
            rusqlite::params![domain, *ts as i64, id, body],
        )
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_from_the_python_resolvers_sqlite_cache() {
    let w = World::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = start(&w, dir.path()).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let file = dir.path().join("python-cache.db");
    let enforce = r#"{"version": "STSv1", "mode": "enforce", "mx": ["mx1.example.com", "*.example.net"], "max_age": "604800"}"#;
    python_cache(
        &file,
        &[
            ("imported.example", now - 3600, "20260101", enforce),
            // Fetched 8 days ago with a 7-day max_age: says nothing any more.
            ("stale.example", now - 8 * 86400, "1", enforce),
            // Python's parser accepts this; RFC 8461 (and mta-stsd) do not.
            (
                "lax.example",
                now,
                "1",
                r#"{"version": "STSv1", "mode": "enforce", "mx": [], "max_age": "86400"}"#,
            ),
        ],
    );
    let url = d.http.clone().unwrap();
    let run = |file: &Path| {
        cli_async(vec![
            "import".into(),
            "--from".into(),
            format!("sqlite:{}", file.display()),
            "--admin".into(),
            url.clone(),
        ])
    };
    let (code, out, err) = run(&file).await;
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        out.contains(
            "3 policies read: 1 imported, 0 already cached (same or newer), 1 expired, 1 invalid"
        ),
        "{out}"
    );
    // The daemon's reason, not the admin API's JSON.
    assert!(
        out.contains("lax.example: not imported: invalid policy:"),
        "{out}"
    );
    assert!(!out.contains("{\"error\""), "{out}");

    // Answered from the cache, with the original id and fetch time, and no network:
    // nothing is published in this world.
    assert_eq!(ask_once(d.tcp, "postfix", "imported.example").await, SECURE);
    let e = d.service.cached("imported.example").unwrap();
    let p = e.policy.unwrap();
    assert_eq!((p.id.as_str(), p.fetched_at), ("20260101", now - 3600));
    assert_eq!(w.https.hits("imported.example"), 0);
    assert!(d.service.cached("stale.example").is_none());

    // Idempotent.
    let (code, out, _) = run(&file).await;
    assert_eq!(code, Some(0));
    assert!(out.contains("0 imported, 1 already cached"), "{out}");

    // Not a cache file: a clear error, exit 2.
    std::fs::write(dir.path().join("junk.db"), b"not sqlite").unwrap();
    let (code, _, err) = run(&dir.path().join("junk.db")).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("postfix-mta-sts-resolver") || err.contains("not a database"),
        "{err}"
    );
    // A directory instead of the file, and a file that is not there.
    let (code, _, err) = run(dir.path()).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("is a directory: give"), "{err}");
    assert!(!err.contains("Error code"), "{err}");
    let (code, _, err) = run(&dir.path().join("missing.db")).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("missing.db: No such file or directory"),
        "{err}"
    );
    assert!(!err.contains("os error"), "{err}");
    d.shutdown().await;
}
