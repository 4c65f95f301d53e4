//! Sentry Crons check-ins (CONTRACT §10): a Sentry SDK given the DSN
//! `http(s)://<ingest key>@<host>/<project id>` reports its monitors here unchanged.
//!
//! - `POST /api/{projectId}/envelope/`: the SDK's envelopes (possibly gzip- or br-encoded).
//!   `check_in` items become events; every other item is answered 200 and dropped.
//! - `GET|POST /api/{projectId}/cron/{monitorSlug}/{key}/?status=in_progress|ok|error`: the
//!   curl form.
//!
//! Mapping: `monitor_slug` → job, `check_in_id` → execution (none: paired like a ping
//! without `rid`), `in_progress` → started, `ok` → completed, `error` → failed; `duration`
//! (seconds) places the start when none was seen; `monitor_config` becomes a `scheduled`
//! event when it differs from the job's current schedule.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem::http::StatusCode;
use poem::{handler, web::Data, web::Path, Body, Request, Response};
use serde::Deserialize;
use serde_json::Value;

use super::{derived_event_id, paired_start, publish_all, Outgoing, RunEvent};
use crate::api::AppState;
use crate::events::{EventType, ExecutionId, JobName, TenantId};
use crate::keys::KeyRecord;

/// The largest envelope accepted, compressed or not (Sentry's own limit for envelopes).
pub const MAX_ENVELOPE_BYTES: usize = 20 * 1024 * 1024;
/// What a check-in payload may be (Sentry's own limit for a check-in item is 100 KiB).
const MAX_CHECK_IN_BYTES: usize = 100 * 1024;

/// A check-in as the SDKs send it (and as the curl form's query says).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct CheckIn {
    #[serde(default)]
    pub check_in_id: Option<String>,
    pub monitor_slug: String,
    pub status: String,
    /// Seconds the run took, on its end.
    #[serde(default)]
    pub duration: Option<f64>,
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(default)]
    pub monitor_config: Option<MonitorConfig>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct MonitorConfig {
    pub schedule: Option<MonitorSchedule>,
    /// Minutes a run may start late.
    #[serde(default)]
    pub checkin_margin: Option<f64>,
    /// Minutes a run may take.
    #[serde(default)]
    pub max_runtime: Option<f64>,
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default)]
    pub failure_issue_threshold: Option<u32>,
    #[serde(default)]
    pub recovery_threshold: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum MonitorSchedule {
    Crontab { value: String },
    Interval { value: u32, unit: String },
}

/// Why a request is refused (400 in the envelope's JSON or the curl form's text).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CheckInError {
    #[error("{0}")]
    Invalid(String),
}

/// A crontab with the same fires as an interval schedule, where one exists.
pub fn interval_cron(value: u32, unit: &str) -> Result<String, CheckInError> {
    let none = || {
        CheckInError::Invalid(format!(
            "an interval of {value} {unit} has no cron equivalent; use a crontab schedule"
        ))
    };
    match (unit, value) {
        (_, 0) => Err(none()),
        ("minute", 1) => Ok("* * * * *".into()),
        ("minute", n) if n < 60 && 60 % n == 0 => Ok(format!("*/{n} * * * *")),
        ("minute", n) if n % 60 == 0 => interval_cron(n / 60, "hour"),
        ("hour", 1) => Ok("0 * * * *".into()),
        ("hour", n) if n < 24 && 24 % n == 0 => Ok(format!("0 */{n} * * *")),
        ("hour", 24) | ("day", 1) => Ok("0 0 * * *".into()),
        ("week", 1) | ("day", 7) => Ok("0 0 * * 0".into()),
        ("month", 1) => Ok("0 0 1 * *".into()),
        ("minute" | "hour" | "day" | "week" | "month", _) => Err(none()),
        _ => Err(CheckInError::Invalid(format!(
            "unknown interval unit `{}`: use minute, hour, day, week or month",
            unit.chars().take(32).collect::<String>()
        ))),
    }
}

