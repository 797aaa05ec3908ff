//! The counters and the delivery records on disk: a sled database of its own beside
//! the policy cache (the same engine, but not the same files, so that a damaged cache
//! moved aside does not take a day's reports with it). Two trees:
//! - `counts`: day (8 bytes, big-endian) · domain · NUL · record · NUL · policy →
//!   [`Counts`] (postcard);
//! - `deliveries`: day · report id · NUL · destination → [`Delivery`] as JSON;
//! - `cuts`: day · cut time (8 bytes each, big-endian) → the day's counters at a
//!   partial send's cut ([`Cut`], JSON);
//! - `outbox` (fleets): batches on their way to Redis;
//! - and the key `node`: this store's id, drawn once, part of its report ids and
//!   outbox batch ids.
//!
//! Beside sled's files, in the same directory, a checkpoint records how many entries
//! the four trees durably held at the last flush (see [`super::salvage`], which reads
//! it when the store is opened: a damaged store is never silently empty). A removal
//! withdraws the checkpoint first, so it never claims more than the store holds.
//!
//! Every error names this store ("TLSRPT report store"), not the policy cache.
//!
//! Days lead the keys, so a day's groups are one range and pruning old days is a
//! range delete.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::locks::lock;
use crate::storage::sled::{open_error, open_retrying, write_count};
use crate::storage::{Store, StoreError, contain};

use super::counts::{Counts, Group, Tally};
use super::day::Day;
use super::period::Cut;
use super::schedule::Delivery;

/// A day's counters, one group (report) at a time, each with its policies.
pub type DayCounts = Vec<(Group, Vec<(String, Counts)>)>;

/// Where TLSRPT keeps what it has counted and sent.
pub trait ReportStore: Send + Sync + 'static {
    /// Adds a tally's counters to the stored ones, all or nothing.
    fn add(&self, tally: &Tally) -> Result<(), StoreError>;
    /// The days that have counters, oldest first.
    fn days(&self) -> Result<Vec<Day>, StoreError>;
    /// One day's counters.
    fn day(&self, day: Day) -> Result<DayCounts, StoreError>;
    fn delivery(&self, day: Day, report: &str, dest: &str) -> Result<Option<Delivery>, StoreError>;
    fn set_delivery(
        &self,
        day: Day,
        report: &str,
        dest: &str,
        delivery: &Delivery,
    ) -> Result<(), StoreError>;
    /// Every delivery record of a day, as (report id, destination, record).
    fn deliveries(&self, day: Day) -> Result<Vec<(String, String, Delivery)>, StoreError>;
    /// This store's id (letters and digits), drawn when it was created.
    fn node(&self) -> String;
    /// A day's cuts (partial sends), oldest first.
    fn cuts(&self, day: Day) -> Result<Vec<Cut>, StoreError>;
    /// Records a cut, durably.
    fn add_cut(&self, day: Day, cut: &Cut) -> Result<(), StoreError>;
    /// Removes counters, deliveries and cuts of days before `day`; returns the keys
    /// removed.
    fn prune_before(&self, day: Day) -> Result<usize, StoreError>;
    /// Makes everything written so far durable.
    fn flush(&self) -> Result<(), StoreError>;
    /// In a fleet: keeps a tally as one batch for the fleet's counters, under an id no
    /// other batch of any store has.
    fn outbox_add(&self, tally: &Tally) -> Result<(), StoreError>;
    /// The oldest batches not yet in the fleet's counters: (key, batch id, tally).
    fn outbox(&self, max: usize) -> Result<Vec<(u64, String, Tally)>, StoreError>;
    /// Removes a batch the fleet's counters now hold.
    fn outbox_remove(&self, key: u64) -> Result<(), StoreError>;
    /// Batches waiting for the fleet.
    fn outbox_len(&self) -> usize;
}

/// An outbox batch as stored.
#[derive(serde::Serialize, serde::Deserialize)]
struct Batch {
    id: String,
    datagrams: u64,
    counts: Vec<(Group, String, Counts)>,
}

pub struct SledReports {
    db: sled::Db,
    counts: sled::Tree,
    deliveries: sled::Tree,
    cuts: sled::Tree,
    outbox: sled::Tree,
    /// This store's name, part of every outbox batch id (drawn once, kept).
    node: String,
    dir: PathBuf,
    /// Entries in the four trees; each is counted once its write is applied.
    entries: AtomicU64,
    /// Held while the checkpoint is written, and while it is withdrawn for a removal.
    checkpoint: Mutex<()>,
}

