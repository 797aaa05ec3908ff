//! The verdicts of `mta-stsd doctor` about Exim's and Sendmail's side: what their own
//! tools and configuration say (Exim's `-bP` and `-be`, Sendmail's `sendmail.cf`) in,
//! one [`Finding`] per question out. Pure functions; `gather::exim` and
//! `gather::sendmail` run the tools and read the files.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::ListenAddr;

use super::{Endpoint, Finding};

/// The router the shipped Exim drop-ins (router/190_mta-stsd) ask the daemon from.
pub const EXIM_ASK_ROUTER: &str = "mta_stsd_ask";

/// What the doctor's test lookup through Exim's `${readsocket}` expands to when the
/// daemon does not answer (its fail string).
pub const EXIM_PROBE_FAILED: &str = "mta-stsd did not answer";

/// Where the daemon listens, as an Exim `${readsocket}` target (`inet:HOST:PORT`, or
/// a socket path) or a Sendmail socket map (`inet:PORT@HOST`, `unix:PATH`,
/// `local:PATH`) names it.
pub fn exim_endpoint(socket: &str) -> Option<Endpoint> {
    let socket = socket.trim();
    if let Some(addr) = socket.strip_prefix("inet:") {
        return Endpoint::inet(addr);
    }
    socket
        .starts_with('/')
        .then(|| Endpoint::Unix(PathBuf::from(socket)))
}

/// Is this endpoint one of the daemon's listeners?
pub fn reaches(endpoint: &Endpoint, listeners: &[ListenAddr]) -> Option<ListenAddr> {
    super::listener_for(endpoint, None, std::path::Path::new("/"), listeners)
}

/// Exim's routers (`exim -bP router_list`, one name per line) against the shipped
/// drop-ins. `configtype` is Debian's `dc_eximconfig_configtype`, when known: the
/// drop-ins' routers exist only on an "internet" site (mail delivered by MX).
pub fn check_exim_routers(router_list: &str, configtype: Option<&str>) -> Finding {
    const NAME: &str = "exim.routers";
    if router_list.lines().any(|r| r.trim() == EXIM_ASK_ROUTER) {
        return Finding::ok(
            NAME,
            format!(
                "Exim's routers include {EXIM_ASK_ROUTER}: it asks mta-stsd about every remote domain"
            ),
        );
    }
    match configtype.map(str::trim) {
        Some(t) if !t.is_empty() && t != "internet" => Finding::warning(
            NAME,
            format!(
                "Exim is configured as {t:?} (dc_eximconfig_configtype), not an internet site: it does not deliver by MX, so MTA-STS does not apply to its mail"
            ),
            "nothing to do while Exim sends through a smarthost; the smarthost enforces MTA-STS",
        ),
        _ => Finding::problem(
            NAME,
            format!(
                "Exim's routers have no {EXIM_ASK_ROUTER}: Exim never asks mta-stsd, so no MTA-STS policy is applied"
            ),
            "cp -r /usr/share/mta-stsd/exim4/conf.d/. /etc/exim4/conf.d/ && update-exim4.conf && systemctl restart exim4 (see docs/exim.md for a configuration that is not split)",
        ),
    }
}

