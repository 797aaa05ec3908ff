//! Facts from Exim's side, asked of Exim itself: its version (`-bV`), its routers
//! (`-bP router_list`), where the drop-ins send their questions (`-bP macro
//! MTA_STSD_SOCKET`), and one test lookup through its own `${readsocket}` (`-be`).

use std::path::Path;

use crate::config::{EXIM_ZONE, ListenAddr};
use crate::doctor::mta::{self, EXIM_ASK_ROUTER, EXIM_PROBE_FAILED};
use crate::doctor::{Finding, Socketmap};

/// Debian's answers to "General type of mail configuration" (update-exim4.conf(8)).
const DEBIAN_EXIM_CONF: &str = "/etc/exim4/update-exim4.conf.conf";

/// Runs `EXIM ARGS...`; its standard output, or its last line of error.
fn exim(command: &Path, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new(command)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", command.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(err.lines().last().unwrap_or("failed").trim().to_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
}

/// Debian's `dc_eximconfig_configtype='internet'`, when the file says.
fn debian_configtype() -> Option<String> {
    let text = std::fs::read_to_string(DEBIAN_EXIM_CONF).ok()?;
    text.lines().find_map(|l| {
        let v = l.trim().strip_prefix("dc_eximconfig_configtype=")?;
        Some(v.trim_matches(['\'', '"']).to_owned())
    })
}

/// The Exim checks, when `command` runs (otherwise Exim is not here: `None`). Returns
/// whether Exim is installed, and the map Exim asks through, with the listener it
/// reaches, for the daemon's probes.
pub(super) fn exim_checks(
    command: &Path,
    listeners: &[ListenAddr],
    checks: &mut Vec<Finding>,
) -> Option<Vec<(Socketmap, ListenAddr)>> {
    let version = exim(command, &["-bV"]).ok()?;
    let version = version.lines().next().unwrap_or("Exim").trim().to_owned();
    checks.push(Finding::ok("exim.config", version));
    let routers = exim(command, &["-bP", "router_list"]).unwrap_or_default();
    let found = mta::check_exim_routers(&routers, debian_configtype().as_deref());
    let asks = routers.lines().any(|r| r.trim() == EXIM_ASK_ROUTER);
    checks.push(found);
    if !asks {
        return Some(Vec::new());
    }
    let socket = exim(command, &["-bP", "macro", "MTA_STSD_SOCKET"]).unwrap_or_default();
    let socket = socket
        .trim()
        .strip_prefix("MTA_STSD_SOCKET=")
        .unwrap_or(socket.trim())
        .to_owned();
    checks.push(mta::check_exim_socket(&socket, listeners));
    // A key with no domain: the daemon answers at once, without DNS or HTTPS.
    let request = format!("{EXIM_ZONE} [192.0.2.1]");
    let expression = format!(
        "${{readsocket{{MTA_STSD_SOCKET}}{{{}:{request},}}{{5s}}{{}}{{{EXIM_PROBE_FAILED}}}}}",
        request.len()
    );
    let probe = exim(command, &["-be", &expression]);
    checks.push(mta::check_exim_probe(
        probe.as_deref().map_err(String::as_str),
    ));
    let used = mta::exim_endpoint(&socket)
        .and_then(|e| {
            let l = mta::reaches(&e, listeners)?;
            Some((
                Socketmap {
                    table: format!("Exim's MTA_STSD_SOCKET {socket}"),
                    endpoint: e,
                    name: EXIM_ZONE.to_owned(),
                },
                l,
            ))
        })
        .into_iter()
        .collect();
    Some(used)
}
