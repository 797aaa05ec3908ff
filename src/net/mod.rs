//! Outbound network plumbing every room that talks to the Internet shares: the DNS
//! resolver built from `[resolver]` ([`resolver`]), telling a refusing DNS server from
//! a silent one ([`dns_reach`]), the guard that keeps fetches and uploads off
//! non-public addresses ([`address`]), the TLS client settings and trust anchors
//! ([`tls`]), and library errors as one line an administrator can read
//! ([`error_text`]).
//!
//! Policy discovery ([`crate::mtasts::discovery`]), DANE's lookups, TLSRPT's
//! uploads, `check` and `doctor` build on it.

use thiserror::Error;

pub mod address;
pub mod dns_reach;
pub mod error_text;
pub mod resolver;
pub mod tls;

pub use self::error_text::{error_chain, humane};

/// The `User-Agent` of every HTTPS request the daemon makes.
pub const USER_AGENT: &str = concat!("mta-stsd/", env!("CARGO_PKG_VERSION"));

#[derive(Debug, Error)]
pub enum SetupError {
    #[error("cannot set up the DNS resolver: {0}")]
    Resolver(String),
    #[error("cannot read CA file {path}: {message}")]
    CaFile { path: String, message: String },
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    #[error("cannot set up the HTTPS client: {0}")]
    Http(String),
}
