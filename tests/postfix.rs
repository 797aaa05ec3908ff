//! Interop with Debian's Postfix: `postmap -q` is Postfix's own socketmap client.
//! .ci/run installs Postfix; elsewhere these tests are skipped (and say so) when
//! `postmap` is missing, unless CI is set.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::{ENFORCE, InProcess};
use mta_stsd::clock::SystemClock;
use mta_stsd::config::Config;
use mta_stsd_testkit::{World, policy_text};

fn postmap_available() -> bool {
    let found = Command::new("postmap").arg("-h").output().is_ok()
        || Path::new("/usr/sbin/postmap").exists();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install Postfix (postmap missing)"
        );
        eprintln!("skipped: postmap not installed (apt-get install postfix)");
    }
    found
}

fn postmap_bin() -> &'static str {
    if Path::new("/usr/sbin/postmap").exists() {
        "/usr/sbin/postmap"
    } else {
        "postmap"
    }
}

/// `postmap -q KEY MAP` with a private config directory; returns (exit code, stdout).
async fn postmap_q(confdir: &Path, key: &str, map: &str) -> (Option<i32>, String) {
    let (confdir, key, map) = (confdir.to_owned(), key.to_owned(), map.to_owned());
    tokio::task::spawn_blocking(move || {
        let out = Command::new(postmap_bin())
            .arg("-c")
            .arg(&confdir)
            .args(["-q", &key, &map])
            .output()
            .expect("run postmap");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim_end().to_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postmap_queries_over_tcp_and_unix_socket() {
    if !postmap_available() {
        return;
    }
    let w = World::start().await;
    w.publish("enforce.example", "1", ENFORCE);
    w.publish(
        "testing.example",
        "1",
        &policy_text("testing", &["mx.testing.example"], 86400),
    );
    let dir = tempfile::tempdir().unwrap();
    let confdir = dir.path().join("postfix");
    std::fs::create_dir(&confdir).unwrap();
    std::fs::write(confdir.join("main.cf"), "compatibility_level = 3.6\n").unwrap();
    let sock = dir.path().join("mta-stsd.sock");
    let mut config = Config::from_toml(
        &format!(
            "[server]\nlisten = [\"127.0.0.1:0\", \"unix:{}\"]\n[zones.strict]\nstrict_testing = true\n",
            sock.display()
        ),
        "test",
    )
    .unwrap();
    config.cache.path = Some(dir.path().join("cache"));
    config.metrics.listen = mta_stsd::config::MetricsListen::OFF;
    let d = InProcess::start(&w, config, Arc::new(SystemClock)).await;
    let port = d.tcp.port();

    let tcp = format!("socketmap:inet:127.0.0.1:{port}:postfix");
    let unix = format!("socketmap:unix:{}:postfix", sock.display());
    let strict = format!("socketmap:inet:127.0.0.1:{port}:strict");
    let secure = "secure match=mx1.example.com:.example.net servername=hostname";

    assert_eq!(
        postmap_q(&confdir, "enforce.example", &tcp).await,
        (Some(0), secure.to_owned())
    );
    assert_eq!(
        postmap_q(&confdir, "Enforce.Example.", &unix).await,
        (Some(0), secure.to_owned())
    );
    // NOTFOUND: postmap prints nothing and exits 1.
    assert_eq!(
        postmap_q(&confdir, "testing.example", &tcp).await,
        (Some(1), String::new())
    );
    assert_eq!(
        postmap_q(&confdir, "testing.example", &strict).await,
        (
            Some(0),
            "secure match=mx.testing.example servername=hostname".to_owned()
        )
    );
    assert_eq!(
        postmap_q(&confdir, ".enforce.example", &tcp).await,
        (Some(1), String::new())
    );
    assert_eq!(
        postmap_q(&confdir, "[192.0.2.1]", &unix).await,
        (Some(1), String::new())
    );
    assert_eq!(
        postmap_q(&confdir, "nopolicy.example", &unix).await,
        (Some(1), String::new())
    );

    d.shutdown().await;
}

/// A local process holding every connection slot with silent connections no longer
/// keeps Postfix out: a connection waiting for a slot makes connections idle for a
/// second or more close (before, `postmap` waited for its own 100 s limit and failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_holding_every_slot_make_room_for_postfix() {
    if !postmap_available() {
        return;
    }
    let w = World::start().await;
    w.publish("enforce.example", "1", ENFORCE);
    let dir = tempfile::tempdir().unwrap();
    let confdir = dir.path().join("postfix");
    std::fs::create_dir(&confdir).unwrap();
    std::fs::write(confdir.join("main.cf"), "compatibility_level = 3.6\n").unwrap();
    let mut config = Config::from_toml(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nmax_connections = 8\nidle_timeout = \"60s\"\n",
        "test",
    )
    .unwrap();
    config.cache.path = Some(dir.path().join("cache"));
    config.metrics.listen = mta_stsd::config::MetricsListen::OFF;
    let d = InProcess::start(&w, config, Arc::new(SystemClock)).await;
    let map = format!("socketmap:inet:127.0.0.1:{}:postfix", d.tcp.port());

    let mut hogs = Vec::new();
    for _ in 0..8 {
        hogs.push(tokio::net::TcpStream::connect(d.tcp).await.unwrap());
    }
    let started = std::time::Instant::now();
    assert_eq!(
        postmap_q(&confdir, "enforce.example", &map).await,
        (
            Some(0),
            "secure match=mx1.example.com:.example.net servername=hostname".to_owned()
        )
    );
    let waited = started.elapsed();
    assert!(
        waited < std::time::Duration::from_secs(10),
        "postmap waited {waited:?}"
    );
    let closed = &d.service.metrics().server.connections_closed;
    assert_eq!(closed.with_label_values(&["evicted"]).get(), 8);
    // The hogs were closed by the daemon: reading gives EOF.
    for mut hog in hogs {
        let mut buf = [0u8; 1];
        let n = tokio::io::AsyncReadExt::read(&mut hog, &mut buf)
            .await
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
    d.shutdown().await;
}
