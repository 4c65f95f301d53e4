//! Cron expressions as job runners write them (5 fields, Vixie cron semantics) and their
//! fire times, on `croner`, which has crontab semantics built in: weekdays 0–7 (0 and 7 are
//! Sunday) and, when both day fields are restricted, a run on either. Its extensions beyond
//! Vixie cron (`L`, `W`, `#`, `?`, seconds, years, `@` macros) are refused: the contract
//! promises the 5-field syntax every cron user knows, and other implementations must agree.
//!
//! A schedule is evaluated in UTC unless it names an IANA time zone (CONTRACT §10). In a zone
//! the cron matches wall-clock times, and each matching wall-clock time `n` fires at the first
//! instant whose local time is `n` or later: a time that exists once fires then; one that
//! exists twice (the hour repeated when clocks go back) fires once, at its first occurrence;
//! one that does not exist (the hour skipped when clocks go forward) fires once, at the first
//! instant after the gap, and several such times fire together there, once. That mapping
//! never goes backwards in time, which is what the searches below rely on. The rule is the
//! same for every cron (croner's own zone support skips an interval job's fires in a gap and
//! repeats them in an overlap, which the contract does not), so the zone is applied here:
//! croner lists wall-clock times (in UTC, which has no gaps) and this module maps them.

use chrono::{DateTime, NaiveDateTime, Offset, TimeZone, Utc};
use croner::parser::{CronParser, Seconds, Year};

/// The zone name of a schedule that names none.
pub const DEFAULT_TIMEZONE: &str = "UTC";

/// A validated 5-field cron expression and the zone it is evaluated in.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    expression: String,
    /// Boxed: a parsed pattern is a few hundred bytes, and every decoded event carries its
    /// schedule by value.
    cron: Box<croner::Cron>,
    /// `None`: UTC (the fast path: croner's fires are the instants).
    zone: Option<chrono_tz::Tz>,
}

impl PartialEq for CronSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.expression == other.expression && self.zone == other.zone
    }
}

/// Parses an IANA time zone name (`Europe/Berlin`), exactly as the tz database spells it.
pub fn parse_timezone(name: &str) -> Result<chrono_tz::Tz, String> {
    name.parse::<chrono_tz::Tz>().map_err(|_| {
        let shown: String = name.chars().take(64).collect();
        format!("`{shown}` is not an IANA time zone name (like `Europe/Berlin` or `UTC`)")
    })
}

/// How many wall-clock fires a search may pass over without finding a later instant: the
/// fires of a repeated hour (60 for a once-a-minute cron), with room for longer overlaps.
const MAX_SKIPPED_FIRES: usize = 10_000;

