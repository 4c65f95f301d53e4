//! Uptime: the share of a trailing window a job spent outside `stuck`, `missed` and `failing`,
//! from its announced health changes. Time before its first known change, time in `unknown`
//! and silenced time count on neither side; a window with nothing left has no figure.

use super::{EpochMillis, HealthState};

/// A job's state from `at` (ms) until the next change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateSpan {
    pub at: EpochMillis,
    pub state: HealthState,
}

/// Percentage of `[now - window_ms, now]` spent up, over the time that counts; `None` when
/// none counts. `changes` in any order (equal instants keep their given order); `silenced`
/// the job's silenced stretches `[from, to)`, disjoint ([`super::silenced_spans`]).
pub fn uptime_percent(
    changes: &[StateSpan],
    silenced: &[(EpochMillis, EpochMillis)],
    now: EpochMillis,
    window_ms: i64,
) -> Option<f64> {
    let mut ordered: Vec<&StateSpan> = changes.iter().collect();
    ordered.sort_by_key(|change| change.at);
    let window_start = now - window_ms;
    let (mut up, mut down) = (0i64, 0i64);
    for (i, change) in ordered.iter().enumerate() {
        let end = ordered.get(i + 1).map_or(now, |next| next.at).min(now);
        let start = change.at.max(window_start);
        if end <= start {
            continue;
        }
        let quiet: i64 = silenced
            .iter()
            .map(|&(from, to)| (to.min(end) - from.max(start)).max(0))
            .sum();
        let counted = end - start - quiet;
        match change.state {
            HealthState::Stuck | HealthState::Missed | HealthState::Failing => down += counted,
            HealthState::Healthy | HealthState::New => up += counted,
            HealthState::Unknown => {}
        }
    }
    let counted = up + down;
    (counted > 0).then(|| up as f64 * 100.0 / counted as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    fn span(at: i64, state: HealthState) -> StateSpan {
        StateSpan { at, state }
    }

    #[test]
    fn healthy_twenty_hours_failing_three_silenced_one() {
        let now = 100 * HOUR;
        let changes = [
            span(now - 24 * HOUR, HealthState::Healthy),
            span(now - 4 * HOUR, HealthState::Failing),
        ];
        // Silenced for the last hour (and on, past now): on neither side, 20 / 23.
        let silenced = [(now - HOUR, now + 5 * HOUR)];
        let figure = uptime_percent(&changes, &silenced, now, 24 * HOUR).unwrap();
        assert!((figure - 2000.0 / 23.0).abs() < 1e-9, "{figure}");
        // The 7-day window knows only these 24 hours.
        assert_eq!(
            uptime_percent(&changes, &silenced, now, 7 * 24 * HOUR),
            Some(figure)
        );
        // Without the silence: 20 / 24.
        let loud = uptime_percent(&changes, &[], now, 24 * HOUR).unwrap();
        assert!((loud - 2000.0 / 24.0).abs() < 1e-9, "{loud}");
    }

    #[test]
    fn a_silence_across_a_change_leaves_out_both_sides_of_it() {
        let now = 100 * HOUR;
        let changes = [
            span(now - 10 * HOUR, HealthState::Healthy),
            span(now - 5 * HOUR, HealthState::Failing),
        ];
        // Silenced from 6 h to 4 h ago: 4 h up and 4 h down count.
        let silenced = [(now - 6 * HOUR, now - 4 * HOUR)];
        assert_eq!(
            uptime_percent(&changes, &silenced, now, 24 * HOUR),
            Some(50.0)
        );
        // Silenced the whole window: no figure.
        assert_eq!(
            uptime_percent(&changes, &[(now - 30 * HOUR, now)], now, 24 * HOUR),
            None
        );
    }

    #[test]
    fn unknown_time_and_time_before_the_first_change_are_left_out() {
        let now = 100 * HOUR;
        let changes = [
            span(now - 10 * HOUR, HealthState::Unknown),
            span(now - 6 * HOUR, HealthState::Missed),
            span(now - 3 * HOUR, HealthState::New),
        ];
        assert_eq!(uptime_percent(&changes, &[], now, 24 * HOUR), Some(50.0));
        // Only unknown in the window, or no change at all: no figure.
        assert_eq!(
            uptime_percent(
                &[span(now - HOUR, HealthState::Unknown)],
                &[],
                now,
                24 * HOUR
            ),
            None
        );
        assert_eq!(uptime_percent(&[], &[], now, 24 * HOUR), None);
    }

    #[test]
    fn a_window_cuts_the_span_it_starts_in_and_order_does_not_matter() {
        let now = 100 * HOUR;
        let changes = [
            span(now - 2 * HOUR, HealthState::Healthy),
            span(now - 30 * HOUR, HealthState::Stuck),
        ];
        // Of the last 24 h: 22 h stuck, 2 h healthy.
        let figure = uptime_percent(&changes, &[], now, 24 * HOUR).unwrap();
        assert!((figure - 200.0 / 24.0).abs() < 1e-9, "{figure}");
        // A change in the future (a clock ahead) adds nothing.
        let ahead = [span(now + HOUR, HealthState::Failing), changes[0]];
        assert_eq!(uptime_percent(&ahead, &[], now, 24 * HOUR), Some(100.0));
    }
}
