//! Per-(tenant, job) aggregates, maintained incrementally from execution changes.

use uuid::Uuid;

use super::sketch::{DurationSketch, Percentiles};
use super::{EpochMillis, Execution, ExecutionState};

/// The finished execution with the latest finish time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastFinished {
    pub finished_at: EpochMillis,
    pub execution_id: String,
    pub duration_ms: Option<i64>,
    /// Whether it failed (else it completed).
    pub failed: bool,
}

/// The order of finished executions: finish time, ties by execution id.
pub type FinishKey = (EpochMillis, String);

/// The trailing run of finished executions with one outcome, by [`FinishKey`]: what
/// `consecutiveFailures` and the `since` of `failing` and `healthy` are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutcomeRun {
    /// The run's outcome: failed, else completed.
    pub failed: bool,
    pub length: i64,
    /// The run's earliest execution.
    pub first: FinishKey,
    /// The latest finished execution with the other outcome: every finished execution after
    /// it belongs to the run.
    pub boundary: Option<FinishKey>,
    /// A late execution of the other outcome split the run: `length` and `first` must be
    /// recounted from the executions after `boundary` (see [`JobStats::recount_run`]).
    pub stale: bool,
}

/// The latest `scheduled` event by the runner's time (ties: the larger event id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleRecord {
    pub cron: Option<String>,
    /// The IANA zone the cron is evaluated in; `None`: UTC.
    pub timezone: Option<String>,
    pub occurred_at: EpochMillis,
    pub event_id: Uuid,
    pub grace_ms: Option<i64>,
    pub max_runtime_ms: Option<i64>,
    /// When the current cron took effect: the `occurredAt` of the event that set it. A newer
    /// event repeating the same cron keeps it, so re-announcing a schedule at every deploy
    /// does not restart the judgement of missed runs.
    pub since: EpochMillis,
    /// The job's labels (CONTRACT §11).
    pub labels: crate::events::Labels,
    /// `failureThreshold` / `recoveryThreshold` (`None`: 1).
    pub failure_threshold: Option<u8>,
    pub recovery_threshold: Option<u8>,
}

/// The settings of a `scheduled` event, as [`JobStats::apply_schedule`] records them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScheduleSettings {
    pub cron: Option<String>,
    pub timezone: Option<String>,
    pub grace_ms: Option<i64>,
    pub max_runtime_ms: Option<i64>,
    pub labels: crate::events::Labels,
    pub failure_threshold: Option<u8>,
    pub recovery_threshold: Option<u8>,
}

/// The latest `silenced` event by the runner's time (ties: the larger event id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SilenceRecord {
    /// Until when alerts are quiet. A lift (`until` null or past) records the instant it
    /// ended the silence in force, the end of an expired one, or `None` when there was none.
    pub until: Option<EpochMillis>,
    pub reason: Option<String>,
    pub by: Option<String>,
    pub occurred_at: EpochMillis,
    pub event_id: Uuid,
}

impl SilenceRecord {
    /// Whether the job is silenced at `at`.
    pub fn active_at(&self, at: EpochMillis) -> bool {
        self.until.is_some_and(|until| until > at)
    }

    /// When the silence stops (or stopped) quieting alerts; `None`: there was none.
    pub fn ended_at(&self) -> Option<EpochMillis> {
        self.until
    }
}

/// One `silenced` event as the uptime figures need it (CONTRACT §12: silenced time counts on
/// neither side): from `occurred_at` the job is silenced until `until`, or until the next
/// mark, whichever comes first; `until` null or not after `occurred_at` is a lift.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SilenceMark {
    pub occurred_at: EpochMillis,
    pub event_id: Uuid,
    pub until: Option<EpochMillis>,
}

/// How many silence marks a job keeps: the latest by the runner's time. Sixty-four silences
/// within the 30 days uptime looks back is far past any planned-maintenance habit; older
/// ones only shorten the 30-day figure's left-out time.
pub const MAX_SILENCE_MARKS: usize = 64;

/// The silenced stretches `[from, to)` the marks (sorted, as kept) describe, in order and
/// disjoint.
pub fn silenced_spans(marks: &[SilenceMark]) -> Vec<(EpochMillis, EpochMillis)> {
    marks
        .iter()
        .enumerate()
        .filter_map(|(i, mark)| {
            let next = marks.get(i + 1).map_or(EpochMillis::MAX, |m| m.occurred_at);
            let end = mark.until?.min(next);
            (end > mark.occurred_at).then_some((mark.occurred_at, end))
        })
        .collect()
}

