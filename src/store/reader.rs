//! Read-only access for the API: a small pool of read-only WAL connections on one generation
//! file. Every stats read is one snapshot (a read transaction), so an answer never mixes two
//! commits, and costs a few index lookups whatever the history's length.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::{
    configure_common, job_stats_from_row, resolve, StoreError, EXECUTION_COLUMNS,
    JOB_STATS_COLUMNS, JOB_STATS_COLUMN_COUNT, TIME_SEQUENCE_COLUMNS,
};
use crate::cache::{byte_bounded, ByteBounded};
use crate::events::{JobName, TenantId};
use crate::projection::rollup::{BucketRange, Granularity, RollupBucket};
use crate::projection::sketch::SketchSum;
use crate::projection::{health, Execution, ExecutionState, JobStats};

/// How far the read model has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Freshness {
    /// The last stream sequence applied.
    pub last_sequence: u64,
    pub events_applied: u64,
    pub dead_letters: u64,
    /// Wall-clock time of the last commit (ms since epoch; 0 before the first).
    pub committed_at_ms: i64,
    /// Stream publish time of the last applied message (the instant a lagging projection can
    /// vouch for); `None` before the first.
    pub last_published_at_ms: Option<i64>,
}

/// One execution as the stats response shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionSummary {
    pub execution_id: String,
    pub row: Execution,
}

/// A consistent view of one job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSnapshot {
    /// The job's id in this generation file (what its rollups are keyed by).
    pub job_id: i64,
    pub stats: JobStats,
    /// The last stream sequence that changed this job: the version of its read model (the
    /// stats answer's `ETag`).
    pub job_sequence: u64,
    /// The schedule's cron, parsed once per snapshot.
    pub cron: Option<crate::schedule::CronSchedule>,
    pub recent: Vec<ExecutionSummary>,
    pub freshness: Freshness,
    /// What health needs beyond the aggregates.
    pub health: HealthData,
    /// The state last judged from this snapshot, and for how long it holds.
    pub state_memo: StateMemoCell,
}

/// A [`health::StateMemo`] kept beside the snapshot it was judged from. A cache: a copy starts
/// with what the original knew, and two snapshots compare equal whatever their memos hold.
#[derive(Debug, Default)]
pub struct StateMemoCell(std::sync::Mutex<Option<health::StateMemo>>);

impl StateMemoCell {
    fn get(&self) -> Option<health::StateMemo> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, memo: health::StateMemo) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(memo);
    }
}

impl Clone for StateMemoCell {
    fn clone(&self) -> Self {
        StateMemoCell(std::sync::Mutex::new(self.get()))
    }
}

impl PartialEq for StateMemoCell {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl JobSnapshot {
    /// The job's health state at `judgement`: [`JobSnapshot::judge`]'s, from the memo while
    /// the clock cannot have changed it (a job list filtered or sorted by health asks this of
    /// every job of the tenant, and only the page's jobs are judged in full).
    pub fn state_at(
        &self,
        judgement: health::Judgement,
        default_max_runtime_ms: i64,
    ) -> health::HealthState {
        match judgement {
            health::Judgement::Unknown { .. } => health::HealthState::Unknown,
            health::Judgement::At(at) => self.state_memo_at(at, default_max_runtime_ms).state,
        }
    }

    /// The memo of the job's state at the instant `at` (kept, or judged now and kept).
    pub fn state_memo_at(&self, at: i64, default_max_runtime_ms: i64) -> health::StateMemo {
        let judgement = health::Judgement::At(at);
        if let Some(memo) = self
            .state_memo
            .get()
            .filter(|m| m.state_at(judgement).is_some())
        {
            return memo;
        }
        let input = self.health_input(default_max_runtime_ms);
        let health = health::evaluate(&input, judgement);
        let memo = health::StateMemo::of(&health, &input);
        self.state_memo.set(memo);
        memo
    }

    fn health_input(&self, default_max_runtime_ms: i64) -> health::HealthInput<'_> {
        health::HealthInput {
            stats: &self.stats,
            fires: self.health.fires.as_ref(),
            starts: &self.health.starts,
            processing: &self.health.processing,
            default_max_runtime_ms,
        }
    }

    /// The job's health at `judgement` (CONTRACT §5).
    pub fn judge(
        &self,
        judgement: health::Judgement,
        default_max_runtime_ms: i64,
    ) -> health::Health {
        health::evaluate(&self.health_input(default_max_runtime_ms), judgement)
    }
}

/// The time-bounded part of the read model health is judged from (see
/// [`crate::projection::health`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HealthData {
    /// Start times from [`HealthData::starts_from`] on, ascending (empty without a cron).
    pub starts: Vec<i64>,
    pub starts_from: i64,
    /// The oldest processing executions (start, id), oldest first.
    pub processing: Vec<(i64, String)>,
    /// The schedule's fires around the instants this snapshot can be judged at.
    pub fires: Option<health::Fires>,
}

/// Most start times read for one job's health: 8 days of a once-a-minute job four times over.
const MAX_STARTS: u32 = 50_000;

/// The run-time quantiles the per-job metrics export.
pub const JOB_METRICS_QUANTILES: [f64; 4] = [0.5, 0.9, 0.95, 0.99];

/// What the per-job metrics say of one job, straight from its `job_stats` row.
#[derive(Debug, Clone, PartialEq)]
pub struct JobMetricsRow {
    pub tenant: String,
    pub job: String,
    pub completed: i64,
    pub failed: i64,
    pub processing: i64,
    pub last_finished_at: Option<i64>,
    /// Run time of the finished execution with the latest finish time.
    pub last_duration_ms: Option<i64>,
    pub last_success_at: Option<i64>,
    pub cron: Option<String>,
    /// The zone the cron is evaluated in (`None`: UTC).
    pub timezone: Option<String>,
    /// Sum and count of the completed executions' run times.
    pub duration_sum_ms: i128,
    pub duration_count: i64,
    /// At [`JOB_METRICS_QUANTILES`], in ms; `None` before a completed run with both times.
    pub duration_quantiles: [Option<i64>; 4],
}

/// Read-only connections to one database file.
pub struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// Snapshots by (tenant, job, recent), each valid until its job changes.
    snapshots: ByteBounded<(TenantId, String, u32), Arc<JobSnapshot>>,
    changes: Mutex<ChangeLog>,
    /// Each tenant's jobs by health state, for the job list (see [`super::health_board`]).
    boards: super::health_board::Boards,
    /// Fire lists by cron expression, shared by every job with that cron.
    fires: FiresCache,
    /// Merged windows by (job id, bucket range), each with the job version it was read at.
    windows: ByteBounded<(i64, BucketRange), Arc<(u64, RollupBucket)>>,
    /// The closed hours of windows (those before the hour of the job's latest finish) merged,
    /// by (job id, bucket range), each with the job's late-write sequence it was read at: a
    /// busy job changes with every batch, its closed hours only with a late finish.
    closed_windows: ByteBounded<(i64, BucketRange), Arc<(u64, RollupBucket)>>,
}

