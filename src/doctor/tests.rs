//! Unit tests of the parent module.
use super::*;

fn tcp(s: &str) -> ListenAddr {
    ListenAddr::Tcp(s.parse().unwrap())
}

#[test]
fn requiretls_on_postfix_3_11() {
    assert!(check_requiretls(None, "").is_none(), "before 3.11: nothing");
    assert_eq!(check_requiretls(Some("no"), "").unwrap().level, Level::Ok);
    let default = "inline:{{example.com=opportunistic}}, cidr:{{0.0.0.0/0 opportunistic}}, enforce";
    assert_eq!(
        check_requiretls(Some("yes"), default).unwrap().level,
        Level::Ok
    );
    assert_eq!(
        check_requiretls(Some("yes"), "opportunistic")
            .unwrap()
            .level,
        Level::Warning
    );
}

#[test]
fn policy_map_lists() {
    let (s, o) = parse_policy_maps(
        "hash:/etc/postfix/tls_policy, socketmap:inet:127.0.0.1:8461:postfix\n  socketmap:unix:/run/mta-stsd/sock:strict proxy:socketmap:inet:[::1]:8461:postfix",
    );
    assert_eq!(o, vec!["hash:/etc/postfix/tls_policy"]);
    assert_eq!(s.len(), 3);
    assert_eq!(
        s[0].endpoint,
        Endpoint::Inet {
            host: "127.0.0.1".into(),
            port: 8461
        }
    );
    assert_eq!(s[0].name, "postfix");
    assert_eq!(s[1].endpoint, Endpoint::Unix("/run/mta-stsd/sock".into()));
    assert_eq!(s[1].name, "strict");
    assert_eq!(
        s[2].endpoint,
        Endpoint::Inet {
            host: "::1".into(),
            port: 8461
        }
    );
    assert!(parse_policy_maps("socketmap:tcp:x:1:y").0.is_empty());
    assert!(parse_policy_maps("socketmap:inet:h:port:y").0.is_empty());
}

#[test]
fn endpoints_meet_listeners() {
    let listeners = [
        tcp("127.0.0.1:8461"),
        tcp("0.0.0.0:9000"),
        ListenAddr::Unix("/var/spool/postfix/mta-sts/sock".into()),
    ];
    let inet = |h: &str, p| Endpoint::Inet {
        host: h.into(),
        port: p,
    };
    let spool = Path::new("/var/spool/postfix");
    let find = |e: &Endpoint, chroot: Option<&Path>| listener_for(e, chroot, spool, &listeners);
    assert!(find(&inet("127.0.0.1", 8461), None).is_some());
    assert!(find(&inet("localhost", 8461), None).is_some());
    assert!(find(&inet("127.0.0.2", 8461), None).is_none());
    assert!(find(&inet("192.0.2.1", 9000), None).is_some());
    let unix = Endpoint::Unix("/mta-sts/sock".into());
    assert!(find(&unix, Some(spool)).is_some());
    assert!(find(&unix, None).is_none());
    let outside = Endpoint::Unix("/var/spool/postfix/mta-sts/sock".into());
    assert!(find(&outside, None).is_some());
    assert!(
        find(&outside, Some(spool)).is_none(),
        "inside the chroot that path is /var/spool/postfix/var/spool/postfix/..."
    );
    // Relative to queue_directory, chrooted or not.
    let relative = Endpoint::Unix("mta-sts/sock".into());
    assert!(find(&relative, Some(spool)).is_some());
    assert!(find(&relative, None).is_some());
}

#[test]
fn no_socketmap_is_a_problem_with_a_fix() {
    let c = check_policy_maps("", &[], &[tcp("127.0.0.1:8461")]);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].level, Level::Problem);
    assert!(
        c[0].fix
            .as_deref()
            .unwrap()
            .contains("socketmap:inet:127.0.0.1:8461:postfix")
    );
}

#[test]
fn zones() {
    let m = parse_policy_maps("socketmap:inet:127.0.0.1:8461:postfx").0;
    assert_eq!(check_zone(&m[0], &[]).level, Level::Ok);
    assert_eq!(check_zone(&m[0], &["default".into()]).level, Level::Ok);
    assert_eq!(check_zone(&m[0], &["postfx".into()]).level, Level::Ok);
    let c = check_zone(&m[0], &["postfix".into()]);
    assert_eq!(c.level, Level::Warning);
    assert!(c.message.contains("[zones.postfix]"), "{}", c.message);
}

