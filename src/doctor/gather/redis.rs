//! Facts from a fleet's Redis: a test write with the daemon's own settings to the
//! `url`'s server, or, on Redis Sentinel, each sentinel asked for the master, the
//! master's role, and a test write to it.

use std::time::Duration;

use crate::config::Config;
use crate::doctor::Finding;
use crate::doctor::fleet::{SentinelFacts, check_sentinels, check_server, check_tls_files};
use crate::redis::sentinel::{Sentinels, display_addr};
use crate::redis::tls::TlsFiles;

/// How long the test key lives: long enough to be written, gone right after.
const PROBE_TTL: Duration = Duration::from_secs(5);

/// The Redis checks, when the cache is shared through Redis: a test write to the
/// `url`'s server, or, with sentinels, who they name as master and a test write to it.
pub(super) async fn redis_checks(config: &Config, checks: &mut Vec<Finding>) {
    let redis = &config.cache.redis;
    if config.cache.backend != crate::config::CacheBackend::Redis {
        return;
    }
    let tls = match TlsFiles::load(redis) {
        Ok(tls) => tls,
        Err(e) => {
            // Without its certificates the daemon reaches no Redis at all.
            checks.push(check_tls_files(&e.to_string()));
            return;
        }
    };
    if redis.sentinels.is_empty() {
        let (addr, write) = match tls.client(&redis.url) {
            Ok(client) => (
                client.get_connection_info().addr().to_string(),
                probe_write(&client, redis).await,
            ),
            Err(e) => ("the url's server".to_owned(), Err(e.to_string())),
        };
        checks.push(check_server(&addr, &write));
        return;
    }
    let Ok(Some(sentinels)) = Sentinels::new(redis, tls) else {
        return;
    };
    // Asked once: what each says, and the master most of them name.
    let asked = sentinels.ask().await;
    let master = sentinels.confirm(&asked).await.map_err(|e| e.to_string());
    let answers = asked
        .into_iter()
        .zip(&redis.sentinels)
        .map(|(m, s)| (s.clone(), m.map(|(h, p)| display_addr(&h, p))))
        .collect();
    let write = match &master {
        Ok((host, port)) => Some(match sentinels.node_client(host, *port) {
            Ok(client) => probe_write(&client, redis).await,
            Err(e) => Err(e.to_string()),
        }),
        Err(_) => None,
    };
    checks.extend(check_sentinels(&SentinelFacts {
        master_name: redis.master_name.clone(),
        answers,
        master: master.map(|(h, p)| display_addr(&h, p)),
        write,
    }));
}

/// `SET PREFIXdoctor:probe 1 PX 5000` through `client`, as the daemon would write.
async fn probe_write(
    client: &::redis::Client,
    redis: &crate::config::RedisConfig,
) -> Result<(), String> {
    let key = format!("{}doctor:probe", redis.prefix);
    let write = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        ::redis::cmd("SET")
            .arg(key)
            .arg("1")
            .arg("PX")
            .arg(PROBE_TTL.as_millis() as u64)
            .query_async::<()>(&mut conn)
            .await
    };
    match tokio::time::timeout(redis.timeout.max(Duration::from_secs(1)), write).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("no answer in time".into()),
    }
}
