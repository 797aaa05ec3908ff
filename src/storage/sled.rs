//! sled databases as the daemon keeps them: opened with panics contained and another
//! process's lock told apart from damage, an entry count recorded beside sled's own
//! files (sled can open a damaged database without an error and with fewer entries,
//! so what loads is compared with it), and a damaged database moved aside.

use std::path::{Path, PathBuf};

use super::{Store, StoreError, contain};

/// A sled open error as a store error: a lock held by another handle is
/// [`StoreError::Locked`] (sled reports it as an I/O error whose text names it).
pub fn open_error(store: Store, path: &Path, e: sled::Error) -> StoreError {
    match e {
        sled::Error::Io(io)
            if io.kind() == std::io::ErrorKind::WouldBlock
                || io.to_string().contains("could not acquire lock") =>
        {
            StoreError::Locked(store, path.display().to_string())
        }
        e => StoreError::Backend(store, e.to_string()),
    }
}

/// Runs `open` with panics contained. sled releases its lock from a background
/// thread a moment after a handle is dropped, so a database locked by another handle
/// is retried for up to two seconds before [`StoreError::Locked`] is returned (never
/// a reason to move it aside).
pub fn open_retrying<T>(
    store: Store,
    mut open: impl FnMut() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let mut tries = 0;
    loop {
        match contain(store, "open", &mut open) {
            Err(StoreError::Locked(..)) if tries < 40 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// A count recorded by [`write_count`]: the number written twice, so that damage to
/// the file itself (a flipped bit turning 20150 into 20350) reads as no record rather
/// than as lost entries; anything else (a garbled, cut or missing file) is no record.
pub fn read_count(file: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let mut words = text.split_ascii_whitespace();
    let (a, b) = (words.next()?, words.next()?);
    if a != b || words.next().is_some() {
        return None;
    }
    a.parse().ok()
}

/// Records `n` in `file` (write, then rename: a reader sees the old record or the new
/// one).
pub fn write_count(file: &Path, n: u64) -> std::io::Result<()> {
    let mut tmp = file.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, format!("{n} {n}\n")).and_then(|()| std::fs::rename(&tmp, file))
}

/// Moves a damaged database at `path` to [`aside_path`], returning where it went;
/// `why` is what was wrong with it, for the error when the move itself fails.
pub fn move_aside(path: &Path, why: &StoreError) -> Result<PathBuf, StoreError> {
    let aside = aside_path(path);
    std::fs::rename(path, &aside).map_err(|e| {
        StoreError::Backend(
            why.store(),
            format!("{why}; and cannot move {} aside: {e}", path.display()),
        )
    })?;
    Ok(aside)
}

/// `PATH.broken-TIMESTAMP`, with a counter if that exists already.
pub fn aside_path(path: &Path) -> PathBuf {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut n = 0;
    loop {
        let mut aside = path.as_os_str().to_owned();
        aside.push(format!(".broken-{stamp}"));
        if n > 0 {
            aside.push(format!("-{n}"));
        }
        let aside = PathBuf::from(aside);
        if !aside.exists() {
            return aside;
        }
        n += 1;
    }
}