/// One stored entry as bytes: its tree's name, its key, its value.
pub(super) type RawEntry = (&'static str, Vec<u8>, Vec<u8>);

/// The checkpoint file, in the store's directory beside sled's files.
pub const CHECKPOINT_FILE: &str = "mta-stsd-reports";

/// The trees whose entries the checkpoint counts, by name.
pub(super) const TREES: [&str; 4] = ["counts", "deliveries", "cuts", "outbox"];

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(Store::Reports, e.to_string())
}

/// A store operation with panics contained.
fn guarded<T>(
    op: &'static str,
    f: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    contain(Store::Reports, op, f)
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Decode {
        store: Store::Reports,
        key: what.to_owned(),
        message: e.to_string(),
    })
}

/// Counters are rewritten every round for every key touched: kept in postcard's
/// compact binary form, not JSON.
fn decode_counts(what: &str, bytes: &[u8]) -> Result<Counts, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Decode {
        store: Store::Reports,
        key: what.to_owned(),
        message: e.to_string(),
    })
}

/// Whether a value of tree `tree` reads back as what that tree holds.
pub(super) fn readable(tree: &str, value: &[u8]) -> bool {
    match tree {
        "counts" => decode_counts("", value).is_ok(),
        "deliveries" => decode::<Delivery>("", value).is_ok(),
        "cuts" => decode::<Cut>("", value).is_ok(),
        "outbox" => decode::<Batch>("", value).is_ok(),
        _ => false,
    }
}

impl SledReports {
    /// Opens (or creates) the store at `path`. sled releases its lock from a
    /// background thread a moment after a handle is dropped, so a locked store is
    /// retried for up to two seconds.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        open_retrying(Store::Reports, || Self::open_once(path))
    }

    /// Whether an open error is another process's lock (never a reason to move the
    /// store aside).
    pub fn is_locked(e: &StoreError) -> bool {
        matches!(e, StoreError::Locked(..))
    }

    fn open_once(path: &Path) -> Result<Self, StoreError> {
        {
            let db = sled::Config::new()
                .path(path)
                .cache_capacity(8 * 1024 * 1024)
                // The collector flushes what it adds itself, within a second.
                .flush_every_ms(None)
                .open()
                .map_err(|e| open_error(Store::Reports, path, e))?;
            let counts = db.open_tree("counts").map_err(backend)?;
            let deliveries = db.open_tree("deliveries").map_err(backend)?;
            let outbox = db.open_tree("outbox").map_err(backend)?;
            let cuts = db.open_tree("cuts").map_err(backend)?;
            let node = match db.get("node").map_err(backend)? {
                Some(v) => String::from_utf8_lossy(&v).into_owned(),
                None => {
                    use std::hash::{BuildHasher, Hasher};
                    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                    h.write_u32(std::process::id());
                    let node = format!("{:016x}", h.finish());
                    db.insert("node", node.as_bytes()).map_err(backend)?;
                    node
                }
            };
            Ok(Self {
                db,
                counts,
                deliveries,
                cuts,
                outbox,
                node,
                dir: path.to_owned(),
                entries: AtomicU64::new(0),
                checkpoint: Mutex::new(()),
            })
        }
    }

    fn tree(&self, name: &str) -> Option<&sled::Tree> {
        match name {
            "counts" => Some(&self.counts),
            "deliveries" => Some(&self.deliveries),
            "cuts" => Some(&self.cuts),
            "outbox" => Some(&self.outbox),
            _ => None,
        }
    }

    /// Every entry of the four trees that can be read; how many could not be
    /// decoded; and why a walk ended early, if one did.
    pub(super) fn read_all(&self) -> (Vec<RawEntry>, u64, Option<String>) {
        let mut out = Vec::new();
        let mut unreadable = 0;
        let walk = guarded("load", || {
            for name in TREES {
                let Some(tree) = self.tree(name) else {
                    continue;
                };
                for item in tree.iter() {
                    let (k, v) = item.map_err(backend)?;
                    if readable(name, &v) {
                        out.push((name, k.to_vec(), v.to_vec()));
                    } else {
                        unreadable += 1;
                    }
                }
            }
            Ok(())
        });
        (out, unreadable, walk.err().map(|e| e.to_string()))
    }

    /// Writes entries (from [`Self::read_all`] of a damaged store) into this one,
    /// keeping `node` as this store's id, and makes them durable.
    pub(super) fn restore(&self, node: &str, entries: &[RawEntry]) -> Result<(), StoreError> {
        guarded("put", || {
            for (name, k, v) in entries {
                if let Some(tree) = self.tree(name) {
                    tree.insert(k.as_slice(), v.as_slice()).map_err(backend)?;
                }
            }
            self.db.insert("node", node.as_bytes()).map_err(backend)?;
            Ok(())
        })?;
        self.entries.store(entries.len() as u64, Ordering::SeqCst);
        self.flush()
    }

    /// Takes the count of entries found when the store was opened.
    pub(super) fn set_entries(&self, n: u64) {
        self.entries.store(n, Ordering::SeqCst);
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs a removal with the checkpoint withdrawn first, so that it never claims
    /// an entry the removal took; the next flush records the count again.
    fn removing<T>(
        &self,
        f: impl FnOnce() -> Result<(T, u64), StoreError>,
    ) -> Result<T, StoreError> {
        let _held = lock(&self.checkpoint);
        match std::fs::remove_file(self.dir.join(CHECKPOINT_FILE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(backend(format!("cannot withdraw the checkpoint: {e}")));
            }
            _ => {}
        }
        let (value, removed) = f()?;
        self.entries.fetch_sub(removed, Ordering::SeqCst);
        Ok(value)
    }
}

