//! `POST /api/v1/events` (CONTRACT §10): one JSON event, a JSON array of up to 1 000, or
//! NDJSON. Every event is checked by the projector's own rules ([`crate::events::decode`])
//! before anything is published: one bad event and nothing is, with each bad one's index,
//! dead-letter code and reason.

use std::sync::Arc;

use super::{publish_all, Ingester, Outgoing, ROLE_JOB_RUNNER};
use crate::api::auth::ROLE_SUPER_ADMIN;
use crate::api::errors::{ApiError, EventProblem};
use crate::api::AppState;
use crate::events::{decode, subject_for, EventType, TenantId};
use poem::http::StatusCode;
use poem::{handler, web::Data, Body, Request, Response};

/// The largest request body.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// The most events one request may carry.
pub const MAX_EVENTS: usize = 1_000;

#[handler]
pub async fn post_events(request: &Request, body: Body, state: Data<&Arc<AppState>>) -> Response {
    match accept(request, body, &state).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn accept(request: &Request, body: Body, state: &AppState) -> Result<Response, ApiError> {
    let ingester = ingester(request, state).await?;
    state
        .ingest
        .admit(&ingester.rate_key())
        .map_err(ApiError::RateLimited)?;
    let body = body
        .into_bytes_limit(MAX_BODY_BYTES)
        .await
        .map_err(|error| match error {
            poem::error::ReadBodyError::PayloadTooLarge => {
                ApiError::PayloadTooLarge(MAX_BODY_BYTES)
            }
            other => {
                ApiError::InvalidParameter(format!("The request body could not be read: {other}"))
            }
        })?;
    let ndjson = request.content_type().is_some_and(|ct| {
        ct.trim()
            .to_ascii_lowercase()
            .starts_with("application/x-ndjson")
    });
    let elements = elements(&body, ndjson)?;
    let outgoing = validate(elements, ingester.tenant())?;
    let Some(nats) = &state.nats else {
        return Err(ApiError::StreamUnavailable {
            acknowledged: 0,
            total: outgoing.len(),
        });
    };
    let sequences = publish_all(&nats.client, outgoing).await.map_err(|partial| {
        tracing::warn!(cause = %partial.cause, acknowledged = partial.acknowledged, total = partial.total, "publishing ingested events failed");
        ApiError::StreamUnavailable {
            acknowledged: partial.acknowledged,
            total: partial.total,
        }
    })?;
    let last = sequences.iter().copied().max().unwrap_or(0);
    let body = serde_json::json!({
        "success": true,
        "message": "Events accepted",
        "data": {
            "accepted": sequences.len(),
            "sequences": sequences,
            "lastSequence": last,
        },
        "timestamp": crate::api::now_rfc3339(),
    });
    Ok(Response::builder()
        .status(StatusCode::ACCEPTED)
        .content_type("application/json; charset=utf-8")
        .header("X-Jobstats-Sequence", last.to_string())
        .body(serde_json::to_vec(&body).unwrap_or_default()))
}

/// The caller: an ingest key, a `job_runner` token or a `super_admin` token.
pub async fn ingester(request: &Request, state: &AppState) -> Result<Ingester, ApiError> {
    let token = super::bearer(request.headers()).ok_or_else(|| {
        ApiError::Unauthorized("Missing bearer token: send an ingest key or a JWT".into())
    })?;
    if crate::keys::looks_like_key(token) {
        return state
            .ingest
            .keys
            .lookup(token)
            .map(Ingester::Key)
            .ok_or_else(|| ApiError::Unauthorized("Unknown or revoked ingest key".into()));
    }
    let principal = state
        .authenticator
        .authenticate_headers(request.headers())
        .await
        .map_err(|error| ApiError::Unauthorized(error.to_string()))?;
    let subject = principal.subject.clone().unwrap_or_default();
    if principal.roles.contains(ROLE_SUPER_ADMIN) {
        return Ok(Ingester::Anyone { subject });
    }
    if principal.roles.contains(ROLE_JOB_RUNNER) {
        return match principal.tenant {
            Some(tenant) => Ok(Ingester::Runner { tenant, subject }),
            None => Err(ApiError::Forbidden(
                "A job_runner token needs a tenant_id claim".into(),
            )),
        };
    }
    Err(ApiError::Forbidden(
        "Insufficient permissions: posting events requires an ingest key or the job_runner or super_admin role".into(),
    ))
}

/// The request's events, each as the bytes it came in (published as they are), or the
/// reason each unreadable one is not.
fn elements(body: &[u8], ndjson: bool) -> Result<Vec<&[u8]>, ApiError> {
    if ndjson {
        let mut values = Vec::new();
        let mut problems = Vec::new();
        let lines = body
            .split(|b| *b == b'\n')
            .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
            .filter(|line| !line.iter().all(u8::is_ascii_whitespace));
        for (index, line) in lines.enumerate() {
            if index >= MAX_EVENTS {
                return Err(too_many());
            }
            match serde_json::from_slice::<serde::de::IgnoredAny>(line) {
                Ok(_) => values.push(line),
                Err(error) => problems.push(unreadable(index, line, &error)),
            }
        }
        if !problems.is_empty() {
            return Err(ApiError::InvalidEvents(problems));
        }
        if values.is_empty() {
            return Err(ApiError::InvalidParameter(
                "The request holds no events".into(),
            ));
        }
        return Ok(values);
    }
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'[') {
        return match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
            Ok(_) => Ok(vec![body]),
            Err(error) => Err(ApiError::InvalidEvents(vec![unreadable(0, body, &error)])),
        };
    }
    match serde_json::from_slice::<Vec<&serde_json::value::RawValue>>(body) {
        Ok(values) if values.len() > MAX_EVENTS => Err(too_many()),
        Ok(values) if values.is_empty() => Err(ApiError::InvalidParameter(
            "The request holds no events".into(),
        )),
        Ok(values) => Ok(values.into_iter().map(|v| v.get().as_bytes()).collect()),
        Err(error) => Err(ApiError::InvalidEvents(vec![unreadable(0, body, &error)])),
    }
}

