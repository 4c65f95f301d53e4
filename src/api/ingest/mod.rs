//! HTTP ingestion (CONTRACT §10): requests become §1 events, published to the stream with
//! `Nats-Msg-Id` and applied by the projector like any other; nothing here writes SQLite.
//!
//! - [`events`]: `POST /api/v1/events`, one event, an array or NDJSON, all or nothing.
//! - [`ping`]: healthchecks.io-style ping URLs.
//! - [`sentry`]: Sentry Crons check-ins (the SDK's envelopes and the curl URL).
//! - [`keys`]: `…/admin/keys`, making and revoking ingest keys.
//!
//! Who may ingest: an ingest key (its one tenant), or a JWT with `job_runner` (its
//! `tenant_id`) or `super_admin` (any tenant) on `/api/v1/events` only. Each caller is held
//! to a request rate ([`IngestLimits`]) so one runaway crontab cannot starve the others.

pub mod events;
pub mod keys;
pub mod ping;
pub mod sentry;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;

use crate::events::TenantId;
use crate::keys::{KeyRecord, KeyRing};

/// The role a job runner's JWT carries to post events for its own tenant.
pub const ROLE_JOB_RUNNER: &str = "job_runner";
/// What a ping or check-in keeps of a POST body (answered in `Ping-Body-Limit`).
pub const OUTPUT_LIMIT_BYTES: usize = 16 * 1024;
/// How long back an end without a run id looks for the start it ends.
pub const PAIRING_WINDOW_MS: i64 = 72 * 3_600_000;

/// `JOBSTATS_INGEST_RATE`: requests per second each ingest key (or token) may make.
#[derive(Debug, Clone, Copy)]
pub struct IngestLimits {
    pub per_second: NonZeroU32,
    /// Requests allowed at once above the rate (crontabs fire together at :00).
    pub burst: NonZeroU32,
}

impl Default for IngestLimits {
    fn default() -> Self {
        IngestLimits {
            per_second: NonZeroU32::new(100).expect("non-zero"),
            burst: NonZeroU32::new(1000).expect("non-zero"),
        }
    }
}

impl IngestLimits {
    /// `per_second` requests per second with a burst of ten seconds' worth (at least 100).
    pub fn per_second(rate: u32) -> Self {
        let per_second = NonZeroU32::new(rate.max(1)).expect("at least one");
        let burst = NonZeroU32::new(rate.saturating_mul(10).max(100)).expect("non-zero");
        IngestLimits { per_second, burst }
    }
}

type KeyedLimiter = governor::DefaultKeyedRateLimiter<String>;

/// What the ingestion endpoints share across requests.
pub struct IngestState {
    /// The keys this replica accepts, followed from `JOBSTATS_KEYS`.
    pub keys: Arc<KeyRing>,
    limiter: KeyedLimiter,
    /// Starts without a run id published here lately, by (tenant, job): what an end ping
    /// pairs with before the projector has applied the start.
    starts: quick_cache::sync::Cache<(TenantId, String), (String, i64)>,
    /// Jobs this replica published a first event for lately (a ping right after a
    /// `?create=1` one must not be refused because the projector has not applied it yet).
    created: quick_cache::sync::Cache<(TenantId, String), ()>,
}

impl Default for IngestState {
    fn default() -> Self {
        IngestState::new(Arc::default(), IngestLimits::default())
    }
}

impl IngestState {
    pub fn new(keys: Arc<KeyRing>, limits: IngestLimits) -> Self {
        let quota = governor::Quota::per_second(limits.per_second).allow_burst(limits.burst);
        IngestState {
            keys,
            limiter: governor::RateLimiter::keyed(quota),
            starts: quick_cache::sync::Cache::new(10_000),
            created: quick_cache::sync::Cache::new(10_000),
        }
    }

