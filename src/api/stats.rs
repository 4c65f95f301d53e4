//! `GET /api/v1/admin/jobs/{jobName}/stats`: the API document's response, field for field, plus
//! numeric twins of the human fields and the read model's freshness.
//!
//! Check order (documented in the README): authentication (401, in the middleware) →
//! `x-tenantid` (400) → job name and parameters (400) → authorization (403) → lookup (404).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem::Request;
use poem_openapi::{
    param::{Header, Path, Query},
    payload::Json,
    ApiResponse, Object, OpenApi, SecurityScheme,
};

use super::body::StatsJson;
use super::errors::{ApiError, ErrorEnvelope};
use super::params::{JobNameParam, TenantParam};
use super::{rfc3339_millis, AppState};
use crate::api::auth::Principal;
use crate::events::{JobName, TenantId};
use crate::projection::format::{human_duration, human_percent, percent_one_decimal};
use crate::projection::health::{Health, Judgement, Position};
use crate::projection::rollup::{BucketRange, RollupBucket, Window};
use crate::store::{ExecutionSummary, JobSnapshot};

pub const SUCCESS_MESSAGE: &str = "Job statistics retrieved successfully";
pub const DEFAULT_RECENT: u32 = 10;
pub const MAX_RECENT: u32 = 100;

/// JWT bearer token with the `system_admin` or `super_admin` role (`roles` or Keycloak's
/// `realm_access.roles`), verified before the handler runs.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "JWT", checker = "verified_principal")]
pub struct BearerAuth(pub Principal);

async fn verified_principal(
    req: &Request,
    _bearer: poem_openapi::auth::Bearer,
) -> Option<Principal> {
    req.extensions().get::<Principal>().cloned()
}

#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct QueueStats {
    /// Executions enqueued and not started.
    pub pending: i64,
    /// Executions started and not finished.
    pub processing: i64,
    /// Executions that failed, over the whole history.
    pub failed: i64,
    /// Executions that completed, over the whole history.
    pub completed: i64,
}

#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct PerformanceStats {
    /// Mean run time of completed executions (`45s`, `2m 5s`); null before the first.
    #[oai(nullable)]
    pub average_execution_time: Option<String>,
    /// Run time of the execution that finished last (completed or failed).
    #[oai(nullable)]
    pub last_execution_time: Option<String>,
    /// completed / (completed + failed), one decimal (`99.8%`), rounded down.
    #[oai(nullable)]
    pub success_rate: Option<String>,
    #[oai(nullable)]
    pub average_execution_time_ms: Option<i64>,
    #[oai(nullable)]
    pub last_execution_time_ms: Option<i64>,
    #[oai(nullable)]
    pub success_rate_percent: Option<f64>,
    /// Run-time percentiles of the completed executions, each within 1% of the exact value.
    pub percentiles: PercentileStats,
    /// Enqueued → started, over executions with both times.
    pub queue_wait: QueueWaitStats,
    /// `itemsProcessed` over the finished executions that reported it.
    pub items_processed: ItemsProcessedStats,
}

/// Run-time percentiles (ms) from a mergeable relative-error sketch: each within 1% of the
/// exact order statistic (the value at rank ⌈q·n⌉ of the sorted run times); null without data.
#[derive(Debug, Clone, Object)]
pub struct PercentileStats {
    #[oai(rename = "p50Ms", nullable)]
    pub p50_ms: Option<i64>,
    #[oai(rename = "p90Ms", nullable)]
    pub p90_ms: Option<i64>,
    #[oai(rename = "p95Ms", nullable)]
    pub p95_ms: Option<i64>,
    #[oai(rename = "p99Ms", nullable)]
    pub p99_ms: Option<i64>,
}

impl From<crate::projection::sketch::Percentiles> for PercentileStats {
    fn from(p: crate::projection::sketch::Percentiles) -> Self {
        PercentileStats {
            p50_ms: p.p50,
            p90_ms: p.p90,
            p95_ms: p.p95,
            p99_ms: p.p99,
        }
    }
}

#[derive(Debug, Clone, Object)]
pub struct QueueWaitStats {
    /// Mean wait, ms; null without data.
    #[oai(rename = "averageMs", nullable)]
    pub average_ms: Option<i64>,
    /// 95th percentile of the wait (within 1%), ms; null without data.
    #[oai(rename = "p95Ms", nullable)]
    pub p95_ms: Option<i64>,
}

#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct ItemsProcessedStats {
    /// Sum of `itemsProcessed` (saturating at 2^63 − 1).
    pub total: i64,
    /// `total` / the number of finished executions that reported `itemsProcessed`; null
    /// before the first.
    #[oai(nullable)]
    pub average_per_run: Option<f64>,
}

