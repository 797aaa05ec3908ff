//! A second instance never breaks the first: a `serve` whose configuration names a
//! unix socket, the TLSRPT socket, the cache or the report store that a running daemon
//! holds refuses to start with one line naming each, and leaves the running daemon's
//! sockets in place and answering; `check-config` notes the same and stays OK.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{InProcess, cli, config_in};
use mta_stsd::clock::SystemClock;
use mta_stsd::instance::socket_is_live;
use mta_stsd_testkit::World;

const SENDER: &str = "organization_name = \"Example\"\ncontact_info = \"postmaster@example.com\"\nreport_from = \"tlsrpt@example.com\"\n";

/// Runs `serve` with `config`, which must exit (refuse) within 20 s: its exit status
/// and standard error. A `serve` that starts instead is killed and fails the test.
fn serve_must_exit(config: &Path) -> (Option<i32>, String) {
    let mut child = common::bin()
        .args(["serve", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            return (status.code(), err);
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a second serve started beside the running daemon");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn inode(p: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_never_takes_a_running_daemons_sockets_or_stores() {
    let w = World::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let unix = d.join("socketmap.sock");
    let tlsrpt = d.join("tlsrpt.sock");
    let first = format!(
        "[server]\nlisten = [\"127.0.0.1:0\", \"unix:{}\"]\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [dane]\nmode = \"off\"\n[tlsrpt]\nenable = true\nsocket = {tlsrpt:?}\n{SENDER}",
        unix.display()
    );
    let running = InProcess::start(&w, config_in(d, &first), Arc::new(SystemClock)).await;
    let (unix_ino, tlsrpt_ino) = (inode(&unix), inode(&tlsrpt));

    // Each thing the running daemon holds, shared alone by a second configuration
    // (its other addresses and paths its own), and all at once.
    let cache = d.join("cache");
    let elsewhere = d.join("second");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let second = |listen: &str, socket: &Path, cache: &Path| {
        format!(
            "[server]\nlisten = [{listen}]\n[metrics]\nlisten = \"\"\n[cache]\npath = {cache:?}\n\
             [dane]\nmode = \"off\"\n[tlsrpt]\nenable = true\nsocket = {socket:?}\n{SENDER}"
        )
    };
    let own_socket = elsewhere.join("tlsrpt.sock");
    let own_cache = elsewhere.join("cache");
    let unix_listen = format!("\"unix:{}\"", unix.display());
    let cases = [
        (
            "the unix listener",
            second(&unix_listen, &own_socket, &own_cache),
            vec!["server.listen"],
        ),
        (
            "the TLSRPT socket",
            second("\"127.0.0.1:0\"", &tlsrpt, &own_cache),
            vec!["tlsrpt.socket"],
        ),
        (
            "the cache",
            second("\"127.0.0.1:0\"", &own_socket, &cache),
            vec!["cache.path", "tlsrpt.path"],
        ),
        (
            "everything",
            second(&unix_listen, &tlsrpt, &cache),
            vec![
                "server.listen",
                "tlsrpt.socket",
                "cache.path",
                "tlsrpt.path",
            ],
        ),
    ];
    for (what, toml, settings) in cases {
        let path = elsewhere.join("second.toml");
        std::fs::write(&path, &toml).unwrap();
        let (code, err) = serve_must_exit(&path);
        assert_ne!(code, Some(0), "{what}: {err}");
        let refusal: Vec<&str> = err
            .lines()
            .filter(|l| l.contains("refusing to start"))
            .collect();
        assert_eq!(refusal.len(), 1, "{what}: one line: {err}");
        for s in &settings {
            assert!(refusal[0].contains(s), "{what}: {s} not named: {err}");
        }
        // check-config says OK, and notes what a running daemon holds.
        let (code, out, err) = cli(&["check-config", path.to_str().unwrap()]);
        assert_eq!(code, Some(0), "{what}: {out}{err}");
        for s in &settings {
            assert!(
                out.lines().any(|l| l.contains("note:") && l.contains(s)),
                "{what}: {s}: {out}"
            );
        }
        // The running daemon still has its sockets, the same ones, answering.
        assert_eq!(
            (inode(&unix), inode(&tlsrpt)),
            (unix_ino, tlsrpt_ino),
            "{what}"
        );
        assert!(socket_is_live(&unix) && socket_is_live(&tlsrpt), "{what}");
        assert!(
            common::ask_once(running.tcp, "postfix", "[192.0.2.1]")
                .await
                .starts_with("NOTFOUND"),
            "{what}"
        );
    }
    running.shutdown().await;

    // Once it has stopped, nothing is held (sled lets its lock go from a background
    // thread a moment after the store is closed: asked again for up to 2 s).
    let path = elsewhere.join("second.toml");
    std::fs::write(&path, second(&unix_listen, &tlsrpt, &cache)).unwrap();
    let mut out = String::new();
    for _ in 0..100 {
        let (code, o, _) = cli(&["check-config", path.to_str().unwrap()]);
        assert_eq!(code, Some(0));
        out = o;
        if !out.contains("note:") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!out.contains("note:"), "{out}");
}
