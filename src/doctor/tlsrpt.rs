//! The verdicts on TLSRPT (RFC 8460) between Postfix and mta-stsd: does Postfix send
//! its per-session TLS results (3.10 or later, built with libtlsrpt,
//! `smtp_tlsrpt_enable`), to the daemon's socket, as a user that may write to it;
//! will mailed reports be DKIM-signed with a key that allows them (receivers MUST
//! ignore reports without a valid signature, RFC 8460 §3); and is the delivery of
//! our own reports kept out of the next reports (§3: no report loop). None of this
//! affects delivery, so nothing here is worse than a warning.

use std::path::PathBuf;

use super::{Access, Finding, User, socket_access};

/// What the command found about TLSRPT on both sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsrptFacts {
    /// `[tlsrpt] enable`.
    pub daemon_enabled: bool,
    /// `[tlsrpt] socket`.
    pub daemon_socket: PathBuf,
    /// Whether a process receives on that socket now (`None`: no socket file).
    pub socket_live: Option<bool>,
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
    /// How mailed reports go through Postfix.
    pub mail: ReportMail,
    /// Postfix 3.11's `smtp_tlsrpt_skip_reused_handshakes` (`None` before 3.11).
    pub skip_reused_handshakes: Option<String>,
    /// The configuration sections (`zones.NAME`) of the socketmap names Postfix uses
    /// that send no TLSRPT attributes (`tlsrpt = false`): Postfix then does not know
    /// the policy it applied.
    pub zones_without_attributes: Vec<String>,
}

