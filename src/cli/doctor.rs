//! `mta-stsd doctor`: checks the live Postfix + mta-stsd setup ([`crate::doctor`]
//! gathers the facts and judges them) and prints the findings.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::doctor::gather::{Setup, run_checks};
use crate::doctor::{self, Finding, Level};

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
    /// The command that runs Exim (Debian's exim4); doctor checks Exim's side when
    /// it runs.
    #[arg(long, value_name = "COMMAND", default_value = "exim4")]
    pub exim: PathBuf,
    /// Sendmail's configuration; doctor checks Sendmail's side when it exists.
    #[arg(long, value_name = "FILE", default_value = "/etc/mail/sendmail.cf")]
    pub sendmail_cf: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn run(args: Args) -> anyhow::Result<ExitCode> {
    super::current_thread()?.block_on(command(args))
}

async fn command(args: Args) -> anyhow::Result<ExitCode> {
    let setup = Setup {
        config: args.config.clone(),
        postfix_config: args.postfix_config.clone(),
        resolv_conf: args.resolv_conf.clone(),
        dkim_config: args.dkim_config.clone(),
        exim: args.exim.clone(),
        sendmail_cf: args.sendmail_cf.clone(),
    };
    let checks = run_checks(&setup).await;
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