/// The `scheduled` event's fields a monitor config stands for.
pub fn scheduled_fields(
    config: &MonitorConfig,
    environment: Option<&str>,
) -> Result<serde_json::Map<String, Value>, CheckInError> {
    let mut fields = serde_json::Map::new();
    let cron = match &config.schedule {
        Some(MonitorSchedule::Crontab { value }) => Some(value.clone()),
        Some(MonitorSchedule::Interval { value, unit }) => Some(interval_cron(*value, unit)?),
        None => None,
    };
    fields.insert("cron".into(), cron.map_or(Value::Null, Value::from));
    let minutes = |value: f64| (value * 60_000.0).round() as i64;
    if let Some(margin) = config.checkin_margin.filter(|m| *m > 0.0) {
        fields.insert("graceMs".into(), minutes(margin).into());
    }
    if let Some(runtime) = config.max_runtime.filter(|m| *m > 0.0) {
        fields.insert("maxRuntimeMs".into(), minutes(runtime).into());
    }
    if let Some(zone) = &config.timezone {
        fields.insert("timezone".into(), zone.clone().into());
    }
    // Sentry allows larger thresholds than the contract's 100: the nearest one is kept.
    let bounded = |t: u32| t.clamp(1, crate::events::MAX_THRESHOLD as u32);
    if let Some(threshold) = config.failure_issue_threshold {
        fields.insert("failureThreshold".into(), bounded(threshold).into());
    }
    if let Some(threshold) = config.recovery_threshold {
        fields.insert("recoveryThreshold".into(), bounded(threshold).into());
    }
    if let Some(environment) = environment {
        fields.insert(
            "labels".into(),
            serde_json::json!({ "environment": environment }),
        );
    }
    Ok(fields)
}

/// The envelope's items of type `check_in` (others are skipped, as the contract asks).
pub fn check_ins(envelope: &[u8]) -> Result<Vec<CheckIn>, CheckInError> {
    let bad = |what: &str| CheckInError::Invalid(format!("not a Sentry envelope: {what}"));
    let mut rest = envelope;
    // The envelope header: one JSON line.
    let header_end = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
    serde_json::from_slice::<Value>(&rest[..header_end])
        .map_err(|_| bad("its header is not JSON"))?;
    rest = rest.get(header_end + 1..).unwrap_or_default();
    let mut found = Vec::new();
    while !rest.is_empty() {
        let line_end = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
        let header_line = &rest[..line_end];
        rest = rest.get(line_end + 1..).unwrap_or_default();
        if header_line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let header: Value =
            serde_json::from_slice(header_line).map_err(|_| bad("an item header is not JSON"))?;
        let payload = match header.get("length").and_then(Value::as_u64) {
            Some(length) => {
                let length = usize::try_from(length).unwrap_or(usize::MAX);
                if length > rest.len() {
                    return Err(bad("an item is shorter than its length"));
                }
                let (payload, after) = rest.split_at(length);
                // A newline may follow a payload with a length.
                rest = after.strip_prefix(b"\n").unwrap_or(after);
                payload
            }
            None => {
                let end = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
                let payload = &rest[..end];
                rest = rest.get(end + 1..).unwrap_or_default();
                payload
            }
        };
        if header.get("type").and_then(Value::as_str) != Some("check_in") {
            continue;
        }
        if payload.len() > MAX_CHECK_IN_BYTES {
            return Err(CheckInError::Invalid(format!(
                "a check-in is over {MAX_CHECK_IN_BYTES} bytes"
            )));
        }
        let check_in: CheckIn = serde_json::from_slice(payload)
            .map_err(|error| CheckInError::Invalid(format!("a check-in is invalid: {error}")))?;
        found.push(check_in);
    }
    Ok(found)
}

/// The query string as a map; a repeated parameter is refused.
pub fn query_pairs(request: &Request) -> Result<HashMap<String, String>, String> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(request.uri().query().unwrap_or_default())
            .map_err(|_| "the query string is not valid".to_owned())?;
    let mut map = HashMap::new();
    for (name, value) in pairs {
        if map.insert(name.clone(), value).is_some() {
            return Err(format!("the query parameter `{name}` is repeated"));
        }
    }
    Ok(map)
}

