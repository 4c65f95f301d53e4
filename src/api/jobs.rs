//! `GET /api/v1/admin/jobs` (the tenant's jobs with their health, filtered, sorted and paged)
//! and `GET /api/v1/admin/jobs/{jobName}/executions` (one job's execution history), CONTRACT §5,
//! and `GET /api/v1/admin/jobs/{jobName}/executions/{executionId}` (one execution with its
//! output, §10).
//!
//! Same check order as the stats endpoint: authentication → `x-tenantid` → job name and
//! parameters → authorization → lookup. Pages are keyset pages with opaque cursors bound to
//! the query that made them.

use std::cmp::Ordering;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use chrono::Utc;
use poem::Request;
use poem_openapi::{
    param::{Header, Path, Query},
    payload::Json,
    ApiResponse, Object, OpenApi,
};

use super::errors::{ApiError, ErrorEnvelope};
use super::export::{ExecutionsAnswer, ExportFormat};
use super::params::{JobNameParam, TenantParam};
use super::query::{fingerprint, invalid, Cursor, QueryParams, StableHasher};
use super::stats::{
    extraction_error, health_stats, if_none_match, judgement, judgement_given, recent_execution,
    refuse_repeated_tenant, BearerAuth, HealthStats, HealthSummary, QueueStats, RecentExecution,
    UptimeStats,
};
use super::{rfc3339_millis, AppState};
use crate::cache::{byte_bounded, ByteBounded};
use crate::events::{JobName, TenantId};
use crate::projection::format::{human_percent, percent_one_decimal};
use crate::projection::health::{Health, HealthState, Judgement};
use crate::projection::rollup::Granularity;
use crate::projection::ExecutionState;
use crate::store::{ExecutionSummary, ExecutionsQuery, JobSnapshot, JobStates};

pub const JOBS_MESSAGE: &str = "Jobs retrieved successfully";
pub const EXECUTIONS_MESSAGE: &str = "Executions retrieved successfully";
pub const EXECUTION_MESSAGE: &str = "Execution retrieved successfully";
const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 500;

/// One job in the list.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct JobListEntry {
    pub job_name: String,
    /// `running` while any execution is processing, else `idle`.
    pub status: String,
    /// As in the stats answer: the state and its figures, the stuck executions and why.
    pub health: HealthStats,
    /// As in the stats answer.
    pub uptime: UptimeStats,
    pub queue: QueueStats,
    /// completed / (completed + failed), one decimal, rounded down; null before any finished.
    #[oai(nullable)]
    pub success_rate: Option<String>,
    #[oai(nullable)]
    pub success_rate_percent: Option<f64>,
    #[oai(nullable)]
    pub average_execution_time_ms: Option<i64>,
    /// Start time of the most recent execution.
    #[oai(nullable)]
    pub last_run: Option<String>,
    /// `completed` or `failed`, of the last finished execution.
    #[oai(nullable)]
    pub last_outcome: Option<String>,
    /// 95th percentile of completed executions' run time (as `performance.percentiles`).
    #[oai(nullable)]
    pub p95_ms: Option<i64>,
    /// The schedule's next fire after the request time.
    #[oai(nullable)]
    pub next_run: Option<String>,
}

#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct JobListData {
    pub jobs: Vec<JobListEntry>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
    /// Jobs matching the filters, over all pages.
    pub total: u64,
}

#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase", example)]
pub struct JobListEnvelope {
    pub success: bool,
    pub message: String,
    pub data: JobListData,
    pub timestamp: String,
}

#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct ExecutionsData {
    /// Newest first by start time (enqueue time while not started).
    pub executions: Vec<RecentExecution>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase", example)]
pub struct ExecutionsEnvelope {
    pub success: bool,
    pub message: String,
    pub data: ExecutionsData,
    pub timestamp: String,
}

/// One execution as the list shows it, with its output.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct ExecutionDetail {
    #[oai(flatten)]
    pub execution: RecentExecution,
    /// The tail of the run's output (at most 16 KiB), when its finish event carried one.
    #[oai(nullable)]
    pub output: Option<String>,
}

#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase", example)]
pub struct ExecutionEnvelope {
    pub success: bool,
    pub message: String,
    pub data: ExecutionDetail,
    pub timestamp: String,
}

impl poem_openapi::types::Example for ExecutionEnvelope {
    /// A failed run of `jobstats run`.
    fn example() -> Self {
        ExecutionEnvelope {
            success: true,
            message: EXECUTION_MESSAGE.into(),
            data: ExecutionDetail {
                execution: RecentExecution {
                    id: "exec-20261202-1320".into(),
                    status: "failed".into(),
                    started_at: Some("2026-12-02T13:20:00.000Z".into()),
                    completed_at: Some("2026-12-02T13:20:31.950Z".into()),
                    items_processed: None,
                    enqueued_at: None,
                    duration_ms: Some(31_950),
                    error: Some("exit status 3".into()),
                    exit_code: Some(3),
                },
                output: Some("loading batch 17…\nerror: upstream timed out after 30s\n".into()),
            },
            timestamp: "2026-12-02T14:05:00.000Z".into(),
        }
    }
}

