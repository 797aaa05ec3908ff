//! The configuration's sections and their defaults: every setting has one, so no file
//! is needed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::values::{ListenAddr, MetricsListen, SocketMode, nonzero};

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
    pub tlsrpt: TlsrptConfig,
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
            tlsrpt: TlsrptConfig::default(),
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
    /// Redis Sentinel: `host:port` of each sentinel. When set, the daemon asks them
    /// which node is the master of `master_name` and follows failovers; `url` then
    /// gives the scheme (`redis` or `rediss`) for the sentinels and the data nodes
    /// alike, and the data nodes' user, password and database; its host and port are
    /// not used.
    pub sentinels: Vec<String>,
    /// The name the sentinels monitor the master by (`sentinel monitor NAME ...`).
    pub master_name: String,
    /// The sentinels' own ACL user and password (`requirepass` in `sentinel.conf`);
    /// empty: none. `url`'s user and password are the data nodes'.
    pub sentinel_username: String,
    pub sentinel_password: String,
    /// With `rediss://`: the CA certificates (PEM) the servers' certificates are
    /// verified against, instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// With `rediss://`: a client certificate (PEM) for servers that require one
    /// (`tls-auth-clients yes`), with its key in `client_key`.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/0".into(),
            prefix: "mta-stsd:".into(),
            timeout: Duration::from_millis(250),
            lock_ttl: Duration::from_secs(15),
            sentinels: Vec::new(),
            master_name: String::new(),
            sentinel_username: String::new(),
            sentinel_password: String::new(),
            ca_file: None,
            client_cert: None,
            client_key: None,
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

    /// Where TLSRPT keeps its counters: `tlsrpt.path`, else this path with `-tlsrpt`
    /// appended (beside the cache, so that a damaged cache moved aside leaves it).
    pub fn tlsrpt_path(&self, tlsrpt: &TlsrptConfig) -> Option<PathBuf> {
        if let Some(p) = &tlsrpt.path {
            return Some(p.clone());
        }
        let mut p = self.resolved_path()?.into_os_string();
        p.push("-tlsrpt");
        Some(PathBuf::from(p))
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

/// TLSRPT (RFC 8460): the datagram socket Postfix reports to, and who sends the
/// daily reports.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsrptConfig {
    pub enable: bool,
    /// The unix datagram socket Postfix's `smtp_tlsrpt_socket_name` names.
    pub socket: PathBuf,
    /// Permissions of the socket (Postfix's smtp client writes to it).
    pub socket_mode: SocketMode,
    /// Group of the socket, e.g. `"postfix"`; default: the daemon's own group.
    pub socket_group: Option<String>,
    /// Where counters and deliveries are kept; default: the cache's path with
    /// `-tlsrpt` appended (/var/lib/mta-stsd/cache-tlsrpt in the package).
    pub path: Option<PathBuf>,
    /// `organization-name` of the reports.
    pub organization_name: String,
    /// `contact-info` of the reports: an address (`tlsrpt@example.com`, or with
    /// `mailto:`) or an `https:` URL, in the submitter's domain.
    pub contact_info: String,
    /// `From:` and envelope sender of mailed reports.
    pub report_from: String,
    /// The submitting domain (`TLS-Report-Submitter`, the file name's sender);
    /// default: the domain of `contact_info`.
    pub submitter: Option<String>,
    /// Where mailed reports are submitted by SMTP: the local MTA's listener.
    pub smtp: std::net::SocketAddr,
    /// Instead of SMTP: a sendmail program, run as `PROGRAM -f report_from -i -t` with
    /// a report on its input.
    pub sendmail: Option<PathBuf>,
    /// Reports of a day are sent at random times within this long after it ends.
    #[serde(with = "humantime_serde")]
    pub spread: Duration,
    /// A report that cannot be delivered is retried, with back-off, for this long
    /// after its first try.
    #[serde(with = "humantime_serde")]
    pub retry_for: Duration,
    /// Days of counters and delivery records kept.
    pub keep_days: NonZeroUsize,
}

impl Default for TlsrptConfig {
    fn default() -> Self {
        Self {
            enable: false,
            socket: PathBuf::from("/var/spool/postfix/run/tlsrpt/tlsrpt.sock"),
            socket_mode: SocketMode(0o660),
            socket_group: None,
            path: None,
            organization_name: String::new(),
            contact_info: String::new(),
            report_from: String::new(),
            submitter: None,
            smtp: std::net::SocketAddr::from(([127, 0, 0, 1], 25)),
            sendmail: None,
            spread: Duration::from_secs(4 * 3600),
            retry_for: Duration::from_secs(24 * 3600),
            keep_days: nonzero(10),
        }
    }
}

