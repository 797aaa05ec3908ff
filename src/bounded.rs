//! A bounded, least-recently-used map of shared values that know when they expire:
//! the form both remembered-answer caches take (domains without a policy, DANE
//! verdicts). Anyone who can make the server send mail to random domains can fill
//! them, so they are capped; an expired value is simply not returned as live.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::locks::lock;

/// A value that stops saying anything at some point.
pub trait Expiring {
    /// Whether the value still holds at `now` (seconds since the epoch).
    fn is_live(&self, now: u64) -> bool;
}

/// At most `cap` values by key, the least recently used dropped first.
pub struct BoundedMap<V> {
    inner: Mutex<LruCache<String, Arc<V>>>,
}

impl<V: Expiring> BoundedMap<V> {
    pub fn new(cap: NonZeroUsize) -> Self {
        Self {
            inner: Mutex::new(LruCache::new(cap)),
        }
    }

    pub fn resize(&self, cap: NonZeroUsize) {
        lock(&self.inner).resize(cap);
    }

    /// The value for `key`, marked as recently used (expired or not).
    pub fn get(&self, key: &str) -> Option<Arc<V>> {
        lock(&self.inner).get(key).cloned()
    }

    /// The value for `key` if it still holds at `now`, marked as recently used.
    pub fn get_live(&self, key: &str, now: u64) -> Option<Arc<V>> {
        self.get(key).filter(|v| v.is_live(now))
    }

    /// The value for `key`, leaving the order as it is.
    pub fn peek(&self, key: &str) -> Option<Arc<V>> {
        lock(&self.inner).peek(key).cloned()
    }

    pub fn put(&self, key: &str, value: Arc<V>) {
        lock(&self.inner).put(key.to_owned(), value);
    }

    /// Keeps `value` unless `key` has one already.
    pub fn put_if_absent(&self, key: &str, value: impl FnOnce() -> Arc<V>) {
        lock(&self.inner).get_or_insert(key.to_owned(), value);
    }

    /// Removes `key`; whether it was there.
    pub fn remove(&self, key: &str) -> bool {
        lock(&self.inner).pop(key).is_some()
    }

    pub fn len(&self) -> usize {
        lock(&self.inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many values still hold at `now`.
    pub fn live(&self, now: u64) -> usize {
        lock(&self.inner)
            .iter()
            .filter(|(_, v)| v.is_live(now))
            .count()
    }

    /// Every key and value (a copy, so no lock is held while the caller works).
    pub fn snapshot(&self) -> Vec<(String, Arc<V>)> {
        lock(&self.inner)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Until(u64);

    impl Expiring for Until {
        fn is_live(&self, now: u64) -> bool {
            now < self.0
        }
    }

    #[test]
    fn bounded_least_recently_used_and_expiring() {
        let map = BoundedMap::new(NonZeroUsize::new(2).unwrap());
        map.put("a", Arc::new(Until(10)));
        map.put("b", Arc::new(Until(20)));
        // Using "a" makes "b" the one to go.
        assert!(map.get("a").is_some());
        map.put("c", Arc::new(Until(30)));
        assert!(map.peek("b").is_none());
        assert_eq!(map.len(), 2);
        // Expired values are kept but not live.
        assert!(map.get_live("a", 15).is_none());
        assert!(map.get("a").is_some());
        assert_eq!(map.live(15), 1);
        map.put_if_absent("c", || Arc::new(Until(0)));
        assert!(map.get_live("c", 15).is_some());
        assert!(map.remove("c"));
        assert!(!map.remove("c"));
        assert_eq!(map.snapshot().len(), 1);
    }
}
