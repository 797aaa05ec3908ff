//! One path from a configuration to the settings the daemon runs on, shared by
//! `serve` (at start), the reload, `query` and `check-config`: what `check-config`
//! accepts, `serve` starts with, and every problem is reported at once, each naming
//! the file. It builds everything that can be built without binding a socket or
//! serving: the resolver, the trust stores (CA file, DNSSEC anchors), Postfix's DNSSEC
//! setting for `dane.mode = "auto"`, and it checks that the cache directory is usable.

use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError, Problem};
use crate::dane::verdict_cache::DaneSettings;
use crate::mtasts::discovery::{Discoverer, DiscoveryOptions};
use crate::net::SetupError;

/// What a valid configuration runs on.
#[derive(Debug)]
pub struct Prepared {
    pub discovery: DiscoveryOptions,
    /// Built from `discovery` once, here: the daemon runs on this very one.
    pub discoverer: Discoverer,
    pub dane: DaneSettings,
    pub cache_dir: PathBuf,
    /// What starts but will not work with the MTA on this host (`serve` logs each as
    /// an error, `check-config` prints each).
    pub warnings: Vec<String>,
}

/// Checks and builds; on failure, every problem found, as one error naming the file.
pub fn prepare(config: &Config) -> Result<Prepared, ConfigError> {
    let mut problems: Vec<Problem> = match config.validate() {
        Ok(()) => Vec::new(),
        Err(ConfigError::Invalid { problems, .. }) => problems,
        Err(other) => return Err(other),
    };
    let setup = |setting: &'static str, e: SetupError| Problem {
        setting,
        message: e.to_string(),
    };
    let discovery = DiscoveryOptions::from_config(config)
        .map_err(|e| problems.push(setup("fetch.ca_file", e)))
        .ok();
    let discoverer = discovery.as_ref().and_then(|opts| {
        Discoverer::new(opts.clone())
            .map_err(|e| problems.push(setup("resolver", e)))
            .ok()
    });
    let dane = DaneSettings::resolve(&config.dane, &config.resolver)
        .map_err(|e| problems.push(setup("dane", e)))
        .ok();
    if config.cache.backend == crate::config::CacheBackend::Redis
        && let Err(e) = crate::redis::tls::TlsFiles::load(&config.cache.redis)
    {
        problems.push(redis_file_problem(e));
    }
    let cache_dir = config.cache.resolved_path();
    if let Some(message) = cache_dir.as_deref().and_then(cache_dir_problem) {
        problems.push(Problem {
            setting: "cache.path",
            message,
        });
    }
    match (discovery, discoverer, dane, cache_dir) {
        (Some(discovery), Some(discoverer), Some(dane), Some(cache_dir)) if problems.is_empty() => {
            Ok(Prepared {
                discovery,
                discoverer,
                dane,
                cache_dir,
                warnings: postfix_warnings(config),
            })
        }
        _ => Err(ConfigError::Invalid {
            origin: config.origin.clone(),
            problems,
        }),
    }
}

/// What the local Postfix (when there is one: `postconf` runs, reading
/// `dane.postfix_config` or Postfix's default) cannot use or lacks: zones sending it
/// attributes it refuses, or no trust anchors to verify certificates with.
fn postfix_warnings(config: &Config) -> Vec<String> {
    let dir = config.dane.postfix_config.as_deref();
    let names = [
        "mail_version",
        "smtp_tls_policy_maps",
        "smtp_tls_CAfile",
        "smtp_tls_CApath",
        "tls_append_default_CA",
    ];
    let mut args = vec!["-h"];
    args.extend(names);
    let Ok(text) = crate::postfix::postconf(dir, &args) else {
        return Vec::new();
    };
    let v: Vec<&str> = text.lines().collect();
    let [version, maps, cafile, capath, append] = v.as_slice() else {
        return Vec::new();
    };
    let sections: Vec<String> = config
        .zones
        .iter()
        .filter(|(_, z)| z.tlsrpt)
        .map(|(name, _)| format!("zones.{name}"))
        .collect();
    crate::postfix::tlsrpt_attributes_refused(version, &sections)
        .into_iter()
        .chain(crate::postfix::no_trust_anchors(
            maps, cafile, capath, append,
        ))
        .collect()
}

