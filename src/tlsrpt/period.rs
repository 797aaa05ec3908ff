//! Reporting periods within a day (pure). A day's report normally covers the whole
//! UTC day; `tlsrpt send --partial` closes a period early: it records a *cut* (the
//! moment, and the day's counters as they stood then), reports the sessions since the
//! previous cut, and the day's later reports start where it ended. A receiver that
//! adds up distinct report ids thus counts every session exactly once (RFC 8460 §4.1
//! lets a report cover any range; its `date-range` says which).
//!
//! Counters only ever grow, so a period's counters are the counters at its end minus
//! those at its start; nothing is stored twice and a period's report is the same
//! whenever it is rebuilt (a retry sends the same report under the same id).

use serde::{Deserialize, Serialize};

use super::counts::Counts;
use super::day::Day;
use super::store::DayCounts;

/// A closed period's end: when it was cut and the day's counters at that moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cut {
    pub at: u64,
    pub counts: DayCounts,
}

/// The sessions of one stretch of a day, `begin` to `end` inclusive (epoch seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    pub begin: u64,
    pub end: u64,
    pub counts: DayCounts,
}

/// The periods of `day`: one per cut, then, with `open_end`, the one still open (from
/// the last cut to `open_end`: the day's end once it is over, or "now" for a look at
/// a day in progress). Periods without sessions are left out.
pub fn periods(day: Day, cuts: &[Cut], current: &DayCounts, open_end: Option<u64>) -> Vec<Period> {
    let mut out = Vec::new();
    let mut begin = day.start();
    let mut before: &DayCounts = &Vec::new();
    for cut in cuts {
        out.push(Period {
            begin,
            end: cut.at,
            counts: minus(&cut.counts, before),
        });
        begin = cut.at + 1;
        before = &cut.counts;
    }
    if let Some(end) = open_end {
        out.push(Period {
            begin,
            end: end.max(begin),
            counts: minus(current, before),
        });
    }
    out.retain(|p| !p.counts.is_empty());
    out
}

/// What a cut at `at` would close: the sessions since the last cut (empty when there
/// are none, and then no cut is made).
pub fn open_since_last(cuts: &[Cut], current: &DayCounts) -> DayCounts {
    minus(
        current,
        cuts.last().map(|c| &c.counts).unwrap_or(&Vec::new()),
    )
}

/// `later - earlier`, group by group and policy by policy; what is left at zero is
/// dropped.
pub fn minus(later: &DayCounts, earlier: &DayCounts) -> DayCounts {
    let mut out = Vec::new();
    for (group, policies) in later {
        let old = earlier
            .iter()
            .find(|(g, _)| g == group)
            .map(|(_, p)| p.as_slice())
            .unwrap_or(&[]);
        let left: Vec<(String, Counts)> = policies
            .iter()
            .filter_map(|(policy, counts)| {
                let diff = match old.iter().find(|(p, _)| p == policy) {
                    Some((_, was)) => counts.minus(was),
                    None => counts.clone(),
                };
                (diff.sessions > 0 || !diff.details.is_empty()).then(|| (policy.clone(), diff))
            })
            .collect();
        if !left.is_empty() {
            out.push((group.clone(), left));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tlsrpt::counts::Group;

    fn counts(day: Day, domain: &str, sessions: u64, failures: u64) -> DayCounts {
        let mut c = Counts {
            sessions,
            failures,
            ..Counts::default()
        };
        if failures > 0 {
            c.details.insert(r#"{"c":202}"#.into(), failures);
        }
        vec![(
            Group {
                day,
                domain: domain.into(),
                record: "v=TLSRPTv1;rua=mailto:r@x.test".into(),
            },
            vec![(r#"{"policy-type":2}"#.into(), c)],
        )]
    }

    fn total(ps: &[Period]) -> (u64, u64) {
        ps.iter()
            .flat_map(|p| p.counts.iter())
            .flat_map(|(_, pol)| pol.iter())
            .fold((0, 0), |(s, f), (_, c)| (s + c.sessions, f + c.failures))
    }

    #[test]
    fn a_day_without_cuts_is_one_period() {
        let day = Day(20_000);
        let now = counts(day, "x.test", 5, 2);
        let ps = periods(day, &[], &now, Some(day.end()));
        assert_eq!(ps.len(), 1);
        assert_eq!((ps[0].begin, ps[0].end), (day.start(), day.end()));
        assert_eq!(ps[0].counts, now);
        assert!(periods(day, &[], &now, None).is_empty());
    }

    #[test]
    fn cuts_split_the_day_and_every_session_is_counted_once() {
        let day = Day(20_000);
        let t1 = day.start() + 3600;
        let t2 = day.start() + 7200;
        let cuts = [
            Cut {
                at: t1,
                counts: counts(day, "x.test", 3, 1),
            },
            Cut {
                at: t2,
                counts: counts(day, "x.test", 7, 2),
            },
        ];
        let now = counts(day, "x.test", 10, 2);
        let ps = periods(day, &cuts, &now, Some(day.end()));
        let ranges: Vec<(u64, u64)> = ps.iter().map(|p| (p.begin, p.end)).collect();
        assert_eq!(
            ranges,
            [(day.start(), t1), (t1 + 1, t2), (t2 + 1, day.end())]
        );
        assert_eq!(total(&ps), (10, 2));
        // The last period had sessions but no failures: its failure detail is gone.
        assert!(ps[2].counts[0].1[0].1.details.is_empty());
        assert_eq!(ps[1].counts[0].1[0].1.details.values().sum::<u64>(), 1);
    }

    #[test]
    fn a_period_without_new_sessions_is_empty() {
        let day = Day(20_000);
        let at_cut = counts(day, "x.test", 3, 1);
        let cuts = [Cut {
            at: day.start() + 10,
            counts: at_cut.clone(),
        }];
        assert!(open_since_last(&cuts, &at_cut).is_empty());
        assert_eq!(periods(day, &cuts, &at_cut, Some(day.end())).len(), 1);
        // A group seen only after the cut is all new.
        let mut now = at_cut.clone();
        now.extend(counts(day, "y.test", 1, 0));
        let open = open_since_last(&cuts, &now);
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].0.domain, "y.test");
    }
}
