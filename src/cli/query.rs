//! `mta-stsd query DOMAIN`: one live discovery, explained step by step.

use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::answer::{DaneSource, PolicySource};
use crate::cache::service::CacheOutcome;
use crate::config::ZoneOptions;
use crate::dane::lookup::DaneLookup;
use crate::dane::rules::{self, MxFacts, Security, TlsaFacts, Verdict};
use crate::mtasts::discovery::{Discoverer, FetchError, TxtLookup};
use crate::mtasts::domain::Domain;
use crate::mtasts::policy::Policy;
use crate::protocol::answer::{RenderOptions, Reply, render};

/// `mta-stsd query`'s arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Domain or Postfix next-hop key (example.com, [mx.example.com]:587, ...).
    domain: String,
    /// Print a JSON report instead of text.
    #[arg(long)]
    json: bool,
    /// Configuration file (default: /etc/mta-stsd/mta-stsd.toml if it exists, else
    /// built-in defaults).
    #[arg(long, short)]
    config: Option<std::path::PathBuf>,
    /// Socketmap name whose [zones.NAME] options to apply.
    #[arg(long, default_value = "postfix")]
    zone: String,
}

/// Runs the command: the daemon's configuration and setup, one live query.
pub(super) fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    super::logging::init("warn", crate::config::LogFormat::Auto);
    let (config, _) = super::load_config(args.config.as_deref())?;
    let report = super::current_thread()?.block_on(async {
        let prepared = crate::setup::prepare(&config)?;
        let zone = config.zone(&args.zone);
        let dane = prepared.dane;
        let dane_query = DaneQuery {
            enabled: dane.wanted_for(&zone),
            reason: match zone.dane {
                Some(_) => "set for this zone".to_owned(),
                None => dane.reason.clone(),
            },
            lookup: &dane.lookup,
        };
        anyhow::Ok(query(&prepared.discoverer, &args.domain, &zone, Some(dane_query)).await)
    })?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        out!("{}", report.to_text());
    }
    Ok(std::process::ExitCode::from(
        report.outcome.exit_code() as u8
    ))
}

/// How a query ended; also the process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A policy was found (whatever its mode).
    Policy,
    /// The domain has no MTA-STS policy.
    NoPolicy,
    /// Discovery failed: the domain may have a policy we could not get.
    Error,
}

impl Outcome {
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Policy => 0,
            Outcome::NoPolicy => 1,
            Outcome::Error => 3,
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
    pub outcome: Outcome,
}

/// How long `query` lets its live lookups take: they are bounded by the resolver's
/// and the fetch's own timeouts, not by the daemon's lookup deadline.
const QUERY_DEADLINE: Duration = Duration::from_secs(300);

/// Runs one live discovery for a next-hop key through the daemon's answer path
/// ([`crate::answer`]): DANE first (when it applies), then MTA-STS; the reply is what
/// the daemon would answer, and the report explains each step.
pub async fn query(
    discoverer: &Discoverer,
    key: &str,
    zone: &ZoneOptions,
    dane: Option<DaneQuery<'_>>,
) -> QueryReport {
    let policies = LivePolicy {
        discoverer,
        key,
        report: Mutex::new(None),
    };
    let dane = LiveDane {
        query: dane,
        part: Mutex::new(None),
    };
    let answer = crate::answer::answer(key, zone, QUERY_DEADLINE, &policies, &dane).await;
    // No MTA-STS report when the key named no domain.
    let mut report = policies
        .report
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner)
        .unwrap_or_else(|| QueryReport::new(key));
    report.skipped = answer.skipped;
    report.dane = dane
        .part
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    report.reply = answer.reply.wire().to_owned();
    report
}

/// The MTA-STS side of a query: a live discovery, noted step by step.
struct LivePolicy<'a> {
    discoverer: &'a Discoverer,
    key: &'a str,
    report: Mutex<Option<QueryReport>>,
}

impl PolicySource for LivePolicy<'_> {
    async fn policy_reply(&self, domain: Domain, zone: &ZoneOptions) -> (Reply, CacheOutcome) {
        let (report, reply) = mta_sts(self.discoverer, self.key, &domain, zone).await;
        *self.report.lock().unwrap_or_else(PoisonError::into_inner) = Some(report);
        (reply, CacheOutcome::Miss)
    }
}

