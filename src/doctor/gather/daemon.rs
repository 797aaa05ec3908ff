//! Facts from the running daemon (its socketmap listeners, metrics and admin API)
//! and its cache directory, and the checks made of them.

use std::path::Path;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Framed;

use crate::config::{Config, ListenAddr};
use crate::doctor::{Finding, Socketmap};
use crate::protocol::codec::NetstringCodec;

/// A next-hop key the daemon answers without any DNS or HTTPS (an address literal has
/// no domain, so no policy): the probe measures the socketmap path alone.
const PROBE_KEY: &str = "[192.0.2.1]";
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) async fn daemon_checks(
    config: &Config,
    listeners: &[ListenAddr],
    used: &[(Socketmap, ListenAddr)],
    checks: &mut Vec<Finding>,
) {
    // Probe every listener Postfix uses, or every listener when Postfix uses none.
    let probes: Vec<(String, ListenAddr)> = if used.is_empty() {
        listeners
            .iter()
            .map(|l| ("postfix".to_owned(), l.clone()))
            .collect()
    } else {
        used.iter()
            .map(|(s, l)| (s.name.clone(), l.clone()))
            .collect()
    };
    for (map, l) in probes {
        let started = Instant::now();
        let result = tokio::time::timeout(PROBE_TIMEOUT, probe(&l, &map)).await;
        let took = started.elapsed();
        checks.push(match result {
            // Postfix-style answers, or Exim's key=value words.
            Ok(Ok(reply))
                if reply.starts_with("NOTFOUND")
                    || reply.starts_with("OK")
                    || reply.starts_with("mode=") =>
            {
                Finding::ok(
                    "mta-stsd.probe",
                    format!(
                        "{l} answered a lookup in map {map:?} in {:.1} ms",
                        took.as_secs_f64() * 1000.0
                    ),
                )
            }
            Ok(Ok(reply)) => Finding::problem(
                "mta-stsd.probe",
                format!("{l} answered {reply:?} to a probe in map {map:?}"),
                "check the daemon's log (journalctl -u mta-stsd)",
            ),
            Ok(Err(e)) => Finding::problem(
                "mta-stsd.probe",
                format!("no answer on {l}: {e}; the MTA defers mail while its lookups fail"),
                "start mta-stsd (systemctl start mta-stsd) and check journalctl -u mta-stsd",
            ),
            Err(_) => Finding::problem(
                "mta-stsd.probe",
                format!(
                    "{l} did not answer within {} s; the MTA gives up and defers mail",
                    PROBE_TIMEOUT.as_secs()
                ),
                "check the daemon's log (journalctl -u mta-stsd) and its server.max_connections",
            ),
        });
    }

    match config.metrics.addr() {
        Some(addr) => {
            let redis = config.cache.backend == crate::config::CacheBackend::Redis;
            admin_checks(
                &format!("http://{addr}"),
                &config.metrics.path,
                redis,
                checks,
            )
            .await
        }
        None => checks.push(Finding::warning(
            "mta-stsd.metrics",
            "metrics.listen is off: no metrics, no admin API (cache, warm)",
            "set [metrics] listen = \"127.0.0.1:9461\"",
        )),
    }

    match config.cache.resolved_path() {
        Some(dir) => checks.push(cache_dir_check(&dir)),
        None => checks.push(Finding::problem(
            "mta-stsd.cache_dir",
            "cache.path is not set and no environment variable gives a default".to_owned(),
            "set [cache] path = \"/var/lib/mta-stsd/cache\"",
        )),
    }
}

async fn probe(l: &ListenAddr, map: &str) -> Result<String, String> {
    match l {
        ListenAddr::Tcp(a) => {
            let s = tokio::net::TcpStream::connect(a)
                .await
                .map_err(|e| e.to_string())?;
            ask(s, map).await
        }
        ListenAddr::Unix(p) => {
            let s = tokio::net::UnixStream::connect(p)
                .await
                .map_err(|e| e.to_string())?;
            ask(s, map).await
        }
    }
}

async fn ask<S: AsyncRead + AsyncWrite + Unpin>(s: S, map: &str) -> Result<String, String> {
    let mut conn = Framed::new(s, NetstringCodec::new(100_000));
    conn.send(format!("{map} {PROBE_KEY}"))
        .await
        .map_err(|e| e.to_string())?;
    match conn.next().await {
        Some(Ok(reply)) => Ok(String::from_utf8_lossy(&reply).into_owned()),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("the daemon closed the connection".into()),
    }
}

