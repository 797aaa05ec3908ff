//! `mta-stsd serve`: run the daemon until SIGTERM or SIGINT; SIGHUP reloads.

use std::path::PathBuf;

use anyhow::Context;

use super::logging::FilterHandle;
use crate::config::Config;

pub(super) async fn serve(
    config: Config,
    path: Option<PathBuf>,
    log: Option<FilterHandle>,
) -> anyhow::Result<()> {
    use crate::clock::SystemClock;
    use crate::mtasts::discovery::{Discoverer, DiscoveryOptions};
    use crate::server::daemon::Daemon;
    use crate::server::systemd;
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
