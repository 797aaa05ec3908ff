//! `mta-stsd doctor`: checks the live Postfix + mta-stsd setup. This file gathers the
//! facts (Postfix's own `postconf`, files, the running daemon); the verdicts are the
//! pure functions of [`crate::doctor`].

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Framed;

use crate::config::{Config, ListenAddr};
use crate::doctor::{self, Access, Anchors, Check, Level, Socketmap, User};
use crate::protocol::codec::NetstringCodec;

/// A next-hop key the daemon answers without any DNS or HTTPS (an address literal has
/// no domain, so no policy): the probe measures the socketmap path alone.
const PROBE_KEY: &str = "[192.0.2.1]";
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// `mta-stsd doctor`'s arguments.
#[derive(clap::Args)]
pub struct Args {
    /// The daemon's configuration file (default: /etc/mta-stsd/mta-stsd.toml if it
    /// exists, else built-in defaults).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Postfix's configuration directory.
    #[arg(long, value_name = "DIR", default_value = "/etc/postfix")]
    pub postfix_config: PathBuf,
    /// The resolver configuration Postfix uses (for DNSSEC's `options trust-ad`).
    #[arg(long, value_name = "FILE", default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn run(args: Args) -> anyhow::Result<ExitCode> {
    super::current_thread()?.block_on(command(args))
}

async fn command(args: Args) -> anyhow::Result<ExitCode> {
    let checks = run_checks(&args).await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        print!("{}", to_text(&checks));
    }
    Ok(ExitCode::from(doctor::worst(&checks).exit_code()))
}

fn to_text(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        out.push_str(&format!(
            "{:<8} {:<26} {}\n",
            c.level.as_str(),
            c.check,
            c.message
        ));
        if let Some(fix) = &c.fix {
            out.push_str(&format!("{:<8} {:<26} fix: {fix}\n", "", ""));
        }
    }
    let count = |l| checks.iter().filter(|c| c.level == l).count();
    out.push_str(&format!(
        "doctor: ok {}, warning {}, problem {}\n",
        count(Level::Ok),
        count(Level::Warning),
        count(Level::Problem)
    ));
    out
}

async fn run_checks(args: &Args) -> Vec<Check> {
    let mut checks = Vec::new();
    let path = Config::path_or_default(args.config.as_deref());
    let shown = path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "built-in defaults".into());
    let config = match Config::load(path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            // Without the daemon's configuration nothing else can be compared.
            checks.push(Check::problem(
                "mta-stsd.config",
                format!("{e}"),
                "fix the file; mta-stsd check-config FILE shows the same error",
            ));
            return checks;
        }
    };
    checks.push(Check::ok("mta-stsd.config", format!("{shown} is valid")));
    let listeners = config.server.listen.clone();

    let used = postfix_checks(args, &config, &listeners, &mut checks);
    daemon_checks(&config, &listeners, &used, &mut checks).await;
    checks
}

/// Runs Postfix's own `postconf -c DIR ARGS...`.
fn postconf(dir: &Path, args: &[&str]) -> Result<String, String> {
    crate::postfix::postconf(Some(dir), args)
}

fn param(dir: &Path, name: &str) -> String {
    postconf(dir, &["-xh", name]).unwrap_or_default()
}

