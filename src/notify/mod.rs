//! Health notifications (CONTRACT §8, §11): every change of a job's `health.state` becomes
//! one message on the `JOB_HEALTH` stream, and from there a message on each matching alert
//! channel (signed webhooks, Slack, PagerDuty, Opsgenie, Teams, e-mail, Alertmanager).
//!
//! This file is the pure part: what a change looks like, its subject and dedupe id, and when
//! the clock alone can next change a job's state. [`evaluator`] follows the projection and
//! publishes; [`channels`] delivers from the stream ([`webhooks`] reads §8's file). Neither writes the read model.
//!
//! Why the stream is the memory: the last message per job subject says what was announced
//! last. It survives restarts and rebuilds, every replica reads the same one, and the
//! `Nats-Msg-Id` (tenant/job/state/since) makes the same change from two replicas one message.

pub mod channels;
pub mod evaluator;
pub mod history;
pub mod watch;
pub mod webhooks;

use serde::{Deserialize, Serialize};

use crate::events::TenantId;
use crate::projection::format::human_duration;
use crate::projection::format::rfc3339_millis;
pub use crate::projection::health::next_clock_change;
use crate::projection::{EpochMillis, Health, HealthState, JobStats};

/// The stream health changes are stored in.
pub const HEALTH_STREAM: &str = "JOB_HEALTH";
/// Subjects of health changes: `jobstats.health.<tenantId>.<jobName>`.
pub const HEALTH_SUBJECTS: &str = "jobstats.health.>";
/// Subjects of webhook deliveries given up on: `jobstats.webhook-dead.<webhook>`.
pub const WEBHOOK_DEAD_SUBJECTS: &str = "jobstats.webhook-dead.>";
/// The stream they are kept in (by age: [`DEAD_DELIVERY_MAX_AGE`]).
pub const DEAD_DELIVERY_STREAM: &str = "JOBSTATS_DEAD_DELIVERIES";
/// How long a delivery given up on is kept.
pub const DEAD_DELIVERY_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);
/// At most this many per webhook within that age (a receiver down for a month at thousands
/// of changes a day must not fill the disk).
pub const DEAD_DELIVERIES_PER_WEBHOOK: i64 = 100_000;

/// The subject of one job's changes. A job name may contain `.`, which NATS reads as a token
/// separator: harmless (`jobstats.health.<tenant>.>` still matches it) unless it leaves an
/// empty token (`a..b`, `a.`), which NATS refuses; such a name's dots become `_` in the
/// subject only. The body always carries the exact name.
pub fn subject(tenant: &TenantId, job: &str) -> String {
    if job.split('.').any(str::is_empty) {
        format!("jobstats.health.{tenant}.{}", job.replace('.', "_"))
    } else {
        format!("jobstats.health.{tenant}.{job}")
    }
}

/// One announced change, as published and POSTed (CONTRACT §8).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthChange {
    pub spec_version: u32,
    pub tenant_id: String,
    pub job_name: String,
    pub state: String,
    pub previous_state: String,
    pub since: Option<String>,
    pub as_of: String,
    pub reason: String,
    pub consecutive_failures: i64,
    pub execution_id: Option<String>,
    /// The job's labels, for the channels' `labels` filters (CONTRACT §11).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: crate::events::Labels,
    /// Judged while the job was silenced: channels send no opening and no reminder for it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub silenced: bool,
    /// Until when, and why (present while `silenced`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silenced_until: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silence_reason: Option<String>,
    /// A silence ended with the job still in trouble: this message opens it (once).
    #[serde(default, skip_serializing_if = "is_false")]
    pub silence_ended: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl HealthChange {
    /// `Nats-Msg-Id`: the same change judged by two replicas is stored once.
    pub fn message_id(&self) -> String {
        if self.silence_ended {
            // One per silence ended: its `asOf` is the instant the silence stopped.
            return format!(
                "{}/{}/{}/silence-ended/{}",
                self.tenant_id, self.job_name, self.state, self.as_of
            );
        }
        format!(
            "{}/{}/{}/{}",
            self.tenant_id,
            self.job_name,
            self.state,
            self.since.as_deref().unwrap_or(&self.as_of)
        )
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a HealthChange always serializes")
    }
}

/// The change to announce, if the job's state differs from the last one announced (`None`:
/// nothing announced yet, so `new`). `unknown` is the service's own blindness, not the
/// job's: it is never announced, and the state is compared again once the stream is back.
pub fn change(
    tenant: &TenantId,
    job: &str,
    last_announced: Option<HealthState>,
    health: &Health,
    stats: &JobStats,
) -> Option<HealthChange> {
    let previous = last_announced.unwrap_or(HealthState::New);
    if health.state == HealthState::Unknown || health.state == previous {
        return None;
    }
    Some(announcement(tenant, job, previous, health, stats))
}

