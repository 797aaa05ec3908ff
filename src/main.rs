use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use mta_stsd::config::Config;
use mta_stsd::discovery::Discoverer;

#[derive(Parser)]
#[command(
    name = "mta-stsd",
    version,
    about = "MTA-STS (RFC 8461) policy daemon for Postfix"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Look up a domain's policy live and show the reply Postfix would get.
    ///
    /// Exit status: 0 policy found, 1 no policy, 3 discovery failed, 2 bad usage or config.
    Query {
        /// Domain or Postfix next-hop key (example.com, [mx.example.com]:587, ...).
        domain: String,
        /// Print a JSON report instead of text.
        #[arg(long)]
        json: bool,
        /// Configuration file (default: built-in defaults).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Socketmap name whose [zones.NAME] options to apply.
        #[arg(long, default_value = "postfix")]
        zone: String,
    },
    /// Run the socketmap daemon (on built-in defaults when no file is given).
    Serve {
        /// Configuration file (default: built-in defaults).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file and exit.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
}

fn init_logging(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mta-stsd: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Query {
            domain,
            json,
            config,
            zone,
        } => {
            init_logging("warn");
            let config = Config::load(config.as_deref())?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let report = runtime.block_on(async {
                let discoverer = Discoverer::from_config(&config)?;
                anyhow::Ok(mta_stsd::query::query(&discoverer, &domain, &config.zone(&zone)).await)
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.to_text());
            }
            Ok(ExitCode::from(report.outcome.exit_code() as u8))
        }
        Command::Serve { config } => {
            init_logging("info");
            let config = Config::load(config.as_deref())?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(serve(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { file } => {
            let config = Config::load(Some(&file))?;
            println!(
                "{}: OK (listen {})",
                file.display(),
                config.server.listen.join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    use mta_stsd::clock::SystemClock;
    use mta_stsd::daemon::Daemon;
    use mta_stsd::discovery::DiscoveryOptions;
    use tokio::signal::unix::{SignalKind, signal};

    let opts = DiscoveryOptions::from_config(&config)?;
    let daemon = Daemon::build(config, opts, std::sync::Arc::new(SystemClock)).await?;
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    };
    daemon.run(shutdown).await;
    Ok(())
}
