//! systemd integration through the `sd-notify` crate: readiness notification
//! (`Type=notify`) and socket activation (`LISTEN_FDS`, an alternative to
//! `server.listen`).

use std::os::fd::OwnedFd;

pub use sd_notify::NotifyState;

use crate::server::socketmap::Listener;

/// Tells systemd about a state change, if it is listening. Best effort: a failure is
/// logged and otherwise ignored.
pub fn notify(state: NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(std::slice::from_ref(&state)) {
        tracing::warn!(error = %e, state = ?state, "sd_notify failed");
    }
}

/// Takes the sockets systemd passed by socket activation (none when the process was
/// not socket-activated) and removes `LISTEN_PID`/`LISTEN_FDS` from the environment
/// so that children do not inherit them.
///
/// # Safety
///
/// Changing the environment is sound only while no other thread can read it: call
/// this before the async runtime (or any other thread) starts.
pub unsafe fn take_listen_fds() -> std::io::Result<Vec<OwnedFd>> {
    use std::os::fd::FromRawFd;
    // SAFETY: the caller guarantees the process is still single-threaded.
    let fds = unsafe { sd_notify::listen_fds_and_unset_env() }?;
    Ok(fds
        .map(|fd| {
            // SAFETY: systemd passed these descriptors to this process alone, and
            // listen_fds yields each once; nothing else owns or closes them.
            unsafe { OwnedFd::from_raw_fd(fd) }
        })
        .collect())
}

/// Turns passed sockets into listeners (needs the async runtime).
pub fn adopt(fds: Vec<OwnedFd>) -> std::io::Result<Vec<Listener>> {
    fds.into_iter().map(adopt_one).collect()
}

fn adopt_one(fd: OwnedFd) -> std::io::Result<Listener> {
    let socket = socket2::Socket::from(fd);
    let addr = socket.local_addr()?;
    socket.set_nonblocking(true)?;
    let fd = OwnedFd::from(socket);
    if addr.is_ipv4() || addr.is_ipv6() {
        let std = std::net::TcpListener::from(fd);
        Ok(Listener::Tcp(tokio::net::TcpListener::from_std(std)?))
    } else if addr.is_unix() {
        let path = addr.as_pathname().map(|p| p.to_owned()).unwrap_or_default();
        let std = std::os::unix::net::UnixListener::from(fd);
        Ok(Listener::Activated(
            tokio::net::UnixListener::from_std(std)?,
            path,
        ))
    } else {
        Err(std::io::Error::other(format!(
            "socket-activated descriptor has unsupported family {:?}",
            addr.family()
        )))
    }
}
