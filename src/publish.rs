//! The publisher side: what `jobstats publish`, `jobstats run`, the demo runners and job
//! runners written in Rust use. Every event is validated against the contract before it leaves
//! (the same `decode` the projector runs), carries `Nats-Msg-Id: <eventId>` so a retried
//! publish is dropped by JetStream, and is acknowledged by the stream before `publish` returns.
//!
//! ```no_run
//! # async fn demo() -> Result<(), jobstats::publish::PublishError> {
//! use jobstats::publish::{Publisher, EventBuilder};
//! let nats = jobstats::stream::NatsSettings::from_url("nats://127.0.0.1:4222").expect("a NATS URL");
//! let publisher = Publisher::connect(&nats).await?;
//! let tenant = "3f0c7f7e-8a51-4a52-9f7e-0d6a4c1b2e11";
//! let run = EventBuilder::new(tenant, "nightly-report")?.execution("run-42")?;
//! publisher.publish(&run.started()?).await?;
//! publisher.publish(&run.completed(Some(150))?).await?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::events::{decode, DecodeError, Event, EventKind, ExecutionId, JobName, TenantId};
use crate::schedule::CronSchedule;
use crate::stream::NatsError;

/// Why a publish did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The event breaks the contract; nothing was sent.
    #[error("invalid event: {0}")]
    Invalid(#[from] DecodeError),
    /// A builder argument is invalid; nothing was sent.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error(transparent)]
    Connect(#[from] NatsError),
    /// No stream listens on the subject.
    #[error("no JetStream stream stores jobs.events.>: start `jobstats serve` once (it creates the stream) or create it from nats/stream-job-events.json")]
    NoStream,
    /// The stream did not acknowledge in time.
    #[error("JetStream did not acknowledge the event in time")]
    Timeout,
    #[error("publish failed: {0}")]
    Other(String),
}

impl PublishError {
    /// Worth retrying (NATS unreachable or slow), as opposed to a bad event.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            PublishError::Connect(_) | PublishError::Timeout | PublishError::Other(_)
        )
    }
}

/// What the stream said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishReceipt {
    pub sequence: u64,
    /// The stream had already stored this eventId (a retry): nothing new was stored.
    pub duplicate: bool,
}

/// Publishes events to JetStream.
#[derive(Clone)]
pub struct Publisher {
    js: jetstream::Context,
}

impl Publisher {
    /// Connects (failing fast when NATS is unreachable).
    pub async fn connect(nats: &crate::stream::NatsSettings) -> Result<Self, PublishError> {
        let client = crate::stream::connect(nats, "jobstats-publisher", true).await?;
        Ok(Self::new(client))
    }

    pub fn new(client: async_nats::Client) -> Self {
        let mut js = jetstream::new(client);
        js.set_timeout(Duration::from_secs(5));
        Publisher { js }
    }

    /// Validates, publishes and waits for the stream's ack.
    pub async fn publish(&self, event: &Event) -> Result<PublishReceipt, PublishError> {
        let subject = event.subject();
        let payload = event.to_bytes();
        decode(&subject, &payload)?;
        self.publish_raw(&subject, payload, &event.event_id.hyphenated().to_string())
            .await
    }