impl CronSchedule {
    /// Parses `minute hour day-of-month month day-of-week`, evaluated in UTC.
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
            zone: None,
        })
    }

    /// Parses a stored schedule: the expression and the zone it names (`None`: UTC).
    pub fn parse_in(expression: &str, timezone: Option<&str>) -> Result<Self, String> {
        let cron = Self::parse(expression)?;
        Ok(match timezone {
            Some(name) => cron.in_zone(parse_timezone(name)?),
            None => cron,
        })
    }

    /// The same cron evaluated in `zone`.
    pub fn in_zone(mut self, zone: chrono_tz::Tz) -> Self {
        self.zone = (zone != chrono_tz::Tz::UTC).then_some(zone);
        self
    }

    /// The expression as given, with whitespace normalized to single spaces.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The IANA name of the zone the cron is evaluated in (`UTC` by default).
    pub fn timezone(&self) -> &'static str {
        self.zone.map_or(DEFAULT_TIMEZONE, |zone| zone.name())
    }

    /// What tells this schedule's fires apart from every other's: the expression and zone.
    pub fn key(&self) -> String {
        match self.zone {
            None => self.expression.clone(),
            Some(zone) => format!("{} {}", self.expression, zone.name()),
        }
    }

    /// The latest fire time at or before `at_ms` (ms since the epoch).
    pub fn latest_at_or_before(&self, at_ms: i64) -> Option<i64> {
        let at = DateTime::<Utc>::from_timestamp_millis(at_ms)?;
        let Some(zone) = self.zone else {
            return self
                .cron
                .find_previous_occurrence(&at, true)
                .ok()
                .map(|t| t.timestamp_millis());
        };
        // The fire just before the first one after `at`, in wall-clock order, is the latest
        // at or before `at` (the mapping to instants never goes backwards).
        let previous = match self.first_after(zone, at) {
            Some((wall, _)) => self.cron.find_previous_occurrence(&wall, false).ok()?,
            None => self
                .cron
                .find_previous_occurrence(&wall_clock(zone, at), true)
                .ok()?,
        };
        fire_instant(zone, previous.naive_utc()).map(|t| t.timestamp_millis())
    }

    /// Every fire time `f` with `after_ms < f <= until_ms`, ascending, at most `limit` of them
    /// (the earliest).
    pub fn fires_between(&self, after_ms: i64, until_ms: i64, limit: usize) -> Vec<i64> {
        let Some(start) = DateTime::<Utc>::from_timestamp_millis(after_ms) else {
            return Vec::new();
        };
        let Some(zone) = self.zone else {
            return self
                .cron
                .iter_after(start)
                .map(|t| t.timestamp_millis())
                .take_while(|f| *f <= until_ms)
                .take(limit)
                .collect();
        };
        let mut fires = Vec::new();
        let Some((mut wall, first)) = self.first_after(zone, start) else {
            return fires;
        };
        let mut last = first.timestamp_millis();
        if last > until_ms || limit == 0 {
            return fires;
        }
        fires.push(last);
        while fires.len() < limit {
            let Ok(next) = self.cron.find_next_occurrence(&wall, false) else {
                break;
            };
            wall = next;
            let Some(fire) = fire_instant(zone, next.naive_utc()).map(|t| t.timestamp_millis())
            else {
                break;
            };
            if fire > until_ms {
                break;
            }
            // Several skipped wall-clock times fire together after a gap: once.
            if fire > last {
                fires.push(fire);
                last = fire;
            }
        }
        fires
    }

    /// The first fire time strictly after `after`, or `None` if it never fires again.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self.zone {
            None => self.cron.find_next_occurrence(&after, false).ok(),
            Some(zone) => self.first_after(zone, after).map(|(_, fire)| fire),
        }
    }

    /// The first wall-clock fire (as a UTC-labelled wall-clock time) whose instant is after
    /// `after`, and that instant. Wall-clock times up to `after`'s own map to `after` or
    /// earlier, so the search starts there; it passes over at most a repeated hour's fires.
    fn first_after(
        &self,
        zone: chrono_tz::Tz,
        after: DateTime<Utc>,
    ) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let mut wall = wall_clock(zone, after);
        for _ in 0..MAX_SKIPPED_FIRES {
            wall = self.cron.find_next_occurrence(&wall, false).ok()?;
            let fire = fire_instant(zone, wall.naive_utc())?;
            if fire > after {
                return Some((wall, fire));
            }
        }
        None
    }
}

/// `at`'s wall-clock time in `zone`, labelled UTC (croner's fires on it are wall-clock times).
fn wall_clock(zone: chrono_tz::Tz, at: DateTime<Utc>) -> DateTime<Utc> {
    at.with_timezone(&zone).naive_local().and_utc()
}

/// The instant a wall-clock fire time fires at in `zone` (CONTRACT §10): its only or first
/// occurrence, or, when the clocks skip it, the first instant after the gap.
fn fire_instant(zone: chrono_tz::Tz, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
    match zone.from_local_datetime(&wall) {
        chrono::LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
        chrono::LocalResult::Ambiguous(first, _) => Some(first.with_timezone(&Utc)),
        chrono::LocalResult::None => after_gap(zone, wall),
    }
}

