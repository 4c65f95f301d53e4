//! The single writer: applies a batch of stream messages — decode, state machine, aggregates,
//! dead letters and checkpoint — in one transaction.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use super::{
    configure_common, job_stats_from_row, migrate, resolve, StoreError, DEAD_LETTER_PAYLOAD_BYTES,
    JOB_STATS_COLUMNS,
};
use crate::events::{self, DecodeError, Event, EventKind};
use crate::projection::{transition, Execution, ExecutionEvent, ExecutionState, JobStats};

/// One message as read from the stream.
#[derive(Debug, Clone)]
pub struct IncomingMessage<'a> {
    pub sequence: u64,
    pub subject: &'a str,
    pub payload: &'a [u8],
    /// When JetStream stored it (kept with dead letters).
    pub published_at_ms: Option<i64>,
}

/// What one committed batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    pub applied: u64,
    pub dead_letters: u64,
    /// Messages at or below the checkpoint (redeliveries), ignored.
    pub skipped: u64,
    /// The checkpoint after the commit.
    pub last_sequence: u64,
    /// Dead letters of this batch by reason code (for metrics).
    pub dead_letter_codes: Vec<&'static str>,
}

type JobKey = (String, String);
type ExecutionKey = (String, String, String);

/// The writer's connection. Exactly one exists per database file at a time.
pub struct Writer {
    conn: Connection,
    path: PathBuf,
    checkpoint: u64,
}

