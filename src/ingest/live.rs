//! The projector: a durable JetStream pull consumer feeding the SQLite writer.
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
use std::ops::Not;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer},
    context::ConsumerInfoErrorKind,
    stream::Stream,
};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};

use crate::events::{self, DecodeError, Event};
use crate::metrics::{Metrics, ProjectorStatus, ReasonLabel};
use crate::store::{
    self, generation, BatchOutcome, CurrentReader, IncomingMessage, ReadPool, StoreError, Writer,
};
use crate::stream::{ensure_stream, NatsError};

/// How the projector is set up.
#[derive(Debug, Clone)]
pub struct ProjectorConfig {
    pub stream: String,
    /// Durable consumer name; each read replica uses its own.
    pub consumer: String,
    /// The configured database path (plain file or generation symlink).
    pub db_path: PathBuf,
    /// Most messages per transaction.
    pub batch_size: usize,
    /// How long a batch waits for the next message before it commits.
    pub linger: Duration,
}

impl ProjectorConfig {
    pub fn new(stream: &str, consumer: &str, db_path: PathBuf) -> Self {
        ProjectorConfig {
            stream: stream.to_owned(),
            consumer: consumer.to_owned(),
            db_path,
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
}

/// A message as the writer needs it, decoded by the reader. The reply subject, headers and
/// client handle of the `jetstream::Message` are dropped on arrival: with up to four batches
/// of 40k in memory they were a large part of the projector's peak memory.
struct Received {
    sequence: u64,
    published_at_ms: i64,
    decoded: Result<Event, DecodeError>,
    /// Subject and payload, kept only when the message is a dead letter (the writer stores
    /// them with the reason); an event needs neither once decoded.
    dead_letter: Option<(async_nats::Subject, bytes::Bytes)>,
}

/// Messages for one commit, and the last of them whole, to acknowledge them all with
/// (AckPolicy::All).
struct Batch {
    received: Vec<Received>,
    last: Option<jetstream::Message>,
}

impl Batch {
    fn with_capacity(capacity: usize) -> Self {
        Batch {
            received: Vec::with_capacity(capacity),
            last: None,
        }
    }

    fn is_empty(&self) -> bool {
        self.received.is_empty()
    }

    fn len(&self) -> usize {
        self.received.len()
    }
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
    #[error("writer task failed: {0}")]
    Writer(#[from] tokio::task::JoinError),
}

/// Runs until `shutdown` resolves; then commits the batch in hand and returns.
pub async fn run(
    client: async_nats::Client,
    config: ProjectorConfig,
    writer: Writer,
    handles: ProjectorHandles,
    shutdown: impl Future<Output = ()>,
) {
    let mut projector = Projector {
        js: jetstream::new(client.clone()),
        client,
        config,
        writer: Arc::new(Mutex::new(writer)),
        handles,
    };
    tokio::pin!(shutdown);
    let mut failures = 0u32;
    loop {
        projector.report_connection();
        let outcome = tokio::select! {
            biased;
            outcome = projector.session(&mut shutdown) => outcome,
        };
        match outcome {
            Ok(SessionEnd::Shutdown) => break,
            Ok(SessionEnd::Resync(why)) => {
                failures = 0;
                tracing::info!(reason = why, "resynchronising the consumer");
            }
            Err(error) => {
                failures += 1;
                // Nothing past the checkpoint was acknowledged: the stream keeps it, reads go
                // on from the file, and /readyz says why the projection stands still until a
                // commit succeeds again (a full disk frees up, NATS returns).
                projector.handles.status.record_error(&error.to_string());
                projector.handles.metrics.projector_errors.inc();
                let pause = Duration::from_millis((250 * 2u64.pow(failures.min(5))).min(5_000));
                tracing::warn!(%error, ?pause, "projector session failed; retrying");
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
    writer: Arc<Mutex<Writer>>,
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
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<SessionEnd, ProjectorError> {
        self.follow_generation_swap().await?;
        let mut stream = ensure_stream(&self.js, &self.config.stream).await?;
        let checkpoint = self.checkpoint();
        let consumer = self.recreate_consumer(&mut stream, checkpoint).await?;
        let stream_head = crate::stream::last_sequence(&mut stream).await?;
        self.report_connection();
        self.report_progress(checkpoint, stream_head.saturating_sub(checkpoint));
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(self.config.batch_size.min(5_000))
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(|e| NatsError::Consumer(e.to_string()))?;

        // Reading and committing overlap: the reader keeps pulling while the previous batch
        // commits. A bounded channel keeps at most two batches waiting for the writer.
        let (batches, mut to_commit) = mpsc::channel::<Batch>(2);
        let committing = std::sync::atomic::AtomicBool::new(false);
        let committer = async {
            while let Some(batch) = to_commit.recv().await {
                committing.store(true, Ordering::Relaxed);
                let committed = self.commit(batch).await;
                committing.store(to_commit.is_empty().not(), Ordering::Relaxed);
                if let Err(error) = committed {
                    // Dropping the receiver stops the reader; nothing past the checkpoint was acked.
                    drop(to_commit);
                    return Err(error);
                }
            }
            Ok(())
        };
        let reader = self.read_batches(&mut messages, batches, &committing, shutdown);
        let (end, committed) = tokio::join!(reader, committer);
        committed?;
        end
    }

    /// Reads messages into batches (full, or idle for `linger`) and hands them to the
    /// committer, until shutdown or until something requires a resync.
    async fn read_batches(
        &self,
        messages: &mut pull::Stream,
        batches: mpsc::Sender<Batch>,
        committing: &std::sync::atomic::AtomicBool,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<SessionEnd, ProjectorError> {
        let mut batch = Batch::with_capacity(self.config.batch_size);
        let mut last_consumer_sequence: Option<u64> = None;
        let mut generation_check = tokio::time::interval(Duration::from_millis(500));
        generation_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        macro_rules! hand_over {
            () => {
                if !batch.is_empty() {
                    let full =
                        std::mem::replace(&mut batch, Batch::with_capacity(self.config.batch_size));
                    if batches.send(full).await.is_err() {
                        return Ok(SessionEnd::Resync("the writer stopped"));
                    }
                }
            };
        }
        loop {
            // Wait for a message: with an empty batch as long as it takes, else `linger`.
            let next = if batch.is_empty() {
                tokio::select! {
                    _ = &mut *shutdown => return Ok(SessionEnd::Shutdown),
                    _ = generation_check.tick() => {
                        self.report_connection();
                        if self.generation_changed() {
                            return Ok(SessionEnd::Resync("database generation swapped"));
                        }
                        continue;
                    }
                    next = messages.next() => next,
                }
            } else {
                tokio::select! {
                    _ = &mut *shutdown => {
                        hand_over!();
                        return Ok(SessionEnd::Shutdown);
                    }
                    next = tokio::time::timeout(self.config.linger, messages.next()) => match next {
                        Ok(next) => next,
                        // While the writer is busy, a bigger batch costs nothing in latency
                        // and commits cheaper; when it is idle, commit what we have.
                        Err(_elapsed) if committing.load(Ordering::Relaxed) => continue,
                        Err(_elapsed) => {
                            hand_over!();
                            continue;
                        }
                    },
                }
            };
            let message = match next {
                None => {
                    hand_over!();
                    return Ok(SessionEnd::Resync("message stream ended"));
                }
                Some(Err(e)) => {
                    if matches!(e.kind(), pull::MessagesErrorKind::MissingHeartbeat) {
                        tracing::debug!("missed a heartbeat");
                        self.report_connection();
                        continue;
                    }
                    hand_over!();
                    return Err(NatsError::Messages(e.to_string()).into());
                }
                Some(Ok(message)) => message,
            };
            let (consumer_sequence, sequence, published_at_ms) = match message.info() {
                Ok(info) => {
                    // A delivery proves the stream is reachable, whatever the last connection
                    // poll said: health must not stay `unknown` while events flow.
                    self.mark_connected();
                    // Health must not judge past what is applied while more is on its way.
                    let status = &self.handles.status;
                    status
                        .delivered_sequence
                        .fetch_max(info.stream_sequence, Ordering::Relaxed);
                    status.lag.store(info.pending, Ordering::Relaxed);
                    (
                        info.consumer_sequence,
                        info.stream_sequence,
                        (info.published.unix_timestamp_nanos() / 1_000_000) as i64,
                    )
                }
                Err(e) => {
                    hand_over!();
                    return Err(NatsError::Messages(format!(
                        "message without JetStream metadata: {e}"
                    ))
                    .into());
                }
            };
            if last_consumer_sequence.is_some_and(|last| consumer_sequence != last + 1) {
                // A delivery went missing: applying this one would skip it for good.
                hand_over!();
                return Ok(SessionEnd::Resync("gap in consumer deliveries"));
            }
            last_consumer_sequence = Some(consumer_sequence);
            // Decoding here runs in parallel with the writer's commit of the previous batch.
            let decoded = events::decode(message.subject.as_str(), &message.payload);
            let dead_letter = decoded
                .is_err()
                .then(|| (message.subject.clone(), message.payload.clone()));
            batch.received.push(Received {
                sequence,
                published_at_ms,
                decoded,
                dead_letter,
            });
            batch.last = Some(message);
            if batch.len() >= self.config.batch_size {
                hand_over!();
            }
        }
    }

    /// Deletes and recreates the durable consumer so delivery starts right after `checkpoint`.
    async fn recreate_consumer(
        &self,
        stream: &mut Stream,
        checkpoint: u64,
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
            Err(e) => return Err(NatsError::Consumer(e.to_string()).into()),
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
            filter_subject: crate::stream::SUBJECTS.to_owned(),
            ..Default::default()
        };
        let consumer = stream
            .create_consumer(config)
            .await
            .map_err(|e| NatsError::Consumer(e.to_string()))?;
        Ok(consumer)
    }

    /// Commits the batch in hand (if any) and acknowledges it.
    async fn commit(&self, batch: Batch) -> Result<(), ProjectorError> {
        let Batch {
            received,
            last: Some(last),
        } = batch
        else {
            return Ok(());
        };
        let writer = self.writer.clone();
        let last_published_at_ms = received.last().map(|r| r.published_at_ms);
        let outcome = tokio::task::spawn_blocking(move || {
            let (incoming, decoded): (Vec<IncomingMessage<'_>>, Vec<_>) = received
                .iter()
                .map(|r| {
                    (
                        IncomingMessage {
                            sequence: r.sequence,
                            subject: r.dead_letter.as_ref().map_or("", |(s, _)| s.as_str()),
                            payload: r.dead_letter.as_ref().map_or(&[], |(_, p)| p),
                            published_at_ms: Some(r.published_at_ms),
                        },
                        &r.decoded,
                    )
                })
                .unzip();
            writer
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .apply_decoded(&incoming, &decoded)
        })
        .await?;
        let outcome = outcome?;
        self.handles.status.clear_error();
        // AckPolicy::All: this acknowledges every message up to it.
        if let Err(e) = last.ack().await {
            tracing::debug!(error = %e, "ack not sent; the messages will be redelivered and skipped");
        }
        let lag = last.info().map(|i| i.pending).unwrap_or(0);
        // Before the new checkpoint is published: readers must not serve these jobs from cache.
        self.handles
            .readers
            .get()
            .jobs_changed(&outcome.changed_jobs, outcome.last_sequence);
        if let Some(published) = last_published_at_ms {
            self.handles
                .status
                .last_published_at_ms
                .store(published, Ordering::Relaxed);
        }
        self.record(&outcome, lag);
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
        let (writer, readers) = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let (writer, _version) = Writer::open(&db_path)?;
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
