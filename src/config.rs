//! The TOML configuration. Every setting has a default, so no file is needed;
//! unknown keys are errors so that a typo never silently changes behaviour.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

/// Where the packaged configuration lives; every command reads it when it exists and
/// no `--config` is given.
pub const DEFAULT_PATH: &str = "/etc/mta-stsd/mta-stsd.toml";

#[derive(Debug, Error)]
pub enum ConfigError {
    // The I/O error's text is part of this message and not also its source, so that
    // a report of the whole chain does not say it twice.
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    /// Every problem found, each naming its setting; `origin` is the file.
    #[error("{}", Problems(origin, problems))]
    Invalid {
        origin: String,
        problems: Vec<Problem>,
    },
}

/// One setting with a value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub setting: &'static str,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid setting {}: {}", self.setting, self.message)
    }
}

impl std::error::Error for Problem {}

impl From<Problem> for ConfigError {
    fn from(p: Problem) -> Self {
        ConfigError::Invalid {
            origin: "configuration".to_owned(),
            problems: vec![p],
        }
    }
}

/// One line per problem, each with the file name, as compilers report errors.
struct Problems<'a>(&'a String, &'a Vec<Problem>);

impl std::fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.1.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {p}", self.0)?;
        }
        Ok(())
    }
}

impl ConfigError {
    /// The problems of an `Invalid` error (empty for the other kinds).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

fn invalid(setting: &'static str, message: impl Into<String>) -> Problem {
    Problem {
        setting,
        message: message.into(),
    }
}

/// The names `log.level` takes on its own.
pub const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Whether `filter` is a log level or a list of tracing directives whose every part
/// names a level: a bare word that is not a level (`warning`, `inof`) would be read
/// by tracing as a module name and silence the daemon, so it is refused.
pub fn log_filter_problem(filter: &str) -> Option<String> {
    let allowed = || {
        format!(
            "{filter:?} is not a log level: use one of {} or directives like \"mta_stsd=debug,warn\"",
            LOG_LEVELS.join(", ")
        )
    };
    if filter.trim().is_empty() {
        return Some(allowed());
    }
    for directive in filter.split(',') {
        let directive = directive.trim();
        let level = match directive.rsplit_once('=') {
            Some((target, level)) if !target.is_empty() => level,
            Some(_) => return Some(allowed()),
            None => directive,
        };
        if !LOG_LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Some(allowed());
        }
    }
    if tracing_subscriber::EnvFilter::try_new(filter).is_err() {
        return Some(allowed());
    }
    None
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub resolver: ResolverConfig,
    pub fetch: FetchConfig,
    pub lookup: LookupConfig,
    pub cache: CacheConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub dane: DaneConfig,
    /// Options per socketmap name; `default` applies to names not listed.
    pub zones: BTreeMap<String, ZoneOptions>,
    /// Where this configuration came from (a file name, or "built-in defaults"), for
    /// error messages.
    #[serde(skip)]
    pub origin: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::default(),
            resolver: ResolverConfig::default(),
            fetch: FetchConfig::default(),
            lookup: LookupConfig::default(),
            cache: CacheConfig::default(),
            metrics: MetricsConfig::default(),
            log: LogConfig::default(),
            dane: DaneConfig::default(),
            zones: BTreeMap::new(),
            origin: "built-in defaults".to_owned(),
        }
    }
}

/// Whether DANE takes precedence over MTA-STS (RFC 8461 §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DaneMode {
    Off,
    On,
    /// On when the local Postfix validates DNSSEC (`smtp_dns_support_level =
    /// dnssec`): DANE answers to a Postfix without DNSSEC would never deliver
    /// (`dane-only`) or protect nothing (`dane`).
    #[default]
    Auto,
}

