//! The DANE side of a lookup: remembers each domain's verdict for its TTL, runs one
//! set of DNSSEC lookups per domain at a time (single-flight), refreshes a verdict in
//! the background when a lookup finds it near its end (so hits stay answered from
//! memory), and checks that DNSSEC validation works at all.
//!
//! Why the self-check: validation needs DNS servers that pass DNSSEC records through.
//! Behind one that strips them, every signed answer is bogus, and every domain would
//! be deferred. When the root's DNSKEY RRset does not validate, DANE precedence is
//! suspended with one ERROR line (MTA-STS answers continue) and checked again a minute
//! later. The check starts at start and at every reload, and no lookup uses DANE
//! before it has passed: a lookup that arrives first waits for it (within the lookup
//! deadline), and "not checked yet" never counts as working.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use hickory_resolver::proto::dnssec::TrustAnchors;
use serde::{Deserialize, Serialize};

use super::lookup::{DaneLookup, Found};
use super::verdict::{self as rules, MxFacts, Security, TlsaFacts, Verdict};
use crate::bounded::{BoundedMap, Expiring};
use crate::clock::Clock;
use crate::config::{DaneConfig, DaneMode, DaneValidation, ResolverConfig};
use crate::config::{DaneSwitch, ZoneOptions};
use crate::flight::{Flight, SingleFlight};
use crate::locks::{lock, read, write};
use crate::metrics::Metrics;
use crate::net::SetupError;

/// A remembered verdict and the facts it rests on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cached {
    pub verdict: Verdict,
    pub mx: MxFacts,
    /// Unix seconds.
    pub checked_at: u64,
    pub expires_at: u64,
}

impl Cached {
    /// A deferral decided without a verdict (the lookups did not finish, or failed):
    /// used for this lookup only, never remembered.
    fn deferral(reason: &str, now: u64) -> Arc<Cached> {
        Arc::new(Cached {
            verdict: Verdict::Temp {
                reason: reason.to_owned(),
            },
            mx: MxFacts::Failed,
            checked_at: now,
            expires_at: now,
        })
    }
}

/// A remembered verdict holds until its TTL (the lowest of its records') runs out.
impl Expiring for Cached {
    fn is_live(&self, now: u64) -> bool {
        now < self.expires_at
    }
}

/// `mode = "auto"`: on exactly when Postfix's `smtp_dns_support_level` is `dnssec`.
pub fn auto_mode(smtp_dns_support_level: &str) -> bool {
    smtp_dns_support_level.trim() == "dnssec"
}

/// Whether Debian's Exim is installed here.
fn exim_installed() -> bool {
    std::path::Path::new("/usr/sbin/exim4").exists()
}

/// Asks Postfix's own `postconf` for `smtp_dns_support_level`.
pub fn postfix_dns_support_level(config_dir: Option<&Path>) -> Result<String, String> {
    crate::postfix::postconf(config_dir, &["-h", "smtp_dns_support_level"])
        .map(|level| level.trim().to_owned())
}

/// Reads and parses `dane.trust_anchor`.
pub fn read_anchor_file(path: &Path) -> Result<super::anchor::AnchorFile, SetupError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        SetupError::Resolver(format!(
            "dane.trust_anchor: cannot read {}: {e}",
            path.display()
        ))
    })?;
    super::anchor::parse(&text)
        .map_err(|e| SetupError::Resolver(format!("dane.trust_anchor {}: {e}", path.display())))
}

/// What the service needs from the configuration, resolved once per start or reload.
#[derive(Debug, Clone)]
pub struct DaneSettings {
    /// DANE precedence for zones that do not say otherwise.
    pub on: bool,
    /// Why `on` is what it is (logged, shown by `query`).
    pub reason: String,
    pub lookup: DaneLookup,
    pub cache_entries: NonZeroUsize,
}

