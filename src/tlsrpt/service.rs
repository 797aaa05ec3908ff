//! The TLSRPT service: the collector (Postfix's datagrams into counters, stored
//! within a second) and the sender (each finished day's reports to their
//! destinations, each delivery recorded), around one [`ReportStore`].

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UnixDatagram;
use tokio_util::sync::CancellationToken;

use super::counts::Tally;
use super::datagram::{self, DatagramError, MAX_DATAGRAM};
use super::day::Day;
use super::deliver;
use super::known::{PolicyFailure, reclassify};
use super::mail::{self, Envelope};
use super::record::{self, Destination};
use super::report::{self, Report, Submitter};
use super::schedule::{Delivery, State};
use super::store::ReportStore;
use crate::cache::store::StoreError;
use crate::clock::Clock;
use crate::config::TlsrptConfig;
use crate::locks::lock;
use crate::metrics::Metrics;

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

pub struct Tlsrpt {
    config: TlsrptConfig,
    submitter: Submitter,
    store: Arc<dyn ReportStore>,
    /// Counted and not yet stored.
    pending: Mutex<Tally>,
    /// Days whose every delivery is done (sent or given up), not looked at again.
    finished: Mutex<HashSet<Day>>,
    bad_log: Mutex<(u64, u64)>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    http: HttpClient,
    known: KnownFailures,
}

/// One report of a day, with its destinations and what is recorded of each delivery
/// (none yet before the day's first pass of the sender), and the `rua` URIs refused.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub report: Report,
    pub destinations: Vec<(Destination, Option<Delivery>)>,
    pub refused: Vec<(String, String)>,
}

