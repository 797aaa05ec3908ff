//! TLSRPT end to end: Postfix's datagrams (sent here over a real unix datagram socket,
//! as libtlsrpt sends them) counted durably, and the RFC 8460 reports sent to the
//! testkit's HTTPS server and to a capturing sendmail.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{InProcess, LOOPBACK, Notify, cli, config_in, datagram, send, wait_sessions};
use mta_stsd::admin::api::TlsrptAction;
use mta_stsd::admin::client::AdminClient;
use mta_stsd::clock::{Clock, ManualClock, SystemClock};
use mta_stsd::tlsrpt::day::Day;
use mta_stsd_testkit::{HttpResponse, Received, World, free_port};

const SENDER: &str = "organization_name = \"Example Mail\"\ncontact_info = \"postmaster@sender.test\"\nreport_from = \"tlsrpt@sender.test\"\n";

/// A sendmail that keeps each message (and its arguments) in `dir`.
fn capturing_sendmail(dir: &Path) -> PathBuf {
    let script = dir.join("sendmail");
    std::fs::create_dir_all(dir.join("mail")).unwrap();
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nn=$(date +%s%N)\necho \"$@\" > {0}/$n.args\ncat > {0}/$n.eml\n",
            dir.join("mail").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn mails(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir.join("mail"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    names.sort();
    for p in names {
        let args = std::fs::read_to_string(p.with_extension("args")).unwrap();
        out.push((args.trim().to_owned(), std::fs::read_to_string(&p).unwrap()));
    }
    out
}

fn gunzip(bytes: &[u8]) -> serde_json::Value {
    let mut text = String::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_string(&mut text)
        .expect("gzip");
    serde_json::from_str(&text).expect("report JSON")
}

/// The report JSON a mailed report carries (its base64 gzip attachment).
fn attached_report(message: &str) -> serde_json::Value {
    let (_, after) = message
        .split_once("Content-Type: application/tlsrpt+gzip")
        .expect("attachment");
    let (_, body) = after.split_once("\r\n\r\n").expect("attachment body");
    let b64: String = body
        .lines()
        .take_while(|l| !l.starts_with("--"))
        .collect::<Vec<_>>()
        .concat();
    gunzip(&decode_base64(&b64))
}

fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            _ => 63,
        }
    };
    let bytes: Vec<u8> = text.bytes().filter(|b| *b != b'=').collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, c)| n | (value(*c) << (18 - 6 * i)));
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    out
}

fn counts(report: &serde_json::Value) -> (u64, u64) {
    let p = &report["policies"][0]["summary"];
    (
        p["total-successful-session-count"].as_u64().unwrap(),
        p["total-failure-session-count"].as_u64().unwrap(),
    )
}

/// Waits until the daemon has counted `n` datagrams of `result` and holds none in
/// memory only (the metrics say so).
async fn wait_stored(admin: &str, counted: u64, malformed: u64) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let want = [
        format!("mta_stsd_tlsrpt_datagrams_total{{result=\"counted\"}} {counted}"),
        format!("mta_stsd_tlsrpt_datagrams_total{{result=\"malformed\"}} {malformed}"),
        "mta_stsd_tlsrpt_datagrams_unstored 0".to_owned(),
    ];
    for _ in 0..400 {
        if let Ok(r) = client.get(format!("{admin}/metrics")).send().await
            && let Ok(text) = r.text().await
            && want.iter().all(|w| text.lines().any(|l| l == w))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the daemon did not store {counted} datagrams ({want:?})");
}

#[tokio::test]
async fn reports_go_to_every_destination_once_and_survive_restarts() {
    let w = World::start().await;
    reports_host(&w, 503);
    let dir = tempfile::tempdir().unwrap();
    let sendmail = capturing_sendmail(dir.path());
    let socket = dir.path().join("run/tlsrpt/tlsrpt.sock");
    let toml = format!(
        "{LOOPBACK}[tlsrpt]\nenable = true\nsocket = {socket:?}\nsendmail = {sendmail:?}\n{SENDER}"
    );
    let day = Day::parse("2026-12-04").unwrap();
    let clock = ManualClock::new(day.start() + 3600);
    let https_rua = format!("https://reports.test:{}/v1/tlsrpt", w.https.addr().port());
    let good = format!("v=TLSRPTv1; rua=mailto:tlsrpt@bad.test,{https_rua}");
    // A record from anyone: only its plain address may be used.
    let hostile = "v=TLSRPTv1; rua=mailto:a@evil.test?cc=b@evil.test,mailto:x%0d%0aBcc:%20c@evil.test@evil.test,https://127.0.0.1/r";

    let d = InProcess::start(&w, config_in(dir.path(), &toml), Arc::new(clock.clone())).await;
    let admin = d.http.clone().unwrap();
    send(
        &socket,
        &[
            datagram("bad.test", &good, false),
            datagram("bad.test", &good, true),
            datagram("bad.test", &good, true),
            datagram("evil.test", hostile, true),
        ],
    );
    wait_stored(&admin, 4, 0).await;

    // The day is not over: nothing is due, and the admin API refuses a final send.
    let tlsrpt = d.state.tlsrpt.clone().expect("tlsrpt on");
    tlsrpt.send_due().await.unwrap();
    assert!(w.https.received("reports.test").is_empty());
    let client = AdminClient::new(&admin, Duration::from_secs(30)).unwrap();
    let e = client
        .tlsrpt(TlsrptAction::Send, day, false)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not over"), "{e}");

    // After the day and the spread, each destination is tried once: HTTPS fails (503)
    // and waits for its retry; mail is handed to sendmail.
    clock.advance(24 * 3600 + 4 * 3600);
    tlsrpt.send_due().await.unwrap();
    let uploads = w.https.received("reports.test");
    assert_eq!(uploads.len(), 1);
    let mail = mails(dir.path());
    assert_eq!(mail.len(), 2, "one per usable mailto: {mail:?}");
    let (args, bad) = mail
        .iter()
        .find(|(_, m)| m.contains("\r\nTo: tlsrpt@bad.test\r\n"))
        .expect("the report to bad.test");
    assert_eq!(
        args, "-f tlsrpt@sender.test -i -t",
        "the envelope sender is report_from"
    );
    assert!(bad.contains("TLS-Report-Domain: bad.test\r\n"), "{bad}");
    assert!(bad.contains("TLS-Report-Submitter: sender.test\r\n"));
    assert!(bad.contains("Subject: Report Domain: bad.test Submitter: sender.test Report-ID: <"));
    assert!(bad.contains("multipart/report; report-type=\"tlsrpt\""));
    let report = attached_report(bad);
    assert_eq!(counts(&report), (1, 2));
    assert_eq!(report["organization-name"], "Example Mail");
    assert_eq!(
        report["date-range"]["start-datetime"],
        "2026-12-04T00:00:00Z"
    );
    assert_eq!(
        report["policies"][0]["failure-details"][0]["result-type"],
        "certificate-host-mismatch"
    );
    let (_, evil) = mail
        .iter()
        .find(|(_, m)| m.contains("TLS-Report-Domain: evil.test"))
        .expect("the report to evil.test");
    let head = evil.split("\r\n\r\n").next().unwrap();
    assert!(head.contains("\r\nTo: a@evil.test\r\n"), "{head}");
    // No Bcc: header line (a random id in the head may contain the letters "bcc").
    assert!(
        !head
            .split("\r\n")
            .any(|l| l.to_ascii_lowercase().starts_with("bcc:"))
            && !head.contains("b@evil.test"),
        "{head}"
    );

    // The retry after the back-off reaches the now working receiver.
    reports_host(&w, 200);
    clock.advance(299);
    tlsrpt.send_due().await.unwrap();
    assert_eq!(
        w.https.received("reports.test").len(),
        1,
        "not before the back-off"
    );
    clock.advance(1);
    tlsrpt.send_due().await.unwrap();
    let uploads = w.https.received("reports.test");
    assert_eq!(uploads.len(), 2);
    check_upload(&uploads[1], (1, 2));

    // Sent is sent: not again, and not after a restart.
    clock.advance(3 * 3600);
    tlsrpt.send_due().await.unwrap();
    drop(tlsrpt);
    d.shutdown().await;
    let d = InProcess::start(&w, config_in(dir.path(), &toml), Arc::new(clock.clone())).await;
    let tlsrpt = d.state.tlsrpt.clone().expect("tlsrpt on");
    tlsrpt.send_due().await.unwrap();
    assert_eq!(w.https.received("reports.test").len(), 2);
    assert_eq!(mails(dir.path()).len(), 2);
    let client = AdminClient::new(d.http.as_deref().unwrap(), Duration::from_secs(30)).unwrap();
    let view = client.tlsrpt(TlsrptAction::Show, day, false).await.unwrap();
    let bad = view
        .reports
        .iter()
        .find(|r| r.domain == "bad.test")
        .unwrap();
    assert!(bad.deliveries.iter().all(|d| d.state == "sent"), "{bad:?}");
    let evil = view
        .reports
        .iter()
        .find(|r| r.domain == "evil.test")
        .unwrap();
    assert_eq!(evil.refused.len(), 2, "{evil:?}");
    d.shutdown().await;
}