/// The Postfix checks; returns the socketmaps Postfix uses that reach a listener,
/// with that listener, for the daemon's probes.
fn postfix_checks(
    args: &Args,
    config: &Config,
    listeners: &[ListenAddr],
    checks: &mut Vec<Check>,
) -> Vec<(Socketmap, ListenAddr)> {
    let dir = &args.postfix_config;
    let version = match postconf(dir, &["-h", "mail_version"]) {
        Ok(v) => v,
        Err(e) => {
            checks.push(Check::problem(
                "postfix.config",
                format!(
                    "cannot read Postfix's configuration in {}: {e}",
                    dir.display()
                ),
                "install Postfix, or pass --postfix-config DIR",
            ));
            return Vec::new();
        }
    };
    checks.push(Check::ok(
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
            &config.zone(&s.name),
        ));
    }
    let any_chroot = services.iter().any(|(_, c)| *c);
    checks.push(trust_check(dir, &queue, any_chroot));

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
    checks: &mut Vec<Check>,
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
                Err(e) => Check::warning(
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
fn trust_check(dir: &Path, queue: &Path, any_chroot: bool) -> Check {
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

async fn daemon_checks(
    config: &Config,
    listeners: &[ListenAddr],
    used: &[(Socketmap, ListenAddr)],
    checks: &mut Vec<Check>,
) {
    // Probe every listener Postfix uses, or every listener when Postfix uses none.
    let probes: Vec<(String, ListenAddr)> = if used.is_empty() {
        listeners
            .iter()
            .map(|l| ("postfix".to_owned(), l.clone()))
            .collect()
    } else {
        used.iter()
            .map(|(s, l)| (s.name.clone(), l.clone()))
            .collect()
    };
    for (map, l) in probes {
        let started = Instant::now();
        let result = tokio::time::timeout(PROBE_TIMEOUT, probe(&l, &map)).await;
        let took = started.elapsed();
        checks.push(match result {
            Ok(Ok(reply)) if reply.starts_with("NOTFOUND") || reply.starts_with("OK") => Check::ok(
                "mta-stsd.probe",
                format!(
                    "{l} answered a lookup in map {map:?} in {:.1} ms",
                    took.as_secs_f64() * 1000.0
                ),
            ),
            Ok(Ok(reply)) => Check::problem(
                "mta-stsd.probe",
                format!("{l} answered {reply:?} to a probe in map {map:?}"),
                "check the daemon's log (journalctl -u mta-stsd)",
            ),
            Ok(Err(e)) => Check::problem(
                "mta-stsd.probe",
                format!("no answer on {l}: {e}; Postfix defers mail while its policy table fails"),
                "start mta-stsd (systemctl start mta-stsd) and check journalctl -u mta-stsd",
            ),
            Err(_) => Check::problem(
                "mta-stsd.probe",
                format!(
                    "{l} did not answer within {} s; Postfix gives up after 10 s and defers mail",
                    PROBE_TIMEOUT.as_secs()
                ),
                "check the daemon's log (journalctl -u mta-stsd) and its server.max_connections",
            ),
        });
    }

    match config.metrics.addr() {
        Some(addr) => {
            let redis = config.cache.backend == crate::config::CacheBackend::Redis;
            admin_checks(
                &format!("http://{addr}"),
                &config.metrics.path,
                redis,
                checks,
            )
            .await
        }
        None => checks.push(Check::warning(
            "mta-stsd.metrics",
            "metrics.listen is off: no metrics, no admin API (cache, warm)",
            "set [metrics] listen = \"127.0.0.1:9461\"",
        )),
    }

    match config.cache.resolved_path() {
        Some(dir) => checks.push(cache_dir_check(&dir)),
        None => checks.push(Check::problem(
            "mta-stsd.cache_dir",
            "cache.path is not set and no environment variable gives a default".to_owned(),
            "set [cache] path = \"/var/lib/mta-stsd/cache\"",
        )),
    }
}

async fn probe(l: &ListenAddr, map: &str) -> Result<String, String> {
    match l {
        ListenAddr::Tcp(a) => {
            let s = tokio::net::TcpStream::connect(a)
                .await
                .map_err(|e| e.to_string())?;
            ask(s, map).await
        }
        ListenAddr::Unix(p) => {
            let s = tokio::net::UnixStream::connect(p)
                .await
                .map_err(|e| e.to_string())?;
            ask(s, map).await
        }
    }
}

async fn ask<S: AsyncRead + AsyncWrite + Unpin>(s: S, map: &str) -> Result<String, String> {
    let mut conn = Framed::new(s, NetstringCodec::new(100_000));
    conn.send(format!("{map} {PROBE_KEY}"))
        .await
        .map_err(|e| e.to_string())?;
    match conn.next().await {
        Some(Ok(reply)) => Ok(String::from_utf8_lossy(&reply).into_owned()),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("the daemon closed the connection".into()),
    }
}

async fn admin_checks(base: &str, metrics_path: &str, redis: bool, checks: &mut Vec<Check>) {
    let Ok(client) = reqwest::Client::builder().no_proxy().build() else {
        return;
    };
    let metrics = client
        .get(format!("{base}{metrics_path}"))
        .timeout(PROBE_TIMEOUT)
        .send()
        .await;
    let text = match metrics {
        Ok(r) if r.status().is_success() => r.text().await.unwrap_or_default(),
        Ok(r) => {
            checks.push(Check::warning(
                "mta-stsd.metrics",
                format!("{base}{metrics_path} answered {}", r.status()),
                "check metrics.path",
            ));
            return;
        }
        Err(e) => {
            checks.push(Check::warning(
                "mta-stsd.metrics",
                format!("{base}{metrics_path} unreachable: {e}"),
                "is the daemon running with this configuration?",
            ));
            return;
        }
    };
    metrics_checks(&text, &format!("{base}{metrics_path}"), redis, checks);
    if let Ok(admin) = crate::admin::client::AdminClient::new(base, PROBE_TIMEOUT)
        && let Ok(entries) = admin.list().await
    {
        checks.push(refresh_check(&entries));
    }
}

/// What the daemon's own metrics say: store failures, and Redis's health in a fleet.
fn metrics_checks(text: &str, url: &str, redis: bool, checks: &mut Vec<Check>) {
    let store_errors: f64 = text
        .lines()
        .filter(|l| l.starts_with("mta_stsd_store_errors_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    checks.push(if store_errors > 0.0 {
        Check::warning(
            "mta-stsd.metrics",
            format!("{url} reachable; the cache store has failed {store_errors} times since start"),
            "check the cache directory and the daemon's log (journalctl -u mta-stsd)",
        )
    } else {
        Check::ok("mta-stsd.metrics", format!("{url} reachable"))
    });
    if redis {
        let healthy = text
            .lines()
            .find_map(|l| l.strip_prefix("mta_stsd_redis_healthy "))
            .and_then(|v| v.trim().parse::<f64>().ok());
        checks.push(if healthy == Some(1.0) {
            Check::ok(
                "mta-stsd.redis",
                "the fleet's shared cache (Redis) answers the daemon",
            )
        } else {
            Check::warning(
                "mta-stsd.redis",
                "the daemon cannot reach Redis (cache.redis.url): it answers from its own cache and discovers on its own, so the fleet does not share what it learns",
                "check that Redis runs and that the daemon can reach it (redis-cli -u URL ping); the daemon reconnects by itself",
            )
        });
    }
}

/// Cached policies whose refresh fails (the cached policy still applies until it expires).
fn refresh_check(entries: &[crate::admin::api::EntryView]) -> Check {
    let policies = entries
        .iter()
        .filter(|e| e.state == "enforce" || e.state == "testing")
        .count();
    let failing: Vec<&crate::admin::api::EntryView> = entries
        .iter()
        .filter(|e| (e.state == "enforce" || e.state == "testing") && e.last_error.is_some())
        .collect();
    if failing.is_empty() {
        Check::ok(
            "mta-stsd.refresh",
            format!("{policies} cached policies, none failing refresh"),
        )
    } else {
        let shown: Vec<String> = failing
            .iter()
            .take(5)
            .map(|e| format!("{} ({})", e.domain, e.last_error.as_deref().unwrap_or("")))
            .collect();
        Check::warning(
            "mta-stsd.refresh",
            format!(
                "{} of {policies} cached policies fail to refresh (the cached policy is still applied until it expires): {}",
                failing.len(),
                shown.join(", ")
            ),
            "mta-stsd cache show DOMAIN for details; tell the domain's postmaster if it persists",
        )
    }
}

/// The cache directory exists and this user can create a file in it (or, before the
/// first start, in the nearest existing directory above it: the daemon creates the
/// missing ones).
fn cache_dir_check(dir: &Path) -> Check {
    const NAME: &str = "mta-stsd.cache_dir";
    let Some(target) = dir.ancestors().find(|d| d.is_dir()).map(Path::to_owned) else {
        return Check::problem(
            NAME,
            format!("no directory on the path of {} exists", dir.display()),
            "set cache.path to an absolute path",
        );
    };
    let probe = target.join(format!(".mta-stsd-doctor-{}", std::process::id()));
    match std::fs::File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            if target == dir {
                Check::ok(NAME, format!("{} is writable", dir.display()))
            } else {
                Check::ok(
                    NAME,
                    format!("{} will be created in {}", dir.display(), target.display()),
                )
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Check::warning(
            NAME,
            format!(
                "{} is not writable by this user (the daemon's own user may differ)",
                target.display()
            ),
            "run doctor as root, or check the directory's owner against the daemon's user",
        ),
        Err(e) => Check::problem(
            NAME,
            format!("cannot write in {}: {e}", target.display()),
            "check the disk and the directory's permissions",
        ),
    }
}
