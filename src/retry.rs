//! Supervised retries: how a long-running task (projector, health evaluator, webhook
//! delivery) waits after a failure, and how it says so. Every such loop backs off
//! exponentially with jitter, and a failure that repeats is logged once when it starts, once
//! when its text changes, and once when the task recovers, with how many attempts failed:
//! an outage is a few lines, not one per attempt.

use std::time::Duration;

/// A session that ran this long before failing counts as a recovery first: its failure is
/// news again, and the back-off starts over.
pub const LONG_SESSION: Duration = Duration::from_secs(30);

/// Consecutive failures of one task, and what to wait before the next attempt.
#[derive(Debug)]
pub struct Supervisor {
    task: &'static str,
    failures: u32,
    /// The text of the failure last logged, to log again only when it changes.
    logged: Option<String>,
    initial: Duration,
    max: Duration,
}

impl Supervisor {
    /// Pauses from 250 ms, doubling up to 5 s.
    pub fn new(task: &'static str) -> Self {
        Supervisor {
            task,
            failures: 0,
            logged: None,
            initial: Duration::from_millis(250),
            max: Duration::from_secs(5),
        }
    }

    /// Records a failed attempt (logging it if it is new) and returns the pause before the
    /// next one: exponential, capped, with up to half of it as jitter so replicas that failed
    /// together do not retry in step.
    pub fn failed(&mut self, error: &dyn std::fmt::Display, context: &str) -> Duration {
        self.failures += 1;
        let text = error.to_string();
        if self.logged.as_deref() != Some(text.as_str()) {
            tracing::warn!(
                task = self.task,
                attempt = self.failures,
                error = %text,
                context,
                "failed; retrying with back-off (logged again only when the error changes or it recovers)"
            );
            self.logged = Some(text);
        }
        self.pause()
    }

    /// Records a success: logs the recovery once if there were failures.
    pub fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::info!(
                task = self.task,
                failed_attempts = self.failures,
                last_error = self.logged.as_deref().unwrap_or(""),
                "recovered"
            );
        }
        self.failures = 0;
        self.logged = None;
    }

    /// Failed attempts since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    fn pause(&self) -> Duration {
        let doublings = self.failures.saturating_sub(1).min(16);
        let full = self.initial.saturating_mul(1u32 << doublings).min(self.max);
        let half = full / 2;
        half + Duration::from_millis(fastrand::u64(..=half.as_millis() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_exponentially_to_the_cap_with_jitter_and_reset_on_success() {
        let mut supervisor = Supervisor::new("test");
        let mut fulls = Vec::new();
        for _ in 0..8 {
            let pause = supervisor.failed(&"down", "x");
            let full =
                Duration::from_millis((250u64 << (supervisor.failures() - 1).min(16)).min(5_000));
            assert!(pause >= full / 2 && pause <= full, "{pause:?} of {full:?}");
            fulls.push(full.as_millis());
        }
        assert_eq!(fulls, [250, 500, 1_000, 2_000, 4_000, 5_000, 5_000, 5_000]);
        supervisor.succeeded();
        assert_eq!(supervisor.failures(), 0);
        let pause = supervisor.failed(&"down", "x");
        assert!(pause <= Duration::from_millis(250));
    }

    #[test]
    fn a_repeated_failure_is_remembered_once_until_it_changes() {
        let mut supervisor = Supervisor::new("test");
        supervisor.failed(&"no stream", "x");
        assert_eq!(supervisor.logged.as_deref(), Some("no stream"));
        supervisor.failed(&"no stream", "x");
        supervisor.failed(&"timed out", "x");
        assert_eq!(supervisor.logged.as_deref(), Some("timed out"));
        assert_eq!(supervisor.failures(), 3);
    }
}
