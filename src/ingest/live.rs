//! The live projector: the ingest path fed by a durable JetStream pull consumer.
//!
//! fetch → decode → apply → one transaction (read model + dead letters + checkpoint) → ack.
//! Acks go out only after the commit (AckPolicy::All: one ack per batch), so a crash between
//! the two redelivers messages the checkpoint already covers, and they are skipped.
//!
//! Ordering is what makes the checkpoint safe: the consumer is (re)created to start exactly at
//! checkpoint + 1 whenever the projector starts or anything looks off — a missing delivery
//! (a gap in the consumer sequence, as after a reconnect), a stream error, a swapped database
//! generation — so no message is ever applied ahead of one that was lost in flight.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer},
    context::ConsumerInfoErrorKind,
    stream::{LastRawMessageErrorKind, Stream},
};
use futures::StreamExt;
use tokio::sync::watch;

use super::{commit_batches, Batcher, IngestError, Position, Received, SharedWriter, StreamPoint};
use crate::metrics::{Metrics, ProjectorStatus, ReasonLabel};
use crate::scope::TenantScope;
use crate::store::{self, generation, BatchOutcome, CurrentReader, ReadPool, StoreError, Writer};
use crate::stream::{ensure_stream, NatsError, StreamSpec};

/// How the projector is set up.
#[derive(Debug, Clone)]
pub struct ProjectorConfig {
    pub stream: StreamSpec,
    /// Durable consumer name; each read replica uses its own.
    pub consumer: String,
    /// The configured database path (plain file or generation symlink).
    pub db_path: PathBuf,
    /// The tenants projected (`JOBSTATS_TENANTS`); the others' events are passed over.
    pub scope: TenantScope,
    /// Most messages per transaction.
    pub batch_size: usize,
    /// How long a batch waits for the next message before it commits.
    pub linger: Duration,
}

impl ProjectorConfig {
    pub fn new(stream: StreamSpec, consumer: &str, db_path: PathBuf, scope: TenantScope) -> Self {
        ProjectorConfig {
            stream,
            consumer: consumer.to_owned(),
            db_path,
            scope,
            batch_size: 40_000,
            linger: Duration::from_millis(5),
        }
    }
}

/// What the projector shares with the HTTP side.
#[derive(Clone)]
pub struct ProjectorHandles {
    pub status: Arc<ProjectorStatus>,
    pub metrics: Arc<Metrics>,
    pub readers: Arc<CurrentReader>,
    /// The checkpoint after each commit (read-your-writes waits on it).
    pub applied: watch::Sender<u64>,
    /// Where the jobs each commit changed go, for the health evaluator.
    pub touched: Option<Arc<super::touched::TouchedJobs>>,
}

/// What waiting for a delivery gave.
#[expect(
    clippy::large_enum_variant,
    reason = "moved once per delivery, never stored; boxing would allocate per message"
)]
enum Next {
    Message(jetstream::Message),
    /// Nothing to process yet (a linger): wait again.
    Continue,
    /// The consumer's idle heartbeat did not come.
    MissedHeartbeat,
    /// Nothing delivered for a while and nothing in hand.
    Idle,
    End(Result<SessionEnd, ProjectorError>),
}

