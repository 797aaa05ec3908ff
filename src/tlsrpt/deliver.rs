//! Sending one report to one destination (RFC 8460 §5): an HTTPS POST of the gzip
//! report, or the §5.3 message handed to the local MTA (by SMTP, see [`super::smtp`],
//! or through a `sendmail` program). The HTTPS client is discovery's, so uploads
//! follow the same Web PKI rules, timeouts and refusal of private addresses as policy
//! fetches.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Child;

use super::record;
use super::smtp::SmtpError;

/// How long the local MTA (its SMTP listener, or its sendmail program) may take to
/// accept a message. Shorter than the admin API client's wait, so that `tlsrpt send`
/// always hears what happened.
pub const MAIL_TIMEOUT: Duration = Duration::from_secs(30);

/// Redirects followed for one upload.
const MAX_REDIRECTS: usize = 5;

/// Why a try failed. `permanent`: trying again cannot help (a 4xx refusal, a 5xx from
/// the MTA, a redirect to where reports must not go), so the delivery is given up at
/// once instead of retried for a day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub message: String,
    pub permanent: bool,
}

impl Failure {
    fn transient(message: String) -> Failure {
        Failure {
            message,
            permanent: false,
        }
    }
}

impl From<SmtpError> for Failure {
    fn from(e: SmtpError) -> Failure {
        Failure {
            message: e.message,
            permanent: e.permanent,
        }
    }
}

/// Whether an HTTP status refuses the report for good: a 4xx other than 408 (request
/// timeout) and 429 (too many requests), which ask to come back later.
pub fn http_permanent(status: u16) -> bool {
    (400..500).contains(&status) && status != 408 && status != 429
}

