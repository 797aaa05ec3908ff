//! Facts from Postfix's side (its own `postconf`, the files and users it reads
//! with) and the checks made of them.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::config::{Config, ListenAddr};
use crate::doctor::{self as doctor, Access, Anchors, Finding, Socketmap, User};

use super::Setup;

/// Runs Postfix's own `postconf -c DIR ARGS...`.
fn postconf(dir: &Path, args: &[&str]) -> Result<String, String> {
    crate::postfix::postconf(Some(dir), args)
}

fn param(dir: &Path, name: &str) -> String {
    postconf(dir, &["-xh", name]).unwrap_or_default()
}

/// The Postfix checks; returns the socketmaps Postfix uses that reach a listener,
/// with that listener, for the daemon's probes.
pub(super) fn postfix_checks(
    args: &Setup,
    config: &Config,
    listeners: &[ListenAddr],
    other_mta: bool,
    checks: &mut Vec<Finding>,
) -> Vec<(Socketmap, ListenAddr)> {
    let dir = &args.postfix_config;
    let version = match postconf(dir, &["-h", "mail_version"]) {
        Ok(v) => v,
        Err(e) if other_mta => {
            checks.push(Finding::ok(
                "postfix.config",
                format!("no Postfix here ({e}); checking the MTA that is"),
            ));
            return Vec::new();
        }
        Err(e) => {
            checks.push(Finding::problem(
                "postfix.config",
                format!(
                    "cannot read Postfix's configuration in {}: {e}",
                    dir.display()
                ),
                "install Postfix, or pass --postfix-config DIR (for Exim: --exim COMMAND; for Sendmail: --sendmail-cf FILE)",
            ));
            return Vec::new();
        }
    };
    checks.push(Finding::ok(
        "postfix.config",
        format!("Postfix {version}, configuration {}", dir.display()),
    ));

    let maps = param(dir, "smtp_tls_policy_maps");
    let queue = PathBuf::from(param(dir, "queue_directory"));
    let master = postconf(dir, &["-M"]).unwrap_or_default();
    let mut services = doctor::smtp_services(&master);
    if services.is_empty() {
        services.push(("smtp".into(), false));
    }
    let (sockets, _others) = doctor::parse_policy_maps(&maps);

    let resolved = resolve_socketmaps(&sockets, &services, &queue, listeners);
    checks.extend(doctor::check_policy_maps(&maps, &resolved, listeners));
    let used = check_socket_users(dir, &resolved, checks);
    for s in distinct_names(&used) {
        let configured: Vec<String> = config.zones.keys().cloned().collect();
        checks.push(doctor::check_zone(s, &configured));
        checks.push(doctor::check_version(
            &version,
            &s.name,
            &config.zone_section(&s.name),
            &config.zone(&s.name),
        ));
    }
    let requiretls = postconf(dir, &["-h", "requiretls_enable"]).ok();
    checks.extend(doctor::check_requiretls(
        requiretls.as_deref(),
        &postconf(dir, &["-xh", "smtp_requiretls_policy"]).unwrap_or_default(),
    ));
    let any_chroot = services.iter().any(|(_, c)| *c);
    checks.push(trust_check(dir, &queue, any_chroot));
    let mut tlsrpt = tlsrpt_facts(dir, config, &services, &queue);
    tlsrpt.zones_without_attributes = distinct_names(&used)
        .iter()
        .filter(|s| !config.zone(&s.name).tlsrpt)
        .map(|s| config.zone_section(&s.name))
        .collect();
    checks.extend(doctor::tlsrpt::check_tlsrpt(&tlsrpt));

    let trust_ad = std::fs::read_to_string(&args.resolv_conf)
        .map(|t| doctor::resolv_conf_trusts_ad(&t))
        .unwrap_or(false);
    checks.push(doctor::check_dane(
        &param(dir, "smtp_dns_support_level"),
        &param(dir, "smtp_tls_security_level"),
        trust_ad,
        config.dane.mode,
    ));
    used
}

/// One row per socketmap, and per smtp service for unix sockets (a chroot changes
/// what the path means), each with the daemon listener it reaches, if any.
fn resolve_socketmaps(
    sockets: &[Socketmap],
    services: &[(String, bool)],
    queue: &Path,
    listeners: &[ListenAddr],
) -> Vec<(Socketmap, Option<ListenAddr>)> {
    let mut resolved = Vec::new();
    for s in sockets {
        match &s.endpoint {
            doctor::Endpoint::Inet { .. } => {
                let l = doctor::listener_for(&s.endpoint, None, queue, listeners);
                resolved.push((s.clone(), l));
            }
            doctor::Endpoint::Unix(_) => {
                for (service, chrooted) in services {
                    let root = chrooted.then_some(queue);
                    let l = doctor::listener_for(&s.endpoint, root, queue, listeners);
                    let mut shown = s.clone();
                    shown.table = format!(
                        "{} (service {service}{})",
                        s.table,
                        if *chrooted {
                            format!(", chrooted to {}", queue.display())
                        } else {
                            String::new()
                        }
                    );
                    resolved.push((shown, l));
                }
            }
        }
    }
    resolved
}

