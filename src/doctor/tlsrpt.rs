//! The verdicts on TLSRPT (RFC 8460) between Postfix and mta-stsd: does Postfix send
//! its per-session TLS results (3.10 or later, built with libtlsrpt,
//! `smtp_tlsrpt_enable`), to the daemon's socket, as a user that may write to it; and
//! will mailed reports be DKIM-signed (RFC 8460 §5.3 requires it). None of this
//! affects delivery, so nothing here is worse than a warning.

use std::path::PathBuf;

use super::{Access, Check, User, socket_access};

/// What the command found about TLSRPT on both sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsrptFacts {
    /// `[tlsrpt] enable`.
    pub daemon_enabled: bool,
    /// `[tlsrpt] socket`.
    pub daemon_socket: PathBuf,
    /// Postfix's `smtp_tlsrpt_enable`; `None` when Postfix does not know the
    /// parameter (before 3.10).
    pub postfix_enable: Option<String>,
    /// Postfix's `smtp_tlsrpt_socket_name`, as written.
    pub socket_name: String,
    /// Where each smtp service (name, chrooted) finds that socket on the host.
    pub seen_at: Vec<(String, bool, PathBuf)>,
    /// Whether Postfix's TLS library links libtlsrpt (`None`: could not tell).
    pub built_with_libtlsrpt: Option<bool>,
    /// The socket's directories and file, for the access check, and Postfix's user.
    pub access: Option<SocketAccess>,
    /// Postfix's `non_smtpd_milters` (mail submitted with sendmail passes these).
    pub non_smtpd_milters: String,
    /// The socketmap names Postfix uses whose zone sends no TLSRPT attributes
    /// (`tlsrpt = false`): Postfix then does not know the policy it applied.
    pub zones_without_attributes: Vec<String>,
}

/// What decides whether Postfix's user may write to the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketAccess {
    /// Every directory on the way, outermost first.
    pub dirs: Vec<(PathBuf, Access)>,
    /// The socket itself, if it exists.
    pub file: Option<Access>,
    /// Postfix's `mail_owner`.
    pub user: User,
}

const NAME: &str = "tlsrpt";

/// The TLSRPT checks; none when neither side has TLSRPT on.
pub fn check_tlsrpt(f: &TlsrptFacts) -> Vec<Check> {
    let postfix_on = f
        .postfix_enable
        .as_deref()
        .is_some_and(|v| v.eq_ignore_ascii_case("yes"));
    if !f.daemon_enabled {
        return match postfix_on {
            true => vec![Check::warning(
                NAME,
                "Postfix sends TLSRPT results (smtp_tlsrpt_enable = yes), but mta-stsd does not collect them",
                "set [tlsrpt] enable = true (with organization_name, contact_info, report_from) and restart mta-stsd",
            )],
            false => Vec::new(),
        };
    }
    let mut out = postfix_sends(f, postfix_on);
    if !postfix_on || f.postfix_enable.is_none() {
        return out;
    }
    out.push(socket_reached(f));
    out.extend(socket_writable(f));
    out.extend(zones_with_attributes(f));
    out.push(dkim(f));
    out
}

/// Whether this Postfix can send TLSRPT results (3.10 or later, linked with
/// libtlsrpt) and is told to.
fn postfix_sends(f: &TlsrptFacts, postfix_on: bool) -> Vec<Check> {
    if f.postfix_enable.is_none() {
        return vec![Check::warning(
            NAME,
            "this Postfix has no TLSRPT support (Postfix 3.10 or later reports TLS results): mta-stsd will send no reports",
            "upgrade Postfix (Debian trixie, or bookworm-backports), or set [tlsrpt] enable = false",
        )];
    }
    let mut out = Vec::new();
    if f.built_with_libtlsrpt == Some(false) {
        out.push(Check::warning(
            NAME,
            "this Postfix is built without libtlsrpt: it sends no TLSRPT results",
            "use a Postfix built with libtlsrpt (Debian trixie's is), or set [tlsrpt] enable = false",
        ));
    }
    if !postfix_on {
        out.push(Check::warning(
            NAME,
            "mta-stsd collects TLSRPT results, but Postfix does not send them (smtp_tlsrpt_enable is not yes)",
            "postconf -e 'smtp_tlsrpt_enable = yes' 'smtp_tlsrpt_socket_name = run/tlsrpt/tlsrpt.sock'; postfix reload",
        ));
    }
    out
}

/// Whether `smtp_tlsrpt_socket_name`, as each smtp service sees it, is the daemon's
/// socket.
fn socket_reached(f: &TlsrptFacts) -> Check {
    let elsewhere: Vec<String> = f
        .seen_at
        .iter()
        .filter(|(_, _, p)| *p != f.daemon_socket)
        .map(|(service, chrooted, p)| {
            format!(
                "service {service}{} writes to {}",
                if *chrooted { " (chrooted)" } else { "" },
                p.display()
            )
        })
        .collect();
    if elsewhere.is_empty() {
        return Check::ok(
            NAME,
            format!(
                "Postfix sends TLSRPT results to {}",
                f.daemon_socket.display()
            ),
        );
    }
    Check::warning(
        NAME,
        format!(
            "smtp_tlsrpt_socket_name = {} does not reach mta-stsd's socket {}: {}",
            f.socket_name,
            f.daemon_socket.display(),
            elsewhere.join("; ")
        ),
        "set smtp_tlsrpt_socket_name = run/tlsrpt/tlsrpt.sock (relative to queue_directory) and [tlsrpt] socket to the same file",
    )
}

