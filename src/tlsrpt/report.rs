//! RFC 8460 §4 reports, made from the counters of one group (a day, a recipient
//! domain, a TLSRPT record) over one period of that day: the JSON document, its
//! identifier, its gzip form and its file name (§5.3). Pure: the same counters always
//! make the same report, so a report retried or sent again after a restart is byte
//! for byte the one recorded, under the same id.
//!
//! The id is unique per sender: receivers drop reports whose `report-id` they have
//! seen (§4.4), so two MTAs of one organisation that count separately must never send
//! their different counts under one id. It is made of the sending node (a daemon's
//! own store, or a fleet's Redis, each draws its id once and keeps it), the record's
//! tag and the period's start; the same parts, letters and digits only, are the §5.1
//! file name's `unique-id`.

use std::io::Write;

use serde_json::{Map, Value, json};

use super::counts::{Counts, Group};
use super::datagram::{policy_type_name, result_type_name};
use super::day::rfc3339;

/// Who sends the reports (`[tlsrpt]` settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitter {
    /// `organization-name`.
    pub organization: String,
    /// `contact-info`.
    pub contact: String,
    /// The submitting domain (RFC 8460 §5.3: `TLS-Report-Submitter`, the file name).
    pub domain: String,
}

/// One report, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub id: String,
    pub group: Group,
    /// The period it covers, epoch seconds, inclusive (`date-range`).
    pub begin: u64,
    pub end: u64,
    /// The JSON document.
    pub json: String,
    /// `submitter!policy-domain!begin!end!unique.json.gz`.
    pub file_name: String,
}

impl Report {
    /// The gzip-compressed document (`application/tlsrpt+gzip`).
    pub fn gzip(&self) -> Vec<u8> {
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        // Writing to memory cannot fail.
        let _ = z.write_all(self.json.as_bytes());
        z.finish().unwrap_or_default()
    }
}

/// A short stable digest of a TLSRPT record (FNV-1a, 64 bits): the same domain may
/// publish another record during a day, and each record gets its own report.
pub fn record_tag(record: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in record.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:08x}", h >> 32)
}

/// The §5.1 `unique-id` (`1*(ALPHA / DIGIT)`) of a sender's report of a group's
/// period: the sending node, the record's tag and the period's first second.
pub fn unique_id(node: &str, group: &Group, begin: u64) -> String {
    let node: String = node.chars().filter(char::is_ascii_alphanumeric).collect();
    format!("{node}{}{begin}", record_tag(&group.record))
}

/// Builds the report `node` sends of a group's period `begin..=end`, one entry per
/// policy.
pub fn build(
    submitter: &Submitter,
    node: &str,
    group: &Group,
    (begin, end): (u64, u64),
    policies: &[(String, Counts)],
) -> Report {
    let unique = unique_id(node, group, begin);
    let id = format!(
        "{}.{}.{unique}@{}",
        group.day, group.domain, submitter.domain
    );
    let mut sorted: Vec<&(String, Counts)> = policies.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let entries: Vec<Value> = sorted
        .into_iter()
        .map(|(policy, counts)| policy_entry(policy, counts, &group.domain))
        .collect();
    let document = json!({
        "organization-name": submitter.organization,
        "date-range": {
            "start-datetime": rfc3339(begin),
            "end-datetime": rfc3339(end),
        },
        "contact-info": submitter.contact,
        "report-id": id,
        "policies": entries,
    });
    let file_name = format!(
        "{}!{}!{begin}!{end}!{unique}.json.gz",
        submitter.domain, group.domain
    );
    Report {
        id,
        group: group.clone(),
        begin,
        end,
        json: document.to_string(),
        file_name,
    }
}

fn policy_entry(policy: &str, counts: &Counts, domain: &str) -> Value {
    let mut p = match serde_json::from_str::<Value>(policy) {
        Ok(Value::Object(p)) => p,
        _ => Map::new(),
    };
    // §4.3: every policy names its domain. Postfix sends none with
    // `no-policy-found`, whose domain is the recipient domain the group is of.
    p.entry("policy-domain")
        .or_insert_with(|| Value::from(domain));
    let type_name = p
        .get("policy-type")
        .and_then(Value::as_u64)
        .and_then(policy_type_name)
        .unwrap_or("no-policy-found");
    p.insert("policy-type".into(), Value::from(type_name));
    let details: Vec<Value> = counts
        .details
        .iter()
        .map(|(detail, n)| failure_detail(detail, *n))
        .collect();
    let mut entry = json!({
        "policy": p,
        "summary": {
            "total-successful-session-count": counts.sessions.saturating_sub(counts.failures),
            "total-failure-session-count": counts.failures,
        },
    });
    if !details.is_empty() {
        entry["failure-details"] = Value::from(details);
    }
    entry
}

