use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use mta_stsd::config::{Config, LogFormat};
use mta_stsd::mtasts::discovery::Discoverer;

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
    /// Inspect and manage the running daemon's cache (through its admin API).
    Cache {
        #[command(subcommand)]
        action: CacheAction,
        /// Print JSON instead of text.
        #[arg(long, global = true)]
        json: bool,
        /// Admin API base URL (default: from metrics.listen in the config).
        #[arg(long, global = true)]
        admin: Option<String>,
        /// Configuration file to read metrics.listen from.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file and exit.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
}

type FilterHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// Logs to stderr: human format on a terminal, plain lines under systemd (or as
/// configured), JSON on request. RUST_LOG, when set, wins over the configured level.
fn init_logging(level: &str, format: LogFormat) -> Option<FilterHandle> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let from_env = std::env::var_os("RUST_LOG").is_some();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let format = match format {
        LogFormat::Auto if terminal => LogFormat::Human,
        LogFormat::Auto => LogFormat::Plain,
        f => f,
    };
    let base = tracing_subscriber::registry().with(filter);
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => base.with(layer.json().flatten_event(true)).try_init(),
        // Under systemd the journal adds its own timestamps.
        LogFormat::Plain => base.with(layer.with_ansi(false).without_time()).try_init(),
        _ => base.with(layer.with_ansi(terminal)).try_init(),
    };
    result.ok()?;
    (!from_env).then_some(handle)
}

#[derive(Subcommand)]
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

fn main() -> ExitCode {
    // reqwest is built without a default TLS provider; every client uses ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
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
            init_logging("warn", LogFormat::Auto);
            let config = Config::load(config.as_deref())?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let report = runtime.block_on(async {
                let discoverer = Discoverer::from_config(&config)?;
                anyhow::Ok(
                    mta_stsd::cli::query::query(&discoverer, &domain, &config.zone(&zone)).await,
                )
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.to_text());
            }
            Ok(ExitCode::from(report.outcome.exit_code() as u8))
        }
        Command::Serve { config: path } => {
            let config = Config::load(path.as_deref())?;
            let log = init_logging(&config.log.level, config.log.format);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(serve(config, path, log))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cache {
            action,
            json,
            admin,
            config,
        } => {
            let url = match admin {
                Some(u) => u,
                None => {
                    let config = Config::load(config.as_deref())?;
                    let addr = config
                        .metrics
                        .addr()?
                        .context("metrics.listen is off, so there is no admin API to talk to")?;
                    format!("http://{addr}")
                }
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(cache_command(&url, action, json))
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

async fn serve(
    config: Config,
    path: Option<PathBuf>,
    log: Option<FilterHandle>,
) -> anyhow::Result<()> {
    use mta_stsd::clock::SystemClock;
    use mta_stsd::mtasts::discovery::{Discoverer, DiscoveryOptions};
    use mta_stsd::server::daemon::Daemon;
    use mta_stsd::server::systemd;
    use tokio::signal::unix::{SignalKind, signal};

    let opts = DiscoveryOptions::from_config(&config)?;
    let activated =
        systemd::activated_listeners().context("cannot adopt socket-activated listeners")?;
    let daemon =
        Daemon::build_with(config, opts, std::sync::Arc::new(SystemClock), activated).await?;
    let ctx = daemon.ctx.clone();
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            systemd::notify("RELOADING=1");
            let Some(path) = &path else {
                tracing::info!("SIGHUP: running on built-in defaults, nothing to reload");
                systemd::notify("READY=1");
                continue;
            };
            let loaded = Config::load(Some(path))
                .map_err(anyhow::Error::from)
                .and_then(|c| {
                    let d = Discoverer::from_config(&c)?;
                    Ok((c, d))
                });
            match loaded {
                Ok((config, discoverer)) => {
                    if let (Some(h), Ok(f)) = (
                        &log,
                        tracing_subscriber::EnvFilter::try_new(&config.log.level),
                    ) {
                        let _ = h.reload(f);
                    }
                    ctx.reload(config, discoverer);
                    tracing::info!(config = %path.display(), "configuration reloaded");
                }
                Err(e) => {
                    tracing::error!(config = %path.display(), error = %format!("{e:#}"), "new configuration rejected; keeping the old one")
                }
            }
            systemd::notify("READY=1");
        }
    });
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        systemd::notify("STOPPING=1");
    };
    systemd::notify("READY=1");
    daemon.run(shutdown).await;
    Ok(())
}

async fn cache_command(base: &str, action: CacheAction, json: bool) -> anyhow::Result<ExitCode> {
    use mta_stsd::server::http::EntryView;
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .no_proxy()
        .build()?;
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
        let msg = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or(body);
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
        }
    }
    Ok(ExitCode::SUCCESS)
}
