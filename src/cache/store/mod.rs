//! Persistent storage of policy cache entries behind a small trait, so the store can be
//! swapped (or shared by a fleet). The default is sled ([`sled_store`]), writing entries in the
//! form of [`mod@format`] (Redis uses it too); [`guard`] keeps any
//! store's failures, panics included, from reaching the rest of the daemon.

use super::entry::{Entry, Outline};
pub use crate::storage::{Store, StoreError};

pub mod format;
pub mod guard;
pub mod sled_store;

pub use self::guard::GuardedStore;
pub use self::sled_store::SledStore;

/// Runs a policy store operation with panics contained (see [`crate::storage`]).
pub fn contain<T>(
    op: &'static str,
    f: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    crate::storage::contain(Store::Policies, op, f)
}

/// What [`PolicyStore::scan`] hands over for each stored domain: its entry, or why it
/// cannot be read.
pub type Visit<'a> = dyn FnMut(String, Result<Entry, StoreError>) + 'a;

/// What [`PolicyStore::scan_outlines`] hands over for each stored domain.
pub type VisitOutline<'a> = dyn FnMut(String, Result<Outline, StoreError>) + 'a;

/// Entries read from a store, and the ones that could not be read.
pub type Loaded = (Vec<(String, Entry)>, Vec<StoreError>);

/// Every entry of `store` at once (for tools, tests and small stores; the daemon
/// walks the store with [`PolicyStore::scan`]).
pub fn read_all(store: &dyn PolicyStore) -> Result<Loaded, StoreError> {
    let (mut entries, mut errors) = (Vec::new(), Vec::new());
    store.scan(&mut |domain, entry| match entry {
        Ok(e) => entries.push((domain, e)),
        Err(e) => errors.push(e),
    })?;
    Ok((entries, errors))
}

pub trait PolicyStore: Send + Sync + 'static {
    /// Visits every entry, one at a time (a store may hold far more than memory should).
    /// An unreadable entry is visited as an error; an error returned means the walk
    /// ended early (what was visited before it stands).
    fn scan(&self, visit: &mut Visit<'_>) -> Result<(), StoreError>;

    /// Like [`PolicyStore::scan`], with each entry's outline only: what the refresher,
    /// the gauges and the checkpoint need, which a store may read far more cheaply.
    fn scan_outlines(&self, visit: &mut VisitOutline<'_>) -> Result<(), StoreError> {
        self.scan(&mut |domain, entry| visit(domain, entry.map(|e| Outline::from(&e))))
    }
    /// One entry, if stored.
    fn get(&self, domain: &str) -> Result<Option<Entry>, StoreError>;
    fn put(&self, domain: &str, entry: &Entry) -> Result<(), StoreError>;
    fn remove(&self, domain: &str) -> Result<(), StoreError>;
    fn flush(&self) -> Result<(), StoreError>;

    /// Whether the store currently works: while it does not, memory is the only copy
    /// of new policies and must not drop them.
    fn healthy(&self) -> bool {
        true
    }

    /// The number of policies the store was last known to hold durably, recorded
    /// outside the store's data by [`PolicyStore::set_checkpoint`]. A damaged store
    /// can open without an error and fewer entries (sled drops every record after a
    /// bad one); comparing what loads with this number is how that is noticed.
    /// `None`: nothing recorded (a new store, or the record was withdrawn).
    fn checkpoint(&self) -> Option<u64> {
        None
    }

    /// Records (or, with `None`, withdraws) the checkpoint. Callers record only
    /// counts that a successful flush made durable, and withdraw the record before
    /// removing a policy, so that a checkpoint never exceeds what the store holds.
    fn set_checkpoint(&self, _policies: Option<u64>) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A store that cannot be used: every call fails with the reason. It stands in when no
/// store can be opened, so the daemon starts and serves from memory while
/// [`GuardedStore`] retries.
pub struct Unavailable(pub String);

impl Unavailable {
    fn err(&self) -> StoreError {
        StoreError::Backend(Store::Policies, format!("unavailable: {}", self.0))
    }
}

impl PolicyStore for Unavailable {
    fn scan(&self, _: &mut Visit<'_>) -> Result<(), StoreError> {
        Err(self.err())
    }

    fn healthy(&self) -> bool {
        false
    }

    fn get(&self, _: &str) -> Result<Option<Entry>, StoreError> {
        Err(self.err())
    }

    fn put(&self, _: &str, _: &Entry) -> Result<(), StoreError> {
        Err(self.err())
    }

    fn remove(&self, _: &str) -> Result<(), StoreError> {
        Err(self.err())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Err(self.err())
    }
}
