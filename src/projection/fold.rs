//! The fold: what one valid event does to the rows it touches. The writer, the property tests
//! and the health tests all call [`apply`]; only loading and persisting the rows differ.

use crate::events::{Event, EventKind};

use super::{transition, Execution, ExecutionEvent, JobStats};

/// What [`apply`] changed besides the job's aggregates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A `scheduled` or `silenced` event: the job's schedule or silence record was considered
    /// (it is replaced only by a newer one); no execution row is touched.
    Schedule,
    /// The execution's row is now this one: write it.
    Execution(Execution),
    /// A repeat, or a terminal event after the first: nothing to write for the execution.
    Unchanged,
}

/// Applies `event` to its job's aggregates (`job`, changed in place) and to the row of the
/// execution it names (`execution`: the stored row, `None` when that execution is new; unused
/// for `scheduled`). Pure: the caller loads the rows and persists what comes back.
///
/// One thing is left to the caller: when a late finish splits the job's current outcome run
/// (`job.outcome_run` marked stale), the run's length is a count over finished executions the
/// caller holds, so it recounts them and calls [`JobStats::recount_run`].
pub fn apply(job: &mut JobStats, execution: Option<&Execution>, event: &Event) -> Change {
    match &event.kind {
        EventKind::Scheduled {
            cron,
            grace_ms,
            max_runtime_ms,
            labels,
            failure_threshold,
            recovery_threshold,
        } => {
            job.apply_schedule(
                super::ScheduleSettings {
                    cron: cron.as_ref().map(|c| c.expression().to_owned()),
                    timezone: cron
                        .as_ref()
                        .map(|c| c.timezone())
                        .filter(|z| *z != crate::schedule::DEFAULT_TIMEZONE)
                        .map(str::to_owned),
                    grace_ms: *grace_ms,
                    max_runtime_ms: *max_runtime_ms,
                    labels: labels.clone(),
                    failure_threshold: *failure_threshold,
                    recovery_threshold: *recovery_threshold,
                },
                event.occurred_at.timestamp_millis(),
                event.event_id,
            );
            return Change::Schedule;
        }
        EventKind::Silenced { until, reason, by } => {
            job.apply_silence(super::SilenceRecord {
                until: until.map(|u| u.timestamp_millis()),
                reason: reason.clone(),
                by: by.clone(),
                occurred_at: event.occurred_at.timestamp_millis(),
                event_id: event.event_id,
            });
            return Change::Schedule;
        }
        _ => {}
    }
    let (Some(execution_id), Some(step)) =
        (event.execution_id(), ExecutionEvent::from_event(event))
    else {
        // Every event but `scheduled` names an execution (the decoder guarantees it).
        return Change::Unchanged;
    };
    match transition(execution, &step) {
        Some(next) => {
            job.absorb(execution_id.as_str(), execution, &next);
            Change::Execution(next)
        }
        None => Change::Unchanged,
    }
}

/// A job folded in memory the way the store folds it (the rows kept in a map instead of
/// SQLite, the split-run recount done over that map), for the property and health tests.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct MemoryJob {
    pub rows: std::collections::BTreeMap<String, Execution>,
    pub stats: JobStats,
}

#[cfg(test)]
impl MemoryJob {
    pub fn apply(&mut self, event: &Event) -> Change {
        let id = event.execution_id().map(|id| id.as_str().to_owned());
        let current = id.as_ref().and_then(|id| self.rows.get(id));
        let change = apply(&mut self.stats, current, event);
        if let (Change::Execution(next), Some(id)) = (&change, id) {
            self.rows.insert(id, next.clone());
        }
        let boundary = self
            .stats
            .outcome_run
            .as_ref()
            .filter(|r| r.stale)
            .and_then(|r| r.boundary.clone());
        if let Some(boundary) = boundary {
            let after: Vec<super::FinishKey> = self
                .rows
                .iter()
                .filter_map(|(id, row)| row.finished_at.map(|at| (at, id.clone())))
                .filter(|key| *key > boundary)
                .collect();
            self.stats
                .recount_run(after.len() as i64, after.into_iter().min());
        }
        if self.stats.verdict_stale {
            let boundary = self
                .stats
                .outcome_run
                .as_ref()
                .and_then(|r| r.boundary.clone());
            let mut before: Vec<(super::FinishKey, bool)> = self
                .rows
                .iter()
                .filter_map(|(id, row)| {
                    let key = (row.finished_at?, id.clone());
                    let failed = row.state == super::ExecutionState::Failed;
                    (row.state.is_terminal() && boundary.as_ref().is_some_and(|b| key <= *b))
                        .then_some((key, failed))
                })
                .collect();
            before.sort();
            let thresholds = self.stats.thresholds();
            self.stats
                .set_verdict_before_run(super::Verdict::of_history(
                    before.into_iter().map(|((at, _), failed)| (at, failed)),
                    thresholds,
                ));
        }
        change
    }

    /// Applies `step` of execution `id` (see [`event_for`]).
    pub fn step(&mut self, id: &str, step: &ExecutionEvent) -> Change {
        self.apply(&event_for(id, step))
    }
}

/// The event a runner would publish for `step` of execution `id`, for tests that write
/// histories as execution steps. Tenant, job and event id are fixed: [`apply`] folds one job.
#[cfg(test)]
pub(crate) fn event_for(id: &str, step: &ExecutionEvent) -> Event {
    use crate::events::{ExecutionId, JobName, TenantId};
    let execution_id = ExecutionId::parse(id).expect("test execution ids are valid");
    let (at, kind) = match step.clone() {
        ExecutionEvent::Enqueued { at } => (at, EventKind::Enqueued { execution_id }),
        ExecutionEvent::Started { at } => (at, EventKind::Started { execution_id }),
        ExecutionEvent::Completed {
            at,
            items_processed,
            result,
        } => (
            at,
            EventKind::Completed {
                execution_id,
                items_processed,
                exit_code: result.exit_code,
                output: result.output,
            },
        ),
        ExecutionEvent::Failed {
            at,
            items_processed,
            error,
            result,
        } => (
            at,
            EventKind::Failed {
                execution_id,
                items_processed,
                error,
                exit_code: result.exit_code,
                output: result.output,
            },
        ),
    };
    Event {
        event_id: uuid::Uuid::nil(),
        tenant_id: TenantId::new(uuid::Uuid::nil()),
        job_name: JobName::parse("folded").expect("a valid job name"),
        occurred_at: chrono::DateTime::from_timestamp_millis(at)
            .expect("test times are in chrono's range"),
        kind,
    }
}