fn too_many() -> ApiError {
    ApiError::InvalidParameter(format!(
        "A request carries at most {MAX_EVENTS} events; split it"
    ))
}

fn unreadable(index: usize, bytes: &[u8], error: &serde_json::Error) -> EventProblem {
    let (code, reason) = if std::str::from_utf8(bytes).is_err() {
        ("not_utf8", "body is not valid UTF-8".to_owned())
    } else {
        ("malformed_json", format!("body is not valid JSON: {error}"))
    };
    EventProblem {
        index,
        code,
        reason,
    }
}

/// Checks every event as the projector would, on the subject it would arrive on; the
/// caller's tenant, when it has one, must be each event's.
fn validate(events: Vec<&[u8]>, tenant: Option<TenantId>) -> Result<Vec<Outgoing>, ApiError> {
    let mut outgoing = Vec::with_capacity(events.len());
    let mut problems = Vec::new();
    for (index, payload) in events.into_iter().enumerate() {
        match check(payload, tenant) {
            Ok(event) => outgoing.push(event),
            Err((code, reason)) => problems.push(EventProblem {
                index,
                code,
                reason,
            }),
        }
    }
    if problems.is_empty() {
        Ok(outgoing)
    } else {
        Err(ApiError::InvalidEvents(problems))
    }
}

/// The two fields that say where an event goes, read without building the rest.
#[derive(serde::Deserialize)]
struct Route<'a> {
    #[serde(rename = "type", borrow, default)]
    event_type: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "tenantId", borrow, default)]
    tenant_id: Option<std::borrow::Cow<'a, str>>,
}