/// Who validates DNSSEC for DANE lookups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DaneValidation {
    /// The daemon validates the chain itself from the trust anchor.
    #[default]
    Internal,
    /// Trust the AD bit of a validating resolver on loopback (`resolver.nameservers`).
    Resolver,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaneConfig {
    pub mode: DaneMode,
    pub validation: DaneValidation,
    /// DNSKEY records of the root (zone-file format); default: the built-in IANA root
    /// keys (KSK-2017 and KSK-2024).
    pub trust_anchor: Option<PathBuf>,
    /// Postfix's configuration directory, read by `mode = "auto"` (default: Postfix's
    /// own default, /etc/postfix).
    pub postfix_config: Option<PathBuf>,
    /// DANE verdicts remembered in memory at most (least recently used forgotten).
    pub cache_entries: NonZeroUsize,
}

impl Default for DaneConfig {
    fn default() -> Self {
        Self {
            mode: DaneMode::Auto,
            validation: DaneValidation::Internal,
            trust_anchor: None,
            postfix_config: None,
            cache_entries: nonzero(50_000),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// `"IP:PORT"` for TCP, `"unix:/path"` for a unix socket.
    pub listen: Vec<ListenAddr>,
    /// Permissions of unix sockets, written as an octal string.
    pub socket_mode: SocketMode,
    /// Connections served at once; more wait to be accepted (back-pressure).
    pub max_connections: NonZeroUsize,
    /// Largest request accepted, in bytes.
    pub max_request_size: usize,
    /// A connection with no request begun for this long is closed. Postfix closes its
    /// own idle socketmap connections after 10 s, so this only ends forgotten or
    /// hostile connections that would otherwise hold a slot.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A request must arrive whole within this time of its first byte.
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: vec![ListenAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], 8461)))],
            socket_mode: SocketMode(0o666),
            max_connections: nonzero(1024),
            max_request_size: DEFAULT_MAX_REQUEST,
            idle_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResolverConfig {
    /// `"IP:PORT"` (or `"IP"` for port 53) of recursive resolvers; empty means the
    /// system's /etc/resolv.conf.
    #[serde(deserialize_with = "nameservers")]
    pub nameservers: Vec<SocketAddr>,
    /// Time for one DNS query attempt.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts per query in all (the first try included) before it counts as failed.
    pub attempts: NonZeroUsize,
}

/// `"IP:PORT"`, `"[IPv6]:PORT"`, or a bare IP address meaning port 53, as
/// resolv.conf writes them.
fn nameservers<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    let given: Vec<String> = Vec::deserialize(d)?;
    given
        .iter()
        .map(|s| {
            s.parse::<SocketAddr>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "{s:?} is not an IP address or IP:PORT (write \"192.0.2.53\", \"192.0.2.53:53\" or \"[2001:db8::53]:53\")"
                    ))
                })
        })
        .collect()
}

