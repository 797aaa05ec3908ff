//! Gathering what `mta-stsd doctor` judges: the daemon's configuration, the side of
//! each MTA found here (`postfix`: `postconf`, `postmap`, files and their
//! permissions; `exim`: Exim's own `-bP` and `-be`; `sendmail`: its `sendmail.cf`),
//! the DKIM key mailed reports are signed with, and the running daemon (`daemon`: a
//! probe lookup per map name in use, its metrics and admin API). The verdicts are the
//! pure functions of [`super`].

use std::path::PathBuf;

use super::Finding;
use crate::config::Config;

mod daemon;
mod exim;
mod postfix;
mod redis;
mod sendmail;

use daemon::daemon_checks;
use exim::exim_checks;
use postfix::postfix_checks;
use sendmail::sendmail_checks;

/// Where the setup's parts are.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The daemon's configuration file (`None`: the default path, or built-in
    /// defaults).
    pub config: Option<PathBuf>,
    /// Postfix's configuration directory.
    pub postfix_config: PathBuf,
    /// The resolver configuration Postfix uses (for DNSSEC's `options trust-ad`).
    pub resolv_conf: PathBuf,
    /// OpenDKIM's configuration.
    pub dkim_config: PathBuf,
    /// The command that runs Exim (Debian: `exim4`).
    pub exim: PathBuf,
    /// Sendmail's configuration.
    pub sendmail_cf: PathBuf,
}

/// Every finding about the setup, in the order the report prints them.
pub async fn run_checks(args: &Setup) -> Vec<Finding> {
    let mut checks = Vec::new();
    let path = Config::path_or_default(args.config.as_deref());
    let shown = path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "built-in defaults".into());
    let config = match Config::load(path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            // Without the daemon's configuration nothing else can be compared.
            let fix = match &e {
                crate::config::ConfigError::Read { path, .. } => format!(
                    "make {} readable by this user, or run doctor as root (sudo mta-stsd doctor)",
                    path.display()
                ),
                _ => format!(
                    "correct the setting named above in {shown}; mta-stsd check-config {shown} lists every problem"
                ),
            };
            checks.push(Finding::problem("mta-stsd.config", format!("{e}"), fix));
            return checks;
        }
    };
    checks.push(Finding::ok("mta-stsd.config", format!("{shown} is valid")));
    let listeners = config.server.listen.clone();

    // Each MTA found here gets its own checks; Postfix's absence is a problem only
    // when no other MTA asks the daemon.
    let mut others = Vec::new();
    let exim = exim_checks(&args.exim, &listeners, &mut others);
    let sendmail = sendmail_checks(&args.sendmail_cf, &config, &listeners, &mut others);
    let other_mta = exim.is_some() || sendmail.is_some();
    let mut used = postfix_checks(args, &config, &listeners, other_mta, &mut checks);
    checks.extend(others);
    used.extend(exim.into_iter().flatten());
    used.extend(sendmail.into_iter().flatten());
    if config.tlsrpt.enable {
        checks.extend(dkim_key_checks(&args.dkim_config, &config).await);
    }
    daemon_checks(&config, &listeners, &used, &mut checks).await;
    redis::redis_checks(&config, &mut checks).await;
    checks
}

/// The DKIM keys OpenDKIM signs the submitter's domain with, each checked in DNS
/// (through the daemon's resolver) for a record that allows TLS reports. Nothing
/// when OpenDKIM is not configured here (another signer: not checked).
async fn dkim_key_checks(conf: &std::path::Path, config: &Config) -> Vec<Finding> {
    let Ok(text) = std::fs::read_to_string(conf) else {
        return Vec::new();
    };
    let submitter = config.tlsrpt.submitter_domain();
    let signers: Vec<(String, String)> =
        super::tlsrpt::opendkim_signers(&text, |p| std::fs::read_to_string(p).ok())
            .into_iter()
            .filter(|(domain, _)| *domain == submitter)
            .collect();
    if signers.is_empty() {
        return vec![Finding::warning(
            "tlsrpt.dkim",
            format!(
                "{} signs with no key of {submitter}, the reports' submitter: receivers check that the signature's d= is the submitter's domain",
                conf.display()
            ),
            format!("give OpenDKIM a key for {submitter} (KeyTable and SigningTable)"),
        )];
    }
    let resolver = match crate::net::resolver::build_resolver(&config.resolver, None) {
        Ok(r) => r,
        Err(e) => {
            return vec![Finding::warning(
                "tlsrpt.dkim",
                format!("cannot check the DKIM key: {e}"),
                "check [resolver]",
            )];
        }
    };
    let mut out = Vec::new();
    for (domain, selector) in signers {
        let key = format!("{selector}._domainkey.{domain}");
        let record = resolver
            .txt_lookup(format!("{key}."))
            .await
            .ok()
            .and_then(|answer| {
                answer.answers().iter().find_map(|r| match &r.data {
                    hickory_resolver::proto::rr::RData::TXT(txt) => {
                        let text: String = txt
                            .txt_data
                            .iter()
                            .map(|s| String::from_utf8_lossy(s).into_owned())
                            .collect();
                        text.contains("p=").then_some(text)
                    }
                    _ => None,
                })
            });
        out.push(super::tlsrpt::check_dkim_key(&key, record.as_deref()));
    }
    out
}
