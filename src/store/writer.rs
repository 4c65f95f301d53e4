//! The single writer: applies a batch of stream messages — decode, state machine, aggregates,
//! dead letters and checkpoint — in one transaction.

/// The writer's maps are keyed by what publishers send (job names, execution ids): foldhash,
/// randomly seeded per map, hashes them several times faster than SipHash (which was ~5% of
/// the writer's instructions) while still keeping keys unpredictable to a publisher.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use super::{
    configure_common, job_stats_from_row, migrate, resolve, StoreError, DEAD_LETTER_PAYLOAD_BYTES,
    JOB_STATS_COLUMNS, JOB_STATS_COLUMN_COUNT,
};
use crate::events::{self, DecodeError, Event, TenantId};
use crate::projection::rollup::{self, Contribution, Granularity, RollupBucket};
use crate::projection::{self, Change, EpochMillis, Execution, FinishKey, JobStats};
use crate::scope::TenantScope;

/// One message as read from the stream.
#[derive(Debug, Clone)]
pub struct IncomingMessage<'a> {
    pub sequence: u64,
    /// Subject and payload are read only for dead letters: with [`Writer::apply_decoded`]
    /// a decoded event's may be left empty.
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
    /// Messages of tenants outside the writer's scope (another shard's), passed over: the
    /// checkpoint moves past them.
    pub out_of_scope: u64,
    /// The checkpoint after the commit.
    pub last_sequence: u64,
    /// Dead letters of this batch by reason code (for metrics).
    pub dead_letter_codes: Vec<&'static str>,
    /// Every (tenant, job) whose rows this batch changed (for read caches).
    pub changed_jobs: Vec<(TenantId, String)>,
    /// When JetStream stored the last message the checkpoint now covers.
    pub last_published_at_ms: Option<i64>,
}

/// Job ids by tenant, then job name (nested so a lookup borrows the name instead of cloning it).
type JobIds = HashMap<TenantId, HashMap<String, i64>>;

/// The writer's connection. Exactly one exists per database file at a time.
pub struct Writer {
    conn: Connection,
    path: PathBuf,
    checkpoint: u64,
    /// Every job's id, loaded at open and extended after each commit.
    job_ids: JobIds,
    next_job_id: i64,
    /// The stream's time: the latest publish time applied. Rollup retention is measured
    /// against it (see [`Granularity::retention_ms`]).
    stream_time_ms: EpochMillis,
    /// The tenants this file holds (`JOBSTATS_TENANTS`).
    scope: TenantScope,
    /// What the last committed batch wrote, as it now stands in the file.
    hot: HotRows,
}

/// The job rows and rollup buckets the last committed batch wrote, kept for the next one: a
/// busy job's row and its current hour and day buckets are touched by every batch, and
/// reading them back (decoding their sketches) cost ~10% of the writer's time. Bounded by
/// one batch's working set; dropped whenever a batch fails, so it never outlives a rollback.
#[derive(Default)]
struct HotRows {
    jobs: HashMap<i64, JobRow>,
    rollups: HashMap<RollupKey, RollupBucket>,
}

/// A job a batch created: its tenant, name and id.
type NewJob = (TenantId, String, i64);

/// A rollup bucket's key: (job, width, start).
type RollupKey = (i64, Granularity, EpochMillis);

