//! The one answer path: how a socketmap request key becomes the reply Postfix gets.
//!
//! 1. The next-hop key is normalised to a domain; keys that name none (address
//!    literals, `[host]` forms, invalid names) get `NOTFOUND `.
//! 2. The DANE gate: DANE takes precedence over MTA-STS (RFC 8461 §2, RFC 7672) where
//!    it is wanted for the zone and DNSSEC validation works here; while validation
//!    does not work, DANE is suspended rather than deferring every domain.
//! 3. The MTA-STS answer and the DANE verdict are looked for at once, within one
//!    deadline; where DANE applies its reply replaces the MTA-STS one.
//!
//! The daemon answers through this path from its caches ([`PolicyService`],
//! [`DaneService`]); `mta-stsd query` answers through it from live lookups, so the two
//! cannot disagree about what Postfix gets.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::cache::service::{CacheOutcome, PolicyService};
use crate::config::ZoneOptions;
use crate::dane::rules::Verdict;
use crate::dane::service::{DaneService, final_reply};
use crate::mtasts::domain::{Domain, normalize_key};
use crate::protocol::answer::Reply;

/// Where the MTA-STS answer for a domain comes from.
pub trait PolicySource {
    /// The MTA-STS reply for a normalised domain under `zone`.
    fn policy_reply(
        &self,
        domain: Domain,
        zone: &ZoneOptions,
    ) -> impl Future<Output = (Reply, CacheOutcome)> + Send;
}

/// Where DANE verdicts come from.
pub trait DaneSource {
    /// Whether DANE precedence is wanted for the zone at all (no DNS needed).
    fn wanted(&self, zone: &ZoneOptions) -> bool;
    /// Whether DNSSEC validation works here, so that DANE may be used (the self-check;
    /// it may wait for it within `deadline`).
    fn usable(&self, zone: &ZoneOptions, deadline: Duration) -> impl Future<Output = bool> + Send;
    /// The verdict for a normalised domain, within `deadline`.
    fn verdict(&self, domain: &str, deadline: Duration) -> impl Future<Output = Verdict> + Send;
}

/// The reply to one request, and how it came about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub reply: Reply,
    /// How the MTA-STS side was served.
    pub outcome: CacheOutcome,
    /// Why the key was not looked up at all, when it was not.
    pub skipped: Option<String>,
}

/// Answers one request key for `zone` within `deadline`.
pub async fn answer(
    key: &str,
    zone: &ZoneOptions,
    deadline: Duration,
    policies: &impl PolicySource,
    dane: &impl DaneSource,
) -> Answer {
    let domain = match normalize_key(key) {
        Ok(domain) => domain,
        Err(skip) => {
            tracing::debug!(key, reason = %skip, "no lookup");
            return Answer {
                reply: Reply::NotFound,
                outcome: CacheOutcome::Skipped,
                skipped: Some(skip.to_string()),
            };
        }
    };
    if !dane.wanted(zone) {
        let (reply, outcome) = policies.policy_reply(domain, zone).await;
        return Answer {
            reply,
            outcome,
            skipped: None,
        };
    }
    let started = tokio::time::Instant::now();
    let dane_side = async {
        if !dane.usable(zone, deadline).await {
            return None;
        }
        let left = deadline.saturating_sub(started.elapsed());
        Some(dane.verdict(&domain, left).await)
    };
    let (verdict, (reply, outcome)) =
        tokio::join!(dane_side, policies.policy_reply(domain.clone(), zone));
    let reply = match &verdict {
        Some(verdict) => final_reply(verdict, reply),
        None => reply,
    };
    Answer {
        reply,
        outcome,
        skipped: None,
    }
}

/// The daemon's MTA-STS side: its policy cache.
impl PolicySource for Arc<PolicyService> {
    fn policy_reply(
        &self,
        domain: Domain,
        zone: &ZoneOptions,
    ) -> impl Future<Output = (Reply, CacheOutcome)> + Send {
        self.lookup_domain(domain, zone)
    }
}

/// The daemon's DANE side: its remembered verdicts and self-check.
impl DaneSource for Arc<DaneService> {
    fn wanted(&self, zone: &ZoneOptions) -> bool {
        self.wanted_for(zone)
    }

    fn usable(&self, zone: &ZoneOptions, deadline: Duration) -> impl Future<Output = bool> + Send {
        self.enabled_for(zone, deadline)
    }

    async fn verdict(&self, domain: &str, deadline: Duration) -> Verdict {
        DaneService::verdict(self, domain, deadline)
            .await
            .verdict
            .clone()
    }
}