/// Checks that Postfix's user may connect to each unix socket it uses; returns the
/// socketmaps that reach a listener, once per (name, listener).
fn check_socket_users(
    dir: &Path,
    resolved: &[(Socketmap, Option<ListenAddr>)],
    checks: &mut Vec<Finding>,
) -> Vec<(Socketmap, ListenAddr)> {
    let user = mail_owner(dir);
    let mut used: Vec<(Socketmap, ListenAddr)> = Vec::new();
    let mut sockets_checked = HashSet::new();
    for (s, l) in resolved {
        let Some(l) = l else { continue };
        if let ListenAddr::Unix(path) = l
            && sockets_checked.insert(path.clone())
        {
            checks.push(match &user {
                Ok(user) => {
                    let (dirs, file) = path_access(path);
                    doctor::check_socket_access(path, &dirs, file, user)
                }
                Err(e) => Finding::warning(
                    "postfix.socket_access",
                    format!("cannot check who may connect to {}: {e}", path.display()),
                    "check that Postfix's mail_owner exists (id postfix)",
                ),
            });
        }
        if !used.iter().any(|(u, ul)| u.name == s.name && ul == l) {
            used.push((s.clone(), l.clone()));
        }
    }
    used
}

/// The socketmaps in use, one per table name.
fn distinct_names(used: &[(Socketmap, ListenAddr)]) -> Vec<&Socketmap> {
    let mut names: Vec<&Socketmap> = Vec::new();
    for (s, _) in used {
        if !names.iter().any(|n| n.name == s.name) {
            names.push(s);
        }
    }
    names
}

/// The smtp client's trust anchors. CAfile is loaded when the smtp client starts,
/// before it enters its chroot; CApath is searched at verification time, inside the
/// chroot.
fn trust_check(dir: &Path, queue: &Path, any_chroot: bool) -> Finding {
    let system = system_roots();
    let ca_file = anchors(&param(dir, "smtp_tls_CAfile"), None, queue, &system);
    let ca_path = anchors(
        &param(dir, "smtp_tls_CApath"),
        any_chroot.then_some(queue),
        queue,
        &system,
    );
    let append = param(dir, "tls_append_default_CA").eq_ignore_ascii_case("yes");
    doctor::check_trust(&ca_file, &ca_path, append, system.len())
}

/// The uid and groups of the user Postfix's smtp client runs as (`mail_owner`).
fn mail_owner(dir: &Path) -> Result<User, String> {
    let name = param(dir, "mail_owner");
    if name.is_empty() {
        return Err("postconf gives no mail_owner".into());
    }
    let id = |flag: &str| -> Result<Vec<u32>, String> {
        let out = std::process::Command::new("id")
            .arg(flag)
            .arg(&name)
            .output()
            .map_err(|e| format!("cannot run id: {e}"))?;
        if !out.status.success() {
            return Err(format!("no user {name}"));
        }
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(|n| n.parse().map_err(|_| format!("id printed {n:?}")))
            .collect()
    };
    let uid = *id("-u")?.first().ok_or("id printed no uid")?;
    Ok(User {
        uid,
        gids: id("-G")?,
        name,
    })
}

/// TLSRPT on both sides: the daemon's `[tlsrpt]`, Postfix's `smtp_tlsrpt_*` as each
/// smtp service sees them, whether its TLS library links libtlsrpt, and the milters
/// mail from sendmail passes (for DKIM).
fn tlsrpt_facts(
    dir: &Path,
    config: &Config,
    services: &[(String, bool)],
    queue: &Path,
) -> doctor::tlsrpt::TlsrptFacts {
    // Postfix before 3.10 does not know the parameter: no default value.
    let known = postconf(dir, &["-dh", "smtp_tlsrpt_enable"])
        .map(|v| !v.trim().is_empty())
        .unwrap_or(false);
    let socket_name = param(dir, "smtp_tlsrpt_socket_name");
    let seen_at = services
        .iter()
        .map(|(service, chrooted)| {
            let root = chrooted.then_some(queue);
            let p = doctor::host_path(Path::new(&socket_name), root, queue);
            (service.clone(), *chrooted, p)
        })
        .collect();
    let links = |p: PathBuf| -> Option<bool> {
        let bytes = std::fs::read(p).ok()?;
        Some(bytes.windows(9).any(|w| w == b"libtlsrpt"))
    };
    let built_with_libtlsrpt =
        links(PathBuf::from(param(dir, "shlib_directory")).join("libpostfix-tls.so"))
            .or_else(|| links(PathBuf::from(param(dir, "daemon_directory")).join("smtp")));
    let socket = config.tlsrpt.socket.clone();
    let access = mail_owner(dir).ok().map(|user| {
        let (dirs, file) = path_access(&socket);
        doctor::tlsrpt::SocketAccess { dirs, file, user }
    });
    let socket_live = socket
        .exists()
        .then(|| crate::instance::socket_is_live(&socket));
    doctor::tlsrpt::TlsrptFacts {
        daemon_enabled: config.tlsrpt.enable,
        socket_live,
        daemon_socket: socket,
        postfix_enable: known.then(|| param(dir, "smtp_tlsrpt_enable")),
        socket_name,
        seen_at,
        built_with_libtlsrpt,
        access,
        mail: report_mail(dir, config),
        // Postfix before 3.11 does not know the parameter.
        skip_reused_handshakes: postconf(dir, &["-h", "smtp_tlsrpt_skip_reused_handshakes"])
            .ok()
            .filter(|v| !v.trim().is_empty()),
        zones_without_attributes: Vec::new(),
    }
}

