//! Strict parsers for the `_mta-sts` TXT record (RFC 8461 §3.1) and the policy file
//! (§3.2). Text in, values out: no I/O.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::mtasts::domain::check_hostname;

/// RFC 8461 §3.2: "max_age ... up to 31557600".
pub const MAX_MAX_AGE: u64 = 31_557_600;

// ---------------------------------------------------------------------------
// TXT record
// ---------------------------------------------------------------------------

/// A valid `v=STSv1` TXT record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StsRecord {
    pub id: String,
    /// The record as published (strings joined), for display.
    pub raw: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TxtError {
    #[error("no TXT record starting with v=STSv1")]
    NoStsRecord,
    #[error("{0} TXT records start with v=STSv1; exactly one is allowed")]
    Multiple(usize),
    #[error("invalid STS TXT record {record:?}: {reason}")]
    Invalid { record: String, reason: String },
}

/// Whether a TXT record claims to be an STS record: it starts with `v=STSv1` followed
/// by a separator or nothing (`v=STSv10` is some other version).
fn is_sts_candidate(record: &str) -> bool {
    record
        .strip_prefix("v=STSv1")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([';', ' ', '\t']))
}

/// Applies §3.1's selection: drop every record that is not `v=STSv1`, require exactly
/// one, and parse it.
pub fn select_sts_record<S: AsRef<str>>(records: &[S]) -> Result<StsRecord, TxtError> {
    let candidates: Vec<&str> = records
        .iter()
        .map(AsRef::as_ref)
        .filter(|r| is_sts_candidate(r))
        .collect();
    match candidates.as_slice() {
        [] => Err(TxtError::NoStsRecord),
        [one] => parse_sts_record(one),
        many => Err(TxtError::Multiple(many.len())),
    }
}

fn is_wsp(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// Parses one TXT record with the grammar of RFC 8461 §3.1.
pub fn parse_sts_record(record: &str) -> Result<StsRecord, TxtError> {
    let invalid = |reason: String| TxtError::Invalid {
        record: record.to_owned(),
        reason,
    };
    let mut fields = record.split(';').map(|f| f.trim_matches(is_wsp));
    if !record.starts_with("v=STSv1") || fields.next() != Some("v=STSv1") {
        return Err(invalid("must start with v=STSv1".into()));
    }
    let rest: Vec<&str> = fields.collect();
    let mut id = None;
    for (i, field) in rest.iter().enumerate() {
        if field.is_empty() {
            // Only a single trailing separator is allowed ("v=STSv1; id=1;").
            if i + 1 == rest.len() && i > 0 {
                continue;
            }
            return Err(invalid("empty field".into()));
        }
        let (name, value) = field
            .split_once('=')
            .ok_or_else(|| invalid(format!("field {field:?} has no '='")))?;
        if name == "id" {
            if !is_valid_id(value) {
                return Err(invalid(format!(
                    "id {value:?} must be 1-32 ASCII letters and digits"
                )));
            }
            id.get_or_insert(value);
        } else {
            check_ext_name(name).map_err(&invalid)?;
            if value.is_empty()
                || !value
                    .bytes()
                    .all(|b| (0x21..=0x7e).contains(&b) && b != b'=' && b != b';')
            {
                return Err(invalid(format!(
                    "extension {name} has an invalid value {value:?}"
                )));
            }
        }
    }
    let id = id.ok_or_else(|| invalid("no id field".into()))?;
    Ok(StsRecord {
        id: id.to_owned(),
        raw: record.to_owned(),
    })
}

/// RFC 8461 §3.1: `sts-id = 1*32(ALPHA / DIGIT)`.
pub fn is_valid_id(id: &str) -> bool {
    (1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// `(ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")`
fn check_ext_name(name: &str) -> Result<(), String> {
    let ok = name.len() <= 32
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid field name"))
    }
}

// ---------------------------------------------------------------------------
// Policy file
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Enforce,
    Testing,
    None,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `mx:` pattern: a host name, or `*.` plus a domain (matches exactly one label).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MxPattern {
    pub wildcard: bool,
    /// Lower-case A-label domain, without the `*.`.
    pub domain: String,
}

impl MxPattern {
    /// Whether the MX host `host` (lower case, no trailing dot) matches (RFC 8461
    /// §4.1): the same name, or for `*.` a name with exactly one more label.
    pub fn matches(&self, host: &str) -> bool {
        if !self.wildcard {
            return host == self.domain;
        }
        host.strip_suffix(&self.domain)
            .and_then(|rest| rest.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty() && !label.contains('.'))
    }
}

impl fmt::Display for MxPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            write!(f, "*.{}", self.domain)
        } else {
            f.write_str(&self.domain)
        }
    }
}

