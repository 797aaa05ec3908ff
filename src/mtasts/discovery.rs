//! Policy discovery (RFC 8461 §3): the `_mta-sts` TXT record over DNS and the policy
//! file over HTTPS with Web PKI validation. One hickory resolver serves both the TXT
//! lookups and the HTTPS host's addresses, so one `nameservers` setting governs all DNS.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::RData;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::{Config, FetchConfig, ResolverConfig};
use crate::mtasts::policy::Policy;
use crate::mtasts::policy::{PolicyError, StsRecord, parse_policy, select_sts_record};
use crate::net::address::{GuardedResolver, PrivateOnly};
use crate::net::resolver::build_resolver;
use crate::net::tls::{find_rustls, load_pem_certs};
use crate::net::{SetupError, USER_AGENT, dns_reach, error_chain};

/// RFC 8461 §3.3: bodies over 64 KiB are refused.
pub const MAX_POLICY_BYTES: usize = 64 * 1024;

/// The result of looking up `_mta-sts.DOMAIN` TXT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum TxtLookup {
    /// Exactly one valid STS record.
    Found { record: StsRecord },
    /// The domain publishes no (usable) policy: NXDOMAIN, no TXT, or invalid records.
    NoPolicy { reason: String },
    /// The lookup itself failed (SERVFAIL, timeout, ...): not the same as "no policy".
    Failed { reason: String },
}

/// Why a policy file could not be fetched or used. `class()` is a stable label.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FetchError {
    #[error("cannot resolve {host}: {reason}")]
    Dns { host: String, reason: String },
    #[error(
        "{host} resolves only to non-public addresses ({addrs}); refused (fetch.allow_private_addresses = false)"
    )]
    PrivateAddress { host: String, addrs: String },
    #[error("TLS/certificate error: {0}")]
    Tls(String),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("HTTP status {status}{}", location.as_ref().map(|l| format!(" (redirect to {l} not followed)")).unwrap_or_default())]
    HttpStatus {
        status: u16,
        location: Option<String>,
    },
    #[error("content type {0:?} is not text/plain")]
    ContentType(String),
    #[error("policy body exceeds {MAX_POLICY_BYTES} bytes")]
    TooLarge,
    #[error("invalid policy: {0}")]
    Parse(PolicyError),
    #[error("HTTP error: {0}")]
    Http(String),
}

impl FetchError {
    /// The failure class, a stable label for logs, metrics and the cache.
    pub fn class(&self) -> FailureClass {
        match self {
            FetchError::Dns { .. } => FailureClass::Dns,
            FetchError::PrivateAddress { .. } => FailureClass::PrivateAddress,
            FetchError::Tls(_) => FailureClass::Tls,
            FetchError::Connect(_) => FailureClass::Connect,
            FetchError::Timeout(_) => FailureClass::Timeout,
            FetchError::HttpStatus { .. } => FailureClass::HttpStatus,
            FetchError::ContentType(_) => FailureClass::ContentType,
            FetchError::TooLarge => FailureClass::TooLarge,
            FetchError::Parse(_) => FailureClass::Parse,
            FetchError::Http(_) => FailureClass::Http,
        }
    }
}

/// Why a discovery step failed: the TXT lookup, or one class of fetch failure. The labels are stable: they appear in logs, metrics
/// and the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// The `_mta-sts` TXT lookup itself failed (SERVFAIL, timeout): not "no policy".
    Txt,
    /// The policy host `mta-sts.DOMAIN` could not be resolved.
    Dns,
    PrivateAddress,
    Tls,
    Connect,
    Timeout,
    HttpStatus,
    ContentType,
    TooLarge,
    Parse,
    Http,
    /// A label this version does not know (an entry written by a newer version).
    #[serde(other)]
    Other,
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Txt => "txt",
            FailureClass::Dns => "dns",
            FailureClass::PrivateAddress => "private_address",
            FailureClass::Tls => "tls",
            FailureClass::Connect => "connect",
            FailureClass::Timeout => "timeout",
            FailureClass::HttpStatus => "http_status",
            FailureClass::ContentType => "content_type",
            FailureClass::TooLarge => "too_large",
            FailureClass::Parse => "parse",
            FailureClass::Http => "http",
            FailureClass::Other => "other",
        }
    }
}

impl std::fmt::Display for FailureClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Library-level options. [`DiscoveryOptions::from_config`] fills them from the config file;
/// tests and tools can set the hooks that have no config counterpart.
#[derive(Debug, Clone)]
pub struct DiscoveryOptions {
    pub resolver: ResolverConfig,
    pub fetch: FetchConfig,
    /// Trust the operating system's root store (plus `extra_roots`).
    pub system_roots: bool,
    /// Extra trust anchors (the config's `ca_file`, or a test CA).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// Fetch from this port instead of 443 (test servers on loopback).
    pub https_port: Option<u16>,
}

