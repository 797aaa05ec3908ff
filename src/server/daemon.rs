//! Assembling the long-running service: cache store, discovery, policy service,
//! listeners, refresher, and an orderly shutdown.

use std::future::Future;
use std::sync::Arc;

use thiserror::Error;

use crate::cache::service::{PolicyService, ServiceSettings};
use crate::cache::store::{PolicyStore, SledStore, StoreError};
use crate::clock::Clock;
use crate::config::Config;
use crate::mtasts::discovery::{Discoverer, DiscoveryOptions, SetupError};
use crate::server::socketmap::{self, Listener, ServerContext};

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("cannot create cache directory {path}: {source}")]
    CacheDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open the cache at {path}: {source}")]
    Cache { path: String, source: StoreError },
    #[error("cannot set up metrics: {0}")]
    Metrics(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

/// A daemon ready to serve: its shared context and bound listeners.
pub struct Daemon {
    pub ctx: Arc<ServerContext>,
    pub listeners: Vec<Listener>,
    /// Metrics and admin API, unless `metrics.listen` is empty.
    pub metrics_listener: Option<tokio::net::TcpListener>,
}

impl Daemon {
    /// Opens the cache (moving a broken one aside), sets up discovery and binds every
    /// listener. `opts` and `clock` are the library's test hooks; the binary passes
    /// `DiscoveryOptions::from_config` and the system clock.
    pub async fn build(
        config: Config,
        opts: DiscoveryOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Daemon, DaemonError> {
        Self::build_with(config, opts, clock, None).await
    }

    /// Like [`Daemon::build`], with listeners passed in (systemd socket activation)
    /// instead of bound from `server.listen`.
    pub async fn build_with(
        config: Config,
        opts: DiscoveryOptions,
        clock: Arc<dyn Clock>,
        activated: Option<Vec<Listener>>,
    ) -> Result<Daemon, DaemonError> {
        config.validate()?;
        let path = config.cache.resolved_path();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| DaemonError::CacheDir {
                path: parent.display().to_string(),
                source,
            })?;
        }
        let (store, moved) =
            SledStore::open_or_recover(&path).map_err(|source| DaemonError::Cache {
                path: path.display().to_string(),
                source,
            })?;
        if let Some((aside, why)) = moved {
            tracing::error!(cache = %path.display(), moved_to = %aside.display(), reason = %why, "cache could not be opened; moved it aside and started with an empty cache");
        }
        let store: Arc<dyn PolicyStore> = Arc::new(store);
        let discoverer = Discoverer::new(opts)?;
        let settings = ServiceSettings {
            cache: config.cache.clone(),
            lookup: config.lookup.clone(),
        };
        let metrics = Arc::new(
            crate::metrics::Metrics::new().map_err(|e| DaemonError::Metrics(e.to_string()))?,
        );
        let service = PolicyService::new(discoverer, store, clock, settings, metrics);
        let mode = config.socket_mode()?;
        let listeners = match activated {
            Some(l) => l,
            None => {
                let mut listeners = Vec::new();
                for addr in config.listen_addrs()? {
                    let l = Listener::bind(&addr, mode).await.map_err(|source| {
                        DaemonError::Listen {
                            addr: addr.to_string(),
                            source,
                        }
                    })?;
                    listeners.push(l);
                }
                listeners
            }
        };
        let metrics_listener =
            match config.metrics.addr()? {
                Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(
                    |source| DaemonError::Listen {
                        addr: addr.to_string(),
                        source,
                    },
                )?),
                None => None,
            };
        tracing::info!(cache = %path.display(), "mta-stsd ready");
        Ok(Daemon {
            ctx: ServerContext::new(service, config),
            listeners,
            metrics_listener,
        })
    }

    /// The addresses of the bound TCP socketmap listeners (useful with port 0).
    pub fn tcp_addrs(&self) -> Vec<std::net::SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| match l {
                Listener::Tcp(t) => t.local_addr().ok(),
                _ => None,
            })
            .collect()
    }

    /// The address of the metrics and admin listener, if any.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` resolves; then stops the refresher, drains
    /// connections and flushes the cache.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let service = self.ctx.service.clone();
        // Serve at once; bring the rest of the cache into memory meanwhile.
        let loader = {
            let service = service.clone();
            tokio::task::spawn_blocking(move || service.load())
        };
        let mut stop_refresher = stop_rx.clone();
        let refresher = tokio::spawn(service.clone().run_refresher(async move {
            let _ = stop_refresher.wait_for(|s| *s).await;
        }));
        let http = self.metrics_listener.map(|l| {
            let mut stop = stop_rx.clone();
            tokio::spawn(crate::server::http::run(l, self.ctx.clone(), async move {
                let _ = stop.wait_for(|s| *s).await;
            }))
        });
        socketmap::run(self.listeners, self.ctx, shutdown).await;
        let _ = loader.await;
        let _ = stop_tx.send(true);
        let _ = refresher.await;
        if let Some(h) = http {
            let _ = h.await;
        }
        service.flush();
        tracing::info!("stopped");
    }
}