/// The message for `health` after `previous`, whether or not the state changed.
fn announcement(
    tenant: &TenantId,
    job: &str,
    previous: HealthState,
    health: &Health,
    stats: &JobStats,
) -> HealthChange {
    HealthChange {
        spec_version: 1,
        tenant_id: tenant.to_string(),
        job_name: job.to_owned(),
        state: health.state.as_str().to_owned(),
        previous_state: previous.as_str().to_owned(),
        since: health.since.map(rfc3339_millis),
        as_of: rfc3339_millis(health.as_of),
        reason: reason(health, stats),
        consecutive_failures: health.consecutive_failures,
        execution_id: execution_concerned(health, stats),
        labels: stats
            .schedule
            .as_ref()
            .map(|s| s.labels.clone())
            .unwrap_or_default(),
        silenced: health.silence.is_some(),
        silenced_until: health.silence.as_ref().map(|s| rfc3339_millis(s.until)),
        silence_reason: health.silence.as_ref().and_then(|s| s.reason.clone()),
        silence_ended: false,
    }
}

/// Whether a job in trouble needs the one `silenceEnded` message (CONTRACT §11): its latest
/// silence stopped at or before `health.as_of`, after the last message announced for it
/// (`last_announced_at`), and the job is still stuck, missed or failing. The message's `asOf`
/// is the instant the silence stopped, which makes its id the same on every replica.
pub fn silence_ended(
    tenant: &TenantId,
    job: &str,
    last_announced_at: Option<EpochMillis>,
    health: &Health,
    stats: &JobStats,
) -> Option<HealthChange> {
    let silence = stats.silence.as_ref()?;
    let ended = silence.ended_at()?;
    let in_trouble = matches!(
        health.state,
        HealthState::Stuck | HealthState::Missed | HealthState::Failing
    );
    // A lift (`until` null) only ends a silence that was in force when it was lifted: one
    // after an expired silence ended nothing new.
    if !in_trouble || health.silence.is_some() || ended > health.as_of {
        return None;
    }
    if last_announced_at.is_some_and(|at| at >= ended) {
        return None;
    }
    let mut message = announcement(tenant, job, health.state, health, stats);
    message.silence_ended = true;
    message.as_of = rfc3339_millis(ended);
    message.reason = format!("The silence ended; {}", message.reason);
    Some(message)
}

/// One human sentence saying why the job is in its state.
pub fn reason(health: &Health, stats: &JobStats) -> String {
    let at =
        |ms: Option<EpochMillis>| ms.map_or_else(|| "an unknown time".to_owned(), rfc3339_millis);
    let last = stats.last_finished.as_ref();
    match health.state {
        // The ids travel beside the sentence (`executionId`, `stuckExecutionIds`).
        HealthState::Stuck => match health.stuck_execution_ids.len() {
            0 | 1 => format!(
                "An execution has been processing for more than its maximum run time of {}.",
                human_duration(health.max_runtime_ms)
            ),
            n => format!(
                "{n} executions have been processing for more than their maximum run time of {}.",
                human_duration(health.max_runtime_ms)
            ),
        },
        HealthState::Missed => {
            let grace = health.grace_ms.unwrap_or(0);
            let due = at(health.since.map(|since| since - grace));
            match health.missed_last_24h {
                0 | 1 => format!(
                    "No run started within {} of the run due at {due}.",
                    human_duration(grace)
                ),
                n => format!(
                    "No run has started since the run due at {due} ({n} runs missed in the last 24 hours)."
                ),
            }
        }
        HealthState::Failing if health.consecutive_failures == 0 => {
            // Held by recoveryThreshold: completions since, but not enough in a row yet.
            let (_, recovery) = stats.thresholds();
            let completed = stats
                .outcome_run
                .as_ref()
                .filter(|r| !r.failed)
                .map_or(0, |r| r.length);
            format!(
                "{completed} of the {recovery} completed executions in a row needed to recover \
                 have finished (the latest at {}).",
                at(last.map(|l| l.finished_at))
            )
        }
        HealthState::Failing => match health.consecutive_failures {
            0 | 1 => format!(
                "The last finished execution failed (at {}).",
                at(last.map(|l| l.finished_at))
            ),
            n => format!(
                "The last {n} finished executions failed (the latest at {}).",
                at(last.map(|l| l.finished_at))
            ),
        },
        HealthState::Healthy => format!(
            "The last finished execution completed (at {}) and no run is missed or stuck.",
            at(last.map(|l| l.finished_at))
        ),
        HealthState::New => "Nothing has finished yet and no run is missed or stuck.".to_owned(),
        HealthState::Unknown => "The event stream cannot be read.".to_owned(),
    }
}

