//! Rendering a decision as the text the asking MTA reads, one renderer per client
//! ([`Format`]); the one rendering path shared by the daemon and `mta-stsd query`.
//! Pure functions: a policy and options in, reply text out.
//!
//! What an MTA-STS policy means is the same for every client: `mode: enforce` asks
//! for verified TLS to the policy's MX hosts (RFC 8461 §4.1: a `*.` pattern matches one
//! leftmost label); `testing` and `none` change nothing (RFC 8461 §5: a testing
//! policy must not stop delivery), unless the zone sets `strict_testing`. How that is
//! said is the renderer's.
//!
//! Adding a client's format: one file with a [`Renderer`], a [`Format`] variant (in
//! the configuration, where zones name it), and its arm in `renderer`.

use std::sync::Arc;

use super::reply::{Kind, Reply, clean_reason};
use crate::config::ZoneOptions;
use crate::mtasts::policy::{Mode, Policy};
use crate::protocol::codec::MAX_REPLY;

pub mod exim;
pub mod postfix;

pub use crate::config::AnswerFormat as Format;

fn renderer(format: Format) -> &'static dyn Renderer {
    match format {
        Format::Postfix => &postfix::Postfix,
        Format::Exim => &exim::Exim,
    }
}

/// How one client's replies are written.
pub trait Renderer: Sync {
    /// The reply text demanding verified TLS to `patterns` (the policy's MX patterns,
    /// in order, duplicates removed; never empty), with the TLSRPT attributes of
    /// `policy` when `options.tlsrpt`. Policy lines the format cannot carry are
    /// pushed to `dropped`.
    fn secure(
        &self,
        domain: &str,
        policy: &Policy,
        patterns: &[String],
        options: RenderOptions,
        dropped: &mut Vec<String>,
    ) -> String;
    /// No policy applies.
    fn not_found(&self) -> &'static str;
    /// Hand the domain to the MTA's opportunistic DANE.
    fn dane(&self) -> &'static str;
    /// Hand the domain to the MTA's mandatory DANE.
    fn dane_only(&self) -> &'static str;
    /// Defer, saying why (`reason` is printable ASCII).
    fn temp(&self, reason: &str) -> String;
}

/// What rendering a reply depends on: the client's format and the zone options of the
/// map the request came by (`[zones.NAME]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenderOptions {
    pub format: Format,
    /// Treat `mode: testing` as `enforce`.
    pub strict_testing: bool,
    /// Demand SNI = the MX host name (Postfix >= 3.4: `servername=hostname`).
    pub require_sni: bool,
    /// Add TLSRPT attributes (Postfix >= 3.10 only).
    pub tlsrpt: bool,
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self {
            format: Format::Postfix,
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
            format: zone.format.unwrap_or_default(),
            strict_testing: zone.strict_testing,
            require_sni: zone.require_sni,
            tlsrpt: zone.tlsrpt,
        }
    }
}

/// How many distinct [`RenderOptions`] there are.
pub const VARIANTS: usize = Format::ALL.len() * 8;

// Every combination has its own slot in a cached policy's memo.
const _: () = assert!(VARIANTS <= crate::cache::hot::MEMO_SLOTS);

