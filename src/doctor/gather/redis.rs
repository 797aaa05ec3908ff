//! Facts from a fleet's Redis Sentinel set-up: each sentinel asked for the master, the
//! master's role, and a test write with the daemon's own settings.

use std::time::Duration;

use crate::config::Config;
use crate::doctor::Finding;
use crate::doctor::sentinel::{SentinelFacts, check_sentinels};
use crate::redis::sentinel::{Sentinels, display_addr};
use crate::redis::tls::TlsFiles;

/// How long the test key lives: long enough to be written, gone right after.
const PROBE_TTL: Duration = Duration::from_secs(5);

/// The Sentinel checks, when the configuration names sentinels.
pub(super) async fn sentinel_checks(config: &Config, checks: &mut Vec<Finding>) {
    let redis = &config.cache.redis;
    if config.cache.backend != crate::config::CacheBackend::Redis || redis.sentinels.is_empty() {
        return;
    }
    let tls = match TlsFiles::load(redis) {
        Ok(tls) => tls,
        Err(e) => {
            // Without its certificates the daemon reaches no sentinel either.
            checks.push(Finding::problem(
                "redis.sentinel",
                e.to_string(),
                "point the setting at a readable PEM file; mta-stsd check-config lists every problem",
            ));
            return;
        }
    };
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
        Ok((host, port)) => Some(probe_write(&sentinels, host, *port, redis).await),
        Err(_) => None,
    };
    checks.extend(check_sentinels(&SentinelFacts {
        master_name: redis.master_name.clone(),
        answers,
        master: master.map(|(h, p)| display_addr(&h, p)),
        write,
    }));
}

/// `SET PREFIXdoctor:probe 1 PX 5000` on the master, as the daemon would write.
async fn probe_write(
    sentinels: &Sentinels,
    host: &str,
    port: u16,
    redis: &crate::config::RedisConfig,
) -> Result<(), String> {
    let client = sentinels
        .node_client(host, port)
        .map_err(|e| e.to_string())?;
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
