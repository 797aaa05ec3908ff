//! DANE precedence against real DNSSEC: a signed root zone served by the testkit's DNS
//! server (signed at test time; its key is the trust anchor), validated by the
//! daemon's own resolver. Every rule of RFC 7672 the verdict rests on, from real
//! signed, unsigned and broken zones; then the daemon's answers over the socketmap.

mod common;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::proto::dnssec::TrustAnchors;
use mta_stsd::config::ResolverConfig;
use mta_stsd::dane::lookup::DaneLookup;
use mta_stsd::dane::verdict::{self as rules, MxFacts, Security, TlsaFacts, Verdict};
use mta_stsd::dane::verdict_cache::DaneSettings;
use mta_stsd_testkit::{DnsFault, RecordType, SigFault, TestDns};

const SHA256: [u8; 32] = [7; 32];
const IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

fn lookup_for(dns: &TestDns, anchors: TrustAnchors) -> DaneLookup {
    DaneLookup::new(
        &ResolverConfig {
            nameservers: vec![dns.addr()],
            timeout: Duration::from_millis(500),
            attempts: std::num::NonZeroUsize::MIN,
        },
        Arc::new(anchors),
    )
    .unwrap()
}

fn validating(dns: &TestDns) -> DaneLookup {
    let mut anchors = TrustAnchors::empty();
    anchors.insert(&dns.trust_anchor_key().expect("signed"));
    lookup_for(dns, anchors)
}

/// MX DOMAIN -> the hosts, each with an address and, if given, a usable TLSA record.
fn domain(dns: &TestDns, domain: &str, hosts: &[(&str, bool)]) {
    let mx: Vec<(u16, &str)> = hosts
        .iter()
        .enumerate()
        .map(|(i, (h, _))| (10 * (i as u16 + 1), *h))
        .collect();
    dns.set_mx(domain, &mx);
    for (h, tlsa) in hosts {
        dns.set_a(h, IP);
        if *tlsa {
            dns.set_tlsa(&format!("_25._tcp.{h}"), &[(3, 1, 1, &SHA256)]);
        }
    }
}

async fn verdict(l: &DaneLookup, d: &str) -> (Verdict, MxFacts) {
    let found = l.facts(d).await;
    (rules::verdict(&found.mx), found.mx)
}

#[tokio::test]
async fn the_rules_on_signed_zones() {
    let dns = TestDns::start_signed().await;
    domain(
        &dns,
        "all.test",
        &[("mx1.all.test", true), ("mx2.all.test", true)],
    );
    domain(
        &dns,
        "some.test",
        &[("mx1.some.test", true), ("mx2.some.test", false)],
    );
    domain(&dns, "none.test", &[("mx1.none.test", false)]);
    domain(&dns, "unusable.test", &[("mx1.unusable.test", false)]);
    // PKIX-EE (usage 1) and a SHA-256 digest of the wrong length: both unusable.
    dns.set_tlsa(
        "_25._tcp.mx1.unusable.test",
        &[(1, 1, 1, &SHA256), (3, 1, 1, &SHA256[..20])],
    );
    // No MX: the domain itself is the implicit MX.
    dns.set_a("implicit.test", IP);
    dns.set_tlsa("_25._tcp.implicit.test", &[(3, 1, 1, &SHA256)]);
    let l = validating(&dns);

    let (v, mx) = verdict(&l, "all.test").await;
    assert_eq!(v, Verdict::DaneOnly, "{mx:?}");
    let (v, mx) = verdict(&l, "some.test").await;
    assert_eq!(v, Verdict::Dane, "{mx:?}");
    let (v, mx) = verdict(&l, "none.test").await;
    assert_eq!(v, Verdict::NoDane, "{mx:?}");
    let MxFacts::Hosts {
        security, hosts, ..
    } = &mx
    else {
        panic!("{mx:?}")
    };
    assert_eq!(*security, Security::Secure);
    assert_eq!(hosts[0].tlsa, TlsaFacts::None, "a secure denial of TLSA");
    let (v, mx) = verdict(&l, "unusable.test").await;
    assert_eq!(v, Verdict::Dane, "{mx:?}");
    let (v, mx) = verdict(&l, "implicit.test").await;
    assert_eq!(v, Verdict::DaneOnly, "{mx:?}");
    assert!(
        matches!(mx, MxFacts::Hosts { implicit: true, .. }),
        "{mx:?}"
    );
    // A domain that does not exist (secure NXDOMAIN).
    let (v, mx) = verdict(&l, "nowhere.test").await;
    assert_eq!(v, Verdict::NoDane, "{mx:?}");
}