/// `?window=`: executions that finished in the window's buckets (CONTRACT §6). Whole-stream
/// fields elsewhere in the answer are unchanged by it.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct WindowStats {
    /// `1h`, `24h`, `7d` or `30d`.
    pub name: String,
    /// The bucket edge the window starts at: the start of the minute (1h, 24h) or hour (7d,
    /// 30d) holding `to` − the window's length.
    pub from: String,
    /// The instant judged (`health.asOf`); the window reads up to the end of its bucket.
    pub to: String,
    /// `minute` or `hour`.
    pub granularity: String,
    pub completed: i64,
    pub failed: i64,
    #[oai(nullable)]
    pub success_rate: Option<String>,
    #[oai(nullable)]
    pub success_rate_percent: Option<f64>,
    #[oai(nullable)]
    pub average_execution_time_ms: Option<i64>,
    pub percentiles: PercentileStats,
}

#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct ScheduleStats {
    /// The latest `scheduled` event's 5-field cron expression (evaluated in `timezone`), or
    /// null.
    #[oai(nullable)]
    pub cron: Option<String>,
    /// The IANA time zone the cron is evaluated in (`UTC` unless the schedule names one).
    pub timezone: String,
    /// The next fire time after the request time.
    #[oai(nullable)]
    pub next_run: Option<String>,
    /// Start time of the most recent execution.
    #[oai(nullable)]
    pub last_run: Option<String>,
    /// The latest fire at or before `health.asOf`; null without a cron.
    #[oai(nullable)]
    pub expected_at: Option<String>,
    /// How late a run may start and still count for its fire: the schedule's `graceMs`, else
    /// 10% of the cron period clamped to 1 min … 1 h; null without a cron.
    #[oai(nullable)]
    pub grace_ms: Option<i64>,
    /// How long a run may process before the job is `stuck`: the schedule's `maxRuntimeMs`,
    /// else `JOBSTATS_MAX_RUNTIME`.
    pub max_runtime_ms: i64,
    /// `completed` or `failed`: the outcome of the last finished execution (by finish time).
    #[oai(nullable)]
    pub last_outcome: Option<String>,
    /// The job's labels, from its `scheduled` event (CONTRACT §11).
    pub labels: std::collections::BTreeMap<String, String>,
    /// Failed executions in a row before the job is `failing` (default 1).
    pub failure_threshold: i64,
    /// Completed executions in a row before a failing job is `healthy` again (default 1).
    pub recovery_threshold: i64,
}

/// Fires that no execution start was matched to.
#[derive(Debug, Clone, Object)]
pub struct MissedRuns {
    /// Fires in the last 24 hours (up to `asOf` − grace).
    #[oai(rename = "last24h")]
    pub last_24h: u32,
    /// Fires in the last 7 days.
    #[oai(rename = "last7d")]
    pub last_7d: u32,
}

/// A job's health (CONTRACT §5), as listed for many jobs.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct HealthSummary {
    /// The first that holds: unknown, stuck, missed, failing, healthy, new.
    pub state: String,
    /// The instant judged: the request time while the projection is caught up, else the
    /// stream publish time of the last applied event (never ahead of what was applied).
    pub as_of: String,
    /// When the job entered this state (stuck: oldest stuck start + maxRuntime; missed: the
    /// missed fire + grace; failing: finish of the first failure in a row; healthy: finish of
    /// the first success after the last failure; for both, the end of a missed or stuck
    /// episode that interrupted the run when that is later; unknown: when the stream had been
    /// unreachable for 60 s); null when not known.
    #[oai(nullable)]
    pub since: Option<String>,
    /// Failed executions since the last completed one, by finish time.
    pub consecutive_failures: i64,
    pub missed_runs: MissedRuns,
    /// Until when the job's alerts are silenced (CONTRACT §11); null when not silenced. A
    /// silenced job is judged as always.
    #[oai(nullable)]
    pub silenced_until: Option<String>,
    /// Why, as given with the silence.
    #[oai(nullable)]
    pub silence_reason: Option<String>,
    /// Who silenced it (the token's `sub`).
    #[oai(nullable)]
    pub silenced_by: Option<String>,
}

/// Uptime percentages (one decimal, as `successRate`) with their numeric twins; null when
/// nothing of the window counts.
#[derive(Debug, Clone, Default, PartialEq, Object, serde::Serialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
// Fields in key order: the stats body splices this object, serialized from the struct, into
// a template whose keys are sorted.
pub struct UptimeStats {
    #[oai(nullable)]
    pub last24h: Option<String>,
    #[oai(nullable)]
    pub last24h_percent: Option<f64>,
    #[oai(nullable)]
    pub last30d: Option<String>,
    #[oai(nullable)]
    pub last30d_percent: Option<f64>,
    #[oai(nullable)]
    pub last7d: Option<String>,
    #[oai(nullable)]
    pub last7d_percent: Option<f64>,
}

