//! The one answer path: how a request key becomes the reply the MTA gets.
//!
//! 1. The next-hop key is normalised to a domain; keys that name none (address
//!    literals, `[host]` forms, invalid names) get `NOTFOUND `.
//! 2. The DANE gate: DANE takes precedence over MTA-STS (RFC 8461 §2, RFC 7672) where
//!    it is wanted for the zone and DNSSEC validation works here; while validation
//!    does not work, DANE is suspended rather than deferring every domain.
//! 3. The MTA-STS policy and the DANE verdict are looked for at once, within one
//!    deadline.
//! 4. Precedence ([`mod@precedence`]): where DANE applies, its answer replaces the
//!    MTA-STS one.
//! 5. Rendering ([`render`]) in the asking client's format; a cached policy keeps its
//!    rendered text, so a cache hit renders nothing.
//!
//! The daemon answers through this path from its caches ([`PolicyService`],
//! [`DaneService`]); `mta-stsd query` answers through it from live lookups, so the two
//! cannot disagree about what the MTA gets.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::cache::hot::Slot;
use crate::cache::policy_cache::{CacheOutcome, PolicyService};
use crate::config::ZoneOptions;
use crate::dane::verdict::Verdict;
use crate::dane::verdict_cache::DaneService;
use crate::mtasts::domain::{Domain, normalize_key};
use crate::mtasts::policy::Policy;

pub mod explain;
pub mod live;
pub mod precedence;
pub mod render;
pub mod reply;

use self::precedence::{Precedence, precedence};
use self::render::RenderOptions;
pub use self::reply::{Kind, Reply};

/// What the MTA-STS side found for a domain.
pub enum Found {
    /// A cached policy entry, which keeps the text rendered from it.
    Cached(Arc<Slot>),
    /// A policy discovered just now (`mta-stsd query`).
    Fresh(Box<Policy>),
    /// No policy (or none usable).
    Nothing,
}

/// Where the MTA-STS policy for a domain comes from.
pub trait PolicySource {
    /// The policy for a normalised domain under `zone`, waiting for a discovery at
    /// most `deadline`, and how it was found.
    fn policy(
        &self,
        domain: Domain,
        zone: &ZoneOptions,
        deadline: Duration,
    ) -> impl Future<Output = (Found, CacheOutcome)> + Send;
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

/// DANE off: for callers that answer from MTA-STS alone.
pub struct NoDane;

impl DaneSource for NoDane {
    fn wanted(&self, _: &ZoneOptions) -> bool {
        false
    }

    async fn usable(&self, _: &ZoneOptions, _: Duration) -> bool {
        false
    }

    async fn verdict(&self, _: &str, _: Duration) -> Verdict {
        Verdict::NoDane
    }
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
    let options = RenderOptions::from(zone);
    let domain = match normalize_key(key) {
        Ok(domain) => domain,
        Err(skip) => {
            tracing::debug!(key, reason = %skip, "no lookup");
            return Answer {
                reply: render::not_found(options.format),
                outcome: CacheOutcome::Skipped,
                skipped: Some(skip.to_string()),
            };
        }
    };
    let (verdict, (found, outcome)) = if dane.wanted(zone) {
        let started = tokio::time::Instant::now();
        let dane_side = async {
            if !dane.usable(zone, deadline).await {
                return None;
            }
            let left = deadline.saturating_sub(started.elapsed());
            Some(dane.verdict(&domain, left).await)
        };
        tokio::join!(dane_side, policies.policy(domain.clone(), zone, deadline))
    } else {
        (None, policies.policy(domain.clone(), zone, deadline).await)
    };
    let reply = match precedence(verdict.as_ref()) {
        Precedence::MtaSts => mta_sts_reply(&domain, &found, options),
        Precedence::Dane => render::dane(options.format, false),
        Precedence::DaneOnly => render::dane(options.format, true),
        Precedence::Temp(reason) => render::temp(options.format, reason),
    };
    Answer {
        reply,
        outcome,
        skipped: None,
    }
}

/// The MTA-STS reply: a cached policy's memoized text, or rendered now.
fn mta_sts_reply(domain: &str, found: &Found, options: RenderOptions) -> Reply {
    let text = match found {
        Found::Cached(slot) => slot.rendered(options.variant(), |entry| {
            let policy = entry.policy.as_ref().map(|cached| &cached.policy);
            secure_text(domain, policy, options)
        }),
        Found::Fresh(policy) => secure_text(domain, Some(policy), options),
        Found::Nothing => None,
    };
    match text {
        Some(text) => Reply::shared(Kind::Secure, text),
        None => render::not_found(options.format),
    }
}

/// The text of an enforcing reply, or `None` when the policy enforces nothing under
/// these options; what rendering had to leave out is logged.
fn secure_text(domain: &str, policy: Option<&Policy>, options: RenderOptions) -> Option<Arc<str>> {
    let rendered = render::mta_sts(domain, policy, options);
    if !rendered.dropped_lines.is_empty() {
        tracing::warn!(domain, lines = ?rendered.dropped_lines, "policy lines with '{{' or '}}' left out of TLSRPT attributes");
    }
    if rendered.tlsrpt_dropped_for_size {
        tracing::warn!(
            domain,
            "reply too long for the MTA; TLSRPT attributes left out"
        );
    }
    match rendered.reply.kind() {
        Kind::Secure => rendered.reply.shared_text(),
        _ => None,
    }
}

/// The daemon's MTA-STS side: its policy cache.
impl PolicySource for Arc<PolicyService> {
    async fn policy(
        &self,
        domain: Domain,
        _zone: &ZoneOptions,
        deadline: Duration,
    ) -> (Found, CacheOutcome) {
        let (slot, outcome) = self.lookup_domain(domain, deadline).await;
        (slot.map_or(Found::Nothing, Found::Cached), outcome)
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