#[tokio::test]
async fn an_insecure_delegation_leaves_mta_sts() {
    let dns = TestDns::start_signed().await;
    dns.delegate_unsigned("plain.test");
    // TLSA records in an unsigned zone prove nothing.
    domain(&dns, "plain.test", &[("mx.plain.test", true)]);
    let (v, mx) = verdict(&validating(&dns), "plain.test").await;
    assert_eq!(v, Verdict::NoDane, "{mx:?}");
    assert!(
        matches!(
            mx,
            MxFacts::Hosts {
                security: Security::Insecure,
                ..
            }
        ),
        "{mx:?}"
    );
}

#[tokio::test]
async fn a_signed_mx_with_hosts_in_an_unsigned_zone_is_not_dane() {
    let dns = TestDns::start_signed().await;
    dns.delegate_unsigned("hoster.test");
    domain(&dns, "customer.test", &[("mx.hoster.test", true)]);
    let (v, mx) = verdict(&validating(&dns), "customer.test").await;
    assert_eq!(v, Verdict::NoDane, "{mx:?}");
    let MxFacts::Hosts { hosts, .. } = &mx else {
        panic!("{mx:?}")
    };
    assert_eq!(hosts[0].address, Security::Insecure);
    assert_eq!(hosts[0].tlsa, TlsaFacts::NotApplicable);
}

#[tokio::test]
async fn a_bogus_mx_rrset_defers() {
    for fault in [SigFault::BadSignature, SigFault::Expired, SigFault::Missing] {
        let dns = TestDns::start_signed().await;
        domain(&dns, "bogus.test", &[("mx.bogus.test", true)]);
        dns.set_sig_fault("bogus.test", RecordType::MX, Some(fault));
        let (v, mx) = verdict(&validating(&dns), "bogus.test").await;
        assert!(matches!(v, Verdict::Temp { .. }), "{fault:?}: {v:?} {mx:?}");
        assert_eq!(mx, MxFacts::Bogus, "{fault:?}");
    }
}

#[tokio::test]
async fn a_broken_tlsa_rrset_is_never_treated_as_absent() {
    let dns = TestDns::start_signed().await;
    domain(
        &dns,
        "half.test",
        &[("mx1.half.test", true), ("mx2.half.test", false)],
    );
    dns.set_sig_fault(
        "_25._tcp.mx1.half.test",
        RecordType::TLSA,
        Some(SigFault::BadSignature),
    );
    domain(&dns, "lost.test", &[("mx1.lost.test", true)]);
    dns.set_fault("_25._tcp.mx1.lost.test", Some(DnsFault::ServFail));
    let l = validating(&dns);
    // mx1's TLSA is bogus, mx2 has none: Postfix's DANE skips mx1; never MTA-STS.
    let (v, mx) = verdict(&l, "half.test").await;
    assert_eq!(v, Verdict::Dane, "{mx:?}");
    let MxFacts::Hosts { hosts, .. } = &mx else {
        panic!("{mx:?}")
    };
    assert_eq!(hosts[0].tlsa, TlsaFacts::Bogus);
    // The only host's TLSA lookup fails (SERVFAIL): dane-only, never a downgrade.
    let (v, mx) = verdict(&l, "lost.test").await;
    assert_eq!(v, Verdict::DaneOnly, "{mx:?}");
}

