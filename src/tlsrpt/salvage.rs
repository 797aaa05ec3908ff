//! Opening the report store so that a damaged one is never silently empty. sled opens
//! some damaged files without an error and simply holds less (a truncated log, flipped
//! bits in a page): the day's reports would then go out short, or not at all, and
//! nobody would know. So the store keeps a checkpoint of how many entries it durably
//! held (see [`super::store`]); at open, every entry is read back and checked:
//!
//! - the store cannot be opened at all: it is moved aside and an empty one started;
//! - fewer readable entries than the checkpoint, an entry that does not decode, or a
//!   walk that ends early: what can be read is copied into a fresh store, the damaged
//!   one is moved aside (`PATH.broken-TIMESTAMP`) for inspection, and the loss is
//!   reported;
//! - otherwise the store is used as it is.
//!
//! The caller logs [`Damage`] in one line, counts it in a metric and shows it in
//! `tlsrpt show` and `doctor`. A store locked by a running daemon is never touched.

use std::path::{Path, PathBuf};

use super::store::{CHECKPOINT_FILE, ReportStore, SledReports};
use crate::storage::sled::{move_aside, read_count};
use crate::storage::{Store, StoreError};

/// What was found wrong with the report store when it was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Entries the checkpoint said the store held, if it said.
    pub expected: Option<u64>,
    /// Entries read back and kept.
    pub kept: u64,
    /// Entries lost: missing against the checkpoint, or unreadable.
    pub lost: u64,
    /// Where the damaged store was moved.
    pub aside: PathBuf,
    /// What was wrong, in a few words.
    pub reason: String,
}

impl Damage {
    /// One line for the log, `tlsrpt show` and `doctor`.
    pub fn message(&self, path: &Path) -> String {
        let expected = self
            .expected
            .map_or_else(String::new, |n| format!(" of {n}"));
        format!(
            "the TLSRPT report store {} was damaged ({}): {} entr{}{expected} lost, {} kept; the damaged store was moved to {}",
            path.display(),
            self.reason,
            self.lost,
            if self.lost == 1 { "y" } else { "ies" },
            self.kept,
            self.aside.display()
        )
    }
}

/// What the walk of an opened store found, against its checkpoint (pure).
pub fn verdict(
    expected: Option<u64>,
    readable: u64,
    unreadable: u64,
    walk_error: Option<&str>,
) -> Option<(u64, String)> {
    let missing = expected.map_or(0, |e| e.saturating_sub(readable));
    let lost = missing.max(unreadable);
    let reason = if let Some(e) = walk_error {
        format!("reading it failed: {e}")
    } else if unreadable > 0 {
        format!("{unreadable} entries do not decode")
    } else if missing > 0 {
        "fewer entries than its checkpoint records".to_owned()
    } else {
        return None;
    };
    Some((lost, reason))
}

/// Opens the report store at `path`, checking it against its checkpoint and
/// salvaging a damaged one. Errors only when no store at all can be had (a lock held
/// by another process, or a directory that cannot be moved or created).
pub fn open(path: &Path) -> Result<(SledReports, Option<Damage>), StoreError> {
    let expected = read_count(&path.join(CHECKPOINT_FILE));
    let store = match SledReports::open(path) {
        Ok(store) => store,
        Err(e) if SledReports::is_locked(&e) => return Err(e),
        Err(e) => {
            let aside = move_aside(path, &e)?;
            let store = SledReports::open(path)?;
            store.flush()?;
            let damage = Damage {
                expected,
                kept: 0,
                lost: expected.unwrap_or(0),
                aside,
                reason: format!("it could not be opened: {e}"),
            };
            return Ok((store, Some(damage)));
        }
    };
    let (entries, unreadable, walk_error) = store.read_all();
    let readable = entries.len() as u64;
    let Some((lost, reason)) = verdict(expected, readable, unreadable, walk_error.as_deref())
    else {
        store.set_entries(readable);
        store.flush()?;
        return Ok((store, None));
    };
    // Keep what can be read: into a fresh store, under the same node id (so reports
    // already sent keep their ids), with the damaged one set aside.
    let node = store.node();
    drop(store);
    let why = StoreError::Backend(Store::Reports, reason.clone());
    let aside = move_aside(path, &why)?;
    let fresh = SledReports::open(path)?;
    fresh.restore(&node, &entries)?;
    Ok((
        fresh,
        Some(Damage {
            expected,
            kept: readable,
            lost,
            aside,
            reason,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verdict_compares_with_the_checkpoint() {
        assert_eq!(verdict(Some(10), 10, 0, None), None);
        assert_eq!(
            verdict(None, 3, 0, None),
            None,
            "no checkpoint: nothing to compare"
        );
        assert_eq!(
            verdict(Some(10), 12, 0, None),
            None,
            "written after the checkpoint"
        );
        let (lost, why) = verdict(Some(10), 7, 0, None).unwrap();
        assert_eq!(lost, 3);
        assert!(why.contains("checkpoint"), "{why}");
        let (lost, why) = verdict(Some(10), 8, 2, None).unwrap();
        assert_eq!(lost, 2);
        assert!(why.contains("decode"), "{why}");
        let (lost, why) = verdict(Some(10), 4, 0, Some("page gone")).unwrap();
        assert_eq!(lost, 6);
        assert!(why.contains("page gone"), "{why}");
    }
}
