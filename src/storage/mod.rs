//! What the daemon's on-disk stores share: an error that names the store it is about,
//! the containment of panics inside a storage backend (sled asserts on some damaged
//! files instead of returning an error), and the handling of sled databases
//! ([`sled`]): opening one that another process may hold, the entry-count checkpoint
//! kept beside it, and moving a damaged one aside.
//!
//! The policy cache ([`crate::cache::store`]) and the TLSRPT report store
//! ([`crate::tlsrpt::ledger`]) both build on it.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};

use thiserror::Error;

pub mod sled;

/// Which store an error is about: the administrator reads the name in the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// The policy cache (`cache.path`).
    Policies,
    /// TLSRPT's counters and delivery records (`tlsrpt.path`).
    Reports,
}

impl fmt::Display for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Store::Policies => "policy cache",
            Store::Reports => "TLSRPT report store",
        })
    }
}

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{0}: {1}")]
    Backend(Store, String),
    #[error("{store}: entry {key} is unreadable: {message}")]
    Decode {
        store: Store,
        key: String,
        message: String,
    },
    #[error("{0} {1} is in use by another process (locked)")]
    Locked(Store, String),
    #[error("{store} panicked during {op}: {message}")]
    Panic {
        store: Store,
        op: &'static str,
        message: String,
    },
}

impl StoreError {
    /// The store the error is about.
    pub fn store(&self) -> Store {
        match self {
            StoreError::Backend(store, _) | StoreError::Locked(store, _) => *store,
            StoreError::Decode { store, .. } | StoreError::Panic { store, .. } => *store,
        }
    }
}

/// Runs a store operation, turning a panic inside the backend into an error.
pub fn contain<T>(
    store: Store,
    op: &'static str,
    f: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        Err(StoreError::Panic {
            store,
            op,
            message: panic_message(&*payload),
        })
    })
}

/// The text of a panic's payload (`panic!` gives a `&str` or a `String`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}
