//! Discovery and `query` against a real DNS server and a real HTTPS server on loopback.

mod common;

use std::time::Duration;

use common::{ENFORCE, discoverer, options};
use mta_stsd::answer::explain::{QueryOutcome as Outcome, QueryReport};
use mta_stsd::answer::live::query;
use mta_stsd::config::ZoneOptions;
use mta_stsd::mtasts::discovery::{Discoverer, FetchError, TxtLookup};
use mta_stsd::mtasts::policy::{MAX_MAX_AGE, Mode};
use mta_stsd_testkit::{CertKind, DnsFault, HttpResponse, World, policy_text};

async fn report(world: &World, key: &str) -> QueryReport {
    query(&discoverer(world), key, &ZoneOptions::default(), None).await
}

fn fetch_err(r: &QueryReport) -> (&'static str, String) {
    let e = r.fetch_error.as_ref().expect("a fetch error");
    (e.class, e.message.clone())
}

#[tokio::test]
async fn enforce_policy_end_to_end() {
    let w = World::start().await;
    w.publish("example.com", "20240728", ENFORCE);
    let r = report(&w, "Example.COM.").await;
    assert_eq!(r.outcome, Outcome::Policy, "{}", r.to_text());
    assert_eq!(
        r.reply,
        "OK secure match=mx1.example.com:.example.net servername=hostname"
    );
    let p = r.policy.as_ref().unwrap();
    assert_eq!(p.mode, Mode::Enforce);
    assert_eq!(p.max_age, 604800);
    assert!(r.to_text().contains("id 20240728"), "{}", r.to_text());
    assert_eq!(w.https.hits("example.com"), 1);
}

#[tokio::test]
async fn testing_and_none_modes_answer_notfound() {
    let w = World::start().await;
    w.publish(
        "testing.example",
        "1",
        &policy_text("testing", &["mx.testing.example"], 86400),
    );
    w.publish("none.example", "1", &policy_text("none", &[], 86400));
    let r = report(&w, "testing.example").await;
    assert_eq!(
        (r.outcome, r.reply.as_str()),
        (Outcome::Policy, "NOTFOUND ")
    );
    assert_eq!(r.policy.unwrap().mode, Mode::Testing);
    let strict = ZoneOptions {
        strict_testing: true,
        ..Default::default()
    };
    let r = query(&discoverer(&w), "testing.example", &strict, None).await;
    assert_eq!(
        r.reply,
        "OK secure match=mx.testing.example servername=hostname"
    );
    let r = report(&w, "none.example").await;
    assert_eq!(
        (r.outcome, r.reply.as_str()),
        (Outcome::Policy, "NOTFOUND ")
    );
}

#[tokio::test]
async fn wildcard_mx_becomes_dot_domain() {
    let w = World::start().await;
    w.publish(
        "wild.example",
        "1",
        &policy_text("enforce", &["*.protection.outlook.com"], 604800),
    );
    let r = report(&w, "wild.example").await;
    assert_eq!(
        r.reply,
        "OK secure match=.protection.outlook.com servername=hostname"
    );
}

#[tokio::test]
async fn no_txt_record_is_no_policy_and_no_fetch() {
    let w = World::start().await;
    w.point_policy_host("nopolicy.example");
    w.https.set_policy("nopolicy.example", ENFORCE);
    let r = report(&w, "nopolicy.example").await;
    assert_eq!(r.outcome, Outcome::NoPolicy);
    assert_eq!(r.reply, "NOTFOUND ");
    assert!(
        matches!(r.txt, Some(TxtLookup::NoPolicy { .. })),
        "{:?}",
        r.txt
    );
    assert_eq!(w.https.hits("nopolicy.example"), 0);
    // An existing name without TXT is NODATA, not NXDOMAIN; both mean no policy.
    w.dns
        .set_a("_mta-sts.nodata.example", std::net::Ipv4Addr::LOCALHOST);
    let r = report(&w, "nodata.example").await;
    assert_eq!(r.outcome, Outcome::NoPolicy, "{}", r.to_text());
}

#[tokio::test]
async fn two_sts_records_mean_no_policy() {
    let w = World::start().await;
    w.publish("two.example", "1", ENFORCE);
    w.dns
        .set_txt("_mta-sts.two.example", &["v=STSv1; id=1", "v=STSv1; id=2"]);
    let r = report(&w, "two.example").await;
    assert_eq!(r.outcome, Outcome::NoPolicy);
    assert!(
        r.to_text().contains("exactly one is allowed"),
        "{}",
        r.to_text()
    );
    assert_eq!(w.https.hits("two.example"), 0);
}

