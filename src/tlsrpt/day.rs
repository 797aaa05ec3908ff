//! UTC days, the unit of RFC 8460 reports (§4.1: a report covers one UTC day, and its
//! `date-range` says which).

use std::fmt;
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

const DAY: u64 = 86_400;

/// A UTC day, counted from 1970-01-01.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Day(pub u64);

impl Day {
    /// The day an epoch time falls on.
    pub fn of(secs: u64) -> Day {
        Day(secs / DAY)
    }

    /// The day's first second.
    pub fn start(self) -> u64 {
        self.0 * DAY
    }

    /// The day's last second (RFC 8460's examples end a day at 23:59:59Z).
    pub fn end(self) -> u64 {
        self.start() + DAY - 1
    }

    pub fn next(self) -> Day {
        Day(self.0 + 1)
    }

    /// The day `n` days earlier (the epoch's day at the earliest).
    pub fn minus(self, n: u64) -> Day {
        Day(self.0.saturating_sub(n))
    }

    /// `YYYY-MM-DD`.
    pub fn parse(text: &str) -> Result<Day, String> {
        let bad = || format!("{text:?} is not a day (YYYY-MM-DD)");
        if text.len() != 10 {
            return Err(bad());
        }
        let t = humantime::parse_rfc3339(&format!("{text}T00:00:00Z")).map_err(|_| bad())?;
        let secs = t.duration_since(UNIX_EPOCH).map_err(|_| bad())?.as_secs();
        Ok(Day::of(secs))
    }

    /// RFC 3339 time of the day's first second (`date-range.start-datetime`).
    pub fn start_datetime(self) -> String {
        rfc3339(self.start())
    }

    /// RFC 3339 time of the day's last second (`date-range.end-datetime`).
    pub fn end_datetime(self) -> String {
        rfc3339(self.end())
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = rfc3339(self.start());
        f.write_str(&text[..10])
    }
}

/// RFC 3339 form of an epoch time in UTC, to the second (`date-range` times).
pub fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// The RFC 5322 form of an epoch time in UTC (`Sat, 05 Dec 2026 06:30:00 +0000`), for
/// the `Date:` header of mailed reports.
pub fn rfc5322(secs: u64) -> String {
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let day = Day::of(secs);
    // 1970-01-01 was a Thursday.
    let weekday = WEEKDAYS[(day.0 % 7) as usize];
    let text = rfc3339(secs); // YYYY-MM-DDTHH:MM:SSZ
    let month = text[5..7].parse::<usize>().unwrap_or(1).clamp(1, 12);
    format!(
        "{weekday}, {} {} {} {} +0000",
        &text[8..10],
        MONTHS[month - 1],
        &text[..4],
        &text[11..19]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_round_trip_and_bound_their_seconds() {
        let d = Day::parse("2026-12-04").unwrap();
        assert_eq!(d.to_string(), "2026-12-04");
        assert_eq!(d.start_datetime(), "2026-12-04T00:00:00Z");
        assert_eq!(d.end_datetime(), "2026-12-04T23:59:59Z");
        assert_eq!(Day::of(d.end()), d);
        assert_eq!(Day::of(d.end() + 1), d.next());
        assert_eq!(d.next().to_string(), "2026-12-05");
        assert_eq!(d.minus(4).to_string(), "2026-11-30");
        for bad in [
            "2026-13-01",
            "2026-12-4",
            "yesterday",
            "",
            "2026-12-04T00:00:00Z",
        ] {
            assert!(Day::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mail_dates() {
        let secs = Day::parse("2026-12-05").unwrap().start() + 6 * 3600 + 30 * 60 + 7;
        assert_eq!(rfc5322(secs), "Sat, 05 Dec 2026 06:30:07 +0000");
        assert_eq!(rfc5322(0), "Thu, 01 Jan 1970 00:00:00 +0000");
    }
}
