//! Key normalisation (what Postfix asks about becomes the domain the cache is keyed
//! by): never a panic; a normalised name is a lower-case A-label name without a
//! trailing dot, and normalising it again gives it back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mta_stsd::mtasts::domain::normalize_key;

fuzz_target!(|data: &[u8]| {
    let Ok(key) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(domain) = normalize_key(key) {
        assert!(!domain.is_empty());
        assert!(domain.len() <= 253, "{domain:?}");
        assert!(!domain.ends_with('.'), "{domain:?}");
        assert!(
            domain
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.' || b == b'_'),
            "{domain:?}"
        );
        assert_eq!(normalize_key(&domain).as_deref(), Ok(domain.as_str()));
    }
});
