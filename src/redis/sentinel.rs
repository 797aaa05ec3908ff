//! Redis Sentinel: which node is the master now. The sentinels of a high-availability
//! set-up each monitor the master by name (`sentinel monitor NAME ...`), and promote a
//! replica when it dies; a client asks them `SENTINEL get-master-addr-by-name NAME`
//! and checks with `ROLE` that the node it is told about really is a master (a
//! sentinel may still name a demoted one for a moment after a failover).
//!
//! The data nodes are reached with the scheme, user, password and database of the
//! configured `url` (TLS with `rediss://`); only host and port differ. The sentinels
//! are reached with the same scheme and TLS, but with credentials of their own
//! (`sentinel_username`, `sentinel_password`; none by default): a sentinel usually
//! has no password (Debian's `sentinel.conf` sets none), and one that has none
//! refuses a client that offers one.

use std::time::Duration;

use futures::future::join_all;
use url::Url;

use super::RedisError;
use super::tls::TlsFiles;
use crate::config::{RedisConfig, parse_host_port};

/// What one sentinel said: the master's address, or why it named none.
pub type Answer = Result<(String, u16), String>;

/// The sentinels of one master name.
pub struct Sentinels {
    /// Scheme, user, password and database; host and port are replaced per node.
    template: Url,
    /// The sentinels' own: the scheme of `template`, their credentials, no database.
    sentinel_template: Url,
    /// `rediss://`'s CA and client certificate.
    tls: TlsFiles,
    sentinels: Vec<(String, u16)>,
    master_name: String,
    timeout: Duration,
}