impl From<crate::notify::history::UptimeFigures> for UptimeStats {
    fn from(figures: crate::notify::history::UptimeFigures) -> Self {
        UptimeStats {
            last24h: figures.last24h.map(human_percent),
            last7d: figures.last7d.map(human_percent),
            last30d: figures.last30d.map(human_percent),
            last24h_percent: figures.last24h.map(percent_one_decimal),
            last7d_percent: figures.last7d.map(percent_one_decimal),
            last30d_percent: figures.last30d.map(percent_one_decimal),
        }
    }
}

/// A job's health (CONTRACT §5).
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct HealthStats {
    #[oai(flatten)]
    pub summary: HealthSummary,
    /// Executions processing for longer than maxRuntime at `asOf` (at most 20, oldest first).
    pub stuck_execution_ids: Vec<String>,
    /// Why the job is in this state, in one sentence (the `reason` of its notifications).
    pub reason: String,
}

#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct RecentExecution {
    /// The executionId.
    pub id: String,
    /// pending, processing, completed or failed.
    pub status: String,
    #[oai(nullable)]
    pub started_at: Option<String>,
    /// When it finished (completed or failed); null while unfinished.
    #[oai(nullable)]
    pub completed_at: Option<String>,
    #[oai(nullable)]
    pub items_processed: Option<u64>,
    #[oai(nullable)]
    pub enqueued_at: Option<String>,
    #[oai(nullable)]
    pub duration_ms: Option<i64>,
    /// The failure message of a failed execution.
    #[oai(nullable)]
    pub error: Option<String>,
    /// The command's exit code (0–255), when its finish event carried one.
    #[oai(nullable)]
    pub exit_code: Option<u8>,
}

#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct Freshness {
    /// The last stream sequence reflected in this answer.
    pub applied_sequence: u64,
    /// When JetStream stored that event (its publish time). Both fields come from the
    /// stream, so replicas that applied the same sequence give the same answer.
    #[oai(nullable)]
    pub last_event_at: Option<String>,
}

#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct JobStatsData {
    pub job_name: String,
    /// `running` while any execution is processing, else `idle`.
    pub status: String,
    pub queue: QueueStats,
    pub performance: PerformanceStats,
    pub schedule: ScheduleStats,
    /// Newest first by start time (enqueue time for those not started).
    pub recent_executions: Vec<RecentExecution>,
    pub generated_at: String,
    pub freshness: Freshness,
    pub health: HealthStats,
    /// The share of the last 24 hours, 7 and 30 days the job spent outside `stuck`,
    /// `missed` and `failing`, from its announced health changes (time in `unknown`, before
    /// the first change, or silenced counts on neither side).
    pub uptime: UptimeStats,
    /// Present when `?window=` is given.
    #[oai(skip_serializing_if_is_none)]
    pub window: Option<WindowStats>,
}

#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase", example)]
pub struct JobStatsEnvelope {
    pub success: bool,
    pub message: String,
    pub data: JobStatsData,
    pub timestamp: String,
}