impl Default for ResolverConfig {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            timeout: Duration::from_secs(3),
            attempts: nonzero(2),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FetchConfig {
    /// Whole-request limit for fetching a policy file.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Extra trusted CA certificates (PEM), in addition to the system store.
    pub ca_file: Option<PathBuf>,
    /// Allow policy hosts that resolve to loopback, private, link-local and other
    /// non-global addresses.
    pub allow_private_addresses: bool,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(15),
            ca_file: None,
            allow_private_addresses: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LookupConfig {
    /// The longest a socketmap request waits for a discovery on a cache miss.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
}

impl Default for LookupConfig {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Directory of the persistent cache. Default: `$STATE_DIRECTORY` (systemd), else
    /// `$XDG_STATE_HOME/mta-stsd`, else `~/.local/state/mta-stsd`.
    pub path: Option<PathBuf>,
    /// Re-check a cached policy's TXT id in the background when the last check is older.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// How long "this domain has no policy" is remembered.
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// Re-fetch a policy at the latest this long after it was fetched (or at half of
    /// its max_age, whichever comes first), whatever the TXT record says.
    #[serde(with = "humantime_serde")]
    pub refresh_after: Duration,
    /// Wait after a failed fetch before trying the same domain again (at least 5m).
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// How often the background refresher looks for due policies.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Background refreshes run at once.
    pub refresh_concurrency: NonZeroUsize,
    /// Domains without a policy remembered in memory at most (least recently used
    /// forgotten first). They are never written to disk and never displace a policy.
    /// The default covers 50,000 distinct policy-less recipient domains per
    /// `negative_ttl` (166 new ones a second at 5 minutes) in about 20 MiB; one
    /// forgotten early costs only a repeated DNS query.
    pub negative_entries: NonZeroUsize,
    /// Domains with a policy held in memory at most (the least recently used are
    /// dropped first; they stay in the store and are read back on their next lookup).
    /// Memory then stays bounded whatever the number of cached policies.
    pub memory_entries: NonZeroUsize,
    /// Where policies are kept: `sled` (this machine only) or `redis` (shared by a
    /// fleet; the local sled cache stays as this daemon's own copy).
    pub backend: CacheBackend,
    /// The shared cache, with `backend = "redis"`.
    pub redis: RedisConfig,
}

/// Where the policy cache lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CacheBackend {
    #[default]
    Sled,
    Redis,
}

/// The Redis (or Valkey) server shared by a fleet of daemons.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://[user:password@]host[:port][/db]`, `rediss://...` (TLS), or
    /// `redis+unix:///path/to/socket[?db=N]`.
    pub url: String,
    /// Prefix of every key and of the invalidation channel, so that several fleets
    /// (or other applications) can share one server.
    pub prefix: String,
    /// The longest a lookup waits for one Redis operation; past it the daemon goes on
    /// without Redis (answers from memory, discovers itself).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How long one daemon may hold a domain's fetch lock. Others wait for its result
    /// at most this long before fetching themselves.
    #[serde(with = "humantime_serde")]
    pub lock_ttl: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/0".into(),
            prefix: "mta-stsd:".into(),
            timeout: Duration::from_millis(250),
            lock_ttl: Duration::from_secs(15),
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            path: None,
            grace: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(300),
            refresh_after: Duration::from_secs(86_400),
            retry_after: Duration::from_secs(300),
            refresh_interval: Duration::from_secs(60),
            refresh_concurrency: nonzero(8),
            negative_entries: nonzero(50_000),
            memory_entries: nonzero(10_000),
            backend: CacheBackend::Sled,
            redis: RedisConfig::default(),
        }
    }
}

impl CacheConfig {
    /// The cache directory, with the documented fallbacks; `None` when neither the
    /// setting nor any of the environment variables they read gives one.
    pub fn resolved_path(&self) -> Option<PathBuf> {
        if let Some(p) = &self.path {
            return Some(p.clone());
        }
        let env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        if let Some(state) = env("STATE_DIRECTORY") {
            // systemd may pass several colon-separated directories; use the first.
            let first = state
                .to_string_lossy()
                .split(':')
                .next()
                .unwrap_or_default()
                .to_owned();
            return Some(PathBuf::from(first).join("cache"));
        }
        if let Some(xdg) = env("XDG_STATE_HOME") {
            return Some(xdg.join("mta-stsd"));
        }
        env("HOME").map(|home| home.join(".local/state/mta-stsd"))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `"IP:PORT"` for Prometheus metrics and the admin API; `""` turns both off.
    pub listen: MetricsListen,
    /// Path of the metrics endpoint.
    pub path: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: MetricsListen(Some(SocketAddr::from(([127, 0, 0, 1], 9461)))),
            path: "/metrics".into(),
        }
    }
}

impl MetricsConfig {
    /// Where metrics and the admin API listen, if anywhere.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.listen.0
    }
}

/// `metrics.listen`: an address, or `""` for off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct MetricsListen(pub Option<SocketAddr>);

impl MetricsListen {
    pub const OFF: MetricsListen = MetricsListen(None);
}