/// A node's address, `host:port` (IPv6 in brackets).
pub fn display_addr(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl Sentinels {
    /// The sentinels of `config`, or `None` without any (a direct `url`).
    pub fn new(config: &RedisConfig, tls: TlsFiles) -> Result<Option<Self>, RedisError> {
        if config.sentinels.is_empty() {
            return Ok(None);
        }
        let template = Url::parse(&config.url).map_err(|e| RedisError::Value(e.to_string()))?;
        let mut sentinel_template = template.clone();
        let credentials =
            |()| RedisError::Value("the url cannot carry the sentinels' credentials".into());
        sentinel_template
            .set_username(&config.sentinel_username)
            .map_err(credentials)?;
        let password = Some(config.sentinel_password.as_str()).filter(|p| !p.is_empty());
        sentinel_template
            .set_password(password)
            .map_err(credentials)?;
        sentinel_template.set_path("");
        let sentinels = config
            .sentinels
            .iter()
            .map(|s| parse_host_port(s).map_err(RedisError::Value))
            .collect::<Result<_, _>>()?;
        Ok(Some(Sentinels {
            template,
            sentinel_template,
            tls,
            sentinels,
            master_name: config.master_name.clone(),
            timeout: config.timeout.max(Duration::from_millis(500)),
        }))
    }

    pub fn master_name(&self) -> &str {
        &self.master_name
    }

    /// The client for the data node at `host:port`.
    pub fn node_client(&self, host: &str, port: u16) -> Result<::redis::Client, RedisError> {
        let url = self.with_address(self.template.clone(), host, port)?;
        self.tls.client(url.as_str())
    }

    /// The client for a sentinel: the nodes' scheme and TLS, the sentinels' own
    /// credentials, no database.
    fn sentinel_client(&self, host: &str, port: u16) -> Result<::redis::Client, RedisError> {
        let url = self.with_address(self.sentinel_template.clone(), host, port)?;
        self.tls.client(url.as_str())
    }

    fn with_address(&self, mut url: Url, host: &str, port: u16) -> Result<Url, RedisError> {
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        url.set_host(Some(&host))
            .map_err(|e| RedisError::Value(e.to_string()))?;
        url.set_port(Some(port))
            .map_err(|()| RedisError::Value("cannot set the port".into()))?;
        Ok(url)
    }

    /// Every sentinel asked at once for the master's address; each one's answer, in
    /// configuration order.
    pub async fn ask(&self) -> Vec<Answer> {
        let asks = self.sentinels.iter().map(|(host, port)| async move {
            let client = self
                .sentinel_client(host, *port)
                .map_err(|e| e.to_string())?;
            let query = async {
                let mut conn = client.get_multiplexed_async_connection().await?;
                ::redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(&self.master_name)
                    .query_async::<Option<(String, u16)>>(&mut conn)
                    .await
            };
            match tokio::time::timeout(self.timeout, query).await {
                Err(_) => Err(format!("no answer within {:?}", self.timeout)),
                Ok(Err(e)) => Err(e.to_string()),
                Ok(Ok(None)) => Err(format!("knows no master named {:?}", self.master_name)),
                Ok(Ok(Some(addr))) => Ok(addr),
            }
        });
        join_all(asks).await
    }

    /// The current master: the address most sentinels name, checked with `ROLE`.
    pub async fn master(&self) -> Result<(String, u16), RedisError> {
        self.confirm(&self.ask().await).await
    }

    /// The address most of `answers` (from [`Sentinels::ask`]) name, checked with
    /// `ROLE`.
    pub async fn confirm(&self, answers: &[Answer]) -> Result<(String, u16), RedisError> {
        let (host, port) = majority(answers).ok_or_else(|| {
            RedisError::Value(format!(
                "no sentinel names a master for {:?}",
                self.master_name
            ))
        })?;
        let client = self.node_client(&host, port)?;
        let role = async {
            let mut conn = client.get_multiplexed_async_connection().await?;
            ::redis::cmd("ROLE")
                .query_async::<Vec<::redis::Value>>(&mut conn)
                .await
        };
        let role = tokio::time::timeout(self.timeout, role)
            .await
            .map_err(|_| RedisError::Timeout(self.timeout))??;
        let first = role_name(&role);
        if first.as_deref() == Some("master") {
            Ok((host, port))
        } else {
            Err(RedisError::Value(format!(
                "{} is named master by the sentinels but is a {}",
                display_addr(&host, port),
                first.unwrap_or_else(|| "node of unknown role".into())
            )))
        }
    }
}

/// The role a `ROLE` reply names first (`master`, `slave`, `sentinel`).
pub fn role_name(role: &[::redis::Value]) -> Option<String> {
    role.first()
        .and_then(|v| ::redis::from_redis_value_ref::<String>(v).ok())
}

/// The address most sentinels name; among equally named ones, the first named.
pub fn majority(answers: &[Answer]) -> Option<(String, u16)> {
    let named: Vec<&(String, u16)> = answers.iter().flatten().collect();
    let count = |a: &(String, u16)| named.iter().filter(|b| **b == a).count();
    let mut best: Option<(&(String, u16), usize)> = None;
    for a in &named {
        let n = count(a);
        if best.is_none_or(|(_, m)| n > m) {
            best = Some((a, n));
        }
    }
    best.map(|(a, _)| a.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(host: &str, port: u16) -> Answer {
        Ok((host.to_owned(), port))
    }

    fn silent() -> Answer {
        Err("no answer".into())
    }

    #[test]
    fn majority_of_the_sentinels_that_answer() {
        assert_eq!(majority(&[]), None);
        assert_eq!(majority(&[silent(), silent()]), None);
        assert_eq!(
            majority(&[silent(), at("10.0.0.2", 6379)]),
            at("10.0.0.2", 6379).ok()
        );
        // Mid-failover, one sentinel still names the old master.
        assert_eq!(
            majority(&[
                at("10.0.0.1", 6379),
                at("10.0.0.2", 6379),
                at("10.0.0.2", 6379)
            ]),
            at("10.0.0.2", 6379).ok()
        );
        // A tie: the first named.
        assert_eq!(
            majority(&[at("10.0.0.1", 6379), at("10.0.0.2", 6379)]),
            at("10.0.0.1", 6379).ok()
        );
    }

    #[test]
    fn nodes_and_sentinels_share_scheme_and_tls_but_not_credentials() {
        let mut config = RedisConfig {
            url: "rediss://fleet:s3cret@placeholder/2".into(),
            sentinels: vec!["10.0.0.1:26379".into(), "[::1]:26380".into()],
            master_name: "mta-stsd".into(),
            ..RedisConfig::default()
        };
        let s = Sentinels::new(&config, TlsFiles::default())
            .unwrap()
            .unwrap();
        let node = s
            .with_address(s.template.clone(), "10.0.0.9", 6380)
            .unwrap();
        assert_eq!(node.as_str(), "rediss://fleet:s3cret@10.0.0.9:6380/2");
        let v6 = s.with_address(s.template.clone(), "::1", 26380).unwrap();
        assert_eq!(v6.as_str(), "rediss://fleet:s3cret@[::1]:26380/2");
        let sentinel = |s: &Sentinels| {
            s.with_address(s.sentinel_template.clone(), "10.0.0.1", 26379)
                .unwrap()
                .to_string()
        };
        assert_eq!(sentinel(&s), "rediss://10.0.0.1:26379");
        config.sentinel_password = "s3ntinel/pw".into();
        let s = Sentinels::new(&config, TlsFiles::default())
            .unwrap()
            .unwrap();
        assert_eq!(sentinel(&s), "rediss://:s3ntinel%2Fpw@10.0.0.1:26379");
        config.sentinel_username = "watcher".into();
        let s = Sentinels::new(&config, TlsFiles::default())
            .unwrap()
            .unwrap();
        assert_eq!(
            sentinel(&s),
            "rediss://watcher:s3ntinel%2Fpw@10.0.0.1:26379"
        );
        assert_eq!(s.sentinels[1], ("::1".to_owned(), 26380));
        assert!(
            Sentinels::new(&RedisConfig::default(), TlsFiles::default())
                .unwrap()
                .is_none()
        );
        assert_eq!(display_addr("::1", 6379), "[::1]:6379");
    }
}