/// The thresholded verdict on a job's finished executions (CONTRACT §11): `failing` once its
/// last `failureThreshold` finished executions failed, `healthy` again only after
/// `recoveryThreshold` completed ones in a row. Kept only while a threshold above 1 is set
/// (with both at 1 the verdict is the last outcome, read from [`OutcomeRun`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub failing: bool,
    /// Since when: the first execution of the run that crossed the threshold.
    pub since: EpochMillis,
}

impl Verdict {
    /// The verdict after `previous` once the trailing run (`failed`, `length`, first finish
    /// `first_at`) is taken in: the forward rule, applied per run.
    pub fn after_run(
        previous: Option<Verdict>,
        failed: bool,
        length: i64,
        first_at: EpochMillis,
        thresholds: (i64, i64),
    ) -> Verdict {
        let (failure_threshold, recovery_threshold) = thresholds;
        match previous {
            Some(v) if v.failing && failed => v,
            Some(v) if v.failing && length >= recovery_threshold => Verdict {
                failing: false,
                since: first_at,
            },
            Some(v) if v.failing => v,
            _ if failed && length >= failure_threshold => Verdict {
                failing: true,
                since: first_at,
            },
            Some(v) => v,
            None => Verdict {
                failing: false,
                since: first_at,
            },
        }
    }

    /// The verdict over finished executions in finish order (`true`: failed), with each
    /// one's finish time: the reference the kept verdict must equal.
    pub fn of_history(
        finished: impl IntoIterator<Item = (EpochMillis, bool)>,
        thresholds: (i64, i64),
    ) -> Option<Verdict> {
        // (outcome, length, first) of the run being read, and the verdict before it.
        let mut run: Option<(bool, i64, EpochMillis)> = None;
        let mut before: Option<Verdict> = None;
        for (at, failed) in finished {
            run = match run {
                Some((outcome, length, first)) if outcome == failed => {
                    Some((outcome, length + 1, first))
                }
                Some((outcome, length, first)) => {
                    before = Some(Verdict::after_run(
                        before, outcome, length, first, thresholds,
                    ));
                    Some((failed, 1, at))
                }
                None => Some((failed, 1, at)),
            };
        }
        run.map(|(outcome, length, first)| {
            Verdict::after_run(before, outcome, length, first, thresholds)
        })
    }
}

impl ScheduleRecord {
    /// The cron, parsed, in its zone; `None` without one (or one this build cannot read).
    pub fn cron_schedule(&self) -> Option<crate::schedule::CronSchedule> {
        crate::schedule::CronSchedule::parse_in(self.cron.as_deref()?, self.timezone.as_deref())
            .ok()
    }

    /// The zone's IANA name (`UTC` when the schedule names none).
    pub fn timezone_name(&self) -> &str {
        self.timezone
            .as_deref()
            .unwrap_or(crate::schedule::DEFAULT_TIMEZONE)
    }
}

/// Everything the stats endpoint needs about one job, apart from the recent executions list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobStats {
    pub pending: i64,
    pub processing: i64,
    pub completed: i64,
    pub failed: i64,
    /// Sum and count of run times over completed executions with both times known.
    /// Wider than any one duration: 2^63 executions of the longest run the contract allows
    /// (year 0000 to 9999, ~3.2e14 ms) sum to ~3e33, far below i128's 1.7e38, so no history a
    /// publisher can send overflows it.
    pub duration_sum_ms: i128,
    pub duration_count: i64,
    pub last_finished: Option<LastFinished>,
    /// The latest start time of any execution.
    pub last_started_at: Option<EpochMillis>,
    pub schedule: Option<ScheduleRecord>,
    /// `None` before anything finished.
    pub outcome_run: Option<OutcomeRun>,
    /// The verdict before the trailing outcome run began (see [`Verdict`]); kept only while a
    /// threshold above 1 is set.
    pub verdict_before_run: Option<Verdict>,
    /// A late finish or a changed threshold: the store recomputes `verdict_before_run` from
    /// the finished executions (see [`JobStats::set_verdict_before_run`]). Never stored.
    pub verdict_stale: bool,
    /// The latest `silenced` event.
    pub silence: Option<SilenceRecord>,
    /// The latest [`MAX_SILENCE_MARKS`] `silenced` events, sorted by (`occurred_at`,
    /// `event_id`), for the uptime figures.
    pub silence_marks: Vec<SilenceMark>,
    /// Run times of the completed executions counted in `duration_count`.
    pub durations: DurationSketch,
    /// Queue waits (enqueued → started) of executions with both times.
    pub queue_wait: QueueWait,
    /// `itemsProcessed` summed over finished executions that reported it, and how many did.
    pub items_total: i128,
    pub items_count: i64,
}

