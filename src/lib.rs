//! mta-stsd: an MTA-STS (RFC 8461) policy daemon for Postfix's
//! `smtp_tls_policy_maps` (socketmap protocol).
//!
//! The modules, from the bottom up (each imports only from those above it in this
//! list, never from those below; `tests/layering.rs` holds the same order and checks
//! it):
//! - [`clock`], [`config`], [`metrics`], [`postfix`], [`flight`], [`bounded`],
//!   [`findings`]: wall-clock time, the TOML configuration, the Prometheus registry,
//!   Postfix's own `postconf`, single-flight (one task per key, shared by its
//!   waiters), the bounded map of expiring values both answer caches keep, and the
//!   findings `check` and `doctor` report;
//! - [`net`]: outbound network plumbing (the DNS resolver, the guard against
//!   non-public addresses, TLS trust anchors, library errors as readable text);
//! - [`storage`]: what the on-disk stores share (errors naming their store, panics
//!   contained, sled opening, checkpoints, moving damaged databases aside);
//! - [`redis`]: the connection to the fleet's Redis, with timeouts and back-off;
//! - [`protocol`]: the socketmap netstring codec and request parser (pure, no I/O);
//! - [`mtasts`]: next-hop key normalisation, the TXT record and policy file parsers
//!   (pure), and discovery over DNS and HTTPS;
//! - [`dane`]: DANE precedence (RFC 8461 §2, RFC 7672): the verdict rules (pure), the
//!   validating DNSSEC lookups, and the service that remembers verdicts;
//! - [`cache`]: a domain's cache entry, the cache rules as pure functions, the
//!   policy service that applies them around discovery with its components (what
//!   memory holds, durability, walks of the store, the refresher, the fleet's steps,
//!   logs and metrics), the persistent store and its entry format, and the cache a
//!   fleet shares in Redis ([`cache::redis_cache`]);
//! - [`tlsrpt`]: TLSRPT (RFC 8460): Postfix's datagrams into daily counters, and the
//!   reports sent from them (alone, or once for a whole fleet through Redis);
//! - [`answer`]: the one answer path from a request key to the reply (normalisation,
//!   the DANE gate, MTA-STS, precedence, rendering in the client's format), used by
//!   the daemon and by `query` (through its live sources) alike;
//! - [`instance`]: whether a live daemon already holds the sockets and stores a
//!   configuration names (a second instance never takes them);
//! - [`setup`]: the one path from a configuration to the settings the daemon runs
//!   on (start, reload, `query`, `check-config`), reporting every problem at once;
//! - [`admin`]: the admin API's contract (routes, JSON shapes) and its typed client;
//! - [`server`]: the socketmap listener and one connection's framing and limits, the
//!   HTTP listener (metrics, admin API), systemd integration, the shared state with its
//!   reload, and the daemon's assembly and shutdown;
//! - [`doctor`]: the verdicts of `mta-stsd doctor` on a Postfix + mta-stsd setup
//!   (pure) and the gathering of their facts;
//! - [`check`]: the verdicts of `mta-stsd check DOMAIN` on a domain's MTA-STS setup
//!   (pure), its TLS and SMTP probes, and the gathering of its facts;
//! - [`import`]: postfix-mta-sts-resolver's caches read for `mta-stsd import`;
//! - [`cli`]: the command-line operations (`serve`, `query`, `cache`, ...), the
//!   binary's edge.

pub mod admin;
pub mod answer;
pub mod bounded;
pub mod cache;
pub mod check;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dane;
pub mod doctor;
pub mod findings;
pub mod flight;
pub mod import;
pub mod instance;
mod locks;
pub mod metrics;
pub mod mtasts;
pub mod net;
pub mod postfix;
pub mod protocol;
pub mod redis;
pub mod server;
pub mod setup;
pub mod storage;
pub mod tlsrpt;

/// An I/O error's text without Rust's "(os error N)" suffix, for messages that name
/// the file or address themselves.
pub fn io_error_text(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// Removes a socket file left by an earlier run; a socket a live process still
/// receives on (another daemon's: removing it would leave that daemon deaf), or
/// anything else at `path`, is an error.
pub fn remove_stale_socket(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() && instance::socket_is_live(path) => {
            Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("a running process receives on {}", path.display()),
            ))
        }
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
