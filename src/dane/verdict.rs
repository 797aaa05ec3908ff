//! The DANE verdict for a destination domain, from DNSSEC facts (pure: no I/O, no
//! clock). RFC 7672 in brief:
//!
//! - DANE applies when the MX RRset is DNSSEC-secure (§2.2.1), or, for a domain with
//!   no MX, when its own address records are (the implicit MX, §2.2.2).
//! - Each MX host whose address records are secure has its TLSA RRset at
//!   `_25._tcp.HOST` (§2.2.2, §3). SMTP uses only usages DANE-TA(2) and DANE-EE(3),
//!   selectors 0/1 and matching types 0/1/2 (§3.1); other records are unusable.
//! - A bogus TLSA RRset, or a failed TLSA lookup, for a secure host must not be
//!   treated as "no TLSA" (§2.2): that host cannot be used now, and it must never be
//!   downgraded. Postfix's DANE skips such a host and tries the others.
//! - A bogus (or failed) MX lookup leaves nothing safe to try (§2.1.1: bogus must never
//!   be treated as insecure): defer.
//!
//! The verdict decides what the daemon answers instead of the MTA-STS policy: RFC 8461
//! §2 forbids letting MTA-STS override DANE, and a policy-table answer replaces
//! Postfix's own DANE level, so a DANE domain must be answered `dane` or `dane-only`.

use serde::{Deserialize, Serialize};

/// The DNSSEC status of one lookup (RFC 4035 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// Validated from the trust anchor.
    Secure,
    /// Provably unsigned (an insecure delegation on the way).
    Insecure,
    /// Signed, but validation failed (bad or expired signatures, missing RRSIGs...).
    Bogus,
    /// The lookup failed (timeout, SERVFAIL): nothing is known.
    Indeterminate,
}

impl Security {
    pub fn as_str(self) -> &'static str {
        match self {
            Security::Secure => "secure",
            Security::Insecure => "insecure",
            Security::Bogus => "bogus",
            Security::Indeterminate => "indeterminate",
        }
    }
}

/// One TLSA record's parameters (RFC 6698 §2.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tlsa {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    /// Length of the certificate association data.
    pub data_len: usize,
}

impl Tlsa {
    /// Usable for SMTP (RFC 7672 §3.1): DANE-TA(2) or DANE-EE(3), selector
    /// Cert(0) or SPKI(1), and matching Full(0) with data, SHA2-256(1) with 32 bytes,
    /// or SHA2-512(2) with 64 bytes.
    pub fn usable(&self) -> bool {
        matches!(self.usage, 2 | 3)
            && matches!(self.selector, 0 | 1)
            && match self.matching {
                0 => self.data_len > 0,
                1 => self.data_len == 32,
                2 => self.data_len == 64,
                _ => false,
            }
    }
}

/// What the TLSA lookup for one MX host found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum TlsaFacts {
    /// Not looked up: the host's addresses are not secure, so DANE does not apply
    /// to it (RFC 7672 §2.2.2).
    NotApplicable,
    /// No TLSA records (secure or insecure denial), or an insecure RRset.
    None,
    /// A secure TLSA RRset.
    Records { records: Vec<Tlsa> },
    /// The RRset is bogus.
    Bogus,
    /// The lookup failed.
    Failed,
}

/// One MX host and what was found about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    pub name: String,
    /// The DNSSEC status of its address records.
    pub address: Security,
    pub tlsa: TlsaFacts,
}

/// What the MX lookup (or, without MX, the domain's own address lookup) found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum MxFacts {
    /// MX hosts (or the domain itself as the implicit MX) with the RRset's status.
    Hosts {
        security: Security,
        implicit: bool,
        hosts: Vec<HostFacts>,
    },
    /// The domain has no MX and no address records, or does not exist.
    NoDomain,
    /// The MX RRset (or the implicit MX's addresses) is bogus.
    Bogus,
    /// The lookup failed.
    Failed,
}

/// How one host counts for the domain's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostRole {
    /// Postfix's DANE must handle it: usable TLSA, or a bogus or failed TLSA lookup
    /// (never downgraded), or addresses that are bogus (never used) or could not be
    /// looked up (TLSA records cannot be ruled out).
    Dane,
    /// Secure TLSA RRset with only unusable records (Postfix: mandatory TLS,
    /// unauthenticated).
    Unusable,
    /// No TLSA, or DANE does not apply to it.
    NoTlsa,
}

