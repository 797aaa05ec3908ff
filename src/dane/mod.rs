//! DANE precedence (RFC 8461 §2, RFC 7672): a domain whose MX hosts publish DNSSEC-
//! secure TLSA records is handed to Postfix's own DANE code (`dane`, `dane-only`)
//! instead of being answered with its MTA-STS policy, and a bogus MX RRset defers.
//!
//! - [`verdict`]: the verdict from DNSSEC facts (pure);
//! - [`lookup`]: the validating DNS lookups that gather the facts, validated by the
//!   daemon itself or, through [`ad_client`], by a resolver on loopback;
//! - [`anchor`]: the trust anchor file (DS and DNSKEY records of the root);
//! - [`verdict_cache`]: remembered verdicts, single-flight, refresh-ahead and the
//!   self-check.

pub mod ad_client;
pub mod anchor;
pub mod lookup;
pub mod verdict;
pub mod verdict_cache;
