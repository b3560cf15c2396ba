//! When a subscription's next cycle starts. Pure: no clock, no I/O; every function takes the
//! instant it reasons from.
//!
//! - `every D`: D after the end of the previous cycle (the daemon sleeps D on the monotonic
//!   clock, see [`Timing::Every`]).
//! - a cron with seconds: Europe/Paris wall-clock time, whatever the server's time zone.
//!   `0 0 8 * * *` fires at 08:00 in Paris, that is 07:00 UTC in winter and 06:00 UTC in
//!   summer. At the two daylight-saving changes:
//!   - spring forward (last Sunday of March, 02:00 → 03:00): a time that does not exist that
//!     night fires **once, at 03:00**, right after the gap (a 02:30 daily job runs at 03:00
//!     that day), unless the pattern fires every hour (hour field `*`): then the missing
//!     hour is simply skipped, since nothing in it exists and the pattern goes on at 03:00;
//!   - fall back (last Sunday of October, 03:00 → 02:00): a time that happens twice fires
//!     **once, the first time**, unless the pattern fires every hour: then it fires on both
//!     passes, because each is a real hour that deserves its polls.
//!
//! The syntax was checked when the configuration was loaded (`config::Schedule`); this module
//! reads the same language: `sec min hour day-of-month month day-of-week [year]`, lists,
//! ranges, steps (`*/5`, `5/10`, `8-18/2`), names (`Mon`, `Jan`), day-of-week 0–7 (0 and 7 are
//! Sunday), `?` for "any" in the day fields. As in Vixie cron, when both day-of-month and
//! day-of-week are restricted (neither starts with `*` or `?`), a day matching either fires.

use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Europe::Paris;
use chrono_tz::Tz;

use crate::config::Schedule;

/// The zone every cron schedule is read in (CONTRACT: "cron with seconds, Europe/Paris").
pub const ZONE: Tz = Paris;

/// The last year a cron can name (the configuration refuses later ones).
const LAST_YEAR: i32 = 2099;

/// How far a cron's wall-clock times can land from their order in real time (the largest
/// daylight-saving shift, with room to spare).
const FOLD_MARGIN: chrono::TimeDelta = chrono::TimeDelta::hours(3);

/// A subscription's schedule, ready to compute fire times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Timing {
    /// A fixed interval from the end of one cycle to the start of the next.
    Every(Duration),
    /// A cron with seconds, in Europe/Paris time.
    Cron(Cron),
}

impl Timing {
    /// From the validated schedule. An error only if the configuration room let through
    /// something this module cannot read (a bug): it says which schedule.
    pub fn from_schedule(schedule: &Schedule) -> Result<Timing, String> {
        match schedule {
            Schedule::Every(d) => Ok(Timing::Every(*d)),
            Schedule::Cron(text) => Cron::parse(text).map(Timing::Cron),
        }
    }

    /// The first fire time strictly after `after`; `None` when the schedule never fires
    /// again (a cron whose years are all past, or that names a day that does not exist).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Timing::Every(d) => chrono::TimeDelta::from_std(*d)
                .ok()
                .and_then(|d| after.checked_add_signed(d)),
            Timing::Cron(c) => c.next_after(after),
        }
    }
}

/// A set of allowed values of one field, as bits (fields hold values below 64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bits(u64);

impl Bits {
    fn has(self, v: u32) -> bool {
        v < 64 && self.0 & (1 << v) != 0
    }

    fn values(self) -> impl Iterator<Item = u32> + Clone {
        (0..64).filter(move |v| self.has(*v))
    }
}