impl DiscoveryOptions {
    pub fn from_config(config: &Config) -> Result<Self, SetupError> {
        let mut extra_roots = Vec::new();
        if let Some(path) = &config.fetch.ca_file {
            extra_roots = load_pem_certs(path)?;
        }
        Ok(Self {
            resolver: config.resolver.clone(),
            fetch: config.fetch.clone(),
            system_roots: true,
            extra_roots,
            https_port: None,
        })
    }
}

/// Does DNS and HTTPS for policy discovery. Cheap to clone; one per process.
#[derive(Clone)]
pub struct Discoverer {
    resolver: TokioResolver,
    http: reqwest::Client,
    /// The TLS settings of `http` (trust anchors), for other TLS checks
    /// (`mta-stsd check`'s probes of MX hosts).
    tls: Arc<rustls::ClientConfig>,
    https_port: Option<u16>,
    fetch_timeout: Duration,
    /// The DNS servers the resolver asks, to tell a refusal from a timeout.
    nameservers: Vec<std::net::SocketAddr>,
}

impl fmt::Debug for Discoverer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Discoverer").finish_non_exhaustive()
    }
}

impl Discoverer {
    pub fn new(opts: DiscoveryOptions) -> Result<Self, SetupError> {
        let resolver = build_resolver(&opts.resolver, None)?;
        let tls = crate::net::tls::client_config(opts.system_roots, &opts.extra_roots)?;
        let shared_tls = Arc::new(tls.clone());
        let guarded = GuardedResolver {
            resolver: resolver.clone(),
            allow_private: opts.fetch.allow_private_addresses,
        };
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .dns_resolver(guarded)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(opts.fetch.timeout)
            .connect_timeout(opts.fetch.timeout)
            .user_agent(USER_AGENT)
            .no_proxy()
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(1)
            .build()
            .map_err(|e| SetupError::Http(error_chain(&e)))?;
        Ok(Self {
            resolver,
            http,
            tls: shared_tls,
            https_port: opts.https_port,
            fetch_timeout: opts.fetch.timeout,
            nameservers: dns_reach::servers_of(&opts.resolver).unwrap_or_default(),
        })
    }

    /// The resolver discovery asks (`[resolver]`).
    pub fn resolver(&self) -> &TokioResolver {
        &self.resolver
    }

    /// The TLS settings (trust anchors) policy fetches use.
    pub fn tls_config(&self) -> Arc<rustls::ClientConfig> {
        self.tls.clone()
    }

    /// The port policy hosts are reached on (443, or a test server's).
    pub fn https_port(&self) -> u16 {
        self.https_port.unwrap_or(443)
    }

