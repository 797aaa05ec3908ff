//! The admin API's contract: its routes and the JSON shapes it exchanges. The server
//! ([`crate::server::http`]) and the client ([`super::client`]) both use these, so
//! they cannot drift apart.
//!
//! - `GET    /api/v1/policies`                  every cache entry
//! - `GET    /api/v1/policies/DOMAIN`           one entry
//! - `DELETE /api/v1/policies/DOMAIN`           purge one entry
//! - `POST   /api/v1/policies/DOMAIN/refresh`   discover now, return the entry
//! - `PUT    /api/v1/policies/DOMAIN`           import a policy learned elsewhere
//! - `GET    /api/v1/tlsrpt/DAY[/partial]`      a day's TLSRPT reports and deliveries
//! - `GET    /api/v1/tlsrpt/DAY[/partial]/files` the same, with the mail each
//!   `mailto:` destination would get (for `tlsrpt send --dry-run`)
//! - `POST   /api/v1/tlsrpt/DAY[/partial]/send` send the day's reports now
//!
//! `partial` asks for a day that is not over (today's counts so far).
//!
//! Errors are `{"error": "..."}` with a 4xx or 5xx status.

use serde::{Deserialize, Serialize};

use crate::cache::entry::Entry;
use crate::clock::rfc3339;
use crate::dane::verdict::MxFacts;
use crate::dane::verdict_cache::Cached;
use crate::mtasts::domain::normalize_host;
use crate::tlsrpt::collector::ReportStatus;
use crate::tlsrpt::day::Day;
use crate::tlsrpt::schedule::{Delivery, State as DeliveryState};

const POLICIES: &str = "/api/v1/policies";
const TLSRPT: &str = "/api/v1/tlsrpt";

/// A request the admin API serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    List,
    Show(String),
    Purge(String),
    Refresh(String),
    Import(String),
    /// A day's TLSRPT reports: what to do, the day, whether partial.
    Tlsrpt(TlsrptAction, Day, bool),
}

/// What is asked of a day's TLSRPT reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsrptAction {
    Show,
    Files,
    Send,
}

/// Why a request matches no route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// Not under `/api/v1/policies`.
    NotFound,
    /// A path segment that is not a domain name.
    BadDomain,
    /// A path segment that is not a day (YYYY-MM-DD).
    BadDay,
    /// A method the path does not take.
    Method,
}

impl Route {
    /// The route for `method` and `path` (method names as HTTP spells them); the
    /// domain comes back normalised.
    pub fn parse(method: &str, path: &str) -> Result<Route, RouteError> {
        if let Some(rest) = path.strip_prefix(TLSRPT) {
            return Self::parse_tlsrpt(method, rest);
        }
        let rest = path.strip_prefix(POLICIES).ok_or(RouteError::NotFound)?;
        if !rest.is_empty() && !rest.starts_with('/') {
            return Err(RouteError::NotFound);
        }
        let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let domain = |d: &str| {
            normalize_host(d)
                .map(String::from)
                .map_err(|_| RouteError::BadDomain)
        };
        match (method, parts.as_slice()) {
            ("GET", []) => Ok(Route::List),
            (_, []) => Err(RouteError::Method),
            ("GET", [d]) => Ok(Route::Show(domain(d)?)),
            ("DELETE", [d]) => Ok(Route::Purge(domain(d)?)),
            ("PUT", [d]) => Ok(Route::Import(domain(d)?)),
            ("POST", [d, "refresh"]) => Ok(Route::Refresh(domain(d)?)),
            (_, [d, ..]) => {
                domain(d)?;
                Err(RouteError::Method)
            }
        }
    }

    fn parse_tlsrpt(method: &str, rest: &str) -> Result<Route, RouteError> {
        let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        if !rest.starts_with('/') {
            return Err(RouteError::NotFound);
        }
        let Some((day, rest)) = parts.split_first() else {
            return Err(RouteError::NotFound);
        };
        let day = Day::parse(day).map_err(|_| RouteError::BadDay)?;
        let (partial, rest) = match rest {
            ["partial", rest @ ..] => (true, rest),
            rest => (false, rest),
        };
        let action = match (method, rest) {
            ("GET", []) => TlsrptAction::Show,
            ("GET", ["files"]) => TlsrptAction::Files,
            ("POST", ["send"]) => TlsrptAction::Send,
            _ => return Err(RouteError::Method),
        };
        Ok(Route::Tlsrpt(action, day, partial))
    }

