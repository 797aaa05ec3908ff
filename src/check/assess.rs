//! The verdicts of `mta-stsd check` (pure): what the gathered facts mean for mail to
//! the domain, one [`Finding`] each, each problem with its fix. RFC 8461 (MTA-STS)
//! and RFC 8460 (TLSRPT) are the measure; what the seed documents' validators report
//! is covered, plus the hygiene they miss.

use super::probe::{CertFacts, SmtpProbe};
use crate::findings::Finding;
use crate::mtasts::discovery::FetchError;
use crate::mtasts::policy::{Mode, Policy, parse_policy, parse_sts_record};
use crate::tlsrpt::record::destinations;

/// The certificate's remaining validity: under 14 days is a warning.
const EXPIRY_WARNING_DAYS: i64 = 14;
/// RFC 8461 §3.2 advises a `max_age` of weeks; under a day is far below it.
const MAX_AGE_ADVICE: u64 = 86_400;

/// `_mta-sts.DOMAIN` (RFC 8461 §3.1): exactly one `v=STSv1` record with a valid id;
/// `cnames` are the aliases the lookup followed (allowed, and worth knowing about when
/// the policy is hosted by someone else).
pub fn txt(domain: &str, records: &Result<Vec<String>, String>, cnames: &[String]) -> Vec<Finding> {
    let name = format!("_mta-sts.{domain}");
    let records = match records {
        Ok(r) => r,
        Err(e) => {
            return vec![
                Finding::problem(
                    "txt",
                    format!("the TXT lookup failed: {e}"),
                    "check the zone's name servers (dig TXT _mta-sts.DOMAIN)",
                )
                .about(name),
            ];
        }
    };
    let sts: Vec<&String> = records
        .iter()
        .filter(|r| r.starts_with("v=STSv1"))
        .collect();
    let mut out = Vec::new();
    match sts.as_slice() {
        [] => out.push(Finding::problem("txt", "no v=STSv1 TXT record: senders will never look for the policy, whatever is served", format!("publish {name}. TXT \"v=STSv1; id=20260101000000\" (a new id whenever the policy changes)")).about(&name)),
        [one] => match parse_sts_record(one) {
            Ok(r) => {
                let via = if cnames.is_empty() {
                    String::new()
                } else {
                    format!(" (through CNAME {})", cnames.join(" -> "))
                };
                out.push(Finding::ok("txt", format!("\"{one}\": id {}{via}", r.id)).about(&name))
            }
            Err(e) => out.push(Finding::problem("txt", format!("\"{one}\": {e}"), "write it as v=STSv1; id=ID, the id 1 to 32 letters and digits").about(&name)),
        },
        many => out.push(Finding::problem("txt", format!(
                "{} v=STSv1 records: senders treat the domain as having no policy (RFC 8461 §3.1)",
                many.len()
            ), "keep exactly one v=STSv1 record").about(&name)),
    }
    for stray in records.iter().filter(|r| !r.starts_with("v=STSv1")) {
        out.push(
            Finding::warning(
                "txt",
                format!("stray TXT record \"{stray}\" beside the policy record"),
                "remove it: only the v=STSv1 record belongs here",
            )
            .about(&name),
        );
    }
    out
}

