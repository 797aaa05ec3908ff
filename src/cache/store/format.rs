//! The store entry format: how one domain's cache entry is written, by the sled store
//! on disk and in Redis for a fleet alike (and read back by both, and by the fuzz
//! target that checks the two directions agree).
//!
//! A compact, versioned binary form: a version byte, then postcard. A policy is kept
//! as its lines only and parsed again when read, so the stored form does not depend
//! on how the parsed policy is laid out in memory. Entries written by earlier versions
//! are JSON (they start with `{`) and are still read.

use serde::{Deserialize, Serialize};

use super::{Store, StoreError};
use crate::cache::entry::{CachedPolicy, Entry, Failure, FailureClass, Outline, PolicyOutline};
use crate::mtasts::policy::{Mode, parse_policy};

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(Store::Policies, e.to_string())
}

/// The first byte of an entry in the binary form.
const ENTRY_V1: u8 = 1;
/// The same form, with the policy's first line left out because it is exactly
/// [`VERSION_LINE`], as in nearly every policy: 15 bytes less per entry, 14 MiB on disk
/// at 10^6 policies.
pub(crate) const ENTRY_V2: u8 = 2;
const VERSION_LINE: &str = "version: STSv1";

/// A policy as stored: its lines (the file without blank lines), parsed again on read.
#[derive(Serialize, Deserialize)]
struct StoredPolicyV1 {
    lines: Vec<String>,
    id: String,
    fetched_at: u64,
    expires_at: u64,
}

/// A failure as stored; the class by its stable label, so that a label this version
/// does not know reads as `other`.
#[derive(Serialize, Deserialize)]
struct StoredFailureV1 {
    at: u64,
    id: Option<String>,
    class: String,
    message: String,
}

#[derive(Serialize, Deserialize)]
struct StoredEntryV1 {
    policy: Option<StoredPolicyV1>,
    no_policy_until: Option<u64>,
    last_check: u64,
    failure: Option<StoredFailureV1>,
    txt_failure: Option<StoredFailureV1>,
}

fn store_failure(f: &Failure) -> StoredFailureV1 {
    StoredFailureV1 {
        at: f.at,
        id: f.id.clone(),
        class: f.class.as_str().to_owned(),
        message: f.message.clone(),
    }
}

fn load_failure(f: StoredFailureV1) -> Failure {
    Failure {
        at: f.at,
        id: f.id,
        class: serde_json::from_value(serde_json::Value::String(f.class))
            .unwrap_or(FailureClass::Other),
        message: f.message,
    }
}

/// The binary form read without copying or parsing the policy text, for walks of the
/// whole store (see [`decode_outline`]).
#[derive(Deserialize)]
struct StoredEntryRefV1<'a> {
    #[serde(borrow)]
    policy: Option<StoredPolicyRefV1<'a>>,
    no_policy_until: Option<u64>,
    #[allow(dead_code)]
    last_check: u64,
    #[serde(borrow)]
    failure: Option<StoredFailureRefV1<'a>>,
    #[serde(borrow)]
    txt_failure: Option<StoredFailureRefV1<'a>>,
}

#[derive(Deserialize)]
struct StoredPolicyRefV1<'a> {
    #[serde(borrow)]
    lines: Vec<&'a str>,
    #[allow(dead_code)]
    id: &'a str,
    fetched_at: u64,
    expires_at: u64,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct StoredFailureRefV1<'a> {
    at: u64,
    id: Option<&'a str>,
    class: &'a str,
    message: &'a str,
}

