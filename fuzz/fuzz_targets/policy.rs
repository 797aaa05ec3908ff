//! Policy file parsing (RFC 8461 §3.2) on arbitrary bodies: never a panic; an
//! accepted policy has a clamped max_age, mx patterns in normal form, and lines
//! without terminators.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mta_stsd::mtasts::policy::{MAX_MAX_AGE, parse_policy};

fuzz_target!(|data: &[u8]| {
    let Ok(policy) = parse_policy(data) else {
        return;
    };
    assert!(policy.max_age <= MAX_MAX_AGE);
    for mx in &policy.mx {
        assert!(!mx.domain.is_empty());
        assert!(!mx.domain.starts_with('*'), "{:?}", mx.domain);
        assert_eq!(mx.domain, mx.domain.to_ascii_lowercase());
    }
    for line in &policy.lines {
        assert!(!line.contains('\n') && !line.contains('\r'), "{line:?}");
    }
});
