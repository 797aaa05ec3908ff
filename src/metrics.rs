//! Prometheus metrics. The names are a stable contract for dashboards and alerts:
//! change them only with a release note. Each daemon has its own registry (no
//! globals), so tests that run several daemons in one process do not mix counts.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub const LOOKUPS_TOTAL: &str = "mta_stsd_lookups_total";
pub const LOOKUP_DURATION_SECONDS: &str = "mta_stsd_lookup_duration_seconds";
pub const DISCOVERIES_TOTAL: &str = "mta_stsd_discoveries_total";
pub const FETCH_FAILURES_TOTAL: &str = "mta_stsd_fetch_failures_total";
pub const FETCH_DURATION_SECONDS: &str = "mta_stsd_fetch_duration_seconds";
pub const REFRESH_FAILURES_TOTAL: &str = "mta_stsd_refresh_failures_total";
pub const POLICY_TRANSITIONS_TOTAL: &str = "mta_stsd_policy_transitions_total";
pub const CACHE_ENTRIES: &str = "mta_stsd_cache_entries";
pub const OLDEST_POLICY_AGE_SECONDS: &str = "mta_stsd_oldest_policy_age_seconds";
pub const POLICIES_EXPIRING_SOON: &str = "mta_stsd_policies_expiring_within_24h";
pub const POLICIES_FAILING: &str = "mta_stsd_policies_failing_refresh";
pub const CONNECTIONS_OPEN: &str = "mta_stsd_connections_open";
pub const REQUESTS_IN_FLIGHT: &str = "mta_stsd_requests_in_flight";
pub const MALFORMED_REQUESTS_TOTAL: &str = "mta_stsd_malformed_requests_total";
pub const CONNECTIONS_CLOSED_TOTAL: &str = "mta_stsd_connections_closed_total";
pub const BUILD_INFO: &str = "mta_stsd_build_info";
pub const STORE_HEALTHY: &str = "mta_stsd_store_healthy";
pub const STORE_ERRORS_TOTAL: &str = "mta_stsd_store_errors_total";
pub const CACHE_MOVED_ASIDE_TOTAL: &str = "mta_stsd_cache_moved_aside_total";
pub const CACHE_POLICIES_LOST_TOTAL: &str = "mta_stsd_cache_policies_lost_total";
pub const DANE_VERDICTS_TOTAL: &str = "mta_stsd_dane_verdicts_total";
pub const DNSSEC_BOGUS_TOTAL: &str = "mta_stsd_dnssec_bogus_total";
pub const DANE_ENABLED: &str = "mta_stsd_dane_enabled";
pub const DNSSEC_VALIDATION_FAILING: &str = "mta_stsd_dnssec_validation_failing";
pub const REDIS_HEALTHY: &str = "mta_stsd_redis_healthy";
pub const REDIS_ADOPTED_TOTAL: &str = "mta_stsd_redis_policies_adopted_total";
pub const REDIS_MASTER: &str = "mta_stsd_redis_master";
/// `mta_stsd_redis_master`'s address before any master is known.
pub const NO_MASTER: &str = "none";
pub const REDIS_FAILOVERS_TOTAL: &str = "mta_stsd_redis_failovers_total";
pub const REDIS_WITHOUT_MASTER: &str = "mta_stsd_redis_without_master_seconds";
pub const TLSRPT_DATAGRAMS_TOTAL: &str = "mta_stsd_tlsrpt_datagrams_total";
pub const TLSRPT_DATAGRAMS_UNSTORED: &str = "mta_stsd_tlsrpt_datagrams_unstored";
pub const TLSRPT_REPORTS_TOTAL: &str = "mta_stsd_tlsrpt_reports_total";
pub const TLSRPT_BATCHES_UNSYNCED: &str = "mta_stsd_tlsrpt_batches_unsynced";
pub const TLSRPT_DELIVERIES_PENDING: &str = "mta_stsd_tlsrpt_deliveries_pending";
pub const TLSRPT_OLDEST_PENDING_SECONDS: &str = "mta_stsd_tlsrpt_oldest_pending_delivery_seconds";
pub const TLSRPT_STORE_LOST_ENTRIES: &str = "mta_stsd_tlsrpt_store_lost_entries";

