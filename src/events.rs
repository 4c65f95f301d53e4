//! The event contract (CONTRACT §1): the validated types a job runner publishes, and
//! `decode`, which turns a raw JetStream message (subject + bytes) into an [`Event`] or a
//! [`DecodeError`] that names the broken rule. Everything that a publisher can send is
//! decided here, so the projection never sees an invalid event.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use crate::schedule::CronSchedule;

/// Largest accepted event body, in bytes.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;
/// Largest accepted `error` text, in characters.
pub const MAX_ERROR_CHARS: usize = 4096;
/// Largest `itemsProcessed` (2^53 - 1: exact in every JSON implementation).
pub const MAX_ITEMS_PROCESSED: u64 = 9_007_199_254_740_991;
/// `graceMs` bounds (1 s … 1 day).
pub const MIN_GRACE_MS: u64 = 1_000;
pub const MAX_GRACE_MS: u64 = 86_400_000;
/// `maxRuntimeMs` bounds (1 s … 30 days).
pub const MIN_MAX_RUNTIME_MS: u64 = 1_000;
pub const MAX_MAX_RUNTIME_MS: u64 = 2_592_000_000;
/// Largest accepted `output` (the tail of a run's output), in bytes of UTF-8.
pub const MAX_OUTPUT_BYTES: usize = 16 * 1024;
/// The event format versions this build understands.
pub const SUPPORTED_SPEC_VERSIONS: &[i64] = &[1];
/// The `until` of a silence set "until lifted" (the dashboard's button, `jobstats silence
/// --until forever`): the contract has no open-ended silence, and the last instant RFC 3339
/// can write reads as what it is.
pub const SILENCED_UNTIL_LIFTED: &str = "9999-12-31T23:59:59.999Z";
/// Largest `reason` of a silence, in characters.
pub const MAX_SILENCE_REASON_CHARS: usize = 512;
/// Largest `by` of a silence (the token's `sub`), in characters.
pub const MAX_SILENCE_BY_CHARS: usize = 256;
/// `failureThreshold` / `recoveryThreshold` bounds.
pub const MAX_THRESHOLD: u64 = 100;
/// At most this many job labels; keys `[a-z0-9_]{1,32}`, values at most 128 characters.
pub const MAX_LABELS: usize = 16;
pub const MAX_LABEL_KEY_CHARS: usize = 32;
pub const MAX_LABEL_VALUE_CHARS: usize = 128;
/// Subject prefix of every event (`jobs.events.<tenantId>.<type>`).
pub const SUBJECT_PREFIX: &str = "jobs.events";

/// A tenant: a UUID, always rendered lowercase and hyphenated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(Uuid);

