//! How the harness judges and reads its figures. Also compiled into the integration tests
//! (`tests/it/bench.rs`), which test it: a `harness = false` bench runs no tests.

use Direction::{AtLeast, AtMost};

pub enum Direction {
    AtLeast,
    AtMost,
}

/// The issue's floor and goal for a figure, and whether this run meets them.
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

/// A figure whose issue sets no target, only that it be measured and stated.
pub fn stated(issue: u32) -> String {
    format!("no target: issue {issue} asks it stated")
}

/// A figure with a goal and no floor (the issue's `goal`).
pub fn goal_only(value: f64, goal: f64, direction: Direction, unit: &str, issue: u32) -> String {
    let (sign, met) = match direction {
        AtLeast => (">=", value >= goal),
        AtMost => ("<=", value <= goal),
    };
    let mark = if met { "met" } else { "MISSED" };
    format!("goal {sign} {goal}{unit} (issue {issue}): {mark}")
}

/// What wrk counted as failed in its `output`: its "Non-2xx or 3xx responses" and "Socket
/// errors" lines with any count above zero (wrk prints them only then). Empty when every
/// request was answered with a 2xx or 3xx.
pub fn wrk_errors(output: &str) -> Vec<String> {
    output
        .lines()
        .map(str::trim)
        .filter(|line| {
            if let Some(count) = line.strip_prefix("Non-2xx or 3xx responses:") {
                return count.trim() != "0";
            }
            if let Some(counts) = line.strip_prefix("Socket errors:") {
                // "connect 0, read 3, write 0, timeout 12"
                return counts
                    .split(',')
                    .filter_map(|kind| kind.split_whitespace().nth(1))
                    .any(|count| count != "0");
            }
            false
        })
        .map(str::to_owned)
        .collect()
}
