//! `mta-stsd import --from sqlite:PATH`: brings the policies that
//! postfix-mta-sts-resolver learned (its sqlite cache) into the running daemon's cache
//! through the admin API, so that switching resolvers does not reopen the
//! trust-on-first-use gap for the domains the old one knew.
//!
//! postfix-mta-sts-resolver's sqlite cache is one table, `sts_policy_cache(domain,
//! ts, pol_id, pol_body)`: `ts` is the fetch time (Unix seconds), `pol_id` the TXT id,
//! and `pol_body` the policy as its parser left it, a JSON object with `version`,
//! `mode`, `max_age` and an `mx` list. Each row is turned back into policy text and
//! parsed by mta-stsd's own (strict) parser, so nothing enters the cache that a fetch
//! would not have accepted. The daemon keeps the fetch time and id, skips expired
//! policies and keeps any newer policy it already has, so importing twice is harmless.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde::Deserialize;

use crate::mtasts::domain::normalize_host;
use crate::server::http::{ImportRequest, ImportResponse};

/// Where to import from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Sqlite(PathBuf),
}

impl std::str::FromStr for Source {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.strip_prefix("sqlite:") {
            Some(path) if !path.is_empty() => Ok(Source::Sqlite(PathBuf::from(path))),
            _ if s.starts_with("redis://") || s.starts_with("rediss://") => Err(
                "importing from postfix-mta-sts-resolver's Redis cache is not supported yet; use its sqlite cache".into(),
            ),
            _ => Err(format!("{s:?}: expected sqlite:PATH")),
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
pub fn read_sqlite(path: &Path) -> anyhow::Result<Vec<Row>> {
    let db = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open {}", path.display()))?;
    let mut stmt = db
        .prepare("select domain, ts, pol_id, pol_body from sts_policy_cache")
        .with_context(|| {
            format!(
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
        })?
        .collect::<Result<Vec<_>, _>>()
        .context("cannot read the cache's rows")?;
    Ok(rows)
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

pub async fn command(url: &str, source: Source) -> anyhow::Result<ExitCode> {
    let rows = match &source {
        Source::Sqlite(path) => {
            let path = path.clone();
            tokio::task::spawn_blocking(move || read_sqlite(&path))
                .await
                .context("the sqlite reader failed")??
        }
    };
    let client = super::admin_client()?;
    let mut summary = Summary {
        rows: rows.len(),
        ..Summary::default()
    };
    for row in rows {
        let domain = match normalize_host(&row.domain) {
            Ok(d) => d,
            Err(e) => {
                summary.invalid.push((row.domain, e.to_string()));
                continue;
            }
        };
        let policy = match policy_text(&row.body) {
            Ok(t) => t,
            Err(e) => {
                summary.invalid.push((domain, e));
                continue;
            }
        };
        let request = ImportRequest {
            id: row.id,
            fetched_at: row.fetched_at,
            policy,
        };
        let sent = client
            .put(format!("{url}/api/v1/policies/{domain}"))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&request)?)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => {
                let answer: ImportResponse = serde_json::from_str(&r.text().await?)?;
                match answer.result.as_str() {
                    "imported" => summary.imported += 1,
                    "kept_newer" => summary.kept_newer += 1,
                    _ => summary.expired += 1,
                }
            }
            Ok(r) if r.status().is_client_error() => {
                let text = r.text().await.unwrap_or_default();
                summary.invalid.push((domain, text.trim().to_owned()));
            }
            Ok(r) => summary.failed.push((domain, r.status().to_string())),
            Err(e) => summary.failed.push((domain, e.to_string())),
        }
    }
    for (domain, why) in &summary.invalid {
        println!("{domain}: not imported: {why}");
    }
    for (domain, why) in &summary.failed {
        eprintln!("{domain}: admin API failed: {why}");
    }
    println!("{summary}");
    Ok(if summary.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
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
    fn sources() {
        assert_eq!(
            "sqlite:/var/lib/mta-sts/cache.db".parse::<Source>(),
            Ok(Source::Sqlite("/var/lib/mta-sts/cache.db".into()))
        );
        assert!(
            "redis://127.0.0.1/0"
                .parse::<Source>()
                .unwrap_err()
                .contains("not supported yet")
        );
        assert!("cache.db".parse::<Source>().is_err());
    }
}