/// As its lowercase hyphenated text.
impl serde::Serialize for TenantId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for TenantId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        TenantId::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl TenantId {
    /// Parses a hyphenated UUID in any letter case (the `x-tenantid` header, the body).
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.len() != 36 {
            return Err("must be a hyphenated UUID".into());
        }
        Uuid::try_parse(text)
            .map(TenantId)
            .map_err(|_| "must be a hyphenated UUID".into())
    }

    /// Parses the subject token, which must already be in canonical lowercase form.
    pub fn parse_canonical(text: &str) -> Result<Self, String> {
        let id = Self::parse(text)?;
        // 36 characters that parse are the hyphenated form, so only the letter case can
        // differ from the canonical rendering (checked without rendering it: this runs for
        // every event).
        if text.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err("must be a lowercase hyphenated UUID".into());
        }
        Ok(id)
    }

    pub fn new(id: Uuid) -> Self {
        TenantId(id)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// A job name: 1–128 chars of `A-Z a-z 0-9 . _ : -`, first char alphanumeric.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobName(String);

impl JobName {
    pub const MAX_LEN: usize = 128;

    pub fn parse(text: &str) -> Result<Self, String> {
        let mut chars = text.chars();
        match chars.next() {
            None => return Err("must not be empty".into()),
            Some(first) if !first.is_ascii_alphanumeric() => {
                return Err("must start with a letter or digit".into())
            }
            Some(_) => {}
        }
        if text.len() > Self::MAX_LEN {
            return Err(format!("must be at most {} characters", Self::MAX_LEN));
        }
        if let Some(bad) = text
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
        {
            return Err(format!(
                "may only contain A-Z a-z 0-9 . _ : - (found {:?})",
                bad
            ));
        }
        Ok(JobName(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Identifies one execution of a job: 1–128 printable characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExecutionId(String);

impl ExecutionId {
    pub const MAX_CHARS: usize = 128;

    pub fn parse(text: &str) -> Result<Self, String> {
        let count = text.chars().count();
        if count == 0 {
            return Err("must not be empty".into());
        }
        if count > Self::MAX_CHARS {
            return Err(format!("must be at most {} characters", Self::MAX_CHARS));
        }
        if text.chars().any(char::is_control) {
            return Err("must not contain control characters".into());
        }
        Ok(ExecutionId(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ExecutionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The event types, named as on the wire: five of a job's lifecycle and `silenced`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Scheduled,
    Enqueued,
    Started,
    Completed,
    Failed,
    Silenced,
}

impl EventType {
    pub const ALL: [EventType; 6] = [
        EventType::Scheduled,
        EventType::Enqueued,
        EventType::Started,
        EventType::Completed,
        EventType::Failed,
        EventType::Silenced,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Scheduled => "scheduled",
            EventType::Enqueued => "enqueued",
            EventType::Started => "started",
            EventType::Completed => "completed",
            EventType::Failed => "failed",
            EventType::Silenced => "silenced",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == text)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated lifecycle event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub event_id: Uuid,
    pub tenant_id: TenantId,
    pub job_name: JobName,
    pub occurred_at: DateTime<Utc>,
    pub kind: EventKind,
}

/// What happened, with the fields that belong to that type only.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    /// Sets (or, with `None`, removes) the job's cron schedule, with the zone it is
    /// evaluated in (`timezone`, CONTRACT §10) inside the [`CronSchedule`].
    Scheduled {
        cron: Option<CronSchedule>,
        /// How late a run may start and still count for its fire (CONTRACT §5).
        grace_ms: Option<i64>,
        /// How long a run may process before it is stuck (CONTRACT §5).
        max_runtime_ms: Option<i64>,
        /// The job's labels (CONTRACT §11): routing and grouping; empty when none.
        labels: Labels,
        /// Failures in a row before the job is `failing` (CONTRACT §11; `None`: 1).
        failure_threshold: Option<u8>,
        /// Completions in a row before a failing job is `healthy` again (`None`: 1).
        recovery_threshold: Option<u8>,
    },
    /// Quiets the job's alerts until `until` (`None`, or an instant already past: lifts the
    /// silence). The job is judged as always (CONTRACT §11).
    Silenced {
        until: Option<DateTime<Utc>>,
        reason: Option<String>,
        /// Who silenced it: the token's `sub` when it came through the API.
        by: Option<String>,
    },
    Enqueued {
        execution_id: ExecutionId,
    },
    Started {
        execution_id: ExecutionId,
    },
    Completed {
        execution_id: ExecutionId,
        items_processed: Option<u64>,
        /// The command's exit code (0–255).
        exit_code: Option<u8>,
        /// The tail of the run's output (at most [`MAX_OUTPUT_BYTES`]).
        output: Option<String>,
    },
    Failed {
        execution_id: ExecutionId,
        items_processed: Option<u64>,
        error: Option<String>,
        exit_code: Option<u8>,
        output: Option<String>,
    },
}

/// A job's labels, in key order.
pub type Labels = std::collections::BTreeMap<String, String>;

/// The last [`MAX_OUTPUT_BYTES`] of `text`, starting on a character boundary: what an
/// `output` field keeps of a longer run's output.
pub fn tail_output(text: &str) -> &str {
    if text.len() <= MAX_OUTPUT_BYTES {
        return text;
    }
    let mut start = text.len() - MAX_OUTPUT_BYTES;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

impl Event {
    pub fn event_type(&self) -> EventType {
        match self.kind {
            EventKind::Scheduled { .. } => EventType::Scheduled,
            EventKind::Enqueued { .. } => EventType::Enqueued,
            EventKind::Started { .. } => EventType::Started,
            EventKind::Completed { .. } => EventType::Completed,
            EventKind::Failed { .. } => EventType::Failed,
            EventKind::Silenced { .. } => EventType::Silenced,
        }
    }

    pub fn execution_id(&self) -> Option<&ExecutionId> {
        match &self.kind {
            EventKind::Scheduled { .. } | EventKind::Silenced { .. } => None,
            EventKind::Enqueued { execution_id }
            | EventKind::Started { execution_id }
            | EventKind::Completed { execution_id, .. }
            | EventKind::Failed { execution_id, .. } => Some(execution_id),
        }
    }

    /// The subject this event is published on.
    pub fn subject(&self) -> String {
        subject_for(&self.tenant_id, self.event_type())
    }

    /// The wire form (camelCase JSON), the inverse of [`decode`].
    pub fn to_json(&self) -> Value {
        let mut body = serde_json::json!({
            "specVersion": 1,
            "eventId": self.event_id.hyphenated().to_string(),
            "type": self.event_type().as_str(),
            "tenantId": self.tenant_id.to_string(),
            "jobName": self.job_name.as_str(),
            "occurredAt": self.occurred_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        });
        let object = body
            .as_object_mut()
            .expect("json! of an object literal is an object");
        if let Some(execution_id) = self.execution_id() {
            object.insert("executionId".into(), execution_id.as_str().into());
        }
        match &self.kind {
            EventKind::Scheduled {
                cron,
                grace_ms,
                max_runtime_ms,
                labels,
                failure_threshold,
                recovery_threshold,
            } => {
                if !labels.is_empty() {
                    object.insert("labels".into(), serde_json::json!(labels));
                }
                if let Some(threshold) = failure_threshold {
                    object.insert("failureThreshold".into(), (*threshold).into());
                }
                if let Some(threshold) = recovery_threshold {
                    object.insert("recoveryThreshold".into(), (*threshold).into());
                }
                if let Some(zone) = cron
                    .as_ref()
                    .map(|c| c.timezone())
                    .filter(|z| *z != crate::schedule::DEFAULT_TIMEZONE)
                {
                    object.insert("timezone".into(), zone.into());
                }
                let cron = cron.as_ref().map(|c| Value::from(c.expression()));
                object.insert("cron".into(), cron.unwrap_or(Value::Null));
                if let Some(grace) = grace_ms {
                    object.insert("graceMs".into(), (*grace).into());
                }
                if let Some(max_runtime) = max_runtime_ms {
                    object.insert("maxRuntimeMs".into(), (*max_runtime).into());
                }
            }
            EventKind::Completed {
                items_processed,
                exit_code,
                output,
                ..
            } => {
                if let Some(items) = items_processed {
                    object.insert("itemsProcessed".into(), (*items).into());
                }
                insert_run_result(object, *exit_code, output.as_deref());
            }
            EventKind::Failed {
                items_processed,
                error,
                exit_code,
                output,
                ..
            } => {
                if let Some(items) = items_processed {
                    object.insert("itemsProcessed".into(), (*items).into());
                }
                if let Some(error) = error {
                    object.insert("error".into(), error.as_str().into());
                }
                insert_run_result(object, *exit_code, output.as_deref());
            }
            EventKind::Silenced { until, reason, by } => {
                let until =
                    until.map(|u| Value::from(u.to_rfc3339_opts(SecondsFormat::Millis, true)));
                object.insert("until".into(), until.unwrap_or(Value::Null));
                if let Some(reason) = reason {
                    object.insert("reason".into(), reason.as_str().into());
                }
                if let Some(by) = by {
                    object.insert("by".into(), by.as_str().into());
                }
            }
            EventKind::Enqueued { .. } | EventKind::Started { .. } => {}
        }
        body
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.to_json()).expect("a serde_json::Value always serializes")
    }
}

fn insert_run_result(
    object: &mut serde_json::Map<String, Value>,
    exit_code: Option<u8>,
    output: Option<&str>,
) {
    if let Some(code) = exit_code {
        object.insert("exitCode".into(), code.into());
    }
    if let Some(output) = output {
        object.insert("output".into(), output.into());
    }
}

pub fn subject_for(tenant: &TenantId, event_type: EventType) -> String {
    format!("{SUBJECT_PREFIX}.{tenant}.{event_type}")
}

/// Why a message is a dead letter. Each variant is one broken rule of CONTRACT §1; the
/// consumer records it (code + message) with the message and moves on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("body is {size} bytes, over the {MAX_EVENT_BYTES}-byte limit")]
    Oversize { size: usize },
    #[error("body is not valid UTF-8")]
    NotUtf8,
    #[error("body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("body is not a JSON object")]
    NotAnObject,
    #[error("specVersion {0} is not supported (supported: 1)")]
    UnsupportedSpecVersion(String),
    #[error("required field `{0}` is missing")]
    MissingField(&'static str),
    #[error("field `{field}` must be {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    #[error("field `{field}` is invalid: {reason}")]
    InvalidField { field: &'static str, reason: String },
    #[error("field `{field}` is not allowed on {event_type} events")]
    FieldNotAllowed {
        field: &'static str,
        event_type: EventType,
    },
    #[error("subject `{subject}` is not jobs.events.<tenantId>.<type>: {reason}")]
    BadSubject { subject: String, reason: String },
    #[error("unknown event type `{0}`")]
    UnknownType(String),
    #[error("body type `{body}` differs from the subject's type `{subject}`")]
    TypeMismatch { subject: String, body: String },
    #[error("body tenantId `{body}` differs from the subject's tenant `{subject}`")]
    TenantMismatch { subject: String, body: String },
    #[error("cron `{expression}` is invalid: {reason}")]
    InvalidCron { expression: String, reason: String },
}

impl DecodeError {
    /// A stable machine-readable code, used in the dead-letter table and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::Oversize { .. } => "oversize",
            DecodeError::NotUtf8 => "not_utf8",
            DecodeError::MalformedJson(_) => "malformed_json",
            DecodeError::NotAnObject => "not_an_object",
            DecodeError::UnsupportedSpecVersion(_) => "unsupported_spec_version",
            DecodeError::MissingField(_) => "missing_field",
            DecodeError::WrongType { .. } => "wrong_type",
            DecodeError::InvalidField { .. } => "invalid_field",
            DecodeError::FieldNotAllowed { .. } => "field_not_allowed",
            DecodeError::BadSubject { .. } => "bad_subject",
            DecodeError::UnknownType(_) => "unknown_type",
            DecodeError::TypeMismatch { .. } => "type_mismatch",
            DecodeError::TenantMismatch { .. } => "tenant_mismatch",
            DecodeError::InvalidCron { .. } => "invalid_cron",
        }
    }
}

/// The subject's two meaningful tokens.
struct SubjectParts<'a> {
    tenant: TenantId,
    type_token: &'a str,
}

fn parse_subject(subject: &str) -> Result<SubjectParts<'_>, DecodeError> {
    let bad = |reason: &str| DecodeError::BadSubject {
        subject: subject.chars().take(256).collect(),
        reason: reason.to_owned(),
    };
    let rest = subject
        .strip_prefix(SUBJECT_PREFIX)
        .and_then(|r| r.strip_prefix('.'))
        .ok_or_else(|| bad("wrong prefix"))?;
    let (tenant, type_token) = rest
        .split_once('.')
        .ok_or_else(|| bad("expected 4 tokens"))?;
    if type_token.contains('.') {
        return Err(bad("expected 4 tokens"));
    }
    let tenant = TenantId::parse_canonical(tenant).map_err(|r| bad(&format!("tenant {r}")))?;
    Ok(SubjectParts { tenant, type_token })
}

/// The body's fields before validation. Each keeps its JSON kind so that a wrong type is
/// reported with the field's name; strings borrow from the payload when they can. Unknown
/// fields are skipped; duplicate keys are malformed JSON.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEvent<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    spec_version: Option<Field<'a>>,
    #[serde(default, borrow, deserialize_with = "present")]
    event_id: Option<Field<'a>>,
    #[serde(default, borrow, rename = "type", deserialize_with = "present")]
    event_type: Option<Field<'a>>,
    #[serde(default, borrow, deserialize_with = "present")]
    tenant_id: Option<Field<'a>>,
    #[serde(default, borrow, deserialize_with = "present")]
    job_name: Option<Field<'a>>,
    #[serde(default, borrow, deserialize_with = "present")]
    execution_id: Option<Field<'a>>,
    #[serde(default, borrow, deserialize_with = "present")]
    occurred_at: Option<Field<'a>>,
    #[serde(default, borrow, deserialize_with = "present")]
    items_processed: Option<Field<'a>>,
    #[serde(default, borrow, deserialize_with = "present")]
    error: Option<Field<'a>>,
    #[serde(default, borrow, deserialize_with = "present")]
    cron: Option<Field<'a>>,
    #[serde(default, borrow, deserialize_with = "present")]
    grace_ms: Option<Field<'a>>,
    #[serde(default, borrow, deserialize_with = "present")]
    max_runtime_ms: Option<Field<'a>>,
    #[serde(default, borrow, deserialize_with = "present")]
    timezone: Option<Field<'a>>,
    #[serde(default, borrow, deserialize_with = "present")]
    exit_code: Option<Field<'a>>,
    #[serde(default, borrow, deserialize_with = "present")]
    output: Option<Field<'a>>,
    /// Kept whole: its pairs are validated one by one.
    #[serde(default, deserialize_with = "present_value")]
    labels: Option<Value>,
    #[serde(default, borrow, deserialize_with = "present")]
    failure_threshold: Option<Field<'a>>,
    #[serde(default, borrow, deserialize_with = "present")]
    recovery_threshold: Option<Field<'a>>,
    #[serde(default, borrow, deserialize_with = "present")]
    until: Option<Field<'a>>,
    #[serde(default, borrow, deserialize_with = "present")]
    reason: Option<Field<'a>>,
    /// Read on `silenced` only (elsewhere an unknown field, ignored).
    #[serde(default, borrow, deserialize_with = "present")]
    by: Option<Field<'a>>,
}

/// One JSON value, reduced to what validation needs.
#[derive(Debug)]
enum Field<'a> {
    Null,
    Bool,
    Number(serde_json::Number),
    Str(std::borrow::Cow<'a, str>),
    /// An array or an object (contents skipped).
    Composite,
}

impl<'de: 'a, 'a> Deserialize<'de> for Field<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl<'de> serde::de::Visitor<'de> for FieldVisitor {
            type Value = Field<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Field<'de>, E> {
                Ok(Field::Bool)
            }
            fn visit_i64<E>(self, v: i64) -> Result<Field<'de>, E> {
                Ok(Field::Number(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Field<'de>, E> {
                Ok(Field::Number(v.into()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Field<'de>, E> {
                Ok(serde_json::Number::from_f64(v).map_or(Field::Composite, Field::Number))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Field<'de>, E> {
                Ok(Field::Str(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Field<'de>, E> {
                Ok(Field::Str(std::borrow::Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Field<'de>, E> {
                Ok(Field::Str(std::borrow::Cow::Owned(v)))
            }
            fn visit_unit<E>(self) -> Result<Field<'de>, E> {
                Ok(Field::Null)
            }
            fn visit_none<E>(self) -> Result<Field<'de>, E> {
                Ok(Field::Null)
            }
            fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Field<'de>, D::Error> {
                Field::deserialize(d)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Field<'de>, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Field::Composite)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Field<'de>, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Field::Composite)
            }
        }
        deserializer.deserialize_any(FieldVisitor)
    }
}

/// Keeps an explicit `null` (`Some(Field::Null)`) apart from a missing field (`None`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Field<'de>>, D::Error> {
    Field::deserialize(d).map(Some)
}

/// As [`present`], for a field kept as a whole JSON value.
fn present_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

fn required_str<'v>(
    value: &'v Option<Field<'_>>,
    field: &'static str,
) -> Result<&'v str, DecodeError> {
    match value {
        None => Err(DecodeError::MissingField(field)),
        Some(Field::Str(s)) => Ok(s),
        Some(_) => Err(DecodeError::WrongType {
            field,
            expected: "a string",
        }),
    }
}

