//! What only a `super_admin` may read, across tenants: the tenants with jobs, where the
//! projection stands, and the dead letters (the dashboard's tenant picker and projection
//! view). No `x-tenantid`: these answers are not about one tenant.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use chrono::Utc;
use poem::Request;
use poem_openapi::{param::Query, payload::Json, ApiResponse, Object, OpenApi};

use super::auth::ROLE_SUPER_ADMIN;
use super::errors::{ApiError, ErrorEnvelope};
use super::query::{invalid, Cursor, QueryParams};
use super::stats::{extraction_error, BearerAuth};
use super::{rfc3339_millis, AppState};

#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct TenantEntry {
    pub tenant_id: String,
    /// Jobs of the tenant in the read model.
    pub jobs: u64,
}

#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct TenantsData {
    pub tenants: Vec<TenantEntry>,
}

#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct ReasonCount {
    pub reason_code: String,
    pub count: u64,
}

#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct ProjectionData {
    /// The last stream sequence applied.
    pub applied_sequence: u64,
    /// Stream publish time of that event.
    #[oai(nullable)]
    pub last_event_at: Option<String>,
    /// Messages in the stream not yet applied (the consumer's pending count).
    pub lag: u64,
    /// Everything the stream held has been applied and NATS is reachable.
    pub caught_up: bool,
    pub events_applied: u64,
    pub dead_letters: u64,
    pub dead_letters_by_reason: Vec<ReasonCount>,
}

#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct DeadLetterEntry {
    /// Stream sequence of the message.
    pub sequence: u64,
    pub subject: String,
    pub reason_code: String,
    pub reason: String,
    pub payload_bytes: u64,
    #[oai(nullable)]
    pub published_at: Option<String>,
}

#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct DeadLettersData {
    /// Newest first.
    pub dead_letters: Vec<DeadLetterEntry>,
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

macro_rules! admin_envelope {
    ($envelope:ident, $data:ty, $response:ident, $handler:ident, $doc:literal, $message:literal) => {
        #[derive(Debug, Clone, Object)]
        #[oai(rename_all = "camelCase")]
        pub struct $envelope {
            pub success: bool,
            pub message: String,
            pub data: $data,
            pub timestamp: String,
        }

        #[derive(ApiResponse)]
        #[oai(bad_request_handler = $handler)]
        pub enum $response {
            #[doc = $doc]
            #[oai(status = 200)]
            Ok(Json<$envelope>),
            /// INVALID_PARAMETER (the message names the parameter).
            #[oai(status = 400)]
            BadRequest(Json<ErrorEnvelope>),
            /// UNAUTHORIZED.
            #[oai(status = 401)]
            Unauthorized(
                Json<ErrorEnvelope>,
                #[oai(header = "WWW-Authenticate")] String,
            ),
            /// FORBIDDEN: the token is not a super_admin's.
            #[oai(status = 403)]
            Forbidden(Json<ErrorEnvelope>),
            /// INTERNAL_ERROR.
            #[oai(status = 500)]
            Internal(Json<ErrorEnvelope>),
        }

        impl From<ApiError> for $response {
            fn from(error: ApiError) -> Self {
                let body = Json(error.envelope());
                match error.status().as_u16() {
                    400 => $response::BadRequest(body),
                    401 => $response::Unauthorized(body, "Bearer".into()),
                    403 => $response::Forbidden(body),
                    _ => $response::Internal(body),
                }
            }
        }

        impl From<Result<$data, ApiError>> for $response {
            fn from(result: Result<$data, ApiError>) -> Self {
                match result {
                    Ok(data) => $response::Ok(Json($envelope {
                        success: true,
                        message: $message.to_owned(),
                        data,
                        timestamp: rfc3339_millis(Utc::now().timestamp_millis()),
                    })),
                    Err(error) => error.into(),
                }
            }
        }

        fn $handler(error: poem::Error) -> $response {
            extraction_error(error).into()
        }
    };
}

admin_envelope!(
    TenantsEnvelope,
    TenantsData,
    TenantsResponse,
    tenants_bad_request,
    "Every tenant with jobs.",
    "Tenants retrieved successfully"
);
admin_envelope!(
    ProjectionEnvelope,
    ProjectionData,
    ProjectionResponse,
    projection_bad_request,
    "Where the projection stands.",
    "Projection status retrieved successfully"
);
admin_envelope!(
    DeadLettersEnvelope,
    DeadLettersData,
    DeadLettersResponse,
    dead_letters_bad_request,
    "One page of dead letters, newest first.",
    "Dead letters retrieved successfully"
);

/// 403 unless the caller is a `super_admin`.
fn require_super_admin(auth: &BearerAuth) -> Result<(), ApiError> {
    if auth.0.roles.contains(ROLE_SUPER_ADMIN) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "Insufficient permissions: requires the super_admin role".into(),
        ))
    }
}

