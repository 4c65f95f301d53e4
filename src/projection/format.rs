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
///
/// Written digit by digit for four-digit years (every answer prints several of these, and
/// chrono's formatter, through `fmt::Write`, was a tenth of a stats answer's CPU); chrono
/// formats the rest. A test compares the two over the whole range.
pub fn rfc3339_millis(ms: i64) -> String {
    use chrono::{Datelike, Timelike};
    let at = chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default();
    let year = at.year();
    if !(0..=9999).contains(&year) {
        return at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    }
    let mut text = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, value: u32, width: usize| {
        let mut value = value;
        for slot in text[at..at + width].iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, year as u32, 4);
    put(5, at.month(), 2);
    put(8, at.day(), 2);
    put(11, at.hour(), 2);
    put(14, at.minute(), 2);
    put(17, at.second(), 2);
    put(20, at.timestamp_subsec_millis().min(999), 3);
    std::str::from_utf8(&text).map_or_else(|_| String::new(), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chrono_rfc3339_millis(ms: i64) -> String {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }

    #[test]
    fn instants_print_as_chrono_prints_them() {
        let edges = [
            0,
            -1,
            1,
            999,
            1_700_000_000_123,
            951_782_400_000,       // 2000-02-29
            -62_167_219_200_000,   // 0000-01-01
            -62_167_219_200_001,   // the last millisecond of year -1
            253_402_300_799_999,   // 9999-12-31T23:59:59.999
            253_402_300_800_000,   // 10000-01-01
            8_210_266_876_799_999, // chrono's last instant
            8_210_266_876_800_000, // past it: the epoch, as before
            i64::MIN,
            i64::MAX,
        ];
        for ms in edges {
            assert_eq!(rfc3339_millis(ms), chrono_rfc3339_millis(ms), "{ms}");
        }
        // A walk across centuries, every step landing on another field value.
        let mut ms = -70_000_000_000_000i64;
        while ms < 260_000_000_000_000 {
            assert_eq!(rfc3339_millis(ms), chrono_rfc3339_millis(ms), "{ms}");
            ms += 3_137_777_777_777 / 1_000 + 7;
        }
    }

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