fn optional_items(value: &Option<Field<'_>>) -> Result<Option<u64>, DecodeError> {
    optional_integer(value, "itemsProcessed", 0, MAX_ITEMS_PROCESSED)
}

/// An optional integer in `min..=max` (null counts as absent).
fn optional_integer(
    value: &Option<Field<'_>>,
    field: &'static str,
    min: u64,
    max: u64,
) -> Result<Option<u64>, DecodeError> {
    let Some(value) = value else { return Ok(None) };
    let number = match value {
        Field::Null => return Ok(None),
        Field::Number(n) => n,
        _ => {
            return Err(DecodeError::WrongType {
                field,
                expected: "an integer",
            })
        }
    };
    let out_of_range = || DecodeError::InvalidField {
        field,
        reason: if min == 0 {
            format!("must be >= 0 and at most {max}")
        } else {
            format!("must be between {min} and {max}")
        },
    };
    let integer = if let Some(n) = number.as_u64() {
        n
    } else if number.as_i64().is_some() {
        return Err(out_of_range());
    } else {
        // JSON Schema counts 3.0 as an integer; accept it the same way.
        let float = number.as_f64().unwrap_or(f64::NAN);
        if float.fract() != 0.0 || !float.is_finite() {
            return Err(DecodeError::WrongType {
                field,
                expected: "an integer",
            });
        }
        if float < min as f64 || float > max as f64 {
            return Err(out_of_range());
        }
        float as u64
    };
    if !(min..=max).contains(&integer) {
        return Err(out_of_range());
    }
    Ok(Some(integer))
}

