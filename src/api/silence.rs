//! `POST /api/v1/admin/jobs/{jobName}/silence` (CONTRACT §11): quiets a job's alerts until an
//! instant, or lifts the silence (`until` null or past), by publishing a `silenced` event. The
//! projection applies it like any event, so a rebuild and every replica see the same silence;
//! the health evaluator keeps judging the job and marks its changes `silenced`.

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use poem::Request;
use poem_openapi::{
    param::{Header, Path},
    payload::Json,
    ApiResponse, Object, OpenApi,
};

use super::errors::{ApiError, ErrorEnvelope};
use super::params::{JobNameParam, TenantParam};
use super::stats::{extraction_error, refuse_repeated_tenant, BearerAuth};
use super::AppState;
use crate::events::{Event, EventKind, MAX_SILENCE_REASON_CHARS};

/// What to silence: until when, and why.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct SilenceRequest {
    /// Until when the job's alerts are quiet (RFC 3339); null, or an instant already past,
    /// lifts the silence.
    #[oai(nullable)]
    pub until: Option<String>,
    /// Why (at most 512 characters), shown in stats, the job list and the dashboard.
    #[oai(nullable, validator(max_length = 512))]
    pub reason: Option<String>,
}

/// The silence as published.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct SilenceAccepted {
    pub job_name: String,
    /// The `silenced` event's id.
    pub event_id: String,
    /// Its stream sequence: stats whose `freshness.appliedSequence` reached it show it.
    pub sequence: u64,
    /// Until when (null: lifted).
    #[oai(nullable)]
    pub silenced_until: Option<String>,
    #[oai(nullable)]
    pub silence_reason: Option<String>,
    /// Who silenced it: the token's `sub`.
    #[oai(nullable)]
    pub silenced_by: Option<String>,
}

#[derive(Debug, Clone, Object)]
pub struct SilenceEnvelope {
    pub success: bool,
    pub message: String,
    pub data: SilenceAccepted,
    pub timestamp: String,
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "silence_bad_request")]
pub enum SilenceResponse {
    /// The `silenced` event is stored in the stream; the projection shows it once applied.
    #[oai(status = 202)]
    Accepted(Json<SilenceEnvelope>),
    /// INVALID_TENANT_ID, INVALID_JOB_NAME or INVALID_PARAMETER (a bad `until` or `reason`).
    #[oai(status = 400)]
    BadRequest(Json<ErrorEnvelope>),
    /// UNAUTHORIZED.
    #[oai(status = 401)]
    Unauthorized(
        Json<ErrorEnvelope>,
        #[oai(header = "WWW-Authenticate")] String,
    ),
    /// FORBIDDEN: no admin role, or a system_admin of another tenant.
    #[oai(status = 403)]
    Forbidden(Json<ErrorEnvelope>),
    /// JOB_NOT_FOUND.
    #[oai(status = 404)]
    NotFound(Json<ErrorEnvelope>),
    /// TENANT_NOT_SERVED: this replica does not serve the tenant.
    #[oai(status = 421)]
    NotServed(Json<ErrorEnvelope>),
    /// INTERNAL_ERROR.
    #[oai(status = 500)]
    Internal(Json<ErrorEnvelope>),
    /// STREAM_UNAVAILABLE: the event could not be stored; retry.
    #[oai(status = 503)]
    Unavailable(Json<ErrorEnvelope>),
}

impl From<ApiError> for SilenceResponse {
    fn from(error: ApiError) -> Self {
        let body = Json(error.envelope());
        match error.status().as_u16() {
            400 | 413 | 422 => SilenceResponse::BadRequest(body),
            401 => SilenceResponse::Unauthorized(body, "Bearer".into()),
            403 => SilenceResponse::Forbidden(body),
            404 => SilenceResponse::NotFound(body),
            421 => SilenceResponse::NotServed(body),
            503 => SilenceResponse::Unavailable(body),
            _ => SilenceResponse::Internal(body),
        }
    }
}