    /// The request's method and path.
    pub fn request(&self) -> (&'static str, String) {
        match self {
            Route::Tlsrpt(action, day, partial) => {
                let base = format!("{TLSRPT}/{day}{}", if *partial { "/partial" } else { "" });
                match action {
                    TlsrptAction::Show => ("GET", base),
                    TlsrptAction::Files => ("GET", format!("{base}/files")),
                    TlsrptAction::Send => ("POST", format!("{base}/send")),
                }
            }
            Route::List => ("GET", POLICIES.to_owned()),
            Route::Show(d) => ("GET", format!("{POLICIES}/{d}")),
            Route::Purge(d) => ("DELETE", format!("{POLICIES}/{d}")),
            Route::Import(d) => ("PUT", format!("{POLICIES}/{d}")),
            Route::Refresh(d) => ("POST", format!("{POLICIES}/{d}/refresh")),
        }
    }
}

/// One cache entry as the admin API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EntryView {
    pub domain: String,
    /// `enforce`, `testing`, `none`, `no-policy` or `expired`.
    pub state: String,
    pub id: Option<String>,
    pub mx: Vec<String>,
    pub max_age: Option<u64>,
    pub fetched: Option<String>,
    pub expires: Option<String>,
    pub last_check: Option<String>,
    pub no_policy_until: Option<String>,
    pub last_error: Option<String>,
    /// The failure class of `last_error` (`dns`, `tls`, `timeout`, ...).
    #[serde(default)]
    pub last_error_class: Option<String>,
    pub last_error_at: Option<String>,
    pub policy_lines: Vec<String>,
    /// The remembered DANE verdict, when DANE precedence looked at the domain.
    #[serde(default)]
    pub dane: Option<DaneView>,
}

impl EntryView {
    /// How `e` shows at `now`.
    pub fn of(domain: &str, e: &Entry, now: u64) -> EntryView {
        let valid = e.valid_policy(now);
        let state = match valid {
            Some(p) => p.policy.mode.as_str().to_owned(),
            None if e.is_negative(now) => "no-policy".into(),
            None => "expired".into(),
        };
        let p = e.policy.as_ref();
        EntryView {
            domain: domain.to_owned(),
            state,
            id: p.map(|p| p.id.clone()),
            mx: p
                .map(|p| p.policy.mx.iter().map(ToString::to_string).collect())
                .unwrap_or_default(),
            max_age: p.map(|p| p.policy.max_age),
            fetched: p.map(|p| rfc3339(p.fetched_at)),
            expires: p.map(|p| rfc3339(p.expires_at)),
            last_check: (e.last_check > 0).then(|| rfc3339(e.last_check)),
            no_policy_until: e.no_policy_until.filter(|t| *t > now).map(rfc3339),
            last_error: e
                .last_failure()
                .map(|f| format!("{}: {}", f.class, f.message)),
            last_error_class: e.last_failure().map(|f| f.class.as_str().to_owned()),
            last_error_at: e.last_failure().map(|f| rfc3339(f.at)),
            policy_lines: p.map(|p| p.policy.lines.clone()).unwrap_or_default(),
            dane: None,
        }
    }
}

/// A remembered DANE verdict as the admin API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DaneView {
    /// `dane_only`, `dane`, `no_dane` or `temp`.
    pub verdict: String,
    pub facts: MxFacts,
    pub checked: String,
    pub expires: String,
}

impl From<&Cached> for DaneView {
    fn from(c: &Cached) -> Self {
        DaneView {
            verdict: c.verdict.as_str().to_owned(),
            facts: c.mx.clone(),
            checked: rfc3339(c.checked_at),
            expires: rfc3339(c.expires_at),
        }
    }
}

/// The body of an import (`PUT /api/v1/policies/DOMAIN`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportRequest {
    /// The TXT record id the policy was fetched under (RFC 8461 §3.1).
    pub id: String,
    /// When it was fetched (seconds since the Unix epoch).
    pub fetched_at: u64,
    /// The policy file's text.
    pub policy: String,
}

/// The answer to an import.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportResponse {
    pub domain: String,
    /// `imported`, `kept_newer` (the cache has one fetched at the same time or
    /// later) or `expired`.
    pub result: String,
}

/// The answer to a purge.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PurgeResponse {
    pub purged: String,
}

/// An error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// A day's TLSRPT reports (`GET /api/v1/tlsrpt/DAY`, and the answer to a send).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TlsrptDayView {
    pub day: String,
    /// Whether the day was not over (the counts so far).
    pub partial: bool,
    /// Datagrams counted in memory and not yet on disk (stored within a second).
    pub unstored: u64,
    /// Damage found in the report store when the daemon started (what was lost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_damage: Option<String>,
    pub reports: Vec<TlsrptReportView>,
}

