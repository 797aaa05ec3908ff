//! What mta-stsd knows that Postfix cannot: when it answered Postfix "no policy"
//! because the domain's `_mta-sts` TXT record was there but the policy could not be
//! used — not fetched, invalid, or served with a bad certificate. Postfix then sends
//! the mail under no policy and reports the session as `no-policy-found`. RFC 8460
//! §4.3 has result types for exactly this (`sts-policy-fetch-error`,
//! `sts-policy-invalid`, `sts-webpki-invalid`); such a session is reported under the
//! domain's STS policy with that result instead. The session is moved, not added, so
//! nothing is counted twice, and only the report changes: the delivery went as
//! RFC 8461 says it must (pure).

use serde_json::{Value, json};

use super::datagram::PolicyResult;
use crate::mtasts::discovery::FailureClass;

/// Why a published policy could not be used (RFC 8460 §4.3.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyFailure {
    /// `sts-policy-fetch-error`: the policy host could not be reached or did not
    /// answer 200.
    FetchError,
    /// `sts-policy-invalid`: it answered something that is not a valid policy.
    Invalid,
    /// `sts-webpki-invalid`: its certificate did not validate.
    WebPki,
}

impl PolicyFailure {
    /// libtlsrpt's code for the result type (see [`super::datagram::result_type_name`]).
    pub fn code(self) -> u64 {
        match self {
            PolicyFailure::FetchError => 301,
            PolicyFailure::Invalid => 302,
            PolicyFailure::WebPki => 303,
        }
    }

    /// The result type of a failed policy fetch's class; `None` for a failed TXT
    /// lookup (then nobody knows whether there is a policy).
    pub fn of(class: FailureClass) -> Option<PolicyFailure> {
        Some(match class {
            FailureClass::Txt | FailureClass::Other => return None,
            FailureClass::Tls => PolicyFailure::WebPki,
            FailureClass::Parse | FailureClass::ContentType | FailureClass::TooLarge => {
                PolicyFailure::Invalid
            }
            FailureClass::Dns
            | FailureClass::PrivateAddress
            | FailureClass::Connect
            | FailureClass::Timeout
            | FailureClass::HttpStatus
            | FailureClass::Http => PolicyFailure::FetchError,
        })
    }
}

/// The longest error text put in a report's `additional-information`.
const MAX_INFO: usize = 200;

/// The session `result` of a delivery to `domain`, reported by Postfix as
/// `no-policy-found`, as a failure of the domain's STS policy; `None` when Postfix
/// reported it under a policy (it then applied one, and its report stands).
pub fn reclassify(
    result: &PolicyResult,
    domain: &str,
    failure: PolicyFailure,
    message: &str,
) -> Option<PolicyResult> {
    let policy: Value = serde_json::from_str(&result.policy).ok()?;
    if policy.get("policy-type").and_then(Value::as_u64) != Some(9) {
        return None;
    }
    let mut info: String = message.chars().filter(|c| !c.is_control()).collect();
    if info.len() > MAX_INFO {
        let mut end = MAX_INFO;
        while !info.is_char_boundary(end) {
            end -= 1;
        }
        info.truncate(end);
    }
    Some(PolicyResult {
        policy: json!({"policy-domain": domain, "policy-type": 2}).to_string(),
        failed: true,
        // The reason is free text: RFC 8460 §4.3 `failure-reason-code`, not
        // `additional-information` (which §4.4 defines as a URI).
        details: vec![json!({"c": failure.code(), "f": info}).to_string()],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tlsrpt::datagram::parse;

    #[test]
    fn a_no_policy_session_becomes_a_policy_failure_and_others_stay() {
        let d = parse(br#"{"d":"x.test","pr":"v=TLSRPTv1;rua=mailto:r@x.test","policies":[{"policy-type":9,"f":0}]}"#).unwrap();
        let moved = reclassify(
            &d.results[0],
            "x.test",
            PolicyFailure::WebPki,
            "tls: invalid peer certificate\nsecond line",
        )
        .unwrap();
        assert!(moved.failed);
        assert_eq!(
            moved.policy,
            r#"{"policy-domain":"x.test","policy-type":2}"#
        );
        assert_eq!(
            moved.details,
            [r#"{"c":303,"f":"tls: invalid peer certificatesecond line"}"#]
        );

        let sts = parse(br#"{"d":"x.test","pr":"v=TLSRPTv1;","policies":[{"policy-type":2,"policy-domain":"x.test","f":0}]}"#).unwrap();
        assert!(reclassify(&sts.results[0], "x.test", PolicyFailure::FetchError, "").is_none());
    }

    #[test]
    fn failure_classes_map_to_rfc_8460_result_types() {
        assert_eq!(
            PolicyFailure::of(FailureClass::Tls),
            Some(PolicyFailure::WebPki)
        );
        assert_eq!(
            PolicyFailure::of(FailureClass::Parse),
            Some(PolicyFailure::Invalid)
        );
        assert_eq!(
            PolicyFailure::of(FailureClass::HttpStatus),
            Some(PolicyFailure::FetchError)
        );
        assert_eq!(PolicyFailure::of(FailureClass::Txt), None);
    }
}
