//! Whether a live process already holds what a daemon starting with a configuration
//! would take: its unix sockets (socketmap listeners, the TLSRPT socket) and its
//! stores (the policy cache, the TLSRPT report store). A second `serve` must never
//! replace a live daemon's socket (the first would go deaf) or run beside it on the
//! same store; `serve` refuses, `check-config` says so, `doctor` checks the sockets
//! it finds answer.
//!
//! Probes, not locks: a socket is live when a connection to it is accepted (stream)
//! or a datagram socket accepts a connect (someone is bound to it); a sled store is
//! held when its data file's lock (flock, as sled takes it) cannot be had.

use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};

use crate::config::{Config, ListenAddr};

/// Something a live process holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// `server.listen`, `tlsrpt.socket`, `cache.path`, `tlsrpt.path`.
    pub setting: &'static str,
    pub path: PathBuf,
    /// "a running daemon answers on it", "it is locked by a running daemon".
    pub how: &'static str,
}

impl std::fmt::Display for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.setting, self.path.display(), self.how)
    }
}

/// Whether a process receives on the unix socket at `path` (stream or datagram).
pub fn socket_is_live(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    if !is_socket {
        return false;
    }
    UnixStream::connect(path).is_ok()
        || UnixDatagram::unbound().is_ok_and(|s| s.connect(path).is_ok())
}

/// Whether the sled store at `dir` is locked by a live process: sled holds an
/// exclusive flock on its data file `db` while the store is open.
pub fn store_is_held(dir: &Path) -> bool {
    let Ok(file) = std::fs::OpenOptions::new().read(true).open(dir.join("db")) else {
        return false;
    };
    // SAFETY: flock(2) on a file descriptor this function owns; a lock taken here is
    // released at once (and with the file when it is dropped).
    unsafe {
        if libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 {
            libc::flock(file.as_raw_fd(), libc::LOCK_UN);
            return false;
        }
    }
    std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
}

/// Everything `config` would take that a live process holds now.
pub fn held(config: &Config) -> Vec<Held> {
    let mut out = Vec::new();
    for l in &config.server.listen {
        if let ListenAddr::Unix(path) = l
            && socket_is_live(path)
        {
            out.push(Held {
                setting: "server.listen",
                path: path.clone(),
                how: "a running daemon answers on it",
            });
        }
    }
    if config.tlsrpt.enable && socket_is_live(&config.tlsrpt.socket) {
        out.push(Held {
            setting: "tlsrpt.socket",
            path: config.tlsrpt.socket.clone(),
            how: "a running daemon receives on it",
        });
    }
    if let Some(dir) = config.cache.resolved_path()
        && store_is_held(&dir)
    {
        out.push(Held {
            setting: "cache.path",
            path: dir,
            how: "a running daemon has it open (locked)",
        });
    }
    if config.tlsrpt.enable
        && let Some(dir) = config.cache.tlsrpt_path(&config.tlsrpt)
        && store_is_held(&dir)
    {
        out.push(Held {
            setting: "tlsrpt.path",
            path: dir,
            how: "a running daemon has it open (locked)",
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_sockets_and_held_stores_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let stream = dir.path().join("s.sock");
        let dgram = dir.path().join("d.sock");
        assert!(!socket_is_live(&stream), "nothing there");
        let listener = std::os::unix::net::UnixListener::bind(&stream).unwrap();
        let receiver = UnixDatagram::bind(&dgram).unwrap();
        assert!(socket_is_live(&stream));
        assert!(socket_is_live(&dgram));
        drop((listener, receiver));
        assert!(!socket_is_live(&stream), "a stale socket file");
        assert!(!socket_is_live(&dgram), "a stale socket file");

        let store = dir.path().join("cache");
        assert!(!store_is_held(&store));
        let db = sled::open(&store).unwrap();
        assert!(store_is_held(&store));
        drop(db);
        // sled releases its lock from a background thread a moment later.
        let released = (0..100).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            !store_is_held(&store)
        });
        assert!(released);
    }
}