/// The policy host and the policy file (RFC 8461 §3.2, §3.3). `fetched` is the
/// fetch of `https://mta-sts.DOMAIN/.well-known/mta-sts.txt` under the daemon's
/// rules; `cert` the policy host's certificate; `at_domain` the same path on the
/// domain itself (only looked at when the policy host fails).
pub fn policy(
    domain: &str,
    fetched: &Result<Vec<u8>, FetchError>,
    cert: Option<&Result<CertFacts, String>>,
    at_domain: Option<&Result<Vec<u8>, FetchError>>,
    now: u64,
) -> (Vec<Finding>, Option<Policy>) {
    let url = format!("https://mta-sts.{domain}/.well-known/mta-sts.txt");
    let mut out = Vec::new();
    let body = match fetched {
        Ok(b) => b,
        Err(e) => {
            out.push(
                Finding::problem("policy-host", e.to_string(), fetch_fix(e, domain)).about(&url),
            );
            if let Some(Ok(_)) = at_domain {
                out.push(Finding::problem("policy-host", "a policy is served on the domain itself, but senders fetch it only from the mta-sts host (RFC 8461 §3.3)", format!("serve the same file at {url} (an A/AAAA or CNAME record for mta-sts.{domain} and a certificate for it)")).about(format!("https://{domain}/.well-known/mta-sts.txt")));
            }
            return (out, None);
        }
    };
    out.push(
        Finding::ok(
            "policy-host",
            format!("served, text/plain, {} bytes", body.len()),
        )
        .about(&url),
    );
    if let Some(cert) = cert {
        out.push(certificate(
            "policy-host",
            &format!("mta-sts.{domain}"),
            cert,
            now,
        ));
    }
    match parse_policy(body) {
        Ok(p) => {
            out.push(
                Finding::ok(
                    "policy-syntax",
                    format!(
                        "mode {}, {} mx pattern(s) ({}), max_age {}",
                        p.mode,
                        p.mx.len(),
                        p.mx.iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", "),
                        p.max_age
                    ),
                )
                .about(&url),
            );
            out.extend(hygiene(&url, &String::from_utf8_lossy(body), &p));
            (out, Some(p))
        }
        Err(e) => {
            let text = String::from_utf8_lossy(body);
            let fix = if text.lines().any(|l| l.contains('#')) {
                "remove the comments: RFC 8461's grammar has none (\"max_age: 86400   # 1 day\" is not a number)"
            } else {
                "each line is \"key: value\" with version, mode, mx and max_age (RFC 8461 §3.2)"
            };
            out.push(Finding::problem("policy-syntax", e.to_string(), fix).about(&url));
            (out, None)
        }
    }
}

/// What to do about a certificate `name` was served with, from the TLS error's text:
/// renew an expired one, name the host in one for other names, otherwise a
/// certificate from a public CA.
pub fn tls_fix(error: &str, name: &str) -> String {
    let e = error.to_ascii_lowercase();
    if e.contains("expired") {
        format!("renew the certificate for {name}: it has expired")
    } else if e.contains("not valid yet") {
        format!("check the clock of the server for {name}: its certificate is not valid yet")
    } else if e.contains("not valid for name") || e.contains("notvalidforname") {
        format!("serve a certificate whose names include {name}")
    } else {
        format!("serve a certificate from a public CA valid for {name}")
    }
}

fn fetch_fix(e: &FetchError, domain: &str) -> String {
    use crate::mtasts::discovery::FailureClass as C;
    match e.class() {
        C::Dns => format!("publish an A or AAAA record (or a CNAME) for mta-sts.{domain}"),
        C::Tls => tls_fix(&e.to_string(), &format!("mta-sts.{domain}")),
        C::HttpStatus => {
            "answer 200 at that URL itself: redirects are not followed (RFC 8461 §3.3)".into()
        }
        C::ContentType => "serve the file as text/plain".into(),
        C::TooLarge => "keep the policy under 64 KiB".into(),
        C::PrivateAddress => format!("mta-sts.{domain} must resolve to a public address"),
        _ => format!("make https://mta-sts.{domain}/.well-known/mta-sts.txt reachable"),
    }
}

/// What the seed documents themselves get wrong, in a policy that parses.
fn hygiene(url: &str, text: &str, p: &Policy) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("mx:").map(str::trim) {
            if seen.contains(&v) {
                out.push(
                    Finding::warning(
                        "policy-hygiene",
                        format!("mx: {v} is listed twice"),
                        "list each MX pattern once",
                    )
                    .about(url),
                );
            }
            seen.push(v);
        }
    }
    if p.mode == Mode::None {
        out.push(
            Finding::warning(
                "policy-hygiene",
                "mode: none: senders drop the policy (the way to withdraw it, not to keep it)",
                "if MTA-STS should protect the domain, use mode: testing or enforce",
            )
            .about(url),
        );
    }
    if p.max_age < MAX_AGE_ADVICE {
        out.push(Finding::warning("policy-hygiene", format!("max_age {} is far below RFC 8461's advice of weeks: a downgrade attack need only wait it out", p.max_age), "max_age: 604800 (a week) or more").about(url));
    }
    out
}

