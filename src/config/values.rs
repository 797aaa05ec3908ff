//! Setting values that are parsed into types when the file is read: listen addresses
//! (TCP or unix), the unix socket mode, the metrics address (or off), and counts that
//! are at least 1. A value that does not parse is refused with the setting's name.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;

use serde::Deserialize;

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
            .ok_or_else(|| format!("socket_mode {s:?} is not an octal mode like \"0660\""))
    }
}

/// An `IP:PORT` socket address, IPv6 in brackets.
fn parse_socket_addr(s: &str) -> Option<SocketAddr> {
    s.parse().ok()
}

/// A count the configuration gives as a literal; counts read from a file are
/// `NonZeroUsize` from deserialisation on ("at least 1" needs no later check).
pub(super) const fn nonzero(n: usize) -> NonZeroUsize {
    match NonZeroUsize::new(n) {
        Some(n) => n,
        None => NonZeroUsize::MIN,
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
pub(super) fn overlaps(a: &ListenAddr, b: &ListenAddr) -> bool {
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

/// A plain mail address, `local@domain` in dot-atom form (RFC 5322 §3.4.1 without its
/// quoted and bracketed forms): nothing that could end a header line, separate
/// addresses, or read as a command-line option. Used for configured addresses and
/// for the `mailto:` destinations of TLSRPT records alike.
pub fn check_address(address: &str) -> Result<(), String> {
    let (local, domain) = address
        .rsplit_once('@')
        .ok_or_else(|| format!("{address:?} is not local@domain"))?;
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c);
    if local.is_empty()
        || local.len() > 64
        || local.starts_with(['.', '-'])
        || local.ends_with('.')
        || local.contains("..")
        || !local.chars().all(atext)
    {
        return Err(format!("{address:?}: unusable local part"));
    }
    if !is_host_name(domain) {
        return Err(format!("{address:?}: unusable domain"));
    }
    Ok(())
}

/// `host:port` (a name, an IPv4 address, or an IPv6 address in brackets), as a
/// sentinel's address is written.
pub fn parse_host_port(text: &str) -> Result<(String, u16), String> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| "not host:port".to_owned())?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{port:?} is not a port number"))?;
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) if v6.parse::<std::net::Ipv6Addr>().is_ok() => v6,
        Some(_) => return Err(format!("{host} is not an IPv6 address")),
        None if host.parse::<std::net::Ipv4Addr>().is_ok() => host,
        None if !host.is_empty()
            && host.split('.').all(|l| {
                !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            }) =>
        {
            host
        }
        None => return Err(format!("{host:?} is not a host name or address")),
    };
    if port == 0 {
        return Err("port 0".into());
    }
    Ok((host.to_owned(), port))
}

/// LDH labels (letters, digits, hyphens; not at a label's ends), at least two.
pub fn is_host_name(name: &str) -> bool {
    let labels: Vec<&str> = name.split('.').collect();
    name.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}
