//! mta-stsd: an MTA-STS (RFC 8461) policy daemon for Postfix.
//!
//! The modules are layered so that each can be tested alone:
//! - [`codec`]: the socketmap netstring wire format;
//! - [`domain`], [`policy`], [`answer`]: pure parsing and rendering, no I/O;
//! - [`discovery`]: DNS and HTTPS;
//! - [`config`]: the TOML configuration.

pub mod answer;
pub mod clock;
pub mod codec;
pub mod config;
pub mod daemon;
pub mod discovery;
pub mod domain;
pub mod http;
mod locks;
pub mod metrics;
pub mod policy;
pub mod query;
pub mod server;
pub mod service;
pub mod store;
pub mod systemd;
