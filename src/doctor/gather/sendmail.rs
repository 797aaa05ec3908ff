//! Facts from Sendmail's side: the `sts` map and options in its `sendmail.cf` (what
//! `FEATURE(`sts')` wrote there).

use std::path::Path;

use crate::config::{Config, ListenAddr, SENDMAIL_ZONE};
use crate::doctor::mta;
use crate::doctor::{Finding, Socketmap};

/// The Sendmail checks, when `cf` exists (otherwise Sendmail is not here: `None`).
/// Returns the map Sendmail asks through, with the listener it reaches, for the
/// daemon's probes.
pub(super) fn sendmail_checks(
    cf: &Path,
    config: &Config,
    listeners: &[ListenAddr],
    checks: &mut Vec<Finding>,
) -> Option<Vec<(Socketmap, ListenAddr)>> {
    let text = match std::fs::read_to_string(cf) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            checks.push(Finding::problem(
                "sendmail.config",
                format!("cannot read {}: {e}", cf.display()),
                "run doctor as root (sudo mta-stsd doctor)",
            ));
            return Some(Vec::new());
        }
    };
    checks.push(Finding::ok(
        "sendmail.config",
        format!("Sendmail's configuration {}", cf.display()),
    ));
    let facts = mta::parse_sendmail_cf(&text);
    let deadline = config.deadline(&config.zone(SENDMAIL_ZONE));
    checks.extend(mta::check_sendmail(
        &cf.display().to_string(),
        &facts,
        listeners,
        deadline,
    ));
    let used = facts
        .map
        .and_then(|m| {
            let e = m.endpoint?;
            let l = mta::reaches(&e, listeners)?;
            Some((
                Socketmap {
                    table: m.line,
                    endpoint: e,
                    name: SENDMAIL_ZONE.to_owned(),
                },
                l,
            ))
        })
        .into_iter()
        .collect();
    Some(used)
}