impl Writer {
    /// Opens (creating if needed) the file for writing, in WAL mode, and runs migrations.
    /// Returns the writer and the projection version the file was built with.
    pub fn open(path: &Path) -> Result<(Self, i64), StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut conn = Connection::open(resolve(path))?;
        // Resolved again now that the file exists: a new file's path resolves to its absolute
        // name only then, and the projector compares it with the configured path's to notice a
        // swapped generation (a first start must not look like one).
        let real = resolve(path);
        configure_common(&conn)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // With WAL, NORMAL survives a process crash; an OS crash may drop the last commits,
        // but the checkpoint drops with them and the stream redelivers.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "cache_size", -32_768)?;
        // Checkpoint the WAL into the database less often: fewer double writes while
        // catching up (the WAL may grow to ~40 MB).
        conn.pragma_update(None, "wal_autocheckpoint", 10_000)?;
        let version = migrate(&mut conn)?;
        Ok((Writer::from_connection(conn, real)?, version))
    }

    /// Opens a scratch file for a rebuild: no journal while building (the file is thrown
    /// away if the rebuild dies), switched to WAL by [`Writer::finish_scratch`].
    pub fn open_scratch(path: &Path) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path)?;
        configure_common(&conn)?;
        conn.pragma_update(None, "journal_mode", "OFF")?;
        conn.pragma_update(None, "synchronous", "OFF")?;
        conn.pragma_update(None, "cache_size", -65_536)?;
        migrate(&mut conn)?;
        Writer::from_connection(conn, path.to_path_buf())
    }

    fn from_connection(conn: Connection, path: PathBuf) -> Result<Self, StoreError> {
        let checkpoint = read_checkpoint(&conn)?;
        let mut job_ids = JobIds::default();
        let mut next_job_id = 1;
        {
            let mut stmt = conn.prepare("SELECT job_id, tenant_id, job_name FROM job_stats")?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let id: i64 = row.get(0)?;
                let tenant: String = row.get(1)?;
                let tenant = TenantId::parse(&tenant)
                    .map_err(|_| StoreError::Corrupt(format!("tenant {tenant:?}")))?;
                job_ids.entry(tenant).or_default().insert(row.get(2)?, id);
                next_job_id = next_job_id.max(id + 1);
            }
        }
        let stream_time_ms = conn
            .query_row(
                "SELECT last_published_at_ms FROM checkpoint WHERE id = 1",
                [],
                |r| r.get::<_, Option<i64>>(0),
            )?
            .unwrap_or(i64::MIN);
        Ok(Writer {
            conn,
            path,
            checkpoint,
            job_ids,
            next_job_id,
            stream_time_ms,
            scope: TenantScope::all(),
            hot: HotRows::default(),
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

    /// Keeps only these tenants' events from now on (a tenant shard).
    pub fn set_scope(&mut self, scope: TenantScope) {
        self.scope = scope;
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
        let decoded: Vec<_> = messages
            .iter()
            .map(|m| events::decode(m.subject, m.payload))
            .collect();
        self.apply_decoded(messages, &decoded)
    }

    /// [`Writer::apply_batch`] for messages already decoded (`decoded[i]` is
    /// `events::decode` of `messages[i]`), so that callers can decode on another thread.
    pub fn apply_decoded<D: std::borrow::Borrow<Result<Event, DecodeError>>>(
        &mut self,
        messages: &[IncomingMessage<'_>],
        decoded: &[D],
    ) -> Result<BatchOutcome, StoreError> {
        assert_eq!(
            messages.len(),
            decoded.len(),
            "one decode result per message"
        );
        let mut outcome = BatchOutcome {
            last_sequence: self.checkpoint,
            ..BatchOutcome::default()
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut batch = BatchState::new(
            &self.job_ids,
            self.next_job_id,
            self.stream_time_ms,
            std::mem::take(&mut self.hot),
        );
        let mut last_published_at_ms = None;
        for (message, decoded) in messages.iter().zip(decoded) {
            let decoded = decoded.borrow();
            if message.sequence <= outcome.last_sequence {
                outcome.skipped += 1;
                continue;
            }
            outcome.last_sequence = message.sequence;
            last_published_at_ms = message.published_at_ms;
            let foreign = match decoded {
                Ok(event) => !self.scope.serves(&event.tenant_id),
                Err(_) => self.scope.excludes_subject(message.subject),
            };
            if foreign {
                outcome.out_of_scope += 1;
                continue;
            }
            match decoded {
                Ok(event) => {
                    batch.apply(&tx, event, message.sequence)?;
                    outcome.applied += 1;
                }
                Err(error) => {
                    insert_dead_letter(&tx, message, error)?;
                    outcome.dead_letters += 1;
                    outcome.dead_letter_codes.push(error.code());
                }
            }
        }
        if outcome.last_sequence == self.checkpoint {
            // Only redeliveries: nothing to commit, nothing changed.
            self.hot = batch.unchanged();
            return Ok(outcome);
        }
        outcome.changed_jobs = batch
            .jobs
            .values()
            .filter(|row| row.touched)
            .map(|row| (row.tenant, row.job.clone()))
            .collect();
        let stream_time_ms = self
            .stream_time_ms
            .max(last_published_at_ms.unwrap_or(i64::MIN));
        let (new_jobs, hot) = batch.flush(&tx, stream_time_ms)?;
        tx.execute(
            "UPDATE checkpoint SET last_sequence = ?1, events_applied = events_applied + ?2,
                 dead_letters = dead_letters + ?3, committed_at_ms = ?4,
                 last_published_at_ms = ?5 WHERE id = 1",
            params![
                outcome.last_sequence as i64,
                outcome.applied as i64,
                outcome.dead_letters as i64,
                chrono::Utc::now().timestamp_millis(),
                last_published_at_ms
            ],
        )?;
        tx.commit()?;
        self.hot = hot;
        self.checkpoint = outcome.last_sequence;
        self.stream_time_ms = stream_time_ms;
        outcome.last_published_at_ms = last_published_at_ms;
        for (tenant, job, id) in new_jobs {
            self.job_ids.entry(tenant).or_default().insert(job, id);
            self.next_job_id = self.next_job_id.max(id + 1);
        }
        Ok(outcome)
    }
}

impl Writer {
    /// Moves the checkpoint to `sequence` (stored at `published_at_ms`) over stream positions
    /// that hold none of this replica's events: a shard's consumer, filtered by the server,
    /// never sees the other tenants' messages, yet its checkpoint and stream time must reach
    /// what a full replica's reach at the same position. The caller has checked that nothing
    /// in scope lies between the checkpoint and `sequence`.
    pub fn pass_over(
        &mut self,
        sequence: u64,
        published_at_ms: i64,
    ) -> Result<BatchOutcome, StoreError> {
        let mut outcome = BatchOutcome {
            last_sequence: self.checkpoint,
            ..BatchOutcome::default()
        };
        if sequence <= self.checkpoint {
            return Ok(outcome);
        }
        self.conn.execute(
            "UPDATE checkpoint SET last_sequence = ?1, committed_at_ms = ?2,
                 last_published_at_ms = ?3 WHERE id = 1",
            params![
                sequence as i64,
                chrono::Utc::now().timestamp_millis(),
                published_at_ms
            ],
        )?;
        self.checkpoint = sequence;
        self.stream_time_ms = self.stream_time_ms.max(published_at_ms);
        outcome.last_sequence = sequence;
        outcome.last_published_at_ms = Some(published_at_ms);
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
struct BatchState<'w> {
    known_jobs: &'w JobIds,
    /// Jobs first seen in this batch: ids assigned here, published to the writer on commit.
    new_jobs: HashMap<TenantId, HashMap<String, i64>>,
    next_job_id: i64,
    /// The jobs this batch touched, and the previous batch's (`touched` tells them apart).
    jobs: HashMap<i64, JobRow>,
    /// Each touched execution: its current row, whether the batch changed it, and the stream
    /// sequences that set its times.
    executions: HashMap<(i64, String), (Option<Execution>, bool, super::TimeSequences)>,
    /// Rollup buckets: their totals (empty: delete it) and whether this batch changed them
    /// (else they are the previous batch's, as stored).
    rollups: HashMap<RollupKey, (RollupBucket, bool)>,
    /// The stream's time when the batch began: buckets older than their retention behind it
    /// are not written (they are pruned, or about to be).
    stream_time_ms: EpochMillis,
}

struct JobRow {
    tenant: TenantId,
    job: String,
    stats: JobStats,
    first_sequence: u64,
    last_sequence: u64,
    /// How far a finish may lie after its execution's recency key (see [`recount_run`]).
    finish_lead_ms: i64,
    /// The latest finish time stored before this batch: no stored rollup bucket starts
    /// after its bucket, so a bucket past it is new and needs no read.
    stored_last_finish: Option<EpochMillis>,
    /// Whether this batch changed the row (else it is the previous batch's, as stored).
    touched: bool,
    /// The last event that moved a rollup bucket of an hour before the hour of the job's
    /// latest finish (see migration 0007): readers' merged closed hours hold until it moves.
    late_write_sequence: u64,
}

impl<'w> BatchState<'w> {
    fn new(
        known_jobs: &'w JobIds,
        next_job_id: i64,
        stream_time_ms: EpochMillis,
        hot: HotRows,
    ) -> Self {
        BatchState {
            known_jobs,
            new_jobs: HashMap::default(),
            next_job_id,
            jobs: hot.jobs,
            executions: HashMap::default(),
            rollups: hot
                .rollups
                .into_iter()
                .map(|(key, bucket)| (key, (bucket, false)))
                .collect(),
            stream_time_ms,
        }
    }

    /// The rows carried in, for a batch that applied nothing.
    fn unchanged(self) -> HotRows {
        HotRows {
            jobs: self.jobs,
            rollups: self
                .rollups
                .into_iter()
                .map(|(key, (bucket, _))| (key, bucket))
                .collect(),
        }
    }

    fn job_id(&mut self, tenant: TenantId, job: &str) -> (i64, bool) {
        let known = self.known_jobs.get(&tenant).and_then(|jobs| jobs.get(job));
        if let Some(id) = known {
            return (*id, false);
        }
        let jobs = self.new_jobs.entry(tenant).or_default();
        if let Some(id) = jobs.get(job) {
            return (*id, true);
        }
        let id = self.next_job_id;
        self.next_job_id += 1;
        jobs.insert(job.to_owned(), id);
        (id, true)
    }

    fn apply(&mut self, tx: &Connection, event: &Event, sequence: u64) -> Result<(), StoreError> {
        let (job_id, is_new) = self.job_id(event.tenant_id, event.job_name.as_str());
        let job = match self.jobs.entry(job_id) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                let row = if is_new {
                    JobRow {
                        tenant: event.tenant_id,
                        job: event.job_name.as_str().to_owned(),
                        stats: JobStats::default(),
                        first_sequence: sequence,
                        last_sequence: sequence,
                        finish_lead_ms: 0,
                        stored_last_finish: None,
                        touched: true,
                        late_write_sequence: 0,
                    }
                } else {
                    load_job(tx, job_id)?
                };
                entry.insert(row)
            }
        };
        job.touched = true;
        job.last_sequence = sequence;

        let Some(execution_id) = event.execution_id() else {
            projection::apply(&mut job.stats, None, event);
            return Ok(());
        };
        let key = (job_id, execution_id.as_str().to_owned());
        let (current, dirty, sequences) = match self.executions.entry(key) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                // A job first seen in this batch has no stored executions.
                let (loaded, sequences) = if is_new {
                    (None, Default::default())
                } else {
                    load_execution(tx, job_id, &entry.key().1)?
                };
                entry.insert((loaded, false, sequences))
            }
        };
        if let Change::Execution(next) = projection::apply(&mut job.stats, current.as_ref(), event)
        {
            sequences.record(current.as_ref(), &next, sequence);
            let moved = rollup::deltas(current.as_ref(), &next);
            *current = Some(next);
            *dirty = true;
            for (contribution, sign) in moved {
                self.add_to_rollups(tx, job_id, &contribution, sign)?;
                self.mark_late_write(job_id, &contribution, sequence);
            }
        }
        Ok(())
    }

    /// Records `sequence` as the job's late write when `contribution` lies in an hour before
    /// the hour of the job's latest finish (which already counts it): readers may hold
    /// those hours merged, and this tells them to read them again.
    fn mark_late_write(&mut self, job_id: i64, contribution: &Contribution, sequence: u64) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        let hour = Granularity::Hour;
        let newest = job.stats.last_finished.as_ref().map(|l| l.finished_at);
        if newest
            .is_some_and(|n| hour.bucket_start(contribution.finished_at) < hour.bucket_start(n))
        {
            job.late_write_sequence = sequence;
        }
    }

    /// Moves the buckets of a finish time at every width, loading each on first touch.
    fn add_to_rollups(
        &mut self,
        tx: &Connection,
        job_id: i64,
        contribution: &Contribution,
        sign: i64,
    ) -> Result<(), StoreError> {
        let stored_last_finish = self.jobs.get(&job_id).and_then(|j| j.stored_last_finish);
        for granularity in Granularity::ALL {
            let start = granularity.bucket_start(contribution.finished_at);
            if granularity
                .kept_from(self.stream_time_ms)
                .is_some_and(|kept| start < kept)
            {
                // Past retention: a later prune would remove it (and did remove what an
                // earlier event put there), so a live projection and a rebuild agree.
                continue;
            }
            let (bucket, changed) = match self.rollups.entry((job_id, granularity, start)) {
                std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::hash_map::Entry::Vacant(entry) => {
                    let stored = stored_last_finish
                        .is_some_and(|last| start <= granularity.bucket_start(last));
                    let loaded = if stored {
                        load_rollup(tx, job_id, granularity, start)?
                    } else {
                        RollupBucket::default()
                    };
                    entry.insert((loaded, false))
                }
            };
            bucket.add(contribution, sign);
            *changed = true;
        }
        Ok(())
    }

    /// Writes every changed row, in key order (sequential B-tree inserts). Returns the jobs
    /// created by this batch and the rows to keep for the next.
    fn flush(
        mut self,
        tx: &Connection,
        stream_time_ms: EpochMillis,
    ) -> Result<(Vec<NewJob>, HotRows), StoreError> {
        self.write_executions(tx)?;
        let rollups = self.write_rollups(tx, stream_time_ms)?;
        let jobs = self.write_jobs(tx)?;
        let new_jobs = self
            .new_jobs
            .into_iter()
            .flat_map(|(tenant, jobs)| jobs.into_iter().map(move |(job, id)| (tenant, job, id)))
            .collect();
        Ok((new_jobs, HotRows { jobs, rollups }))
    }

    /// Writes the changed executions, raising each job's finish lead on the way.
    fn write_executions(&mut self, tx: &Connection) -> Result<(), StoreError> {
        let mut upsert_execution = tx.prepare_cached(
            "INSERT OR REPLACE INTO executions
                 (job_id, execution_id, state, enqueued_at, started_at, finished_at,
                  items_processed, error, recency_key, started, enqueued_seq, started_seq,
                  finished_seq, recency_seq, exit_code)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
        )?;
        let mut insert_output = tx.prepare_cached(
            "INSERT OR REPLACE INTO execution_outputs (job_id, execution_id, output)
             VALUES (?1, ?2, ?3)",
        )?;
        let executions = std::mem::take(&mut self.executions);
        type Changed<'a> = (&'a (i64, String), &'a Execution, &'a super::TimeSequences);
        let mut changed: Vec<Changed> = executions
            .iter()
            .filter_map(|(key, (row, dirty, sequences))| match (row, dirty) {
                (Some(row), true) => Some((key, row, sequences)),
                _ => None,
            })
            .collect();
        changed.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for ((job_id, execution_id), row, sequences) in changed {
            if let (Some(finished_at), Some(job)) = (row.finished_at, self.jobs.get_mut(job_id)) {
                let lead = finished_at.saturating_sub(row.recency_key());
                job.finish_lead_ms = job.finish_lead_ms.max(lead);
            }
            upsert_execution.execute(params![
                job_id,
                execution_id,
                row.state.code(),
                row.enqueued_at,
                row.started_at,
                row.finished_at,
                row.items_processed.map(|n| n as i64),
                row.error,
                row.recency_key(),
                row.started_at.is_some(),
                sequences.enqueued.map(|s| s as i64),
                sequences.started.map(|s| s as i64),
                sequences.finished.map(|s| s as i64),
                sequences.of_recency_key(row) as i64,
                row.exit_code
            ])?;
            // Only the first terminal event sets an output (a row read back carries none),
            // so a row without one never has a stored one to keep.
            if let Some(output) = &row.output {
                insert_output.execute(params![job_id, execution_id, output])?;
            }
        }
        Ok(())
    }

    /// Writes the touched buckets, then prunes the touched jobs' buckets past retention (a
    /// key range each: pruning rides on the batch, never on a read). A job no event touches
    /// keeps its old buckets until one does; windows never read that far back.
    fn write_rollups(
        &mut self,
        tx: &Connection,
        stream_time_ms: EpochMillis,
    ) -> Result<HashMap<RollupKey, RollupBucket>, StoreError> {
        let mut upsert = tx.prepare_cached(
            "INSERT OR REPLACE INTO rollups
                 (job_id, granularity, bucket_start, completed, failed, duration_sum_ms,
                  duration_count, duration_sketch)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        let mut delete = tx.prepare_cached(
            "DELETE FROM rollups WHERE job_id = ?1 AND granularity = ?2 AND bucket_start = ?3",
        )?;
        let mut buckets: Vec<_> = std::mem::take(&mut self.rollups)
            .into_iter()
            .filter_map(|(key, (bucket, changed))| changed.then_some((key, bucket)))
            .collect();
        buckets.sort_unstable_by_key(|(key, _)| *key);
        for ((job_id, granularity, start), bucket) in &buckets {
            let (job_id, start) = (*job_id, *start);
            if bucket.is_empty() {
                delete.execute(params![job_id, granularity.code(), start])?;
                continue;
            }
            upsert.execute(params![
                job_id,
                granularity.code(),
                start,
                bucket.completed,
                bucket.failed,
                super::WideInt(bucket.duration_sum_ms),
                bucket.duration_count,
                bucket.durations.encode()
            ])?;
        }
        let mut prune = tx.prepare_cached(
            "DELETE FROM rollups WHERE job_id = ?1 AND granularity = ?2 AND bucket_start < ?3",
        )?;
        let mut jobs: Vec<i64> = self
            .jobs
            .iter()
            .filter_map(|(id, row)| row.touched.then_some(*id))
            .collect();
        jobs.sort_unstable();
        for job_id in jobs {
            for granularity in Granularity::ALL {
                if let Some(kept) = granularity.kept_from(stream_time_ms) {
                    prune.execute(params![job_id, granularity.code(), kept])?;
                }
            }
        }
        // The hour and day buckets as the file now holds them (neither deleted nor pruned):
        // the next batch's finishes mostly land in them again. A minute bucket rarely
        // outlives its batch.
        let kept = |granularity: Granularity, start: EpochMillis| {
            granularity != Granularity::Minute
                && granularity
                    .kept_from(stream_time_ms)
                    .is_none_or(|kept| start >= kept)
        };
        Ok(buckets
            .into_iter()
            .filter(|((_, granularity, start), bucket)| {
                !bucket.is_empty() && kept(*granularity, *start)
            })
            .collect())
    }

    /// Writes the touched jobs' aggregates, recounting a split outcome run first.
    fn write_jobs(&mut self, tx: &Connection) -> Result<HashMap<i64, JobRow>, StoreError> {
        let mut upsert_job = tx.prepare_cached(
            "INSERT OR REPLACE INTO job_stats
                 (job_id, tenant_id, job_name, pending, processing, completed, failed,
                  duration_sum_ms, duration_count, last_finished_at, last_finished_execution_id,
                  last_finished_duration_ms, last_started_at, schedule_cron, schedule_occurred_at,
                  schedule_event_id, first_sequence, last_sequence, last_finished_failed,
                  schedule_grace_ms, schedule_max_runtime_ms, schedule_since, run_failed,
                  run_length, run_first_at, run_first_id, run_boundary_at, run_boundary_id,
                  finish_lead_ms, duration_sketch, queue_wait_sum_ms, queue_wait_count,
                  queue_wait_sketch, items_total, items_count, late_write_sequence,
                  schedule_timezone, schedule_labels, schedule_failure_threshold,
                  schedule_recovery_threshold, silence_until, silence_reason, silence_by,
                  silence_occurred_at, silence_event_id, verdict_failing, verdict_since,
                  silence_marks)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                     ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32,
                     ?33, ?34, ?35, ?36, ?37, ?38, ?39, ?40, ?41, ?42, ?43, ?44, ?45, ?46, ?47,
                     ?48)",
        )?;
        let mut jobs: Vec<(i64, JobRow)> = std::mem::take(&mut self.jobs)
            .into_iter()
            .filter(|(_, row)| row.touched)
            .collect();
        jobs.sort_unstable_by_key(|(id, _)| *id);
        let mut written = HashMap::with_capacity_and_hasher(jobs.len(), Default::default());
        for (job_id, mut row) in jobs {
            if row.stats.outcome_run.as_ref().is_some_and(|r| r.stale) {
                recount_run(tx, job_id, row.finish_lead_ms, &mut row.stats)?;
            }
            if row.stats.verdict_stale {
                reread_verdict(tx, job_id, &mut row.stats)?;
            }
            let s = &row.stats;
            let silence = s.silence.as_ref();
            let verdict = s.verdict_before_run.filter(|_| s.has_thresholds());
            let last = s.last_finished.as_ref();
            let schedule = s.schedule.as_ref();
            let run = s.outcome_run.as_ref();
            upsert_job.execute(params![
                job_id,
                row.tenant.to_string(),
                row.job,
                s.pending,
                s.processing,
                s.completed,
                s.failed,
                super::WideInt(s.duration_sum_ms),
                s.duration_count,
                last.map(|l| l.finished_at),
                last.map(|l| l.execution_id.as_str()),
                last.and_then(|l| l.duration_ms),
                s.last_started_at,
                schedule.and_then(|c| c.cron.as_deref()),
                schedule.map(|c| c.occurred_at),
                schedule.map(|c| c.event_id.hyphenated().to_string()),
                row.first_sequence as i64,
                row.last_sequence as i64,
                last.map(|l| l.failed),
                schedule.and_then(|c| c.grace_ms),
                schedule.and_then(|c| c.max_runtime_ms),
                schedule.map(|c| c.since),
                run.map(|r| r.failed),
                run.map(|r| r.length),
                run.map(|r| r.first.0),
                run.map(|r| r.first.1.as_str()),
                run.and_then(|r| r.boundary.as_ref().map(|b| b.0)),
                run.and_then(|r| r.boundary.as_ref().map(|b| b.1.as_str())),
                row.finish_lead_ms,
                (!s.durations.is_empty()).then(|| s.durations.encode()),
                super::WideInt(s.queue_wait.sum_ms),
                s.queue_wait.count,
                (!s.queue_wait.sketch.is_empty()).then(|| s.queue_wait.sketch.encode()),
                super::WideInt(s.items_total),
                s.items_count,
                row.late_write_sequence as i64,
                schedule.and_then(|c| c.timezone.as_deref()),
                schedule
                    .filter(|c| !c.labels.is_empty())
                    .map(|c| serde_json::to_string(&c.labels).expect("labels serialize")),
                schedule.and_then(|c| c.failure_threshold),
                schedule.and_then(|c| c.recovery_threshold),
                silence.and_then(|c| c.until),
                silence.and_then(|c| c.reason.as_deref()),
                silence.and_then(|c| c.by.as_deref()),
                silence.map(|c| c.occurred_at),
                silence.map(|c| c.event_id.hyphenated().to_string()),
                verdict.map(|v| v.failing),
                verdict.map(|v| v.since),
                super::encode_silence_marks(&s.silence_marks),
            ])?;
            row.stored_last_finish = s.last_finished.as_ref().map(|l| l.finished_at);
            row.touched = false;
            written.insert(job_id, row);
        }
        Ok(written)
    }
}

