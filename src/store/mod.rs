//! SQLite read models. One writer (the projector, or a rebuild) applies batches of messages in
//! single transactions that also move the checkpoint; readers use their own read-only WAL
//! connections and never wait for the writer. Nothing here is async: callers run the writer on
//! a blocking thread.
//!
//! The database path may be a plain file or a symlink to a *generation* file; `jobstats rebuild`
//! swaps generations by replacing the symlink atomically (see [`generation`]).

pub mod generation;
mod health_board;
mod reader;
mod writer;

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use crate::projection::{
    Execution, ExecutionState, JobStats, LastFinished, OutcomeRun, ScheduleRecord,
};

/// An i128 in SQLite, which has no such type: an INTEGER while it fits in 64 bits (every
/// realistic total, and files written before totals were wide), else 16 big-endian bytes. A
/// BLOB, not TEXT, because INTEGER affinity turns a too-large numeric text into a lossy REAL.
pub(crate) struct WideInt(pub i128);

impl rusqlite::types::ToSql for WideInt {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, Value};
        Ok(ToSqlOutput::Owned(match i64::try_from(self.0) {
            Ok(narrow) => Value::Integer(narrow),
            Err(_) => Value::Blob(self.0.to_be_bytes().to_vec()),
        }))
    }
}

impl rusqlite::types::FromSql for WideInt {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        use rusqlite::types::{FromSqlError, ValueRef};
        match value {
            ValueRef::Integer(narrow) => Ok(WideInt(i128::from(narrow))),
            ValueRef::Blob(bytes) => <[u8; 16]>::try_from(bytes)
                .map(|b| WideInt(i128::from_be_bytes(b)))
                .map_err(|_| FromSqlError::InvalidBlobSize {
                    expected_size: 16,
                    blob_size: bytes.len(),
                }),
            _ => Err(FromSqlError::InvalidType),
        }
    }
}

pub use reader::{
    CurrentReader, DeadLetter, ExecutionSummary, ExecutionsPage, ExecutionsQuery, Freshness,
    HealthData, JobMetricsRow, JobSnapshot, JobStates, ReadPool, JOB_METRICS_QUANTILES,
};
pub use writer::{BatchOutcome, IncomingMessage, Writer};

/// The version of the projection logic that builds the read model. Bump it when `apply`
/// changes meaning: `serve` then rebuilds the read model from the stream (blue-green).
///
/// 4: `timezone`, `exitCode` and `output` (CONTRACT §10), which earlier builds ignored as
/// unknown fields although HTTP ingestion already sent them.
/// 5: `labels`, `failureThreshold`, `recoveryThreshold` and `silenced` events (CONTRACT §11).
/// 6: the silence marks uptime leaves out (CONTRACT §12); a model built by 5 knew only
/// the latest silence.
pub const PROJECTION_VERSION: i64 = 6;

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_read_model.sql"),
    include_str!("migrations/0002_health.sql"),
    include_str!("migrations/0003_recount_by_recency.sql"),
    include_str!("migrations/0004_starts_in_recency_index.sql"),
    include_str!("migrations/0005_percentiles_and_rollups.sql"),
    include_str!("migrations/0006_dead_letters_by_reason.sql"),
    include_str!("migrations/0007_late_rollup_writes.sql"),
    include_str!("migrations/0008_time_sequences.sql"),
    include_str!("migrations/0009_time_zones_exit_codes_output.sql"),
    include_str!("migrations/0010_labels_thresholds_silences.sql"),
    include_str!("migrations/0011_silence_marks.sql"),
];

/// How many bytes of a dead letter's payload are kept.
pub const DEAD_LETTER_PAYLOAD_BYTES: usize = 4096;