/// An entry's outline, read from its stored bytes. The binary form is read in place and
/// only the `mode` and `max_age` lines of the policy are looked at (the policy was
/// validated when it was fetched and is validated again whenever it is used); an
/// entry whose policy lacks them, and any entry in the old JSON form, is decoded
/// whole.
pub fn decode_outline(domain: &str, bytes: &[u8]) -> Result<Outline, StoreError> {
    if let Some((&(ENTRY_V1 | ENTRY_V2), rest)) = bytes.split_first()
        && let Ok(stored) = postcard::from_bytes::<StoredEntryRefV1<'_>>(rest)
    {
        let policy = match &stored.policy {
            None => None,
            Some(p) => {
                let field = |name: &str| {
                    p.lines.iter().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        (k.trim() == name).then(|| v.trim())
                    })
                };
                let mode = match field("mode") {
                    Some("enforce") => Mode::Enforce,
                    Some("testing") => Mode::Testing,
                    Some("none") => Mode::None,
                    _ => return decode_entry(domain, bytes).map(|e| Outline::from(&e)),
                };
                let Some(max_age) = field("max_age").and_then(|v| v.parse().ok()) else {
                    return decode_entry(domain, bytes).map(|e| Outline::from(&e));
                };
                Some(PolicyOutline {
                    mode,
                    max_age,
                    fetched_at: p.fetched_at,
                    expires_at: p.expires_at,
                })
            }
        };
        return Ok(Outline {
            policy,
            no_policy_until: stored.no_policy_until,
            failure_at: stored.failure.as_ref().map(|f| f.at),
            failed: stored.failure.is_some() || stored.txt_failure.is_some(),
        });
    }
    decode_entry(domain, bytes).map(|e| Outline::from(&e))
}

/// Reads one stored entry. The bytes come from disk, so anything may be in them: a
/// damaged entry is an error for that domain only (and is fuzzed: `fuzz/`).
pub fn decode_entry(domain: &str, bytes: &[u8]) -> Result<Entry, StoreError> {
    let decode_error = |message: String| StoreError::Decode {
        store: Store::Policies,
        key: domain.to_owned(),
        message,
    };
    match bytes.split_first() {
        // Written by a version before the binary form.
        Some((b'{', _)) => serde_json::from_slice(bytes).map_err(|e| decode_error(e.to_string())),
        Some((&form @ (ENTRY_V1 | ENTRY_V2), rest)) => {
            let stored: StoredEntryV1 =
                postcard::from_bytes(rest).map_err(|e| decode_error(e.to_string()))?;
            let policy = match stored.policy {
                None => None,
                Some(p) => {
                    let mut text = String::new();
                    if form == ENTRY_V2 {
                        text.push_str(VERSION_LINE);
                        text.push('\n');
                    }
                    text.push_str(&p.lines.join("\n"));
                    text.push('\n');
                    let policy = parse_policy(text.as_bytes())
                        .map_err(|e| decode_error(format!("stored policy: {e}")))?;
                    Some(CachedPolicy {
                        policy,
                        id: p.id,
                        fetched_at: p.fetched_at,
                        expires_at: p.expires_at,
                    })
                }
            };
            Ok(Entry {
                policy,
                no_policy_until: stored.no_policy_until,
                last_check: stored.last_check,
                failure: stored.failure.map(load_failure),
                txt_failure: stored.txt_failure.map(load_failure),
            })
        }
        Some((other, _)) => Err(decode_error(format!("unknown entry format {other}"))),
        None => Err(decode_error("empty entry".into())),
    }
}

/// The stored form of an entry (the current binary form).
pub fn encode_entry(entry: &Entry) -> Result<Vec<u8>, StoreError> {
    let lines = entry.policy.as_ref().map(|p| p.policy.lines.as_slice());
    let elide = lines.is_some_and(|l| l.first().is_some_and(|f| f == VERSION_LINE));
    let stored = StoredEntryV1 {
        policy: entry.policy.as_ref().map(|p| StoredPolicyV1 {
            lines: p.policy.lines[usize::from(elide)..].to_vec(),
            id: p.id.clone(),
            fetched_at: p.fetched_at,
            expires_at: p.expires_at,
        }),
        no_policy_until: entry.no_policy_until,
        last_check: entry.last_check,
        failure: entry.failure.as_ref().map(store_failure),
        txt_failure: entry.txt_failure.as_ref().map(store_failure),
    };
    let mut out = vec![if elide { ENTRY_V2 } else { ENTRY_V1 }];
    postcard::to_io(&stored, &mut out).map_err(backend)?;
    Ok(out)
}