fn check(payload: &[u8], tenant: Option<TenantId>) -> Result<Outgoing, (&'static str, String)> {
    // Where the event would be published: the caller's tenant (decode then refuses a body
    // naming another), else the body's. What the body lacks or mistypes is left for decode
    // to name, on a subject that gets it that far.
    let route = serde_json::from_slice::<Route>(payload).ok();
    let body_tenant = route
        .as_ref()
        .and_then(|r| r.tenant_id.as_deref())
        .and_then(|text| TenantId::parse(text).ok());
    let subject_tenant = tenant
        .or(body_tenant)
        .unwrap_or_else(|| TenantId::new(uuid::Uuid::nil()));
    let subject = match route.as_ref().and_then(|r| r.event_type.as_deref()) {
        Some(name) => match EventType::parse(name) {
            Some(event_type) => subject_for(&subject_tenant, event_type),
            None => format!("jobs.events.{subject_tenant}.unknown"),
        },
        None => subject_for(&subject_tenant, EventType::Completed),
    };
    let event = decode(&subject, payload).map_err(|error| match error {
        crate::events::DecodeError::TenantMismatch { body, .. } => (
            "tenant_mismatch",
            format!(
                "tenantId {body} is not the tenant this key or token may post for ({subject_tenant})"
            ),
        ),
        other => (other.code(), other.to_string()),
    })?;
    Ok(Outgoing {
        subject,
        payload: payload.to_vec(),
        event_id: event.event_id.hyphenated().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const TENANT: &str = "6f1c1a52-4b47-4b8e-9d3f-0a6a1f3b2c11";

    fn event(kind: &str, extra: Value) -> Value {
        let mut body = serde_json::json!({
            "eventId": uuid::Uuid::new_v4().to_string(),
            "type": kind,
            "tenantId": TENANT,
            "jobName": "nightly",
            "executionId": "e1",
            "occurredAt": "2026-12-07T10:00:00Z",
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    }

    fn problems(result: Result<Vec<Outgoing>, ApiError>) -> Vec<(usize, &'static str)> {
        match result {
            Err(ApiError::InvalidEvents(problems)) => {
                problems.iter().map(|p| (p.index, p.code)).collect()
            }
            Err(other) => panic!("not INVALID_EVENTS: {other}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn each_bad_event_is_named_by_index_with_the_dead_letter_code() {
        let tenant = TenantId::parse(TENANT).ok();
        let values = [
            event("started", serde_json::json!({})),
            event("exploded", serde_json::json!({})),
            event(
                "started",
                serde_json::json!({"tenantId": "00000000-0000-4000-8000-000000000009"}),
            ),
            event("failed", serde_json::json!({"error": 7})),
            serde_json::json!([1]),
            serde_json::json!({"type": "started"}),
        ];
        let bytes: Vec<Vec<u8>> = values
            .iter()
            .map(|v| serde_json::to_vec(v).unwrap())
            .collect();
        assert_eq!(
            problems(validate(bytes.iter().map(Vec::as_slice).collect(), tenant)),
            vec![
                (1, "unknown_type"),
                (2, "tenant_mismatch"),
                (3, "wrong_type"),
                (4, "not_an_object"),
                (5, "missing_field"),
            ]
        );
    }

    #[test]
    fn good_events_keep_their_ids_and_subjects() {
        let value = event("started", serde_json::json!({"futureField": 1}));
        let id = value["eventId"].as_str().unwrap().to_owned();
        let bytes = serde_json::to_vec(&value).unwrap();
        let out = validate(vec![&bytes], None).unwrap();
        assert_eq!(out[0].event_id, id);
        assert_eq!(out[0].subject, format!("jobs.events.{TENANT}.started"));
        // Unknown fields travel on: the projector ignores them, a newer one may not.
        assert!(String::from_utf8_lossy(&out[0].payload).contains("futureField"));
    }

    #[test]
    fn bodies_are_one_event_an_array_or_ndjson() {
        let one = serde_json::to_vec(&event("started", serde_json::json!({}))).unwrap();
        assert_eq!(elements(&one, false).unwrap().len(), 1);
        let array = serde_json::to_vec(&vec![event("started", serde_json::json!({})); 3]).unwrap();
        assert_eq!(elements(&array, false).unwrap().len(), 3);
        let lines = format!(
            "{}\n\n{}\r\n",
            serde_json::to_string(&event("started", serde_json::json!({}))).unwrap(),
            serde_json::to_string(&event("completed", serde_json::json!({}))).unwrap()
        );
        assert_eq!(elements(lines.as_bytes(), true).unwrap().len(), 2);
        let broken = format!("{}\n{{oops\n", String::from_utf8_lossy(&one));
        match elements(broken.as_bytes(), true) {
            Err(ApiError::InvalidEvents(p)) => {
                assert_eq!((p[0].index, p[0].code), (1, "malformed_json"))
            }
            other => panic!("{other:?}"),
        }
        let too_many = serde_json::to_vec(&vec![serde_json::json!({}); MAX_EVENTS + 1]).unwrap();
        assert!(matches!(
            elements(&too_many, false),
            Err(ApiError::InvalidParameter(_))
        ));
        assert!(matches!(
            elements(b"[]", false),
            Err(ApiError::InvalidParameter(_))
        ));
    }
}
