//! The TLSRPT sender: after each UTC day, each report to each destination of its
//! record, at the time [`super::schedule`] gives, each delivery recorded before and
//! after it is tried; in a fleet, under a lease so that one daemon sends it. A day
//! is reported in periods ([`super::period`]): the whole day, or, after partial
//! sends, each stretch between them and the rest of the day.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use std::collections::HashSet;
use std::sync::Mutex;

use super::collector::{HttpClient, ReportStatus};
use super::day::Day;
use super::deliver::{self, Failure};
use super::ledger::Ledger;
use super::mail::{self, Envelope};
use super::period::{self, Cut};
use super::record::{self, Destination};
use super::report::Submitter;
use super::report::{self, Report};
use super::schedule::{Delivery, State};
use super::smtp;
use crate::clock::Clock;
use crate::config::TlsrptConfig;
use crate::locks::lock;
use crate::metrics::Metrics;
use crate::storage::StoreError;

/// The sender and what it keeps: its settings, the ledger it reads counters from and
/// records deliveries in, and the days it is done with.
pub struct Sender {
    config: TlsrptConfig,
    submitter: Submitter,
    ledger: Arc<dyn Ledger>,
    /// Days whose every delivery is done (sent or given up), not looked at again.
    finished: Mutex<HashSet<Day>>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    http: HttpClient,
}

impl Sender {
    pub fn new(
        config: TlsrptConfig,
        ledger: Arc<dyn Ledger>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        http: HttpClient,
    ) -> Self {
        let submitter = Submitter {
            organization: config.organization_name.clone(),
            contact: config.contact_info.clone(),
            domain: config.submitter_domain(),
        };
        Self {
            config,
            submitter,
            ledger,
            finished: Mutex::new(HashSet::new()),
            clock,
            metrics,
            http,
        }
    }

    fn now(&self) -> u64 {
        self.clock.now()
    }

