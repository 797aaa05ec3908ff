//! The DNSSEC lookups behind a DANE verdict (RFC 7672 §2.2): the MX RRset (or the
//! implicit MX), each host's address records, and, for hosts with secure addresses,
//! their `_25._tcp.HOST` TLSA RRset. The resolver validates every answer itself from
//! the trust anchor (hickory's DNSSEC validator); the DNS servers it asks only have to
//! pass DNSSEC records through.

use std::sync::{Arc, RwLock};

use futures::future::join_all;
use hickory_resolver::TokioResolver;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::dnssec::{Proof, TrustAnchors};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, Record, RecordType};

use super::ad_client::AdClient;
use super::anchor::{AnchorFile, select_keys};
use super::verdict::{HostFacts, MxFacts, Security, Tlsa, TlsaFacts};
use crate::config::ResolverConfig;
use crate::net::SetupError;
use crate::net::resolver::build_resolver;

/// At most this many MX hosts, the most preferred, are examined: a hostile zone could
/// list hundreds, each costing three lookups.
pub const MAX_HOSTS: usize = 16;

/// What was found, and the smallest TTL among the RRsets used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub mx: MxFacts,
    pub min_ttl: Option<u32>,
}

impl Found {
    /// Facts with no TTL to remember them by.
    fn only(mx: MxFacts) -> Self {
        Self { mx, min_ttl: None }
    }
}

/// Who validates: the daemon itself, or a validating resolver on loopback.
#[derive(Clone)]
enum Backend {
    Internal(Box<TokioResolver>),
    Resolver(AdClient),
    /// The daemon itself, once the root DNSKEYs that the anchor file's DS records
    /// name have been fetched (by the self-check, which runs before DANE is used).
    FromDs(Arc<DsAnchored>),
}

struct DsAnchored {
    cfg: ResolverConfig,
    file: AnchorFile,
    resolver: RwLock<Option<Box<TokioResolver>>>,
}

/// A validating resolver for DANE lookups.
#[derive(Clone)]
pub struct DaneLookup {
    backend: Backend,
}

impl std::fmt::Debug for DaneLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaneLookup").finish_non_exhaustive()
    }
}

/// One lookup's outcome, reduced to what the rules need.
enum Answer {
    Records {
        security: Security,
        records: Vec<Record>,
        ttl: Option<u32>,
    },
    /// NXDOMAIN.
    NoDomain,
    /// The name exists without records of this type.
    NoData,
    Bogus,
    Failed,
}

/// `name` fully qualified (the root stays `.`): lookups never append search domains.
fn fqdn(name: &str) -> String {
    if name == "." {
        ".".to_owned()
    } else {
        format!("{}.", name.trim_end_matches('.'))
    }
}

fn security_of(records: &[Record]) -> Security {
    let mut all_secure = true;
    for r in records {
        match r.proof {
            Proof::Secure => {}
            Proof::Bogus => return Security::Bogus,
            Proof::Insecure => all_secure = false,
            Proof::Indeterminate => return Security::Indeterminate,
        }
    }
    if all_secure && !records.is_empty() {
        Security::Secure
    } else {
        Security::Insecure
    }
}

impl DaneLookup {
    /// A resolver over `[resolver]`'s servers that validates from `anchors`.
    pub fn new(cfg: &ResolverConfig, anchors: Arc<TrustAnchors>) -> Result<Self, SetupError> {
        Ok(Self {
            backend: Backend::Internal(Box::new(build_resolver(cfg, Some(anchors))?)),
        })
    }

    /// Lookups through the validating resolvers `cfg.nameservers` (loopback), trusting
    /// their AD bit.
    pub fn trusting_ad(cfg: &ResolverConfig) -> Self {
        Self {
            backend: Backend::Resolver(AdClient::new(
                cfg.nameservers.clone(),
                cfg.timeout,
                cfg.attempts.get(),
            )),
        }
    }