/// The first instant whose local time is after `wall`, a time the clocks skip: the moment
/// they jump. Reading `wall` with the offsets before and after the jump gives two instants
/// around it; the jump is found between them to the second (tz transitions fall on seconds).
fn after_gap(zone: chrono_tz::Tz, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
    let offset_at = |instant: NaiveDateTime| {
        i64::from(
            zone.offset_from_utc_datetime(&instant)
                .fix()
                .local_minus_utc(),
        )
    };
    let as_utc = wall.and_utc().timestamp();
    let first = as_utc - offset_at(wall);
    let second = as_utc - offset_at(DateTime::from_timestamp(first, 0)?.naive_utc());
    let later_local = |seconds: i64| {
        DateTime::from_timestamp(seconds, 0)
            .map(|t| wall_clock(zone, t).naive_utc() > wall)
            .unwrap_or(true)
    };
    let (mut before, mut after) = (first.min(second), first.max(second));
    if later_local(before) || !later_local(after) {
        // Not the two sides of one jump (a zone with several changes within hours): walk
        // forward a minute at a time to the first time that exists.
        let mut probe = wall;
        for _ in 0..(48 * 60) {
            probe += chrono::Duration::minutes(1);
            if let Some(t) = zone.from_local_datetime(&probe).earliest() {
                return Some(t.with_timezone(&Utc));
            }
        }
        return None;
    }
    while after - before > 1 {
        let middle = before + (after - before) / 2;
        if later_local(middle) {
            after = middle;
        } else {
            before = middle;
        }
    }
    DateTime::from_timestamp(after, 0)
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

    fn berlin(expression: &str) -> CronSchedule {
        CronSchedule::parse_in(expression, Some("Europe/Berlin")).unwrap()
    }

    fn ms(t: DateTime<Utc>) -> i64 {
        t.timestamp_millis()
    }

    #[test]
    fn a_zoned_cron_fires_at_the_same_local_time_all_year() {
        let weekdays = berlin("0 9 * * 1-5");
        assert_eq!(weekdays.timezone(), "Europe/Berlin");
        // Winter (CET, +1) and summer (CEST, +2).
        assert_eq!(
            weekdays.next_after(at(2026, 1, 12, 0, 0)),
            Some(at(2026, 1, 12, 8, 0))
        );
        assert_eq!(
            weekdays.next_after(at(2026, 7, 13, 0, 0)),
            Some(at(2026, 7, 13, 7, 0))
        );
        assert_eq!(
            CronSchedule::parse("0 9 * * 1-5").unwrap().timezone(),
            "UTC"
        );
        assert_ne!(weekdays, CronSchedule::parse("0 9 * * 1-5").unwrap());
        assert_ne!(
            weekdays.key(),
            CronSchedule::parse("0 9 * * 1-5").unwrap().key()
        );
    }

    #[test]
    fn a_fire_time_the_clocks_skip_fires_once_at_the_first_instant_after_the_gap() {
        // 2026-03-29: Berlin jumps from 02:00 CET to 03:00 CEST (01:00 UTC).
        let daily = berlin("30 2 * * *");
        assert_eq!(
            daily.next_after(at(2026, 3, 28, 12, 0)),
            Some(at(2026, 3, 29, 1, 0))
        );
        assert_eq!(
            daily.next_after(at(2026, 3, 29, 1, 0)),
            Some(at(2026, 3, 30, 0, 30))
        );
        assert_eq!(
            daily.latest_at_or_before(ms(at(2026, 3, 29, 12, 0))),
            Some(ms(at(2026, 3, 29, 1, 0)))
        );
        // Three skipped times fire together, once.
        let in_the_gap = berlin("*/20 2 * * *");
        assert_eq!(
            in_the_gap.fires_between(ms(at(2026, 3, 28, 12, 0)), ms(at(2026, 3, 30, 12, 0)), 10),
            vec![
                ms(at(2026, 3, 29, 1, 0)),
                ms(at(2026, 3, 30, 0, 0)),
                ms(at(2026, 3, 30, 0, 20)),
                ms(at(2026, 3, 30, 0, 40)),
            ]
        );
        // An interval cron: the skipped 02:00 and 02:30 fire with 03:00, once.
        let half_hourly = berlin("*/30 * * * *");
        assert_eq!(
            half_hourly.fires_between(ms(at(2026, 3, 29, 0, 0)), ms(at(2026, 3, 29, 2, 0)), 10),
            vec![
                ms(at(2026, 3, 29, 0, 30)),
                ms(at(2026, 3, 29, 1, 0)),
                ms(at(2026, 3, 29, 1, 30)),
                ms(at(2026, 3, 29, 2, 0)),
            ]
        );
    }

    #[test]
    fn a_fire_time_the_clocks_repeat_fires_once_at_its_first_occurrence() {
        // 2026-10-25: Berlin goes back from 03:00 CEST (01:00 UTC) to 02:00 CET.
        let daily = berlin("30 2 * * *");
        assert_eq!(
            daily.next_after(at(2026, 10, 24, 12, 0)),
            Some(at(2026, 10, 25, 0, 30))
        );
        // Asked during the repeated hour, after its first 02:30: the next day's.
        assert_eq!(
            daily.next_after(at(2026, 10, 25, 1, 10)),
            Some(at(2026, 10, 26, 1, 30))
        );
        assert_eq!(
            daily.latest_at_or_before(ms(at(2026, 10, 25, 1, 45))),
            Some(ms(at(2026, 10, 25, 0, 30)))
        );
        let hourly = berlin("0 * * * *");
        assert_eq!(
            hourly.fires_between(ms(at(2026, 10, 24, 23, 30)), ms(at(2026, 10, 25, 3, 0)), 10),
            vec![
                ms(at(2026, 10, 25, 0, 0)),
                ms(at(2026, 10, 25, 2, 0)),
                ms(at(2026, 10, 25, 3, 0)),
            ]
        );
        assert_eq!(
            hourly.latest_at_or_before(ms(at(2026, 10, 25, 1, 30))),
            Some(ms(at(2026, 10, 25, 0, 0)))
        );
        assert_eq!(
            hourly.next_after(at(2026, 10, 25, 0, 0)),
            Some(at(2026, 10, 25, 2, 0))
        );
    }

    #[test]
    fn the_three_searches_agree_across_both_changes_in_several_zones() {
        for zone in [
            "Europe/Berlin",
            "America/New_York",
            "Australia/Lord_Howe",
            "Pacific/Chatham",
        ] {
            for expression in ["*/15 * * * *", "30 2 * * *", "0 * * * *", "5,35 1-3 * * *"] {
                let cron = CronSchedule::parse_in(expression, Some(zone)).unwrap();
                for (from, until) in [
                    (at(2026, 3, 7, 0, 0), at(2026, 4, 6, 0, 0)),
                    (at(2026, 9, 26, 0, 0), at(2026, 11, 2, 0, 0)),
                ] {
                    let fires = cron.fires_between(ms(from), ms(until), usize::MAX);
                    assert!(fires.windows(2).all(|w| w[0] < w[1]), "{zone} {expression}");
                    let mut probe = ms(from) + 86_400_000;
                    while probe < ms(until) - 86_400_000 {
                        let count = fires.partition_point(|f| *f <= probe);
                        let latest = count.checked_sub(1).map(|i| fires[i]);
                        let next = fires.get(count).copied();
                        assert_eq!(
                            cron.latest_at_or_before(probe),
                            latest,
                            "{zone} {expression} {probe}"
                        );
                        assert_eq!(
                            cron.next_after(DateTime::from_timestamp_millis(probe).unwrap())
                                .map(ms),
                            next,
                            "{zone} {expression} {probe}"
                        );
                        probe += 37 * 60_000 + 13_000;
                    }
                }
            }
        }
    }

    #[test]
    fn unknown_zones_are_refused() {
        assert!(CronSchedule::parse_in("0 9 * * *", Some("Europe/Berlin")).is_ok());
        for bad in [
            "Mars/Olympus",
            "europe/berlin",
            "",
            "CEST",
            "Europe/Berlin ",
        ] {
            assert!(parse_timezone(bad).is_err(), "{bad:?}");
        }
    }
}