/// Entries for tests of the stores.
#[cfg(test)]
pub(crate) mod samples {
    use crate::cache::entry::{CachedPolicy, Entry, Failure, FailureClass};
    use crate::mtasts::policy::parse_policy;

    pub fn entry() -> Entry {
        let policy =
            parse_policy(b"version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 100\n")
                .unwrap();
        Entry {
            policy: Some(CachedPolicy {
                policy,
                id: "1".into(),
                fetched_at: 1000,
                expires_at: 1100,
            }),
            no_policy_until: None,
            last_check: 1000,
            ..Entry::default()
        }
    }

    pub fn with_failures() -> Entry {
        let failure = |class| Failure {
            at: 1050,
            id: Some("2".into()),
            class,
            message: "boom".into(),
        };
        Entry {
            failure: Some(failure(FailureClass::Tls)),
            txt_failure: Some(failure(FailureClass::Txt)),
            ..entry()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::samples::{entry, with_failures};
    use super::*;

    #[test]
    fn the_version_line_is_left_out_only_when_it_is_the_usual_first_line() {
        // Written by the version before the line was left out: still read.
        let e = entry();
        let mut v1 = encode_entry(&e).unwrap();
        assert_eq!(v1[0], ENTRY_V2);
        let mut stored: StoredEntryV1 = postcard::from_bytes(&v1[1..]).unwrap();
        if let Some(p) = stored.policy.as_mut() {
            p.lines.insert(0, VERSION_LINE.into());
        }
        v1 = vec![ENTRY_V1];
        postcard::to_io(&stored, &mut v1).unwrap();
        assert_eq!(decode_entry("example.com", &v1).unwrap(), e);
        // A policy whose version line comes later keeps every line.
        let body = "mode: enforce\nversion: STSv1\nmx: mx.example.com\nmax_age: 86400\n";
        let mut later = entry();
        if let Some(p) = later.policy.as_mut() {
            p.policy = parse_policy(body.as_bytes()).unwrap();
        }
        let bytes = encode_entry(&later).unwrap();
        assert_eq!(bytes[0], ENTRY_V1);
        assert_eq!(decode_entry("example.com", &bytes).unwrap(), later);
        assert!(bytes.len() + 10 > v1.len(), "nothing left out");
    }

    #[test]
    fn entries_are_stored_compact_and_read_back() {
        for e in [
            entry(),
            with_failures(),
            Entry {
                no_policy_until: Some(5),
                last_check: 4,
                ..Entry::default()
            },
        ] {
            let bytes = encode_entry(&e).unwrap();
            // A policy starting with the usual version line is stored without it.
            let elided = e.policy.is_some();
            assert_eq!(bytes[0], if elided { ENTRY_V2 } else { ENTRY_V1 });
            assert_eq!(decode_entry("example.com", &bytes).unwrap(), e);
            // The outline read in place agrees with the whole entry, in either form.
            assert_eq!(
                decode_outline("example.com", &bytes).unwrap(),
                Outline::from(&e)
            );
            let legacy = serde_json::to_vec(&e).unwrap();
            assert_eq!(
                decode_outline("example.com", &legacy).unwrap(),
                Outline::from(&e)
            );
            let json = serde_json::to_vec(&e).unwrap();
            assert!(
                bytes.len() * 2 < json.len(),
                "{} bytes against {} in JSON",
                bytes.len(),
                json.len()
            );
        }
        assert!(decode_entry("example.com", &[9, 1, 2]).is_err());
        assert!(decode_entry("example.com", &[]).is_err());
    }
}
