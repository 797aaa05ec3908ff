//! `mta-stsd check DOMAIN` against the testkit's DNS, HTTPS and STARTTLS SMTP servers:
//! each seed document's own example, and each fault the online validators report (and
//! some they do not), with the verdict and the exit status asserted.

mod common;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use mta_stsd::check::CheckReport;
use mta_stsd::check::gather::{CheckOptions, check};
use mta_stsd::config::ZoneOptions;
use mta_stsd::doctor::Level;
use mta_stsd_testkit::smtp::{SmtpCerts, serve_smtp};
use mta_stsd_testkit::{CertKind, HttpResponse, World, policy_text};
use tokio::net::TcpListener;

const TLS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const PLAIN: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const HANG: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);

/// SMTP receivers on one port of several loopback addresses: STARTTLS with a
/// certificate by SNI, no STARTTLS, and one that accepts and never answers.
struct Receivers {
    port: u16,
    certs: SmtpCerts,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
    _mail: tempfile::TempDir,
}

async fn receivers(w: &World) -> Receivers {
    let mail = tempfile::tempdir().unwrap();
    let certs = SmtpCerts::new(w.ca.clone());
    for _ in 0..20 {
        let tls = TcpListener::bind((TLS, 0)).await.unwrap();
        let port = tls.local_addr().unwrap().port();
        let (Ok(plain), Ok(hang)) = (
            TcpListener::bind((PLAIN, port)).await,
            TcpListener::bind((HANG, port)).await,
        ) else {
            continue;
        };
        let hanging = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = hang.accept().await {
                held.push(s);
            }
        });
        let tasks = vec![
            serve_smtp(tls, Some(certs.clone()), mail.path().to_owned()),
            serve_smtp(plain, None, mail.path().to_owned()),
            hanging,
        ];
        return Receivers {
            port,
            certs,
            _tasks: tasks,
            _mail: mail,
        };
    }
    panic!("no free port on all test addresses");
}

fn mx(w: &World, r: &Receivers, domain: &str, hosts: &[(&str, Ipv4Addr, CertKind)]) {
    let prefs: Vec<(u16, &str)> = hosts
        .iter()
        .enumerate()
        .map(|(i, (h, _, _))| (10 * (i as u16 + 1), *h))
        .collect();
    w.dns.set_mx(domain, &prefs);
    for (h, ip, kind) in hosts {
        w.dns.set_a(h, *ip);
        r.certs.set(h, *kind);
    }
}

fn options(r: &Receivers) -> CheckOptions {
    CheckOptions {
        smtp: true,
        smtp_port: r.port,
        probe_timeout: Duration::from_secs(2),
        deadline: Duration::from_secs(20),
    }
}

async fn run(w: &World, r: &Receivers, domain: &str) -> CheckReport {
    check(
        &common::discoverer(w),
        domain,
        &ZoneOptions::default(),
        None,
        &options(r),
    )
    .await
}

/// The findings of one id, as (level, subject, message).
fn lines(report: &CheckReport, id: &str) -> Vec<(Level, String, String)> {
    report
        .checks
        .iter()
        .filter(|c| c.check == id)
        .map(|c| (c.level, c.subject.clone(), c.message.clone()))
        .collect()
}

fn has(report: &CheckReport, id: &str, level: Level, text: &str) -> bool {
    lines(report, id)
        .iter()
        .any(|(l, s, m)| *l == level && (m.contains(text) || s.contains(text)))
}

fn tlsrpt(w: &World, domain: &str) {
    w.dns.set_txt(
        &format!("_smtp._tls.{domain}"),
        &[&format!("v=TLSRPTv1; rua=mailto:tls-reports@{domain}")],
    );
}