/// POSTs the gzip report (`Content-Type: application/tlsrpt+gzip`, §5.4). Any 2xx
/// answer is a delivery. A 307 or 308 redirect (which keep the method and body, RFC
/// 9110 §15.4.8-9) is followed to an `https:` URL with a host name, whose address the
/// client's resolver checks as for any upload; 301/302/303 would turn the POST into
/// a GET and are not followed.
pub async fn https(
    client: &reqwest::Client,
    url: &reqwest::Url,
    gzip: Vec<u8>,
) -> Result<(), Failure> {
    let mut url = url.clone();
    for _ in 0..=MAX_REDIRECTS {
        let response = client
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/tlsrpt+gzip")
            .body(gzip.clone())
            .send()
            .await
            .map_err(|e| Failure::transient(crate::net::error_chain(&e)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        if status.as_u16() == 307 || status.as_u16() == 308 {
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let next = url.join(location).map_err(|e| Failure {
                message: format!(
                    "HTTP status {status} with an unusable Location {location:?}: {e}"
                ),
                permanent: true,
            })?;
            url = record::https_url(next.as_str()).map_err(|why| Failure {
                message: format!("HTTP status {status}: redirect to {next} refused: {why}"),
                permanent: true,
            })?;
            continue;
        }
        return Err(Failure {
            message: format!("HTTP status {status}"),
            permanent: http_permanent(status.as_u16()),
        });
    }
    Err(Failure {
        message: format!("more than {MAX_REDIRECTS} redirects"),
        permanent: true,
    })
}

/// Runs `PROGRAM -f FROM -i -t` with `message` on its standard input (recipients from
/// the message's `To:`; the envelope sender is `from`, so bounces and SPF land on the
/// report address; nothing comes from the report or its destination). The program
/// runs in a process group of its own: on timeout the whole group is killed, Postfix's
/// `postdrop` child included.
pub async fn sendmail(
    program: &Path,
    from: &str,
    message: &[u8],
    timeout: Duration,
) -> Result<(), Failure> {
    let mut child = tokio::process::Command::new(program)
        .args(["-f", from, "-i", "-t"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            Failure::transient(format!(
                "cannot run {}: {}",
                program.display(),
                crate::io_error_text(&e)
            ))
        })?;
    let group = child.id();
    match tokio::time::timeout(timeout, run(program, &mut child, message)).await {
        Ok(result) => result,
        Err(_) => {
            if let Some(pid) = group.and_then(|p| i32::try_from(p).ok()) {
                // SAFETY: kill(2) with a negative pid signals that process group; the
                // group is the child's own (process_group(0) above).
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
            let _ = child.wait().await;
            Err(Failure::transient(format!(
                "{} did not finish within {timeout:?} and was killed with what it started \
                 (Postfix's sendmail cannot run its setgid postdrop under NoNewPrivileges=yes: \
                 leave [tlsrpt] sendmail unset to submit reports by SMTP)",
                program.display()
            )))
        }
    }
}

async fn run(program: &Path, child: &mut Child, message: &[u8]) -> Result<(), Failure> {
    let failed = |what: &str, e: &std::io::Error| {
        Failure::transient(format!(
            "{what} {}: {}",
            program.display(),
            crate::io_error_text(e)
        ))
    };
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(message)
            .await
            .map_err(|e| failed("writing to", &e))?;
        // Closing standard input ends the message.
        drop(stdin);
    }
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = (&mut e).take(4096).read_to_string(&mut stderr).await;
    }
    let status = child.wait().await.map_err(|e| failed("waiting for", &e))?;
    if status.success() {
        return Ok(());
    }
    let said = stderr.lines().next().unwrap_or("").trim();
    Err(Failure::transient(format!(
        "{} exited with {status}{}{said}",
        program.display(),
        if said.is_empty() { "" } else { ": " }
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[tokio::test]
    async fn sendmail_gets_the_message_and_its_failures_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let ok = script(
            dir.path(),
            "ok.sh",
            &format!("echo \"$@\" > {0}.args\ncat > {0}\n", out.display()),
        );
        let fail = script(
            dir.path(),
            "fail.sh",
            "cat >/dev/null\necho 'queue full' >&2\nexit 75\n",
        );
        sendmail(
            &ok,
            "tlsrpt@sender.test",
            b"To: a@b.test\r\n\r\nhi\r\n",
            MAIL_TIMEOUT,
        )
        .await
        .unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"To: a@b.test\r\n\r\nhi\r\n");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("out.args")).unwrap(),
            "-f tlsrpt@sender.test -i -t\n"
        );
        let e = sendmail(&fail, "a@b.test", b"x", MAIL_TIMEOUT)
            .await
            .unwrap_err();
        assert!(
            e.message.contains("75") && e.message.contains("queue full"),
            "{e:?}"
        );
        let e = sendmail(&dir.path().join("missing"), "a@b.test", b"x", MAIL_TIMEOUT)
            .await
            .unwrap_err();
        assert!(e.message.contains("cannot run"), "{e:?}");
    }

    /// A sendmail that hangs (as Postfix's does when postdrop cannot write the
    /// maildrop) is killed on timeout with the children it started.
    #[tokio::test]
    async fn a_hung_sendmail_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        let hung = script(
            dir.path(),
            "hung.sh",
            &format!(
                "cat >/dev/null\nsleep 300 &\necho $! > {}\nwait\n",
                pidfile.display()
            ),
        );
        let e = sendmail(&hung, "a@b.test", b"x", Duration::from_millis(500))
            .await
            .unwrap_err();
        assert!(
            e.message.contains("did not finish") && e.message.contains("NoNewPrivileges"),
            "{e:?}"
        );
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The grandchild dies (gone, or a zombie until init reaps it): SIGKILL is
        // delivered at once, the state change is watched for at most 5 s.
        let state = || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .chars()
                .next()
        };
        for _ in 0..500 {
            if matches!(state(), None | Some('Z')) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the child {pid} still runs: {:?}", state());
    }

    #[test]
    fn permanent_http_refusals() {
        for s in [400, 401, 403, 404, 410, 413, 415] {
            assert!(http_permanent(s), "{s}");
        }
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(!http_permanent(s), "{s}");
        }
    }
}