/// The daemon's metric handles, grouped by the component that updates them, and the
/// registry they are exported from.
pub struct Metrics {
    registry: Registry,
    names: Vec<String>,
    pub server: ServerMetrics,
    pub discovery: DiscoveryMetrics,
    pub cache: CacheMetrics,
    pub store: StoreMetrics,
    pub dane: DaneMetrics,
    pub fleet: FleetMetrics,
    pub tlsrpt: TlsrptMetrics,
}

/// The socketmap server: lookups answered, connections.
pub struct ServerMetrics {
    /// zone, answer (secure|notfound|temp|perm), cache (hit|negative_hit|miss|timeout|skipped)
    pub lookups: IntCounterVec,
    pub lookup_duration: Histogram,
    pub connections_open: IntGauge,
    pub requests_in_flight: IntGauge,
    pub malformed_requests: IntCounter,
    /// reason (idle_timeout|read_timeout|evicted)
    pub connections_closed: IntCounterVec,
}

impl ServerMetrics {
    fn new() -> prometheus::Result<Self> {
        let latency_buckets = vec![
            0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005, 0.025, 0.1,
            0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ];
        Ok(Self {
            lookups: counter_vec(
                LOOKUPS_TOTAL,
                "Socketmap lookups answered.",
                &["zone", "answer", "cache"],
            )?,
            lookup_duration: Histogram::with_opts(
                HistogramOpts::new(
                    LOOKUP_DURATION_SECONDS,
                    "Time to answer a socketmap lookup.",
                )
                .buckets(latency_buckets),
            )?,
            connections_open: IntGauge::new(CONNECTIONS_OPEN, "Socketmap connections open.")?,
            requests_in_flight: IntGauge::new(
                REQUESTS_IN_FLIGHT,
                "Socketmap requests being answered.",
            )?,
            malformed_requests: IntCounter::new(
                MALFORMED_REQUESTS_TOTAL,
                "Malformed or oversize socketmap requests (each closed its connection).",
            )?,
            connections_closed: counter_vec(
                CONNECTIONS_CLOSED_TOTAL,
                "Socketmap connections the daemon closed because the client stayed silent.",
                &["reason"],
            )?,
        })
    }

    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.lookups.clone()),
            Box::new(self.lookup_duration.clone()),
            Box::new(self.connections_open.clone()),
            Box::new(self.requests_in_flight.clone()),
            Box::new(self.malformed_requests.clone()),
            Box::new(self.connections_closed.clone()),
        ]
    }
}

/// Discovery: runs, policy fetches, failed refreshes, policy changes.
pub struct DiscoveryMetrics {
    /// trigger (miss|recheck|refresh), result (fetched|unchanged|no_policy|txt_failed|fetch_failed|backoff|kept)
    pub discoveries: IntCounterVec,
    /// class (dns|tls|connect|timeout|http_status|content_type|too_large|parse|private_address|http)
    pub fetch_failures: IntCounterVec,
    /// result (ok|error)
    pub fetch_duration: HistogramVec,
    /// mode of the cached policy (enforce|testing)
    pub refresh_failures: IntCounterVec,
    /// from, to (modes; to = from for an mx-set change), change (mode|mx)
    pub transitions: IntCounterVec,
}

impl DiscoveryMetrics {
    fn new() -> prometheus::Result<Self> {
        let fetch_buckets = vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
        Ok(Self {
            discoveries: counter_vec(
                DISCOVERIES_TOTAL,
                "Discovery runs (TXT lookup and, when needed, policy fetch) by trigger and result.",
                &["trigger", "result"],
            )?,
            fetch_failures: counter_vec(
                FETCH_FAILURES_TOTAL,
                "Failed policy fetches by failure class.",
                &["class"],
            )?,
            fetch_duration: HistogramVec::new(
                HistogramOpts::new(FETCH_DURATION_SECONDS, "Time to fetch a policy file.")
                    .buckets(fetch_buckets),
                &["result"],
            )?,
            refresh_failures: counter_vec(
                REFRESH_FAILURES_TOTAL,
                "Failed refreshes of cached policies whose mode is not none.",
                &["mode"],
            )?,
            transitions: counter_vec(
                POLICY_TRANSITIONS_TOTAL,
                "Changes of a cached policy: mode changes (e.g. enforce to none) and mx-set changes.",
                &["from", "to", "change"],
            )?,
        })
    }

    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.discoveries.clone()),
            Box::new(self.fetch_failures.clone()),
            Box::new(self.fetch_duration.clone()),
            Box::new(self.refresh_failures.clone()),
            Box::new(self.transitions.clone()),
        ]
    }
}

