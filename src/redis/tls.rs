//! Redis over TLS (`rediss://`) with the fleet's own certificates: the CA that signed
//! the Redis servers' certificates (`ca_file`, trusted instead of the system's roots,
//! since a Redis server's certificate is rarely from a public CA) and a client
//! certificate for servers that require one (`tls-auth-clients yes`). The files are
//! read once, when the daemon starts; the sentinels and every data node are reached
//! with them.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::RedisError;
use crate::config::RedisConfig;

/// The PEM files of `[cache.redis]`, read.
#[derive(Clone, Default)]
pub struct TlsFiles {
    /// `ca_file`: without it, the system's roots.
    root_cert: Option<Vec<u8>>,
    /// `client_cert` and `client_key`.
    client: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsFiles {
    /// Reads and checks the files `config` names (none named: nothing to read). An
    /// error names the setting and the file.
    pub fn load(config: &RedisConfig) -> Result<Self, RedisError> {
        let root_cert = match &config.ca_file {
            Some(path) => Some(read("cache.redis.ca_file", path, |pem| {
                let certs = CertificateDer::pem_slice_iter(pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| e.to_string())?;
                if certs.is_empty() {
                    return Err("no certificates found".into());
                }
                Ok(())
            })?),
            None => None,
        };
        let client = match (&config.client_cert, &config.client_key) {
            (Some(cert), Some(key)) => Some((
                read("cache.redis.client_cert", cert, |pem| {
                    CertificateDer::from_pem_slice(pem)
                        .map(drop)
                        .map_err(|e| e.to_string())
                })?,
                read("cache.redis.client_key", key, |pem| {
                    PrivateKeyDer::from_pem_slice(pem)
                        .map(drop)
                        .map_err(|e| e.to_string())
                })?,
            )),
            _ => None,
        };
        Ok(TlsFiles { root_cert, client })
    }

    /// A client for `url`: with this CA and client certificate when the url is
    /// `rediss://` and any was given, otherwise as the url alone says.
    pub fn client(&self, url: &str) -> Result<::redis::Client, RedisError> {
        let tls = url.starts_with("rediss://");
        if !tls || (self.root_cert.is_none() && self.client.is_none()) {
            return Ok(::redis::Client::open(url)?);
        }
        // redis builds its rustls configuration on the process's default crypto
        // provider, and panics without one: the binary installs ring's at start, a
        // library user (a test, a benchmark) may not have.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certificates = ::redis::TlsCertificates {
            client_tls: self
                .client
                .as_ref()
                .map(|(cert, key)| ::redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: self.root_cert.clone(),
        };
        Ok(::redis::Client::build_with_tls(url, certificates)?)
    }
}

/// The bytes of `path`, once `check` accepts them as what `setting` wants.
fn read(
    setting: &'static str,
    path: &Path,
    check: impl Fn(&[u8]) -> Result<(), String>,
) -> Result<Vec<u8>, RedisError> {
    let fail = |message: String| RedisError::File {
        setting,
        path: path.display().to_string(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    check(&bytes).map_err(fail)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(files: &[(&str, &str)], dir: &Path) -> RedisConfig {
        let mut c = RedisConfig {
            url: "rediss://127.0.0.1:6380/0".into(),
            ..RedisConfig::default()
        };
        for (setting, text) in files {
            let path = dir.join(setting);
            std::fs::write(&path, text).unwrap();
            match *setting {
                "ca_file" => c.ca_file = Some(path),
                "client_cert" => c.client_cert = Some(path),
                "client_key" => c.client_key = Some(path),
                other => panic!("{other}"),
            }
        }
        c
    }

    #[test]
    fn files_that_are_not_what_their_setting_wants_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = |files: &[(&str, &str)]| {
            TlsFiles::load(&config(files, dir.path()))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(
            err(&[("ca_file", "not a certificate")])
                .starts_with("cache.redis.ca_file: cannot use "),
            "{}",
            err(&[("ca_file", "")])
        );
        assert!(err(&[("ca_file", "")]).ends_with("no certificates found"));
        let mut missing = config(&[], dir.path());
        missing.ca_file = Some(dir.path().join("absent.pem"));
        assert!(
            TlsFiles::load(&missing)
                .err()
                .is_some_and(|e| e.to_string().contains("absent.pem")),
        );
        assert!(
            err(&[("client_cert", "x"), ("client_key", "y")])
                .starts_with("cache.redis.client_cert: ")
        );
    }

    #[test]
    fn plain_urls_and_no_files_take_the_url_alone() {
        let files = TlsFiles::default();
        assert!(files.client("redis://127.0.0.1:6379/0").is_ok());
        assert!(files.client("rediss://127.0.0.1:6380/0").is_ok());
        assert!(TlsFiles::load(&RedisConfig::default()).is_ok());
    }
}
