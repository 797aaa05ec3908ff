//! `mta-stsd import --from sqlite:PATH | redis://...`: brings the policies that
//! postfix-mta-sts-resolver learned (its sqlite or Redis cache) into the running
//! daemon's cache through the admin API, so that switching resolvers does not reopen
//! the trust-on-first-use gap for the domains the old one knew.
//!
//! postfix-mta-sts-resolver's sqlite cache is one table, `sts_policy_cache(domain,
//! ts, pol_id, pol_body)`: `ts` is the fetch time (Unix seconds), `pol_id` the TXT id,
//! and `pol_body` the policy as its parser left it, a JSON object with `version`,
//! `mode`, `max_age` and an `mx` list. Its Redis cache holds one sorted set per domain
//! (the key is the domain; `_metadata` is its own bookkeeping): the member with the
//! highest score is the current entry, the score its fetch time, and the member 16
//! random bytes followed by the JSON array `[pol_id, pol_body]`.
//!
//! Each entry is turned back into policy text and
//! parsed by mta-stsd's own (strict) parser, so nothing enters the cache that a fetch
//! would not have accepted. The daemon keeps the fetch time and id, skips expired
//! policies and keeps any newer policy it already has, so importing twice is harmless.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

/// Why an old cache could not be read.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct ReadError(pub String);

impl From<redis::RedisError> for ReadError {
    fn from(e: redis::RedisError) -> Self {
        ReadError(format!("Redis: {e}"))
    }
}

macro_rules! read_error {
    ($($arg:tt)*) => { ReadError(format!($($arg)*)) };
}

/// Where to import from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Sqlite(PathBuf),
    /// A `redis://`, `rediss://` or `unix://` URL, as the other resolver's
    /// configuration names it.
    Redis(String),
}

impl std::str::FromStr for Source {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.strip_prefix("sqlite:") {
            Some(path) if !path.is_empty() => Ok(Source::Sqlite(PathBuf::from(path))),
            _ if ["redis://", "rediss://", "unix://", "redis+unix://"]
                .iter()
                .any(|p| s.starts_with(p)) =>
            {
                Ok(Source::Redis(s.to_owned()))
            }
            _ => Err(format!(
                "{s:?}: expected sqlite:PATH or redis://HOST[:PORT][/DB]"
            )),
        }
    }
}

/// One row of the other resolver's cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub domain: String,
    pub fetched_at: u64,
    pub id: String,
    pub body: String,
}

/// The policy object postfix-mta-sts-resolver stores. Its parser keeps every field
/// as text except `mx` (a list); `max_age` may have been made a number.
#[derive(Debug, Deserialize)]
struct PythonPolicy {
    version: Option<String>,
    mode: Option<String>,
    max_age: Option<serde_json::Value>,
    #[serde(default)]
    mx: Vec<String>,
}

/// The policy file text a stored policy object stands for, or why there is none.
pub fn policy_text(body: &str) -> Result<String, String> {
    let p: PythonPolicy =
        serde_json::from_str(body).map_err(|e| format!("not a policy object: {e}"))?;
    let max_age = match p.max_age {
        Some(serde_json::Value::Number(n)) => n.to_string(),
        Some(serde_json::Value::String(s)) => s,
        _ => return Err("no max_age".into()),
    };
    let mut text = format!(
        "version: {}\nmode: {}\n",
        p.version.ok_or("no version")?,
        p.mode.ok_or("no mode")?
    );
    for mx in &p.mx {
        text.push_str(&format!("mx: {mx}\n"));
    }
    text.push_str(&format!("max_age: {max_age}\n"));
    Ok(text)
}