fn app_state(request: &Request) -> Result<&Arc<AppState>, ApiError> {
    request
        .data::<Arc<AppState>>()
        .ok_or_else(|| ApiError::Internal("application state missing".into()))
}

pub struct AdminApi;

#[OpenApi]
impl AdminApi {
    /// The tenants that have jobs in this replica's read model (`super_admin` only).
    #[oai(path = "/admin/tenants", method = "get", operation_id = "listTenants")]
    async fn list_tenants(&self, request: &Request, auth: BearerAuth) -> TenantsResponse {
        let tenants = || -> Result<TenantsData, ApiError> {
            QueryParams::of(request)?;
            require_super_admin(&auth)?;
            let tenants = app_state(request)?.readers.get().tenants()?;
            Ok(TenantsData {
                tenants: tenants
                    .into_iter()
                    .map(|(tenant_id, jobs)| TenantEntry { tenant_id, jobs })
                    .collect(),
            })
        };
        tenants().into()
    }

    /// Where the projection stands: applied sequence, last event, lag, dead letters by
    /// reason (`super_admin` only).
    #[oai(
        path = "/admin/projection",
        method = "get",
        operation_id = "getProjection"
    )]
    async fn get_projection(&self, request: &Request, auth: BearerAuth) -> ProjectionResponse {
        let projection = || -> Result<ProjectionData, ApiError> {
            QueryParams::of(request)?;
            require_super_admin(&auth)?;
            let state = app_state(request)?;
            let readers = state.readers.get();
            let freshness = readers.freshness()?;
            let reasons = readers.dead_letter_reasons()?;
            Ok(ProjectionData {
                applied_sequence: freshness.last_sequence,
                last_event_at: freshness.last_published_at_ms.map(rfc3339_millis),
                lag: state.status.lag.load(Ordering::Relaxed),
                caught_up: state.status.position().caught_up,
                events_applied: freshness.events_applied,
                dead_letters: freshness.dead_letters,
                dead_letters_by_reason: reasons
                    .into_iter()
                    .map(|(reason_code, count)| ReasonCount { reason_code, count })
                    .collect(),
            })
        };
        projection().into()
    }

    /// Dead letters newest first: publisher input that broke the contract, with why
    /// (`super_admin` only).
    #[oai(
        path = "/admin/dead-letters",
        method = "get",
        operation_id = "listDeadLetters"
    )]
    async fn list_dead_letters(
        &self,
        request: &Request,
        /// Only this reason code (e.g. `malformed_json`).
        #[oai(name = "reason")]
        _reason: Query<Option<String>>,
        /// Page size, 1–500 (default 50).
        #[oai(name = "limit")]
        _limit: Query<Option<String>>,
        /// `nextCursor` of the previous page of the same query.
        #[oai(name = "cursor")]
        _cursor: Query<Option<String>>,
        auth: BearerAuth,
    ) -> DeadLettersResponse {
        let page = || -> Result<DeadLettersData, ApiError> {
            let params = QueryParams::of(request)?;
            let reason = params.get("reason").map(str::to_owned);
            if reason.as_ref().is_some_and(|r| {
                r.is_empty()
                    || r.len() > 64
                    || !r
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())
            }) {
                return Err(invalid(
                    "reason",
                    "must be a reason code such as malformed_json",
                ));
            }
            let limit = params.integer("limit", 1, 500, 50)?;
            let query_id =
                super::query::fingerprint(&["dead-letters", reason.as_deref().unwrap_or("")]);
            let before = Cursor::decode(&params, &query_id)?
                .map(|c| {
                    c.key
                        .as_u64()
                        .ok_or_else(|| invalid("cursor", "is not a cursor this service issued"))
                })
                .transpose()?;
            require_super_admin(&auth)?;
            let readers = app_state(request)?.readers.get();
            let mut rows = readers.dead_letters_page(reason.as_deref(), before, limit + 1)?;
            let more = rows.len() > limit as usize;
            rows.truncate(limit as usize);
            let next_cursor = rows.last().filter(|_| more).map(|last| {
                Cursor {
                    query: query_id.clone(),
                    key: last.sequence.into(),
                    id: String::new(),
                    frozen: None,
                    as_of: None,
                }
                .encode()
            });
            Ok(DeadLettersData {
                dead_letters: rows
                    .into_iter()
                    .map(|d| DeadLetterEntry {
                        sequence: d.sequence,
                        subject: d.subject,
                        reason_code: d.reason_code,
                        reason: d.reason,
                        payload_bytes: d.payload_bytes,
                        published_at: d.published_at_ms.map(rfc3339_millis),
                    })
                    .collect(),
                next_cursor,
            })
        };
        page().into()
    }
}