impl poem_openapi::types::Example for JobListEnvelope {
    /// `?health=missed,failing&sort=health` on the demo's data.
    fn example() -> Self {
        let entry = |name: &str, state: &str, since: &str, failures: i64, missed: u32| {
            JobListEntry {
                job_name: name.into(),
                status: "idle".into(),
                health: HealthStats {
                    summary: HealthSummary {
                        state: state.into(),
                        as_of: "2026-12-02T14:05:00.000Z".into(),
                        since: Some(since.into()),
                        consecutive_failures: failures,
                        missed_runs: super::stats::MissedRuns {
                            last_24h: missed,
                            last_7d: missed,
                        },
                        silenced_until: None,
                        silence_reason: None,
                        silenced_by: None,
                    },
                    stuck_execution_ids: Vec::new(),
                    reason: if state == "missed" {
                        format!(
                            "No run has started since the run due at {since} ({missed} runs \
                             missed in the last 24 hours)."
                        )
                    } else {
                        format!(
                            "The last {failures} finished executions failed (the latest at {since})."
                        )
                    },
                },
                uptime: crate::notify::history::UptimeFigures {
                    last24h: Some(87.5),
                    last7d: Some(98.2),
                    last30d: Some(99.6),
                }
                .into(),
                queue: QueueStats {
                    pending: 0,
                    processing: 0,
                    failed: 12 + failures,
                    completed: 480,
                },
                success_rate: Some("97.0%".into()),
                success_rate_percent: Some(97.0),
                average_execution_time_ms: Some(1_850),
                last_run: Some("2026-12-02T13:40:02.114Z".into()),
                last_outcome: Some(if failures > 0 { "failed" } else { "completed" }.into()),
                p95_ms: Some(4_200),
                next_run: Some("2026-12-02T14:10:00.000Z".into()),
            }
        };
        JobListEnvelope {
            success: true,
            message: JOBS_MESSAGE.into(),
            data: JobListData {
                jobs: vec![
                    entry("cache.warmup", "missed", "2026-12-02T13:51:00.000Z", 0, 2),
                    entry(
                        "payments.reconcile",
                        "failing",
                        "2026-12-02T12:20:04.530Z",
                        3,
                        0,
                    ),
                ],
                next_cursor: None,
                total: 2,
            },
            timestamp: "2026-12-02T14:05:00.000Z".into(),
        }
    }
}

impl poem_openapi::types::Example for ExecutionsEnvelope {
    /// `?status=failed&limit=2`, with more pages to come.
    fn example() -> Self {
        let failed = |id: &str, started: &str, finished: &str, duration_ms: i64| RecentExecution {
            id: id.into(),
            status: "failed".into(),
            started_at: Some(started.into()),
            completed_at: Some(finished.into()),
            items_processed: None,
            enqueued_at: Some(started.into()),
            duration_ms: Some(duration_ms),
            error: Some("upstream timed out after 30s".into()),
            exit_code: Some(1),
        };
        ExecutionsEnvelope {
            success: true,
            message: EXECUTIONS_MESSAGE.into(),
            data: ExecutionsData {
                executions: vec![
                    failed(
                        "exec-20261202-1340",
                        "2026-12-02T13:40:02.114Z",
                        "2026-12-02T13:40:32.120Z",
                        30_006,
                    ),
                    failed(
                        "exec-20261202-1320",
                        "2026-12-02T13:20:01.950Z",
                        "2026-12-02T13:20:31.990Z",
                        30_040,
                    ),
                ],
                next_cursor: Some(
                    "eyJrIjoxNzY0NjgyODAxOTUwLCJpZCI6ImV4ZWMtMjAyNjEyMDItMTMyMCJ9".into(),
                ),
            },
            timestamp: "2026-12-02T14:05:00.000Z".into(),
        }
    }
}