fn optional_error(value: &Option<Field<'_>>) -> Result<Option<String>, DecodeError> {
    match value {
        None | Some(Field::Null) => Ok(None),
        Some(Field::Str(s)) if s.chars().count() > MAX_ERROR_CHARS => {
            Err(DecodeError::InvalidField {
                field: "error",
                reason: format!("must be at most {MAX_ERROR_CHARS} characters"),
            })
        }
        Some(Field::Str(s)) => Ok(Some(s.to_string())),
        Some(_) => Err(DecodeError::WrongType {
            field: "error",
            expected: "a string or null",
        }),
    }
}

fn not_allowed(
    value: &Option<Field<'_>>,
    field: &'static str,
    event_type: EventType,
) -> Result<(), DecodeError> {
    match value {
        Some(_) => Err(DecodeError::FieldNotAllowed { field, event_type }),
        None => Ok(()),
    }
}

/// `graceMs`, `maxRuntimeMs` and `timezone` travel with the schedule only.
fn not_allowed_schedule_settings(
    raw: &RawEvent<'_>,
    event_type: EventType,
) -> Result<(), DecodeError> {
    not_allowed(&raw.grace_ms, "graceMs", event_type)?;
    not_allowed(&raw.max_runtime_ms, "maxRuntimeMs", event_type)?;
    not_allowed(&raw.timezone, "timezone", event_type)?;
    if raw.labels.is_some() {
        return Err(DecodeError::FieldNotAllowed {
            field: "labels",
            event_type,
        });
    }
    not_allowed(&raw.failure_threshold, "failureThreshold", event_type)?;
    not_allowed(&raw.recovery_threshold, "recoveryThreshold", event_type)?;
    not_allowed(&raw.until, "until", event_type)?;
    not_allowed(&raw.reason, "reason", event_type)
}

/// A `scheduled` event's `labels`: an object of at most [`MAX_LABELS`] string values, keys
/// `[a-z0-9_]{1,32}` (null counts as absent).
fn labels(raw: &RawEvent<'_>) -> Result<Labels, DecodeError> {
    let invalid = |reason: String| DecodeError::InvalidField {
        field: "labels",
        reason,
    };
    let object = match &raw.labels {
        None | Some(Value::Null) => return Ok(Labels::new()),
        Some(Value::Object(object)) => object,
        Some(_) => {
            return Err(DecodeError::WrongType {
                field: "labels",
                expected: "an object of strings",
            })
        }
    };
    if object.len() > MAX_LABELS {
        return Err(invalid(format!("must have at most {MAX_LABELS} labels")));
    }
    let mut labels = Labels::new();
    for (key, value) in object {
        let key_ok = (1..=MAX_LABEL_KEY_CHARS).contains(&key.len())
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !key_ok {
            return Err(invalid(format!(
                "key {:?} must be 1-{MAX_LABEL_KEY_CHARS} characters of a-z 0-9 _",
                key.chars().take(64).collect::<String>()
            )));
        }
        let Value::String(value) = value else {
            return Err(invalid(format!("the value of {key:?} must be a string")));
        };
        if value.chars().count() > MAX_LABEL_VALUE_CHARS {
            return Err(invalid(format!(
                "the value of {key:?} must be at most {MAX_LABEL_VALUE_CHARS} characters"
            )));
        }
        labels.insert(key.clone(), value.clone());
    }
    Ok(labels)
}

/// A `silenced` event's fields: `until` (required, RFC 3339 or null), `reason`, `by`.
fn silenced_kind(raw: &RawEvent<'_>) -> Result<EventKind, DecodeError> {
    let event_type = EventType::Silenced;
    not_allowed(&raw.execution_id, "executionId", event_type)?;
    not_allowed(&raw.items_processed, "itemsProcessed", event_type)?;
    not_allowed(&raw.error, "error", event_type)?;
    not_allowed(&raw.cron, "cron", event_type)?;
    not_allowed(&raw.grace_ms, "graceMs", event_type)?;
    not_allowed(&raw.max_runtime_ms, "maxRuntimeMs", event_type)?;
    not_allowed(&raw.timezone, "timezone", event_type)?;
    not_allowed(&raw.failure_threshold, "failureThreshold", event_type)?;
    not_allowed(&raw.recovery_threshold, "recoveryThreshold", event_type)?;
    if raw.labels.is_some() {
        return Err(DecodeError::FieldNotAllowed {
            field: "labels",
            event_type,
        });
    }
    not_allowed_run_result(raw, event_type)?;
    let until = match &raw.until {
        None => return Err(DecodeError::MissingField("until")),
        Some(Field::Null) => None,
        Some(Field::Str(text)) => Some(
            DateTime::parse_from_rfc3339(text)
                .map_err(|e| DecodeError::InvalidField {
                    field: "until",
                    reason: format!("must be an RFC 3339 timestamp or null ({e})"),
                })?
                .with_timezone(&Utc),
        ),
        Some(_) => {
            return Err(DecodeError::WrongType {
                field: "until",
                expected: "an RFC 3339 string or null",
            })
        }
    };
    let text = |value: &Option<Field<'_>>, field: &'static str, max: usize| match value {
        None | Some(Field::Null) => Ok(None),
        Some(Field::Str(s)) if s.chars().count() > max => Err(DecodeError::InvalidField {
            field,
            reason: format!("must be at most {max} characters"),
        }),
        Some(Field::Str(s)) => Ok(Some(s.to_string())),
        Some(_) => Err(DecodeError::WrongType {
            field,
            expected: "a string or null",
        }),
    };
    Ok(EventKind::Silenced {
        until,
        reason: text(&raw.reason, "reason", MAX_SILENCE_REASON_CHARS)?,
        by: text(&raw.by, "by", MAX_SILENCE_BY_CHARS)?,
    })
}