/// Failures of the SQLite boundary. The projector treats all of them as "retry the batch
/// later" (nothing was acknowledged); the API turns them into a logged 500.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("file system: {0}")]
    Io(#[from] std::io::Error),
    /// The file was written by a newer jobstats (its schema is ahead of this build's).
    #[error("database schema version {found} is newer than this build's {supported}")]
    SchemaTooNew { found: i64, supported: i64 },
    /// A value in the file breaks an invariant the writer maintains (corruption or tampering).
    #[error("corrupt read model: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// The kind of failure in fixed words, for places anyone can read: no path, no SQL.
    pub fn summary(&self) -> &'static str {
        match self {
            StoreError::Sqlite(error) => match error.sqlite_error_code() {
                Some(rusqlite::ErrorCode::DiskFull) => "database or disk is full",
                Some(rusqlite::ErrorCode::ReadOnly) => "the database is read-only",
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                    "the database is locked"
                }
                Some(rusqlite::ErrorCode::SystemIoFailure) => {
                    "the database cannot be written (I/O error)"
                }
                _ => "database error",
            },
            StoreError::Io(_) => "file system error",
            StoreError::SchemaTooNew { .. } => "the database was written by a newer jobstats",
            StoreError::Corrupt(_) => "the read model is corrupt",
        }
    }
}

/// Resolves the database path to the file it names now (following a generation symlink), so
/// that SQLite's `-wal`/`-shm` files sit beside the real file and a swap never mixes them.
pub fn resolve(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// An execution state code read from the file (corruption when it is none of ours).
pub(crate) fn execution_state(code: i64) -> Result<crate::projection::ExecutionState, StoreError> {
    crate::projection::ExecutionState::from_code(code)
        .ok_or_else(|| StoreError::Corrupt(format!("execution state {code}")))
}

/// An execution's stored columns, in the order every reader of `executions` selects them.
pub(crate) const EXECUTION_COLUMNS: &str =
    "state, enqueued_at, started_at, finished_at, items_processed, error, exit_code";

/// How many columns [`EXECUTION_COLUMNS`] names.
pub(crate) const EXECUTION_COLUMN_COUNT: usize = 7;

/// The stream sequences that set an execution's times: bookkeeping of the store (not of the
/// projection, whose rows do not depend on the order events arrive in), so that a page of
/// executions can be read as of the stream position its first page was read at.
pub(crate) const TIME_SEQUENCE_COLUMNS: &str = "enqueued_seq, started_seq, finished_seq";

/// The sequences of the events that set an execution's enqueue, start and finish times
/// (`None`: not set; 0: set before these were recorded, which is before any page's position).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TimeSequences {
    pub enqueued: Option<u64>,
    pub started: Option<u64>,
    pub finished: Option<u64>,
}

impl TimeSequences {
    /// Notes which times the event at `sequence` set, going from `before` to `after`.
    pub fn record(&mut self, before: Option<&Execution>, after: &Execution, sequence: u64) {
        let set = |was: Option<i64>, is: Option<i64>, slot: &mut Option<u64>| {
            if was.is_none() && is.is_some() {
                *slot = Some(sequence);
            }
        };
        set(
            before.and_then(|b| b.enqueued_at),
            after.enqueued_at,
            &mut self.enqueued,
        );
        set(
            before.and_then(|b| b.started_at),
            after.started_at,
            &mut self.started,
        );
        set(
            before.and_then(|b| b.finished_at),
            after.finished_at,
            &mut self.finished,
        );
    }

    /// The sequence of the event that set the time `row.recency_key()` comes from.
    pub fn of_recency_key(&self, row: &Execution) -> u64 {
        let sequence = if row.started_at.is_some() {
            self.started
        } else if row.enqueued_at.is_some() {
            self.enqueued
        } else {
            self.finished
        };
        sequence.unwrap_or(0)
    }

    /// The recency key `row` had once the stream up to `position` was applied (`None`: it
    /// did not exist yet). Each time is set once, so its sequence says when it appeared.
    pub fn recency_key_at(&self, row: &Execution, position: u64) -> Option<i64> {
        let known = |time: Option<i64>, sequence: Option<u64>| {
            time.filter(|_| sequence.unwrap_or(0) <= position)
        };
        known(row.started_at, self.started)
            .or(known(row.enqueued_at, self.enqueued))
            .or(known(row.finished_at, self.finished))
    }

    /// The state `row` had at `position` (the first terminal state never changes).
    pub fn state_at(&self, row: &Execution, position: u64) -> ExecutionState {
        let by = |sequence: Option<u64>| sequence.is_some_and(|s| s <= position);
        let by_time = |time: Option<i64>, sequence: Option<u64>| {
            time.is_some() && (sequence.is_none() || by(sequence))
        };
        if by_time(row.finished_at, self.finished) {
            row.state
        } else if by_time(row.started_at, self.started) {
            ExecutionState::Processing
        } else {
            ExecutionState::Pending
        }
    }
}

