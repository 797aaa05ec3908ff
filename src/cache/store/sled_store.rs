//! The sled-backed store: one tree, domain -> entry (in the form of
//! [`super::format`]), with a format marker. Entries written by earlier versions as
//! JSON are rewritten in the binary form when the cache is loaded.

use std::path::{Path, PathBuf};

use super::format::{decode_entry, decode_outline, encode_entry};
use super::{PolicyStore, Store, StoreError, Visit, VisitOutline};
use crate::cache::entry::Entry;
use crate::storage::sled::{move_aside, open_error, open_retrying, read_count, write_count};

const FORMAT_KEY: &[u8] = b"\0format";
const FORMAT: &[u8] = b"mta-stsd-cache-v1";
/// The checkpoint file, inside the store's directory (so it moves aside with it) but
/// outside sled's own files (so damage to those cannot take it along).
const CHECKPOINT_FILE: &str = "mta-stsd-policies";

/// The sled-backed store: one tree, domain -> entry.
pub struct SledStore {
    db: sled::Db,
    dir: PathBuf,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(Store::Policies, e.to_string())
}

impl SledStore {
    /// Opens (or creates) the store at `path`, checking its format version. A panic
    /// inside sled while it reads a damaged file is returned as an error.
    ///
    /// A cache locked by another handle is [`StoreError::Locked`], never a reason to
    /// move it aside. sled releases its lock from a background thread a moment after
    /// a handle is dropped, so a locked cache is retried for up to two seconds.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        open_retrying(Store::Policies, || Self::open_unguarded(path))
    }

    fn open_unguarded(path: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            // sled's own page cache. Small: the daemon keeps its hot set decoded in
            // memory, and pages sled drops stay in the kernel's page cache.
            .cache_capacity(16 * 1024 * 1024)
            .flush_every_ms(Some(1000))
            .open()
            .map_err(|e| open_error(Store::Policies, path, e))?;
        match db.get(FORMAT_KEY).map_err(backend)? {
            Some(v) if v.as_ref() == FORMAT => {}
            Some(v) => {
                return Err(StoreError::Backend(
                    Store::Policies,
                    format!("unknown cache format {:?}", String::from_utf8_lossy(&v)),
                ));
            }
            None if db.is_empty() => {
                db.insert(FORMAT_KEY, FORMAT).map_err(backend)?;
            }
            None => return Err(backend("no format marker")),
        }
        Ok(Self {
            db,
            dir: path.to_owned(),
        })
    }

    /// Opens the store; if that fails, moves the directory aside and starts empty.
    /// Returns the store and, if it had to, where the old directory went and why.
    pub fn open_or_recover(path: &Path) -> Result<(Self, Option<(PathBuf, String)>), StoreError> {
        match Self::open(path) {
            Ok(store) => Ok((store, None)),
            Err(e @ StoreError::Locked(..)) => Err(e),
            Err(first) => {
                let aside = move_aside(path, &first)?;
                let store = Self::open(path)?;
                Ok((store, Some((aside, first.to_string()))))
            }
        }
    }
}

/// The checkpoint recorded in the store directory `dir` (see
/// [`crate::storage::sled::read_count`]).
pub fn read_checkpoint(dir: &Path) -> Option<u64> {
    read_count(&dir.join(CHECKPOINT_FILE))
}