/// How mailed reports go through this Postfix: the milters the daemon's way of
/// submitting passes, and the transport `report_from` is sent through.
fn report_mail(dir: &Path, config: &Config) -> doctor::tlsrpt::ReportMail {
    let milters_param = if config.tlsrpt.sendmail.is_some() {
        "non_smtpd_milters"
    } else {
        "smtpd_milters"
    };
    let from = config.tlsrpt.report_from.clone();
    let maps = param(dir, "sender_dependent_default_transport_maps");
    let transport = crate::postfix::table_list(&maps)
        .into_iter()
        .find_map(|table| {
            let out = std::process::Command::new("postmap")
                .arg("-c")
                .arg(dir)
                .args(["-q", &from, &table])
                .output()
                .ok()?;
            let value = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            (out.status.success() && !value.is_empty()).then_some(value)
        })
        // "smtp-notlsrpt:" or "smtp-notlsrpt:nexthop": the master.cf service.
        .map(|t| t.split(':').next().unwrap_or_default().to_owned())
        .filter(|t| !t.is_empty());
    let transport_without_tlsrpt = transport.as_deref().is_some_and(|t| {
        postconf(dir, &["-Ph", &format!("{t}/unix/smtp_tlsrpt_enable")])
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("no"))
    });
    doctor::tlsrpt::ReportMail {
        milters_param,
        milters: param(dir, milters_param),
        version: postconf(dir, &["-h", "mail_version"]).unwrap_or_default(),
        report_from: from,
        transport,
        transport_without_tlsrpt,
    }
}

/// The metadata of every directory above `path` (outermost first) and of `path`.
fn path_access(path: &Path) -> (Vec<(PathBuf, Access)>, Option<Access>) {
    let access = |p: &Path| {
        std::fs::metadata(p).ok().map(|m| Access {
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
        })
    };
    let mut dirs: Vec<(PathBuf, Access)> = path
        .ancestors()
        .skip(1)
        .filter_map(|d| access(d).map(|a| (d.to_owned(), a)))
        .collect();
    dirs.reverse();
    (dirs, access(path))
}

/// Reads the certificates of a CAfile (one PEM file) or CApath (a directory of PEM
/// files), as Postfix's smtp client would see it, and counts how many of them are
/// among the system's public roots (`system`).
fn anchors(value: &str, chroot: Option<&Path>, queue: &Path, system: &HashSet<Vec<u8>>) -> Anchors {
    if value.trim().is_empty() {
        return Anchors::Unset;
    }
    let path = doctor::host_path(Path::new(value.trim()), chroot, queue);
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Anchors::Missing(path);
        }
        Err(e) => return Anchors::Unreadable(path, e.to_string()),
    };
    let files: Vec<PathBuf> = if meta.is_dir() {
        match std::fs::read_dir(&path) {
            Ok(entries) => entries.flatten().map(|e| e.path()).collect(),
            Err(e) => return Anchors::Unreadable(path, e.to_string()),
        }
    } else {
        vec![path.clone()]
    };
    let mut seen = HashSet::new();
    let mut certs = Vec::new();
    for f in files {
        let Ok(iter) = CertificateDer::pem_file_iter(&f) else {
            continue;
        };
        for c in iter.flatten() {
            if seen.insert(c.to_vec()) {
                certs.push(c.to_vec());
            }
        }
    }
    Anchors::Loaded {
        path,
        public: certs.iter().filter(|c| system.contains(*c)).count(),
        certs: certs.len(),
    }
}

/// The system's public root certificates (Debian: /etc/ssl/certs).
fn system_roots() -> HashSet<Vec<u8>> {
    rustls_native_certs::load_native_certs()
        .certs
        .into_iter()
        .map(|c| c.to_vec())
        .collect()
}
