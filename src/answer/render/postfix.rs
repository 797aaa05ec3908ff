//! Postfix's `smtp_tls_policy_maps` answers (socketmap_table(5), postconf(5)):
//! `OK secure match=...` with `servername=hostname` (Postfix >= 3.4) and TLSRPT
//! attributes (Postfix >= 3.10), `OK dane`, `OK dane-only`, `NOTFOUND ` and
//! `TEMP reason`. Sendmail's `FEATURE(sts)` reads the same answers.

use super::{RenderOptions, Renderer};
use crate::mtasts::policy::Policy;

pub struct Postfix;

impl Renderer for Postfix {
    fn secure(
        &self,
        domain: &str,
        policy: &Policy,
        patterns: &[String],
        options: RenderOptions,
        dropped: &mut Vec<String>,
    ) -> String {
        let mut out = String::with_capacity(64 + 32 * patterns.len());
        out.push_str("OK secure match=");
        out.push_str(&patterns.join(":"));
        if options.require_sni {
            out.push_str(" servername=hostname");
        }
        if options.tlsrpt {
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
                    None => dropped.push(line.clone()),
                }
            }
        }
        out
    }

    fn not_found(&self) -> &'static str {
        "NOTFOUND "
    }

    fn dane(&self) -> &'static str {
        "OK dane"
    }

    fn dane_only(&self) -> &'static str {
        "OK dane-only"
    }

    fn temp(&self, reason: &str) -> String {
        format!("TEMP {reason}")
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
