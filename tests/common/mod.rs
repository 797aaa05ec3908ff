//! Shared helpers for the end-to-end tests: library options pointed at a testkit world.
#![allow(dead_code)]

use std::time::Duration;

use mta_stsd::config::{FetchConfig, ResolverConfig};
use mta_stsd::discovery::{Discoverer, DiscoveryOptions};
use mta_stsd_testkit::World;

/// Discovery options that use the world's DNS server, trust its CA (only), and fetch
/// from its HTTPS port on loopback.
pub fn options(world: &World) -> DiscoveryOptions {
    DiscoveryOptions {
        resolver: ResolverConfig {
            nameservers: vec![world.dns.addr()],
            timeout: Duration::from_millis(500),
            attempts: 1,
        },
        fetch: FetchConfig {
            timeout: Duration::from_secs(2),
            ca_file: None,
            allow_private_addresses: true,
        },
        system_roots: false,
        extra_roots: vec![world.ca.cert_der()],
        https_port: Some(world.https.addr().port()),
    }
}

pub fn discoverer(world: &World) -> Discoverer {
    Discoverer::new(options(world)).expect("discoverer")
}

pub const ENFORCE: &str =
    "version: STSv1\nmode: enforce\nmx: mx1.example.com\nmx: *.example.net\nmax_age: 604800\n";
