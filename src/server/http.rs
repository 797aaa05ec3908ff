//! The HTTP listener for Prometheus metrics and the admin API.
//!
//! - `GET  {metrics.path}`                      metrics (text format)
//! - `GET  /api/v1/policies`                    every cache entry
//! - `GET  /api/v1/policies/DOMAIN`             one entry
//! - `DELETE /api/v1/policies/DOMAIN`           purge one entry
//! - `POST /api/v1/policies/DOMAIN/refresh`     discover now, return the entry
//! - `PUT  /api/v1/policies/DOMAIN`             import a policy learned elsewhere:
//!   `{"id": "...", "fetched_at": UNIX_SECONDS, "policy": "version: STSv1\n..."}`
//!
//! The admin API answers only peers on loopback, whatever `metrics.listen` is.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cache::entry::Entry;
use crate::clock::rfc3339;
use crate::dane::rules::MxFacts;
use crate::dane::service::Cached;
use crate::mtasts::domain::normalize_host;
use crate::server::state::State;

/// One cache entry as the admin API shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
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

/// A remembered DANE verdict as the admin API shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct DaneView {
    /// `dane_only`, `dane`, `no_dane` or `temp`.
    pub verdict: String,
    pub facts: MxFacts,
    pub checked: String,
    pub expires: String,
}

fn dane_view(c: &Cached) -> DaneView {
    DaneView {
        verdict: c.verdict.as_str().to_owned(),
        facts: c.mx.clone(),
        checked: rfc3339(c.checked_at),
        expires: rfc3339(c.expires_at),
    }
}

pub fn view(domain: &str, e: &Entry, now: u64) -> EntryView {
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

/// The body of an import (`PUT /api/v1/policies/DOMAIN`).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ImportRequest {
    /// The TXT record id the policy was fetched under.
    pub id: String,
    /// When it was fetched (seconds since the Unix epoch).
    pub fetched_at: u64,
    /// The policy file's text.
    pub policy: String,
}

/// The answer to an import.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ImportResponse {
    pub domain: String,
    /// `imported`, `kept_newer` (the cache has one fetched at the same time or
    /// later) or `expired`.
    pub result: String,
}

/// Imports are small; anything larger is not a policy (RFC 8461 §3.3: 64 KiB at most).
const MAX_IMPORT_BODY: usize = 128 * 1024;

async fn import(
    req: Request<Incoming>,
    domain: &str,
    service: &crate::cache::service::PolicyService,
) -> Response<Full<Bytes>> {
    use http_body_util::BodyExt;
    let body = match http_body_util::Limited::new(req.into_body(), MAX_IMPORT_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the body: {e}"),
            );
        }
    };
    let request: ImportRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("not an import request: {e}"),
            );
        }
    };
    // RFC 8461 §3.1: id = 1*32(ALPHA / DIGIT).
    let id_ok = (1..=32).contains(&request.id.len())
        && request.id.bytes().all(|b| b.is_ascii_alphanumeric());
    if !id_ok {
        return error(
            StatusCode::BAD_REQUEST,
            "id must be 1 to 32 letters or digits",
        );
    }
    let policy = match crate::mtasts::policy::parse_policy(request.policy.as_bytes()) {
        Ok(p) => p,
        Err(e) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("invalid policy: {e}"),
            );
        }
    };
    let result = match service
        .import_policy(domain, &request.id, request.fetched_at, policy)
        .await
    {
        crate::cache::rules::Import::Replace(_) => "imported",
        crate::cache::rules::Import::KeepNewer => "kept_newer",
        crate::cache::rules::Import::Expired => "expired",
    };
    json(
        StatusCode::OK,
        &ImportResponse {
            domain: domain.to_owned(),
            result: result.to_owned(),
        },
    )
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_string_pretty(value).unwrap_or_else(|_| "{}".into());
    respond(status, "application/json", body)
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": message }))
}

async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    ctx: Arc<State>,
) -> Response<Full<Bytes>> {
    let service = &ctx.service;
    let path = req.uri().path().to_owned();
    let metrics_path = ctx.config().metrics.path.clone();
    if path == metrics_path {
        if req.method() != Method::GET {
            return error(StatusCode::METHOD_NOT_ALLOWED, "GET only");
        }
        service.update_gauges();
        return respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            service.metrics().render(),
        );
    }
    let Some(rest) = path.strip_prefix("/api/v1/policies") else {
        return error(StatusCode::NOT_FOUND, "not found");
    };
    // A dual-stack listener sees IPv4 loopback peers as ::ffff:127.0.0.1.
    if !peer.ip().to_canonical().is_loopback() {
        return error(
            StatusCode::FORBIDDEN,
            "the admin API answers loopback clients only",
        );
    }
    let now = service.now();
    let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match (req.method().clone(), parts.as_slice()) {
        (Method::GET, []) => {
            // Walks the whole store: not on a worker that answers lookups.
            let walker = service.clone();
            let Ok(snapshot) = tokio::task::spawn_blocking(move || walker.snapshot()).await else {
                return error(StatusCode::INTERNAL_SERVER_ERROR, "cache listing failed");
            };
            let all: Vec<EntryView> = snapshot.iter().map(|(d, e)| view(d, e, now)).collect();
            json(StatusCode::OK, &all)
        }
        (method, [domain, tail @ ..]) => {
            let Ok(domain) = normalize_host(domain) else {
                return error(StatusCode::BAD_REQUEST, "not a valid domain");
            };
            match (method, tail) {
                (Method::GET, []) => match service.cached(&domain) {
                    Some(e) => {
                        let mut v = view(&domain, &e, now);
                        v.dane = ctx.dane.cached(&domain).map(|c| dane_view(&c));
                        json(StatusCode::OK, &v)
                    }
                    None => error(StatusCode::NOT_FOUND, "not in the cache"),
                },
                (Method::DELETE, []) => {
                    let dane = ctx.dane.purge(&domain);
                    if service.purge_everywhere(&domain).await || dane {
                        json(StatusCode::OK, &serde_json::json!({ "purged": domain }))
                    } else {
                        error(StatusCode::NOT_FOUND, "not in the cache")
                    }
                }
                (Method::PUT, []) => import(req, &domain, service).await,
                (Method::POST, ["refresh"]) => {
                    // The DANE verdict is looked up again on the next lookup.
                    ctx.dane.purge(&domain);
                    match service.refresh_now(&domain).await {
                        Some(e) => json(StatusCode::OK, &view(&domain, &e, service.now())),
                        None => error(StatusCode::NOT_FOUND, "no entry after discovery"),
                    }
                }
                _ => error(StatusCode::METHOD_NOT_ALLOWED, "unsupported method or path"),
            }
        }
        _ => error(StatusCode::METHOD_NOT_ALLOWED, "unsupported method or path"),
    }
}

/// Serves metrics and the admin API until `stop` is cancelled.
pub async fn run(listener: TcpListener, ctx: Arc<State>, stop: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(handle(req, peer, ctx).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = tokio::time::timeout(std::time::Duration::from_secs(60), conn).await {
                tracing::debug!(error = %e, "metrics connection timed out");
            }
        });
    }
}
