//! Human forms of the numbers: `850ms`, `45s`, `2m 5s`, `1h 2m`, `99.8%`.

/// Formats a duration the way the API document shows it.
pub fn human_duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    let total_seconds = ms / 1_000;
    let (hours, minutes, seconds) = (
        total_seconds / 3600,
        total_seconds / 60 % 60,
        total_seconds % 60,
    );
    match (hours, minutes) {
        (0, 0) => format!("{seconds}s"),
        (0, m) if seconds == 0 => format!("{m}m"),
        (0, m) => format!("{m}m {seconds}s"),
        (h, 0) => format!("{h}h"),
        (h, m) => format!("{h}h {m}m"),
    }
}

/// Percentage with one decimal, rounded down so that 99.96% of successes never shows "100.0%".
pub fn percent_one_decimal(percent: f64) -> f64 {
    (percent * 10.0 + 1e-9).floor() / 10.0
}

pub fn human_percent(percent: f64) -> String {
    format!("{:.1}%", percent_one_decimal(percent))
}

/// An instant as the API and notifications print it: RFC 3339, UTC, milliseconds.
pub fn rfc3339_millis(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_the_api_document() {
        assert_eq!(human_duration(850), "850ms");
        assert_eq!(human_duration(45_000), "45s");
        assert_eq!(human_duration(45_999), "45s");
        assert_eq!(human_duration(125_000), "2m 5s");
        assert_eq!(human_duration(120_000), "2m");
        assert_eq!(human_duration(3_720_000), "1h 2m");
        assert_eq!(human_duration(3_600_000), "1h");
        assert_eq!(human_duration(0), "0ms");
    }

    #[test]
    fn success_rate_never_rounds_up_to_a_perfect_score() {
        assert_eq!(human_percent(1250.0 * 100.0 / 1252.0), "99.8%");
        assert_eq!(human_percent(9999.0 * 100.0 / 10000.0), "99.9%");
        assert_eq!(human_percent(100.0), "100.0%");
        assert_eq!(human_percent(0.0), "0.0%");
        assert_eq!(human_percent(200.0 / 3.0), "66.6%");
    }
}
