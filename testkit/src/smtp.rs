//! A minimal receiving SMTP server for delivery tests: EHLO, optional STARTTLS with a
//! certificate chosen by SNI, MAIL, RCPT, DATA, QUIT. Each accepted message is written
//! to `mail_dir` as `RCPT.N.eml` (dot-stuffing undone), its envelope sender beside it
//! as `RCPT.N.from` and the whole MAIL command as `RCPT.N.mail` (to see parameters
//! such as REQUIRETLS). After STARTTLS the server announces REQUIRETLS (RFC 8689 §2:
//! only over TLS), so a sender's REQUIRETLS policy decides whether it may deliver.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::ca::{CertKind, TestCa};

/// Certificates by host name (SNI), shared by all TLS receivers.
#[derive(Clone)]
pub struct SmtpCerts {
    ca: TestCa,
    map: Arc<Mutex<HashMap<String, Arc<CertifiedKey>>>>,
    default: Arc<CertifiedKey>,
}

impl fmt::Debug for SmtpCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SmtpCerts")
    }
}

impl SmtpCerts {
    pub fn new(ca: TestCa) -> Self {
        let default = ca.certified_key(&["default.mx.invalid"], CertKind::Valid);
        SmtpCerts {
            ca,
            map: Arc::new(Mutex::new(HashMap::new())),
            default,
        }
    }

    /// The same SNI map, with another certificate for clients that send no SNI.
    pub fn with_default(&self, kind: CertKind) -> Self {
        SmtpCerts {
            ca: self.ca.clone(),
            map: self.map.clone(),
            default: self.ca.certified_key(&["default.mx.invalid"], kind),
        }
    }

    /// The SHA-256 digest of the certificate served for `host` (for a DANE-EE TLSA
    /// record `3 0 1`, RFC 6698 §2.1), if one is set.
    pub fn sha256(&self, host: &str) -> Option<[u8; 32]> {
        let map = self.map.lock().ok()?;
        let key = map.get(&host.to_ascii_lowercase())?;
        let leaf = key.cert.first()?;
        let digest = ring::digest::digest(&ring::digest::SHA256, leaf.as_ref());
        digest.as_ref().try_into().ok()
    }

    /// Serves a certificate of `kind` to clients asking for `host`.
    pub fn set(&self, host: &str, kind: CertKind) {
        let host = host.to_ascii_lowercase();
        let key = self.ca.certified_key(&[&host], kind);
        self.map.lock().expect("certs lock").insert(host, key);
    }
}

impl ResolvesServerCert for SmtpCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(sni) = hello.server_name() else {
            return Some(self.default.clone());
        };
        let map = self.map.lock().ok()?;
        Some(
            map.get(&sni.to_ascii_lowercase())
                .cloned()
                .unwrap_or_else(|| self.default.clone()),
        )
    }
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// Serves SMTP on `listener` until the task is dropped. `starttls = false` makes a
/// server that does not offer STARTTLS.
pub fn serve_smtp(
    listener: TcpListener,
    certs: Option<SmtpCerts>,
    mail_dir: PathBuf,
) -> tokio::task::JoinHandle<()> {
    let acceptor = certs.map(|c| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("tls versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(c));
        TlsAcceptor::from(Arc::new(config))
    });
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let mail_dir = mail_dir.clone();
            tokio::spawn(async move {
                let _ = session(stream, peer, acceptor, mail_dir).await;
            });
        }
    })
}

async fn session(
    stream: tokio::net::TcpStream,
    _peer: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    mail_dir: PathBuf,
) -> std::io::Result<()> {
    let mut plain = BufReader::new(stream);
    plain
        .get_mut()
        .write_all(b"220 mx.test ESMTP testworld\r\n")
        .await?;
    // Plain-text phase: until STARTTLS (or the whole session without it).
    match dialogue(&mut plain, acceptor.is_some(), false, &mail_dir).await? {
        Next::StartTls => {
            let Some(acceptor) = acceptor else {
                return Ok(());
            };
            let tls = acceptor.accept(plain.into_inner()).await?;
            let mut tls = BufReader::new(tls);
            dialogue(&mut tls, false, true, &mail_dir).await?;
        }
        Next::Done => {}
    }
    Ok(())
}

enum Next {
    StartTls,
    Done,
}

async fn dialogue<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut BufReader<S>,
    offer_tls: bool,
    secure: bool,
    mail_dir: &std::path::Path,
) -> std::io::Result<Next> {
    let mut rcpts: Vec<String> = Vec::new();
    let mut from = String::new();
    let mut mail = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        if s.read_line(&mut line).await? == 0 {
            return Ok(Next::Done);
        }
        let cmd = line.trim_end().to_owned();
        let upper = cmd.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            if offer_tls {
                "250-mx.test\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 8BITMIME\r\n".into()
            } else if secure {
                "250-mx.test\r\n250-PIPELINING\r\n250-REQUIRETLS\r\n250 8BITMIME\r\n".into()
            } else {
                "250-mx.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n".into()
            }
        } else if upper.starts_with("HELO") {
            "250 mx.test\r\n".into()
        } else if upper == "STARTTLS" && offer_tls {
            s.get_mut()
                .write_all(b"220 2.0.0 Ready to start TLS\r\n")
                .await?;
            s.get_mut().flush().await?;
            return Ok(Next::StartTls);
        } else if upper.starts_with("MAIL FROM") {
            rcpts.clear();
            mail = cmd.clone();
            from = cmd
                .split_once('<')
                .and_then(|(_, r)| r.split_once('>'))
                .map(|(a, _)| a.to_owned())
                .unwrap_or_default();
            "250 2.1.0 Ok\r\n".into()
        } else if upper.starts_with("RCPT TO") {
            let addr = cmd
                .split_once('<')
                .and_then(|(_, r)| r.split_once('>'))
                .map(|(a, _)| a.to_ascii_lowercase())
                .unwrap_or_default();
            rcpts.push(addr);
            "250 2.1.5 Ok\r\n".into()
        } else if upper == "DATA" {
            s.get_mut()
                .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                .await?;
            s.get_mut().flush().await?;
            let mut body = String::new();
            loop {
                line.clear();
                if s.read_line(&mut line).await? == 0 {
                    return Ok(Next::Done);
                }
                if line == ".\r\n" || line == ".\n" {
                    break;
                }
                body.push_str(line.strip_prefix('.').unwrap_or(&line));
            }
            for r in &rcpts {
                let n = SEQ.fetch_add(1, Ordering::SeqCst);
                let safe: String = r
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '@' || c == '.' {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect();
                let _ = std::fs::write(mail_dir.join(format!("{safe}.{n}.eml")), &body);
                let _ = std::fs::write(mail_dir.join(format!("{safe}.{n}.from")), &from);
                let _ = std::fs::write(mail_dir.join(format!("{safe}.{n}.mail")), &mail);
            }
            "250 2.0.0 Ok: queued\r\n".into()
        } else if upper == "RSET" {
            rcpts.clear();
            "250 2.0.0 Ok\r\n".into()
        } else if upper == "NOOP" {
            "250 2.0.0 Ok\r\n".into()
        } else if upper == "QUIT" {
            s.get_mut().write_all(b"221 2.0.0 Bye\r\n").await?;
            s.get_mut().flush().await?;
            return Ok(Next::Done);
        } else {
            "502 5.5.2 Error: command not recognized\r\n".into()
        };
        s.get_mut().write_all(reply.as_bytes()).await?;
        s.get_mut().flush().await?;
    }
}