/// Selects [`super::EXECUTION_COLUMNS`] of one execution (a literal: this runs once per
/// execution a batch touches, and `format!` would allocate each time).
const LOAD_EXECUTION_SQL: &str = "SELECT state, enqueued_at, started_at, finished_at, \
     items_processed, error, exit_code, enqueued_seq, started_seq, finished_seq FROM executions \
     WHERE job_id = ?1 AND execution_id = ?2";

/// One execution's row and the sequences that set its times (none when it is new).
fn load_execution(
    tx: &Connection,
    job_id: i64,
    execution_id: &str,
) -> Result<(Option<Execution>, super::TimeSequences), StoreError> {
    let loaded = tx
        .prepare_cached(LOAD_EXECUTION_SQL)?
        .query_row(params![job_id, execution_id], |r| {
            Ok((
                super::execution_columns(r, 0)?,
                super::time_sequences(r, super::EXECUTION_COLUMN_COUNT)?,
            ))
        })
        .optional()?;
    match loaded {
        Some((columns, sequences)) => {
            Ok((Some(super::execution_from_columns(columns)?), sequences))
        }
        None => Ok((None, Default::default())),
    }
}

fn load_rollup(
    tx: &Connection,
    job_id: i64,
    granularity: Granularity,
    start: EpochMillis,
) -> Result<RollupBucket, StoreError> {
    Ok(tx
        .prepare_cached(&format!(
            "SELECT {} FROM rollups WHERE job_id = ?1 AND granularity = ?2 AND bucket_start = ?3",
            super::ROLLUP_COLUMNS
        ))?
        .query_row(params![job_id, granularity.code(), start], |r| {
            super::rollup_from_row_at(r, 0)
        })
        .optional()?
        .unwrap_or_default())
}