/// Reads every row of postfix-mta-sts-resolver's sqlite cache (read-only).
pub fn read_sqlite(path: &Path) -> Result<Vec<Row>, ReadError> {
    // sqlite's own words for these ("disk I/O error: Error code 266") do not say what
    // is wrong with the path.
    match std::fs::metadata(path) {
        Err(e) => {
            return Err(read_error!(
                "cannot open {}: {}",
                path.display(),
                crate::io_error_text(&e)
            ));
        }
        Ok(m) if m.is_dir() => {
            return Err(read_error!(
                "{} is a directory: give postfix-mta-sts-resolver's cache file (the `filename` of its sqlite cache, e.g. sqlite:/var/lib/mta-sts/cache.db)",
                path.display()
            ));
        }
        Ok(_) => {}
    }
    let db = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| read_error!("cannot open {}: {e}", path.display()))?;
    let mut stmt = db
        .prepare("select domain, ts, pol_id, pol_body from sts_policy_cache")
        .map_err(|_| {
            read_error!(
                "{} is not a postfix-mta-sts-resolver cache (no sts_policy_cache table)",
                path.display()
            )
        })?;
    let rows = stmt
        .query_map([], |r| {
            Ok(Row {
                domain: r.get::<_, String>(0)?,
                fetched_at: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                id: r.get::<_, String>(2)?,
                body: r.get::<_, String>(3)?,
            })
        })
        .map_err(|e| read_error!("cannot read the cache's rows: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ReadError(format!("{}: {e}", "cannot read the cache's rows")))?;
    Ok(rows)
}

/// One entry of the other resolver's Redis cache: `member` is 16 random bytes and the
/// JSON array `[pol_id, pol_body]`, `score` the fetch time.
pub fn redis_row(domain: &str, member: &[u8], score: f64) -> Result<Row, String> {
    let json = member
        .get(16..)
        .ok_or("entry shorter than its 16-byte prefix")?;
    let (id, body): (String, serde_json::Value) =
        serde_json::from_slice(json).map_err(|e| format!("not a [pol_id, pol_body] entry: {e}"))?;
    Ok(Row {
        domain: domain.to_owned(),
        // Seconds, stored as a float score; a negative or absurd one reads as 0
        // (expired, skipped by the daemon).
        fetched_at: if score.is_finite() && score > 0.0 {
            score as u64
        } else {
            0
        },
        id,
        body: body.to_string(),
    })
}

/// Reads every domain's current entry from postfix-mta-sts-resolver's Redis cache
/// (read-only: SCAN, TYPE and ZREVRANGE). Keys that are not its entries are skipped;
/// entries it cannot have written are returned as invalid.
pub async fn read_redis(url: &str) -> Result<(Vec<Row>, Vec<(String, String)>), ReadError> {
    let client =
        redis::Client::open(url).map_err(|e| ReadError(format!("{}: {e}", "not a Redis URL")))?;
    let mut conn = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|e| ReadError(format!("{}: {e}", "Redis did not answer within 10 s")))?
    .map_err(|e| ReadError(format!("{}: {e}", "cannot connect to Redis")))?;
    let (mut rows, mut invalid) = (Vec::new(), Vec::new());
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .map_err(|e| ReadError(format!("{}: {e}", "SCAN failed")))?;
        for key in keys {
            let Ok(domain) = String::from_utf8(key) else {
                continue;
            };
            if domain == "_metadata" {
                continue;
            }
            let kind: String = redis::cmd("TYPE")
                .arg(&domain)
                .query_async(&mut conn)
                .await?;
            if kind != "zset" {
                continue;
            }
            let top: Vec<(Vec<u8>, f64)> = redis::cmd("ZREVRANGE")
                .arg(&domain)
                .arg(0)
                .arg(0)
                .arg("WITHSCORES")
                .query_async(&mut conn)
                .await?;
            if let Some((member, score)) = top.first() {
                match redis_row(&domain, member, *score) {
                    Ok(row) => rows.push(row),
                    Err(e) => invalid.push((domain, e)),
                }
            }
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    Ok((rows, invalid))
}

/// Counts of what happened, for the summary line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub rows: usize,
    pub imported: usize,
    pub kept_newer: usize,
    pub expired: usize,
    /// Rows mta-stsd would not accept, with the reason.
    pub invalid: Vec<(String, String)>,
    /// The admin API failed for these.
    pub failed: Vec<(String, String)>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} policies read: {} imported, {} already cached (same or newer), {} expired, {} invalid",
            self.rows,
            self.imported,
            self.kept_newer,
            self.expired,
            self.invalid.len()
        )?;
        if !self.failed.is_empty() {
            write!(f, "; {} failed", self.failed.len())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_policy_objects_become_policy_text() {
        let body = r#"{"version": "STSv1", "mode": "enforce", "max_age": "86400", "mx": ["mx1.example.com", "*.example.net"], "": ""}"#;
        assert_eq!(
            policy_text(body).unwrap(),
            "version: STSv1\nmode: enforce\nmx: mx1.example.com\nmx: *.example.net\nmax_age: 86400\n"
        );
        let numeric = r#"{"version": "STSv1", "mode": "none", "max_age": 3600, "mx": []}"#;
        assert!(policy_text(numeric).unwrap().ends_with("max_age: 3600\n"));
        assert!(policy_text("null").is_err());
        assert!(policy_text(r#"{"version": "STSv1", "mx": []}"#).is_err());
    }

    #[test]
    fn redis_entries_are_read_as_the_python_resolver_packs_them() {
        // pack_entry(): uuid4().bytes + json.dumps((pol_id, pol_body))
        let mut member = vec![0xA5u8; 16];
        member.extend_from_slice(
            br#"["20240101", {"version": "STSv1", "mode": "enforce", "max_age": "86400", "mx": ["mx.one.test"]}]"#,
        );
        let row = redis_row("one.test", &member, 1_700_000_000.25).unwrap();
        assert_eq!(
            (row.id.as_str(), row.fetched_at),
            ("20240101", 1_700_000_000)
        );
        assert_eq!(
            policy_text(&row.body).unwrap(),
            "version: STSv1\nmode: enforce\nmx: mx.one.test\nmax_age: 86400\n"
        );
        assert!(redis_row("x.test", b"short", 1.0).is_err());
        let mut not_a_pair = vec![0u8; 16];
        not_a_pair.extend_from_slice(b"{}");
        assert!(redis_row("x.test", &not_a_pair, 1.0).is_err());
        assert_eq!(redis_row("x.test", &member, -5.0).unwrap().fetched_at, 0);
    }

    #[test]
    fn sources() {
        assert_eq!(
            "sqlite:/var/lib/mta-sts/cache.db".parse::<Source>(),
            Ok(Source::Sqlite("/var/lib/mta-sts/cache.db".into()))
        );
        assert_eq!(
            "redis://127.0.0.1/0".parse::<Source>(),
            Ok(Source::Redis("redis://127.0.0.1/0".into()))
        );
        assert!(matches!(
            "unix:///run/redis/redis.sock".parse::<Source>(),
            Ok(Source::Redis(_))
        ));
        assert!("cache.db".parse::<Source>().is_err());
    }
}