#[tokio::test]
async fn a_failed_mx_lookup_defers() {
    let dns = TestDns::start_signed().await;
    domain(&dns, "flaky.test", &[("mx.flaky.test", true)]);
    dns.set_fault("flaky.test", Some(DnsFault::ServFail));
    let (v, mx) = verdict(&validating(&dns), "flaky.test").await;
    assert!(matches!(v, Verdict::Temp { .. }), "{v:?}");
    assert_eq!(mx, MxFacts::Failed);
}

#[tokio::test]
async fn an_unsigned_world_or_a_wrong_anchor_is_never_secure() {
    // Unsigned root: everything is insecure to a validator with the real anchors.
    let dns = TestDns::start().await;
    domain(&dns, "all.test", &[("mx1.all.test", true)]);
    // (An unsigned root cannot be told from a resolver that strips DNSSEC: bogus,
    // which is why the daemon checks the root's DNSKEY before trusting its verdicts.)
    let (v, mx) = verdict(&lookup_for(&dns, TrustAnchors::default()), "all.test").await;
    assert!(matches!(v, Verdict::Temp { .. }), "{v:?} {mx:?}");

    // A signed root whose key is not the anchor: the chain cannot be trusted.
    let signed = TestDns::start_signed().await;
    domain(&signed, "all.test", &[("mx1.all.test", true)]);
    let (v, mx) = verdict(&lookup_for(&signed, TrustAnchors::default()), "all.test").await;
    assert!(
        !matches!(v, Verdict::DaneOnly | Verdict::Dane | Verdict::NoDane),
        "an unverifiable signed root must not pass as secure or insecure: {v:?} {mx:?}"
    );
}

#[test]
fn the_built_in_anchor_holds_both_root_ksks() {
    use hickory_resolver::proto::dnssec::rdata::DNSKEY;
    let anchors = TrustAnchors::default();
    let tags: Vec<u16> = (0..anchors.len())
        .filter_map(|i| anchors.get(i))
        .map(|k| {
            DNSKEY::with_flags(257, k.clone())
                .calculate_key_tag()
                .unwrap()
        })
        .collect();
    // KSK-2017 and KSK-2024 (which signs the root after the 2026 rollover).
    assert!(tags.contains(&20326), "{tags:?}");
    assert!(tags.contains(&38696), "{tags:?}");
}

// --- the daemon ---------------------------------------------------------------------

use common::{InProcess, ask_once};
use mta_stsd::clock::SystemClock;
use mta_stsd::config::Config;
use mta_stsd_testkit::World;

const POLICY: &str = "version: STSv1\nmode: enforce\nmx: *.dane.test\nmax_age: 86400\n";

/// A daemon on a signed world with `dane` settings; the world's root key is the
/// trust anchor (written to a file, as an operator would).
async fn daemon(w: &World, dir: &std::path::Path, dane: &str, zones: &str) -> InProcess {
    let anchor = w.dns.trust_anchor().expect("signed world");
    daemon_anchored(w, dir, &anchor, dane, zones).await
}

/// A daemon whose `dane.trust_anchor` file holds `anchor_text`.
async fn daemon_anchored(
    w: &World,
    dir: &std::path::Path,
    anchor_text: &str,
    dane: &str,
    zones: &str,
) -> InProcess {
    let anchor = dir.join("root.key");
    std::fs::write(&anchor, anchor_text).unwrap();
    InProcess::builder(w, dir)
        .toml(&format!(
            "[dane]\ntrust_anchor = \"{}\"\n{dane}\n{zones}",
            anchor.display()
        ))
        .start()
        .await
}

/// dane.test: an enforced MTA-STS policy AND TLSA records on its only MX host.
fn publish_both(w: &World) {
    w.publish("dane.test", "1", POLICY);
    domain(&w.dns, "dane.test", &[("mx.dane.test", true)]);
    // sts.test: MTA-STS only, signed but no TLSA.
    w.publish(
        "sts.test",
        "1",
        "version: STSv1\nmode: enforce\nmx: mx.sts.test\nmax_age: 86400\n",
    );
    domain(&w.dns, "sts.test", &[("mx.sts.test", false)]);
}

