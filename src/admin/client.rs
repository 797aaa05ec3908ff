//! A typed client of the admin API, for the commands that work through the running
//! daemon (`cache`, `warm`, `import`, `doctor`).

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use thiserror::Error;

use super::api::{EntryView, ErrorBody, ImportRequest, ImportResponse, PurgeResponse, Route};

#[derive(Debug, Error)]
pub enum AdminError {
    /// No answer: the daemon is not running, or not at this address.
    #[error("cannot reach the daemon's admin API at {base}: {message}")]
    Unreachable { base: String, message: String },
    /// Reached, but no answer in time: the daemon is still at the work asked of it.
    #[error(
        "the daemon at {base} took longer than {timeout:?} to answer; what it was asked may still finish (see its log)"
    )]
    TimedOut { base: String, timeout: Duration },
    /// The daemon refused the request, with its reason.
    #[error("{message}")]
    Refused { status: u16, message: String },
    /// An answer that is not what the API promises.
    #[error("unexpected admin API answer: {0}")]
    BadAnswer(String),
}

impl AdminError {
    /// Whether the daemon refused the request as wrong (4xx), rather than failing.
    pub fn is_refusal(&self) -> bool {
        matches!(self, AdminError::Refused { status, .. } if (400..500).contains(status))
    }
}

/// The admin API of one daemon: `http://IP:PORT`.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base: String,
    http: reqwest::Client,
    timeout: Duration,
}

impl AdminClient {
    /// A client for the daemon at `base`; requests time out after `timeout` (a refresh
    /// runs a whole discovery).
    pub fn new(base: &str, timeout: Duration) -> Result<Self, AdminError> {
        let failed = |message: String| AdminError::Unreachable {
            base: base.to_owned(),
            message,
        };
        // Plain HTTP on loopback: the TLS settings are never used, but the client
        // needs some, and these depend on no process-wide default.
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| failed(e.to_string()))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(timeout)
            // Loopback only: never through a proxy.
            .no_proxy()
            .build()
            .map_err(|e| failed(e.to_string()))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            http,
            timeout,
        })
    }

    pub async fn list(&self) -> Result<Vec<EntryView>, AdminError> {
        self.call(&Route::List, None).await
    }

    pub async fn show(&self, domain: &str) -> Result<EntryView, AdminError> {
        self.call(&Route::Show(domain.to_owned()), None).await
    }

    pub async fn purge(&self, domain: &str) -> Result<PurgeResponse, AdminError> {
        self.call(&Route::Purge(domain.to_owned()), None).await
    }

    pub async fn refresh(&self, domain: &str) -> Result<EntryView, AdminError> {
        self.call(&Route::Refresh(domain.to_owned()), None).await
    }

    pub async fn import(
        &self,
        domain: &str,
        request: &ImportRequest,
    ) -> Result<ImportResponse, AdminError> {
        let body = serde_json::to_vec(request).map_err(|e| AdminError::BadAnswer(e.to_string()))?;
        self.call(&Route::Import(domain.to_owned()), Some(body))
            .await
    }

    /// A day's TLSRPT reports: shown, with their mail, or sent now.
    pub async fn tlsrpt(
        &self,
        action: crate::admin::api::TlsrptAction,
        day: crate::tlsrpt::day::Day,
        partial: bool,
    ) -> Result<crate::admin::api::TlsrptDayView, AdminError> {
        self.call(&Route::Tlsrpt(action, day, partial), None).await
    }

    /// The raw JSON text of a route's answer (for `--json`), or the refusal.
    pub async fn raw(&self, route: &Route) -> Result<String, AdminError> {
        self.send(route, None).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        route: &Route,
        body: Option<Vec<u8>>,
    ) -> Result<T, AdminError> {
        let text = self.send(route, body).await?;
        serde_json::from_str(&text).map_err(|e| AdminError::BadAnswer(e.to_string()))
    }

    async fn send(&self, route: &Route, body: Option<Vec<u8>>) -> Result<String, AdminError> {
        let (method, path) = route.request();
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|e| AdminError::BadAnswer(e.to_string()))?;
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let unreachable = |e: reqwest::Error| {
            if e.is_timeout() && !e.is_connect() {
                AdminError::TimedOut {
                    base: self.base.clone(),
                    timeout: self.timeout,
                }
            } else {
                AdminError::Unreachable {
                    base: self.base.clone(),
                    message: crate::net::error_chain(&e),
                }
            }
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let text = response.text().await.map_err(unreachable)?;
        if status.is_success() {
            return Ok(text);
        }
        // The daemon's reason, not its JSON.
        let message = serde_json::from_str::<ErrorBody>(&text)
            .map(|e| e.error)
            .unwrap_or_else(|_| format!("{status}: {}", text.trim()));
        Err(AdminError::Refused {
            status: status.as_u16(),
            message,
        })
    }
}
