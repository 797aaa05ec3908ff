//! The command-line operations: one file per command, and the argument parser.
//! This is the binary's edge: errors become `anyhow` reports here and exit codes in
//! `main.rs`; everything below it returns typed errors.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::Config;

/// `print!` for the commands' output: a reader that goes away early (`mta-stsd doctor
/// --json | head`) ends the command quietly, as a shell's SIGPIPE would, instead of
/// `print!`'s panic.
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::write_out(format_args!($($arg)*)) };
}

/// `println!` for the commands' output (see [`out!`]).
macro_rules! outln {
    () => { $crate::cli::write_out(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::cli::write_out(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Writes to standard output; a closed pipe exits with status 141 (128 + SIGPIPE),
/// any other failure with 74 (EX_IOERR), with one line on standard error.
pub(crate) fn write_out(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    // Standard output is line-buffered: a failed write surfaces here, line by line.
    if let Err(e) = stdout.write_fmt(args) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        eprintln!(
            "mta-stsd: cannot write to standard output: {}",
            crate::io_error_text(&e)
        );
        std::process::exit(74);
    }
}

mod cache;
pub mod check;
mod check_config;
mod doctor;
mod import;
mod logging;
pub mod query;
mod serve;
mod tlsrpt;
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
    /// Look up a domain's policy live and show the reply an MTA would get (Postfix,
    /// or --mta exim|sendmail).
    ///
    /// Exit status: 0 policy found, 1 no policy, 3 discovery failed, 2 bad usage or config.
    Query(query::Args),
    /// Run the socketmap daemon (on built-in defaults when no file is given and
    /// /etc/mta-stsd/mta-stsd.toml does not exist).
    Serve(serve::Args),
    /// Inspect and manage the running daemon's cache (through its admin API).
    Cache(cache::Args),
    /// Discover domains now through the running daemon (admin API), so that the first
    /// mail to each is already protected (closes the trust-on-first-use gap).
    ///
    /// Exit status: 0 done, 1 the admin API failed for some domains or no domain's
    /// discovery succeeded, 2 bad usage.
    Warm(warm::Args),
    /// Check the whole setup: Postfix's side (read with its own postconf) and the
    /// running daemon; one line per check, with the fix for each problem.
    ///
    /// Exit status: 0 all fine, 1 warnings, 2 a problem that defers or weakens mail.
    Doctor(doctor::Args),
    /// Import the policies postfix-mta-sts-resolver learned (its sqlite or Redis cache) into
    /// the running daemon's cache, keeping fetch time and id; expired ones are
    /// skipped and newer cached ones kept, so running it twice is harmless.
    ///
    /// Exit status: 0 done, 1 the admin API failed for some domains, 2 bad usage.
    Import(import::Args),
    /// TLSRPT (RFC 8460): show what the running daemon collected from Postfix, or send
    /// a day's reports now.
    Tlsrpt(tlsrpt::Args),
    /// Check a domain's whole MTA-STS setup from this server: TXT record, policy host
    /// and file, MX coverage, each MX over SMTP (STARTTLS, certificate), TLSRPT, and
    /// what this daemon answers an MTA for it (Postfix, or --mta exim|sendmail).
    ///
    /// Exit status: 0 all ok, 1 warnings only, 2 a problem, 64 not a domain name.
    Check(check::Args),
    /// Validate a configuration exactly as `serve` would (everything but binding
    /// and serving), report every problem, and exit: 0 valid, 2 not.
    CheckConfig(check_config::Args),
}

/// How the commands that work through the running daemon find its admin API.
#[derive(clap::Args)]
struct AdminArgs {
    /// Admin API address, http://IP:PORT or IP:PORT (default: metrics.listen of the
    /// configuration).
    #[arg(long, global = true)]
    admin: Option<String>,
    /// Configuration file to read metrics.listen from (default:
    /// /etc/mta-stsd/mta-stsd.toml if it exists).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
}

impl AdminArgs {
    /// The admin API's base URL: as given (`http://IP:PORT`, or `IP:PORT` meaning
    /// that), or from `metrics.listen` in the configuration.
    fn url(&self) -> anyhow::Result<String> {
        if let Some(given) = &self.admin {
            return admin_url_from(given);
        }
        let (config, _) = load_config(self.config.as_deref())?;
        let addr = config
            .metrics
            .addr()
            .context("metrics.listen is off, so there is no admin API to talk to")?;
        Ok(format!("http://{addr}"))
    }
}

/// The configuration every command reads: `--config`, else the packaged file when it
/// exists, else the built-in defaults; with the file it came from.
fn load_config(given: Option<&std::path::Path>) -> anyhow::Result<(Config, Option<PathBuf>)> {
    let path = Config::path_or_default(given);
    Ok((Config::load(path.as_deref())?, path))
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
    admin_client_waiting(base, std::time::Duration::from_secs(60))
}

/// A client that waits up to `timeout` for an answer (sending a day's reports tries
/// every destination in turn).
fn admin_client_waiting(
    base: &str,
    timeout: std::time::Duration,
) -> anyhow::Result<crate::admin::client::AdminClient> {
    Ok(crate::admin::client::AdminClient::new(base, timeout)?)
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
        Command::Query(args) => query::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Cache(args) => cache::run(args),
        Command::Warm(args) => warm::run(args),
        Command::Doctor(args) => doctor::run(args),
        Command::Import(args) => import::run(args),
        Command::Tlsrpt(args) => tlsrpt::run(args),
        Command::Check(args) => check::run(args),
        Command::CheckConfig(args) => check_config::run(args),
    }
}
