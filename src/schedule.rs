//! Cron expressions as job runners write them (5 fields, Vixie cron semantics, UTC) and the
//! next fire time. The `cron` crate wants a seconds field, numbers weekdays 1–7 from Sunday and
//! ANDs day-of-month with day-of-week; this module translates so users get the crontab
//! behaviour they know: weekdays 0–7 (0 and 7 are Sunday) and, when both day fields are
//! restricted, a run on either.

use std::collections::BTreeSet;
use std::str::FromStr;

use chrono::{DateTime, Utc};

/// A validated 5-field cron expression.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    expression: String,
    /// One schedule, or two whose union is the Vixie "either day field" rule.
    schedules: Vec<cron::Schedule>,
}

impl PartialEq for CronSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.expression == other.expression
    }
}

const WEEKDAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

impl CronSchedule {
    /// Parses `minute hour day-of-month month day-of-week`.
    pub fn parse(expression: &str) -> Result<Self, String> {
        if expression.trim() != expression {
            return Err("must not start or end with whitespace".into());
        }
        let fields: Vec<&str> = expression.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), found {}",
                fields.len()
            ));
        }
        let [minute, hour, day_of_month, month, day_of_week] =
            [fields[0], fields[1], fields[2], fields[3], fields[4]];
        let weekdays = translate_weekdays(day_of_week)?;
        let build = |dom: &str, dow: &str| -> Result<cron::Schedule, String> {
            cron::Schedule::from_str(&format!("0 {minute} {hour} {dom} {month} {dow}"))
                .map_err(|e| e.to_string())
        };
        let restricted = |field: &str| !field.starts_with('*') && field != "?";
        let schedules = if restricted(day_of_month) && restricted(day_of_week) {
            vec![build(day_of_month, "*")?, build("*", &weekdays)?]
        } else {
            vec![build(day_of_month, &weekdays)?]
        };
        Ok(CronSchedule {
            expression: fields.join(" "),
            schedules,
        })
    }

    /// The expression as given, with whitespace normalized to single spaces.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The latest fire time at or before `at_ms` (ms since the epoch).
    pub fn latest_at_or_before(&self, at_ms: i64) -> Option<i64> {
        // Fires fall on whole minutes: the latest fire strictly before the next whole second
        // is the latest at or before `at_ms`.
        let bound = DateTime::<Utc>::from_timestamp(at_ms.div_euclid(1000) + 1, 0)?;
        self.schedules
            .iter()
            .filter_map(|s| s.after(&bound).next_back())
            .map(|t| t.timestamp_millis())
            .max()
    }

    /// Every fire time `f` with `after_ms < f <= until_ms`, ascending, at most `limit` of them
    /// (the earliest).
    pub fn fires_between(&self, after_ms: i64, until_ms: i64, limit: usize) -> Vec<i64> {
        let Some(start) = DateTime::<Utc>::from_timestamp_millis(after_ms) else {
            return Vec::new();
        };
        let mut fires: Vec<i64> = Vec::new();
        for schedule in &self.schedules {
            fires.extend(
                schedule
                    .after(&start)
                    .map(|t| t.timestamp_millis())
                    .skip_while(|f| *f <= after_ms)
                    .take_while(|f| *f <= until_ms)
                    .take(limit),
            );
        }
        if self.schedules.len() > 1 {
            fires.sort_unstable();
            fires.dedup();
            fires.truncate(limit);
        }
        fires
    }

    /// The first fire time strictly after `after`, or `None` if it never fires again.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedules
            .iter()
            .filter_map(|s| s.after(&after).next())
            .min()
    }
}

/// Rewrites a crontab day-of-week field (0–7, names, ranges, steps) as the `cron` crate's
/// weekday names, by computing the set of days it matches.
fn translate_weekdays(field: &str) -> Result<String, String> {
    if field == "*" || field == "?" {
        return Ok("*".into());
    }
    let mut days = BTreeSet::new();
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step
                    .parse()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("invalid day-of-week step in `{part}`"))?;
                (range, step)
            }
            None => (part, 1),
        };
        let (first, last) = if range == "*" {
            (0, 6)
        } else if let Some((a, b)) = range.split_once('-') {
            (weekday_number(a)?, weekday_number(b)?)
        } else {
            let day = weekday_number(range)?;
            // `5/2` means "from 5 to the end, every 2", as in Vixie cron.
            (day, if part.contains('/') { 7 } else { day })
        };
        if first > last {
            return Err(format!("day-of-week range `{range}` runs backwards"));
        }
        let mut day = first;
        while day <= last {
            days.insert(day % 7);
            day += step;
        }
    }
    Ok(days
        .into_iter()
        .map(|d| WEEKDAY_NAMES[d as usize])
        .collect::<Vec<_>>()
        .join(","))
}

