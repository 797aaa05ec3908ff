//! `mta-stsd serve`: run the daemon until SIGTERM or SIGINT; SIGHUP reloads.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::signal::unix::{Signal, SignalKind, signal};

use super::logging::FilterHandle;
use crate::clock::SystemClock;
use crate::config::Config;
use crate::server::daemon::{Daemon, Parts};
use crate::server::state::{LogReloader, ReloadError, State};
use crate::server::systemd::{self, NotifyState};

/// `mta-stsd serve`'s arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Configuration file (default: /etc/mta-stsd/mta-stsd.toml if it exists, else
    /// built-in defaults).
    #[arg(long, short)]
    config: Option<PathBuf>,
}

/// Runs the command: configuration, logging, the runtime, then the daemon.
pub(super) fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    // SAFETY: no other thread exists yet: the runtime starts below, and argument
    // parsing and configuration loading spawn none.
    let passed = unsafe { crate::server::systemd::take_listen_fds() }
        .context("cannot read the sockets systemd passed")?;
    let (config, path) = super::load_config(args.config.as_deref())?;
    let log = super::logging::init(&config.log.level, config.log.format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config, path, log, passed))?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// Runs the daemon. `passed` are the sockets systemd passed (taken from the
/// environment before the runtime started).
async fn serve(
    config: Config,
    path: Option<PathBuf>,
    log: Option<FilterHandle>,
    passed: Vec<OwnedFd>,
) -> anyhow::Result<()> {
    // A panic that is caught (the cache store's guard catches sled's) is still
    // reported by the panic hook: make that one log line rather than a multi-line
    // message on stderr.
    std::panic::set_hook(Box::new(|info| {
        let message = crate::storage::panic_message(info.payload());
        let location = info.location().map(ToString::to_string).unwrap_or_default();
        tracing::error!(%location, message = %message.replace('\n', " "), "panic");
    }));
    // A second instance must never take a live daemon's sockets or stores. Sockets
    // systemd passed are its own, held by systemd on this daemon's behalf.
    let held: Vec<String> = crate::instance::held(&config)
        .into_iter()
        .filter(|h| passed.is_empty() || h.setting != "server.listen")
        .map(|h| h.to_string())
        .collect();
    if !held.is_empty() {
        anyhow::bail!(
            "refusing to start: {}; stop that daemon first, or give this one its own listen addresses, sockets and paths",
            held.join("; ")
        );
    }
    let prepared = crate::setup::prepare(&config)?;
    for w in &prepared.warnings {
        tracing::error!("{w}");
    }
    let activated = if passed.is_empty() {
        None
    } else {
        Some(systemd::adopt(passed).context("cannot adopt socket-activated listeners")?)
    };
    let log: Option<LogReloader> = log.map(|handle| {
        Box::new(move |level: &str| {
            let filter = tracing_subscriber::EnvFilter::try_new(super::logging::filter_for(level))
                .map_err(|e| e.to_string())?;
            handle.reload(filter).map_err(|e| e.to_string())
        }) as LogReloader
    });
    let parts = Parts {
        activated,
        config_path: path,
        log,
        store: None,
        dane: Some(prepared.dane),
        discoverer: Some(prepared.discoverer),
        tlsrpt_store: None,
    };
    let daemon =
        Daemon::build_with(config, prepared.discovery, Arc::new(SystemClock), parts).await?;
    let state = daemon.state.clone();
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    tokio::spawn(reload_on_hangup(hup, state));
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        systemd::notify(NotifyState::Stopping);
    };
    systemd::notify(NotifyState::Ready);
    daemon.run(shutdown).await;
    Ok(())
}

/// SIGHUP reloads the configuration (through the one reload the state owns); a
/// rejected file keeps the old configuration.
async fn reload_on_hangup(mut hup: Signal, state: Arc<State>) {
    while hup.recv().await.is_some() {
        systemd::notify(NotifyState::Reloading);
        let file = state
            .config_path()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        // Reading the file and building a resolver are blocking work.
        let s = state.clone();
        let result = tokio::task::spawn_blocking(move || s.reload()).await;
        match result {
            Ok(Ok(report)) if report.needs_restart.is_empty() => {
                tracing::info!(config = %file, "configuration reloaded");
            }
            Ok(Ok(report)) => tracing::warn!(
                config = %file,
                needs_restart = ?report.needs_restart,
                "configuration reloaded; these settings change only at the next restart"
            ),
            Ok(Err(ReloadError::NoFile)) => {
                tracing::warn!(
                    "SIGHUP ignored: running on built-in defaults, no configuration file to reload"
                )
            }
            Ok(Err(e)) => {
                tracing::error!(config = %file, error = %e, "new configuration rejected; keeping the old one")
            }
            Err(e) => tracing::error!(error = %e, "reload failed"),
        }
        systemd::notify(NotifyState::Ready);
    }
}