/// The ingest key of an envelope request: `X-Sentry-Auth: Sentry sentry_key=…` or
/// `?sentry_key=`.
fn sentry_key(request: &Request, query: &HashMap<String, String>) -> Option<String> {
    if let Some(key) = query.get("sentry_key") {
        return Some(key.clone());
    }
    let header = request.headers().get("x-sentry-auth")?.to_str().ok()?;
    let fields = header.trim().strip_prefix("Sentry").unwrap_or(header);
    fields.split(',').find_map(|field| {
        let (name, value) = field.trim().split_once('=')?;
        (name.trim() == "sentry_key").then(|| value.trim().to_owned())
    })
}

/// The body, decoded by its `Content-Encoding` (gzip, deflate, br or none), at most
/// [`MAX_ENVELOPE_BYTES`] either way.
async fn decoded_body(request: &Request, body: Body) -> Result<Vec<u8>, (StatusCode, String)> {
    let too_large = || {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the envelope is over {MAX_ENVELOPE_BYTES} bytes"),
        )
    };
    let raw = body
        .into_bytes_limit(MAX_ENVELOPE_BYTES)
        .await
        .map_err(|error| match error {
            poem::error::ReadBodyError::PayloadTooLarge => too_large(),
            _ => (
                StatusCode::BAD_REQUEST,
                "the body could not be read".to_owned(),
            ),
        })?;
    let encoding = request
        .headers()
        .get(poem::http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    let reader: Box<dyn Read> = match encoding.as_str() {
        "" | "identity" => return Ok(raw.to_vec()),
        "gzip" | "x-gzip" => Box::new(flate2::read::GzDecoder::new(&raw[..])),
        "deflate" => Box::new(flate2::read::ZlibDecoder::new(&raw[..])),
        "br" => Box::new(brotli_decompressor::Decompressor::new(&raw[..], 4096)),
        other => {
            return Err((
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "Content-Encoding `{}` is not supported: use gzip, deflate or br",
                    other.chars().take(32).collect::<String>()
                ),
            ))
        }
    };
    // Read one byte past the limit: a body that inflates beyond it is refused, not cut.
    let mut decoded = Vec::new();
    reader
        .take(MAX_ENVELOPE_BYTES as u64 + 1)
        .read_to_end(&mut decoded)
        .map_err(|_| {
            (
                StatusCode::BAD_REQUEST,
                format!("the body is not valid {encoding}"),
            )
        })?;
    if decoded.len() > MAX_ENVELOPE_BYTES {
        return Err(too_large());
    }
    Ok(decoded)
}

fn json_answer(status: StatusCode, body: Value) -> Response {
    Response::builder()
        .status(status)
        .content_type("application/json")
        .body(serde_json::to_vec(&body).unwrap_or_default())
}

fn refusal(status: StatusCode, detail: &str) -> Response {
    // Sentry's own refusals carry `{"detail": …}`.
    json_answer(status, serde_json::json!({ "detail": detail }))
}