/// Why a consuming session ended.
enum SessionEnd {
    Shutdown,
    /// Recreate the consumer at checkpoint + 1 and go on.
    Resync(&'static str),
}

/// Failures inside a session; all are retried after a pause.
#[derive(Debug, thiserror::Error)]
enum ProjectorError {
    #[error(transparent)]
    Nats(#[from] NatsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error("writer task failed: {0}")]
    Writer(#[from] tokio::task::JoinError),
}

impl ProjectorError {
    /// What may be said of it where anyone can read (the API port's `/readyz`): the kind of
    /// failure in fixed words, never its text, which can hold paths and server details.
    fn summary(&self) -> &'static str {
        match self {
            ProjectorError::Nats(_) => "NATS or the stream is unavailable",
            ProjectorError::Store(error) | ProjectorError::Ingest(IngestError::Store(error)) => {
                error.summary()
            }
            ProjectorError::Ingest(IngestError::Writer(_)) | ProjectorError::Writer(_) => {
                "the database writer failed"
            }
        }
    }
}

/// The idle heartbeat asked of the consumer.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// Consecutive missed idle heartbeats after which a connected projector replaces
/// its consumer.
const MISSED_HEARTBEATS_BEFORE_RESYNC: u32 = 3;

/// Runs until `shutdown` resolves; then commits the batch in hand and returns.
pub async fn run(
    client: async_nats::Client,
    config: ProjectorConfig,
    mut writer: Writer,
    handles: ProjectorHandles,
    shutdown: impl Future<Output = ()>,
) {
    writer.set_scope(config.scope.clone());
    if let Some(tenants) = config.scope.tenants() {
        tracing::info!(
            ?tenants,
            "tenant shard: a message whose subject names no tenant is recorded as a dead letter \
             only by replicas without JOBSTATS_TENANTS"
        );
    }
    let mut projector = Projector {
        js: jetstream::new(client.clone()),
        client,
        config,
        writer: Arc::new(Mutex::new(writer)),
        handles,
    };
    tokio::pin!(shutdown);
    let mut supervisor = crate::retry::Supervisor::new("projector");
    loop {
        projector.report_connection();
        let began = std::time::Instant::now();
        let outcome = tokio::select! {
            biased;
            outcome = projector.session(&mut shutdown) => outcome,
        };
        match outcome {
            Ok(SessionEnd::Shutdown) => break,
            Ok(SessionEnd::Resync(why)) => {
                supervisor.succeeded();
                tracing::info!(reason = why, "resynchronising the consumer");
            }
            Err(error) => {
                if began.elapsed() > crate::retry::LONG_SESSION {
                    supervisor.succeeded();
                }
                // Nothing past the checkpoint was acknowledged: the stream keeps it, reads go
                // on from the file, and /readyz says why the projection stands still until a
                // commit succeeds again (a full disk frees up, NATS returns).
                projector
                    .handles
                    .status
                    .record_error(&error.to_string(), error.summary());
                projector.handles.metrics.projector_errors.inc();
                let pause = supervisor.failed(&error, "session");
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
    tracing::info!(checkpoint = projector.checkpoint(), "projector stopped");
}

struct Projector {
    client: async_nats::Client,
    js: jetstream::Context,
    config: ProjectorConfig,
    writer: SharedWriter,
    handles: ProjectorHandles,
}

impl Projector {
    fn checkpoint(&self) -> u64 {
        self.writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .checkpoint()
    }

    fn mark_connected(&self) {
        let status = &self.handles.status;
        status.nats_connected.store(true, Ordering::Relaxed);
        status.disconnected_since_ms.store(0, Ordering::Relaxed);
    }

    fn report_connection(&self) {
        let connected = self.client.connection_state() == async_nats::connection::State::Connected;
        let status = &self.handles.status;
        status.nats_connected.store(connected, Ordering::Relaxed);
        if connected {
            status.disconnected_since_ms.store(0, Ordering::Relaxed);
        } else {
            let now = chrono::Utc::now().timestamp_millis();
            let _ = status.disconnected_since_ms.compare_exchange(
                0,
                now,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// One consumer lifetime: (re)create at checkpoint + 1, consume until told to stop or
    /// something requires a resync.
    async fn session(
        &mut self,
        shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    ) -> Result<SessionEnd, ProjectorError> {
        self.follow_generation_swap().await?;
        let mut stream = ensure_stream(&self.js, &self.config.stream).await?;
        let checkpoint = self.checkpoint();
        let subjects = self.consumer_subjects();
        let consumer = self
            .recreate_consumer(&mut stream, checkpoint, &subjects)
            .await?;
        let stream_head = crate::stream::last_sequence(&mut stream).await?;
        self.report_connection();
        self.report_progress(checkpoint, stream_head.saturating_sub(checkpoint));
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(self.config.batch_size.min(5_000))
            .heartbeat(HEARTBEAT)
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(|e| NatsError::Consumer(e.to_string()))?;

        // Reading and committing overlap: the reader keeps pulling while a batch commits.
        let (batcher, batches) = Batcher::new(self.config.batch_size);
        let busy = AtomicBool::new(false);
        let this = &*self;
        let committer = commit_batches(&self.writer, batches, &busy, |outcome, last| {
            this.committed(outcome, last)
        });
        // A consumer filtered by the server leaves gaps that only the stream can tell about.
        let gaps = (subjects != [crate::stream::SUBJECTS]).then_some(FilterGaps {
            stream: &stream,
            consumer: &consumer,
            subjects: &subjects,
        });
        let reader = self.read_batches(&mut messages, batcher, &busy, gaps, shutdown);
        let (end, committed) = tokio::join!(reader, committer);
        committed?;
        end
    }

    /// Reads messages into batches (full, or idle for `linger`) and hands them to the
    /// committer, until shutdown or until something requires a resync.
    async fn read_batches(
        &self,
        messages: &mut pull::Stream,
        mut batcher: Batcher,
        busy: &AtomicBool,
        gaps: Option<FilterGaps<'_>>,
        shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    ) -> Result<SessionEnd, ProjectorError> {
        let mut last_consumer_sequence: Option<u64> = None;
        let mut last_stream_sequence = 0;
        let mut quiet = HeartbeatStreak::default();
        let mut generation_check = tokio::time::interval(Duration::from_millis(500));
        generation_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let end = loop {
            let waited = self.next_message(
                messages,
                &mut batcher,
                busy,
                &mut generation_check,
                shutdown,
            );
            let message = match waited.await {
                Next::Message(message) => message,
                Next::Continue => continue,
                Next::MissedHeartbeat => {
                    let connected =
                        self.client.connection_state() == async_nats::connection::State::Connected;
                    // Connected, yet the consumer has gone quiet (its leader lost, its only
                    // peer gone): a new consumer from the checkpoint is the way on.
                    if quiet.missed(connected, std::time::Instant::now()) {
                        break Ok(SessionEnd::Resync(
                            "the consumer stopped sending heartbeats",
                        ));
                    }
                    continue;
                }
                Next::Idle => {
                    let Some(gaps) = &gaps else { continue };
                    let after = self.checkpoint().max(last_stream_sequence);
                    let read = last_consumer_sequence.unwrap_or(0);
                    match gaps.passed_over(after, read).await {
                        Ok(Some(point)) => {
                            if batcher.pass_over_to(point).await.is_err() {
                                return Ok(SessionEnd::Resync("the writer stopped"));
                            }
                        }
                        Ok(None) => {}
                        // Only the checkpoint's catching up with other tenants waits.
                        Err(e) => tracing::debug!(error = %e, "could not look past the filter"),
                    }
                    continue;
                }
                Next::End(end) => break end,
            };
            let position = match Position::of(&message) {
                Ok(position) => position,
                Err(e) => break Err(e.into()),
            };
            self.saw_delivery(&position);
            if last_consumer_sequence.is_some_and(|last| position.consumer_sequence != last + 1) {
                // A delivery went missing: applying this one would skip it for good.
                break Ok(SessionEnd::Resync("gap in consumer deliveries"));
            }
            last_consumer_sequence = Some(position.consumer_sequence);
            quiet = HeartbeatStreak::default();
            last_stream_sequence = position.stream_sequence;
            // Decoding here runs in parallel with the writer's commit of the previous batch.
            let received = Received::decode(&message, &position);
            if batcher.push(received, Some(message)).await.is_err() {
                return Ok(SessionEnd::Resync("the writer stopped"));
            }
        };
        // What was read before the end is still committed and acknowledged.
        if batcher.hand_over().await.is_err() {
            return Ok(SessionEnd::Resync("the writer stopped"));
        }
        end
    }

    /// Waits for the next delivery: with an empty batch as long as it takes (watching the
    /// connection and the database generation meanwhile), else for `linger`, after which an
    /// idle writer gets the batch in hand.
    async fn next_message(
        &self,
        messages: &mut pull::Stream,
        batcher: &mut Batcher,
        busy: &AtomicBool,
        generation_check: &mut tokio::time::Interval,
        shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    ) -> Next {
        let next = if batcher.is_empty() {
            tokio::select! {
                _ = &mut *shutdown => return Next::End(Ok(SessionEnd::Shutdown)),
                _ = generation_check.tick() => {
                    self.report_connection();
                    if batcher.writer_stopped() {
                        return Next::End(Ok(SessionEnd::Resync("the writer stopped")));
                    }
                    if self.generation_changed() {
                        return Next::End(Ok(SessionEnd::Resync("database generation swapped")));
                    }
                    return Next::Idle;
                }
                next = messages.next() => next,
            }
        } else {
            tokio::select! {
                _ = &mut *shutdown => return Next::End(Ok(SessionEnd::Shutdown)),
                next = tokio::time::timeout(self.config.linger, messages.next()) => match next {
                    Ok(next) => next,
                    Err(_elapsed) => {
                        let idle = !busy.load(Ordering::Relaxed) || batcher.writer_stopped();
                        if idle && batcher.hand_over().await.is_err() {
                            return Next::End(Ok(SessionEnd::Resync("the writer stopped")));
                        }
                        return Next::Continue;
                    }
                },
            }
        };
        match next {
            None => Next::End(Ok(SessionEnd::Resync("message stream ended"))),
            Some(Err(e)) if matches!(e.kind(), pull::MessagesErrorKind::MissingHeartbeat) => {
                self.report_connection();
                Next::MissedHeartbeat
            }
            Some(Err(e)) => Next::End(Err(NatsError::Messages(e.to_string()).into())),
            Some(Ok(message)) => Next::Message(message),
        }
    }

    /// A delivery proves the stream is reachable, whatever the last connection poll said:
    /// health must not stay `unknown` while events flow, nor judge past what is applied
    /// while more is on its way.
    fn saw_delivery(&self, position: &Position) {
        self.mark_connected();
        let status = &self.handles.status;
        status
            .delivered_sequence
            .fetch_max(position.stream_sequence, Ordering::Relaxed);
        status.lag.store(position.pending, Ordering::Relaxed);
    }

    /// The subjects the consumer asks for: a shard's tenants' alone, filtered by the server,
    /// when it can (one subject everywhere, several from 2.10); else every event, and the
    /// writer passes over the other tenants'.
    fn consumer_subjects(&self) -> Vec<String> {
        let subjects = self.config.scope.subjects();
        let version = self.client.server_info().version;
        if subjects.len() > 1 && !takes_several_filter_subjects(&version) {
            tracing::debug!(server = %version, "nats-server before 2.10: the shard filters its tenants itself");
            return vec![crate::stream::SUBJECTS.to_owned()];
        }
        subjects
    }

    /// Deletes and recreates the durable consumer so delivery starts right after `checkpoint`.
    async fn recreate_consumer(
        &self,
        stream: &mut Stream,
        checkpoint: u64,
        subjects: &[String],
    ) -> Result<PullConsumer, ProjectorError> {
        let name = &self.config.consumer;
        match stream.consumer_info(name).await {
            Ok(info) => {
                tracing::debug!(consumer = %name, ack_floor = info.ack_floor.stream_sequence, checkpoint, "replacing consumer");
                stream
                    .delete_consumer(name)
                    .await
                    .map_err(|e| NatsError::Consumer(e.to_string()))?;
            }
            Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => {}
            Err(info_error) => {
                // Info is answered by the consumer's own leader; deletion by the cluster's
                // meta leader. A replicated consumer whose group lost its leader (seen for
                // minutes after node failures on a starved host) answers 503 to the first
                // and still goes away on the second, and its replacement gets a new group.
                tracing::warn!(consumer = %name, error = %info_error, "consumer unavailable; replacing it");
                match stream.delete_consumer(name).await {
                    Ok(_) => {}
                    Err(e) if is_consumer_not_found(&e) => {}
                    Err(delete_error) => {
                        return Err(NatsError::Consumer(format!(
                            "{info_error}; deleting it: {delete_error}"
                        ))
                        .into())
                    }
                }
            }
        }
        let config = pull::Config {
            durable_name: Some(name.clone()),
            description: Some("jobstats projector (position kept in SQLite)".into()),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: checkpoint + 1,
            },
            ack_policy: AckPolicy::All,
            ack_wait: Duration::from_secs(60),
            max_deliver: -1,
            // The reader may hold one batch while two wait for the writer and one commits.
            max_ack_pending: (self.config.batch_size * 5) as i64,
            filter_subject: match subjects {
                [one] => one.clone(),
                _ => String::new(),
            },
            filter_subjects: match subjects {
                [_] => Vec::new(),
                several => several.to_vec(),
            },
            // Replicas named by host name (JOBSTATS_INSTANCE_ID's default) leave a consumer
            // behind when their host goes for good; the server removes it after a week idle.
            // A replica that comes back later recreates it from its checkpoint.
            inactive_threshold: Duration::from_secs(7 * 86_400),
            ..Default::default()
        };
        let consumer = stream
            .create_consumer(config)
            .await
            .map_err(|e| NatsError::Consumer(e.to_string()))?;
        Ok(consumer)
    }

    /// After a commit: acknowledges the batch, tells the readers which jobs changed, and
    /// publishes the new checkpoint.
    async fn committed(
        &self,
        outcome: BatchOutcome,
        last: Option<jetstream::Message>,
    ) -> Result<(), ProjectorError> {
        self.handles.status.clear_error();
        let mut lag = 0;
        if let Some(last) = last {
            // AckPolicy::All: this acknowledges every message up to it.
            if let Err(e) = last.ack().await {
                tracing::debug!(error = %e, "ack not sent; the messages will be redelivered and skipped");
            }
            lag = last.info().map(|i| i.pending).unwrap_or(0);
        }
        // Before the new checkpoint is published: readers must not serve these jobs from cache.
        self.handles
            .readers
            .get()
            .jobs_changed(&outcome.changed_jobs, outcome.last_sequence);
        if let Some(published) = outcome.last_published_at_ms {
            self.handles
                .status
                .last_published_at_ms
                .store(published, Ordering::Relaxed);
        }
        self.record(&outcome, lag);
        // After the checkpoint is out, so the evaluator finds the projection caught up.
        if let Some(touched) = &self.handles.touched {
            touched.add(&outcome.changed_jobs);
        }
        Ok(())
    }

    fn record(&self, outcome: &BatchOutcome, lag: u64) {
        let metrics = &self.handles.metrics;
        metrics.events_applied.inc_by(outcome.applied);
        for code in &outcome.dead_letter_codes {
            metrics
                .dead_letters
                .get_or_create(&ReasonLabel {
                    reason: (*code).to_owned(),
                })
                .inc();
            tracing::warn!(reason = code, "dead letter recorded");
        }
        metrics.batches_committed.inc();
        self.report_progress(outcome.last_sequence, lag);
    }

    fn report_progress(&self, checkpoint: u64, lag: u64) {
        let status = &self.handles.status;
        status.last_sequence.store(checkpoint, Ordering::Release);
        status.lag.store(lag, Ordering::Relaxed);
        if lag == 0 {
            status.caught_up.store(true, Ordering::Relaxed);
        }
        self.handles
            .metrics
            .last_applied_sequence
            .set(checkpoint as i64);
        self.handles.metrics.projector_lag.set(lag as i64);
        self.handles.applied.send_replace(checkpoint);
    }

    fn generation_changed(&self) -> bool {
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        store::resolve(&self.config.db_path) != writer.path()
    }

    /// If a rebuild swapped the database, moves the writer to the new generation, then the
    /// readers, and removes the old generation.
    async fn follow_generation_swap(&mut self) -> Result<(), ProjectorError> {
        if !self.generation_changed() {
            return Ok(());
        }
        let db_path = self.config.db_path.clone();
        let scope = self.config.scope.clone();
        let (writer, readers) = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let (mut writer, _version) = Writer::open(&db_path)?;
            writer.set_scope(scope);
            let readers = ReadPool::open(&db_path)?;
            Ok((writer, readers))
        })
        .await??;
        let new_path = writer.path().to_path_buf();
        let old_path = {
            let mut current = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            let old = current.path().to_path_buf();
            *current = writer;
            old
        };
        let old_readers = self.handles.readers.replace(readers);
        tracing::info!(from = %old_path.display(), to = %new_path.display(), checkpoint = self.checkpoint(), "switched to the rebuilt database");
        self.handles
            .status
            .caught_up
            .store(false, Ordering::Relaxed);
        // Requests still holding the old pool finish within their timeout; then delete it.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(old_readers);
            if store::resolve(&old_path) != new_path {
                generation::remove_database_files(&old_path);
            }
        });
        Ok(())
    }
}

/// What a shard's consumer, filtered by the server, needs to move its checkpoint past the
/// messages it never receives (the other tenants'): without that, a shard whose tenants are
/// quiet would stay at an older sequence than a full replica, and `appliedSequence`,
/// `lastEventAt`, read-your-writes and the stream clock behind health would disagree.
struct FilterGaps<'a> {
    stream: &'a Stream,
    consumer: &'a PullConsumer,
    subjects: &'a [String],
}

impl FilterGaps<'_> {
    /// The stream's last message, if nothing on the filter's subjects lies between `after`
    /// and it, and nothing the consumer delivered is still unread (`read`: the consumer
    /// sequence of the last message read). The stream questions go to the leader, the head
    /// first: a message of ours stored before that head is found by the second, wherever the
    /// consumer is; one delivered and then removed by the stream's limits is caught by the
    /// third.
    async fn passed_over(&self, after: u64, read: u64) -> Result<Option<StreamPoint>, NatsError> {
        let failed = |e: &dyn std::fmt::Display| NatsError::Stream {
            stream: self.stream.cached_info().config.name.clone(),
            message: format!("looking past the consumer's filter: {e}"),
        };
        let info = self.stream.get_info().await.map_err(|e| failed(&e))?;
        let head = info.state.last_sequence;
        if head <= after {
            return Ok(None);
        }
        for subject in self.subjects {
            let next = self
                .stream
                .raw_message_builder()
                .sequence(after + 1)
                .next_by_subject(subject.clone())
                .send()
                .await;
            match next {
                // Ours and not yet applied: the consumer delivers it.
                Ok(message) if message.sequence <= head => return Ok(None),
                Ok(_) => {}
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {}
                Err(e) => return Err(failed(&e)),
            }
        }
        let consumer = self.consumer.get_info().await.map_err(|e| failed(&e))?;
        if consumer.delivered.consumer_sequence != read {
            return Ok(None);
        }
        Ok(Some(StreamPoint {
            sequence: head,
            published_at_ms: (info.state.last_timestamp.unix_timestamp_nanos() / 1_000_000) as i64,
        }))
    }
}

/// Missed idle heartbeats in a row: each within a few heartbeats of the one before, with no
/// delivery between (a delivery starts over).
#[derive(Debug, Default)]
struct HeartbeatStreak {
    count: u32,
    last_miss: Option<std::time::Instant>,
}

impl HeartbeatStreak {
    /// Records a miss at `now`; true once the streak is long enough to replace the consumer.
    /// While disconnected, misses say nothing of the consumer (the client reconnects and
    /// heartbeats resume by themselves): they end the streak instead, so none counted before
    /// a reconnect carries over.
    fn missed(&mut self, connected: bool, now: std::time::Instant) -> bool {
        if !connected {
            *self = Self::default();
            return false;
        }
        let streak = self
            .last_miss
            .is_some_and(|at| now.saturating_duration_since(at) < HEARTBEAT * 4);
        self.count = if streak { self.count + 1 } else { 1 };
        self.last_miss = Some(now);
        tracing::debug!(missed_heartbeats = self.count, "missed a heartbeat");
        self.count >= MISSED_HEARTBEATS_BEFORE_RESYNC
    }
}

/// Whether a consumer error says it does not exist.
fn is_consumer_not_found(error: &async_nats::jetstream::stream::ConsumerError) -> bool {
    matches!(
        error.kind(),
        async_nats::jetstream::stream::ConsumerErrorKind::JetStream(e)
            if e.error_code() == async_nats::jetstream::ErrorCode::CONSUMER_NOT_FOUND
    )
}

/// Whether a nats-server of `version` (`2.10.4`) takes several filter subjects per consumer.
fn takes_several_filter_subjects(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (2, 10)
}

#[cfg(test)]
mod tests {
    use super::{takes_several_filter_subjects, HeartbeatStreak, HEARTBEAT};
    use std::time::Instant;