/// Reads [`TIME_SEQUENCE_COLUMNS`] starting at column `first`.
pub(crate) fn time_sequences(
    r: &rusqlite::Row<'_>,
    first: usize,
) -> rusqlite::Result<TimeSequences> {
    let sequence = |i: usize| -> rusqlite::Result<Option<u64>> {
        Ok(r.get::<_, Option<i64>>(first + i)?.map(|s| s.max(0) as u64))
    };
    Ok(TimeSequences {
        enqueued: sequence(0)?,
        started: sequence(1)?,
        finished: sequence(2)?,
    })
}

/// [`EXECUTION_COLUMNS`] as read, before the state code is checked.
pub(crate) type ExecutionColumns = (
    i64,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<i64>,
);

/// Reads [`EXECUTION_COLUMNS`] starting at column `first`.
pub(crate) fn execution_columns(
    r: &rusqlite::Row<'_>,
    first: usize,
) -> rusqlite::Result<ExecutionColumns> {
    Ok((
        r.get(first)?,
        r.get(first + 1)?,
        r.get(first + 2)?,
        r.get(first + 3)?,
        r.get(first + 4)?,
        r.get(first + 5)?,
        r.get(first + 6)?,
    ))
}

pub(crate) fn execution_from_columns(
    (state, enqueued_at, started_at, finished_at, items, error, exit_code): ExecutionColumns,
) -> Result<crate::projection::Execution, StoreError> {
    Ok(crate::projection::Execution {
        state: execution_state(state)?,
        enqueued_at,
        started_at,
        finished_at,
        items_processed: items.map(|n| n.max(0) as u64),
        error,
        exit_code: exit_code.and_then(|c| u8::try_from(c).ok()),
        // Kept apart (the `execution_outputs` table): see [`crate::projection::Execution`].
        output: None,
    })
}

/// What is wrong with the database at `path`, if anything: it cannot be opened as SQLite, or
/// `PRAGMA quick_check` finds damage. `None` for a sound file or no file. O(file size).
pub fn integrity_problem(path: &Path) -> Option<String> {
    if !path.exists() {
        return None;
    }
    let check = || -> rusqlite::Result<String> {
        let conn = Connection::open_with_flags(
            resolve(path),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let mut stmt = conn.prepare("PRAGMA quick_check(5)")?;
        let lines: Vec<String> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(lines.join("; "))
    };
    match check() {
        Ok(verdict) if verdict == "ok" => None,
        Ok(verdict) => Some(format!("quick_check: {verdict}")),
        Err(error) => Some(error.to_string()),
    }
}

/// Moves a damaged database (the file `path` names, its `-wal`/`-shm`, and a generation
/// symlink) aside as `<file>.corrupt-<unix ms>`, so a new one can be built from the stream and
/// the old one is kept for a post-mortem. Returns where the file went.
pub fn move_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let file = resolve(path);
    let stamp = chrono::Utc::now().timestamp_millis();
    let aside = PathBuf::from(format!("{}.corrupt-{stamp}", file.display()));
    std::fs::rename(&file, &aside)?;
    for suffix in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{suffix}", file.display()));
        if side.exists() {
            std::fs::rename(&side, format!("{}{suffix}", aside.display()))?;
        }
    }
    if path.is_symlink() {
        std::fs::remove_file(path)?;
    }
    Ok(aside)
}

/// The `job_stats` columns [`job_stats_from_row`] reads, in its order.
const JOB_STATS_COLUMNS: &str = "pending, processing, completed, failed, duration_sum_ms, \
     duration_count, last_finished_at, last_finished_execution_id, last_finished_duration_ms, \
     last_started_at, schedule_cron, schedule_occurred_at, schedule_event_id, \
     last_finished_failed, schedule_grace_ms, schedule_max_runtime_ms, schedule_since, \
     run_failed, run_length, run_first_at, run_first_id, run_boundary_at, run_boundary_id, \
     duration_sketch, queue_wait_sum_ms, queue_wait_count, queue_wait_sketch, items_total, \
     items_count, schedule_timezone, schedule_labels, schedule_failure_threshold, \
     schedule_recovery_threshold, silence_until, silence_reason, silence_by, \
     silence_occurred_at, silence_event_id, verdict_failing, verdict_since, silence_marks";