impl std::str::FromStr for MetricsListen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Ok(MetricsListen::OFF);
        }
        parse_socket_addr(s)
            .map(|a| MetricsListen(Some(a)))
            .ok_or_else(|| format!("{s:?} is not IP:PORT (or \"\" for off)"))
    }
}

impl TryFrom<String> for MetricsListen {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse().map_err(|e| format!("metrics.listen: {e}"))
    }
}

/// Unix socket permissions, written as an octal string such as `"0660"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct SocketMode(pub u32);

impl TryFrom<String> for SocketMode {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        u32::from_str_radix(&s, 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .map(SocketMode)
            .ok_or_else(|| format!("server.socket_mode: {s:?} is not an octal mode like \"0660\""))
    }
}

/// An `IP:PORT` socket address, IPv6 in brackets.
fn parse_socket_addr(s: &str) -> Option<SocketAddr> {
    s.parse().ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human format on a terminal, plain lines otherwise.
    #[default]
    Auto,
    Human,
    Plain,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter; RUST_LOG wins.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Auto,
        }
    }
}

/// A count the configuration gives as a literal; counts read from a file are
/// `NonZeroUsize` from deserialisation on ("at least 1" needs no later check).
const fn nonzero(n: usize) -> NonZeroUsize {
    match NonZeroUsize::new(n) {
        Some(n) => n,
        None => NonZeroUsize::MIN,
    }
}

/// The largest socketmap request accepted by default, in bytes: Postfix caps a
/// socketmap query at 10000 bytes (3.12).
pub const DEFAULT_MAX_REQUEST: usize = 10_000;

/// Per-socketmap-name options (`[zones.NAME]`): how replies are rendered for clients
/// that ask by this name, and whether DANE takes precedence for them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ZoneOptions {
    /// Treat `mode: testing` as `enforce`.
    pub strict_testing: bool,
    /// Add `servername=hostname` (SNI = MX host name; Postfix >= 3.4).
    pub require_sni: bool,
    /// Add TLSRPT attributes (Postfix >= 3.10 only).
    pub tlsrpt: bool,
    /// DANE precedence for this zone: on, off, or (unset) the `[dane] mode`.
    pub dane: Option<DaneSwitch>,
}

/// A zone's `dane = "on" | "off"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DaneSwitch {
    On,
    Off,
}

impl Default for ZoneOptions {
    fn default() -> Self {
        Self {
            strict_testing: false,
            require_sni: true,
            tlsrpt: false,
            dane: None,
        }
    }
}

/// Where a server listens: `"IP:PORT"` or `"unix:/path"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::str::FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.strip_prefix("unix:") {
            Some(path) if path.starts_with('/') => Ok(ListenAddr::Unix(PathBuf::from(path))),
            Some(_) => Err(format!("{s:?}: a unix socket needs an absolute path")),
            None => parse_socket_addr(s)
                .map(ListenAddr::Tcp)
                .ok_or_else(|| format!("{s:?} is neither IP:PORT nor unix:/path")),
        }
    }
}

impl TryFrom<String> for ListenAddr {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse().map_err(|e| format!("server.listen: {e}"))
    }
}

