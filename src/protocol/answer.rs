//! Rendering a policy decision as the socketmap reply Postfix reads (SPEC §2, §5).
//! Pure functions: a policy and zone options in, reply text out.

use serde::Deserialize;

use crate::mtasts::policy::{Mode, Policy};

/// Per-socketmap-name options (`[zones.NAME]` in the configuration).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ZoneOptions {
    /// Treat `mode: testing` as `enforce`.
    pub strict_testing: bool,
    /// Add `servername=hostname` (SNI = MX host name; Postfix >= 3.4).
    pub require_sni: bool,
    /// Add TLSRPT attributes (Postfix >= 3.10 only).
    pub tlsrpt: bool,
}

impl Default for ZoneOptions {
    fn default() -> Self {
        Self {
            strict_testing: false,
            require_sni: true,
            tlsrpt: false,
        }
    }
}

/// A socketmap reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok(String),
    NotFound,
    Temp(String),
    Perm(String),
}

impl Reply {
    /// The netstring payload: `OK data`, `NOTFOUND `, `TEMP reason`, `PERM reason`.
    pub fn to_wire(&self) -> String {
        match self {
            Reply::Ok(data) => format!("OK {data}"),
            Reply::NotFound => "NOTFOUND ".to_owned(),
            Reply::Temp(reason) => format!("TEMP {reason}"),
            Reply::Perm(reason) => format!("PERM {reason}"),
        }
    }

    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Reply::Ok(_) => "secure",
            Reply::NotFound => "notfound",
            Reply::Temp(_) => "temp",
            Reply::Perm(_) => "perm",
        }
    }
}

/// The rendered answer plus anything the caller should log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub reply: Reply,
    /// Policy lines left out of the TLSRPT attributes, with the reason.
    pub dropped_lines: Vec<String>,
}

/// Whether the policy is enforced under these zone options.
pub fn is_enforced(policy: &Policy, zone: &ZoneOptions) -> bool {
    match policy.mode {
        Mode::Enforce => true,
        Mode::Testing => zone.strict_testing,
        Mode::None => false,
    }
}

/// Renders the reply for `domain` given its policy (or none).
pub fn render(domain: &str, policy: Option<&Policy>, zone: &ZoneOptions) -> Rendered {
    let not_found = Rendered {
        reply: Reply::NotFound,
        dropped_lines: Vec::new(),
    };
    let Some(policy) = policy.filter(|p| is_enforced(p, zone)) else {
        return not_found;
    };

    let mut patterns: Vec<String> = Vec::with_capacity(policy.mx.len());
    for mx in &policy.mx {
        let p = if mx.wildcard {
            format!(".{}", mx.domain)
        } else {
            mx.domain.clone()
        };
        if !patterns.contains(&p) {
            patterns.push(p);
        }
    }
    if patterns.is_empty() {
        // Never hand Postfix an empty match= (it would reject the whole answer).
        return not_found;
    }

    let mut out = String::with_capacity(64 + 32 * patterns.len());
    out.push_str("secure match=");
    out.push_str(&patterns.join(":"));
    if zone.require_sni {
        out.push_str(" servername=hostname");
    }
    let mut dropped_lines = Vec::new();
    if zone.tlsrpt {
        out.push_str(" policy_type=sts policy_domain=");
        out.push_str(domain);
        for mx in &policy.mx {
            out.push_str(" mx_host_pattern=");
            out.push_str(&mx.to_string());
        }
        for line in &policy.lines {
            match tlsrpt_policy_string(line) {
                Some(s) => {
                    out.push_str(" { policy_string = ");
                    out.push_str(&s);
                    out.push_str(" }");
                }
                None => dropped_lines.push(line.clone()),
            }
        }
    }
    Rendered {
        reply: Reply::Ok(out),
        dropped_lines,
    }
}

