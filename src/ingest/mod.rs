//! The one path from the stream into the read model, shared by the live projector and replay:
//!
//! JetStream message → [`Received`] (decoded on the reading task; subject and payload kept only
//! for a dead letter) → [`Batcher`] → bounded channel → [`commit_batches`]: one writer, each
//! batch one transaction on the blocking pool, while the reader goes on reading.
//!
//! The two callers are policies over it: [`live`] reads a durable consumer, acknowledges after
//! each commit and resynchronises on a gap; [`replay`] reads an ordered consumer up to the head
//! or `--until` and reports progress.

pub mod live;
pub mod replay;
pub mod touched;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_nats::jetstream;
use tokio::sync::mpsc;

use crate::events::{self, DecodeError, Event};
use crate::store::{BatchOutcome, IncomingMessage, StoreError, Writer};
use crate::stream::NatsError;

/// The writer, shared between the committing task and whoever reads its checkpoint.
pub type SharedWriter = Arc<Mutex<Writer>>;

/// Batches that may wait for the writer while it commits another: reading stays one batch
/// ahead, and memory stays bounded by a few batches.
const QUEUED_BATCHES: usize = 2;

/// Failures of the commit step.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writer task failed: {0}")]
    Writer(#[from] tokio::task::JoinError),
}

/// Where a message sits in the stream and in its consumer's deliveries.
#[derive(Debug, Clone, Copy)]
pub struct Position {
    pub stream_sequence: u64,
    pub consumer_sequence: u64,
    /// Messages the consumer has yet to deliver after this one.
    pub pending: u64,
    /// When JetStream stored it.
    pub published_at_ms: i64,
}

impl Position {
    pub fn of(message: &jetstream::Message) -> Result<Self, NatsError> {
        let info = message
            .info()
            .map_err(|e| NatsError::Messages(format!("message without JetStream metadata: {e}")))?;
        Ok(Position {
            stream_sequence: info.stream_sequence,
            consumer_sequence: info.consumer_sequence,
            pending: info.pending,
            published_at_ms: (info.published.unix_timestamp_nanos() / 1_000_000) as i64,
        })
    }
}

/// A message as the writer needs it. The reply subject, headers and client handle of the
/// `jetstream::Message` are dropped on arrival: with a few batches of 40k in flight they were
/// a large part of the projector's peak memory.
pub struct Received {
    sequence: u64,
    published_at_ms: i64,
    decoded: Result<Event, DecodeError>,
    /// Subject and payload, kept only when the message is a dead letter (the writer stores
    /// them with the reason); an event needs neither once decoded.
    dead_letter: Option<(async_nats::Subject, bytes::Bytes)>,
}

impl Received {
    /// Decodes `message`, found at `position`.
    pub fn decode(message: &jetstream::Message, position: &Position) -> Self {
        let decoded = events::decode(message.subject.as_str(), &message.payload);
        let dead_letter = decoded
            .is_err()
            .then(|| (message.subject.clone(), message.payload.clone()));
        Received {
            sequence: position.stream_sequence,
            published_at_ms: position.published_at_ms,
            decoded,
            dead_letter,
        }
    }
}

/// Messages for one commit, and the last of them whole when it must be acknowledged (with
/// AckPolicy::All its ack covers the batch).
pub struct Batch {
    pub received: Vec<Received>,
    pub last: Option<jetstream::Message>,
    /// A shard's stream position past messages its consumer's filter left out, committed
    /// after `received` (see [`Writer::pass_over`](crate::store::Writer::pass_over)).
    pub pass_over_to: Option<StreamPoint>,
}

/// A stream sequence and when JetStream stored the message there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamPoint {
    pub sequence: u64,
    pub published_at_ms: i64,
}

/// The writer went away (its commit failed): stop reading, the committer reports why.
#[derive(Debug)]
pub struct WriterStopped;

/// Collects [`Received`] messages into batches of at most `capacity` and hands them over.
pub struct Batcher {
    batch: Vec<Received>,
    last: Option<jetstream::Message>,
    capacity: usize,
    to_commit: mpsc::Sender<Batch>,
}

