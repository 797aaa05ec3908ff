//! Rendering a policy decision as the socketmap reply Postfix reads: the one rendering
//! path shared by the daemon and `mta-stsd query`. Pure functions: a policy and zone
//! options in, reply text out.
//!
//! Postfix's socketmap_table(5) replies are `OK data` or `NOTFOUND `; the data is a
//! TLS policy in smtp_tls_policy_maps syntax (postconf(5)): `secure match=...`.
//! MTA-STS `mode: enforce` maps to `secure` with the policy's mx patterns (RFC 8461
//! §4.1: a `*.` pattern matches one leftmost label; Postfix's `.domain` matches any
//! depth, the closest it can express). `testing` and `none` are answered `NOTFOUND `
//! (RFC 8461 §5: a testing policy must not stop delivery).

use std::sync::{Arc, OnceLock};

use crate::config::ZoneOptions;
use crate::mtasts::policy::{Mode, Policy};
use crate::protocol::codec::MAX_REPLY;

/// What rendering a reply depends on: the zone options of the socketmap name the
/// request came by (`[zones.NAME]` in the configuration) that change the reply text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenderOptions {
    /// Treat `mode: testing` as `enforce`.
    pub strict_testing: bool,
    /// Add `servername=hostname` (SNI = MX host name; Postfix >= 3.4).
    pub require_sni: bool,
    /// Add TLSRPT attributes (Postfix >= 3.10 only).
    pub tlsrpt: bool,
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self {
            strict_testing: false,
            require_sni: true,
            tlsrpt: false,
        }
    }
}

impl From<&ZoneOptions> for RenderOptions {
    /// What of a zone's options the reply's text depends on.
    fn from(zone: &ZoneOptions) -> Self {
        RenderOptions {
            strict_testing: zone.strict_testing,
            require_sni: zone.require_sni,
            tlsrpt: zone.tlsrpt,
        }
    }
}

impl RenderOptions {
    /// A distinct index in `0..ZONE_VARIANTS` for each combination of options, so a
    /// rendered reply can be memoized per combination.
    pub fn variant(&self) -> usize {
        usize::from(self.strict_testing)
            | usize::from(self.require_sni) << 1
            | usize::from(self.tlsrpt) << 2
    }
}

/// How many distinct [`RenderOptions`] combinations there are.
pub const ZONE_VARIANTS: usize = 8;

/// A socketmap reply. Cloning is cheap (the text is shared).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `OK secure match=...`: the whole netstring payload.
    Secure(Arc<str>),
    /// `NOTFOUND `: no policy applies; Postfix uses its default TLS level.
    NotFound,
    /// `OK dane`: Postfix's opportunistic DANE decides per MX host (postconf(5)).
    Dane,
    /// `OK dane-only`: mandatory DANE, every MX host must match its TLSA records.
    DaneOnly,
    /// `TEMP reason`: Postfix defers the delivery (socketmap_table(5)).
    Temp(Arc<str>),
}

impl Reply {
    /// The netstring payload.
    pub fn wire(&self) -> &str {
        match self {
            Reply::Secure(wire) | Reply::Temp(wire) => wire,
            Reply::NotFound => "NOTFOUND ",
            Reply::Dane => "OK dane",
            Reply::DaneOnly => "OK dane-only",
        }
    }

    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Reply::Secure(_) => "secure",
            Reply::NotFound => "notfound",
            Reply::Dane => "dane",
            Reply::DaneOnly => "dane_only",
            Reply::Temp(_) => "temp",
        }
    }

    /// `TEMP reason`, with the reason reduced to printable ASCII (it ends up in
    /// Postfix's log and in the deferral notice).
    pub fn temp(reason: &str) -> Reply {
        let clean: String = reason
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '?'
                }
            })
            .take(200)
            .collect();
        Reply::Temp(Arc::from(format!("TEMP {clean}")))
    }
}

/// The rendered reply plus anything the caller should log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub reply: Reply,
    /// Policy lines left out of the TLSRPT attributes (they contain `{`, `}` or
    /// control characters, which Postfix's attribute syntax cannot carry).
    pub dropped_lines: Vec<String>,
    /// The TLSRPT attributes were left out because the reply would have exceeded
    /// Postfix's reply limit; enforcement itself is kept.
    pub tlsrpt_dropped_for_size: bool,
}

/// Whether the policy is enforced under these zone options.
pub fn is_enforced(policy: &Policy, zone: RenderOptions) -> bool {
    match policy.mode {
        Mode::Enforce => true,
        Mode::Testing => zone.strict_testing,
        Mode::None => false,
    }
}

/// Renders the reply for `domain` given its policy (or none).
pub fn render(domain: &str, policy: Option<&Policy>, zone: RenderOptions) -> Rendered {
    let rendered = render_unbounded(domain, policy, zone);
    if rendered.reply.wire().len() <= MAX_REPLY {
        return rendered;
    }
    // Only TLSRPT attributes (a policy's lines) can make a reply this long; Postfix
    // would refuse it whole, so keep enforcement and leave them out.
    let plain = RenderOptions {
        tlsrpt: false,
        ..zone
    };
    Rendered {
        tlsrpt_dropped_for_size: true,
        ..render_unbounded(domain, policy, plain)
    }
}