fn load_job(tx: &Connection, job_id: i64) -> Result<JobRow, StoreError> {
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT {JOB_STATS_COLUMNS}, first_sequence, last_sequence, tenant_id, job_name,
                finish_lead_ms, late_write_sequence
         FROM job_stats WHERE job_id = ?1"
    ))?;
    let more = JOB_STATS_COLUMN_COUNT;
    let row = stmt.query_row(params![job_id], |r| {
        Ok((
            job_stats_from_row(r)?,
            r.get::<_, i64>(more)? as u64,
            r.get::<_, i64>(more + 1)? as u64,
            r.get::<_, String>(more + 2)?,
            r.get::<_, String>(more + 3)?,
            r.get::<_, i64>(more + 4)?,
            r.get::<_, i64>(more + 5)? as u64,
        ))
    })?;
    let (stats, first_sequence, last_sequence, tenant, job, finish_lead_ms, late_write_sequence) =
        row;
    Ok(JobRow {
        stored_last_finish: stats.last_finished.as_ref().map(|l| l.finished_at),
        tenant: TenantId::parse(&tenant)
            .map_err(|_| StoreError::Corrupt(format!("tenant {tenant:?}")))?,
        job,
        stats,
        first_sequence,
        last_sequence,
        finish_lead_ms,
        touched: false,
        late_write_sequence,
    })
}

