//! `mta-stsd cache ...`: inspect and manage the running daemon's cache through its
//! admin API.

use std::process::ExitCode;

use anyhow::Context;

use super::CacheAction;

pub(super) async fn command(
    base: &str,
    action: CacheAction,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use crate::server::http::EntryView;
    let client = super::admin_client()?;
    let base = base.trim_end_matches('/');
    let (request, path) = match &action {
        CacheAction::List => (client.get(format!("{base}/api/v1/policies")), None),
        CacheAction::Show { domain } => (
            client.get(format!("{base}/api/v1/policies/{domain}")),
            Some(domain),
        ),
        CacheAction::Purge { domain } => (
            client.delete(format!("{base}/api/v1/policies/{domain}")),
            Some(domain),
        ),
        CacheAction::Refresh { domain } => (
            client.post(format!("{base}/api/v1/policies/{domain}/refresh")),
            Some(domain),
        ),
    };
    let resp = request
        .send()
        .await
        .with_context(|| format!("cannot reach the daemon's admin API at {base}"))?;
    let status = resp.status();
    let body = resp.text().await?;
    if json {
        println!("{body}");
    }
    if !status.is_success() {
        let msg = super::admin_error_text(&body);
        if !json {
            eprintln!(
                "mta-stsd: {}: {msg}",
                path.map(String::as_str).unwrap_or("cache")
            );
        }
        return Ok(ExitCode::from(1));
    }
    if json {
        return Ok(ExitCode::SUCCESS);
    }
    match action {
        CacheAction::List => {
            let all: Vec<EntryView> = serde_json::from_str(&body)?;
            println!(
                "{:<40} {:<10} {:<20} {:<22} ERROR",
                "DOMAIN", "STATE", "ID", "EXPIRES"
            );
            for e in &all {
                println!(
                    "{:<40} {:<10} {:<20} {:<22} {}",
                    e.domain,
                    e.state,
                    e.id.as_deref().unwrap_or("-"),
                    e.expires.as_deref().unwrap_or("-"),
                    e.last_error.as_deref().unwrap_or("")
                );
            }
            println!("{} entries", all.len());
        }
        CacheAction::Purge { domain } => println!("{domain}: purged"),
        CacheAction::Show { .. } | CacheAction::Refresh { .. } => {
            let e: EntryView = serde_json::from_str(&body)?;
            println!("domain:      {}", e.domain);
            println!("state:       {}", e.state);
            println!("id:          {}", e.id.as_deref().unwrap_or("-"));
            println!(
                "mx:          {}",
                if e.mx.is_empty() {
                    "-".into()
                } else {
                    e.mx.join(", ")
                }
            );
            println!(
                "max_age:     {}",
                e.max_age.map(|m| m.to_string()).unwrap_or("-".into())
            );
            println!("fetched:     {}", e.fetched.as_deref().unwrap_or("-"));
            println!("expires:     {}", e.expires.as_deref().unwrap_or("-"));
            println!("last check:  {}", e.last_check.as_deref().unwrap_or("-"));
            if let Some(t) = &e.no_policy_until {
                println!("no policy until: {t}");
            }
            println!(
                "last error:  {}",
                match (&e.last_error, &e.last_error_at) {
                    (Some(m), Some(at)) => format!("{m} (at {at})"),
                    _ => "-".into(),
                }
            );
            if !e.policy_lines.is_empty() {
                println!("policy:");
                for l in &e.policy_lines {
                    println!("    {l}");
                }
            }
            if let Some(d) = &e.dane {
                println!(
                    "DANE:        {} (checked {}, until {})",
                    d.verdict, d.checked, d.expires
                );
                if let crate::dane::rules::MxFacts::Hosts {
                    security, hosts, ..
                } = &d.facts
                {
                    println!("  MX:        {}", security.as_str());
                    for h in hosts {
                        println!(
                            "  host:      {} (addresses {}; TLSA {})",
                            h.name,
                            h.address.as_str(),
                            serde_json::to_string(&h.tlsa).unwrap_or_default()
                        );
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
