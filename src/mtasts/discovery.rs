//! Policy discovery (RFC 8461 §3): the `_mta-sts` TXT record over DNS and the policy
//! file over HTTPS with Web PKI validation. One hickory resolver serves both the TXT
//! lookups and the HTTPS host's addresses, so one `nameservers` setting governs all DNS.

use std::error::Error as StdError;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolverConfig as HickoryConfig, ResolverOpts,
};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::{Config, FetchConfig, ResolverConfig};
use crate::mtasts::dns_reach;
use crate::mtasts::policy::Policy;
use crate::mtasts::policy::{PolicyError, StsRecord, parse_policy, select_sts_record};

/// RFC 8461 §3.3: bodies over 64 KiB are refused.
pub const MAX_POLICY_BYTES: usize = 64 * 1024;

pub const USER_AGENT: &str = concat!("mta-stsd/", env!("CARGO_PKG_VERSION"));

#[derive(Debug, Error)]
pub enum SetupError {
    #[error("cannot set up the DNS resolver: {0}")]
    Resolver(String),
    #[error("cannot read CA file {path}: {message}")]
    CaFile { path: String, message: String },
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    #[error("cannot set up the HTTPS client: {0}")]
    Http(String),
}

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

/// Reads every certificate from a PEM file.
pub fn load_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, SetupError> {
    let err = |message: String| SetupError::CaFile {
        path: path.display().to_string(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no certificates found".into()));
    }
    Ok(certs)
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

/// Builds the hickory resolver from `[resolver]`; with `anchors`, it validates
/// DNSSEC itself (for DANE) and marks every record's proof.
pub fn build_resolver(
    cfg: &ResolverConfig,
    anchors: Option<std::sync::Arc<hickory_resolver::proto::dnssec::TrustAnchors>>,
) -> Result<TokioResolver, SetupError> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = if cfg.nameservers.is_empty() {
        TokioResolver::builder(provider).map_err(|e| SetupError::Resolver(e.to_string()))?
    } else {
        let servers = cfg
            .nameservers
            .iter()
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        TokioResolver::builder_with_config(HickoryConfig::from_name_servers(servers), provider)
    };
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.timeout = cfg.timeout;
    // hickory counts retries after the first try; `resolver.attempts` counts them all.
    opts.attempts = cfg.attempts.get() - 1;
    // We always ask fully-qualified names; never append search domains.
    opts.ndots = 0;
    if let Some(anchors) = anchors {
        builder = builder.with_trust_anchor(anchors);
    }
    builder
        .build()
        .map_err(|e| SetupError::Resolver(e.to_string()))
}

impl Discoverer {
    pub fn new(opts: DiscoveryOptions) -> Result<Self, SetupError> {
        let resolver = build_resolver(&opts.resolver, None)?;
        let tls = tls_config(&opts)?;
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

/// rustls errors travel inside (possibly nested) `io::Error`s, whose `source()` skips
/// the wrapped error itself.
fn find_rustls<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut current: &(dyn StdError + 'static) = e;
    loop {
        if let Some(t) = current.downcast_ref::<rustls::Error>() {
            return Some(t);
        }
        let inner = current.downcast_ref::<std::io::Error>()?.get_ref()?;
        current = inner;
    }
}

/// `text/plain`, with any parameters (RFC 8461 §3.3 only requires the media type).
pub fn is_text_plain(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/plain"))
}

/// Joins an error and its sources into one line.
pub fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        source = e.source();
    }
    humane(&out)
}

/// The libraries' error texts as people read them: rustls prints names as
/// `DnsName("mx.example")` and times as `1796654724 (UNIX)`, hickory prints a whole
/// `Query { name: Name("x."), query_type: A, ... }`. Pure.
pub fn humane(text: &str) -> String {
    let mut out = text.to_owned();
    // DnsName("a.example") -> a.example; IpAddress(..) left as the address inside.
    for wrapper in ["DnsName(\"", "IpAddress(\""] {
        while let Some(at) = out.find(wrapper) {
            let inner = &out[at + wrapper.len()..];
            let Some(end) = inner.find("\")") else { break };
            let name = inner[..end].to_owned();
            out.replace_range(at..at + wrapper.len() + end + 2, &name);
        }
    }
    // rustls's epoch seconds: "verification time 1796654724 (UNIX), but certificate is
    // not valid after 1796568324 (86400 seconds ago)" -> RFC 3339 times, days.
    let when = |secs: u64| {
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
        )
        .to_string()
    };
    for marker in [" (UNIX)", "not valid after ", "not valid before "] {
        let mut from = 0;
        while let Some(found) = out[from..].find(marker) {
            let at = from + found;
            // The number is before " (UNIX)", after the other two markers.
            let (start, end) = if marker == " (UNIX)" {
                let start = out[..at]
                    .rfind(|c: char| !c.is_ascii_digit())
                    .map_or(0, |i| i + 1);
                (start, at)
            } else {
                let start = at + marker.len();
                let len = out[start..]
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(out.len() - start);
                (start, start + len)
            };
            let Ok(secs) = out[start..end].parse::<u64>() else {
                from = at + marker.len();
                continue;
            };
            let cut = if marker == " (UNIX)" {
                end + marker.len()
            } else {
                end
            };
            let text = when(secs);
            out.replace_range(start..cut, &text);
            from = start + text.len();
        }
    }
    for unit in [" seconds ago)", " seconds in future)"] {
        if let Some(at) = out.find(unit) {
            let start = out[..at].rfind('(').map_or(at, |i| i + 1);
            if let Ok(secs) = out[start..at].parse::<u64>()
                && secs >= 86_400
            {
                let days = secs / 86_400;
                let rest = unit.trim_start_matches(" seconds");
                let plural = if days == 1 { "" } else { "s" };
                out.replace_range(start..at + unit.len(), &format!("{days} day{plural}{rest}"));
            }
        }
    }
    // "Query { name: Name(\"x.\"), query_type: A, query_class: IN }" -> "x (A)".
    while let Some(at) = out.find("Query { name: Name(\"") {
        let rest = &out[at..];
        let Some(close) = rest.find(" }") else { break };
        let body = &rest[..close];
        let name = body
            .split("Name(\"")
            .nth(1)
            .and_then(|n| n.split('"').next())
            .unwrap_or("")
            .trim_end_matches('.')
            .to_owned();
        let qtype = body
            .split("query_type: ")
            .nth(1)
            .and_then(|t| t.split(',').next())
            .unwrap_or("")
            .to_owned();
        out.replace_range(at..at + close + 2, &format!("{name} ({qtype})"));
    }
    out
}