    /// Validation from trust anchors given as DS records (and maybe DNSKEYs): the
    /// root's keys are fetched and selected by the self-check ([`Self::root_security`]).
    pub fn from_ds(cfg: &ResolverConfig, file: AnchorFile) -> Self {
        Self {
            backend: Backend::FromDs(Arc::new(DsAnchored {
                cfg: cfg.clone(),
                file,
                resolver: RwLock::new(None),
            })),
        }
    }

    async fn lookup(&self, name: &str, rtype: RecordType) -> Answer {
        match &self.backend {
            Backend::Internal(resolver) => Self::validate(resolver, name, rtype).await,
            Backend::Resolver(client) => Self::ask_resolver(client, name, rtype).await,
            Backend::FromDs(ds) => {
                let resolver = crate::locks::read(&ds.resolver).clone();
                match resolver {
                    Some(resolver) => Self::validate(&resolver, name, rtype).await,
                    None => Answer::Failed,
                }
            }
        }
    }

    /// Fetches the root's DNSKEY RRset and keeps, as trust anchors, the keys that the
    /// DS records name; then validation works as with DNSKEY anchors.
    async fn bootstrap(ds: &DsAnchored) -> Result<(), Security> {
        if crate::locks::read(&ds.resolver).is_some() {
            return Ok(());
        }
        let servers = crate::net::dns_reach::servers_of(&ds.cfg).map_err(|e| {
            tracing::warn!(error = %e, "dane.trust_anchor: cannot fetch the root's DNSKEYs");
            Security::Indeterminate
        })?;
        let client = AdClient::new(servers, ds.cfg.timeout, ds.cfg.attempts.get());
        let answer = client.query(".", RecordType::DNSKEY).await.map_err(|e| {
            tracing::warn!(error = %e, "dane.trust_anchor: cannot fetch the root's DNSKEYs");
            Security::Indeterminate
        })?;
        let keys: Vec<_> = answer
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::DNSSEC(hickory_resolver::proto::dnssec::rdata::DNSSECRData::DNSKEY(k)) => {
                    Some(k.clone())
                }
                _ => None,
            })
            .collect();
        let Some(anchors) = select_keys(&ds.file, &keys) else {
            tracing::warn!(
                keys = keys.len(),
                "dane.trust_anchor: no DNSKEY of the root matches its DS records"
            );
            return Err(Security::Bogus);
        };
        let resolver = build_resolver(&ds.cfg, Some(Arc::new(anchors))).map_err(|e| {
            tracing::warn!(error = %e, "dane.trust_anchor: cannot build the validating resolver");
            Security::Indeterminate
        })?;
        *crate::locks::write(&ds.resolver) = Some(Box::new(resolver));
        Ok(())
    }

    async fn ask_resolver(client: &AdClient, name: &str, rtype: RecordType) -> Answer {
        match client.query(&fqdn(name), rtype).await {
            Ok(a) if a.rcode == ResponseCode::NoError => {
                let records: Vec<Record> = a
                    .answers
                    .into_iter()
                    .filter(|r| r.record_type() == rtype)
                    .collect();
                if records.is_empty() {
                    return Answer::NoData;
                }
                let ttl = records.iter().map(|r| r.ttl).min();
                Answer::Records {
                    security: if a.authentic {
                        Security::Secure
                    } else {
                        Security::Insecure
                    },
                    records,
                    ttl,
                }
            }
            Ok(a) if a.rcode == ResponseCode::NXDomain => Answer::NoDomain,
            // A validating resolver's SERVFAIL may be bogus data or a failure: either
            // way nothing may be concluded from it.
            Ok(a) => {
                tracing::debug!(name, ?rtype, rcode = %a.rcode, "DANE lookup failed");
                Answer::Failed
            }
            Err(e) => {
                tracing::debug!(name, ?rtype, error = %e, "DANE lookup failed");
                Answer::Failed
            }
        }
    }

    async fn validate(resolver: &TokioResolver, name: &str, rtype: RecordType) -> Answer {
        match resolver.lookup(fqdn(name).as_str(), rtype).await {
            Ok(lookup) => {
                let records: Vec<Record> = lookup
                    .answers()
                    .iter()
                    .filter(|r| r.record_type() == rtype)
                    .cloned()
                    .collect();
                if records.is_empty() {
                    return Answer::NoData;
                }
                let ttl = records.iter().map(|r| r.ttl).min();
                Answer::Records {
                    security: security_of(&records),
                    records,
                    ttl,
                }
            }
            Err(e) if e.is_nx_domain() => Answer::NoDomain,
            Err(e) if e.is_no_records_found() => Answer::NoData,
            Err(NetError::Dns(DnsError::DnssecBogus)) => Answer::Bogus,
            Err(NetError::Dns(DnsError::Nsec {
                proof: Proof::Bogus,
                ..
            })) => Answer::Bogus,
            Err(NetError::Dns(DnsError::Nsec { .. })) => Answer::NoData,
            Err(e) => {
                tracing::debug!(name, ?rtype, error = %e, "DANE lookup failed");
                Answer::Failed
            }
        }
    }

    /// Whether the root's DNSKEY RRset validates from the trust anchor: the test that
    /// the DNS servers pass DNSSEC records through and the anchor is right.
    pub async fn root_security(&self) -> Security {
        if let Backend::FromDs(ds) = &self.backend
            && let Err(security) = Self::bootstrap(ds).await
        {
            return security;
        }
        match self.lookup(".", RecordType::DNSKEY).await {
            Answer::Records { security, .. } => security,
            Answer::Bogus => Security::Bogus,
            Answer::NoData | Answer::NoDomain => Security::Insecure,
            Answer::Failed => Security::Indeterminate,
        }
    }

    /// The MX facts of `domain` (a normalised domain name).
    pub async fn facts(&self, domain: &str) -> Found {
        let mut ttls = Vec::new();
        let (security, implicit, names) = match self.lookup(domain, RecordType::MX).await {
            Answer::Records {
                security: Security::Bogus,
                ..
            }
            | Answer::Bogus => return Found::only(MxFacts::Bogus),
            Answer::Records {
                security,
                records,
                ttl,
            } => {
                ttls.extend(ttl);
                // RFC 7505: a single "." exchange says the domain takes no mail.
                let Some(names) = exchanges(&records) else {
                    return Found {
                        mx: MxFacts::NoDomain,
                        min_ttl: ttls.into_iter().min(),
                    };
                };
                (security, false, names)
            }
            Answer::NoData => (Security::Insecure, true, vec![domain.to_owned()]),
            Answer::NoDomain => return Found::only(MxFacts::NoDomain),
            Answer::Failed => return Found::only(MxFacts::Failed),
        };
        // Only a secure MX RRset (or implicit MX, judged below by the domain's own
        // addresses) makes DANE apply; an insecure one ends the search.
        if !implicit && security != Security::Secure {
            return Found {
                mx: MxFacts::Hosts {
                    security,
                    implicit,
                    hosts: Vec::new(),
                },
                min_ttl: ttls.into_iter().min(),
            };
        }
        let hosts = join_all(names.iter().map(|h| self.host(h))).await;
        let mut host_facts = Vec::with_capacity(hosts.len());
        for (facts, ttl) in hosts {
            ttls.extend(ttl);
            host_facts.push(facts);
        }
        let mx = if implicit {
            implicit_mx(host_facts)
        } else {
            MxFacts::Hosts {
                security,
                implicit,
                hosts: host_facts,
            }
        };
        Found {
            mx,
            min_ttl: ttls.into_iter().min(),
        }
    }

    /// One host: its addresses (A and AAAA) and, when they are secure, its TLSA.
    async fn host(&self, name: &str) -> (HostFacts, Vec<u32>) {
        let mut ttls = Vec::new();
        let (a, aaaa) = tokio::join!(
            self.lookup(name, RecordType::A),
            self.lookup(name, RecordType::AAAA)
        );
        let mut statuses = Vec::new();
        for answer in [a, aaaa] {
            statuses.push(match answer {
                Answer::Records { security, ttl, .. } => {
                    ttls.extend(ttl);
                    Some(security)
                }
                Answer::NoData | Answer::NoDomain => None,
                Answer::Bogus => Some(Security::Bogus),
                Answer::Failed => Some(Security::Indeterminate),
            });
        }
        let address = if statuses.contains(&Some(Security::Bogus)) {
            Security::Bogus
        } else if statuses.contains(&Some(Security::Secure)) {
            Security::Secure
        } else if statuses.contains(&Some(Security::Indeterminate)) {
            Security::Indeterminate
        } else {
            // Insecure addresses, or none: DANE does not apply to this host.
            Security::Insecure
        };
        let tlsa = if address == Security::Secure {
            match self
                .lookup(&format!("_25._tcp.{name}"), RecordType::TLSA)
                .await
            {
                Answer::Records {
                    security: Security::Secure,
                    records,
                    ttl,
                } => {
                    ttls.extend(ttl);
                    TlsaFacts::Records {
                        records: records
                            .iter()
                            .filter_map(|r| match &r.data {
                                RData::TLSA(t) => Some(Tlsa {
                                    usage: t.cert_usage.into(),
                                    selector: t.selector.into(),
                                    matching: t.matching.into(),
                                    data_len: t.cert_data.len(),
                                }),
                                _ => None,
                            })
                            .collect(),
                    }
                }
                Answer::Records {
                    security: Security::Bogus,
                    ..
                }
                | Answer::Bogus => TlsaFacts::Bogus,
                Answer::Records {
                    security: Security::Indeterminate,
                    ..
                }
                | Answer::Failed => TlsaFacts::Failed,
                // An insecure TLSA RRset under a secure host cannot be trusted: as
                // good as none (RFC 7672 §2.2.2).
                Answer::Records { .. } | Answer::NoData | Answer::NoDomain => TlsaFacts::None,
            }
        } else {
            TlsaFacts::NotApplicable
        };
        (
            HostFacts {
                name: name.to_owned(),
                address,
                tlsa,
            },
            ttls,
        )
    }
}

