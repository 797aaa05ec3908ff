//! Persistent storage of cache entries behind a small trait, so the store can be
//! swapped (or shared by a fleet). The default is sled ([`sled`]).

use thiserror::Error;

use super::entry::Entry;

pub mod sled;

pub use self::sled::SledStore;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cache store: {0}")]
    Backend(String),
    #[error("cache entry for {domain} is unreadable: {message}")]
    Decode { domain: String, message: String },
}

/// Entries read from a store, and the ones that could not be read.
pub type Loaded = (Vec<(String, Entry)>, Vec<StoreError>);

pub trait PolicyStore: Send + Sync + 'static {
    /// Every entry; unreadable ones are reported, not fatal.
    fn load_all(&self) -> Result<Loaded, StoreError>;
    /// One entry, if stored.
    fn get(&self, domain: &str) -> Result<Option<Entry>, StoreError>;
    fn put(&self, domain: &str, entry: &Entry) -> Result<(), StoreError>;
    fn remove(&self, domain: &str) -> Result<(), StoreError>;
    fn flush(&self) -> Result<(), StoreError>;
}
