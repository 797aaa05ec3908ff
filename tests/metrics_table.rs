//! The metrics table (docs/metrics.md) is the contract: every family it lists is exported from
//! the first scrape with every label value it lists, and every exported family is in
//! the table. The label values come from the types that produce them.

use std::collections::{BTreeMap, BTreeSet};

use mta_stsd::cache::lifecycle::{Outcome, Trigger};
use mta_stsd::cache::policy_cache::CacheOutcome;
use mta_stsd::metrics::{self, Metrics};
use mta_stsd::server::connection::Closed;

/// The table's rows: name → label → listed values.
fn readme_table() -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md")).unwrap();
    let mut out = BTreeMap::new();
    for line in readme.lines().filter(|l| l.starts_with("| `mta_stsd_")) {
        let cells: Vec<&str> = line.split(" | ").collect();
        let name = cells[0]
            .trim_start_matches("| ")
            .trim_matches('`')
            .to_owned();
        let mut labels = BTreeMap::new();
        // "`a` (x, y), `b`, `c` (z)"
        let mut rest = cells[2];
        while let Some(start) = rest.find('`') {
            let after = &rest[start + 1..];
            let Some(end) = after.find('`') else { break };
            let label = after[..end].to_owned();
            rest = &after[end + 1..];
            let mut values = Vec::new();
            if let Some(list) = rest.strip_prefix(" (") {
                let close = list.find(')').unwrap();
                values = list[..close]
                    .split(',')
                    .map(|v| v.trim().trim_matches('`').to_owned())
                    .collect();
                rest = &list[close + 1..];
            }
            labels.insert(label, values);
        }
        out.insert(name, labels);
    }
    out
}

#[test]
fn the_readme_table_and_a_fresh_scrape_agree() {
    let text = Metrics::new().unwrap().render();
    let exported: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap().to_owned())
        .collect();
    let table = readme_table();
    let documented: BTreeSet<String> = table.keys().cloned().collect();
    assert_eq!(
        exported.difference(&documented).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "exported but not in the README's table"
    );
    assert_eq!(
        documented.difference(&exported).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "in the README's table but not exported from the first scrape"
    );
    for (name, labels) in &table {
        for (label, values) in labels {
            for v in values {
                let series = format!("{label}=\"{v}\"");
                assert!(
                    text.lines()
                        .any(|l| l.starts_with(name.as_str()) && l.contains(&series)),
                    "{name}{{{series}}} is documented but not exported from the first scrape"
                );
            }
        }
    }
}

#[test]
fn label_values_are_those_the_daemon_produces() {
    let triggers: Vec<&str> = [Trigger::Miss, Trigger::Recheck, Trigger::Refresh]
        .iter()
        .map(|t| t.as_str())
        .collect();
    assert_eq!(triggers, metrics::DISCOVERY_TRIGGERS);
    let results: BTreeSet<&str> = [
        Outcome::Fetched,
        Outcome::Unchanged,
        Outcome::Kept,
        Outcome::NoPolicy,
        Outcome::TxtFailed,
        Outcome::FetchFailed,
        Outcome::Backoff,
    ]
    .iter()
    .map(|o| o.as_str())
    .collect();
    assert_eq!(results, metrics::DISCOVERY_RESULTS.into_iter().collect());
    let cache: BTreeSet<&str> = [
        CacheOutcome::Hit,
        CacheOutcome::NegativeHit,
        CacheOutcome::Miss,
        CacheOutcome::Timeout,
        CacheOutcome::Skipped,
    ]
    .iter()
    .map(|c| c.as_str())
    .collect();
    assert_eq!(cache, metrics::LOOKUP_CACHE.into_iter().collect());
    let closed: Vec<&str> = [Closed::Idle, Closed::Slow, Closed::Evicted]
        .iter()
        .map(|c| c.as_str())
        .collect();
    assert_eq!(closed, metrics::CLOSE_REASONS);
}