macro_rules! envelope_response {
    ($name:ident, $payload:ty, $ok_doc:literal, $handler:ident) => {
        #[derive(ApiResponse)]
        #[oai(bad_request_handler = $handler)]
        pub enum $name {
            #[doc = $ok_doc]
            #[doc = ""]
            #[doc = "With a weak `ETag` that changes whenever the data behind the answer does."]
            #[oai(status = 200)]
            Ok(Json<$payload>, #[oai(header = "ETag")] String),
            /// Not modified: `If-None-Match` names the current `ETag`; no body.
            #[oai(status = 304)]
            NotModified(#[oai(header = "ETag")] String),
            /// INVALID_TENANT_ID, INVALID_JOB_NAME or INVALID_PARAMETER (the message names
            /// the parameter).
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
        }

        impl From<ApiError> for $name {
            fn from(error: ApiError) -> Self {
                let body = Json(error.envelope());
                match error.status().as_u16() {
                    400 => $name::BadRequest(body),
                    401 => $name::Unauthorized(body, "Bearer".into()),
                    403 => $name::Forbidden(body),
                    404 => $name::NotFound(body),
                    421 => $name::NotServed(body),
                    _ => $name::Internal(body),
                }
            }
        }

        fn $handler(error: poem::Error) -> $name {
            extraction_error(error).into()
        }
    };
}

envelope_response!(
    JobListResponse,
    JobListEnvelope,
    "The tenant's jobs.",
    job_list_bad_request
);
envelope_response!(
    SeriesResponse,
    SeriesEnvelope,
    "The job's finished executions per bucket of the window.",
    series_bad_request
);
envelope_response!(
    FlipsResponse,
    super::flips::FlipsEnvelope,
    "One page of the job's health changes, newest first.",
    flips_bad_request
);
envelope_response!(
    ExecutionResponse,
    ExecutionEnvelope,
    "The execution, with its output.",
    execution_bad_request
);
envelope_response!(
    ExecutionsResponse,
    ExecutionsEnvelope,
    "One page of the job's executions.",
    executions_bad_request
);

pub struct JobsApi;

#[OpenApi]
impl JobsApi {
    /// List the tenant's jobs with their health: filter by health state and name prefix,
    /// sort, and page with a cursor.
    #[oai(path = "/admin/jobs", method = "get", operation_id = "listJobs")]
    #[allow(clippy::too_many_arguments)]
    async fn list_jobs(
        &self,
        request: &Request,
        /// The tenant: a hyphenated UUID.
        #[oai(name = "x-tenantid")]
        tenant: Header<TenantParam>,
        /// The authentication realm; the token must come from it.
        #[oai(name = "realmname")]
        _realm: Header<Option<String>>,
        /// Comma-separated health states to keep: unknown, stuck, missed, failing, healthy, new.
        #[oai(name = "health")]
        _health: Query<Option<String>>,
        /// Job-name prefix.
        #[oai(name = "q")]
        _q: Query<Option<String>>,
        /// `name` (default), `lastRun`, `successRate`, `health` (unknown, stuck, missed,
        /// failing, healthy, new: worst first when ascending), `uptime24h`, `uptime7d` or
        /// `uptime30d`. Jobs without a value come last; ties by name.
        #[oai(name = "sort")]
        _sort: Query<Option<String>>,
        /// `asc` (default) or `desc`.
        #[oai(name = "order")]
        _order: Query<Option<String>>,
        /// Page size, 1–500 (default 50).
        #[oai(name = "limit")]
        _limit: Query<Option<String>>,
        /// `nextCursor` of the previous page of the same query.
        #[oai(name = "cursor")]
        _cursor: Query<Option<String>>,
        /// An `ETag` of an earlier answer (or several, comma-separated, or `*`): 304 while
        /// the data behind it is unchanged.
        #[oai(name = "If-None-Match")]
        _if_none_match: Header<Option<String>>,
        auth: BearerAuth,
    ) -> JobListResponse {
        let Some(state) = request.data::<Arc<AppState>>() else {
            return ApiError::Internal("application state missing".into()).into();
        };
        match list(state, request, tenant.0 .0, &auth).await {
            Ok((_, etag)) if if_none_match(request, &etag) => JobListResponse::NotModified(etag),
            Ok((body, etag)) => JobListResponse::Ok(Json(body), etag),
            Err(error) => error.into(),
        }
    }

    /// One job's executions, newest first by start time: filter by status and time range,
    /// page with a cursor.
    #[oai(
        path = "/admin/jobs/:jobName/executions",
        method = "get",
        operation_id = "listJobExecutions"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn list_executions(
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
        /// Comma-separated: pending, processing, completed, failed.
        #[oai(name = "status")]
        _status: Query<Option<String>>,
        /// RFC 3339: executions that started (or were enqueued, if not started) at or after.
        #[oai(name = "from")]
        _from: Query<Option<String>>,
        /// RFC 3339: … at or before.
        #[oai(name = "to")]
        _to: Query<Option<String>>,
        /// Page size, 1–500 (default 50).
        #[oai(name = "limit")]
        _limit: Query<Option<String>>,
        /// `nextCursor` of the previous page of the same query.
        #[oai(name = "cursor")]
        _cursor: Query<Option<String>>,
        /// `json` (default): pages. `ndjson` or `csv`: every matching execution in one
        /// streamed answer (no `limit`, no `cursor`), read from one snapshot; CSV has a header
        /// row and RFC 4180 quoting.
        #[oai(name = "format")]
        _format: Query<Option<String>>,
        /// An `ETag` of an earlier answer (or several, comma-separated, or `*`): 304 while
        /// the data behind it is unchanged.
        #[oai(name = "If-None-Match")]
        _if_none_match: Header<Option<String>>,
        auth: BearerAuth,
    ) -> ExecutionsAnswer<ExecutionsResponse> {
        let Some(state) = request.data::<Arc<AppState>>() else {
            return ExecutionsAnswer::Page(
                ApiError::Internal("application state missing".into()).into(),
            );
        };
        let format = QueryParams::of(request).and_then(|params| {
            ExportFormat::parse(params.get("format")).map_err(|reason| invalid("format", &reason))
        });
        let page = match format {
            Ok(Some(format)) => {
                return match export(state, request, tenant.0 .0, job_name.0 .0, &auth, format) {
                    Ok(response) => ExecutionsAnswer::Export(response),
                    Err(error) => ExecutionsAnswer::Page(error.into()),
                }
            }
            Ok(None) => executions(state, request, tenant.0 .0, &job_name.0 .0, &auth),
            Err(error) => Err(error),
        };
        ExecutionsAnswer::Page(match page {
            Ok((_, etag)) if if_none_match(request, &etag) => ExecutionsResponse::NotModified(etag),
            Ok((body, etag)) => ExecutionsResponse::Ok(Json(body), etag),
            Err(error) => error.into(),
        })
    }

    /// One execution of a job, as the executions list shows it, with the tail of its output.
    /// 404 EXECUTION_NOT_FOUND when the job has no execution with this id.
    #[oai(
        path = "/admin/jobs/:jobName/executions/:executionId",
        method = "get",
        operation_id = "getJobExecution"
    )]
    // One argument per documented parameter: poem-openapi builds the document from them.
    #[allow(clippy::too_many_arguments)]
    async fn get_execution(
        &self,
        request: &Request,
        /// The tenant: a hyphenated UUID.
        #[oai(name = "x-tenantid")]
        tenant: Header<TenantParam>,
        /// The job's name.
        #[oai(name = "jobName")]
        job_name: Path<JobNameParam>,
        /// The executionId: 1–128 printable characters.
        #[oai(name = "executionId")]
        execution_id: Path<String>,
        /// The authentication realm; the token must come from it.
        #[oai(name = "realmname")]
        _realm: Header<Option<String>>,
        /// An `ETag` of an earlier answer (or several, comma-separated, or `*`): 304 while
        /// the data behind it is unchanged.
        #[oai(name = "If-None-Match")]
        _if_none_match: Header<Option<String>>,
        auth: BearerAuth,
    ) -> ExecutionResponse {
        let Some(state) = request.data::<Arc<AppState>>() else {
            return ApiError::Internal("application state missing".into()).into();
        };
        match execution(
            state,
            request,
            tenant.0 .0,
            &job_name.0 .0,
            &execution_id.0,
            &auth,
        ) {
            Ok((_, etag)) if if_none_match(request, &etag) => ExecutionResponse::NotModified(etag),
            Ok((body, etag)) => ExecutionResponse::Ok(Json(body), etag),
            Err(error) => error.into(),
        }
    }

    /// One job's health changes (flips), newest first: when each state began, from which,
    /// and why; page with a cursor. The same on every replica, after restarts and rebuilds
    /// (they come from `JOB_HEALTH`, which keeps the last 1,000 per job).
    #[oai(
        path = "/admin/jobs/:jobName/flips",
        method = "get",
        operation_id = "listJobFlips"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn list_flips(
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
        /// RFC 3339: changes whose state began at or after.
        #[oai(name = "from")]
        _from: Query<Option<String>>,
        /// RFC 3339: … at or before.
        #[oai(name = "to")]
        _to: Query<Option<String>>,
        /// Page size, 1–500 (default 50).
        #[oai(name = "limit")]
        _limit: Query<Option<String>>,
        /// `nextCursor` of the previous page of the same query.
        #[oai(name = "cursor")]
        _cursor: Query<Option<String>>,
        /// An `ETag` of an earlier answer: 304 while the data behind it is unchanged.
        #[oai(name = "If-None-Match")]
        _if_none_match: Header<Option<String>>,
        auth: BearerAuth,
    ) -> FlipsResponse {
        let Some(state) = request.data::<Arc<AppState>>() else {
            return ApiError::Internal("application state missing".into()).into();
        };
        match super::flips::flips(state, request, tenant.0 .0, &job_name.0 .0, &auth) {
            Ok((_, etag)) if if_none_match(request, &etag) => FlipsResponse::NotModified(etag),
            Ok((body, etag)) => FlipsResponse::Ok(Json(body), etag),
            Err(error) => error.into(),
        }
    }

    /// One job's finished executions per bucket of a trailing window, for charts: completed
    /// and failed counts and run-time p50/p95 from the rollups (1h: 60 minutes, 24h: 24
    /// hours, 7d: 168 hours, 30d: 30 days; every bucket listed, oldest first).
    #[oai(
        path = "/admin/jobs/:jobName/series",
        method = "get",
        operation_id = "getJobSeries"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn get_job_series(
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
        /// `1h`, `24h` (default), `7d` or `30d`.
        #[oai(name = "window")]
        _window: Query<Option<String>>,
        /// An `ETag` of an earlier answer: 304 while the data behind it is unchanged.
        #[oai(name = "If-None-Match")]
        _if_none_match: Header<Option<String>>,
        auth: BearerAuth,
    ) -> SeriesResponse {
        let Some(state) = request.data::<Arc<AppState>>() else {
            return ApiError::Internal("application state missing".into()).into();
        };
        match series(state, request, tenant.0 .0, &job_name.0 .0, &auth) {
            Ok((_, etag)) if if_none_match(request, &etag) => SeriesResponse::NotModified(etag),
            Ok((body, etag)) => SeriesResponse::Ok(Json(body), etag),
            Err(error) => error.into(),
        }
    }
}

