//! MTA-STS itself (RFC 8461): normalising Postfix's next-hop keys to domains
//! ([`domain`]), parsing the TXT record and the policy file ([`policy`]), and
//! discovering both over DNS and HTTPS ([`discovery`]).

pub mod discovery;
pub mod domain;
pub mod policy;
