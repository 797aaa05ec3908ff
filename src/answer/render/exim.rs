//! Answers for Exim, which asks with `${readsocket}` and reads them with `${extract}`:
//! `key=value` words only (a bare word such as `OK` first would swallow the next pair
//! in Exim's parsing): `mode=secure hosts=LIST`, `mode=dane`, `mode=dane-only`,
//! `mode=none` (no policy applies) and `mode=defer reason="..."`, in the same
//! netstring framing as every socketmap answer.
//!
//! `hosts` is an Exim host list of anchored, case-blind regular expressions, one per
//! MX pattern of the policy: Exim matches a regular expression item against the host
//! name (a plain name item would make it look the name up and compare addresses). A
//! `*.` pattern becomes "exactly one label" (RFC 8461 §4.1: the wildcard matches the
//! leftmost label only), which Postfix's `.domain` cannot say. Dots are written `[.]`
//! and the list has no spaces, so the value needs neither quotes nor backslashes.

use super::{RenderOptions, Renderer};
use crate::mtasts::policy::Policy;

pub struct Exim;

impl Renderer for Exim {
    fn secure(
        &self,
        _domain: &str,
        policy: &Policy,
        _patterns: &[String],
        _options: RenderOptions,
        _dropped: &mut Vec<String>,
    ) -> String {
        let mut hosts: Vec<String> = Vec::with_capacity(policy.mx.len());
        for mx in &policy.mx {
            let name = mx.domain.replace('.', "[.]");
            let item = if mx.wildcard {
                format!("^(?i)[^.]+[.]{name}$")
            } else {
                format!("^(?i){name}$")
            };
            if !hosts.contains(&item) {
                hosts.push(item);
            }
        }
        format!("mode=secure hosts={}", hosts.join(":"))
    }

    fn not_found(&self) -> &'static str {
        "mode=none"
    }

    fn dane(&self) -> &'static str {
        "mode=dane"
    }

    fn dane_only(&self) -> &'static str {
        "mode=dane-only"
    }

    /// `reason` is printable ASCII; inside Exim's quotes `"` and `\` would be special.
    fn temp(&self, reason: &str) -> String {
        format!("mode=defer reason=\"{}\"", reason.replace(['"', '\\'], "'"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Format, RenderOptions, dane, mta_sts, temp};
    use crate::mtasts::policy::parse_policy;

    fn exim() -> RenderOptions {
        RenderOptions {
            format: Format::Exim,
            ..RenderOptions::default()
        }
    }

    #[test]
    fn enforced_policies_become_a_host_list_of_anchored_regexes() {
        let p = parse_policy(
            b"version: STSv1\nmode: enforce\nmx: mx1.example.com\nmx: *.example.net\nmx: MX1.example.com\nmax_age: 86400\n",
        )
        .unwrap();
        let r = mta_sts("example.com", Some(&p), exim());
        assert_eq!(
            r.reply.wire(),
            "mode=secure hosts=^(?i)mx1[.]example[.]com$:^(?i)[^.]+[.]example[.]net$"
        );
    }

    #[test]
    fn testing_none_dane_and_temp() {
        let testing =
            parse_policy(b"version: STSv1\nmode: testing\nmx: mx.example\nmax_age: 1\n").unwrap();
        assert_eq!(
            mta_sts("example", Some(&testing), exim()).reply.wire(),
            "mode=none"
        );
        assert_eq!(dane(Format::Exim, true).wire(), "mode=dane-only");
        assert_eq!(dane(Format::Exim, false).wire(), "mode=dane");
        assert_eq!(
            temp(Format::Exim, "bogus \"MX\\").wire(),
            "mode=defer reason=\"bogus 'MX'\""
        );
    }
}