fn check_upload(upload: &Received, expect: (u64, u64)) {
    assert_eq!(upload.method, "POST");
    assert_eq!(upload.path, "/v1/tlsrpt");
    assert_eq!(
        upload.header("content-type"),
        Some("application/tlsrpt+gzip")
    );
    assert_eq!(counts(&gunzip(&upload.body)), expect);
}

/// A daemon process, killed (SIGKILL) when dropped, so that a failing test leaves
/// none behind.
struct Daemon(Child);

impl Daemon {
    fn kill_9(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(config: &Path, notify: &Notify) -> Daemon {
    let mut child = common::bin()
        .args(["serve", "--config"])
        .arg(config)
        .env("NOTIFY_SOCKET", &notify.path)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("daemon: {line}");
        }
    });
    notify.expect("READY=1");
    Daemon(child)
}

/// The daemon as packaged: counts survive kill -9 once stored, bad datagrams are
/// counted and never stop it, and `tlsrpt show` / `tlsrpt send --partial` /
/// `--dry-run` work against it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_keeps_counts_across_kill_9_and_sends_on_request() {
    let w = World::start().await;
    w.dns.set_a("reports.test", std::net::Ipv4Addr::LOCALHOST);
    w.https
        .set_host_response("reports.test", HttpResponse::Policy(String::new()));
    let dir = tempfile::tempdir().unwrap();
    let sendmail = capturing_sendmail(dir.path());
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, w.ca.cert_pem()).unwrap();
    let socket = dir.path().join("run/tlsrpt/tlsrpt.sock");
    let port = free_port();
    let config = dir.path().join("mta-stsd.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n\
             [cache]\npath = {:?}\n[resolver]\nnameservers = [\"{}\"]\n\
             [fetch]\nca_file = {ca:?}\nallow_private_addresses = true\n\
             [tlsrpt]\nenable = true\nsocket = {socket:?}\nsendmail = {sendmail:?}\n{SENDER}",
            dir.path().join("cache"),
            w.dns.addr()
        ),
    )
    .unwrap();
    let admin = format!("http://127.0.0.1:{port}");
    let notify = Notify::new(dir.path());
    let record = format!(
        "v=TLSRPTv1;rua=mailto:tlsrpt@bad.test,https://reports.test:{}/r",
        w.https.addr().port()
    );

    let child = serve(&config, &notify);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660, "socket_mode's default");
    let mut datagrams: Vec<String> = (0..40)
        .map(|i| datagram("bad.test", &record, i % 4 == 0))
        .collect();
    datagrams.extend((0..10).map(|_| datagram("good.test", &record, false)));
    datagrams.push("{not json".into());
    datagrams
        .push(r#"{"d":"x.test","pr":"v=TLSRPTv1;","policies":[{"policy-type":42,"f":0}]}"#.into());
    datagrams.push(format!("{{\"d\":\"{}\"}}", "x".repeat(70_000)));
    send(&socket, &datagrams);
    // The datagram with a policy type this version does not know is counted too.
    wait_stored(&admin, 51, 1).await;
    child.kill_9();

    // The stale socket is replaced; what was stored is all there.
    let child = serve(&config, &notify);
    let today = Day::of(SystemClock.now()).to_string();
    let c = config.to_str().unwrap();
    let (code, out, err) = cli(&["tlsrpt", "show", "--config", c, "--day", &today, "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let view: serde_json::Value = serde_json::from_str(&out).unwrap();
    let by_domain = |d: &str| {
        view["reports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["domain"] == d)
            .map(|r| {
                (
                    r["sessions"].as_u64().unwrap(),
                    r["failures"].as_u64().unwrap(),
                )
            })
    };
    assert_eq!(by_domain("bad.test"), Some((40, 10)));
    assert_eq!(by_domain("good.test"), Some((10, 0)));
    assert_eq!(by_domain("x.test"), Some((1, 0)));
    let (code, text, _) = cli(&["tlsrpt", "show", "--config", c]);
    assert_eq!(code, Some(0));
    assert!(
        text.contains("bad.test: 40 session(s), 10 failed"),
        "{text}"
    );

    // A day not over needs --partial.
    let (code, _, err) = cli(&["tlsrpt", "send", "--config", c, "--day", &today]);
    assert_ne!(code, Some(0));
    assert!(err.contains("--partial"), "{err}");

    // --dry-run writes what would be sent, and sends nothing.
    let files = dir.path().join("dry");
    let (code, out, err) = cli(&[
        "tlsrpt",
        "send",
        "--config",
        c,
        "--day",
        &today,
        "--partial",
        "--dry-run",
        files.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    let written: Vec<String> = std::fs::read_dir(&files)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        written.iter().filter(|f| f.ends_with(".json.gz")).count(),
        2,
        "{written:?}"
    );
    assert_eq!(
        written.iter().filter(|f| f.ends_with(".eml")).count(),
        2,
        "{written:?}"
    );
    let gz = written
        .iter()
        .find(|f| f.starts_with("sender.test!bad.test!") && f.ends_with(".json.gz"))
        .unwrap();
    assert_eq!(
        counts(&gunzip(&std::fs::read(files.join(gz)).unwrap())),
        (30, 10)
    );
    assert!(w.https.received("reports.test").is_empty());
    assert!(mails(dir.path()).is_empty());

    // Sending now: both reports to both destinations.
    let (code, out, err) = cli(&[
        "tlsrpt",
        "send",
        "--config",
        c,
        "--day",
        &today,
        "--partial",
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out.matches(": sent").count(), 4, "{out}");
    let uploads = w.https.received("reports.test");
    assert_eq!(uploads.len(), 2);
    assert!(
        uploads
            .iter()
            .all(|u| u.header("content-type") == Some("application/tlsrpt+gzip"))
    );
    assert_eq!(mails(dir.path()).len(), 2);
    child.kill_9();
}

/// A session Postfix sent under no policy because the published policy could not be
/// used is reported as that policy's failure, with the right RFC 8460 result type;
/// a domain that publishes no policy stays `no-policy-found`. Nothing is counted
/// twice.
#[tokio::test]
async fn policy_failures_mta_stsd_knows_replace_no_policy_sessions() {
    let w = World::start().await;
    w.publish(
        "badcert.test",
        "1",
        &mta_stsd_testkit::policy_text("enforce", &["mx.badcert.test"], 86400),
    );
    w.https
        .set_cert("badcert.test", mta_stsd_testkit::CertKind::WrongName);
    w.publish(
        "invalid.test",
        "1",
        "version: STSv1\nmode: enforce\nmax_age: 86400\n",
    );
    w.dns.set_txt("_mta-sts.down.test", &["v=STSv1; id=1;"]);
    w.point_policy_host("down.test");
    w.https.set_response(
        "down.test",
        HttpResponse::Raw {
            status: 500,
            content_type: None,
            headers: vec![],
            body: vec![],
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("tlsrpt.sock");
    let toml = format!("{LOOPBACK}[tlsrpt]\nenable = true\nsocket = {socket:?}\n{SENDER}");
    let day = Day::parse("2026-12-04").unwrap();
    let clock = ManualClock::new(day.start() + 3600);
    let d = InProcess::start(&w, config_in(dir.path(), &toml), Arc::new(clock.clone())).await;
    for domain in ["badcert.test", "invalid.test", "down.test", "plain.test"] {
        assert_eq!(
            common::ask_once(d.tcp, "postfix", domain).await,
            "NOTFOUND ",
            "{domain}"
        );
    }
    let no_policy = |domain: &str| {
        format!(
            r#"{{"d":"{domain}","pr":"v=TLSRPTv1;rua=mailto:r@{domain}","policies":[{{"policy-type":9,"f":0}}]}}"#
        )
    };
    let datagrams: Vec<String> = [
        "badcert.test",
        "invalid.test",
        "down.test",
        "plain.test",
        "badcert.test",
    ]
    .iter()
    .map(|d| no_policy(d))
    .collect();
    send(&socket, &datagrams);
    wait_stored(d.http.as_deref().unwrap(), 5, 0).await;
    let client = AdminClient::new(d.http.as_deref().unwrap(), Duration::from_secs(30)).unwrap();
    let view = client.tlsrpt(TlsrptAction::Show, day, true).await.unwrap();
    let report = |domain: &str| {
        view.reports
            .iter()
            .find(|r| r.domain == domain)
            .unwrap_or_else(|| panic!("{domain}: {view:?}"))
            .report
            .clone()
    };
    for (domain, result, sessions) in [
        ("badcert.test", "sts-webpki-invalid", 2),
        ("invalid.test", "sts-policy-invalid", 1),
        ("down.test", "sts-policy-fetch-error", 1),
    ] {
        let r = report(domain);
        let p = &r["policies"][0];
        assert_eq!(r["policies"].as_array().unwrap().len(), 1, "{r}");
        assert_eq!(p["policy"]["policy-type"], "sts", "{r}");
        assert_eq!(p["policy"]["policy-domain"], domain);
        assert_eq!(counts(&r), (0, sessions));
        assert_eq!(p["failure-details"][0]["result-type"], result, "{r}");
        assert_eq!(p["failure-details"][0]["failed-session-count"], sessions);
    }
    let plain = report("plain.test");
    assert_eq!(
        plain["policies"][0]["policy"]["policy-type"],
        "no-policy-found"
    );
    assert_eq!(counts(&plain), (1, 0));
    d.shutdown().await;
}

/// Two daemons sharing Redis count together (a datagram counted while Redis is down
/// is added once it is back, never twice) and send each report once, even when the
/// daemon that took a delivery's lease dies before it is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_counts_together_and_sends_each_report_once() {
    assert!(
        mta_stsd_testkit::RedisServer::installed(),
        "this test needs Debian's redis-server (apt-get install redis-server)"
    );
    let port = free_port();
    let mut redis = mta_stsd_testkit::RedisServer::start_on_port(port);
    let w = World::start().await;
    w.dns.set_a("reports.test", std::net::Ipv4Addr::LOCALHOST);
    w.https
        .set_host_response("reports.test", HttpResponse::Policy(String::new()));
    let https_rua = format!("https://reports.test:{}/v1/tlsrpt", w.https.addr().port());
    let record = format!("v=TLSRPTv1; rua=mailto:tlsrpt@bad.test,{https_rua}");
    let mail_dir = tempfile::tempdir().unwrap();
    let sendmail = capturing_sendmail(mail_dir.path());
    let day = Day::parse("2026-12-04").unwrap();
    let clock = ManualClock::new(day.start() + 3600);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let start = |dir: &Path| {
        let socket = dir.join("tlsrpt.sock");
        let toml = format!(
            "{LOOPBACK}[cache]\nbackend = \"redis\"\n[cache.redis]\nurl = \"{}\"\ntimeout = \"2s\"\n\
             [tlsrpt]\nenable = true\nsocket = {socket:?}\nsendmail = {sendmail:?}\n{SENDER}",
            redis.url()
        );
        InProcess::start(&w, config_in(dir, &toml), Arc::new(clock.clone()))
    };
    let a = start(dir_a.path()).await;
    let b = start(dir_b.path()).await;
    let admin_a = AdminClient::new(a.http.as_deref().unwrap(), Duration::from_secs(30)).unwrap();
    send(
        &dir_a.path().join("tlsrpt.sock"),
        &[
            datagram("bad.test", &record, false),
            datagram("bad.test", &record, true),
            datagram("bad.test", &record, true),
        ],
    );
    send(
        &dir_b.path().join("tlsrpt.sock"),
        &[
            datagram("bad.test", &record, false),
            datagram("bad.test", &record, false),
        ],
    );
    wait_sessions(&admin_a, day, "bad.test", 5).await;

    // Redis down (it keeps its data, as a persistent Redis does): A keeps counting on
    // its own and adds what it counted when Redis is back, once.
    assert_eq!(redis.cli(&["SAVE"]), "OK");
    redis.stop();
    send(
        &dir_a.path().join("tlsrpt.sock"),
        &[datagram("bad.test", &record, true)],
    );
    wait_stored(a.http.as_deref().unwrap(), 4, 0).await;
    redis.start();
    wait_sessions(&admin_a, day, "bad.test", 6).await;
    let tlsrpt_a = a.state.tlsrpt.clone().unwrap();
    let tlsrpt_b = b.state.tlsrpt.clone().unwrap();
    tlsrpt_a.sync_fleet().await;
    clock.advance(24 * 3600 + 4 * 3600);
    // B sees the same counts (its first command after Redis restarted may fail and
    // reconnect).
    let admin_b = AdminClient::new(b.http.as_deref().unwrap(), Duration::from_secs(30)).unwrap();
    wait_sessions(&admin_b, day, "bad.test", 6).await;
    let view = admin_a
        .tlsrpt(TlsrptAction::Show, day, false)
        .await
        .unwrap();
    assert_eq!(view.reports.len(), 1, "one report for the fleet: {view:?}");
    assert_eq!((view.reports[0].sessions, view.reports[0].failures), (6, 3));
    let report_id = view.reports[0].id.clone();

    // A batch replayed after a crash (applied, but not yet removed from the outbox) is
    // not added again.
    let fleet = mta_stsd::tlsrpt::ledger::FleetReports::new(
        a.service.shared().unwrap().redis().clone(),
        10,
    );
    let mut batch = mta_stsd::tlsrpt::counts::Tally::default();
    let other = "v=TLSRPTv1; rua=ftp://nowhere.test/";
    batch.add(
        day,
        &mta_stsd::tlsrpt::datagram::parse(datagram("replay.test", other, false).as_bytes())
            .unwrap(),
    );
    assert!(fleet.apply("replay-1", &batch).await.unwrap());
    assert!(!fleet.apply("replay-1", &batch).await.unwrap());
    let replayed = fleet.day(day).await.unwrap();
    let (_, policies) = replayed
        .iter()
        .find(|(g, _)| g.domain == "replay.test")
        .unwrap();
    assert_eq!(policies[0].1.sessions, 1);

    // A daemon that died while sending left its lease on the HTTPS delivery: the
    // others skip that delivery until the lease expires, then one of them sends it.
    let lease = format!("mta-stsd:tlsrpt:lease:{report_id}:{https_rua}");
    assert_eq!(
        redis.cli(&["SET", &lease, "dead-daemon", "PX", "1500"]),
        "OK"
    );
    let (ra, rb) = tokio::join!(tlsrpt_a.send_due(), tlsrpt_b.send_due());
    ra.unwrap();
    rb.unwrap();
    assert_eq!(mails(mail_dir.path()).len(), 1, "one mail from the fleet");
    assert!(
        w.https.received("reports.test").is_empty(),
        "the lease holds"
    );
    while redis.cli(&["EXISTS", &lease]) == "1" {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ra, rb) = tokio::join!(tlsrpt_a.send_due(), tlsrpt_b.send_due());
    ra.unwrap();
    rb.unwrap();
    let uploads = w.https.received("reports.test");
    assert_eq!(uploads.len(), 1, "one upload from the fleet");
    check_upload(&uploads[0], (3, 3));
    let (ra, rb) = tokio::join!(tlsrpt_a.send_due(), tlsrpt_b.send_due());
    ra.unwrap();
    rb.unwrap();
    assert_eq!(w.https.received("reports.test").len(), 1);
    assert_eq!(mails(mail_dir.path()).len(), 1);
    drop((tlsrpt_a, tlsrpt_b));
    a.shutdown().await;
    b.shutdown().await;
}

/// Uploads go through the policy fetcher's HTTPS client: with
/// `allow_private_addresses = false` (the default) a `rua` host that resolves only to
/// a private address is refused, as a policy host would be, and nothing is sent.
#[tokio::test]
async fn uploads_to_private_addresses_are_refused_by_default() {
    let w = World::start().await;
    w.dns.set_a("reports.test", std::net::Ipv4Addr::LOCALHOST);
    w.https
        .set_host_response("reports.test", HttpResponse::Policy(String::new()));
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("tlsrpt.sock");
    let toml = format!("{LOOPBACK}[tlsrpt]\nenable = true\nsocket = {socket:?}\n{SENDER}");
    let day = Day::parse("2026-12-04").unwrap();
    let clock = ManualClock::new(day.start() + 3600);
    let mut options = common::options(&w);
    options.fetch.allow_private_addresses = false;
    let daemon = mta_stsd::server::daemon::Daemon::build(
        config_in(dir.path(), &toml),
        options,
        Arc::new(clock.clone()),
    )
    .await
    .unwrap();
    let tlsrpt = daemon.state.tlsrpt.clone().unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let admin = format!("http://{}", daemon.metrics_addr().unwrap());
    let task = tokio::spawn(daemon.run(async {
        let _ = rx.await;
    }));
    let record = format!(
        "v=TLSRPTv1; rua=https://reports.test:{}/v1/tlsrpt",
        w.https.addr().port()
    );
    send(&socket, &[datagram("bad.test", &record, true)]);
    wait_stored(&admin, 1, 0).await;
    clock.advance(24 * 3600 + 4 * 3600);
    let outcomes = tlsrpt.send_now(day, false).await.unwrap();
    let (_, delivery) = &outcomes[0].destinations[0];
    let delivery = delivery.as_ref().unwrap();
    assert_eq!(delivery.state, mta_stsd::tlsrpt::schedule::State::Pending);
    let error = delivery.last_error.as_deref().unwrap();
    assert!(error.contains("non-public"), "{error}");
    assert!(w.https.received("reports.test").is_empty());
    drop(tlsrpt);
    let _ = stop.send(());
    task.await.unwrap();
}

/// A TLSRPT store that fails while `broken` is set, around a real one: how the
/// collector survives a failing disk.
struct Flaky {
    inner: mta_stsd::tlsrpt::store::SledReports,
    broken: std::sync::atomic::AtomicBool,
    /// Calls refused while broken.
    refused: std::sync::atomic::AtomicUsize,
}

impl Flaky {
    fn check(&self) -> Result<(), mta_stsd::storage::StoreError> {
        if self.broken.load(std::sync::atomic::Ordering::SeqCst) {
            self.refused
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(mta_stsd::storage::StoreError::Backend(
                mta_stsd::storage::Store::Reports,
                "disk on fire".into(),
            ))
        } else {
            Ok(())
        }
    }
}

impl mta_stsd::tlsrpt::store::ReportStore for Flaky {
    fn add(
        &self,
        t: &mta_stsd::tlsrpt::counts::Tally,
    ) -> Result<(), mta_stsd::storage::StoreError> {
        self.check()?;
        self.inner.add(t)
    }
    fn days(&self) -> Result<Vec<Day>, mta_stsd::storage::StoreError> {
        self.inner.days()
    }
    fn day(
        &self,
        d: Day,
    ) -> Result<mta_stsd::tlsrpt::store::DayCounts, mta_stsd::storage::StoreError> {
        self.inner.day(d)
    }
    fn delivery(
        &self,
        d: Day,
        r: &str,
        dest: &str,
    ) -> Result<Option<mta_stsd::tlsrpt::schedule::Delivery>, mta_stsd::storage::StoreError> {
        self.inner.delivery(d, r, dest)
    }
    fn set_delivery(
        &self,
        d: Day,
        r: &str,
        dest: &str,
        x: &mta_stsd::tlsrpt::schedule::Delivery,
    ) -> Result<(), mta_stsd::storage::StoreError> {
        self.inner.set_delivery(d, r, dest, x)
    }
    fn deliveries(
        &self,
        d: Day,
    ) -> Result<
        Vec<(String, String, mta_stsd::tlsrpt::schedule::Delivery)>,
        mta_stsd::storage::StoreError,
    > {
        self.inner.deliveries(d)
    }
    fn prune_before(&self, d: Day) -> Result<usize, mta_stsd::storage::StoreError> {
        self.inner.prune_before(d)
    }
    fn flush(&self) -> Result<(), mta_stsd::storage::StoreError> {
        self.check()?;
        self.inner.flush()
    }
    fn outbox_add(
        &self,
        t: &mta_stsd::tlsrpt::counts::Tally,
    ) -> Result<(), mta_stsd::storage::StoreError> {
        self.check()?;
        self.inner.outbox_add(t)
    }
    fn outbox(
        &self,
        max: usize,
    ) -> Result<Vec<(u64, String, mta_stsd::tlsrpt::counts::Tally)>, mta_stsd::storage::StoreError>
    {
        self.inner.outbox(max)
    }
    fn outbox_remove(&self, key: u64) -> Result<(), mta_stsd::storage::StoreError> {
        self.inner.outbox_remove(key)
    }
    fn outbox_len(&self) -> usize {
        self.inner.outbox_len()
    }
    fn node(&self) -> String {
        self.inner.node()
    }
    fn cuts(
        &self,
        d: Day,
    ) -> Result<Vec<mta_stsd::tlsrpt::period::Cut>, mta_stsd::storage::StoreError> {
        self.inner.cuts(d)
    }
    fn add_cut(
        &self,
        d: Day,
        c: &mta_stsd::tlsrpt::period::Cut,
    ) -> Result<(), mta_stsd::storage::StoreError> {
        self.check()?;
        self.inner.add_cut(d, c)
    }
}

/// While the TLSRPT store fails, datagrams are still counted (in memory) and the
/// socketmap keeps answering; when it works again, every count is stored once.
#[tokio::test]
async fn a_failing_tlsrpt_store_keeps_counts_in_memory_until_it_works() {
    let w = World::start().await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("tlsrpt.sock");
    let toml = format!("{LOOPBACK}[tlsrpt]\nenable = true\nsocket = {socket:?}\n{SENDER}");
    let day = Day::parse("2026-12-04").unwrap();
    let clock = ManualClock::new(day.start() + 3600);
    let flaky = Arc::new(Flaky {
        inner: mta_stsd::tlsrpt::store::SledReports::open(&dir.path().join("reports")).unwrap(),
        broken: std::sync::atomic::AtomicBool::new(true),
        refused: std::sync::atomic::AtomicUsize::new(0),
    });
    let parts = mta_stsd::server::daemon::Parts {
        tlsrpt_store: Some(flaky.clone()),
        ..Default::default()
    };
    let daemon = mta_stsd::server::daemon::Daemon::build_with(
        config_in(dir.path(), &toml),
        common::options(&w),
        Arc::new(clock.clone()),
        parts,
    )
    .await
    .unwrap();
    let tcp = daemon.tcp_addrs()[0];
    let admin = format!("http://{}", daemon.metrics_addr().unwrap());
    let tlsrpt = daemon.state.tlsrpt.clone().unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(daemon.run(async {
        let _ = rx.await;
    }));
    let record = "v=TLSRPTv1;rua=mailto:r@bad.test";
    send(
        &socket,
        &[
            datagram("bad.test", record, false),
            datagram("bad.test", record, true),
        ],
    );
    // Counted, not stored: the store refuses two half-second rounds.
    while flaky.refused.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        mta_stsd::tlsrpt::store::ReportStore::day(&*flaky, day)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        common::ask_once(tcp, "postfix", "[192.0.2.1]").await,
        "NOTFOUND "
    );
    send(&socket, &[datagram("bad.test", record, true)]);
    flaky
        .broken
        .store(false, std::sync::atomic::Ordering::SeqCst);
    wait_stored(&admin, 3, 0).await;
    let groups = mta_stsd::tlsrpt::store::ReportStore::day(&*flaky, day).unwrap();
    let c = &groups[0].1[0].1;
    assert_eq!((c.sessions, c.failures), (3, 2), "every count stored once");
    drop(tlsrpt);
    let _ = stop.send(());
    task.await.unwrap();
}

/// What a receiving domain that drops repeated report ids (RFC 8460 §4.4) counts from
/// the reports it got: (successful, failed) sessions, and the ids it kept.
fn receiver_sums(uploads: &[Received]) -> ((u64, u64), Vec<String>) {
    let mut seen = std::collections::BTreeSet::new();
    let mut sums = (0, 0);
    for u in uploads {
        let report = gunzip(&u.body);
        let id = report["report-id"].as_str().unwrap().to_owned();
        if seen.insert(id) {
            for p in report["policies"].as_array().unwrap() {
                sums.0 += p["summary"]["total-successful-session-count"]
                    .as_u64()
                    .unwrap();
                sums.1 += p["summary"]["total-failure-session-count"]
                    .as_u64()
                    .unwrap();
            }
        }
    }
    (sums, seen.into_iter().collect())
}

/// reports.test on loopback, answering every upload with `status`.
fn reports_host(w: &World, status: u16) {
    w.dns.set_a("reports.test", std::net::Ipv4Addr::LOCALHOST);
    w.https.set_host_response(
        "reports.test",
        HttpResponse::Raw {
            status,
            content_type: None,
            headers: vec![],
            body: vec![],
        },
    );
}

fn https_ok(w: &World) {
    reports_host(w, 200);
}

/// `tlsrpt send --partial` closes a period: its report ends when it was cut, a second
/// one with nothing new sends nothing, `show` closes nothing, and the day's final
/// report starts where the last partial one ended. A receiver that adds up distinct
/// report ids counts every session exactly once.
#[tokio::test]
async fn partial_sends_close_periods_and_no_session_is_counted_twice() {
    let w = World::start().await;
    https_ok(&w);
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("tlsrpt.sock");
    let toml = format!("{LOOPBACK}[tlsrpt]\nenable = true\nsocket = {socket:?}\n{SENDER}");
    let day = Day::parse("2026-12-04").unwrap();
    let clock = ManualClock::new(day.start() + 3600);
    let record = format!(
        "v=TLSRPTv1; rua=https://reports.test:{}/r",
        w.https.addr().port()
    );
    let d = InProcess::start(&w, config_in(dir.path(), &toml), Arc::new(clock.clone())).await;
    let admin = d.http.clone().unwrap();
    let client = AdminClient::new(&admin, Duration::from_secs(30)).unwrap();
    let batch = |ok: usize, failed: usize| -> Vec<String> {
        (0..ok)
            .map(|_| datagram("bad.test", &record, false))
            .chain((0..failed).map(|_| datagram("bad.test", &record, true)))
            .collect()
    };

    send(&socket, &batch(3, 2));
    wait_stored(&admin, 5, 0).await;
    let first_cut = clock.now();
    let sent = client.tlsrpt(TlsrptAction::Send, day, true).await.unwrap();
    assert_eq!(sent.reports.len(), 1);
    let uploads = w.https.received("reports.test");
    assert_eq!(uploads.len(), 1);
    let first = gunzip(&uploads[0].body);
    assert_eq!(counts(&first), (3, 2));
    assert_eq!(
        first["date-range"]["start-datetime"],
        "2026-12-04T00:00:00Z"
    );
    assert_eq!(first["date-range"]["end-datetime"], "2026-12-04T01:00:00Z");

    // Nothing new: a second partial send sends nothing.
    clock.advance(60);
    let again = client.tlsrpt(TlsrptAction::Send, day, true).await.unwrap();
    assert!(again.reports.is_empty(), "{again:?}");
    assert_eq!(w.https.received("reports.test").len(), 1);

    // `show` (and the dry run's view) look without closing anything.
    send(&socket, &batch(4, 0));
    wait_stored(&admin, 9, 0).await;
    clock.advance(60);
    let shown = client.tlsrpt(TlsrptAction::Show, day, true).await.unwrap();
    let open: Vec<_> = shown.reports.iter().filter(|r| r.sessions == 4).collect();
    assert_eq!(open.len(), 1, "the open period so far: {shown:?}");
    let _ = client.tlsrpt(TlsrptAction::Files, day, true).await.unwrap();
    let second_cut = clock.now();
    client.tlsrpt(TlsrptAction::Send, day, true).await.unwrap();
    let uploads = w.https.received("reports.test");
    assert_eq!(uploads.len(), 2);
    let second = gunzip(&uploads[1].body);
    assert_eq!(
        counts(&second),
        (4, 0),
        "only what came after the first cut"
    );
    assert_eq!(
        second["date-range"]["start-datetime"],
        mta_stsd::tlsrpt::day::rfc3339(first_cut + 1)
    );
    assert_eq!(
        second["date-range"]["end-datetime"],
        mta_stsd::tlsrpt::day::rfc3339(second_cut)
    );

    // The rest of the day goes out as the day's final report, from the last cut on.
    send(&socket, &batch(1, 2));
    wait_stored(&admin, 12, 0).await;
    let tlsrpt = d.state.tlsrpt.clone().expect("tlsrpt on");
    clock.advance(24 * 3600 + 4 * 3600);
    tlsrpt.send_due().await.unwrap();
    let uploads = w.https.received("reports.test");
    assert_eq!(uploads.len(), 3);
    let last = gunzip(&uploads[2].body);
    assert_eq!(counts(&last), (1, 2));
    assert_eq!(
        last["date-range"]["start-datetime"],
        mta_stsd::tlsrpt::day::rfc3339(second_cut + 1)
    );
    assert_eq!(last["date-range"]["end-datetime"], "2026-12-04T23:59:59Z");
    // And nothing is sent twice afterwards.
    clock.advance(3 * 3600);
    tlsrpt.send_due().await.unwrap();
    assert_eq!(w.https.received("reports.test").len(), 3);

    let (sums, ids) = receiver_sums(&w.https.received("reports.test"));
    assert_eq!(ids.len(), 3, "three distinct report ids");
    assert_eq!(sums, (8, 4), "every session once: 12 datagrams");
    drop(tlsrpt);
    d.shutdown().await;
}

/// Two MTAs of one organisation, each with its own daemon and no shared Redis, report
/// the same domain and day: their reports have different ids (and file names), so a
/// receiver keeps both and counts every session once.
#[tokio::test]
async fn two_daemons_without_redis_send_reports_with_distinct_ids() {
    let w = World::start().await;
    https_ok(&w);
    let day = Day::parse("2026-12-04").unwrap();
    let clock = ManualClock::new(day.start() + 3600);
    let record = format!(
        "v=TLSRPTv1; rua=https://reports.test:{}/r",
        w.https.addr().port()
    );
    let mut daemons = Vec::new();
    let mut dirs = Vec::new();
    for (ok, failed) in [(5, 1), (2, 3)] {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("tlsrpt.sock");
        let toml = format!("{LOOPBACK}[tlsrpt]\nenable = true\nsocket = {socket:?}\n{SENDER}");
        let d = InProcess::start(&w, config_in(dir.path(), &toml), Arc::new(clock.clone())).await;
        let datagrams: Vec<String> = (0..ok)
            .map(|_| datagram("bad.test", &record, false))
            .chain((0..failed).map(|_| datagram("bad.test", &record, true)))
            .collect();
        send(&socket, &datagrams);
        wait_stored(d.http.as_deref().unwrap(), (ok + failed) as u64, 0).await;
        daemons.push(d);
        dirs.push(dir);
    }
    clock.advance(24 * 3600 + 4 * 3600);
    for d in &daemons {
        d.state.tlsrpt.clone().unwrap().send_due().await.unwrap();
    }
    let uploads = w.https.received("reports.test");
    assert_eq!(uploads.len(), 2);
    let (sums, ids) = receiver_sums(&uploads);
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_eq!(sums, (7, 4));
    for d in daemons {
        d.shutdown().await;
    }
}

/// By default mailed reports are submitted by SMTP to the local MTA (no setgid
/// program, so it works under the packaged unit's NoNewPrivileges=yes): the envelope
/// sender is `report_from` and the message arrives whole (dot-stuffing undone by the
/// receiver).
#[tokio::test]
async fn mailed_reports_are_submitted_by_smtp_with_the_report_sender() {
    let w = World::start().await;
    let dir = tempfile::tempdir().unwrap();
    let received = dir.path().join("received");
    std::fs::create_dir_all(&received).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mta = listener.local_addr().unwrap();
    let _receiver = mta_stsd_testkit::smtp::serve_smtp(listener, None, received.clone());
    let socket = dir.path().join("tlsrpt.sock");
    let toml = format!(
        "{LOOPBACK}[tlsrpt]\nenable = true\nsocket = {socket:?}\nsmtp = \"{mta}\"\n{SENDER}"
    );
    let day = Day::parse("2026-12-04").unwrap();
    let clock = ManualClock::new(day.start() + 3600);
    let d = InProcess::start(&w, config_in(dir.path(), &toml), Arc::new(clock.clone())).await;
    let admin = d.http.clone().unwrap();
    let record = "v=TLSRPTv1; rua=mailto:tlsrpt@bad.test";
    send(
        &socket,
        &[
            datagram("bad.test", record, false),
            datagram("bad.test", record, true),
        ],
    );
    wait_stored(&admin, 2, 0).await;
    let tlsrpt = d.state.tlsrpt.clone().expect("tlsrpt on");
    clock.advance(24 * 3600 + 4 * 3600);
    tlsrpt.send_due().await.unwrap();
    let eml = std::fs::read_dir(&received)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "eml"))
        .expect("a mail reached the MTA");
    assert!(
        eml.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("tlsrpt@bad.test.")
    );
    assert_eq!(
        std::fs::read_to_string(eml.with_extension("from")).unwrap(),
        "tlsrpt@sender.test"
    );
    let message = std::fs::read_to_string(&eml).unwrap();
    assert!(message.contains("TLS-Report-Submitter: sender.test\r\n"));
    assert_eq!(counts(&attached_report(&message)), (1, 1));
    let client = AdminClient::new(&admin, Duration::from_secs(30)).unwrap();
    let view = client.tlsrpt(TlsrptAction::Show, day, false).await.unwrap();
    assert_eq!(view.reports[0].deliveries[0].state, "sent");
    drop(tlsrpt);
    d.shutdown().await;
}

/// HTTPS uploads follow a 307/308 redirect to another `https:` host (same method, same
/// body), never to another scheme; a permanent refusal (4xx other than 408/429) gives
/// the delivery up at once instead of retrying it for a day, while a 503 is retried.
#[tokio::test]
async fn uploads_follow_safe_redirects_and_give_up_on_permanent_refusals() {
    let w = World::start().await;
    let port = w.https.addr().port();
    let raw = |status: u16, location: Option<String>| HttpResponse::Raw {
        status,
        content_type: None,
        headers: location
            .map(|l| vec![("Location".to_owned(), l)])
            .unwrap_or_default(),
        body: vec![],
    };
    for (host, response) in [
        (
            "moved.test",
            raw(308, Some(format!("https://final.test:{port}/in"))),
        ),
        (
            "temp.test",
            raw(307, Some(format!("https://final.test:{port}/in"))),
        ),
        ("final.test", raw(200, None)),
        (
            "plain.test",
            raw(307, Some(format!("http://final.test:{port}/in"))),
        ),
        ("gone.test", raw(404, None)),
        ("busy.test", raw(503, None)),
        ("slow.test", raw(429, None)),
    ] {
        w.dns.set_a(host, std::net::Ipv4Addr::LOCALHOST);
        w.https.set_host_response(host, response);
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("tlsrpt.sock");
    let toml = format!("{LOOPBACK}[tlsrpt]\nenable = true\nsocket = {socket:?}\n{SENDER}");
    let day = Day::parse("2026-12-04").unwrap();
    let clock = ManualClock::new(day.start() + 3600);
    let d = InProcess::start(&w, config_in(dir.path(), &toml), Arc::new(clock.clone())).await;
    let admin = d.http.clone().unwrap();
    let domains = ["moved", "temp", "plain", "gone", "busy", "slow"];
    let datagrams: Vec<String> = domains
        .iter()
        .map(|d| {
            let record = format!("v=TLSRPTv1; rua=https://{d}.test:{port}/r");
            datagram(&format!("{d}.example"), &record, false)
        })
        .collect();
    send(&socket, &datagrams);
    wait_stored(&admin, domains.len() as u64, 0).await;
    clock.advance(24 * 3600 + 4 * 3600);
    let tlsrpt = d.state.tlsrpt.clone().expect("tlsrpt on");
    tlsrpt.send_due().await.unwrap();

    let at_final = w.https.received("final.test");
    assert_eq!(at_final.len(), 2, "308 and 307 followed, http: not");
    for r in &at_final {
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/in"));
        assert_eq!(r.header("content-type"), Some("application/tlsrpt+gzip"));
        assert_eq!(counts(&gunzip(&r.body)), (1, 0));
    }
    let client = AdminClient::new(&admin, Duration::from_secs(30)).unwrap();
    let view = client.tlsrpt(TlsrptAction::Show, day, false).await.unwrap();
    let state = |domain: &str| {
        let r = view
            .reports
            .iter()
            .find(|r| r.domain == format!("{domain}.example"))
            .unwrap();
        let d = &r.deliveries[0];
        (
            d.state.clone(),
            d.attempts,
            d.last_error.clone().unwrap_or_default(),
        )
    };
    assert_eq!(state("moved").0, "sent");
    assert_eq!(state("temp").0, "sent");
    let (s, n, e) = state("plain");
    assert_eq!((s.as_str(), n), ("gave_up", 1), "{e}");
    assert!(e.contains("redirect") && e.contains("not https"), "{e}");
    let (s, n, e) = state("gone");
    assert_eq!((s.as_str(), n), ("gave_up", 1), "{e}");
    assert!(e.contains("404"), "{e}");
    assert_eq!(state("busy").0, "pending");
    assert_eq!(state("slow").0, "pending", "429 asks to come back later");
    drop(tlsrpt);
    d.shutdown().await;
}

async fn metric(admin: &str, name: &str) -> f64 {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let text = client
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1.0)
}

/// A damaged report store is never silently empty (tried as an administrator would:
/// 20 flipped bits in, or a truncation of, the store's sled file). The daemon starts
/// and serves; if anything was lost, the loss is logged, counted in a metric and shown
/// by `tlsrpt show`, what could be read is kept, and the damaged store is moved aside.
/// (Two worker threads: the test's blocking sends fill the socket's queue, which the
/// daemon empties on another thread.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_report_store_is_never_silently_short() {
    let w = World::start().await;
    let day = Day::parse("2026-12-04").unwrap();
    let record = "v=TLSRPTv1; rua=mailto:tlsrpt@x.test";
    let domains = 200u64;
    let mut detected = 0;
    for (seed, damage) in [(1u64, "flip"), (2, "flip"), (3, "truncate")] {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("tlsrpt.sock");
        let toml = format!("{LOOPBACK}[tlsrpt]\nenable = true\nsocket = {socket:?}\n{SENDER}");
        let clock = ManualClock::new(day.start() + 3600);
        let d = InProcess::start(&w, config_in(dir.path(), &toml), Arc::new(clock.clone())).await;
        let admin = d.http.clone().unwrap();
        let datagrams: Vec<String> = (0..domains)
            .map(|i| datagram(&format!("d{i}.test"), record, i % 3 == 0))
            .collect();
        send(&socket, &datagrams);
        wait_stored(&admin, domains, 0).await;
        d.shutdown().await;

        // The damage, to sled's data file.
        let store = dir.path().join("cache-tlsrpt");
        let db = store.join("db");
        let mut bytes = std::fs::read(&db).unwrap();
        let len = bytes.len();
        if damage == "flip" {
            let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            for _ in 0..20 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                bytes[(x as usize) % len] ^= 1 << (x % 8);
            }
        } else {
            bytes.truncate(len / 2);
        }
        std::fs::write(&db, bytes).unwrap();

        let d = InProcess::start(&w, config_in(dir.path(), &toml), Arc::new(clock.clone())).await;
        let admin = d.http.clone().unwrap();
        // The socketmap still answers.
        assert!(
            common::ask_once(d.tcp, "postfix", "[192.0.2.1]")
                .await
                .starts_with("NOTFOUND")
        );
        let client = AdminClient::new(&admin, Duration::from_secs(30)).unwrap();
        let view = client.tlsrpt(TlsrptAction::Show, day, true).await.unwrap();
        let sessions: u64 = view.reports.iter().map(|r| r.sessions).sum();
        let lost = metric(&admin, "mta_stsd_tlsrpt_store_lost_entries").await;
        eprintln!(
            "{damage} {seed}: {sessions} of {domains} sessions kept; {lost} entries reported lost: {:?}",
            view.store_damage
        );
        if sessions < domains {
            let damage_text = view.store_damage.clone().unwrap_or_else(|| {
                panic!(
                    "{damage} {seed}: {sessions} of {domains} sessions left, and nothing says so"
                )
            });
            assert!(lost > 0.0, "{damage} {seed}: metric {lost}");
            assert!(damage_text.contains("moved to"), "{damage_text}");
            let aside: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with("cache-tlsrpt.broken-")
                })
                .collect();
            assert_eq!(
                aside.len(),
                1,
                "{damage} {seed}: the damaged store is kept aside"
            );
            let (code, text, err) =
                cli(&["tlsrpt", "show", "--admin", &admin, "--day", "2026-12-04"]);
            assert_eq!(code, Some(0), "{err}");
            assert!(
                text.starts_with("warning: the TLSRPT report store"),
                "{text}"
            );
            detected += 1;
        } else {
            assert_eq!(sessions, domains);
        }
        // What is left is usable: new datagrams are counted and stored.
        send(&socket, &[datagram("after.test", record, false)]);
        wait_stored(&admin, 1, 0).await;
        let view = client.tlsrpt(TlsrptAction::Show, day, true).await.unwrap();
        assert!(view.reports.iter().any(|r| r.domain == "after.test"));
        d.shutdown().await;
    }
    assert!(
        detected >= 1,
        "the truncation at least must lose (and report) entries"
    );
}