fn silence_bad_request(error: poem::Error) -> SilenceResponse {
    extraction_error(error).into()
}

pub struct SilenceApi;

#[OpenApi]
impl SilenceApi {
    /// Silence a job's alerts until an instant, or lift its silence (`until` null or past).
    /// The job is judged as always; channels send no openings or reminders while it is
    /// silenced, but do send recoveries, and one `silenceEnded` message if it is still in
    /// trouble when the silence ends.
    #[oai(
        path = "/admin/jobs/:jobName/silence",
        method = "post",
        operation_id = "silenceJob"
    )]
    async fn silence(
        &self,
        request: &Request,
        /// The tenant: a hyphenated UUID.
        #[oai(name = "x-tenantid")]
        tenant: Header<TenantParam>,
        /// The job's name.
        #[oai(name = "jobName")]
        job_name: Path<JobNameParam>,
        /// The authentication realm; the token must come from it.
        #[oai(name = "realmname")]
        _realm: Header<Option<String>>,
        body: Json<SilenceRequest>,
        auth: BearerAuth,
    ) -> SilenceResponse {
        let Some(state) = request.data::<Arc<AppState>>() else {
            return ApiError::Internal("application state missing".into()).into();
        };
        match silence(state, request, tenant.0 .0, job_name.0 .0, body.0, &auth).await {
            Ok(accepted) => SilenceResponse::Accepted(Json(SilenceEnvelope {
                success: true,
                message: "Silence published".into(),
                data: accepted,
                timestamp: super::now_rfc3339(),
            })),
            Err(error) => error.into(),
        }
    }
}

async fn silence(
    state: &AppState,
    request: &Request,
    tenant: crate::events::TenantId,
    job: crate::events::JobName,
    body: SilenceRequest,
    auth: &BearerAuth,
) -> Result<SilenceAccepted, ApiError> {
    refuse_repeated_tenant(request)?;
    let until = body
        .until
        .as_deref()
        .map(|text| {
            DateTime::parse_from_rfc3339(text)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    ApiError::InvalidParameter("until must be an RFC 3339 timestamp or null".into())
                })
        })
        .transpose()?;
    if body
        .reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > MAX_SILENCE_REASON_CHARS)
    {
        return Err(ApiError::InvalidParameter(format!(
            "reason must be at most {MAX_SILENCE_REASON_CHARS} characters"
        )));
    }
    state.check_served(&tenant)?;
    auth.0.authorize(&tenant).map_err(ApiError::Forbidden)?;
    let known = state
        .readers
        .get()
        .cached_job_snapshot(&tenant, &job, 0)
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .is_some();
    if !known {
        return Err(ApiError::JobNotFound);
    }
    let Some(nats) = &state.nats else {
        return Err(ApiError::StreamUnavailable {
            acknowledged: 0,
            total: 1,
        });
    };
    let by = auth.0.subject.clone();
    let event = Event {
        event_id: uuid::Uuid::new_v4(),
        tenant_id: tenant,
        job_name: job.clone(),
        occurred_at: Utc::now(),
        kind: EventKind::Silenced {
            until,
            reason: body.reason.clone(),
            by: by.clone(),
        },
    };
    let sequences =
        super::ingest::publish_all(&nats.client, vec![super::ingest::Outgoing::of(&event)])
            .await
            .map_err(|failure| {
                tracing::warn!(cause = %failure.cause, "cannot publish a silenced event");
                ApiError::StreamUnavailable {
                    acknowledged: failure.acknowledged,
                    total: failure.total,
                }
            })?;
    let lifted = until.is_none_or(|u| u <= event.occurred_at);
    Ok(SilenceAccepted {
        job_name: job.as_str().to_owned(),
        event_id: event.event_id.hyphenated().to_string(),
        sequence: sequences.first().copied().unwrap_or_default(),
        silenced_until: until
            .filter(|_| !lifted)
            .map(|u| u.to_rfc3339_opts(SecondsFormat::Millis, true)),
        silence_reason: body.reason,
        silenced_by: by,
    })
}
