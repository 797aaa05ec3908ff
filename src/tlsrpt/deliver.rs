//! Sending one report to one destination (RFC 8460 §5): an HTTPS POST of the gzip
//! report, or the §5.3 message handed to the local MTA's sendmail. The HTTPS client
//! is discovery's, so uploads follow the same Web PKI rules, timeouts and refusal of
//! private addresses as policy fetches.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long sendmail may take to accept a message.
pub const SENDMAIL_TIMEOUT: Duration = Duration::from_secs(60);

/// POSTs the gzip report (`Content-Type: application/tlsrpt+gzip`, §5.4). Any 2xx
/// answer is a delivery.
pub async fn https(
    client: &reqwest::Client,
    url: &reqwest::Url,
    gzip: Vec<u8>,
) -> Result<(), String> {
    let response = client
        .post(url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/tlsrpt+gzip")
        .body(gzip)
        .send()
        .await
        .map_err(|e| crate::mtasts::discovery::error_chain(&e))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("HTTP status {status}"))
    }
}

/// Runs `sendmail -i -t` with `message` on its standard input (recipients from the
/// message's `To:`; no argument comes from the report or its destination).
pub async fn sendmail(program: &Path, message: &[u8], timeout: Duration) -> Result<(), String> {
    let mut child = tokio::process::Command::new(program)
        .args(["-i", "-t"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            format!(
                "cannot run {}: {}",
                program.display(),
                crate::io_error_text(&e)
            )
        })?;
    let run = async {
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(message).await.map_err(|e| {
                format!(
                    "writing to {}: {}",
                    program.display(),
                    crate::io_error_text(&e)
                )
            })?;
            // Closing standard input ends the message.
            drop(stdin);
        }
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = (&mut e).take(4096).read_to_string(&mut stderr).await;
        }
        let status = child.wait().await.map_err(|e| {
            format!(
                "waiting for {}: {}",
                program.display(),
                crate::io_error_text(&e)
            )
        })?;
        if status.success() {
            Ok(())
        } else {
            let said = stderr.lines().next().unwrap_or("").trim();
            Err(format!(
                "{} exited with {status}{}{said}",
                program.display(),
                if said.is_empty() { "" } else { ": " }
            ))
        }
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "{} did not finish within {timeout:?}",
            program.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sendmail_gets_the_message_and_its_failures_are_reported() {
        let dir = std::env::temp_dir().join(format!("mta-stsd-sendmail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out");
        let ok = dir.join("ok.sh");
        std::fs::write(
            &ok,
            format!(
                "#!/bin/sh\necho \"$@\" > {0}.args\ncat > {0}\n",
                out.display()
            ),
        )
        .unwrap();
        let fail = dir.join("fail.sh");
        std::fs::write(
            &fail,
            "#!/bin/sh\ncat >/dev/null\necho 'queue full' >&2\nexit 75\n",
        )
        .unwrap();
        for p in [&ok, &fail] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        sendmail(&ok, b"To: a@b.test\r\n\r\nhi\r\n", SENDMAIL_TIMEOUT)
            .await
            .unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"To: a@b.test\r\n\r\nhi\r\n");
        assert_eq!(
            std::fs::read_to_string(dir.join("out.args")).unwrap(),
            "-i -t\n"
        );
        let e = sendmail(&fail, b"x", SENDMAIL_TIMEOUT).await.unwrap_err();
        assert!(e.contains("75") && e.contains("queue full"), "{e}");
        let e = sendmail(&dir.join("missing"), b"x", SENDMAIL_TIMEOUT)
            .await
            .unwrap_err();
        assert!(e.contains("cannot run"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
