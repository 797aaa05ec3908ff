use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;

use crate::ca::{CertKind, TestCa};

/// What the server answers for one host.
#[derive(Debug, Clone)]
pub enum HttpResponse {
    /// 200, `text/plain`, this body.
    Policy(String),
    /// Anything else.
    Raw {
        status: u16,
        content_type: Option<String>,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Accept and read the request, then never answer.
    Hang,
    /// Wait, then answer.
    Delay(Duration, Box<HttpResponse>),
}

/// A request the server received, whole (for tests of uploads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Hosts {
    certs: HashMap<String, Arc<CertifiedKey>>,
    responses: HashMap<String, HttpResponse>,
    hits: HashMap<String, usize>,
    received: HashMap<String, Vec<Received>>,
}

struct State {
    ca: TestCa,
    hosts: Mutex<Hosts>,
    request_seen: Notify,
}

struct SniResolver(Arc<State>);

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SniResolver")
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name()?.to_ascii_lowercase();
        self.0.hosts.lock().ok()?.certs.get(&sni).cloned()
    }
}

/// An HTTPS server on 127.0.0.1 that picks certificate and response by SNI. Clones
/// are handles to the same server, which stops when the last one is dropped.
#[derive(Clone)]
pub struct TestHttps {
    addr: SocketAddr,
    state: Arc<State>,
    _task: Arc<AbortOnDrop>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl TestHttps {
    pub async fn start(ca: TestCa) -> TestHttps {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind https");
        Self::serve(ca, listener)
    }

    /// Serves on an already bound listener (e.g. port 443 in a namespace).
    pub fn serve(ca: TestCa, listener: TcpListener) -> TestHttps {
        let addr = listener.local_addr().expect("https addr");
        let state = Arc::new(State {
            ca,
            hosts: Mutex::new(Hosts::default()),
            request_seen: Notify::new(),
        });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("tls versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SniResolver(state.clone())));
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let task_state = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let state = task_state.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let _ = handle(state, tls).await;
                });
            }
        });
        TestHttps {
            addr,
            state,
            _task: Arc::new(AbortOnDrop(task)),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `body` as a valid policy for `domain` with a valid certificate.
    pub fn set_policy(&self, domain: &str, body: &str) {
        self.set_response(domain, HttpResponse::Policy(body.to_owned()));
    }

    /// Sets the response for `mta-sts.DOMAIN` (issuing a valid certificate if none).
    pub fn set_response(&self, domain: &str, response: HttpResponse) {
        self.set_host_response(&format!("mta-sts.{domain}"), response);
    }

    /// Sets the response for the exact host name `host` (issuing a valid certificate
    /// if none), e.g. a report receiver's.
    pub fn set_host_response(&self, host: &str, response: HttpResponse) {
        let host = host.to_ascii_lowercase();
        let mut hosts = self.state.hosts.lock().expect("hosts lock");
        if !hosts.certs.contains_key(&host) {
            let cert = self.state.ca.certified_key(&[&host], CertKind::Valid);
            hosts.certs.insert(host.clone(), cert);
        }
        hosts.responses.insert(host, response);
    }

    /// Replaces the certificate served for `mta-sts.DOMAIN`.
    pub fn set_cert(&self, domain: &str, kind: CertKind) {
        let host = format!("mta-sts.{}", domain.to_ascii_lowercase());
        let cert = self.state.ca.certified_key(&[&host], kind);
        self.state
            .hosts
            .lock()
            .expect("hosts lock")
            .certs
            .insert(host, cert);
    }

    /// Stops answering for `mta-sts.DOMAIN` (TLS handshakes fail: no certificate).
    pub fn remove(&self, domain: &str) {
        let host = format!("mta-sts.{}", domain.to_ascii_lowercase());
        let mut hosts = self.state.hosts.lock().expect("hosts lock");
        hosts.certs.remove(&host);
        hosts.responses.remove(&host);
    }

    /// Requests received for `mta-sts.DOMAIN`.
    pub fn hits(&self, domain: &str) -> usize {
        let host = format!("mta-sts.{}", domain.to_ascii_lowercase());
        self.state
            .hosts
            .lock()
            .expect("hosts lock")
            .hits
            .get(&host)
            .copied()
            .unwrap_or(0)
    }

    /// Every request received for the exact host name `host`, in order.
    pub fn received(&self, host: &str) -> Vec<Received> {
        self.state
            .hosts
            .lock()
            .expect("hosts lock")
            .received
            .get(&host.to_ascii_lowercase())
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until at least `n` requests for the exact host name `host` arrived.
    pub async fn wait_for_received(&self, host: &str, n: usize) -> Vec<Received> {
        loop {
            let notified = self.state.request_seen.notified();
            let got = self.received(host);
            if got.len() >= n {
                return got;
            }
            notified.await;
        }
    }

    /// Waits until the server has received at least `n` requests for the domain.
    pub async fn wait_for_hits(&self, domain: &str, n: usize) {
        loop {
            let notified = self.state.request_seen.notified();
            if self.hits(domain) >= n {
                return;
            }
            notified.await;
        }
    }
}

async fn handle(
    state: Arc<State>,
    mut tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
) -> std::io::Result<()> {
    let host = tls
        .get_ref()
        .1
        .server_name()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tls.read(&mut chunk).await?;
        if n == 0 || buf.len() > 16 * 1024 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let received = read_request(&mut tls, buf).await?;
    let response = {
        let mut hosts = state.hosts.lock().expect("hosts lock");
        *hosts.hits.entry(host.clone()).or_default() += 1;
        hosts
            .received
            .entry(host.clone())
            .or_default()
            .push(received);
        hosts.responses.get(&host).cloned()
    };
    state.request_seen.notify_waiters();
    let mut response = response.unwrap_or(HttpResponse::Raw {
        status: 404,
        content_type: Some("text/plain".into()),
        headers: vec![],
        body: b"not found".to_vec(),
    });
    loop {
        match response {
            HttpResponse::Delay(d, inner) => {
                tokio::time::sleep(d).await;
                response = *inner;
            }
            HttpResponse::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return Ok(());
            }
            HttpResponse::Policy(body) => {
                return write_response(&mut tls, 200, Some("text/plain"), &[], body.as_bytes())
                    .await;
            }
            HttpResponse::Raw {
                status,
                content_type,
                headers,
                body,
            } => {
                return write_response(&mut tls, status, content_type.as_deref(), &headers, &body)
                    .await;
            }
        }
    }
}

/// The request whose head (and perhaps part of its body) is in `buf`, with the rest
/// of its body (`Content-Length`, at most 1 MiB) read.
async fn read_request(
    tls: &mut tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    buf: Vec<u8>,
) -> std::io::Result<Received> {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(buf.len());
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut body = buf.get(end + 4..).unwrap_or_default().to_vec();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_owned();
    let path = first.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0)
        .min(1 << 20);
    let mut chunk = [0u8; 4096];
    while body.len() < length {
        let n = tls.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(Received {
        method,
        path,
        headers,
        body,
    })
}

async fn write_response(
    tls: &mut tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    status: u16,
    content_type: Option<&str>,
    headers: &[(String, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} Test\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    tls.write_all(head.as_bytes()).await?;
    tls.write_all(body).await?;
    tls.shutdown().await
}
