//! The JetStream side shared by the projector, the rebuild and the publisher: connecting
//! ([`connect`]: URLs, credentials, TLS), and the stream definition, created when missing and
//! otherwise left alone.

mod connect;

pub use connect::{connect, NatsAuth, NatsSettings, NatsTls, Secret};

use std::time::Duration;

use async_nats::jetstream::{
    self,
    context::GetStreamErrorKind,
    stream::{Config, DiscardPolicy, RetentionPolicy, StorageType, Stream},
    ErrorCode,
};

/// Subjects every event is published under.
pub const SUBJECTS: &str = "jobs.events.>";

/// Failures of the NATS boundary. The projector retries all of them with back-off; the CLI
/// commands report them and exit non-zero.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// `url` is shown without credentials; `reason` names the variable to fix.
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("JetStream stream {stream}: {message}")]
    Stream { stream: String, message: String },
    #[error("JetStream consumer: {0}")]
    Consumer(String),
    #[error("reading messages: {0}")]
    Messages(String),
}

/// The stream the service reads, and how it is created when missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    pub name: String,
    /// Copies of the stream in a cluster when the service creates it (1, 3 or 5,
    /// `JOBSTATS_STREAM_REPLICAS`); an existing stream keeps its own.
    pub replicas: usize,
}

impl StreamSpec {
    /// A single-copy stream: one nats-server, or a stream created by someone else.
    pub fn single(name: &str) -> Self {
        StreamSpec {
            name: name.to_owned(),
            replicas: 1,
        }
    }
}

/// The stream this service creates when none exists (mirrors `nats/stream-job-events.json`).
pub fn stream_config(spec: &StreamSpec) -> Config {
    let name = &spec.name;
    Config {
        name: name.to_owned(),
        description: Some(
            "jobstats job lifecycle events; the source of truth for the read model".into(),
        ),
        subjects: vec![SUBJECTS.to_owned()],
        retention: RetentionPolicy::Limits,
        storage: StorageType::File,
        discard: DiscardPolicy::Old,
        // Publishers set Nats-Msg-Id; retries within this window are dropped by the server.
        duplicate_window: Duration::from_secs(120),
        max_message_size: 1024 * 1024,
        num_replicas: spec.replicas,
        allow_direct: true,
        ..Default::default()
    }
}

/// Gets the stream, creating it when missing. An existing stream's settings are never
/// changed; differences from ours are logged.
pub async fn ensure_stream(
    js: &jetstream::Context,
    spec: &StreamSpec,
) -> Result<Stream, NatsError> {
    let name = spec.name.as_str();
    let error = |message: String| NatsError::Stream {
        stream: name.to_owned(),
        message,
    };
    match js.get_stream(name).await {
        Ok(mut stream) => {
            let info = stream.info().await.map_err(|e| error(e.to_string()))?;
            let ours = stream_config(spec);
            let theirs = &info.config;
            if !theirs.subjects.iter().any(|s| s == SUBJECTS) {
                tracing::warn!(stream = name, subjects = ?theirs.subjects, "existing stream does not list {SUBJECTS}; events may not reach it");
            }
            if theirs.storage != ours.storage
                || theirs.retention != ours.retention
                || theirs.duplicate_window != ours.duplicate_window
            {
                tracing::warn!(stream = name, storage = ?theirs.storage, retention = ?theirs.retention,
                    duplicate_window = ?theirs.duplicate_window,
                    "existing stream differs from jobstats' definition; leaving it unchanged");
            }
            if theirs.max_age != Duration::ZERO || theirs.max_messages > 0 || theirs.max_bytes > 0 {
                tracing::warn!(
                    stream = name,
                    "stream has age/size limits: a rebuild can only replay what it still holds"
                );
            }
            Ok(stream)
        }
        Err(e) => match e.kind() {
            GetStreamErrorKind::JetStream(inner)
                if inner.error_code() == ErrorCode::STREAM_NOT_FOUND =>
            {
                tracing::info!(stream = name, "creating stream");
                js.create_stream(stream_config(spec))
                    .await
                    .map_err(|e| error(e.to_string()))
            }
            _ => Err(error(e.to_string())),
        },
    }
}

/// The stream's last sequence now.
pub async fn last_sequence(stream: &mut Stream) -> Result<u64, NatsError> {
    let name = stream.cached_info().config.name.clone();
    let info = stream.info().await.map_err(|e| NatsError::Stream {
        stream: name,
        message: e.to_string(),
    })?;
    Ok(info.state.last_sequence)
}