    /// One pass of the sender: every finished day's due deliveries, then pruning.
    pub async fn send_due(&self) -> Result<(), StoreError> {
        let now = self.clock.now();
        let today = Day::of(now);
        let (mut pending, mut oldest) = (0i64, 0u64);
        for day in self.ledger.days().await? {
            if day > today || lock(&self.finished).contains(&day) {
                continue;
            }
            // Today: only the periods partial sends closed (their retries).
            let open_end = (day < today).then(|| day.end());
            let mut open = false;
            for outcome in self.deliver(day, open_end, false).await? {
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
            if !open && day < today {
                lock(&self.finished).insert(day);
            }
        }
        self.metrics.tlsrpt.pending.set(pending);
        self.metrics.tlsrpt.oldest_pending.set(oldest as i64);
        let keep = self.config.keep_days.get() as u64;
        let removed = self.ledger.prune_before(today.minus(keep)).await?;
        if removed > 0 {
            tracing::info!(keys = removed, keep_days = keep, "TLSRPT: old days pruned");
            lock(&self.finished).retain(|d| *d >= today.minus(keep));
        }
        Ok(())
    }

    /// The reports of `day`: those of the periods partial sends closed, then, with
    /// `open_end`, the open period's up to that second.
    pub async fn reports(
        &self,
        day: Day,
        open_end: Option<u64>,
    ) -> Result<Vec<Report>, StoreError> {
        let node = self.ledger.node().await?;
        let cuts = self.ledger.cuts(day).await?;
        let current = self.ledger.day_counts(day).await?;
        let mut out = Vec::new();
        for p in period::periods(day, &cuts, &current, open_end) {
            for (group, policies) in &p.counts {
                out.push(report::build(
                    &self.submitter,
                    &node,
                    group,
                    (p.begin, p.end),
                    policies,
                ));
            }
        }
        Ok(out)
    }

    /// `day`'s reports as they stand (a day in progress: up to now, closing nothing),
    /// with what is recorded of their deliveries.
    pub async fn show(&self, day: Day) -> Result<Vec<ReportStatus>, StoreError> {
        let now = self.now();
        let open_end = if day >= Day::of(now) { now } else { day.end() };
        let mut outcomes = Vec::new();
        for report in self.reports(day, Some(open_end)).await? {
            let dests = record::destinations(&report.group.record).unwrap_or_default();
            let mut destinations = Vec::new();
            for dest in dests.usable {
                let d = self
                    .ledger
                    .delivery(day, &report.id, &dest.to_string())
                    .await?;
                destinations.push((dest, d));
            }
            outcomes.push(ReportStatus {
                report,
                destinations,
                refused: dests.refused,
                tried: false,
            });
        }
        Ok(outcomes)
    }

    /// Sends `day`'s reports now, every one not yet sent, and returns those it tried.
    /// With `partial` (a day not over), first closes the day's open period: the
    /// sessions since the last report become a report of their own, and the day's
    /// later reports start after it.
    pub async fn send_now(&self, day: Day, partial: bool) -> Result<Vec<ReportStatus>, StoreError> {
        let open_end = if partial && day >= Day::of(self.now()) {
            self.cut(day).await?;
            None
        } else {
            Some(day.end())
        };
        let mut outcomes = self.deliver(day, open_end, true).await?;
        outcomes.retain(|o| o.tried);
        Ok(outcomes)
    }

    /// Closes `day`'s open period now: the day's counters are recorded as the cut (the
    /// collector stored what it counted first: it belongs to this period). No cut is
    /// made when nothing was counted since the last one.
    async fn cut(&self, day: Day) -> Result<(), StoreError> {
        let cuts = self.ledger.cuts(day).await?;
        let current = self.ledger.day_counts(day).await?;
        if period::open_since_last(&cuts, &current).is_empty() {
            return Ok(());
        }
        // Periods never overlap, even with two cuts in one second.
        let after_last = cuts.last().map_or(day.start(), |c| c.at + 1);
        let at = self.now().min(day.end()).max(after_last);
        self.ledger
            .add_cut(
                day,
                &Cut {
                    at,
                    counts: current,
                },
            )
            .await
    }

    /// Delivers the reports of `day`'s periods (see [`Self::reports`]): the due ones,
    /// or with `now_all` every one not yet sent.
    async fn deliver(
        &self,
        day: Day,
        open_end: Option<u64>,
        now_all: bool,
    ) -> Result<Vec<ReportStatus>, StoreError> {
        let mut outcomes = Vec::new();
        for report in self.reports(day, open_end).await? {
            let dests = match record::destinations(&report.group.record) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(domain = %report.group.domain, error = %e, "TLSRPT: record unusable; no report sent");
                    continue;
                }
            };
            let mut outcome = ReportStatus {
                report,
                destinations: Vec::new(),
                refused: dests.refused,
                tried: false,
            };
            for dest in dests.usable {
                let (d, tried) = self.deliver_one(&outcome.report, &dest, now_all).await?;
                outcome.tried |= tried;
                outcome.destinations.push((dest, Some(d)));
            }
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    /// One report to one destination if it is due (or `now_all`); the delivery's
    /// record, and whether it was tried now.
    async fn deliver_one(
        &self,
        report: &Report,
        dest: &Destination,
        now_all: bool,
    ) -> Result<(Delivery, bool), StoreError> {
        let day = report.group.day;
        let key = dest.to_string();
        let d = match self.ledger.delivery(day, &report.id, &key).await? {
            Some(d) => d,
            None => {
                let spread = self.config.spread.as_secs();
                let d = Delivery::new(day, random_offset(&report.id, &key), spread);
                self.ledger
                    .record_delivery(day, &report.id, &key, &d, true)
                    .await?
            }
        };
        let now = self.clock.now();
        if !(d.due(now) || (now_all && d.state != State::Sent)) {
            return Ok((d, false));
        }
        let Some(lease) = self.ledger.lease(&report.id, &key).await? else {
            // Another daemon of the fleet is sending it.
            return Ok((d, false));
        };
        // It may have been sent while this daemon waited for the lease.
        let result = match self.ledger.delivery(day, &report.id, &key).await {
            Ok(Some(current)) if current.state == State::Sent => Ok(current),
            Ok(current) => {
                let d = self.try_send(report, dest, current.unwrap_or(d)).await;
                self.ledger
                    .record_delivery(day, &report.id, &key, &d, false)
                    .await
            }
            Err(e) => Err(e),
        };
        self.ledger.release(&report.id, &key, &lease).await;
        result.map(|d| (d, true))
    }

    /// One try, and what it makes of the delivery record.
    async fn try_send(&self, report: &Report, dest: &Destination, mut d: Delivery) -> Delivery {
        if d.state == State::GaveUp {
            d.state = State::Pending;
        }
        let key = dest.to_string();
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
            Err(failure) => {
                let e = failure.message;
                let state = if failure.permanent {
                    d.refused(self.clock.now(), e.clone())
                } else {
                    d.failed(self.clock.now(), e.clone(), self.config.retry_for.as_secs())
                };
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
        d
    }

    async fn send(&self, report: &Report, dest: &Destination) -> Result<(), Failure> {
        match dest {
            Destination::Https(url) => deliver::https(&(self.http)(), url, report.gzip()).await,
            Destination::Mailto(to) => {
                let message = self.message(report, to).ok_or_else(|| Failure {
                    message: "a header value is not safe to write".to_owned(),
                    permanent: true,
                })?;
                let from = &self.config.report_from;
                match &self.config.sendmail {
                    Some(program) => {
                        deliver::sendmail(program, from, &message, deliver::MAIL_TIMEOUT).await
                    }
                    None => smtp::submit(
                        self.config.smtp,
                        &smtp::host_name(),
                        from,
                        to,
                        &message,
                        deliver::MAIL_TIMEOUT,
                    )
                    .await
                    .map_err(Failure::from),
                }
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
