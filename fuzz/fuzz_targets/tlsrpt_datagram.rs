//! TLSRPT input from outside: libtlsrpt datagrams (from any local process that can
//! write to the socket) and TLSRPT records (from DNS). Never a panic; an accepted
//! datagram counts and renders into a report that is valid JSON; a record's usable
//! destinations are plain addresses and https URLs only, whatever the input. What the
//! reference collector counts is never refused: invalid UTF-8 is decoded lossily (so
//! the datagram parses exactly when its lossy text does), domains come out as ASCII
//! (U-labels become A-labels), every result code renders as an RFC 8460 result type,
//! every policy names its domain, and the file name's unique-id is letters and digits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mta_stsd::tlsrpt::counts::Tally;
use mta_stsd::tlsrpt::datagram::parse;
use mta_stsd::tlsrpt::day::Day;
use mta_stsd::tlsrpt::mail::{Envelope, message};
use mta_stsd::tlsrpt::record::{Destination, destinations};
use mta_stsd::tlsrpt::report::{Submitter, build};

/// RFC 8460 §4.3's result types.
const RESULT_TYPES: [&str; 11] = [
    "starttls-not-supported",
    "certificate-host-mismatch",
    "certificate-not-trusted",
    "certificate-expired",
    "validation-failure",
    "sts-policy-fetch-error",
    "sts-policy-invalid",
    "sts-webpki-invalid",
    "tlsa-invalid",
    "dnssec-invalid",
    "dane-required",
];

fuzz_target!(|data: &[u8]| {
    let lossy = String::from_utf8_lossy(data);
    if lossy.len() <= mta_stsd::tlsrpt::datagram::MAX_DATAGRAM {
        assert_eq!(parse(data).is_ok(), parse(lossy.as_bytes()).is_ok());
    }
    if let Ok(d) = parse(data) {
        assert!(!d.domain.is_empty() && d.domain == d.domain.to_ascii_lowercase());
        assert!(d.domain.is_ascii(), "{:?}", d.domain);
        assert!(!d.results.is_empty());
        let mut tally = Tally::default();
        tally.add(Day(20_000), &d);
        let submitter = Submitter {
            organization: "Fuzz".into(),
            contact: "postmaster@fuzz.test".into(),
            domain: "fuzz.test".into(),
        };
        for ((group, policy), counts) in &tally.counts {
            let day = group.day;
            let report = build(
                &submitter,
                "f00d",
                group,
                (day.start(), day.end()),
                &[(policy.clone(), counts.clone())],
            );
            let v: serde_json::Value = serde_json::from_str(&report.json).expect("report JSON");
            assert_eq!(v["policies"].as_array().map(Vec::len), Some(1));
            let p = &v["policies"][0];
            assert!(p["policy"]["policy-domain"].is_string(), "{p}");
            for detail in p["failure-details"].as_array().into_iter().flatten() {
                let result = detail["result-type"].as_str().expect("result-type");
                assert!(RESULT_TYPES.contains(&result), "{result}");
            }
            let unique = report.file_name.trim_end_matches(".json.gz").rsplit('!').next();
            assert!(unique.is_some_and(|u| !u.is_empty() && u.chars().all(|c| c.is_ascii_alphanumeric())));
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