impl poem_openapi::types::Example for JobStatsEnvelope {
    /// The API document's example with this service's additions, `?window=24h&recent=1`.
    fn example() -> Self {
        let at = |text: &str| Some(text.to_owned());
        let percentiles = |p50, p90, p95, p99| PercentileStats {
            p50_ms: Some(p50),
            p90_ms: Some(p90),
            p95_ms: Some(p95),
            p99_ms: Some(p99),
        };
        JobStatsEnvelope {
            success: true,
            message: SUCCESS_MESSAGE.into(),
            data: JobStatsData {
                job_name: "tokenExpiry".into(),
                status: "idle".into(),
                queue: QueueStats {
                    pending: 0,
                    processing: 0,
                    failed: 2,
                    completed: 1250,
                },
                performance: PerformanceStats {
                    average_execution_time: at("45s"),
                    last_execution_time: at("38s"),
                    success_rate: at("99.8%"),
                    average_execution_time_ms: Some(45_112),
                    last_execution_time_ms: Some(38_000),
                    success_rate_percent: Some(99.8),
                    percentiles: percentiles(41_980, 57_310, 64_870, 118_400),
                    queue_wait: QueueWaitStats {
                        average_ms: Some(212),
                        p95_ms: Some(640),
                    },
                    items_processed: ItemsProcessedStats {
                        total: 171_880,
                        average_per_run: Some(137.3),
                    },
                },
                schedule: ScheduleStats {
                    cron: at("0 */6 * * *"),
                    timezone: "UTC".into(),
                    next_run: at("2025-07-10T18:00:00.000Z"),
                    last_run: at("2025-07-10T12:00:00.000Z"),
                    expected_at: at("2025-07-10T12:00:00.000Z"),
                    grace_ms: Some(2_160_000),
                    max_runtime_ms: 3_600_000,
                    last_outcome: at("completed"),
                    labels: [("team".to_owned(), "identity".to_owned())].into(),
                    failure_threshold: 1,
                    recovery_threshold: 1,
                },
                recent_executions: vec![RecentExecution {
                    id: "exec-001".into(),
                    status: "completed".into(),
                    started_at: at("2025-07-10T12:00:00.000Z"),
                    completed_at: at("2025-07-10T12:00:38.000Z"),
                    items_processed: Some(150),
                    enqueued_at: at("2025-07-10T11:59:59.790Z"),
                    duration_ms: Some(38_000),
                    error: None,
                    exit_code: Some(0),
                }],
                generated_at: "2025-07-10T14:50:00.000Z".into(),
                freshness: Freshness {
                    applied_sequence: 48_213,
                    last_event_at: at("2025-07-10T14:49:58.112Z"),
                },
                health: HealthStats {
                    summary: HealthSummary {
                        state: "healthy".into(),
                        as_of: "2025-07-10T14:50:00.000Z".into(),
                        since: at("2025-06-30T06:00:41.000Z"),
                        consecutive_failures: 0,
                        missed_runs: MissedRuns {
                            last_24h: 0,
                            last_7d: 0,
                        },
                        silenced_until: None,
                        silence_reason: None,
                        silenced_by: None,
                    },
                    stuck_execution_ids: Vec::new(),
                    reason: "The last finished execution completed (at 2025-07-10T14:40:00.000Z) \
                             and no run is missed or stuck."
                        .into(),
                },
                uptime: UptimeStats {
                    last24h: Some("100.0%".into()),
                    last7d: Some("99.4%".into()),
                    last30d: Some("99.8%".into()),
                    last24h_percent: Some(100.0),
                    last7d_percent: Some(99.4),
                    last30d_percent: Some(99.8),
                },
                window: Some(WindowStats {
                    name: "24h".into(),
                    from: "2025-07-09T14:50:00.000Z".into(),
                    to: "2025-07-10T14:50:00.000Z".into(),
                    granularity: "minute".into(),
                    completed: 4,
                    failed: 0,
                    success_rate: at("100.0%"),
                    success_rate_percent: Some(100.0),
                    average_execution_time_ms: Some(40_250),
                    percentiles: percentiles(40_000, 42_000, 42_000, 42_000),
                }),
            },
            timestamp: "2025-07-10T14:50:00.000Z".into(),
        }
    }
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "stats_bad_request")]
pub enum StatsResponse {
    /// Job statistics, with a weak `ETag` that changes whenever the job's read model does.
    #[oai(status = 200)]
    Ok(StatsJson, #[oai(header = "ETag")] String),
    /// Not modified: `If-None-Match` names the current `ETag` (the job's read model has not
    /// changed since that answer); no body.
    #[oai(status = 304)]
    NotModified(#[oai(header = "ETag")] String),
    /// INVALID_TENANT_ID, INVALID_JOB_NAME or INVALID_PARAMETER.
    #[oai(status = 400)]
    BadRequest(Json<ErrorEnvelope>),
    /// UNAUTHORIZED: token missing, malformed, expired, not yet valid, wrongly signed, from
    /// another issuer, audience or realm.
    #[oai(status = 401)]
    Unauthorized(
        Json<ErrorEnvelope>,
        #[oai(header = "WWW-Authenticate")] String,
    ),
    /// FORBIDDEN: no admin role, or a system_admin of another tenant.
    #[oai(status = 403)]
    Forbidden(Json<ErrorEnvelope>),
    /// JOB_NOT_FOUND: no event was ever seen for this job in this tenant.
    #[oai(status = 404)]
    NotFound(Json<ErrorEnvelope>),
    /// TENANT_NOT_SERVED: this replica does not serve the tenant (`JOBSTATS_TENANTS`).
    #[oai(status = 421)]
    NotServed(Json<ErrorEnvelope>),
    /// INTERNAL_ERROR.
    #[oai(status = 500)]
    Internal(Json<ErrorEnvelope>),
    /// METHOD_NOT_ALLOWED: only GET and HEAD read statistics.
    #[oai(status = 405)]
    MethodNotAllowed(Json<ErrorEnvelope>, #[oai(header = "Allow")] String),
    /// PROJECTION_BEHIND: `minSequence` was not applied within `waitMs`; retry after
    /// `Retry-After` seconds.
    #[oai(status = 503)]
    ProjectionBehind(Json<ErrorEnvelope>, #[oai(header = "Retry-After")] String),
}

impl From<ApiError> for StatsResponse {
    fn from(error: ApiError) -> Self {
        let body = Json(error.envelope());
        match error {
            ApiError::InvalidTenant(_)
            | ApiError::InvalidJobName(_)
            | ApiError::InvalidParameter(_) => StatsResponse::BadRequest(body),
            ApiError::Unauthorized(_) => StatsResponse::Unauthorized(body, "Bearer".into()),
            ApiError::Forbidden(_) => StatsResponse::Forbidden(body),
            ApiError::JobNotFound | ApiError::ExecutionNotFound | ApiError::RouteNotFound => {
                StatsResponse::NotFound(body)
            }
            ApiError::MethodNotAllowed => StatsResponse::MethodNotAllowed(body, "GET, HEAD".into()),
            ApiError::ProjectionBehind { .. } => {
                StatsResponse::ProjectionBehind(body, super::errors::RETRY_AFTER_SECONDS.into())
            }
            ApiError::TenantNotServed(_) => StatsResponse::NotServed(body),
            // The ingestion endpoints' errors; none arises answering stats.
            ApiError::KeyNotFound
            | ApiError::PayloadTooLarge(_)
            | ApiError::InvalidEvents(_)
            | ApiError::RateLimited(_)
            | ApiError::StreamUnavailable { .. }
            | ApiError::Internal(_) => StatsResponse::Internal(body),
        }
    }
}

fn stats_bad_request(error: poem::Error) -> StatsResponse {
    extraction_error(error).into()
}

/// Turns poem-openapi's extraction errors into the API's, by parameter.
pub fn extraction_error(error: poem::Error) -> ApiError {
    if error.status() == poem::http::StatusCode::UNAUTHORIZED {
        return ApiError::Unauthorized(
            "Authentication required: send an Authorization: Bearer <token> header".into(),
        );
    }
    if let Some(param) = error.downcast_ref::<poem_openapi::error::ParseParamError>() {
        return match param.name {
            "x-tenantid" => {
                ApiError::InvalidTenant("x-tenantid header is required and must be a UUID".into())
            }
            "jobName" => ApiError::InvalidJobName(format!("Invalid job name: {}", param.reason)),
            // poem-openapi's reason names its own types (`optional_integer(uint32)`); say it
            // in the user's words.
            "recent" => super::query::invalid(
                "recent",
                &format!("must be an integer from 1 to {MAX_RECENT}"),
            ),
            "waitMs" => super::query::invalid(
                "waitMs",
                &format!("must be an integer from 0 to {MAX_WAIT_MS}"),
            ),
            "minSequence" => super::query::invalid("minSequence", "must be a non-negative integer"),
            "window" => super::query::invalid(
                "window",
                &format!("must be one of {}", Window::NAMES.join(", ")),
            ),
            name => super::query::invalid(name, "has an invalid value"),
        };
    }
    if error.is::<poem_openapi::error::ParsePathError>() {
        return ApiError::InvalidJobName("Invalid job name".into());
    }
    ApiError::InvalidParameter("Invalid request".into())
}

/// The extractor reads the first `x-tenantid`; a second one is ambiguous, not ignorable.
pub fn refuse_repeated_tenant(request: &Request) -> Result<(), ApiError> {
    if request
        .headers()
        .get_all("x-tenantid")
        .iter()
        .nth(1)
        .is_some()
    {
        return Err(ApiError::InvalidTenant(
            "x-tenantid header must appear once".into(),
        ));
    }
    Ok(())
}

/// The `window` parameter as documented (the handler reads it strictly from the query).
#[derive(Debug, Clone, Copy, poem_openapi::Enum)]
pub enum WindowParam {
    #[oai(rename = "1h")]
    Hour,
    #[oai(rename = "24h")]
    Day,
    #[oai(rename = "7d")]
    Week,
    #[oai(rename = "30d")]
    Month,
}

pub struct StatsApi;

#[OpenApi]
impl StatsApi {
    /// Get job statistics: queue depth, processing times, schedule and recent executions of
    /// one job, from the read model.
    #[oai(
        path = "/admin/jobs/:jobName/stats",
        method = "get",
        operation_id = "getJobStats"
    )]
    // One argument per documented parameter: poem-openapi builds the document from them.
    #[allow(clippy::too_many_arguments)]
    async fn get_job_stats(
        &self,
        request: &Request,
        /// The tenant: a hyphenated UUID.
        #[oai(name = "x-tenantid")]
        tenant: Header<TenantParam>,
        /// The job's name: 1–128 chars of A-Z a-z 0-9 . _ : -, starting with a letter or digit.
        #[oai(name = "jobName")]
        job_name: Path<JobNameParam>,
        /// The authentication realm; the token must come from it.
        #[oai(name = "realmname")]
        _realm: Header<Option<String>>,
        /// How many recent executions to return (1–100, default 10). Read strictly from the
        /// query string (a repeat is a 400), like every other parameter.
        #[oai(
            name = "recent",
            validator(minimum(value = "1"), maximum(value = "100"))
        )]
        _recent: Query<Option<u32>>,
        /// Read-your-writes: answer only once the projection has applied this stream
        /// sequence (what `jobstats publish` prints as `sequence=N`).
        #[oai(name = "minSequence")]
        _min_sequence: Query<Option<u64>>,
        /// How long to wait for `minSequence` (0–5000 ms, default 0) before answering 503
        /// PROJECTION_BEHIND.
        #[oai(
            name = "waitMs",
            validator(minimum(value = "0"), maximum(value = "5000"))
        )]
        _wait_ms: Query<Option<u32>>,
        /// A trailing window (`1h`, `24h`, `7d`, `30d`): adds `data.window`, the executions
        /// that finished in it, from per-minute (1h, 24h) or per-hour (7d, 30d) rollups.
        #[oai(name = "window")]
        _window: Query<Option<WindowParam>>,
        /// An `ETag` of an earlier answer (or several, comma-separated, or `*`): 304 while
        /// the job's read model is unchanged.
        #[oai(name = "If-None-Match")]
        _if_none_match: Header<Option<String>>,
        auth: BearerAuth,
    ) -> StatsResponse {
        let Some(state) = request.data::<Arc<AppState>>() else {
            return ApiError::Internal("application state missing".into()).into();
        };
        match answer(state, request, tenant.0 .0, &job_name.0 .0, &auth.0).await {
            Ok(Answer::Body(body, etag)) => StatsResponse::Ok(StatsJson(body), etag),
            Ok(Answer::NotModified(etag)) => StatsResponse::NotModified(etag),
            Err(error) => error.into(),
        }
    }
}

