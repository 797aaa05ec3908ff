//! What is kept of the datagrams: counters per UTC day × recipient domain × TLSRPT
//! record × policy (sessions, failed sessions, one counter per distinct failure
//! detail), never the datagrams themselves, so that memory and disk stay bounded
//! whatever the datagram rate. This is what RFC 8460 §4.3's `summary` and
//! `failure-details` are made of.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::datagram::{Datagram, PolicyResult};
use super::day::Day;

/// Distinct failure details kept per policy; further distinct ones are counted under
/// one detail per result type that says so (a flood of distinct details — every
/// sending address, every EHLO text — must not grow the store without bound).
pub const MAX_DETAILS: usize = 1000;
const OVERFLOW_NOTE: &str = "mta-stsd: more distinct failure details than it keeps; the rest of this result type is counted here";

/// One report's worth of sessions: a day, the recipient domain, and the TLSRPT record
/// they were reported under (it says where the report goes).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Group {
    pub day: Day,
    pub domain: String,
    pub record: String,
}

/// The counters of one policy within a group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub sessions: u64,
    pub failures: u64,
    /// Failure detail (canonical JSON, libtlsrpt's short keys) → failed sessions.
    pub details: BTreeMap<String, u64>,
}

impl Counts {
    /// Counts one session's result.
    pub fn record(&mut self, result: &PolicyResult) {
        self.sessions += 1;
        self.failures += u64::from(result.failed);
        for d in &result.details {
            self.add_detail(d, 1);
        }
    }

    /// Adds another set of counters for the same policy.
    pub fn merge(&mut self, other: &Counts) {
        self.sessions += other.sessions;
        self.failures += other.failures;
        for (d, n) in &other.details {
            self.add_detail(d, *n);
        }
    }

    /// These counters less `earlier` ones of the same policy (counters only grow, so
    /// this is what was counted in between); details left at zero are dropped.
    pub fn minus(&self, earlier: &Counts) -> Counts {
        let details = self
            .details
            .iter()
            .filter_map(|(d, n)| {
                let left = n.saturating_sub(earlier.details.get(d).copied().unwrap_or(0));
                (left > 0).then(|| (d.clone(), left))
            })
            .collect();
        Counts {
            sessions: self.sessions.saturating_sub(earlier.sessions),
            failures: self.failures.saturating_sub(earlier.failures),
            details,
        }
    }

    fn add_detail(&mut self, detail: &str, n: u64) {
        if let Some(count) = self.details.get_mut(detail) {
            *count += n;
        } else if self.details.len() < MAX_DETAILS {
            self.details.insert(detail.to_owned(), n);
        } else {
            *self.details.entry(overflow_key(detail)).or_default() += n;
        }
    }
}

/// The detail that stands for the distinct details not kept, by result type. (It may
/// itself go beyond [`MAX_DETAILS`] by one per result type: there are eleven.)
fn overflow_key(detail: &str) -> String {
    let code = serde_json::from_str::<serde_json::Value>(detail)
        .ok()
        .and_then(|v| v.get("c").and_then(serde_json::Value::as_u64))
        .unwrap_or(205);
    serde_json::json!({"c": code, "f": OVERFLOW_NOTE}).to_string()
}

/// Counters not yet stored, by group and policy.
#[derive(Debug, Default)]
pub struct Tally {
    pub counts: HashMap<(Group, String), Counts>,
    /// Datagrams counted in this tally.
    pub datagrams: u64,
}

impl Tally {
    /// Counts a datagram received on `day`.
    pub fn add(&mut self, day: Day, datagram: &Datagram) {
        let group = Group {
            day,
            domain: datagram.domain.clone(),
            record: datagram.record.clone(),
        };
        for result in &datagram.results {
            self.counts
                .entry((group.clone(), result.policy.clone()))
                .or_default()
                .record(result);
        }
        self.datagrams += 1;
    }

    /// Adds a tally that could not be stored back in, to be stored with the next one.
    pub fn absorb(&mut self, other: Tally) {
        for (key, counts) in other.counts {
            self.counts.entry(key).or_default().merge(&counts);
        }
        self.datagrams += other.datagrams;
    }

    pub fn is_empty(&self) -> bool {
        self.datagrams == 0 && self.counts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tlsrpt::datagram::parse;

    fn datagram(failed: bool, detail: &str) -> Datagram {
        let details = if failed {
            format!(r#","failure-details":[{{"c":202,"n":"{detail}"}}]"#)
        } else {
            String::new()
        };
        let text = format!(
            r#"{{"d":"x.test","pr":"v=TLSRPTv1;rua=mailto:r@x.test","policies":[{{"policy-type":2,"policy-domain":"x.test","f":{}{details}}}]}}"#,
            u8::from(failed)
        );
        parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn sessions_failures_and_details_add_up() {
        let mut tally = Tally::default();
        let day = Day(20_000);
        tally.add(day, &datagram(false, ""));
        tally.add(day, &datagram(true, "mx1"));
        tally.add(day, &datagram(true, "mx1"));
        tally.add(day, &datagram(true, "mx2"));
        tally.add(day.next(), &datagram(true, "mx1"));
        assert_eq!(tally.datagrams, 5);
        assert_eq!(tally.counts.len(), 2, "one key per day and policy");
        let today = tally
            .counts
            .iter()
            .find(|((g, _), _)| g.day == day)
            .map(|(_, c)| c.clone())
            .unwrap();
        assert_eq!((today.sessions, today.failures), (4, 3));
        assert_eq!(
            today.details.values().copied().collect::<Vec<_>>(),
            vec![2, 1]
        );

        let mut merged = Tally::default();
        merged.absorb(tally);
        assert_eq!(merged.datagrams, 5);
    }

    #[test]
    fn distinct_details_are_bounded_and_still_counted() {
        let mut counts = Counts::default();
        for i in 0..MAX_DETAILS + 500 {
            let d = datagram(true, &format!("mx{i}"));
            counts.record(&d.results[0]);
        }
        assert_eq!(counts.failures, (MAX_DETAILS + 500) as u64);
        assert_eq!(counts.details.len(), MAX_DETAILS + 1);
        assert_eq!(
            counts.details.values().sum::<u64>(),
            (MAX_DETAILS + 500) as u64
        );
        assert!(counts.details.keys().any(|k| k.contains("more distinct")));
    }
}
