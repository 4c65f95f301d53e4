//! The pure projection core: how one event changes one execution (the forward-only state
//! machine of CONTRACT §2) and how that change moves the per-job aggregates, composed in
//! [`apply`], the fold. No I/O, no async: the writer (live consumer and replay alike) loads the
//! rows an event touches, calls [`apply`] and persists the result; the tests call it directly.
//!
//! Aggregates are updated from `(old row, new row)` pairs, never by re-reading history, so a
//! stats read costs the same whatever the history's length. Sums and counts are deltas; the
//! "latest" fields are maxima keyed by the runner's timestamps (ties broken by id), which is
//! what makes them independent of the order in which different executions' events arrive.

mod execution;
mod fold;
pub mod format;
pub mod health;
mod job_stats;
pub mod rollup;
pub mod sketch;
pub mod uptime;

pub use execution::{transition, Execution, ExecutionEvent, ExecutionState, RunResult};
#[cfg(test)]
pub(crate) use fold::MemoryJob;
pub use fold::{apply, Change};
pub use health::{Health, HealthInput, HealthState, Judgement};
pub use job_stats::{
    last_success_at, silenced_spans, FinishKey, JobStats, LastFinished, OutcomeRun, QueueWait,
    ScheduleRecord, ScheduleSettings, SilenceMark, SilenceRecord, Verdict, MAX_SILENCE_MARKS,
};

/// Milliseconds since the Unix epoch, UTC: the unit of every time in the read model.
pub type EpochMillis = i64;

#[cfg(test)]
mod tests;
