//! The reply renderer with every zone option, TLSRPT attributes included, on any
//! policy the parser accepts: the reply is `NOTFOUND ` or `OK secure match=...`, never
//! longer than Postfix's 100,000-byte limit, carries no line breaks or NULs, and every
//! `{`/`}` in it is attribute syntax, never text from the policy.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mta_stsd::mtasts::policy::parse_policy;
use mta_stsd::answer::{RenderOptions, Reply, render};
use mta_stsd::protocol::codec::MAX_REPLY;

const OPEN: &str = " { policy_string = ";
const CLOSE: &str = " }";

fuzz_target!(|data: &[u8]| {
    let Ok(policy) = parse_policy(data) else {
        return;
    };
    for variant in 0..8u8 {
        let zone = RenderOptions {
            strict_testing: variant & 1 != 0,
            require_sni: variant & 2 != 0,
            tlsrpt: variant & 4 != 0,
        };
        let rendered = render("example.com", Some(&policy), zone);
        let wire = rendered.reply.wire();
        assert!(wire.len() <= MAX_REPLY, "reply of {} bytes", wire.len());
        assert!(!wire.contains(['\n', '\r', '\0']), "{wire:?}");
        match &rendered.reply {
            Reply::NotFound => assert_eq!(wire, "NOTFOUND "),
            Reply::Secure(_) => {
                assert!(wire.starts_with("OK secure match="), "{wire:?}");
                let match_arg = wire["OK secure match=".len()..]
                    .split(' ')
                    .next()
                    .unwrap_or_default();
                assert!(!match_arg.is_empty(), "empty match= in {wire:?}");
            }
            // The MTA-STS renderer never gives DANE answers.
            other => panic!("unexpected reply {other:?}"),
        }
        // Remove each attribute wrapper; no brace may remain.
        let mut rest = wire;
        let mut stripped = String::new();
        while let Some(at) = rest.find(OPEN) {
            stripped.push_str(&rest[..at]);
            let after = &rest[at + OPEN.len()..];
            let end = after.find(CLOSE).expect("attribute closed");
            let value = &after[..end];
            assert!(!value.contains(['{', '}']), "{value:?}");
            rest = &after[end + CLOSE.len()..];
        }
        stripped.push_str(rest);
        assert!(!stripped.contains(['{', '}']), "{wire:?}");
        if !zone.tlsrpt {
            assert!(!wire.contains('{'));
        }
    }
});
