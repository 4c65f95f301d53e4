//! How the harness judges and reads its figures. Also compiled into the integration tests
//! (`tests/it/bench.rs`), which test it: a `harness = false` bench runs no tests.

use Direction::{AtLeast, AtMost};

pub enum Direction {
    AtLeast,
    AtMost,
}

/// The floor and goal for a figure, and whether this run meets them.
pub fn verdict(value: f64, floor: f64, goal: f64, direction: Direction, unit: &str) -> String {
    let (sign, meets): (&str, fn(f64, f64) -> bool) = match direction {
        AtLeast => (">=", |v, limit| v >= limit),
        AtMost => ("<=", |v, limit| v <= limit),
    };
    let mark = |limit| if meets(value, limit) { "met" } else { "MISSED" };
    format!(
        "floor {sign} {floor}{unit}: {}; goal {sign} {goal}{unit}: {}",
        mark(floor),
        mark(goal)
    )
}

/// A wrk latency (`779.00us`, `3.49ms`, `1.02s`) in milliseconds.
pub fn wrk_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    match unit {
        "us" => Some(number / 1_000.0),
        "ms" => Some(number),
        "s" => Some(number * 1_000.0),
        "m" => Some(number * 60_000.0),
        _ => None,
    }
}
