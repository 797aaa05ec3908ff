//! TLSRPT input from outside: libtlsrpt datagrams (from any local process that can
//! write to the socket) and TLSRPT records (from DNS). Never a panic; an accepted
//! datagram counts and renders into a report that is valid JSON; a record's usable
//! destinations are plain addresses and https URLs only, whatever the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mta_stsd::tlsrpt::counts::Tally;
use mta_stsd::tlsrpt::datagram::parse;
use mta_stsd::tlsrpt::day::Day;
use mta_stsd::tlsrpt::mail::{Envelope, message};
use mta_stsd::tlsrpt::record::{Destination, destinations};
use mta_stsd::tlsrpt::report::{Submitter, build};

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = parse(data) {
        assert!(!d.domain.is_empty() && d.domain == d.domain.to_ascii_lowercase());
        assert!(!d.results.is_empty());
        let mut tally = Tally::default();
        tally.add(Day(20_000), &d);
        let submitter = Submitter {
            organization: "Fuzz".into(),
            contact: "postmaster@fuzz.test".into(),
            domain: "fuzz.test".into(),
        };
        for ((group, policy), counts) in &tally.counts {
            let report = build(&submitter, group, &[(policy.clone(), counts.clone())]);
            let v: serde_json::Value = serde_json::from_str(&report.json).expect("report JSON");
            assert_eq!(v["policies"].as_array().map(Vec::len), Some(1));
            let envelope = Envelope {
                from: "tlsrpt@fuzz.test",
                to: "r@fuzz.test",
                submitter: "fuzz.test",
                organization: "Fuzz",
                now: 0,
            };
            if let Some(m) = message(&report, &envelope) {
                let head = m.split(|b| *b == b'\n').take_while(|l| *l != b"\r");
                for line in head {
                    assert!(line.ends_with(b"\r"), "bare LF in a header");
                }
            }
        }
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(dests) = destinations(text)
    {
        for d in dests.usable {
            match d {
                Destination::Mailto(a) => {
                    assert!(mta_stsd::config::check_address(&a).is_ok(), "{a:?}");
                }
                Destination::Https(u) => assert_eq!(u.scheme(), "https"),
            }
        }
    }
});
