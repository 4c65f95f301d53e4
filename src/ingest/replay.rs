//! Rebuilding the read model from the stream: an ordered consumer from the first sequence,
//! through the ingest path the live projector uses, into a new file; then either
//! an atomic swap of the live database (see [`crate::store::generation`]) or, for a
//! point-in-time audit copy, a separate file that is never swapped in.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy};
use futures::StreamExt;

use super::{commit_batches, Batcher, IngestError, Position, Received};
use crate::scope::TenantScope;
use crate::store::{generation, StoreError, Writer};
use crate::stream::{ensure_stream, NatsError, StreamSpec};

/// Failures of a rebuild. None of them touches the live database: the half-built file is
/// left under its `.building` name and removed by the next rebuild.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Nats(#[from] NatsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Generation(#[from] generation::GenerationError),
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error("rebuild task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("{0}")]
    Usage(String),
}

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildReport {
    pub path: PathBuf,
    pub messages: u64,
    pub last_sequence: u64,
    pub elapsed_ms: u128,
}

/// Receives progress: messages done and the sequence the rebuild runs up to.
pub trait Progress: Send {
    fn update(&mut self, done: u64, total: u64);
    fn finish(&mut self) {}
}

impl<F: FnMut(u64, u64) + Send> Progress for F {
    fn update(&mut self, done: u64, total: u64) {
        self(done, total)
    }
}

/// A progress bar on a terminal, plain log lines every 5 s otherwise.
pub struct HumanProgress {
    bar: Option<indicatif::ProgressBar>,
    last_log: Instant,
    started: Instant,
}

impl Default for HumanProgress {
    fn default() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} rebuilding [{bar:40}] {pos}/{len} events {per_sec} ETA {eta}",
                )
                .expect("the template is valid")
                .progress_chars("=> "),
            );
            bar
        });
        HumanProgress {
            bar,
            last_log: Instant::now(),
            started: Instant::now(),
        }
    }
}

impl Progress for HumanProgress {
    fn update(&mut self, done: u64, total: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            bar.set_position(done);
        } else if self.last_log.elapsed() >= Duration::from_secs(5) {
            self.last_log = Instant::now();
            let rate = done as f64 / self.started.elapsed().as_secs_f64().max(0.001);
            tracing::info!(
                done,
                total,
                events_per_second = rate as u64,
                "rebuild progress"
            );
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

const REPLAY_BATCH: usize = 25_000;

/// Where a point-in-time rebuild stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebuildUntil {
    Sequence(u64),
    /// Unix ms: messages stored by JetStream at or before this time.
    Time(i64),
}

/// Replays the stream into `scratch` (a new file) up to the stream's head at start, or to
/// `until`. Returns the finished writer's report; the file is durable when this returns.
pub async fn replay_into(
    client: &async_nats::Client,
    stream_spec: &StreamSpec,
    scratch: &Path,
    until: Option<RebuildUntil>,
    scope: &TenantScope,
    progress: &mut dyn Progress,
) -> Result<RebuildReport, ReplayError> {
    let started = Instant::now();
    let js = jetstream::new(client.clone());
    let mut stream = ensure_stream(&js, stream_spec).await?;
    let head = crate::stream::last_sequence(&mut stream).await?;
    let stop = Stop {
        at_sequence: match until {
            Some(RebuildUntil::Sequence(sequence)) => sequence.min(head),
            _ => head,
        },
        after_ms: match until {
            Some(RebuildUntil::Time(ms)) => Some(ms),
            _ => None,
        },
    };
    let scratch_path = scratch.to_path_buf();
    let scope = scope.clone();
    let writer = tokio::task::spawn_blocking(move || {
        Writer::open_scratch(&scratch_path).map(|mut writer| {
            writer.set_scope(scope);
            writer
        })
    })
    .await??;
    let writer = std::sync::Arc::new(std::sync::Mutex::new(writer));
    let mut messages_done = 0u64;
    progress.update(0, stop.at_sequence);

    let first = stream.cached_info().state.first_sequence;
    if stop.at_sequence > 0 && stream.cached_info().state.messages > 0 && first <= stop.at_sequence
    {
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                deliver_policy: DeliverPolicy::All,
                filter_subject: crate::stream::SUBJECTS.to_owned(),
                ..Default::default()
            })
            .await
            .map_err(|e| NatsError::Consumer(e.to_string()))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| NatsError::Consumer(e.to_string()))?;
        let (batcher, batches) = Batcher::new(REPLAY_BATCH);
        let busy = std::sync::atomic::AtomicBool::new(false);
        let committer = commit_batches(&writer, batches, &busy, |outcome, _| {
            messages_done +=
                outcome.applied + outcome.dead_letters + outcome.skipped + outcome.out_of_scope;
            progress.update(messages_done, stop.at_sequence);
            std::future::ready(Ok::<_, ReplayError>(()))
        });
        let (read, committed) = tokio::join!(read_until(&mut messages, batcher, &stop), committer);
        committed?;
        read?;
    }
    progress.update(messages_done, stop.at_sequence);
    progress.finish();
    // The committer has returned, so this is the last handle; were it not, the rebuild fails
    // with an error rather than a panic.
    let writer = std::sync::Arc::into_inner(writer)
        .ok_or_else(|| ReplayError::Usage("the rebuild's writer is still in use".into()))?
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    let last_sequence = writer.checkpoint();
    let path = writer.path().to_path_buf();
    tokio::task::spawn_blocking(move || writer.finish_scratch()).await??;
    Ok(RebuildReport {
        path,
        messages: messages_done,
        last_sequence,
        elapsed_ms: started.elapsed().as_millis(),
    })
}