/// How many columns [`JOB_STATS_COLUMNS`] names: a query's further columns start here.
const JOB_STATS_COLUMN_COUNT: usize = 41;

/// `job_stats.silence_marks`: JSON `[[occurredAt, eventId, until], ...]`; `None` when empty.
pub(crate) fn encode_silence_marks(marks: &[crate::projection::SilenceMark]) -> Option<String> {
    if marks.is_empty() {
        return None;
    }
    let rows: Vec<(i64, String, Option<i64>)> = marks
        .iter()
        .map(|m| (m.occurred_at, m.event_id.hyphenated().to_string(), m.until))
        .collect();
    Some(serde_json::to_string(&rows).expect("silence marks serialize"))
}

fn decode_silence_marks(
    text: Option<String>,
) -> rusqlite::Result<Vec<crate::projection::SilenceMark>> {
    let Some(text) = text else {
        return Ok(Vec::new());
    };
    let rows: Vec<(i64, String, Option<i64>)> = serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(40, rusqlite::types::Type::Text, Box::new(e))
    })?;
    let mut marks: Vec<crate::projection::SilenceMark> = rows
        .into_iter()
        .map(
            |(occurred_at, event_id, until)| crate::projection::SilenceMark {
                occurred_at,
                event_id: uuid::Uuid::try_parse(&event_id).unwrap_or_default(),
                until,
            },
        )
        .collect();
    marks.sort_unstable();
    Ok(marks)
}

/// The `rollups` columns [`rollup_from_row`] reads.
pub(crate) const ROLLUP_COLUMNS: &str =
    "completed, failed, duration_sum_ms, duration_count, duration_sketch";

/// Reads [`ROLLUP_COLUMNS`] starting at column `first`.
pub(crate) fn rollup_from_row_at(
    r: &rusqlite::Row<'_>,
    first: usize,
) -> rusqlite::Result<crate::projection::rollup::RollupBucket> {
    Ok(crate::projection::rollup::RollupBucket {
        completed: r.get(first)?,
        failed: r.get(first + 1)?,
        duration_sum_ms: r.get::<_, WideInt>(first + 2)?.0,
        duration_count: r.get(first + 3)?,
        durations: sketch_from_column(r, first + 4)?,
    })
}

/// A stored sketch (NULL: empty); a blob that does not decode is corruption.
pub(crate) fn sketch_from_column(
    r: &rusqlite::Row<'_>,
    column: usize,
) -> rusqlite::Result<crate::projection::sketch::DurationSketch> {
    let bytes: Option<Vec<u8>> = r.get(column)?;
    crate::projection::sketch::DurationSketch::decode_optional(bytes.as_deref()).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Blob, Box::new(e))
    })
}