/// A stats answer: the body and its `ETag`, or only the tag when the client has it.
enum Answer {
    Body(Vec<u8>, String),
    NotModified(String),
}

async fn answer(
    state: &AppState,
    request: &Request,
    tenant: TenantId,
    job: &JobName,
    principal: &Principal,
) -> Result<Answer, ApiError> {
    refuse_repeated_tenant(request)?;
    let params = super::query::QueryParams::of(request)?;
    let recent = params.integer("recent", 1, MAX_RECENT, DEFAULT_RECENT)?;
    let min_sequence = params.unsigned("minSequence")?;
    let wait_ms = params.integer("waitMs", 0, MAX_WAIT_MS, 0)?;
    let window = params
        .get("window")
        .map(|name| {
            Window::parse(name).ok_or_else(|| {
                super::query::invalid(
                    "window",
                    &format!("must be one of {}", Window::NAMES.join(", ")),
                )
            })
        })
        .transpose()?;
    state.check_served(&tenant)?;
    principal.authorize(&tenant).map_err(ApiError::Forbidden)?;
    if let Some(wanted) = min_sequence {
        applied_by(state, wanted, wait_ms).await?;
    }
    let now = Utc::now();
    let (snapshot, judgement, windowed) = read_job(state, tenant, job, recent, window, now)?;
    // What the answer is made of: the job's read model, the projection that built it, and
    // the parameters that shape it (for a window, the buckets it covers).
    let etag = match &windowed {
        None => format!(
            "W/\"{}-{}-{recent}\"",
            crate::store::PROJECTION_VERSION,
            snapshot.job_sequence
        ),
        Some((window, range, _)) => format!(
            "W/\"{}-{}-{recent}-{}-{}\"",
            crate::store::PROJECTION_VERSION,
            snapshot.job_sequence,
            window.name(),
            range.from
        ),
    };
    if if_none_match(request, &etag) {
        return Ok(Answer::NotModified(etag));
    }
    let window_stats = windowed
        .as_ref()
        .map(|(window, range, merged)| window_stats(*window, *range, judgement.as_of(), &merged.1));
    let body = state.bodies.body(&tenant, job, recent, snapshot.clone());
    let uptime = state
        .flips
        .uptime(
            &tenant.to_string(),
            job.as_str(),
            judgement.as_of(),
            &crate::projection::silenced_spans(&snapshot.stats.silence_marks),
        )
        .into();
    Ok(Answer::Body(
        body.at(
            now,
            judgement,
            state.default_max_runtime_ms,
            &uptime,
            window_stats.as_ref(),
        ),
        etag,
    ))
}

