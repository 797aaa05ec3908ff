//! Gathering a domain's facts for `mta-stsd check`: DNS records, the policy file, the
//! MX hosts' certificates and SMTP, the DANE facts and the daemon's own answer, all at
//! once under one deadline, judged by [`super::assess`] and [`super::dane`].

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures::future::join_all;
use hickory_resolver::proto::rr::{RData, RecordType};

use super::CheckReport;
use super::assess as rules;
use super::dane::TlsaRecord;
use super::probe::{CertFacts, SmtpProbe, smtp_probe, tls_probe};
use crate::answer::explain::DaneQuery;
use crate::answer::live::query;
use crate::config::ZoneOptions;
use crate::mtasts::discovery::{Discoverer, FetchError};
use crate::mtasts::domain::normalize_key;

/// How a check is run (the command's defaults; tests reach other ports).
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Probe the MX hosts over SMTP.
    pub smtp: bool,
    pub smtp_port: u16,
    /// Each TLS or SMTP probe's own limit.
    pub probe_timeout: Duration,
    pub deadline: Duration,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            smtp: true,
            smtp_port: 25,
            probe_timeout: Duration::from_secs(10),
            deadline: Duration::from_secs(30),
        }
    }
}

/// Checks `domain`: every probe at once, the whole bounded by `options.deadline`.
pub async fn check(
    discoverer: &Discoverer,
    domain: &str,
    zone: &ZoneOptions,
    dane: Option<DaneQuery<'_>>,
    options: &CheckOptions,
) -> CheckReport {
    let Ok(domain) = normalize_key(domain) else {
        return CheckReport::failed(domain, "txt", "not a domain name".into(), None);
    };
    let domain = domain.to_string();
    let work = gather(discoverer, &domain, zone, dane, options);
    match tokio::time::timeout(options.deadline, work).await {
        Ok(report) => report,
        Err(_) => CheckReport::failed(
            &domain,
            "deadline",
            format!("the checks did not finish within {:?}", options.deadline),
            Some(
                "a DNS, web or mail server of the domain does not answer; --no-smtp skips the MX hosts",
            ),
        ),
    }
}

async fn gather(
    discoverer: &Discoverer,
    domain: &str,
    zone: &ZoneOptions,
    dane: Option<DaneQuery<'_>>,
    options: &CheckOptions,
) -> CheckReport {
    let (sts_name, rpt_name) = (format!("_mta-sts.{domain}"), format!("_smtp._tls.{domain}"));
    let dane_lookup = dane.as_ref().filter(|d| d.enabled).map(|d| d.lookup);
    // The MX hosts are probed as soon as they are known, while the rest still runs.
    let mx_and_probes = async {
        let mx = mx_hosts(discoverer, domain).await;
        let probes = match options.smtp {
            true => probe_mx_hosts(discoverer, domain, &mx, options).await,
            false => Vec::new(),
        };
        (mx, probes)
    };
    let ((txt, cnames), (rpt, _), (mx, probes), (fetched, at_domain, cert), verdict, dane_facts) = tokio::join!(
        txt_records(discoverer, &sts_name),
        txt_records(discoverer, &rpt_name),
        mx_and_probes,
        policy_facts(discoverer, domain, options),
        query(discoverer, domain, zone, dane),
        async {
            match dane_lookup {
                Some(l) => Some(l.facts(domain).await.mx),
                None => None,
            }
        },
    );
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    let mut checks = rules::txt(domain, &txt, &cnames);
    let (policy_lines, policy) =
        rules::policy(domain, &fetched, cert.as_ref(), at_domain.as_ref(), now);
    checks.extend(policy_lines);
    if let Some(p) = &policy {
        checks.extend(rules::mx_coverage(domain, &mx, p));
    }
    for (p, tlsa) in &probes {
        checks.extend(rules::smtp(p, policy.as_ref().map(|p| p.mode), now));
        if let Some(facts) = &dane_facts {
            let presented = p.tls.as_ref().and_then(|t| t.as_ref().ok());
            checks.extend(crate::check::dane::dane(&p.host, facts, tlsa, presented));
        }
    }
    checks.extend(rules::tlsrpt(domain, &rpt));
    CheckReport {
        domain: domain.to_owned(),
        checks,
        answer: verdict.reply,
        map: crate::config::Mta::Postfix.zone().to_owned(),
    }
}

