//! A single daemon's ledger: its own report store, nothing shared.

use std::sync::Arc;

use futures::FutureExt;
use futures::future::{BoxFuture, ready};

use super::{Ledger, Pending};
use crate::storage::StoreError;
use crate::tlsrpt::counts::Tally;
use crate::tlsrpt::day::Day;
use crate::tlsrpt::period::Cut;
use crate::tlsrpt::schedule::Delivery;
use crate::tlsrpt::store::{DayCounts, ReportStore};

pub struct LocalLedger {
    store: Arc<dyn ReportStore>,
}

impl LocalLedger {
    pub fn new(store: Arc<dyn ReportStore>) -> Self {
        Self { store }
    }
}

/// A store call as a ledger answer (the store is local and quick).
fn now<'a, T: Send + 'a>(result: Result<T, StoreError>) -> Pending<'a, T> {
    ready(result).boxed()
}

impl Ledger for LocalLedger {
    fn record(&self, tally: &Tally) -> Result<(), StoreError> {
        self.store.add(tally)
    }

    fn share(&self) -> BoxFuture<'_, ()> {
        ready(()).boxed()
    }

    fn days(&self) -> Pending<'_, Vec<Day>> {
        now(self.store.days())
    }

    fn day_counts(&self, day: Day) -> Pending<'_, DayCounts> {
        now(self.store.day(day))
    }

    fn delivery<'a>(
        &'a self,
        day: Day,
        report: &'a str,
        dest: &'a str,
    ) -> Pending<'a, Option<Delivery>> {
        now(self.store.delivery(day, report, dest))
    }

    fn record_delivery<'a>(
        &'a self,
        day: Day,
        report: &'a str,
        dest: &'a str,
        delivery: &'a Delivery,
        _only_new: bool,
    ) -> Pending<'a, Delivery> {
        now(self
            .store
            .set_delivery(day, report, dest, delivery)
            .map(|()| delivery.clone()))
    }

    fn lease<'a>(&'a self, _: &'a str, _: &'a str) -> Pending<'a, Option<String>> {
        now(Ok(Some(String::new())))
    }

    fn release<'a>(&'a self, _: &'a str, _: &'a str, _: &'a str) -> BoxFuture<'a, ()> {
        ready(()).boxed()
    }

    fn node(&self) -> Pending<'_, String> {
        now(Ok(self.store.node()))
    }

    fn cuts(&self, day: Day) -> Pending<'_, Vec<Cut>> {
        now(self.store.cuts(day))
    }

    fn add_cut<'a>(&'a self, day: Day, cut: &'a Cut) -> Pending<'a, ()> {
        now(self.store.add_cut(day, cut))
    }

    fn prune_before(&self, day: Day) -> Pending<'_, usize> {
        now(self.store.prune_before(day))
    }
}