fn weekday_number(token: &str) -> Result<u32, String> {
    if let Ok(n) = token.parse::<u32>() {
        return if n <= 7 {
            Ok(n)
        } else {
            Err(format!("day-of-week {n} is out of range 0-7"))
        };
    }
    WEEKDAY_NAMES
        .iter()
        .position(|name| name.eq_ignore_ascii_case(token))
        .map(|p| p as u32)
        .ok_or_else(|| format!("invalid day-of-week `{token}`"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    #[test]
    fn every_six_hours_fires_at_the_next_multiple_of_six() {
        let cron = CronSchedule::parse("0 */6 * * *").unwrap();
        assert_eq!(
            cron.next_after(at(2025, 7, 10, 14, 50)),
            Some(at(2025, 7, 10, 18, 0))
        );
        // Strictly after: a request at the fire time gets the following one.
        assert_eq!(
            cron.next_after(at(2025, 7, 10, 18, 0)),
            Some(at(2025, 7, 11, 0, 0))
        );
    }

    #[test]
    fn weekdays_count_from_sunday_zero_like_crontab() {
        // 2025-07-10 is a Thursday.
        let weekdays = CronSchedule::parse("30 9 * * 1-5").unwrap();
        assert_eq!(
            weekdays.next_after(at(2025, 7, 11, 10, 0)),
            Some(at(2025, 7, 14, 9, 30))
        );
        let sunday_as_seven = CronSchedule::parse("0 0 * * 7").unwrap();
        let sunday_as_zero = CronSchedule::parse("0 0 * * 0").unwrap();
        assert_eq!(
            sunday_as_seven.next_after(at(2025, 7, 10, 0, 0)),
            Some(at(2025, 7, 13, 0, 0))
        );
        assert_eq!(
            sunday_as_zero.next_after(at(2025, 7, 10, 0, 0)),
            sunday_as_seven.next_after(at(2025, 7, 10, 0, 0))
        );
        let named = CronSchedule::parse("0 0 * * fri-sat").unwrap();
        assert_eq!(
            named.next_after(at(2025, 7, 10, 0, 0)),
            Some(at(2025, 7, 11, 0, 0))
        );
    }

    #[test]
    fn both_day_fields_restricted_fire_on_either() {
        // The 1st of the month or any Monday.
        let cron = CronSchedule::parse("0 12 1 * 1").unwrap();
        assert_eq!(
            cron.next_after(at(2025, 7, 10, 0, 0)),
            Some(at(2025, 7, 14, 12, 0))
        );
        assert_eq!(
            cron.next_after(at(2025, 7, 29, 0, 0)),
            Some(at(2025, 8, 1, 12, 0))
        );
    }

    #[test]
    fn fires_are_listed_between_two_instants_and_found_backwards() {
        let cron = CronSchedule::parse("*/15 * * * *").unwrap();
        let ms = |t: DateTime<Utc>| t.timestamp_millis();
        assert_eq!(
            cron.fires_between(ms(at(2025, 7, 10, 12, 0)), ms(at(2025, 7, 10, 13, 0)), 100),
            vec![
                ms(at(2025, 7, 10, 12, 15)),
                ms(at(2025, 7, 10, 12, 30)),
                ms(at(2025, 7, 10, 12, 45)),
                ms(at(2025, 7, 10, 13, 0)),
            ]
        );
        // At a fire: that fire; a millisecond before it: the one before.
        assert_eq!(
            cron.latest_at_or_before(ms(at(2025, 7, 10, 12, 30))),
            Some(ms(at(2025, 7, 10, 12, 30)))
        );
        assert_eq!(
            cron.latest_at_or_before(ms(at(2025, 7, 10, 12, 30)) - 1),
            Some(ms(at(2025, 7, 10, 12, 15)))
        );
        // The union of both day fields is merged in order.
        let either = CronSchedule::parse("0 12 1 * 1").unwrap();
        assert_eq!(
            either.fires_between(ms(at(2025, 7, 27, 0, 0)), ms(at(2025, 8, 5, 0, 0)), 10),
            vec![
                ms(at(2025, 7, 28, 12, 0)),
                ms(at(2025, 8, 1, 12, 0)),
                ms(at(2025, 8, 4, 12, 0))
            ]
        );
    }

    #[test]
    fn invalid_expressions_are_rejected_with_a_reason() {
        for bad in [
            "* * * *",
            "61 * * * *",
            "* * * * 8",
            "* * * * 5-1",
            "@daily",
            "* * * * * *",
        ] {
            assert!(CronSchedule::parse(bad).is_err(), "{bad} must be rejected");
        }
    }
}