/// A merged window: which one, the buckets it covers, and their totals with the job version
/// they were read at.
type Windowed = (Window, BucketRange, std::sync::Arc<(u64, RollupBucket)>);

/// The job's snapshot, the instant it is judged at, and the window when one is asked for, all
/// of one version of the job: when the job changed between the snapshot and the window read,
/// both are read again.
fn read_job(
    state: &AppState,
    tenant: TenantId,
    job: &JobName,
    recent: u32,
    window: Option<Window>,
    now: DateTime<Utc>,
) -> Result<(std::sync::Arc<JobSnapshot>, Judgement, Option<Windowed>), ApiError> {
    let readers = state.readers.get();
    let mut snapshot = readers
        .cached_job_snapshot(&tenant, job, recent)?
        .ok_or(ApiError::JobNotFound)?;
    let mut judgement = self::judgement(state, &snapshot, now);
    let Some(window) = window else {
        return Ok((snapshot, judgement, None));
    };
    for _ in 0..3 {
        let range = window.buckets(judgement.as_of());
        if let Some(merged) = readers.window(snapshot.job_id, range, snapshot.job_sequence)? {
            return Ok((snapshot, judgement, Some((window, range, merged))));
        }
        snapshot = std::sync::Arc::new(
            readers
                .job_snapshot(&tenant, job, recent)?
                .ok_or(ApiError::JobNotFound)?,
        );
        judgement = self::judgement(state, &snapshot, now);
    }
    Err(ApiError::Internal(
        "the job kept changing under the window read".into(),
    ))
}

