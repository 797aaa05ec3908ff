//! libtlsrpt's datagrams: what Postfix's smtp client (3.10 and later, built with
//! libtlsrpt) sends for each delivery attempt to a domain that publishes a TLSRPT
//! record (RFC 8460 §3). One JSON object:
//!
//! ```text
//! {"dpv": "1",                      (protocol version; absent in libtlsrpt 0.5)
//!  "d": "example.com",              (the recipient domain)
//!  "pr": "v=TLSRPTv1;rua=...",      (the TLSRPT record the result is reported under)
//!  "policies": [{"policy-type": 2, "policy-domain": "...", "policy-string": [...],
//!                "mx-host": [...], "f": 0 | 1, "t": N,
//!                "failure-details": [{"c": 202, "s": "...", "n": "...", "h": "...",
//!                                     "r": "...", "a": "...", "f": "..."}]}]}
//! ```
//!
//! Parsing is pure and strict about types and sizes: a datagram comes from any local
//! process that can write to the socket. It is never strict where the reference
//! collector (sys4's tlsrpt-collectd) counts a session: bytes that are not UTF-8 (an
//! EHLO name from a hostile server) are decoded lossily, a domain in U-labels is
//! converted to A-labels, and a result code or policy type this version does not know
//! is counted (as `validation-failure`, or under its number) rather than dropping the
//! whole datagram. What is kept of a policy and of a failure detail is written back
//! as canonical JSON (sorted keys), so that equal policies and equal details count
//! under one key.

use serde_json::{Map, Value};
use thiserror::Error;

/// The largest datagram read. libtlsrpt's datagrams carry a policy and the receiving
/// server's EHLO response; a few KiB in practice.
pub const MAX_DATAGRAM: usize = 65_536;
/// Policies per datagram, strings per policy, details per policy: generous bounds
/// that keep a hostile datagram's cost small.
const MAX_POLICIES: usize = 16;
const MAX_LIST: usize = 64;
const MAX_DETAILS: usize = 64;
/// The longest string kept (an EHLO response is the longest in practice).
const MAX_STRING: usize = 4096;
const MAX_RECORD: usize = 2048;

/// One delivery attempt's results, as counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// The recipient domain: lower case, without a trailing dot.
    pub domain: String,
    /// The TLSRPT record (`v=TLSRPTv1;...`) the results are reported under.
    pub record: String,
    pub results: Vec<PolicyResult>,
}

/// The result of one session under one policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyResult {
    /// The policy as canonical JSON: `policy-type` (number), `policy-domain`,
    /// `policy-string`, `mx-host`.
    pub policy: String,
    pub failed: bool,
    /// Each failure detail as canonical JSON, with libtlsrpt's short keys.
    pub details: Vec<String>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DatagramError {
    #[error("datagram of {0} bytes or more is larger than {MAX_DATAGRAM}")]
    TooLarge(usize),
    #[error("datagram is not a JSON object: {0}")]
    NotJson(String),
    #[error("unknown datagram protocol version {0:?}")]
    Version(String),
    #[error("datagram field {field}: {problem}")]
    Field {
        field: &'static str,
        problem: String,
    },
}

fn field(field: &'static str, problem: impl Into<String>) -> DatagramError {
    DatagramError::Field {
        field,
        problem: problem.into(),
    }
}

/// The policy types of libtlsrpt, with RFC 8460 §4.3's names.
pub fn policy_type_name(code: u64) -> Option<&'static str> {
    match code {
        1 => Some("tlsa"),
        2 => Some("sts"),
        9 => Some("no-policy-found"),
        _ => None,
    }
}

/// The result types of libtlsrpt's failure codes, with RFC 8460 §4.3's names.
pub fn result_type_name(code: u64) -> Option<&'static str> {
    Some(match code {
        201 => "starttls-not-supported",
        202 => "certificate-host-mismatch",
        203 => "certificate-not-trusted",
        204 => "certificate-expired",
        205 => "validation-failure",
        301 => "sts-policy-fetch-error",
        302 => "sts-policy-invalid",
        303 => "sts-webpki-invalid",
        304 => "tlsa-invalid",
        305 => "dnssec-invalid",
        306 => "dane-required",
        _ => return None,
    })
}

