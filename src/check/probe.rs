//! The network side of `mta-stsd check`: a TLS handshake with a policy host, and an
//! SMTP session with an MX host up to STARTTLS and its handshake, with the trust
//! anchors policy fetches use. Each step is bounded by a timeout, so a server that
//! hangs costs at most that.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// What a successful handshake showed of the server's certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertFacts {
    /// The leaf certificate's notAfter, epoch seconds.
    pub not_after: Option<u64>,
    /// The chain the server presented (DER, leaf first), for DANE's TLSA matching.
    #[serde(skip)]
    pub chain: Vec<Vec<u8>>,
}

/// What an SMTP session with one MX host found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SmtpProbe {
    pub host: String,
    /// The address tried.
    pub address: Option<IpAddr>,
    /// Connected and greeted (`220`), or why not.
    pub reached: Result<(), String>,
    /// Whether EHLO offered STARTTLS.
    pub starttls: bool,
    /// The handshake after STARTTLS, verified for `host`.
    pub tls: Option<Result<CertFacts, String>>,
}

/// A TLS handshake with `addr`, verified for `name` (Web PKI, the given trust).
pub async fn tls_probe(
    addr: SocketAddr,
    name: &str,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<CertFacts, String> {
    let run = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {}", crate::io_error_text(&e)))?;
        handshake(tcp, name, tls).await
    };
    tokio::time::timeout(timeout, run)
        .await
        .unwrap_or_else(|_| Err(format!("no TLS handshake with {addr} within {timeout:?}")))
}

async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    name: &str,
    tls: Arc<rustls::ClientConfig>,
) -> Result<CertFacts, String> {
    let mut config = (*tls).clone();
    config.alpn_protocols.clear();
    let server = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
    let conn = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server, stream)
        .await
        .map_err(|e| certificate_error(&e))?;
    let chain: Vec<Vec<u8>> = conn
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|d| d.as_ref().to_vec()).collect())
        .unwrap_or_default();
    Ok(CertFacts {
        not_after: chain.first().and_then(|leaf| not_after(leaf)),
        chain,
    })
}

/// A failed handshake in words an administrator acts on.
fn certificate_error(e: &std::io::Error) -> String {
    let text = e.to_string();
    let lower = text.to_ascii_lowercase().replace(' ', "");
    let why = if lower.contains("notvalidforname") {
        "the certificate is not valid for this name"
    } else if lower.contains("expired") {
        "the certificate has expired"
    } else if lower.contains("unknownissuer") {
        "the certificate is not from a trusted CA (or the chain is incomplete)"
    } else {
        return format!("TLS handshake failed: {text}");
    };
    format!("{why} ({text})")
}

/// An SMTP session with `host` on `port`: greeting, EHLO, STARTTLS, handshake.
pub async fn smtp_probe(
    host: &str,
    address: Option<IpAddr>,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> SmtpProbe {
    let mut probe = SmtpProbe {
        host: host.to_owned(),
        address,
        reached: Err("no address".into()),
        starttls: false,
        tls: None,
    };
    let Some(ip) = address else {
        probe.reached = Err(format!("{host} has no address"));
        return probe;
    };
    let addr = SocketAddr::new(ip, port);
    let run = async {
        let mut tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {}", crate::io_error_text(&e)))?;
        let (read, mut write) = tcp.split();
        let mut read = BufReader::new(read);
        let greeting = reply(&mut read).await?;
        if !greeting.starts_with("220") {
            return Err(format!("greeting {greeting:?}"));
        }
        write
            .write_all(b"EHLO mta-stsd-check.invalid\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let ehlo = reply(&mut read).await?;
        let starttls = ehlo.starts_with("250")
            && ehlo.lines().any(|l| {
                l.get(4..)
                    .is_some_and(|k| k.trim().eq_ignore_ascii_case("STARTTLS"))
            });
        if !starttls {
            return Ok((false, None));
        }
        write
            .write_all(b"STARTTLS\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let go = reply(&mut read).await?;
        if !go.starts_with("220") {
            return Ok((true, Some(Err(format!("STARTTLS answered {go:?}")))));
        }
        drop(read);
        Ok((true, Some(handshake(tcp, host, tls).await)))
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok((starttls, tls))) => {
            probe.reached = Ok(());
            probe.starttls = starttls;
            probe.tls = tls;
        }
        Ok(Err(e)) => probe.reached = Err(e),
        Err(_) => probe.reached = Err(format!("no SMTP session with {addr} within {timeout:?}")),
    }
    probe
}

/// One SMTP reply, all its lines (`250-...` continues, `250 ...` ends).
async fn reply<R: AsyncBufReadExt + Unpin>(r: &mut R) -> Result<String, String> {
    let mut all = String::new();
    for _ in 0..100 {
        let mut line = String::new();
        let n = r.read_line(&mut line).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed".into());
        }
        let last = line.as_bytes().get(3) != Some(&b'-');
        all.push_str(line.trim_end());
        all.push('\n');
        if last {
            return Ok(all);
        }
    }
    Err("reply too long".into())
}

/// The notAfter of an X.509 certificate (DER): Certificate → tbsCertificate →
/// (version) serialNumber, signature, issuer, validity → notAfter.
pub fn not_after(der: &[u8]) -> Option<u64> {
    let (_, cert, _) = tlv(der)?;
    let (_, mut tbs, _) = tlv(cert)?;
    let (tag, _, rest) = tlv(tbs)?;
    if tag == 0xa0 {
        tbs = rest; // explicit version
    }
    for _ in 0..3 {
        let (_, _, rest) = tlv(tbs)?; // serial, signature, issuer
        tbs = rest;
    }
    let (_, validity, _) = tlv(tbs)?;
    let (_, _, rest) = tlv(validity)?; // notBefore
    let (tag, time, _) = tlv(rest)?;
    let text = std::str::from_utf8(time).ok()?;
    let full = match tag {
        0x17 if text.len() == 13 => {
            let yy: u32 = text[..2].parse().ok()?;
            format!("{}{}", if yy >= 50 { "19" } else { "20" }, text)
        }
        0x18 if text.len() == 15 => text.to_owned(),
        _ => return None,
    };
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &full[..4],
        &full[4..6],
        &full[6..8],
        &full[8..10],
        &full[10..12],
        &full[12..14]
    );
    humantime::parse_rfc3339(&rfc3339)
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// The SubjectPublicKeyInfo of an X.509 certificate (DER, whole), what a TLSA record
/// with selector 1 is about (RFC 6698 §2.1.2).
pub fn spki(der: &[u8]) -> Option<&[u8]> {
    let (_, cert, _) = tlv(der)?;
    let (_, mut tbs, _) = tlv(cert)?;
    let (tag, _, rest) = tlv(tbs)?;
    if tag == 0xa0 {
        tbs = rest;
    }
    // serial, signature, issuer, validity, subject
    for _ in 0..5 {
        let (_, _, rest) = tlv(tbs)?;
        tbs = rest;
    }
    let (_, _, rest) = tlv(tbs)?;
    Some(&tbs[..tbs.len() - rest.len()])
}

/// One DER TLV: (tag, value, rest).
fn tlv(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *data.first()?;
    let first = *data.get(1)?;
    let (len, header) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for b in data.get(2..2 + n)? {
            len = (len << 8) | *b as usize;
        }
        (len, 2 + n)
    };
    let value = data.get(header..header + len)?;
    Some((tag, value, &data[header + len..]))
}