/// Whether Postfix's user may write to the socket. Results that cannot be written are
/// lost, mail is not: a warning at worst.
fn socket_writable(f: &TlsrptFacts) -> Option<Check> {
    let a = f.access.as_ref()?;
    let mut c = socket_access(
        "tlsrpt.socket_access",
        "tlsrpt.socket_mode",
        &f.daemon_socket,
        &a.dirs,
        a.file,
        &a.user,
    );
    c.level = c.level.min(super::Level::Warning);
    Some(c)
}

/// Zones answering without the TLSRPT attributes leave Postfix not knowing the policy.
fn zones_with_attributes(f: &TlsrptFacts) -> Option<Check> {
    let first = f.zones_without_attributes.first()?;
    Some(Check::warning(
        NAME,
        format!(
            "zone(s) {} answer Postfix without the TLSRPT attributes: Postfix cannot say which policy a session was under, so reports lack it",
            f.zones_without_attributes.join(", ")
        ),
        format!("set tlsrpt = true in [zones.{first}] (Postfix 3.10 or later)"),
    ))
}

/// Mailed reports need a DKIM signature (RFC 8460 §5.3): a milter mail from sendmail
/// passes.
fn dkim(f: &TlsrptFacts) -> Check {
    let milters = f.non_smtpd_milters.trim();
    if milters.is_empty() {
        return Check::warning(
            "tlsrpt.dkim",
            "mailed reports will not be DKIM-signed (non_smtpd_milters is empty); RFC 8460 requires a signature, and receivers may discard unsigned reports",
            "add your DKIM signer (OpenDKIM, rspamd, ...) to non_smtpd_milters, as for smtpd_milters",
        );
    }
    Check::ok(
        "tlsrpt.dkim",
        format!("mailed reports pass non_smtpd_milters ({milters}) for DKIM signing"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Level;

    fn facts() -> TlsrptFacts {
        let sock = PathBuf::from("/var/spool/postfix/run/tlsrpt/tlsrpt.sock");
        TlsrptFacts {
            daemon_enabled: true,
            daemon_socket: sock.clone(),
            postfix_enable: Some("yes".into()),
            socket_name: "run/tlsrpt/tlsrpt.sock".into(),
            seen_at: vec![("smtp".into(), true, sock)],
            built_with_libtlsrpt: Some(true),
            access: None,
            non_smtpd_milters: "inet:localhost:8891".into(),
            zones_without_attributes: Vec::new(),
        }
    }

    fn levels(f: &TlsrptFacts) -> Vec<(String, Level)> {
        check_tlsrpt(f)
            .into_iter()
            .map(|c| (c.check, c.level))
            .collect()
    }

    #[test]
    fn a_good_setup_is_ok() {
        assert!(check_tlsrpt(&facts()).iter().all(|c| c.level == Level::Ok));
    }

    #[test]
    fn each_gap_is_a_warning_with_a_fix() {
        let mut off = facts();
        off.daemon_enabled = false;
        assert_eq!(levels(&off), vec![("tlsrpt".into(), Level::Warning)]);
        off.postfix_enable = Some("no".into());
        assert!(
            check_tlsrpt(&off).is_empty(),
            "neither side on: nothing to say"
        );

        let mut old = facts();
        old.postfix_enable = None;
        let c = check_tlsrpt(&old);
        assert_eq!(c.len(), 1);
        assert!(c[0].message.contains("3.10"));

        let mut unbuilt = facts();
        unbuilt.built_with_libtlsrpt = Some(false);
        assert!(check_tlsrpt(&unbuilt)[0].message.contains("libtlsrpt"));

        let mut not_sending = facts();
        not_sending.postfix_enable = Some("no".into());
        let c = check_tlsrpt(&not_sending);
        assert!(
            c[0].fix
                .as_deref()
                .unwrap()
                .contains("smtp_tlsrpt_enable = yes")
        );

        let mut elsewhere = facts();
        elsewhere.seen_at[0].2 = PathBuf::from("/var/spool/postfix/var/run/tlsrpt.sock");
        let c = check_tlsrpt(&elsewhere);
        assert_eq!(c[0].level, Level::Warning);
        assert!(c[0].message.contains("chrooted"), "{}", c[0].message);

        let mut bare = facts();
        bare.zones_without_attributes = vec!["postfix".into()];
        let c = check_tlsrpt(&bare);
        assert!(c.iter().any(|c| {
            c.level == Level::Warning
                && c.fix
                    .as_deref()
                    .is_some_and(|f| f.contains("[zones.postfix]"))
        }));

        let mut unsigned = facts();
        unsigned.non_smtpd_milters = String::new();
        assert!(levels(&unsigned).contains(&("tlsrpt.dkim".into(), Level::Warning)));
    }

    #[test]
    fn a_socket_postfix_cannot_write_is_a_warning_not_a_problem() {
        let mut f = facts();
        let postfix = User {
            name: "postfix".into(),
            uid: 101,
            gids: vec![102],
        };
        let dirs = vec![(
            PathBuf::from("/var/spool/postfix/run/tlsrpt"),
            Access {
                mode: 0o2750,
                uid: 999,
                gid: 102,
            },
        )];
        let file = Access {
            mode: 0o640,
            uid: 999,
            gid: 102,
        };
        f.access = Some(SocketAccess {
            dirs,
            file: Some(file),
            user: postfix,
        });
        let c = check_tlsrpt(&f);
        let access = c
            .iter()
            .find(|c| c.check == "tlsrpt.socket_access")
            .unwrap();
        assert_eq!(access.level, Level::Warning);
        assert!(
            access
                .fix
                .as_deref()
                .unwrap()
                .contains("tlsrpt.socket_mode")
        );
    }
}
