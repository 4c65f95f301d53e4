//! Cron expressions as job runners write them (5 fields, Vixie cron semantics, UTC) and their
//! fire times, on `croner`, which has crontab semantics built in: weekdays 0–7 (0 and 7 are
//! Sunday) and, when both day fields are restricted, a run on either. Its extensions beyond
//! Vixie cron (`L`, `W`, `#`, `?`, seconds, years, `@` macros) are refused: the contract
//! promises the 5-field syntax every cron user knows, and other implementations must agree.

use chrono::{DateTime, Utc};
use croner::parser::{CronParser, Seconds, Year};

/// A validated 5-field cron expression.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    expression: String,
    /// Boxed: a parsed pattern is a few hundred bytes, and every decoded event carries its
    /// schedule by value.
    cron: Box<croner::Cron>,
}

impl PartialEq for CronSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.expression == other.expression
    }
}

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
        const FIELD_NAMES: [&str; 5] = ["minute", "hour", "day-of-month", "month", "day-of-week"];
        for (index, field) in fields.iter().enumerate() {
            if !plain_vixie(field) {
                return Err(format!(
                    "`{field}` is not 5-field cron syntax (numbers, names, * , - /)"
                ));
            }
            if let Some(name) = misplaced_name(field, index) {
                return Err(format!(
                    "{} `{field}`: `{name}` is a name of another field (month names belong \
                     in the month field, weekday names in the day-of-week field)",
                    FIELD_NAMES[index]
                ));
            }
        }
        let parser = CronParser::builder()
            .sloppy_ranges(true)
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build();
        let cron = parser.parse(expression).map_err(|error| {
            // croner does not say which field is wrong: find it by parsing each one alone.
            let alone = |i: usize| {
                let probe: Vec<&str> = (0..5)
                    .map(|j| if j == i { fields[j] } else { "*" })
                    .collect();
                parser.parse(&probe.join(" ")).is_err()
            };
            let reason = error.to_string();
            let reason = reason.trim_start_matches("Component error: ");
            match (0..5).find(|&i| alone(i)) {
                Some(i) => format!("{} `{}`: {reason}", FIELD_NAMES[i], fields[i]),
                None => reason.to_owned(),
            }
        })?;
        if !ever_fires(&cron.pattern) {
            return Err(format!(
                "`{expression}` never fires: no month it names has the days it names"
            ));
        }
        Ok(CronSchedule {
            expression: fields.join(" "),
            cron: Box::new(cron),
        })
    }

    /// The expression as given, with whitespace normalized to single spaces.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The latest fire time at or before `at_ms` (ms since the epoch).
    pub fn latest_at_or_before(&self, at_ms: i64) -> Option<i64> {
        let at = DateTime::<Utc>::from_timestamp_millis(at_ms)?;
        self.cron
            .find_previous_occurrence(&at, true)
            .ok()
            .map(|t| t.timestamp_millis())
    }

    /// Every fire time `f` with `after_ms < f <= until_ms`, ascending, at most `limit` of them
    /// (the earliest).
    pub fn fires_between(&self, after_ms: i64, until_ms: i64, limit: usize) -> Vec<i64> {
        let Some(start) = DateTime::<Utc>::from_timestamp_millis(after_ms) else {
            return Vec::new();
        };
        self.cron
            .iter_after(start)
            .map(|t| t.timestamp_millis())
            .take_while(|f| *f <= until_ms)
            .take(limit)
            .collect()
    }

    /// The first fire time strictly after `after`, or `None` if it never fires again.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&after, false).ok()
    }
}

/// The first month or weekday name in a field other than its own, as crontab refuses it
/// (croner would read `MON` in the minute field as 1).
fn misplaced_name(field: &str, index: usize) -> Option<&str> {
    const MONTHS: [&str; 12] = [
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ];
    const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
    let allowed: &[&str] = match index {
        3 => &MONTHS,
        4 => &WEEKDAYS,
        _ => &[],
    };
    field.split([',', '-', '/']).find(|token| {
        token.chars().all(|c| c.is_ascii_alphabetic())
            && token.len() == 3
            && !allowed.iter().any(|n| n.eq_ignore_ascii_case(token))
    })
}