/// A policy line as a TLSRPT `policy_string` value, or `None` when it cannot be
/// carried safely inside Postfix's `{ name = value }` syntax.
fn tlsrpt_policy_string(line: &str) -> Option<String> {
    let s = line.trim_matches(|c: char| c == ' ' || c == '\t');
    if s.is_empty() || s.contains(['{', '}']) || s.chars().any(char::is_control) {
        return None;
    }
    Some(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mtasts::policy::parse_policy;

    fn policy(body: &str) -> Policy {
        parse_policy(body.as_bytes()).unwrap()
    }

    fn wire(domain: &str, body: &str, zone: &ZoneOptions) -> String {
        render(domain, Some(&policy(body)), zone).reply.to_wire()
    }

    #[test]
    fn enforce_answer_is_exact() {
        let body = "version: STSv1\nmode: enforce\nmx: mx1.example.com\nmx: *.example.net\nmax_age: 604800\n";
        assert_eq!(
            wire("example.com", body, &ZoneOptions::default()),
            "OK secure match=mx1.example.com:.example.net servername=hostname"
        );
        let no_sni = ZoneOptions {
            require_sni: false,
            ..Default::default()
        };
        assert_eq!(
            wire("example.com", body, &no_sni),
            "OK secure match=mx1.example.com:.example.net"
        );
    }

    #[test]
    fn order_kept_and_duplicates_dropped() {
        let body = "version: STSv1\nmode: enforce\nmx: b.example\nmx: *.a.example\nmx: B.example\nmx: c.example\nmax_age: 1\n";
        assert_eq!(
            wire("example", body, &ZoneOptions::default()),
            "OK secure match=b.example:.a.example:c.example servername=hostname"
        );
    }

    #[test]
    fn testing_and_none_are_not_found_unless_strict() {
        let testing = "version: STSv1\nmode: testing\nmx: mx.example.com\nmax_age: 1\n";
        let none = "version: STSv1\nmode: none\nmax_age: 1\n";
        let strict = ZoneOptions {
            strict_testing: true,
            ..Default::default()
        };
        assert_eq!(
            wire("example.com", testing, &ZoneOptions::default()),
            "NOTFOUND "
        );
        assert_eq!(
            wire("example.com", testing, &strict),
            "OK secure match=mx.example.com servername=hostname"
        );
        assert_eq!(wire("example.com", none, &strict), "NOTFOUND ");
        assert_eq!(
            render("example.com", None, &strict).reply.to_wire(),
            "NOTFOUND "
        );
    }

    #[test]
    fn never_an_empty_match() {
        let mut p = policy("version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 1\n");
        p.mx.clear();
        assert_eq!(
            render("example.com", Some(&p), &ZoneOptions::default()).reply,
            Reply::NotFound
        );
    }

    #[test]
    fn tlsrpt_attributes() {
        let body = "version: STSv1\nmode: enforce\n\nmx: mx1.example.com\nmx: *.example.net\nmax_age: 604800\n";
        let zone = ZoneOptions {
            tlsrpt: true,
            ..Default::default()
        };
        assert_eq!(
            wire("example.com", body, &zone),
            "OK secure match=mx1.example.com:.example.net servername=hostname \
             policy_type=sts policy_domain=example.com \
             mx_host_pattern=mx1.example.com mx_host_pattern=*.example.net \
             { policy_string = version: STSv1 } { policy_string = mode: enforce } \
             { policy_string = mx: mx1.example.com } { policy_string = mx: *.example.net } \
             { policy_string = max_age: 604800 }"
        );
    }

    #[test]
    fn tlsrpt_hostile_lines_never_reach_the_answer() {
        let body = "version: STSv1\nmode: enforce\nmx: mx.example.com\nevil: } policy_failure=sts-policy-invalid {\nx: {\nmax_age: 60\n";
        let zone = ZoneOptions {
            tlsrpt: true,
            ..Default::default()
        };
        let r = render("example.com", Some(&policy(body)), &zone);
        let w = r.reply.to_wire();
        assert!(!w.contains("policy_failure"), "{w}");
        assert!(!w.contains("evil"), "{w}");
        assert_eq!(w.matches('{').count(), w.matches('}').count());
        assert_eq!(w.matches("policy_string").count(), 4);
        assert_eq!(r.dropped_lines.len(), 2);
    }
}
