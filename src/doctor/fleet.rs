//! The verdicts of `mta-stsd doctor` about a fleet's Redis: with a single server,
//! whether this daemon can write to it; on Redis Sentinel, what each sentinel names as
//! master, whether that node says it is one, and whether this daemon's credentials may
//! write to it. Pure; `gather::redis` asks. Every finding here is at most a warning:
//! without Redis each daemon answers from its own cache and discovers on its own, so
//! mail is not affected; the fleet only stops sharing.

use super::Finding;

/// What doctor learned from the sentinels and the master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelFacts {
    pub master_name: String,
    /// Each sentinel (`host:port`) and the master it names, or why it names none (no
    /// answer, refused credentials, no such master name).
    pub answers: Vec<(String, Result<String, String>)>,
    /// The master most sentinels name, checked with `ROLE`; or why there is none.
    pub master: Result<String, String>,
    /// A test write on that master with the daemon's credentials (`None`: no master).
    pub write: Option<Result<(), String>>,
}

/// A single server's verdict: `addr` (never the url, which may hold a password) and
/// what a test write with the daemon's settings gave.
pub fn check_server(addr: &str, write: &Result<(), String>) -> Finding {
    match write {
        Ok(()) => Finding::ok(
            "redis.server",
            format!("{addr} answers, and this daemon can write to it"),
        ),
        Err(e) => Finding::warning(
            "redis.server",
            format!(
                "{addr} refuses this daemon's write: {e}; until it takes it, each daemon works alone"
            ),
            "check cache.redis.url (address, user, password), ca_file and client_cert for rediss://, and the server's ACL for the prefix's keys",
        ),
    }
}

/// Certificate files the daemon cannot use (`error` names the setting): it refuses to
/// start, so this one is a problem.
pub fn check_tls_files(error: &str) -> Finding {
    Finding::problem(
        "redis.tls",
        error,
        "point the setting at a readable PEM file; mta-stsd check-config lists every problem",
    )
}

pub fn check_sentinels(f: &SentinelFacts) -> Vec<Finding> {
    let named: Vec<&str> = f
        .answers
        .iter()
        .filter_map(|(_, m)| m.as_deref().ok())
        .collect();
    let mut out = sentinel_answers(f, &named);
    if let Some(master) = master_write(f, !named.is_empty()) {
        out.push(master);
    }
    out
}

/// What the sentinels answered: all, some or none of them naming a master (`named`),
/// and whether they agree.
fn sentinel_answers(f: &SentinelFacts, named: &[&str]) -> Vec<Finding> {
    const NAME: &str = "redis.sentinel";
    let mut out = Vec::new();
    let silent: Vec<String> = f
        .answers
        .iter()
        .filter_map(|(s, m)| m.as_ref().err().map(|why| format!("{s}: {why}")))
        .collect();
    // A sentinel that wants a password, or was offered one it does not have, says so.
    let credentials = f.answers.iter().any(|(_, m)| {
        m.as_ref().err().is_some_and(|why| {
            ["NOAUTH", "WRONGPASS", "without any password"]
                .iter()
                .any(|k| why.contains(k))
        })
    });
    let fix = if credentials {
        "give the sentinels' own password (requirepass in sentinel.conf) as cache.redis.sentinel_password (and its ACL user as sentinel_username), or none if they have none; url's password is the data nodes'"
    } else {
        "check cache.redis.sentinels and master_name against the sentinels' `sentinel monitor` lines (redis-cli -p 26379 SENTINEL masters), and that they run"
    };
    if named.is_empty() {
        out.push(Finding::warning(
            NAME,
            format!(
                "no sentinel names a master for {:?} ({}): the fleet shares nothing until one does; lookups are answered from each daemon's own cache",
                f.master_name,
                silent.join("; ")
            ),
            fix,
        ));
    } else if !silent.is_empty() {
        out.push(Finding::warning(
            NAME,
            format!(
                "{} of {} sentinels name no master ({}): a failover needs a majority of them",
                silent.len(),
                f.answers.len(),
                silent.join("; ")
            ),
            fix,
        ));
    } else {
        out.push(Finding::ok(
            NAME,
            format!(
                "all {} sentinels answer for {:?}",
                f.answers.len(),
                f.master_name
            ),
        ));
    }
    if named.windows(2).any(|w| w[0] != w[1]) {
        out.push(Finding::warning(
            NAME,
            format!(
                "the sentinels disagree on the master ({}): a failover may be under way",
                named.join(", ")
            ),
            "run doctor again in a minute; if it persists, check the sentinels' quorum and logs",
        ));
    }
    out
}