/// A certificate's remaining validity.
fn certificate(
    id: &'static str,
    name: &str,
    cert: &Result<CertFacts, String>,
    now: u64,
) -> Finding {
    match cert {
        Err(e) => Finding::problem(id, e.clone(), tls_fix(e, name)).about(name),
        Ok(CertFacts {
            not_after: Some(t), ..
        }) => {
            let days = (*t as i64 - now as i64).div_euclid(86_400);
            if days < EXPIRY_WARNING_DAYS {
                Finding::warning(
                    id,
                    format!("the certificate expires in {days} day(s)"),
                    "renew it now",
                )
                .about(name)
            } else {
                Finding::ok(
                    id,
                    format!("certificate valid for {name}, {days} more days"),
                )
                .about(name)
            }
        }
        Ok(_) => Finding::ok(id, format!("certificate valid for {name}")).about(name),
    }
}

/// MX coverage (RFC 8461 §4.1): every MX matched by a pattern, every pattern used.
pub fn mx_coverage(domain: &str, mx: &Result<Vec<String>, String>, p: &Policy) -> Vec<Finding> {
    let hosts = match mx {
        Err(e) => {
            return vec![
                Finding::problem(
                    "mx-coverage",
                    format!("the MX lookup failed: {e}"),
                    "check the zone's name servers",
                )
                .about(domain),
            ];
        }
        // No MX: the domain itself is the implicit MX (RFC 5321 §5.1).
        Ok(h) if h.is_empty() => vec![domain.to_owned()],
        Ok(h) => h.clone(),
    };
    let mut out = Vec::new();
    if p.mode == Mode::None {
        return out;
    }
    for host in &hosts {
        if p.mx.iter().any(|m| m.matches(host)) {
            out.push(Finding::ok("mx-coverage", "matched by the policy").about(host));
            continue;
        }
        let deeper =
            p.mx.iter()
                .filter(|m| m.wildcard && host.ends_with(&format!(".{}", m.domain)))
                .map(|m| format!(" (*.{} matches exactly one label, not {host})", m.domain))
                .next()
                .unwrap_or_default();
        let message = format!("no mx pattern matches this MX{deeper}");
        out.push(match p.mode {
            Mode::Enforce => Finding::problem(
                "mx-coverage",
                format!("{message}: mail to it will be refused"),
                format!("add mx: {host} to the policy (and change the TXT id)"),
            )
            .about(host),
            _ => Finding::warning(
                "mx-coverage",
                format!("{message}: mail to it would be refused once the policy is enforced"),
                format!("add mx: {host} to the policy before enforcing"),
            )
            .about(host),
        });
    }
    for m in &p.mx {
        if !hosts.iter().any(|h| m.matches(h)) {
            out.push(
                Finding::warning(
                    "mx-coverage",
                    "pattern matches none of the domain's MX hosts (stale?)",
                    "remove it, or publish the MX it was meant for",
                )
                .about(m.to_string()),
            );
        }
    }
    out
}

