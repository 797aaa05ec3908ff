//! The running daemon's shared state and the one place that reloads it.
//!
//! Listeners read the configuration through [`State::config`] on every request (zone
//! options, limits), so a reload applies at once; what cannot change without a
//! restart (bound sockets, the cache's location, the connection cap) is named in the
//! reload's report and logged, never silently ignored.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use thiserror::Error;

use crate::answer::Reply;
use crate::cache::policy_cache::{CacheOutcome, PolicyService, ServiceSettings};
use crate::config::ZoneOptions;
use crate::config::{Config, ConfigError};
use crate::dane::verdict_cache::{DaneService, DaneSettings};
use crate::locks::{read, write};
use crate::mtasts::discovery::Discoverer;
use crate::net::SetupError;

#[derive(Debug, Error)]
pub enum ReloadError {
    #[error(
        "running on built-in defaults (no configuration file): nothing to reload; start with --config FILE to reload it"
    )]
    NoFile,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("log.level: {0}")]
    LogLevel(String),
}

/// What a reload changed, and what only a restart will change.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReloadReport {
    /// Settings that differ from the running ones but need a restart.
    pub needs_restart: Vec<&'static str>,
}

/// Applies a new log filter (installed by the binary, which owns logging).
pub type LogReloader = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// The state every listener shares.
pub struct State {
    pub service: Arc<PolicyService>,
    pub dane: Arc<DaneService>,
    /// TLSRPT's collector and sender, with `[tlsrpt] enable`.
    pub tlsrpt: Option<Arc<crate::tlsrpt::collector::Tlsrpt>>,
    config: RwLock<Arc<Config>>,
    /// The configuration file, if the daemon was started with one.
    path: Option<PathBuf>,
    log: Option<LogReloader>,
}

impl State {
    pub fn new(
        service: Arc<PolicyService>,
        dane: Arc<DaneService>,
        tlsrpt: Option<Arc<crate::tlsrpt::collector::Tlsrpt>>,
        config: Config,
        path: Option<PathBuf>,
        log: Option<LogReloader>,
    ) -> Arc<Self> {
        Arc::new(Self {
            service,
            dane,
            tlsrpt,
            config: RwLock::new(Arc::new(config)),
            path,
            log,
        })
    }

    pub fn config(&self) -> Arc<Config> {
        read(&self.config).clone()
    }

    pub fn config_path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Answers one socketmap lookup through the one answer path ([`crate::answer`]):
    /// the MTA-STS answer from the policy cache, unless DANE takes precedence for the
    /// domain (RFC 8461 §2), both within `deadline` (`lookup.deadline` of the
    /// configuration the caller read for this request, with the zone options).
    pub async fn answer(
        &self,
        key: &str,
        zone: &ZoneOptions,
        deadline: std::time::Duration,
    ) -> (Reply, CacheOutcome) {
        let answer = crate::answer::answer(key, zone, deadline, &self.service, &self.dane).await;
        (answer.reply, answer.outcome)
    }

    /// Re-reads the configuration file and applies it; on any error the running
    /// configuration stays as it was. Re-reads Postfix's DNSSEC setting for
    /// `[dane] mode = "auto"`.
    pub fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let path = self.path.as_deref().ok_or(ReloadError::NoFile)?;
        // `prepare` runs the semantic checks with the file checks.
        let config = Config::read_unchecked(path)?;
        let prepared = crate::setup::prepare(&config)?;
        self.apply(config, prepared.discoverer, prepared.dane)
    }

    /// Applies a configuration with its discoverer and DANE settings (tests build
    /// them with their own trust anchors and ports).
    pub fn apply(
        &self,
        config: Config,
        discoverer: Discoverer,
        dane: DaneSettings,
    ) -> Result<ReloadReport, ReloadError> {
        if let Some(log) = &self.log {
            log(&config.log.level).map_err(ReloadError::LogLevel)?;
        }
        let report = ReloadReport {
            needs_restart: needs_restart(&self.config(), &config),
        };
        self.service
            .reconfigure(ServiceSettings::new(config.cache.clone()), discoverer);
        self.dane.reconfigure(dane);
        *write(&self.config) = Arc::new(config);
        Ok(report)
    }
}

/// The settings that differ between `old` and `new` and apply only at start.
pub fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |name, differs: bool| {
        if differs {
            changed.push(name);
        }
    };
    check("server.listen", old.server.listen != new.server.listen);
    check(
        "server.socket_mode",
        old.server.socket_mode != new.server.socket_mode,
    );
    check(
        "server.max_connections",
        old.server.max_connections != new.server.max_connections,
    );
    check("metrics.listen", old.metrics.listen != new.metrics.listen);
    check(
        "cache.path",
        old.cache.resolved_path() != new.cache.resolved_path(),
    );
    check("cache.backend", old.cache.backend != new.cache.backend);
    check("cache.redis", old.cache.redis != new.cache.redis);
    check("tlsrpt", old.tlsrpt != new.tlsrpt);
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_only_settings_are_named() {
        let old = Config::default();
        let same =
            Config::from_toml("[cache]\ngrace = \"2m\"\n[zones.x]\ntlsrpt = true\n", "t").unwrap();
        assert!(needs_restart(&old, &same).is_empty());
        let new = Config::from_toml(
            "[server]\nlisten = [\"127.0.0.1:9999\"]\nsocket_mode = \"0660\"\nmax_connections = 8\n\
             [metrics]\nlisten = \"\"\n[cache]\npath = \"/elsewhere\"\n",
            "t",
        )
        .unwrap();
        assert_eq!(
            needs_restart(&old, &new),
            vec![
                "server.listen",
                "server.socket_mode",
                "server.max_connections",
                "metrics.listen",
                "cache.path"
            ]
        );
    }
}