/// The execution a change is about: the oldest stuck one, else the last finished one for
/// `failing` and `healthy`.
fn execution_concerned(health: &Health, stats: &JobStats) -> Option<String> {
    match health.state {
        HealthState::Stuck => health.stuck_execution_ids.first().cloned(),
        HealthState::Failing | HealthState::Healthy => {
            stats.last_finished.as_ref().map(|l| l.execution_id.clone())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projection::health::Fires;
    use crate::projection::LastFinished;
    use crate::schedule::CronSchedule;

    const T0: i64 = 1_752_148_800_000;
    const MIN: i64 = 60_000;

    fn tenant() -> TenantId {
        TenantId::parse("3f0c7f7e-8a51-4a52-9f7e-0d6a4c1b2e11").unwrap()
    }

    fn health(state: HealthState, since: Option<i64>) -> Health {
        Health {
            state,
            as_of: T0,
            since,
            consecutive_failures: 0,
            missed_last_24h: 0,
            missed_last_7d: 0,
            stuck_execution_ids: vec![],
            expected_at: None,
            grace_ms: Some(MIN),
            max_runtime_ms: 30 * MIN,
            last_failed: None,
            silence: None,
        }
    }

    #[test]
    fn new_is_not_announced_and_every_other_change_is_with_its_previous_state() {
        let stats = JobStats::default();
        let quiet = change(
            &tenant(),
            "a",
            None,
            &health(HealthState::New, None),
            &stats,
        );
        assert_eq!(quiet, None);
        let missed = health(HealthState::Missed, Some(T0 - MIN));
        let first = change(&tenant(), "a", None, &missed, &stats).unwrap();
        assert_eq!(
            (first.state.as_str(), first.previous_state.as_str()),
            ("missed", "new")
        );
        assert_eq!(
            first.message_id(),
            format!("{}/a/missed/2025-07-10T11:59:00.000Z", tenant())
        );
        assert!(
            first.reason.contains("2025-07-10T11:58:00.000Z"),
            "{}",
            first.reason
        );
        assert_eq!(
            change(&tenant(), "a", Some(HealthState::Missed), &missed, &stats),
            None
        );
        let back = change(
            &tenant(),
            "a",
            Some(HealthState::Missed),
            &health(HealthState::New, None),
            &stats,
        );
        assert_eq!(back.unwrap().previous_state, "missed");
    }

    #[test]
    fn unknown_is_never_announced() {
        let stats = JobStats::default();
        let blind = health(HealthState::Unknown, Some(T0));
        assert_eq!(
            change(&tenant(), "a", Some(HealthState::Healthy), &blind, &stats),
            None
        );
    }

    #[test]
    fn a_failing_change_names_the_failed_execution_and_counts_failures() {
        let stats = JobStats {
            last_finished: Some(LastFinished {
                finished_at: T0 - 5_000,
                execution_id: "run-9".into(),
                duration_ms: Some(1_000),
                failed: true,
            }),
            ..JobStats::default()
        };
        let mut failing = health(HealthState::Failing, Some(T0 - 5_000));
        failing.consecutive_failures = 3;
        let body = change(&tenant(), "a", Some(HealthState::Healthy), &failing, &stats).unwrap();
        assert_eq!(body.execution_id.as_deref(), Some("run-9"));
        assert_eq!(body.consecutive_failures, 3);
        assert_eq!(
            body.reason,
            "The last 3 finished executions failed (the latest at 2025-07-10T11:59:55.000Z)."
        );
        let json: serde_json::Value = serde_json::from_slice(&body.to_bytes()).unwrap();
        let mut keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "asOf",
                "consecutiveFailures",
                "executionId",
                "jobName",
                "previousState",
                "reason",
                "since",
                "specVersion",
                "state",
                "tenantId"
            ]
        );
    }

    #[test]
    fn the_clock_next_changes_a_state_at_the_next_fire_plus_grace_or_a_run_passing_max_runtime() {
        let cron = CronSchedule::parse("*/10 * * * *").unwrap();
        let fires = Fires::new(cron, T0 - 60 * MIN, T0 + 60 * MIN);
        let healthy = health(HealthState::Healthy, Some(T0 - 5 * MIN));
        // Fires at T0 and T0 + 10 min; with a minute of grace T0's is due at T0 + 1 min.
        assert_eq!(
            next_clock_change(&healthy, Some(&fires), &[]),
            Some(T0 + MIN)
        );
        let processing = vec![(T0 - 29 * MIN - 30_000, "slow".to_owned())];
        assert_eq!(
            next_clock_change(&healthy, Some(&fires), &processing),
            Some(T0 + 30_001)
        );
        // Without a schedule only the run can change it; already stuck runs are passed over.
        let overdue = vec![
            (T0 - 40 * MIN, "hung".to_owned()),
            (T0 - 20 * MIN, "slow".to_owned()),
        ];
        assert_eq!(
            next_clock_change(&healthy, None, &overdue),
            Some(T0 + 10 * MIN + 1)
        );
        assert_eq!(next_clock_change(&healthy, None, &[]), None);
    }
}
