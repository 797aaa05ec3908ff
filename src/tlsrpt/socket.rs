//! The collector's unix datagram socket: made where `[tlsrpt] socket` says, with its
//! directory, mode and group, a stale socket from an earlier run replaced.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tokio::net::UnixDatagram;

use crate::config::TlsrptConfig;

/// Binds the collector's socket: the parent directory created if missing, a stale
/// socket replaced, the mode and group applied.
pub fn bind(config: &TlsrptConfig) -> std::io::Result<UnixDatagram> {
    let path = &config.socket;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    crate::remove_stale_socket(path)?;
    let socket = UnixDatagram::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(config.socket_mode.0))?;
    if let Some(group) = &config.socket_group {
        chgrp(path, group)?;
    }
    Ok(socket)
}

fn chgrp(path: &Path, group: &str) -> std::io::Result<()> {
    let gid = group_id(group).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no group named {group:?} (tlsrpt.socket_group)"),
        )
    })?;
    // Already right (a setgid directory gives the socket its group): nothing to do,
    // and no need to be a member of the group.
    if std::os::unix::fs::MetadataExt::gid(&std::fs::metadata(path)?) == gid {
        return Ok(());
    }
    std::os::unix::fs::chown(path, None, Some(gid))
}

/// A group's id, by name or number.
fn group_id(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse() {
        return Some(gid);
    }
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: getgrnam_r writes only into `group` and `buf` (whose length it is
    // given) and sets `result` to null or to `group`.
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::group = std::ptr::null_mut();
    let rc = unsafe {
        libc::getgrnam_r(
            c.as_ptr(),
            &mut group,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(group.gr_gid)
}
