//! Asking Postfix about its own configuration, with its own `postconf`: the one place
//! that runs it, for `[dane] mode = "auto"`, the start-up checks and `mta-stsd
//! doctor`; and what a Postfix version accepts (pure).

use std::path::Path;

/// Runs `postconf [-c DIR] ARGS...` and returns its output (trailing newline removed),
/// or the last line of its complaint.
pub fn postconf(config_dir: Option<&Path>, args: &[&str]) -> Result<String, String> {
    let mut cmd = std::process::Command::new("postconf");
    if let Some(dir) = config_dir {
        cmd.arg("-c").arg(dir);
    }
    let out = cmd
        .args(args)
        .output()
        .map_err(|e| format!("cannot run postconf: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(err
            .lines()
            .last()
            .unwrap_or("postconf failed")
            .trim()
            .to_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
}

/// A Postfix version `X.Y.Z` (or `X.Y`, or a snapshot `X.Y-20250101`) as numbers.
pub fn parse_version(s: &str) -> Option<(u32, u32, u32)> {
    let s = s.trim();
    let mut parts = s.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts
        .next()
        .and_then(|p| p.parse().ok())
        .filter(|p| *p < 1000)
        .unwrap_or(0);
    Some((major, minor, patch))
}

/// What to say when zones (`sections`, e.g. `zones.default`) send the TLSRPT
/// attributes to a Postfix older than 3.10: it rejects the whole answer ("invalid
/// attribute name") and defers mail to every enforced domain.
pub fn tlsrpt_attributes_refused(version: &str, sections: &[String]) -> Option<String> {
    let v = parse_version(version)?;
    if sections.is_empty() || v >= (3, 10, 0) {
        return None;
    }
    let list: Vec<String> = sections.iter().map(|s| format!("[{s}]")).collect();
    Some(format!(
        "Postfix {version} rejects the TLSRPT attributes that {} send(s) with tlsrpt = true \
         (Postfix 3.10 or later): mail to every enforced MTA-STS domain will be deferred; \
         set tlsrpt = false there, or upgrade Postfix",
        list.join(", ")
    ))
}

/// What to say when Postfix asks a socketmap (mta-stsd) for TLS policies but its smtp
/// client has no trust anchors (`smtp_tls_CAfile`, `smtp_tls_CApath`, or
/// `tls_append_default_CA = yes`): it cannot verify any certificate, so every domain
/// answered `secure` (enforced MTA-STS) is deferred.
pub fn no_trust_anchors(
    policy_maps: &str,
    cafile: &str,
    capath: &str,
    append_default: &str,
) -> Option<String> {
    let asks = policy_maps.contains("socketmap:");
    let anchors = !cafile.trim().is_empty()
        || !capath.trim().is_empty()
        || append_default.trim().eq_ignore_ascii_case("yes");
    (asks && !anchors).then(|| {
        "Postfix asks mta-stsd for TLS policies but its smtp client has no trust anchors \
         (smtp_tls_CAfile and smtp_tls_CApath are empty): every enforced MTA-STS domain will \
         be deferred (\"Server certificate not verified\"); set smtp_tls_CAfile = \
         /etc/ssl/certs/ca-certificates.crt"
            .to_owned()
    })
}

/// The tables of a Postfix table list (`hash:/etc/a, inline:{ k=v, k2=v2 }`): split on
/// commas and white space, except inside `{ }` (postconf(5): an `inline:` or
/// `static:` table keeps its braces' content whole).
pub fn table_list(value: &str) -> Vec<String> {
    let (mut tables, mut current, mut depth) = (Vec::new(), String::new(), 0usize);
    for c in value.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' | ' ' | '\t' | '\n' if depth == 0 => {
                if !current.is_empty() {
                    tables.push(std::mem::take(&mut current));
                }
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    if !current.is_empty() {
        tables.push(current);
    }
    tables
}

#[cfg(test)]
mod tests {
    #[test]
    fn table_lists_keep_braces_whole() {
        assert_eq!(
            super::table_list(
                "hash:/etc/a, inline:{ x@example.com=smtp-notlsrpt: , y=z }\n  static:{a b}"
            ),
            [
                "hash:/etc/a",
                "inline:{ x@example.com=smtp-notlsrpt: , y=z }",
                "static:{a b}"
            ]
        );
        assert!(super::table_list("  ").is_empty());
    }

    use super::*;

    #[test]
    fn postfix_without_trust_anchors_is_named() {
        let maps = "socketmap:inet:127.0.0.1:8461:postfix";
        assert!(no_trust_anchors(maps, "", "", "no").is_some());
        assert!(no_trust_anchors(maps, "/etc/ssl/certs/ca-certificates.crt", "", "no").is_none());
        assert!(no_trust_anchors(maps, "", "/etc/ssl/certs", "no").is_none());
        assert!(no_trust_anchors(maps, "", "", "yes").is_none());
        assert!(
            no_trust_anchors("hash:/etc/postfix/tls_policy", "", "", "no").is_none(),
            "not asking mta-stsd"
        );
    }

    #[test]
    fn versions_and_the_tlsrpt_attributes() {
        assert_eq!(parse_version("3.10.13"), Some((3, 10, 13)));
        assert_eq!(parse_version("3.11-20250101"), Some((3, 11, 0)));
        assert_eq!(parse_version("x"), None);
        let zones = vec!["zones.default".to_owned()];
        let w = tlsrpt_attributes_refused("3.7.11", &zones).unwrap();
        assert!(
            w.contains("Postfix 3.7.11") && w.contains("[zones.default]"),
            "{w}"
        );
        assert!(tlsrpt_attributes_refused("3.10.3", &zones).is_none());
        assert!(tlsrpt_attributes_refused("3.7.11", &[]).is_none());
        assert!(tlsrpt_attributes_refused("garbage", &zones).is_none());
    }
}