#[tokio::test]
async fn unrelated_txt_records_are_ignored_and_strings_joined() {
    let w = World::start().await;
    w.publish("mixed.example", "1", ENFORCE);
    w.dns.set_txt(
        "_mta-sts.mixed.example",
        &[
            "v=spf1 -all",
            "v=STSv1; id=abc123",
            "google-site-verification=x",
        ],
    );
    let r = report(&w, "mixed.example").await;
    assert_eq!(r.outcome, Outcome::Policy, "{}", r.to_text());
    // One record split into several character-strings is joined without spaces.
    w.dns
        .set_txt_strings("_mta-sts.mixed.example", &["v=STSv1; i", "d=split42"]);
    let r = report(&w, "mixed.example").await;
    match r.txt {
        Some(TxtLookup::Found { record }) => assert_eq!(record.id, "split42"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn cname_is_followed() {
    let w = World::start().await;
    w.publish("target.example", "7", ENFORCE);
    w.dns
        .set_cname("_mta-sts.alias.example", "_mta-sts.target.example");
    w.point_policy_host("alias.example");
    w.https.set_policy("alias.example", ENFORCE);
    let r = report(&w, "alias.example").await;
    assert_eq!(r.outcome, Outcome::Policy, "{}", r.to_text());
}

#[tokio::test]
async fn invalid_txt_record_is_no_policy() {
    let w = World::start().await;
    w.publish("badid.example", "1", ENFORCE);
    w.dns
        .set_txt("_mta-sts.badid.example", &["v=STSv1; id=not_alnum!"]);
    let r = report(&w, "badid.example").await;
    assert_eq!(r.outcome, Outcome::NoPolicy);
    assert!(
        r.to_text().contains("1-32 ASCII letters and digits"),
        "{}",
        r.to_text()
    );
}

#[tokio::test]
async fn servfail_and_timeout_are_lookup_failures_not_no_policy() {
    let w = World::start().await;
    w.publish("broken.example", "1", ENFORCE);
    w.dns
        .set_fault("_mta-sts.broken.example", Some(DnsFault::ServFail));
    let d = discoverer(&w);
    assert!(matches!(
        d.lookup_txt("broken.example").await,
        TxtLookup::Failed { .. }
    ));
    let r = query(&d, "broken.example", &ZoneOptions::default(), None).await;
    assert_eq!(r.outcome, Outcome::Error);
    w.dns
        .set_fault("_mta-sts.broken.example", Some(DnsFault::Drop));
    match d.lookup_txt("broken.example").await {
        TxtLookup::Failed { reason } => {
            assert!(reason.ends_with("request timed out"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

/// `resolver.attempts` counts every try (not retries after the first), and a server
/// that refuses is reported as refusing, not as a timeout.
#[tokio::test]
async fn attempts_count_every_try_and_a_refusing_server_is_named() {
    let w = World::start().await;
    w.publish("broken.example", "1", ENFORCE);
    w.dns
        .set_fault("_mta-sts.broken.example", Some(DnsFault::Drop));
    let mut opts = options(&w);
    opts.resolver.attempts = std::num::NonZeroUsize::new(2).unwrap();
    opts.resolver.timeout = Duration::from_secs(1);
    let silent = Discoverer::new(opts.clone()).expect("discoverer");
    let started = std::time::Instant::now();
    assert!(matches!(
        silent.lookup_txt("broken.example").await,
        TxtLookup::Failed { .. }
    ));
    // Two tries of one second; three (the old "retries" meaning) would take 3 s.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_millis(2900),
        "{took:?}"
    );

    let closed = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.local_addr().expect("addr")
    };
    opts.resolver.nameservers = vec![closed];
    opts.resolver.attempts = std::num::NonZeroUsize::MIN;
    let refused = Discoverer::new(opts).expect("discoverer");
    match refused.lookup_txt("example.com").await {
        TxtLookup::Failed { reason } => assert!(
            reason.ends_with(&format!("connection refused by {closed}")),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn http_404_is_a_fetch_error() {
    let w = World::start().await;
    w.publish("e404.example", "1", ENFORCE);
    w.https.set_response(
        "e404.example",
        HttpResponse::Raw {
            status: 404,
            content_type: Some("text/plain".into()),
            headers: vec![],
            body: b"nope".to_vec(),
        },
    );
    let r = report(&w, "e404.example").await;
    assert_eq!(r.outcome, Outcome::Error);
    assert_eq!(fetch_err(&r), ("http_status", "HTTP status 404".into()));
    assert_eq!(r.reply, "NOTFOUND ");
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let w = World::start().await;
    w.publish("redir.example", "1", ENFORCE);
    w.publish("other.example", "1", ENFORCE);
    let target = format!(
        "https://mta-sts.other.example:{}/.well-known/mta-sts.txt",
        w.https.addr().port()
    );
    w.https.set_response(
        "redir.example",
        HttpResponse::Raw {
            status: 301,
            content_type: None,
            headers: vec![("Location".into(), target.clone())],
            body: vec![],
        },
    );
    let r = report(&w, "redir.example").await;
    assert_eq!(
        fetch_err(&r),
        (
            "http_status",
            format!("HTTP status 301 (redirect to {target} not followed)")
        )
    );
    assert_eq!(w.https.hits("other.example"), 0);
}

#[tokio::test]
async fn wrong_content_type_is_refused() {
    let w = World::start().await;
    w.publish("html.example", "1", ENFORCE);
    w.https.set_response(
        "html.example",
        HttpResponse::Raw {
            status: 200,
            content_type: Some("text/html; charset=utf-8".into()),
            headers: vec![],
            body: ENFORCE.as_bytes().to_vec(),
        },
    );
    let r = report(&w, "html.example").await;
    assert_eq!(fetch_err(&r).0, "content_type");
    assert!(fetch_err(&r).1.contains("text/html"));
    // Parameters other than the media type are fine.
    w.https.set_response(
        "html.example",
        HttpResponse::Raw {
            status: 200,
            content_type: Some("text/plain; charset=us-ascii".into()),
            headers: vec![],
            body: ENFORCE.as_bytes().to_vec(),
        },
    );
    assert_eq!(report(&w, "html.example").await.outcome, Outcome::Policy);
    // A missing content type is refused too.
    w.https.set_response(
        "html.example",
        HttpResponse::Raw {
            status: 200,
            content_type: None,
            headers: vec![],
            body: ENFORCE.as_bytes().to_vec(),
        },
    );
    assert_eq!(
        fetch_err(&report(&w, "html.example").await).0,
        "content_type"
    );
}

async fn cert_case(kind: CertKind) -> (&'static str, String) {
    let w = World::start().await;
    w.publish("cert.example", "1", ENFORCE);
    w.https.set_cert("cert.example", kind);
    let r = report(&w, "cert.example").await;
    assert_eq!(r.outcome, Outcome::Error, "{}", r.to_text());
    assert_eq!(r.reply, "NOTFOUND ");
    fetch_err(&r)
}

#[tokio::test]
async fn wrong_name_certificate_is_refused() {
    let (class, msg) = cert_case(CertKind::WrongName).await;
    assert_eq!(class, "tls");
    assert!(
        msg.contains("NotValidForName") || msg.contains("not valid for name"),
        "{msg}"
    );
}

#[tokio::test]
async fn untrusted_certificate_is_refused() {
    let (class, msg) = cert_case(CertKind::Untrusted).await;
    assert_eq!(class, "tls");
    assert!(
        msg.contains("UnknownIssuer") || msg.contains("unknown issuer"),
        "{msg}"
    );
}

#[tokio::test]
async fn expired_certificate_is_refused() {
    let (class, msg) = cert_case(CertKind::Expired).await;
    assert_eq!(class, "tls");
    assert!(msg.to_lowercase().contains("expired"), "{msg}");
}

#[tokio::test]
async fn oversize_body_is_refused() {
    let w = World::start().await;
    w.publish("big.example", "1", ENFORCE);
    let mut body = ENFORCE.to_owned();
    body.push_str(&format!("x: {}\n", "a".repeat(70_000)));
    w.https.set_policy("big.example", &body);
    let r = report(&w, "big.example").await;
    assert_eq!(fetch_err(&r).0, "too_large");
    // Exactly 64 KiB is still fine.
    let mut body = ENFORCE.to_owned();
    let pad = 64 * 1024 - body.len() - 4;
    body.push_str(&format!("x: {}\n", "a".repeat(pad)));
    assert_eq!(body.len(), 64 * 1024);
    w.https.set_policy("big.example", &body);
    assert_eq!(report(&w, "big.example").await.outcome, Outcome::Policy);
}

#[tokio::test]
async fn slow_server_hits_the_timeout() {
    let w = World::start().await;
    w.publish("slow.example", "1", ENFORCE);
    w.https.set_response("slow.example", HttpResponse::Hang);
    let mut opts = options(&w);
    opts.fetch.timeout = Duration::from_millis(300);
    let d = Discoverer::new(opts).unwrap();
    let started = std::time::Instant::now();
    let err = d.fetch_policy("slow.example").await.unwrap_err();
    assert!(matches!(err, FetchError::Timeout(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn crlf_body_parses() {
    let w = World::start().await;
    w.publish("crlf.example", "1", &ENFORCE.replace('\n', "\r\n"));
    let r = report(&w, "crlf.example").await;
    assert_eq!(
        r.reply,
        "OK secure match=mx1.example.com:.example.net servername=hostname"
    );
}

#[tokio::test]
async fn max_age_over_the_cap_is_clamped() {
    let w = World::start().await;
    w.publish(
        "long.example",
        "1",
        &policy_text("enforce", &["mx.long.example"], 99_999_999),
    );
    let r = report(&w, "long.example").await;
    assert_eq!(r.policy.unwrap().max_age, MAX_MAX_AGE);
}

#[tokio::test]
async fn mx_with_ip_address_is_an_invalid_policy() {
    let w = World::start().await;
    w.publish(
        "ipmx.example",
        "1",
        "version: STSv1\nmode: enforce\nmx: 192.0.2.25\nmax_age: 86400\n",
    );
    let r = report(&w, "ipmx.example").await;
    let (class, msg) = fetch_err(&r);
    assert_eq!(class, "parse");
    assert_eq!(
        msg,
        "invalid policy: line 3: mx value '192.0.2.25' is an IP address"
    );
}

#[tokio::test]
async fn private_addresses_are_refused_unless_allowed() {
    let w = World::start().await;
    w.publish("internal.example", "1", ENFORCE);
    let mut opts = options(&w);
    opts.fetch.allow_private_addresses = false;
    let d = Discoverer::new(opts).unwrap();
    let err = d.fetch_policy("internal.example").await.unwrap_err();
    assert_eq!(err.class().as_str(), "private_address", "{err}");
    assert!(err.to_string().contains("127.0.0.1"), "{err}");
    assert_eq!(w.https.hits("internal.example"), 0);
}

#[tokio::test]
async fn unresolvable_policy_host_is_a_dns_error() {
    let w = World::start().await;
    w.dns.set_txt("_mta-sts.nohost.example", &["v=STSv1; id=1"]);
    let r = report(&w, "nohost.example").await;
    assert_eq!(fetch_err(&r).0, "dns", "{}", r.to_text());
}

#[tokio::test]
async fn keys_that_need_no_lookup() {
    let w = World::start().await;
    for key in [
        ".example.com",
        "[192.0.2.1]",
        "[ipv6:2001:db8::1]",
        "bad..name",
    ] {
        let r = report(&w, key).await;
        assert_eq!(
            (r.outcome, r.reply.as_str()),
            (Outcome::NoPolicy, "NOTFOUND "),
            "{key}"
        );
        assert!(r.skipped.is_some());
    }
    assert_eq!(w.dns.total_queries(), 0);
}

/// `mta-stsd query` and the daemon render through one path: for the same policy and
/// zone options they give the same bytes, including the TLSRPT attributes, the lines
/// left out of them, and the fallback for a reply too long for Postfix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_and_daemon_give_byte_identical_replies() {
    use mta_stsd::clock::SystemClock;
    use mta_stsd::config::Config;
    use std::sync::Arc;

    let w = World::start().await;
    let hostile =
        "version: STSv1\nmode: enforce\nmx: mx.example.com\nx: } evil {\nmax_age: 86400\n";
    let mut oversize = String::from("version: STSv1\nmode: testing\nmx: *.example.net\n");
    for i in 0..6000 {
        oversize.push_str(&format!("k{i}: v\n"));
    }
    oversize.push_str("max_age: 86400\n");
    assert!(oversize.len() < 64 * 1024);
    w.publish("plain.example", "1", ENFORCE);
    w.publish("hostile.example", "1", hostile);
    w.publish("oversize.example", "1", &oversize);

    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::from_toml(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[metrics]\nlisten = \"\"\n\
         [zones.rpt]\ntlsrpt = true\nstrict_testing = true\n[zones.old]\nrequire_sni = false\n",
        "test",
    )
    .unwrap();
    config.cache.path = Some(dir.path().join("cache"));
    let d = common::InProcess::start(&w, config.clone(), Arc::new(SystemClock)).await;
    for zone in ["rpt", "old", "postfix"] {
        for domain in ["plain.example", "hostile.example", "oversize.example"] {
            let live = query(&discoverer(&w), domain, &config.zone(zone), None)
                .await
                .reply;
            let served = common::ask_once(d.tcp, zone, domain).await;
            assert_eq!(served, live, "{zone} {domain}");
        }
    }
    let served = common::ask_once(d.tcp, "rpt", "oversize.example").await;
    assert_eq!(served, "OK secure match=.example.net servername=hostname");
    let served = common::ask_once(d.tcp, "rpt", "hostile.example").await;
    assert!(
        served.contains("policy_type=sts") && !served.contains("evil"),
        "{served}"
    );
    d.shutdown().await;
}