/// `exitCode` and `output` belong to finished runs only.
fn not_allowed_run_result(raw: &RawEvent<'_>, event_type: EventType) -> Result<(), DecodeError> {
    not_allowed(&raw.exit_code, "exitCode", event_type)?;
    not_allowed(&raw.output, "output", event_type)
}

/// A finished run's `exitCode` (0–255) and `output` (at most [`MAX_OUTPUT_BYTES`]); null
/// counts as absent.
fn run_result(raw: &RawEvent<'_>) -> Result<(Option<u8>, Option<String>), DecodeError> {
    let exit_code = optional_integer(&raw.exit_code, "exitCode", 0, 255)?.map(|c| c as u8);
    let output = match &raw.output {
        None | Some(Field::Null) => None,
        Some(Field::Str(s)) if s.len() > MAX_OUTPUT_BYTES => {
            return Err(DecodeError::InvalidField {
                field: "output",
                reason: format!(
                    "must be at most {MAX_OUTPUT_BYTES} bytes of UTF-8 (send the tail of the output)"
                ),
            })
        }
        Some(Field::Str(s)) => Some(s.to_string()),
        Some(_) => {
            return Err(DecodeError::WrongType {
                field: "output",
                expected: "a string or null",
            })
        }
    };
    Ok((exit_code, output))
}

/// A `scheduled` event's zone: an IANA name, or none (null counts as absent: UTC).
fn optional_timezone(raw: &RawEvent<'_>) -> Result<Option<chrono_tz::Tz>, DecodeError> {
    match &raw.timezone {
        None | Some(Field::Null) => Ok(None),
        Some(Field::Str(name)) => {
            crate::schedule::parse_timezone(name)
                .map(Some)
                .map_err(|reason| DecodeError::InvalidField {
                    field: "timezone",
                    reason,
                })
        }
        Some(_) => Err(DecodeError::WrongType {
            field: "timezone",
            expected: "a string or null",
        }),
    }
}

/// The message's JSON object, its fields borrowed from `text`.
fn parse_object(text: &str) -> Result<RawEvent<'_>, DecodeError> {
    // One pass into the field struct; only a failure pays for a second look at the JSON. Serde
    // would also fill a struct from a JSON array, hence the explicit object check.
    if !text.trim_start().starts_with('{') {
        return Err(match serde_json::from_str::<Value>(text) {
            Ok(_) => DecodeError::NotAnObject,
            Err(e) => DecodeError::MalformedJson(e.to_string()),
        });
    }
    serde_json::from_str(text).map_err(|error| match serde_json::from_str::<Value>(text) {
        Ok(value) if !value.is_object() => DecodeError::NotAnObject,
        _ => DecodeError::MalformedJson(error.to_string()),
    })
}

/// A version the decoder knows, or none (the current one).
fn check_spec_version(spec_version: &Option<Field<'_>>) -> Result<(), DecodeError> {
    match spec_version {
        None => Ok(()),
        Some(Field::Number(n))
            if n.as_i64()
                .is_some_and(|v| SUPPORTED_SPEC_VERSIONS.contains(&v)) =>
        {
            Ok(())
        }
        Some(Field::Number(n)) => Err(DecodeError::UnsupportedSpecVersion(n.to_string())),
        Some(_) => Err(DecodeError::WrongType {
            field: "specVersion",
            expected: "an integer",
        }),
    }
}

/// A `scheduled` event's fields: the cron (or null) and its optional settings.
fn scheduled_kind(raw: &RawEvent<'_>) -> Result<EventKind, DecodeError> {
    not_allowed(&raw.execution_id, "executionId", EventType::Scheduled)?;
    not_allowed(&raw.items_processed, "itemsProcessed", EventType::Scheduled)?;
    not_allowed(&raw.error, "error", EventType::Scheduled)?;
    not_allowed_run_result(raw, EventType::Scheduled)?;
    not_allowed(&raw.until, "until", EventType::Scheduled)?;
    not_allowed(&raw.reason, "reason", EventType::Scheduled)?;
    let cron = match &raw.cron {
        None => return Err(DecodeError::MissingField("cron")),
        Some(Field::Null) => None,
        Some(Field::Str(expression)) => Some(CronSchedule::parse(expression).map_err(
            |reason| DecodeError::InvalidCron {
                expression: expression.chars().take(256).collect(),
                reason,
            },
        )?),
        Some(_) => {
            return Err(DecodeError::WrongType {
                field: "cron",
                expected: "a string or null",
            })
        }
    };
    let zone = optional_timezone(raw)?;
    let cron = match (cron, zone) {
        (Some(cron), Some(zone)) => Some(cron.in_zone(zone)),
        (cron, _) => cron,
    };
    let grace_ms = optional_integer(&raw.grace_ms, "graceMs", MIN_GRACE_MS, MAX_GRACE_MS)?;
    let max_runtime_ms = optional_integer(
        &raw.max_runtime_ms,
        "maxRuntimeMs",
        MIN_MAX_RUNTIME_MS,
        MAX_MAX_RUNTIME_MS,
    )?;
    let threshold =
        |value, field| optional_integer(value, field, 1, MAX_THRESHOLD).map(|t| t.map(|t| t as u8));
    Ok(EventKind::Scheduled {
        cron,
        grace_ms: grace_ms.map(|g| g as i64),
        max_runtime_ms: max_runtime_ms.map(|m| m as i64),
        labels: labels(raw)?,
        failure_threshold: threshold(&raw.failure_threshold, "failureThreshold")?,
        recovery_threshold: threshold(&raw.recovery_threshold, "recoveryThreshold")?,
    })
}

