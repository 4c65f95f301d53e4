//! Per-(tenant, job) aggregates, maintained incrementally from execution changes.

use uuid::Uuid;

use super::{EpochMillis, Execution, ExecutionState};

/// The finished execution with the latest finish time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastFinished {
    pub finished_at: EpochMillis,
    pub execution_id: String,
    pub duration_ms: Option<i64>,
}

/// The latest `scheduled` event by the runner's time (ties: the larger event id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleRecord {
    pub cron: Option<String>,
    pub occurred_at: EpochMillis,
    pub event_id: Uuid,
}

/// Everything the stats endpoint needs about one job, apart from the recent executions list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobStats {
    pub pending: i64,
    pub processing: i64,
    pub completed: i64,
    pub failed: i64,
    /// Sum and count of run times over completed executions with both times known.
    pub duration_sum_ms: i64,
    pub duration_count: i64,
    pub last_finished: Option<LastFinished>,
    /// The latest start time of any execution.
    pub last_started_at: Option<EpochMillis>,
    pub schedule: Option<ScheduleRecord>,
}

impl JobStats {
    /// Moves the aggregates from `old`'s contribution to `new`'s for one execution.
    pub fn absorb(&mut self, execution_id: &str, old: Option<&Execution>, new: &Execution) {
        if let Some(old) = old {
            self.count(old, -1);
        }
        self.count(new, 1);

        if let Some(started) = new.started_at {
            self.last_started_at = Some(self.last_started_at.map_or(started, |l| l.max(started)));
        }
        if let Some(finished_at) = new.finished_at {
            let candidate = (finished_at, execution_id);
            match &mut self.last_finished {
                Some(last) if (last.finished_at, last.execution_id.as_str()) == candidate => {
                    // Same execution: its start may have arrived late.
                    last.duration_ms = new.duration_ms();
                }
                Some(last) if (last.finished_at, last.execution_id.as_str()) > candidate => {}
                _ => {
                    self.last_finished = Some(LastFinished {
                        finished_at,
                        execution_id: execution_id.to_owned(),
                        duration_ms: new.duration_ms(),
                    })
                }
            }
        }
    }

    fn count(&mut self, execution: &Execution, sign: i64) {
        let bucket = match execution.state {
            ExecutionState::Pending => &mut self.pending,
            ExecutionState::Processing => &mut self.processing,
            ExecutionState::Completed => &mut self.completed,
            ExecutionState::Failed => &mut self.failed,
        };
        *bucket += sign;
        if execution.state == ExecutionState::Completed {
            if let Some(duration) = execution.duration_ms() {
                self.duration_sum_ms += sign * duration;
                self.duration_count += sign;
            }
        }
    }

    /// Records a `scheduled` event; the latest one by the runner's time wins.
    pub fn apply_schedule(&mut self, cron: Option<&str>, occurred_at: EpochMillis, event_id: Uuid) {
        let newer = match &self.schedule {
            None => true,
            Some(current) => (occurred_at, event_id) > (current.occurred_at, current.event_id),
        };
        if newer {
            self.schedule = Some(ScheduleRecord {
                cron: cron.map(str::to_owned),
                occurred_at,
                event_id,
            });
        }
    }

    /// Recomputes the aggregates from scratch (the reference the incremental path must equal).
    pub fn recompute<'a>(
        executions: impl IntoIterator<Item = (&'a str, &'a Execution)>,
        schedule: Option<ScheduleRecord>,
    ) -> JobStats {
        let mut stats = JobStats {
            schedule,
            ..JobStats::default()
        };
        for (id, execution) in executions {
            stats.absorb(id, None, execution);
        }
        stats
    }

    /// `running` while any execution is processing.
    pub fn status(&self) -> &'static str {
        if self.processing > 0 {
            "running"
        } else {
            "idle"
        }
    }

    pub fn average_duration_ms(&self) -> Option<i64> {
        (self.duration_count > 0).then(|| {
            // Round half up, in integers: exact for any history length.
            (self.duration_sum_ms + self.duration_count / 2) / self.duration_count
        })
    }

    /// completed / (completed + failed), in percent; `None` before anything finished.
    pub fn success_rate_percent(&self) -> Option<f64> {
        let finished = self.completed + self.failed;
        (finished > 0).then(|| self.completed as f64 * 100.0 / finished as f64)
    }
}