/// The policy file at the policy host (discovery's own fetch), the policy host's
/// certificate, and, only when the fetch failed, the same path on the bare domain (a
/// common misplacement worth explaining).
async fn policy_facts(
    discoverer: &Discoverer,
    domain: &str,
    options: &CheckOptions,
) -> (
    Result<Vec<u8>, FetchError>,
    Option<Result<Vec<u8>, FetchError>>,
    Option<Result<CertFacts, String>>,
) {
    let port = discoverer.https_port();
    let host = format!("mta-sts.{domain}");
    let certificate = async {
        let ip = first_address(discoverer, &host).await?;
        let addr = SocketAddr::new(ip, port);
        Some(tls_probe(addr, &host, discoverer.tls_config(), options.probe_timeout).await)
    };
    let url = discoverer.policy_url(domain);
    let (fetched, cert) = tokio::join!(discoverer.fetch_body(&url, domain), certificate);
    let at_domain = match &fetched {
        Ok(_) => None,
        Err(_) => {
            let url = match port {
                443 => format!("https://{domain}/.well-known/mta-sts.txt"),
                port => format!("https://{domain}:{port}/.well-known/mta-sts.txt"),
            };
            Some(discoverer.fetch_body(&url, domain).await)
        }
    };
    (fetched, at_domain, cert)
}

/// Each MX host (or the domain itself, the implicit MX) over SMTP, all at once, each
/// with its TLSA records.
async fn probe_mx_hosts(
    discoverer: &Discoverer,
    domain: &str,
    mx: &Result<Vec<String>, String>,
    options: &CheckOptions,
) -> Vec<(SmtpProbe, Vec<TlsaRecord>)> {
    let hosts = match mx {
        Ok(h) if h.is_empty() => vec![domain.to_owned()],
        Ok(h) => h.clone(),
        Err(_) => Vec::new(),
    };
    join_all(hosts.iter().map(|h| async move {
        let ip = first_address(discoverer, h).await;
        tokio::join!(
            smtp_probe(
                h,
                ip,
                options.smtp_port,
                discoverer.tls_config(),
                options.probe_timeout
            ),
            tlsa_records(discoverer, h),
        )
    }))
    .await
}

/// The TXT records at `name` as text (none for NXDOMAIN or no records), and the
/// CNAME targets the answer went through.
async fn txt_records(d: &Discoverer, name: &str) -> (Result<Vec<String>, String>, Vec<String>) {
    match d
        .resolver()
        .lookup(format!("{name}.").as_str(), RecordType::TXT)
        .await
    {
        Ok(lookup) => {
            let mut texts = Vec::new();
            let mut cnames = Vec::new();
            for r in lookup.answers() {
                match &r.data {
                    RData::TXT(txt) => texts.push(
                        txt.txt_data
                            .iter()
                            .map(|s| String::from_utf8_lossy(s))
                            .collect::<String>(),
                    ),
                    RData::CNAME(target) => {
                        cnames.push(target.0.to_ascii().trim_end_matches('.').to_owned())
                    }
                    _ => {}
                }
            }
            (Ok(texts), cnames)
        }
        Err(e) if e.is_nx_domain() || e.is_no_records_found() => (Ok(Vec::new()), Vec::new()),
        Err(e) => (Err(e.to_string()), Vec::new()),
    }
}

/// The domain's MX hosts by preference (lower case, no trailing dot); none for no MX
/// (the domain itself is then the MX) and for a null MX.
async fn mx_hosts(d: &Discoverer, domain: &str) -> Result<Vec<String>, String> {
    match d
        .resolver()
        .lookup(format!("{domain}.").as_str(), RecordType::MX)
        .await
    {
        // A null MX (RFC 7505) names no host: the checks of MX hosts have none.
        Ok(lookup) => Ok(crate::dane::lookup::exchanges(lookup.answers()).unwrap_or_default()),
        Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok(Vec::new()),
        Err(e) => Err(e.to_string()),
    }
}

/// The TLSA records of `_25._tcp.HOST` with their data (whether they are secure is
/// the DANE lookup's to say).
async fn tlsa_records(d: &Discoverer, host: &str) -> Vec<TlsaRecord> {
    let name = format!("_25._tcp.{host}.");
    match d.resolver().lookup(name.as_str(), RecordType::TLSA).await {
        Ok(lookup) => lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::TLSA(t) => Some(TlsaRecord {
                    usage: t.cert_usage.into(),
                    selector: t.selector.into(),
                    matching: t.matching.into(),
                    data: t.cert_data.clone(),
                }),
                _ => None,
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

async fn first_address(d: &Discoverer, host: &str) -> Option<IpAddr> {
    for rtype in [RecordType::A, RecordType::AAAA] {
        if let Ok(lookup) = d
            .resolver()
            .lookup(format!("{host}.").as_str(), rtype)
            .await
        {
            let ip = lookup.answers().iter().find_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            });
            if ip.is_some() {
                return ip;
            }
        }
    }
    None
}
