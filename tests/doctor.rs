//! `mta-stsd doctor` against real Postfix configurations: fixture directories read
//! with Postfix's own `postconf -c DIR`, and a real daemon (in this process) to probe.
//! Each fixture is one way a real setup goes wrong; each asserts the verdict and the
//! exit status.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::InProcess;
use mta_stsd_testkit::{RedisServer, World, free_port};

/// Debian's public roots, as a Postfix CAfile.
const PUBLIC_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

fn postfix_installed() -> bool {
    let found = Command::new("postconf")
        .arg("-d")
        .arg("mail_version")
        .output()
        .is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install Postfix (apt-get install postfix)"
        );
        eprintln!("skipped: Postfix (postconf) is not installed");
    }
    found
}

fn installed_version() -> (u32, u32) {
    let out = Command::new("postconf")
        .args(["-dh", "mail_version"])
        .output()
        .unwrap();
    let v = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let mut p = v.split('.').map(|n| n.parse::<u32>().unwrap_or(0));
    (p.next().unwrap_or(0), p.next().unwrap_or(0))
}

/// A Postfix configuration directory: Debian's master.cf (smtp chrooted, as shipped),
/// and a main.cf with `extra` appended.
fn postfix_dir(root: &Path, extra: &str) -> PathBuf {
    let dir = root.join("postfix");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy("/usr/share/postfix/master.cf.dist", dir.join("master.cf")).unwrap();
    std::fs::write(
        dir.join("main.cf"),
        format!(
            "compatibility_level = 3.6\nqueue_directory = {}\n{extra}\n",
            root.join("spool").display()
        ),
    )
    .unwrap();
    dir
}

/// A world directory the `postfix` user can traverse (tempdirs are 0700).
fn world_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(dir.path().join("spool")).unwrap();
    std::fs::set_permissions(
        dir.path().join("spool"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    dir
}

/// The daemon with `listen` (plus a TCP listener), metrics on, cache in `root`.
async fn daemon(w: &World, root: &Path, listen: &[String], zones: &str) -> InProcess {
    let mut all = vec!["\"127.0.0.1:0\"".to_owned()];
    all.extend(listen.iter().map(|l| format!("{l:?}")));
    let text = format!(
        "[server]\nlisten = [{}]\n[metrics]\nlisten = \"127.0.0.1:0\"\n{zones}\n",
        all.join(", ")
    );
    InProcess::builder(w, root).toml(&text).start().await
}

/// The configuration file doctor reads: the running daemon's real addresses.
fn daemon_config(root: &Path, d: &InProcess, unix: Option<&Path>, zones: &str) -> PathBuf {
    let mut listen = vec![format!("\"{}\"", d.tcp)];
    if let Some(p) = unix {
        listen.push(format!("\"unix:{}\"", p.display()));
    }
    let metrics = d.http.as_deref().unwrap().trim_start_matches("http://");
    let path = root.join("mta-stsd.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = [{}]\n[metrics]\nlisten = \"{metrics}\"\n[cache]\npath = \"{}\"\n{zones}\n",
            listen.join(", "),
            root.join("cache").display()
        ),
    )
    .unwrap();
    path
}

struct Report {
    code: Option<i32>,
    text: String,
    checks: Vec<serde_json::Value>,
}