fn counts_key(group: &Group, policy: &str) -> Vec<u8> {
    let mut k = group.day.0.to_be_bytes().to_vec();
    for (i, part) in [group.domain.as_str(), &group.record, policy]
        .iter()
        .enumerate()
    {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(part.as_bytes());
    }
    k
}

fn delivery_key(day: Day, report: &str, dest: &str) -> Vec<u8> {
    let mut k = day.0.to_be_bytes().to_vec();
    k.extend_from_slice(report.as_bytes());
    k.push(0);
    k.extend_from_slice(dest.as_bytes());
    k
}

/// Splits a key after its 8-byte day into its NUL-separated text parts.
fn key_parts(key: &[u8]) -> Option<(Day, Vec<String>)> {
    let day = Day(u64::from_be_bytes(key.get(..8)?.try_into().ok()?));
    let parts = key[8..]
        .split(|b| *b == 0)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    Some((day, parts))
}

impl ReportStore for SledReports {
    fn add(&self, tally: &Tally) -> Result<(), StoreError> {
        guarded("put", || {
            let mut batch = sled::Batch::default();
            let mut new = 0;
            for ((group, policy), delta) in &tally.counts {
                let key = counts_key(group, policy);
                let mut counts: Counts = match self.counts.get(&key).map_err(backend)? {
                    Some(v) => decode_counts(&group.domain, &v).unwrap_or_default(),
                    None => {
                        new += 1;
                        Counts::default()
                    }
                };
                counts.merge(delta);
                let value = postcard::to_allocvec(&counts).map_err(backend)?;
                batch.insert(key, value);
            }
            self.counts.apply_batch(batch).map_err(backend)?;
            self.entries.fetch_add(new, Ordering::SeqCst);
            Ok(())
        })
    }

    fn days(&self) -> Result<Vec<Day>, StoreError> {
        guarded("load", || {
            let mut days = Vec::new();
            let mut from = 0u64;
            while let Some((key, _)) = self
                .counts
                .range(from.to_be_bytes().to_vec()..)
                .next()
                .transpose()
                .map_err(backend)?
            {
                let Some((day, _)) = key_parts(&key) else {
                    break;
                };
                days.push(day);
                from = day.0 + 1;
            }
            Ok(days)
        })
    }

    fn day(&self, day: Day) -> Result<DayCounts, StoreError> {
        guarded("load", || {
            let mut out: DayCounts = Vec::new();
            for item in self.counts.scan_prefix(day.0.to_be_bytes()) {
                let (key, value) = item.map_err(backend)?;
                let Some((_, parts)) = key_parts(&key) else {
                    continue;
                };
                let [domain, record, policy] = <[String; 3]>::try_from(parts)
                    .map_err(|_| backend("counter key in an unknown form"))?;
                let counts = decode_counts(&domain, &value)?;
                let group = Group {
                    day,
                    domain,
                    record,
                };
                match out.last_mut() {
                    Some((g, policies)) if *g == group => policies.push((policy, counts)),
                    _ => out.push((group, vec![(policy, counts)])),
                }
            }
            Ok(out)
        })
    }