pub fn host_role(host: &HostFacts) -> HostRole {
    match (host.address, &host.tlsa) {
        (Security::Bogus | Security::Indeterminate, _) => HostRole::Dane,
        (_, TlsaFacts::Bogus | TlsaFacts::Failed) => HostRole::Dane,
        (Security::Secure, TlsaFacts::Records { records }) => {
            if records.iter().any(Tlsa::usable) {
                HostRole::Dane
            } else {
                HostRole::Unusable
            }
        }
        _ => HostRole::NoTlsa,
    }
}

/// The answer the verdict calls for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Every MX host is a DANE host: `OK dane-only`.
    DaneOnly,
    /// Some hosts have TLSA records: `OK dane` (Postfix decides per host).
    Dane,
    /// DANE does not apply: the MTA-STS answer stands.
    NoDane,
    /// Defer: `TEMP reason`.
    Temp { reason: String },
}

impl Verdict {
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::DaneOnly => "dane_only",
            Verdict::Dane => "dane",
            Verdict::NoDane => "no_dane",
            Verdict::Temp { .. } => "temp",
        }
    }
}

/// Decides the verdict from the MX facts.
pub fn verdict(mx: &MxFacts) -> Verdict {
    match mx {
        MxFacts::Bogus => Verdict::Temp {
            reason: "DNSSEC validation of the MX records failed (bogus)".into(),
        },
        MxFacts::Failed => Verdict::Temp {
            reason: "MX lookup failed; cannot rule out DANE".into(),
        },
        MxFacts::NoDomain => Verdict::NoDane,
        MxFacts::Hosts {
            security, hosts, ..
        } => {
            if *security != Security::Secure || hosts.is_empty() {
                return Verdict::NoDane;
            }
            let roles: Vec<HostRole> = hosts.iter().map(host_role).collect();
            if roles.iter().all(|r| *r == HostRole::Dane) {
                Verdict::DaneOnly
            } else if roles.iter().any(|r| *r != HostRole::NoTlsa) {
                Verdict::Dane
            } else {
                Verdict::NoDane
            }
        }
    }
}

