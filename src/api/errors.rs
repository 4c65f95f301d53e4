//! The JSON error envelope of CONTRACT §3 and the one error enum of the HTTP boundary.

use poem::http::{header, StatusCode};
use poem_openapi::Object;

use crate::store::StoreError;

/// `{"code": "..."}` inside the envelope.
#[derive(Debug, Clone, Object)]
pub struct ErrorDetail {
    /// Machine-readable code: INVALID_TENANT_ID, INVALID_JOB_NAME, INVALID_PARAMETER,
    /// UNAUTHORIZED, FORBIDDEN, JOB_NOT_FOUND, EXECUTION_NOT_FOUND, NOT_FOUND, METHOD_NOT_ALLOWED, INTERNAL_ERROR.
    pub code: String,
}

/// The body of every error response.
#[derive(Debug, Clone, Object)]
pub struct ErrorEnvelope {
    /// Always false.
    pub success: bool,
    /// A human sentence.
    pub message: String,
    pub error: ErrorDetail,
    /// When the response was generated (RFC 3339, UTC, milliseconds).
    pub timestamp: String,
}

/// Everything that can go wrong answering a request. Each variant maps to one status and
/// code; [`ApiError::Internal`] is logged with its cause and answered without it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 INVALID_TENANT_ID: `x-tenantid` missing, repeated or not a UUID.
    #[error("{0}")]
    InvalidTenant(String),
    /// 400 INVALID_JOB_NAME: the path's job name breaks the naming rule.
    #[error("{0}")]
    InvalidJobName(String),
    /// 400 INVALID_PARAMETER: a query parameter out of range.
    #[error("{0}")]
    InvalidParameter(String),
    /// 401 UNAUTHORIZED, with `WWW-Authenticate: Bearer`.
    #[error("{0}")]
    Unauthorized(String),
    /// 403 FORBIDDEN.
    #[error("{0}")]
    Forbidden(String),
    /// 404 JOB_NOT_FOUND: no event was ever seen for this job in this tenant.
    #[error("No job with this name exists for this tenant")]
    JobNotFound,
    /// 404 EXECUTION_NOT_FOUND: the job has no execution with this id.
    #[error("The job has no execution with this id")]
    ExecutionNotFound,
    /// 404 NOT_FOUND: no such route.
    #[error("No such resource")]
    RouteNotFound,
    /// 405 METHOD_NOT_ALLOWED, with `Allow`.
    #[error("Method not allowed; use GET or HEAD")]
    MethodNotAllowed,
    /// 503 PROJECTION_BEHIND, with `Retry-After`: `minSequence` was not applied within
    /// `waitMs`.
    #[error(
        "The projection has applied stream sequence {applied}; sequence {wanted} is not applied yet"
    )]
    ProjectionBehind { applied: u64, wanted: u64 },
    /// 421 TENANT_NOT_SERVED: this replica's `JOBSTATS_TENANTS` does not hold the tenant.
    #[error("This replica does not serve tenant {0}; send the request to a replica that does")]
    TenantNotServed(String),
    /// 404 KEY_NOT_FOUND: no ingest key has this id (or it was revoked).
    #[error("No ingest key with this id exists")]
    KeyNotFound,
    /// 413 PAYLOAD_TOO_LARGE: the body is over the endpoint's limit.
    #[error("The request body is over the {0}-byte limit")]
    PayloadTooLarge(usize),
    /// 422 INVALID_EVENTS: nothing was published; `error.events` says what each bad event
    /// broke, by its index in the request.
    #[error("{} of the request's events break the event contract; nothing was published", .0.len())]
    InvalidEvents(Vec<EventProblem>),
    /// 429 RATE_LIMITED, with `Retry-After` (whole seconds, at least 1).
    #[error("Too many requests for this ingest key; retry in {0} s")]
    RateLimited(u64),
    /// 503 STREAM_UNAVAILABLE: JetStream did not acknowledge every event; a retry of the
    /// same request publishes nothing twice.
    #[error("The event stream acknowledged {acknowledged} of {total} events; retry the request (it publishes nothing twice)")]
    StreamUnavailable { acknowledged: usize, total: usize },
    /// 500 INTERNAL_ERROR; the cause is logged, never returned.
    #[error("internal error: {0}")]
    Internal(String),
}

