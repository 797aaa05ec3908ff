//! Library errors as one line an administrator can read: an error with its sources
//! joined, and the libraries' debug forms (rustls's `DnsName("..")` and epoch seconds,
//! hickory's `Query { .. }`) turned into plain names, dates and record types. Pure.

use std::error::Error as StdError;

/// Joins an error and its sources into one line.
pub fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        source = e.source();
    }
    humane(&out)
}

/// The libraries' error texts as people read them: rustls prints names as
/// `DnsName("mx.example")` and times as `1796654724 (UNIX)`, hickory prints a whole
/// `Query { name: Name("x."), query_type: A, ... }`. Pure.
pub fn humane(text: &str) -> String {
    let mut out = text.to_owned();
    unwrap_names(&mut out);
    epoch_times(&mut out);
    seconds_as_days(&mut out);
    query_names(&mut out);
    out
}

/// `DnsName("a.example")` -> `a.example`; `IpAddress("..")` -> the address.
fn unwrap_names(out: &mut String) {
    for wrapper in ["DnsName(\"", "IpAddress(\""] {
        while let Some(at) = out.find(wrapper) {
            let inner = &out[at + wrapper.len()..];
            let Some(end) = inner.find("\")") else { break };
            let name = inner[..end].to_owned();
            out.replace_range(at..at + wrapper.len() + end + 2, &name);
        }
    }
}

/// rustls's epoch seconds: "verification time 1796654724 (UNIX), but certificate is
/// not valid after 1796568324 (86400 seconds ago)" -> RFC 3339 times.
fn epoch_times(out: &mut String) {
    let when = |secs: u64| {
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
        )
        .to_string()
    };
    for marker in [" (UNIX)", "not valid after ", "not valid before "] {
        let mut from = 0;
        while let Some(found) = out[from..].find(marker) {
            let at = from + found;
            // The number is before " (UNIX)", after the other two markers.
            let (start, end) = if marker == " (UNIX)" {
                let start = out[..at]
                    .rfind(|c: char| !c.is_ascii_digit())
                    .map_or(0, |i| i + 1);
                (start, at)
            } else {
                let start = at + marker.len();
                let len = out[start..]
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(out.len() - start);
                (start, start + len)
            };
            let Ok(secs) = out[start..end].parse::<u64>() else {
                from = at + marker.len();
                continue;
            };
            let cut = if marker == " (UNIX)" {
                end + marker.len()
            } else {
                end
            };
            let text = when(secs);
            out.replace_range(start..cut, &text);
            from = start + text.len();
        }
    }
}

/// "(86400 seconds ago)" -> "(1 day ago)", from a day on.
fn seconds_as_days(out: &mut String) {
    for unit in [" seconds ago)", " seconds in future)"] {
        if let Some(at) = out.find(unit) {
            let start = out[..at].rfind('(').map_or(at, |i| i + 1);
            if let Ok(secs) = out[start..at].parse::<u64>()
                && secs >= 86_400
            {
                let days = secs / 86_400;
                let rest = unit.trim_start_matches(" seconds");
                let plural = if days == 1 { "" } else { "s" };
                out.replace_range(start..at + unit.len(), &format!("{days} day{plural}{rest}"));
            }
        }
    }
}

/// "Query { name: Name(\"x.\"), query_type: A, query_class: IN }" -> "x (A)".
fn query_names(out: &mut String) {
    while let Some(at) = out.find("Query { name: Name(\"") {
        let rest = &out[at..];
        let Some(close) = rest.find(" }") else { break };
        let body = &rest[..close];
        let name = body
            .split("Name(\"")
            .nth(1)
            .and_then(|n| n.split('"').next())
            .unwrap_or("")
            .trim_end_matches('.')
            .to_owned();
        let qtype = body
            .split("query_type: ")
            .nth(1)
            .and_then(|t| t.split(',').next())
            .unwrap_or("")
            .to_owned();
        out.replace_range(at..at + close + 2, &format!("{name} ({qtype})"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_errors_read_as_text_for_people() {
        assert_eq!(
            humane(
                "invalid peer certificate: certificate not valid for name \"mta-sts.x.test\"; certificate is only valid for DnsName(\"wrong-name.invalid\") or DnsName(\"b.test\")"
            ),
            "invalid peer certificate: certificate not valid for name \"mta-sts.x.test\"; certificate is only valid for wrong-name.invalid or b.test"
        );
        assert_eq!(
            humane(
                "certificate expired: verification time 1796654724 (UNIX), but certificate is not valid after 1796568324 (86400 seconds ago)"
            ),
            "certificate expired: verification time 2026-12-07T14:45:24Z, but certificate is not valid after 2026-12-06T14:45:24Z (1 day ago)"
        );
        assert_eq!(
            humane(
                "no record found for Query { name: Name(\"mta-sts.nothing.test.\"), query_type: A, query_class: IN }"
            ),
            "no record found for mta-sts.nothing.test (A)"
        );
        assert_eq!(humane("plain text"), "plain text");
    }
}