/// How mailed reports go through Postfix: the milters they pass (for DKIM), and what
/// decides whether the session delivering them is reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportMail {
    /// The milter parameter mail submitted the daemon's way passes: `smtpd_milters`
    /// (SMTP, the default) or `non_smtpd_milters` (`[tlsrpt] sendmail`), and its value.
    pub milters_param: &'static str,
    pub milters: String,
    /// Postfix's `mail_version`.
    pub version: String,
    /// `[tlsrpt] report_from`.
    pub report_from: String,
    /// The transport `sender_dependent_default_transport_maps` gives `report_from`.
    pub transport: Option<String>,
    /// Whether that transport's master.cf service sets `smtp_tlsrpt_enable = no`.
    pub transport_without_tlsrpt: bool,
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
pub fn check_tlsrpt(f: &TlsrptFacts) -> Vec<Finding> {
    let postfix_on = f
        .postfix_enable
        .as_deref()
        .is_some_and(|v| v.eq_ignore_ascii_case("yes"));
    if !f.daemon_enabled {
        return match postfix_on {
            true => vec![Finding::warning(
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
    out.push(report_loop(&f.mail));
    out.extend(reused_handshakes(f));
    out
}

/// Postfix 3.11 can leave out sessions that reuse an earlier TLS session
/// (`smtp_tlsrpt_skip_reused_handshakes = yes`): the reports then count fewer sessions
/// than were made, and a domain cannot tell how much of its mail went well.
fn reused_handshakes(f: &TlsrptFacts) -> Option<Finding> {
    let value = f.skip_reused_handshakes.as_deref()?;
    Some(if value.trim().eq_ignore_ascii_case("yes") {
        Finding::warning(
            "tlsrpt.sessions",
            "smtp_tlsrpt_skip_reused_handshakes = yes: sessions that reuse a TLS session are not reported, so reports count fewer sessions than were made",
            "postconf -e 'smtp_tlsrpt_skip_reused_handshakes = no'; postfix reload",
        )
    } else {
        Finding::ok(
            "tlsrpt.sessions",
            "every session is reported (smtp_tlsrpt_skip_reused_handshakes = no)",
        )
    })
}

/// Whether this Postfix can send TLSRPT results (3.10 or later, linked with
/// libtlsrpt) and is told to.
fn postfix_sends(f: &TlsrptFacts, postfix_on: bool) -> Vec<Finding> {
    if f.postfix_enable.is_none() {
        return vec![Finding::warning(
            NAME,
            "this Postfix has no TLSRPT support (Postfix 3.10 or later reports TLS results): mta-stsd will send no reports",
            "use a Postfix that reports: Debian trixie or later (bookworm-backports' 3.10 is built without libtlsrpt), or set [tlsrpt] enable = false",
        )];
    }
    let mut out = Vec::new();
    if f.built_with_libtlsrpt == Some(false) {
        out.push(Finding::warning(
            NAME,
            "this Postfix is built without libtlsrpt: it sends no TLSRPT results",
            "use a Postfix built with libtlsrpt (Debian trixie's is), or set [tlsrpt] enable = false",
        ));
    }
    if !postfix_on {
        out.push(Finding::warning(
            NAME,
            "mta-stsd collects TLSRPT results, but Postfix does not send them (smtp_tlsrpt_enable is not yes)",
            "postconf -e 'smtp_tlsrpt_enable = yes' 'smtp_tlsrpt_socket_name = run/tlsrpt/tlsrpt.sock'; postfix reload",
        ));
    }
    out
}

/// Whether `smtp_tlsrpt_socket_name`, as each smtp service sees it, is the daemon's
/// socket.
fn socket_reached(f: &TlsrptFacts) -> Finding {
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
        return match f.socket_live {
            Some(true) => Finding::ok(
                NAME,
                format!(
                    "Postfix sends TLSRPT results to {}, where mta-stsd receives them",
                    f.daemon_socket.display()
                ),
            ),
            Some(false) => Finding::warning(
                NAME,
                format!(
                    "nothing receives on {}: Postfix's TLSRPT results are lost (is mta-stsd running? a second instance that stopped may have left a dead socket)",
                    f.daemon_socket.display()
                ),
                "systemctl restart mta-stsd (it makes the socket anew)",
            ),
            None => Finding::warning(
                NAME,
                format!(
                    "{} does not exist: Postfix's TLSRPT results are lost (is mta-stsd running with [tlsrpt] enable = true?)",
                    f.daemon_socket.display()
                ),
                "systemctl restart mta-stsd",
            ),
        };
    }
    Finding::warning(
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
fn socket_writable(f: &TlsrptFacts) -> Option<Finding> {
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
fn zones_with_attributes(f: &TlsrptFacts) -> Option<Finding> {
    let first = f.zones_without_attributes.first()?;
    Some(Finding::warning(
        NAME,
        format!(
            "{} answer Postfix without the TLSRPT attributes: Postfix cannot say which policy a session was under, so reports lack it",
            f.zones_without_attributes.join(", ")
        ),
        format!("set tlsrpt = true in [{first}] (Postfix 3.10 or later)"),
    ))
}

/// Mailed reports need a DKIM signature (RFC 8460 §3): a milter that the way they
/// are submitted passes.
fn dkim(f: &TlsrptFacts) -> Finding {
    let (param, milters) = (f.mail.milters_param, f.mail.milters.trim());
    if milters.is_empty() {
        return Finding::warning(
            "tlsrpt.dkim",
            format!(
                "mailed reports will not be DKIM-signed ({param} is empty); receivers must ignore reports without a valid DKIM signature (RFC 8460 section 3)"
            ),
            format!("add your DKIM signer (OpenDKIM, rspamd, ...) to {param}"),
        );
    }
    Finding::ok(
        "tlsrpt.dkim",
        format!("mailed reports pass {param} ({milters}) for DKIM signing"),
    )
}

/// The session that delivers a report must not be reported (RFC 8460 §3). Postfix
/// 3.11 leaves out messages with `TLS-Required: No` by itself; 3.10 needs the report
/// sender routed through an smtp transport without TLSRPT.
pub fn report_loop(m: &ReportMail) -> Finding {
    const CHECK: &str = "tlsrpt.loop";
    if super::parse_version(&m.version).is_some_and(|v| v >= (3, 11, 0)) {
        return Finding::ok(
            CHECK,
            format!(
                "Postfix {} leaves mailed reports (TLS-Required: No) out of its TLS reports",
                m.version
            ),
        );
    }
    let recipe = format!(
        "postconf -e 'sender_dependent_default_transport_maps = inline:{{ {}=smtp-notlsrpt: }}'; postconf -M 'smtp-notlsrpt/unix=smtp-notlsrpt unix - - y - - smtp -o syslog_name=postfix/smtp-notlsrpt -o smtp_tlsrpt_enable=no'; postfix reload",
        m.report_from
    );
    match &m.transport {
        Some(t) if m.transport_without_tlsrpt => Finding::ok(
            CHECK,
            format!(
                "mail from {} leaves through {t}, without TLSRPT: no report about our reports",
                m.report_from
            ),
        ),
        Some(t) => Finding::warning(
            CHECK,
            format!(
                "mail from {} leaves through {t}, which reports TLS results: every domain mailed a report gets a report about it the next day (a report loop)",
                m.report_from
            ),
            format!("set -o smtp_tlsrpt_enable=no on {t} in master.cf, or: {recipe}"),
        ),
        None => Finding::warning(
            CHECK,
            format!(
                "Postfix {} reports the sessions that deliver mailed reports: every domain mailed a report gets a report about it the next day (a report loop)",
                m.version
            ),
            recipe,
        ),
    }
}

/// A DKIM key record (`v=DKIM1; ...`) that restricts its service types (`s=`, RFC 6376
/// §3.6.1) without `tlsrpt` or `*`: RFC 8460 §3 asks receivers to ignore signatures
/// made with it. `None` when the record allows TLSRPT.
pub fn dkim_key_refuses_tlsrpt(record: &str) -> Option<String> {
    let services = record.split(';').find_map(|tag| {
        let (name, value) = tag.split_once('=')?;
        (name.trim() == "s").then(|| value.trim().to_owned())
    })?;
    let allowed = services
        .split(':')
        .any(|s| s.trim() == "*" || s.trim().eq_ignore_ascii_case("tlsrpt"));
    (!allowed).then_some(services)
}

/// The DKIM key check: `key` is `selector._domainkey.domain` and its TXT record, if
/// one was found.
pub fn check_dkim_key(key: &str, record: Option<&str>) -> Finding {
    const CHECK: &str = "tlsrpt.dkim";
    match record {
        None => Finding::warning(
            CHECK,
            format!("no DKIM key record at {key}: signatures made with it cannot be verified"),
            format!("publish the key's TXT record at {key}"),
        ),
        Some(r) => match dkim_key_refuses_tlsrpt(r) {
            Some(services) => Finding::warning(
                CHECK,
                format!(
                    "the DKIM key {key} allows only s={services}: receivers ignore TLS reports signed with it (RFC 8460 section 3)"
                ),
                format!("add tlsrpt to its service types (s={services}:tlsrpt), or remove s="),
            ),
            None => Finding::ok(CHECK, format!("the DKIM key {key} may sign TLS reports")),
        },
    }
}

/// The (domain, selector) pairs an OpenDKIM configuration signs with: `Domain` and
/// `Selector`, and each `KeyTable` line (`name domain:selector:keyfile`). `read`
/// reads the key table's file.
pub fn opendkim_signers(
    conf: &str,
    read: impl Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    let value = |name: &str| {
        conf.lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (k, v) = l.split_once(char::is_whitespace)?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
    };
    let mut out = Vec::new();
    if let (Some(d), Some(s)) = (value("Domain"), value("Selector")) {
        for d in d.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            out.push((d.to_ascii_lowercase(), s.clone()));
        }
    }
    if let Some(table) = value("KeyTable") {
        let path = table
            .strip_prefix("refile:")
            .or_else(|| table.strip_prefix("file:"))
            .unwrap_or(&table);
        for line in read(path).unwrap_or_default().lines() {
            let line = line.trim();
            if line.starts_with('#') {
                continue;
            }
            if let Some((_, spec)) = line.split_once(char::is_whitespace) {
                let mut parts = spec.trim().split(':');
                if let (Some(d), Some(s)) = (parts.next(), parts.next()) {
                    out.push((d.to_ascii_lowercase(), s.to_owned()));
                }
            }
        }
    }
    out.dedup();
    out
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
            socket_live: Some(true),
            postfix_enable: Some("yes".into()),
            socket_name: "run/tlsrpt/tlsrpt.sock".into(),
            seen_at: vec![("smtp".into(), true, sock)],
            built_with_libtlsrpt: Some(true),
            access: None,
            mail: ReportMail {
                milters_param: "smtpd_milters",
                milters: "inet:localhost:8891".into(),
                version: "3.10.13".into(),
                report_from: "tlsrpt@example.com".into(),
                transport: Some("smtp-notlsrpt".into()),
                transport_without_tlsrpt: true,
            },
            skip_reused_handshakes: None,
            zones_without_attributes: Vec::new(),
        }
    }

    #[test]
    fn a_socket_nobody_receives_on_is_found() {
        let mut dead = facts();
        dead.socket_live = Some(false);
        let c = check_tlsrpt(&dead);
        assert!(c.iter().any(|c| c.check == NAME
            && c.level == Level::Warning
            && c.message.contains("nothing receives")));
        let mut gone = facts();
        gone.socket_live = None;
        assert!(
            check_tlsrpt(&gone)
                .iter()
                .any(|c| c.check == NAME && c.message.contains("does not exist"))
        );
    }

    #[test]
    fn postfix_3_11_reports_every_session_unless_told_not_to() {
        assert!(!levels(&facts()).iter().any(|(c, _)| c == "tlsrpt.sessions"));
        let mut f = facts();
        f.skip_reused_handshakes = Some("no".into());
        assert!(levels(&f).contains(&("tlsrpt.sessions".into(), Level::Ok)));
        f.skip_reused_handshakes = Some("yes".into());
        assert!(levels(&f).contains(&("tlsrpt.sessions".into(), Level::Warning)));
    }

    #[test]
    fn the_report_loop_is_closed_by_the_recipe_or_by_postfix_3_11() {
        let good = facts().mail;
        assert_eq!(report_loop(&good).level, Level::Ok);
        let mut plain = good.clone();
        plain.transport = None;
        let c = report_loop(&plain);
        assert_eq!(c.level, Level::Warning);
        assert!(c.message.contains("report loop"), "{}", c.message);
        let fix = c.fix.unwrap_or_default();
        assert!(
            fix.contains("tlsrpt@example.com=smtp-notlsrpt:")
                && fix.contains("smtp_tlsrpt_enable=no"),
            "{fix}"
        );
        let mut reporting = good.clone();
        reporting.transport_without_tlsrpt = false;
        assert_eq!(report_loop(&reporting).level, Level::Warning);
        let mut sid = plain.clone();
        sid.version = "3.11.7".into();
        assert_eq!(report_loop(&sid).level, Level::Ok, "3.11 needs no recipe");
    }

    #[test]
    fn dkim_keys_must_allow_tlsrpt() {
        assert_eq!(dkim_key_refuses_tlsrpt("v=DKIM1; k=rsa; p=MIGf"), None);
        assert_eq!(dkim_key_refuses_tlsrpt("v=DKIM1; s=*; p=MIGf"), None);
        assert_eq!(
            dkim_key_refuses_tlsrpt("v=DKIM1; s=email:tlsrpt; p=MIGf"),
            None
        );
        assert_eq!(
            dkim_key_refuses_tlsrpt("v=DKIM1; k=rsa; s=email; p=MIGf").as_deref(),
            Some("email")
        );
        let key = "mail._domainkey.example.com";
        assert_eq!(
            check_dkim_key(key, Some("v=DKIM1; s=email; p=x")).level,
            Level::Warning
        );
        assert_eq!(check_dkim_key(key, Some("v=DKIM1; p=x")).level, Level::Ok);
        assert_eq!(check_dkim_key(key, None).level, Level::Warning);
    }

    #[test]
    fn opendkim_signers_from_its_configuration() {
        let conf = "# OpenDKIM\nDomain example.com\nSelector mail\nKeyTable refile:/etc/opendkim/key.table\n";
        let table = "mail2 example.org:s2024:/etc/opendkim/keys/org.private\n# comment\n";
        let got = opendkim_signers(conf, |p| {
            (p == "/etc/opendkim/key.table").then(|| table.to_owned())
        });
        assert_eq!(
            got,
            [
                ("example.com".to_owned(), "mail".to_owned()),
                ("example.org".to_owned(), "s2024".to_owned())
            ]
        );
        assert!(opendkim_signers("Syslog yes\n", |_| None).is_empty());
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
        bare.zones_without_attributes = vec!["zones.postfix".into()];
        let c = check_tlsrpt(&bare);
        assert!(c.iter().any(|c| {
            c.level == Level::Warning
                && c.fix
                    .as_deref()
                    .is_some_and(|f| f.contains("[zones.postfix]"))
        }));

        let mut unsigned = facts();
        unsigned.mail.milters = String::new();
        assert!(levels(&unsigned).contains(&("tlsrpt.dkim".into(), Level::Warning)));
        let c = check_tlsrpt(&unsigned);
        assert!(c.iter().any(|c| c.fix.as_deref()
            == Some("add your DKIM signer (OpenDKIM, rspamd, ...) to smtpd_milters")));
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
