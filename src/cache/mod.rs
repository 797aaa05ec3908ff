//! The policy cache: the rules that govern an entry's life (RFC 8461 §3.3, §5.1,
//! §10.2), the service that applies them around discovery, and the persistent store.

pub mod service;
pub mod store;