/// Bytes of merged windows kept (a window's sketch is a few hundred bytes to a few KB).
const WINDOW_CACHE_BYTES: u64 = 8 << 20;

fn window_bytes(_: &(i64, BucketRange), window: &Arc<(u64, RollupBucket)>) -> u64 {
    (64 + window.1.durations.heap_bytes()) as u64
}

/// Adds the job's buckets in `range` (read as [`BucketRange::pieces`]) to `merged`'s totals
/// and to `durations`.
fn merge_buckets(
    tx: &rusqlite::Transaction<'_>,
    job_id: i64,
    range: BucketRange,
    merged: &mut RollupBucket,
    durations: &mut SketchSum,
) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached(
        "SELECT completed, failed, duration_sum_ms, duration_count, duration_sketch
         FROM rollups
         WHERE job_id = ?1 AND granularity = ?2 AND bucket_start BETWEEN ?3 AND ?4",
    )?;
    for piece in range.pieces() {
        let mut rows = stmt.query(params![
            job_id,
            piece.granularity.code(),
            piece.from,
            piece.last
        ])?;
        while let Some(row) = rows.next()? {
            merged.completed += row.get::<_, i64>(0)?;
            merged.failed += row.get::<_, i64>(1)?;
            merged.duration_sum_ms += row.get::<_, super::WideInt>(2)?.0;
            merged.duration_count += row.get::<_, i64>(3)?;
            let sketch = row
                .get_ref(4)?
                .as_blob()
                .map_err(|e| StoreError::Corrupt(format!("rollup sketch: {e}")))?;
            durations
                .add_encoded(sketch)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        }
    }
    Ok(())
}

/// Fire lists by cron expression. Listing a cron's fires is the dominant cost of judging
/// health (a microsecond per fire: ~16 ms for a once-a-minute cron's 11 days), and jobs share
/// a handful of crons, so each list is made once and reused until time moves past its span.
struct FiresCache {
    lists: ByteBounded<String, health::Fires>,
}

/// Bytes of fire lists kept (8 per fire: a once-a-minute cron's list is ~200 KB).
const FIRES_CACHE_BYTES: u64 = 16 << 20;

impl Default for FiresCache {
    fn default() -> Self {
        FiresCache {
            lists: byte_bounded(FIRES_CACHE_BYTES, 16_384, |cron, fires| {
                (cron.len() + fires.len() * std::mem::size_of::<i64>() + 256) as u64
            }),
        }
    }
}

impl FiresCache {
    /// Fires of `cron` covering [`health::Fires::judging_span`], from the cache when it has
    /// them. A new list reaches a day further on both sides (at whole days, so jobs judged
    /// moments apart share it): it is made again about once a day per cron.
    fn for_judging(
        &self,
        cron: &crate::schedule::CronSchedule,
        earliest_as_of: i64,
        latest_as_of: i64,
    ) -> health::Fires {
        const DAY: i64 = 86_400_000;
        let (from, until) = health::Fires::judging_span(earliest_as_of, latest_as_of);
        // By expression and zone: the same cron in two zones fires at different instants.
        if let Some(fires) = self.lists.get(&cron.key()) {
            if fires.covers(from, until) {
                return fires;
            }
        }
        let from = (from - DAY).div_euclid(DAY) * DAY;
        let until = (until + DAY).div_euclid(DAY) * DAY + DAY;
        let fires = health::Fires::new(cron.clone(), from, until);
        self.lists.insert(cron.key(), fires.clone());
        fires
    }
}

/// When jobs last changed, which decides whether a cached snapshot is still the truth.
#[derive(Default)]
struct ChangeLog {
    /// The checkpoint of the last commit that changed each job (reported by the writer's
    /// owner before it publishes the new checkpoint).
    changed_at: HashMap<(TenantId, String), u64>,
    /// Set when `changed_at` is reset: snapshots read before it are not trusted.
    floor: u64,
}

/// Jobs whose last change is remembered (~100 bytes each); past it the log starts over from
/// a floor, which only costs re-reads.
const CHANGE_LOG_ENTRIES: usize = 200_000;
/// Jobs with their health state, in (state, name) order.
pub type JobStates = Vec<(health::HealthState, String)>;

/// How far before the board's last instant a job list may ask and be answered at that
/// instant instead: two requests a moment apart reach the board in either order. Further back
/// (a projection that fell behind is judged at its last event) the board is built again.
pub const BOARD_CLOCK_SLACK_MS: i64 = 1_000;

/// Bytes of snapshots kept (a snapshot carries up to 100 recent executions and, for a frequent
/// cron, up to 400 KB of start times).
const SNAPSHOT_CACHE_BYTES: u64 = 32 << 20;

/// A rough size of one snapshot in memory, for the cache's budget.
fn snapshot_bytes(key: &(TenantId, String, u32), snapshot: &Arc<JobSnapshot>) -> u64 {
    (key.1.len() + snapshot_heap_bytes(snapshot)) as u64
}

fn snapshot_heap_bytes(snapshot: &JobSnapshot) -> usize {
    let executions: usize = snapshot
        .recent
        .iter()
        .map(|e| {
            std::mem::size_of::<ExecutionSummary>()
                + e.execution_id.len()
                + e.row.error.as_ref().map_or(0, String::len)
        })
        .sum();
    // Health data can dominate for a frequent cron: up to MAX_STARTS start times. Counting it
    // keeps the cache within SNAPSHOT_CACHE_BYTES for real.
    let health = &snapshot.health;
    let starts = health.starts.capacity() * std::mem::size_of::<i64>();
    let processing: usize = health
        .processing
        .iter()
        .map(|(_, id)| std::mem::size_of::<(i64, String)>() + id.len())
        .sum();
    // A job with a wide spread of run times holds a few hundred buckets per sketch.
    let sketches =
        snapshot.stats.durations.heap_bytes() + snapshot.stats.queue_wait.sketch.heap_bytes();
    // Fires are shared with the fires cache, which bounds them itself.
    std::mem::size_of::<JobSnapshot>() + 256 + executions + starts + processing + sketches
}