async fn metrics(d: &InProcess) -> String {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::get(format!("{}/metrics", d.http.as_ref().unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dane_takes_precedence_over_an_enforced_mta_sts_policy() {
    let w = World::start_signed().await;
    publish_both(&w);
    w.dns.set_mx("bogus.test", &[(10, "mx.bogus.test")]);
    w.dns.set_a("mx.bogus.test", IP);
    w.dns
        .set_sig_fault("bogus.test", RecordType::MX, Some(SigFault::BadSignature));
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(
        &w,
        dir.path(),
        "mode = \"on\"",
        "[zones.nodane]\ndane = \"off\"",
    )
    .await;
    assert_eq!(d.dane.check_validation_now().await, Security::Secure);

    // The bug this fixes: an MTA-STS `secure` answer would turn Postfix's DANE off.
    assert_eq!(
        ask_once(d.tcp, "postfix", "dane.test").await,
        "OK dane-only"
    );
    assert_eq!(
        ask_once(d.tcp, "postfix", "sts.test").await,
        "OK secure match=mx.sts.test servername=hostname"
    );
    let temp = ask_once(d.tcp, "postfix", "bogus.test").await;
    assert!(temp.starts_with("TEMP "), "{temp}");
    // A zone with DANE off keeps the MTA-STS answer.
    assert_eq!(
        ask_once(d.tcp, "nodane", "dane.test").await,
        "OK secure match=.dane.test servername=hostname"
    );

    // The verdict is remembered: a second lookup asks DNS nothing new.
    let before = w.dns.query_count("dane.test", RecordType::MX);
    assert_eq!(
        ask_once(d.tcp, "postfix", "dane.test").await,
        "OK dane-only"
    );
    assert_eq!(w.dns.query_count("dane.test", RecordType::MX), before);

    let m = metrics(&d).await;
    for series in [
        "mta_stsd_dane_verdicts_total{cache=\"miss\",verdict=\"dane_only\"} 1",
        "mta_stsd_dane_verdicts_total{cache=\"hit\",verdict=\"dane_only\"} 1",
        "mta_stsd_dnssec_bogus_total{rrset=\"mx\"} 1",
        "mta_stsd_dane_enabled 1",
        "answer=\"dane_only\"",
        "answer=\"temp\"",
    ] {
        assert!(m.contains(series), "{series} missing from\n{m}");
    }
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mode_off_and_auto_follow_the_configuration_and_postfix() {
    let w = World::start_signed().await;
    publish_both(&w);
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(&w, dir.path(), "mode = \"off\"", "").await;
    assert_eq!(
        ask_once(d.tcp, "postfix", "dane.test").await,
        "OK secure match=.dane.test servername=hostname"
    );
    assert_eq!(
        w.dns.query_count("_25._tcp.mx.dane.test", RecordType::TLSA),
        0
    );
    d.shutdown().await;

    if std::process::Command::new("postconf")
        .arg("-d")
        .output()
        .is_err()
    {
        assert!(std::env::var_os("CI").is_none(), "CI must install Postfix");
        eprintln!("skipped the auto cases: Postfix (postconf) is not installed");
        return;
    }
    // auto: read from Postfix's own configuration with its own postconf.
    for (main_cf, want) in [
        ("smtp_dns_support_level = dnssec\n", "OK dane-only"),
        (
            "smtp_dns_support_level = enabled\n",
            "OK secure match=.dane.test servername=hostname",
        ),
        ("", "OK secure match=.dane.test servername=hostname"),
    ] {
        let run = tempfile::tempdir().unwrap();
        let pf = run.path().join("postfix");
        std::fs::create_dir_all(&pf).unwrap();
        std::fs::write(
            pf.join("main.cf"),
            format!("compatibility_level = 3.6\n{main_cf}"),
        )
        .unwrap();
        let dane = format!("mode = \"auto\"\npostfix_config = \"{}\"", pf.display());
        let d = daemon(&w, run.path(), &dane, "").await;
        assert_eq!(
            ask_once(d.tcp, "postfix", "dane.test").await,
            want,
            "{main_cf:?}"
        );
        d.shutdown().await;
    }
}

/// As Postfix uses the daemon: no test hook runs the self-check first. Behind DNS that
/// does not validate (here: the built-in IANA anchors, which cannot validate this
/// world's root, as if the DNS servers stripped DNSSEC), DANE is suspended rather than
/// deferring every domain: neither the first lookup after start nor the first after a
/// reload may be deferred.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_validation_never_defers_the_first_lookup_after_start_or_reload() {
    let w = World::start_signed().await;
    publish_both(&w);
    let dir = tempfile::tempdir().unwrap();
    let config = common::config_in(
        dir.path(),
        &format!("{}[dane]\nmode = \"on\"\n", common::LOOPBACK),
    );
    let d = InProcess::start(&w, config.clone(), Arc::new(SystemClock)).await;
    let secure = "OK secure match=.dane.test servername=hostname";
    assert_eq!(ask_once(d.tcp, "postfix", "dane.test").await, secure);
    let m = metrics(&d).await;
    assert!(m.contains("mta_stsd_dnssec_validation_failing 1"), "{m}");
    assert!(m.contains("mta_stsd_dane_enabled 0"), "{m}");

    // A reload (SIGHUP) forgets the result and checks again before DANE is used.
    let dane = DaneSettings::resolve(&config.dane, &common::options(&w).resolver).unwrap();
    d.state
        .apply(config, common::discoverer(&w), dane)
        .expect("reload");
    assert_eq!(
        ask_once(d.tcp, "postfix", "sts.test").await,
        "OK secure match=mx.sts.test servername=hostname"
    );
    assert_eq!(ask_once(d.tcp, "postfix", "dane.test").await, secure);
    d.shutdown().await;
}

/// The other half: with validation working, the very first lookup already has DANE
/// (it waits for the self-check rather than skipping DANE).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_lookup_after_start_has_dane_when_validation_works() {
    let w = World::start_signed().await;
    publish_both(&w);
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(&w, dir.path(), "mode = \"on\"", "").await;
    assert_eq!(
        ask_once(d.tcp, "postfix", "dane.test").await,
        "OK dane-only"
    );
    d.shutdown().await;
}

/// `dane.trust_anchor` as IANA publishes the root anchor and Debian ships it
/// (/usr/share/dns/root.ds): a DS record that selects the root's key by its digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ds_trust_anchor_validates() {
    let w = World::start_signed().await;
    publish_both(&w);
    let dir = tempfile::tempdir().unwrap();
    let ds = w.dns.trust_anchor_ds().expect("signed world");
    let d = daemon_anchored(&w, dir.path(), &ds, "mode = \"on\"", "").await;
    assert_eq!(
        ask_once(d.tcp, "postfix", "dane.test").await,
        "OK dane-only"
    );
    assert_eq!(
        ask_once(d.tcp, "postfix", "sts.test").await,
        "OK secure match=mx.sts.test servername=hostname"
    );
    let m = metrics(&d).await;
    assert!(m.contains("mta_stsd_dnssec_validation_failing 0"), "{m}");
    d.shutdown().await;
}

/// DS and DNSKEY records in one file, as unbound's trust-anchor-file allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trust_anchor_file_with_ds_and_dnskey_validates() {
    let w = World::start_signed().await;
    publish_both(&w);
    let dir = tempfile::tempdir().unwrap();
    let both = format!(
        "; the root's anchors\n{}{}",
        w.dns.trust_anchor_ds().unwrap(),
        w.dns.trust_anchor().unwrap()
    );
    let d = daemon_anchored(&w, dir.path(), &both, "mode = \"on\"", "").await;
    assert_eq!(
        ask_once(d.tcp, "postfix", "dane.test").await,
        "OK dane-only"
    );
    d.shutdown().await;
}