    fn delivery(&self, day: Day, report: &str, dest: &str) -> Result<Option<Delivery>, StoreError> {
        guarded("get", || {
            match self
                .deliveries
                .get(delivery_key(day, report, dest))
                .map_err(backend)?
            {
                Some(v) => decode(report, &v).map(Some),
                None => Ok(None),
            }
        })
    }

    fn set_delivery(
        &self,
        day: Day,
        report: &str,
        dest: &str,
        delivery: &Delivery,
    ) -> Result<(), StoreError> {
        guarded("put", || {
            let value = serde_json::to_vec(delivery).map_err(backend)?;
            let old = self
                .deliveries
                .insert(delivery_key(day, report, dest), value)
                .map_err(backend)?;
            // A delivery's record is what keeps a report from going out twice.
            self.deliveries.flush().map_err(backend)?;
            if old.is_none() {
                self.entries.fetch_add(1, Ordering::SeqCst);
            }
            Ok(())
        })
    }

    fn deliveries(&self, day: Day) -> Result<Vec<(String, String, Delivery)>, StoreError> {
        guarded("load", || {
            let mut out = Vec::new();
            for item in self.deliveries.scan_prefix(day.0.to_be_bytes()) {
                let (key, value) = item.map_err(backend)?;
                if let Some((_, mut parts)) = key_parts(&key)
                    && parts.len() == 2
                {
                    let dest = parts.pop().unwrap_or_default();
                    let report = parts.pop().unwrap_or_default();
                    let d: Delivery = decode(&report, &value)?;
                    out.push((report, dest, d));
                }
            }
            Ok(out)
        })
    }

    fn prune_before(&self, day: Day) -> Result<usize, StoreError> {
        let end = day.0.to_be_bytes().to_vec();
        let old: usize = guarded("load", || {
            let mut n = 0;
            for tree in [&self.counts, &self.deliveries, &self.cuts] {
                n += tree.range(..end.clone()).keys().count();
            }
            Ok(n)
        })?;
        if old == 0 {
            return Ok(0);
        }
        self.removing(|| {
            guarded("remove", || {
                let mut removed = 0;
                for tree in [&self.counts, &self.deliveries, &self.cuts] {
                    let keys: Vec<sled::IVec> = tree
                        .range(..end.clone())
                        .keys()
                        .collect::<Result<_, _>>()
                        .map_err(backend)?;
                    let mut batch = sled::Batch::default();
                    for k in &keys {
                        batch.remove(k);
                    }
                    tree.apply_batch(batch).map_err(backend)?;
                    removed += keys.len();
                }
                Ok((removed, removed as u64))
            })
        })
    }

    fn node(&self) -> String {
        self.node.clone()
    }

    fn cuts(&self, day: Day) -> Result<Vec<Cut>, StoreError> {
        guarded("load", || {
            let mut out = Vec::new();
            for item in self.cuts.scan_prefix(day.0.to_be_bytes()) {
                let (_, value) = item.map_err(backend)?;
                out.push(decode("cut", &value)?);
            }
            Ok(out)
        })
    }

    fn add_cut(&self, day: Day, cut: &Cut) -> Result<(), StoreError> {
        guarded("put", || {
            let mut key = day.0.to_be_bytes().to_vec();
            key.extend_from_slice(&cut.at.to_be_bytes());
            let value = serde_json::to_vec(cut).map_err(backend)?;
            let old = self.cuts.insert(key, value).map_err(backend)?;
            // A cut decides what later reports of the day leave out.
            self.cuts.flush().map_err(backend)?;
            if old.is_none() {
                self.entries.fetch_add(1, Ordering::SeqCst);
            }
            Ok(())
        })
    }

    /// Flushes, then records how many entries the store holds. The count is read
    /// before the flush: every entry it counts was written before the flush began,
    /// so the flush made it durable.
    fn flush(&self) -> Result<(), StoreError> {
        let _held = lock(&self.checkpoint);
        let entries = self.entries.load(Ordering::SeqCst);
        guarded("checkpoint", || {
            self.db.flush().map(|_| ()).map_err(backend)
        })?;
        write_count(&self.dir.join(CHECKPOINT_FILE), entries)
            .map_err(|e| backend(format!("cannot record the entry count: {e}")))
    }

