//! Asking Postfix about its own configuration, with its own `postconf`: the one place
//! that runs it, for `[dane] mode = "auto"` and for `mta-stsd doctor`.

use std::path::Path;

/// Runs `postconf [-c DIR] ARGS...` and returns its output (trailing newline removed),
/// or the last line of its complaint.
pub fn postconf(config_dir: Option<&Path>, args: &[&str]) -> Result<String, String> {
    let mut cmd = std::process::Command::new("postconf");
    if let Some(dir) = config_dir {
        cmd.arg("-c").arg(dir);
    }
    let out = cmd
        .args(args)
        .output()
        .map_err(|e| format!("cannot run postconf: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(err
            .lines()
            .last()
            .unwrap_or("postconf failed")
            .trim()
            .to_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
}