/// Enqueued → started, over executions with both times (a start before the enqueue, by the
/// runners' clocks, waits 0).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueWait {
    pub sum_ms: i128,
    pub count: i64,
    pub sketch: DurationSketch,
}

impl QueueWait {
    fn of(execution: &Execution) -> Option<i64> {
        match (execution.enqueued_at, execution.started_at) {
            (Some(enqueued), Some(started)) => Some(started.saturating_sub(enqueued).max(0)),
            _ => None,
        }
    }

    fn add(&mut self, wait_ms: i64, sign: i64) {
        self.sum_ms += i128::from(sign * wait_ms);
        self.count += sign;
        self.sketch.add(wait_ms, sign);
    }

    pub fn average_ms(&self) -> Option<i64> {
        rounded_mean(self.sum_ms, self.count)
    }
}

/// A mean rounded half up, in integers: exact for any history length (the mean of i64 values
/// is itself within i64).
fn rounded_mean(sum: i128, count: i64) -> Option<i64> {
    (count > 0).then(|| {
        let count = i128::from(count);
        ((sum + count / 2) / count) as i64
    })
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
        let newly_finished = new.state.is_terminal() && old.is_none_or(|o| !o.state.is_terminal());
        if let (true, Some(finished_at)) = (newly_finished, new.finished_at) {
            self.extend_run(
                (finished_at, execution_id.to_owned()),
                new.state == ExecutionState::Failed,
            );
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
                        failed: new.state == ExecutionState::Failed,
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
                self.duration_sum_ms += i128::from(sign * duration);
                self.duration_count += sign;
                self.durations.add(duration, sign);
            }
        }
        if let Some(wait) = QueueWait::of(execution) {
            self.queue_wait.add(wait, sign);
        }
        if let (true, Some(items)) = (execution.state.is_terminal(), execution.items_processed) {
            self.items_total += i128::from(sign) * i128::from(items);
            self.items_count += sign;
        }
    }

    /// Adds a newly finished execution to the outcome run. Called before `last_finished`
    /// moves, so that it still names the latest finished execution before this one.
    fn extend_run(&mut self, key: FinishKey, failed: bool) {
        let last = self
            .last_finished
            .as_ref()
            .map(|l| (l.finished_at, l.execution_id.clone()));
        let run = match (&mut self.outcome_run, last) {
            (Some(run), Some(last)) => (run, last),
            _ => {
                self.outcome_run = Some(OutcomeRun {
                    failed,
                    length: 1,
                    first: key,
                    boundary: None,
                    stale: false,
                });
                return;
            }
        };
        let (run, last) = run;
        let thresholds = match &self.schedule {
            Some(s) => (
                s.failure_threshold.map_or(1, i64::from),
                s.recovery_threshold.map_or(1, i64::from),
            ),
            None => (1, 1),
        };
        let kept = thresholds != (1, 1);
        if failed == run.failed {
            if run.boundary.as_ref().is_none_or(|b| key > *b) {
                run.length += 1;
                if key < run.first {
                    run.first = key;
                }
            } else if kept {
                // A late one before the run: the history the verdict was read from changed.
                self.verdict_stale = true;
            }
        } else if key > last {
            if kept {
                self.verdict_before_run = Some(Verdict::after_run(
                    self.verdict_before_run,
                    run.failed,
                    run.length,
                    run.first.0,
                    thresholds,
                ));
            }
            *run = OutcomeRun {
                failed,
                length: 1,
                first: key,
                boundary: Some(last),
                stale: false,
            };
        } else {
            if run.boundary.as_ref().is_none_or(|b| key > *b) {
                // A late execution of the other outcome: the run now starts after it.
                run.stale = run.stale || key > run.first;
                run.boundary = Some(key);
            }
            if kept {
                self.verdict_stale = true;
            }
        }
    }

    /// Finishes a split run from the finish keys of the executions after its boundary (the
    /// store reads them from an index; all of them have the run's outcome).
    pub fn recount_run(&mut self, length: i64, first: Option<FinishKey>) {
        if let (Some(run), Some(first)) = (&mut self.outcome_run, first) {
            run.length = length;
            run.first = first;
            run.stale = false;
        }
    }

    /// Records a `scheduled` event; the latest one by the runner's time wins.
    pub fn apply_schedule(
        &mut self,
        settings: ScheduleSettings,
        occurred_at: EpochMillis,
        event_id: Uuid,
    ) {
        let since = match &self.schedule {
            Some(current) if (occurred_at, event_id) <= (current.occurred_at, current.event_id) => {
                return
            }
            // The same cron in another zone fires at other instants: a new schedule.
            Some(current)
                if current.cron == settings.cron && current.timezone == settings.timezone =>
            {
                current.since
            }
            _ => occurred_at,
        };
        let old_thresholds = self.thresholds();
        self.schedule = Some(ScheduleRecord {
            cron: settings.cron,
            timezone: settings.timezone,
            occurred_at,
            event_id,
            grace_ms: settings.grace_ms,
            max_runtime_ms: settings.max_runtime_ms,
            since,
            labels: settings.labels,
            failure_threshold: settings.failure_threshold,
            recovery_threshold: settings.recovery_threshold,
        });
        if self.thresholds() != old_thresholds && self.outcome_run.is_some() {
            // The verdict is read afresh under the new thresholds.
            self.verdict_stale = self.has_thresholds();
            self.verdict_before_run = None;
        }
    }

    /// Recomputes the aggregates from the final execution rows, naively and without
    /// [`JobStats::absorb`]: the reference the incremental path must equal.
    pub fn recompute<'a>(
        executions: impl IntoIterator<Item = (&'a str, &'a Execution)>,
        schedule: Option<ScheduleRecord>,
    ) -> JobStats {
        let mut stats = JobStats {
            schedule,
            ..JobStats::default()
        };
        let mut finished: Vec<(FinishKey, &Execution)> = Vec::new();
        for (id, execution) in executions {
            match execution.state {
                ExecutionState::Pending => stats.pending += 1,
                ExecutionState::Processing => stats.processing += 1,
                ExecutionState::Completed => stats.completed += 1,
                ExecutionState::Failed => stats.failed += 1,
            }
            if let (ExecutionState::Completed, Some(duration)) =
                (execution.state, execution.duration_ms())
            {
                stats.duration_sum_ms += i128::from(duration);
                stats.duration_count += 1;
                stats.durations.add(duration, 1);
            }
            if let (Some(enqueued), Some(started)) = (execution.enqueued_at, execution.started_at) {
                let wait = (started - enqueued).max(0);
                stats.queue_wait.sum_ms += i128::from(wait);
                stats.queue_wait.count += 1;
                stats.queue_wait.sketch.add(wait, 1);
            }
            if let (true, Some(items)) = (execution.state.is_terminal(), execution.items_processed)
            {
                stats.items_total += i128::from(items);
                stats.items_count += 1;
            }
            if let Some(started) = execution.started_at {
                stats.last_started_at = stats.last_started_at.max(Some(started));
            }
            if let (true, Some(at)) = (execution.state.is_terminal(), execution.finished_at) {
                finished.push(((at, id.to_owned()), execution));
            }
        }
        finished.sort_by(|a, b| b.0.cmp(&a.0));
        if let Some(((at, id), last)) = finished.first() {
            let failed = last.state == ExecutionState::Failed;
            stats.last_finished = Some(LastFinished {
                finished_at: *at,
                execution_id: id.clone(),
                duration_ms: last.duration_ms(),
                failed,
            });
            let length = finished
                .iter()
                .take_while(|(_, e)| (e.state == ExecutionState::Failed) == failed)
                .count();
            stats.outcome_run = Some(OutcomeRun {
                failed,
                length: length as i64,
                first: finished[length - 1].0.clone(),
                boundary: finished.get(length).map(|(key, _)| key.clone()),
                stale: false,
            });
            if stats.has_thresholds() {
                stats.verdict_before_run = Verdict::of_history(
                    finished[length..]
                        .iter()
                        .rev()
                        .map(|((at, _), e)| (*at, e.state == ExecutionState::Failed)),
                    stats.thresholds(),
                );
            }
        }
        stats
    }

    /// The finish time of the latest completed execution, read from what the aggregates
    /// keep anyway: the last finished one when it completed, else the boundary of the run of
    /// failures (the latest execution of the other outcome).
    pub fn last_success_at(&self) -> Option<EpochMillis> {
        last_success_at(
            self.last_finished
                .as_ref()
                .map(|l| (l.finished_at, l.failed)),
            self.outcome_run
                .as_ref()
                .map(|r| (r.failed, r.boundary.as_ref().map(|b| b.0))),
        )
    }

    /// (`failureThreshold`, `recoveryThreshold`) in force, 1 when unset.
    pub fn thresholds(&self) -> (i64, i64) {
        let schedule = self.schedule.as_ref();
        (
            schedule
                .and_then(|s| s.failure_threshold)
                .map_or(1, i64::from),
            schedule
                .and_then(|s| s.recovery_threshold)
                .map_or(1, i64::from),
        )
    }

    /// Whether a threshold above 1 is set (only then is a verdict kept).
    pub fn has_thresholds(&self) -> bool {
        self.thresholds() != (1, 1)
    }

    /// The thresholded verdict on the finished executions; `None` before any finished.
    pub fn verdict(&self) -> Option<Verdict> {
        let run = self.outcome_run.as_ref()?;
        Some(Verdict::after_run(
            self.verdict_before_run.filter(|_| self.has_thresholds()),
            run.failed,
            run.length,
            run.first.0,
            self.thresholds(),
        ))
    }

    /// Sets the verdict before the trailing run, recomputed by the caller from the finished
    /// executions up to the run's boundary (finish order).
    pub fn set_verdict_before_run(&mut self, verdict: Option<Verdict>) {
        self.verdict_before_run = verdict;
        self.verdict_stale = false;
    }

    /// Records a `silenced` event; the latest one by the runner's time wins.
    pub fn apply_silence(&mut self, mut record: SilenceRecord) {
        let mark = SilenceMark {
            occurred_at: record.occurred_at,
            event_id: record.event_id,
            until: record.until,
        };
        if let Err(at) = self.silence_marks.binary_search(&mark) {
            self.silence_marks.insert(at, mark);
            if self.silence_marks.len() > MAX_SILENCE_MARKS {
                self.silence_marks.remove(0);
            }
        }
        let previous = self.silence.as_ref();
        if previous
            .is_some_and(|s| (record.occurred_at, record.event_id) <= (s.occurred_at, s.event_id))
        {
            return;
        }
        if record.until.is_none_or(|until| until <= record.occurred_at) {
            let lifted = record.occurred_at;
            record.until = previous
                .and_then(|s| s.until)
                .map(|until| until.min(lifted));
            if let Some(previous) = previous.filter(|s| s.until == record.until) {
                // The silence it lifts keeps its own words.
                record.reason.clone_from(&previous.reason);
            }
        }
        self.silence = Some(record);
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
        rounded_mean(self.duration_sum_ms, self.duration_count)
    }

    /// Percentiles of run time over the completed executions with both times.
    pub fn percentiles(&self) -> Percentiles {
        Percentiles::of(&self.durations)
    }

    /// Mean `itemsProcessed` per finished execution that reported it.
    pub fn average_items_per_run(&self) -> Option<f64> {
        (self.items_count > 0).then(|| self.items_total as f64 / self.items_count as f64)
    }

    /// completed / (completed + failed), in percent; `None` before anything finished.
    pub fn success_rate_percent(&self) -> Option<f64> {
        let finished = self.completed + self.failed;
        (finished > 0).then(|| self.completed as f64 * 100.0 / finished as f64)
    }
}

/// [`JobStats::last_success_at`] from the stored columns alone: the last finished execution
/// (finish time, failed) and the outcome run (failed, boundary's finish time). The metrics
/// scrape reads these straight from `job_stats` without building a [`JobStats`].
pub fn last_success_at(
    last_finished: Option<(EpochMillis, bool)>,
    outcome_run: Option<(bool, Option<EpochMillis>)>,
) -> Option<EpochMillis> {
    match (last_finished, outcome_run) {
        (Some((at, false)), _) => Some(at),
        (Some((_, true)), Some((true, boundary))) => boundary,
        _ => None,
    }
}