    #[test]
    fn only_three_misses_in_a_row_while_connected_replace_the_consumer() {
        let t0 = Instant::now();
        let at = |seconds: u64| t0 + std::time::Duration::from_secs(seconds);
        let mut quiet = HeartbeatStreak::default();
        assert!(!quiet.missed(true, at(0)));
        assert!(!quiet.missed(true, at(10)));
        assert!(
            quiet.missed(true, at(20)),
            "the third miss 10 s after the last"
        );

        // Misses far apart (a heartbeat came between) never add up.
        let mut quiet = HeartbeatStreak::default();
        for i in 0..10 {
            assert!(!quiet.missed(true, at(i * (HEARTBEAT.as_secs() * 4 + 1))));
        }

        // Misses while disconnected, then one after the reconnect: a new streak.
        let mut quiet = HeartbeatStreak::default();
        for i in 0..6 {
            assert!(!quiet.missed(false, at(i * 10)));
        }
        assert!(!quiet.missed(true, at(65)));
        assert!(!quiet.missed(true, at(75)));
        assert!(quiet.missed(true, at(85)));
    }

    #[test]
    fn several_filter_subjects_need_nats_server_2_10() {
        for version in ["2.10.0", "2.10.4-beta.1", "2.15.1", "3.0.0"] {
            assert!(takes_several_filter_subjects(version), "{version}");
        }
        for version in ["2.9.10", "2.2.0", "", "garbage"] {
            assert!(!takes_several_filter_subjects(version), "{version}");
        }
    }
}