/// Most a read-your-writes request waits (`waitMs`).
const MAX_WAIT_MS: u32 = 5_000;

/// Waits until the projection has applied `wanted`, at most `wait_ms`: on the projector's
/// applied-sequence watch, woken by each commit (no polling). A projector that stopped ends
/// the wait too.
async fn applied_by(state: &AppState, wanted: u64, wait_ms: u32) -> Result<(), ApiError> {
    let mut applied = state.applied.clone();
    if *applied.borrow() >= wanted {
        return Ok(());
    }
    // Each waiter holds a connection's stream and its request (~27 KB over HTTP/2): past the
    // cap the answer is at once what it would be after the wait, so memory stays bounded.
    let Ok(_waiting) = state.waiters.try_acquire() else {
        return Err(ApiError::ProjectionBehind {
            applied: *state.applied.borrow(),
            wanted,
        });
    };
    let waiting = &state.metrics.read_your_writes_waiting;
    waiting.inc();
    let _counted = decrement_on_drop(waiting);
    let wait = std::time::Duration::from_millis(wait_ms.into());
    let reached = tokio::time::timeout(wait, applied.wait_for(|sequence| *sequence >= wanted))
        .await
        .is_ok_and(|waited| waited.is_ok());
    if reached {
        return Ok(());
    }
    Err(ApiError::ProjectionBehind {
        applied: *state.applied.borrow(),
        wanted,
    })
}

/// Decrements `gauge` when dropped (a waiter whose client went away is dropped mid-wait).
fn decrement_on_drop(gauge: &prometheus_client::metrics::gauge::Gauge) -> impl Drop + '_ {
    struct Dec<'a>(&'a prometheus_client::metrics::gauge::Gauge);
    impl Drop for Dec<'_> {
        fn drop(&mut self) {
            self.0.dec();
        }
    }
    Dec(gauge)
}

/// Whether the request's `If-None-Match` names `etag` (weak comparison, RFC 9110 §13.1.2).
pub fn if_none_match(request: &Request, etag: &str) -> bool {
    let opaque = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
    let ours = opaque(etag);
    request
        .headers()
        .get_all(poem::http::header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|tag| tag.trim() == "*" || opaque(tag) == ours)
}

/// The instant health can be judged at for an answer from `snapshot` (CONTRACT §5).
pub fn judgement(state: &AppState, snapshot: &JobSnapshot, now: DateTime<Utc>) -> Judgement {
    judgement_given(state, || snapshot.freshness.last_published_at_ms, now)
}

/// [`judgement`] with the read model's last publish time from `last_published_at_ms`, asked
/// only when the projector has not reported one (a read-only copy, or nothing applied yet).
pub fn judgement_given(
    state: &AppState,
    last_published_at_ms: impl FnOnce() -> Option<i64>,
    now: DateTime<Utc>,
) -> Judgement {
    let mut position = state.status.position();
    if state.nats.is_none() {
        // A read-only copy is judged as of its last event.
        position = Position {
            caught_up: false,
            unreachable_since: None,
            last_published_at: last_published_at_ms(),
        };
    } else if position.last_published_at.is_none() {
        position.last_published_at = last_published_at_ms();
    }
    position.judgement(now.timestamp_millis())
}

/// The `schedule` object; `next_run` is the first fire after the request time.
pub fn schedule_stats(
    snapshot: &JobSnapshot,
    next_run: Option<String>,
    health: &Health,
) -> ScheduleStats {
    let stats = &snapshot.stats;
    ScheduleStats {
        cron: stats.schedule.as_ref().and_then(|s| s.cron.clone()),
        timezone: stats
            .schedule
            .as_ref()
            .map_or(crate::schedule::DEFAULT_TIMEZONE, |s| s.timezone_name())
            .to_owned(),
        next_run,
        last_run: stats.last_started_at.map(rfc3339_millis),
        expected_at: health.expected_at.map(rfc3339_millis),
        grace_ms: health.grace_ms,
        max_runtime_ms: health.max_runtime_ms,
        last_outcome: health
            .last_failed
            .map(|failed| if failed { "failed" } else { "completed" }.to_owned()),
        labels: stats
            .schedule
            .as_ref()
            .map(|s| s.labels.clone())
            .unwrap_or_default(),
        failure_threshold: stats.thresholds().0,
        recovery_threshold: stats.thresholds().1,
    }
}

