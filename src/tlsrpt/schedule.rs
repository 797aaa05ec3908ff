//! When each report delivery is tried (pure): a day's reports go out at a random time
//! within `spread` after the day ends (RFC 8460 §4.1 asks senders not to send all at
//! midnight), a failed try is retried with growing back-off, and a delivery that has
//! not succeeded `retry_for` after its first try is given up, with a log line.

use serde::{Deserialize, Serialize};

use super::day::Day;

/// The first retry waits this long; each next one twice as long, up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: u64 = 300;
pub const MAX_BACKOFF: u64 = 2 * 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Pending,
    Sent,
    GaveUp,
}

/// What is recorded of one report's delivery to one destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub state: State,
    pub attempts: u32,
    /// When it was first due.
    pub first_try: u64,
    /// When it is next due (while pending).
    pub next_try: u64,
    pub last_error: Option<String>,
    /// When it was sent or given up.
    pub done_at: Option<u64>,
}

impl Delivery {
    /// A new delivery for a report of `day`, first due `offset` seconds into the
    /// spread after the day ends (`offset` is random, drawn by the caller once and
    /// recorded, so a restart does not move it).
    pub fn new(day: Day, offset: u64, spread: u64) -> Delivery {
        let first = day.end() + 1 + offset % spread.max(1);
        Delivery {
            state: State::Pending,
            attempts: 0,
            first_try: first,
            next_try: first,
            last_error: None,
            done_at: None,
        }
    }

    /// Whether it should be tried at `now`.
    pub fn due(&self, now: u64) -> bool {
        self.state == State::Pending && self.next_try <= now
    }

    /// Records a successful try.
    pub fn sent(&mut self, now: u64) {
        self.attempts += 1;
        self.state = State::Sent;
        self.last_error = None;
        self.done_at = Some(now);
    }

    /// Records a try refused for good (see [`super::deliver::Failure`]): given up now.
    pub fn refused(&mut self, now: u64, error: String) -> State {
        self.attempts += 1;
        self.last_error = Some(error);
        self.state = State::GaveUp;
        self.done_at = Some(now);
        self.state
    }

    /// Records a failed try: due again after the back-off, or given up once
    /// `retry_for` seconds have passed since the first try. Returns the new state.
    pub fn failed(&mut self, now: u64, error: String, retry_for: u64) -> State {
        self.attempts += 1;
        self.last_error = Some(error);
        let shift = self.attempts.saturating_sub(1).min(16);
        let backoff = (FIRST_BACKOFF << shift).min(MAX_BACKOFF);
        let next = now + backoff;
        if next > self.first_try.saturating_add(retry_for) {
            self.state = State::GaveUp;
            self.done_at = Some(now);
        } else {
            self.next_try = next;
        }
        self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_tries_fall_within_the_spread_after_the_day() {
        let day = Day(20_000);
        for offset in [0, 1, 3599, 14_399, 14_400, u64::MAX] {
            let d = Delivery::new(day, offset, 14_400);
            assert!(d.first_try > day.end() && d.first_try <= day.end() + 14_400);
            assert!(!d.due(d.first_try - 1));
            assert!(d.due(d.first_try));
        }
    }

    #[test]
    fn failures_back_off_then_give_up() {
        let mut d = Delivery::new(Day(20_000), 0, 1);
        let start = d.first_try;
        let mut now = start;
        let mut waits = Vec::new();
        while d.failed(now, "503".into(), 24 * 3600) == State::Pending {
            waits.push(d.next_try - now);
            now = d.next_try;
        }
        assert_eq!(&waits[..5], &[300, 600, 1200, 2400, 4800]);
        assert!(waits.iter().all(|w| *w <= MAX_BACKOFF));
        assert_eq!(d.state, State::GaveUp);
        assert!(now <= start + 24 * 3600);
        assert!(!d.due(u64::MAX));
        assert_eq!(d.last_error.as_deref(), Some("503"));

        let mut ok = Delivery::new(Day(20_000), 0, 1);
        ok.sent(ok.first_try);
        assert_eq!((ok.state, ok.attempts), (State::Sent, 1));
        assert!(!ok.due(u64::MAX));
    }
}
