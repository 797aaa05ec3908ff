//! Decoding a cache entry read from disk, where anything may be: never a panic; a
//! decoded entry in the binary form encodes and decodes to itself (one in the JSON
//! form of earlier versions after one normalisation: the binary form keeps a policy
//! as its lines, so the policy becomes what its lines say); and the cache rules and
//! the renderer take it (hostile timestamps included) without overflow or panic. The
//! outline read for walks of the store never panics, and agrees with the whole entry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mta_stsd::cache::lifecycle::{Rules, is_due, on_lookup, refresh_due_at};
use mta_stsd::cache::entry::Outline;
use mta_stsd::cache::store::format::{decode_entry, decode_outline, encode_entry};
use mta_stsd::config::CacheConfig;
use mta_stsd::answer::render::{Format, RenderOptions, mta_sts};

fuzz_target!(|data: &[u8]| {
    let outline = decode_outline("example.com", data);
    let Ok(entry) = decode_entry("example.com", data) else {
        return;
    };
    // Whatever reads whole reads the same in outline.
    assert_eq!(outline.expect("an entry that decodes has an outline"), Outline::from(&entry));
    let legacy = data.first() == Some(&b'{');
    let bytes = encode_entry(&entry).expect("a decoded entry encodes");
    match decode_entry("example.com", &bytes) {
        Ok(again) => {
            if !legacy {
                assert_eq!(again, entry);
            }
            let bytes = encode_entry(&again).expect("encodes");
            assert_eq!(decode_entry("example.com", &bytes).expect("re-decodes"), again);
        }
        // A JSON policy whose lines the parser rejects; the migration keeps such an
        // entry in JSON.
        Err(_) => assert!(legacy, "a binary entry must re-decode"),
    }
    let rules = Rules::from_config(&CacheConfig::default());
    for now in [0, 1_700_000_000, u64::MAX / 2, u64::MAX] {
        let _ = on_lookup(Some(&entry), now, &rules);
        let _ = refresh_due_at("example.com", &entry, now, &rules);
        let _ = is_due("example.com", &entry, now, &rules);
        let _ = entry.is_live(now);
        let _ = entry.is_negative(now);
        if let Some(p) = entry.valid_policy(now) {
            for format in Format::ALL {
                let zone = RenderOptions { format, tlsrpt: true, ..RenderOptions::default() };
                let _ = mta_sts("example.com", Some(&p.policy), zone);
            }
        }
    }
});