pub fn health_summary(health: &Health) -> HealthSummary {
    HealthSummary {
        state: health.state.as_str().to_owned(),
        as_of: rfc3339_millis(health.as_of),
        since: health.since.map(rfc3339_millis),
        consecutive_failures: health.consecutive_failures,
        missed_runs: MissedRuns {
            last_24h: health.missed_last_24h,
            last_7d: health.missed_last_7d,
        },
        silenced_until: health.silence.as_ref().map(|s| rfc3339_millis(s.until)),
        silence_reason: health.silence.as_ref().and_then(|s| s.reason.clone()),
        silenced_by: health.silence.as_ref().and_then(|s| s.by.clone()),
    }
}

pub fn health_stats(health: &Health, stats: &crate::projection::JobStats) -> HealthStats {
    HealthStats {
        summary: health_summary(health),
        stuck_execution_ids: health.stuck_execution_ids.clone(),
        reason: crate::notify::reason(health, stats),
    }
}

/// Builds the response body from a snapshot (pure: the clock and the judgement are
/// arguments).
pub fn render(
    job: &JobName,
    snapshot: &JobSnapshot,
    now: DateTime<Utc>,
    health: &Health,
    uptime: UptimeStats,
    window: Option<WindowStats>,
) -> JobStatsData {
    let stats = &snapshot.stats;
    let average = stats.average_duration_ms();
    let last = stats.last_finished.as_ref().and_then(|l| l.duration_ms);
    let success = stats.success_rate_percent();
    let next_run = snapshot
        .cron
        .as_ref()
        .and_then(|c| c.next_after(now))
        .map(|t| rfc3339_millis(t.timestamp_millis()));
    JobStatsData {
        job_name: job.as_str().to_owned(),
        status: stats.status().to_owned(),
        queue: QueueStats {
            pending: stats.pending,
            processing: stats.processing,
            failed: stats.failed,
            completed: stats.completed,
        },
        performance: PerformanceStats {
            average_execution_time: average.map(human_duration),
            last_execution_time: last.map(human_duration),
            success_rate: success.map(human_percent),
            average_execution_time_ms: average,
            last_execution_time_ms: last,
            success_rate_percent: success.map(percent_one_decimal),
            percentiles: stats.percentiles().into(),
            queue_wait: QueueWaitStats {
                average_ms: stats.queue_wait.average_ms(),
                p95_ms: stats.queue_wait.sketch.quantile(0.95),
            },
            items_processed: ItemsProcessedStats {
                total: i64::try_from(stats.items_total.max(0)).unwrap_or(i64::MAX),
                average_per_run: stats
                    .average_items_per_run()
                    .map(|a| (a * 10.0).round() / 10.0),
            },
        },
        schedule: schedule_stats(snapshot, next_run, health),
        recent_executions: snapshot.recent.iter().map(recent_execution).collect(),
        generated_at: rfc3339_millis(now.timestamp_millis()),
        freshness: Freshness {
            applied_sequence: snapshot.freshness.last_sequence,
            last_event_at: snapshot.freshness.last_published_at_ms.map(rfc3339_millis),
        },
        health: health_stats(health, &snapshot.stats),
        uptime,
        window,
    }
}

/// The `window` object of a merged bucket range at `as_of`.
pub fn window_stats(
    window: Window,
    range: BucketRange,
    as_of: i64,
    merged: &RollupBucket,
) -> WindowStats {
    let success = merged.success_rate_percent();
    WindowStats {
        name: window.name().to_owned(),
        from: rfc3339_millis(range.from),
        to: rfc3339_millis(as_of),
        granularity: range.granularity.as_str().to_owned(),
        completed: merged.completed,
        failed: merged.failed,
        success_rate: success.map(human_percent),
        success_rate_percent: success.map(percent_one_decimal),
        average_execution_time_ms: merged.average_duration_ms(),
        percentiles: merged.percentiles().into(),
    }
}

pub fn recent_execution(summary: &ExecutionSummary) -> RecentExecution {
    let row = &summary.row;
    RecentExecution {
        id: summary.execution_id.clone(),
        status: row.state.as_str().to_owned(),
        started_at: row.started_at.map(rfc3339_millis),
        completed_at: row.finished_at.map(rfc3339_millis),
        items_processed: row.items_processed,
        enqueued_at: row.enqueued_at.map(rfc3339_millis),
        duration_ms: row.duration_ms(),
        error: row.error.clone(),
        exit_code: row.exit_code,
    }
}
