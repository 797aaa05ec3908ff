//! `mta-stsd check DOMAIN`: gathers every fact about a domain's MTA-STS setup at
//! once, with the daemon's resolver, trust anchors and rules (the same discovery code,
//! not a second implementation), and prints what [`crate::check::assess`] makes of
//! them. Library callers (the tests) use [`check`] with their own options.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::answer::explain::DaneQuery;
use crate::check::gather::{CheckOptions, check};
use crate::mtasts::domain::normalize_key;

/// `mta-stsd check`'s arguments.
#[derive(clap::Args)]
pub struct Args {
    /// The domain to check (a recipient domain, or your own).
    domain: String,
    /// The daemon's configuration (resolver, trust anchors, zone options); default:
    /// /etc/mta-stsd/mta-stsd.toml if it exists, else built-in defaults.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Print JSON: {"domain", "checks": [{"check", "level", "subject", "message"}], "answer"}.
    #[arg(long)]
    json: bool,
    /// Do not connect to the MX hosts over SMTP.
    #[arg(long)]
    no_smtp: bool,
    /// The whole check's deadline.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    deadline: Duration,
    /// The socketmap name whose zone options the answer uses.
    #[arg(long, default_value = "postfix", conflicts_with = "mta")]
    zone: String,
    /// Show the answer as this MTA gets it: the map name it asks by (postfix, exim;
    /// sendmail asks by "sts"), with that zone's options and answer format.
    #[arg(long, value_enum, conflicts_with = "zone")]
    mta: Option<crate::config::Mta>,
}

/// `check`'s exit status for an argument that is not a domain (EX_USAGE): not a
/// finding about any domain.
const USAGE: u8 = 64;

pub(super) fn run(args: Args) -> anyhow::Result<ExitCode> {
    if normalize_key(&args.domain).is_err() {
        let hint = match args.domain.rsplit_once('@') {
            Some((_, d)) if normalize_key(d).is_ok() => format!(" (did you mean {d}?)"),
            _ => String::new(),
        };
        eprintln!(
            "mta-stsd check: {:?} is not a domain name{hint}: give the domain mail goes to, e.g. mta-stsd check example.com",
            args.domain
        );
        return Ok(ExitCode::from(USAGE));
    }
    super::logging::init("error", crate::config::LogFormat::Auto);
    let (config, _) = super::load_config(args.config.as_deref())?;
    let zone_name = args.mta.map_or(args.zone.clone(), |m| m.zone().to_owned());
    let options = CheckOptions {
        smtp: !args.no_smtp,
        deadline: args.deadline,
        ..CheckOptions::default()
    };
    let report = super::current_thread()?.block_on(async {
        let prepared = crate::setup::prepare(&config)?;
        let zone = config.zone(&zone_name);
        let dane = DaneQuery {
            enabled: prepared.dane.wanted_for(&zone),
            reason: prepared.dane.reason.clone(),
            lookup: &prepared.dane.lookup,
        };
        anyhow::Ok(
            check(
                &prepared.discoverer,
                &args.domain,
                &zone,
                Some(dane),
                &options,
            )
            .await
            .for_map(&zone_name),
        )
    })?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        out!("{}", report.to_text(std::io::stdout().is_terminal()));
    }
    Ok(ExitCode::from(report.exit_code()))
}