/// Where Exim's drop-ins send their questions (`MTA_STSD_SOCKET`), against the
/// daemon's listeners.
pub fn check_exim_socket(socket: &str, listeners: &[ListenAddr]) -> Finding {
    const NAME: &str = "exim.socket";
    match exim_endpoint(socket) {
        None => Finding::problem(
            NAME,
            format!("MTA_STSD_SOCKET = {socket:?} is not inet:HOST:PORT or a socket path"),
            "define MTA_STSD_SOCKET = inet:127.0.0.1:8461 in /etc/exim4/exim4.conf.localmacros",
        ),
        Some(e) => match reaches(&e, listeners) {
            Some(l) => Finding::ok(
                NAME,
                format!("MTA_STSD_SOCKET = {socket} reaches the daemon's listener {l}"),
            ),
            None => Finding::problem(
                NAME,
                format!(
                    "MTA_STSD_SOCKET = {socket} matches none of the daemon's listeners ({}): every lookup fails and Exim defers mail",
                    listeners
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                "set MTA_STSD_SOCKET (exim4.conf.localmacros) to a server.listen address of mta-stsd",
            ),
        },
    }
}

/// What Exim itself got from the daemon: the output of its own `${readsocket}` with
/// the drop-ins' socket and a probe request (a netstring, or the fail string).
pub fn check_exim_probe(expanded: Result<&str, &str>) -> Finding {
    const NAME: &str = "exim.probe";
    match expanded {
        Ok(out) if out.trim() == EXIM_PROBE_FAILED => Finding::problem(
            NAME,
            "Exim's ${readsocket} got no answer from the daemon: Exim defers every remote domain's mail",
            "start mta-stsd (systemctl start mta-stsd), and check MTA_STSD_SOCKET against server.listen",
        ),
        Ok(out) if out.contains(":mode=") => Finding::ok(
            NAME,
            format!(
                "Exim's ${{readsocket}} got an answer from mta-stsd ({})",
                out.trim()
            ),
        ),
        Ok(out) => Finding::problem(
            NAME,
            format!(
                "Exim's ${{readsocket}} did not get an Exim answer: {:?}",
                out.trim()
            ),
            "check that the daemon runs and that the map name \"exim\" has format = \"exim\" (its default)",
        ),
        Err(e) => Finding::problem(
            NAME,
            format!("Exim could not expand a test lookup: {}", e.trim()),
            "run exim4 -be as shown in docs/exim.md and read its error",
        ),
    }
}

/// FEATURE(`sts')'s map, as `sendmail.cf` declares it (`Ksts socket -d5 -T<TMPF>
/// inet:8461@127.0.0.1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendmailMap {
    /// The map's declaration as written.
    pub line: String,
    /// Where it connects, when it names a socket.
    pub endpoint: Option<Endpoint>,
    /// `-dN`: seconds Sendmail waits for an answer (FEATURE(`sts') sets 5).
    pub timeout: Option<Duration>,
    /// `-T<TMPF>`: a temporary failure is marked so the STS rules defer.
    pub tempfail_marked: bool,
}

/// The facts of `sendmail.cf` the STS feature depends on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SendmailCf {
    pub map: Option<SendmailMap>,
    /// `O StrictTransportSecurity=true`.
    pub sts_option: bool,
    /// `O CACertFile=` or `O CACertPath=` set (trust anchors for verification).
    pub ca: Option<String>,
}

/// Reads the facts out of a `sendmail.cf`.
pub fn parse_sendmail_cf(cf: &str) -> SendmailCf {
    let mut facts = SendmailCf::default();
    for line in cf.lines() {
        if let Some(rest) = line.strip_prefix("Ksts") {
            let words: Vec<&str> = rest.split_whitespace().collect();
            if words.first() != Some(&"socket") {
                continue;
            }
            let mut map = SendmailMap {
                line: line.trim().to_owned(),
                endpoint: None,
                timeout: None,
                tempfail_marked: false,
            };
            for w in &words[1..] {
                if let Some(d) = w.strip_prefix("-d") {
                    map.timeout = d.parse().ok().map(Duration::from_secs);
                } else if let Some(t) = w.strip_prefix("-T") {
                    map.tempfail_marked = t == "<TMPF>";
                } else if !w.starts_with('-') {
                    map.endpoint = sendmail_endpoint(w);
                }
            }
            facts.map = Some(map);
        } else if let Some(opt) = line.strip_prefix("O ") {
            let (name, value) = opt.split_once('=').unwrap_or((opt, ""));
            match name.trim() {
                "StrictTransportSecurity" => facts.sts_option = value.trim() == "true",
                "CACertFile" | "CACertPath" if !value.trim().is_empty() => {
                    facts.ca = Some(value.trim().to_owned());
                }
                _ => {}
            }
        }
    }
    facts
}

/// A socket map's address: `inet:PORT@HOST`, `unix:PATH` or `local:PATH` (sendmail's
/// op.me, "socket" map class).
fn sendmail_endpoint(spec: &str) -> Option<Endpoint> {
    if let Some(addr) = spec.strip_prefix("inet:") {
        let (port, host) = addr.split_once('@')?;
        return Some(Endpoint::Inet {
            host: host.trim_matches(['[', ']']).to_owned(),
            port: port.parse().ok()?,
        });
    }
    spec.strip_prefix("unix:")
        .or_else(|| spec.strip_prefix("local:"))
        .map(|p| Endpoint::Unix(PathBuf::from(p)))
}

