//! Which DNS servers the daemon asks, and telling a refusing server from a silent one.
//!
//! hickory sends its UDP queries from unconnected sockets, so the ICMP "port
//! unreachable" a host without a DNS server answers with never reaches it: a refused
//! server looks exactly like a dead one, and the error reads "request timed out". After
//! a timeout we ask each server once more from a *connected* UDP socket, on which the
//! kernel does report the refusal, so the log line can say what really happened.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;

use crate::config::ResolverConfig;

/// How long the probe waits for a refusal; ICMP comes back within a round trip.
pub const PROBE_WAIT: Duration = Duration::from_millis(300);

/// A query for the root's NS records (RFC 1035 §4.1): any server answers or refuses it.
const ROOT_NS_QUERY: [u8; 17] = [
    0x6d, 0x73, // id
    0x01, 0x00, // flags: RD
    0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // one question
    0x00, // the root name
    0x00, 0x02, // type NS
    0x00, 0x01, // class IN
];

/// The DNS servers `cfg` names, else the system's (resolv.conf).
pub fn servers_of(cfg: &ResolverConfig) -> Result<Vec<SocketAddr>, String> {
    if !cfg.nameservers.is_empty() {
        return Ok(cfg.nameservers.clone());
    }
    let (system, _) = hickory_resolver::system_conf::read_system_conf()
        .map_err(|e| format!("cannot read the system's DNS servers: {e}"))?;
    Ok(system
        .name_servers()
        .iter()
        .map(|ns| SocketAddr::new(ns.ip, ns.connections.first().map_or(53, |c| c.port)))
        .collect())
}

/// The servers among `servers` that refuse DNS over UDP right now (all probed at once,
/// within `wait`). A server that answers, stays silent or cannot be probed is not listed.
pub async fn refusing(servers: &[SocketAddr], wait: Duration) -> Vec<SocketAddr> {
    let probes = servers.iter().map(|server| async move {
        let refused = tokio::time::timeout(wait, refuses(*server))
            .await
            .unwrap_or(false);
        refused.then_some(*server)
    });
    futures::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .collect()
}

async fn refuses(server: SocketAddr) -> bool {
    let local: IpAddr = match server {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let Ok(socket) = UdpSocket::bind(SocketAddr::new(local, 0)).await else {
        return false;
    };
    if socket.connect(server).await.is_err() {
        return false;
    }
    let is_refusal = |e: std::io::Error| e.kind() == std::io::ErrorKind::ConnectionRefused;
    if let Err(e) = socket.send(&ROOT_NS_QUERY).await {
        return is_refusal(e);
    }
    let mut reply = [0u8; 512];
    match socket.recv(&mut reply).await {
        Ok(_) => false,
        Err(e) => is_refusal(e),
    }
}

/// The text for a query that timed out, naming the servers that refused it.
pub fn timeout_text(servers: &[SocketAddr], refusing: &[SocketAddr]) -> String {
    let list = |addrs: &[SocketAddr]| {
        addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if refusing.is_empty() {
        "request timed out".to_owned()
    } else if refusing.len() == servers.len() {
        format!("connection refused by {}", list(refusing))
    } else {
        format!(
            "request timed out (connection refused by {})",
            list(refusing)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_refuses_and_a_server_that_answers_does_not() {
        // A port nobody listens on: bind one, note it, close it.
        let closed = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
            s.local_addr().expect("addr")
        };
        // A "server" that answers whatever it gets.
        let live = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let live_addr = live.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = live.recv_from(&mut buf).await {
                let _ = live.send_to(&buf[..n], from).await;
            }
        });
        let servers = [closed, live_addr];
        let refused = refusing(&servers, Duration::from_secs(2)).await;
        assert_eq!(refused, vec![closed]);
        assert_eq!(
            timeout_text(&servers, &refused),
            format!("request timed out (connection refused by {closed})")
        );
        assert_eq!(
            timeout_text(&[closed], &[closed]),
            format!("connection refused by {closed}")
        );
        assert_eq!(timeout_text(&servers, &[]), "request timed out");
    }
}