    fn outbox_add(&self, tally: &Tally) -> Result<(), StoreError> {
        guarded("put", || {
            let seq = self.db.generate_id().map_err(backend)?;
            let batch = Batch {
                id: format!("{}-{seq}", self.node),
                datagrams: tally.datagrams,
                counts: tally
                    .counts
                    .iter()
                    .map(|((g, p), c)| (g.clone(), p.clone(), c.clone()))
                    .collect(),
            };
            let value = serde_json::to_vec(&batch).map_err(backend)?;
            self.outbox
                .insert(seq.to_be_bytes(), value)
                .map_err(backend)?;
            self.entries.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }

    fn outbox(&self, max: usize) -> Result<Vec<(u64, String, Tally)>, StoreError> {
        guarded("load", || {
            let mut out = Vec::new();
            for item in self.outbox.iter().take(max) {
                let (k, v) = item.map_err(backend)?;
                let key = u64::from_be_bytes(
                    k.as_ref()
                        .try_into()
                        .map_err(|_| backend("outbox key in an unknown form"))?,
                );
                let batch: Batch = decode("outbox", &v)?;
                let mut tally = Tally {
                    datagrams: batch.datagrams,
                    ..Tally::default()
                };
                for (g, p, c) in batch.counts {
                    tally.counts.insert((g, p), c);
                }
                out.push((key, batch.id, tally));
            }
            Ok(out)
        })
    }

    fn outbox_remove(&self, key: u64) -> Result<(), StoreError> {
        self.removing(|| {
            guarded("remove", || {
                let old = self.outbox.remove(key.to_be_bytes()).map_err(backend)?;
                self.outbox.flush().map_err(backend)?;
                Ok(((), u64::from(old.is_some())))
            })
        })
    }

    fn outbox_len(&self) -> usize {
        self.outbox.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tlsrpt::datagram::parse;

    fn datagram(domain: &str, failed: u8) -> crate::tlsrpt::datagram::Datagram {
        parse(
            format!(
                r#"{{"d":"{domain}","pr":"v=TLSRPTv1;rua=mailto:r@{domain}","policies":[{{"policy-type":9,"f":{failed}}}]}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn counters_add_up_across_tallies_and_reopen() {
        let dir = tempdir();
        let (d1, d2) = (Day(20_000), Day(20_001));
        {
            let store = SledReports::open(&dir).unwrap();
            for _ in 0..2 {
                let mut t = Tally::default();
                t.add(d1, &datagram("a.test", 0));
                t.add(d1, &datagram("a.test", 1));
                t.add(d1, &datagram("b.test", 0));
                t.add(d2, &datagram("a.test", 1));
                store.add(&t).unwrap();
            }
            let mut d = Delivery::new(d1, 5, 10);
            d.sent(d.first_try);
            store.set_delivery(d1, "r1", "mailto:r@a.test", &d).unwrap();
            store.flush().unwrap();
        }
        let store = SledReports::open(&dir).unwrap();
        assert_eq!(store.days().unwrap(), vec![d1, d2]);
        let groups = store.day(d1).unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].0.domain, "a.test");
        let c = &groups[0].1[0].1;
        assert_eq!((c.sessions, c.failures), (4, 2));
        assert_eq!(store.deliveries(d1).unwrap().len(), 1);
        assert!(
            store
                .delivery(d1, "r1", "mailto:r@a.test")
                .unwrap()
                .is_some()
        );
        assert!(
            store
                .delivery(d1, "r1", "mailto:x@a.test")
                .unwrap()
                .is_none()
        );

        let node = store.node();
        assert!(node.len() >= 8 && node.chars().all(|c| c.is_ascii_alphanumeric()));
        let cut = Cut {
            at: d1.start() + 60,
            counts: store.day(d1).unwrap(),
        };
        store.add_cut(d1, &cut).unwrap();
        assert_eq!(store.cuts(d1).unwrap(), [cut]);
        assert!(store.cuts(d2).unwrap().is_empty());
        drop(store);
        let store = SledReports::open(&dir).unwrap();
        assert_eq!(store.node(), node, "the node id is kept");
        assert_eq!(store.cuts(d1).unwrap().len(), 1, "cuts are kept");

        assert!(store.prune_before(d2).unwrap() >= 4);
        assert!(store.cuts(d1).unwrap().is_empty());
        assert_eq!(store.days().unwrap(), vec![d2]);
        assert!(store.deliveries(d1).unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempdir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "mta-stsd-tlsrpt-store-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }
}