/// A parsed policy file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub mode: Mode,
    /// Seconds, already clamped to [`MAX_MAX_AGE`].
    pub max_age: u64,
    /// In the file's order, duplicates kept out.
    pub mx: Vec<MxPattern>,
    /// The file's non-blank lines, without line terminators, in order.
    pub lines: Vec<String>,
    /// What the parser tolerated, for the caller to log (not stored).
    #[serde(skip)]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyError {
    #[error("policy is not UTF-8 text")]
    NotUtf8,
    #[error("policy is empty")]
    Empty,
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error("required field '{0}' is missing")]
    Missing(&'static str),
    #[error("mode {0} requires at least one mx line")]
    NoMx(Mode),
}

fn line_err(line: usize, reason: impl Into<String>) -> PolicyError {
    PolicyError::Line {
        line,
        reason: reason.into(),
    }
}

/// Parses a policy body (RFC 8461 §3.2). LF and CRLF line ends; blank lines are
/// tolerated; for a repeated field other than `mx` the first occurrence counts;
/// unknown fields are ignored.
pub fn parse_policy(body: &[u8]) -> Result<Policy, PolicyError> {
    let text = std::str::from_utf8(body).map_err(|_| PolicyError::NotUtf8)?;
    let mut version = None;
    let mut mode = None;
    let mut max_age = None;
    let mut mx: Vec<MxPattern> = Vec::new();
    let mut lines = Vec::new();
    let mut notes = Vec::new();

    for (idx, raw) in text.split('\n').enumerate() {
        let n = idx + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.contains('\r') {
            return Err(line_err(n, "stray carriage return"));
        }
        if line.trim_matches(is_wsp).is_empty() {
            continue;
        }
        let (key, value) = split_field(n, line)?;
        match key {
            "version" if version.is_none() => {
                if value != "STSv1" {
                    return Err(line_err(n, format!("version {value:?} is not STSv1")));
                }
                version = Some(());
            }
            "mode" if mode.is_none() => mode = Some(parse_mode(n, value)?),
            "max_age" if max_age.is_none() => max_age = Some(parse_max_age(n, value)?),
            "mx" => {
                let (pattern, dot) = parse_mx(value).map_err(|e| line_err(n, e))?;
                if dot {
                    notes.push(format!(
                        "line {n}: trailing dot of mx value {value:?} ignored"
                    ));
                }
                if !mx.contains(&pattern) {
                    mx.push(pattern);
                }
            }
            _ => {} // repeated or unknown field
        }
        lines.push(line.to_owned());
    }

    if lines.is_empty() {
        return Err(PolicyError::Empty);
    }
    version.ok_or(PolicyError::Missing("version"))?;
    let mode = mode.ok_or(PolicyError::Missing("mode"))?;
    let max_age = max_age.ok_or(PolicyError::Missing("max_age"))?;
    if mx.is_empty() && mode != Mode::None {
        return Err(PolicyError::NoMx(mode));
    }
    Ok(Policy {
        mode,
        max_age,
        mx,
        lines,
        notes,
    })
}

/// One `key: value` line (RFC 8461 §3.2: `sts-policy-field`), the value without the
/// surrounding whitespace the grammar allows.
fn split_field(n: usize, line: &str) -> Result<(&str, &str), PolicyError> {
    let (key, value) = line
        .split_once(':')
        .ok_or_else(|| line_err(n, format!("{line:?} is not a 'key: value' field")))?;
    check_ext_name(key).map_err(|e| line_err(n, e))?;
    let value = value.trim_matches(is_wsp);
    if let Some(bad) = value.chars().find(|c| c.is_control() && *c != '\t') {
        return Err(line_err(
            n,
            format!("{key} value contains control character {bad:?}"),
        ));
    }
    Ok((key, value))
}

