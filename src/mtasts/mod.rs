//! MTA-STS itself (RFC 8461): normalising Postfix's next-hop keys to domains
//! ([`domain`]), parsing the TXT record and the policy file ([`policy`]), and
//! discovering both over DNS and HTTPS ([`discovery`]), and telling a DNS server that
//! refuses from one that is silent ([`dns_reach`]).

pub mod discovery;
pub mod dns_reach;
pub mod domain;
pub mod policy;