    /// Publishes bytes as they are (tests and tools that need to send invalid events).
    pub async fn publish_raw(
        &self,
        subject: &str,
        payload: Vec<u8>,
        message_id: &str,
    ) -> Result<PublishReceipt, PublishError> {
        let mut headers = async_nats::HeaderMap::new();
        if !message_id.is_empty() {
            headers.insert("Nats-Msg-Id", message_id);
        }
        let ack = self
            .js
            .publish_with_headers(subject.to_owned(), headers, payload.into())
            .await
            .map_err(map_publish_error)?
            .await
            .map_err(map_publish_error)?;
        Ok(PublishReceipt {
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    /// Publishes, retrying transient failures until `deadline` passes.
    pub async fn publish_with_retry(
        &self,
        event: &Event,
        patience: Duration,
    ) -> Result<PublishReceipt, PublishError> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut pause = Duration::from_millis(100);
        loop {
            match self.publish(event).await {
                Err(e) if e.is_transient() && tokio::time::Instant::now() + pause < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                other => return other,
            }
        }
    }
}

fn map_publish_error(error: jetstream::context::PublishError) -> PublishError {
    match error.kind() {
        PublishErrorKind::StreamNotFound => PublishError::NoStream,
        PublishErrorKind::TimedOut => PublishError::Timeout,
        _ => PublishError::Other(error.to_string()),
    }
}

/// Builds valid events for one job (and optionally one execution).
#[derive(Debug, Clone)]
pub struct EventBuilder {
    tenant: TenantId,
    job: JobName,
    execution: Option<ExecutionId>,
    occurred_at: Option<DateTime<Utc>>,
    /// The zone `scheduled` events evaluate their cron in (`None`: UTC).
    timezone: Option<chrono_tz::Tz>,
    /// Put on `completed` and `failed` events.
    exit_code: Option<u8>,
    output: Option<String>,
    /// Put on `scheduled` events (CONTRACT §11).
    labels: crate::events::Labels,
    failure_threshold: Option<u8>,
    recovery_threshold: Option<u8>,
}

impl EventBuilder {
    pub fn new(tenant: &str, job: &str) -> Result<Self, PublishError> {
        Ok(EventBuilder {
            tenant: TenantId::parse(tenant).map_err(|reason| PublishError::InvalidArgument {
                field: "tenant",
                reason,
            })?,
            job: JobName::parse(job).map_err(|reason| PublishError::InvalidArgument {
                field: "job",
                reason,
            })?,
            execution: None,
            occurred_at: None,
            timezone: None,
            exit_code: None,
            output: None,
            labels: crate::events::Labels::new(),
            failure_threshold: None,
            recovery_threshold: None,
        })
    }

    /// The job's labels and thresholds, put on `scheduled` events (CONTRACT §11). Checked
    /// as the decoder checks them.
    pub fn schedule_options(
        mut self,
        labels: &[(String, String)],
        failure_threshold: Option<u64>,
        recovery_threshold: Option<u64>,
    ) -> Result<Self, PublishError> {
        let bounded = |value: Option<u64>, field: &'static str| match value {
            Some(v) if !(1..=crate::events::MAX_THRESHOLD).contains(&v) => {
                Err(PublishError::InvalidArgument {
                    field,
                    reason: format!("must be between 1 and {}", crate::events::MAX_THRESHOLD),
                })
            }
            v => Ok(v.map(|v| v as u8)),
        };
        self.failure_threshold = bounded(failure_threshold, "failure-threshold")?;
        self.recovery_threshold = bounded(recovery_threshold, "recovery-threshold")?;
        self.labels = labels.iter().cloned().collect();
        Ok(self)
    }

    /// A `silenced` event: quiet until `until` (`None` lifts the silence).
    pub fn silenced(
        &self,
        until: Option<DateTime<Utc>>,
        reason: Option<String>,
        by: Option<String>,
    ) -> Event {
        self.event(EventKind::Silenced { until, reason, by })
    }

    /// The IANA zone `scheduled` events evaluate their cron in (CONTRACT §10; default UTC).
    pub fn timezone(mut self, zone: &str) -> Result<Self, PublishError> {
        self.timezone = Some(crate::schedule::parse_timezone(zone).map_err(|reason| {
            PublishError::InvalidArgument {
                field: "timezone",
                reason,
            }
        })?);
        Ok(self)
    }

    /// The command's exit code, put on `completed` and `failed` events.
    pub fn exit_code(mut self, code: u8) -> Self {
        self.exit_code = Some(code);
        self
    }

    /// The run's output, put on `completed` and `failed` events: its last 16 KiB
    /// ([`crate::events::tail_output`]), less when JSON escaping would make the event larger
    /// than the 64 KiB a body may have (output full of control characters).
    pub fn output(mut self, output: &str) -> Self {
        self.output = Some(crate::events::tail_output(output).to_owned());
        self
    }

    /// For events about one execution.
    pub fn execution(mut self, execution_id: &str) -> Result<Self, PublishError> {
        self.execution = Some(ExecutionId::parse(execution_id).map_err(|reason| {
            PublishError::InvalidArgument {
                field: "execution",
                reason,
            }
        })?);
        Ok(self)
    }

    /// Fixes `occurredAt` (default: the time each event is built).
    pub fn at(mut self, occurred_at: DateTime<Utc>) -> Self {
        self.occurred_at = Some(occurred_at);
        self
    }

    fn event(&self, kind: EventKind) -> Event {
        Event {
            event_id: Uuid::new_v4(),
            tenant_id: self.tenant,
            job_name: self.job.clone(),
            occurred_at: self.occurred_at.unwrap_or_else(Utc::now),
            kind,
        }
    }

    /// A finish event with this builder's exit code and output, the output shortened from
    /// its start until the body fits [`crate::events::MAX_EVENT_BYTES`].
    fn finish_event(&self, kind: impl Fn(Option<u8>, Option<String>) -> EventKind) -> Event {
        let mut output = self.output.clone();
        loop {
            let event = self.event(kind(self.exit_code, output.clone()));
            let Some(text) = output
                .as_deref()
                .filter(|_| event.to_bytes().len() > crate::events::MAX_EVENT_BYTES)
            else {
                return event;
            };
            let mut cut = text.len() / 4;
            while !text.is_char_boundary(cut) {
                cut += 1;
            }
            output = Some(text[cut..].to_owned());
        }
    }

    fn execution_id(&self) -> Result<ExecutionId, PublishError> {
        self.execution.clone().ok_or(PublishError::InvalidArgument {
            field: "execution",
            reason: "is required for this event type".into(),
        })
    }

    /// `scheduled`; `None` removes the schedule.
    pub fn scheduled(&self, cron: Option<&str>) -> Result<Event, PublishError> {
        self.scheduled_with(cron, None, None)
    }

    /// `scheduled` with the job's grace and maximum run time (CONTRACT §5).
    pub fn scheduled_with(
        &self,
        cron: Option<&str>,
        grace: Option<std::time::Duration>,
        max_runtime: Option<std::time::Duration>,
    ) -> Result<Event, PublishError> {
        use crate::events::{MAX_GRACE_MS, MAX_MAX_RUNTIME_MS, MIN_GRACE_MS, MIN_MAX_RUNTIME_MS};
        let in_range = |value: Option<std::time::Duration>,
                        field: &'static str,
                        min: u64,
                        max: u64|
         -> Result<Option<i64>, PublishError> {
            let Some(value) = value else { return Ok(None) };
            let ms = u64::try_from(value.as_millis()).unwrap_or(u64::MAX);
            if (min..=max).contains(&ms) {
                Ok(Some(ms as i64))
            } else {
                Err(PublishError::InvalidArgument {
                    field,
                    reason: format!("must be between {min} ms and {max} ms"),
                })
            }
        };
        let grace_ms = in_range(grace, "grace", MIN_GRACE_MS, MAX_GRACE_MS)?;
        let max_runtime_ms = in_range(
            max_runtime,
            "max-runtime",
            MIN_MAX_RUNTIME_MS,
            MAX_MAX_RUNTIME_MS,
        )?;
        let cron = cron
            .map(|c| {
                CronSchedule::parse(c).map_err(|reason| PublishError::InvalidArgument {
                    field: "cron",
                    reason,
                })
            })
            .transpose()?;
        let cron = match (cron, self.timezone) {
            (Some(cron), Some(zone)) => Some(cron.in_zone(zone)),
            (cron, _) => cron,
        };
        Ok(self.event(EventKind::Scheduled {
            cron,
            grace_ms,
            max_runtime_ms,
            labels: self.labels.clone(),
            failure_threshold: self.failure_threshold,
            recovery_threshold: self.recovery_threshold,
        }))
    }

    pub fn enqueued(&self) -> Result<Event, PublishError> {
        Ok(self.event(EventKind::Enqueued {
            execution_id: self.execution_id()?,
        }))
    }

    pub fn started(&self) -> Result<Event, PublishError> {
        Ok(self.event(EventKind::Started {
            execution_id: self.execution_id()?,
        }))
    }

    pub fn completed(&self, items_processed: Option<u64>) -> Result<Event, PublishError> {
        let execution_id = self.execution_id()?;
        Ok(self.finish_event(|exit_code, output| EventKind::Completed {
            execution_id: execution_id.clone(),
            items_processed,
            exit_code,
            output,
        }))
    }

    pub fn failed(
        &self,
        items_processed: Option<u64>,
        error: Option<&str>,
    ) -> Result<Event, PublishError> {
        if let Some(error) = error {
            if error.chars().count() > crate::events::MAX_ERROR_CHARS {
                return Err(PublishError::InvalidArgument {
                    field: "error",
                    reason: format!(
                        "must be at most {} characters",
                        crate::events::MAX_ERROR_CHARS
                    ),
                });
            }
        }
        let execution_id = self.execution_id()?;
        Ok(self.finish_event(|exit_code, output| EventKind::Failed {
            execution_id: execution_id.clone(),
            items_processed,
            error: error.map(str::to_owned),
            exit_code,
            output,
        }))
    }

    /// The events of one whole run of this execution, in the order a runner publishes them:
    /// `enqueued` (when `queued` is given, that long before the start), `started` at `start`,
    /// then the end `duration` later. The one history builder of the tests, the benchmark
    /// harness and the demo.
    pub fn run(
        &self,
        start: DateTime<Utc>,
        queued: Option<chrono::Duration>,
        duration: chrono::Duration,
        end: RunEnd<'_>,
    ) -> Result<Vec<Event>, PublishError> {
        let mut events = Vec::with_capacity(3);
        if let Some(queued) = queued {
            events.push(self.clone().at(start - queued).enqueued()?);
        }
        events.push(self.clone().at(start).started()?);
        let finished = self.clone().at(start + duration);
        match end {
            RunEnd::Completed { items } => events.push(finished.completed(items)?),
            RunEnd::Failed { items, error } => events.push(finished.failed(items, error)?),
            RunEnd::Never => {}
        }
        Ok(events)
    }
}

/// How a run built by [`EventBuilder::run`] ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd<'a> {
    Completed {
        items: Option<u64>,
    },
    Failed {
        items: Option<u64>,
        error: Option<&'a str>,
    },
    /// Still processing.
    Never,
}