/// A DS record that names no key of the root: validation cannot work, so DANE is
/// suspended (MTA-STS answers continue), as with any broken validation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ds_anchor_naming_no_root_key_suspends_dane() {
    let w = World::start_signed().await;
    publish_both(&w);
    let dir = tempfile::tempdir().unwrap();
    let wrong =
        ". IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D\n";
    let d = daemon_anchored(&w, dir.path(), wrong, "mode = \"on\"", "").await;
    assert_eq!(
        ask_once(d.tcp, "postfix", "dane.test").await,
        "OK secure match=.dane.test servername=hostname"
    );
    let m = metrics(&d).await;
    assert!(m.contains("mta_stsd_dnssec_validation_failing 1"), "{m}");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_explains_the_dane_verdict_and_gives_the_daemons_reply() {
    use mta_stsd::answer::explain::DaneQuery;
    use mta_stsd::answer::live::query;
    use mta_stsd::config::ZoneOptions;
    let w = World::start_signed().await;
    publish_both(&w);
    w.dns.set_mx("bogus.test", &[(10, "mx.bogus.test")]);
    w.dns.set_a("mx.bogus.test", IP);
    w.dns
        .set_sig_fault("bogus.test", RecordType::MX, Some(SigFault::Expired));
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(&w, dir.path(), "mode = \"on\"", "").await;
    let lookup = validating(&w.dns);
    let discoverer = common::discoverer(&w);
    for domain in ["dane.test", "sts.test", "bogus.test"] {
        let dane = DaneQuery {
            enabled: true,
            reason: "dane.mode = \"on\"".into(),
            lookup: &lookup,
        };
        let report = query(&discoverer, domain, &ZoneOptions::default(), Some(dane)).await;
        let served = ask_once(d.tcp, "postfix", domain).await;
        assert_eq!(report.reply, served, "{domain}: {}", report.to_text());
        let text = report.to_text();
        match domain {
            "dane.test" => {
                assert!(text.contains("verdict:    dane-only"), "{text}");
                assert!(
                    text.contains(
                        "host:     mx.dane.test (addresses secure); TLSA: 3 1 1 (usable)"
                    ),
                    "{text}"
                );
                // The MTA-STS part is still shown, after DANE.
                assert!(text.find("verdict:").unwrap() < text.find("policy:").unwrap());
            }
            "bogus.test" => assert!(text.contains("MX:         BOGUS"), "{text}"),
            _ => assert!(
                text.contains("no DANE: the MTA-STS answer below stands"),
                "{text}"
            ),
        }
    }
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_show_includes_the_dane_verdict() {
    let w = World::start_signed().await;
    publish_both(&w);
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(&w, dir.path(), "mode = \"on\"", "").await;
    assert_eq!(
        ask_once(d.tcp, "postfix", "dane.test").await,
        "OK dane-only"
    );
    let admin = d.http.clone().unwrap();
    let out = tokio::task::spawn_blocking(move || {
        common::bin()
            .args(["cache", "show", "dane.test", "--admin", &admin])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("state:       enforce"), "{text}");
    assert!(text.contains("DANE:        dane_only"), "{text}");
    assert!(
        text.contains("host:      mx.dane.test (addresses secure"),
        "{text}"
    );
    d.shutdown().await;
}

// --- validation = "resolver": a real validating resolver (unbound) in front --------

fn unbound_for(w: &World) -> Option<mta_stsd_testkit::Unbound> {
    if !mta_stsd_testkit::Unbound::installed() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install unbound (apt-get install unbound)"
        );
        eprintln!("skipped: unbound is not installed");
        return None;
    }
    Some(mta_stsd_testkit::Unbound::start(
        w.dns.addr(),
        &w.dns.trust_anchor().expect("signed world"),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validating_resolver_s_ad_bit_in_resolver_mode() {
    let w = World::start_signed().await;
    publish_both(&w);
    w.dns.set_mx("bogus.test", &[(10, "mx.bogus.test")]);
    w.dns.set_a("mx.bogus.test", IP);
    w.dns
        .set_sig_fault("bogus.test", RecordType::MX, Some(SigFault::BadSignature));
    domain(
        &w.dns,
        "half.test",
        &[("mx1.half.test", true), ("mx2.half.test", false)],
    );
    let Some(unbound) = unbound_for(&w) else {
        return;
    };
    // The lookups alone, through unbound.
    let l = DaneLookup::trusting_ad(&ResolverConfig {
        nameservers: vec![unbound.addr()],
        timeout: Duration::from_secs(2),
        attempts: std::num::NonZeroUsize::MIN,
    });
    assert_eq!(
        l.root_security().await,
        Security::Secure,
        "{}",
        unbound.log()
    );
    let (v, mx) = verdict(&l, "dane.test").await;
    assert_eq!(v, Verdict::DaneOnly, "{mx:?}\n{}", unbound.log());
    let (v, _) = verdict(&l, "half.test").await;
    assert_eq!(v, Verdict::Dane);
    let (v, _) = verdict(&l, "sts.test").await;
    assert_eq!(v, Verdict::NoDane);
    let (v, mx) = verdict(&l, "bogus.test").await;
    assert!(matches!(v, Verdict::Temp { .. }), "{v:?} {mx:?}");

    // The daemon, configured as an operator would: resolver.nameservers = unbound.
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::from_toml(
        &format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[metrics]\nlisten = \"\"\n\
             [resolver]\nnameservers = [\"{}\"]\ntimeout = \"2s\"\n\
             [dane]\nmode = \"on\"\nvalidation = \"resolver\"\n",
            unbound.addr()
        ),
        "t",
    )
    .unwrap();
    config.cache.path = Some(dir.path().join("cache"));
    // The daemon's MTA-STS discovery goes through the same resolver.
    let mut opts = common::options(&w);
    opts.resolver = config.resolver.clone();
    let daemon = mta_stsd::server::daemon::Daemon::build(config, opts, Arc::new(SystemClock))
        .await
        .unwrap();
    let tcp = daemon.tcp_addrs()[0];
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(daemon.run(async {
        let _ = rx.await;
    }));
    assert_eq!(ask_once(tcp, "postfix", "dane.test").await, "OK dane-only");
    assert_eq!(
        ask_once(tcp, "postfix", "sts.test").await,
        "OK secure match=mx.sts.test servername=hostname"
    );
    assert!(
        ask_once(tcp, "postfix", "bogus.test")
            .await
            .starts_with("TEMP ")
    );
    let _ = stop.send(());
    task.await.unwrap();
}

#[test]
fn resolver_mode_refuses_a_resolver_across_the_network() {
    let err = Config::from_toml(
        "[resolver]\nnameservers = [\"192.0.2.53:53\"]\n[dane]\nvalidation = \"resolver\"\n",
        "t",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("loopback"), "{err}");
    let err = Config::from_toml("[dane]\nvalidation = \"resolver\"\n", "t")
        .unwrap_err()
        .to_string();
    assert!(err.contains("resolver.nameservers"), "{err}");
    assert!(
        Config::from_toml(
            "[resolver]\nnameservers = [\"127.0.0.1:53\"]\n[dane]\nvalidation = \"resolver\"\n",
            "t"
        )
        .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remembered_verdict_survives_a_restart() {
    let w = World::start_signed().await;
    publish_both(&w);
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(&w, dir.path(), "mode = \"on\"", "").await;
    assert_eq!(
        ask_once(d.tcp, "postfix", "dane.test").await,
        "OK dane-only"
    );
    d.shutdown().await;
    let mx_queries = w.dns.query_count("dane.test", RecordType::MX);
    let tlsa_queries = w.dns.query_count("_25._tcp.mx.dane.test", RecordType::TLSA);

    let d = daemon(&w, dir.path(), "mode = \"on\"", "").await;
    assert_eq!(
        d.dane.cached("dane.test").map(|c| c.verdict.clone()),
        Some(Verdict::DaneOnly)
    );
    assert_eq!(
        ask_once(d.tcp, "postfix", "dane.test").await,
        "OK dane-only"
    );
    assert_eq!(w.dns.query_count("dane.test", RecordType::MX), mx_queries);
    assert_eq!(
        w.dns.query_count("_25._tcp.mx.dane.test", RecordType::TLSA),
        tlsa_queries
    );
    d.shutdown().await;

    // A damaged file costs only fresh lookups.
    std::fs::write(
        dir.path().join("cache").join("dane-verdicts.json"),
        b"{not json",
    )
    .unwrap();
    let d = daemon(&w, dir.path(), "mode = \"on\"", "").await;
    assert!(d.dane.cached("dane.test").is_none());
    assert_eq!(
        ask_once(d.tcp, "postfix", "dane.test").await,
        "OK dane-only"
    );
    d.shutdown().await;
}

/// `auto` follows Postfix: read at start, read again on SIGHUP (the real binary).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_is_read_again_on_sighup() {
    use std::io::BufRead;
    if std::process::Command::new("postconf")
        .arg("-d")
        .output()
        .is_err()
    {
        assert!(std::env::var_os("CI").is_none(), "CI must install Postfix");
        eprintln!("skipped: Postfix (postconf) is not installed");
        return;
    }
    let w = World::start_signed().await;
    // TLSA records, no MTA-STS policy: NOTFOUND without DANE, dane-only with it.
    domain(&w.dns, "only.test", &[("mx.only.test", true)]);
    let dir = tempfile::tempdir().unwrap();
    let pf = dir.path().join("postfix");
    std::fs::create_dir_all(&pf).unwrap();
    let main_cf = pf.join("main.cf");
    std::fs::write(&main_cf, "compatibility_level = 3.6\n").unwrap();
    let anchor = dir.path().join("root.key");
    std::fs::write(&anchor, w.dns.trust_anchor().unwrap()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = dir.path().join("mta-stsd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\n[metrics]\nlisten = \"\"\n\
             [cache]\npath = \"{}\"\n[resolver]\nnameservers = [\"{}\"]\n\
             [dane]\nmode = \"auto\"\npostfix_config = \"{}\"\ntrust_anchor = \"{}\"\n\
             [log]\nformat = \"plain\"\n",
            dir.path().join("cache").display(),
            w.dns.addr(),
            pf.display(),
            anchor.display()
        ),
    )
    .unwrap();
    let mut child = common::bin()
        .args(["serve", "--config"])
        .arg(&cfg)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The daemon's log lines are the signals: listening, and each DANE decision.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut wait_for = async |needle: &str| -> String {
        let found = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = rx.recv().await {
                if line.contains(needle) {
                    return line;
                }
            }
            panic!("the daemon's log ended before {needle:?}");
        })
        .await;
        found.unwrap_or_else(|_| panic!("no log line with {needle:?}"))
    };
    let decided = wait_for("DANE precedence").await;
    assert!(decided.contains("on=false"), "{decided}");
    wait_for("listening").await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(ask_once(addr, "postfix", "only.test").await, "NOTFOUND ");

    std::fs::write(
        &main_cf,
        "compatibility_level = 3.6\nsmtp_dns_support_level = dnssec\n",
    )
    .unwrap();
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGHUP) }, 0);
    let decided = wait_for("DANE precedence").await;
    assert!(decided.contains("on=true"), "{decided}");
    assert!(
        decided.contains("smtp_dns_support_level = dnssec"),
        "{decided}"
    );
    assert_eq!(ask_once(addr, "postfix", "only.test").await, "OK dane-only");

    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());
}
