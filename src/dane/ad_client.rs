//! A minimal DNS client for `[dane] validation = "resolver"`: it asks a validating
//! resolver on loopback (such as unbound) and trusts the AD bit of its answers (RFC
//! 4035 §3.2.3, RFC 6840 §5.7: a query with AD set asks for it). The AD bit says
//! nothing once it has crossed a network, which is why the configuration accepts only
//! loopback servers for this mode.
//!
//! A validating resolver answers SERVFAIL for bogus data, so this client cannot tell
//! "bogus" from "failed"; the DANE rules treat both alike (never a downgrade).

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// What the resolver said.
#[derive(Debug, Clone)]
pub struct AdAnswer {
    pub rcode: ResponseCode,
    /// The resolver validated the answer (DNSSEC secure).
    pub authentic: bool,
    pub answers: Vec<Record>,
}

#[derive(Debug, Clone)]
pub struct AdClient {
    servers: Vec<SocketAddr>,
    timeout: Duration,
    attempts: usize,
}

impl AdClient {
    pub fn new(servers: Vec<SocketAddr>, timeout: Duration, attempts: usize) -> Self {
        Self {
            servers,
            timeout,
            attempts: attempts.max(1),
        }
    }

    /// Asks each server in turn, `attempts` rounds, until one answers.
    pub async fn query(&self, name: &str, rtype: RecordType) -> Result<AdAnswer, String> {
        let name = Name::from_ascii(name).map_err(|e| format!("bad name {name:?}: {e}"))?;
        let mut last = "no DNS servers configured".to_owned();
        for _ in 0..self.attempts {
            for server in &self.servers {
                match tokio::time::timeout(self.timeout, self.ask(*server, &name, rtype)).await {
                    Ok(Ok(answer)) => return Ok(answer),
                    Ok(Err(e)) => last = format!("{server}: {e}"),
                    Err(_) => last = format!("{server}: timed out"),
                }
            }
        }
        Err(last)
    }

    async fn ask(
        &self,
        server: SocketAddr,
        name: &Name,
        rtype: RecordType,
    ) -> Result<AdAnswer, String> {
        let id: u16 = rand_id();
        let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
        msg.metadata.recursion_desired = true;
        msg.metadata.authentic_data = true;
        msg.add_query(Query::query(name.clone(), rtype));
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        edns.set_dnssec_ok(true);
        msg.set_edns(edns);
        let wire = msg.to_vec().map_err(|e| e.to_string())?;

        let bind: SocketAddr = if server.is_ipv4() {
            "0.0.0.0:0".parse().map_err(|_| "bind address")?
        } else {
            "[::]:0".parse().map_err(|_| "bind address")?
        };
        let socket = UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
        socket.connect(server).await.map_err(|e| e.to_string())?;
        socket.send(&wire).await.map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 4096];
        let response = loop {
            let n = socket.recv(&mut buf).await.map_err(|e| e.to_string())?;
            // Ignore anything that is not the answer to this query.
            if let Ok(m) = Message::from_vec(&buf[..n])
                && m.metadata.id == id
                && m.metadata.message_type == MessageType::Response
            {
                break m;
            }
        };
        let response = if response.metadata.truncation {
            self.ask_tcp(server, &wire, id).await?
        } else {
            response
        };
        Ok(AdAnswer {
            rcode: response.metadata.response_code,
            authentic: response.metadata.authentic_data,
            answers: response.answers,
        })
    }

    async fn ask_tcp(&self, server: SocketAddr, wire: &[u8], id: u16) -> Result<Message, String> {
        let mut stream = TcpStream::connect(server)
            .await
            .map_err(|e| e.to_string())?;
        let len = u16::try_from(wire.len()).map_err(|_| "query too long")?;
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(wire);
        stream.write_all(&framed).await.map_err(|e| e.to_string())?;
        let mut len = [0u8; 2];
        stream
            .read_exact(&mut len)
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream
            .read_exact(&mut buf)
            .await
            .map_err(|e| e.to_string())?;
        let m = Message::from_vec(&buf).map_err(|e| e.to_string())?;
        if m.metadata.id != id {
            return Err("answer to another query".into());
        }
        Ok(m)
    }
}

/// A query id that is hard to guess (with the random source port, RFC 5452); the
/// server is on loopback, so spoofing is moot, but it costs nothing. `RandomState`
/// is seeded from the OS's random source.
fn rand_id() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    h.finish() as u16
}
