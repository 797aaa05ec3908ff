//! `mta-stsd cache ...`: inspect and manage the running daemon's cache through its
//! admin API.

use std::process::ExitCode;

use super::AdminArgs;
use crate::admin::api::{EntryView, ErrorBody, Route};
use crate::admin::client::AdminError;

/// `mta-stsd cache`'s arguments.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: CacheAction,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(clap::Subcommand)]
enum CacheAction {
    /// List every cached domain.
    List,
    /// Show one domain: policy, id, fetched, expires, last check, last error.
    Show { domain: String },
    /// Remove one domain from the cache.
    Purge { domain: String },
    /// Discover one domain now and show the result.
    Refresh { domain: String },
}

pub(super) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let base = args.admin.url()?;
    super::current_thread()?.block_on(command(&base, args.action, args.json))
}

async fn command(base: &str, action: CacheAction, json: bool) -> anyhow::Result<ExitCode> {
    let client = super::admin_client(base)?;
    let route = match &action {
        CacheAction::List => Route::List,
        CacheAction::Show { domain } => Route::Show(domain.clone()),
        CacheAction::Purge { domain } => Route::Purge(domain.clone()),
        CacheAction::Refresh { domain } => Route::Refresh(domain.clone()),
    };
    let body = match client.raw(&route).await {
        Ok(body) => body,
        Err(e @ AdminError::Unreachable { .. }) => return Err(e.into()),
        Err(e) => {
            if json {
                let body = ErrorBody {
                    error: e.to_string(),
                };
                outln!("{}", serde_json::to_string_pretty(&body)?);
            } else {
                let subject = match &action {
                    CacheAction::List => "cache",
                    CacheAction::Show { domain }
                    | CacheAction::Purge { domain }
                    | CacheAction::Refresh { domain } => domain,
                };
                eprintln!("mta-stsd: {subject}: {e}");
            }
            return Ok(ExitCode::from(1));
        }
    };
    if json {
        outln!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    match action {
        CacheAction::List => print_list(&serde_json::from_str::<Vec<EntryView>>(&body)?),
        CacheAction::Purge { domain } => outln!("{domain}: purged"),
        CacheAction::Show { .. } | CacheAction::Refresh { .. } => {
            print_entry(&serde_json::from_str(&body)?)
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `cache list`: one line per cached domain.
fn print_list(all: &[EntryView]) {
    outln!(
        "{:<40} {:<10} {:<20} {:<22} ERROR",
        "DOMAIN",
        "STATE",
        "ID",
        "EXPIRES"
    );
    for e in all {
        outln!(
            "{:<40} {:<10} {:<20} {:<22} {}",
            e.domain,
            e.state,
            e.id.as_deref().unwrap_or("-"),
            e.expires.as_deref().unwrap_or("-"),
            e.last_error.as_deref().unwrap_or("")
        );
    }
    outln!("{} entries", all.len());
}

/// `cache show` and `cache refresh`: one domain's entry, a field per line.
fn print_entry(e: &EntryView) {
    outln!("domain:      {}", e.domain);
    outln!("state:       {}", e.state);
    outln!("id:          {}", e.id.as_deref().unwrap_or("-"));
    outln!(
        "mx:          {}",
        if e.mx.is_empty() {
            "-".into()
        } else {
            e.mx.join(", ")
        }
    );
    outln!(
        "max_age:     {}",
        e.max_age.map(|m| m.to_string()).unwrap_or("-".into())
    );
    outln!("fetched:     {}", e.fetched.as_deref().unwrap_or("-"));
    outln!("expires:     {}", e.expires.as_deref().unwrap_or("-"));
    outln!("last check:  {}", e.last_check.as_deref().unwrap_or("-"));
    if let Some(t) = &e.no_policy_until {
        outln!("no policy until: {t}");
    }
    outln!(
        "last error:  {}",
        match (&e.last_error, &e.last_error_at) {
            (Some(m), Some(at)) => format!("{m} (at {at})"),
            _ => "-".into(),
        }
    );
    if !e.policy_lines.is_empty() {
        outln!("policy:");
        for l in &e.policy_lines {
            outln!("    {l}");
        }
    }
    if let Some(d) = &e.dane {
        outln!(
            "DANE:        {} (checked {}, until {})",
            d.verdict,
            d.checked,
            d.expires
        );
        if let crate::dane::verdict::MxFacts::Hosts {
            security, hosts, ..
        } = &d.facts
        {
            outln!("  MX:        {}", security.as_str());
            for h in hosts {
                outln!(
                    "  host:      {} (addresses {}; TLSA {})",
                    h.name,
                    h.address.as_str(),
                    serde_json::to_string(&h.tlsa).unwrap_or_default()
                );
            }
        }
    }
}