    /// The HTTPS client of policy fetches (Web PKI, timeouts, private addresses
    /// refused unless allowed), for other uploads that must follow the same rules.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Looks up and selects the `_mta-sts.DOMAIN` TXT record (`domain` normalised).
    pub async fn lookup_txt(&self, domain: &str) -> TxtLookup {
        let name = format!("_mta-sts.{domain}.");
        match self.resolver.txt_lookup(name.as_str()).await {
            Ok(lookup) => {
                let records: Vec<String> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::TXT(txt) => Some(
                            txt.txt_data
                                .iter()
                                .map(|s| String::from_utf8_lossy(s))
                                .collect::<String>(),
                        ),
                        _ => None,
                    })
                    .collect();
                match select_sts_record(&records) {
                    Ok(record) => TxtLookup::Found { record },
                    Err(e) => TxtLookup::NoPolicy {
                        reason: e.to_string(),
                    },
                }
            }
            Err(e) if e.is_nx_domain() => TxtLookup::NoPolicy {
                reason: format!("{name} does not exist (NXDOMAIN)"),
            },
            Err(e) if e.is_no_records_found() => TxtLookup::NoPolicy {
                reason: format!("{name} has no TXT record"),
            },
            Err(NetError::Timeout) => {
                let refusing = dns_reach::refusing(&self.nameservers, dns_reach::PROBE_WAIT).await;
                let text = dns_reach::timeout_text(&self.nameservers, &refusing);
                TxtLookup::Failed {
                    reason: format!("TXT lookup of {name} failed: {text}"),
                }
            }
            Err(e) => TxtLookup::Failed {
                reason: format!("TXT lookup of {name} failed: {e}"),
            },
        }
    }

    /// The URL of a domain's policy file.
    pub fn policy_url(&self, domain: &str) -> String {
        match self.https_port {
            Some(port) => format!("https://mta-sts.{domain}:{port}/.well-known/mta-sts.txt"),
            None => format!("https://mta-sts.{domain}/.well-known/mta-sts.txt"),
        }
    }

    /// Fetches and parses `https://mta-sts.DOMAIN/.well-known/mta-sts.txt`.
    pub async fn fetch_policy(&self, domain: &str) -> Result<Policy, FetchError> {
        // reqwest's own timeout covers connect, headers and body; this one is a backstop.
        let limit = self.fetch_timeout;
        match tokio::time::timeout(limit + Duration::from_secs(1), self.fetch_inner(domain)).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Timeout(limit)),
        }
    }

    async fn fetch_inner(&self, domain: &str) -> Result<Policy, FetchError> {
        let body = self.fetch_body(&self.policy_url(domain), domain).await?;
        parse_policy(&body).map_err(FetchError::Parse)
    }

    /// GETs a policy file's bytes under RFC 8461 §3.3's rules: status 200 (no
    /// redirects followed), `text/plain`, at most 64 KiB; `domain` names the policy
    /// domain in errors.
    pub async fn fetch_body(&self, url: &str, domain: &str) -> Result<Vec<u8>, FetchError> {
        let started = Instant::now();
        let mut resp = self
            .http
            .get(url)
            .header(reqwest::header::CACHE_CONTROL, "no-cache")
            .send()
            .await
            .map_err(|e| self.classify(&e, domain))?;
        let status = resp.status();
        if status != reqwest::StatusCode::OK {
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            return Err(FetchError::HttpStatus {
                status: status.as_u16(),
                location: location.filter(|_| status.is_redirection()),
            });
        }
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        if !is_text_plain(&content_type) {
            return Err(FetchError::ContentType(content_type));
        }
        if resp
            .content_length()
            .is_some_and(|len| len > MAX_POLICY_BYTES as u64)
        {
            return Err(FetchError::TooLarge);
        }
        let mut body: Vec<u8> = Vec::with_capacity(1024);
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.classify(&e, domain))? {
            if body.len() + chunk.len() > MAX_POLICY_BYTES {
                return Err(FetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        tracing::debug!(domain, bytes = body.len(), elapsed = ?started.elapsed(), "policy fetched");
        Ok(body)
    }

    fn classify(&self, err: &reqwest::Error, domain: &str) -> FetchError {
        let host = format!("mta-sts.{domain}");
        let mut source: Option<&(dyn StdError + 'static)> = Some(err);
        while let Some(e) = source {
            if let Some(p) = e.downcast_ref::<PrivateOnly>() {
                return FetchError::PrivateAddress {
                    host,
                    addrs: p.0.clone(),
                };
            }
            if let Some(d) = e.downcast_ref::<hickory_resolver::net::NetError>() {
                return FetchError::Dns {
                    host,
                    reason: d.to_string(),
                };
            }
            if let Some(t) = find_rustls(e) {
                return FetchError::Tls(t.to_string());
            }
            source = e.source();
        }
        if err.is_timeout() {
            FetchError::Timeout(self.fetch_timeout)
        } else if err.is_connect() {
            FetchError::Connect(error_chain(err))
        } else {
            FetchError::Http(error_chain(err))
        }
    }
}

/// `text/plain`, with any parameters (RFC 8461 §3.3 only requires the media type).
pub fn is_text_plain(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/plain"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_failure_class_has_a_zeroed_metric_label() {
        use super::FailureClass::*;
        for c in [
            Txt,
            Dns,
            PrivateAddress,
            Tls,
            Connect,
            Timeout,
            HttpStatus,
            ContentType,
            TooLarge,
            Parse,
            Http,
        ] {
            assert!(
                crate::metrics::FETCH_FAILURE_CLASSES.contains(&c.as_str()),
                "{}",
                c.as_str()
            );
        }
    }

    use super::*;

    #[test]
    fn content_type_rules() {
        assert!(is_text_plain("text/plain"));
        assert!(is_text_plain("Text/Plain; charset=utf-8"));
        assert!(is_text_plain("text/plain ; format=flowed"));
        assert!(!is_text_plain("text/html"));
        assert!(!is_text_plain("text/plainx"));
        assert!(!is_text_plain(""));
        assert!(!is_text_plain("application/octet-stream"));
    }

    #[test]
    fn fetch_error_messages() {
        let e = FetchError::HttpStatus {
            status: 301,
            location: Some("https://elsewhere/".into()),
        };
        assert_eq!(
            e.to_string(),
            "HTTP status 301 (redirect to https://elsewhere/ not followed)"
        );
        assert_eq!(
            FetchError::HttpStatus {
                status: 404,
                location: None
            }
            .to_string(),
            "HTTP status 404"
        );
        assert_eq!(e.class().as_str(), "http_status");
    }
}
