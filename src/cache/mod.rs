//! The policy cache: what is known about a domain ([`entry`]), the rules that govern
//! an entry's life (RFC 8461 §3.3, §5.1, §10.2) as pure functions ([`rules`]), the
//! service that applies them around discovery ([`service`]), the persistent store
//! ([`store`]), and the cache a fleet of daemons shares in Redis ([`shared`]).

pub mod entry;
pub mod rules;
pub mod service;
pub mod shared;
pub mod store;
