//! The `mta-stsd` binary itself: `query` and `check-config`, against the loopback world.

mod common;

use std::net::Ipv4Addr;
use std::process::Command;

use common::ENFORCE;
use mta_stsd_testkit::{TestHttps, World};

fn bin() -> Command {
    common::bin()
}

fn write_config(dir: &tempfile::TempDir, body: &str) -> std::path::PathBuf {
    let path = dir.path().join("mta-stsd.toml");
    std::fs::write(&path, body).unwrap();
    path
}

/// Runs `mta-stsd query` off the async runtime, so the in-process servers keep serving.
async fn run_query(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || bin().arg("query").args(args).output().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_explains_no_policy_skip_and_refused_host() {
    let w = World::start().await;
    w.publish("internal.example", "1", ENFORCE);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        &dir,
        &format!(
            "[resolver]\nnameservers = [\"{}\"]\ntimeout = \"1s\"\n",
            w.dns.addr()
        ),
    );
    let cfg = cfg.to_str().unwrap().to_owned();

    let out = run_query(vec!["nopolicy.example".into(), "-c".into(), cfg.clone()]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("NXDOMAIN"), "{text}");
    assert!(text.contains("reply:      \"NOTFOUND \""), "{text}");

    let out = run_query(vec!["[192.0.2.1]:25".into(), "-c".into(), cfg.clone()]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("IP address literal"));

    // The policy host is on loopback and private addresses are not allowed by default.
    let out = run_query(vec![
        "internal.example".into(),
        "--json".into(),
        "-c".into(),
        cfg,
    ])
    .await;
    assert_eq!(out.status.code(), Some(3));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["outcome"], "error");
    assert_eq!(json["fetch_error"]["class"], "private_address");
    assert_eq!(json["txt"]["record"]["id"], "1");
    assert_eq!(json["reply"], "NOTFOUND ");
}

/// The full path through the binary, with the policy server on port 443 of a private
/// loopback address. Binding port 443 needs root (as in CI); elsewhere it is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_finds_an_enforced_policy_on_port_443() {
    let ip = Ipv4Addr::new(127, 84, 61, 1);
    let listener = match tokio::net::TcpListener::bind((ip, 443)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("skipped: cannot bind {ip}:443 ({e}); run as root to include this test");
            return;
        }
    };
    let w = World::start().await;
    let https = TestHttps::serve(w.ca.clone(), listener);
    w.dns
        .set_txt("_mta-sts.port443.example", &["v=STSv1; id=443"]);
    w.dns.set_a("mta-sts.port443.example", ip);
    https.set_policy("port443.example", ENFORCE);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, w.ca.cert_pem()).unwrap();
    let cfg = write_config(
        &dir,
        &format!(
            "[resolver]\nnameservers = [\"{}\"]\n[fetch]\nca_file = \"{}\"\nallow_private_addresses = true\n",
            w.dns.addr(),
            ca.display()
        ),
    );
    let out = run_query(vec![
        "port443.example".into(),
        "-c".into(),
        cfg.to_str().unwrap().into(),
    ])
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(
            "reply:      \"OK secure match=mx1.example.com:.example.net servername=hostname\""
        ),
        "{text}"
    );
    assert!(
        text.contains("mode:       enforce; mx: mx1.example.com, *.example.net"),
        "{text}"
    );
    assert_eq!(https.hits("port443.example"), 1);

    // The same policy as each MTA gets it: Exim's key=value words, Sendmail's
    // Postfix-style reply (its map name "sts").
    let as_mta = |mta: &str| {
        run_query(vec![
            "port443.example".into(),
            "--mta".into(),
            mta.into(),
            "--json".into(),
            "-c".into(),
            cfg.to_str().unwrap().into(),
        ])
    };
    let json: serde_json::Value = serde_json::from_slice(&as_mta("exim").await.stdout).unwrap();
    assert_eq!(
        json["reply"],
        "mode=secure hosts=^(?i)mx1[.]example[.]com$:^(?i)[^.]+[.]example[.]net$"
    );
    let json: serde_json::Value = serde_json::from_slice(&as_mta("sendmail").await.stdout).unwrap();
    assert_eq!(
        json["reply"],
        "OK secure match=mx1.example.com:.example.net servername=hostname"
    );
    let out = run_query(vec![
        "port443.example".into(),
        "--mta".into(),
        "exim".into(),
        "--zone".into(),
        "postfix".into(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(2), "--mta and --zone conflict");
}

#[test]
fn check_config_accepts_the_example_and_rejects_typos() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/mta-stsd.toml");
    let out = bin().args(["check-config", example]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = write_config(&dir, "[fetch]\ntimout = \"1s\"\n");
    let out = bin().arg("check-config").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("timout"));
}

/// `check-config` runs the checks `serve` runs, settings and files alike, and reports
/// every problem at once, each line naming the file; `--config F` works as for the
/// other commands.
#[test]
fn check_config_reports_every_problem_serve_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let empty_ca = dir.path().join("empty.pem");
    std::fs::write(&empty_ca, "").unwrap();
    let bad = write_config(
        &dir,
        &format!(
            "[server]\nlisten = [\"127.0.0.1:8461\", \"127.0.0.1:8461\"]\n\
             [metrics]\nlisten = \"127.0.0.1:8461\"\n\
             [log]\nlevel = \"warning\"\n\
             [fetch]\nca_file = {empty_ca:?}\n"
        ),
    );
    for args in [
        vec!["check-config".into(), bad.display().to_string()],
        vec![
            "check-config".into(),
            "--config".into(),
            bad.display().to_string(),
        ],
    ] {
        let out = bin().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        for setting in [
            "server.listen",
            "metrics.listen",
            "log.level",
            "fetch.ca_file",
        ] {
            assert!(
                err.contains(&format!("invalid setting {setting}:")),
                "{setting}: {err}"
            );
        }
        let name = bad.display().to_string();
        assert!(
            err.lines().all(|l| l.contains(&name)),
            "every line names the file: {err}"
        );
        // And `serve` refuses the same file.
        let serve = bin()
            .args(["serve", "--config"])
            .arg(&bad)
            .output()
            .unwrap();
        assert!(!serve.status.success());
    }
}

/// A reader that goes away early (`mta-stsd doctor --json | head -c 10`) ends the
/// command quietly, as SIGPIPE would (status 141), never with a panic (101).
#[test]
fn a_reader_that_goes_away_early_is_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        &dir,
        &format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[metrics]\nlisten = \"\"\n[cache]\npath = {:?}\n",
            dir.path().join("cache")
        ),
    );
    for args in [
        vec!["doctor", "--json", "--config", config.to_str().unwrap()],
        vec!["check-config", config.to_str().unwrap()],
    ] {
        // A pipe whose read end is already closed: the first write fails (EPIPE).
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = bin().args(&args).stdout(writer).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(141), "{args:?}: {err}");
    }
}

/// `check` with something that is not a domain is a usage error (64), said in one
/// line that names what was meant, not a finding (2) about a domain.
#[test]
fn check_with_an_address_or_an_ip_is_a_usage_error() {
    for (arg, hint) in [
        ("postmaster@good.test", Some("did you mean good.test?")),
        ("127.0.0.1", None),
    ] {
        let out = bin().args(["check", arg]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{arg}: {err}");
        assert!(err.contains("is not a domain name"), "{err}");
        if let Some(h) = hint {
            assert!(err.contains(h), "{err}");
        }
        assert!(out.stdout.is_empty(), "no report for a non-domain");
    }
}