fn parse_mode(n: usize, value: &str) -> Result<Mode, PolicyError> {
    match value {
        "enforce" => Ok(Mode::Enforce),
        "testing" => Ok(Mode::Testing),
        "none" => Ok(Mode::None),
        other => Err(line_err(
            n,
            format!("mode {other:?} is not enforce, testing or none"),
        )),
    }
}

/// `max_age: 1*10DIGIT` seconds, capped at the RFC's maximum of 31557600.
fn parse_max_age(n: usize, value: &str) -> Result<u64, PolicyError> {
    if value.is_empty() || value.len() > 10 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(line_err(
            n,
            format!("max_age {value:?} must be 1 to 10 digits"),
        ));
    }
    let secs: u64 = value
        .parse()
        .map_err(|_| line_err(n, format!("max_age {value:?} is not a number")))?;
    Ok(secs.min(MAX_MAX_AGE))
}

/// `mx: ["*."] Domain`, in A-label form. Also returns whether one trailing dot was
/// stripped: RFC 8461 §3.2's grammar has none, but policies copied from zone files
/// carry one (`mx: mta-gw.infomaniak.ch.`), and refusing the whole policy for it would
/// leave those domains unprotected; the name is the same either way.
fn parse_mx(value: &str) -> Result<(MxPattern, bool), String> {
    let (stripped, dot) = match value.strip_suffix('.') {
        Some(rest) if !rest.ends_with('.') && !rest.is_empty() => (rest, true),
        _ => (value, false),
    };
    let (wildcard, domain) = match stripped.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, stripped),
    };
    if value.is_empty() {
        return Err("mx value is empty".into());
    }
    if domain.parse::<IpAddr>().is_ok() || value.starts_with('[') {
        return Err(format!("mx value '{value}' is an IP address"));
    }
    if domain.contains('*') {
        return Err(format!(
            "mx value '{value}': '*' is only allowed as the whole leftmost label"
        ));
    }
    if !domain.is_ascii() {
        return Err(format!("mx value '{value}' is not in A-label (ASCII) form"));
    }
    let domain = domain.to_ascii_lowercase();
    check_hostname(&domain).map_err(|e| format!("mx value '{value}': {e}"))?;
    Ok((MxPattern { wildcard, domain }, dot))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn mx_patterns_match_as_rfc_8461_section_4_1_says() {
        let exact = MxPattern {
            wildcard: false,
            domain: "mx.example.com".into(),
        };
        let star = MxPattern {
            wildcard: true,
            domain: "example.net".into(),
        };
        assert!(exact.matches("mx.example.com"));
        assert!(!exact.matches("mx2.example.com"));
        assert!(star.matches("mx1.example.net"));
        assert!(!star.matches("a.b.example.net"));
        assert!(!star.matches("example.net"));
        assert!(!star.matches("xexample.net"));
    }

    #[test]
    fn txt_selection() {
        let r = select_sts_record(&["v=STSv1; id=20240728"]).unwrap();
        assert_eq!(r.id, "20240728");
        // unrelated records are discarded
        let r = select_sts_record(&["v=spf1 -all", "v=STSv1; id=abc;", "hello"]).unwrap();
        assert_eq!(r.id, "abc");
        assert_eq!(
            select_sts_record(&["v=spf1 -all"]),
            Err(TxtError::NoStsRecord)
        );
        assert_eq!(select_sts_record::<&str>(&[]), Err(TxtError::NoStsRecord));
        assert_eq!(
            select_sts_record(&["v=STSv1; id=1", "v=STSv1; id=2"]),
            Err(TxtError::Multiple(2))
        );
        // a second, invalid STS record still counts as a second record
        assert_eq!(
            select_sts_record(&["v=STSv1; id=1", "v=STSv1; id=bad-id"]),
            Err(TxtError::Multiple(2))
        );
        // v=STSv10 is not ours; names are case-sensitive
        assert_eq!(
            select_sts_record(&["v=STSv10; id=1", "V=STSv1; id=1"]),
            Err(TxtError::NoStsRecord)
        );
    }

    #[test]
    fn txt_grammar() {
        for ok in [
            "v=STSv1; id=1",
            "v=STSv1;id=1",
            "v=STSv1 ;\tid=1 ;",
            "v=STSv1; id=ABCdef0123456789ABCdef0123456789",
            "v=STSv1; id=1; ext_name.x-y=some!value",
            "v=STSv1; foo=bar; id=1",
        ] {
            assert!(parse_sts_record(ok).is_ok(), "{ok}");
        }
        for bad in [
            "v=STSv1",
            "v=STSv1;",
            "v=STSv1; id=",
            "v=STSv1; id=abc-def",
            "v=STSv1; id=ABCdef0123456789ABCdef0123456789X",
            "v=STSv1; ID=1",
            "v=STSv1;; id=1",
            "v=STSv1; id=1;;",
            "v=STSv1; id 1",
            "v=STSv1; id=1; _ext=1",
            "v=STSv1; id=1; ext=",
            "v=STSv1; id=1; ext=a=b",
            "v=STSv1; id=1; ext=a b",
            "id=1; v=STSv1",
            " v=STSv1; id=1",
        ] {
            assert!(parse_sts_record(bad).is_err(), "{bad}");
        }
    }

    const ENFORCE: &[u8] =
        b"version: STSv1\nmode: enforce\nmx: mx1.example.com\nmx: *.example.net\nmax_age: 604800\n";

    #[test]
    fn parses_enforce_policy() {
        let p = parse_policy(ENFORCE).unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.max_age, 604800);
        assert_eq!(
            p.mx,
            vec![
                MxPattern {
                    wildcard: false,
                    domain: "mx1.example.com".into()
                },
                MxPattern {
                    wildcard: true,
                    domain: "example.net".into()
                },
            ]
        );
        assert_eq!(p.lines.len(), 5);
    }

    #[test]
    fn crlf_blank_lines_and_whitespace() {
        let body =
            b"version: STSv1\r\nmode:enforce\r\n\r\nmx:\tMX.Example.COM \r\nmax_age: 86400\r\n";
        let p = parse_policy(body).unwrap();
        assert_eq!(p.mx[0].domain, "mx.example.com");
        assert_eq!(
            p.lines,
            vec![
                "version: STSv1",
                "mode:enforce",
                "mx:\tMX.Example.COM ",
                "max_age: 86400"
            ]
        );
        // no trailing newline
        assert!(parse_policy(b"version: STSv1\nmode: none\nmax_age: 1").is_ok());
    }

    #[test]
    fn first_occurrence_wins_and_unknown_ignored() {
        let body = b"version: STSv1\nmode: testing\nmode: enforce\nmx: a.example\nmx: a.example\nmax_age: 10\nmax_age: 20\nfoo: bar\n";
        let p = parse_policy(body).unwrap();
        assert_eq!(p.mode, Mode::Testing);
        assert_eq!(p.max_age, 10);
        assert_eq!(p.mx.len(), 1);
    }

    #[test]
    fn max_age_is_clamped() {
        let p = parse_policy(b"version: STSv1\nmode: none\nmax_age: 9999999999\n").unwrap();
        assert_eq!(p.max_age, MAX_MAX_AGE);
    }

    fn err(body: &str) -> String {
        parse_policy(body.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_line_and_the_problem() {
        let base = "version: STSv1\nmode: enforce\nmax_age: 86400\n";
        assert_eq!(
            err(&format!("{base}mx: 10.0.0.1\n")),
            "line 4: mx value '10.0.0.1' is an IP address"
        );
        assert_eq!(
            err(&format!("{base}mx: [10.0.0.1]\n")),
            "line 4: mx value '[10.0.0.1]' is an IP address"
        );
        assert!(err(&format!("{base}mx: mx..example.com\n")).contains("empty label"));
        assert!(err(&format!("{base}mx: mx.example.com..\n")).contains("empty label"));
        assert!(err(&format!("{base}mx: mx.*.example.com\n")).contains("leftmost"));
        assert!(err(&format!("{base}mx: *mx.example.com\n")).contains("leftmost"));
        assert!(err(&format!("{base}mx: **.example.com\n")).contains("leftmost"));
        assert!(err(&format!("{base}mx: bücher.example\n")).contains("A-label"));
        assert!(err(&format!("{base}mx:\n")).contains("empty"));
        assert_eq!(err(base), "mode enforce requires at least one mx line");
        assert!(
            err("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n")
                .starts_with("line 4: max_age")
        );
        assert!(
            err("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 12345678901\n")
                .contains("1 to 10 digits")
        );
        assert!(
            err("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1e5\n").contains("max_age")
        );
        assert!(err("version: STSv2\nmode: enforce\n").starts_with("line 1: version"));
        assert!(err("version: STSv1\nmode: Enforce\n").starts_with("line 2: mode"));
        assert_eq!(
            err("mode: none\nmax_age: 1\n"),
            "required field 'version' is missing"
        );
        assert_eq!(
            err("version: STSv1\nmax_age: 1\n"),
            "required field 'mode' is missing"
        );
        assert_eq!(
            err("version: STSv1\nmode: none\n"),
            "required field 'max_age' is missing"
        );
        assert_eq!(err(""), "policy is empty");
        assert_eq!(err("\n\n"), "policy is empty");
        assert!(err("<html><body>hello</body></html>").starts_with("line 1:"));
        assert!(err("version: STSv1\rmode: none\n").contains("carriage return"));
        assert_eq!(parse_policy(b"\xff\xfe"), Err(PolicyError::NotUtf8));
    }

    #[test]
    fn seed_policies_parse() {
        // Policies as published in the project's seed documents.
        let outlook =
            b"version: STSv1\nmode: enforce\nmx: *.protection.outlook.com\nmax_age: 604800\n";
        assert_eq!(
            parse_policy(outlook).unwrap().mx[0].to_string(),
            "*.protection.outlook.com"
        );
        let testing =
            b"version: STSv1\nmode: testing\nmx: your-mx.com\nmx: your-mx.com\nmax_age: 604800\n";
        let p = parse_policy(testing).unwrap();
        assert_eq!((p.mode, p.mx.len()), (Mode::Testing, 1));
    }

    proptest! {
        #[test]
        fn policy_parser_never_panics(body in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let _ = parse_policy(&body);
        }

        #[test]
        fn policy_parser_on_policy_like_text(body in "((version|mode|mx|max_age|x)[:]?[ \t]*[a-zA-Z0-9.*\\-]{0,12}\r?\n){0,8}") {
            if let Ok(p) = parse_policy(body.as_bytes()) {
                prop_assert!(p.max_age <= MAX_MAX_AGE);
                prop_assert!(p.mode == Mode::None || !p.mx.is_empty());
            }
        }

        #[test]
        fn txt_parser_never_panics(record in "\\PC{0,80}") {
            let _ = select_sts_record(&[record.as_str()]);
        }
    }

    #[test]
    fn one_trailing_dot_on_an_mx_value_is_tolerated() {
        let p = parse_policy(
            b"version: STSv1\nmode: enforce\nmx: mta-gw.infomaniak.ch.\nmx: *.example.net.\nmax_age: 60\n",
        )
        .unwrap();
        assert_eq!(p.mx[0].to_string(), "mta-gw.infomaniak.ch");
        assert_eq!(p.mx[1].to_string(), "*.example.net");
        assert_eq!(p.notes.len(), 2, "{:?}", p.notes);
        for bad in ["mx: a.example..", "mx: .", "mx: a..example."] {
            let body = format!("version: STSv1\nmode: enforce\n{bad}\nmax_age: 60\n");
            assert!(parse_policy(body.as_bytes()).is_err(), "{bad}");
        }
    }
}