/// An unusable `[cache.redis]` certificate file, as a problem naming its setting.
fn redis_file_problem(e: crate::redis::RedisError) -> Problem {
    match e {
        crate::redis::RedisError::File {
            setting,
            path,
            message,
        } => Problem {
            setting,
            message: format!("cannot use {path}: {message}"),
        },
        other => Problem {
            setting: "cache.redis",
            message: other.to_string(),
        },
    }
}

/// Why the daemon could not keep its cache in `dir`, if it could not: the directory
/// (or, when it does not exist yet, the nearest existing one above it, where it will
/// be created) must be a directory this user can write. Nothing is created here.
pub fn cache_dir_problem(dir: &Path) -> Option<String> {
    if !dir.is_absolute() {
        return Some(format!("{} is not an absolute path", dir.display()));
    }
    let Some(existing) = dir.ancestors().find(|d| d.exists()) else {
        return Some(format!(
            "no directory on the path of {} exists",
            dir.display()
        ));
    };
    if !existing.is_dir() {
        return Some(format!("{} is not a directory", existing.display()));
    }
    if !writable(existing) {
        return Some(if existing == dir {
            format!("{} is not writable by this user", dir.display())
        } else {
            format!(
                "{} does not exist and cannot be created: {} is not writable by this user",
                dir.display(),
                existing.display()
            )
        });
    }
    None
}

fn writable(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_the_daemon_would_reject_are_reported_together() {
        let tmp = tempfile::tempdir().unwrap();
        let empty_ca = tmp.path().join("empty.pem");
        std::fs::write(&empty_ca, "# no certificates here\n").unwrap();
        let anchor = tmp.path().join("root.key");
        std::fs::write(&anchor, ". IN A 192.0.2.1\n").unwrap();
        let blocker = tmp.path().join("file");
        std::fs::write(&blocker, "x").unwrap();
        let toml = format!(
            "[fetch]\nca_file = {:?}\n[dane]\nmode = \"off\"\ntrust_anchor = {:?}\n[cache]\npath = {:?}\n",
            empty_ca,
            anchor,
            blocker.join("cache")
        );
        let config = Config::from_toml(&toml, "/etc/x.toml").unwrap();
        let e = prepare(&config).unwrap_err();
        let settings: Vec<_> = e.problems().iter().map(|p| p.setting).collect();
        assert_eq!(settings, ["fetch.ca_file", "dane", "cache.path"], "{e}");
        assert!(
            e.to_string()
                .lines()
                .all(|l| l.starts_with("/etc/x.toml: ")),
            "{e}"
        );
        assert!(
            e.to_string().contains("no certificates") || e.to_string().contains("no certificate"),
            "{e}"
        );
    }

    #[test]
    fn an_unusable_redis_ca_file_is_a_problem_before_the_daemon_starts() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = tmp.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let toml = format!(
            "[dane]\nmode = \"off\"\n[cache]\npath = {:?}\nbackend = \"redis\"\n[cache.redis]\nurl = \"rediss://127.0.0.1:6380/0\"\nca_file = {ca:?}\n",
            tmp.path().join("cache")
        );
        let config = Config::from_toml(&toml, "/etc/x.toml").unwrap();
        let e = prepare(&config).unwrap_err();
        let settings: Vec<_> = e.problems().iter().map(|p| p.setting).collect();
        assert_eq!(settings, ["cache.redis.ca_file"], "{e}");
        assert!(e.to_string().contains("no certificates found"), "{e}");
    }

    #[test]
    fn cache_dir_rules() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(cache_dir_problem(tmp.path()), None);
        assert_eq!(cache_dir_problem(&tmp.path().join("a/b")), None);
        let file = tmp.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let p = cache_dir_problem(&file.join("cache")).unwrap();
        assert!(p.contains("is not a directory"), "{p}");
        let p = cache_dir_problem(Path::new("relative/cache")).unwrap();
        assert!(p.contains("absolute"), "{p}");
    }
}