impl RenderOptions {
    /// A distinct index in `0..VARIANTS` for each combination of options, so a
    /// rendered reply can be memoized per combination.
    pub fn variant(&self) -> usize {
        self.format as usize * 8
            + (usize::from(self.strict_testing)
                | usize::from(self.require_sni) << 1
                | usize::from(self.tlsrpt) << 2)
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
    /// the socketmap reply limit; enforcement itself is kept.
    pub tlsrpt_dropped_for_size: bool,
}

/// Whether the policy is enforced under these options.
pub fn is_enforced(policy: &Policy, options: RenderOptions) -> bool {
    match policy.mode {
        Mode::Enforce => true,
        Mode::Testing => options.strict_testing,
        Mode::None => false,
    }
}

/// No policy applies.
pub fn not_found(format: Format) -> Reply {
    Reply::fixed(Kind::NotFound, renderer(format).not_found())
}

/// The MTA's own DANE, mandatory or not.
pub fn dane(format: Format, mandatory: bool) -> Reply {
    let r = renderer(format);
    match mandatory {
        true => Reply::fixed(Kind::DaneOnly, r.dane_only()),
        false => Reply::fixed(Kind::Dane, r.dane()),
    }
}

/// Defer, saying why.
pub fn temp(format: Format, reason: &str) -> Reply {
    let text = renderer(format).temp(&clean_reason(reason));
    Reply::shared(Kind::Temp, Arc::from(text))
}

/// Renders the MTA-STS reply for `domain` given its policy (or none), within the
/// socketmap reply limit.
pub fn mta_sts(domain: &str, policy: Option<&Policy>, options: RenderOptions) -> Rendered {
    let rendered = unbounded(domain, policy, options);
    if rendered.reply.wire().len() <= MAX_REPLY {
        return rendered;
    }
    // Only TLSRPT attributes (a policy's lines) can make a reply this long; the MTA
    // would refuse it whole, so keep enforcement and leave them out.
    let plain = RenderOptions {
        tlsrpt: false,
        ..options
    };
    Rendered {
        tlsrpt_dropped_for_size: true,
        ..unbounded(domain, policy, plain)
    }
}

fn unbounded(domain: &str, policy: Option<&Policy>, options: RenderOptions) -> Rendered {
    let renderer = renderer(options.format);
    let mut dropped_lines = Vec::new();
    let reply = match policy.filter(|p| is_enforced(p, options)) {
        Some(policy) => {
            let patterns = patterns(policy);
            if patterns.is_empty() {
                // Never hand the MTA an empty list of hosts (Postfix would reject the
                // whole answer).
                not_found(options.format)
            } else {
                let text = renderer.secure(domain, policy, &patterns, options, &mut dropped_lines);
                Reply::shared(Kind::Secure, Arc::from(text))
            }
        }
        None => not_found(options.format),
    };
    Rendered {
        reply,
        dropped_lines,
        tlsrpt_dropped_for_size: false,
    }
}

/// The policy's MX patterns in order, duplicates removed, a `*.` pattern written as
/// `.domain` (Postfix's `match=` form: it matches any depth, the closest Postfix can
/// express; renderers that can say "exactly one label" use the policy itself).
fn patterns(policy: &Policy) -> Vec<String> {
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
    patterns
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mtasts::policy::parse_policy;

    fn policy(body: &str) -> Policy {
        parse_policy(body.as_bytes()).unwrap()
    }

    fn wire(domain: &str, body: &str, zone: RenderOptions) -> String {
        mta_sts(domain, Some(&policy(body)), zone)
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
            mta_sts("example.com", None, strict).reply.wire(),
            "NOTFOUND "
        );
    }

    #[test]
    fn never_an_empty_match() {
        let mut p = policy("version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 1\n");
        p.mx.clear();
        assert_eq!(
            mta_sts("example.com", Some(&p), RenderOptions::default()).reply,
            not_found(Format::Postfix)
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
        let r = mta_sts("example.com", Some(&policy(body)), zone);
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
        for format in Format::ALL {
            for bits in 0..8u8 {
                let z = RenderOptions {
                    format,
                    strict_testing: bits & 1 != 0,
                    require_sni: bits & 2 != 0,
                    tlsrpt: bits & 4 != 0,
                };
                assert!(z.variant() < VARIANTS);
                assert!(seen.insert(z.variant()));
            }
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
        let r = mta_sts("example.com", Some(&policy(&body)), zone);
        assert!(r.tlsrpt_dropped_for_size);
        assert_eq!(
            r.reply.wire(),
            "OK secure match=mx.example.com servername=hostname"
        );
    }

    #[test]
    fn dane_and_temp_replies() {
        assert_eq!(dane(Format::Postfix, true).wire(), "OK dane-only");
        assert_eq!(dane(Format::Postfix, false).wire(), "OK dane");
        assert_eq!(temp(Format::Postfix, "bogus\nMX").wire(), "TEMP bogus?MX");
        assert_eq!(temp(Format::Postfix, "x").kind(), Kind::Temp);
    }
}
