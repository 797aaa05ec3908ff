//! The reply renderers with every zone option, TLSRPT attributes included, on any
//! policy the parser accepts. Postfix's reply is `NOTFOUND ` or `OK secure
//! match=...`, never longer than the socketmap reply limit, carries no line breaks or
//! NULs, and every `{`/`}` in it is attribute syntax, never text from the policy.
//! Exim's is `mode=none` or `mode=secure hosts=LIST` with a LIST Exim's `${extract}`
//! reads whole: no white space, quotes or backslashes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mta_stsd::mtasts::policy::parse_policy;
use mta_stsd::answer::Kind;
use mta_stsd::answer::render::{Format, RenderOptions, mta_sts};
use mta_stsd::protocol::codec::MAX_REPLY;

const OPEN: &str = " { policy_string = ";
const CLOSE: &str = " }";

fuzz_target!(|data: &[u8]| {
    let Ok(policy) = parse_policy(data) else {
        return;
    };
    for variant in 0..8u8 {
        let exim = RenderOptions {
            format: Format::Exim,
            strict_testing: variant & 1 != 0,
            require_sni: variant & 2 != 0,
            tlsrpt: variant & 4 != 0,
        };
        let rendered = mta_sts("example.com", Some(&policy), exim);
        let wire = rendered.reply.wire();
        assert!(wire.len() <= MAX_REPLY, "reply of {} bytes", wire.len());
        match rendered.reply.kind() {
            Kind::NotFound => assert_eq!(wire, "mode=none"),
            Kind::Secure => {
                let hosts = wire.strip_prefix("mode=secure hosts=").expect("exim answer");
                assert!(!hosts.is_empty(), "{wire:?}");
                assert!(!hosts.contains([' ', '\t', '\n', '\r', '\0', '"', '\\']), "{wire:?}");
            }
            other => panic!("unexpected reply {other:?}"),
        }

        let zone = RenderOptions {
            format: Format::Postfix,
            ..exim
        };
        let rendered = mta_sts("example.com", Some(&policy), zone);
        let wire = rendered.reply.wire();
        assert!(wire.len() <= MAX_REPLY, "reply of {} bytes", wire.len());
        assert!(!wire.contains(['\n', '\r', '\0']), "{wire:?}");
        match rendered.reply.kind() {
            Kind::NotFound => assert_eq!(wire, "NOTFOUND "),
            Kind::Secure => {
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