impl PolicyStore for SledStore {
    fn scan(&self, visit: &mut Visit<'_>) -> Result<(), StoreError> {
        let mut migrated = 0usize;
        let mut ended = Ok(());
        for item in self.db.iter() {
            // A damaged page ends the walk, but what was visited before it stands: the
            // caller reports the shortfall against the checkpoint, and the rest is
            // discovered again on its next lookup.
            let (k, v) = match item {
                Ok(kv) => kv,
                Err(e) => {
                    ended = Err(backend(e));
                    break;
                }
            };
            if k.as_ref() == FORMAT_KEY {
                continue;
            }
            let domain = String::from_utf8_lossy(&k).into_owned();
            match decode_entry(&domain, &v) {
                Ok(entry) => {
                    if v.first() == Some(&b'{') {
                        // Migrate an entry written by an earlier version, unless a
                        // lookup has written a newer one meanwhile.
                        // Only when the new form reads back: a policy whose lines an
                        // older, more lenient parser accepted stays JSON rather than
                        // being lost.
                        if let Some(bytes) = encode_entry(&entry)
                            .ok()
                            .filter(|b| decode_entry(&domain, b).is_ok())
                        {
                            let _ = self
                                .db
                                .compare_and_swap(&k, Some(&v), Some(bytes))
                                .map_err(backend)?;
                            migrated += 1;
                        }
                    }
                    visit(domain, Ok(entry));
                }
                Err(e) => visit(domain, Err(e)),
            }
        }
        if migrated > 0 {
            tracing::info!(
                entries = migrated,
                "cache entries rewritten in the compact format"
            );
        }
        ended
    }

    fn scan_outlines(&self, visit: &mut VisitOutline<'_>) -> Result<(), StoreError> {
        for item in self.db.iter() {
            let (k, v) = item.map_err(backend)?;
            if k.as_ref() == FORMAT_KEY {
                continue;
            }
            let domain = String::from_utf8_lossy(&k).into_owned();
            let outline = decode_outline(&domain, &v);
            visit(domain, outline);
        }
        Ok(())
    }

    fn get(&self, domain: &str) -> Result<Option<Entry>, StoreError> {
        match self.db.get(domain.as_bytes()).map_err(backend)? {
            None => Ok(None),
            Some(v) => decode_entry(domain, &v).map(Some),
        }
    }

    fn put(&self, domain: &str, entry: &Entry) -> Result<(), StoreError> {
        let bytes = encode_entry(entry)?;
        self.db.insert(domain.as_bytes(), bytes).map_err(backend)?;
        Ok(())
    }

    fn remove(&self, domain: &str) -> Result<(), StoreError> {
        self.db.remove(domain.as_bytes()).map_err(backend)?;
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(backend)?;
        Ok(())
    }

    fn checkpoint(&self) -> Option<u64> {
        read_checkpoint(&self.dir)
    }

