//! The benchmark harness's figure helpers (a `harness = false` bench runs no tests of its own).

#[path = "../../benches/support/figures.rs"]
#[allow(dead_code)]
mod figures;

use figures::{goal_only, verdict, wrk_errors, wrk_ms, Direction::AtLeast, Direction::AtMost};

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

#[test]
fn a_wrk_run_with_any_error_status_or_socket_error_is_reported_as_failed() {
    let clean = "Running 5s test @ http://127.0.0.1:8080/healthz
  2 threads and 64 connections
  Latency Distribution
     50%  779.00us
     99%    2.56ms
  512345 requests in 5.00s, 61.2MB read
Requests/sec: 102469.00
Transfer/sec:     12.24MB
";
    assert_eq!(wrk_errors(clean), Vec::<String>::new());
    let failing = "  512345 requests in 5.00s, 61.2MB read
  Socket errors: connect 0, read 3, write 0, timeout 12
  Non-2xx or 3xx responses: 512345
Requests/sec: 102469.00
";
    assert_eq!(
        wrk_errors(failing),
        [
            "Socket errors: connect 0, read 3, write 0, timeout 12",
            "Non-2xx or 3xx responses: 512345"
        ]
    );
    // Only timeouts: still a failed run.
    assert_eq!(
        wrk_errors("  Socket errors: connect 0, read 0, write 0, timeout 1\n").len(),
        1
    );
}

#[test]
fn a_goal_without_a_floor_names_its_issue() {
    assert_eq!(
        goal_only(76.3, 2.0, AtMost, "", 34),
        "goal <= 2 (issue 34): MISSED"
    );
    assert_eq!(
        goal_only(1.5, 2.0, AtMost, "", 34),
        "goal <= 2 (issue 34): met"
    );
}
