//! What operators do to the cache through the admin API and the CLI: list it, purge a
//! domain (here or across the fleet), import a policy learned elsewhere, and run a
//! discovery now. Each goes through the same rules and components as a lookup.

use std::sync::Arc;

use super::PolicyService;
use crate::cache::entry::Entry;
use crate::cache::events;
use crate::cache::hot::Found;
use crate::cache::lifecycle as rules;

impl PolicyService {
    /// Purges `domain` here and from the fleet's shared cache, which tells every other
    /// daemon to purge it too. Returns whether it was cached anywhere.
    pub async fn purge_everywhere(&self, domain: &str) -> bool {
        let here = self.purge(domain);
        let there = match self.shared() {
            Some(shared) => shared.remove(domain).await.unwrap_or_else(|e| {
                tracing::warn!(domain, error = %e, "purged here only: the shared cache is unreachable");
                false
            }),
            None => false,
        };
        here || there
    }

    /// A snapshot of every entry, sorted by domain: the store's policies (newer copies
    /// in memory win) and memory's negative entries. Walks the store: blocking.
    pub fn snapshot(&self) -> Vec<(String, Entry)> {
        let mut all: std::collections::HashMap<String, Entry> = std::collections::HashMap::new();
        let walked = self.store.scan(&mut |domain, entry| {
            if let Ok(e) = entry {
                all.insert(domain, e);
            }
        });
        if let Err(e) = walked {
            tracing::warn!(error = %e, "the cache listing is incomplete");
        }
        all.extend(self.hot.copies());
        let mut all: Vec<(String, Entry)> = all.into_iter().collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Removes a domain from the cache (memory and store). Returns whether it was there.
    pub fn purge(&self, domain: &str) -> bool {
        let found = self.found(domain);
        let present = found.is_some();
        if let Some(Found::Policy(slot)) = &found {
            self.durability.withdraw_checkpoint();
            events::count_modes(
                &self.metrics,
                &slot.entry,
                &Entry::default(),
                self.clock.now(),
            );
        }
        if let Err(e) = self.store.remove(domain) {
            tracing::warn!(domain, error = %e, "cannot remove cache entry");
        }
        self.hot.remove(domain);
        if present {
            tracing::info!(domain, "cache entry purged");
        }
        present
    }

    /// Puts a policy learned elsewhere into the cache (`mta-stsd import`): taken as if
    /// fetched at `fetched_at` under `id` unless it has expired or the cache already
    /// has one fetched at the same time or later. Written and flushed before it is
    /// used, like a fetched policy.
    pub async fn import_policy(
        &self,
        domain: &str,
        id: &str,
        fetched_at: u64,
        policy: crate::mtasts::policy::Policy,
    ) -> rules::Import {
        let old = self.found(domain).map(|f| f.entry().clone());
        let decision = rules::on_import(old.as_ref(), policy, id, fetched_at, self.clock.now());
        if let rules::Import::Replace(entry) = &decision {
            if let Some(shared) = self.shared() {
                // Imported into one daemon, known to the whole fleet.
                if let Err(e) = shared.put(domain, entry).await {
                    tracing::debug!(domain, error = %e, "imported policy not shared");
                }
            }
            self.persist(domain, &old.unwrap_or_default(), entry);
            self.durability.make_durable().await;
            self.publish(domain, (**entry).clone(), false);
            tracing::info!(domain, id, fetched_at, "policy imported");
        }
        decision
    }

    /// Runs a discovery for `domain` now (fetching whatever the TXT id says when a
    /// policy is cached) and returns the resulting entry.
    pub async fn refresh_now(self: &Arc<Self>, domain: &str) -> Option<Entry> {
        let entry = self.cached(domain);
        let trigger = rules::manual_trigger(entry.as_ref(), self.clock.now());
        // An operator asked for this daemon to look now: not settled by the fleet.
        self.discovery(domain, trigger, false).await;
        self.cached(domain)
    }
}
