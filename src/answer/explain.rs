//! What `mta-stsd query` found out about one request key, step by step, and its
//! explanation as text (pure): the DANE facts, the TXT record, the policy fetch, and
//! the exact reply the MTA would get.

use std::fmt::Write as _;

use serde::Serialize;

use crate::dane::lookup::DaneLookup;
use crate::dane::verdict::{MxFacts, Security, TlsaFacts, Verdict};
use crate::mtasts::discovery::{FetchError, TxtLookup};
use crate::mtasts::policy::Policy;

/// How a query ended; also the process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryOutcome {
    /// A policy was found (whatever its mode).
    Policy,
    /// The domain has no MTA-STS policy.
    NoPolicy,
    /// Discovery failed: the domain may have a policy we could not get.
    Error,
}

impl QueryOutcome {
    pub fn exit_code(self) -> i32 {
        match self {
            QueryOutcome::Policy => 0,
            QueryOutcome::NoPolicy => 1,
            QueryOutcome::Error => 3,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FetchFailure {
    pub class: &'static str,
    pub message: String,
}

/// The DANE part of a query (RFC 7672), looked at before MTA-STS.
#[derive(Debug, Clone, Serialize)]
pub struct DaneReport {
    /// Whether DANE takes precedence for this zone, and why.
    pub enabled: bool,
    pub reason: String,
    /// The root DNSKEY's DNSSEC status (the self-check), when DANE is enabled.
    pub validation: Option<Security>,
    pub mx: Option<MxFacts>,
    pub verdict: Option<Verdict>,
}

/// What `query` needs to look at DANE: whether it applies, why, and the resolver.
pub struct DaneQuery<'a> {
    pub enabled: bool,
    pub reason: String,
    pub lookup: &'a DaneLookup,
}

/// Everything `query` found out.
#[derive(Debug, Clone, Serialize)]
pub struct QueryReport {
    pub key: String,
    pub domain: Option<String>,
    /// Why the key was not looked up at all (IP literal, parent domain, invalid).
    pub skipped: Option<String>,
    pub dane: Option<DaneReport>,
    pub txt: Option<TxtLookup>,
    pub policy_url: Option<String>,
    pub policy: Option<Policy>,
    pub fetch_error: Option<FetchFailure>,
    /// RFC 3339 time until which the fetched policy is valid.
    pub valid_until: Option<String>,
    /// The exact socketmap reply Postfix would get (netstring payload).
    pub reply: String,
    pub outcome: QueryOutcome,
}

impl QueryReport {
    pub(super) fn new(key: &str) -> Self {
        QueryReport {
            key: key.to_owned(),
            domain: None,
            skipped: None,
            dane: None,
            txt: None,
            policy_url: None,
            policy: None,
            fetch_error: None,
            valid_until: None,
            reply: "NOTFOUND ".to_owned(),
            outcome: QueryOutcome::NoPolicy,
        }
    }
}

/// A host's TLSA facts on one line.
fn tlsa_text(tlsa: &TlsaFacts) -> String {
    match tlsa {
        TlsaFacts::NotApplicable => "not looked up (addresses not secure)".to_owned(),
        TlsaFacts::None => "none".to_owned(),
        TlsaFacts::Bogus => "BOGUS".to_owned(),
        TlsaFacts::Failed => "lookup failed".to_owned(),
        TlsaFacts::Records { records } => records
            .iter()
            .map(|t| {
                let usable = if t.usable() { "usable" } else { "unusable" };
                format!("{} {} {} ({usable})", t.usage, t.selector, t.matching)
            })
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn dane_text(out: &mut String, dane: &DaneReport) {
    let _ = writeln!(
        out,
        "DANE:       {} ({})",
        if dane.enabled { "on" } else { "off" },
        dane.reason
    );
    match dane.validation {
        Some(Security::Secure) | None => {}
        Some(other) => {
            let _ = writeln!(
                out,
                "DNSSEC:     the root's DNSKEY RRset is {}: validation does not work here, DANE is suspended",
                other.as_str()
            );
        }
    }
    match &dane.mx {
        Some(MxFacts::Hosts {
            security,
            implicit,
            hosts,
        }) => {
            let _ = writeln!(
                out,
                "MX:         {}{}",
                security.as_str(),
                if *implicit {
                    " (no MX: the domain itself)"
                } else {
                    ""
                }
            );
            for h in hosts {
                let tlsa = tlsa_text(&h.tlsa);
                let _ = writeln!(
                    out,
                    "  host:     {} (addresses {}); TLSA: {tlsa}",
                    h.name,
                    h.address.as_str()
                );
            }
        }
        Some(MxFacts::NoDomain) => {
            let _ = writeln!(out, "MX:         none (no such domain, or a null MX)");
        }
        Some(MxFacts::Bogus) => {
            let _ = writeln!(out, "MX:         BOGUS (DNSSEC validation failed)");
        }
        Some(MxFacts::Failed) => {
            let _ = writeln!(out, "MX:         lookup failed");
        }
        None => {}
    }
    if let Some(v) = &dane.verdict {
        let said = match v {
            Verdict::DaneOnly => "dane-only: every MX host has usable TLSA records; MTA-STS is not used".to_owned(),
            Verdict::Dane => "dane: some MX hosts have TLSA records; the MTA's own DANE decides per host, MTA-STS is not used".to_owned(),
            Verdict::NoDane => "no DANE: the MTA-STS answer below stands".to_owned(),
            Verdict::Temp { reason } => format!("defer: {reason}"),
        };
        let _ = writeln!(out, "verdict:    {said}");
    }
}

pub(super) fn failure(e: &FetchError) -> FetchFailure {
    FetchFailure {
        class: e.class().as_str(),
        message: e.to_string(),
    }
}

impl QueryReport {
    /// A human explanation, one step per line.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "key:        {}", self.key);
        if let Some(skip) = &self.skipped {
            let _ = writeln!(out, "result:     no lookup: {skip}");
            let _ = writeln!(out, "reply:      {:?}", self.reply);
            return out;
        }
        if let Some(d) = &self.domain {
            let _ = writeln!(out, "domain:     {d}");
        }
        if let Some(dane) = &self.dane {
            dane_text(&mut out, dane);
        }
        match &self.txt {
            Some(TxtLookup::Found { record }) => {
                let _ = writeln!(out, "TXT:        {} (id {})", record.raw, record.id);
            }
            Some(TxtLookup::NoPolicy { reason }) => {
                let _ = writeln!(out, "TXT:        {reason}");
                let _ = writeln!(out, "result:     no MTA-STS policy");
            }
            Some(TxtLookup::Failed { reason }) => {
                let _ = writeln!(out, "TXT:        {reason}");
                let _ = writeln!(
                    out,
                    "result:     error: DNS lookup failed (a cached policy would stay in force)"
                );
            }
            None => {}
        }
        if let Some(url) = &self.policy_url {
            let _ = writeln!(out, "policy URL: {url}");
        }
        if let Some(e) = &self.fetch_error {
            let _ = writeln!(out, "fetch:      failed ({}): {}", e.class, e.message);
            let _ = writeln!(
                out,
                "result:     error: the domain announces a policy that could not be fetched"
            );
        }
        if let Some(p) = &self.policy {
            let _ = writeln!(out, "policy:");
            for line in &p.lines {
                let _ = writeln!(out, "    {line}");
            }
            let _ = writeln!(
                out,
                "mode:       {}; mx: {}",
                p.mode,
                p.mx.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let _ = writeln!(
                out,
                "valid:      {} seconds, until {}",
                p.max_age,
                self.valid_until.as_deref().unwrap_or("?")
            );
        }
        let _ = writeln!(out, "reply:      {:?}", self.reply);
        out
    }
}