impl DaneSettings {
    /// Resolves `[dane]`: the mode (running `postconf` for `auto`), the trust anchor
    /// and the validating resolver over `resolver`'s servers.
    pub fn resolve(dane: &DaneConfig, resolver: &ResolverConfig) -> Result<Self, SetupError> {
        let (on, reason) = match dane.mode {
            DaneMode::On => (true, "dane.mode = \"on\"".to_owned()),
            DaneMode::Off => (false, "dane.mode = \"off\"".to_owned()),
            DaneMode::Auto => match postfix_dns_support_level(dane.postfix_config.as_deref()) {
                Ok(level) if auto_mode(&level) => (
                    true,
                    "Postfix validates DNSSEC (smtp_dns_support_level = dnssec)".to_owned(),
                ),
                Ok(level) => (
                    false,
                    format!(
                        "Postfix does not validate DNSSEC (smtp_dns_support_level = {})",
                        if level.is_empty() { "(unset)" } else { &level }
                    ),
                ),
                // auto reads Postfix's setting; an Exim host has no such setting to
                // read, and Exim's DANE needs a validating resolver the daemon cannot
                // see from here: say how to turn it on.
                Err(_) if exim_installed() => (
                    false,
                    "no Postfix here, Exim is installed: set [dane] mode = \"on\" when Exim's resolver validates DNSSEC (dns_dnssec_ok = 1)".to_owned(),
                ),
                Err(e) => (false, format!("cannot ask Postfix ({e})")),
            },
        };
        let lookup = match dane.validation {
            DaneValidation::Resolver => DaneLookup::trusting_ad(resolver),
            DaneValidation::Internal => match &dane.trust_anchor {
                None => DaneLookup::new(resolver, Arc::new(TrustAnchors::default()))?,
                Some(path) => {
                    let file = read_anchor_file(path)?;
                    if file.ds.is_empty() {
                        DaneLookup::new(resolver, Arc::new(file.keys))?
                    } else {
                        DaneLookup::from_ds(resolver, file)
                    }
                }
            },
        };
        Ok(Self {
            on,
            reason,
            lookup,
            cache_entries: dane.cache_entries,
        })
    }

    /// Whether DANE precedence is wanted for lookups in `zone`: its own `dane`
    /// setting, else the mode.
    pub fn wanted_for(&self, zone: &ZoneOptions) -> bool {
        match zone.dane {
            Some(DaneSwitch::On) => true,
            Some(DaneSwitch::Off) => false,
            None => self.on,
        }
    }
}

type Check = Shared<BoxFuture<'static, ()>>;

const HEALTH_UNKNOWN: u8 = 0;
const HEALTH_OK: u8 = 1;
const HEALTH_BROKEN: u8 = 2;
/// How long a failed self-check suspends DANE precedence before the next check.
const RECHECK_AFTER: u64 = 60;

pub struct DaneService {
    settings: RwLock<Arc<DaneSettings>>,
    verdicts: BoundedMap<Cached>,
    inflight: SingleFlight<Arc<Cached>>,
    health: AtomicU8,
    health_checked_at: AtomicU64,
    /// Bumped by every reload, so that a check begun under the old settings does not
    /// decide for the new ones.
    generation: AtomicU64,
    /// The self-check under way, shared by the lookups that wait for it.
    check: Mutex<Option<(u64, Check)>>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    /// Where remembered verdicts are saved, so that they survive a restart.
    snapshot: Mutex<Option<PathBuf>>,
    /// A verdict was remembered since the last save.
    dirty: AtomicBool,
    /// `dane_verdicts{cache="hit"}` per verdict, resolved once: hits are the hot path.
    hit_counters: [prometheus::IntCounter; 4],
}

fn verdict_index(v: &Verdict) -> usize {
    match v {
        Verdict::DaneOnly => 0,
        Verdict::Dane => 1,
        Verdict::NoDane => 2,
        Verdict::Temp { .. } => 3,
    }
}