/// libtlsrpt's short keys to RFC 8460 §4.3's names.
fn failure_detail(detail: &str, sessions: u64) -> Value {
    const NAMES: [(&str, &str); 6] = [
        ("s", "sending-mta-ip"),
        ("n", "receiving-mx-hostname"),
        ("h", "receiving-mx-helo"),
        ("r", "receiving-ip"),
        ("a", "additional-information"),
        ("f", "failure-reason-code"),
    ];
    let short = match serde_json::from_str::<Value>(detail) {
        Ok(Value::Object(d)) => d,
        _ => Map::new(),
    };
    let mut out = Map::new();
    let result = short
        .get("c")
        .and_then(Value::as_u64)
        .and_then(result_type_name)
        .unwrap_or("validation-failure");
    out.insert("result-type".into(), Value::from(result));
    for (from, to) in NAMES {
        if let Some(v) = short.get(from) {
            out.insert(to.into(), v.clone());
        }
    }
    // §4.4 defines `additional-information` as a URI; a text that is not one is a
    // reason, and goes where reasons go.
    if let Some(Value::String(info)) = out.get("additional-information")
        && !is_uri(info)
    {
        let info = info.clone();
        out.remove("additional-information");
        let reason = match out.get("failure-reason-code") {
            Some(Value::String(r)) => format!("{r}; {info}"),
            _ => info,
        };
        out.insert("failure-reason-code".into(), Value::from(reason));
    }
    out.insert("failed-session-count".into(), Value::from(sessions));
    Value::Object(out)
}