impl Batcher {
    /// A batcher and the receiving end to give [`commit_batches`].
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<Batch>) {
        let (to_commit, batches) = mpsc::channel(QUEUED_BATCHES);
        let batcher = Batcher {
            batch: Vec::with_capacity(capacity),
            last: None,
            capacity,
            to_commit,
        };
        (batcher, batches)
    }

    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// Whether the committer has stopped (after a failed commit).
    pub fn writer_stopped(&self) -> bool {
        self.to_commit.is_closed()
    }

    /// Adds a message; hands the batch over when it is full. `ack` is the message to
    /// acknowledge the batch with (the live consumer's), `None` when nothing is acknowledged.
    pub async fn push(
        &mut self,
        received: Received,
        ack: Option<jetstream::Message>,
    ) -> Result<(), WriterStopped> {
        self.batch.push(received);
        if ack.is_some() {
            self.last = ack;
        }
        if self.batch.len() >= self.capacity {
            self.hand_over().await?;
        }
        Ok(())
    }

    /// Hands the batch in hand (if any) to the committer, waiting while the queue is full.
    pub async fn hand_over(&mut self) -> Result<(), WriterStopped> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = Batch {
            received: std::mem::replace(&mut self.batch, Vec::with_capacity(self.capacity)),
            last: self.last.take(),
            pass_over_to: None,
        };
        self.to_commit.send(batch).await.map_err(|_| WriterStopped)
    }

    /// Hands over the batch in hand, then moves the checkpoint to `point` (over messages
    /// this replica's consumer filter left out).
    pub async fn pass_over_to(&mut self, point: StreamPoint) -> Result<(), WriterStopped> {
        self.hand_over().await?;
        let batch = Batch {
            received: Vec::new(),
            last: None,
            pass_over_to: Some(point),
        };
        self.to_commit.send(batch).await.map_err(|_| WriterStopped)
    }
}

/// Commits batches in arrival order until the batcher is dropped, then returns. After each
/// commit, `committed` gets its outcome and the batch's ack message; `busy` is true while a
/// batch commits or waits (a reader lingers for more messages only then: a bigger batch costs
/// nothing in latency while the writer is busy, and commits cheaper). The first failure stops
/// the loop: dropping the receiver makes the reader's next hand-over fail, and nothing past
/// the checkpoint has been acknowledged.
pub async fn commit_batches<E, Committed>(
    writer: &SharedWriter,
    mut batches: mpsc::Receiver<Batch>,
    busy: &AtomicBool,
    mut committed: impl FnMut(BatchOutcome, Option<jetstream::Message>) -> Committed,
) -> Result<(), E>
where
    E: From<IngestError>,
    Committed: std::future::Future<Output = Result<(), E>>,
{
    while let Some(batch) = batches.recv().await {
        busy.store(true, Ordering::Relaxed);
        // Busy through the acknowledgement too: the reader keeps filling its batch meanwhile
        // instead of handing over a small one.
        let done = match commit(writer, batch.received, batch.pass_over_to).await {
            Ok(outcome) => committed(outcome, batch.last).await,
            Err(error) => Err(error.into()),
        };
        // Also after a failure: a reader waiting for the writer to be idle must hand over
        // its batch to learn that the writer stopped.
        busy.store(!batches.is_empty(), Ordering::Relaxed);
        done?;
    }
    Ok(())
}

/// Applies `received` in one transaction on the blocking pool.
async fn commit(
    writer: &SharedWriter,
    received: Vec<Received>,
    pass_over_to: Option<StreamPoint>,
) -> Result<BatchOutcome, IngestError> {
    let writer = writer.clone();
    tokio::task::spawn_blocking(move || {
        if let Some(point) = pass_over_to {
            debug_assert!(received.is_empty(), "a pass-over travels alone");
            let mut writer = writer.lock().unwrap_or_else(|p| p.into_inner());
            return Ok(writer.pass_over(point.sequence, point.published_at_ms)?);
        }
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
        let outcome = writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .apply_decoded(&incoming, &decoded)?;
        Ok(outcome)
    })
    .await?
}