impl DaneService {
    pub fn new(settings: DaneSettings, clock: Arc<dyn Clock>, metrics: Arc<Metrics>) -> Arc<Self> {
        let cap = settings.cache_entries;
        tracing::info!(on = settings.on, reason = %settings.reason, "DANE precedence");
        let this = Arc::new(Self {
            settings: RwLock::new(Arc::new(settings)),
            verdicts: BoundedMap::new(cap),
            inflight: SingleFlight::default(),
            health: AtomicU8::new(HEALTH_UNKNOWN),
            health_checked_at: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            check: Mutex::new(None),
            clock,
            snapshot: Mutex::new(None),
            dirty: AtomicBool::new(false),
            hit_counters: ["dane_only", "dane", "no_dane", "temp"]
                .map(|v| metrics.dane.dane_verdicts.with_label_values(&[v, "hit"])),
            metrics,
        });
        this.update_gauge();
        this
    }

    /// Applies new settings (reload); remembered verdicts stay (their facts do not
    /// depend on the settings), and the self-check runs again before DANE is used.
    pub fn reconfigure(self: &Arc<Self>, settings: DaneSettings) {
        self.verdicts.resize(settings.cache_entries);
        let (on, reason) = (settings.on, settings.reason.clone());
        *write(&self.settings) = Arc::new(settings);
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.health.store(HEALTH_UNKNOWN, Ordering::Release);
        self.update_gauge();
        // Logged once in force, so the line can be taken as the signal that it is.
        tracing::info!(on, reason = %reason, "DANE precedence");
        if on {
            drop(self.start_check());
        }
    }

    /// Starts the self-check in the background when DANE is on (at start; a reload
    /// starts its own), so the first lookup finds it done or under way.
    pub fn start(self: &Arc<Self>) {
        if self.settings().on {
            drop(self.start_check());
        }
    }

    fn settings(&self) -> Arc<DaneSettings> {
        read(&self.settings).clone()
    }

    /// Whether the zone or the mode asks for DANE precedence (before the self-check).
    pub fn wanted_for(&self, zone: &ZoneOptions) -> bool {
        self.settings().wanted_for(zone)
    }

    /// Whether DANE precedence applies to lookups in `zone` now: wanted by the zone or
    /// the mode, and DNSSEC validation shown to work by the self-check. Until the
    /// check has passed it is not used: a lookup waits for the check (at most
    /// `deadline`) and, if it has not passed by then, is answered without DANE.
    pub async fn enabled_for(self: &Arc<Self>, zone: &ZoneOptions, deadline: Duration) -> bool {
        if !self.settings().wanted_for(zone) {
            return false;
        }
        match self.health.load(Ordering::Acquire) {
            HEALTH_OK => true,
            HEALTH_BROKEN => {
                let since = self
                    .clock
                    .now()
                    .saturating_sub(self.health_checked_at.load(Ordering::Acquire));
                if since >= RECHECK_AFTER {
                    // Checked again in the background; this lookup goes on without DANE.
                    drop(self.start_check());
                }
                false
            }
            _ => {
                let check = self.start_check();
                let _ = tokio::time::timeout(deadline, check).await;
                self.health.load(Ordering::Acquire) == HEALTH_OK
            }
        }
    }

    fn update_gauge(&self) {
        let state = self.health.load(Ordering::Acquire);
        self.metrics
            .dane
            .dane_enabled
            .set(i64::from(self.settings().on && state == HEALTH_OK));
        self.metrics
            .dane
            .dnssec_validation_failing
            .set(i64::from(state == HEALTH_BROKEN));
    }

    /// The self-check under way for the current settings, or a new one.
    fn start_check(self: &Arc<Self>) -> Check {
        let generation = self.generation.load(Ordering::Acquire);
        let mut current = lock(&self.check);
        if let Some((g, check)) = current.as_ref()
            && *g == generation
            && check.peek().is_none()
        {
            return check.clone();
        }
        // Claimed before it runs, so concurrent lookups of a broken setup start no more.
        self.health_checked_at
            .store(self.clock.now(), Ordering::Release);
        let this = self.clone();
        let lookup = self.settings().lookup.clone();
        let task = tokio::spawn(async move {
            this.run_health_check(&lookup, generation).await;
        });
        let check: Check = async move {
            let _ = task.await;
        }
        .boxed()
        .shared();
        *current = Some((generation, check.clone()));
        check
    }