pub const SERIES_MESSAGE: &str = "Series retrieved successfully";

/// One bucket of a series.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct SeriesBucket {
    /// The bucket's start (UTC); it holds executions that finished in
    /// `[start, start + width)`.
    pub start: String,
    pub completed: i64,
    pub failed: i64,
    /// Run-time percentiles of the bucket's completed executions; null without any.
    #[oai(nullable)]
    pub p50_ms: Option<i64>,
    #[oai(nullable)]
    pub p95_ms: Option<i64>,
}

#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct SeriesData {
    /// `1h`, `24h`, `7d` or `30d`.
    pub window: String,
    /// The bucket width: `minute`, `hour` or `day`.
    pub granularity: String,
    /// The first bucket's start.
    pub from: String,
    /// The end of the last bucket (exclusive).
    pub to: String,
    pub buckets: Vec<SeriesBucket>,
}

#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct SeriesEnvelope {
    pub success: bool,
    pub message: String,
    pub data: SeriesData,
    pub timestamp: String,
}

/// How a series window is cut: bucket width and count.
fn series_shape(window: crate::projection::rollup::Window) -> (Granularity, i64) {
    use crate::projection::rollup::Window;
    match window {
        Window::Hour => (Granularity::Minute, 60),
        Window::Day => (Granularity::Hour, 24),
        Window::Week => (Granularity::Hour, 168),
        Window::Month => (Granularity::Day, 30),
    }
}

fn series(
    state: &AppState,
    request: &Request,
    tenant: TenantId,
    job: &JobName,
    auth: &BearerAuth,
) -> Result<(SeriesEnvelope, String), ApiError> {
    use crate::projection::rollup::Window;
    refuse_repeated_tenant(request)?;
    let params = QueryParams::of(request)?;
    let name = params.choice("window", &Window::NAMES, "24h")?;
    let window = Window::parse(name).ok_or_else(|| invalid("window", "is not a window"))?;
    state.check_served(&tenant)?;
    auth.0.authorize(&tenant).map_err(ApiError::Forbidden)?;

    let readers = state.readers.get();
    let snapshot = readers
        .cached_job_snapshot(&tenant, job, 0)?
        .ok_or(ApiError::JobNotFound)?;
    let now = Utc::now();
    let (granularity, count) = series_shape(window);
    let width = granularity.millis();
    let last = granularity.bucket_start(now.timestamp_millis());
    let from = last - (count - 1) * width;
    let mut stored = readers
        .series(snapshot.job_id, granularity, from, last)?
        .into_iter()
        .peekable();
    let buckets = (0..count)
        .map(|i| {
            let start = from + i * width;
            let bucket = match stored.peek() {
                Some((at, _)) if *at == start => stored.next().map(|(_, b)| b),
                _ => None,
            }
            .unwrap_or_default();
            let percentiles = bucket.percentiles();
            SeriesBucket {
                start: rfc3339_millis(start),
                completed: bucket.completed,
                failed: bucket.failed,
                p50_ms: percentiles.p50,
                p95_ms: percentiles.p95,
            }
        })
        .collect();
    let etag = format!(
        "W/\"{}-{}-{}-{}\"",
        crate::store::PROJECTION_VERSION,
        snapshot.job_sequence,
        name,
        last
    );
    Ok((
        SeriesEnvelope {
            success: true,
            message: SERIES_MESSAGE.to_owned(),
            data: SeriesData {
                window: name.to_owned(),
                granularity: granularity.as_str().to_owned(),
                from: rfc3339_millis(from),
                to: rfc3339_millis(last + width),
                buckets,
            },
            timestamp: rfc3339_millis(now.timestamp_millis()),
        },
        etag,
    ))
}

/// What the list is ordered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SortBy {
    Name,
    LastRun,
    SuccessRate,
    Health,
    Uptime24h,
    Uptime7d,
    Uptime30d,
}

/// One job of the prefix with what the list filters and sorts by: its state, not yet its
/// whole health.
struct Candidate {
    name: String,
    /// Read when the key needs it (or the board did not).
    snapshot: Option<Arc<JobSnapshot>>,
    health_state: HealthState,
    /// Read only for the uptime sorts.
    uptime: Option<crate::notify::history::UptimeFigures>,
}

impl Candidate {
    /// The sort key, as [`Listed::key`] gives it for the same job.
    fn key(&self, sort: SortBy) -> Option<f64> {
        let figures = self.uptime.as_ref();
        match sort {
            SortBy::Health => Some(self.health_state as u8 as f64),
            SortBy::Uptime24h => figures.and_then(|u| u.last24h),
            SortBy::Uptime7d => figures.and_then(|u| u.last7d),
            SortBy::Uptime30d => figures.and_then(|u| u.last30d),
            _ => self
                .snapshot
                .as_ref()
                .and_then(|snapshot| stats_key(&snapshot.stats, sort)),
        }
    }
}

