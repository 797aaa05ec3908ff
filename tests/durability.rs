//! A policy that a lookup has been answered with survives `kill -9`. The daemon runs
//! in a child process (this test binary, re-run for the ignored `child_daemon` test,
//! with its own testkit world); many clients make it discover and cache policies; the
//! child is killed with SIGKILL in the middle of the load, and the cache on disk must
//! hold every policy that any client had been answered with. Three rounds share one
//! cache directory, so each restart also opens a cache written by a killed process.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{ENFORCE, InProcess, ask, connect_tcp};
use mta_stsd::cache::store::{PolicyStore, SledStore};
use mta_stsd::clock::SystemClock;
use mta_stsd::config::Config;
use mta_stsd_testkit::World;

const SECURE: &str = "OK secure match=mx1.example.com:.example.net servername=hostname";
const DOMAINS_PER_ROUND: usize = 1500;
const ROUNDS: usize = 3;
const CLIENTS: usize = 32;
const CHILD_DIR: &str = "MTA_STSD_DURABILITY_DIR";
const CHILD_ROUND: &str = "MTA_STSD_DURABILITY_ROUND";

fn domain(round: usize, i: usize) -> String {
    format!("d{i}.round{round}.example")
}

/// The daemon under test, run by `kill_9_under_load_loses_no_answered_policy` in a
/// child process: it publishes this round's domains, starts the daemon on the shared
/// cache, prints its address, and serves until it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of kill_9_under_load_loses_no_answered_policy"]
async fn child_daemon() {
    let dir = std::env::var_os(CHILD_DIR).expect("run by the kill -9 test");
    let round: usize = std::env::var(CHILD_ROUND)
        .expect("round")
        .parse()
        .expect("round number");
    let w = World::start().await;
    // One DNS zone rebuild for all domains (publishing one by one rebuilds per name).
    let std::net::IpAddr::V4(ip) = w.https.addr().ip() else {
        panic!("the test HTTPS server listens on IPv4")
    };
    w.dns.batch(|dns| {
        for i in 0..DOMAINS_PER_ROUND {
            let d = domain(round, i);
            dns.set_txt(&format!("_mta-sts.{d}"), &["v=STSv1; id=1;"]);
            dns.set_a(&format!("mta-sts.{d}"), ip);
        }
    });
    for i in 0..DOMAINS_PER_ROUND {
        w.https.set_policy(&domain(round, i), ENFORCE);
    }
    let mut config = Config::from_toml(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[metrics]\nlisten = \"\"\n",
        "test",
    )
    .expect("config");
    config.cache.path = Some(Path::new(&dir).join("cache"));
    let d = InProcess::start(&w, config, Arc::new(SystemClock)).await;
    println!("LISTENING {}", d.tcp);
    std::future::pending::<()>().await;
}

fn spawn_child(dir: &Path, round: usize) -> (Child, std::net::SocketAddr) {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--ignored", "--exact", "child_daemon", "--nocapture"])
        .env(CHILD_DIR, dir)
        .env(CHILD_ROUND, round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the child daemon");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the child printed its address before exiting")
            .expect("read the child's stdout");
        if let Some(addr) = line.strip_prefix("LISTENING ") {
            break addr.parse().expect("address");
        }
    };
    // Keep draining the child's stdout so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_answered_policy() {
    let dir = tempfile::tempdir().unwrap();
    let mut answered_total = 0;
    for round in 0..ROUNDS {
        let (mut child, addr) = spawn_child(dir.path(), round);
        let answered = Arc::new(Mutex::new(HashSet::new()));
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut clients = tokio::task::JoinSet::new();
        for _ in 0..CLIENTS {
            let (answered, next) = (answered.clone(), next.clone());
            clients.spawn(async move {
                let mut conn = connect_tcp(addr).await;
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if i >= DOMAINS_PER_ROUND {
                        return;
                    }
                    let d = domain(round, i);
                    match ask(&mut conn, "postfix", &d).await {
                        Some(reply) if reply == SECURE => {
                            answered.lock().unwrap().insert(d);
                        }
                        Some(reply) => panic!("{d}: {reply}"),
                        // The daemon was killed.
                        None => return,
                    }
                }
            });
        }
        // Kill in the middle of the load: once a third of this round is answered.
        let wanted = DOMAINS_PER_ROUND / 3;
        tokio::time::timeout(Duration::from_secs(60), async {
            while answered.lock().unwrap().len() < wanted {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .expect("a third of the domains answered within 60s");
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        while clients.join_next().await.is_some() {}

        let answered = answered.lock().unwrap().clone();
        let store = SledStore::open(&dir.path().join("cache")).expect("cache opens");
        let lost: Vec<&String> = answered
            .iter()
            .filter(|d| !matches!(store.get(d), Ok(Some(e)) if e.policy.is_some()))
            .collect();
        assert!(
            lost.is_empty(),
            "round {round}: {} of {} answered policies lost, e.g. {:?}",
            lost.len(),
            answered.len(),
            lost.iter().take(5).collect::<Vec<_>>()
        );
        answered_total += answered.len();
        drop(store);
    }
    eprintln!("{answered_total} answered policies, all on disk after {ROUNDS} kills");
}