    /// Runs the self-check now and applies its result (also a test hook).
    pub async fn check_validation_now(&self) -> Security {
        let lookup = self.settings().lookup.clone();
        let generation = self.generation.load(Ordering::Acquire);
        self.run_health_check(&lookup, generation).await
    }

    async fn run_health_check(&self, lookup: &DaneLookup, generation: u64) -> Security {
        let security = lookup.root_security().await;
        if self.generation.load(Ordering::Acquire) != generation {
            // A reload came in meanwhile; its own check decides.
            return security;
        }
        self.health_checked_at
            .store(self.clock.now(), Ordering::Release);
        if security == Security::Secure {
            match self.health.swap(HEALTH_OK, Ordering::AcqRel) {
                HEALTH_BROKEN => {
                    tracing::info!("DNSSEC validation works again; DANE precedence resumed")
                }
                HEALTH_UNKNOWN => {
                    tracing::info!("DNSSEC validation works; DANE precedence in force")
                }
                _ => {}
            }
        } else if self.health.swap(HEALTH_BROKEN, Ordering::AcqRel) != HEALTH_BROKEN {
            tracing::error!(
                root_dnskey = security.as_str(),
                "DNSSEC validation does not work (the root's DNSKEY RRset is not secure: do resolver.nameservers pass DNSSEC records through? is dane.trust_anchor right?); DANE precedence suspended, MTA-STS answers continue"
            );
        }
        self.update_gauge();
        security
    }

    /// The verdict for `domain` (normalised): remembered, or looked up now. A lookup
    /// that does not finish within `deadline` defers (`Temp`): DANE cannot be ruled
    /// out, and the lookup goes on into the cache for the retry.
    pub async fn verdict(self: &Arc<Self>, domain: &str, deadline: Duration) -> Arc<Cached> {
        let now = self.clock.now();
        if let Some(c) = self.verdicts.get_live(domain, now) {
            // Refresh ahead in the last quarter of the TTL.
            let ttl = c.expires_at.saturating_sub(c.checked_at);
            if now >= c.expires_at.saturating_sub(ttl / 4) {
                drop(self.flight(domain));
            }
            self.hit_counters[verdict_index(&c.verdict)].inc();
            return c;
        }
        let flight = self.flight(domain);
        match tokio::time::timeout(deadline, flight).await {
            Ok(c) => {
                self.metrics
                    .dane
                    .dane_verdicts
                    .with_label_values(&[c.verdict.as_str(), "miss"])
                    .inc();
                c
            }
            Err(_) => {
                tracing::warn!(
                    domain,
                    ?deadline,
                    "DANE lookups did not finish before the lookup deadline; deferring"
                );
                self.metrics
                    .dane
                    .dane_verdicts
                    .with_label_values(&["temp", "timeout"])
                    .inc();
                Cached::deferral("DANE lookups still running", now)
            }
        }
    }

    /// The remembered verdict, if any (expired ones included).
    pub fn cached(&self, domain: &str) -> Option<Arc<Cached>> {
        self.verdicts.peek(domain)
    }

    /// Forgets a domain's verdict.
    pub fn purge(&self, domain: &str) -> bool {
        self.verdicts.remove(domain)
    }

