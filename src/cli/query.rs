//! `mta-stsd query DOMAIN`: one live discovery, explained step by step.

use crate::answer::explain::DaneQuery;
use crate::answer::live::query;

/// `mta-stsd query`'s arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Domain or Postfix next-hop key (example.com, [mx.example.com]:587, ...).
    domain: String,
    /// Print a JSON report instead of text.
    #[arg(long)]
    json: bool,
    /// Configuration file (default: /etc/mta-stsd/mta-stsd.toml if it exists, else
    /// built-in defaults).
    #[arg(long, short)]
    config: Option<std::path::PathBuf>,
    /// Socketmap name whose [zones.NAME] options to apply.
    #[arg(long, default_value = "postfix", conflicts_with = "mta")]
    zone: String,
    /// Show the answer as this MTA gets it: the map name it asks by (postfix, exim;
    /// sendmail asks by "sts"), with that zone's options and answer format.
    #[arg(long, value_enum, conflicts_with = "zone")]
    mta: Option<crate::config::Mta>,
}

/// Runs the command: the daemon's configuration and setup, one live query.
pub(super) fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    super::logging::init("warn", crate::config::LogFormat::Auto);
    let (config, _) = super::load_config(args.config.as_deref())?;
    let zone_name = args.mta.map_or(args.zone.clone(), |m| m.zone().to_owned());
    let report = super::current_thread()?.block_on(async {
        let prepared = crate::setup::prepare(&config)?;
        let zone = config.zone(&zone_name);
        let dane = prepared.dane;
        let dane_query = DaneQuery {
            enabled: dane.wanted_for(&zone),
            reason: match zone.dane {
                Some(_) => "set for this zone".to_owned(),
                None => dane.reason.clone(),
            },
            lookup: &dane.lookup,
        };
        anyhow::Ok(query(&prepared.discoverer, &args.domain, &zone, Some(dane_query)).await)
    })?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        out!("{}", report.to_text());
    }
    Ok(std::process::ExitCode::from(
        report.outcome.exit_code() as u8
    ))
}