/// The policy cache: what it holds, and damage found at start.
pub struct CacheMetrics {
    /// mode (enforce|testing|none|negative)
    pub cache_entries: IntGaugeVec,
    pub oldest_policy_age: IntGauge,
    pub expiring_soon: IntGauge,
    pub failing: IntGauge,
    /// Caches that could not be opened and were moved aside.
    pub cache_moved_aside: IntCounter,
    /// Policies missing from the cache at start compared with its last checkpoint.
    pub cache_policies_lost: IntCounter,
}

impl CacheMetrics {
    fn new() -> prometheus::Result<Self> {
        Ok(Self {
            cache_entries: IntGaugeVec::new(
                Opts::new(
                    CACHE_ENTRIES,
                    "Cache entries by policy mode (negative: known to have no policy).",
                ),
                &["mode"],
            )?,
            oldest_policy_age: IntGauge::new(
                OLDEST_POLICY_AGE_SECONDS,
                "Age of the least recently fetched valid policy.",
            )?,
            expiring_soon: IntGauge::new(
                POLICIES_EXPIRING_SOON,
                "Valid policies that expire within 24 hours.",
            )?,
            failing: IntGauge::new(
                POLICIES_FAILING,
                "Valid policies (not mode none) whose last refresh or re-check failed.",
            )?,
            cache_moved_aside: IntCounter::new(
                CACHE_MOVED_ASIDE_TOTAL,
                "Caches that could not be opened and were moved aside (the daemon started with an empty one).",
            )?,
            cache_policies_lost: IntCounter::new(
                CACHE_POLICIES_LOST_TOTAL,
                "Policies missing from the cache at start compared with its last checkpoint (a damaged cache that opened without error).",
            )?,
        })
    }

    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.cache_entries.clone()),
            Box::new(self.oldest_policy_age.clone()),
            Box::new(self.expiring_soon.clone()),
            Box::new(self.failing.clone()),
            Box::new(self.cache_moved_aside.clone()),
            Box::new(self.cache_policies_lost.clone()),
        ]
    }
}

/// The cache store's health.
pub struct StoreMetrics {
    /// 1 while the cache store works, 0 while it fails (answers come from memory).
    pub store_healthy: IntGauge,
    /// op (load|get|put|remove|flush|checkpoint; redis_get|redis_put|redis_lock|redis_remove|redis_subscribe)
    pub store_errors: IntCounterVec,
}

impl StoreMetrics {
    fn new() -> prometheus::Result<Self> {
        Ok(Self {
            store_healthy: IntGauge::new(
                STORE_HEALTHY,
                "1 while the cache store works; 0 while it fails and answers come from memory.",
            )?,
            store_errors: counter_vec(
                STORE_ERRORS_TOTAL,
                "Failed or panicked cache store operations.",
                &["op"],
            )?,
        })
    }

    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.store_healthy.clone()),
            Box::new(self.store_errors.clone()),
        ]
    }
}

/// DANE precedence and DNSSEC validation.
pub struct DaneMetrics {
    /// verdict (dane_only|dane|no_dane|temp), cache (hit|miss|timeout)
    pub dane_verdicts: IntCounterVec,
    /// rrset (mx|address|tlsa)
    pub dnssec_bogus: IntCounterVec,
    /// 1 while DANE precedence is on by default and DNSSEC validation works.
    pub dane_enabled: IntGauge,
    /// 1 while the DNSSEC self-check fails (DANE precedence suspended).
    pub dnssec_validation_failing: IntGauge,
}

