//! May Postfix's user reach a unix socket (the socketmap's, TLSRPT's)? Pure: the
//! metadata of the socket and of every directory on its path in, one [`Check`] out.

use std::path::{Path, PathBuf};

use super::Finding;

/// File metadata needed to decide whether a user may reach a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// A user's identity: the uid and every group id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gids: Vec<u32>,
}

fn permits(user: &User, a: Access, bits: u32) -> bool {
    if user.uid == 0 {
        return true;
    }
    let shift = if a.uid == user.uid {
        6
    } else if user.gids.contains(&a.gid) {
        3
    } else {
        0
    };
    (a.mode >> shift) & bits == bits
}

/// May `user` connect to the unix socket at `socket`, given the metadata of every
/// directory on its path (outermost first, ending with the socket's own directory)?
/// Connecting needs search (x) on each directory and write on the socket (unix(7)).
pub fn check_socket_access(
    socket: &Path,
    dirs: &[(PathBuf, Access)],
    file: Option<Access>,
    user: &User,
) -> Finding {
    socket_access(
        "postfix.socket_access",
        "server.socket_mode",
        socket,
        dirs,
        file,
        user,
    )
}

/// [`check_socket_access`] under the check name `name`, whose fix names the mode
/// setting `setting`.
pub fn socket_access(
    name: &str,
    setting: &str,
    socket: &Path,
    dirs: &[(PathBuf, Access)],
    file: Option<Access>,
    user: &User,
) -> Finding {
    let Some(file) = file else {
        return Finding::problem(
            name,
            format!("{} does not exist: is mta-stsd running?", socket.display()),
            format!(
                "start mta-stsd (systemctl start mta-stsd) and check {}",
                if setting.starts_with("tlsrpt") {
                    "tlsrpt.socket"
                } else {
                    "server.listen"
                }
            ),
        );
    };
    if let Some((dir, _)) = dirs.iter().find(|(_, a)| !permits(user, *a, 0o1)) {
        return Finding::problem(
            name,
            format!(
                "user {} cannot enter {} on the way to {}",
                user.name,
                dir.display(),
                socket.display()
            ),
            format!(
                "chmod o+x {} (or make it group-accessible to {})",
                dir.display(),
                user.name
            ),
        );
    }
    if !permits(user, file, 0o2) {
        return Finding::problem(
            name,
            format!(
                "user {} may not connect to {} (mode {:04o})",
                user.name,
                socket.display(),
                file.mode & 0o7777
            ),
            format!("set {setting} = \"0666\" (or a group that includes Postfix's mail_owner)"),
        );
    }
    Finding::ok(
        name,
        format!("user {} can connect to {}", user.name, socket.display()),
    )
}
