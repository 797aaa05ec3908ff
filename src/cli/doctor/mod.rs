//! `mta-stsd doctor`: checks the live Postfix + mta-stsd setup. The command gathers
//! the facts, from Postfix's side ([`postfix`]) and from the running daemon
//! ([`daemon`]); the verdicts are the pure functions of [`crate::doctor`].

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::Config;
use crate::doctor::{self, Finding, Level};

mod daemon;
mod postfix;

use daemon::daemon_checks;
use postfix::postfix_checks;

/// `mta-stsd doctor`'s arguments.
#[derive(clap::Args)]
pub struct Args {
    /// The daemon's configuration file (default: /etc/mta-stsd/mta-stsd.toml if it
    /// exists, else built-in defaults).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Postfix's configuration directory.
    #[arg(long, value_name = "DIR", default_value = "/etc/postfix")]
    pub postfix_config: PathBuf,
    /// The resolver configuration Postfix uses (for DNSSEC's `options trust-ad`).
    #[arg(long, value_name = "FILE", default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
    /// OpenDKIM's configuration, for the key that signs mailed TLS reports.
    #[arg(long, value_name = "FILE", default_value = "/etc/opendkim.conf")]
    pub dkim_config: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn run(args: Args) -> anyhow::Result<ExitCode> {
    super::current_thread()?.block_on(command(args))
}

async fn command(args: Args) -> anyhow::Result<ExitCode> {
    let checks = run_checks(&args).await;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        out!("{}", to_text(&checks));
    }
    Ok(ExitCode::from(doctor::worst(&checks).exit_code()))
}

fn to_text(checks: &[Finding]) -> String {
    let mut out = String::new();
    for c in checks {
        out.push_str(&format!(
            "{:<8} {:<26} {}\n",
            c.level.as_str(),
            c.check,
            c.message
        ));
        if let Some(fix) = &c.fix {
            out.push_str(&format!("{:<8} {:<26} fix: {fix}\n", "", ""));
        }
    }
    let count = |l| checks.iter().filter(|c| c.level == l).count();
    out.push_str(&format!(
        "doctor: ok {}, warning {}, problem {}\n",
        count(Level::Ok),
        count(Level::Warning),
        count(Level::Problem)
    ));
    out
}

async fn run_checks(args: &Args) -> Vec<Finding> {
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

    let used = postfix_checks(args, &config, &listeners, &mut checks);
    if config.tlsrpt.enable {
        checks.extend(dkim_key_checks(&args.dkim_config, &config).await);
    }
    daemon_checks(&config, &listeners, &used, &mut checks).await;
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
        doctor::tlsrpt::opendkim_signers(&text, |p| std::fs::read_to_string(p).ok())
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
        out.push(doctor::tlsrpt::check_dkim_key(&key, record.as_deref()));
    }
    out
}
