//! `mta-stsd import --from sqlite:PATH | redis://...`: brings the policies that
//! The readers are [`crate::import`]'s; this command sends what they read to the
//! daemon's admin API.

use std::process::ExitCode;

use anyhow::Context;

use crate::admin::api::ImportRequest;
use crate::import::{Source, Summary, policy_text, read_redis, read_sqlite};
use crate::mtasts::domain::normalize_host;

/// `mta-stsd import`'s arguments.
#[derive(clap::Args)]
pub struct Args {
    /// postfix-mta-sts-resolver's cache: sqlite:PATH (cache type sqlite) or its Redis
    /// URL, redis://HOST[:PORT][/DB] or unix:///PATH (cache type redis).
    #[arg(long = "from", value_name = "SOURCE")]
    from: Source,
    #[command(flatten)]
    admin: super::AdminArgs,
}

pub(super) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let url = args.admin.url()?;
    super::current_thread()?.block_on(command(&url, args.from))
}

async fn command(url: &str, source: Source) -> anyhow::Result<ExitCode> {
    let (rows, unreadable) = match &source {
        Source::Sqlite(path) => {
            let path = path.clone();
            let rows = tokio::task::spawn_blocking(move || read_sqlite(&path))
                .await
                .context("the sqlite reader failed")??;
            (rows, Vec::new())
        }
        Source::Redis(url) => read_redis(url).await?,
    };
    let client = super::admin_client(url)?;
    let mut summary = Summary {
        rows: rows.len() + unreadable.len(),
        invalid: unreadable,
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
                summary.invalid.push((domain.into_string(), e));
                continue;
            }
        };
        let request = ImportRequest {
            id: row.id,
            fetched_at: row.fetched_at,
            policy,
        };
        match client.import(&domain, &request).await {
            Ok(answer) => match answer.result.as_str() {
                "imported" => summary.imported += 1,
                "kept_newer" => summary.kept_newer += 1,
                _ => summary.expired += 1,
            },
            // The daemon's reason (an invalid policy, a bad id).
            Err(e) if e.is_refusal() => summary.invalid.push((domain.into_string(), e.to_string())),
            Err(e) => summary.failed.push((domain.into_string(), e.to_string())),
        }
    }
    for (domain, why) in &summary.invalid {
        outln!("{domain}: not imported: {why}");
    }
    for (domain, why) in &summary.failed {
        eprintln!("{domain}: admin API failed: {why}");
    }
    outln!("{summary}");
    Ok(if summary.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
