//! The verdicts of `mta-stsd doctor`: facts about the Postfix and mta-stsd setup in,
//! one [`Finding`] per question out. Pure functions (no I/O, no clock); [`gather`]
//! gathers the facts (by running Postfix's own `postconf`, reading files, probing the
//! daemon) and applies them.

mod access;
pub mod fleet;
pub mod gather;
pub mod mta;
pub mod tlsrpt;

pub use access::{Access, User, check_socket_access, socket_access};

use std::path::{Path, PathBuf};

use crate::config::ZoneOptions;
use crate::config::{DaneMode, ListenAddr};

pub use crate::findings::{Finding, Level, worst};

/// Where a Postfix `socketmap:` table connects to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Inet { host: String, port: u16 },
    Unix(PathBuf),
}

impl Endpoint {
    /// `HOST:PORT` (an IPv6 host in brackets), as Postfix's and Exim's `inet:` write it.
    pub fn inet(addr: &str) -> Option<Endpoint> {
        let (host, port) = addr.rsplit_once(':')?;
        Some(Endpoint::Inet {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: port.parse().ok()?,
        })
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Inet { host, port } => write!(f, "inet:{host}:{port}"),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A `socketmap:` table named in `smtp_tls_policy_maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Socketmap {
    /// The table as written, e.g. `socketmap:inet:127.0.0.1:8461:postfix`.
    pub table: String,
    pub endpoint: Endpoint,
    /// The map name Postfix sends with each request (the daemon's zone).
    pub name: String,
}

/// The tables of a Postfix lookup-table list (`smtp_tls_policy_maps`): separated by
/// commas and/or whitespace (postconf(5)). Returns the socketmap tables, and the
/// others as written.
pub fn parse_policy_maps(value: &str) -> (Vec<Socketmap>, Vec<String>) {
    let mut sockets = Vec::new();
    let mut others = Vec::new();
    for table in value
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
    {
        match parse_socketmap(table) {
            Some(s) => sockets.push(s),
            None => others.push(table.to_owned()),
        }
    }
    (sockets, others)
}

/// `socketmap:inet:HOST:PORT:NAME` or `socketmap:unix:PATH:NAME` (socketmap_table(5));
/// also behind `proxy:`. The name is everything after the last colon, so an IPv6
/// host in brackets keeps its colons.
fn parse_socketmap(table: &str) -> Option<Socketmap> {
    let rest = table.strip_prefix("proxy:").unwrap_or(table);
    let rest = rest.strip_prefix("socketmap:")?;
    let (endpoint, name) = rest.rsplit_once(':')?;
    let endpoint = if let Some(addr) = endpoint.strip_prefix("inet:") {
        Endpoint::inet(addr)?
    } else if let Some(path) = endpoint.strip_prefix("unix:") {
        Endpoint::Unix(PathBuf::from(path))
    } else {
        return None;
    };
    Some(Socketmap {
        table: table.to_owned(),
        endpoint,
        name: name.to_owned(),
    })
}

/// The daemon listener a Postfix endpoint reaches, if any. A unix path is seen from
/// inside the smtp client's chroot (`queue_directory`) when the service is chrooted
/// (master(5)): Postfix connects to the socketmap at lookup time, after chroot.
pub fn listener_for(
    endpoint: &Endpoint,
    chroot: Option<&Path>,
    queue: &Path,
    listeners: &[ListenAddr],
) -> Option<ListenAddr> {
    listeners
        .iter()
        .find(|l| match (endpoint, l) {
            (Endpoint::Inet { host, port }, ListenAddr::Tcp(addr)) => {
                addr.port() == *port
                    && (addr.ip().is_unspecified()
                        || host.parse::<std::net::IpAddr>().ok() == Some(addr.ip())
                        || (host == "localhost" && addr.ip().is_loopback()))
            }
            (Endpoint::Unix(path), ListenAddr::Unix(listen)) => {
                host_path(path, chroot, queue) == listen.as_path()
            }
            _ => false,
        })
        .cloned()
}

/// Where `path`, as written in Postfix's configuration, is on the host for a process
/// chrooted to `chroot` (if any). Postfix's daemons run in `queue_directory`
/// (chrooted or not), so a relative path such as `private/mta-sts` is relative to it.
pub fn host_path(path: &Path, chroot: Option<&Path>, queue: &Path) -> PathBuf {
    if path.is_relative() {
        return queue.join(path);
    }
    match chroot {
        Some(root) => root.join(path.strip_prefix("/").unwrap_or(path)),
        None => path.to_owned(),
    }
}

/// The checks on `smtp_tls_policy_maps`: does Postfix ask this daemon at all, and does
/// each socketmap reach one of its listeners?
pub fn check_policy_maps(
    value: &str,
    resolved: &[(Socketmap, Option<ListenAddr>)],
    listeners: &[ListenAddr],
) -> Vec<Finding> {
    const NAME: &str = "postfix.policy_maps";
    let listen = listeners
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if resolved.is_empty() {
        let example = listeners
            .iter()
            .find_map(|l| match l {
                ListenAddr::Tcp(a) => Some(format!("socketmap:inet:{a}:postfix")),
                ListenAddr::Unix(_) => None,
            })
            .unwrap_or_else(|| "socketmap:inet:127.0.0.1:8461:postfix".into());
        let shown = if value.trim().is_empty() {
            "empty".to_owned()
        } else {
            format!("{value:?}")
        };
        return vec![Finding::problem(
            NAME,
            format!(
                "smtp_tls_policy_maps is {shown}: Postfix never asks mta-stsd, so no MTA-STS policy is applied"
            ),
            format!("postconf -e 'smtp_tls_policy_maps = {example}' && postfix reload"),
        )];
    }
    resolved
        .iter()
        .map(|(s, l)| match l {
            Some(l) => Finding::ok(NAME, format!("{} reaches the daemon's listener {l}", s.table)),
            None => Finding::problem(
                NAME,
                format!(
                    "{} matches none of the daemon's listeners ({listen}): every lookup fails and Postfix defers mail",
                    s.table
                ),
                "point the socketmap at a server.listen address of mta-stsd (for a unix socket in a chrooted smtp, the path inside queue_directory)",
            ),
        })
        .collect()
}

/// A Postfix map name the daemon has options for: `[zones.NAME]`, else
/// `[zones.default]`, else built-in defaults (fine when no zone is configured).
pub fn check_zone(map: &Socketmap, configured: &[String]) -> Finding {
    const NAME: &str = "postfix.zone";
    if configured.iter().any(|z| z == &map.name) {
        Finding::ok(
            NAME,
            format!("map name {:?} has [zones.{}]", map.name, map.name),
        )
    } else if configured.iter().any(|z| z == "default") {
        Finding::ok(
            NAME,
            format!("map name {:?} uses [zones.default]", map.name),
        )
    } else if configured.is_empty() {
        Finding::ok(
            NAME,
            format!("map name {:?} uses the built-in zone options", map.name),
        )
    } else {
        Finding::warning(
            NAME,
            format!(
                "map name {:?} has no [zones.{}] and there is no [zones.default]: it gets built-in options, not those of [zones.{}]",
                map.name,
                map.name,
                configured.join("], [zones.")
            ),
            format!(
                "use one of the configured names in smtp_tls_policy_maps, or rename [zones.{}]",
                configured.first().map(String::as_str).unwrap_or("NAME")
            ),
        )
    }
}

/// What a configured trust-anchor source (CAfile or CApath) turned out to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Anchors {
    /// Not configured (empty parameter).
    Unset,
    Missing(PathBuf),
    Unreadable(PathBuf, String),
    Loaded {
        path: PathBuf,
        /// Certificates in it.
        certs: usize,
        /// Of those, how many are roots of the system's public store.
        public: usize,
    },
}

/// Does Postfix's smtp client have trust anchors that verify the Web PKI certificates
/// MTA-STS relies on (RFC 8461 §4.2)? Without them every `secure` answer defers mail
/// with "Server certificate not verified".
pub fn check_trust(
    ca_file: &Anchors,
    ca_path: &Anchors,
    append_default_ca: bool,
    system_roots: usize,
) -> Finding {
    const NAME: &str = "postfix.trust_anchors";
    let mut total = 0;
    let mut public = 0;
    let mut shown = Vec::new();
    for (param, a) in [("smtp_tls_CAfile", ca_file), ("smtp_tls_CApath", ca_path)] {
        match a {
            Anchors::Unset => {}
            Anchors::Missing(p) => {
                return Finding::problem(
                    NAME,
                    format!(
                        "{param} = {} does not exist: the smtp client cannot load it, and Postfix defers every domain that needs a verified certificate",
                        p.display()
                    ),
                    format!(
                        "postconf -e '{param} = /etc/ssl/certs/ca-certificates.crt' (Debian's ca-certificates) && postfix reload"
                    ),
                );
            }
            Anchors::Unreadable(p, e) => {
                return Finding::problem(
                    NAME,
                    format!("{param} = {} cannot be read: {e}", p.display()),
                    format!(
                        "make {} readable, or point {param} at /etc/ssl/certs/ca-certificates.crt",
                        p.display()
                    ),
                );
            }
            Anchors::Loaded {
                path,
                certs,
                public: p,
            } => {
                total += certs;
                public += p;
                shown.push(format!(
                    "{param} {} ({certs} certificates, {p} public roots)",
                    path.display()
                ));
            }
        }
    }
    if append_default_ca {
        shown.push("tls_append_default_CA = yes (OpenSSL's default store)".into());
        return Finding::ok(NAME, shown.join("; "));
    }
    if total == 0 {
        return Finding::problem(
            NAME,
            "Postfix has no trust anchors (smtp_tls_CAfile and smtp_tls_CApath hold no certificate, tls_append_default_CA = no): every enforced MTA-STS domain is deferred with \"Server certificate not verified\"",
            "postconf -e 'smtp_tls_CAfile = /etc/ssl/certs/ca-certificates.crt' && postfix reload",
        );
    }
    if public == 0 && system_roots > 0 {
        return Finding::problem(
            NAME,
            format!(
                "{}: none of the system's {system_roots} public root certificates is among them, so no public certificate chain verifies and enforced MTA-STS domains are deferred",
                shown.join("; ")
            ),
            "add the public roots: postconf -e 'smtp_tls_CAfile = /etc/ssl/certs/ca-certificates.crt' && postfix reload",
        );
    }
    Finding::ok(NAME, shown.join("; "))
}

pub use crate::postfix::parse_version;

/// REQUIRETLS (RFC 8689, Postfix 3.11): a message sent with it leaves only over a
/// connection whose policy authenticates the receiver, which for MTA-STS is the
/// daemon's `secure` answer (an enforced policy). `enable` is `requiretls_enable`,
/// `policy` is `smtp_requiretls_policy`; `None` before 3.11.
pub fn check_requiretls(enable: Option<&str>, policy: &str) -> Option<Finding> {
    const NAME: &str = "postfix.requiretls";
    let enable = enable?;
    if !enable.trim().eq_ignore_ascii_case("yes") {
        return Some(Finding::ok(
            NAME,
            "REQUIRETLS is off (requiretls_enable = no): messages cannot ask for it",
        ));
    }
    if !policy.contains("enforce") {
        return Some(Finding::warning(
            NAME,
            "smtp_requiretls_policy never says enforce: a message sent with REQUIRETLS may leave over a connection nobody authenticated",
            "leave smtp_requiretls_policy at its default (enforce for other domains), or add enforce for the domains that need it",
        ));
    }
    Some(Finding::ok(
        NAME,
        "REQUIRETLS is enforced: mail that asks for it leaves only on an authenticated policy (mta-stsd's secure answer for an enforced MTA-STS policy, or DANE)",
    ))
}

/// The zone's attributes against the Postfix version that receives them.
/// `servername` exists since 3.4, the TLSRPT attributes since 3.10 (older versions
/// reject the whole answer as "invalid attribute name" and defer the mail), and
/// since 3.10.5 Postfix enforces the policy's `mx_host_pattern`s itself, exactly as
/// RFC 8461 §4.1 says (`*.` = one label), which `match=` alone cannot express.
pub fn check_version(version: &str, map: &str, section: &str, zone: &ZoneOptions) -> Finding {
    const NAME: &str = "postfix.version";
    let Some(v) = parse_version(version) else {
        return Finding::warning(
            NAME,
            format!("cannot read Postfix's mail_version {version:?}"),
            "check that postconf -h mail_version prints a version",
        );
    };
    if zone.require_sni && v < (3, 4, 0) {
        return Finding::problem(
            NAME,
            format!(
                "Postfix {version} does not know servername= (3.4 and later), which zone {map:?} sends: Postfix rejects the answer and defers the mail"
            ),
            format!("set require_sni = false in [{section}], or upgrade Postfix"),
        );
    }
    if zone.tlsrpt && v < (3, 10, 0) {
        return Finding::problem(
            NAME,
            format!(
                "Postfix {version} rejects the TLSRPT attributes (3.10 and later) that zone {map:?} sends (\"invalid attribute name\"): mail to every enforced domain is deferred"
            ),
            format!(
                "set tlsrpt = false in [{section}], or upgrade to a Postfix that reports (Debian trixie or later; bookworm-backports' 3.10 is built without libtlsrpt)"
            ),
        );
    }
    if !zone.tlsrpt && v >= (3, 10, 5) {
        return Finding::warning(
            NAME,
            format!(
                "Postfix {version} can enforce the policy's MX patterns exactly as RFC 8461 says, but zone {map:?} has tlsrpt = false, so it only gets match=, which allows a '*.example.net' pattern at any depth"
            ),
            format!(
                "set tlsrpt = true in [{section}] (smtp_tls_enforce_sts_mx_patterns = yes is Postfix's default)"
            ),
        );
    }
    Finding::ok(
        NAME,
        format!("Postfix {version} accepts every attribute zone {map:?} sends"),
    )
}

/// DANE against this daemon's `[dane] mode`. A policy-table answer overrides
/// Postfix's `smtp_tls_security_level`: a `secure` answer for a domain that also
/// publishes DANE TLSA records would replace Postfix's DANE check with Web PKI (RFC
/// 8461 §2 forbids letting MTA-STS override DANE), and DANE answers to a Postfix that
/// does not validate DNSSEC never deliver (`dane-only`) or protect nothing (`dane`).
/// `trust_ad` is whether /etc/resolv.conf has `options trust-ad` (glibc passes the
/// resolver's AD bit to Postfix only then).
pub fn check_dane(
    dns_support_level: &str,
    security_level: &str,
    trust_ad: bool,
    mode: DaneMode,
) -> Finding {
    const NAME: &str = "postfix.dane";
    let dnssec = dns_support_level.trim() == "dnssec";
    let dane = matches!(security_level.trim(), "dane" | "dane-only");
    if dane && !dnssec {
        return Finding::problem(
            NAME,
            "smtp_tls_security_level = dane, but smtp_dns_support_level is not dnssec: Postfix cannot see DNSSEC and DANE falls back to opportunistic TLS",
            "postconf -e 'smtp_dns_support_level = dnssec' (with a local validating resolver and options trust-ad)",
        );
    }
    match (dnssec, mode) {
        (false, DaneMode::On) => Finding::problem(
            NAME,
            "[dane] mode = \"on\", but Postfix does not validate DNSSEC (smtp_dns_support_level is not dnssec): mail to domains answered dane-only is never delivered",
            "set [dane] mode = \"auto\" (it follows Postfix), or turn on DNSSEC in Postfix",
        ),
        (true, DaneMode::Off) => Finding::warning(
            NAME,
            "Postfix validates DNSSEC, but [dane] mode = \"off\": mta-stsd's secure answers override Postfix's DANE for domains that publish both",
            "set [dane] mode = \"auto\"",
        ),
        (true, _) if !trust_ad => Finding::warning(
            NAME,
            "smtp_dns_support_level = dnssec, but /etc/resolv.conf has no 'options trust-ad': glibc hides the resolver's AD bit, so Postfix sees no DNSSEC",
            "add 'options trust-ad' to /etc/resolv.conf, with a validating resolver on 127.0.0.1",
        ),
        (true, _) => Finding::ok(
            NAME,
            format!(
                "Postfix validates DNSSEC (smtp_tls_security_level = {}) and DANE takes precedence over MTA-STS",
                or_unset(security_level)
            ),
        ),
        (false, _) => Finding::ok(
            NAME,
            format!(
                "smtp_dns_support_level = {}: no DNSSEC in Postfix, so mta-stsd gives MTA-STS answers only (dane.mode = {})",
                or_unset(dns_support_level),
                match mode {
                    DaneMode::Off => "off",
                    DaneMode::On => "on",
                    DaneMode::Auto => "auto",
                }
            ),
        ),
    }
}

fn or_unset(s: &str) -> &str {
    if s.trim().is_empty() {
        "(unset)"
    } else {
        s.trim()
    }
}

/// Whether /etc/resolv.conf text sets `options trust-ad` (resolv.conf(5)).
pub fn resolv_conf_trusts_ad(text: &str) -> bool {
    text.lines().any(|l| {
        let mut words = l.split_whitespace();
        words.next() == Some("options") && words.any(|w| w == "trust-ad")
    })
}

/// The smtp-client services of `postconf -M` output (command `smtp`, type `unix`)
/// and whether each runs chrooted. master(5): `-` in the chroot column means the
/// built-in default, `n` since Postfix 3.0.
pub fn smtp_services(master: &str) -> Vec<(String, bool)> {
    master
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 8 && f[1] == "unix" && f[7] == "smtp")
                .then(|| (f[0].to_owned(), f[4] == "y"))
        })
        .collect()
}

#[cfg(test)]
mod tests;