impl Tlsrpt {
    pub fn new(
        config: TlsrptConfig,
        store: Arc<dyn ReportStore>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        http: HttpClient,
        known: KnownFailures,
    ) -> Arc<Self> {
        let submitter = Submitter {
            organization: config.organization_name.clone(),
            contact: config.contact_info.clone(),
            domain: config.submitter_domain(),
        };
        Arc::new(Self {
            config,
            submitter,
            store,
            pending: Mutex::new(Tally::default()),
            finished: Mutex::new(HashSet::new()),
            bad_log: Mutex::new((0, 0)),
            clock,
            metrics,
            http,
            known,
        })
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
        let stored = self.store.add(&tally).and_then(|()| self.store.flush());
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
                _ = tick.tick() => failing = self.persist_logged(failing).await,
            }
        }
        self.persist_logged(failing).await;
    }

    /// [`Self::persist`] off the async threads, logging a failure once until it
    /// recovers. Returns whether it is failing.
    async fn persist_logged(self: &Arc<Self>, failing: bool) -> bool {
        let me = self.clone();
        let result = tokio::task::spawn_blocking(move || me.persist())
            .await
            .unwrap_or_else(|e| Err(StoreError::Backend(e.to_string())));
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

    /// Sends due reports every minute until `stop`.
    pub async fn send_loop(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let me = self.clone();
            if let Err(e) = me.send_due().await {
                tracing::warn!(error = %e, "TLSRPT sender cannot read its store; retrying");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(SEND_EVERY) => {}
            }
        }
    }

    /// One pass of the sender: every finished day's due deliveries, then pruning.
    pub async fn send_due(&self) -> Result<(), StoreError> {
        let now = self.clock.now();
        let today = Day::of(now);
        let (mut pending, mut oldest) = (0i64, 0u64);
        for day in self.store.days()? {
            if day >= today || lock(&self.finished).contains(&day) {
                continue;
            }
            let mut open = false;
            for outcome in self.deliver_day(day, false, false).await? {
                for d in outcome.destinations.iter().filter_map(|(_, d)| d.as_ref()) {
                    if d.state == State::Pending {
                        open = true;
                        pending += 1;
                        if d.first_try < now {
                            oldest = oldest.max(now - d.first_try);
                        }
                    }
                }
            }
            if !open {
                lock(&self.finished).insert(day);
            }
        }
        self.metrics.tlsrpt.pending.set(pending);
        self.metrics.tlsrpt.oldest_pending.set(oldest as i64);
        let keep = self.config.keep_days.get() as u64;
        let removed = self.store.prune_before(today.minus(keep))?;
        if removed > 0 {
            tracing::info!(keys = removed, keep_days = keep, "TLSRPT: old days pruned");
            lock(&self.finished).retain(|d| *d >= today.minus(keep));
        }
        Ok(())
    }

    /// The reports of `day` as they stand now; `partial` marks them as covering a
    /// day not yet over (a distinct report id, never recorded as the day's report).
    pub fn reports(&self, day: Day, partial: bool) -> Result<Vec<Report>, StoreError> {
        let now = self.clock.now();
        Ok(self
            .store
            .day(day)?
            .iter()
            .map(|(group, policies)| {
                if partial {
                    report::partial(&self.submitter, group, policies, now)
                } else {
                    report::build(&self.submitter, group, policies)
                }
            })
            .collect())
    }

    /// `day`'s reports as they stand, with what is recorded of their deliveries.
    pub fn show(&self, day: Day, partial: bool) -> Result<Vec<Outcome>, StoreError> {
        let mut outcomes = Vec::new();
        for report in self.reports(day, partial)? {
            let dests = record::destinations(&report.group.record).unwrap_or_default();
            let mut destinations = Vec::new();
            for dest in dests.usable {
                let d = self.store.delivery(day, &report.id, &dest.to_string())?;
                destinations.push((dest, d));
            }
            outcomes.push(Outcome {
                report,
                destinations,
                refused: dests.refused,
            });
        }
        Ok(outcomes)
    }

    /// Datagrams counted in memory and not yet stored.
    pub fn unstored(&self) -> u64 {
        lock(&self.pending).datagrams
    }

    /// Delivers `day`'s reports: the due ones, or with `now_all` every one not yet
    /// sent. A partial report (`partial`, for a day not over) is sent to every
    /// destination and recorded under its own id.
    pub async fn deliver_day(
        &self,
        day: Day,
        now_all: bool,
        partial: bool,
    ) -> Result<Vec<Outcome>, StoreError> {
        let mut outcomes = Vec::new();
        for report in self.reports(day, partial)? {
            let dests = match record::destinations(&report.group.record) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(domain = %report.group.domain, error = %e, "TLSRPT: record unusable; no report sent");
                    continue;
                }
            };
            let mut outcome = Outcome {
                report,
                destinations: Vec::new(),
                refused: dests.refused,
            };
            for dest in dests.usable {
                let d = self.deliver_one(&outcome.report, &dest, now_all).await?;
                outcome.destinations.push((dest, Some(d)));
            }
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    async fn deliver_one(
        &self,
        report: &Report,
        dest: &Destination,
        now_all: bool,
    ) -> Result<Delivery, StoreError> {
        let day = report.group.day;
        let key = dest.to_string();
        let mut d = match self.store.delivery(day, &report.id, &key)? {
            Some(d) => d,
            None => {
                let spread = self.config.spread.as_secs();
                let d = Delivery::new(day, random_offset(&report.id, &key), spread);
                self.store.set_delivery(day, &report.id, &key, &d)?;
                d
            }
        };
        let now = self.clock.now();
        let due = d.due(now) || (now_all && d.state != State::Sent);
        if !due {
            return Ok(d);
        }
        if d.state == State::GaveUp {
            d.state = State::Pending;
        }
        let scheme = dest.scheme();
        match self.send(report, dest).await {
            Ok(()) => {
                d.sent(self.clock.now());
                self.metrics
                    .tlsrpt
                    .reports
                    .with_label_values(&[scheme, "sent"])
                    .inc();
                tracing::info!(domain = %report.group.domain, destination = %key, report = %report.id, "TLSRPT report sent");
            }
            Err(e) => {
                let state = d.failed(self.clock.now(), e.clone(), self.config.retry_for.as_secs());
                let result = if state == State::GaveUp {
                    "gave_up"
                } else {
                    "failed"
                };
                self.metrics
                    .tlsrpt
                    .reports
                    .with_label_values(&[scheme, result])
                    .inc();
                if state == State::GaveUp {
                    tracing::error!(domain = %report.group.domain, destination = %key, attempts = d.attempts, error = %e, "TLSRPT report given up");
                } else {
                    tracing::warn!(domain = %report.group.domain, destination = %key, attempts = d.attempts, error = %e, "TLSRPT report not delivered; will retry");
                }
            }
        }
        self.store.set_delivery(day, &report.id, &key, &d)?;
        Ok(d)
    }

    async fn send(&self, report: &Report, dest: &Destination) -> Result<(), String> {
        match dest {
            Destination::Https(url) => deliver::https(&(self.http)(), url, report.gzip()).await,
            Destination::Mailto(to) => {
                let message = self
                    .message(report, to)
                    .ok_or_else(|| "a header value is not safe to write".to_owned())?;
                deliver::sendmail(&self.config.sendmail, &message, deliver::SENDMAIL_TIMEOUT).await
            }
        }
    }

    /// The mail carrying `report` to `to`.
    pub fn message(&self, report: &Report, to: &str) -> Option<Vec<u8>> {
        mail::message(
            report,
            &Envelope {
                from: &self.config.report_from,
                to,
                submitter: &self.submitter.domain,
                organization: &self.submitter.organization,
                now: self.clock.now(),
            },
        )
    }
}

/// A random offset for a delivery's first try, drawn once and then recorded.
fn random_offset(report: &str, dest: &str) -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write(report.as_bytes());
    h.write(dest.as_bytes());
    h.finish()
}

/// Binds the collector's socket: the parent directory created if missing, a stale
/// socket replaced, the mode and group applied.
pub fn bind(config: &TlsrptConfig) -> std::io::Result<UnixDatagram> {
    let path = &config.socket;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    crate::remove_stale_socket(path)?;
    let socket = UnixDatagram::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(config.socket_mode.0))?;
    if let Some(group) = &config.socket_group {
        chgrp(path, group)?;
    }
    Ok(socket)
}

fn chgrp(path: &Path, group: &str) -> std::io::Result<()> {
    let gid = group_id(group).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no group named {group:?} (tlsrpt.socket_group)"),
        )
    })?;
    // Already right (a setgid directory gives the socket its group): nothing to do,
    // and no need to be a member of the group.
    if std::os::unix::fs::MetadataExt::gid(&std::fs::metadata(path)?) == gid {
        return Ok(());
    }
    std::os::unix::fs::chown(path, None, Some(gid))
}

/// A group's id, by name or number.
fn group_id(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse() {
        return Some(gid);
    }
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: getgrnam_r writes only into `group` and `buf` (whose length it is
    // given) and sets `result` to null or to `group`.
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::group = std::ptr::null_mut();
    let rc = unsafe {
        libc::getgrnam_r(
            c.as_ptr(),
            &mut group,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(group.gr_gid)
}
