//! The command-line operations.

pub mod query;
