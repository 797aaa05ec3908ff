//! Turning a Postfix next-hop key into the policy domain it names. Postfix looks up
//! `smtp_tls_policy_maps` with the next-hop domain, `[host]:port` forms and, with
//! `parent_domain_matches_subdomains`, `.parent` keys (postconf(5)); RFC 8461 §3.4 says
//! which of those name an MTA-STS policy domain.
//!
//! Pure text in, value out: no I/O. Anything that is not a host name we could look up
//! a policy for is a [`Skip`], which the server answers with `NOTFOUND ` at once.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

/// A normalised domain name: lower-case ASCII (A-labels), no trailing dot, valid
/// host-name syntax. Only [`normalize_key`] and [`normalize_host`] make one, so
/// whatever takes a `Domain` knows it is the name every cache is keyed by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Domain(String);

impl Domain {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::ops::Deref for Domain {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Domain {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<Domain> for String {
    fn from(d: Domain) -> String {
        d.0
    }
}

impl PartialEq<str> for Domain {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Domain {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// Why a key has no MTA-STS policy to look up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// `.example.com`: Postfix's parent-domain lookup; RFC 8461 §3.4 forbids it.
    ParentDomain,
    /// `[192.0.2.1]`, `[ipv6:2001:db8::1]`, `192.0.2.1`: no domain, no policy.
    IpLiteral,
    /// Not a syntactically valid host name (the text says why).
    Invalid(String),
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::ParentDomain => {
                f.write_str("parent-domain lookup (RFC 8461 §3.4: exact domain only)")
            }
            Skip::IpLiteral => f.write_str("IP address literal"),
            Skip::Invalid(why) => write!(f, "not a valid host name: {why}"),
        }
    }
}

/// Normalises a next-hop key to a lower-case A-label domain without a trailing dot.
///
/// Accepts `example.com`, `Example.COM.`, `[mx.example.com]`, `[mx.example.com]:587`,
/// `example.com:2525` and UTF-8 names.
pub fn normalize_key(key: &str) -> Result<Domain, Skip> {
    let key = key.trim_matches(|c: char| c == ' ' || c == '\t');
    if key.starts_with('.') {
        return Err(Skip::ParentDomain);
    }
    let host = strip_port_and_brackets(key)?;
    if host.parse::<IpAddr>().is_ok() {
        return Err(Skip::IpLiteral);
    }
    if host.contains(':') {
        return Err(Skip::Invalid(format!("unexpected ':' in {host:?}")));
    }
    normalize_host(host)
}

fn strip_port_and_brackets(key: &str) -> Result<&str, Skip> {
    if let Some(rest) = key.strip_prefix('[') {
        let (inner, after) = rest
            .split_once(']')
            .ok_or_else(|| Skip::Invalid("unbalanced '['".into()))?;
        if !(after.is_empty() || is_port_suffix(after)) {
            return Err(Skip::Invalid(format!(
                "unexpected text after ']': {after:?}"
            )));
        }
        let lower = inner.to_ascii_lowercase();
        if lower.starts_with("ipv6:") && inner[5..].parse::<Ipv6Addr>().is_ok() {
            return Err(Skip::IpLiteral);
        }
        return Ok(inner);
    }
    if key.parse::<IpAddr>().is_ok() {
        return Err(Skip::IpLiteral);
    }
    match key.rsplit_once(':') {
        Some((host, port)) if is_port_suffix(&format!(":{port}")) && !host.contains(':') => {
            Ok(host)
        }
        _ => Ok(key),
    }
}

fn is_port_suffix(s: &str) -> bool {
    s.strip_prefix(':')
        .is_some_and(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Validates and normalises a host name: case-folded, A-labels, no trailing dot.
pub fn normalize_host(host: &str) -> Result<Domain, Skip> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return Err(Skip::Invalid("empty name".into()));
    }
    let ascii = if host.is_ascii() {
        host.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii_strict(host)
            .map_err(|_| Skip::Invalid("invalid internationalised name".into()))?
    };
    if ascii.parse::<IpAddr>().is_ok() {
        return Err(Skip::IpLiteral);
    }
    check_hostname(&ascii).map_err(Skip::Invalid)?;
    Ok(Domain(ascii))
}

/// Checks LDH host-name syntax of a lower-case ASCII name (no trailing dot):
/// 2+ labels of 1–63 letters, digits and hyphens, no hyphen at either end of a label,
/// at most 253 characters, and a top-level label that is not all digits.
pub fn check_hostname(name: &str) -> Result<(), String> {
    if name.len() > 253 {
        return Err(format!("name is {} characters long (max 253)", name.len()));
    }
    let labels: Vec<&str> = name.split('.').collect();
    if labels.len() < 2 {
        return Err(format!("'{name}' has a single label"));
    }
    for label in &labels {
        check_label(label)?;
    }
    if labels
        .last()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("'{name}' has an all-numeric top-level label"));
    }
    Ok(())
}

fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err("empty label".into());
    }
    if label.len() > 63 {
        return Err(format!("label of {} characters (max 63)", label.len()));
    }
    if let Some(bad) = label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(format!("character {bad:?} is not allowed in a host name"));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!("label '{label}' starts or ends with '-'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_and_decorated_domains() {
        for (key, want) in [
            ("example.com", "example.com"),
            ("Example.COM.", "example.com"),
            ("[mx.example.com]", "mx.example.com"),
            ("[MX.Example.com]:587", "mx.example.com"),
            ("example.com:2525", "example.com"),
            ("bücher.example", "xn--bcher-kva.example"),
            ("BÜCHER.example.", "xn--bcher-kva.example"),
            ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ] {
            assert_eq!(normalize_key(key).as_deref(), Ok(want), "{key}");
        }
    }

    #[test]
    fn parent_domain_lookups_are_skipped() {
        assert_eq!(normalize_key(".example.com"), Err(Skip::ParentDomain));
        assert_eq!(normalize_key(".com"), Err(Skip::ParentDomain));
        assert_eq!(normalize_key("."), Err(Skip::ParentDomain));
    }

    #[test]
    fn ip_literals_are_skipped() {
        for key in [
            "[192.0.2.1]",
            "[192.0.2.1]:25",
            "192.0.2.1",
            "[ipv6:2001:db8::1]",
            "[IPv6:2001:db8::1]:25",
            "2001:db8::1",
            "[2001:db8::1]",
            "10.0.0.1.",
        ] {
            assert_eq!(normalize_key(key), Err(Skip::IpLiteral), "{key}");
        }
    }

    #[test]
    fn invalid_names_are_skipped() {
        for key in [
            "",
            "localhost",
            "exa mple.com",
            "example..com",
            "-example.com",
            "example-.com",
            "ex_ample.com",
            "[example.com",
            "[example.com]x",
            "example.com:port",
            "example.123",
            &format!("{}.com", "a".repeat(64)),
            &format!("{}com", "a.".repeat(130)),
            "exa\u{0}mple.com",
            "💩.com\u{202e}",
        ] {
            assert!(
                matches!(normalize_key(key), Err(Skip::Invalid(_))),
                "{key:?} gave {:?}",
                normalize_key(key)
            );
        }
    }

    proptest! {
        #[test]
        fn never_panics(key in "\\PC{0,80}") {
            let _ = normalize_key(&key);
        }

        #[test]
        fn output_is_always_a_valid_lowercase_name(key in "[a-zA-Z0-9.\\-\\[\\]:]{0,40}") {
            if let Ok(d) = normalize_key(&key) {
                prop_assert!(check_hostname(&d).is_ok());
                prop_assert_eq!(d.to_ascii_lowercase(), d.as_str());
                prop_assert_eq!(normalize_key(&d), Ok(d.clone()));
            }
        }
    }
}
