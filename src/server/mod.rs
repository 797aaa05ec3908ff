//! The running daemon: the socketmap listener ([`socketmap`]) and one connection's
//! framing and limits ([`connection`]), the HTTP listener for
//! metrics and the admin API ([`http`]), systemd integration ([`systemd`]), the shared
//! state and its reload ([`state`]), and the assembly and shutdown of them all
//! ([`daemon`]).

pub mod connection;
pub mod daemon;
pub mod http;
pub mod socketmap;
pub mod state;
pub mod systemd;
