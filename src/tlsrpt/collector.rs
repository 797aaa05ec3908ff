//! The TLSRPT service: its state, the collector (Postfix's datagrams into counters,
//! stored within a second; in a fleet, moved on to Redis), and where counters and
//! delivery records are kept (this daemon's store, or the fleet's Redis). The sender
//! is [`super::sender`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UnixDatagram;
use tokio_util::sync::CancellationToken;

use super::counts::Tally;
use super::datagram::{self, DatagramError, MAX_DATAGRAM};
use super::day::Day;
use super::known::{PolicyFailure, reclassify};
use super::ledger::{FleetLedger, FleetReports, Ledger, LocalLedger};
use super::record::Destination;
use super::report::Report;
use super::schedule::Delivery;
use super::sender::Sender;
use super::store::ReportStore;
use crate::clock::Clock;
use crate::config::TlsrptConfig;
use crate::locks::lock;
use crate::metrics::Metrics;
use crate::storage::{Store, StoreError};

/// Counters reach the disk at least this often.
pub const PERSIST_EVERY: Duration = Duration::from_millis(500);
/// How often the sender looks for due deliveries.
const SEND_EVERY: Duration = Duration::from_secs(60);
/// At most one log line about bad datagrams this often (with how many were not logged).
const BAD_LOG_EVERY: u64 = 10;

/// Where the HTTPS client comes from: discovery's, as currently configured.
pub type HttpClient = Box<dyn Fn() -> reqwest::Client + Send + Sync>;

/// Whether a domain's published policy could not be used when it was last looked up
/// (and why): the cache knows.
pub type KnownFailures = Box<dyn Fn(&str) -> Option<(PolicyFailure, String)> + Send + Sync>;

/// What the service takes from the rest of the daemon.
pub struct Links {
    pub http: HttpClient,
    pub known: KnownFailures,
    /// With `cache.backend = "redis"`: the fleet's counters, deliveries and leases.
    pub fleet: Option<Arc<FleetReports>>,
    /// What was found wrong with the report store when it was opened.
    pub damage: Option<String>,
}

/// TLSRPT in the daemon: the collector's state, and the sender it hands reports to.
pub struct Tlsrpt {
    store: Arc<dyn ReportStore>,
    /// Counted and not yet stored.
    pending: Mutex<Tally>,
    bad_log: Mutex<(u64, u64)>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    known: KnownFailures,
    ledger: Arc<dyn Ledger>,
    damage: Option<String>,
    sender: Sender,
}

/// One report of a day, with its destinations and what is recorded of each delivery
/// (none yet before the day's first pass of the sender), and the `rua` URIs refused.
#[derive(Debug, Clone)]
pub struct ReportStatus {
    pub report: Report,
    pub destinations: Vec<(Destination, Option<Delivery>)>,
    pub refused: Vec<(String, String)>,
    /// Whether a delivery was tried by the call that made this outcome.
    pub tried: bool,
}

impl Tlsrpt {
    pub fn new(
        config: TlsrptConfig,
        store: Arc<dyn ReportStore>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        links: Links,
    ) -> Arc<Self> {
        let ledger: Arc<dyn Ledger> = match links.fleet {
            Some(fleet) => Arc::new(FleetLedger::new(fleet, store.clone(), metrics.clone())),
            None => Arc::new(LocalLedger::new(store.clone())),
        };
        let sender = Sender::new(
            config,
            ledger.clone(),
            clock.clone(),
            metrics.clone(),
            links.http,
        );
        Arc::new(Self {
            store,
            pending: Mutex::new(Tally::default()),
            bad_log: Mutex::new((0, 0)),
            clock,
            metrics,
            known: links.known,
            ledger,
            damage: links.damage,
            sender,
        })
    }

    /// What was found wrong with the report store when it was opened, if anything.
    pub fn store_damage(&self) -> Option<&str> {
        self.damage.as_deref()
    }

    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    /// Counts one datagram (`len` is its size as received, which may exceed the
    /// buffer), or counts and logs why it was refused.
    pub fn receive(&self, bytes: &[u8], len: usize) {
        let parsed = if len > MAX_DATAGRAM {
            Err(DatagramError::TooLarge(len))
        } else {
            datagram::parse(bytes)
        };
        match parsed {
            Ok(mut d) => {
                self.apply_known_failures(&mut d);
                let day = Day::of(self.clock.now());
                let mut pending = lock(&self.pending);
                pending.add(day, &d);
                self.metrics.tlsrpt.unstored.set(pending.datagrams as i64);
                self.metrics
                    .tlsrpt
                    .datagrams
                    .with_label_values(&["counted"])
                    .inc();
            }
            Err(e) => {
                let result = match e {
                    DatagramError::TooLarge(_) => "oversized",
                    _ => "malformed",
                };
                self.metrics
                    .tlsrpt
                    .datagrams
                    .with_label_values(&[result])
                    .inc();
                self.log_bad(&e);
            }
        }
    }

