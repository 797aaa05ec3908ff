//! Answers looked up live, not from the caches: an MTA-STS source that discovers the
//! policy now and a DANE source that validates now, each noting what it found. `mta-
//! stsd query` answers through them and the one answer path, so what it shows is what
//! the daemon would answer.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use super::explain::{DaneQuery, DaneReport, QueryOutcome, QueryReport, failure};
use super::{DaneSource, Found, PolicySource};
use crate::cache::policy_cache::CacheOutcome;
use crate::config::ZoneOptions;
use crate::dane::verdict::{self as rules, Security, Verdict};
use crate::mtasts::discovery::{Discoverer, TxtLookup};
use crate::mtasts::domain::Domain;

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
    let answer = super::answer(key, zone, QUERY_DEADLINE, &policies, &dane).await;
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
    async fn policy(
        &self,
        domain: Domain,
        _zone: &ZoneOptions,
        _deadline: Duration,
    ) -> (Found, CacheOutcome) {
        let (report, found) = mta_sts(self.discoverer, self.key, &domain).await;
        *self.report.lock().unwrap_or_else(PoisonError::into_inner) = Some(report);
        (found, CacheOutcome::Miss)
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

/// The MTA-STS discovery of a query: what it found, and the policy.
async fn mta_sts(discoverer: &Discoverer, key: &str, domain: &str) -> (QueryReport, Found) {
    let mut report = QueryReport::new(key);
    report.domain = Some(domain.to_owned());
    let txt = discoverer.lookup_txt(domain).await;
    report.txt = Some(txt.clone());
    match txt {
        TxtLookup::Found { .. } => {}
        TxtLookup::NoPolicy { .. } => {
            return (report, Found::Nothing);
        }
        TxtLookup::Failed { .. } => {
            report.outcome = QueryOutcome::Error;
            return (report, Found::Nothing);
        }
    }
    report.policy_url = Some(discoverer.policy_url(domain));
    let mut found = Found::Nothing;
    match discoverer.fetch_policy(domain).await {
        Ok(policy) => {
            let until = SystemTime::now() + Duration::from_secs(policy.max_age);
            report.valid_until = Some(humantime::format_rfc3339_seconds(until).to_string());
            report.policy = Some(policy.clone());
            found = Found::Fresh(Box::new(policy));
            report.outcome = QueryOutcome::Policy;
        }
        Err(e) => {
            report.fetch_error = Some(failure(&e));
            report.outcome = QueryOutcome::Error;
        }
    }
    (report, found)
}
