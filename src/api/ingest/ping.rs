//! Ping URLs with healthchecks.io's semantics (CONTRACT §10), so a crontab line that pings
//! healthchecks changes only its base URL:
//!
//! ```text
//! GET|POST|HEAD /ping/{key}/{jobName}            success
//!               /ping/{key}/{jobName}/start      the run started
//!               /ping/{key}/{jobName}/fail       the run failed
//!               /ping/{key}/{jobName}/{0-255}    the run ended with this exit status
//! ```
//!
//! Each ping is one event. `?rid=` pairs a start with its end (and makes a retried ping a
//! no-op); a POST body is the run's output (its last 16 KiB). Answers are plain text, as
//! healthchecks' are.

use std::sync::Arc;

use chrono::Utc;
use poem::http::StatusCode;
use poem::{handler, web::Data, web::Path, Body, Request, Response};

use super::{derived_event_id, paired_start, publish_all, tail, RunEvent, OUTPUT_LIMIT_BYTES};
use crate::api::AppState;
use crate::events::{EventType, ExecutionId, JobName};

/// What a ping body may be before it is refused (what is kept is the last 16 KiB).
pub const MAX_PING_BODY_BYTES: usize = 1024 * 1024;

/// What the ping says about the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingKind {
    Success,
    Start,
    Fail,
    Exit(u8),
}

impl PingKind {
    /// The path's last segment, when there is one.
    pub fn parse(action: Option<&str>) -> Result<Self, String> {
        match action {
            None => Ok(PingKind::Success),
            Some("start") => Ok(PingKind::Start),
            Some("fail") => Ok(PingKind::Fail),
            Some(text) => match text.parse::<u8>() {
                Ok(0) => Ok(PingKind::Exit(0)),
                Ok(status) if !text.starts_with('+') => Ok(PingKind::Exit(status)),
                _ => Err(format!(
                    "invalid exit status `{}`: use start, fail or a number 0-255",
                    text.chars().take(32).collect::<String>()
                )),
            },
        }
    }

    fn event_type(self) -> EventType {
        match self {
            PingKind::Start => EventType::Started,
            PingKind::Success | PingKind::Exit(0) => EventType::Completed,
            PingKind::Fail | PingKind::Exit(_) => EventType::Failed,
        }
    }
}

#[handler]
pub async fn ping_job(
    request: &Request,
    Path((key, job)): Path<(String, String)>,
    body: Body,
    state: Data<&Arc<AppState>>,
) -> Response {
    answer(request, &key, &job, None, body, &state).await
}

#[handler]
pub async fn ping_job_action(
    request: &Request,
    Path((key, job, action)): Path<(String, String, String)>,
    body: Body,
    state: Data<&Arc<AppState>>,
) -> Response {
    answer(request, &key, &job, Some(&action), body, &state).await
}

fn text(status: StatusCode, body: &str) -> Response {
    Response::builder()
        .status(status)
        .content_type("text/plain; charset=utf-8")
        .header("Ping-Body-Limit", OUTPUT_LIMIT_BYTES.to_string())
        .body(body.to_owned())
}

async fn answer(
    request: &Request,
    key: &str,
    job: &str,
    action: Option<&str>,
    body: Body,
    state: &AppState,
) -> Response {
    let Some(key) = state.ingest.keys.lookup(key) else {
        return text(StatusCode::UNAUTHORIZED, "unknown or revoked ingest key");
    };
    if let Err(seconds) = state.ingest.admit(&key.id) {
        let mut response = text(
            StatusCode::TOO_MANY_REQUESTS,
            "rate limited: too many requests for this key",
        );
        if let Ok(value) = seconds.to_string().parse() {
            response
                .headers_mut()
                .insert(poem::http::header::RETRY_AFTER, value);
        }
        return response;
    }
    let job = match JobName::parse(job) {
        Ok(job) => job,
        Err(reason) => {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("invalid job name: {reason}"),
            )
        }
    };
    let kind = match PingKind::parse(action) {
        Ok(kind) => kind,
        Err(reason) => return text(StatusCode::BAD_REQUEST, &reason),
    };
    let query = match super::sentry::query_pairs(request) {
        Ok(query) => query,
        Err(reason) => return text(StatusCode::BAD_REQUEST, &reason),
    };
    let rid = match query.get("rid") {
        Some(rid) => match ExecutionId::parse(rid) {
            Ok(rid) => Some(rid),
            Err(reason) => return text(StatusCode::BAD_REQUEST, &format!("invalid rid: {reason}")),
        },
        None => None,
    };
    let create = key.auto_create || query.get("create").is_some_and(|v| v == "1");
    let output = if request.method() == poem::http::Method::POST {
        match body.into_bytes_limit(MAX_PING_BODY_BYTES).await {
            Ok(bytes) if bytes.is_empty() => None,
            Ok(bytes) => {
                Some(tail(&String::from_utf8_lossy(&bytes), OUTPUT_LIMIT_BYTES).to_owned())
            }
            Err(poem::error::ReadBodyError::PayloadTooLarge) => {
                return text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
            }
            Err(_) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "the request body could not be read",
                )
            }
        }
    } else {
        None
    };
    let outcome = publish_ping(state, &key, &job, kind, rid.as_ref(), create, output).await;
    match outcome {
        Ok(sequence) => {
            let mut response = text(StatusCode::OK, "OK");
            if let Ok(value) = sequence.to_string().parse() {
                response.headers_mut().insert("X-Jobstats-Sequence", value);
            }
            response
        }
        Err(response) => response,
    }
}

