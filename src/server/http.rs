//! The HTTP listener for Prometheus metrics (`GET {metrics.path}`, text format) and the
//! admin API, whose routes and shapes are [`crate::admin::api`].
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

use crate::admin::api::{
    DaneView, EntryView, ErrorBody, ImportRequest, ImportResponse, MAX_IMPORT_BODY, MailView,
    PurgeResponse, Route, RouteError, TlsrptAction, TlsrptDayView, TlsrptReportView,
};
use crate::mtasts::policy::is_valid_id;
use crate::server::state::State;
use crate::tlsrpt::day::Day;
use crate::tlsrpt::record::Destination;

async fn import(
    req: Request<Incoming>,
    domain: &str,
    service: &crate::cache::policy_cache::PolicyService,
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
    if !is_valid_id(&request.id) {
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
        crate::cache::lifecycle::Import::Replace(_) => "imported",
        crate::cache::lifecycle::Import::KeepNewer => "kept_newer",
        crate::cache::lifecycle::Import::Expired => "expired",
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
    json(
        status,
        &ErrorBody {
            error: message.to_owned(),
        },
    )
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
    let route = Route::parse(req.method().as_str(), &path);
    if route == Err(RouteError::NotFound) {
        return error(StatusCode::NOT_FOUND, "not found");
    }
    // A dual-stack listener sees IPv4 loopback peers as ::ffff:127.0.0.1.
    if !peer.ip().to_canonical().is_loopback() {
        return error(
            StatusCode::FORBIDDEN,
            "the admin API answers loopback clients only",
        );
    }
    let route = match route {
        Ok(route) => route,
        Err(RouteError::BadDomain) => return error(StatusCode::BAD_REQUEST, "not a valid domain"),
        Err(RouteError::BadDay) => return error(StatusCode::BAD_REQUEST, "not a day (YYYY-MM-DD)"),
        Err(RouteError::NotFound | RouteError::Method) => {
            return error(StatusCode::METHOD_NOT_ALLOWED, "unsupported method or path");
        }
    };
    let now = service.now();
    match route {
        Route::List => {
            // Walks the whole store: not on a worker that answers lookups.
            let walker = service.clone();
            let Ok(snapshot) = tokio::task::spawn_blocking(move || walker.snapshot()).await else {
                return error(StatusCode::INTERNAL_SERVER_ERROR, "cache listing failed");
            };
            let all: Vec<EntryView> = snapshot
                .iter()
                .map(|(d, e)| EntryView::of(d, e, now))
                .collect();
            json(StatusCode::OK, &all)
        }
        Route::Show(domain) => match service.cached(&domain) {
            Some(e) => {
                let mut v = EntryView::of(&domain, &e, now);
                v.dane = ctx.dane.cached(&domain).map(|c| DaneView::from(&*c));
                json(StatusCode::OK, &v)
            }
            None => error(StatusCode::NOT_FOUND, "not in the cache"),
        },
        Route::Purge(domain) => {
            let dane = ctx.dane.purge(&domain);
            if service.purge_everywhere(&domain).await || dane {
                json(StatusCode::OK, &PurgeResponse { purged: domain })
            } else {
                error(StatusCode::NOT_FOUND, "not in the cache")
            }
        }
        Route::Import(domain) => import(req, &domain, service).await,
        Route::Tlsrpt(action, day, partial) => tlsrpt(&ctx, action, day, partial).await,
        Route::Refresh(domain) => {
            // The DANE verdict is looked up again on the next lookup.
            ctx.dane.purge(&domain);
            match service.refresh_now(&domain).await {
                Some(e) => json(StatusCode::OK, &EntryView::of(&domain, &e, service.now())),
                None => error(StatusCode::NOT_FOUND, "no entry after discovery"),
            }
        }
    }
}

/// A day's TLSRPT reports: shown, with the mail they make, or sent now.
async fn tlsrpt(
    ctx: &State,
    action: TlsrptAction,
    day: Day,
    partial: bool,
) -> Response<Full<Bytes>> {
    let Some(tlsrpt) = ctx.tlsrpt.clone() else {
        return error(
            StatusCode::NOT_FOUND,
            "TLSRPT is not enabled ([tlsrpt] enable = true)",
        );
    };
    // Looking at a day in progress is always fine; sending its reports closes a
    // period, which only `--partial` asks for.
    let today = Day::of(tlsrpt.now());
    if action == TlsrptAction::Send && day >= today && !partial {
        return error(
            StatusCode::CONFLICT,
            &format!("{day} is not over yet: ask for the partial report (--partial)"),
        );
    }
    let outcomes = match action {
        TlsrptAction::Send => tlsrpt.send_now(day, partial).await,
        TlsrptAction::Show | TlsrptAction::Files => tlsrpt.show(day).await,
    };
    let outcomes = match outcomes {
        Ok(o) => o,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let reports = outcomes
        .iter()
        .map(|o| {
            let mut view = TlsrptReportView::of(o);
            if action == TlsrptAction::Files {
                view.messages = o
                    .destinations
                    .iter()
                    .filter_map(|(dest, _)| match dest {
                        Destination::Mailto(to) => Some(MailView {
                            to: to.clone(),
                            message: String::from_utf8_lossy(&tlsrpt.message(&o.report, to)?)
                                .into_owned(),
                        }),
                        Destination::Https(_) => None,
                    })
                    .collect();
            }
            view
        })
        .collect();
    json(
        StatusCode::OK,
        &TlsrptDayView {
            day: day.to_string(),
            partial: partial || day >= today,
            unstored: tlsrpt.unstored(),
            store_damage: tlsrpt.store_damage().map(str::to_owned),
            reports,
        },
    )
}

/// Serves metrics and the admin API until `stop` is cancelled, then waits for the
/// requests in progress (an admin refresh runs a whole discovery) before returning:
/// the daemon's shutdown bounds that wait and drops what is left.
pub async fn run(listener: TcpListener, ctx: Arc<State>, stop: CancellationToken) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
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
        conns.spawn(async move {
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
        // Reap finished connections so the set does not grow without bound.
        while conns.try_join_next().is_some() {}
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}
