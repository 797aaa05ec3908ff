//! The hickory DNS resolver, built from `[resolver]`.

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolverConfig as HickoryConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

use super::SetupError;
use crate::config::ResolverConfig;

/// Builds the hickory resolver from `[resolver]`; with `anchors`, it validates
/// DNSSEC itself (for DANE) and marks every record's proof.
pub fn build_resolver(
    cfg: &ResolverConfig,
    anchors: Option<std::sync::Arc<hickory_resolver::proto::dnssec::TrustAnchors>>,
) -> Result<TokioResolver, SetupError> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = if cfg.nameservers.is_empty() {
        TokioResolver::builder(provider).map_err(|e| SetupError::Resolver(e.to_string()))?
    } else {
        let servers = cfg
            .nameservers
            .iter()
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        TokioResolver::builder_with_config(HickoryConfig::from_name_servers(servers), provider)
    };
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.timeout = cfg.timeout;
    // hickory counts retries after the first try; `resolver.attempts` counts them all.
    opts.attempts = cfg.attempts.get() - 1;
    // We always ask fully-qualified names; never append search domains.
    opts.ndots = 0;
    if let Some(anchors) = anchors {
        builder = builder.with_trust_anchor(anchors);
    }
    builder
        .build()
        .map_err(|e| SetupError::Resolver(e.to_string()))
}