impl Report {
    fn level(&self, check: &str) -> Vec<String> {
        self.checks
            .iter()
            .filter(|c| c["check"] == check)
            .map(|c| c["level"].as_str().unwrap().to_owned())
            .collect()
    }
    fn message(&self, check: &str) -> String {
        self.checks
            .iter()
            .filter(|c| c["check"] == check)
            .map(|c| c["message"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

async fn doctor(config: &Path, postfix: &Path, resolv: &Path) -> Report {
    doctor_with(config, postfix, resolv, &[]).await
}

/// `doctor` with more arguments.
async fn doctor_with(config: &Path, postfix: &Path, resolv: &Path, more: &[&str]) -> Report {
    let mut args: Vec<String> = vec![
        "doctor".into(),
        "--config".into(),
        config.display().to_string(),
        "--postfix-config".into(),
        postfix.display().to_string(),
        "--resolv-conf".into(),
        resolv.display().to_string(),
    ];
    args.extend(more.iter().map(|a| (*a).to_owned()));
    tokio::task::spawn_blocking(move || {
        let run = |json: bool| {
            let mut a = args.clone();
            if json {
                a.push("--json".into());
            }
            common::bin().args(&a).output().unwrap()
        };
        let text = run(false);
        let json = run(true);
        assert_eq!(text.status.code(), json.status.code());
        Report {
            code: json.status.code(),
            text: String::from_utf8_lossy(&text.stdout).into_owned(),
            checks: serde_json::from_slice(&json.stdout)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&json.stdout))),
        }
    })
    .await
    .unwrap()
}

fn resolv(root: &Path) -> PathBuf {
    let p = root.join("resolv.conf");
    std::fs::write(&p, "nameserver 127.0.0.1\n").unwrap();
    p
}

/// The zone options that fit the installed Postfix (TLSRPT attributes from 3.10).
fn fitting_zone() -> String {
    format!(
        "[zones.postfix]\ntlsrpt = {}\n",
        installed_version() >= (3, 10)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_setup_over_tcp_and_a_chrooted_unix_socket() {
    if !postfix_installed() {
        return;
    }
    let w = World::start().await;
    let root = world_dir();
    let r = root.path();
    // Debian's smtp is chrooted to queue_directory: Postfix's "/mta-stsd.sock" is
    // queue_directory/mta-stsd.sock on the host.
    let sock = r.join("spool/mta-stsd.sock");
    let zones = fitting_zone();
    let d = daemon(&w, r, &[format!("unix:{}", sock.display())], &zones).await;
    let config = daemon_config(r, &d, Some(&sock), &zones);
    let pf = postfix_dir(
        r,
        &format!(
            "smtp_tls_policy_maps = socketmap:inet:{}:postfix, socketmap:unix:/mta-stsd.sock:postfix\nsmtp_tls_CAfile = {PUBLIC_ROOTS}\nsmtp_tls_security_level = may",
            d.tcp
        ),
    );
    let report = doctor(&config, &pf, &resolv(r)).await;
    assert_eq!(report.code, Some(0), "{}", report.text);
    // TCP, then the unix socket for each of Debian's smtp-client services.
    assert_eq!(
        report.level("postfix.policy_maps"),
        ["ok", "ok", "ok"],
        "{}",
        report.text
    );
    assert!(
        report.message("postfix.policy_maps").contains("chrooted"),
        "{}",
        report.text
    );
    assert_eq!(report.level("postfix.socket_access"), ["ok"]);
    assert_eq!(report.level("postfix.trust_anchors"), ["ok"]);
    assert!(
        report
            .message("postfix.trust_anchors")
            .contains("public roots")
    );
    assert_eq!(
        report.level("mta-stsd.probe"),
        ["ok", "ok"],
        "{}",
        report.text
    );
    assert_eq!(report.level("mta-stsd.metrics"), ["ok"]);
    assert_eq!(report.level("mta-stsd.cache_dir"), ["ok"]);
    assert!(report.text.contains("doctor: ok "), "{}", report.text);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_ca_file_is_a_problem() {
    if !postfix_installed() {
        return;
    }
    let w = World::start().await;
    let root = world_dir();
    let r = root.path();
    let zones = fitting_zone();
    let d = daemon(&w, r, &[], &zones).await;
    let config = daemon_config(r, &d, None, &zones);
    let pf = postfix_dir(
        r,
        &format!(
            "smtp_tls_policy_maps = socketmap:inet:{}:postfix\nsmtp_tls_CAfile = /etc/ssl/no-such-file.pem",
            d.tcp
        ),
    );
    let report = doctor(&config, &pf, &resolv(r)).await;
    assert_eq!(report.code, Some(2), "{}", report.text);
    assert_eq!(report.level("postfix.trust_anchors"), ["problem"]);
    assert!(report.text.contains("does not exist"), "{}", report.text);
    assert!(
        report
            .text
            .contains("fix: postconf -e 'smtp_tls_CAfile = /etc/ssl/certs/ca-certificates.crt'")
    );

    // A CA file with only a private CA: nothing public verifies either.
    let private = r.join("private-ca.pem");
    std::fs::write(&private, w.ca.cert_pem()).unwrap();
    let pf = postfix_dir(
        r,
        &format!(
            "smtp_tls_policy_maps = socketmap:inet:{}:postfix\nsmtp_tls_CAfile = {}",
            d.tcp,
            private.display()
        ),
    );
    let report = doctor(&config, &pf, &resolv(r)).await;
    assert_eq!(
        report.level("postfix.trust_anchors"),
        ["problem"],
        "{}",
        report.text
    );
    assert!(
        report
            .message("postfix.trust_anchors")
            .contains("none of the system's")
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_outside_the_chroot_is_a_problem() {
    if !postfix_installed() {
        return;
    }
    let w = World::start().await;
    let root = world_dir();
    let r = root.path();
    let sock = r.join("mta-stsd.sock");
    let zones = fitting_zone();
    let d = daemon(&w, r, &[format!("unix:{}", sock.display())], &zones).await;
    let config = daemon_config(r, &d, Some(&sock), &zones);
    // The host path, written as is: inside smtp's chroot it means something else.
    let pf = postfix_dir(
        r,
        &format!(
            "smtp_tls_policy_maps = socketmap:unix:{}:postfix\nsmtp_tls_CAfile = {PUBLIC_ROOTS}",
            sock.display()
        ),
    );
    let report = doctor(&config, &pf, &resolv(r)).await;
    assert_eq!(report.code, Some(2), "{}", report.text);
    // One problem for each smtp-client service (smtp, relay).
    assert_eq!(
        report.level("postfix.policy_maps"),
        ["problem", "problem"],
        "{}",
        report.text
    );
    assert!(
        report
            .message("postfix.policy_maps")
            .contains("chrooted to")
    );

    // The same socket with smtp not chrooted works, unless the postfix user cannot
    // reach it: a 0700 directory on the way.
    let master = pf.join("master.cf");
    let text = std::fs::read_to_string(&master).unwrap();
    let unchrooted = text
        .replace(
            "smtp      unix  -       -       y       -       -       smtp",
            "smtp      unix  -       -       n       -       -       smtp",
        )
        .replace(
            "relay     unix  -       -       y       -       -       smtp",
            "relay     unix  -       -       n       -       -       smtp",
        );
    assert_ne!(text, unchrooted, "Debian's master.cf changed its smtp line");
    std::fs::write(&master, unchrooted).unwrap();
    let report = doctor(&config, &pf, &resolv(r)).await;
    assert_eq!(report.code, Some(0), "{}", report.text);
    assert_eq!(
        report.level("postfix.socket_access"),
        ["ok"],
        "{}",
        report.text
    );
    std::fs::set_permissions(r, std::fs::Permissions::from_mode(0o700)).unwrap();
    let report = doctor(&config, &pf, &resolv(r)).await;
    if installed_user_is_not_root() {
        assert_eq!(
            report.level("postfix.socket_access"),
            ["problem"],
            "{}",
            report.text
        );
        assert!(
            report
                .message("postfix.socket_access")
                .contains("cannot enter")
        );
    }
    std::fs::set_permissions(r, std::fs::Permissions::from_mode(0o755)).unwrap();
    d.shutdown().await;
}

/// Postfix's mail_owner is an ordinary user (always, unless someone made it root).
fn installed_user_is_not_root() -> bool {
    Command::new("id")
        .args(["-u", "postfix"])
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() != "0")
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tlsrpt_for_postfix_3_7_and_a_wrong_zone_name() {
    if !postfix_installed() {
        return;
    }
    let w = World::start().await;
    let root = world_dir();
    let r = root.path();
    let zones = "[zones.postfix]\ntlsrpt = true\n";
    let d = daemon(&w, r, &[], zones).await;
    let config = daemon_config(r, &d, None, zones);
    // postconf reports what main.cf says: this is how Postfix 3.7 looks to doctor.
    let pf = postfix_dir(
        r,
        &format!(
            "mail_version = 3.7.11\nsmtp_tls_policy_maps = socketmap:inet:{}:postfix\nsmtp_tls_CAfile = {PUBLIC_ROOTS}",
            d.tcp
        ),
    );
    let report = doctor(&config, &pf, &resolv(r)).await;
    assert_eq!(report.code, Some(2), "{}", report.text);
    assert_eq!(report.level("postfix.version"), ["problem"]);
    assert!(
        report
            .text
            .contains("set tlsrpt = false in [zones.postfix]"),
        "{}",
        report.text
    );

    // Postfix 3.10.13 without the attributes: it could enforce the MX patterns.
    let pf = postfix_dir(
        r,
        &format!(
            "mail_version = 3.10.13\nsmtp_tls_policy_maps = socketmap:inet:{}:postfix\nsmtp_tls_CAfile = {PUBLIC_ROOTS}",
            d.tcp
        ),
    );
    let plain = r.join("plain.toml");
    std::fs::write(
        &plain,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("tlsrpt = true", "tlsrpt = false"),
    )
    .unwrap();
    let report = doctor(&plain, &pf, &resolv(r)).await;
    assert_eq!(report.code, Some(1), "{}", report.text);
    assert_eq!(report.level("postfix.version"), ["warning"]);

    // A typo in the map name: the daemon answers it with built-in options.
    let pf = postfix_dir(
        r,
        &format!(
            "mail_version = 3.10.13\nsmtp_tls_policy_maps = socketmap:inet:{}:postfx\nsmtp_tls_CAfile = {PUBLIC_ROOTS}",
            d.tcp
        ),
    );
    let report = doctor(&config, &pf, &resolv(r)).await;
    assert_eq!(report.level("postfix.zone"), ["warning"], "{}", report.text);
    assert!(report.message("postfix.zone").contains("\"postfx\""));
    assert_eq!(
        report.level("mta-stsd.probe"),
        ["ok"],
        "the daemon answers any map name"
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_down_and_dane_override() {
    if !postfix_installed() {
        return;
    }
    let w = World::start().await;
    let root = world_dir();
    let r = root.path();
    let zones = fitting_zone();
    let d = daemon(&w, r, &[], &zones).await;
    let config = daemon_config(r, &d, None, &zones);
    let pf = postfix_dir(
        r,
        &format!(
            "smtp_tls_policy_maps = socketmap:inet:{}:postfix\nsmtp_tls_CAfile = {PUBLIC_ROOTS}\nsmtp_dns_support_level = dnssec\nsmtp_tls_security_level = dane",
            d.tcp
        ),
    );
    let trusting = r.join("resolv-trust-ad.conf");
    std::fs::write(&trusting, "nameserver 127.0.0.1\noptions trust-ad\n").unwrap();
    // DANE in Postfix, and the daemon's default mode (auto) follows it.
    let report = doctor(&config, &pf, &trusting).await;
    assert_eq!(report.code, Some(0), "{}", report.text);
    assert_eq!(report.level("postfix.dane"), ["ok"]);
    // With DANE precedence turned off, MTA-STS answers would override it.
    let off = r.join("off.toml");
    std::fs::write(
        &off,
        format!(
            "{}\n[dane]\nmode = \"off\"\n",
            std::fs::read_to_string(&config).unwrap()
        ),
    )
    .unwrap();
    let report = doctor(&off, &pf, &trusting).await;
    assert_eq!(report.code, Some(1), "{}", report.text);
    assert_eq!(report.level("postfix.dane"), ["warning"]);
    assert!(
        report
            .message("postfix.dane")
            .contains("override Postfix's DANE")
    );

    d.shutdown().await;
    let report = doctor(&config, &pf, &trusting).await;
    assert_eq!(report.code, Some(2), "{}", report.text);
    assert_eq!(
        report.level("mta-stsd.probe"),
        ["problem"],
        "{}",
        report.text
    );
    assert!(report.text.contains("systemctl start mta-stsd"));
    assert_eq!(report.level("mta-stsd.metrics"), ["warning"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_daemon_that_cannot_reach_redis_is_a_warning() {
    if !postfix_installed() || !RedisServer::installed() {
        return;
    }
    let w = World::start().await;
    w.publish(
        "fleet.example",
        "1",
        mta_stsd_testkit::policy_text("enforce", &["mx.fleet.example"], 86400).as_str(),
    );
    let root = world_dir();
    let r = root.path();
    let port = free_port();
    let redis =
        format!("backend = \"redis\"\n[cache.redis]\nurl = \"redis://127.0.0.1:{port}/0\"\n");
    let zones = fitting_zone();
    let d = daemon(&w, r, &[], &format!("[cache]\n{redis}{zones}")).await;
    let config = daemon_config(r, &d, None, &format!("{redis}{zones}"));
    let pf = postfix_dir(
        r,
        &format!(
            "smtp_tls_policy_maps = socketmap:inet:{}:postfix\nsmtp_tls_CAfile = {PUBLIC_ROOTS}",
            d.tcp
        ),
    );
    // A lookup has tried Redis and found it down.
    common::ask_once(d.tcp, "postfix", "fleet.example").await;
    let report = doctor(&config, &pf, &resolv(r)).await;
    assert_eq!(
        report.level("mta-stsd.redis"),
        ["warning"],
        "{}",
        report.text
    );
    assert_eq!(report.code, Some(1), "{}", report.text);
    // Redis comes up: the daemon reconnects and doctor says so.
    let _redis = RedisServer::start_on_port(port);
    d.service.shared().unwrap().wait_reachable().await;
    let report = doctor(&config, &pf, &resolv(r)).await;
    assert_eq!(report.level("mta-stsd.redis"), ["ok"], "{}", report.text);
    d.shutdown().await;
}

#[test]
fn postfix_not_asking_the_daemon_and_a_broken_config() {
    if !postfix_installed() {
        return;
    }
    let root = world_dir();
    let r = root.path();
    let pf = postfix_dir(r, "smtp_tls_policy_maps = hash:/etc/postfix/tls_policy");
    let config = r.join("bad.toml");
    std::fs::write(&config, "[server]\nlisten = [\"nowhere\"]\n").unwrap();
    let out = common::bin()
        .args(["doctor", "--config"])
        .arg(&config)
        .arg("--postfix-config")
        .arg(&pf)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.starts_with("problem  mta-stsd.config"), "{text}");
    assert!(text.contains("server.listen"), "{text}");

    std::fs::write(
        &config,
        "[server]\nlisten = [\"127.0.0.1:1\"]\n[metrics]\nlisten = \"\"\n",
    )
    .unwrap();
    let out = common::bin()
        .args(["doctor", "--json", "--config"])
        .arg(&config)
        .arg("--postfix-config")
        .arg(&pf)
        .output()
        .unwrap();
    let checks: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let maps = checks
        .iter()
        .find(|c| c["check"] == "postfix.policy_maps")
        .unwrap();
    assert_eq!(maps["level"], "problem");
    assert!(
        maps["fix"]
            .as_str()
            .unwrap()
            .contains("socketmap:inet:127.0.0.1:1:postfix"),
        "{maps}"
    );
}

/// Whether the installed Postfix's TLS library links libtlsrpt (trixie's does,
/// bookworm-backports' 3.10.3 does not).
fn installed_links_libtlsrpt() -> bool {
    std::fs::read("/usr/lib/postfix/libpostfix-tls.so")
        .map(|b| b.windows(9).any(|w| w == b"libtlsrpt"))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tlsrpt_is_checked_on_both_sides() {
    if !postfix_installed() {
        return;
    }
    let w = World::start().await;
    let root = world_dir();
    let r = root.path();
    let socket = r.join("spool/run/tlsrpt/tlsrpt.sock");
    let tlsrpt = format!(
        "[tlsrpt]\nenable = true\nsocket = {socket:?}\nsocket_mode = \"0666\"\n\
         organization_name = \"Example\"\ncontact_info = \"postmaster@example.com\"\n\
         report_from = \"tlsrpt@example.com\"\n"
    );
    let zones = format!("{}{tlsrpt}", fitting_zone());
    let d = daemon(&w, r, &[], &zones).await;
    assert!(socket.exists(), "the daemon made its TLSRPT socket");
    let config = daemon_config(r, &d, None, &zones);
    let maps = format!(
        "smtp_tls_policy_maps = socketmap:inet:{}:postfix\nsmtp_tls_CAfile = {PUBLIC_ROOTS}\n",
        d.tcp
    );
    let pf = postfix_dir(
        r,
        &format!(
            "{maps}smtp_tlsrpt_enable = yes\nsmtp_tlsrpt_socket_name = run/tlsrpt/tlsrpt.sock"
        ),
    );
    let report = doctor(&config, &pf, &resolv(r)).await;
    let message = report.message("tlsrpt");
    if installed_version() < (3, 10) {
        assert_eq!(report.level("tlsrpt"), ["warning"], "{}", report.text);
        assert!(message.contains("3.10"), "{message}");
    } else {
        if installed_links_libtlsrpt() {
            assert_eq!(report.level("tlsrpt"), ["ok"], "{}", report.text);
        } else {
            assert!(message.contains("built without libtlsrpt"), "{message}");
        }
        // The smtp service is chrooted: the relative name reaches the daemon's socket.
        assert!(
            message.contains(&format!(
                "Postfix sends TLSRPT results to {}",
                socket.display()
            )),
            "{message}"
        );
        assert_eq!(
            report.level("tlsrpt.socket_access"),
            ["ok"],
            "{}",
            report.text
        );
        assert_eq!(report.level("tlsrpt.dkim"), ["warning"], "{}", report.text);
        // Postfix 3.10 reports the delivery of our own reports without the recipe.
        if installed_version() < (3, 11) {
            assert_eq!(report.level("tlsrpt.loop"), ["warning"], "{}", report.text);
            let pf = postfix_dir(
                r,
                &format!(
                    "{maps}smtp_tlsrpt_enable = yes\nsmtp_tlsrpt_socket_name = run/tlsrpt/tlsrpt.sock\n\
                     sender_dependent_default_transport_maps = inline:{{ tlsrpt@example.com=smtp-notlsrpt: }}"
                ),
            );
            std::fs::write(
                pf.join("master.cf"),
                std::fs::read_to_string(pf.join("master.cf")).unwrap()
                    + "smtp-notlsrpt unix - - y - - smtp -o smtp_tlsrpt_enable=no\n",
            )
            .unwrap();
            let with_recipe = doctor(&config, &pf, &resolv(r)).await;
            assert_eq!(
                with_recipe.level("tlsrpt.loop"),
                ["ok"],
                "{}",
                with_recipe.text
            );
        }

        // An absolute name in the chroot is another file.
        let pf = postfix_dir(
            r,
            &format!(
                "{maps}smtp_tlsrpt_enable = yes\nsmtp_tlsrpt_socket_name = {}",
                socket.display()
            ),
        );
        let report = doctor(&config, &pf, &resolv(r)).await;
        let message = report.message("tlsrpt");
        assert!(message.contains("does not reach"), "{message}");
        assert!(message.contains("chrooted"), "{message}");
        assert_eq!(report.code, Some(1), "warnings only: {}", report.text);
    }
    d.shutdown().await;
}

/// `check-config` (and `serve`, through the same checks) says when a zone sends the
/// TLSRPT attributes to a Postfix older than 3.10, which would defer mail to every
/// enforced domain; the message names the section the setting is in.
#[test]
fn check_config_warns_when_postfix_would_refuse_the_tlsrpt_attributes() {
    if !postfix_installed() {
        return;
    }
    let root = world_dir();
    let r = root.path();
    for (version, warned) in [("3.7.11", true), ("3.10.13", false)] {
        let pf = postfix_dir(r, &format!("mail_version = {version}"));
        let path = r.join("check.toml");
        std::fs::write(
            &path,
            format!(
                "[cache]\npath = {:?}\n[dane]\nmode = \"off\"\npostfix_config = {pf:?}\n[zones.default]\ntlsrpt = true\n",
                r.join("cache")
            ),
        )
        .unwrap();
        let (code, out, err) = common::cli(&["check-config", path.to_str().unwrap()]);
        assert_eq!(code, Some(0), "{out}{err}");
        let warning = format!(
            "warning: Postfix {version} rejects the TLSRPT attributes that [zones.default]"
        );
        assert_eq!(out.contains(&warning), warned, "{out}");
    }
}

/// With TLSRPT on, doctor checks the DKIM key OpenDKIM signs the submitter's domain
/// with: a key record whose service types leave out `tlsrpt` makes receivers ignore
/// the reports (RFC 8460 section 3); a signer without a key for the submitter's
/// domain is named too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dkim_key_that_signs_reports_must_allow_tlsrpt() {
    if !postfix_installed() {
        return;
    }
    let w = World::start().await;
    let root = world_dir();
    let r = root.path();
    let config = r.join("dkim.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[metrics]\nlisten = \"\"\n[cache]\npath = {:?}\n\
             [resolver]\nnameservers = [\"{}\"]\n[dane]\nmode = \"off\"\n\
             [tlsrpt]\nenable = true\nsocket = {:?}\norganization_name = \"Example\"\n\
             contact_info = \"postmaster@example.com\"\nreport_from = \"tlsrpt@example.com\"\n",
            r.join("cache"),
            w.dns.addr(),
            r.join("tlsrpt.sock")
        ),
    )
    .unwrap();
    let pf = postfix_dir(r, "");
    let dkim = r.join("opendkim.conf");
    let dkim_arg = ["--dkim-config", dkim.to_str().unwrap()];
    let key = "mail._domainkey.example.com";
    for (conf, record, level, says) in [
        (
            "Domain example.com\nSelector mail\n",
            Some("v=DKIM1; k=rsa; s=email; p=MIGf"),
            "warning",
            "allows only s=email",
        ),
        (
            "Domain example.com\nSelector mail\n",
            Some("v=DKIM1; k=rsa; s=email:tlsrpt; p=MIGf"),
            "ok",
            "may sign TLS reports",
        ),
        (
            "Domain example.com\nSelector mail\n",
            None,
            "warning",
            "no DKIM key record",
        ),
        (
            "Domain example.org\nSelector mail\n",
            None,
            "warning",
            "signs with no key of example.com",
        ),
    ] {
        std::fs::write(&dkim, conf).unwrap();
        match record {
            Some(text) => w.dns.set_txt(key, &[text]),
            None => w.dns.remove(key, mta_stsd_testkit::RecordType::TXT),
        }
        let report = doctor_with(&config, &pf, &resolv(r), &dkim_arg).await;
        let dkim_checks: Vec<(String, String)> = report
            .checks
            .iter()
            .filter(|c| {
                c["check"] == "tlsrpt.dkim" && c["message"].as_str().unwrap().contains("example.")
            })
            .map(|c| {
                (
                    c["level"].as_str().unwrap().to_owned(),
                    c["message"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(dkim_checks.len(), 1, "{conf}: {}", report.text);
        assert_eq!(dkim_checks[0].0, level, "{conf}: {}", report.text);
        assert!(dkim_checks[0].1.contains(says), "{}", dkim_checks[0].1);
    }
}

/// `check-config` (and `serve`) warn when Postfix asks mta-stsd for policies but has
/// no trust anchors: every enforced domain would be deferred.
#[test]
fn check_config_warns_when_postfix_has_no_trust_anchors() {
    if !postfix_installed() {
        return;
    }
    let root = world_dir();
    let r = root.path();
    let maps = "smtp_tls_policy_maps = socketmap:inet:127.0.0.1:8461:postfix";
    for (main_cf, warned) in [
        (maps.to_owned(), true),
        (format!("{maps}\nsmtp_tls_CAfile = {PUBLIC_ROOTS}"), false),
        (String::new(), false),
    ] {
        let pf = postfix_dir(r, &main_cf);
        let path = r.join("check.toml");
        std::fs::write(
            &path,
            format!(
                "[cache]\npath = {:?}\n[dane]\nmode = \"off\"\npostfix_config = {pf:?}\n",
                r.join("cache")
            ),
        )
        .unwrap();
        let (code, out, err) = common::cli(&["check-config", path.to_str().unwrap()]);
        assert_eq!(code, Some(0), "{out}{err}");
        assert_eq!(out.contains("warning: Postfix asks mta-stsd for TLS policies but its smtp client has no trust anchors"), warned, "{main_cf}: {out}");
    }
}

/// A `sendmail.cf` built by Debian's own m4 files (sendmail-cf, unpacked in
/// MTA_STSD_SENDMAIL_ROOT; .ci/run prepares one) from `sendmail.mc` lines.
fn sendmail_cf(dir: &Path, mc: &str) -> Option<PathBuf> {
    let Some(root) = std::env::var_os("MTA_STSD_SENDMAIL_ROOT").map(PathBuf::from) else {
        eprintln!(
            "skipped: MTA_STSD_SENDMAIL_ROOT not set (.ci/run unpacks Debian's sendmail-cf there)"
        );
        return None;
    };
    let cf_dir = root.join("usr/share/sendmail/cf");
    let mc_path = dir.join("sendmail.mc");
    std::fs::write(&mc_path, format!("divert(0)dnl\nOSTYPE(`linux')dnl\n{mc}")).unwrap();
    let out = Command::new("m4")
        .arg(format!("-D_CF_DIR_={}/", cf_dir.display()))
        .arg(cf_dir.join("m4/cf.m4"))
        .arg(&mc_path)
        .output()
        .expect("m4 runs (apt-get install m4)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cf = dir.join("sendmail.cf");
    std::fs::write(&cf, out.stdout).unwrap();
    Some(cf)
}

/// Sendmail's side, read from the sendmail.cf FEATURE(`sts') writes: the map reaches
/// the daemon (and the daemon answers by the map name "sts"), its timeout outlasts the
/// `sts` zone's deadline, failures defer, certificates have trust anchors. No Postfix
/// is needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sendmails_side_from_its_sendmail_cf() {
    let w = World::start().await;
    let root = world_dir();
    let r = root.path();
    let d = daemon(&w, r, &[], "").await;
    let config = daemon_config(r, &d, None, "");
    let good = format!(
        "define(`confCACERT', `{PUBLIC_ROOTS}')dnl\nFEATURE(`sts', `socket -d5 -T<TMPF> inet:{}@127.0.0.1')dnl\nMAILER(`smtp')dnl\n",
        d.tcp.port()
    );
    let Some(cf) = sendmail_cf(r, &good) else {
        return;
    };
    let sendmail = |cf: PathBuf, config: PathBuf| {
        let resolv = resolv(r);
        async move {
            let cf = cf.display().to_string();
            let more = ["--sendmail-cf", cf.as_str(), "--exim", "/nonexistent/exim4"];
            doctor_with(&config, Path::new("/nonexistent"), &resolv, &more).await
        }
    };
    let report = sendmail(cf, config.clone()).await;
    for check in [
        "sendmail.config",
        "sendmail.sts",
        "sendmail.timeout",
        "sendmail.trust_anchors",
        "postfix.config",
    ] {
        assert_eq!(report.level(check), ["ok"], "{check}: {}", report.text);
    }
    assert!(
        report
            .message("postfix.config")
            .starts_with("no Postfix here")
    );
    assert!(
        report.message("mta-stsd.probe").contains("map \"sts\""),
        "{}",
        report.text
    );

    // FEATURE(`sts') on its own defaults (port 5461) and no trust anchors; and a zone
    // deadline the map's 5 s does not outlast.
    let Some(cf) = sendmail_cf(r, "FEATURE(`sts')dnl\nMAILER(`smtp')dnl\n") else {
        return;
    };
    let slow = r.join("slow.toml");
    std::fs::write(
        &slow,
        format!(
            "{}\n[zones.sts]\ndeadline = \"8s\"\n",
            std::fs::read_to_string(&config).unwrap()
        ),
    )
    .unwrap();
    let report = sendmail(cf, slow).await;
    assert_eq!(report.code, Some(2), "{}", report.text);
    for check in ["sendmail.sts", "sendmail.timeout", "sendmail.trust_anchors"] {
        assert_eq!(report.level(check), ["problem"], "{check}: {}", report.text);
    }
    assert!(
        report
            .message("sendmail.sts")
            .contains("inet:5461@127.0.0.1")
    );
    d.shutdown().await;
}
