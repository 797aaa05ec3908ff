//! DANE (RFC 7672) for each MX host, in `mta-stsd check` (pure): whether it applies,
//! from the DANE module's validated facts, and whether a published TLSA record matches
//! the certificate chain the host presented.

use crate::dane::verdict::{HostFacts, MxFacts, Security, TlsaFacts};

use super::probe::CertFacts;
use crate::findings::Finding;

/// A TLSA record as published (RFC 6698 §2.1), its data included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsaRecord {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    pub data: Vec<u8>,
}

/// Whether `record` matches the presented chain (DER, leaf first): DANE-EE(3) the
/// leaf, DANE-TA(2) a certificate above it; selector 0 the whole certificate, 1 its
/// SubjectPublicKeyInfo; matching 0 exact, 1 SHA-256, 2 SHA-512 (RFC 7672 §3.1).
pub fn tlsa_matches(record: &TlsaRecord, chain: &[Vec<u8>]) -> bool {
    let candidates: Vec<&Vec<u8>> = match record.usage {
        3 => chain.iter().take(1).collect(),
        2 => chain.iter().skip(1).collect(),
        _ => return false,
    };
    candidates.into_iter().any(|cert| {
        let selected: &[u8] = match record.selector {
            0 => cert,
            1 => match super::probe::spki(cert) {
                Some(s) => s,
                None => return false,
            },
            _ => return false,
        };
        match record.matching {
            0 => selected == record.data.as_slice(),
            1 => ring::digest::digest(&ring::digest::SHA256, selected).as_ref() == record.data,
            2 => ring::digest::digest(&ring::digest::SHA512, selected).as_ref() == record.data,
            _ => false,
        }
    })
}

/// DANE for one MX host (RFC 7672), when this daemon looks at DANE: whether it
/// applies (a DNSSEC-signed MX RRset and host), and whether a TLSA record matches the
/// certificate the host presented. Postfix's DANE, not the MTA-STS policy, then
/// decides delivery.
pub fn dane(
    host: &str,
    mx: &MxFacts,
    records: &[TlsaRecord],
    presented: Option<&CertFacts>,
) -> Option<Finding> {
    let facts = match host_facts(host, mx) {
        Ok(f) => f,
        Err(line) => return line,
    };
    Some(match &facts.tlsa {
        TlsaFacts::NotApplicable => Finding::ok(ID, "its addresses are not DNSSEC-signed: DANE does not apply").about(host),
        TlsaFacts::None => Finding::ok(ID, "no TLSA records: DANE does not apply (MTA-STS does)").about(host),
        TlsaFacts::Bogus => Finding::problem(ID, "its TLSA RRset is DNSSEC-bogus: Postfix's DANE defers the mail", "fix the TLSA records' signatures").about(host),
        TlsaFacts::Failed => Finding::warning(ID, "the TLSA lookup failed", "check the zone's name servers").about(host),
        TlsaFacts::Records { .. } => match presented {
            None => Finding::ok(ID, "secure TLSA records (the certificate was not seen to compare)").about(host),
            Some(cert) if records.iter().any(|r| tlsa_matches(r, &cert.chain)) => Finding::ok(ID, "secure TLSA records; one matches the presented certificate").about(host),
            Some(_) => Finding::problem(ID, "secure TLSA records, none matching the presented certificate: Postfix's DANE refuses delivery", "publish a TLSA record for the current certificate (or key) before rolling it").about(host),
        },
    })
}

const ID: &str = "mx-dane";

/// What DANE's lookup found for `host`, if DANE can apply to it at all; otherwise the
/// finding about the MX RRset (none when the host is not among the MX hosts looked at).
fn host_facts<'a>(host: &str, mx: &'a MxFacts) -> Result<&'a HostFacts, Option<Finding>> {
    let hosts = match mx {
        MxFacts::Bogus => {
            return Err(Some(
                Finding::problem(
                    ID,
                    "the MX RRset is DNSSEC-bogus: Postfix defers the mail",
                    "fix the zone's DNSSEC signatures",
                )
                .about(host),
            ));
        }
        MxFacts::Failed => {
            return Err(Some(
                Finding::warning(
                    ID,
                    "the DNSSEC lookup of the MX RRset failed",
                    "check the zone's name servers",
                )
                .about(host),
            ));
        }
        MxFacts::NoDomain => return Err(None),
        MxFacts::Hosts { security, .. } if *security != Security::Secure => {
            return Err(Some(
                Finding::ok(
                    ID,
                    "the MX RRset is not DNSSEC-signed: DANE does not apply (MTA-STS does)",
                )
                .about(host),
            ));
        }
        MxFacts::Hosts { hosts, .. } => hosts,
    };
    hosts.iter().find(|h| h.name == host).ok_or(None)
}
