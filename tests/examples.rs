//! The files the package ships as examples agree with each other and with the code: a
//! configuration copied from them parses, the Postfix lines name the socket the daemon
//! configuration next to them makes, and no shipped file tells an administrator to put
//! the socket in Postfix's private/ (mode 0700 for postfix: the daemon cannot create it
//! there).

use std::path::{Path, PathBuf};

use mta_stsd::config::{Config, ListenAddr};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The value of `smtp_tls_policy_maps` in a main.cf example.
fn policy_maps(main_cf: &str) -> String {
    main_cf
        .lines()
        .find_map(|l| l.strip_prefix("smtp_tls_policy_maps = "))
        .expect("smtp_tls_policy_maps")
        .to_owned()
}

#[test]
fn the_shipped_configurations_parse() {
    for path in ["contrib/mta-stsd.toml", "packaging/mta-stsd.toml"] {
        Config::from_toml(&read(path), path).unwrap_or_else(|e| panic!("{path}: {e}"));
    }
}

#[test]
fn main_cf_tcp_names_the_default_listener() {
    let maps = policy_maps(&read("contrib/postfix/main.cf.tcp"));
    let addr = maps
        .strip_prefix("socketmap:inet:")
        .and_then(|r| r.rsplit_once(':'))
        .map(|(a, _)| a)
        .expect("socketmap:inet:ADDR:NAME");
    for path in ["packaging/mta-stsd.toml", "contrib/mta-stsd.toml"] {
        let c = Config::from_toml(&read(path), path).unwrap();
        assert!(
            c.server.listen.iter().any(|l| l.to_string() == addr),
            "{path} does not listen on {addr}: {:?}",
            c.server.listen
        );
    }
}

#[test]
fn main_cf_unix_names_the_socket_its_daemon_configuration_makes() {
    let text = read("contrib/postfix/main.cf.unix");
    let maps = policy_maps(&text);
    let relative = maps
        .strip_prefix("socketmap:unix:")
        .and_then(|r| r.rsplit_once(':'))
        .map(|(p, _)| p)
        .expect("socketmap:unix:PATH:NAME");
    // The daemon's side, as the comment block after "/etc/mta-stsd/mta-stsd.toml:" says.
    let toml: String = text
        .lines()
        .skip_while(|l| !l.contains("/etc/mta-stsd/mta-stsd.toml:"))
        .skip(1)
        .map_while(|l| l.strip_prefix("#   "))
        .map(|l| format!("{l}\n"))
        .collect();
    let c = Config::from_toml(&toml, "main.cf.unix").unwrap_or_else(|e| panic!("{e}\n{toml}"));
    let want = Path::new("/var/spool/postfix").join(relative);
    assert!(
        c.server
            .listen
            .iter()
            .any(|l| matches!(l, ListenAddr::Unix(p) if *p == want)),
        "{relative} (relative to the queue directory) is not where {:?} listens",
        c.server.listen
    );
    assert_eq!(c.server.socket_mode.0, 0o660);
}

#[test]
fn no_shipped_file_puts_the_socket_in_postfixs_private_directory() {
    let mut files = vec![
        "README.md".to_owned(),
        "packaging/debian/mta-stsd.service".to_owned(),
        "packaging/debian/postinst".to_owned(),
        "packaging/mta-stsd.toml".to_owned(),
        "packaging/man/mta-stsd.8".to_owned(),
        "packaging/man/mta-stsd.toml.5".to_owned(),
    ];
    for dir in ["contrib", "contrib/postfix", "docs"] {
        for e in std::fs::read_dir(repo(dir)).unwrap().flatten() {
            if e.path().is_file() {
                files.push(format!("{dir}/{}", e.file_name().to_string_lossy()));
            }
        }
    }
    for f in files {
        for (n, line) in read(&f).lines().enumerate() {
            if line.contains("private/") || line.contains("unix:private") {
                let warns = ["not", "never", "out of"].iter().any(|w| line.contains(w));
                assert!(warns, "{f}:{}: {line}", n + 1);
            }
        }
    }
}