async fn admin_checks(base: &str, metrics_path: &str, redis: bool, checks: &mut Vec<Finding>) {
    let Ok(client) = reqwest::Client::builder().no_proxy().build() else {
        return;
    };
    let metrics = client
        .get(format!("{base}{metrics_path}"))
        .timeout(PROBE_TIMEOUT)
        .send()
        .await;
    let text = match metrics {
        Ok(r) if r.status().is_success() => r.text().await.unwrap_or_default(),
        Ok(r) => {
            checks.push(Finding::warning(
                "mta-stsd.metrics",
                format!("{base}{metrics_path} answered {}", r.status()),
                "check metrics.path",
            ));
            return;
        }
        Err(e) => {
            checks.push(Finding::warning(
                "mta-stsd.metrics",
                format!("{base}{metrics_path} unreachable: {e}"),
                "is the daemon running with this configuration?",
            ));
            return;
        }
    };
    metrics_checks(&text, &format!("{base}{metrics_path}"), redis, checks);
    if let Ok(admin) = crate::admin::client::AdminClient::new(base, PROBE_TIMEOUT)
        && let Ok(entries) = admin.list().await
    {
        checks.push(refresh_check(&entries));
    }
}

/// What the daemon's own metrics say: store failures, and Redis's health in a fleet.
fn metrics_checks(text: &str, url: &str, redis: bool, checks: &mut Vec<Finding>) {
    let store_errors: f64 = text
        .lines()
        .filter(|l| l.starts_with("mta_stsd_store_errors_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    checks.push(if store_errors > 0.0 {
        Finding::warning(
            "mta-stsd.metrics",
            format!("{url} reachable; the cache store has failed {store_errors} times since start"),
            "check the cache directory and the daemon's log (journalctl -u mta-stsd)",
        )
    } else {
        Finding::ok("mta-stsd.metrics", format!("{url} reachable"))
    });
    let lost = text
        .lines()
        .find_map(|l| l.strip_prefix("mta_stsd_tlsrpt_store_lost_entries "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    if lost > 0.0 {
        checks.push(Finding::problem(
            "tlsrpt.store",
            format!(
                "the TLSRPT report store was damaged when the daemon started: {lost} entries (counters, delivery records) lost; reports for those days are short"
            ),
            "see `mta-stsd tlsrpt show` and the daemon's log for where the damaged store was moved; check the disk",
        ));
    }
    if redis {
        let healthy = text
            .lines()
            .find_map(|l| l.strip_prefix("mta_stsd_redis_healthy "))
            .and_then(|v| v.trim().parse::<f64>().ok());
        checks.push(if healthy == Some(1.0) {
            Finding::ok(
                "mta-stsd.redis",
                "the fleet's shared cache (Redis) answers the daemon",
            )
        } else {
            Finding::warning(
                "mta-stsd.redis",
                "the daemon cannot reach Redis (cache.redis.url): it answers from its own cache and discovers on its own, so the fleet does not share what it learns",
                "check that Redis runs and that the daemon can reach it (redis-cli -u URL ping); the daemon reconnects by itself",
            )
        });
    }
}

/// Cached policies whose refresh fails (the cached policy still applies until it expires).
fn refresh_check(entries: &[crate::admin::api::EntryView]) -> Finding {
    let policies = entries
        .iter()
        .filter(|e| e.state == "enforce" || e.state == "testing")
        .count();
    let failing: Vec<&crate::admin::api::EntryView> = entries
        .iter()
        .filter(|e| (e.state == "enforce" || e.state == "testing") && e.last_error.is_some())
        .collect();
    if failing.is_empty() {
        Finding::ok(
            "mta-stsd.refresh",
            format!("{policies} cached policies, none failing refresh"),
        )
    } else {
        let shown: Vec<String> = failing
            .iter()
            .take(5)
            .map(|e| format!("{} ({})", e.domain, e.last_error.as_deref().unwrap_or("")))
            .collect();
        Finding::warning(
            "mta-stsd.refresh",
            format!(
                "{} of {policies} cached policies fail to refresh (the cached policy is still applied until it expires): {}",
                failing.len(),
                shown.join(", ")
            ),
            "mta-stsd cache show DOMAIN for details; tell the domain's postmaster if it persists",
        )
    }
}

/// The cache directory exists and this user can create a file in it (or, before the
/// first start, in the nearest existing directory above it: the daemon creates the
/// missing ones).
fn cache_dir_check(dir: &Path) -> Finding {
    const NAME: &str = "mta-stsd.cache_dir";
    let Some(target) = dir.ancestors().find(|d| d.is_dir()).map(Path::to_owned) else {
        return Finding::problem(
            NAME,
            format!("no directory on the path of {} exists", dir.display()),
            "set cache.path to an absolute path",
        );
    };
    let probe = target.join(format!(".mta-stsd-doctor-{}", std::process::id()));
    match std::fs::File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            if target == dir {
                Finding::ok(NAME, format!("{} is writable", dir.display()))
            } else {
                Finding::ok(
                    NAME,
                    format!("{} will be created in {}", dir.display(), target.display()),
                )
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Finding::warning(
            NAME,
            format!(
                "{} is not writable by this user (the daemon's own user may differ)",
                target.display()
            ),
            "run doctor as root, or check the directory's owner against the daemon's user",
        ),
        Err(e) => Finding::problem(
            NAME,
            format!("cannot write in {}: {e}", target.display()),
            "check the disk and the directory's permissions",
        ),
    }
}