/// One MX host over SMTP: STARTTLS offered, and its certificate under the Web PKI.
pub fn smtp(probe: &SmtpProbe, mode: Option<Mode>, now: u64) -> Vec<Finding> {
    let host = &probe.host;
    let enforced = mode == Some(Mode::Enforce);
    let bad = |id, message: String, fix: &str| {
        if enforced {
            Finding::problem(id, format!("{message}: mail to it will be refused"), fix).about(host)
        } else {
            Finding::warning(id, message, fix).about(host)
        }
    };
    if let Err(e) = &probe.reached {
        return vec![bad(
            "mx-starttls",
            format!("SMTP not reached: {e}"),
            "check that port 25 is open and the server answers",
        )];
    }
    if !probe.starttls {
        return vec![bad(
            "mx-starttls",
            "STARTTLS is not offered".into(),
            "enable STARTTLS on the receiving MTA",
        )];
    }
    let mut out = vec![Finding::ok("mx-starttls", "STARTTLS offered").about(host)];
    match &probe.tls {
        Some(Err(e)) => out.push(bad("mx-certificate", e.clone(), &tls_fix(e, host))),
        Some(Ok(c)) => out.push(certificate("mx-certificate", host, &Ok(c.clone()), now)),
        None => {}
    }
    out
}

/// `_smtp._tls.DOMAIN` (RFC 8460 §3): exactly one `v=TLSRPTv1` record with usable
/// `rua` URIs.
pub fn tlsrpt(domain: &str, records: &Result<Vec<String>, String>) -> Vec<Finding> {
    let name = format!("_smtp._tls.{domain}");
    let records = match records {
        Ok(r) => r,
        Err(e) => {
            return vec![
                Finding::warning(
                    "tlsrpt",
                    format!("the TXT lookup failed: {e}"),
                    "check the zone's name servers",
                )
                .about(name),
            ];
        }
    };
    let rpt: Vec<&String> = records
        .iter()
        .filter(|r| r.starts_with("v=TLSRPTv1"))
        .collect();
    match rpt.as_slice() {
        [] => vec![
            Finding::warning(
                "tlsrpt",
                "no TLSRPT record: senders cannot tell you when TLS to your MX hosts fails",
                format!("publish {name}. TXT \"v=TLSRPTv1; rua=mailto:tls-reports@{domain}\""),
            )
            .about(&name),
        ],
        [one] => tlsrpt_record(&name, one),
        many => vec![
            Finding::problem(
                "tlsrpt",
                format!(
                    "{} v=TLSRPTv1 records: senders use none (RFC 8460 §3)",
                    many.len()
                ),
                "keep exactly one",
            )
            .about(&name),
        ],
    }
}

/// The one TLSRPT record: its `rua` destinations, usable or not.
fn tlsrpt_record(name: &str, record: &str) -> Vec<Finding> {
    let d = match destinations(record) {
        Err(e) => {
            let fix = "write it as v=TLSRPTv1; rua=mailto:ADDRESS (or https:URL)";
            return vec![Finding::problem("tlsrpt", e, fix).about(name)];
        }
        Ok(d) if d.usable.is_empty() => {
            let message = format!("no usable rua URI in \"{record}\"");
            let fix = "rua=mailto:ADDRESS or rua=https://HOST/PATH";
            return vec![Finding::problem("tlsrpt", message, fix).about(name)];
        }
        Ok(d) => d,
    };
    let usable: Vec<String> = d.usable.iter().map(ToString::to_string).collect();
    let mut out =
        vec![Finding::ok("tlsrpt", format!("reports go to {}", usable.join(", "))).about(name)];
    for (uri, why) in d.refused {
        out.push(
            Finding::warning(
                "tlsrpt",
                format!("rua {uri} is not usable: {why}"),
                "use a mailto: address or an https: URL",
            )
            .about(name),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_certificate_failure_gets_its_own_fix() {
        let expired =
            "invalid peer certificate: certificate expired: verification time 2026-12-07T15:25:24Z";
        assert!(tls_fix(expired, "mx.a.test").starts_with("renew the certificate for mx.a.test"));
        let other =
            "certificate not valid for name \"mx.a.test\"; certificate is only valid for b.test";
        assert!(tls_fix(other, "mx.a.test").contains("whose names include mx.a.test"));
        assert!(
            tls_fix("invalid peer certificate: UnknownIssuer", "mx.a.test").contains("public CA")
        );
    }
}