    /// `Err(seconds)` when `caller` is over its rate: answer 429 with `Retry-After` of that
    /// many whole seconds (at least 1).
    pub fn admit(&self, caller: &str) -> Result<(), u64> {
        // The limiter keeps a cell per caller; without pruning, callers that went away
        // would stay forever.
        if self.limiter.len() > 100_000 {
            self.limiter.retain_recent();
        }
        self.limiter
            .check_key(&caller.to_owned())
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(governor::clock::Clock::now(
                    &governor::clock::DefaultClock::default(),
                ));
                wait.as_secs_f64().ceil().max(1.0) as u64
            })
    }

    fn remember_start(&self, tenant: TenantId, job: &str, execution_id: String, at_ms: i64) {
        self.starts
            .insert((tenant, job.to_owned()), (execution_id, at_ms));
    }

    fn forget_start(&self, tenant: TenantId, job: &str, execution_id: &str) {
        let key = (tenant, job.to_owned());
        if self
            .starts
            .get(&key)
            .is_some_and(|(known, _)| known == execution_id)
        {
            self.starts.remove(&key);
        }
    }

    fn recent_start(&self, tenant: TenantId, job: &str) -> Option<(String, i64)> {
        self.starts.get(&(tenant, job.to_owned()))
    }

    fn remember_created(&self, tenant: TenantId, job: &str) {
        self.created.insert((tenant, job.to_owned()), ());
    }

    fn created_here(&self, tenant: TenantId, job: &str) -> bool {
        self.created.get(&(tenant, job.to_owned())).is_some()
    }
}

/// Who is ingesting.
#[derive(Debug, Clone)]
pub enum Ingester {
    /// An ingest key: its one tenant.
    Key(KeyRecord),
    /// A `job_runner` token: its `tenant_id`.
    Runner { tenant: TenantId, subject: String },
    /// A `super_admin` token: any tenant.
    Anyone { subject: String },
}

impl Ingester {
    /// The tenant every event must belong to, when there is one.
    pub fn tenant(&self) -> Option<TenantId> {
        match self {
            Ingester::Key(key) => Some(key.tenant_id),
            Ingester::Runner { tenant, .. } => Some(*tenant),
            Ingester::Anyone { .. } => None,
        }
    }

    /// The name its request rate is counted under.
    pub fn rate_key(&self) -> String {
        match self {
            Ingester::Key(key) => key.id.clone(),
            Ingester::Runner { subject, .. } | Ingester::Anyone { subject } => {
                format!("token:{subject}")
            }
        }
    }
}

/// One event ready to publish: its subject, its bytes and its id (the `Nats-Msg-Id`).
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub subject: String,
    pub payload: Vec<u8>,
    pub event_id: String,
}

impl Outgoing {
    pub fn of(event: &crate::events::Event) -> Self {
        Outgoing {
            subject: event.subject(),
            payload: event.to_bytes(),
            event_id: event.event_id.hyphenated().to_string(),
        }
    }
}

/// Part of a batch was not acknowledged: how many were, of how many, and why.
#[derive(Debug)]
pub struct PartialPublish {
    pub acknowledged: usize,
    pub total: usize,
    pub cause: String,
}

/// Publishes `events` in order (pipelined: every publish sent, then the acks awaited) and
/// returns each one's stream sequence. A retry of the same events stores nothing twice: the
/// stream drops a repeated `Nats-Msg-Id` and answers with the first sequence.
pub async fn publish_all(
    client: &async_nats::Client,
    events: Vec<Outgoing>,
) -> Result<Vec<u64>, PartialPublish> {
    let mut js = jetstream::new(client.clone());
    js.set_timeout(Duration::from_secs(5));
    let total = events.len();
    let mut pending = Vec::with_capacity(total);
    let mut failure = None;
    for event in events {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", event.event_id.as_str());
        match js
            .publish_with_headers(event.subject, headers, event.payload.into())
            .await
        {
            Ok(ack) => pending.push(ack),
            Err(error) => {
                failure = Some(error.to_string());
                break;
            }
        }
    }
    let mut sequences = Vec::with_capacity(total);
    for ack in pending {
        match ack.await {
            Ok(ack) => sequences.push(ack.sequence),
            Err(error) => {
                failure.get_or_insert_with(|| error.to_string());
            }
        }
    }
    match failure {
        None => Ok(sequences),
        Some(cause) => Err(PartialPublish {
            acknowledged: sequences.len(),
            total,
            cause,
        }),
    }
}