/// The checks on Sendmail's side: FEATURE(sts) on, its map reaching the daemon with a
/// timeout longer than the `sts` zone's deadline, temporary failures deferring, and
/// trust anchors to verify certificates with.
pub fn check_sendmail(
    cf_path: &str,
    cf: &SendmailCf,
    listeners: &[ListenAddr],
    deadline: Duration,
) -> Vec<Finding> {
    const NAME: &str = "sendmail.sts";
    let Some(map) = &cf.map else {
        return vec![Finding::problem(
            NAME,
            format!(
                "{cf_path} declares no sts socket map: Sendmail never asks mta-stsd, so no MTA-STS policy is applied"
            ),
            "add FEATURE(`sts', `socket -d5 -T<TMPF> inet:8461@127.0.0.1')dnl to sendmail.mc, then make -C /etc/mail and restart sendmail",
        )];
    };
    let mut out = Vec::new();
    out.push(match &map.endpoint {
        Some(e) => match reaches(e, listeners) {
            Some(l) => Finding::ok(NAME, format!("{} reaches the daemon's listener {l}", map.line)),
            None => Finding::problem(
                NAME,
                format!("{} matches none of the daemon's listeners: every lookup fails and Sendmail defers mail", map.line),
                "point the sts map at a server.listen address of mta-stsd (FEATURE(`sts', `socket -d5 -T<TMPF> inet:8461@127.0.0.1'))",
            ),
        },
        None => Finding::problem(
            NAME,
            format!("{} names no socket Sendmail can connect to", map.line),
            "FEATURE(`sts', `socket -d5 -T<TMPF> inet:8461@127.0.0.1')",
        ),
    });
    out.push(match map.timeout {
        Some(t) if t <= deadline => Finding::problem(
            "sendmail.timeout",
            format!(
                "the sts map waits {} s, but the daemon may take up to {} s (the sts zone's deadline): a slow first lookup times out and Sendmail defers the message",
                t.as_secs(),
                deadline.as_secs()
            ),
            format!("raise -d in the FEATURE line above {} s, or lower [zones.sts] deadline", deadline.as_secs()),
        ),
        Some(t) => Finding::ok(
            "sendmail.timeout",
            format!("the sts map waits {} s; the daemon answers within {} s", t.as_secs(), deadline.as_secs()),
        ),
        None => Finding::warning(
            "sendmail.timeout",
            "the sts map has no -d timeout (FEATURE(`sts') sets -d5): how long Sendmail waits for the daemon is not bounded by its configuration",
            "use -d5 (FEATURE(`sts')'s default)",
        ),
    });
    if !map.tempfail_marked {
        out.push(Finding::problem(
            "sendmail.tempfail",
            "the sts map has no -T<TMPF>: a failed lookup is not marked, and Sendmail's STS rules treat it as no policy",
            "declare the map with -T<TMPF> (FEATURE(`sts')'s default)",
        ));
    }
    if !cf.sts_option {
        out.push(Finding::problem(
            NAME,
            "StrictTransportSecurity is not on: Sendmail asks the map but does not apply its answers",
            "use FEATURE(`sts') rather than declaring the map by hand",
        ));
    }
    out.push(match &cf.ca {
        Some(ca) => Finding::ok("sendmail.trust_anchors", format!("certificates are verified against {ca}")),
        None => Finding::problem(
            "sendmail.trust_anchors",
            "neither CACertFile nor CACertPath is set: no certificate verifies, and every enforced domain is deferred",
            "define(`confCACERT_PATH', `/etc/ssl/certs')dnl and define(`confCACERT', `/etc/ssl/certs/ca-certificates.crt')dnl in sendmail.mc",
        ),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::findings::Level;

    fn tcp() -> Vec<ListenAddr> {
        vec![ListenAddr::Tcp("127.0.0.1:8461".parse().unwrap())]
    }

    #[test]
    fn exim_routers_with_and_without_the_drop_ins() {
        let with = "mta_stsd_ask\nmta_stsd_defer\ndnslookup\n";
        assert_eq!(check_exim_routers(with, Some("internet")).level, Level::Ok);
        let without = "dnslookup\nsystem_aliases\n";
        assert_eq!(
            check_exim_routers(without, Some("internet")).level,
            Level::Problem
        );
        assert_eq!(check_exim_routers(without, None).level, Level::Problem);
        let smarthost = check_exim_routers(without, Some("smarthost"));
        assert_eq!(smarthost.level, Level::Warning);
        assert!(
            smarthost.message.contains("smarthost"),
            "{}",
            smarthost.message
        );
    }

    #[test]
    fn exim_socket_must_reach_a_listener() {
        assert_eq!(
            check_exim_socket("inet:127.0.0.1:8461", &tcp()).level,
            Level::Ok
        );
        assert_eq!(
            check_exim_socket("inet:127.0.0.1:9999", &tcp()).level,
            Level::Problem
        );
        assert_eq!(check_exim_socket("tcp:x", &tcp()).level, Level::Problem);
        let unix = vec![ListenAddr::Unix("/run/mta-stsd/socketmap".into())];
        assert_eq!(
            check_exim_socket("/run/mta-stsd/socketmap", &unix).level,
            Level::Ok
        );
    }

    #[test]
    fn exim_probe_needs_an_exim_answer() {
        assert_eq!(check_exim_probe(Ok("9:mode=none,")).level, Level::Ok);
        assert_eq!(check_exim_probe(Ok("9:NOTFOUND ,")).level, Level::Problem);
        assert_eq!(
            check_exim_probe(Ok("mode=defer reason=\"mta-stsd did not answer\"")).level,
            Level::Problem
        );
        assert_eq!(
            check_exim_probe(Err("failed to expand")).level,
            Level::Problem
        );
    }

    const FEATURE_CF: &str = "O StrictTransportSecurity=true\nO SetCertAltnames=true\nKsts socket -d5 -T<TMPF> inet:8461@127.0.0.1\nO CACertFile=/etc/ssl/certs/ca-certificates.crt\n";

    #[test]
    fn sendmail_cf_facts() {
        let cf = parse_sendmail_cf(FEATURE_CF);
        let map = cf.map.clone().unwrap();
        assert_eq!(map.timeout, Some(Duration::from_secs(5)));
        assert!(map.tempfail_marked);
        assert_eq!(
            map.endpoint,
            Some(Endpoint::Inet {
                host: "127.0.0.1".into(),
                port: 8461
            })
        );
        assert!(cf.sts_option);
        assert_eq!(cf.ca.as_deref(), Some("/etc/ssl/certs/ca-certificates.crt"));
        let local = parse_sendmail_cf("Ksts socket -T<TMPF> local:/run/mta-stsd/s\n");
        assert_eq!(
            local.map.unwrap().endpoint,
            Some(Endpoint::Unix("/run/mta-stsd/s".into()))
        );
        assert_eq!(parse_sendmail_cf("Kother socket inet:1@h\n").map, None);
    }

    #[test]
    fn sendmail_checks() {
        let four = Duration::from_secs(4);
        let good = check_sendmail("sendmail.cf", &parse_sendmail_cf(FEATURE_CF), &tcp(), four);
        assert!(good.iter().all(|f| f.level == Level::Ok), "{good:?}");
        // The map waits no longer than the daemon may take: a problem.
        let slow = check_sendmail(
            "sendmail.cf",
            &parse_sendmail_cf(FEATURE_CF),
            &tcp(),
            Duration::from_secs(10),
        );
        assert!(
            slow.iter()
                .any(|f| f.check == "sendmail.timeout" && f.level == Level::Problem)
        );
        // Another port, no trust anchors, no <TMPF>: each a problem of its own.
        let bad = parse_sendmail_cf(
            "O StrictTransportSecurity=true\nKsts socket -d5 inet:5461@127.0.0.1\n",
        );
        let found = check_sendmail("sendmail.cf", &bad, &tcp(), four);
        for check in [
            "sendmail.sts",
            "sendmail.tempfail",
            "sendmail.trust_anchors",
        ] {
            assert!(
                found
                    .iter()
                    .any(|f| f.check == check && f.level == Level::Problem),
                "{check}: {found:?}"
            );
        }
        let none = check_sendmail("sendmail.cf", &parse_sendmail_cf(""), &tcp(), four);
        assert_eq!(none.len(), 1);
        assert_eq!(none[0].level, Level::Problem);
    }
}