/// Parses one datagram.
pub fn parse(bytes: &[u8]) -> Result<Datagram, DatagramError> {
    if bytes.len() > MAX_DATAGRAM {
        return Err(DatagramError::TooLarge(bytes.len()));
    }
    // Any byte that is not UTF-8 becomes U+FFFD: the session still counts.
    let text = String::from_utf8_lossy(bytes);
    let value: Value =
        serde_json::from_str(&text).map_err(|e| DatagramError::NotJson(e.to_string()))?;
    let Value::Object(top) = value else {
        return Err(DatagramError::NotJson("not an object".into()));
    };
    match top.get("dpv") {
        None => {}
        Some(Value::String(v)) if v == "1" => {}
        Some(other) => return Err(DatagramError::Version(other.to_string())),
    }
    let domain = domain_of(top.get("d"), "d")?;
    let record = match top.get("pr") {
        Some(Value::String(r)) if r.len() <= MAX_RECORD && r.starts_with("v=TLSRPTv1") => {
            if r.chars().any(char::is_control) {
                return Err(field("pr", "contains control characters"));
            }
            r.clone()
        }
        Some(Value::String(_)) => {
            return Err(field("pr", "not a TLSRPT record (v=TLSRPTv1...)"));
        }
        _ => return Err(field("pr", "missing or not a string")),
    };
    let policies = match top.get("policies") {
        Some(Value::Array(p)) if !p.is_empty() && p.len() <= MAX_POLICIES => p,
        Some(Value::Array(_)) => {
            return Err(field("policies", format!("must hold 1 to {MAX_POLICIES}")));
        }
        _ => return Err(field("policies", "missing or not a list")),
    };
    let results = policies
        .iter()
        .map(policy_result)
        .collect::<Result<_, _>>()?;
    Ok(Datagram {
        domain,
        record,
        results,
    })
}

/// A domain name as the reference collector keeps it: lower case, one trailing dot
/// removed; U-labels converted to A-labels (RFC 5890), so that a domain sent either
/// way counts under one name and every header and file name stays ASCII; then only
/// the characters of host names (and `_`).
fn domain_of(value: Option<&Value>, name: &'static str) -> Result<String, DatagramError> {
    let Some(Value::String(d)) = value else {
        return Err(field(name, "missing or not a string"));
    };
    let d = d.strip_suffix('.').unwrap_or(d);
    let d = if d.is_ascii() {
        d.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii(d).map_err(|_| field(name, format!("{d:?} is not a domain name")))?
    };
    if d.is_empty()
        || d.len() > 253
        || !d
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
    {
        return Err(field(name, format!("{d:?} is not a domain name")));
    }
    Ok(d)
}

fn policy_result(value: &Value) -> Result<PolicyResult, DatagramError> {
    let Value::Object(p) = value else {
        return Err(field("policies", "an entry is not an object"));
    };
    // A policy type this version does not know is kept under its number (the report
    // calls it no policy it can vouch for): the session still counts.
    let code = p
        .get("policy-type")
        .and_then(Value::as_u64)
        .ok_or_else(|| field("policy-type", "missing or not a number"))?;
    let mut policy = Map::new();
    policy.insert("policy-type".into(), Value::from(code));
    if p.contains_key("policy-domain") {
        let domain = domain_of(p.get("policy-domain"), "policy-domain")?;
        policy.insert("policy-domain".into(), Value::String(domain));
    }
    for key in ["policy-string", "mx-host"] {
        if let Some(v) = p.get(key) {
            policy.insert(key.into(), string_list(v, key)?);
        }
    }
    let failed = match p.get("f") {
        Some(Value::Number(n)) if n.as_u64() == Some(0) => false,
        Some(Value::Number(n)) if n.as_u64() == Some(1) => true,
        Some(Value::Bool(b)) => *b,
        _ => return Err(field("f", "missing or not 0 or 1")),
    };
    let details = match p.get("failure-details") {
        None => Vec::new(),
        Some(Value::Array(d)) if d.len() <= MAX_DETAILS => {
            d.iter().map(detail).collect::<Result<_, _>>()?
        }
        Some(_) => {
            return Err(field(
                "failure-details",
                format!("not a list of at most {MAX_DETAILS}"),
            ));
        }
    };
    Ok(PolicyResult {
        policy: Value::Object(policy).to_string(),
        failed,
        details,
    })
}

fn string_list(value: &Value, name: &'static str) -> Result<Value, DatagramError> {
    let Value::Array(items) = value else {
        return Err(field(name, "not a list"));
    };
    if items.len() > MAX_LIST {
        return Err(field(name, format!("more than {MAX_LIST} entries")));
    }
    for item in items {
        match item {
            Value::String(s) if s.len() <= MAX_STRING => {}
            _ => return Err(field(name, "an entry is not a string (or is too long)")),
        }
    }
    Ok(value.clone())
}

