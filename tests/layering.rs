//! The house rule: a room of `src/` uses only rooms below it (the order `lib.rs`
//! documents), never one above; so a socketmap request, a TLSRPT datagram or
//! `check DOMAIN` walks the house downward without coming back. Read from the source,
//! comments and unit tests left out.

use std::path::Path;

/// The rooms from the bottom up, as `lib.rs` lists them.
const ORDER: &[&str] = &[
    "locks", "clock", "config", "metrics", "postfix", "flight", "bounded", "findings", "net",
    "storage", "redis", "protocol", "mtasts", "dane", "cache", "tlsrpt", "answer", "instance",
    "setup", "admin", "server", "doctor", "check", "import", "cli",
];

fn rank(room: &str) -> Option<usize> {
    ORDER.iter().position(|r| *r == room)
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The rooms a file's code names as `crate::ROOM`.
fn used_rooms(text: &str) -> Vec<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    let mut rooms = Vec::new();
    for line in code.lines() {
        if line.trim_start().starts_with("//") {
            continue;
        }
        for part in line.split("crate::").skip(1) {
            let room: String = part
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !room.is_empty() && !rooms.contains(&room) {
                rooms.push(room);
            }
        }
    }
    rooms
}

#[test]
fn every_room_uses_only_the_rooms_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut upward = Vec::new();
    for file in &all {
        let rel = file
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if rel == "lib.rs" || rel == "main.rs" || rel.ends_with("/tests.rs") {
            continue;
        }
        let room = rel.split('/').next().unwrap().trim_end_matches(".rs");
        let own = rank(room).unwrap_or_else(|| panic!("{rel}: room {room} is not in ORDER"));
        let text = std::fs::read_to_string(file).unwrap();
        for used in used_rooms(&text) {
            if let Some(r) = rank(&used)
                && r > own
            {
                upward.push(format!("{rel} uses {used}"));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that point upward:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_check_finds_an_upward_import() {
    assert_eq!(
        used_rooms("use crate::server::state::State;\n// crate::cli\n"),
        ["server"]
    );
    assert!(used_rooms("#[cfg(test)]\nmod tests { use crate::cli; }").is_empty());
}