#[handler]
pub async fn post_envelope(
    request: &Request,
    Path(_project): Path<String>,
    body: Body,
    state: Data<&Arc<AppState>>,
) -> Response {
    let query = match query_pairs(request) {
        Ok(query) => query,
        Err(reason) => return refusal(StatusCode::BAD_REQUEST, &reason),
    };
    let key = match authorized(&state, sentry_key(request, &query)) {
        Ok(key) => key,
        Err(response) => return response,
    };
    let body = match decoded_body(request, body).await {
        Ok(body) => body,
        Err((status, reason)) => return refusal(status, &reason),
    };
    let check_ins = match check_ins(&body) {
        Ok(check_ins) => check_ins,
        Err(error) => return refusal(StatusCode::BAD_REQUEST, &error.to_string()),
    };
    let mut last = 0;
    for check_in in &check_ins {
        match record(&state, &key, check_in).await {
            Ok(sequence) => last = last.max(sequence),
            Err(response) => return response,
        }
    }
    let event_id =
        serde_json::from_slice::<Value>(body.split(|b| *b == b'\n').next().unwrap_or_default())
            .ok()
            .and_then(|header| {
                header
                    .get("event_id")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let mut response = json_answer(StatusCode::OK, serde_json::json!({ "id": event_id }));
    if let Ok(value) = last.to_string().parse() {
        response.headers_mut().insert("X-Jobstats-Sequence", value);
    }
    response
}

#[handler]
pub async fn cron_url(
    request: &Request,
    Path((_project, slug, key)): Path<(String, String, String)>,
    state: Data<&Arc<AppState>>,
) -> Response {
    let query = match query_pairs(request) {
        Ok(query) => query,
        Err(reason) => return refusal(StatusCode::BAD_REQUEST, &reason),
    };
    let key = match authorized(&state, Some(key)) {
        Ok(key) => key,
        Err(response) => return response,
    };
    let Some(status) = query.get("status") else {
        return refusal(
            StatusCode::BAD_REQUEST,
            "the query parameter `status` is required: in_progress, ok or error",
        );
    };
    let duration = match query.get("duration").map(|d| d.parse::<f64>()) {
        None => None,
        Some(Ok(seconds)) if seconds.is_finite() && seconds >= 0.0 => Some(seconds),
        Some(_) => return refusal(StatusCode::BAD_REQUEST, "`duration` must be seconds ≥ 0"),
    };
    let check_in = CheckIn {
        check_in_id: query.get("check_in_id").cloned(),
        monitor_slug: slug,
        status: status.clone(),
        duration,
        environment: query.get("environment").cloned(),
        monitor_config: None,
    };
    match record(&state, &key, &check_in).await {
        Ok(sequence) => {
            let id = check_in
                .check_in_id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
            let mut response = json_answer(StatusCode::ACCEPTED, serde_json::json!({ "id": id }));
            if let Ok(value) = sequence.to_string().parse() {
                response.headers_mut().insert("X-Jobstats-Sequence", value);
            }
            response
        }
        Err(response) => response,
    }
}

// The refusal is the answer itself, made once per refused request: boxing it buys nothing.
#[allow(clippy::result_large_err)]
fn authorized(state: &AppState, key: Option<String>) -> Result<KeyRecord, Response> {
    let Some(key) = key else {
        return Err(refusal(
            StatusCode::UNAUTHORIZED,
            "missing the ingest key: X-Sentry-Auth sentry_key or ?sentry_key=",
        ));
    };
    let Some(key) = state.ingest.keys.lookup(&key) else {
        return Err(refusal(
            StatusCode::UNAUTHORIZED,
            "unknown or revoked ingest key",
        ));
    };
    if let Err(seconds) = state.ingest.admit(&key.id) {
        let mut response = refusal(StatusCode::TOO_MANY_REQUESTS, "rate limited");
        if let Ok(value) = seconds.to_string().parse() {
            response
                .headers_mut()
                .insert(poem::http::header::RETRY_AFTER, value);
        }
        return Err(response);
    }
    Ok(key)
}

/// Publishes what one check-in says; returns the last stream sequence.
async fn record(state: &AppState, key: &KeyRecord, check_in: &CheckIn) -> Result<u64, Response> {
    let bad = |reason: String| refusal(StatusCode::BAD_REQUEST, &reason);
    let internal = |error: &dyn std::fmt::Display| {
        tracing::error!(%error, "a check-in failed");
        refusal(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    };
    let tenant = key.tenant_id;
    let job = JobName::parse(&check_in.monitor_slug)
        .map_err(|reason| bad(format!("invalid monitor_slug: {reason}")))?;
    let event_type = match check_in.status.as_str() {
        "in_progress" => EventType::Started,
        "ok" => EventType::Completed,
        "error" => EventType::Failed,
        other => {
            return Err(bad(format!(
                "unknown check-in status `{}`: use in_progress, ok or error",
                other.chars().take(32).collect::<String>()
            )))
        }
    };
    let check_in_id = match &check_in.check_in_id {
        Some(id) => Some(
            ExecutionId::parse(id)
                .map_err(|reason| bad(format!("invalid check_in_id: {reason}")))?,
        ),
        None => None,
    };
    let now = Utc::now();
    let mut outgoing: Vec<Outgoing> = Vec::new();
    let readers = state.readers.get();
    let known = state.ingest.created_here(tenant, job.as_str())
        || readers
            .job_exists(&tenant, job.as_str())
            .map_err(|e| internal(&e))?;
    // A monitor config is upserted: a `scheduled` event only when it changes the schedule.
    if let Some(config) = &check_in.monitor_config {
        let fields = scheduled_fields(config, check_in.environment.as_deref())
            .map_err(|e| bad(e.to_string()))?;
        if !known || schedule_differs(state, tenant, &job, &fields).map_err(|e| internal(&e))? {
            let digest = crate::keys::hash(&serde_json::to_string(&fields).unwrap_or_default());
            outgoing.push(
                RunEvent {
                    tenant,
                    job: job.as_str(),
                    event_type: EventType::Scheduled,
                    execution_id: "",
                    event_id: derived_event_id(tenant, job.as_str(), &digest, "scheduled"),
                    occurred_at: now,
                    fields,
                }
                .outgoing()
                .map_err(|e| bad(format!("monitor_config: {e}")))?,
            );
        }
    } else if !known && !key.auto_create {
        return Err(refusal(
            StatusCode::NOT_FOUND,
            "JOB_NOT_FOUND: no monitor with this slug; send a monitor_config or use a key made with --auto-create",
        ));
    }
    let execution_id = match (&check_in_id, event_type) {
        (Some(id), _) => id.as_str().to_owned(),
        (None, EventType::Started) => format!("checkin-{}", uuid::Uuid::new_v4().simple()),
        (None, _) => paired_start(state, tenant, job.as_str(), now.timestamp_millis())
            .map_err(|e| internal(&e))?
            .unwrap_or_else(|| format!("checkin-{}", uuid::Uuid::new_v4().simple())),
    };
    let event_id = |kind: EventType| match &check_in_id {
        Some(id) => derived_event_id(tenant, job.as_str(), id.as_str(), kind.as_str()),
        None => uuid::Uuid::new_v4(),
    };
    if event_type != EventType::Started {
        // `duration` places the start when none was seen: the same derived id as an
        // `in_progress` check-in's, so JetStream drops it when that one came through.
        if let Some(seconds) = check_in.duration.filter(|d| d.is_finite() && *d >= 0.0) {
            let started_at = now - chrono::Duration::milliseconds((seconds * 1000.0) as i64);
            if !readers
                .execution_started(&tenant, job.as_str(), &execution_id)
                .map_err(|e| internal(&e))?
            {
                outgoing.push(
                    run_event(
                        tenant,
                        &job,
                        EventType::Started,
                        &execution_id,
                        event_id(EventType::Started),
                        started_at,
                        serde_json::Map::new(),
                    )
                    .map_err(bad)?,
                );
            }
        }
    }
    let mut fields = serde_json::Map::new();
    if event_type == EventType::Failed {
        fields.insert("error".into(), "check-in status error".into());
    }
    outgoing.push(
        run_event(
            tenant,
            &job,
            event_type,
            &execution_id,
            event_id(event_type),
            now,
            fields,
        )
        .map_err(bad)?,
    );
    let Some(nats) = &state.nats else {
        return Err(refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "the event stream is not available here",
        ));
    };
    let sequences = publish_all(&nats.client, outgoing)
        .await
        .map_err(|partial| {
            tracing::warn!(cause = %partial.cause, "publishing a check-in failed");
            refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "the event stream did not acknowledge the check-in; retry",
            )
        })?;
    if !known {
        state.ingest.remember_created(tenant, job.as_str());
    }
    match (event_type, &check_in_id) {
        (EventType::Started, None) => {
            state
                .ingest
                .remember_start(tenant, job.as_str(), execution_id, now.timestamp_millis())
        }
        (EventType::Started, Some(_)) => {}
        _ => state
            .ingest
            .forget_start(tenant, job.as_str(), &execution_id),
    }
    Ok(sequences.into_iter().max().unwrap_or(0))
}

fn run_event(
    tenant: TenantId,
    job: &JobName,
    event_type: EventType,
    execution_id: &str,
    event_id: uuid::Uuid,
    at: DateTime<Utc>,
    fields: serde_json::Map<String, Value>,
) -> Result<Outgoing, String> {
    RunEvent {
        tenant,
        job: job.as_str(),
        event_type,
        execution_id,
        event_id,
        occurred_at: at,
        fields,
    }
    .outgoing()
    .map_err(|e| e.to_string())
}

/// Does `fields` (a `scheduled` event's) say something other than the job's schedule now?
fn schedule_differs(
    state: &AppState,
    tenant: TenantId,
    job: &JobName,
    fields: &serde_json::Map<String, Value>,
) -> Result<bool, crate::store::StoreError> {
    let Some(snapshot) = state.readers.get().cached_job_snapshot(&tenant, job, 0)? else {
        return Ok(true);
    };
    let Some(current) = &snapshot.stats.schedule else {
        return Ok(true);
    };
    let wanted_cron = fields.get("cron").and_then(Value::as_str);
    let wanted_grace = fields.get("graceMs").and_then(Value::as_i64);
    let wanted_runtime = fields.get("maxRuntimeMs").and_then(Value::as_i64);
    let threshold = |name: &str| {
        fields
            .get(name)
            .and_then(Value::as_u64)
            .map(|t| t.min(255) as u8)
    };
    let wanted_labels: crate::events::Labels = fields
        .get("labels")
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    let wanted_zone = fields
        .get("timezone")
        .and_then(Value::as_str)
        .filter(|z| *z != crate::schedule::DEFAULT_TIMEZONE);
    Ok(current.cron.as_deref() != wanted_cron
        || current.grace_ms != wanted_grace
        || current.max_runtime_ms != wanted_runtime
        || current.timezone.as_deref() != wanted_zone
        || current.failure_threshold != threshold("failureThreshold")
        || current.recovery_threshold != threshold("recoveryThreshold")
        || current.labels != wanted_labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_become_crons_where_one_exists() {
        assert_eq!(interval_cron(1, "minute").unwrap(), "* * * * *");
        assert_eq!(interval_cron(15, "minute").unwrap(), "*/15 * * * *");
        assert_eq!(interval_cron(120, "minute").unwrap(), "0 */2 * * *");
        assert_eq!(interval_cron(6, "hour").unwrap(), "0 */6 * * *");
        assert_eq!(interval_cron(1, "day").unwrap(), "0 0 * * *");
        assert_eq!(interval_cron(1, "week").unwrap(), "0 0 * * 0");
        assert_eq!(interval_cron(1, "month").unwrap(), "0 0 1 * *");
        for (value, unit) in [
            (7, "minute"),
            (5, "hour"),
            (3, "day"),
            (0, "hour"),
            (1, "year"),
        ] {
            assert!(interval_cron(value, unit).is_err(), "{value} {unit}");
        }
    }

    #[test]
    fn an_envelope_yields_its_check_ins_and_skips_other_items() {
        let check_in = r#"{"check_in_id":"4f1a","monitor_slug":"nightly","status":"ok","duration":2.5,"environment":"production","monitor_config":{"schedule":{"type":"crontab","value":"0 3 * * *"},"checkin_margin":5,"max_runtime":30,"timezone":"Europe/Berlin"}}"#;
        let event = r#"{"message":"hello"}"#;
        let envelope = format!(
            "{{\"event_id\":\"9ec79c33ec9942ab8353589fcb2e04dc\",\"dsn\":\"http://jsk_x@h/1\"}}\n{{\"type\":\"event\",\"length\":{}}}\n{event}\n{{\"type\":\"check_in\"}}\n{check_in}\n",
            event.len()
        );
        let found = check_ins(envelope.as_bytes()).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].monitor_slug, "nightly");
        assert_eq!(found[0].duration, Some(2.5));
        let fields = scheduled_fields(
            found[0].monitor_config.as_ref().unwrap(),
            Some("production"),
        )
        .unwrap();
        assert_eq!(fields["cron"], "0 3 * * *");
        assert_eq!(fields["graceMs"], 300_000);
        assert_eq!(fields["maxRuntimeMs"], 1_800_000);
        assert_eq!(fields["timezone"], "Europe/Berlin");
        assert_eq!(fields["labels"]["environment"], "production");
        assert!(check_ins(b"not json\n").is_err());
        assert!(check_ins(b"{}\n{\"type\":\"check_in\",\"length\":999}\n{}").is_err());
    }
}
