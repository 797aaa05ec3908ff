//! `mta-stsd check-config [FILE]`: the checks `serve` runs at start, settings and
//! files alike (everything but binding and serving), every problem reported at once.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::Config;

/// `mta-stsd check-config`'s arguments.
#[derive(clap::Args)]
pub struct Args {
    /// The file to check (default: /etc/mta-stsd/mta-stsd.toml).
    file: Option<PathBuf>,
    /// The file to check, as the other commands take it.
    #[arg(long, short, conflicts_with = "file")]
    config: Option<PathBuf>,
}

pub(super) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let given = args.file.or(args.config);
    let path = Config::path_or_default(given.as_deref())
        .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_PATH));
    // The semantic checks run inside `prepare`, with the file checks, so that every
    // problem is reported at once.
    let config = Config::read_unchecked(&path)?;
    let prepared = super::current_thread()?.block_on(async { crate::setup::prepare(&config) })?;
    for w in &prepared.warnings {
        outln!("{}: warning: {w}", path.display());
    }
    for h in crate::instance::held(&config) {
        outln!(
            "{}: note: {h}; fine for that daemon's reload, but `serve` with this file refuses to start while it runs",
            path.display()
        );
    }
    let listen: Vec<String> = config
        .server
        .listen
        .iter()
        .map(ToString::to_string)
        .collect();
    outln!("{}: OK (listen {})", path.display(), listen.join(", "));
    Ok(ExitCode::SUCCESS)
}
