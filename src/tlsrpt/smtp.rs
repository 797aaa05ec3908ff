//! Handing a mailed report to the local MTA by SMTP (RFC 5321): EHLO, MAIL FROM with
//! the report's envelope sender, one RCPT, DATA, QUIT, over plain TCP to a loopback
//! listener (the MTA's own `smtpd`, whose milters, DKIM signing included, see the
//! message as they see any locally submitted mail).
//!
//! Why SMTP and not the MTA's `sendmail` program: the packaged service runs with
//! `NoNewPrivileges=yes`, under which Postfix's `sendmail` cannot run its setgid
//! `postdrop` (it loops on "mail_queue_enter: ... Permission denied"); a TCP
//! connection needs no privilege, and Exim and Sendmail sites submit the same way.
//!
//! Everything the session sends was checked before: the addresses by the
//! configuration and [`super::record`], the message by [`super::mail`]. Each reply is
//! read with a bound on its size, and the whole session with a deadline.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The longest reply line read, and the most lines one reply may have.
const MAX_LINE: u64 = 2048;
const MAX_LINES: usize = 64;

/// Why a submission failed. `permanent` is a 5xx reply: the MTA refuses this message
/// as it stands, and trying again soon will not help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpError {
    pub message: String,
    pub permanent: bool,
}

impl std::fmt::Display for SmtpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn io(server: SocketAddr, what: &str, e: &std::io::Error) -> SmtpError {
    SmtpError {
        message: format!("SMTP to {server}: {what}: {}", crate::io_error_text(e)),
        permanent: false,
    }
}

/// Submits `message` from `from` to `to` through the MTA at `server`, within
/// `timeout` for the whole session.
pub async fn submit(
    server: SocketAddr,
    helo: &str,
    from: &str,
    to: &str,
    message: &[u8],
    timeout: Duration,
) -> Result<(), SmtpError> {
    match tokio::time::timeout(timeout, session(server, helo, from, to, message)).await {
        Ok(result) => result,
        Err(_) => Err(SmtpError {
            message: format!("SMTP to {server}: no answer within {timeout:?}"),
            permanent: false,
        }),
    }
}

async fn session(
    server: SocketAddr,
    helo: &str,
    from: &str,
    to: &str,
    message: &[u8],
) -> Result<(), SmtpError> {
    let stream = TcpStream::connect(server)
        .await
        .map_err(|e| io(server, "cannot connect", &e))?;
    let mut s = BufReader::new(stream);
    expect(&mut s, server, "greeting", 220).await?;
    command(&mut s, server, &format!("EHLO {helo}"), 250).await?;
    command(&mut s, server, &format!("MAIL FROM:<{from}>"), 250).await?;
    command(&mut s, server, &format!("RCPT TO:<{to}>"), 250).await?;
    command(&mut s, server, "DATA", 354).await?;
    let data = dot_stuffed(message);
    s.get_mut()
        .write_all(&data)
        .await
        .map_err(|e| io(server, "sending the message", &e))?;
    expect(&mut s, server, "end of data", 250).await?;
    // The message is accepted: a failed QUIT changes nothing.
    let _ = s.get_mut().write_all(b"QUIT\r\n").await;
    Ok(())
}

/// Sends one command and expects a reply of class `want` (250 accepts 251 too).
async fn command(
    s: &mut BufReader<TcpStream>,
    server: SocketAddr,
    line: &str,
    want: u16,
) -> Result<(), SmtpError> {
    s.get_mut()
        .write_all(format!("{line}\r\n").as_bytes())
        .await
        .map_err(|e| io(server, "sending a command", &e))?;
    let verb = line.split([' ', ':']).next().unwrap_or(line);
    expect(s, server, verb, want).await
}

/// Reads one (possibly multi-line) reply and checks its code.
async fn expect(
    s: &mut BufReader<TcpStream>,
    server: SocketAddr,
    after: &str,
    want: u16,
) -> Result<(), SmtpError> {
    let (code, text) = reply(s)
        .await
        .map_err(|e| io(server, &format!("reading the reply to {after}"), &e))?;
    if code == want || (want == 250 && code == 251) {
        return Ok(());
    }
    Err(SmtpError {
        message: format!("SMTP to {server}: {after} answered {code} {text}"),
        permanent: (500..600).contains(&code),
    })
}

/// One reply: its code and its last line's text.
async fn reply(s: &mut BufReader<TcpStream>) -> std::io::Result<(u16, String)> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    for _ in 0..MAX_LINES {
        let mut line = String::new();
        let n = (&mut *s).take(MAX_LINE).read_line(&mut line).await?;
        if n == 0 {
            return Err(bad("connection closed"));
        }
        let line = line.trim_end();
        let code: u16 = line
            .get(..3)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| bad("not an SMTP reply"))?;
        match line.as_bytes().get(3) {
            Some(b'-') => continue,
            None | Some(b' ') => return Ok((code, line.get(4..).unwrap_or("").to_owned())),
            Some(_) => return Err(bad("not an SMTP reply")),
        }
    }
    Err(bad("reply too long"))
}

/// The message as DATA sends it (RFC 5321 §4.5.2): CRLF line ends, a line that starts
/// with "." gets one more, and the end-of-data line.
pub fn dot_stuffed(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 64);
    for line in message.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    // The split leaves an empty last line after a final line end: not a line.
    if message.ends_with(b"\n") {
        out.truncate(out.len() - 2);
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// The name this host gives in EHLO: its host name, or `localhost`.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name = if rc == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.".contains(c))
    {
        name
    } else {
        "localhost".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_dot_stuffed_and_ended() {
        assert_eq!(
            dot_stuffed(b"a\r\n.b\r\n..c\r\n"),
            b"a\r\n..b\r\n...c\r\n.\r\n"
        );
        assert_eq!(dot_stuffed(b"a\nb"), b"a\r\nb\r\n.\r\n");
        assert_eq!(dot_stuffed(b".\r\n"), b"..\r\n.\r\n");
    }

    #[test]
    fn the_host_name_is_usable_in_ehlo() {
        let name = host_name();
        assert!(!name.is_empty() && !name.contains(' '));
    }
}