    fn set_checkpoint(&self, policies: Option<u64>) -> Result<(), StoreError> {
        let file = self.dir.join(CHECKPOINT_FILE);
        let result = match policies {
            None => match std::fs::remove_file(&file) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            },
            Some(n) => write_count(&file, n),
        };
        result.map_err(|e| backend(format!("cannot record the entry count: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::super::format::ENTRY_V2;
    use super::super::format::samples::{entry, with_failures};
    use super::*;
    use crate::cache::entry::FailureClass;

    #[test]
    fn json_entries_of_earlier_versions_are_read_and_migrated_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(&dir.path().join("cache")).unwrap();
        // Exactly what earlier versions wrote: the entry as JSON.
        let json = |e: &Entry| serde_json::to_vec(e).unwrap();
        s.db.insert("a.example", json(&entry())).unwrap();
        s.db.insert("b.example", json(&with_failures())).unwrap();
        // A failure class this version does not know reads as `other`.
        let newer = String::from_utf8(json(&with_failures()))
            .unwrap()
            .replace("\"tls\"", "\"quantum\"");
        s.db.insert("c.example", newer.as_bytes()).unwrap();
        // Lines today's parser would not accept: still read from JSON, and kept in
        // JSON rather than rewritten into a form that would not read back.
        let lax = String::from_utf8(json(&entry()))
            .unwrap()
            .replace("\"mode: enforce\"", "\"mode: strict\"");
        s.db.insert("d.example", lax.as_bytes()).unwrap();

        let (all, errors) = super::super::read_all(&s).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(all.len(), 4);
        let get = |d: &str| s.get(d).unwrap().unwrap();
        assert_eq!(get("a.example"), entry());
        assert_eq!(get("b.example"), with_failures());
        assert_eq!(get("c.example").failure.unwrap().class, FailureClass::Other);
        assert_eq!(
            get("d.example").policy.unwrap().policy.mode,
            crate::mtasts::policy::Mode::Enforce
        );
        let raw = |d: &str| s.db.get(d).unwrap().unwrap()[0];
        assert_eq!(raw("a.example"), ENTRY_V2);
        assert_eq!(raw("b.example"), ENTRY_V2);
        assert_eq!(raw("c.example"), ENTRY_V2);
        assert_eq!(raw("d.example"), b'{');
    }

    #[test]
    fn round_trip_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache");
        {
            let s = SledStore::open(&path).unwrap();
            s.put("example.com", &entry()).unwrap();
            s.put("gone.example", &entry()).unwrap();
            s.remove("gone.example").unwrap();
            s.flush().unwrap();
        }
        let s = SledStore::open(&path).unwrap();
        assert_eq!(s.get("example.com").unwrap(), Some(entry()));
        assert_eq!(s.get("gone.example").unwrap(), None);
        let (all, errors) = super::super::read_all(&s).unwrap();
        assert!(errors.is_empty());
        assert_eq!(all, vec![("example.com".to_owned(), entry())]);
    }

    #[test]
    fn validity() {
        let e = entry();
        assert!(e.valid_policy(1099).is_some());
        assert!(e.valid_policy(1100).is_none());
        assert!(!e.is_live(1100));
    }

    #[test]
    fn corrupt_directory_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("conf"), b"\xff\xfe garbage").unwrap();
        std::fs::write(path.join("db"), vec![0xA5u8; 4096]).unwrap();
        let (s, moved) = SledStore::open_or_recover(&path).unwrap();
        let (aside, why) = moved.expect("moved aside");
        assert!(aside.exists(), "{why}");
        assert!(super::super::read_all(&s).unwrap().0.is_empty());
        s.put("example.com", &entry()).unwrap();
    }

    #[test]
    fn foreign_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache");
        {
            let db = sled::open(&path).unwrap();
            db.insert(FORMAT_KEY, b"mta-stsd-cache-v999".to_vec())
                .unwrap();
            db.flush().unwrap();
        }
        assert!(SledStore::open(&path).is_err());
        let (_s, moved) = SledStore::open_or_recover(&path).unwrap();
        assert!(moved.unwrap().1.contains("v999"));
    }

    #[test]
    fn unreadable_entries_are_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(&dir.path().join("c")).unwrap();
        s.put("good.example", &entry()).unwrap();
        s.db.insert(b"bad.example", b"{not json".to_vec()).unwrap();
        let (all, errors) = super::super::read_all(&s).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().contains("bad.example"));
    }

    #[test]
    fn the_checkpoint_outlives_the_handle_and_can_be_withdrawn() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache");
        {
            let s = SledStore::open(&path).unwrap();
            assert_eq!(s.checkpoint(), None);
            s.set_checkpoint(Some(300)).unwrap();
            s.flush().unwrap();
        }
        let s = SledStore::open(&path).unwrap();
        assert_eq!(s.checkpoint(), Some(300));
        s.set_checkpoint(None).unwrap();
        s.set_checkpoint(None).unwrap();
        assert_eq!(s.checkpoint(), None);
        std::fs::write(path.join(CHECKPOINT_FILE), "30 30\n").unwrap();
        assert_eq!(s.checkpoint(), Some(30));
        for damaged in ["", "30", "30 31\n", "30 30 30\n", "3x 3x\n"] {
            std::fs::write(path.join(CHECKPOINT_FILE), damaged).unwrap();
            assert_eq!(s.checkpoint(), None, "{damaged:?}");
        }
    }

    #[test]
    fn a_locked_cache_is_never_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache");
        let held = SledStore::open(&path).unwrap();
        held.put("example.com", &entry()).unwrap();
        match SledStore::open_or_recover(&path) {
            Err(StoreError::Locked(..)) => {}
            Err(e) => panic!("expected Locked, got {e}"),
            Ok(_) => panic!("a second handle opened a locked cache"),
        }
        let siblings = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(siblings, 1, "nothing moved aside");
        assert_eq!(held.get("example.com").unwrap(), Some(entry()));
    }
}