/// A parsed cron expression with seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    text: String,
    seconds: Bits,
    minutes: Bits,
    hours: Bits,
    days_of_month: Bits,
    months: Bits,
    /// 0 = Sunday … 6 = Saturday (7 is folded onto 0).
    days_of_week: Bits,
    /// `None`: any year.
    years: Option<Vec<i32>>,
    /// Both day fields restricted: a day matching either fires (Vixie cron).
    day_or: bool,
    /// The hour field allows every hour: wall-clock times the daylight-saving changes skip
    /// or repeat are plain hours of an hourly (or more frequent) pattern.
    every_hour: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl Cron {
    /// Reads a cron with seconds. Errors name the field.
    pub fn parse(text: &str) -> Result<Cron, String> {
        let parts: Vec<&str> = text.split_whitespace().collect();
        if !(6..=7).contains(&parts.len()) {
            return Err(format!(
                "schedule {text:?}: {} fields; a cron with seconds has 6 (or 7 with a year)",
                parts.len()
            ));
        }
        let field = |i: usize, name: &str, min: u32, max: u32, names: &[&str], from: u32| {
            parse_field(parts[i], min, max, names, from)
                .map_err(|why| format!("schedule {text:?}: the {name} field {why}"))
        };
        let seconds = field(0, "seconds", 0, 59, &[], 0)?;
        let minutes = field(1, "minutes", 0, 59, &[], 0)?;
        let hours = field(2, "hours", 0, 23, &[], 0)?;
        let days_of_month = field(3, "day of month", 1, 31, &[], 0)?;
        let months = field(4, "month", 1, 12, &MONTHS, 1)?;
        let mut days_of_week = field(5, "day of week", 0, 7, &DAYS, 0)?;
        if days_of_week.has(7) {
            days_of_week = Bits((days_of_week.0 | 1) & !(1 << 7));
        }
        let years = match parts.get(6) {
            None => None,
            Some(y) => Some(
                parse_years(y).map_err(|why| format!("schedule {text:?}: the year field {why}"))?,
            ),
        };
        let restricted = |f: &str| !(f.starts_with('*') || f.starts_with('?'));
        Ok(Cron {
            text: parts.join(" "),
            seconds,
            minutes,
            hours,
            days_of_month,
            months,
            days_of_week,
            years,
            day_or: restricted(parts[3]) && restricted(parts[5]),
            every_hour: (0..24).all(|h| hours.has(h)),
        })
    }

    /// The first fire time strictly after `after`, in Europe/Paris wall-clock time with the
    /// daylight-saving rules of the module doc.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Wall-clock times are visited in order; around a fall-back the real order differs
        // by up to the shift, so candidates are gathered until FOLD_MARGIN past the first.
        let floor = after.with_timezone(&ZONE).naive_local() - FOLD_MARGIN;
        let mut best: Option<DateTime<Utc>> = None;
        let mut horizon: Option<NaiveDateTime> = None;
        let mut day = self.first_day_from(floor.date());
        while let Some(date) = day {
            if horizon.is_some_and(|h| date.and_time(NaiveTime::MIN) > h) {
                break;
            }
            for time in self.times() {
                let local = date.and_time(time);
                if local < floor {
                    continue;
                }
                if horizon.is_some_and(|h| local > h) {
                    break;
                }
                if let Some(instant) = self.instant_of(local, after) {
                    if best.is_none_or(|b| instant < b) {
                        best = Some(instant);
                    }
                    horizon.get_or_insert(local + FOLD_MARGIN);
                }
            }
            day = date.succ_opt().and_then(|d| self.first_day_from(d));
        }
        best
    }

    /// The real instant at which the wall-clock time `local` fires, if it is after `after`.
    fn instant_of(&self, local: NaiveDateTime, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        use chrono::LocalResult;
        let utc = |t: DateTime<Tz>| t.with_timezone(&Utc);
        match ZONE.from_local_datetime(&local) {
            LocalResult::Single(t) => Some(utc(t)).filter(|t| *t > after),
            LocalResult::Ambiguous(first, second) => {
                let (first, second) = (utc(first), utc(second));
                if first > after {
                    Some(first)
                } else if self.every_hour && second > after {
                    Some(second)
                } else {
                    None
                }
            }
            LocalResult::None if self.every_hour => None,
            LocalResult::None => end_of_gap(local).filter(|t| *t > after),
        }
    }

    /// Times of day this pattern fires at, in order.
    fn times(&self) -> impl Iterator<Item = NaiveTime> + '_ {
        self.hours.values().filter(|h| *h < 24).flat_map(move |h| {
            self.minutes
                .values()
                .filter(|m| *m < 60)
                .flat_map(move |m| {
                    self.seconds
                        .values()
                        .filter(|s| *s < 60)
                        .filter_map(move |s| NaiveTime::from_hms_opt(h, m, s))
                })
        })
    }

    /// The first day on or after `from` whose year, month and day match; `None` past 2099.
    fn first_day_from(&self, from: NaiveDate) -> Option<NaiveDate> {
        let mut date = from;
        loop {
            if date.year() > LAST_YEAR {
                return None;
            }
            if !self.year_matches(date.year()) {
                let next = self
                    .years
                    .as_ref()
                    .and_then(|ys| ys.iter().copied().find(|y| *y > date.year()))?;
                date = NaiveDate::from_ymd_opt(next, 1, 1)?;
                continue;
            }
            if !self.months.has(date.month()) {
                date = first_of_next_month(date)?;
                continue;
            }
            if self.day_matches(date) {
                return Some(date);
            }
            date = date.succ_opt()?;
        }
    }

    fn year_matches(&self, year: i32) -> bool {
        self.years.as_ref().is_none_or(|ys| ys.contains(&year))
    }

    fn day_matches(&self, date: NaiveDate) -> bool {
        let dom = self.days_of_month.has(date.day());
        let dow = self.days_of_week.has(date.weekday().num_days_from_sunday());
        if self.day_or {
            dom || dow
        } else {
            dom && dow
        }
    }
}