fn job_stats_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobStats> {
    let last_finished = match (r.get::<_, Option<i64>>(6)?, r.get::<_, Option<String>>(7)?) {
        (Some(finished_at), Some(execution_id)) => Some(LastFinished {
            finished_at,
            execution_id,
            duration_ms: r.get(8)?,
            failed: r.get::<_, Option<bool>>(13)?.unwrap_or(false),
        }),
        _ => None,
    };
    let schedule = match (
        r.get::<_, Option<i64>>(11)?,
        r.get::<_, Option<String>>(12)?,
    ) {
        (Some(occurred_at), Some(event_id)) => Some(ScheduleRecord {
            cron: r.get(10)?,
            timezone: r.get(29)?,
            occurred_at,
            event_id: uuid::Uuid::try_parse(&event_id).unwrap_or_default(),
            grace_ms: r.get(14)?,
            max_runtime_ms: r.get(15)?,
            since: r.get::<_, Option<i64>>(16)?.unwrap_or(occurred_at),
            labels: match r.get::<_, Option<String>>(30)? {
                Some(text) => serde_json::from_str(&text).map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(
                        30,
                        rusqlite::types::Type::Text,
                        Box::new(e),
                    )
                })?,
                None => Default::default(),
            },
            failure_threshold: r.get(31)?,
            recovery_threshold: r.get(32)?,
        }),
        _ => None,
    };
    let silence = match (
        r.get::<_, Option<i64>>(36)?,
        r.get::<_, Option<String>>(37)?,
    ) {
        (Some(occurred_at), Some(event_id)) => Some(crate::projection::SilenceRecord {
            until: r.get(33)?,
            reason: r.get(34)?,
            by: r.get(35)?,
            occurred_at,
            event_id: uuid::Uuid::try_parse(&event_id).unwrap_or_default(),
        }),
        _ => None,
    };
    let verdict_before_run = match (r.get::<_, Option<bool>>(38)?, r.get::<_, Option<i64>>(39)?) {
        (Some(failing), Some(since)) => Some(crate::projection::Verdict { failing, since }),
        _ => None,
    };
    let outcome_run = match (
        r.get::<_, Option<bool>>(17)?,
        r.get::<_, Option<i64>>(19)?,
        r.get::<_, Option<String>>(20)?,
    ) {
        (Some(failed), Some(first_at), Some(first_id)) => Some(OutcomeRun {
            failed,
            length: r.get::<_, Option<i64>>(18)?.unwrap_or(0),
            first: (first_at, first_id),
            boundary: match (
                r.get::<_, Option<i64>>(21)?,
                r.get::<_, Option<String>>(22)?,
            ) {
                (Some(at), Some(id)) => Some((at, id)),
                _ => None,
            },
            stale: false,
        }),
        _ => None,
    };
    Ok(JobStats {
        pending: r.get(0)?,
        processing: r.get(1)?,
        completed: r.get(2)?,
        failed: r.get(3)?,
        duration_sum_ms: r.get::<_, WideInt>(4)?.0,
        duration_count: r.get(5)?,
        last_finished,
        last_started_at: r.get(9)?,
        schedule,
        outcome_run,
        durations: sketch_from_column(r, 23)?,
        queue_wait: crate::projection::QueueWait {
            sum_ms: r.get::<_, WideInt>(24)?.0,
            count: r.get(25)?,
            sketch: sketch_from_column(r, 26)?,
        },
        items_total: r.get::<_, WideInt>(27)?.0,
        items_count: r.get(28)?,
        verdict_before_run,
        verdict_stale: false,
        silence,
        silence_marks: decode_silence_marks(r.get(40)?)?,
    })
}

fn configure_common(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(())
}

/// Runs pending migrations on an existing file without projecting into it: a frozen
/// point-in-time copy made by an older build still needs the columns this build reads.
pub fn migrate_file(path: &Path) -> Result<(), StoreError> {
    let mut conn = Connection::open(resolve(path))?;
    configure_common(&conn)?;
    migrate(&mut conn)?;
    Ok(())
}