/// The MX exchanges of an MX RRset, by preference, without duplicates, at most
/// `MAX_HOSTS`; `None` for a null MX (RFC 7505: only "." exchanges).
pub fn exchanges(records: &[Record]) -> Option<Vec<String>> {
    let mut mx: Vec<(u16, String)> = records
        .iter()
        .filter_map(|r| match &r.data {
            RData::MX(mx) => Some((
                mx.preference,
                mx.exchange
                    .to_ascii()
                    .trim_end_matches('.')
                    .to_ascii_lowercase(),
            )),
            _ => None,
        })
        .collect();
    mx.sort();
    mx.dedup_by(|a, b| a.1 == b.1);
    if mx.iter().all(|(_, h)| h.is_empty()) {
        return None;
    }
    Some(
        mx.into_iter()
            .map(|(_, h)| h)
            .filter(|h| !h.is_empty())
            .take(MAX_HOSTS)
            .collect(),
    )
}

/// The implicit MX is the domain itself: its own addresses stand for the MX RRset
/// (RFC 7672 §2.2.1), so their security is the RRset's.
fn implicit_mx(hosts: Vec<HostFacts>) -> MxFacts {
    let security = match hosts.first().map(|h| h.address) {
        Some(Security::Bogus) => return MxFacts::Bogus,
        Some(Security::Indeterminate) => return MxFacts::Failed,
        None => return MxFacts::NoDomain,
        Some(security) => security,
    };
    MxFacts::Hosts {
        security,
        implicit: true,
        hosts,
    }
}