    pub fn len(&self) -> usize {
        self.verdicts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Starts (or joins) the DANE lookups for `domain`, one set per domain at a time.
    fn flight(self: &Arc<Self>, domain: &str) -> Flight<Arc<Cached>> {
        let this = self.clone();
        let owned = domain.to_owned();
        let clock = self.clock.clone();
        let failed_domain = domain.to_owned();
        self.inflight.join_or_start(
            domain,
            move || async move { this.run(&owned).await },
            // The lookup task panicked or was cancelled: defer, remember nothing.
            move || {
                tracing::error!(domain = %failed_domain, "DANE lookup task failed");
                Cached::deferral("DANE lookup failed", clock.now())
            },
        )
    }

    async fn run(&self, domain: &str) -> Arc<Cached> {
        let now = self.clock.now();
        let lookup = self.settings().lookup.clone();
        let Found { mx, min_ttl } = lookup.facts(domain).await;
        let verdict = rules::verdict(&mx);
        let ttl = rules::verdict_ttl(&mx, min_ttl);
        let bogus = bogus_rrsets(&mx);
        for rrset in &bogus {
            self.metrics
                .dane
                .dnssec_bogus
                .with_label_values(&[rrset])
                .inc();
        }
        if !bogus.is_empty() {
            // Remembered for at most 60 s, so this is once per domain per TTL.
            tracing::warn!(domain, rrsets = ?bogus, verdict = verdict.as_str(), "DNSSEC validation failed (bogus)");
        }
        let cached = Arc::new(Cached {
            verdict,
            mx,
            checked_at: now,
            expires_at: now.saturating_add(ttl),
        });
        self.verdicts.put(domain, cached.clone());
        self.dirty.store(true, Ordering::Release);
        cached
    }

    /// Reads the verdicts saved at `path` (the live ones) and saves there from now on.
    /// A missing or unreadable file only costs fresh lookups: logged, never fatal.
    pub fn restore(&self, path: PathBuf) -> usize {
        let now = self.clock.now();
        let mut restored = 0;
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Vec<(String, Cached)>>(&bytes) {
                Ok(saved) => {
                    for (domain, c) in saved.into_iter().filter(|(_, c)| c.expires_at > now) {
                        self.verdicts.put(&domain, Arc::new(c));
                        restored += 1;
                    }
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "saved DANE verdicts unreadable; looking them up again");
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read saved DANE verdicts");
            }
        }
        *lock(&self.snapshot) = Some(path);
        restored
    }

    /// Saves the live verdicts (not deferrals) if any changed since the last save:
    /// written to a temporary file, synced, then renamed over the old one, so a crash
    /// leaves the old file or the new one. Blocking: call it off the async threads.
    pub fn save(&self) -> Result<bool, std::io::Error> {
        let Some(path) = lock(&self.snapshot).clone() else {
            return Ok(false);
        };
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(false);
        }
        let now = self.clock.now();
        let live: Vec<(String, Cached)> = self
            .verdicts
            .snapshot()
            .into_iter()
            .filter(|(_, c)| c.expires_at > now && !matches!(c.verdict, Verdict::Temp { .. }))
            .map(|(d, c)| (d, Cached::clone(&c)))
            .collect();
        let result = (|| {
            let bytes = serde_json::to_vec(&live).map_err(std::io::Error::other)?;
            let tmp = path.with_extension("tmp");
            {
                let mut f = std::fs::File::create(&tmp)?;
                std::io::Write::write_all(&mut f, &bytes)?;
                f.sync_all()?;
            }
            std::fs::rename(&tmp, &path)
        })();
        if result.is_err() {
            // Try again at the next save.
            self.dirty.store(true, Ordering::Release);
        }
        result.map(|()| true)
    }
}

/// Which RRsets of the facts were bogus (for the metric and the log line).
fn bogus_rrsets(mx: &MxFacts) -> Vec<&'static str> {
    let mut out = Vec::new();
    match mx {
        MxFacts::Bogus => out.push("mx"),
        MxFacts::Hosts { hosts, .. } => {
            for h in hosts {
                if h.address == Security::Bogus {
                    out.push("address");
                }
                if h.tlsa == TlsaFacts::Bogus {
                    out.push("tlsa");
                }
            }
        }
        MxFacts::NoDomain | MxFacts::Failed => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_follows_postfix() {
        assert!(auto_mode("dnssec\n"));
        assert!(!auto_mode("enabled"));
        assert!(!auto_mode(""));
        assert!(!auto_mode("disabled"));
    }
}