#[test]
fn socket_permissions() {
    let postfix = User {
        name: "postfix".into(),
        uid: 107,
        gids: vec![113],
    };
    let root_dir = |mode| Access {
        mode,
        uid: 0,
        gid: 0,
    };
    let sock = Path::new("/run/m/sock");
    let dirs = |m| {
        vec![
            (PathBuf::from("/run"), root_dir(0o755)),
            ("/run/m".into(), root_dir(m)),
        ]
    };
    let file = |mode, gid| Access { mode, uid: 0, gid };
    assert_eq!(
        check_socket_access(sock, &dirs(0o755), Some(file(0o666, 0)), &postfix).level,
        Level::Ok
    );
    assert_eq!(
        check_socket_access(sock, &dirs(0o700), Some(file(0o666, 0)), &postfix).level,
        Level::Problem
    );
    assert_eq!(
        check_socket_access(sock, &dirs(0o755), Some(file(0o660, 0)), &postfix).level,
        Level::Problem
    );
    assert_eq!(
        check_socket_access(sock, &dirs(0o755), Some(file(0o660, 113)), &postfix).level,
        Level::Ok
    );
    assert_eq!(
        check_socket_access(sock, &dirs(0o755), None, &postfix).level,
        Level::Problem
    );
}

#[test]
fn trust_anchor_verdicts() {
    let loaded = |certs, public| Anchors::Loaded {
        path: "/etc/ssl/certs/ca-certificates.crt".into(),
        certs,
        public,
    };
    assert_eq!(
        check_trust(&loaded(140, 140), &Anchors::Unset, false, 140).level,
        Level::Ok
    );
    assert_eq!(
        check_trust(&Anchors::Missing("/x".into()), &Anchors::Unset, true, 140).level,
        Level::Problem
    );
    assert_eq!(
        check_trust(&Anchors::Unset, &Anchors::Unset, false, 140).level,
        Level::Problem
    );
    assert_eq!(
        check_trust(&Anchors::Unset, &Anchors::Unset, true, 140).level,
        Level::Ok
    );
    // Only a private CA: no public chain can verify.
    assert_eq!(
        check_trust(&loaded(1, 0), &Anchors::Unset, false, 140).level,
        Level::Problem
    );
}

#[test]
fn versions() {
    assert_eq!(parse_version("3.7.11"), Some((3, 7, 11)));
    assert_eq!(parse_version("3.10"), Some((3, 10, 0)));
    assert_eq!(parse_version("3.11-20251010"), Some((3, 11, 0)));
    assert_eq!(parse_version("x"), None);
    let zone = |sni, tlsrpt| ZoneOptions {
        require_sni: sni,
        tlsrpt,
        ..ZoneOptions::default()
    };
    assert_eq!(
        check_version("3.3.2", "postfix", "zones.default", &zone(true, false)).level,
        Level::Problem
    );
    assert_eq!(
        check_version("3.3.2", "postfix", "zones.default", &zone(false, false)).level,
        Level::Ok
    );
    assert_eq!(
        check_version("3.7.11", "postfix", "zones.default", &zone(true, true)).level,
        Level::Problem
    );
    assert_eq!(
        check_version("3.10.3", "postfix", "zones.default", &zone(true, true)).level,
        Level::Ok
    );
    assert_eq!(
        check_version("3.10.3", "postfix", "zones.default", &zone(true, false)).level,
        Level::Ok
    );
    assert_eq!(
        check_version("3.10.13", "postfix", "zones.default", &zone(true, false)).level,
        Level::Warning
    );
    assert_eq!(
        check_version("3.10.13", "postfix", "zones.default", &zone(true, true)).level,
        Level::Ok
    );
}

#[test]
fn dane() {
    use DaneMode::{Auto, Off, On};
    assert_eq!(check_dane("dnssec", "dane", true, Auto).level, Level::Ok);
    assert_eq!(check_dane("dnssec", "dane", true, On).level, Level::Ok);
    assert_eq!(
        check_dane("dnssec", "dane", true, Off).level,
        Level::Warning
    );
    assert_eq!(
        check_dane("enabled", "dane", true, Auto).level,
        Level::Problem
    );
    assert_eq!(check_dane("enabled", "may", true, On).level, Level::Problem);
    assert_eq!(
        check_dane("dnssec", "may", false, Auto).level,
        Level::Warning
    );
    assert_eq!(check_dane("dnssec", "may", true, Auto).level, Level::Ok);
    assert_eq!(check_dane("", "may", false, Auto).level, Level::Ok);
    assert_eq!(check_dane("", "may", false, Off).level, Level::Ok);
    assert!(resolv_conf_trusts_ad(
        "nameserver 127.0.0.1\noptions edns0 trust-ad\n"
    ));
    assert!(!resolv_conf_trusts_ad(
        "nameserver 127.0.0.1\n# options trust-ad\n"
    ));
}

#[test]
fn master_cf_services() {
    let m = "smtp       inet  n       -       y       -       -       smtpd\n\
             smtp       unix  -       -       y       -       -       smtp\n\
             relay      unix  -       -       n       -       -       smtp -o syslog_name=postfix/relay\n\
             pickup     unix  n       -       y       60      1       pickup\n";
    assert_eq!(
        smtp_services(m),
        vec![("smtp".to_owned(), true), ("relay".to_owned(), false)]
    );
}
