//! One execution's state machine: `pending → processing → completed | failed`, forward only.

use super::EpochMillis;
use crate::events::{Event, EventKind};

/// Where an execution is. The order of the variants is the order of progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExecutionState {
    Pending,
    Processing,
    Completed,
    Failed,
}

impl ExecutionState {
    pub fn is_terminal(self) -> bool {
        matches!(self, ExecutionState::Completed | ExecutionState::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionState::Pending => "pending",
            ExecutionState::Processing => "processing",
            ExecutionState::Completed => "completed",
            ExecutionState::Failed => "failed",
        }
    }

    /// The stored code (a small integer keeps the executions table narrow).
    pub fn code(self) -> i64 {
        match self {
            ExecutionState::Pending => 0,
            ExecutionState::Processing => 1,
            ExecutionState::Completed => 2,
            ExecutionState::Failed => 3,
        }
    }

    pub fn from_code(code: i64) -> Option<Self> {
        Some(match code {
            0 => ExecutionState::Pending,
            1 => ExecutionState::Processing,
            2 => ExecutionState::Completed,
            3 => ExecutionState::Failed,
            _ => return None,
        })
    }
}

/// The read model's row for one execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execution {
    pub state: ExecutionState,
    pub enqueued_at: Option<EpochMillis>,
    pub started_at: Option<EpochMillis>,
    /// When it completed or failed.
    pub finished_at: Option<EpochMillis>,
    pub items_processed: Option<u64>,
    pub error: Option<String>,
    /// The finish event's exit code.
    pub exit_code: Option<u8>,
    /// The finish event's output tail. The store keeps it apart from the row (it is read by
    /// the one-execution query only), so rows read for lists and for the writer carry `None`
    /// here; a row is never written with `None` over a stored output, because an output is
    /// set only by the first terminal event and a terminal row never changes it.
    pub output: Option<String>,
}

impl Execution {
    /// Wall-clock run time, when both ends are known. A runner whose clock makes the finish
    /// precede the start gets 0 rather than a negative duration.
    pub fn duration_ms(&self) -> Option<i64> {
        match (self.started_at, self.finished_at) {
            (Some(start), Some(end)) => Some((end - start).max(0)),
            _ => None,
        }
    }

    /// The time "recent executions" are ordered by: start, else enqueue, else finish.
    pub fn recency_key(&self) -> EpochMillis {
        self.started_at
            .or(self.enqueued_at)
            .or(self.finished_at)
            .unwrap_or(0)
    }
}

/// The part of an event that concerns one execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecutionEvent {
    Enqueued {
        at: EpochMillis,
    },
    Started {
        at: EpochMillis,
    },
    Completed {
        at: EpochMillis,
        items_processed: Option<u64>,
        result: RunResult,
    },
    Failed {
        at: EpochMillis,
        items_processed: Option<u64>,
        error: Option<String>,
        result: RunResult,
    },
}

/// What a finish event says of the command: its exit code and output tail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunResult {
    pub exit_code: Option<u8>,
    pub output: Option<String>,
}

impl ExecutionEvent {
    /// Extracts the execution part of an event; `None` for `scheduled`.
    pub fn from_event(event: &Event) -> Option<Self> {
        let at = event.occurred_at.timestamp_millis();
        Some(match &event.kind {
            EventKind::Scheduled { .. } | EventKind::Silenced { .. } => return None,
            EventKind::Enqueued { .. } => ExecutionEvent::Enqueued { at },
            EventKind::Started { .. } => ExecutionEvent::Started { at },
            EventKind::Completed {
                items_processed,
                exit_code,
                output,
                ..
            } => ExecutionEvent::Completed {
                at,
                items_processed: *items_processed,
                result: RunResult {
                    exit_code: *exit_code,
                    output: output.clone(),
                },
            },
            EventKind::Failed {
                items_processed,
                error,
                exit_code,
                output,
                ..
            } => ExecutionEvent::Failed {
                at,
                items_processed: *items_processed,
                error: error.clone(),
                result: RunResult {
                    exit_code: *exit_code,
                    output: output.clone(),
                },
            },
        })
    }
}

/// Applies one event to an execution. Returns the new row, or `None` when the event changes
/// nothing (a repeat, or a second terminal event: the first terminal event in stream order wins).
/// A late event for an earlier state only fills in its missing timestamp.
pub fn transition(current: Option<&Execution>, event: &ExecutionEvent) -> Option<Execution> {
    let mut next = current.cloned().unwrap_or(Execution {
        state: ExecutionState::Pending,
        enqueued_at: None,
        started_at: None,
        finished_at: None,
        items_processed: None,
        error: None,
        exit_code: None,
        output: None,
    });
    match event {
        ExecutionEvent::Enqueued { at } => {
            next.enqueued_at.get_or_insert(*at);
        }
        ExecutionEvent::Started { at } => {
            next.started_at.get_or_insert(*at);
            next.state = next.state.max(ExecutionState::Processing);
        }
        ExecutionEvent::Completed {
            at,
            items_processed,
            result,
        } => {
            if !next.state.is_terminal() {
                next.state = ExecutionState::Completed;
                next.finished_at = Some(*at);
                next.items_processed = *items_processed;
                next.exit_code = result.exit_code;
                next.output = result.output.clone();
            }
        }
        ExecutionEvent::Failed {
            at,
            items_processed,
            error,
            result,
        } => {
            if !next.state.is_terminal() {
                next.state = ExecutionState::Failed;
                next.finished_at = Some(*at);
                next.items_processed = *items_processed;
                next.error = error.clone();
                next.exit_code = result.exit_code;
                next.output = result.output.clone();
            }
        }
    }
    match current {
        Some(current) if *current == next => None,
        _ => Some(next),
    }
}
