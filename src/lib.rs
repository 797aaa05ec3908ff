//! mta-stsd: an MTA-STS (RFC 8461) policy daemon for Postfix.

pub mod cache;
pub mod cli;
pub mod clock;
pub mod config;
mod locks;
pub mod metrics;
pub mod mtasts;
pub mod protocol;
pub mod server;
