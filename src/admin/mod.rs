//! The admin API of the running daemon: its contract (routes and JSON shapes, in
//! [`api`]) and a typed client for the commands that use it ([`client`]). The server
//! side lives with the other listeners in [`crate::server::http`].

pub mod api;
pub mod client;
