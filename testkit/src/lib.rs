//! A small test world for mta-stsd: a real DNS server (hickory-server) and a real
//! HTTPS server (rustls) on loopback, with certificates from a throwaway CA.
//!
//! Everything here is for tests and benchmarks; nothing is used by the daemon itself.

mod ca;
mod dns;
mod https;
mod redis;
pub mod smtp;
mod unbound;

pub use ca::{CertKind, TestCa};
pub use dns::{DnsFault, SigFault, TestDns};
pub use hickory_proto::rr::RecordType;
pub use https::{HttpResponse, Received, TestHttps};
pub use redis::{Access, Flavour, RedisServer, RedisTls, Sentinels, free_port};
pub use unbound::Unbound;

use std::net::{IpAddr, Ipv4Addr};

/// A DNS server, an HTTPS server and a CA, wired together.
pub struct World {
    pub ca: TestCa,
    pub dns: TestDns,
    pub https: TestHttps,
}

impl World {
    pub async fn start() -> World {
        Self::start_with(TestDns::start().await).await
    }

    /// A world whose DNS root zone is signed (DNSSEC); its key is the trust anchor.
    pub async fn start_signed() -> World {
        Self::start_with(TestDns::start_signed().await).await
    }

    async fn start_with(dns: TestDns) -> World {
        let ca = TestCa::new();
        let https = TestHttps::start(ca.clone()).await;
        World { ca, dns, https }
    }

    /// Publishes a complete MTA-STS setup for `domain`: the TXT record with `id`,
    /// `mta-sts.DOMAIN` pointing at the HTTPS server, and the policy body.
    pub fn publish(&self, domain: &str, id: &str, policy: &str) {
        self.dns.set_txt(
            &format!("_mta-sts.{domain}"),
            &[&format!("v=STSv1; id={id};")],
        );
        self.point_policy_host(domain);
        self.https.set_policy(domain, policy);
    }

    /// Points `mta-sts.DOMAIN` at the HTTPS server's address.
    pub fn point_policy_host(&self, domain: &str) {
        let ip = match self.https.addr().ip() {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(_) => Ipv4Addr::LOCALHOST,
        };
        self.dns.set_a(&format!("mta-sts.{domain}"), ip);
    }
}

/// A policy file in the usual layout.
pub fn policy_text(mode: &str, mx: &[&str], max_age: u64) -> String {
    let mut s = format!("version: STSv1\nmode: {mode}\n");
    for m in mx {
        s.push_str(&format!("mx: {m}\n"));
    }
    s.push_str(&format!("max_age: {max_age}\n"));
    s
}