/// Where a replay ends: the last sequence to apply, and optionally the last publish time.
struct Stop {
    at_sequence: u64,
    after_ms: Option<i64>,
}

/// Reads the ordered consumer into batches up to `stop`. A writer failure ends the read; the
/// committer reports it.
async fn read_until(
    messages: &mut pull::Ordered,
    mut batcher: Batcher,
    stop: &Stop,
) -> Result<(), NatsError> {
    loop {
        let next = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .map_err(|_| NatsError::Messages("no message for 30 s before the head".into()))?;
        let message = match next {
            None => break,
            Some(Err(e)) => return Err(NatsError::Messages(e.to_string())),
            Some(Ok(message)) => message,
        };
        let position = Position::of(&message)?;
        if stop
            .after_ms
            .is_some_and(|limit| position.published_at_ms > limit)
        {
            break;
        }
        if position.stream_sequence <= stop.at_sequence
            && batcher
                .push(Received::decode(&message, &position), None)
                .await
                .is_err()
        {
            return Ok(());
        }
        if position.stream_sequence >= stop.at_sequence || position.pending == 0 {
            break;
        }
    }
    let _ = batcher.hand_over().await;
    Ok(())
}

/// Rebuilds the live database: builds a new generation and swaps it in. A running `serve`
/// follows the swap by itself; without one, the old generation is removed here.
pub async fn rebuild_live(
    client: &async_nats::Client,
    stream: &StreamSpec,
    db_path: &Path,
    scope: &TenantScope,
    progress: &mut dyn Progress,
) -> Result<RebuildReport, ReplayError> {
    let lock = generation::lock_rebuild(db_path)?;
    generation::remove_interrupted_builds(&lock, db_path)?;
    let (generation_path, building) = generation::next_generation(db_path);
    let mut report = replay_into(client, stream, &building, None, scope, progress).await?;
    std::fs::rename(&building, &generation_path).map_err(StoreError::from)?;
    let previous = generation::swap_in(db_path, &generation_path)?;
    report.path = generation_path.clone();
    tracing::info!(generation = %generation_path.display(), messages = report.messages,
        last_sequence = report.last_sequence, "rebuilt database swapped in");
    if !generation::is_served(db_path) {
        if let Some(previous) = previous {
            generation::remove_replaced(db_path, &previous);
        }
    }
    Ok(report)
}

/// Builds a point-in-time copy at `output` (never swapped in; `serve` serves it read-only).
pub async fn rebuild_copy(
    client: &async_nats::Client,
    stream: &StreamSpec,
    db_path: &Path,
    output: &Path,
    until: Option<RebuildUntil>,
    scope: &TenantScope,
    progress: &mut dyn Progress,
) -> Result<RebuildReport, ReplayError> {
    if crate::store::resolve(output) == crate::store::resolve(db_path) {
        return Err(ReplayError::Usage(
            "--output must not be the live database; omit --output to rebuild it".into(),
        ));
    }
    let mut building = output.as_os_str().to_owned();
    building.push(".building");
    let building = PathBuf::from(building);
    generation::remove_database_files(&building);
    let mut report = replay_into(client, stream, &building, until, scope, progress).await?;
    crate::store::mark_frozen(&building, &format!("{until:?}"))?;
    std::fs::rename(&building, output).map_err(StoreError::from)?;
    report.path = output.to_path_buf();
    Ok(report)
}