impl ReadPool {
    /// Opens a pool on the file `path` names now (a symlink is resolved once, here).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let pool = ReadPool {
            path: resolve(path),
            idle: Mutex::new(Vec::new()),
            snapshots: byte_bounded(SNAPSHOT_CACHE_BYTES, 2_048, snapshot_bytes),
            changes: Mutex::new(ChangeLog::default()),
            boards: Default::default(),
            fires: FiresCache::default(),
            windows: byte_bounded(WINDOW_CACHE_BYTES, 1_024, window_bytes),
            closed_windows: byte_bounded(WINDOW_CACHE_BYTES, 1_024, window_bytes),
        };
        // Fail early (and keep the connection) if the file cannot be read.
        let conn = pool.connect()?;
        pool.give_back(conn);
        Ok(pool)
    }

    /// The generation file this pool reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn connect(&self) -> Result<Connection, StoreError> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        configure_common(&conn)?;
        Ok(conn)
    }

    fn take(&self) -> Result<Connection, StoreError> {
        let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match pooled {
            Some(conn) => Ok(conn),
            None => self.connect(),
        }
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < 64 {
            idle.push(conn);
        }
    }

    fn with_snapshot<T>(
        &self,
        read: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.take()?;
        let result = (|| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Deferred)?;
            let value = read(&tx)?;
            tx.finish()?;
            Ok(value)
        })();
        if result.is_ok() {
            self.give_back(conn);
        }
        result
    }

    /// The checkpoint and counters.
    pub fn freshness(&self) -> Result<Freshness, StoreError> {
        self.with_snapshot(read_freshness)
    }

    /// Records that a commit at `sequence` changed these jobs, so their cached snapshots are
    /// read again; other jobs' snapshots stay valid. Call before publishing the checkpoint.
    pub fn jobs_changed(&self, jobs: &[(TenantId, String)], sequence: u64) {
        let mut changes = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        if changes.changed_at.len() + jobs.len() > CHANGE_LOG_ENTRIES {
            // Forgetting when jobs changed would make stale snapshots look valid: nothing read
            // before this commit is trusted any more.
            changes.changed_at.clear();
            changes.floor = sequence;
        }
        for job in jobs {
            changes.changed_at.insert(job.clone(), sequence);
        }
        drop(changes);
        self.boards.note(jobs);
    }

    #[cfg(test)]
    pub(super) fn boards_for_tests(&self) -> Arc<Mutex<super::health_board::Board>> {
        let boards = self.boards.boards.lock().unwrap();
        boards.values().next().expect("a board").clone()
    }

    /// Every job of `tenant` whose name starts with `prefix` and whose health state at `at`
    /// is one of `states` (all when empty), in (state, name) order, from the tenant's
    /// maintained board ([`super::health_board`]); `judge` gives a snapshot's memo at an
    /// instant. Returns the instant judged at: `at`, or the board's own when a concurrent
    /// request brought it up to a moment later (within [`BOARD_CLOCK_SLACK_MS`]).
    pub fn job_states(
        &self,
        tenant: &TenantId,
        prefix: &str,
        states: &[health::HealthState],
        at: i64,
        judge: &dyn Fn(&JobSnapshot, i64) -> health::StateMemo,
    ) -> Result<(JobStates, i64), StoreError> {
        let board = self.boards.board(tenant);
        let mut board = board.lock().unwrap_or_else(|p| p.into_inner());
        let at = match board.judged_at() {
            Some(judged) if judged > at && judged - at <= BOARD_CLOCK_SLACK_MS => judged,
            _ => at,
        };
        let dirty = self.boards.take_dirty(tenant);
        let brought = (|| {
            let judge_job = |board: &mut super::health_board::Board, name: &str| {
                let memo = match JobName::parse(name) {
                    Ok(job) => self
                        .cached_job_snapshot(tenant, &job, 0)?
                        .map(|snapshot| judge(&snapshot, at)),
                    Err(_) => None,
                };
                board.set(name, memo);
                Ok::<(), StoreError>(())
            };
            match dirty {
                Some(dirty) if board.reaches(at) => {
                    for name in dirty {
                        judge_job(&mut board, &name)?;
                    }
                    for name in board.expired(at) {
                        judge_job(&mut board, &name)?;
                    }
                }
                _ => {
                    board.clear();
                    for name in self.job_names_page(tenant, "", None, false, u32::MAX)? {
                        judge_job(&mut board, &name)?;
                    }
                }
            }
            Ok::<(), StoreError>(())
        })();
        if let Err(error) = brought {
            // Changes taken and not applied: the next request builds the board again.
            board.clear();
            return Err(error);
        }
        board.judged(at);
        Ok((board.matching(prefix, states), at))
    }

    /// [`ReadPool::job_snapshot`], answered from memory while the job has not changed since
    /// the cached read (see [`ReadPool::jobs_changed`]).
    pub fn cached_job_snapshot(
        &self,
        tenant: &TenantId,
        job: &JobName,
        recent: u32,
    ) -> Result<Option<Arc<JobSnapshot>>, StoreError> {
        let key = (*tenant, job.as_str().to_owned(), recent);
        if let Some(hit) = self.snapshots.get(&key) {
            let changes = self.changes.lock().unwrap_or_else(|p| p.into_inner());
            let changed_at = changes
                .changed_at
                .get(&(key.0, key.1.clone()))
                .copied()
                .unwrap_or(0)
                .max(changes.floor);
            if hit.freshness.last_sequence >= changed_at {
                return Ok(Some(hit));
            }
        }
        let Some(snapshot) = self.job_snapshot(tenant, job, recent)? else {
            return Ok(None);
        };
        let snapshot = Arc::new(snapshot);
        self.snapshots.insert(key, snapshot.clone());
        Ok(Some(snapshot))
    }

    /// One job's aggregates, its `recent` newest executions and the checkpoint, from a single
    /// snapshot; `None` when no event was ever seen for the job in this tenant.
    pub fn job_snapshot(
        &self,
        tenant: &TenantId,
        job: &JobName,
        recent: u32,
    ) -> Result<Option<JobSnapshot>, StoreError> {
        let tenant = tenant.to_string();
        self.with_snapshot(|tx| {
            let Some((job_id, stats, job_sequence)) = read_job_stats(tx, &tenant, job.as_str())?
            else {
                return Ok(None);
            };
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT execution_id, {EXECUTION_COLUMNS} FROM executions WHERE job_id = ?1
                 ORDER BY recency_key DESC, execution_id DESC LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![job_id, recent], execution_row)?;
            let executions = rows
                .map(|row| row.map_err(StoreError::from).and_then(summary_from_row))
                .collect::<Result<Vec<_>, _>>()?;
            let cron = stats.schedule.as_ref().and_then(|s| s.cron_schedule());
            let freshness = read_freshness(tx)?;
            let health =
                read_health_data(tx, job_id, &stats, cron.as_ref(), &freshness, &self.fires)?;
            Ok(Some(JobSnapshot {
                job_id,
                cron,
                stats,
                job_sequence,
                recent: executions,
                freshness,
                health,
                state_memo: Default::default(),
            }))
        })
    }

    /// The job's finished executions in the buckets of `range`, merged, as of the job's
    /// version `job_sequence` (the snapshot an answer is built from). Cached per range until
    /// the job changes; a bucket range moves once per bucket width, so a polled window is
    /// read once a minute (or hour). `None` when the file already holds a newer version of
    /// the job than `job_sequence`: the caller reads a fresh snapshot.
    pub fn window(
        &self,
        job_id: i64,
        range: BucketRange,
        job_sequence: u64,
    ) -> Result<Option<Arc<(u64, RollupBucket)>>, StoreError> {
        let key = (job_id, range);
        if let Some(hit) = self.windows.get(&key).filter(|w| w.0 == job_sequence) {
            return Ok(Some(hit));
        }
        let read = self.read_window_reusing_closed_hours(job_id, range)?;
        if read.0 != job_sequence {
            return Ok(None);
        }
        let read = Arc::new(read);
        self.windows.insert(key, read.clone());
        Ok(Some(read))
    }

    /// [`ReadPool::window`] without any cache: the job's version and the merged range, from
    /// one snapshot.
    pub fn read_window(
        &self,
        job_id: i64,
        range: BucketRange,
    ) -> Result<(u64, RollupBucket), StoreError> {
        self.with_snapshot(|tx| {
            let version: i64 = tx
                .prepare_cached("SELECT last_sequence FROM job_stats WHERE job_id = ?1")?
                .query_row([job_id], |r| r.get(0))?;
            let mut merged = RollupBucket::default();
            let mut durations = SketchSum::default();
            merge_buckets(tx, job_id, range, &mut merged, &mut durations)?;
            merged.durations = durations.into_sketch();
            Ok((version.max(0) as u64, merged))
        })
    }

    /// [`ReadPool::read_window`] reusing the merged closed hours of the range (before the hour
    /// of the job's latest finish) while the job's late-write sequence stands: only the
    /// current hour's buckets are read, whatever the window's length.
    pub fn read_window_reusing_closed_hours(
        &self,
        job_id: i64,
        range: BucketRange,
    ) -> Result<(u64, RollupBucket), StoreError> {
        self.with_snapshot(|tx| {
            let (version, late_writes, newest_finish) = tx
                .prepare_cached(
                    "SELECT last_sequence, late_write_sequence, last_finished_at
                     FROM job_stats WHERE job_id = ?1",
                )?
                .query_row([job_id], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Option<i64>>(2)?,
                    ))
                })?;
            let late_writes = late_writes.max(0) as u64;
            let (closed, open) = match newest_finish {
                Some(newest) => range.split_before(Granularity::Hour.bucket_start(newest)),
                None => (None, Some(range)),
            };
            let mut merged = RollupBucket::default();
            let mut durations = SketchSum::default();
            if let Some(closed) = closed {
                let key = (job_id, closed);
                let part = match self.closed_windows.get(&key).filter(|c| c.0 == late_writes) {
                    Some(hit) => hit,
                    None => {
                        let mut part = RollupBucket::default();
                        let mut sum = SketchSum::default();
                        merge_buckets(tx, job_id, closed, &mut part, &mut sum)?;
                        part.durations = sum.into_sketch();
                        let part = Arc::new((late_writes, part));
                        self.closed_windows.insert(key, part.clone());
                        part
                    }
                };
                merged.merge_totals(&part.1);
                durations
                    .add_sketch(&part.1.durations)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            }
            if let Some(open) = open {
                merge_buckets(tx, job_id, open, &mut merged, &mut durations)?;
            }
            merged.durations = durations.into_sketch();
            Ok((version.max(0) as u64, merged))
        })
    }

    /// Names of the tenant's jobs starting with `prefix`, in name order, after `after` (a
    /// keyset page: an index range, whatever the number of jobs).
    pub fn job_names_page(
        &self,
        tenant: &TenantId,
        prefix: &str,
        after: Option<&str>,
        descending: bool,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        let (upper, lower) = prefix_range(prefix);
        let sql = match (after.is_some(), descending) {
            (false, false) => {
                "SELECT job_name FROM job_stats WHERE tenant_id = ?1
                 AND job_name >= ?2 AND job_name < ?3 ORDER BY job_name LIMIT ?5"
            }
            (false, true) => {
                "SELECT job_name FROM job_stats WHERE tenant_id = ?1
                 AND job_name >= ?2 AND job_name < ?3 ORDER BY job_name DESC LIMIT ?5"
            }
            (true, false) => {
                "SELECT job_name FROM job_stats WHERE tenant_id = ?1
                 AND job_name >= ?2 AND job_name < ?3 AND job_name > ?4
                 ORDER BY job_name LIMIT ?5"
            }
            (true, true) => {
                "SELECT job_name FROM job_stats WHERE tenant_id = ?1
                 AND job_name >= ?2 AND job_name < ?3 AND job_name < ?4
                 ORDER BY job_name DESC LIMIT ?5"
            }
        };
        let tenant = tenant.to_string();
        self.with_snapshot(|tx| {
            let mut stmt = tx.prepare_cached(sql)?;
            let rows = stmt.query_map(
                params![tenant, lower, upper, after.unwrap_or(""), limit],
                |r| r.get(0),
            )?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// The per-job metrics' figures of the first `limit` jobs by job id (the order jobs were
    /// first seen in the stream: the same on every replica, and a job keeps its place), and
    /// how many jobs there are in all: one pass over `job_stats`, nothing from the history.
    pub fn job_metrics(&self, limit: usize) -> Result<(Vec<JobMetricsRow>, u64), StoreError> {
        self.with_snapshot(|tx| {
            let total: i64 = tx
                .prepare_cached("SELECT COUNT(*) FROM job_stats")?
                .query_row([], |r| r.get(0))?;
            let mut stmt = tx.prepare_cached(
                "SELECT tenant_id, job_name, completed, failed, processing, last_finished_at,
                        last_finished_failed, last_finished_duration_ms, run_failed,
                        run_boundary_at, schedule_cron, duration_sum_ms, duration_count,
                        duration_sketch, schedule_timezone
                 FROM job_stats ORDER BY job_id LIMIT ?1",
            )?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = stmt.query_map([limit], |r| {
                let last_finished = match r.get::<_, Option<i64>>(5)? {
                    Some(at) => Some((at, r.get::<_, Option<bool>>(6)?.unwrap_or(false))),
                    None => None,
                };
                let run = match r.get::<_, Option<bool>>(8)? {
                    Some(failed) => Some((failed, r.get::<_, Option<i64>>(9)?)),
                    None => None,
                };
                let sketch = r.get_ref(13)?.as_blob_or_null()?;
                let durations = crate::projection::sketch::DurationSketch::decode_optional(sketch)
                    .map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(
                            13,
                            rusqlite::types::Type::Blob,
                            Box::new(e),
                        )
                    })?;
                Ok(JobMetricsRow {
                    tenant: r.get(0)?,
                    job: r.get(1)?,
                    completed: r.get(2)?,
                    failed: r.get(3)?,
                    processing: r.get(4)?,
                    last_finished_at: last_finished.map(|(at, _)| at),
                    last_duration_ms: r.get(7)?,
                    last_success_at: crate::projection::last_success_at(last_finished, run),
                    cron: r.get(10)?,
                    timezone: r.get(14)?,
                    duration_sum_ms: r.get::<_, super::WideInt>(11)?.0,
                    duration_count: r.get(12)?,
                    duration_quantiles: durations.quantiles(JOB_METRICS_QUANTILES),
                })
            })?;
            let rows = rows.collect::<Result<Vec<_>, _>>()?;
            Ok((rows, total.max(0) as u64))
        })
    }

    /// Has any event been seen for this job? (A ping for a job never seen is refused.)
    pub fn job_exists(&self, tenant: &TenantId, job: &str) -> Result<bool, StoreError> {
        let tenant = tenant.to_string();
        self.with_snapshot(|tx| {
            Ok(tx
                .prepare_cached("SELECT 1 FROM job_stats WHERE tenant_id = ?1 AND job_name = ?2")?
                .exists(rusqlite::params![tenant, job])?)
        })
    }

    /// Has a start been applied for this execution?
    pub fn execution_started(
        &self,
        tenant: &TenantId,
        job: &str,
        execution_id: &str,
    ) -> Result<bool, StoreError> {
        let tenant = tenant.to_string();
        self.with_snapshot(|tx| {
            Ok(tx
                .prepare_cached(
                    "SELECT 1 FROM executions e JOIN job_stats j ON j.job_id = e.job_id
                     WHERE j.tenant_id = ?1 AND j.job_name = ?2 AND e.execution_id = ?3
                       AND e.started_at IS NOT NULL",
                )?
                .exists(rusqlite::params![tenant, job, execution_id])?)
        })
    }

    /// The id of the job's most recently started execution that is still processing and
    /// started at or after `since_ms`: what a ping without `rid` ends (CONTRACT §10).
    pub fn latest_unfinished_start(
        &self,
        tenant: &TenantId,
        job: &str,
        since_ms: i64,
    ) -> Result<Option<(String, i64)>, StoreError> {
        let tenant = tenant.to_string();
        self.with_snapshot(|tx| {
            use rusqlite::OptionalExtension;
            Ok(tx
                .prepare_cached(
                    "SELECT e.execution_id, e.started_at FROM executions e
                     JOIN job_stats j ON j.job_id = e.job_id
                     WHERE j.tenant_id = ?1 AND j.job_name = ?2 AND e.state = 1
                       AND e.started_at >= ?3
                     ORDER BY e.started_at DESC, e.execution_id DESC LIMIT 1",
                )?
                .query_row(rusqlite::params![tenant, job, since_ms], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?)
        })
    }

    /// Every job of every tenant (for counts across the whole read model: O(jobs)).
    pub fn all_jobs(&self) -> Result<Vec<(TenantId, JobName)>, StoreError> {
        self.with_snapshot(|tx| {
            let mut stmt = tx.prepare_cached("SELECT tenant_id, job_name FROM job_stats")?;
            let rows =
                stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            let mut jobs = Vec::new();
            for row in rows {
                let (tenant, job) = row?;
                // Only valid names are ever written; a row that is not is skipped, not fatal.
                if let (Ok(tenant), Ok(job)) = (TenantId::parse(&tenant), JobName::parse(&job)) {
                    jobs.push((tenant, job));
                }
            }
            Ok(jobs)
        })
    }

    /// How many of the tenant's jobs start with `prefix` (a count over an index range).
    pub fn count_jobs(&self, tenant: &TenantId, prefix: &str) -> Result<u64, StoreError> {
        let (upper, lower) = prefix_range(prefix);
        let tenant = tenant.to_string();
        self.with_snapshot(|tx| {
            Ok(tx
                .prepare_cached(
                    "SELECT COUNT(*) FROM job_stats
                     WHERE tenant_id = ?1 AND job_name >= ?2 AND job_name < ?3",
                )?
                .query_row(params![tenant, lower, upper], |r| r.get::<_, i64>(0))?
                as u64)
        })
    }

    /// One page of a job's executions, newest first by start time (enqueue time while not
    /// started), as the order stood at stream position `query.as_of` (default: this read's
    /// checkpoint): a pending execution that starts later moves to the front of the live
    /// order, but pages after the first keep the first page's position, so every execution
    /// present then is read exactly once. A keyset range over the recency index for the rows
    /// whose place has not changed since, plus the few that have (their place then comes from
    /// the sequences that set their times); `None` when the job is unknown.
    pub fn executions_page(
        &self,
        tenant: &TenantId,
        job: &JobName,
        query: &ExecutionsQuery,
    ) -> Result<Option<ExecutionsPage>, StoreError> {
        let mut sql = format!(
            "SELECT execution_id, {EXECUTION_COLUMNS}, {TIME_SEQUENCE_COLUMNS} FROM executions
             WHERE job_id = ?1 AND recency_seq <= ?7"
        );
        if query.from.is_some() {
            sql.push_str(" AND recency_key >= ?2");
        }
        if query.to.is_some() {
            sql.push_str(" AND recency_key <= ?3");
        }
        if query.after.is_some() {
            sql.push_str(" AND (recency_key, execution_id) < (?4, ?5)");
        }
        if !query.states.is_empty() {
            // The state at the position: these rows' starts (if any) were applied by then,
            // their finishes maybe not.
            let codes: Vec<String> = query.states.iter().map(|s| s.code().to_string()).collect();
            sql.push_str(&format!(
                " AND (CASE WHEN finished_at IS NOT NULL AND COALESCE(finished_seq, 0) <= ?7 \
                 THEN state WHEN started THEN 1 ELSE 0 END) IN ({})",
                codes.join(",")
            ));
        }
        sql.push_str(" ORDER BY recency_key DESC, execution_id DESC LIMIT ?6");
        let tenant = tenant.to_string();
        self.with_snapshot(|tx| {
            let Some((job_id, _, _)) = read_job_stats(tx, &tenant, job.as_str())? else {
                return Ok(None);
            };
            let checkpoint: i64 = tx.query_row(
                "SELECT last_sequence FROM checkpoint WHERE id = 1",
                [],
                |r| r.get(0),
            )?;
            let position = query.as_of.unwrap_or(checkpoint.max(0) as u64);
            let mut stmt = tx.prepare_cached(&sql)?;
            let (after_key, after_id) = query.after.clone().unzip();
            let unmoved = stmt.query_map(
                params![
                    job_id,
                    query.from,
                    query.to,
                    after_key,
                    after_id,
                    query.limit,
                    position as i64
                ],
                sequenced_execution_row,
            )?;
            let mut rows = Vec::new();
            for row in unmoved {
                let (execution_id, columns, _) = row?;
                let row = super::execution_from_columns(columns)?;
                let key = row.recency_key();
                rows.push((ExecutionSummary { execution_id, row }, key));
            }
            rows.extend(moved_since(tx, job_id, position, query)?);
            rows.sort_by(|(a, ka), (b, kb)| (kb, &b.execution_id).cmp(&(ka, &a.execution_id)));
            rows.truncate(query.limit as usize);
            Ok(Some(ExecutionsPage { rows, position }))
        })
    }

    /// One execution of a job with its output, and the job's version (the last sequence that
    /// changed it); `None` when the job or the execution is unknown (told apart by the
    /// `bool`: whether the job exists).
    pub fn execution(
        &self,
        tenant: &TenantId,
        job: &JobName,
        execution_id: &str,
    ) -> Result<(bool, Option<(ExecutionSummary, u64)>), StoreError> {
        let tenant = tenant.to_string();
        self.with_snapshot(|tx| {
            let Some((job_id, _, job_sequence)) = read_job_stats(tx, &tenant, job.as_str())? else {
                return Ok((false, None));
            };
            let columns = tx
                .prepare_cached(&format!(
                    "SELECT {EXECUTION_COLUMNS}, o.output FROM executions e
                     LEFT JOIN execution_outputs o USING (job_id, execution_id)
                     WHERE e.job_id = ?1 AND e.execution_id = ?2"
                ))?
                .query_row(params![job_id, execution_id], |r| {
                    Ok((
                        super::execution_columns(r, 0)?,
                        r.get::<_, Option<String>>(super::EXECUTION_COLUMN_COUNT)?,
                    ))
                })
                .optional()?;
            let Some((columns, output)) = columns else {
                return Ok((true, None));
            };
            let mut row = super::execution_from_columns(columns)?;
            row.output = output;
            Ok((
                true,
                Some((
                    ExecutionSummary {
                        execution_id: execution_id.to_owned(),
                        row,
                    },
                    job_sequence,
                )),
            ))
        })
    }

    /// Every execution of `query` (its `after`, `as_of` and `limit` ignored), newest first,
    /// handed to `sink` one at a time from one snapshot of the file, so the whole export is
    /// consistent and memory stays constant however many there are. `sink` returns false to
    /// stop (the client went away). `None`: no such job.
    pub fn export_executions(
        &self,
        tenant: &TenantId,
        job: &JobName,
        query: &ExecutionsQuery,
        mut sink: impl FnMut(ExecutionSummary) -> bool,
    ) -> Result<Option<u64>, StoreError> {
        let mut sql = format!(
            "SELECT execution_id, {EXECUTION_COLUMNS} FROM executions WHERE job_id = ?1
             AND (?2 IS NULL OR recency_key >= ?2) AND (?3 IS NULL OR recency_key <= ?3)"
        );
        if !query.states.is_empty() {
            let codes: Vec<String> = query.states.iter().map(|s| s.code().to_string()).collect();
            sql.push_str(&format!(" AND state IN ({})", codes.join(",")));
        }
        sql.push_str(" ORDER BY recency_key DESC, execution_id DESC");
        let tenant = tenant.to_string();
        self.with_snapshot(|tx| {
            let Some((job_id, _, _)) = read_job_stats(tx, &tenant, job.as_str())? else {
                return Ok(None);
            };
            let mut stmt = tx.prepare(&sql)?;
            let rows = stmt.query_map(params![job_id, query.from, query.to], |r| {
                Ok((r.get::<_, String>(0)?, super::execution_columns(r, 1)?))
            })?;
            let mut sent = 0;
            for row in rows {
                let (execution_id, columns) = row?;
                let row = super::execution_from_columns(columns)?;
                if !sink(ExecutionSummary { execution_id, row }) {
                    break;
                }
                sent += 1;
            }
            Ok(Some(sent))
        })
    }

    /// Every table's rows, in key order, as text: for comparing two builds of the read model.
    pub fn dump(&self) -> Result<Vec<String>, StoreError> {
        self.with_snapshot(|tx| {
            let mut lines = Vec::new();
            // Rows are named by tenant and job, not by the job ids a build assigned.
            for (table, query) in [
                (
                    "job_stats",
                    "SELECT * FROM job_stats ORDER BY tenant_id, job_name",
                ),
                (
                    "executions",
                    "SELECT j.tenant_id, j.job_name, e.execution_id, e.state, e.enqueued_at,
                            e.started_at, e.finished_at, e.items_processed, e.error, e.recency_key,
                            e.exit_code
                     FROM executions e JOIN job_stats j USING (job_id)
                     ORDER BY j.tenant_id, j.job_name, e.execution_id",
                ),
                (
                    "execution_outputs",
                    "SELECT j.tenant_id, j.job_name, o.execution_id, o.output
                     FROM execution_outputs o JOIN job_stats j USING (job_id)
                     ORDER BY j.tenant_id, j.job_name, o.execution_id",
                ),
                (
                    "dead_letters",
                    "SELECT * FROM dead_letters ORDER BY sequence",
                ),
            ] {
                let mut stmt = tx.prepare(query)?;
                let columns = stmt.column_count();
                let mut rows = stmt.query([])?;
                while let Some(row) = rows.next()? {
                    let mut line = format!("{table}:");
                    for i in 0..columns {
                        let value: rusqlite::types::Value = row.get(i)?;
                        line.push_str(&format!(" {value:?}"));
                    }
                    lines.push(line);
                }
            }
            Ok(lines)
        })
    }

    /// One job's rollup buckets of `granularity` with starts in `from..=last`, in time order
    /// (only buckets that hold finishes): the dashboard's series.
    pub fn series(
        &self,
        job_id: i64,
        granularity: crate::projection::rollup::Granularity,
        from: i64,
        last: i64,
    ) -> Result<Vec<(i64, RollupBucket)>, StoreError> {
        self.with_snapshot(|tx| {
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT bucket_start, {} FROM rollups
                 WHERE job_id = ?1 AND granularity = ?2 AND bucket_start BETWEEN ?3 AND ?4
                 ORDER BY bucket_start",
                super::ROLLUP_COLUMNS
            ))?;
            let rows = stmt.query_map(params![job_id, granularity.code(), from, last], |r| {
                Ok((r.get(0)?, super::rollup_from_row_at(r, 1)?))
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Every tenant with at least one job, and how many jobs it has.
    pub fn tenants(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.with_snapshot(|tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT tenant_id, count(*) FROM job_stats GROUP BY tenant_id ORDER BY tenant_id",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Dead letters by reason code, most frequent first.
    pub fn dead_letter_reasons(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.with_snapshot(|tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT reason_code, count(*) AS n FROM dead_letters GROUP BY reason_code
                 ORDER BY n DESC, reason_code",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Dead letters newest first, before stream sequence `before` (a keyset page), of one
    /// reason code when given.
    pub fn dead_letters_page(
        &self,
        reason_code: Option<&str>,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        self.with_snapshot(|tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT sequence, subject, reason_code, reason, payload_bytes, published_at_ms
                 FROM dead_letters
                 WHERE sequence < ?1 AND (?2 IS NULL OR reason_code = ?2)
                 ORDER BY sequence DESC LIMIT ?3",
            )?;
            let before = before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
            let rows = stmt.query_map(params![before, reason_code, limit], dead_letter_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Dead letters, oldest first, after `after_sequence`.
    pub fn dead_letters(
        &self,
        after_sequence: u64,
        limit: u32,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        self.with_snapshot(|tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT sequence, subject, reason_code, reason, payload_bytes, published_at_ms
                 FROM dead_letters WHERE sequence > ?1 ORDER BY sequence LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after_sequence as i64, limit], dead_letter_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }
}

/// A row of `sequence, subject, reason_code, reason, payload_bytes, published_at_ms`.
fn dead_letter_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeadLetter> {
    Ok(DeadLetter {
        sequence: r.get::<_, i64>(0)? as u64,
        subject: r.get(1)?,
        reason_code: r.get(2)?,
        reason: r.get(3)?,
        payload_bytes: r.get::<_, i64>(4)? as u64,
        published_at_ms: r.get(5)?,
    })
}

/// `execution_id` then [`super::EXECUTION_COLUMNS`], as read.
type ExecutionRow = (String, super::ExecutionColumns);

fn execution_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ExecutionRow> {
    Ok((r.get(0)?, super::execution_columns(r, 1)?))
}

fn summary_from_row((execution_id, columns): ExecutionRow) -> Result<ExecutionSummary, StoreError> {
    Ok(ExecutionSummary {
        execution_id,
        row: super::execution_from_columns(columns)?,
    })
}

/// The executions of `job_id` whose place in the order changed after `position`, placed
/// where they stood then and kept when the page's filters and cursor take them there.
fn moved_since(
    tx: &rusqlite::Transaction<'_>,
    job_id: i64,
    position: u64,
    query: &ExecutionsQuery,
) -> Result<Vec<(ExecutionSummary, i64)>, StoreError> {
    let mut moved = tx.prepare_cached(&format!(
        "SELECT execution_id, {EXECUTION_COLUMNS}, {TIME_SEQUENCE_COLUMNS} FROM executions
         WHERE job_id = ?1 AND recency_seq > ?2"
    ))?;
    let mut rows = Vec::new();
    for row in moved.query_map(params![job_id, position as i64], sequenced_execution_row)? {
        let (execution_id, columns, sequences) = row?;
        let row = super::execution_from_columns(columns)?;
        let Some(key) = sequences.recency_key_at(&row, position) else {
            continue;
        };
        let wanted = query.from.is_none_or(|from| key >= from)
            && query.to.is_none_or(|to| key <= to)
            && query
                .after
                .as_ref()
                .is_none_or(|(k, id)| (key, execution_id.as_str()) < (*k, id.as_str()))
            && (query.states.is_empty()
                || query.states.contains(&sequences.state_at(&row, position)));
        if wanted {
            rows.push((ExecutionSummary { execution_id, row }, key));
        }
    }
    Ok(rows)
}

/// A page of executions, each with its place in the order (its recency key at `position`).
#[derive(Debug, Clone)]
pub struct ExecutionsPage {
    pub rows: Vec<(ExecutionSummary, i64)>,
    /// The stream position the order is that of: pass it on as the next page's `as_of`.
    pub position: u64,
}

fn sequenced_execution_row(
    r: &rusqlite::Row<'_>,
) -> rusqlite::Result<(String, super::ExecutionColumns, super::TimeSequences)> {
    Ok((
        r.get(0)?,
        super::execution_columns(r, 1)?,
        super::time_sequences(r, 1 + super::EXECUTION_COLUMN_COUNT)?,
    ))
}

/// Which executions a page holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecutionsQuery {
    /// Empty: every state.
    pub states: Vec<ExecutionState>,
    /// On the start time (enqueue time while not started), inclusive, ms.
    pub from: Option<i64>,
    pub to: Option<i64>,
    /// The last (time, id) of the previous page.
    pub after: Option<(i64, String)>,
    /// The stream position the first page was read at (`None`: this is the first).
    pub as_of: Option<u64>,
    pub limit: u32,
}

/// The name range of a prefix: job names are ASCII below DEL, so every name starting with
/// `prefix` sorts before `prefix` + DEL.
fn prefix_range(prefix: &str) -> (String, &str) {
    (format!("{prefix}\u{7f}"), prefix)
}

/// A recorded dead letter (without its payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub sequence: u64,
    pub subject: String,
    pub reason_code: String,
    pub reason: String,
    pub payload_bytes: u64,
    /// When JetStream stored it (absent in files written before it was recorded).
    pub published_at_ms: Option<i64>,
}

fn read_freshness(tx: &rusqlite::Transaction<'_>) -> Result<Freshness, StoreError> {
    Ok(tx
        .prepare_cached(
            "SELECT last_sequence, events_applied, dead_letters, committed_at_ms,
                    last_published_at_ms
             FROM checkpoint WHERE id = 1",
        )?
        .query_row([], |r| {
            Ok(Freshness {
                last_sequence: r.get::<_, i64>(0)? as u64,
                events_applied: r.get::<_, i64>(1)? as u64,
                dead_letters: r.get::<_, i64>(2)? as u64,
                committed_at_ms: r.get(3)?,
                last_published_at_ms: r.get(4)?,
            })
        })?)
}

/// A job's start times from `?2` on, oldest first: one range of the recency index, which
/// says whether each execution started (migration 0004), so the executions table is never
/// visited. A started execution's recency key is its start time.
const STARTS_SINCE_SQL: &str = "SELECT recency_key FROM executions
     WHERE job_id = ?1 AND recency_key >= ?2 AND started
     ORDER BY recency_key, execution_id LIMIT ?3";

/// The start times and processing executions health may look at from any instant this
/// snapshot can be judged at (from the last applied event's publish time up to now), so a
/// cached snapshot serves every later request. Both are index ranges bounded by time.
fn read_health_data(
    tx: &rusqlite::Transaction<'_>,
    job_id: i64,
    stats: &JobStats,
    cron: Option<&crate::schedule::CronSchedule>,
    freshness: &Freshness,
    fires: &FiresCache,
) -> Result<HealthData, StoreError> {
    let now = chrono::Utc::now().timestamp_millis();
    let earliest_judged = freshness.last_published_at_ms.unwrap_or(now).min(now);
    let mut data = HealthData::default();
    // The grace in force can differ a little between instants: an hour of margin covers the
    // default's range.
    if let Some(from) = health::starts_needed_from(stats, cron, earliest_judged) {
        data.starts_from = from - 3_600_000;
        let mut stmt = tx.prepare_cached(STARTS_SINCE_SQL)?;
        let rows = stmt.query_map(params![job_id, data.starts_from, MAX_STARTS], |r| r.get(0))?;
        data.starts = rows.collect::<Result<_, _>>()?;
    }
    data.fires = cron.map(|c| fires.for_judging(c, earliest_judged, now));
    if stats.processing > 0 {
        let mut stmt = tx.prepare_cached(
            "SELECT started_at, execution_id FROM executions
             WHERE job_id = ?1 AND state = 1
             ORDER BY started_at, execution_id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![job_id, health::MAX_STUCK_IDS as i64 + 1], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        data.processing = rows.collect::<Result<_, _>>()?;
    }
    Ok(data)
}

/// A job's id, aggregates and the last sequence that changed it.
fn read_job_stats(
    tx: &rusqlite::Transaction<'_>,
    tenant: &str,
    job: &str,
) -> Result<Option<(i64, JobStats, u64)>, StoreError> {
    Ok(tx
        .prepare_cached(&format!(
            "SELECT {JOB_STATS_COLUMNS}, job_id, last_sequence FROM job_stats
             WHERE tenant_id = ?1 AND job_name = ?2"
        ))?
        .query_row(params![tenant, job], |r| {
            Ok((
                r.get(JOB_STATS_COLUMN_COUNT)?,
                job_stats_from_row(r)?,
                r.get::<_, i64>(JOB_STATS_COLUMN_COUNT + 1)?.max(0) as u64,
            ))
        })
        .optional()?)
}

/// The pool the API reads from now. A rebuild swaps in a pool on the new generation; requests
/// already holding the old one finish on it.
pub struct CurrentReader {
    pool: std::sync::RwLock<std::sync::Arc<ReadPool>>,
}

impl CurrentReader {
    pub fn new(pool: ReadPool) -> Self {
        CurrentReader {
            pool: std::sync::RwLock::new(std::sync::Arc::new(pool)),
        }
    }

    pub fn get(&self) -> std::sync::Arc<ReadPool> {
        self.pool.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Installs `pool`, returning the one it replaces.
    pub fn replace(&self, pool: ReadPool) -> std::sync::Arc<ReadPool> {
        let mut current = self.pool.write().unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *current, std::sync::Arc::new(pool))
    }
}

#[cfg(test)]
mod tests {
    use super::STARTS_SINCE_SQL;
    use crate::projection::rollup::Window;
    use crate::publish::{EventBuilder, RunEnd};
    use crate::store::{IncomingMessage, ReadPool, Writer};
    use chrono::{DateTime, Duration, TimeZone, Utc};

    /// Applies one completed run per finish time, each as its own batch.
    fn finish_runs(writer: &mut Writer, sequence: &mut u64, finishes: &[DateTime<Utc>]) {
        for finish in finishes {
            *sequence += 1;
            let run = EventBuilder::new("3f0c7f7e-8a51-4a52-9f7e-0d6a4c1b2e11", "nightly")
                .and_then(|b| b.execution(&format!("run-{sequence}")))
                .and_then(|b| {
                    b.run(
                        *finish - Duration::seconds(*sequence as i64 * 7),
                        None,
                        Duration::seconds(*sequence as i64 * 7),
                        RunEnd::Completed { items: None },
                    )
                })
                .unwrap();
            let encoded: Vec<(String, Vec<u8>)> =
                run.iter().map(|e| (e.subject(), e.to_bytes())).collect();
            let first = *sequence * 10;
            let messages: Vec<IncomingMessage<'_>> = encoded
                .iter()
                .enumerate()
                .map(|(i, (subject, payload))| IncomingMessage {
                    sequence: first + i as u64,
                    subject,
                    payload,
                    published_at_ms: Some(finish.timestamp_millis()),
                })
                .collect();
            writer.apply_batch(&messages).unwrap();
        }
    }

    /// Merged closed hours are reused only while no finish lands in them: a late finish, a
    /// finish in the open hour and a finish that opens a new hour all read like no cache.
    #[test]
    fn a_window_reusing_closed_hours_reads_like_one_without_cache() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("windows.db");
        let (mut writer, _) = Writer::open(&db).unwrap();
        let pool = ReadPool::open(&db).unwrap();
        let now = Utc.with_ymd_and_hms(2026, 3, 10, 12, 30, 0).unwrap();
        let hours = |h: i64| now - Duration::hours(h);
        let mut sequence = 0;
        finish_runs(
            &mut writer,
            &mut sequence,
            &[hours(50), hours(10), hours(5), now],
        );
        let ranges = [Window::Day, Window::Week, Window::Month]
            .map(|w| w.buckets((now + Duration::minutes(5)).timestamp_millis()));
        let check = |expected_runs: [i64; 3]| {
            for (range, runs) in ranges.iter().zip(expected_runs) {
                let reused = pool.read_window_reusing_closed_hours(1, *range).unwrap();
                assert_eq!(reused, pool.read_window(1, *range).unwrap(), "{range:?}");
                assert_eq!(reused.1.completed, runs, "{range:?}");
            }
        };
        check([3, 4, 4]);
        // Late, into a closed hour of every window.
        finish_runs(&mut writer, &mut sequence, &[hours(3)]);
        check([4, 5, 5]);
        // Into the open hour, and one hour on (the closed hours grow).
        finish_runs(&mut writer, &mut sequence, &[now + Duration::minutes(1)]);
        check([5, 6, 6]);
        finish_runs(&mut writer, &mut sequence, &[now + Duration::minutes(3)]);
        check([6, 7, 7]);
        // Late again, now behind two newer hours.
        finish_runs(&mut writer, &mut sequence, &[hours(20)]);
        check([7, 8, 8]);
    }

    /// The health read's cost must follow the judged window, not the history: a plan that
    /// visits the table pays one scattered page per start once the history is large.
    #[test]
    fn the_start_times_of_a_window_are_read_from_the_index_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, _) = super::super::Writer::open(&dir.path().join("plan.db")).unwrap();
        drop(writer);
        let conn = rusqlite::Connection::open(dir.path().join("plan.db")).unwrap();
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {STARTS_SINCE_SQL}"))
            .unwrap()
            .query_map(rusqlite::params![1, 0, 10], |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            plan,
            ["SEARCH executions USING COVERING INDEX executions_by_recency (job_id=? AND recency_key>?)"],
        );
    }
}