/// How long a verdict may be reused: the smallest TTL of the RRsets it rests on,
/// clamped to [60 s, 1 h]; 60 s when anything was bogus or failed, so a repaired
/// zone is seen soon.
pub fn verdict_ttl(mx: &MxFacts, min_rrset_ttl: Option<u32>) -> u64 {
    const FLOOR: u64 = 60;
    const CEILING: u64 = 3600;
    let troubled = match mx {
        MxFacts::Bogus | MxFacts::Failed => true,
        MxFacts::NoDomain => false,
        MxFacts::Hosts { hosts, .. } => hosts.iter().any(|h| {
            matches!(h.address, Security::Bogus | Security::Indeterminate)
                || matches!(h.tlsa, TlsaFacts::Bogus | TlsaFacts::Failed)
        }),
    };
    if troubled {
        return FLOOR;
    }
    u64::from(min_rrset_ttl.unwrap_or(0)).clamp(FLOOR, CEILING)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usable() -> Tlsa {
        Tlsa {
            usage: 3,
            selector: 1,
            matching: 1,
            data_len: 32,
        }
    }

    fn host(address: Security, tlsa: TlsaFacts) -> HostFacts {
        HostFacts {
            name: "mx.example".into(),
            address,
            tlsa,
        }
    }

    fn secure_mx(hosts: Vec<HostFacts>) -> MxFacts {
        MxFacts::Hosts {
            security: Security::Secure,
            implicit: false,
            hosts,
        }
    }

    fn records(r: Vec<Tlsa>) -> TlsaFacts {
        TlsaFacts::Records { records: r }
    }

    #[test]
    fn usable_records() {
        assert!(usable().usable());
        for (u, s, m, len, ok) in [
            (2, 0, 0, 500, true),
            (2, 1, 2, 64, true),
            (0, 1, 1, 32, false),
            (1, 1, 1, 32, false),
            (3, 2, 1, 32, false),
            (3, 1, 3, 32, false),
            (3, 1, 1, 31, false),
            (3, 1, 2, 32, false),
            (3, 0, 0, 0, false),
        ] {
            let t = Tlsa {
                usage: u,
                selector: s,
                matching: m,
                data_len: len,
            };
            assert_eq!(t.usable(), ok, "{t:?}");
        }
    }

    #[test]
    fn every_host_with_usable_tlsa_is_dane_only() {
        let mx = secure_mx(vec![
            host(Security::Secure, records(vec![usable()])),
            host(Security::Secure, records(vec![usable()])),
        ]);
        assert_eq!(verdict(&mx), Verdict::DaneOnly);
    }

    #[test]
    fn some_hosts_with_tlsa_is_dane() {
        let mx = secure_mx(vec![
            host(Security::Secure, records(vec![usable()])),
            host(Security::Secure, TlsaFacts::None),
        ]);
        assert_eq!(verdict(&mx), Verdict::Dane);
        // Only unusable records still make Postfix's DANE the right judge.
        let unusable = Tlsa {
            usage: 1,
            ..usable()
        };
        let mx = secure_mx(vec![host(Security::Secure, records(vec![unusable]))]);
        assert_eq!(verdict(&mx), Verdict::Dane);
    }

    #[test]
    fn no_tlsa_or_insecure_leaves_mta_sts() {
        let mx = secure_mx(vec![host(Security::Secure, TlsaFacts::None)]);
        assert_eq!(verdict(&mx), Verdict::NoDane);
        let mx = secure_mx(vec![host(Security::Insecure, TlsaFacts::NotApplicable)]);
        assert_eq!(verdict(&mx), Verdict::NoDane);
        let insecure = MxFacts::Hosts {
            security: Security::Insecure,
            implicit: false,
            hosts: vec![host(Security::Insecure, TlsaFacts::NotApplicable)],
        };
        assert_eq!(verdict(&insecure), Verdict::NoDane);
        assert_eq!(verdict(&MxFacts::NoDomain), Verdict::NoDane);
    }

    #[test]
    fn broken_tlsa_is_never_a_downgrade() {
        // One host's TLSA is bogus, the other has none: Postfix's DANE skips the
        // broken host (dane), it is not handed to MTA-STS.
        let mx = secure_mx(vec![
            host(Security::Secure, TlsaFacts::Bogus),
            host(Security::Secure, TlsaFacts::None),
        ]);
        assert_eq!(verdict(&mx), Verdict::Dane);
        let mx = secure_mx(vec![host(Security::Secure, TlsaFacts::Failed)]);
        assert_eq!(verdict(&mx), Verdict::DaneOnly);
        let mx = secure_mx(vec![host(Security::Bogus, TlsaFacts::NotApplicable)]);
        assert_eq!(verdict(&mx), Verdict::DaneOnly);
        // A host whose addresses could not be looked up may have TLSA records.
        let mx = secure_mx(vec![
            host(Security::Indeterminate, TlsaFacts::NotApplicable),
            host(Security::Secure, TlsaFacts::None),
        ]);
        assert_eq!(verdict(&mx), Verdict::Dane);
    }

    #[test]
    fn bogus_or_failed_mx_defers() {
        assert!(matches!(verdict(&MxFacts::Bogus), Verdict::Temp { .. }));
        assert!(matches!(verdict(&MxFacts::Failed), Verdict::Temp { .. }));
    }

    #[test]
    fn ttls_are_clamped_and_short_when_troubled() {
        let ok = secure_mx(vec![host(Security::Secure, records(vec![usable()]))]);
        assert_eq!(verdict_ttl(&ok, Some(10)), 60);
        assert_eq!(verdict_ttl(&ok, Some(300)), 300);
        assert_eq!(verdict_ttl(&ok, Some(86_400)), 3600);
        assert_eq!(verdict_ttl(&ok, None), 60);
        assert_eq!(verdict_ttl(&MxFacts::Bogus, Some(3000)), 60);
        let broken = secure_mx(vec![host(Security::Secure, TlsaFacts::Bogus)]);
        assert_eq!(verdict_ttl(&broken, Some(3000)), 60);
    }
}