/// Whether `text` has the form of an absolute URI (RFC 3986 §3: a scheme, a colon,
/// and no white space).
fn is_uri(text: &str) -> bool {
    let Some((scheme, rest)) = text.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        && !rest.is_empty()
        && !text.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tlsrpt::counts::Tally;
    use crate::tlsrpt::datagram::parse;
    use crate::tlsrpt::day::Day;

    const NODE: &str = "0123456789abcdef";

    fn group(day: Day) -> Group {
        Group {
            day,
            domain: "x.test".into(),
            record: "v=TLSRPTv1;rua=mailto:r@x.test".into(),
        }
    }

    fn one_policy(policy: &str, detail: &str) -> Vec<(String, Counts)> {
        let mut counts = Counts {
            sessions: 2,
            failures: 1,
            ..Counts::default()
        };
        counts.details.insert(detail.into(), 1);
        vec![(policy.into(), counts)]
    }

    #[test]
    fn ids_are_unique_per_sender_and_period_and_fit_rfc_8460s_grammar() {
        let day = Day::parse("2026-12-04").unwrap();
        let g = group(day);
        let p = one_policy(
            r#"{"policy-type":2,"policy-domain":"x.test"}"#,
            r#"{"c":202}"#,
        );
        let whole = (day.start(), day.end());
        let a = build(&submitter(), "aaaa1111", &g, whole, &p);
        let b = build(&submitter(), "bbbb2222", &g, whole, &p);
        assert_ne!(a.id, b.id, "two daemons counting apart");
        assert_ne!(a.file_name, b.file_name);
        let cut = day.start() + 3600;
        let first = build(&submitter(), "aaaa1111", &g, (day.start(), cut), &p);
        let rest = build(&submitter(), "aaaa1111", &g, (cut + 1, day.end()), &p);
        assert_ne!(first.id, rest.id, "two periods of one day");
        assert_eq!(
            first.id,
            a.id.clone(),
            "a period's id is fixed by its start"
        );
        for r in [&a, &b, &first, &rest] {
            // submitter!domain!begin!end!unique-id.json.gz, unique-id = 1*(ALPHA / DIGIT)
            let stem = r.file_name.strip_suffix(".json.gz").unwrap();
            let parts: Vec<&str> = stem.split('!').collect();
            assert_eq!(parts.len(), 5, "{}", r.file_name);
            assert_eq!(parts[2], r.begin.to_string());
            assert_eq!(parts[3], r.end.to_string());
            assert!(!parts[4].is_empty() && parts[4].chars().all(|c| c.is_ascii_alphanumeric()));
            // The id is a msg-id's inside: dot-atom-text "@" domain.
            let (left, right) = r.id.split_once('@').unwrap();
            assert_eq!(right, "sender.test");
            assert!(left.split('.').all(|atom| {
                !atom.is_empty()
                    && atom
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
            }));
        }
        let v: Value = serde_json::from_str(&rest.json).unwrap();
        assert_eq!(v["date-range"]["start-datetime"], "2026-12-04T01:00:01Z");
        assert_eq!(v["date-range"]["end-datetime"], "2026-12-04T23:59:59Z");
    }

    #[test]
    fn every_policy_names_its_domain() {
        let day = Day::parse("2026-12-04").unwrap();
        let r = build(
            &submitter(),
            NODE,
            &group(day),
            (day.start(), day.end()),
            &one_policy(r#"{"policy-type":9}"#, r#"{"c":201}"#),
        );
        let v: Value = serde_json::from_str(&r.json).unwrap();
        assert_eq!(v["policies"][0]["policy"]["policy-type"], "no-policy-found");
        assert_eq!(v["policies"][0]["policy"]["policy-domain"], "x.test");
    }

    #[test]
    fn free_text_is_a_failure_reason_and_uris_are_additional_information() {
        let day = Day::parse("2026-12-04").unwrap();
        for (detail, info, reason) in [
            (
                r#"{"a":"https://status.example/tls","c":202}"#,
                Some("https://status.example/tls"),
                None,
            ),
            (
                r#"{"a":"tls: invalid peer certificate","c":303}"#,
                None,
                Some("tls: invalid peer certificate"),
            ),
            (
                r#"{"a":"see: the log","c":205,"f":"own"}"#,
                None,
                Some("own; see: the log"),
            ),
            (
                r#"{"c":303,"f":"tls: expired"}"#,
                None,
                Some("tls: expired"),
            ),
        ] {
            let r = build(
                &submitter(),
                NODE,
                &group(day),
                (day.start(), day.end()),
                &one_policy(r#"{"policy-type":2}"#, detail),
            );
            let v: Value = serde_json::from_str(&r.json).unwrap();
            let d = &v["policies"][0]["failure-details"][0];
            assert_eq!(d["additional-information"].as_str(), info, "{detail}");
            assert_eq!(d["failure-reason-code"].as_str(), reason, "{detail}");
        }
    }

    fn submitter() -> Submitter {
        Submitter {
            organization: "Example Mail".into(),
            contact: "postmaster@sender.test".into(),
            domain: "sender.test".into(),
        }
    }

    #[test]
    fn a_report_has_rfc_8460s_shape() {
        let day = Day::parse("2026-12-04").unwrap();
        let mut tally = Tally::default();
        let ok = br#"{"d":"bad.test","pr":"v=TLSRPTv1;rua=mailto:r@bad.test","policies":[{"policy-type":2,"policy-domain":"bad.test","policy-string":["version: STSv1","mode: enforce","mx: mx.bad.test","max_age: 86400"],"mx-host":["mx.bad.test"],"f":0}]}"#;
        let failed = br#"{"d":"bad.test","pr":"v=TLSRPTv1;rua=mailto:r@bad.test","policies":[{"policy-type":2,"policy-domain":"bad.test","policy-string":["version: STSv1","mode: enforce","mx: mx.bad.test","max_age: 86400"],"mx-host":["mx.bad.test"],"failure-details":[{"c":202,"s":"192.0.2.1","n":"mx.bad.test","h":"250 HELP","r":"192.0.2.3"}],"t":1,"f":1}]}"#;
        for d in [&ok[..], failed, failed] {
            tally.add(day, &parse(d).unwrap());
        }
        let ((group, _), _) = tally.counts.iter().next().unwrap();
        let group = group.clone();
        let policies: Vec<(String, Counts)> =
            tally.counts.into_iter().map(|((_, p), c)| (p, c)).collect();
        let whole = (day.start(), day.end());
        let report = build(&submitter(), NODE, &group, whole, &policies);
        let unique = format!("{NODE}{}{}", record_tag(&group.record), day.start());
        assert_eq!(
            report.id,
            format!("2026-12-04.bad.test.{unique}@sender.test")
        );
        assert_eq!(
            report.file_name,
            format!("sender.test!bad.test!1796342400!1796428799!{unique}.json.gz")
        );
        let v: Value = serde_json::from_str(&report.json).unwrap();
        assert_eq!(v["organization-name"], "Example Mail");
        assert_eq!(v["contact-info"], "postmaster@sender.test");
        assert_eq!(v["date-range"]["start-datetime"], "2026-12-04T00:00:00Z");
        assert_eq!(v["date-range"]["end-datetime"], "2026-12-04T23:59:59Z");
        let p = &v["policies"][0];
        assert_eq!(p["policy"]["policy-type"], "sts");
        assert_eq!(p["policy"]["policy-domain"], "bad.test");
        assert_eq!(p["policy"]["mx-host"][0], "mx.bad.test");
        assert_eq!(p["policy"]["policy-string"][1], "mode: enforce");
        assert_eq!(p["summary"]["total-successful-session-count"], 1);
        assert_eq!(p["summary"]["total-failure-session-count"], 2);
        let d = &p["failure-details"][0];
        assert_eq!(d["result-type"], "certificate-host-mismatch");
        assert_eq!(d["sending-mta-ip"], "192.0.2.1");
        assert_eq!(d["receiving-mx-hostname"], "mx.bad.test");
        assert_eq!(d["receiving-mx-helo"], "250 HELP");
        assert_eq!(d["receiving-ip"], "192.0.2.3");
        assert_eq!(d["failed-session-count"], 2);

        // Same counters, same bytes; and the gzip form unpacks to the document.
        assert_eq!(build(&submitter(), NODE, &group, whole, &policies), report);
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::GzDecoder::new(&report.gzip()[..]),
            &mut text,
        )
        .unwrap();
        assert_eq!(text, report.json);
    }
}