async fn publish_ping(
    state: &AppState,
    key: &crate::keys::KeyRecord,
    job: &JobName,
    kind: PingKind,
    rid: Option<&ExecutionId>,
    create: bool,
    output: Option<String>,
) -> Result<u64, Response> {
    let tenant = key.tenant_id;
    let internal = |error: &dyn std::fmt::Display| {
        tracing::error!(%error, "a ping failed");
        text(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    };
    let known = state.ingest.created_here(tenant, job.as_str())
        || state
            .readers
            .get()
            .job_exists(&tenant, job.as_str())
            .map_err(|e| internal(&e))?;
    if !known && !create {
        return Err(text(
            StatusCode::NOT_FOUND,
            "JOB_NOT_FOUND: no job with this name in the key's tenant; add ?create=1 to create it",
        ));
    }
    let now = Utc::now();
    let event_type = kind.event_type();
    let execution_id = match (rid, kind) {
        (Some(rid), _) => rid.as_str().to_owned(),
        (None, PingKind::Start) => format!("ping-{}", uuid::Uuid::new_v4().simple()),
        (None, _) => paired_start(state, tenant, job.as_str(), now.timestamp_millis())
            .map_err(|e| internal(&e))?
            .unwrap_or_else(|| format!("ping-{}", uuid::Uuid::new_v4().simple())),
    };
    let event_id = match rid {
        Some(rid) => derived_event_id(tenant, job.as_str(), rid.as_str(), event_type.as_str()),
        None => uuid::Uuid::new_v4(),
    };
    let mut fields = serde_json::Map::new();
    if let PingKind::Exit(status) = kind {
        fields.insert("exitCode".into(), status.into());
        if status != 0 {
            fields.insert("error".into(), format!("exit status {status}").into());
        }
    }
    if let (Some(output), true) = (output, event_type != EventType::Started) {
        fields.insert("output".into(), output.into());
    }
    let outgoing = RunEvent {
        tenant,
        job: job.as_str(),
        event_type,
        execution_id: &execution_id,
        event_id,
        occurred_at: now,
        fields,
    }
    .outgoing()
    .map_err(|error| text(StatusCode::BAD_REQUEST, &error.to_string()))?;
    let Some(nats) = &state.nats else {
        return Err(text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the event stream is not available here",
        ));
    };
    let sequences = publish_all(&nats.client, vec![outgoing])
        .await
        .map_err(|partial| {
            tracing::warn!(cause = %partial.cause, "publishing a ping failed");
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the event stream did not acknowledge the ping; retry",
            )
        })?;
    if !known {
        state.ingest.remember_created(tenant, job.as_str());
    }
    match (kind, rid) {
        (PingKind::Start, None) => {
            state
                .ingest
                .remember_start(tenant, job.as_str(), execution_id, now.timestamp_millis())
        }
        (PingKind::Start, Some(_)) => {}
        (_, _) => state
            .ingest
            .forget_start(tenant, job.as_str(), &execution_id),
    }
    Ok(sequences.first().copied().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_segment_says_what_happened() {
        assert_eq!(PingKind::parse(None), Ok(PingKind::Success));
        assert_eq!(PingKind::parse(Some("start")), Ok(PingKind::Start));
        assert_eq!(PingKind::parse(Some("fail")), Ok(PingKind::Fail));
        assert_eq!(PingKind::parse(Some("0")), Ok(PingKind::Exit(0)));
        assert_eq!(PingKind::parse(Some("255")), Ok(PingKind::Exit(255)));
        for bad in ["256", "-1", "+3", "log", "", "1.5"] {
            assert!(PingKind::parse(Some(bad)).is_err(), "{bad}");
        }
        assert_eq!(PingKind::Exit(0).event_type(), EventType::Completed);
        assert_eq!(PingKind::Exit(3).event_type(), EventType::Failed);
    }
}
