//! The policy parser against real policy files as domains publish them
//! (`../shared/corpus/` beside the repository, when present): what it accepts and
//! what it rejects is pinned, so a change in leniency or strictness shows up here.

use std::path::Path;

use mta_stsd::mtasts::policy::parse_policy;

/// Files the parser rejects, each for a reason RFC 8461 §3.2 gives, grouped by it.
const REJECTED: &[&str] = &[
    // lines that are not key: value fields (titles, comments, RTF, key=value)
    "001.txt", "212.txt", "214.txt", "220.txt", "222.txt", "223.txt", "224.txt", "228.txt",
    "229.txt", "230.txt", "235.txt", // indented field names (YAML-style nesting)
    "004.txt", "075.txt", "193.txt", "194.txt", "197.txt", "219.txt",
    // mode values other than enforce, testing or none
    "022.txt", "164.txt", "200.txt", "201.txt", "209.txt", "210.txt", "211.txt", "213.txt",
    "232.txt", "233.txt", // mx values that are not host names or *. patterns
    "139.txt", "190.txt", "192.txt", "218.txt", "226.txt",
    // max_age values that are not 1 to 10 digits
    "191.txt", "217.txt", // a byte-order mark before the first field name
    "203.txt", "204.txt", "206.txt", "207.txt", "208.txt", // empty or not UTF-8
    "205.txt", "227.txt", "234.txt", // a missing or wrong version
    "215.txt", "238.txt", "239.txt",
];

#[test]
fn real_policies_parse_as_expected() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus");
    let policies = corpus.join("policies");
    let Ok(dir) = std::fs::read_dir(&policies) else {
        eprintln!("{} not present; skipping", policies.display());
        return;
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".txt"))
        .collect();
    names.sort();
    let (mut accepted, mut lenient, mut rejected) = (0, 0, Vec::new());
    for name in &names {
        // Files with Jekyll front matter are served as rendered, not as stored.
        let rendered = corpus.join("rendered").join(name);
        let path = if rendered.exists() {
            rendered
        } else {
            policies.join(name)
        };
        let body = std::fs::read(&path).unwrap();
        match parse_policy(&body) {
            Ok(p) => {
                accepted += 1;
                if !p.notes.is_empty() {
                    lenient += 1;
                }
            }
            Err(e) => rejected.push(format!("{name}: {e}")),
        }
    }
    for r in &rejected {
        eprintln!("rejected {r}");
    }
    eprintln!(
        "accepted {accepted} (leniently {lenient}), rejected {}",
        rejected.len()
    );
    let rejected_names: Vec<&str> = rejected
        .iter()
        .map(|r| r.split(':').next().unwrap_or_default())
        .collect();
    let mut expected = REJECTED.to_vec();
    expected.sort();
    assert_eq!(rejected_names, expected);
    // mx values with a trailing dot copied from a zone file are accepted.
    assert_eq!(lenient, 7);
    assert_eq!(accepted + rejected.len(), names.len());
}