impl DaneMetrics {
    fn new() -> prometheus::Result<Self> {
        Ok(Self {
            dane_verdicts: counter_vec(
                DANE_VERDICTS_TOTAL,
                "DANE verdicts used for lookups, by verdict and whether it was remembered.",
                &["verdict", "cache"],
            )?,
            dnssec_bogus: counter_vec(
                DNSSEC_BOGUS_TOTAL,
                "DNSSEC validation failures (bogus RRsets) met by DANE lookups.",
                &["rrset"],
            )?,
            dane_enabled: IntGauge::new(
                DANE_ENABLED,
                "1 while DANE takes precedence by default ([dane] mode) and DNSSEC validation works; 0 otherwise.",
            )?,
            dnssec_validation_failing: IntGauge::new(
                DNSSEC_VALIDATION_FAILING,
                "1 while the DNSSEC self-check (the root's DNSKEY RRset) fails and DANE precedence is suspended.",
            )?,
        })
    }

    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.dane_verdicts.clone()),
            Box::new(self.dnssec_bogus.clone()),
            Box::new(self.dane_enabled.clone()),
            Box::new(self.dnssec_validation_failing.clone()),
        ]
    }
}

/// The fleet's shared cache (Redis).
pub struct FleetMetrics {
    /// With `cache.backend = "redis"`: 1 while Redis answers, 0 while it does not
    /// (always 1 without Redis).
    pub redis_healthy: IntGauge,
    /// Policies taken from the fleet's shared cache instead of being fetched.
    pub redis_adopted: IntCounter,
    /// With Redis Sentinel: 1 for the master in use (label `address`).
    pub redis_master: IntGaugeVec,
    /// With Redis Sentinel: master changes seen (failovers).
    pub redis_failovers: IntCounter,
    /// With Redis Sentinel: how long no writable master has answered (0 while one
    /// does).
    pub redis_without_master: Gauge,
}

impl FleetMetrics {
    fn new() -> prometheus::Result<Self> {
        let fleet = Self {
            redis_healthy: IntGauge::new(
                REDIS_HEALTHY,
                "With cache.backend = redis: 1 while the shared cache answers, 0 while the daemon works without it (always 1 without Redis).",
            )?,
            redis_adopted: IntCounter::new(
                REDIS_ADOPTED_TOTAL,
                "Policies taken from the fleet's shared cache (Redis) instead of being fetched.",
            )?,
            redis_master: IntGaugeVec::new(
                Opts::new(
                    REDIS_MASTER,
                    "With Redis Sentinel: 1 for the master the daemon uses, by address.",
                ),
                &["address"],
            )?,
            redis_failovers: IntCounter::new(
                REDIS_FAILOVERS_TOTAL,
                "With Redis Sentinel: changes of master seen (failovers).",
            )?,
            redis_without_master: Gauge::new(
                REDIS_WITHOUT_MASTER,
                "With Redis Sentinel: seconds since a writable master last answered (0 while one does).",
            )?,
        };
        // Exported from the first scrape: no master known yet.
        fleet.redis_master.with_label_values(&[NO_MASTER]).set(0);
        Ok(fleet)
    }

    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.redis_healthy.clone()),
            Box::new(self.redis_adopted.clone()),
            Box::new(self.redis_master.clone()),
            Box::new(self.redis_failovers.clone()),
            Box::new(self.redis_without_master.clone()),
        ]
    }
}

/// TLSRPT: datagrams from Postfix, reports sent.
pub struct TlsrptMetrics {
    /// result (counted|malformed|oversized)
    pub datagrams: IntCounterVec,
    /// Datagrams counted in memory and not yet durable on disk.
    pub unstored: IntGauge,
    /// scheme (mailto|https), result (sent|failed|gave_up)
    pub reports: IntCounterVec,
    /// In a fleet: batches of counters stored here and not yet in Redis.
    pub unsynced: IntGauge,
    /// Deliveries of finished days not yet made.
    pub pending: IntGauge,
    /// Age of the oldest delivery still waiting past its first try.
    pub oldest_pending: IntGauge,
    /// Entries of the report store lost to damage found at start.
    pub store_lost: IntGauge,
}