impl Writer {
    /// Opens (creating if needed) the file for writing, in WAL mode, and runs migrations.
    /// Returns the writer and the projection version the file was built with.
    pub fn open(path: &Path) -> Result<(Self, i64), StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let real = resolve(path);
        let mut conn = Connection::open(&real)?;
        configure_common(&conn)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // With WAL, NORMAL survives a process crash; an OS crash may drop the last commits,
        // but the checkpoint drops with them and the stream redelivers.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "cache_size", -65_536)?;
        let version = migrate(&mut conn)?;
        let checkpoint = read_checkpoint(&conn)?;
        Ok((
            Writer {
                conn,
                path: real,
                checkpoint,
            },
            version,
        ))
    }

    /// Opens a scratch file for a rebuild: no journal while building (the file is thrown
    /// away if the rebuild dies), switched to WAL by [`Writer::finish_scratch`].
    pub fn open_scratch(path: &Path) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path)?;
        configure_common(&conn)?;
        conn.pragma_update(None, "journal_mode", "OFF")?;
        conn.pragma_update(None, "synchronous", "OFF")?;
        conn.pragma_update(None, "cache_size", -262_144)?;
        migrate(&mut conn)?;
        let checkpoint = read_checkpoint(&conn)?;
        Ok(Writer {
            conn,
            path: path.to_path_buf(),
            checkpoint,
        })
    }

    /// Makes a scratch file durable and ready to serve.
    pub fn finish_scratch(self) -> Result<(), StoreError> {
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        self.conn.pragma_update(None, "journal_mode", "WAL")?;
        self.conn
            .execute_batch("PRAGMA optimize; PRAGMA wal_checkpoint(TRUNCATE);")?;
        drop(self.conn);
        std::fs::File::open(&self.path)?.sync_all()?;
        Ok(())
    }

    /// The real file this writer writes (the generation, not the symlink).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last stream sequence applied.
    pub fn checkpoint(&self) -> u64 {
        self.checkpoint
    }

    /// Applies messages in order; those at or below the checkpoint are skipped. Read-model
    /// changes, dead letters and the new checkpoint commit together or not at all.
    pub fn apply_batch(
        &mut self,
        messages: &[IncomingMessage<'_>],
    ) -> Result<BatchOutcome, StoreError> {
        let mut outcome = BatchOutcome {
            last_sequence: self.checkpoint,
            ..BatchOutcome::default()
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut batch = BatchState::default();
        for message in messages {
            if message.sequence <= outcome.last_sequence {
                outcome.skipped += 1;
                continue;
            }
            outcome.last_sequence = message.sequence;
            match events::decode(message.subject, message.payload) {
                Ok(event) => {
                    batch.apply(&tx, &event, message.sequence)?;
                    outcome.applied += 1;
                }
                Err(error) => {
                    insert_dead_letter(&tx, message, &error)?;
                    outcome.dead_letters += 1;
                    outcome.dead_letter_codes.push(error.code());
                }
            }
        }
        if outcome.last_sequence == self.checkpoint {
            // Only redeliveries: nothing to commit.
            return Ok(outcome);
        }
        batch.flush(&tx)?;
        tx.execute(
            "UPDATE checkpoint SET last_sequence = ?1, events_applied = events_applied + ?2,
                 dead_letters = dead_letters + ?3, committed_at_ms = ?4 WHERE id = 1",
            params![
                outcome.last_sequence as i64,
                outcome.applied as i64,
                outcome.dead_letters as i64,
                chrono::Utc::now().timestamp_millis()
            ],
        )?;
        tx.commit()?;
        self.checkpoint = outcome.last_sequence;
        Ok(outcome)
    }
}

fn read_checkpoint(conn: &Connection) -> Result<u64, StoreError> {
    let sequence: i64 = conn.query_row(
        "SELECT last_sequence FROM checkpoint WHERE id = 1",
        [],
        |r| r.get(0),
    )?;
    u64::try_from(sequence).map_err(|_| StoreError::Corrupt(format!("checkpoint {sequence}")))
}

fn insert_dead_letter(
    tx: &Connection,
    message: &IncomingMessage<'_>,
    error: &DecodeError,
) -> Result<(), StoreError> {
    let kept = &message.payload[..message.payload.len().min(DEAD_LETTER_PAYLOAD_BYTES)];
    tx.prepare_cached(
        "INSERT OR IGNORE INTO dead_letters
             (sequence, subject, reason_code, reason, payload, payload_bytes, published_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        message.sequence as i64,
        message.subject,
        error.code(),
        error.to_string(),
        kept,
        message.payload.len() as i64,
        message.published_at_ms
    ])?;
    Ok(())
}

/// Rows touched by the batch, loaded once and written once at the end.
#[derive(Default)]
struct BatchState {
    /// Each touched execution: its current row and whether the batch changed it.
    executions: BTreeMap<ExecutionKey, (Option<Execution>, bool)>,
    jobs: BTreeMap<JobKey, JobRow>,
}

struct JobRow {
    stats: JobStats,
    first_sequence: u64,
    last_sequence: u64,
    dirty: bool,
}

impl BatchState {
    fn apply(&mut self, tx: &Connection, event: &Event, sequence: u64) -> Result<(), StoreError> {
        let job_key = (
            event.tenant_id.to_string(),
            event.job_name.as_str().to_owned(),
        );
        if !self.jobs.contains_key(&job_key) {
            let loaded = load_job(tx, &job_key)?;
            let row = loaded.unwrap_or(JobRow {
                stats: JobStats::default(),
                first_sequence: sequence,
                last_sequence: sequence,
                dirty: true,
            });
            self.jobs.insert(job_key.clone(), row);
        }
        let job = self.jobs.get_mut(&job_key).expect("inserted above");
        job.last_sequence = sequence;
        job.dirty = true;

        if let EventKind::Scheduled { cron } = &event.kind {
            job.stats.apply_schedule(
                cron.as_ref().map(|c| c.expression()),
                event.occurred_at.timestamp_millis(),
                event.event_id,
            );
            return Ok(());
        }
        let execution_event = ExecutionEvent::from_event(event).expect("not scheduled");
        let execution_id = event.execution_id().expect("execution events carry an id");
        let key = (job_key.0, job_key.1, execution_id.as_str().to_owned());
        if !self.executions.contains_key(&key) {
            let loaded = load_execution(tx, &key)?;
            self.executions.insert(key.clone(), (loaded, false));
        }
        let (current, dirty) = self.executions.get_mut(&key).expect("inserted above");
        if let Some(next) = transition(current.as_ref(), &execution_event) {
            job.stats.absorb(&key.2, current.as_ref(), &next);
            *current = Some(next);
            *dirty = true;
        }
        Ok(())
    }

    fn flush(self, tx: &Connection) -> Result<(), StoreError> {
        let mut upsert_execution = tx.prepare_cached(
            "INSERT OR REPLACE INTO executions
                 (tenant_id, job_name, execution_id, state, enqueued_at, started_at, finished_at,
                  items_processed, error, recency_key)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        for (key, (row, dirty)) in &self.executions {
            let (Some(row), true) = (row, dirty) else {
                continue;
            };
            upsert_execution.execute(params![
                key.0,
                key.1,
                key.2,
                row.state.code(),
                row.enqueued_at,
                row.started_at,
                row.finished_at,
                row.items_processed.map(|n| n as i64),
                row.error,
                row.recency_key()
            ])?;
        }
        let mut upsert_job = tx.prepare_cached(
            "INSERT OR REPLACE INTO job_stats
                 (tenant_id, job_name, pending, processing, completed, failed, duration_sum_ms,
                  duration_count, last_finished_at, last_finished_execution_id,
                  last_finished_duration_ms, last_started_at, schedule_cron, schedule_occurred_at,
                  schedule_event_id, first_sequence, last_sequence)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
        )?;
        for ((tenant, job), row) in &self.jobs {
            if !row.dirty {
                continue;
            }
            let s = &row.stats;
            let last = s.last_finished.as_ref();
            let schedule = s.schedule.as_ref();
            upsert_job.execute(params![
                tenant,
                job,
                s.pending,
                s.processing,
                s.completed,
                s.failed,
                s.duration_sum_ms,
                s.duration_count,
                last.map(|l| l.finished_at),
                last.map(|l| l.execution_id.as_str()),
                last.and_then(|l| l.duration_ms),
                s.last_started_at,
                schedule.and_then(|c| c.cron.as_deref()),
                schedule.map(|c| c.occurred_at),
                schedule.map(|c| c.event_id.hyphenated().to_string()),
                row.first_sequence as i64,
                row.last_sequence as i64
            ])?;
        }
        Ok(())
    }
}

fn load_execution(tx: &Connection, key: &ExecutionKey) -> Result<Option<Execution>, StoreError> {
    let row = tx
        .prepare_cached(
            "SELECT state, enqueued_at, started_at, finished_at, items_processed, error
             FROM executions WHERE tenant_id = ?1 AND job_name = ?2 AND execution_id = ?3",
        )?
        .query_row(params![key.0, key.1, key.2], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get::<_, Option<i64>>(4)?,
                r.get(5)?,
            ))
        })
        .optional()?;
    let Some((state, enqueued_at, started_at, finished_at, items, error)) = row else {
        return Ok(None);
    };
    Ok(Some(Execution {
        state: ExecutionState::from_code(state)
            .ok_or_else(|| StoreError::Corrupt(format!("execution state {state}")))?,
        enqueued_at,
        started_at,
        finished_at,
        items_processed: items.map(|n| n.max(0) as u64),
        error,
    }))
}

fn load_job(tx: &Connection, key: &JobKey) -> Result<Option<JobRow>, StoreError> {
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT {JOB_STATS_COLUMNS}, first_sequence, last_sequence
         FROM job_stats WHERE tenant_id = ?1 AND job_name = ?2"
    ))?;
    let row = stmt
        .query_row(params![key.0, key.1], |r| {
            Ok(JobRow {
                stats: job_stats_from_row(r)?,
                first_sequence: r.get::<_, i64>(13)? as u64,
                last_sequence: r.get::<_, i64>(14)? as u64,
                dirty: false,
            })
        })
        .optional()?;
    Ok(row)
}