impl std::fmt::Display for Cron {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// The first real instant after a spring-forward gap that swallowed `local`. Changes of
/// offset happen on a whole minute, so the first wall-clock minute that exists again is the
/// instant the gap ended.
fn end_of_gap(local: NaiveDateTime) -> Option<DateTime<Utc>> {
    let start = local.date().and_hms_opt(
        chrono::Timelike::hour(&local),
        chrono::Timelike::minute(&local),
        0,
    )?;
    (1..=3 * 60).find_map(|m| {
        ZONE.from_local_datetime(&(start + chrono::TimeDelta::minutes(m)))
            .earliest()
            .map(|t| t.with_timezone(&Utc))
    })
}

fn first_of_next_month(date: NaiveDate) -> Option<NaiveDate> {
    if date.month() == 12 {
        NaiveDate::from_ymd_opt(date.year() + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(date.year(), date.month() + 1, 1)
    }
}

/// Every value a field allows, in order. The syntax was checked by the configuration room;
/// errors here only guard against a mismatch between the two readers.
fn parse_values(
    text: &str,
    min: u32,
    max: u32,
    names: &[&str],
    from: u32,
) -> Result<Vec<u32>, String> {
    if text == "?" {
        return Ok((min..=max).collect());
    }
    let mut values = Vec::new();
    for item in text.split(',') {
        let (base, step) = match item.split_once('/') {
            Some((b, s)) => (
                b,
                s.parse::<usize>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("{text:?} has a bad step {s:?}"))?,
            ),
            None => (item, 1),
        };
        let (lo, hi) = if base == "*" {
            (min, max)
        } else if let Some((a, b)) = base.split_once('-') {
            (value(a, names, from)?, value(b, names, from)?)
        } else {
            let v = value(base, names, from)?;
            // `5/10`: from 5 to the end, every 10.
            (v, if item.contains('/') { max } else { v })
        };
        if lo < min || hi > max || lo > hi {
            return Err(format!("{text:?} is outside {min}–{max}"));
        }
        values.extend((lo..=hi).step_by(step));
    }
    values.sort_unstable();
    values.dedup();
    Ok(values)
}

fn parse_field(text: &str, min: u32, max: u32, names: &[&str], from: u32) -> Result<Bits, String> {
    Ok(Bits(
        parse_values(text, min, max, names, from)?
            .into_iter()
            .filter(|v| *v < 64)
            .fold(0, |bits, v| bits | (1 << v)),
    ))
}

fn parse_years(text: &str) -> Result<Vec<i32>, String> {
    let last = u32::try_from(LAST_YEAR).unwrap_or(2099);
    Ok(parse_values(text, 1970, last, &[], 0)?
        .into_iter()
        .filter_map(|y| i32::try_from(y).ok())
        .collect())
}

fn value(text: &str, names: &[&str], from: u32) -> Result<u32, String> {
    if let Ok(n) = text.parse::<u32>() {
        return Ok(n);
    }
    let lower = text.to_ascii_lowercase();
    names
        .iter()
        .position(|n| *n == lower)
        .and_then(|i| u32::try_from(i).ok())
        .map(|i| from + i)
        .ok_or_else(|| format!("has {text:?}, which is neither a number nor a name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .with_timezone(&Utc)
    }

    fn cron(s: &str) -> Cron {
        Cron::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The next `n` fire times after `from`, in UTC, as RFC 3339 text.
    fn fires(c: &str, from: &str, n: usize) -> Vec<String> {
        let c = cron(c);
        let mut t = utc(from);
        let mut out = Vec::new();
        for _ in 0..n {
            t = c
                .next_after(t)
                .unwrap_or_else(|| panic!("{c} never fires after {t}"));
            out.push(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        }
        out
    }

    #[test]
    fn daily_job_fires_at_paris_wall_clock_in_winter_and_summer() {
        // 08:00 Paris = 07:00 UTC in winter (CET), 06:00 UTC in summer (CEST): no drift.
        assert_eq!(
            fires("0 0 8 * * *", "2026-03-27T12:00:00Z", 4),
            [
                "2026-03-28T07:00:00Z",
                "2026-03-29T06:00:00Z",
                "2026-03-30T06:00:00Z",
                "2026-03-31T06:00:00Z"
            ]
        );
        assert_eq!(
            fires("0 0 8 * * *", "2026-10-23T12:00:00Z", 4),
            [
                "2026-10-24T06:00:00Z",
                "2026-10-25T07:00:00Z",
                "2026-10-26T07:00:00Z",
                "2026-10-27T07:00:00Z"
            ]
        );
    }

    #[test]
    fn time_in_the_spring_forward_gap_fires_once_right_after_it() {
        // 29 March 2026: 02:00 CET → 03:00 CEST (01:00 UTC). 02:30 does not exist that day.
        assert_eq!(
            fires("0 30 2 * * *", "2026-03-28T00:00:00Z", 3),
            [
                "2026-03-28T01:30:00Z", // 02:30 CET
                "2026-03-29T01:00:00Z", // 03:00 CEST, right after the gap
                "2026-03-30T00:30:00Z"  // 02:30 CEST
            ]
        );
        // Several times in the gap still fire once, then the pattern goes on.
        assert_eq!(
            fires("0 0,30 2,3 * * *", "2026-03-29T00:00:00Z", 3),
            [
                "2026-03-29T01:00:00Z", // 02:00, 02:30 and 03:00 CEST: once
                "2026-03-29T01:30:00Z", // 03:30 CEST
                "2026-03-30T00:00:00Z"  // 02:00 CEST next day
            ]
        );
    }

    #[test]
    fn hourly_pattern_skips_the_missing_hour() {
        assert_eq!(
            fires("0 30 * * * *", "2026-03-29T00:00:00Z", 3),
            [
                "2026-03-29T00:30:00Z", // 01:30 CET
                "2026-03-29T01:30:00Z", // 03:30 CEST (02:30 does not exist)
                "2026-03-29T02:30:00Z"  // 04:30 CEST
            ]
        );
    }

    #[test]
    fn time_repeated_at_fall_back_fires_once() {
        // 25 October 2026: 03:00 CEST → 02:00 CET (01:00 UTC); 02:30 happens twice.
        assert_eq!(
            fires("0 30 2 * * *", "2026-10-24T12:00:00Z", 3),
            [
                "2026-10-25T00:30:00Z", // 02:30 CEST, the first time
                "2026-10-26T01:30:00Z", // next day, 02:30 CET
                "2026-10-27T01:30:00Z"
            ]
        );
        // Starting between the two passes does not fire the second one.
        assert_eq!(
            fires("0 30 2 * * *", "2026-10-25T00:45:00Z", 1),
            ["2026-10-26T01:30:00Z"]
        );
    }

    #[test]
    fn frequent_pattern_keeps_firing_through_the_repeated_hour_in_real_order() {
        assert_eq!(
            fires("0 */20 * * * *", "2026-10-25T00:30:00Z", 7),
            [
                "2026-10-25T00:40:00Z", // 02:40 CEST
                "2026-10-25T01:00:00Z", // 02:00 CET (second pass)
                "2026-10-25T01:20:00Z",
                "2026-10-25T01:40:00Z",
                "2026-10-25T02:00:00Z", // 03:00 CET
                "2026-10-25T02:20:00Z",
                "2026-10-25T02:40:00Z"
            ]
        );
    }

    #[test]
    fn every_five_minutes_is_never_late_around_spring_forward() {
        assert_eq!(
            fires("0 */5 * * * *", "2026-03-29T00:55:00Z", 3),
            [
                "2026-03-29T01:00:00Z", // 03:00 CEST follows 01:55 CET
                "2026-03-29T01:05:00Z",
                "2026-03-29T01:10:00Z"
            ]
        );
    }

    #[test]
    fn weekdays_months_years_and_steps() {
        // Mon-Fri at 08:00: Friday 2026-03-27, then Monday 30 (CEST).
        assert_eq!(
            fires("0 0 8 * * Mon-Fri", "2026-03-27T07:30:00Z", 2),
            ["2026-03-30T06:00:00Z", "2026-03-31T06:00:00Z"]
        );
        // 7 is Sunday, like 0.
        assert_eq!(
            fires("0 0 12 ? * 7", "2026-03-23T00:00:00Z", 1),
            ["2026-03-29T10:00:00Z"]
        );
        // Month names and a year: first of January 2030 at 00:00 Paris.
        assert_eq!(
            fires("0 0 0 1 JAN ? 2030", "2026-06-01T00:00:00Z", 1),
            ["2029-12-31T23:00:00Z"]
        );
        // Years all past: never again.
        assert_eq!(
            cron("0 0 0 1 1 ? 2020").next_after(utc("2026-01-01T00:00:00Z")),
            None
        );
        // 5/10: 5, 15, 25, …
        assert_eq!(
            fires("0 5/10 * * * *", "2026-01-01T00:00:00Z", 2),
            ["2026-01-01T00:05:00Z", "2026-01-01T00:15:00Z"]
        );
        // Both day fields restricted: either matches (the 13th, or a Friday).
        assert_eq!(
            fires("0 0 0 13 * Fri", "2026-02-01T00:00:00Z", 3),
            [
                "2026-02-05T23:00:00Z", // Friday 6 Feb
                "2026-02-12T23:00:00Z", // Friday 13 Feb
                "2026-02-19T23:00:00Z"  // Friday 20 Feb
            ]
        );
        // A day that never exists never fires (and the search ends).
        assert_eq!(
            cron("0 0 0 31 2 *").next_after(utc("2026-01-01T00:00:00Z")),
            None
        );
    }

    #[test]
    fn every_second_is_exact() {
        assert_eq!(
            fires("* * * * * *", "2026-10-25T00:59:59Z", 2),
            ["2026-10-25T01:00:00Z", "2026-10-25T01:00:01Z"]
        );
    }

    #[test]
    fn every_interval_counts_from_the_given_instant() {
        let t = Timing::from_schedule(&Schedule::Every(Duration::from_secs(300))).unwrap();
        assert_eq!(
            t.next_after(utc("2026-03-29T00:58:00Z")),
            Some(utc("2026-03-29T01:03:00Z"))
        );
    }

    #[test]
    fn every_schedule_the_configuration_accepts_is_read() {
        for s in [
            "0 */5 * * * *",
            "0 0 8 * * Mon-Fri",
            "0 0 8 ? * MON,WED,FRI",
            "0 0 8 1 JAN-jun ? 2030",
            "30 15 8-18/2 1,15 * 0-7",
            "0 5/10 * * * *",
            "0 0 0 * * * 2026-2099/3",
        ] {
            let parsed: Schedule = s.parse().unwrap_or_else(|e| panic!("{e}"));
            Timing::from_schedule(&parsed).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