/// The fields of one event type: those it needs, checked, and those it must not carry.
fn event_kind(raw: &RawEvent<'_>, event_type: EventType) -> Result<EventKind, DecodeError> {
    let execution_id = |raw: &RawEvent<'_>| -> Result<ExecutionId, DecodeError> {
        ExecutionId::parse(required_str(&raw.execution_id, "executionId")?).map_err(|reason| {
            DecodeError::InvalidField {
                field: "executionId",
                reason,
            }
        })
    };

    Ok(match event_type {
        EventType::Scheduled => scheduled_kind(raw)?,
        EventType::Silenced => silenced_kind(raw)?,
        EventType::Enqueued | EventType::Started => {
            let execution_id = execution_id(raw)?;
            not_allowed(&raw.items_processed, "itemsProcessed", event_type)?;
            not_allowed(&raw.error, "error", event_type)?;
            not_allowed(&raw.cron, "cron", event_type)?;
            not_allowed_schedule_settings(raw, event_type)?;
            not_allowed_run_result(raw, event_type)?;
            if event_type == EventType::Enqueued {
                EventKind::Enqueued { execution_id }
            } else {
                EventKind::Started { execution_id }
            }
        }
        EventType::Completed => {
            let execution_id = execution_id(raw)?;
            let items_processed = optional_items(&raw.items_processed)?;
            not_allowed(&raw.error, "error", event_type)?;
            not_allowed(&raw.cron, "cron", event_type)?;
            not_allowed_schedule_settings(raw, event_type)?;
            let (exit_code, output) = run_result(raw)?;
            EventKind::Completed {
                execution_id,
                items_processed,
                exit_code,
                output,
            }
        }
        EventType::Failed => {
            let execution_id = execution_id(raw)?;
            let items_processed = optional_items(&raw.items_processed)?;
            let error = optional_error(&raw.error)?;
            not_allowed(&raw.cron, "cron", event_type)?;
            not_allowed_schedule_settings(raw, event_type)?;
            let (exit_code, output) = run_result(raw)?;
            EventKind::Failed {
                execution_id,
                items_processed,
                error,
                exit_code,
                output,
            }
        }
    })
}

