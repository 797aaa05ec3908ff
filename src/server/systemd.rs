//! The two pieces of systemd integration, done by hand (no libsystemd):
//! readiness notification (`sd_notify`, Type=notify) and socket activation
//! (`LISTEN_FDS`, an alternative to `server.listen`).

use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixDatagram;

use crate::server::socketmap::Listener;

/// Sends a state string ("READY=1", "STOPPING=1", ...) to `$NOTIFY_SOCKET`, if set.
/// Failures are logged and otherwise ignored: notification is best effort.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = (|| -> std::io::Result<()> {
        let sock = UnixDatagram::unbound()?;
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        } else {
            sock.send_to(state.as_bytes(), &path)?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        tracing::warn!(error = %e, state, "sd_notify failed");
    }
}

const SD_LISTEN_FDS_START: RawFd = 3;

/// Listeners passed by systemd socket activation, or `None` when the process was not
/// socket-activated. Clears the variables so children do not inherit them.
pub fn activated_listeners() -> std::io::Result<Option<Vec<Listener>>> {
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<RawFd>().ok());
    let (true, Some(count)) = (pid_ok, count) else {
        return Ok(None);
    };
    // SAFETY: removing variables before any other thread reads the environment.
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    let mut listeners = Vec::new();
    for fd in SD_LISTEN_FDS_START..SD_LISTEN_FDS_START + count {
        listeners.push(adopt(fd)?);
    }
    Ok(Some(listeners))
}

fn adopt(fd: RawFd) -> std::io::Result<Listener> {
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: fd is one systemd passed us; getsockname only writes into `storage`.
    let rc = unsafe { libc::getsockname(fd, (&raw mut storage).cast(), &mut len) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fcntl on a valid fd.
    unsafe {
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
    }
    match i32::from(storage.ss_family) {
        libc::AF_INET | libc::AF_INET6 => {
            // SAFETY: systemd hands each fd to us alone; we take ownership once.
            let std = unsafe { std::net::TcpListener::from_raw_fd(fd) };
            std.set_nonblocking(true)?;
            Ok(Listener::Tcp(tokio::net::TcpListener::from_std(std)?))
        }
        libc::AF_UNIX => {
            // SAFETY: as above.
            let std = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
            std.set_nonblocking(true)?;
            let path = std
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| p.to_owned()))
                .unwrap_or_default();
            Ok(Listener::Activated(
                tokio::net::UnixListener::from_std(std)?,
                path,
            ))
        }
        other => Err(std::io::Error::other(format!(
            "socket-activated fd {fd} has unsupported family {other}"
        ))),
    }
}
