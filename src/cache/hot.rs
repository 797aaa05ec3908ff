//! What the cache holds in memory: the hot set of policies lookups used recently (at
//! most `cache.memory_entries`, each with the reply texts rendered from it) and the
//! bounded set of domains without a policy.
//!
//! Policies are all in the store too, so one dropped from memory costs a store read on
//! its next lookup, never a discovery. Domains without a policy live only here, in a
//! least-recently-used set: anyone who can make the server send mail to random domains
//! can create them, so they are bounded, cost no disk writes and can never push a
//! policy out.
//!
//! Lock order: `entries` and `negatives` are never held together.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use super::entry::Entry;
use crate::bounded::BoundedMap;
use crate::locks::{read, write};

/// How many rendered texts a policy in memory keeps: one per combination of answer
/// format and zone options that changes the text (the answer path numbers them).
pub const MEMO_SLOTS: usize = 16;

/// A policy entry in memory, with the reply texts rendered from it.
#[derive(Debug)]
pub struct Slot {
    pub entry: Entry,
    /// Rendered once per variant, then shared: a cache hit allocates nothing. `None`:
    /// the policy enforces nothing under that variant.
    rendered: [OnceLock<Option<Arc<str>>>; MEMO_SLOTS],
    /// Used since the last eviction sweep (second chance: see [`HotSet::evict`]).
    used: AtomicBool,
}

impl Slot {
    fn new(entry: Entry) -> Arc<Self> {
        Arc::new(Slot {
            entry,
            rendered: Default::default(),
            used: AtomicBool::new(true),
        })
    }

    fn touch(&self) {
        // Read first: hits on a hot slot then share its cache line instead of
        // writing it from every core.
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
    }

    /// The text `render` makes of this entry for `variant`, rendered on first use.
    /// A variant beyond the memo is rendered every time.
    pub fn rendered(
        &self,
        variant: usize,
        render: impl FnOnce(&Entry) -> Option<Arc<str>>,
    ) -> Option<Arc<str>> {
        match self.rendered.get(variant) {
            Some(cell) => cell.get_or_init(|| render(&self.entry)).clone(),
            None => render(&self.entry),
        }
    }
}

/// What memory holds for a domain: a policy entry with its memoized replies, or a
/// negative entry (kept lean: there are many, and they render no reply).
pub enum Found {
    Policy(Arc<Slot>),
    Negative(Arc<Entry>),
}

impl Found {
    pub fn entry(&self) -> &Entry {
        match self {
            Found::Policy(slot) => &slot.entry,
            Found::Negative(entry) => entry,
        }
    }
}

pub struct HotSet {
    /// Domains with a policy that lookups used recently.
    entries: RwLock<HashMap<String, Arc<Slot>>>,
    /// Domains without a policy, memory only, bounded.
    negatives: BoundedMap<Entry>,
}

impl HotSet {
    pub fn new(negative_cap: NonZeroUsize) -> Self {
        Self {
            entries: RwLock::new(HashMap::new()),
            negatives: BoundedMap::new(negative_cap),
        }
    }

    pub fn resize_negatives(&self, cap: NonZeroUsize) {
        self.negatives.resize(cap);
    }

    /// The domain's entry in memory, marked as used.
    pub fn get(&self, domain: &str) -> Option<Found> {
        if let Some(slot) = read(&self.entries).get(domain).cloned() {
            slot.touch();
            return Some(Found::Policy(slot));
        }
        self.negatives.get(domain).map(Found::Negative)
    }

    /// The domain's entry in memory, leaving the marks as they are.
    pub fn peek(&self, domain: &str) -> Option<Entry> {
        if let Some(slot) = read(&self.entries).get(domain) {
            return Some(slot.entry.clone());
        }
        self.negatives.peek(domain).map(|e| Entry::clone(&e))
    }

    /// The policy slot for `domain`, if it is hot.
    pub fn slot(&self, domain: &str) -> Option<Arc<Slot>> {
        read(&self.entries).get(domain).cloned()
    }

    /// Whether `domain`'s policy is in the hot set.
    pub fn is_hot(&self, domain: &str) -> bool {
        read(&self.entries).contains_key(domain)
    }

    /// Adds a policy read from the store (unless a newer one got in first).
    pub fn admit(&self, domain: &str, entry: Entry) -> Arc<Slot> {
        write(&self.entries)
            .entry(domain.to_owned())
            .or_insert_with(|| Slot::new(entry))
            .clone()
    }

    /// Puts a decided entry in memory: among the policies or the negatives.
    /// `wanted`: a lookup asked for the domain. A policy nobody looked up (a refresh
    /// of a domain no longer in memory, an import) is not added, so that such work
    /// never pushes the lookups' hot set out. Returns whether a policy was added.
    pub fn publish(&self, domain: &str, entry: Entry, wanted: bool) -> bool {
        if entry.policy.is_some() {
            self.negatives.remove(domain);
            let mut entries = write(&self.entries);
            if wanted || entries.contains_key(domain) {
                entries.insert(domain.to_owned(), Slot::new(entry));
                return true;
            }
            false
        } else {
            if read(&self.entries).contains_key(domain) {
                write(&self.entries).remove(domain);
            }
            self.negatives.put(domain, Arc::new(entry));
            false
        }
    }

    /// Keeps a negative entry (moved from the store) unless one is there already.
    pub fn keep_negative(&self, domain: &str, entry: &Entry) {
        self.negatives
            .put_if_absent(domain, || Arc::new(entry.clone()));
    }

    /// Forgets the domain's policy.
    pub fn remove_policy(&self, domain: &str) {
        write(&self.entries).remove(domain);
    }

    /// Forgets the domain altogether.
    pub fn remove(&self, domain: &str) {
        write(&self.entries).remove(domain);
        self.negatives.remove(domain);
    }

    /// Keeps the policies within `cap`. When over, one sweep drops slots not used
    /// since the previous sweep (and clears the mark on the others) until a tenth of
    /// the room is free, so sweeps are rare and lookups only ever set a flag.
    pub fn evict(&self, cap: NonZeroUsize) {
        let cap = cap.get();
        if read(&self.entries).len() <= cap {
            return;
        }
        let mut entries = write(&self.entries);
        let target = cap - cap / 10;
        let mut excess = entries.len().saturating_sub(target);
        entries.retain(|_, slot| {
            if excess == 0 || slot.used.swap(false, Ordering::Relaxed) {
                true
            } else {
                excess -= 1;
                false
            }
        });
        // Everything was used since the last sweep: drop arbitrary ones.
        entries.retain(|_, _| {
            if excess == 0 {
                true
            } else {
                excess -= 1;
                false
            }
        });
    }

    /// Entries in memory, with and without a policy.
    pub fn len(&self) -> usize {
        read(&self.entries).len() + self.negatives.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Negative entries still in force at `now`.
    pub fn live_negatives(&self, now: u64) -> usize {
        self.negatives.live(now)
    }

    /// Every entry in memory, policies first.
    pub fn copies(&self) -> Vec<(String, Entry)> {
        let mut out: Vec<(String, Entry)> = read(&self.entries)
            .iter()
            .map(|(d, slot)| (d.clone(), slot.entry.clone()))
            .collect();
        out.extend(
            self.negatives
                .snapshot()
                .into_iter()
                .map(|(d, e)| (d, Entry::clone(&e))),
        );
        out
    }
}