/// Recounts a split outcome run from the finished executions after its boundary (already
/// written by this batch). Every one of them finished after the boundary, so its recency key
/// is at least `boundary − finish_lead_ms`: a range of the recency index, not the history.
/// (A finish-time index would make this an index-only count, at the price of a B-tree write
/// per execution; splits need a late finish of the other outcome, so they are rare.)
fn recount_run(
    tx: &Connection,
    job_id: i64,
    finish_lead_ms: i64,
    stats: &mut JobStats,
) -> Result<(), StoreError> {
    let Some(boundary) = stats.outcome_run.as_ref().and_then(|r| r.boundary.clone()) else {
        return Ok(());
    };
    let mut stmt = tx.prepare_cached(
        "SELECT finished_at, execution_id FROM executions INDEXED BY executions_by_recency
         WHERE job_id = ?1 AND recency_key >= ?2 AND finished_at >= ?3",
    )?;
    let mut rows = stmt.query(params![
        job_id,
        boundary.0.saturating_sub(finish_lead_ms),
        boundary.0
    ])?;
    let mut length = 0;
    let mut first: Option<FinishKey> = None;
    while let Some(row) = rows.next()? {
        let key: FinishKey = (row.get(0)?, row.get(1)?);
        if key > boundary {
            length += 1;
            if first.as_ref().is_none_or(|f| key < *f) {
                first = Some(key);
            }
        }
    }
    stats.recount_run(length, first);
    Ok(())
}