/// Whether the master the sentinels name is one and takes this daemon's write; nothing
/// to say when no sentinel names one (`named`: some do).
fn master_write(f: &SentinelFacts, named: bool) -> Option<Finding> {
    Some(match (&f.master, &f.write) {
        (Err(e), _) if named => Finding::warning(
            "redis.master",
            format!("no writable master: {e}"),
            "check the master the sentinels name (redis-cli ROLE); while none is writable the fleet shares nothing",
        ),
        (Err(_), _) => return None,
        (Ok(m), Some(Err(e))) => Finding::warning(
            "redis.master",
            format!("the master {m} refuses this daemon's write: {e}"),
            "give cache.redis.url's user and password the right to write the prefix's keys (ACL), on every node",
        ),
        (Ok(m), _) => Finding::ok(
            "redis.master",
            format!("the master is {m}, and this daemon can write to it"),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::findings::Level;

    fn facts(
        answers: &[Option<&str>],
        master: Result<&str, &str>,
        write: Option<Result<(), &str>>,
    ) -> SentinelFacts {
        SentinelFacts {
            master_name: "mta-stsd".into(),
            answers: answers
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let answer = m.map(str::to_owned).ok_or_else(|| "no answer".to_owned());
                    (format!("10.0.0.{i}:26379"), answer)
                })
                .collect(),
            master: master.map(str::to_owned).map_err(str::to_owned),
            write: write.map(|w| w.map_err(str::to_owned)),
        }
    }

    fn levels(f: &SentinelFacts) -> Vec<(String, Level)> {
        check_sentinels(f)
            .into_iter()
            .map(|x| (x.check, x.level))
            .collect()
    }

    #[test]
    fn a_healthy_set_up_and_each_way_it_goes_wrong() {
        let m = Some("10.0.1.1:6379");
        assert!(
            levels(&facts(&[m, m, m], Ok("10.0.1.1:6379"), Some(Ok(()))))
                .iter()
                .all(|(_, l)| *l == Level::Ok)
        );
        let one_silent = levels(&facts(&[m, None, m], Ok("10.0.1.1:6379"), Some(Ok(()))));
        assert!(one_silent.contains(&("redis.sentinel".into(), Level::Warning)));
        let none = levels(&facts(
            &[None, None, None],
            Err("no sentinel names a master"),
            None,
        ));
        assert_eq!(none, vec![("redis.sentinel".into(), Level::Warning)]);
        let split = levels(&facts(
            &[m, Some("10.0.1.2:6379"), m],
            Ok("10.0.1.1:6379"),
            Some(Ok(())),
        ));
        assert_eq!(
            split.iter().filter(|(_, l)| *l == Level::Warning).count(),
            1
        );
        let demoted = levels(&facts(&[m, m, m], Err("10.0.1.1:6379 is a slave"), None));
        assert!(demoted.contains(&("redis.master".into(), Level::Warning)));
        let acl = levels(&facts(&[m, m, m], Ok("10.0.1.1:6379"), Some(Err("NOPERM"))));
        assert!(acl.contains(&("redis.master".into(), Level::Warning)));
    }

    #[test]
    fn unusable_certificate_files_stop_the_daemon() {
        let f = check_tls_files("cache.redis.ca_file: cannot use /x: no certificates found");
        assert_eq!((f.check.as_str(), f.level), ("redis.tls", Level::Problem));
    }

    #[test]
    fn a_single_server_is_written_to_or_refuses() {
        assert_eq!(check_server("127.0.0.1:6379", &Ok(())).level, Level::Ok);
        let refused = check_server("127.0.0.1:6379", &Err("NOAUTH".into()));
        assert_eq!(refused.level, Level::Warning);
        assert!(
            refused.message.contains("127.0.0.1:6379 refuses"),
            "{refused:?}"
        );
    }

    #[test]
    fn a_sentinel_that_refuses_the_credentials_points_at_sentinel_password() {
        let refused = SentinelFacts {
            master_name: "mta-stsd".into(),
            answers: vec![(
                "10.0.0.1:26379".into(),
                Err("NOAUTH: Authentication required.".into()),
            )],
            master: Err("no sentinel names a master".into()),
            write: None,
        };
        let found = check_sentinels(&refused);
        assert_eq!(found.len(), 1);
        assert!(
            found[0].message.contains("10.0.0.1:26379: NOAUTH"),
            "{found:?}"
        );
        assert!(
            found[0]
                .fix
                .as_deref()
                .is_some_and(|f| f.contains("sentinel_password")),
            "{found:?}"
        );
        let silent = check_sentinels(&facts(&[None], Err("none"), None));
        assert!(
            silent[0]
                .fix
                .as_deref()
                .is_some_and(|f| !f.contains("sentinel_password")),
            "{silent:?}"
        );
    }
}