/// The DANE side of a query: the self-check and the MX/TLSA facts, looked up live.
struct LiveDane<'a> {
    query: Option<DaneQuery<'a>>,
    part: Mutex<Option<DaneReport>>,
}

impl LiveDane<'_> {
    fn note(&self, f: impl FnOnce(&mut DaneReport)) {
        let mut part = self.part.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(part) = part.as_mut() {
            f(part);
        }
    }
}

impl DaneSource for LiveDane<'_> {
    fn wanted(&self, _zone: &ZoneOptions) -> bool {
        let Some(q) = &self.query else { return false };
        // Reported whether or not it applies, so that the report says why.
        *self.part.lock().unwrap_or_else(PoisonError::into_inner) = Some(DaneReport {
            enabled: q.enabled,
            reason: q.reason.clone(),
            validation: None,
            mx: None,
            verdict: None,
        });
        q.enabled
    }

    async fn usable(&self, _zone: &ZoneOptions, _deadline: Duration) -> bool {
        let Some(q) = &self.query else { return false };
        let validation = q.lookup.root_security().await;
        self.note(|part| part.validation = Some(validation));
        validation == Security::Secure
    }

    async fn verdict(&self, domain: &str, _deadline: Duration) -> Verdict {
        let Some(q) = &self.query else {
            return Verdict::NoDane;
        };
        let found = q.lookup.facts(domain).await;
        let verdict = rules::verdict(&found.mx);
        self.note(|part| {
            part.mx = Some(found.mx);
            part.verdict = Some(verdict.clone());
        });
        verdict
    }
}

impl QueryReport {
    fn new(key: &str) -> Self {
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
            outcome: Outcome::NoPolicy,
        }
    }
}

/// The MTA-STS discovery of a query: what it found, and the reply it gives.
async fn mta_sts(
    discoverer: &Discoverer,
    key: &str,
    domain: &str,
    zone: &ZoneOptions,
) -> (QueryReport, Reply) {
    let mut report = QueryReport::new(key);
    report.domain = Some(domain.to_owned());
    let txt = discoverer.lookup_txt(domain).await;
    report.txt = Some(txt.clone());
    match txt {
        TxtLookup::Found { .. } => {}
        TxtLookup::NoPolicy { .. } => {
            return (report, Reply::NotFound);
        }
        TxtLookup::Failed { .. } => {
            report.outcome = Outcome::Error;
            return (report, Reply::NotFound);
        }
    }
    report.policy_url = Some(discoverer.policy_url(domain));
    let mut reply = Reply::NotFound;
    match discoverer.fetch_policy(domain).await {
        Ok(policy) => {
            let until = SystemTime::now() + Duration::from_secs(policy.max_age);
            report.valid_until = Some(humantime::format_rfc3339_seconds(until).to_string());
            reply = render(domain, Some(&policy), RenderOptions::from(zone)).reply;
            report.policy = Some(policy);
            report.outcome = Outcome::Policy;
        }
        Err(e) => {
            report.fetch_error = Some(failure(&e));
            report.outcome = Outcome::Error;
        }
    }
    (report, reply)
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
                let tlsa = match &h.tlsa {
                    TlsaFacts::NotApplicable => "not looked up (addresses not secure)".to_owned(),
                    TlsaFacts::None => "none".to_owned(),
                    TlsaFacts::Bogus => "BOGUS".to_owned(),
                    TlsaFacts::Failed => "lookup failed".to_owned(),
                    TlsaFacts::Records { records } => records
                        .iter()
                        .map(|t| {
                            format!(
                                "{} {} {} ({})",
                                t.usage,
                                t.selector,
                                t.matching,
                                if t.usable() { "usable" } else { "unusable" }
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                };
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
            Verdict::Dane => "dane: some MX hosts have TLSA records; Postfix's DANE decides per host, MTA-STS is not used".to_owned(),
            Verdict::NoDane => "no DANE: the MTA-STS answer below stands".to_owned(),
            Verdict::Temp { reason } => format!("defer: {reason}"),
        };
        let _ = writeln!(out, "verdict:    {said}");
    }
}

fn failure(e: &FetchError) -> FetchFailure {
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