fn render_unbounded(domain: &str, policy: Option<&Policy>, zone: RenderOptions) -> Rendered {
    let not_found = Rendered {
        reply: Reply::NotFound,
        dropped_lines: Vec::new(),
        tlsrpt_dropped_for_size: false,
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
    out.push_str("OK secure match=");
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
        reply: Reply::Secure(Arc::from(out)),
        dropped_lines,
        tlsrpt_dropped_for_size: false,
    }
}

/// Rendered replies for one policy, one per zone-option combination, each rendered
/// on first use and then shared: a cache hit allocates nothing.
#[derive(Debug, Default)]
pub struct ReplyMemo([OnceLock<Reply>; ZONE_VARIANTS]);

impl ReplyMemo {
    /// The memoized reply for `zone`, rendering it with `render` the first time.
    pub fn get_or_render(&self, zone: RenderOptions, render: impl FnOnce() -> Reply) -> Reply {
        self.0[zone.variant()].get_or_init(render).clone()
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

    fn wire(domain: &str, body: &str, zone: RenderOptions) -> String {
        render(domain, Some(&policy(body)), zone)
            .reply
            .wire()
            .to_owned()
    }

    #[test]
    fn enforce_answer_is_exact() {
        let body = "version: STSv1\nmode: enforce\nmx: mx1.example.com\nmx: *.example.net\nmax_age: 604800\n";
        assert_eq!(
            wire("example.com", body, RenderOptions::default()),
            "OK secure match=mx1.example.com:.example.net servername=hostname"
        );
        let no_sni = RenderOptions {
            require_sni: false,
            ..Default::default()
        };
        assert_eq!(
            wire("example.com", body, no_sni),
            "OK secure match=mx1.example.com:.example.net"
        );
    }

    #[test]
    fn order_kept_and_duplicates_dropped() {
        let body = "version: STSv1\nmode: enforce\nmx: b.example\nmx: *.a.example\nmx: B.example\nmx: c.example\nmax_age: 1\n";
        assert_eq!(
            wire("example", body, RenderOptions::default()),
            "OK secure match=b.example:.a.example:c.example servername=hostname"
        );
    }

    #[test]
    fn testing_and_none_are_not_found_unless_strict() {
        let testing = "version: STSv1\nmode: testing\nmx: mx.example.com\nmax_age: 1\n";
        let none = "version: STSv1\nmode: none\nmax_age: 1\n";
        let strict = RenderOptions {
            strict_testing: true,
            ..Default::default()
        };
        assert_eq!(
            wire("example.com", testing, RenderOptions::default()),
            "NOTFOUND "
        );
        assert_eq!(
            wire("example.com", testing, strict),
            "OK secure match=mx.example.com servername=hostname"
        );
        assert_eq!(wire("example.com", none, strict), "NOTFOUND ");
        assert_eq!(
            render("example.com", None, strict).reply.wire(),
            "NOTFOUND "
        );
    }

    #[test]
    fn never_an_empty_match() {
        let mut p = policy("version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 1\n");
        p.mx.clear();
        assert_eq!(
            render("example.com", Some(&p), RenderOptions::default()).reply,
            Reply::NotFound
        );
    }

    #[test]
    fn tlsrpt_attributes() {
        let body = "version: STSv1\nmode: enforce\n\nmx: mx1.example.com\nmx: *.example.net\nmax_age: 604800\n";
        let zone = RenderOptions {
            tlsrpt: true,
            ..Default::default()
        };
        assert_eq!(
            wire("example.com", body, zone),
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
        let zone = RenderOptions {
            tlsrpt: true,
            ..Default::default()
        };
        let r = render("example.com", Some(&policy(body)), zone);
        let w = r.reply.wire();
        assert!(!w.contains("policy_failure"), "{w}");
        assert!(!w.contains("evil"), "{w}");
        assert_eq!(w.matches('{').count(), w.matches('}').count());
        assert_eq!(w.matches("policy_string").count(), 4);
        assert_eq!(r.dropped_lines.len(), 2);
    }

    #[test]
    fn every_zone_option_combination_has_its_own_variant() {
        let mut seen = std::collections::HashSet::new();
        for bits in 0..8u8 {
            let z = RenderOptions {
                strict_testing: bits & 1 != 0,
                require_sni: bits & 2 != 0,
                tlsrpt: bits & 4 != 0,
            };
            assert!(z.variant() < ZONE_VARIANTS);
            assert!(seen.insert(z.variant()));
        }
    }

    #[test]
    fn oversize_tlsrpt_attributes_are_dropped_and_enforcement_kept() {
        let mut body =
            String::from("version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 60\n");
        for i in 0..3000 {
            body.push_str(&format!("x-padding-{i}: {}\n", "a".repeat(30)));
        }
        let zone = RenderOptions {
            tlsrpt: true,
            ..Default::default()
        };
        let r = render("example.com", Some(&policy(&body)), zone);
        assert!(r.tlsrpt_dropped_for_size);
        assert_eq!(
            r.reply.wire(),
            "OK secure match=mx.example.com servername=hostname"
        );
    }
}