    /// Sessions Postfix sent under no policy because the domain's policy could not be
    /// used are reported as that policy's failure (see [`super::known`]).
    fn apply_known_failures(&self, d: &mut super::datagram::Datagram) {
        let mut known = None;
        for result in &mut d.results {
            if !result.policy.contains("\"policy-type\":9") {
                continue;
            }
            let Some((failure, message)) = known.get_or_insert_with(|| (self.known)(&d.domain))
            else {
                return;
            };
            if let Some(moved) = reclassify(result, &d.domain, *failure, message) {
                *result = moved;
            }
        }
    }

    fn log_bad(&self, e: &DatagramError) {
        let now = self.clock.now();
        let mut log = lock(&self.bad_log);
        if now >= log.0 {
            let suppressed = log.1;
            *log = (now + BAD_LOG_EVERY, 0);
            drop(log);
            tracing::warn!(error = %e, suppressed, "TLSRPT datagram refused");
        } else {
            log.1 += 1;
        }
    }

    /// Stores what was counted since the last call and makes it durable. On failure
    /// the counts stay in memory, to be stored with the next ones.
    pub fn persist(&self) -> Result<u64, StoreError> {
        let tally = std::mem::take(&mut *lock(&self.pending));
        if tally.is_empty() {
            return Ok(0);
        }
        let stored = self.ledger.record(&tally).and_then(|()| self.store.flush());
        let mut pending = lock(&self.pending);
        let n = tally.datagrams;
        if stored.is_err() {
            pending.absorb(tally);
        }
        self.metrics.tlsrpt.unstored.set(pending.datagrams as i64);
        stored.map(|()| n)
    }

    /// Reads datagrams until `stop`, storing counters every [`PERSIST_EVERY`]; stores
    /// what is left before it returns.
    pub async fn collect(self: Arc<Self>, socket: UnixDatagram, stop: CancellationToken) {
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        let mut tick = tokio::time::interval(PERSIST_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                received = socket.recv(&mut buf) => match received {
                    Ok(n) => self.receive(&buf[..n.min(MAX_DATAGRAM + 1)], n),
                    Err(e) => {
                        tracing::warn!(error = %e, "TLSRPT socket read failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = tick.tick() => {
                    failing = self.persist_logged(failing).await;
                    self.sync_fleet().await;
                }
            }
        }
        self.persist_logged(failing).await;
        self.sync_fleet().await;
    }

    /// [`Self::persist`] off the async threads, logging a failure once until it
    /// recovers. Returns whether it is failing.
    async fn persist_logged(self: &Arc<Self>, failing: bool) -> bool {
        let me = self.clone();
        let result = tokio::task::spawn_blocking(move || me.persist())
            .await
            .unwrap_or_else(|e| Err(StoreError::Backend(Store::Reports, e.to_string())));
        match result {
            Ok(_) if failing => {
                tracing::info!("TLSRPT counters stored again");
                false
            }
            Ok(_) => false,
            Err(e) => {
                if !failing {
                    tracing::error!(error = %e, "cannot store TLSRPT counters; keeping them in memory and retrying");
                }
                true
            }
        }
    }

    /// Datagrams counted in memory and not yet stored.
    pub fn unstored(&self) -> u64 {
        lock(&self.pending).datagrams
    }

    /// Moves stored counts on to where they are shared (a fleet's Redis).
    pub async fn sync_fleet(&self) {
        self.ledger.share().await;
    }

    /// Sends due reports every minute until `stop`.
    pub async fn send_loop(self: Arc<Self>, stop: CancellationToken) {
        loop {
            if let Err(e) = self.sender.send_due().await {
                tracing::warn!(error = %e, "TLSRPT sender cannot read its store; retrying");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(SEND_EVERY) => {}
            }
        }
    }

    /// One pass of the sender (see [`Sender::send_due`]).
    pub async fn send_due(&self) -> Result<(), StoreError> {
        self.sender.send_due().await
    }

    /// A day's reports and what is recorded of each delivery (see [`Sender::show`]).
    pub async fn show(&self, day: Day) -> Result<Vec<ReportStatus>, StoreError> {
        self.sender.show(day).await
    }

    /// Sends `day`'s reports now (see [`Sender::send_now`]); with `partial`, what was
    /// counted in memory is stored and shared first, since it belongs to the period
    /// the send closes.
    pub async fn send_now(&self, day: Day, partial: bool) -> Result<Vec<ReportStatus>, StoreError> {
        if partial {
            self.persist()?;
            self.sync_fleet().await;
        }
        self.sender.send_now(day, partial).await
    }

    /// The message a mailed report goes out as (see [`Sender::message`]).
    pub fn message(&self, report: &Report, to: &str) -> Option<Vec<u8>> {
        self.sender.message(report, to)
    }
}
