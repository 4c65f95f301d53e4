//! The benchmark harness's figure helpers (a `harness = false` bench runs no tests of its own).

#[path = "../../benches/support/figures.rs"]
#[allow(dead_code)]
mod figures;

use figures::{verdict, wrk_ms, Direction::AtLeast, Direction::AtMost};

#[test]
fn wrk_latencies_read_in_milliseconds() {
    assert_eq!(wrk_ms("779.00us"), Some(0.779));
    assert_eq!(wrk_ms("3.49ms"), Some(3.49));
    assert_eq!(wrk_ms("1.02s"), Some(1020.0));
    assert_eq!(wrk_ms("?"), None);
}

#[test]
fn verdicts_follow_the_direction_of_the_target() {
    assert_eq!(
        verdict(0.62, 0.5, 0.8, AtLeast, ""),
        "floor >= 0.5: met; goal >= 0.8: MISSED"
    );
    assert_eq!(
        verdict(3.5, 10.0, 5.0, AtMost, " ms"),
        "floor <= 10 ms: met; goal <= 5 ms: met"
    );
    assert_eq!(
        verdict(260.0, 250.0, 150.0, AtMost, " MB"),
        "floor <= 250 MB: MISSED; goal <= 150 MB: MISSED"
    );
}
