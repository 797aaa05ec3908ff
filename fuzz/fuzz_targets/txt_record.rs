//! `_mta-sts` TXT parsing (RFC 8461 §3.1) on arbitrary records: never a panic; an
//! accepted id is 1 to 32 letters and digits; selection among several records agrees
//! with parsing the single candidate.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mta_stsd::mtasts::policy::{parse_sts_record, select_sts_record};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(rec) = parse_sts_record(text) {
        assert!((1..=32).contains(&rec.id.len()), "{:?}", rec.id);
        assert!(rec.id.bytes().all(|b| b.is_ascii_alphanumeric()), "{:?}", rec.id);
    }
    // Newlines split the input into several TXT records of one name.
    let records: Vec<&str> = text.split('\n').collect();
    let selected = select_sts_record(&records);
    if records.len() == 1 {
        assert_eq!(selected.is_ok(), parse_sts_record(text).is_ok());
    }
});