impl TlsrptMetrics {
    fn new() -> prometheus::Result<Self> {
        Ok(Self {
            datagrams: counter_vec(
                TLSRPT_DATAGRAMS_TOTAL,
                "TLSRPT datagrams received from Postfix, by result (counted, malformed, oversized).",
                &["result"],
            )?,
            unstored: IntGauge::new(
                TLSRPT_DATAGRAMS_UNSTORED,
                "TLSRPT datagrams counted in memory and not yet stored on disk (stored within a second).",
            )?,
            reports: counter_vec(
                TLSRPT_REPORTS_TOTAL,
                "TLSRPT report deliveries, by scheme (mailto, https) and result (sent, failed, gave_up).",
                &["scheme", "result"],
            )?,
            unsynced: IntGauge::new(
                TLSRPT_BATCHES_UNSYNCED,
                "With cache.backend = redis: batches of TLSRPT counters stored here and not yet added to the fleet's (Redis down).",
            )?,
            pending: IntGauge::new(
                TLSRPT_DELIVERIES_PENDING,
                "TLSRPT report deliveries of finished days not yet made.",
            )?,
            oldest_pending: IntGauge::new(
                TLSRPT_OLDEST_PENDING_SECONDS,
                "Seconds since the oldest pending TLSRPT delivery was first due (0 when none is late).",
            )?,
            store_lost: IntGauge::new(
                TLSRPT_STORE_LOST_ENTRIES,
                "Entries (counters, delivery records) of the TLSRPT report store lost to damage found when the daemon started; the damaged store is kept beside it.",
            )?,
        })
    }

    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.datagrams.clone()),
            Box::new(self.unstored.clone()),
            Box::new(self.reports.clone()),
            Box::new(self.unsynced.clone()),
            Box::new(self.pending.clone()),
            Box::new(self.oldest_pending.clone()),
            Box::new(self.store_lost.clone()),
        ]
    }
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntCounterVec> {
    IntCounterVec::new(Opts::new(name, help), labels)
}

/// The `class` labels of fetch failures (discovery's `FailureClass`, tested equal there).
pub const FETCH_FAILURE_CLASSES: [&str; 11] = [
    "txt",
    "dns",
    "private_address",
    "tls",
    "connect",
    "timeout",
    "http_status",
    "content_type",
    "too_large",
    "parse",
    "http",
];

/// The label values of `mta_stsd_lookups_total` (answer kinds and cache outcomes),
/// `mta_stsd_discoveries_total` (triggers and results), `mta_stsd_dane_verdicts_total`
/// and `mta_stsd_connections_closed_total`. The types that produce them are tested
/// equal to these where they are defined.
pub const LOOKUP_ANSWERS: [&str; 5] = ["secure", "notfound", "dane", "dane_only", "temp"];
pub const LOOKUP_CACHE: [&str; 5] = ["hit", "negative_hit", "miss", "timeout", "skipped"];
pub const DISCOVERY_TRIGGERS: [&str; 3] = ["miss", "recheck", "refresh"];
pub const DISCOVERY_RESULTS: [&str; 7] = [
    "fetched",
    "unchanged",
    "kept",
    "no_policy",
    "txt_failed",
    "fetch_failed",
    "backoff",
];
pub const DANE_VERDICTS: [&str; 4] = ["dane_only", "dane", "no_dane", "temp"];
pub const DANE_CACHE: [&str; 3] = ["hit", "miss", "timeout"];
pub const CLOSE_REASONS: [&str; 3] = ["idle_timeout", "read_timeout", "evicted"];

/// The `op` labels of store errors: the local store's operations and the shared
/// cache's.
pub const STORE_OPS: [&str; 11] = [
    "get",
    "put",
    "remove",
    "load",
    "flush",
    "checkpoint",
    "redis_get",
    "redis_put",
    "redis_remove",
    "redis_lock",
    "redis_subscribe",
];

impl Metrics {
    /// Builds the registry. Fails only if a metric definition is invalid (a bug).
    pub fn new() -> prometheus::Result<Self> {
        let mut m = Metrics {
            registry: Registry::new(),
            names: Vec::new(),
            server: ServerMetrics::new()?,
            discovery: DiscoveryMetrics::new()?,
            cache: CacheMetrics::new()?,
            store: StoreMetrics::new()?,
            dane: DaneMetrics::new()?,
            fleet: FleetMetrics::new()?,
            tlsrpt: TlsrptMetrics::new()?,
        };
        let build = IntGaugeVec::new(Opts::new(BUILD_INFO, "Build information."), &["version"])?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let mut collectors: Vec<Box<dyn prometheus::core::Collector>> = Vec::new();
        collectors.extend(m.server.collectors());
        collectors.extend(m.discovery.collectors());
        collectors.extend(m.cache.collectors());
        collectors.extend(m.store.collectors());
        collectors.extend(m.dane.collectors());
        collectors.extend(m.fleet.collectors());
        collectors.extend(m.tlsrpt.collectors());
        collectors.push(Box::new(build));
        for c in collectors {
            m.names.extend(c.desc().iter().map(|d| d.fq_name.clone()));
            m.registry.register(c)?;
        }
        // Nothing to be unreachable without a shared cache: alerts fire on 0 only.
        m.fleet.redis_healthy.set(1);
        // Pre-create the label sets dashboards plot, so they read 0 rather than absent.
        for mode in ["enforce", "testing", "none", "negative"] {
            m.cache.cache_entries.with_label_values(&[mode]).set(0);
        }
        m.zero_known_label_sets();
        Ok(m)
    }