impl TlsrptConfig {
    /// The submitting domain: `submitter`, else the domain of `contact_info`, else
    /// that of `report_from`.
    pub fn submitter_domain(&self) -> String {
        match &self.submitter {
            Some(s) => s.to_ascii_lowercase(),
            None => self.contact_domain().unwrap_or_else(|| {
                self.report_from
                    .rsplit_once('@')
                    .map(|(_, d)| d.to_ascii_lowercase())
                    .unwrap_or_default()
            }),
        }
    }

    /// The domain receivers write to: an address's domain, or an `https:` URL's host.
    pub fn contact_domain(&self) -> Option<String> {
        let c = self.contact_info.trim();
        let domain = if let Some(rest) = c.strip_prefix("https://") {
            let host = rest.split(['/', '?', '#']).next()?;
            host.rsplit_once(':').map_or(host, |(h, _)| h)
        } else {
            let address = c.strip_prefix("mailto:").unwrap_or(c);
            address.rsplit_once('@')?.1
        };
        Some(domain.to_ascii_lowercase())
    }
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
    /// How long a request by this name waits for a discovery on a cache miss (unset:
    /// `lookup.deadline`). A client that gives up sooner must get an answer first.
    #[serde(with = "humantime_serde")]
    pub deadline: Option<Duration>,
    /// The form of the answers (unset: Postfix's; `exim` for the name `exim`).
    pub format: Option<AnswerFormat>,
}

/// The answer formats, one per kind of client (the renderers are
/// `crate::answer::render`'s, one file each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnswerFormat {
    /// Postfix's `smtp_tls_policy_maps` (socketmap_table(5), postconf(5)); also what
    /// Sendmail's `FEATURE(sts)` reads.
    #[default]
    Postfix,
    /// `key=value` words for Exim's `${readsocket}` and `${extract}`, with the MX
    /// patterns as an Exim host list of anchored regular expressions.
    Exim,
}

impl AnswerFormat {
    /// Every format, in registration order (its position is its memo index).
    pub const ALL: [AnswerFormat; 2] = [AnswerFormat::Postfix, AnswerFormat::Exim];
}

/// The MTAs the daemon answers, each by the socketmap name it asks with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mta {
    /// `smtp_tls_policy_maps = socketmap:inet:127.0.0.1:8461:postfix`.
    Postfix,
    /// The shipped drop-ins (`${readsocket}`, `exim DOMAIN`).
    Exim,
    /// `FEATURE(`sts')` (`sts DOMAIN`).
    Sendmail,
}

impl Mta {
    /// The map name this MTA asks by, whose `[zones.NAME]` options its answers follow.
    pub fn zone(self) -> &'static str {
        match self {
            Mta::Postfix => "postfix",
            Mta::Exim => EXIM_ZONE,
            Mta::Sendmail => SENDMAIL_ZONE,
        }
    }
}

/// The map name the shipped Exim configuration asks by (`exim DOMAIN`).
pub const EXIM_ZONE: &str = "exim";

/// The map name Sendmail's `FEATURE(`sts')` asks by (`sts DOMAIN`).
pub const SENDMAIL_ZONE: &str = "sts";

/// Sendmail's socket map gives up after 5 s (`-d5`, FEATURE(sts)'s default), and a
/// lookup that times out defers the message (4.7.0, "STS lookup temp fail", with a
/// SYSERR logged; measured with 8.17 and 8.18): the `sts` zone answers (no policy yet:
/// `NOTFOUND `, opportunistic TLS as for any first contact) before that.
pub const SENDMAIL_DEADLINE: Duration = Duration::from_secs(4);

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
            deadline: None,
            format: None,
        }
    }
}

impl ZoneOptions {
    /// What Sendmail's zone is when its section leaves them unset: an answer within
    /// [`SENDMAIL_DEADLINE`], and no DANE answers (Sendmail's `FEATURE(`sts')` reads
    /// only Postfix's `secure match=...` answers; `dane` would mean nothing to it).
    pub fn with_sendmail_defaults(mut self) -> Self {
        self.deadline.get_or_insert(SENDMAIL_DEADLINE);
        self.dane.get_or_insert(DaneSwitch::Off);
        self
    }
}