/// The file's schema version (migrations applied) and this build's.
pub fn schema_versions(path: &Path) -> Result<(i64, i64), StoreError> {
    let conn = Connection::open_with_flags(
        resolve(path),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let applied: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    Ok((applied, MIGRATIONS.len() as i64))
}

/// Creates missing tables and runs pending migrations. Returns the projection version the
/// file was built with (`None` for a brand-new file, which is then stamped with ours).
fn migrate(conn: &mut Connection) -> Result<i64, StoreError> {
    let applied: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let supported = MIGRATIONS.len() as i64;
    if applied > supported {
        return Err(StoreError::SchemaTooNew {
            found: applied,
            supported,
        });
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for sql in &MIGRATIONS[applied as usize..] {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", supported)?;
    tx.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('projection_version', ?1)",
        [PROJECTION_VERSION.to_string()],
    )?;
    let version: String = tx.query_row(
        "SELECT value FROM meta WHERE key = 'projection_version'",
        [],
        |r| r.get(0),
    )?;
    tx.commit()?;
    version
        .parse()
        .map_err(|_| StoreError::Corrupt(format!("projection_version {version:?}")))
}

/// Reads the projection version of an existing file without changing it.
pub fn projection_version_of(path: &Path) -> Result<Option<i64>, StoreError> {
    Ok(read_meta(path, "projection_version")?.and_then(|v| v.parse().ok()))
}

/// A `meta` value of an existing file, read without changing it; `None` for no file, no
/// `meta` table or no such key.
fn read_meta(path: &Path, key: &str) -> Result<Option<String>, StoreError> {
    if !path.exists() {
        return Ok(None);
    }
    let conn = Connection::open_with_flags(
        resolve(path),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    configure_common(&conn)?;
    let value = conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| {
        r.get::<_, String>(0)
    });
    match value {
        Ok(value) => Ok(Some(value)),
        Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
        Err(rusqlite::Error::SqliteFailure(_, Some(m))) if m.contains("no such table") => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// What [`snapshot`] copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotReport {
    /// The checkpoint of the copy: `serve` on it resumes after this sequence.
    pub last_sequence: u64,
    pub bytes: u64,
}

/// Copies the database at `path` to the new file `output` with SQLite's online backup, in
/// one step: the copy is one consistent read of the source (a writer may keep committing
/// meanwhile, in WAL mode it never waits for the copy), so it holds the checkpoint and the
/// read model of a single commit. Written beside `output` and renamed into place, so a
/// killed copy leaves no half file under that name.
pub fn snapshot(path: &Path, output: &Path) -> Result<SnapshotReport, StoreError> {
    if !path.exists() {
        return Err(StoreError::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no database at {}", path.display()),
        )));
    }
    if output.exists() {
        return Err(StoreError::Io(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{} exists; choose a new file", output.display()),
        )));
    }
    let source = Connection::open_with_flags(
        resolve(path),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    configure_common(&source)?;
    let mut partial = output.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let _ = std::fs::remove_file(&partial);
    {
        let mut copy = Connection::open(&partial)?;
        let backup = rusqlite::backup::Backup::new(&source, &mut copy)?;
        // All pages in one step: one read transaction on the source, which in WAL mode never
        // holds up the writer (stepwise copying restarts whenever the writer commits, and a
        // busy projector commits every few milliseconds).
        let mut attempts = 0;
        loop {
            match backup.step(-1)? {
                rusqlite::backup::StepResult::Done => break,
                _ if attempts < 100 => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                _ => {
                    return Err(StoreError::Corrupt(
                        "the database stayed locked; snapshot not taken".into(),
                    ))
                }
            }
        }
        drop(backup);
        copy.pragma_update(None, "journal_mode", "WAL")?;
        copy.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
    }
    std::fs::File::open(&partial)?.sync_all()?;
    std::fs::rename(&partial, output)?;
    let copy = Connection::open_with_flags(output, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let last_sequence: i64 = copy.query_row(
        "SELECT last_sequence FROM checkpoint WHERE id = 1",
        [],
        |r| r.get(0),
    )?;
    Ok(SnapshotReport {
        last_sequence: last_sequence.max(0) as u64,
        bytes: std::fs::metadata(output)?.len(),
    })
}

/// Marks a point-in-time copy: `serve` serves such a file read-only and never projects into it.
pub fn mark_frozen(path: &Path, description: &str) -> Result<(), StoreError> {
    let conn = Connection::open(path)?;
    configure_common(&conn)?;
    conn.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('frozen_until', ?1)",
        [description],
    )?;
    Ok(())
}

/// The point a frozen copy was built up to, if the file is one.
pub fn frozen_until(path: &Path) -> Result<Option<String>, StoreError> {
    read_meta(path, "frozen_until")
}

#[cfg(test)]
mod tests {
    use super::WideInt;

    #[test]
    fn wide_totals_round_trip_through_an_integer_column() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (total INTEGER NOT NULL)")
            .unwrap();
        let values = [
            0,
            -7,
            i128::from(i64::MAX),
            i128::from(i64::MAX) + 1,
            i128::from(i64::MIN) - 1,
            9_503_800_000_000_000_000_000,
        ];
        for value in values {
            conn.execute("INSERT INTO t (total) VALUES (?1)", [WideInt(value)])
                .unwrap();
        }
        let read: Vec<i128> = conn
            .prepare("SELECT total FROM t ORDER BY rowid")
            .unwrap()
            .query_map([], |r| Ok(r.get::<_, WideInt>(0)?.0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(read, values);
        // Values that fit stay plain integers, readable by any SQL client.
        let kind: String = conn
            .query_row("SELECT typeof(total) FROM t WHERE rowid = 3", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(kind, "integer");
    }
}