    /// Counters read 0 from the first scrape for every label set the daemon can
    /// produce, so that `rate()` and `increase()` in alerts and dashboards work from
    /// the start instead of seeing nothing until the first failure.
    fn zero_known_label_sets(&self) {
        for class in FETCH_FAILURE_CLASSES {
            self.discovery.fetch_failures.with_label_values(&[class]);
        }
        for result in ["counted", "malformed", "oversized"] {
            self.tlsrpt.datagrams.with_label_values(&[result]);
        }
        for scheme in ["mailto", "https"] {
            for result in ["sent", "failed", "gave_up"] {
                self.tlsrpt.reports.with_label_values(&[scheme, result]);
            }
        }
        for result in ["ok", "error"] {
            self.discovery.fetch_duration.with_label_values(&[result]);
        }
        for mode in ["enforce", "testing"] {
            self.discovery.refresh_failures.with_label_values(&[mode]);
            self.discovery
                .transitions
                .with_label_values(&[mode, mode, "mx"]);
        }
        for from in ["enforce", "testing", "none"] {
            for to in ["enforce", "testing", "none"] {
                if from != to {
                    self.discovery
                        .transitions
                        .with_label_values(&[from, to, "mode"]);
                }
            }
        }
        for op in STORE_OPS {
            self.store.store_errors.with_label_values(&[op]);
        }
        for rrset in ["mx", "address", "tlsa"] {
            self.dane.dnssec_bogus.with_label_values(&[rrset]);
        }
        // Lookups by the zone every unnamed socketmap name counts under.
        for answer in LOOKUP_ANSWERS {
            for cache in LOOKUP_CACHE {
                self.server
                    .lookups
                    .with_label_values(&["default", answer, cache]);
            }
        }
        for trigger in DISCOVERY_TRIGGERS {
            for result in DISCOVERY_RESULTS {
                self.discovery
                    .discoveries
                    .with_label_values(&[trigger, result]);
            }
        }
        for verdict in DANE_VERDICTS {
            for cache in DANE_CACHE {
                self.dane.dane_verdicts.with_label_values(&[verdict, cache]);
            }
        }
        for reason in CLOSE_REASONS {
            self.server.connections_closed.with_label_values(&[reason]);
        }
    }

    /// Every metric name this daemon exports.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_names_with_prefix_and_build_info() {
        let m = Metrics::new().unwrap();
        m.server
            .lookups
            .with_label_values(&["postfix", "secure", "hit"])
            .inc();
        let text = m.render();
        assert!(
            text.contains(
                "mta_stsd_lookups_total{answer=\"secure\",cache=\"hit\",zone=\"postfix\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("mta_stsd_build_info{version=\""));
        assert!(text.contains("mta_stsd_cache_entries{mode=\"negative\"} 0"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("mta_stsd_"), "{line}");
        }
    }

    #[test]
    fn a_fresh_scrape_has_every_documented_family() {
        let text = Metrics::new().unwrap().render();
        for family in [
            FETCH_FAILURES_TOTAL,
            REFRESH_FAILURES_TOTAL,
            STORE_ERRORS_TOTAL,
            DNSSEC_BOGUS_TOTAL,
            POLICY_TRANSITIONS_TOTAL,
            FETCH_DURATION_SECONDS,
        ] {
            assert!(
                text.lines()
                    .any(|l| l.starts_with(family) && !l.starts_with('#')),
                "{family} absent from a fresh scrape"
            );
        }
        assert!(
            text.contains("mta_stsd_fetch_failures_total{class=\"tls\"} 0"),
            "{text}"
        );
        assert!(
            text.contains(
                "mta_stsd_policy_transitions_total{change=\"mode\",from=\"enforce\",to=\"none\"} 0"
            ),
            "{text}"
        );
    }
}
