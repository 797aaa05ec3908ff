//! A test world for delivery tests, meant to run inside a network namespace (it binds
//! 127.0.0.1:53 and :443 and port 25 on the addresses it is told).
//!
//!     mta-sts-testworld --ca OUT.pem --mail-dir DIR [--signed ANCHOR.key] < commands
//!
//! With `--signed`, the root zone is signed (DNSSEC) with a key made at start, whose
//! DNSKEY is written to ANCHOR.key (the trust anchor for validators).
//!
//! Commands, one per line, on standard input (each answered with "ok" or "error: ..."
//! on standard output; "ready" is printed first):
//!   policy DOMAIN ID MODE MX[,MX...]   TXT id, mta-sts.DOMAIN -> 127.0.0.1, policy file
//!   txt DOMAIN ID                      change the TXT id
//!   down DOMAIN                        the policy server stops serving DOMAIN
//!   hang DOMAIN ID                     TXT id, mta-sts.DOMAIN -> 127.0.0.1, and a
//!                                      policy server that reads the request and
//!                                      never answers
//!   mx DOMAIN HOST IP [HOST IP]...     MX DOMAIN -> HOSTs (preference 10, 20, ...
//!                                      in the order given), A HOST -> IP
//!   cert HOST valid|wrong-name|expired|untrusted   receiver certificate for HOST (SNI)
//!   tlsa HOST match|mismatch           TLSA 3 0 1 at _25._tcp.HOST: the SHA-256 of
//!                                      HOST's receiver certificate, or another digest
//!   bogus DOMAIN                       DOMAIN's MX RRset signed with a broken signature
//!                                      (DNSSEC-bogus; with --signed)
//!   tlsrpt DOMAIN RUA[,RUA...]         TXT _smtp._tls.DOMAIN "v=TLSRPTv1; rua=..."
//!   report-host HOST                   HOST -> 127.0.0.1, where the HTTPS server takes
//!                                      report uploads (200); each upload's body is
//!                                      written to MAIL_DIR/upload-HOST-N.gz
//!   smtp IP tls|plain [KIND]           an SMTP receiver on IP:25, with or without
//!                                      STARTTLS; KIND is the certificate for clients
//!                                      that send no SNI (default: valid)

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use mta_stsd_testkit::smtp::{SmtpCerts, serve_smtp};
use mta_stsd_testkit::{CertKind, HttpResponse, TestCa, TestDns, TestHttps, policy_text};
use tokio::io::{AsyncBufReadExt, BufReader};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn cert_kind(name: &str) -> Option<CertKind> {
    match name {
        "valid" => Some(CertKind::Valid),
        "wrong-name" => Some(CertKind::WrongName),
        "expired" => Some(CertKind::Expired),
        "untrusted" => Some(CertKind::Untrusted),
        _ => None,
    }
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca_out = PathBuf::from(arg("--ca").expect("--ca FILE"));
    let mail_dir = PathBuf::from(arg("--mail-dir").expect("--mail-dir DIR"));
    std::fs::create_dir_all(&mail_dir).expect("mail dir");
    let ca = TestCa::new();
    std::fs::write(&ca_out, ca.cert_pem()).expect("write CA");
    let anchor_out = arg("--signed").map(PathBuf::from);
    let dns = TestDns::start_with(
        Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 53))),
        anchor_out.is_some(),
    )
    .await;
    if let (Some(path), Some(anchor)) = (&anchor_out, dns.trust_anchor()) {
        std::fs::write(path, anchor).expect("write trust anchor");
    }
    let https_listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 443))
        .await
        .expect("bind 443");
    let https = TestHttps::serve(ca.clone(), https_listener);
    let certs = SmtpCerts::new(ca.clone());
    let mut receivers = Vec::new();
    let mut uploads = Vec::new();
    println!("ready");

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        let result: Result<(), String> = match words.as_slice() {
            ["policy", domain, id, mode, mx] => {
                let mx: Vec<&str> = mx.split(',').collect();
                dns.set_txt(
                    &format!("_mta-sts.{domain}"),
                    &[&format!("v=STSv1; id={id}")],
                );
                dns.set_a(&format!("mta-sts.{domain}"), Ipv4Addr::LOCALHOST);
                https.set_policy(domain, &policy_text(mode, &mx, 86400));
                Ok(())
            }
            ["txt", domain, id] => {
                dns.set_txt(
                    &format!("_mta-sts.{domain}"),
                    &[&format!("v=STSv1; id={id}")],
                );
                Ok(())
            }
            ["down", domain] => {
                https.remove(domain);
                Ok(())
            }
            ["hang", domain, id] => {
                dns.set_txt(
                    &format!("_mta-sts.{domain}"),
                    &[&format!("v=STSv1; id={id}")],
                );
                dns.set_a(&format!("mta-sts.{domain}"), Ipv4Addr::LOCALHOST);
                https.set_response(domain, HttpResponse::Hang);
                Ok(())
            }
            ["tlsrpt", domain, rua] => {
                dns.set_txt(
                    &format!("_smtp._tls.{domain}"),
                    &[&format!("v=TLSRPTv1; rua={rua}")],
                );
                Ok(())
            }
            ["report-host", host] => {
                dns.set_a(host, Ipv4Addr::LOCALHOST);
                https
                    .set_host_response(host, mta_stsd_testkit::HttpResponse::Policy(String::new()));
                uploads.push(tokio::spawn(keep_uploads(
                    https.clone(),
                    host.to_string(),
                    mail_dir.clone(),
                )));
                Ok(())
            }
            ["mx", domain, hosts @ ..] if !hosts.is_empty() && hosts.len() % 2 == 0 => {
                let pairs: Result<Vec<(&str, Ipv4Addr)>, String> = hosts
                    .chunks(2)
                    .map(|p| Ok((p[0], p[1].parse::<Ipv4Addr>().map_err(|e| e.to_string())?)))
                    .collect();
                pairs.map(|pairs| {
                    let prefs: Vec<(u16, &str)> = pairs
                        .iter()
                        .zip((10u16..).step_by(10))
                        .map(|((h, _), pref)| (pref, *h))
                        .collect();
                    dns.set_mx(domain, &prefs);
                    for (h, ip) in pairs {
                        dns.set_a(h, ip);
                    }
                })
            }
            ["cert", host, kind] => match cert_kind(kind) {
                Some(k) => {
                    certs.set(host, k);
                    Ok(())
                }
                None => Err(format!("unknown certificate kind {kind:?}")),
            },
            // The MX RRset's signature broken: DNSSEC-bogus (DANE must defer).
            ["bogus", domain] => {
                dns.set_sig_fault(
                    domain,
                    mta_stsd_testkit::RecordType::MX,
                    Some(mta_stsd_testkit::SigFault::BadSignature),
                );
                Ok(())
            }
            ["tlsa", host, which] => match (certs.sha256(host), *which) {
                (Some(digest), "match") => {
                    dns.set_tlsa(&format!("_25._tcp.{host}"), &[(3, 0, 1, &digest)]);
                    Ok(())
                }
                (Some(mut digest), "mismatch") => {
                    digest[0] ^= 0xff;
                    dns.set_tlsa(&format!("_25._tcp.{host}"), &[(3, 0, 1, &digest)]);
                    Ok(())
                }
                (None, _) => Err(format!("no certificate set for {host} (cert first)")),
                _ => Err("tlsa HOST match|mismatch".into()),
            },
            ["smtp", ip, mode, rest @ ..] => match (ip.parse::<Ipv4Addr>(), *mode) {
                (Ok(ip), "tls" | "plain") => match tokio::net::TcpListener::bind((ip, 25)).await {
                    Ok(l) => {
                        let default = rest
                            .first()
                            .and_then(|k| cert_kind(k))
                            .unwrap_or(CertKind::Valid);
                        let c = (*mode == "tls").then(|| certs.with_default(default));
                        receivers.push(serve_smtp(l, c, mail_dir.clone()));
                        Ok(())
                    }
                    Err(e) => Err(format!("bind {ip}:25: {e}")),
                },
                _ => Err("smtp IP tls|plain".into()),
            },
            [] => continue,
            _ => Err(format!("unknown command {line:?}")),
        };
        match result {
            Ok(()) => println!("ok"),
            Err(e) => println!("error: {e}"),
        }
    }
}

/// Writes every upload to HOST into `dir` as `upload-HOST-N.gz`, as it arrives.
async fn keep_uploads(https: TestHttps, host: String, dir: PathBuf) {
    let mut written = 0;
    loop {
        let got = https.wait_for_received(&host, written + 1).await;
        for r in &got[written..] {
            written += 1;
            let _ = std::fs::write(dir.join(format!("upload-{host}-{written}.gz")), &r.body);
        }
    }
}