/// Decodes and validates one message. Rules are checked in a fixed order (size, subject,
/// encoding, JSON, version, required fields, types, cross-checks), so a message breaking several
/// rules always gets the same reason.
pub fn decode(subject: &str, payload: &[u8]) -> Result<Event, DecodeError> {
    if payload.len() > MAX_EVENT_BYTES {
        return Err(DecodeError::Oversize {
            size: payload.len(),
        });
    }
    let subject_parts = parse_subject(subject)?;
    let text = std::str::from_utf8(payload).map_err(|_| DecodeError::NotUtf8)?;
    let raw = parse_object(text)?;

    check_spec_version(&raw.spec_version)?;

    let body_type = required_str(&raw.event_type, "type")?;
    let event_type = EventType::parse(subject_parts.type_token).ok_or_else(|| {
        DecodeError::UnknownType(subject_parts.type_token.chars().take(64).collect())
    })?;
    if body_type != subject_parts.type_token {
        return Err(match EventType::parse(body_type) {
            None => DecodeError::UnknownType(body_type.chars().take(64).collect()),
            Some(_) => DecodeError::TypeMismatch {
                subject: subject_parts.type_token.to_owned(),
                body: body_type.to_owned(),
            },
        });
    }

    let event_id_text = required_str(&raw.event_id, "eventId")?;
    let event_id = if event_id_text.len() == 36 {
        Uuid::try_parse(event_id_text).ok()
    } else {
        None
    }
    .ok_or_else(|| DecodeError::InvalidField {
        field: "eventId",
        reason: "must be a hyphenated UUID".into(),
    })?;

    let tenant_text = required_str(&raw.tenant_id, "tenantId")?;
    let tenant_id =
        TenantId::parse_canonical(tenant_text).map_err(|reason| DecodeError::InvalidField {
            field: "tenantId",
            reason,
        })?;
    if tenant_id != subject_parts.tenant {
        return Err(DecodeError::TenantMismatch {
            subject: subject_parts.tenant.to_string(),
            body: tenant_id.to_string(),
        });
    }

    let job_name = JobName::parse(required_str(&raw.job_name, "jobName")?).map_err(|reason| {
        DecodeError::InvalidField {
            field: "jobName",
            reason,
        }
    })?;

    let occurred_text = required_str(&raw.occurred_at, "occurredAt")?;
    let occurred_at = DateTime::parse_from_rfc3339(occurred_text)
        .map_err(|e| DecodeError::InvalidField {
            field: "occurredAt",
            reason: format!("must be an RFC 3339 timestamp ({e})"),
        })?
        .with_timezone(&Utc);

    let kind = event_kind(&raw, event_type)?;

    Ok(Event {
        event_id,
        tenant_id,
        job_name,
        occurred_at,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TENANT: &str = "3f0c7f7e-8a51-4a52-9f7e-0d6a4c1b2e11";

    fn subject(t: &str) -> String {
        format!("jobs.events.{TENANT}.{t}")
    }

    fn completed() -> Value {
        json!({
            "eventId": "7d444840-9dc0-41d2-9c0b-7cd7b4c7e8a1",
            "type": "completed",
            "tenantId": TENANT,
            "jobName": "tokenExpiry",
            "executionId": "exec-001",
            "occurredAt": "2025-07-10T12:00:38.000Z",
            "itemsProcessed": 150,
        })
    }

    fn decode_value(t: &str, v: &Value) -> Result<Event, DecodeError> {
        decode(&subject(t), &serde_json::to_vec(v).unwrap())
    }

    #[test]
    fn a_valid_completed_event_round_trips_through_its_wire_form() {
        let event = decode_value("completed", &completed()).unwrap();
        assert_eq!(event.job_name.as_str(), "tokenExpiry");
        assert_eq!(
            event.kind,
            EventKind::Completed {
                execution_id: ExecutionId::parse("exec-001").unwrap(),
                items_processed: Some(150),
                exit_code: None,
                output: None,
            }
        );
        let again = decode(&event.subject(), &event.to_bytes()).unwrap();
        assert_eq!(again, event);
    }

    #[test]
    fn each_broken_rule_gets_its_own_reason() {
        let mut missing = completed();
        missing.as_object_mut().unwrap().remove("executionId");
        assert_eq!(
            decode_value("completed", &missing),
            Err(DecodeError::MissingField("executionId"))
        );

        let mut mistyped = completed();
        mistyped["itemsProcessed"] = json!("3");
        assert_eq!(
            decode_value("completed", &mistyped).unwrap_err().code(),
            "wrong_type"
        );

        let mut negative = completed();
        negative["itemsProcessed"] = json!(-1);
        assert_eq!(
            decode_value("completed", &negative).unwrap_err().code(),
            "invalid_field"
        );

        assert_eq!(
            decode_value("failed", &completed()).unwrap_err().code(),
            "type_mismatch"
        );
        assert_eq!(
            decode(
                &format!("jobs.events.{}.completed", Uuid::nil()),
                &serde_json::to_vec(&completed()).unwrap()
            )
            .unwrap_err()
            .code(),
            "tenant_mismatch"
        );
        assert_eq!(
            decode(&subject("completed"), b"{nope").unwrap_err().code(),
            "malformed_json"
        );
        assert_eq!(
            decode(&subject("completed"), b"[1]").unwrap_err().code(),
            "not_an_object"
        );
        assert_eq!(
            decode(&subject("completed"), &[0xff, 0xfe])
                .unwrap_err()
                .code(),
            "not_utf8"
        );
        assert_eq!(
            decode(&subject("completed"), &vec![b' '; MAX_EVENT_BYTES + 1])
                .unwrap_err()
                .code(),
            "oversize"
        );
        let mut version = completed();
        version["specVersion"] = json!(2);
        assert_eq!(
            decode_value("completed", &version).unwrap_err().code(),
            "unsupported_spec_version"
        );
        let mut with_cron = completed();
        with_cron["cron"] = json!("* * * * *");
        assert_eq!(
            decode_value("completed", &with_cron).unwrap_err().code(),
            "field_not_allowed"
        );
    }

    #[test]
    fn scheduled_requires_cron_but_accepts_null() {
        let base = json!({
            "eventId": "7d444840-9dc0-41d2-9c0b-7cd7b4c7e8a1",
            "type": "scheduled",
            "tenantId": TENANT,
            "jobName": "tokenExpiry",
            "occurredAt": "2025-07-10T12:00:00Z",
        });
        assert_eq!(
            decode_value("scheduled", &base),
            Err(DecodeError::MissingField("cron"))
        );
        let mut null = base.clone();
        null["cron"] = Value::Null;
        assert_eq!(
            decode_value("scheduled", &null).unwrap().kind,
            EventKind::Scheduled {
                cron: None,
                grace_ms: None,
                max_runtime_ms: None,
                labels: Labels::new(),
                failure_threshold: None,
                recovery_threshold: None,
            }
        );
        let mut bad = base;
        bad["cron"] = json!("61 * * * *");
        assert_eq!(
            decode_value("scheduled", &bad).unwrap_err().code(),
            "invalid_cron"
        );
    }

    #[test]
    fn labels_and_thresholds_ride_on_scheduled_events_within_their_bounds() {
        let base = json!({"eventId": Uuid::new_v4(), "type": "scheduled", "tenantId": TENANT,
            "jobName": "nightly", "occurredAt": "2025-07-10T12:00:00Z", "cron": "0 2 * * *",
            "labels": {"team": "payments", "tier": "1"}, "failureThreshold": 3,
            "recoveryThreshold": 2});
        let event = decode_value("scheduled", &base).unwrap();
        let EventKind::Scheduled {
            labels,
            failure_threshold,
            recovery_threshold,
            ..
        } = &event.kind
        else {
            panic!("a scheduled event");
        };
        assert_eq!(labels.get("team").map(String::as_str), Some("payments"));
        assert_eq!(
            (*failure_threshold, *recovery_threshold),
            (Some(3), Some(2))
        );
        assert_eq!(decode_value("scheduled", &event.to_json()).unwrap(), event);
        let too_many: serde_json::Map<String, Value> =
            (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
        for (field, value, code) in [
            ("labels", json!({"Team": "x"}), "invalid_field"),
            ("labels", json!({"team": 3}), "invalid_field"),
            ("labels", json!({"team": "x".repeat(129)}), "invalid_field"),
            ("labels", Value::Object(too_many), "invalid_field"),
            ("labels", json!(["team"]), "wrong_type"),
            ("failureThreshold", json!(0), "invalid_field"),
            ("failureThreshold", json!(101), "invalid_field"),
            ("recoveryThreshold", json!("2"), "wrong_type"),
        ] {
            let mut bad = base.clone();
            bad[field] = value.clone();
            assert_eq!(
                decode_value("scheduled", &bad).unwrap_err().code(),
                code,
                "{field} = {value}"
            );
        }
        let mut started = json!({"eventId": Uuid::new_v4(), "type": "started", "tenantId": TENANT,
            "jobName": "nightly", "occurredAt": "2025-07-10T12:00:00Z", "executionId": "r1"});
        started["labels"] = json!({"team": "payments"});
        assert_eq!(
            decode_value("started", &started).unwrap_err().code(),
            "field_not_allowed"
        );
    }

    #[test]
    fn a_silenced_event_needs_until_and_bounds_its_reason() {
        let base = json!({"eventId": Uuid::new_v4(), "type": "silenced", "tenantId": TENANT,
            "jobName": "nightly", "occurredAt": "2025-07-10T12:00:00Z",
            "until": "2025-07-10T13:00:00Z", "reason": "planned maintenance", "by": "ops-1"});
        let event = decode_value("silenced", &base).unwrap();
        assert_eq!(
            event.kind,
            EventKind::Silenced {
                until: Some("2025-07-10T13:00:00Z".parse().unwrap()),
                reason: Some("planned maintenance".into()),
                by: Some("ops-1".into()),
            }
        );
        assert_eq!(event.execution_id(), None);
        assert_eq!(decode_value("silenced", &event.to_json()).unwrap(), event);
        let mut lift = base.clone();
        lift["until"] = Value::Null;
        assert!(matches!(
            decode_value("silenced", &lift).unwrap().kind,
            EventKind::Silenced { until: None, .. }
        ));
        let mut missing = base.clone();
        missing.as_object_mut().unwrap().remove("until");
        assert_eq!(
            decode_value("silenced", &missing),
            Err(DecodeError::MissingField("until"))
        );
        for (field, value, code) in [
            ("until", json!("tomorrow"), "invalid_field"),
            ("until", json!(12), "wrong_type"),
            ("reason", json!("x".repeat(513)), "invalid_field"),
            ("executionId", json!("r1"), "field_not_allowed"),
            ("cron", json!("0 2 * * *"), "field_not_allowed"),
        ] {
            let mut bad = base.clone();
            bad[field] = value.clone();
            assert_eq!(
                decode_value("silenced", &bad).unwrap_err().code(),
                code,
                "{field} = {value}"
            );
        }
    }

    #[test]
    fn schedule_settings_are_bounded_and_belong_to_scheduled_only() {
        let base = json!({"eventId": Uuid::new_v4(), "type": "scheduled", "tenantId": TENANT,
            "jobName": "nightly", "occurredAt": "2025-07-10T12:00:00Z", "cron": "0 2 * * *",
            "graceMs": 300000, "maxRuntimeMs": 7200000});
        let event = decode_value("scheduled", &base).unwrap();
        assert!(matches!(
            event.kind,
            EventKind::Scheduled {
                grace_ms: Some(300_000),
                max_runtime_ms: Some(7_200_000),
                ..
            }
        ));
        assert_eq!(decode_value("scheduled", &event.to_json()).unwrap(), event);
        for (field, value, code) in [
            ("graceMs", json!(999), "invalid_field"),
            ("graceMs", json!(86_400_001), "invalid_field"),
            ("graceMs", json!(-5), "invalid_field"),
            ("graceMs", json!("5m"), "wrong_type"),
            ("graceMs", json!(1500.5), "wrong_type"),
            ("maxRuntimeMs", json!(2_592_000_001u64), "invalid_field"),
            ("maxRuntimeMs", json!(0), "invalid_field"),
        ] {
            let mut bad = base.clone();
            bad[field] = value.clone();
            assert_eq!(
                decode_value("scheduled", &bad).unwrap_err().code(),
                code,
                "{field} = {value}"
            );
        }
        let mut on_completed = completed();
        on_completed["graceMs"] = json!(60_000);
        assert_eq!(
            decode_value("completed", &on_completed).unwrap_err().code(),
            "field_not_allowed"
        );
    }

    #[test]
    fn job_names_follow_the_contract() {
        assert!(JobName::parse(&"a".repeat(128)).is_ok());
        assert!(JobName::parse(&"a".repeat(129)).is_err());
        assert!(JobName::parse("billing.sync_v2:eu-1").is_ok());
        for bad in ["", "-lead", "has space", "a/b", "ünï", "nul\0", "..%2F"] {
            assert!(JobName::parse(bad).is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn a_canonical_tenant_is_lowercase_and_hyphenated() {
        let id = TenantId::parse_canonical(TENANT).unwrap();
        assert_eq!(id.to_string(), TENANT);
        let mut one_upper = TENANT.to_owned();
        let at = one_upper.find(|c: char| c.is_ascii_lowercase()).unwrap();
        one_upper.replace_range(at..=at, &one_upper[at..=at].to_uppercase());
        let simple = TENANT.replace('-', "");
        for bad in [
            one_upper,
            TENANT.to_uppercase(),
            simple,
            format!("{{{TENANT}}}"),
        ] {
            assert!(TenantId::parse_canonical(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn subjects_need_a_canonical_tenant_and_four_tokens() {
        let body = serde_json::to_vec(&completed()).unwrap();
        let upper = format!("jobs.events.{}.completed", TENANT.to_uppercase());
        assert_eq!(decode(&upper, &body).unwrap_err().code(), "bad_subject");
        assert_eq!(
            decode("jobs.events.completed", &body).unwrap_err().code(),
            "bad_subject"
        );
        assert_eq!(
            decode(&subject("paused"), &body).unwrap_err().code(),
            "unknown_type"
        );
    }

    #[test]
    fn a_schedule_names_its_zone_and_an_unknown_zone_is_a_dead_letter() {
        let base = json!({"eventId": Uuid::new_v4(), "type": "scheduled", "tenantId": TENANT,
            "jobName": "nightly", "occurredAt": "2026-03-01T12:00:00Z", "cron": "30 2 * * *",
            "timezone": "Europe/Berlin"});
        let event = decode_value("scheduled", &base).unwrap();
        let EventKind::Scheduled {
            cron: Some(cron), ..
        } = &event.kind
        else {
            panic!("a scheduled event with a cron: {event:?}");
        };
        assert_eq!(cron.timezone(), "Europe/Berlin");
        assert_eq!(event.to_json()["timezone"], "Europe/Berlin");
        assert_eq!(decode(&event.subject(), &event.to_bytes()).unwrap(), event);
        for (value, code) in [
            (json!("Mars/Olympus"), "invalid_field"),
            (json!("europe/berlin"), "invalid_field"),
            (json!(""), "invalid_field"),
            (json!(1), "wrong_type"),
        ] {
            let mut bad = base.clone();
            bad["timezone"] = value.clone();
            let error = decode_value("scheduled", &bad).unwrap_err();
            assert_eq!(error.code(), code, "{value}");
        }
        let mut null = base.clone();
        null["timezone"] = Value::Null;
        assert!(decode_value("scheduled", &null).is_ok());
        let mut on_completed = completed();
        on_completed["timezone"] = json!("Europe/Berlin");
        assert_eq!(
            decode_value("completed", &on_completed).unwrap_err().code(),
            "field_not_allowed"
        );
    }

    #[test]
    fn exit_codes_and_output_are_bounded_and_belong_to_finished_runs() {
        let mut failed = completed();
        failed["type"] = json!("failed");
        failed["exitCode"] = json!(137);
        failed["output"] = json!("é".repeat(MAX_OUTPUT_BYTES / 2));
        let event = decode_value("failed", &failed).unwrap();
        assert!(matches!(
            &event.kind,
            EventKind::Failed { exit_code: Some(137), output: Some(o), .. } if o.len() == MAX_OUTPUT_BYTES
        ));
        assert_eq!(decode(&event.subject(), &event.to_bytes()).unwrap(), event);
        for (field, value, code) in [
            ("exitCode", json!(256), "invalid_field"),
            ("exitCode", json!(-1), "invalid_field"),
            ("exitCode", json!("3"), "wrong_type"),
            ("exitCode", json!(1.5), "wrong_type"),
            (
                "output",
                json!("x".repeat(MAX_OUTPUT_BYTES + 1)),
                "invalid_field",
            ),
            ("output", json!(["x"]), "wrong_type"),
        ] {
            let mut bad = failed.clone();
            bad[field] = value;
            assert_eq!(
                decode_value("failed", &bad).unwrap_err().code(),
                code,
                "{field}"
            );
        }
        let mut started = completed();
        started["type"] = json!("started");
        started.as_object_mut().unwrap().remove("itemsProcessed");
        started["exitCode"] = json!(0);
        assert_eq!(
            decode_value("started", &started).unwrap_err().code(),
            "field_not_allowed"
        );
    }

    #[test]
    fn the_output_tail_keeps_the_last_16_kib_on_a_character_boundary() {
        assert_eq!(tail_output("short"), "short");
        let long = format!("{}{}", "a".repeat(100), "€".repeat(MAX_OUTPUT_BYTES));
        let tail = tail_output(&long);
        assert!(tail.len() <= MAX_OUTPUT_BYTES && tail.len() > MAX_OUTPUT_BYTES - 3);
        assert!(long.ends_with(tail) && tail.starts_with('€'));
    }
}