/// Each seed document's own example, published as its reader would: the verdicts
/// are those an administrator following that document needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_documents_examples() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/seed-blocks");
    if !dir.is_dir() {
        eprintln!("{} not present; skipping", dir.display());
        return;
    }
    let txt: Vec<String> = std::fs::read_to_string(dir.join("seed-txt.tsv"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split('\t').next().map(str::to_owned))
        .collect();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    let w = World::start().await;
    let r = receivers(&w).await;
    for (i, file) in files.iter().enumerate() {
        let body = std::fs::read_to_string(file).unwrap();
        let domain = format!("seed{i}.test");
        let record = txt
            .get(i)
            .cloned()
            .unwrap_or_else(|| "v=STSv1; id=1".into());
        w.dns.set_txt(&format!("_mta-sts.{domain}"), &[&record]);
        w.point_policy_host(&domain);
        w.https.set_policy(&domain, &body);
        // An MX for each pattern, with a certificate valid for its name.
        let mut hosts: Vec<String> = body
            .lines()
            .filter_map(|l| l.strip_prefix("mx:"))
            .map(|v| v.split('#').next().unwrap_or("").trim().to_owned())
            .map(|v| match v.strip_prefix("*.") {
                Some(rest) => format!("mx1.{rest}"),
                None => v,
            })
            .collect();
        hosts.dedup();
        let spec: Vec<(&str, Ipv4Addr, CertKind)> = hosts
            .iter()
            .map(|h| (h.as_str(), TLS, CertKind::Valid))
            .collect();
        mx(&w, &r, &domain, &spec);
        let report = run(&w, &r, &domain).await;
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        // None of them publishes a TLSRPT record, as every seed recommends.
        assert!(
            has(&report, "tlsrpt", Level::Warning, "no TLSRPT record"),
            "{name}"
        );
        assert!(
            has(&report, "txt", Level::Ok, "id "),
            "{name}: {:?}",
            lines(&report, "txt")
        );
        if body.contains('#') {
            // "max_age: 86400   # 1 day": RFC 8461's grammar has no comments.
            assert!(
                has(&report, "policy-syntax", Level::Problem, "max_age"),
                "{name}"
            );
            let fix = report
                .checks
                .iter()
                .find(|c| c.check == "policy-syntax")
                .unwrap();
            assert!(fix.fix.as_deref().unwrap().contains("comments"), "{name}");
            assert_eq!(report.exit_code(), 2, "{name}");
            continue;
        }
        if body.matches("mx: your-mx.com").count() == 2 {
            assert!(
                has(&report, "policy-hygiene", Level::Warning, "listed twice"),
                "{name}"
            );
        }
        assert!(has(&report, "policy-syntax", Level::Ok, "mode"), "{name}");
        for h in &hosts {
            assert!(has(&report, "mx-coverage", Level::Ok, h), "{name}: {h}");
            assert!(has(&report, "mx-starttls", Level::Ok, h), "{name}: {h}");
            assert!(has(&report, "mx-certificate", Level::Ok, h), "{name}: {h}");
        }
        assert_eq!(
            report.exit_code(),
            1,
            "{name}: warnings only\n{}",
            report.to_text(false)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fault_gets_its_verdict() {
    let w = World::start().await;
    let r = receivers(&w).await;
    let enforce = |mx: &[&str]| policy_text("enforce", mx, 604800);

    // All good, TLSRPT included: exit 0, and the answer Postfix gets.
    w.publish("good.test", "1", &enforce(&["mx.good.test"]));
    mx(
        &w,
        &r,
        "good.test",
        &[("mx.good.test", TLS, CertKind::Valid)],
    );
    tlsrpt(&w, "good.test");
    let good = run(&w, &r, "good.test").await;
    assert_eq!(good.exit_code(), 0, "{}", good.to_text(false));
    // The text ends with a summary line, as doctor's does.
    let text = good.to_text(false);
    let ok = good.checks.len();
    assert_eq!(
        text.lines().last(),
        Some(format!("check good.test: ok {ok}, warning 0, problem 0").as_str()),
        "{text}"
    );
    assert!(
        good.answer.starts_with("OK secure match=mx.good.test"),
        "{}",
        good.answer
    );
    assert!(has(
        &good,
        "policy-host",
        Level::Ok,
        "certificate valid for mta-sts.good.test"
    ));

    // The TXT record through a CNAME (a hosted policy): fine, and said.
    w.dns
        .set_cname("_mta-sts.alias.test", "_mta-sts.host.provider.test");
    w.dns
        .set_txt("_mta-sts.host.provider.test", &["v=STSv1; id=7"]);
    w.point_policy_host("alias.test");
    w.https
        .set_policy("alias.test", &enforce(&["mx.alias.test"]));
    mx(
        &w,
        &r,
        "alias.test",
        &[("mx.alias.test", TLS, CertKind::Valid)],
    );
    let report = run(&w, &r, "alias.test").await;
    assert!(
        has(
            &report,
            "txt",
            Level::Ok,
            "through CNAME _mta-sts.host.provider.test"
        ),
        "{}",
        report.to_text(false)
    );

    // A policy served without the TXT record.
    w.point_policy_host("notxt.test");
    w.https
        .set_policy("notxt.test", &enforce(&["mx.notxt.test"]));
    mx(
        &w,
        &r,
        "notxt.test",
        &[("mx.notxt.test", TLS, CertKind::Valid)],
    );
    let report = run(&w, &r, "notxt.test").await;
    assert!(has(
        &report,
        "txt",
        Level::Problem,
        "will never look for the policy"
    ));
    assert_eq!(report.answer, "NOTFOUND ");
    assert_eq!(report.exit_code(), 2);

    // An MX the policy does not cover, and a stale pattern.
    w.publish(
        "uncovered.test",
        "1",
        &enforce(&["mx1.uncovered.test", "old.uncovered.test"]),
    );
    mx(
        &w,
        &r,
        "uncovered.test",
        &[
            ("mx1.uncovered.test", TLS, CertKind::Valid),
            ("mx2.uncovered.test", TLS, CertKind::Valid),
        ],
    );
    let report = run(&w, &r, "uncovered.test").await;
    assert!(has(
        &report,
        "mx-coverage",
        Level::Problem,
        "mail to it will be refused"
    ));
    assert!(
        lines(&report, "mx-coverage")
            .iter()
            .any(|(l, s, _)| *l == Level::Problem && s == "mx2.uncovered.test")
    );
    assert!(has(&report, "mx-coverage", Level::Warning, "stale"));

    // "*." is one label.
    w.publish("deep.test", "1", &enforce(&["*.deep.test"]));
    mx(
        &w,
        &r,
        "deep.test",
        &[("a.b.deep.test", TLS, CertKind::Valid)],
    );
    let report = run(&w, &r, "deep.test").await;
    assert!(has(
        &report,
        "mx-coverage",
        Level::Problem,
        "matches exactly one label"
    ));

    // No STARTTLS, a certificate for another name, an expired one, one expiring soon.
    for (domain, ip, kind, id, level, text) in [
        (
            "notls.test",
            PLAIN,
            CertKind::Valid,
            "mx-starttls",
            Level::Problem,
            "STARTTLS is not offered",
        ),
        (
            "wrongname.test",
            TLS,
            CertKind::WrongName,
            "mx-certificate",
            Level::Problem,
            "not valid for this name",
        ),
        (
            "expired.test",
            TLS,
            CertKind::Expired,
            "mx-certificate",
            Level::Problem,
            "expired",
        ),
        (
            "soon.test",
            TLS,
            CertKind::ExpiresSoon,
            "mx-certificate",
            Level::Warning,
            "expires in 5 day",
        ),
    ] {
        let host = format!("mx.{domain}");
        w.publish(domain, "1", &enforce(&[&host]));
        mx(&w, &r, domain, &[(&host, ip, kind)]);
        let report = run(&w, &r, domain).await;
        assert!(
            has(&report, id, level, text),
            "{domain}: {}",
            report.to_text(false)
        );
    }

    // The policy host's own certificate expiring soon.
    w.publish("soonhost.test", "1", &enforce(&["mx.soonhost.test"]));
    w.https.set_cert("soonhost.test", CertKind::ExpiresSoon);
    mx(
        &w,
        &r,
        "soonhost.test",
        &[("mx.soonhost.test", TLS, CertKind::Valid)],
    );
    let report = run(&w, &r, "soonhost.test").await;
    assert!(
        has(&report, "policy-host", Level::Warning, "expires in 5 day"),
        "{}",
        report.to_text(false)
    );

    // A hanging MX costs the probe's timeout, not the deadline.
    w.publish("hang.test", "1", &enforce(&["mx.hang.test"]));
    mx(
        &w,
        &r,
        "hang.test",
        &[("mx.hang.test", HANG, CertKind::Valid)],
    );
    let started = Instant::now();
    let report = run(&w, &r, "hang.test").await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(
        has(&report, "mx-starttls", Level::Problem, "no SMTP session"),
        "{}",
        report.to_text(false)
    );

    // The policy on the domain itself, not on the mta-sts host.
    w.dns.set_txt("_mta-sts.wk.test", &["v=STSv1; id=1"]);
    w.dns.set_a("wk.test", std::net::Ipv4Addr::LOCALHOST);
    w.https
        .set_host_response("wk.test", HttpResponse::Policy(enforce(&["mx.wk.test"])));
    let report = run(&w, &r, "wk.test").await;
    assert!(
        has(
            &report,
            "policy-host",
            Level::Problem,
            "served on the domain itself"
        ),
        "{}",
        report.to_text(false)
    );

    // A redirect (not followed, RFC 8461 §3.3) and a wrong content type.
    w.publish("moved.test", "1", &enforce(&["mx.moved.test"]));
    w.https.set_response(
        "moved.test",
        HttpResponse::Raw {
            status: 301,
            content_type: None,
            headers: vec![("Location".into(), "https://moved.test/mta-sts.txt".into())],
            body: vec![],
        },
    );
    let report = run(&w, &r, "moved.test").await;
    assert!(
        has(
            &report,
            "policy-host",
            Level::Problem,
            "redirect to https://moved.test/mta-sts.txt not followed"
        ),
        "{}",
        report.to_text(false)
    );
    w.publish("html.test", "1", &enforce(&["mx.html.test"]));
    w.https.set_response(
        "html.test",
        HttpResponse::Raw {
            status: 200,
            content_type: Some("text/html".into()),
            headers: vec![],
            body: enforce(&["mx.html.test"]).into_bytes(),
        },
    );
    let report = run(&w, &r, "html.test").await;
    assert!(
        has(&report, "policy-host", Level::Problem, "is not text/plain"),
        "{}",
        report.to_text(false)
    );

    // mode: none and a max_age far below the advice; no TLSRPT record.
    w.publish(
        "lax.test",
        "1",
        "version: STSv1\nmode: none\nmax_age: 3600\n",
    );
    let report = run(&w, &r, "lax.test").await;
    assert!(has(&report, "policy-hygiene", Level::Warning, "mode: none"));
    assert!(has(&report, "policy-hygiene", Level::Warning, "far below"));
    assert!(has(&report, "tlsrpt", Level::Warning, "no TLSRPT record"));
}

/// The command itself: `--json`'s stable shape and the exit status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_prints_a_stable_json_shape() {
    let w = World::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mta-stsd.toml");
    std::fs::write(
        &config,
        format!(
            "[resolver]\nnameservers = [\"{}\"]\ntimeout = \"1s\"\n[dane]\nmode = \"off\"\n[cache]\npath = {:?}\n",
            w.dns.addr(),
            dir.path().join("cache")
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        common::bin()
            .args(["check", "nothing.test", "--no-smtp", "--json", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["domain"], "nothing.test");
    assert_eq!(v["answer"], "NOTFOUND ");
    let checks = v["checks"].as_array().unwrap();
    assert!(!checks.is_empty());
    for c in checks {
        for key in ["check", "level", "subject", "message"] {
            assert!(c[key].is_string(), "{key} in {c}");
        }
        assert!(["ok", "warning", "problem"].contains(&c["level"].as_str().unwrap()));
    }
    let ids: Vec<&str> = checks
        .iter()
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"txt") && ids.contains(&"policy-host") && ids.contains(&"tlsrpt"),
        "{ids:?}"
    );
}

/// DANE (RFC 7672), looked at as the daemon does when DANE precedence is on: secure
/// TLSA records matching the presented certificate, and ones that do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dane_tlsa_records_are_matched_against_the_certificate() {
    let w = World::start_signed().await;
    let r = receivers(&w).await;
    let mut anchors = hickory_resolver::proto::dnssec::TrustAnchors::empty();
    anchors.insert(&w.dns.trust_anchor_key().expect("signed"));
    let lookup = mta_stsd::dane::lookup::DaneLookup::new(
        &mta_stsd::config::ResolverConfig {
            nameservers: vec![w.dns.addr()],
            timeout: Duration::from_millis(500),
            attempts: std::num::NonZeroUsize::MIN,
        },
        std::sync::Arc::new(anchors),
    )
    .unwrap();
    for (domain, matching) in [("daneok.test", true), ("danebad.test", false)] {
        let host = format!("mx.{domain}");
        w.publish(domain, "1", &policy_text("enforce", &[&host], 604800));
        mx(&w, &r, domain, &[(&host, TLS, CertKind::Valid)]);
        let mut digest = r.certs.sha256(&host).unwrap();
        if !matching {
            digest[0] ^= 0xff;
        }
        w.dns
            .set_tlsa(&format!("_25._tcp.{host}"), &[(3, 0, 1, &digest)]);
        let dane = mta_stsd::answer::explain::DaneQuery {
            enabled: true,
            reason: "test".into(),
            lookup: &lookup,
        };
        let report = check(
            &common::discoverer(&w),
            domain,
            &ZoneOptions::default(),
            Some(dane),
            &options(&r),
        )
        .await;
        let text = report.to_text(false);
        if matching {
            assert!(
                has(
                    &report,
                    "mx-dane",
                    Level::Ok,
                    "matches the presented certificate"
                ),
                "{text}"
            );
            assert_eq!(report.answer, "OK dane-only", "{text}");
        } else {
            assert!(
                has(&report, "mx-dane", Level::Problem, "none matching"),
                "{text}"
            );
        }
    }
}