/// One bad event of an ingestion request: its index, the dead-letter code and the reason.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EventProblem {
    pub index: usize,
    pub code: &'static str,
    pub reason: String,
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        ApiError::Internal(error.to_string())
    }
}

/// What a 503 PROJECTION_BEHIND asks the client to wait: the projector commits within
/// milliseconds when it keeps up, so a second is a patient retry.
pub const RETRY_AFTER_SECONDS: &str = "1";

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidTenant(_)
            | ApiError::InvalidJobName(_)
            | ApiError::InvalidParameter(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::JobNotFound | ApiError::ExecutionNotFound | ApiError::RouteNotFound => {
                StatusCode::NOT_FOUND
            }
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::ProjectionBehind { .. } | ApiError::StreamUnavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::KeyNotFound => StatusCode::NOT_FOUND,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::InvalidEvents(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::TenantNotServed(_) => StatusCode::MISDIRECTED_REQUEST,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidTenant(_) => "INVALID_TENANT_ID",
            ApiError::InvalidJobName(_) => "INVALID_JOB_NAME",
            ApiError::InvalidParameter(_) => "INVALID_PARAMETER",
            ApiError::Unauthorized(_) => "UNAUTHORIZED",
            ApiError::Forbidden(_) => "FORBIDDEN",
            ApiError::JobNotFound => "JOB_NOT_FOUND",
            ApiError::ExecutionNotFound => "EXECUTION_NOT_FOUND",
            ApiError::RouteNotFound => "NOT_FOUND",
            ApiError::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            ApiError::ProjectionBehind { .. } => "PROJECTION_BEHIND",
            ApiError::KeyNotFound => "KEY_NOT_FOUND",
            ApiError::PayloadTooLarge(_) => "PAYLOAD_TOO_LARGE",
            ApiError::InvalidEvents(_) => "INVALID_EVENTS",
            ApiError::RateLimited(_) => "RATE_LIMITED",
            ApiError::StreamUnavailable { .. } => "STREAM_UNAVAILABLE",
            ApiError::TenantNotServed(_) => "TENANT_NOT_SERVED",
            ApiError::Internal(_) => "INTERNAL_ERROR",
        }
    }

    /// The envelope; an internal error's cause is logged here and replaced by a fixed text.
    pub fn envelope(&self) -> ErrorEnvelope {
        let message = match self {
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "request failed");
                "An unexpected error occurred".to_owned()
            }
            other => other.to_string(),
        };
        ErrorEnvelope {
            success: false,
            message,
            error: ErrorDetail {
                code: self.code().to_owned(),
            },
            timestamp: super::now_rfc3339(),
        }
    }

    /// A complete response, for paths outside poem-openapi (middleware, fallbacks).
    pub fn into_response(self) -> poem::Response {
        let body = serde_json::to_vec(&self.envelope_json()).unwrap_or_default();
        let mut response = poem::Response::builder()
            .status(self.status())
            .content_type("application/json; charset=utf-8");
        if matches!(self, ApiError::Unauthorized(_)) {
            response = response.header(header::WWW_AUTHENTICATE, "Bearer");
        }
        if matches!(self, ApiError::MethodNotAllowed) {
            response = response.header(header::ALLOW, "GET, HEAD");
        }
        if matches!(
            self,
            ApiError::ProjectionBehind { .. } | ApiError::StreamUnavailable { .. }
        ) {
            response = response.header(header::RETRY_AFTER, RETRY_AFTER_SECONDS);
        }
        if let ApiError::RateLimited(seconds) = &self {
            response = response.header(header::RETRY_AFTER, seconds.to_string());
        }
        response.body(body)
    }

    fn envelope_json(&self) -> serde_json::Value {
        let envelope = self.envelope();
        let mut error = serde_json::json!({ "code": envelope.error.code });
        if let ApiError::InvalidEvents(problems) = self {
            error["events"] = serde_json::json!(problems);
        }
        serde_json::json!({
            "success": envelope.success,
            "message": envelope.message,
            "error": error,
            "timestamp": envelope.timestamp,
        })
    }
}