fn tls_config(opts: &DiscoveryOptions) -> Result<rustls::ClientConfig, SetupError> {
    let mut roots = rustls::RootCertStore::empty();
    if opts.system_roots {
        let native = rustls_native_certs::load_native_certs();
        let (added, _ignored) = roots.add_parsable_certificates(native.certs);
        if added == 0 {
            tracing::warn!("no system CA certificates found; only fetch.ca_file is trusted");
        }
    }
    for cert in &opts.extra_roots {
        roots
            .add(cert.clone())
            .map_err(|e| SetupError::Tls(format!("extra CA certificate rejected: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| SetupError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Marker error: every address of the policy host is non-global.
#[derive(Debug)]
struct PrivateOnly(String);

impl fmt::Display for PrivateOnly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "only non-public addresses: {}", self.0)
    }
}

impl StdError for PrivateOnly {}

/// Resolves the HTTPS host through hickory and drops non-global addresses, so a
/// recipient domain cannot point the daemon at internal hosts. Filtering here (not
/// before the request) also defeats DNS rebinding between check and connect.
struct GuardedResolver {
    resolver: TokioResolver,
    allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let resolver = self.resolver.clone();
        let allow_private = self.allow_private;
        let host = name.as_str().trim_end_matches('.').to_owned();
        Box::pin(async move {
            let ips = resolver.lookup_ip(format!("{host}.")).await?;
            let all: Vec<IpAddr> = ips.iter().collect();
            let usable: Vec<SocketAddr> = all
                .iter()
                .filter(|ip| allow_private || is_global(**ip))
                .map(|ip| SocketAddr::new(*ip, 0))
                .collect();
            if usable.is_empty() {
                let list = all
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(Box::new(PrivateOnly(list)) as Box<dyn StdError + Send + Sync>);
            }
            Ok(Box::new(usable.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Whether an address is reachable on the public Internet (not loopback, private,
/// link-local, shared, documentation, reserved, multicast, ...).
pub fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_global_v4(v4),
        IpAddr::V6(v6) => is_global_v6(v6),
    }
}

fn is_global_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0
        || a == 10
        || a == 127
        || (a == 100 && (64..128).contains(&b))
        || (a == 169 && b == 254)
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 192 && b == 0 && c == 2)
        || (a == 192 && b == 88 && c == 99)
        || (a == 192 && b == 168)
        || (a == 198 && (18..20).contains(&b))
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113)
        || a >= 224)
}

fn is_global_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_global_v4(v4);
    }
    let s = ip.segments();
    // NAT64 well-known prefix 64:ff9b::/96: judge the embedded IPv4 address.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        let [a, b] = s[6].to_be_bytes();
        let [c, d] = s[7].to_be_bytes();
        return is_global_v4(Ipv4Addr::new(a, b, c, d));
    }
    // Global unicast is 2000::/3; within it, exclude documentation and IETF special use.
    (s[0] & 0xe000) == 0x2000
        && !(s[0] == 0x2001 && s[1] == 0x0db8)
        && !(s[0] == 0x2001 && s[1] < 0x0200)
        && s[0] != 0x2002 // 6to4 relays to arbitrary IPv4
        && !(s[0] == 0x3fff && s[1] < 0x1000)
}

#[cfg(test)]
mod tests {
    #[test]
    fn library_errors_read_as_text_for_people() {
        use super::humane;
        assert_eq!(
            humane(
                "invalid peer certificate: certificate not valid for name \"mta-sts.x.test\"; certificate is only valid for DnsName(\"wrong-name.invalid\") or DnsName(\"b.test\")"
            ),
            "invalid peer certificate: certificate not valid for name \"mta-sts.x.test\"; certificate is only valid for wrong-name.invalid or b.test"
        );
        assert_eq!(
            humane(
                "certificate expired: verification time 1796654724 (UNIX), but certificate is not valid after 1796568324 (86400 seconds ago)"
            ),
            "certificate expired: verification time 2026-12-07T14:45:24Z, but certificate is not valid after 2026-12-06T14:45:24Z (1 day ago)"
        );
        assert_eq!(
            humane(
                "no record found for Query { name: Name(\"mta-sts.nothing.test.\"), query_type: A, query_class: IN }"
            ),
            "no record found for mta-sts.nothing.test (A)"
        );
        assert_eq!(humane("plain text"), "plain text");
    }

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
    fn global_addresses() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "2a00:1450:4001:80b::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(is_global(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::1",
        ] {
            assert!(!is_global(ip.parse().unwrap()), "{ip}");
        }
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
