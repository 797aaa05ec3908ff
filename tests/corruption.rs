//! A damaged cache never takes the daemon down: a cache written by the daemon is
//! corrupted in 100 seeded ways (random bytes at random offsets, single bit flips,
//! zeroed pages, truncation, deleted files), and the daemon starts and serves every
//! time. sled panics on some of these inside `open`; that must be contained.

mod common;

use std::path::Path;
use std::sync::Arc;

use mta_stsd::cache::store::sled_store::read_checkpoint;
use mta_stsd::cache::store::{PolicyStore, SledStore};
use mta_stsd::clock::SystemClock;
use mta_stsd::config::Config;
use mta_stsd_testkit::World;

const DOMAINS: usize = 150;
const BULK: usize = 20_000;
const TOTAL: u64 = (DOMAINS + BULK) as u64;
const SECURE: &str = "OK secure match=mx1.example.com:.example.net servername=hostname";

/// xorshift64*: deterministic per seed, no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

fn config(cache: &Path) -> Config {
    let mut c = Config::from_toml(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[metrics]\nlisten = \"\"\n",
        "test",
    )
    .unwrap();
    c.cache.path = Some(cache.to_owned());
    c
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// Damages the cache at `dir` in the way `seed` picks; returns what it did.
fn corrupt(dir: &Path, seed: u64) -> String {
    let mut rng = Rng::new(seed);
    let mut all = Vec::new();
    files(dir, &mut all);
    all.sort();
    // Most damage goes to the data file, where sled keeps its log.
    let db = all.iter().find(|p| p.ends_with("db")).cloned();
    let target = match (&db, rng.below(4)) {
        (Some(db), 0..=2) => db.clone(),
        _ => all[rng.below(all.len() as u64) as usize].clone(),
    };
    let mut bytes = std::fs::read(&target).unwrap();
    let len = bytes.len() as u64;
    let name = target.file_name().unwrap().to_string_lossy().into_owned();
    let what = match seed % 5 {
        0 => {
            for _ in 0..16 {
                if len > 0 {
                    let i = rng.below(len) as usize;
                    bytes[i] = rng.next() as u8;
                }
            }
            format!("16 random bytes in {name}")
        }
        1 => {
            if len > 0 {
                let i = rng.below(len) as usize;
                bytes[i] ^= 1 << rng.below(8);
            }
            format!("one bit flipped in {name}")
        }
        2 => {
            let start = (rng.below(len.max(1)) / 4096 * 4096) as usize;
            let end = (start + 4096).min(bytes.len());
            bytes[start..end].fill(0);
            format!("a zeroed page in {name} at {start}")
        }
        3 => {
            bytes.truncate(rng.below(len.max(1)) as usize);
            format!("{name} truncated to {}", bytes.len())
        }
        _ => {
            std::fs::remove_file(&target).unwrap();
            return format!("{name} deleted");
        }
    };
    std::fs::write(&target, bytes).unwrap();
    what
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_cache_never_stops_the_daemon() {
    let w = World::start().await;
    for i in 0..DOMAINS {
        w.publish(&format!("p{i}.example"), "1", common::ENFORCE);
    }
    let work = tempfile::tempdir().unwrap();
    let template = work.path().join("template");
    // A real cache, written by the daemon.
    let d = common::InProcess::start(&w, config(&template), Arc::new(SystemClock)).await;
    for i in 0..DOMAINS {
        assert_eq!(
            common::ask_once(d.tcp, "postfix", &format!("p{i}.example")).await,
            SECURE
        );
    }
    assert!(d.shutdown().await.flushed);
    // Bulk: enough entries for sled to use many segments, the case whose damage makes
    // it panic rather than return an error. Written through the daemon's own store.
    {
        let store = SledStore::open(&template).unwrap();
        let entry = store.get("p0.example").unwrap().unwrap();
        for i in 0..BULK {
            store.put(&format!("bulk{i}.example"), &entry).unwrap();
        }
        store.flush().unwrap();
        assert_eq!(
            store.checkpoint(),
            Some(DOMAINS as u64),
            "recorded at the clean stop"
        );
        store.set_checkpoint(Some(TOTAL)).unwrap();
    }

    let (mut moved, mut noticed) = (0, 0);
    for seed in 0..100u64 {
        let cache = work.path().join(format!("seed{seed}"));
        copy_dir(&template, &cache);
        let what = corrupt(&cache, seed);
        let recorded = read_checkpoint(&cache);
        let d = common::InProcess::start(&w, config(&cache), Arc::new(SystemClock)).await;
        d.service.wait_loaded().await;
        // Every entry is a live policy: what the walk at start found.
        let found = d.service.policies();
        let metrics = d.service.metrics();
        let (moved_here, lost) = (
            metrics.cache.cache_moved_aside.get(),
            metrics.cache.cache_policies_lost.get(),
        );
        if moved_here == 0 && recorded == Some(TOTAL) {
            // A cache that opened: any shortfall is reported, exactly.
            assert_eq!(lost, TOTAL - found, "seed {seed} ({what})");
        } else {
            assert_eq!(lost, 0, "seed {seed} ({what}): a new cache lost nothing");
        }
        if lost > 0 {
            noticed += 1;
        }
        let domain = format!("p{}.example", seed as usize % DOMAINS);
        assert_eq!(
            common::ask_once(d.tcp, "postfix", &domain).await,
            SECURE,
            "seed {seed} ({what})"
        );
        assert_eq!(
            common::ask_once(d.tcp, "postfix", "nothing.invalid").await,
            "NOTFOUND ",
            "seed {seed} ({what})"
        );
        moved += moved_here;
        d.shutdown().await;
    }
    eprintln!(
        "100 of 100 corrupted caches served; {moved} were moved aside, {noticed} opened short and said so"
    );
}

/// A cache that opens without error but holds fewer policies than the daemon last
/// recorded (what sled does when it drops every record after a damaged one, or when
/// its data file was zeroed) is reported at start: one WARN line and the count in
/// `mta_stsd_cache_policies_lost_total`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_shortened_cache_is_noticed() {
    let w = World::start().await;
    for i in 0..DOMAINS {
        w.publish(&format!("p{i}.example"), "1", common::ENFORCE);
    }
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let d = common::InProcess::start(&w, config(&cache), Arc::new(SystemClock)).await;
    for i in 0..DOMAINS {
        common::ask_once(d.tcp, "postfix", &format!("p{i}.example")).await;
    }
    assert!(d.shutdown().await.flushed);

    // An intact cache: nothing reported.
    let d = common::InProcess::start(&w, config(&cache), Arc::new(SystemClock)).await;
    d.service.wait_loaded().await;
    assert_eq!(d.service.metrics().cache.cache_policies_lost.get(), 0);
    assert!(d.shutdown().await.flushed);

    // 55 records vanish behind the daemon's back.
    {
        let store = SledStore::open(&cache).unwrap();
        for i in 0..55 {
            store.remove(&format!("p{i}.example")).unwrap();
        }
        store.flush().unwrap();
    }
    let d = common::InProcess::start(&w, config(&cache), Arc::new(SystemClock)).await;
    d.service.wait_loaded().await;
    assert_eq!(d.service.metrics().cache.cache_policies_lost.get(), 55);
    // Lost domains are discovered again.
    assert_eq!(
        common::ask_once(d.tcp, "postfix", "p0.example").await,
        SECURE
    );
    assert!(d.shutdown().await.flushed);

    // The next clean start has a new checkpoint, and reports nothing.
    let d = common::InProcess::start(&w, config(&cache), Arc::new(SystemClock)).await;
    d.service.wait_loaded().await;
    assert_eq!(d.service.metrics().cache.cache_policies_lost.get(), 0);
    assert!(d.shutdown().await.flushed);

    // sled's data file zeroed, then truncated to nothing: each time the loss is
    // reported, either as a cache moved aside or as lost policies, never silently.
    for damage in ["zeroed", "emptied"] {
        let policies = read_checkpoint(&cache).expect("recorded at the clean stop");
        let db = cache.join("db");
        let len = std::fs::metadata(&db).unwrap().len() as usize;
        let bytes = if damage == "zeroed" {
            vec![0u8; len]
        } else {
            Vec::new()
        };
        std::fs::write(&db, bytes).unwrap();
        let d = common::InProcess::start(&w, config(&cache), Arc::new(SystemClock)).await;
        d.service.wait_loaded().await;
        let m = d.service.metrics();
        let (moved, lost) = (
            m.cache.cache_moved_aside.get(),
            m.cache.cache_policies_lost.get(),
        );
        eprintln!("db {damage}: moved aside {moved}, lost {lost} of {policies}");
        assert!(
            moved == 1 || lost == policies,
            "{damage}: moved {moved}, lost {lost}"
        );
        // Put the policies back for the next round.
        for i in 0..DOMAINS {
            common::ask_once(d.tcp, "postfix", &format!("p{i}.example")).await;
        }
        assert!(d.shutdown().await.flushed);
    }
}