/// One report: its counts, its RFC 8460 document, and its deliveries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TlsrptReportView {
    pub id: String,
    pub domain: String,
    pub record: String,
    pub file_name: String,
    /// The period it covers (`date-range`), RFC 3339.
    #[serde(default)]
    pub begin: String,
    #[serde(default)]
    pub end: String,
    pub sessions: u64,
    pub failures: u64,
    /// The RFC 8460 §4 report.
    pub report: serde_json::Value,
    pub deliveries: Vec<DeliveryView>,
    /// `rua` URIs not used, with why.
    pub refused: Vec<RefusedView>,
    /// With `/files`: the mail each `mailto:` destination gets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<MailView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeliveryView {
    pub destination: String,
    /// `pending`, `sent`, `gave_up`, or `not_scheduled` (the sender has not seen the
    /// day yet).
    pub state: String,
    pub attempts: u32,
    pub next_try: Option<String>,
    pub last_error: Option<String>,
    pub done_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RefusedView {
    pub uri: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MailView {
    pub to: String,
    pub message: String,
}

impl TlsrptReportView {
    pub fn of(o: &ReportStatus) -> TlsrptReportView {
        let report: serde_json::Value =
            serde_json::from_str(&o.report.json).unwrap_or(serde_json::Value::Null);
        let sum = |key: &str| -> u64 {
            report["policies"]
                .as_array()
                .map(|ps| ps.iter().filter_map(|p| p["summary"][key].as_u64()).sum())
                .unwrap_or(0)
        };
        let failures = sum("total-failure-session-count");
        TlsrptReportView {
            id: o.report.id.clone(),
            domain: o.report.group.domain.clone(),
            record: o.report.group.record.clone(),
            file_name: o.report.file_name.clone(),
            begin: crate::tlsrpt::day::rfc3339(o.report.begin),
            end: crate::tlsrpt::day::rfc3339(o.report.end),
            sessions: sum("total-successful-session-count") + failures,
            failures,
            deliveries: o
                .destinations
                .iter()
                .map(|(dest, d)| DeliveryView::of(&dest.to_string(), d.as_ref()))
                .collect(),
            refused: o
                .refused
                .iter()
                .map(|(uri, reason)| RefusedView {
                    uri: uri.clone(),
                    reason: reason.clone(),
                })
                .collect(),
            report,
            messages: Vec::new(),
        }
    }
}

impl DeliveryView {
    fn of(destination: &str, d: Option<&Delivery>) -> DeliveryView {
        let Some(d) = d else {
            return DeliveryView {
                destination: destination.to_owned(),
                state: "not_scheduled".into(),
                attempts: 0,
                next_try: None,
                last_error: None,
                done_at: None,
            };
        };
        DeliveryView {
            destination: destination.to_owned(),
            state: match d.state {
                DeliveryState::Pending => "pending",
                DeliveryState::Sent => "sent",
                DeliveryState::GaveUp => "gave_up",
            }
            .into(),
            attempts: d.attempts,
            next_try: (d.state == DeliveryState::Pending).then(|| rfc3339(d.next_try)),
            last_error: d.last_error.clone(),
            done_at: d.done_at.map(rfc3339),
        }
    }
}

/// Imports are small; anything larger is not a policy (RFC 8461 §3.3: 64 KiB at most).
pub const MAX_IMPORT_BODY: usize = 128 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_parses_back_from_its_own_request() {
        for route in [
            Route::List,
            Route::Show("example.com".into()),
            Route::Purge("example.com".into()),
            Route::Import("example.com".into()),
            Route::Refresh("example.com".into()),
            Route::Tlsrpt(TlsrptAction::Show, Day(20_000), false),
            Route::Tlsrpt(TlsrptAction::Files, Day(20_000), true),
            Route::Tlsrpt(TlsrptAction::Send, Day(20_000), false),
            Route::Tlsrpt(TlsrptAction::Send, Day(20_000), true),
        ] {
            let (method, path) = route.request();
            assert_eq!(Route::parse(method, &path), Ok(route));
        }
    }

    #[test]
    fn domains_are_normalised_and_the_rest_refused() {
        assert_eq!(
            Route::parse("GET", "/api/v1/policies/Example.COM."),
            Ok(Route::Show("example.com".into()))
        );
        assert_eq!(
            Route::parse("GET", "/api/v1/policiesX"),
            Err(RouteError::NotFound)
        );
        assert_eq!(Route::parse("GET", "/metrics"), Err(RouteError::NotFound));
        assert_eq!(
            Route::parse("GET", "/api/v1/policies/not a domain"),
            Err(RouteError::BadDomain)
        );
        assert_eq!(
            Route::parse("POST", "/api/v1/policies"),
            Err(RouteError::Method)
        );
        assert_eq!(
            Route::parse("GET", "/api/v1/policies/example.com/refresh"),
            Err(RouteError::Method)
        );
    }
}