/// Reads the thresholded verdict before the trailing outcome run afresh (a late finish, a
/// changed threshold): from every finished execution up to the run's boundary, in finish
/// order. A scan of the job's history, paid only by jobs with a threshold above 1 and only
/// when a finish arrives out of order or the thresholds change.
fn reread_verdict(tx: &Connection, job_id: i64, stats: &mut JobStats) -> Result<(), StoreError> {
    let Some(boundary) = stats.outcome_run.as_ref().and_then(|r| r.boundary.clone()) else {
        stats.set_verdict_before_run(None);
        return Ok(());
    };
    let mut stmt = tx.prepare_cached(
        "SELECT finished_at, execution_id, state FROM executions
         WHERE job_id = ?1 AND finished_at IS NOT NULL AND finished_at <= ?2",
    )?;
    let mut rows = stmt.query(params![job_id, boundary.0])?;
    let mut finished: Vec<(FinishKey, bool)> = Vec::new();
    while let Some(row) = rows.next()? {
        let key: FinishKey = (row.get(0)?, row.get(1)?);
        // 2 completed, 3 failed (0001_read_model.sql).
        let failed = match row.get::<_, i64>(2)? {
            3 => true,
            2 => false,
            _ => continue,
        };
        if key <= boundary {
            finished.push((key, failed));
        }
    }
    finished.sort_unstable();
    let thresholds = stats.thresholds();
    stats.set_verdict_before_run(crate::projection::Verdict::of_history(
        finished.into_iter().map(|((at, _), failed)| (at, failed)),
        thresholds,
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    #[test]
    fn the_execution_load_selects_the_shared_columns() {
        let columns = super::LOAD_EXECUTION_SQL
            .strip_prefix("SELECT ")
            .and_then(|rest| rest.split(" FROM ").next())
            .unwrap();
        assert_eq!(
            columns,
            format!(
                "{}, {}",
                super::super::EXECUTION_COLUMNS,
                super::super::TIME_SEQUENCE_COLUMNS
            )
        );
    }

    use super::*;

    const TENANT: &str = "3f0c7f7e-8a51-4a52-9f7e-0d6a4c1b2e11";

    fn message(sequence: u64, kind: &str, execution: usize, at_ms: i64) -> (String, Vec<u8>) {
        let at = chrono::DateTime::from_timestamp_millis(at_ms).expect("in range");
        let body = serde_json::json!({
            "eventId": uuid::Uuid::from_u128(u128::from(sequence)),
            "type": kind,
            "tenantId": TENANT,
            "jobName": "split-runs",
            "executionId": format!("e{execution}"),
            "occurredAt": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        });
        (
            format!("jobs.events.{TENANT}.{kind}"),
            serde_json::to_vec(&body).expect("serializable"),
        )
    }

    fn stored_rows(conn: &Connection, job_id: i64) -> Vec<(String, Execution)> {
        let mut stmt = conn
            .prepare("SELECT execution_id FROM executions WHERE job_id = ?1")
            .unwrap();
        let ids: Vec<String> = stmt
            .query_map([job_id], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        ids.into_iter()
            .map(|id| {
                let row = load_execution(conn, job_id, &id).unwrap().0.unwrap();
                (id, row)
            })
            .collect()
    }

    fn rollup_rows(conn: &Connection) -> Vec<(i64, i64, i64, i64, i64)> {
        conn.prepare(
            "SELECT granularity, bucket_start, completed, failed, duration_count FROM rollups
             ORDER BY granularity, bucket_start",
        )
        .unwrap()
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    /// Rollup retention is measured against the stream's time, so however the messages are
    /// cut into batches (live consumption vs a rebuild), the same buckets remain.
    #[test]
    fn rollup_retention_is_the_same_whatever_the_batches() {
        const HOUR: i64 = 3_600_000;
        let start = 1_750_000_000_000;
        let mut encoded = Vec::new();
        for i in 0..240usize {
            // One run every 4 hours for 40 days, published as it finishes.
            let at = start + i as i64 * 4 * HOUR;
            for (kind, t) in [("started", at), ("completed", at + 1_000 + i as i64)] {
                let sequence = encoded.len() as u64 + 1;
                let (subject, payload) = message(sequence, kind, i, t);
                encoded.push((subject, payload, t + 500));
            }
        }
        let messages: Vec<IncomingMessage<'_>> = encoded
            .iter()
            .enumerate()
            .map(|(i, (subject, payload, published))| IncomingMessage {
                sequence: i as u64 + 1,
                subject,
                payload,
                published_at_ms: Some(*published),
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let (mut one_by_one, _) = Writer::open(&dir.path().join("live")).unwrap();
        for message in messages.chunks(1) {
            one_by_one.apply_batch(message).unwrap();
        }
        let (mut at_once, _) = Writer::open(&dir.path().join("rebuilt")).unwrap();
        for batch in messages.chunks(97) {
            at_once.apply_batch(batch).unwrap();
        }
        let live = rollup_rows(&one_by_one.conn);
        assert_eq!(live, rollup_rows(&at_once.conn));
        let stream_time = encoded.last().unwrap().2;
        for g in [Granularity::Minute, Granularity::Hour] {
            let kept = g.kept_from(stream_time).unwrap();
            let rows: Vec<_> = live.iter().filter(|r| r.0 == g.code()).collect();
            assert!(rows.iter().all(|r| r.1 >= kept), "{g:?} pruned");
            assert!(!rows.is_empty(), "{g:?} kept within retention");
        }
        // Days are kept for ever: one per day of the 40.
        let days = live
            .iter()
            .filter(|r| r.0 == Granularity::Day.code())
            .count();
        assert!((40..=41).contains(&days), "{days} days");
        assert_eq!(
            live.iter()
                .filter(|r| r.0 == Granularity::Day.code())
                .map(|r| r.2)
                .sum::<i64>(),
            240
        );
    }

    /// Executions as (start, finish offset, failed, start known); finishes may precede starts.
    fn history() -> impl Strategy<Value = Vec<(i64, i64, bool, bool)>> {
        proptest::collection::vec(
            (
                0i64..100_000,
                -2_000i64..50_000,
                any::<bool>(),
                prop::bool::weighted(0.9),
            ),
            1..40,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The outcome run (consecutive failures, `since` of failing and healthy) recounted by
        /// the store after late finishes split it equals the one recomputed from the rows.
        #[test]
        fn the_stored_aggregates_equal_a_recount_of_the_stored_rows(
            (events, cuts) in history().prop_flat_map(|runs| {
                let mut events = Vec::new();
                for (i, (start, offset, failed, start_known)) in runs.into_iter().enumerate() {
                    events.push(("enqueued", i, start - 10));
                    if start_known {
                        events.push(("started", i, start));
                    }
                    events.push((if failed { "failed" } else { "completed" }, i, start + offset));
                }
                let len = events.len();
                (Just(events).prop_shuffle(), proptest::collection::vec(1..len + 1, 0..6))
            })
        ) {
            let dir = tempfile::tempdir().unwrap();
            let (mut writer, _) = Writer::open(&dir.path().join("db")).unwrap();
            let encoded: Vec<(String, Vec<u8>)> = events
                .iter()
                .enumerate()
                .map(|(i, (kind, execution, at))| message(i as u64 + 1, kind, *execution, *at))
                .collect();
            let messages: Vec<IncomingMessage<'_>> = encoded
                .iter()
                .enumerate()
                .map(|(i, (subject, payload))| IncomingMessage {
                    sequence: i as u64 + 1,
                    subject,
                    payload,
                    published_at_ms: Some(0),
                })
                .collect();
            let mut cuts = cuts;
            cuts.push(0);
            cuts.push(messages.len());
            cuts.sort_unstable();
            for pair in cuts.windows(2) {
                let outcome = writer.apply_batch(&messages[pair[0]..pair[1]]).unwrap();
                prop_assert_eq!(outcome.dead_letters, 0);
            }
            let stored = load_job(&writer.conn, 1).unwrap().stats;
            let rows = stored_rows(&writer.conn, 1);
            let recomputed =
                JobStats::recompute(rows.iter().map(|(id, row)| (id.as_str(), row)), None);
            prop_assert_eq!(&stored, &recomputed);
            // The last success the scrape reads from the stored columns is the latest
            // completed row's finish, also after late finishes split the outcome run.
            let latest_success = rows
                .iter()
                .filter(|(_, row)| row.state == crate::projection::ExecutionState::Completed)
                .filter_map(|(_, row)| row.finished_at)
                .max();
            prop_assert_eq!(stored.last_success_at(), latest_success);
            // The rollups hold exactly the finished rows, bucket by bucket, at every width.
            let mut expected = std::collections::BTreeMap::new();
            for (_, row) in &rows {
                if let Some(c) = Contribution::of(row) {
                    for g in Granularity::ALL {
                        expected
                            .entry((g.code(), g.bucket_start(c.finished_at)))
                            .or_insert_with(RollupBucket::default)
                            .add(&c, 1);
                    }
                }
            }
            let mut stmt = writer
                .conn
                .prepare(&format!(
                    "SELECT granularity, bucket_start, {} FROM rollups WHERE job_id = 1",
                    super::super::ROLLUP_COLUMNS
                ))
                .unwrap();
            let stored_rollups: std::collections::BTreeMap<(i64, i64), RollupBucket> = stmt
                .query_map([], |r| {
                    let key = (r.get(0)?, r.get(1)?);
                    let bucket = super::super::rollup_from_row_at(r, 2)?;
                    Ok((key, bucket))
                })
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            prop_assert_eq!(stored_rollups, expected);
            // What the writer keeps for its next batch is what the file holds.
            for (job_id, row) in &writer.hot.jobs {
                let stored = load_job(&writer.conn, *job_id).unwrap();
                prop_assert_eq!(&row.stats, &stored.stats);
                prop_assert_eq!(row.stored_last_finish, stored.stored_last_finish);
                prop_assert_eq!(row.finish_lead_ms, stored.finish_lead_ms);
                prop_assert_eq!(row.last_sequence, stored.last_sequence);
                prop_assert_eq!(row.late_write_sequence, stored.late_write_sequence);
            }
            for ((job_id, granularity, start), bucket) in &writer.hot.rollups {
                let stored = load_rollup(&writer.conn, *job_id, *granularity, *start).unwrap();
                prop_assert_eq!(bucket, &stored);
            }
        }
    }
}
