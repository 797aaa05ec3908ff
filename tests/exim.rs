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

/// Runs `exim -be EXPRESSION` from the unpacked root, as Debian-exim, in a private
/// mount namespace; Exim's output.
fn exim_expand(root: &Path, work: &Path, expression: &str) -> String {
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
    let conf = work.join("exim.conf");
    std::fs::write(&conf, format!("spool_directory = {}\n", spool.display())).unwrap();
    let script = r#"mount --bind "$1" /etc/passwd && mount --bind "$2" /etc/group && exec "$3/usr/sbin/exim4" -C "$4" -be "$5""#;
    let out = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
        .arg(&passwd)
        .arg(&group)
        .arg(root)
        .arg(&conf)
        .arg(expression)
        .env("LD_LIBRARY_PATH", root.join("usr/lib/x86_64-linux-gnu"))
        .output()
        .expect("unshare runs");
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