/// The result code an unknown one is counted as: `validation-failure` (RFC 8460
/// §4.3.2.3: a general failure for a reason not matching another category).
pub const UNKNOWN_RESULT: u64 = 205;

/// A failure detail: `c` (the result type's code) and the optional strings `s`
/// (sending MTA's IP), `n` (receiving MX host name), `h` (its EHLO response), `r`
/// (receiving IP), `a` (additional information), `f` (failure reason code). An
/// unknown code counts as [`UNKNOWN_RESULT`], its number kept in `f` when the detail
/// has no reason code of its own.
fn detail(value: &Value) -> Result<String, DatagramError> {
    let Value::Object(d) = value else {
        return Err(field("failure-details", "an entry is not an object"));
    };
    let raw = d
        .get("c")
        .and_then(Value::as_u64)
        .ok_or_else(|| field("c", "missing or not a number"))?;
    let code = if result_type_name(raw).is_some() {
        raw
    } else {
        UNKNOWN_RESULT
    };
    let mut kept = Map::new();
    kept.insert("c".into(), Value::from(code));
    if code != raw && !d.contains_key("f") {
        kept.insert(
            "f".into(),
            Value::String(format!("libtlsrpt result code {raw}")),
        );
    }
    for key in ["s", "n", "h", "r", "a", "f"] {
        match d.get(key) {
            None => {}
            Some(Value::String(s)) if s.len() <= MAX_STRING => {
                kept.insert(key.into(), Value::String(s.clone()));
            }
            Some(Value::Number(n)) if key == "f" => {
                kept.insert(key.into(), Value::String(n.to_string()));
            }
            Some(_) => {
                return Err(DatagramError::Field {
                    field: "failure-details",
                    problem: format!("{key:?} is not a string (or is too long)"),
                });
            }
        }
    }
    Ok(Value::Object(kept).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As Debian trixie's Postfix 3.10.13 (libtlsrpt 0.5.0rc1) sends it: no `dpv`.
    const CAPTURED: &str = r#"{"d": "bad.test","pr": "v=TLSRPTv1;rua=https://reports.test/r","policies":[{"policy-type":2,"policy-domain": "bad.test","policy-string":["version: STSv1","mode: enforce","mx: mx.bad.test","max_age: 86400"],"mx-host":["mx.bad.test"],"failure-details":[{"c":202,"s": "127.0.0.1","n": "mx.bad.test","h": "250-rcv\r\n250-SIZE 10240000\r\n250 HELP","r": "127.0.0.3"}],"t":1,"f":1}]}"#;

    #[test]
    fn the_captured_datagram_parses() {
        let d = parse(CAPTURED.as_bytes()).unwrap();
        assert_eq!(d.domain, "bad.test");
        assert_eq!(d.record, "v=TLSRPTv1;rua=https://reports.test/r");
        assert_eq!(d.results.len(), 1);
        let r = &d.results[0];
        assert!(r.failed);
        assert_eq!(
            r.policy,
            r#"{"mx-host":["mx.bad.test"],"policy-domain":"bad.test","policy-string":["version: STSv1","mode: enforce","mx: mx.bad.test","max_age: 86400"],"policy-type":2}"#
        );
        assert_eq!(
            r.details,
            vec![
                r#"{"c":202,"h":"250-rcv\r\n250-SIZE 10240000\r\n250 HELP","n":"mx.bad.test","r":"127.0.0.3","s":"127.0.0.1"}"#
            ]
        );
    }

    #[test]
    fn protocol_version_1_is_accepted_and_others_are_not() {
        let v1 = CAPTURED.replacen('{', r#"{"dpv":"1","#, 1);
        assert!(parse(v1.as_bytes()).is_ok());
        let v2 = CAPTURED.replacen('{', r#"{"dpv":"2","#, 1);
        assert!(matches!(
            parse(v2.as_bytes()),
            Err(DatagramError::Version(_))
        ));
    }

    #[test]
    fn domains_are_normalised_like_the_reference_collector() {
        let d = parse(
            br#"{"d":"Example.COM.","pr":"v=TLSRPTv1; rua=mailto:r@example.com","policies":[{"policy-type":9,"f":0}]}"#,
        )
        .unwrap();
        assert_eq!(d.domain, "example.com");
        assert_eq!(d.results[0].policy, r#"{"policy-type":9}"#);
        assert!(!d.results[0].failed);
    }

    #[test]
    fn hostile_or_broken_datagrams_are_refused_with_the_field_named() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "not a JSON object"),
            (b"[1]", "not a JSON object"),
            (br#"{"pr":"v=TLSRPTv1;","policies":[]}"#, "field d"),
            (br#"{"d":"a b","pr":"v=TLSRPTv1;","policies":[]}"#, "field d"),
            (br#"{"d":"x.test","pr":"v=DMARC1","policies":[]}"#, "field pr"),
            (br#"{"d":"x.test","pr":"v=TLSRPTv1;","policies":[]}"#, "field policies"),
            (br#"{"d":"x.test","pr":"v=TLSRPTv1;","policies":[{"policy-type":"2","f":0}]}"#, "policy-type"),
            (br#"{"d":"x.test","pr":"v=TLSRPTv1;","policies":[{"policy-type":2,"f":2}]}"#, "field f"),
            (br#"{"d":"x.test","pr":"v=TLSRPTv1;","policies":[{"policy-type":2,"f":1,"failure-details":[{"c":"202"}]}]}"#, "field c"),
            (br#"{"d":"x.test","pr":"v=TLSRPTv1;","policies":[{"policy-type":2,"f":1,"failure-details":[{"c":201,"n":[1]}]}]}"#, "failure-details"),
            (br#"{"d":"x.test","pr":"v=TLSRPTv1;","policies":[{"policy-type":2,"f":0,"mx-host":"mx"}]}"#, "mx-host"),
        ];
        for (bytes, expect) in cases {
            let e = parse(bytes).unwrap_err().to_string();
            assert!(
                e.contains(expect),
                "{}: {e}",
                String::from_utf8_lossy(bytes)
            );
        }
        let big = vec![b' '; MAX_DATAGRAM + 1];
        assert_eq!(parse(&big), Err(DatagramError::TooLarge(MAX_DATAGRAM + 1)));
    }

    #[test]
    fn equal_policies_and_details_have_one_key_whatever_their_order() {
        let a = parse(br#"{"d":"x.test","pr":"v=TLSRPTv1;","policies":[{"f":1,"policy-type":2,"policy-domain":"x.test","failure-details":[{"n":"mx","c":201}]}]}"#).unwrap();
        let b = parse(br#"{"pr":"v=TLSRPTv1;","d":"x.test","policies":[{"policy-domain":"x.test","policy-type":2,"t":1,"f":1,"failure-details":[{"c":201,"n":"mx"}]}]}"#).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn sessions_the_reference_collector_counts_are_never_dropped() {
        // A hostile EHLO name with bytes that are not UTF-8.
        let mut bytes = br#"{"d":"x.test","pr":"v=TLSRPTv1;","policies":[{"policy-type":2,"f":1,"failure-details":[{"c":202,"h":"250 "#.to_vec();
        bytes.extend_from_slice(&[0xff, 0xfe, b'x']);
        bytes.extend_from_slice(br#""}]}]}"#);
        let d = parse(&bytes).unwrap();
        assert_eq!(
            d.results[0].details,
            ["{\"c\":202,\"h\":\"250 \u{fffd}\u{fffd}x\"}"]
        );

        // A U-label domain counts under its A-labels, in `d` and `policy-domain`.
        let d = parse(r#"{"d":"Bücher.example.","pr":"v=TLSRPTv1;","policies":[{"policy-type":2,"policy-domain":"bücher.example","f":0}]}"#.as_bytes()).unwrap();
        assert_eq!(d.domain, "xn--bcher-kva.example");
        assert!(
            d.results[0]
                .policy
                .contains(r#""policy-domain":"xn--bcher-kva.example""#)
        );

        // An unknown result code counts as validation-failure, its number kept...
        let d = parse(br#"{"d":"x.test","pr":"v=TLSRPTv1;","policies":[{"policy-type":2,"f":1,"failure-details":[{"c":999,"n":"mx"}]}]}"#).unwrap();
        assert_eq!(
            d.results[0].details,
            [r#"{"c":205,"f":"libtlsrpt result code 999","n":"mx"}"#]
        );
        // ...unless the detail has a reason code of its own.
        let d = parse(br#"{"d":"x.test","pr":"v=TLSRPTv1;","policies":[{"policy-type":2,"f":1,"failure-details":[{"c":999,"f":"own"}]}]}"#).unwrap();
        assert_eq!(d.results[0].details, [r#"{"c":205,"f":"own"}"#]);

        // An unknown policy type is counted under its number.
        let d = parse(br#"{"d":"x.test","pr":"v=TLSRPTv1;","policies":[{"policy-type":7,"f":0}]}"#)
            .unwrap();
        assert_eq!(d.results[0].policy, r#"{"policy-type":7}"#);
    }
}