/// Whether a parsed pattern has any fire time at all. Only the day-of-month field can make a
/// valid pattern empty (`0 0 31 2 *`: no February has a 31st); finding that out by searching
/// costs croner tens of milliseconds (it looks up to the year 5000), so it is decided here
/// from the fields, exactly: a restricted weekday field (either-day semantics) or a `*`
/// day-of-month always fires, else some named month must have some named day (February 29
/// counts: leap years fire).
fn ever_fires(pattern: &croner::CronPattern) -> bool {
    const LONGEST_MONTH: [u16; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if pattern.is_dom_wildcard() || (!pattern.is_dow_wildcard() && !pattern.matches_dom_and_dow()) {
        return true;
    }
    let Some(&first_day) = pattern.days.values().first() else {
        return false;
    };
    pattern.months.values().iter().any(|&month| {
        (1..=12).contains(&month) && first_day <= LONGEST_MONTH[usize::from(month - 1)]
    })
}

/// Whether a field is Vixie syntax: numbers, month and weekday names, `*`, `,`, `-`, `/`.
fn plain_vixie(field: &str) -> bool {
    // `?` (any) was accepted before croner; kept so existing streams project the same.
    const NAMES: [&str; 19] = [
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC", "SUN",
        "MON", "TUE", "WED", "THU", "FRI", "SAT",
    ];
    field.split([',', '-', '/']).all(|token| {
        token == "*"
            || token == "?"
            || (!token.is_empty() && token.chars().all(|c| c.is_ascii_digit()))
            || NAMES.iter().any(|n| n.eq_ignore_ascii_case(token))
    })
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
    fn rare_but_real_fire_times_are_accepted_and_found() {
        // February 29 fires in leap years; with a weekday too, either day fires.
        let leap = CronSchedule::parse("0 0 29 2 *").unwrap();
        assert_eq!(
            leap.next_after(at(2025, 7, 1, 0, 0)),
            Some(at(2028, 2, 29, 0, 0))
        );
        let either = CronSchedule::parse("0 0 31 2 1").unwrap();
        assert_eq!(
            either.next_after(at(2025, 7, 10, 0, 0)),
            Some(at(2026, 2, 2, 0, 0))
        );
        let names = CronSchedule::parse("0 9 * jan-mar mon-fri").unwrap();
        assert_eq!(
            names.next_after(at(2025, 7, 10, 0, 0)),
            Some(at(2026, 1, 1, 9, 0))
        );
        assert!(CronSchedule::parse("0 0 31 1-2 *").is_ok());
    }

    #[test]
    fn a_cron_that_never_fires_says_so() {
        let reason = CronSchedule::parse("0 0 31 2 *").unwrap_err();
        assert!(reason.contains("never fires"), "{reason}");
        let reason = CronSchedule::parse("MON-SUN * * JAN-DEC *").unwrap_err();
        assert!(reason.starts_with("minute `MON-SUN`"), "{reason}");
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
            // croner's extensions beyond Vixie cron.
            "0 0 L * *",
            "0 0 * * 5#3",
            "0 0 15W * *",
            "0 0 * * * 2030",
            "1,,2 * * * *",
            // Names outside their own field (crontab refuses them).
            "MON-SUN * * JAN-DEC *",
            "0 JAN * * *",
            "0 0 * MON *",
            "0 0 * * JAN",
            // Valid fields that never fire.
            "0 0 31 2 *",
            "0 0 30 2 *",
            "0 0 31 4,6,9,11 *",
            "0 0 30,31 2 *",
        ] {
            assert!(CronSchedule::parse(bad).is_err(), "{bad} must be rejected");
        }
    }
}