/// The part of a bearer `Authorization` header after the scheme, when there is one.
pub fn bearer(headers: &poem::http::HeaderMap) -> Option<&str> {
    let value = headers
        .get(poem::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The event id of a run's event that a client may send again (a ping with `rid`, a
/// check-in with its id): the same inputs always give the same id, so JetStream drops the
/// repeat.
pub fn derived_event_id(tenant: TenantId, job: &str, run: &str, kind: &str) -> uuid::Uuid {
    // A fixed namespace of this project's own (random, made once).
    const NAMESPACE: uuid::Uuid = uuid::uuid!("5b0f3c1e-8f64-4d5e-9a43-0c1d6b2f7e19");
    uuid::Uuid::new_v5(
        &NAMESPACE,
        format!("{tenant}\u{1f}{job}\u{1f}{run}\u{1f}{kind}").as_bytes(),
    )
}

/// The last `limit` bytes of `text` (whole characters only).
pub fn tail(text: &str, limit: usize) -> &str {
    if text.len() <= limit {
        return text;
    }
    let mut start = text.len() - limit;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// One run event of §1 built from an HTTP request, checked by the projector's rules.
pub struct RunEvent<'a> {
    pub tenant: TenantId,
    pub job: &'a str,
    pub event_type: crate::events::EventType,
    pub execution_id: &'a str,
    pub event_id: uuid::Uuid,
    pub occurred_at: chrono::DateTime<chrono::Utc>,
    /// Extra fields (`exitCode`, `output`, `error`, …).
    pub fields: serde_json::Map<String, serde_json::Value>,
}

impl RunEvent<'_> {
    pub fn outgoing(self) -> Result<Outgoing, crate::events::DecodeError> {
        let mut body = serde_json::json!({
            "specVersion": 1,
            "eventId": self.event_id.hyphenated().to_string(),
            "type": self.event_type.as_str(),
            "tenantId": self.tenant.to_string(),
            "jobName": self.job,
            "occurredAt": self.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        });
        if self.event_type != crate::events::EventType::Scheduled {
            body["executionId"] = self.execution_id.into();
        }
        if let Some(object) = body.as_object_mut() {
            object.extend(self.fields);
        }
        let payload = serde_json::to_vec(&body).expect("a JSON value serializes");
        let subject = crate::events::subject_for(&self.tenant, self.event_type);
        crate::events::decode(&subject, &payload)?;
        Ok(Outgoing {
            subject,
            payload,
            event_id: self.event_id.hyphenated().to_string(),
        })
    }
}

/// Which execution an end without a run id finishes: the most recent unfinished start of
/// the job from the last 72 h (one this replica published and the projector may not have
/// applied yet, or one in the read model), else `None` (a run of its own).
pub fn paired_start(
    state: &crate::api::AppState,
    tenant: TenantId,
    job: &str,
    now_ms: i64,
) -> Result<Option<String>, crate::store::StoreError> {
    let since = now_ms - PAIRING_WINDOW_MS;
    let here = state
        .ingest
        .recent_start(tenant, job)
        .filter(|(_, at)| *at >= since);
    let stored = state
        .readers
        .get()
        .latest_unfinished_start(&tenant, job, since)?;
    Ok(match (here, stored) {
        (Some(here), Some(stored)) if stored.1 > here.1 => Some(stored.0),
        (Some(here), _) => Some(here.0),
        (None, stored) => stored.map(|(id, _)| id),
    })
}
