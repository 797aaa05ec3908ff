//! Where a day's counters are read and its deliveries recorded and leased: this
//! daemon's own report store ([`local`]), or, for a fleet, Redis, with this daemon's
//! store as the outbox that carries its counts there ([`fleet`]). The sender asks the
//! ledger and never knows which it has.

use futures::future::BoxFuture;

use super::counts::Tally;
use super::day::Day;
use super::period::Cut;
use super::schedule::Delivery;
use super::store::DayCounts;
use crate::storage::StoreError;

pub mod fleet;
pub mod local;

pub use self::fleet::{FleetLedger, FleetReports};
pub use self::local::LocalLedger;

/// A ledger's answer, later.
pub type Pending<'a, T> = BoxFuture<'a, Result<T, StoreError>>;

pub trait Ledger: Send + Sync {
    /// Stores counted sessions in this daemon's store: as counters (alone), or as an
    /// outbox batch on its way to the fleet. Blocking (called off the async threads).
    fn record(&self, tally: &Tally) -> Result<(), StoreError>;
    /// Moves what [`Ledger::record`] stored on to where it is shared (nothing to do
    /// for a single daemon).
    fn share(&self) -> BoxFuture<'_, ()>;
    /// The days that have counters, oldest first.
    fn days(&self) -> Pending<'_, Vec<Day>>;
    /// One day's counters.
    fn day_counts(&self, day: Day) -> Pending<'_, DayCounts>;
    fn delivery<'a>(
        &'a self,
        day: Day,
        report: &'a str,
        dest: &'a str,
    ) -> Pending<'a, Option<Delivery>>;
    /// Records a delivery; with `only_new`, keeps one already recorded (by another
    /// daemon of the fleet) and returns that.
    fn record_delivery<'a>(
        &'a self,
        day: Day,
        report: &'a str,
        dest: &'a str,
        delivery: &'a Delivery,
        only_new: bool,
    ) -> Pending<'a, Delivery>;
    /// The right to send a delivery now: always for a single daemon; in a fleet, a
    /// lease no other daemon holds (`None` while one does).
    fn lease<'a>(&'a self, report: &'a str, dest: &'a str) -> Pending<'a, Option<String>>;
    fn release<'a>(&'a self, report: &'a str, dest: &'a str, token: &'a str) -> BoxFuture<'a, ()>;
    /// The id in the report ids of whoever sends: this daemon's store, or the fleet.
    fn node(&self) -> Pending<'_, String>;
    /// A day's cuts (partial sends), oldest first.
    fn cuts(&self, day: Day) -> Pending<'_, Vec<Cut>>;
    fn add_cut<'a>(&'a self, day: Day, cut: &'a Cut) -> Pending<'a, ()>;
    /// Forgets days before `day`; returns the local keys removed.
    fn prune_before(&self, day: Day) -> Pending<'_, usize>;
}
