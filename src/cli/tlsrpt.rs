//! `mta-stsd tlsrpt ...`: what the running daemon has collected for TLSRPT reports,
//! and sending a day's reports now (through its admin API).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use super::AdminArgs;
use crate::admin::api::{TlsrptAction, TlsrptDayView, TlsrptReportView};
use crate::clock::{Clock, SystemClock};
use crate::tlsrpt::day::Day;

/// `mta-stsd tlsrpt`'s arguments.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Show what is collected for a day, by recipient domain, and what became of its
    /// reports.
    Show {
        /// The UTC day, YYYY-MM-DD (default: today, so far).
        #[arg(long)]
        day: Option<String>,
        /// Print the admin API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Send a day's reports now, to every destination not yet sent to.
    ///
    /// Exit status: 0 every report delivered, 1 some delivery failed, 2 bad usage.
    Send {
        /// The UTC day, YYYY-MM-DD (default: yesterday).
        #[arg(long)]
        day: Option<String>,
        /// Allow a day that is not over (today): its reports so far, under their own
        /// report ids, leaving the day's final reports to go out as usual.
        #[arg(long)]
        partial: bool,
        /// Send nothing: write each report (.json.gz) and each mail (.eml) it would
        /// send into DIR.
        #[arg(long, value_name = "DIR")]
        dry_run: Option<PathBuf>,
    },
}

pub(super) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let base = args.admin.url()?;
    super::current_thread()?.block_on(command(&base, args.action))
}

fn day_or(given: Option<&str>, default: Day) -> anyhow::Result<Day> {
    match given {
        Some(text) => Day::parse(text).map_err(|e| anyhow::anyhow!("--day: {e}")),
        None => Ok(default),
    }
}

/// How long `send` waits for the daemon: every report of a day to every destination,
/// each try bounded by the HTTPS and mail timeouts.
const SEND_WAIT: std::time::Duration = std::time::Duration::from_secs(15 * 60);

async fn command(base: &str, action: Action) -> anyhow::Result<ExitCode> {
    let client = match action {
        Action::Send { .. } => super::admin_client_waiting(base, SEND_WAIT)?,
        Action::Show { .. } => super::admin_client(base)?,
    };
    let today = Day::of(SystemClock.now());
    match action {
        Action::Show { day, json } => {
            let day = day_or(day.as_deref(), today)?;
            let view = client.tlsrpt(TlsrptAction::Show, day, day >= today).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                print_day(&view);
            }
            Ok(ExitCode::SUCCESS)
        }
        Action::Send {
            day,
            partial,
            dry_run,
        } => {
            let day = day_or(day.as_deref(), today.minus(1))?;
            if day >= today && !partial {
                anyhow::bail!("{day} is not over yet: add --partial to send its reports so far");
            }
            if let Some(dir) = dry_run {
                let view = client.tlsrpt(TlsrptAction::Files, day, partial).await?;
                write_files(&dir, &view)?;
                return Ok(ExitCode::SUCCESS);
            }
            let view = client.tlsrpt(TlsrptAction::Send, day, partial).await?;
            Ok(print_sent(&view))
        }
    }
}

fn print_day(view: &TlsrptDayView) {
    if let Some(damage) = &view.store_damage {
        outln!("warning: {damage}");
    }
    let so_far = if view.partial { " (so far)" } else { "" };
    outln!(
        "{}{so_far}: {} report(s); {} datagram(s) not yet on disk",
        view.day,
        view.reports.len(),
        view.unstored
    );
    for r in &view.reports {
        print_report(r);
    }
}

fn print_report(r: &TlsrptReportView) {
    outln!(
        "{}: {} session(s), {} failed, {} to {}  [{}]",
        r.domain,
        r.sessions,
        r.failures,
        r.begin,
        r.end,
        r.id
    );
    for p in r.report["policies"].as_array().into_iter().flatten() {
        let policy = &p["policy"];
        outln!(
            "  policy {} {}: {} ok, {} failed",
            policy["policy-type"].as_str().unwrap_or("?"),
            policy["policy-domain"].as_str().unwrap_or(""),
            p["summary"]["total-successful-session-count"],
            p["summary"]["total-failure-session-count"]
        );
        for d in p["failure-details"].as_array().into_iter().flatten() {
            outln!(
                "    {} x{} {} {}",
                d["result-type"].as_str().unwrap_or("?"),
                d["failed-session-count"],
                d["receiving-mx-hostname"].as_str().unwrap_or(""),
                d["receiving-ip"].as_str().unwrap_or("")
            );
        }
    }
    for d in &r.deliveries {
        let when = d.done_at.as_deref().or(d.next_try.as_deref()).unwrap_or("");
        let error = d.last_error.as_deref().unwrap_or("");
        outln!("  -> {}: {} {when} {error}", d.destination, d.state);
    }
    for u in &r.refused {
        outln!("  -> {}: not used: {}", u.uri, u.reason);
    }
}

/// One line per delivery; failure if any delivery is not sent.
fn print_sent(view: &TlsrptDayView) -> ExitCode {
    let mut failed = false;
    if view.reports.is_empty() {
        outln!(
            "{}: no report to send (nothing counted since the last report, or every report already sent)",
            view.day
        );
    }
    for r in &view.reports {
        for d in &r.deliveries {
            match d.state.as_str() {
                "sent" => outln!("{} -> {}: sent", r.domain, d.destination),
                other => {
                    failed = true;
                    outln!(
                        "{} -> {}: {other}: {}",
                        r.domain,
                        d.destination,
                        d.last_error.as_deref().unwrap_or("")
                    );
                }
            }
        }
        for u in &r.refused {
            outln!("{} -> {}: not used: {}", r.domain, u.uri, u.reason);
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Writes each report as its §5.3 file (gzip) and each mail as `.eml`.
fn write_files(dir: &Path, view: &TlsrptDayView) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if view.reports.is_empty() {
        outln!("{}: nothing counted, no report would be sent", view.day);
    }
    for r in &view.reports {
        if r.deliveries.is_empty() {
            outln!(
                "{}: no usable destination, no report would be sent",
                r.domain
            );
            continue;
        }
        let json = serde_json::to_string(&r.report)?;
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(json.as_bytes())?;
        let path = dir.join(&r.file_name);
        std::fs::write(&path, z.finish()?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        outln!("{}", path.display());
        let stem = r.file_name.trim_end_matches(".json.gz");
        for m in &r.messages {
            let path = dir.join(format!("{stem}!{}.eml", m.to));
            std::fs::write(&path, &m.message)
                .with_context(|| format!("cannot write {}", path.display()))?;
            outln!("{}", path.display());
        }
        for d in &r.deliveries {
            if d.destination.starts_with("https:") {
                outln!("  would POST {} to {}", r.file_name, d.destination);
            }
        }
    }
    Ok(())
}
