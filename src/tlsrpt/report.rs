//! RFC 8460 §4 reports, made from the counters of one group (a day, a recipient
//! domain, a TLSRPT record): the JSON document, its stable identifier, its gzip form
//! and its file name (§5.3). Pure: the same counters always make the same report, so
//! a report retried or sent again after a restart is byte for byte the one recorded.

use std::io::Write;

use serde_json::{Map, Value, json};

use super::counts::{Counts, Group};
use super::datagram::{policy_type_name, result_type_name};

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

/// Builds the report of a group from its counters, one entry per policy.
pub fn build(submitter: &Submitter, group: &Group, policies: &[(String, Counts)]) -> Report {
    build_as(submitter, group, policies, "")
}

/// The report of a day not yet over, as it stands at `now`: its id says so, so that
/// it is never taken for the day's final report.
pub fn partial(
    submitter: &Submitter,
    group: &Group,
    policies: &[(String, Counts)],
    now: u64,
) -> Report {
    build_as(submitter, group, policies, &format!(".partial-{now}"))
}

fn build_as(
    submitter: &Submitter,
    group: &Group,
    policies: &[(String, Counts)],
    variant: &str,
) -> Report {
    let tag = format!("{}{variant}", record_tag(&group.record));
    let id = format!("{}.{}.{tag}@{}", group.day, group.domain, submitter.domain);
    let mut sorted: Vec<&(String, Counts)> = policies.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let entries: Vec<Value> = sorted
        .into_iter()
        .map(|(policy, counts)| policy_entry(policy, counts))
        .collect();
    let document = json!({
        "organization-name": submitter.organization,
        "date-range": {
            "start-datetime": group.day.start_datetime(),
            "end-datetime": group.day.end_datetime(),
        },
        "contact-info": submitter.contact,
        "report-id": id,
        "policies": entries,
    });
    let file_name = format!(
        "{}!{}!{}!{}!{tag}.json.gz",
        submitter.domain,
        group.domain,
        group.day.start(),
        group.day.end()
    );
    Report {
        id,
        group: group.clone(),
        json: document.to_string(),
        file_name,
    }
}

fn policy_entry(policy: &str, counts: &Counts) -> Value {
    let mut p = match serde_json::from_str::<Value>(policy) {
        Ok(Value::Object(p)) => p,
        _ => Map::new(),
    };
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
    out.insert("failed-session-count".into(), Value::from(sessions));
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tlsrpt::counts::Tally;
    use crate::tlsrpt::datagram::parse;
    use crate::tlsrpt::day::Day;

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
        let report = build(&submitter(), &group, &policies);
        assert_eq!(
            report.id,
            "2026-12-04.bad.test.".to_owned() + &record_tag(&group.record) + "@sender.test"
        );
        assert!(
            report
                .file_name
                .starts_with("sender.test!bad.test!1796342400!1796428799!")
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
        assert_eq!(build(&submitter(), &group, &policies), report);
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::GzDecoder::new(&report.gzip()[..]),
            &mut text,
        )
        .unwrap();
        assert_eq!(text, report.json);
    }
}
