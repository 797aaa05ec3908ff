//! The running daemon: the socketmap listener, the HTTP listener for metrics and the
//! admin API, systemd integration, and the assembly of them all.

pub mod daemon;
pub mod http;
pub mod socketmap;
pub mod systemd;