/// Whether two listeners would want the same socket: the same path, or the same
/// port on the same address or on a wildcard address (port 0 asks the system for a
/// free port, so it never clashes).
fn overlaps(a: &ListenAddr, b: &ListenAddr) -> bool {
    match (a, b) {
        (ListenAddr::Unix(x), ListenAddr::Unix(y)) => x == y,
        (ListenAddr::Tcp(x), ListenAddr::Tcp(y)) => {
            x.port() == y.port()
                && x.port() != 0
                && (x.ip() == y.ip() || x.ip().is_unspecified() || y.ip().is_unspecified())
        }
        _ => false,
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl Config {
    /// Parses TOML text and validates it; `origin` names the source in error messages.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config = Self::parse_toml(text, origin)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text without the semantic checks, for callers that run them with
    /// the file checks in [`crate::setup::prepare`] to report every problem at once.
    pub fn parse_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        config.origin = origin.to_owned();
        Ok(config)
    }

    /// Reads and parses a file without the semantic checks (see [`Self::parse_toml`]).
    pub fn read_unchecked(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            message: crate::io_error_text(&e),
        })?;
        Config::parse_toml(&text, &path.display().to_string())
    }

    /// Reads a file, or returns the built-in defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            None => Ok(Config::default()),
            Some(path) => {
                let config = Config::read_unchecked(path)?;
                config.validate()?;
                Ok(config)
            }
        }
    }

    /// The file every command reads: `given`, else [`DEFAULT_PATH`] when it exists,
    /// else none (built-in defaults).
    pub fn path_or_default(given: Option<&Path>) -> Option<PathBuf> {
        given.map(Path::to_owned).or_else(|| {
            let default = Path::new(DEFAULT_PATH);
            default.exists().then(|| default.to_owned())
        })
    }

    /// Every setting that cannot be used, as one error naming the file.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                origin: self.origin.clone(),
                problems,
            })
        }
    }

    /// Checks that need nothing beyond the values themselves (no files, no network).
    fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        self.listener_problems(&mut out);
        if !self.metrics.path.starts_with('/') {
            out.push(invalid("metrics.path", "must start with '/'"));
        }
        if let Some(message) = log_filter_problem(&self.log.level) {
            out.push(invalid("log.level", message));
        }
        if self.cache.resolved_path().is_none() {
            out.push(invalid(
                "cache.path",
                "not set, and none of STATE_DIRECTORY, XDG_STATE_HOME or HOME gives a default: set it (the package uses /var/lib/mta-stsd/cache)",
            ));
        }
        self.value_problems(&mut out);
        out
    }

    /// Listen addresses that cannot all be bound: none at all, the same one twice, or
    /// the metrics listener on a socketmap address.
    fn listener_problems(&self, out: &mut Vec<Problem>) {
        if self.server.listen.is_empty() {
            out.push(invalid(
                "server.listen",
                "is empty: the daemon would answer nobody (the default is [\"127.0.0.1:8461\"])",
            ));
        }
        let addrs = &self.server.listen;
        for (i, a) in addrs.iter().enumerate() {
            if addrs[..i].iter().any(|b| overlaps(a, b)) {
                out.push(invalid("server.listen", format!("{a} is listed twice")));
            }
        }
        if let Some(metrics) = self.metrics.addr() {
            let metrics = ListenAddr::Tcp(metrics);
            if let Some(clash) = addrs.iter().find(|a| overlaps(a, &metrics)) {
                out.push(invalid(
                    "metrics.listen",
                    format!(
                        "{metrics} is also a socketmap address ({clash}): give it a port of its own"
                    ),
                ));
            }
        }
    }

    fn value_problems(&self, out: &mut Vec<Problem>) {
        if self.cache.backend == CacheBackend::Redis {
            // Checked here so that a typo stops the start (or the reload) with a clear
            // line, instead of surfacing as "Redis unreachable" forever.
            if let Err(e) = redis::Client::open(self.cache.redis.url.as_str()) {
                // Not the URL itself: it may hold a password.
                out.push(invalid("cache.redis.url", e.to_string()));
            }
        }
        if self.server.max_request_size < 64 {
            out.push(invalid(
                "server.max_request_size",
                "must be at least 64 bytes",
            ));
        }
        for (setting, d) in [
            ("resolver.timeout", self.resolver.timeout),
            ("fetch.timeout", self.fetch.timeout),
            ("lookup.deadline", self.lookup.deadline),
            ("cache.negative_ttl", self.cache.negative_ttl),
            ("cache.refresh_after", self.cache.refresh_after),
            ("cache.refresh_interval", self.cache.refresh_interval),
            ("server.read_timeout", self.server.read_timeout),
            ("cache.redis.timeout", self.cache.redis.timeout),
            ("cache.redis.lock_ttl", self.cache.redis.lock_ttl),
        ] {
            if d.is_zero() {
                out.push(invalid(setting, "must be longer than 0s"));
            }
        }
        if self.server.idle_timeout <= Duration::from_secs(10) {
            out.push(invalid(
                "server.idle_timeout",
                "must be longer than 10s (Postfix keeps an idle socketmap connection for 10s)",
            ));
        }
        if self.lookup.deadline > Duration::from_secs(90) {
            out.push(invalid(
                "lookup.deadline",
                "must be at most 90s (Postfix gives up on a lookup after 100s)",
            ));
        }
        if self.cache.retry_after < Duration::from_secs(300) {
            out.push(invalid(
                "cache.retry_after",
                "must be at least 5m (RFC 8461 §3.3)",
            ));
        }
        if self.dane.validation == DaneValidation::Resolver {
            // An AD bit proves something only if nothing could alter it on the way.
            if self.resolver.nameservers.is_empty() {
                out.push(invalid(
                    "dane.validation",
                    "\"resolver\" needs resolver.nameservers to name the local validating resolver (e.g. [\"127.0.0.1:53\"])",
                ));
            }
            if let Some(far) = self
                .resolver
                .nameservers
                .iter()
                .find(|a| !a.ip().is_loopback())
            {
                out.push(invalid(
                    "dane.validation",
                    format!(
                        "\"resolver\" trusts the AD bit, which proves nothing from {far}: every resolver.nameservers entry must be on loopback"
                    ),
                ));
            }
        }
    }

    /// Options for a socketmap name: `[zones.NAME]`, else `[zones.default]`, else defaults.
    pub fn zone(&self, name: &str) -> ZoneOptions {
        self.zones
            .get(name)
            .or_else(|| self.zones.get("default"))
            .cloned()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        let c = Config::from_toml("", "test").unwrap();
        assert_eq!(
            c.server.listen,
            vec![ListenAddr::Tcp("127.0.0.1:8461".parse().unwrap())]
        );
        assert_eq!(c.server.socket_mode, SocketMode(0o666));
        assert_eq!(c.metrics.addr(), Some("127.0.0.1:9461".parse().unwrap()));
        assert_eq!(c.fetch.timeout, Duration::from_secs(15));
        assert!(!c.fetch.allow_private_addresses);
        assert_eq!(c.zone("postfix"), ZoneOptions::default());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = Config::from_toml("[fetch]\ntimout = \"5s\"\n", "x.toml").unwrap_err();
        assert!(e.to_string().contains("timout"), "{e}");
        assert!(Config::from_toml("[zones.strict]\nstrict = true\n", "x").is_err());
        assert!(Config::from_toml("[nope]\n", "x").is_err());
    }

    #[test]
    fn durations_and_zones() {
        let c = Config::from_toml(
            "[resolver]\nnameservers = [\"127.0.0.1:5353\", \"[::1]:53\"]\ntimeout = \"500ms\"\n\
             [zones.default]\nrequire_sni = false\n[zones.strict]\nstrict_testing = true\n",
            "x",
        )
        .unwrap();
        assert_eq!(c.resolver.timeout, Duration::from_millis(500));
        assert_eq!(c.resolver.nameservers.len(), 2);
        assert!(c.zone("strict").strict_testing);
        assert!(!c.zone("other").require_sni);
        assert!(c.zone("strict").require_sni);
    }

    #[test]
    fn bad_values_are_rejected_with_the_setting_name() {
        for (toml, setting) in [
            ("[server]\nlisten = [\"localhost\"]", "server.listen"),
            (
                "[server]\nlisten = [\"unix:relative.sock\"]",
                "server.listen",
            ),
            ("[server]\nsocket_mode = \"999\"", "server.socket_mode"),
            ("[fetch]\ntimeout = \"0s\"", "fetch.timeout"),
            ("[lookup]\ndeadline = \"5m\"", "lookup.deadline"),
            ("[cache]\nretry_after = \"1m\"", "cache.retry_after"),
            ("[server]\nlisten = []", "server.listen"),
            (
                "[server]\nlisten = [\"127.0.0.1:8461\", \"127.0.0.1:8461\"]",
                "server.listen",
            ),
            (
                "[server]\nlisten = [\"0.0.0.0:8461\"]\n[metrics]\nlisten = \"127.0.0.1:8461\"",
                "metrics.listen",
            ),
            ("[log]\nlevel = \"warning\"", "log.level"),
            ("[log]\nlevel = \"inof\"", "log.level"),
            ("[log]\nlevel = \"mta_stsd=loud\"", "log.level"),
        ] {
            let e = Config::from_toml(toml, "x").unwrap_err().to_string();
            assert!(e.contains(setting), "{toml}: {e}");
        }
        assert!(Config::from_toml("[fetch]\ntimeout = \"soon\"", "x").is_err());
        // Counts are at least 1 by their type; a 0 is refused where it is read.
        for (toml, key) in [
            ("[cache]\nmemory_entries = 0", "memory_entries"),
            ("[resolver]\nattempts = 0", "attempts"),
            ("[server]\nmax_connections = 0", "max_connections"),
        ] {
            let e = Config::from_toml(toml, "x").unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("nonzero"), "{toml}: {e}");
        }
    }

    #[test]
    fn every_problem_is_reported_with_the_file_name() {
        let e = Config::from_toml(
            "[server]\nlisten = []\n[log]\nlevel = \"warning\"\n[cache]\nretry_after = \"1m\"\n",
            "/etc/mta-stsd/mta-stsd.toml",
        )
        .unwrap_err();
        assert_eq!(e.problems().len(), 3, "{e}");
        let text = e.to_string();
        assert_eq!(text.lines().count(), 3, "{text}");
        for line in text.lines() {
            assert!(
                line.starts_with("/etc/mta-stsd/mta-stsd.toml: invalid setting "),
                "{line}"
            );
        }
        assert!(
            text.contains("use one of off, error, warn, info, debug, trace"),
            "{text}"
        );
    }

    #[test]
    fn real_levels_and_directives_are_accepted() {
        for level in [
            "info",
            "DEBUG",
            "warn,mta_stsd=debug",
            "mta_stsd::dane=trace",
            "off",
        ] {
            let toml = format!("[log]\nlevel = \"{level}\"");
            assert!(Config::from_toml(&toml, "x").is_ok(), "{level}");
        }
    }

    #[test]
    fn a_nameserver_without_a_port_means_port_53() {
        let c = Config::from_toml(
            "[resolver]\nnameservers = [\"8.8.8.8\", \"::1\", \"127.0.0.1:5353\"]",
            "x",
        )
        .unwrap();
        assert_eq!(
            c.resolver.nameservers,
            vec![
                "8.8.8.8:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap(),
                "127.0.0.1:5353".parse().unwrap()
            ]
        );
        let e = Config::from_toml("[resolver]\nnameservers = [\"dns.google\"]", "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not an IP address or IP:PORT"), "{e}");
    }

    #[test]
    fn shipped_example_config_parses() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/mta-stsd.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let c = Config::from_toml(&text, path).unwrap();
        // The example documents the defaults: it must not change behaviour.
        let d = Config::default();
        assert_eq!(c.server.listen, d.server.listen);
        assert_eq!(c.fetch.timeout, d.fetch.timeout);
        assert_eq!(c.lookup.deadline, d.lookup.deadline);
        assert_eq!(c.cache.negative_ttl, d.cache.negative_ttl);
        assert_eq!(c.zone("postfix"), d.zone("postfix"));
        assert_eq!(c.dane.mode, d.dane.mode);
        assert_eq!(c.dane.validation, d.dane.validation);
        assert_eq!(c.dane.cache_entries, d.dane.cache_entries);
    }
}
