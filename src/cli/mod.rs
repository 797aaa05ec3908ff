//! The command-line operations: one file per command, and the argument parser.
//! This is the binary's edge: errors become `anyhow` reports here and exit codes in
//! `main.rs`; everything below it returns typed errors.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{Config, LogFormat};

mod cache;
mod doctor;
mod import;
mod logging;
pub mod query;
mod serve;
pub mod warm;

#[derive(Parser)]
#[command(
    name = "mta-stsd",
    version,
    about = "MTA-STS (RFC 8461) policy daemon for Postfix"
)]
pub struct Cli {
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
        /// Configuration file (default: /etc/mta-stsd/mta-stsd.toml if it exists, else
        /// built-in defaults).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Socketmap name whose [zones.NAME] options to apply.
        #[arg(long, default_value = "postfix")]
        zone: String,
    },
    /// Run the socketmap daemon (on built-in defaults when no file is given and
    /// /etc/mta-stsd/mta-stsd.toml does not exist).
    Serve {
        /// Configuration file (default: /etc/mta-stsd/mta-stsd.toml if it exists, else
        /// built-in defaults).
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
        /// Admin API address, http://IP:PORT or IP:PORT (default: metrics.listen of
        /// the configuration).
        #[arg(long, global = true)]
        admin: Option<String>,
        /// Configuration file to read metrics.listen from (default:
        /// /etc/mta-stsd/mta-stsd.toml if it exists).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
    },
    /// Discover domains now through the running daemon (admin API), so that the first
    /// mail to each is already protected (closes the trust-on-first-use gap).
    ///
    /// Exit status: 0 done, 1 the admin API failed for some domains or no domain's
    /// discovery succeeded, 2 bad usage.
    Warm {
        /// File with one domain per line, or - for standard input.
        input: Option<PathBuf>,
        /// Take recipient domains of delivered mail from Postfix's log (most
        /// frequent first): a file such as /var/log/mail.log (rotated .gz ones too),
        /// or - for standard input (`journalctl -t postfix/smtp --since -30d |
        /// mta-stsd warm --from-maillog -`).
        #[arg(long, value_name = "PATH")]
        from_maillog: Option<PathBuf>,
        /// Only the first N domains (with --from-maillog: the N most frequent).
        #[arg(long, value_name = "N")]
        top: Option<usize>,
        /// Discoveries at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Admin API address, http://IP:PORT or IP:PORT (default: metrics.listen of
        /// the configuration).
        #[arg(long)]
        admin: Option<String>,
        /// Configuration file to read metrics.listen from (default:
        /// /etc/mta-stsd/mta-stsd.toml if it exists).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check the whole setup: Postfix's side (read with its own postconf) and the
    /// running daemon; one line per check, with the fix for each problem.
    ///
    /// Exit status: 0 all fine, 1 warnings, 2 a problem that defers or weakens mail.
    Doctor {
        /// The daemon's configuration file (default: /etc/mta-stsd/mta-stsd.toml if it
        /// exists, else built-in defaults).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Postfix's configuration directory.
        #[arg(long, value_name = "DIR", default_value = "/etc/postfix")]
        postfix_config: PathBuf,
        /// The resolver configuration Postfix uses (for DNSSEC's `options trust-ad`).
        #[arg(long, value_name = "FILE", default_value = "/etc/resolv.conf")]
        resolv_conf: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Import the policies postfix-mta-sts-resolver learned (its sqlite or Redis cache) into
    /// the running daemon's cache, keeping fetch time and id; expired ones are
    /// skipped and newer cached ones kept, so running it twice is harmless.
    ///
    /// Exit status: 0 done, 1 the admin API failed for some domains, 2 bad usage.
    Import {
        /// postfix-mta-sts-resolver's cache: sqlite:PATH (cache type sqlite) or its
        /// Redis URL, redis://HOST[:PORT][/DB] or unix:///PATH (cache type redis).
        #[arg(long = "from", value_name = "SOURCE")]
        from: import::Source,
        /// Admin API address, http://IP:PORT or IP:PORT (default: metrics.listen of
        /// the configuration).
        #[arg(long)]
        admin: Option<String>,
        /// Configuration file to read metrics.listen from (default:
        /// /etc/mta-stsd/mta-stsd.toml if it exists).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration exactly as `serve` would (everything but binding
    /// and serving), report every problem, and exit: 0 valid, 2 not.
    CheckConfig {
        /// The file to check (default: /etc/mta-stsd/mta-stsd.toml).
        file: Option<PathBuf>,
        /// The file to check, as the other commands take it.
        #[arg(long, short, conflicts_with = "file")]
        config: Option<PathBuf>,
    },
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

/// The configuration every command reads: `--config`, else the packaged file when it
/// exists, else the built-in defaults; with the file it came from.
fn load_config(given: Option<&std::path::Path>) -> anyhow::Result<(Config, Option<PathBuf>)> {
    let path = Config::path_or_default(given);
    Ok((Config::load(path.as_deref())?, path))
}

/// The admin API's base URL: as given (`http://IP:PORT`, or `IP:PORT` meaning
/// that), or from `metrics.listen` in the configuration.
fn admin_url(given: Option<String>, config: Option<&std::path::Path>) -> anyhow::Result<String> {
    if let Some(given) = given {
        return admin_url_from(&given);
    }
    let (config, _) = load_config(config)?;
    let addr = config
        .metrics
        .addr()
        .context("metrics.listen is off, so there is no admin API to talk to")?;
    Ok(format!("http://{addr}"))
}

fn admin_url_from(given: &str) -> anyhow::Result<String> {
    let given = given.trim_end_matches('/');
    if given.starts_with("http://") {
        return Ok(given.to_owned());
    }
    if given.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(format!("http://{given}"));
    }
    anyhow::bail!(
        "--admin {given:?}: write the admin API's address as IP:PORT or http://IP:PORT (e.g. 127.0.0.1:9461, metrics.listen of the daemon's configuration)"
    )
}

/// The admin API client for the daemon at `base` (a refresh runs a whole discovery,
/// so requests may take up to a minute).
fn admin_client(base: &str) -> anyhow::Result<crate::admin::client::AdminClient> {
    Ok(crate::admin::client::AdminClient::new(
        base,
        std::time::Duration::from_secs(60),
    )?)
}

fn current_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Runs one command. Call it from `main` before any thread is started: `serve`
/// reads systemd's socket-activation variables from the environment and removes them.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Query {
            domain,
            json,
            config,
            zone,
        } => {
            logging::init("warn", LogFormat::Auto);
            let (config, _) = load_config(config.as_deref())?;
            let report = current_thread()?.block_on(async {
                let prepared = crate::setup::prepare(&config)?;
                let discoverer = prepared.discoverer;
                let zone = config.zone(&zone);
                let dane = prepared.dane;
                let dane_query = query::DaneQuery {
                    enabled: dane.wanted_for(&zone),
                    reason: match zone.dane {
                        Some(_) => "set for this zone".to_owned(),
                        None => dane.reason.clone(),
                    },
                    lookup: &dane.lookup,
                };
                anyhow::Ok(query::query(&discoverer, &domain, &zone, Some(dane_query)).await)
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.to_text());
            }
            Ok(ExitCode::from(report.outcome.exit_code() as u8))
        }
        Command::Serve { config: path } => {
            // SAFETY: no other thread exists yet: the runtime starts below, and
            // argument parsing and configuration loading spawn none.
            let passed = unsafe { crate::server::systemd::take_listen_fds() }
                .context("cannot read the sockets systemd passed")?;
            let (config, path) = load_config(path.as_deref())?;
            let log = logging::init(&config.log.level, config.log.format);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(serve::serve(config, path, log, passed))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cache {
            action,
            json,
            admin,
            config,
        } => {
            let url = admin_url(admin, config.as_deref())?;
            current_thread()?.block_on(cache::command(&url, action, json))
        }
        Command::Warm {
            input,
            from_maillog,
            top,
            concurrency,
            admin,
            config,
        } => {
            let url = admin_url(admin, config.as_deref())?;
            let args = warm::WarmArgs {
                input,
                from_maillog,
                top,
                concurrency,
            };
            current_thread()?.block_on(warm::command(&url, args))
        }
        Command::Doctor {
            config,
            postfix_config,
            resolv_conf,
            json,
        } => {
            let args = doctor::DoctorArgs {
                config,
                postfix_config,
                json,
                resolv_conf,
            };
            current_thread()?.block_on(doctor::command(args))
        }
        Command::Import {
            from,
            admin,
            config,
        } => {
            let url = admin_url(admin, config.as_deref())?;
            current_thread()?.block_on(import::command(&url, from))
        }
        Command::CheckConfig { file, config } => {
            let given = file.or(config);
            let path = Config::path_or_default(given.as_deref())
                .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_PATH));
            // The semantic checks run inside `prepare`, with the file checks, so that
            // every problem is reported at once.
            let config = Config::read_unchecked(&path)?;
            current_thread()?.block_on(async { crate::setup::prepare(&config) })?;
            println!(
                "{}: OK (listen {})",
                path.display(),
                config
                    .server
                    .listen
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
