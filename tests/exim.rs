//! Exim asks the daemon the way the shipped Exim configuration does: Debian's own
//! exim4 (its .debs unpacked into a directory, since the package conflicts with
//! Postfix) expands `${readsocket}` against a running daemon and reads the answer with
//! `${extract}`, and its own list matching decides which MX host names the answer
//! allows.
//!
//! Needs root (a private mount namespace gives Exim its compiled-in user, Debian-exim)
//! and MTA_STSD_EXIM_ROOT, a directory with Debian's exim4-daemon-light and exim4-base
//! (and their libidn12) unpacked; .ci/run prepares one. Elsewhere the test is skipped
//! and says so.

mod common;

use std::path::{Path, PathBuf};

use common::{ENFORCE, InProcess};
use mta_stsd_testkit::World;

/// The unpacked root, when the test can run.
fn exim_root() -> Option<PathBuf> {
    let Some(root) = std::env::var_os("MTA_STSD_EXIM_ROOT").map(PathBuf::from) else {
        eprintln!("skipped: MTA_STSD_EXIM_ROOT not set (.ci/run unpacks Debian's exim4 there)");
        return None;
    };
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (a mount namespace for Exim's user)");
        return None;
    }
    Some(root)
}

/// A command that runs the unpacked root's exim4 with the configuration `conf` (Exim's
/// options follow), as Debian's exim4 would run: Exim's compiled-in user exists (a
/// private mount namespace gives it one) and its libraries are found.
fn exim_command(root: &Path, work: &Path, conf: &str) -> PathBuf {
    let passwd = work.join("passwd");
    let group = work.join("group");
    let spool = work.join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let mut users = std::fs::read_to_string("/etc/passwd").unwrap();
    users.push_str(&format!(
        "Debian-exim:x:64999:64999::{}:/usr/sbin/nologin\n",
        spool.display()
    ));
    std::fs::write(&passwd, users).unwrap();
    let mut groups = std::fs::read_to_string("/etc/group").unwrap();
    groups.push_str("Debian-exim:x:64999:\n");
    std::fs::write(&group, groups).unwrap();
    std::os::unix::fs::chown(&spool, Some(64999), Some(64999)).unwrap();
    let conf_path = work.join("exim.conf");
    std::fs::write(
        &conf_path,
        format!(
            "spool_directory = {}\nkeep_environment =\n{conf}",
            spool.display()
        ),
    )
    .unwrap();
    let command = work.join("exim4");
    std::fs::write(
        &command,
        format!(
            "#!/bin/sh\nexec unshare -m --propagation private sh -c 'mount --bind {passwd} /etc/passwd && mount --bind {group} /etc/group && LD_LIBRARY_PATH={root}/usr/lib/x86_64-linux-gnu exec {root}/usr/sbin/exim4 -C {conf} \"$@\"' sh \"$@\"\n",
            passwd = passwd.display(),
            group = group.display(),
            root = root.display(),
            conf = conf_path.display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &command,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    command
}

/// Runs `exim -be EXPRESSION` from the unpacked root; Exim's output.
fn exim_expand(root: &Path, work: &Path, expression: &str) -> String {
    let out = std::process::Command::new(exim_command(root, work, ""))
        .arg("-be")
        .arg(expression)
        .output()
        .expect("exim runs");
    assert!(
        out.status.success(),
        "exim -be failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn exim_reads_the_exim_answer_and_its_host_list_allows_exactly_the_policys_mx_hosts() {
    let Some(root) = exim_root() else { return };
    let w = World::start().await;
    w.publish("enforce.example", "1", ENFORCE);
    w.publish(
        "testing.example",
        "1",
        "version: STSv1\nmode: testing\nmx: mx.testing.example\nmax_age: 86400\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let d = InProcess::builder(&w, dir.path()).start().await;
    let work = dir.path().to_owned();
    let addr = d.tcp;
    // The request and the unwrapping the Exim configuration uses: a netstring
    // request by the map name exim, the netstring answer's payload.
    let answer = move |domain: &str| {
        format!(
            "${{sg{{${{readsocket{{inet:{}:{}}}{{${{strlen:exim {domain}}}:exim {domain},}}{{5s}}{{}}{{FAIL}}}}}}{{^[0-9]+:(.*),\\$}}{{\\$1}}}}",
            addr.ip(),
            addr.port()
        )
    };
    let expand = {
        let (root, work) = (root.clone(), work.clone());
        move |expression: String| {
            let (root, work) = (root.clone(), work.clone());
            tokio::task::spawn_blocking(move || exim_expand(&root, &work, &expression))
        }
    };

    let got = expand(answer("enforce.example")).await.unwrap();
    assert_eq!(
        got,
        "mode=secure hosts=^(?i)mx1[.]example[.]com$:^(?i)[^.]+[.]example[.]net$"
    );
    // Exim's ${extract}, its list splitting and its regular expressions, as the
    // configuration's tcp:connect event uses them on $host: the policy's hosts, any
    // case; a `*.` pattern matches exactly one leftmost label.
    let hosts = format!("${{extract{{hosts}}{{{}}}}}", answer("enforce.example"));
    for (host, allowed) in [
        ("mx1.example.com", true),
        ("MX1.Example.COM", true),
        ("a.example.net", true),
        ("a.b.example.net", false),
        ("example.net", false),
        ("mx1.example.com.evil.test", false),
        ("xmx1.example.com", false),
    ] {
        let expression =
            format!("${{if forany{{{hosts}}}{{match{{{host}}}{{$item}}}}{{yes}}{{no}}}}");
        let said = expand(expression).await.unwrap();
        assert_eq!(said == "yes", allowed, "{host}: {said}");
    }
    assert_eq!(
        expand(format!(
            "${{extract{{mode}}{{{}}}}}",
            answer("enforce.example")
        ))
        .await
        .unwrap(),
        "secure"
    );
    // testing (RFC 8461 §5) and keys that name no domain: no policy.
    for key in ["testing.example", "[192.0.2.1]"] {
        let mode = format!("${{extract{{mode}}{{{}}}}}", answer(key));
        assert_eq!(expand(mode).await.unwrap(), "none", "{key}");
    }
    d.shutdown().await;
}

/// An internet site's configuration; with `mta_stsd`, the shipped drop-ins in the
/// single-file form docs/exim.md gives (`.include` where each section begins).
fn exim_config(mta_stsd: bool) -> String {
    let conf_d = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/exim4/conf.d");
    let include = |p: &str| {
        if mta_stsd {
            format!(".include {conf_d}/{p}\n")
        } else {
            String::new()
        }
    };
    format!(
        "DCconfig_internet = yes\ndomainlist local_domains = sender.test\ndomainlist relay_to_domains =\n{}begin routers\n{}dnslookup:\n  driver = dnslookup\n  transport = remote_smtp\nbegin transports\n{}remote_smtp:\n  driver = smtp\n",
        include("main/00_mta-stsd"),
        include("router/190_mta-stsd"),
        include("transport/30_mta-stsd"),
    )
}

/// `mta-stsd doctor` asks Exim itself: its routers include the drop-ins' (included in
/// the single-file form), their socket reaches the daemon, and a lookup through Exim's
/// own ${readsocket} gets an Exim answer; without the drop-ins, Exim never asks (a
/// problem). No Postfix is needed.
#[tokio::test(flavor = "multi_thread")]
async fn doctor_checks_exims_side() {
    let Some(root) = exim_root() else { return };
    let w = World::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = InProcess::builder(&w, dir.path()).start().await;
    let config = dir.path().join("mta-stsd.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = [\"{}\"]\n[metrics]\nlisten = \"\"\n[cache]\npath = {:?}\n[dane]\nmode = \"off\"\n",
            d.tcp,
            dir.path().join("doctor-cache")
        ),
    )
    .unwrap();
    let doctor = |exim: PathBuf| {
        let config = config.clone();
        tokio::task::spawn_blocking(move || common::doctor_findings(&config, Some(&exim)))
    };
    let level = |checks: &[(String, String, String)], id: &str| {
        checks
            .iter()
            .filter(|c| c.0 == id)
            .map(|c| format!("{}: {}", c.1, c.2))
            .collect::<Vec<_>>()
            .join("; ")
    };

    // The daemon's listener here is not 8461: the drop-ins' default socket is
    // redefined as an administrator would (a macro defined first).
    let work = dir.path().join("with");
    std::fs::create_dir_all(&work).unwrap();
    let conf = format!(
        "MTA_STSD_SOCKET = inet:{}:{}\n{}",
        d.tcp.ip(),
        d.tcp.port(),
        exim_config(true)
    );
    let checks = doctor(exim_command(&root, &work, &conf)).await.unwrap();
    assert!(
        level(&checks, "exim.config").starts_with("ok: Exim version 4."),
        "{checks:?}"
    );
    assert!(
        level(&checks, "exim.routers").starts_with("ok: "),
        "{checks:?}"
    );
    assert!(
        level(&checks, "exim.socket").starts_with("ok: "),
        "{checks:?}"
    );
    let probe = level(&checks, "exim.probe");
    assert!(
        probe.starts_with("ok: ") && probe.contains(":mode=none,"),
        "{probe}"
    );
    assert!(
        level(&checks, "postfix.config").starts_with("ok: no Postfix here"),
        "{checks:?}"
    );
    // The daemon's own probe, by the map name Exim asks with.
    let daemon = level(&checks, "mta-stsd.probe");
    assert!(
        daemon.starts_with("ok: ") && daemon.contains("map \"exim\""),
        "{daemon}"
    );

    // Without the drop-ins, Exim never asks the daemon.
    let work = dir.path().join("without");
    std::fs::create_dir_all(&work).unwrap();
    let checks = doctor(exim_command(&root, &work, &exim_config(false)))
        .await
        .unwrap();
    assert!(
        level(&checks, "exim.routers").starts_with("problem: "),
        "{checks:?}"
    );
    assert_eq!(level(&checks, "exim.probe"), "");
    d.shutdown().await;
}
