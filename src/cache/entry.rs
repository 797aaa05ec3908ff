//! What the cache knows about one domain. Times are absolute (seconds since the Unix
//! epoch) because entries outlive the process.

use serde::{Deserialize, Serialize};

pub use crate::mtasts::discovery::FailureClass;
use crate::mtasts::policy::Policy;

/// A policy as cached, with the times that govern it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedPolicy {
    pub policy: Policy,
    /// The TXT id the policy was fetched under.
    pub id: String,
    pub fetched_at: u64,
    /// fetched_at + max_age: after this the policy no longer applies (RFC 8461 §3.2).
    pub expires_at: u64,
}

/// A failed discovery step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub at: u64,
    /// The TXT id being fetched, if any.
    pub id: Option<String>,
    pub class: FailureClass,
    pub message: String,
}

/// Everything known about one domain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub policy: Option<CachedPolicy>,
    /// "No policy" is known until this time (negative cache).
    pub no_policy_until: Option<u64>,
    /// When the TXT record was last looked up.
    pub last_check: u64,
    /// The last failed policy fetch; it drives the per-id back-off (RFC 8461 §3.3).
    pub failure: Option<Failure>,
    /// The last failed TXT lookup, kept apart so that it never erases a fetch
    /// failure's back-off. Left out of the stored form when empty (nearly always):
    /// at 10^6 entries a `null` here costs ~29 MiB on disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txt_failure: Option<Failure>,
}

/// The times and facts about an entry that walks of the whole store need (refresher,
/// gauges, checkpoint), without the policy's text: a store can produce it far more
/// cheaply than a whole [`Entry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outline {
    pub policy: Option<PolicyOutline>,
    pub no_policy_until: Option<u64>,
    /// When the last failed fetch happened (it drives the back-off).
    pub failure_at: Option<u64>,
    /// Whether any failure (fetch or TXT) is on record.
    pub failed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyOutline {
    pub mode: crate::mtasts::policy::Mode,
    pub max_age: u64,
    pub fetched_at: u64,
    pub expires_at: u64,
}

impl Outline {
    /// The policy, if it is still valid at `now`.
    pub fn valid_policy(&self, now: u64) -> Option<&PolicyOutline> {
        self.policy.as_ref().filter(|p| p.expires_at > now)
    }

    /// Whether the entry still says anything at `now`.
    pub fn is_live(&self, now: u64) -> bool {
        self.valid_policy(now).is_some() || self.no_policy_until.is_some_and(|t| t > now)
    }
}

impl From<&Entry> for Outline {
    fn from(e: &Entry) -> Self {
        Outline {
            policy: e.policy.as_ref().map(|p| PolicyOutline {
                mode: p.policy.mode,
                max_age: p.policy.max_age,
                fetched_at: p.fetched_at,
                expires_at: p.expires_at,
            }),
            no_policy_until: e.no_policy_until,
            failure_at: e.failure.as_ref().map(|f| f.at),
            failed: e.last_failure().is_some(),
        }
    }
}

impl Entry {
    /// The policy, if it is still valid at `now`.
    pub fn valid_policy(&self, now: u64) -> Option<&CachedPolicy> {
        self.policy.as_ref().filter(|p| p.expires_at > now)
    }

    /// Whether "no policy" is known at `now`.
    pub fn is_negative(&self, now: u64) -> bool {
        self.no_policy_until.is_some_and(|t| t > now)
    }

    /// Whether the entry still says anything at `now`.
    pub fn is_live(&self, now: u64) -> bool {
        self.valid_policy(now).is_some() || self.is_negative(now)
    }

    /// The most recent failure of either kind, for display.
    pub fn last_failure(&self) -> Option<&Failure> {
        match (&self.failure, &self.txt_failure) {
            (Some(f), Some(t)) => Some(if t.at > f.at { t } else { f }),
            (f, t) => f.as_ref().or(t.as_ref()),
        }
    }
}

/// In the bounded set of domains without a policy, an entry lasts while it says anything.
impl crate::bounded::Expiring for Entry {
    fn is_live(&self, now: u64) -> bool {
        Entry::is_live(self, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_classes_keep_their_stored_labels() {
        for class in [
            FailureClass::Txt,
            FailureClass::Dns,
            FailureClass::PrivateAddress,
            FailureClass::HttpStatus,
            FailureClass::TooLarge,
        ] {
            let json = serde_json::to_string(&class).unwrap();
            assert_eq!(json, format!("\"{}\"", class.as_str()));
            assert_eq!(serde_json::from_str::<FailureClass>(&json).unwrap(), class);
        }
        assert_eq!(
            serde_json::from_str::<FailureClass>("\"quantum\"").unwrap(),
            FailureClass::Other
        );
    }

    #[test]
    fn entries_written_before_txt_failure_existed_still_load() {
        let old = r#"{"policy":null,"no_policy_until":500,"last_check":400,
            "failure":{"at":400,"id":"1","class":"tls","message":"bad cert"}}"#;
        let e: Entry = serde_json::from_str(old).unwrap();
        assert_eq!(e.failure.clone().unwrap().class, FailureClass::Tls);
        assert_eq!(e.txt_failure, None);
        // An empty txt_failure is not written, so the stored form stays as it was.
        let stored = serde_json::to_string(&e).unwrap();
        assert!(!stored.contains("txt_failure"), "{stored}");
        assert_eq!(serde_json::from_str::<Entry>(&stored).unwrap(), e);
    }
}