/// The keys read from the job's aggregates.
fn stats_key(stats: &crate::projection::JobStats, sort: SortBy) -> Option<f64> {
    match sort {
        SortBy::LastRun => stats.last_started_at.map(|t| t as f64),
        SortBy::SuccessRate => stats.success_rate_percent(),
        _ => None,
    }
}

/// One job with what the list shows and sorts by.
struct Listed {
    name: String,
    snapshot: Arc<JobSnapshot>,
    health: Health,
    uptime: crate::notify::history::UptimeFigures,
}

impl Listed {
    /// The sort key (`None` sorts last); names are compared separately.
    fn key(&self, sort: SortBy) -> Option<f64> {
        match sort {
            SortBy::Name | SortBy::LastRun | SortBy::SuccessRate => {
                stats_key(&self.snapshot.stats, sort)
            }
            SortBy::Health => Some(self.health.state as u8 as f64),
            SortBy::Uptime24h => self.uptime.last24h,
            SortBy::Uptime7d => self.uptime.last7d,
            SortBy::Uptime30d => self.uptime.last30d,
        }
    }
}

/// Sort keys first (ascending or descending, absent ones last), then names.
fn compare(
    sort: SortBy,
    descending: bool,
    a: (Option<f64>, &str),
    b: (Option<f64>, &str),
) -> Ordering {
    let directed = |o: Ordering| if descending { o.reverse() } else { o };
    if sort == SortBy::Name {
        return directed(a.1.cmp(b.1));
    }
    let by_key = match (a.0, b.0) {
        (Some(x), Some(y)) => directed(x.total_cmp(&y)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    };
    by_key.then_with(|| a.1.cmp(b.1))
}

/// A job-list request's parameters, checked.
struct ListQuery {
    health_filter: Vec<HealthState>,
    prefix: String,
    sort: SortBy,
    descending: bool,
    limit: u32,
    /// What a cursor of this query carries, so it is refused by any other query.
    query_id: String,
    /// The last job of the previous page: its sort key and name.
    after: Option<(Option<f64>, String)>,
    /// The frozen order the previous page came from, and where this page starts in it.
    frozen: Option<(u64, usize)>,
}

impl ListQuery {
    fn parse(params: &QueryParams, tenant: &TenantId) -> Result<Self, ApiError> {
        let mut health_filter = params.list(
            "health",
            "unknown, stuck, missed, failing, healthy, new",
            HealthState::parse,
        )?;
        health_filter.sort();
        health_filter.dedup();
        let prefix = params.get("q").unwrap_or("");
        if prefix.len() > JobName::MAX_LEN
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
        {
            return Err(invalid(
                "q",
                "must be a job-name prefix (up to 128 of A-Z a-z 0-9 . _ : -)",
            ));
        }
        let sort = match params.choice(
            "sort",
            &[
                "name",
                "lastRun",
                "successRate",
                "health",
                "uptime24h",
                "uptime7d",
                "uptime30d",
            ],
            "name",
        )? {
            "lastRun" => SortBy::LastRun,
            "uptime24h" => SortBy::Uptime24h,
            "uptime7d" => SortBy::Uptime7d,
            "uptime30d" => SortBy::Uptime30d,
            "successRate" => SortBy::SuccessRate,
            "health" => SortBy::Health,
            _ => SortBy::Name,
        };
        let descending = params.choice("order", &["asc", "desc"], "asc")? == "desc";
        let limit = params.integer("limit", 1, MAX_LIMIT, DEFAULT_LIMIT)?;
        let filter_text: Vec<&str> = health_filter.iter().map(|s| s.as_str()).collect();
        let query_id = fingerprint(&[
            &tenant.to_string(),
            "jobs",
            &filter_text.join(","),
            prefix,
            &format!("{sort:?}"),
            if descending { "desc" } else { "asc" },
        ]);
        let (after, frozen) = match Cursor::decode(params, &query_id)? {
            None => (None, None),
            Some(c) => (Some((cursor_key(&c, sort)?, c.id)), c.frozen),
        };
        Ok(ListQuery {
            health_filter,
            prefix: prefix.to_owned(),
            sort,
            descending,
            limit,
            query_id,
            after,
            frozen,
        })
    }
}

/// Job-list orders frozen at their first page. A filter by health or a sort by last run,
/// success rate or health orders jobs by values that change while a client pages (a run
/// starts, a fire passes), so keyset pages over the live order would skip or repeat jobs.
/// The first page's whole order is kept here and later pages are read from it: every job
/// present at the first page appears exactly once, with its current figures. Bounded in
/// bytes and kept [`FROZEN_ORDER_TTL`]; a cursor whose order is gone (evicted, expired, or
/// from another replica) pages over the live order as before.
pub struct FrozenOrders {
    orders: ByteBounded<(String, u64), Arc<FrozenOrder>>,
}

struct FrozenOrder {
    names: Vec<String>,
    made: std::time::Instant,
}

/// How long a frozen order serves its later pages.
pub const FROZEN_ORDER_TTL: std::time::Duration = std::time::Duration::from_secs(600);
/// Bytes of frozen orders kept (10,000 jobs' names are ~0.5 MB).
const FROZEN_ORDER_BYTES: u64 = 32 * 1024 * 1024;

impl Default for FrozenOrders {
    fn default() -> Self {
        FrozenOrders {
            orders: byte_bounded(FROZEN_ORDER_BYTES, 64 * 1024, |(query, _), order| {
                (query.len()
                    + 64
                    + order
                        .names
                        .iter()
                        .map(|n| n.len() + std::mem::size_of::<String>())
                        .sum::<usize>()) as u64
            }),
        }
    }
}

impl FrozenOrders {
    fn freeze(&self, query_id: &str, names: Vec<String>) -> u64 {
        let id = fastrand::u64(..);
        let order = FrozenOrder {
            names,
            made: std::time::Instant::now(),
        };
        self.orders
            .insert((query_id.to_owned(), id), Arc::new(order));
        id
    }

    fn get(&self, query_id: &str, id: u64) -> Option<Arc<FrozenOrder>> {
        self.orders
            .get(&(query_id.to_owned(), id))
            .filter(|order| order.made.elapsed() < FROZEN_ORDER_TTL)
    }
}

async fn list(
    state: &Arc<AppState>,
    request: &Request,
    tenant: TenantId,
    auth: &BearerAuth,
) -> Result<(JobListEnvelope, String), ApiError> {
    refuse_repeated_tenant(request)?;
    let query = ListQuery::parse(&QueryParams::of(request)?, &tenant)?;
    state.check_served(&tenant)?;
    auth.0.authorize(&tenant).map_err(ApiError::Forbidden)?;
    // A page filtered or sorted by health judges every job of the tenant (SQLite reads and
    // cron arithmetic): on the blocking pool, so the async workers keep answering `/healthz`
    // and every other tenant meanwhile.
    let state = state.clone();
    tokio::task::spawn_blocking(move || list_page(&state, tenant, &query))
        .await
        .map_err(|error| ApiError::Internal(format!("job list task failed: {error}")))?
}

fn list_page(
    state: &AppState,
    tenant: TenantId,
    query: &ListQuery,
) -> Result<(JobListEnvelope, String), ApiError> {
    let readers = state.readers.get();
    let now = Utc::now();
    let tenant_text = tenant.to_string();
    let uptime_of = |name: &str, snapshot: &JobSnapshot| {
        state.flips.uptime(
            &tenant_text,
            name,
            now.timestamp_millis(),
            &crate::projection::silenced_spans(&snapshot.stats.silence_marks),
        )
    };
    let candidate = |name: String| -> Result<Option<Candidate>, ApiError> {
        let job = JobName::parse(&name).map_err(ApiError::Internal)?;
        let Some(snapshot) = readers.cached_job_snapshot(&tenant, &job, 0)? else {
            return Ok(None);
        };
        let health_state = snapshot.state_at(
            judgement(state, &snapshot, now),
            state.default_max_runtime_ms,
        );
        let uptime = matches!(
            query.sort,
            SortBy::Uptime24h | SortBy::Uptime7d | SortBy::Uptime30d
        )
        .then(|| uptime_of(&name, &snapshot));
        Ok(Some(Candidate {
            name,
            snapshot: Some(snapshot),
            health_state,
            uptime,
        }))
    };
    // `judged_at`: the instant the board judged the candidates at, for the page to match.
    let listed =
        |candidate: Candidate, judged_at: Option<i64>| -> Result<Option<Listed>, ApiError> {
            let Candidate {
                name,
                snapshot,
                uptime,
                ..
            } = candidate;
            let snapshot = match snapshot {
                Some(snapshot) => snapshot,
                None => {
                    let job = JobName::parse(&name).map_err(ApiError::Internal)?;
                    match readers.cached_job_snapshot(&tenant, &job, 0)? {
                        Some(snapshot) => snapshot,
                        None => return Ok(None),
                    }
                }
            };
            let at = judged_at.map_or_else(|| judgement(state, &snapshot, now), Judgement::At);
            let health = snapshot.judge(at, state.default_max_runtime_ms);
            let uptime = uptime.unwrap_or_else(|| uptime_of(&name, &snapshot));
            Ok(Some(Listed {
                name,
                snapshot,
                health,
                uptime,
            }))
        };
    let (limit, sort) = (query.limit as usize, query.sort);
    let Selected {
        page,
        more,
        total,
        next_frozen,
    } = select_page(state, &tenant, query, now, &candidate, &listed)?;
    let next_cursor = page.last().filter(|_| more).map(|last| {
        Cursor {
            query: query.query_id.clone(),
            key: last
                .key(sort)
                .map_or(serde_json::Value::Null, serde_json::Value::from),
            id: last.name.clone(),
            frozen: next_frozen,
            as_of: None,
        }
        .encode()
    });
    let jobs: Vec<JobListEntry> = page.iter().map(|job| entry(job, now)).collect();
    let etag = list_etag(&page, &jobs, (total, &next_cursor, &query.query_id, limit));
    Ok((
        JobListEnvelope {
            success: true,
            message: JOBS_MESSAGE.to_owned(),
            data: JobListData {
                jobs,
                next_cursor,
                total,
            },
            timestamp: rfc3339_millis(now.timestamp_millis()),
        },
        etag,
    ))
}

/// A page of the job list, and where it stands.
struct Selected {
    page: Vec<Listed>,
    more: bool,
    total: u64,
    /// Where the next page starts in a frozen order, when there is one.
    next_frozen: Option<(u64, usize)>,
}

/// The jobs of the page: from the frozen order the cursor names, by a name index range, or
/// by the health state (or other key) of every job of the prefix, then freezing the order for
/// the pages after it. Only the page's jobs are judged in full.
fn select_page(
    state: &AppState,
    tenant: &TenantId,
    query: &ListQuery,
    now: chrono::DateTime<Utc>,
    candidate: &dyn Fn(String) -> Result<Option<Candidate>, ApiError>,
    listed: &dyn Fn(Candidate, Option<i64>) -> Result<Option<Listed>, ApiError>,
) -> Result<Selected, ApiError> {
    let listed_name = |name: String| -> Result<Option<Listed>, ApiError> {
        match candidate(name)? {
            Some(candidate) => listed(candidate, None),
            None => Ok(None),
        }
    };
    let readers = state.readers.get();
    let (limit, sort) = (query.limit as usize, query.sort);
    let frozen = query
        .frozen
        .and_then(|(id, at)| Some((id, at, state.list_orders.get(&query.query_id, id)?)));
    // Where the next page starts in a frozen order, when this page came from one.
    let mut next_frozen = None;
    let (page, more, total) = if let Some((id, at, order)) = frozen {
        let mut page = Vec::with_capacity(limit);
        for name in order.names.iter().skip(at).take(limit) {
            page.extend(listed_name(name.clone())?);
        }
        let more = at + limit < order.names.len();
        next_frozen = more.then_some((id, at + limit));
        (page, more, order.names.len() as u64)
    } else if sort == SortBy::Name && query.health_filter.is_empty() {
        // An index range: the cost of a page does not grow with the number of jobs.
        let names = readers.job_names_page(
            tenant,
            &query.prefix,
            query.after.as_ref().map(|(_, name)| name.as_str()),
            query.descending,
            query.limit + 1,
        )?;
        let more = names.len() > limit;
        let mut page = Vec::with_capacity(limit);
        for name in names.into_iter().take(limit) {
            page.extend(listed_name(name)?);
        }
        (page, more, readers.count_jobs(tenant, &query.prefix)?)
    } else {
        let mut all = Vec::new();
        let board = board_states(state, tenant, query, now)?;
        let judged_at = board.as_ref().map(|(_, at)| *at);
        if let Some((states, _)) = board {
            // A filter or sort by health: index ranges of the tenant's maintained board,
            // O(matching jobs).
            all.extend(states.into_iter().map(|(health_state, name)| Candidate {
                name,
                snapshot: None,
                health_state,
                uptime: None,
            }));
        } else {
            // A sort by a value that changes with every run reads every job of the prefix:
            // O(jobs), from the snapshot cache and each snapshot's state memo.
            for name in readers.job_names_page(tenant, &query.prefix, None, false, u32::MAX)? {
                if let Some(job) = candidate(name)? {
                    if query.health_filter.is_empty()
                        || query.health_filter.contains(&job.health_state)
                    {
                        all.push(job);
                    }
                }
            }
        }
        let (candidates, more, total, order) = sorted_page(all, query);
        let mut page = Vec::with_capacity(candidates.len());
        for candidate in candidates {
            page.extend(listed(candidate, judged_at)?);
        }
        if let Some(names) = order.filter(|_| more) {
            next_frozen = Some((state.list_orders.freeze(&query.query_id, names), limit));
        }
        (page, more, total)
    };
    Ok(Selected {
        page,
        more,
        total,
        next_frozen,
    })
}

/// A list filtered or sorted by health, from the tenant's maintained board
/// ([`crate::store::ReadPool::job_states`]): the matching jobs in (state, name) order and the
/// instant they were judged at. `None` when the list is sorted by something else, or when
/// health is not judged at an instant (the stream unreachable: every job is `unknown`).
fn board_states(
    state: &AppState,
    tenant: &TenantId,
    query: &ListQuery,
    now: chrono::DateTime<Utc>,
) -> Result<Option<(JobStates, i64)>, ApiError> {
    if !matches!(query.sort, SortBy::Health | SortBy::Name) {
        return Ok(None);
    }
    let readers = state.readers.get();
    let published = if state.nats.is_none() || state.status.position().last_published_at.is_none() {
        readers.freshness()?.last_published_at_ms
    } else {
        None
    };
    let Judgement::At(at) = judgement_given(state, || published, now) else {
        return Ok(None);
    };
    let default_max_runtime_ms = state.default_max_runtime_ms;
    let found = readers.job_states(
        tenant,
        &query.prefix,
        &query.health_filter,
        at,
        &|snapshot, at| snapshot.state_memo_at(at, default_max_runtime_ms),
    )?;
    Ok(Some(found))
}

/// The data behind the page: each job's version and what was judged of it (health moves
/// with time alone), the page's extent and the query. Not `asOf`: it is the request time.
fn list_etag(
    page: &[Listed],
    jobs: &[JobListEntry],
    extent: (u64, &Option<String>, &String, usize),
) -> String {
    let mut version = StableHasher::default();
    for (job, shown) in page.iter().zip(jobs) {
        job.name.hash(&mut version);
        job.snapshot.job_sequence.hash(&mut version);
        let health = &shown.health.summary;
        (&health.state, &health.since).hash(&mut version);
        (health.missed_runs.last_24h, health.missed_runs.last_7d).hash(&mut version);
        (&shown.health.stuck_execution_ids, &shown.health.reason).hash(&mut version);
        shown.next_run.hash(&mut version);
        // Uptime moves with the clock, as health does.
        (
            &shown.uptime.last24h,
            &shown.uptime.last7d,
            &shown.uptime.last30d,
        )
            .hash(&mut version);
    }
    extent.hash(&mut version);
    format!(
        "W/\"{}-{:016x}\"",
        crate::store::PROJECTION_VERSION,
        version.finish()
    )
}

/// The page of `all` (every job that matched) after the query's cursor: the page, whether
/// more follow, how many matched, and, for a first page, every name in order (to freeze).
fn sorted_page(
    mut all: Vec<Candidate>,
    query: &ListQuery,
) -> (Vec<Candidate>, bool, u64, Option<Vec<String>>) {
    let (sort, descending) = (query.sort, query.descending);
    all.sort_by(|a, b| {
        compare(
            sort,
            descending,
            (a.key(sort), &a.name),
            (b.key(sort), &b.name),
        )
    });
    let total = all.len() as u64;
    let start = match &query.after {
        None => 0,
        Some((key, name)) => all.partition_point(|job| {
            compare(sort, descending, (job.key(sort), &job.name), (*key, name)) != Ordering::Greater
        }),
    };
    let order = query
        .after
        .is_none()
        .then(|| all.iter().map(|job| job.name.clone()).collect());
    let mut rest: Vec<Candidate> = all.into_iter().skip(start).collect();
    let more = rest.len() > query.limit as usize;
    rest.truncate(query.limit as usize);
    (rest, more, total, order)
}

fn cursor_key(cursor: &Cursor, sort: SortBy) -> Result<Option<f64>, ApiError> {
    match (&cursor.key, sort) {
        (serde_json::Value::Null, _) => Ok(None),
        (serde_json::Value::Number(n), sort) if sort != SortBy::Name => Ok(n.as_f64()),
        _ => Err(invalid("cursor", "is not a cursor this service issued")),
    }
}

fn entry(job: &Listed, now: chrono::DateTime<Utc>) -> JobListEntry {
    let stats = &job.snapshot.stats;
    let success = stats.success_rate_percent();
    JobListEntry {
        job_name: job.name.clone(),
        status: stats.status().to_owned(),
        health: health_stats(&job.health, stats),
        uptime: job.uptime.into(),
        queue: QueueStats {
            pending: stats.pending,
            processing: stats.processing,
            failed: stats.failed,
            completed: stats.completed,
        },
        success_rate: success.map(human_percent),
        success_rate_percent: success.map(percent_one_decimal),
        average_execution_time_ms: stats.average_duration_ms(),
        last_run: stats.last_started_at.map(rfc3339_millis),
        last_outcome: job
            .health
            .last_failed
            .map(|failed| if failed { "failed" } else { "completed" }.to_owned()),
        p95_ms: stats.durations.quantile(0.95),
        next_run: job
            .snapshot
            .cron
            .as_ref()
            .and_then(|c| c.next_after(now))
            .map(|t| rfc3339_millis(t.timestamp_millis())),
    }
}

/// An executions request's parameters, checked: the store's query, the page size, and the
/// query's fingerprint for cursors.
fn executions_query(
    params: &QueryParams,
    tenant: &TenantId,
    job: &JobName,
) -> Result<(ExecutionsQuery, u32, String), ApiError> {
    let mut states = params.list("status", "pending, processing, completed, failed", |text| {
        [
            ExecutionState::Pending,
            ExecutionState::Processing,
            ExecutionState::Completed,
            ExecutionState::Failed,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    })?;
    states.sort();
    states.dedup();
    let from = params.time("from")?;
    let to = params.time("to")?;
    if let (Some(from), Some(to)) = (from, to) {
        if from > to {
            return Err(invalid("from", "must not be after to"));
        }
    }
    let limit = params.integer("limit", 1, MAX_LIMIT, DEFAULT_LIMIT)?;
    let state_text: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
    let query_id = fingerprint(&[
        &tenant.to_string(),
        job.as_str(),
        "executions",
        &state_text.join(","),
        &format!("{from:?}"),
        &format!("{to:?}"),
    ]);
    let (after, as_of) = match Cursor::decode(params, &query_id)? {
        None => (None, None),
        Some(cursor) => {
            let key = cursor
                .key
                .as_i64()
                .ok_or_else(|| invalid("cursor", "is not a cursor this service issued"))?;
            (Some((key, cursor.id)), cursor.as_of)
        }
    };
    let query = ExecutionsQuery {
        states,
        from,
        to,
        after,
        as_of,
        limit: limit + 1,
    };
    Ok((query, limit, query_id))
}

/// `?format=ndjson|csv`: the same checks and filters as a page, then the stream.
fn export(
    state: &AppState,
    request: &Request,
    tenant: TenantId,
    job: JobName,
    auth: &BearerAuth,
    format: ExportFormat,
) -> Result<poem::Response, ApiError> {
    refuse_repeated_tenant(request)?;
    let params = QueryParams::of(request)?;
    for paging in ["limit", "cursor"] {
        if params.get(paging).is_some() {
            return Err(invalid(
                paging,
                "does not apply to format=ndjson or csv: the export holds every matching execution",
            ));
        }
    }
    let (query, _, _) = executions_query(&params, &tenant, &job)?;
    state.check_served(&tenant)?;
    auth.0.authorize(&tenant).map_err(ApiError::Forbidden)?;
    state
        .readers
        .get()
        .cached_job_snapshot(&tenant, &job, 0)?
        .ok_or(ApiError::JobNotFound)?;
    super::export::stream(state, tenant, job, query, format)
}

fn execution(
    state: &AppState,
    request: &Request,
    tenant: TenantId,
    job: &JobName,
    execution_id: &str,
    auth: &BearerAuth,
) -> Result<(ExecutionEnvelope, String), ApiError> {
    refuse_repeated_tenant(request)?;
    let execution_id = crate::events::ExecutionId::parse(execution_id)
        .map_err(|reason| invalid("executionId", &reason))?;
    QueryParams::of(request)?;
    state.check_served(&tenant)?;
    auth.0.authorize(&tenant).map_err(ApiError::Forbidden)?;
    let (job_exists, found) = state
        .readers
        .get()
        .execution(&tenant, job, execution_id.as_str())?;
    let (summary, job_sequence) = match found {
        Some(found) => found,
        None if job_exists => return Err(ApiError::ExecutionNotFound),
        None => return Err(ApiError::JobNotFound),
    };
    let mut shape = StableHasher::default();
    execution_id.as_str().hash(&mut shape);
    let etag = format!(
        "W/\"{}-{}-{:016x}\"",
        crate::store::PROJECTION_VERSION,
        job_sequence,
        shape.finish()
    );
    Ok((
        ExecutionEnvelope {
            success: true,
            message: EXECUTION_MESSAGE.to_owned(),
            data: ExecutionDetail {
                execution: recent_execution(&summary),
                output: summary.row.output.clone(),
            },
            timestamp: rfc3339_millis(Utc::now().timestamp_millis()),
        },
        etag,
    ))
}

fn executions(
    state: &AppState,
    request: &Request,
    tenant: TenantId,
    job: &JobName,
    auth: &BearerAuth,
) -> Result<(ExecutionsEnvelope, String), ApiError> {
    refuse_repeated_tenant(request)?;
    let params = QueryParams::of(request)?;
    let (query, limit, query_id) = executions_query(&params, &tenant, job)?;
    state.check_served(&tenant)?;
    auth.0.authorize(&tenant).map_err(ApiError::Forbidden)?;

    let readers = state.readers.get();
    // The job's version, read before the page: the tag never names newer data than the
    // page holds (at worst an older one, which only costs a 200).
    let job_sequence = readers
        .cached_job_snapshot(&tenant, job, 0)?
        .ok_or(ApiError::JobNotFound)?
        .job_sequence;
    let page = readers
        .executions_page(&tenant, job, &query)?
        .ok_or(ApiError::JobNotFound)?;
    let more = page.rows.len() > limit as usize;
    let mut keyed = page.rows;
    keyed.truncate(limit as usize);
    // The next page is read as of this page's position, keyed on where the last row stood.
    let next_cursor = keyed.last().filter(|_| more).map(|(last, key)| {
        Cursor {
            query: query_id.clone(),
            key: (*key).into(),
            id: last.execution_id.clone(),
            frozen: None,
            as_of: Some(page.position),
        }
        .encode()
    });
    let rows: Vec<ExecutionSummary> = keyed.into_iter().map(|(row, _)| row).collect();
    let mut shape = StableHasher::default();
    (&query_id, limit, params.get("cursor")).hash(&mut shape);
    let etag = format!(
        "W/\"{}-{}-{:016x}\"",
        crate::store::PROJECTION_VERSION,
        job_sequence,
        shape.finish()
    );
    Ok((
        ExecutionsEnvelope {
            success: true,
            message: EXECUTIONS_MESSAGE.to_owned(),
            data: ExecutionsData {
                executions: rows.iter().map(recent_execution).collect(),
                next_cursor,
            },
            timestamp: rfc3339_millis(Utc::now().timestamp_millis()),
        },
        etag,
    ))
}
