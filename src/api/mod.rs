//! The HTTP API (CONTRACT §3): poem + poem-openapi. [`serve`] takes a bound listener and a
//! shutdown future, so tests run the real server on port 0.
//!
//! Layers, outermost first: JSON errors for everything (unknown routes, 405 with `Allow`,
//! poem's own errors) → `edge`: request metrics and bearer authentication of
//! `/api/v1/admin/*` (401 before anything else is looked at) → routes.

pub mod admin;
pub mod auth;
pub mod body;
pub mod errors;
pub mod export;
pub mod flips;
mod health;
pub mod ingest;
pub mod jobs;
pub mod jwks;
pub mod limits;
pub mod params;
mod query;
pub mod silence;
pub mod stats;
pub mod tls;
pub mod ui;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use poem::{listener::TcpAcceptor, Endpoint, EndpointExt, IntoResponse, Request, Response, Route};
use poem_openapi::OpenApiService;

use self::auth::Authenticator;
use self::errors::ApiError;
use crate::metrics::{Metrics, ProjectorStatus, RequestLabels};
use crate::store::CurrentReader;

/// Everything a request handler may use.
pub struct AppState {
    pub readers: Arc<CurrentReader>,
    pub authenticator: Authenticator,
    pub metrics: Arc<Metrics>,
    pub status: Arc<ProjectorStatus>,
    /// The NATS connection, when this process projects (absent for a read-only audit copy).
    pub nats: Option<NatsLink>,
    /// Serialized stats answers, one per cached snapshot.
    pub bodies: body::BodyCache,
    /// `JOBSTATS_MAX_RUNTIME` in ms: when a job without its own `maxRuntimeMs` is stuck.
    pub default_max_runtime_ms: i64,
    /// The checkpoint after each commit: read-your-writes waits on it.
    pub applied: tokio::sync::watch::Receiver<u64>,
    /// The tenants this replica serves (`JOBSTATS_TENANTS`).
    pub tenants: crate::scope::TenantScope,
    /// Read-your-writes requests that may wait at once (`JOBSTATS_HTTP_MAX_WAITERS`).
    pub waiters: tokio::sync::Semaphore,
    /// Job-list orders frozen at their first page, for the pages after it.
    pub list_orders: jobs::FrozenOrders,
    /// Every job's announced health changes, from `JOB_HEALTH` (empty without NATS).
    pub flips: Arc<crate::notify::history::FlipHistory>,
    /// The dashboard's sign-in (`JOBSTATS_UI_OIDC_*`).
    pub ui: ui::UiSettings,
    /// The health state last announced per job, for the per-job metrics.
    pub job_health: Arc<crate::job_metrics::JobHealthBoard>,
    /// `JOBSTATS_JOB_METRICS_MAX`: the jobs the admin `/metrics` exports.
    pub job_metrics_max: usize,
    /// Ingest keys, request rates and ping pairing (CONTRACT §10).
    pub ingest: ingest::IngestState,
}

/// The projector's NATS connection as `/readyz` reports it: connected or not, and why the
/// server refuses it when it does.
#[derive(Clone)]
pub struct NatsLink {
    pub client: async_nats::Client,
    pub settings: crate::stream::NatsSettings,
}

impl AppState {
    /// 421 for a tenant outside this replica's shard.
    pub fn check_served(&self, tenant: &crate::events::TenantId) -> Result<(), ApiError> {
        if self.tenants.serves(tenant) {
            Ok(())
        } else {
            Err(ApiError::TenantNotServed(tenant.to_string()))
        }
    }
}

pub const STATS_ROUTE: &str = "/api/v1/admin/jobs/{jobName}/stats";
pub const EXECUTIONS_ROUTE: &str = "/api/v1/admin/jobs/{jobName}/executions";
pub const JOBS_ROUTE: &str = "/api/v1/admin/jobs";

pub use crate::projection::format::rfc3339_millis;

pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The OpenAPI service (also used to print the committed `openapi.json`).
pub fn openapi_service() -> OpenApiService<
    (
        stats::StatsApi,
        jobs::JobsApi,
        silence::SilenceApi,
        admin::AdminApi,
    ),
    (),
> {
    OpenApiService::new(
        (
            stats::StatsApi,
            jobs::JobsApi,
            silence::SilenceApi,
            admin::AdminApi,
        ),
        "jobstats",
        env!("CARGO_PKG_VERSION"),
    )
    .description("Job statistics from job lifecycle events, event-sourced from NATS JetStream.")
    .server("/api/v1")
}

/// The OpenAPI document as JSON (committed as `openapi.json`; CI checks it is current).
pub fn openapi_json() -> String {
    openapi_service().spec()
}

/// Bytes of the Swagger page handed to a connection at a time.
const DOCS_SLICE: usize = 4 * 1024;

/// Where `/readyz` and `/metrics` are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operations {
    /// On the API port, beside the API.
    WithApi,
    /// Only on the admin listener (`JOBSTATS_ADMIN_LISTEN`), so an exposed API port does not
    /// show them; `/healthz` stays on both.
    Separate,
}

/// Builds the complete application.
pub fn app(state: Arc<AppState>, operations: Operations) -> impl Endpoint<Output = Response> {
    let api = openapi_service();
    let spec = api.spec();
    // The Swagger page is ~1.6 MB: rendered once and shared, never copied per request.
    let docs_page = bytes::Bytes::from(api.swagger_ui_html());
    let docs = move || {
        let page = docs_page.clone();
        poem::endpoint::make_sync(move |_| {
            // Streamed in slices of the shared page: a client that does not read holds at
            // most what the connection buffers, not a copy of the whole page.
            let slices: Vec<std::io::Result<bytes::Bytes>> = (0..page.len())
                .step_by(DOCS_SLICE)
                .map(|at| Ok(page.slice(at..(at + DOCS_SLICE).min(page.len()))))
                .collect();
            Response::builder()
                .content_type("text/html; charset=utf-8")
                .body(poem::Body::from_bytes_stream(futures::stream::iter(slices)))
        })
    };
    let edge_state = state.clone();
    let routes = Route::new()
        .at("/api/v1/docs", docs())
        .at("/api/v1/docs/", docs())
        .at(
            "/api/v1/openapi.json",
            poem::endpoint::make_sync(move |_| {
                Response::builder()
                    .content_type("application/json")
                    .body(spec.clone())
            }),
        )
        .at("/api/v1/events", poem::post(ingest::events::post_events))
        .at(
            "/api/v1/admin/keys",
            poem::get(ingest::keys::list_keys).post(ingest::keys::create_key),
        )
        .at(
            "/api/v1/admin/keys/:id",
            poem::delete(ingest::keys::revoke_key),
        )
        .at(
            "/ping/:key/:job",
            poem::get(ingest::ping::ping_job)
                .post(ingest::ping::ping_job)
                .head(ingest::ping::ping_job),
        )
        .at(
            "/ping/:key/:job/:action",
            poem::get(ingest::ping::ping_job_action)
                .post(ingest::ping::ping_job_action)
                .head(ingest::ping::ping_job_action),
        )
        .at(
            "/api/:project/envelope",
            poem::post(ingest::sentry::post_envelope),
        )
        .at(
            "/api/:project/envelope/",
            poem::post(ingest::sentry::post_envelope),
        )
        .at(
            "/api/:project/cron/:slug/:key",
            poem::get(ingest::sentry::cron_url).post(ingest::sentry::cron_url),
        )
        .at(
            "/api/:project/cron/:slug/:key/",
            poem::get(ingest::sentry::cron_url).post(ingest::sentry::cron_url),
        )
        .nest("/api/v1", api)
        .nest("/ui", ui::assets(&state.ui))
        .at("/healthz", poem::get(health::healthz));
    let routes = match operations {
        // The API port may face the internet: what it serves unauthenticated names no
        // tenant, job or webhook, no file path and no raw error text (CONTRACT §3).
        Operations::WithApi => routes
            .at("/readyz", poem::get(health::public_readyz))
            .at("/metrics", poem::get(health::public_metrics)),
        Operations::Separate => routes,
    };
    routes
        .data(state)
        .around(move |endpoint, request| {
            let state = edge_state.clone();
            async move { edge(endpoint, request, &state).await }
        })
        .catch_all_error(|error: poem::Error| async move { json_error(error) })
}

fn route_label(path: &str) -> &'static str {
    match path {
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/metrics" => "/metrics",
        "/api/v1/openapi.json" => "/api/v1/openapi.json",
        p if p.starts_with("/api/v1/docs") => "/api/v1/docs",
        p if p.starts_with("/api/v1/admin/jobs/") && p.ends_with("/stats") => STATS_ROUTE,
        p if p.starts_with("/api/v1/admin/jobs/") && p.ends_with("/executions") => EXECUTIONS_ROUTE,
        "/api/v1/admin/jobs" => JOBS_ROUTE,
        p if p.starts_with("/api/v1/admin/jobs/") && p.ends_with("/series") => {
            "/api/v1/admin/jobs/{jobName}/series"
        }
        p if p.starts_with("/api/v1/admin/jobs/") && p.ends_with("/silence") => {
            "/api/v1/admin/jobs/{jobName}/silence"
        }
        "/api/v1/admin/tenants" => "/api/v1/admin/tenants",
        "/api/v1/events" => "/api/v1/events",
        p if p.starts_with("/api/v1/admin/keys") => "/api/v1/admin/keys",
        p if p.starts_with("/ping/") => "/ping",
        p if !p.starts_with("/api/v1/") && p.starts_with("/api/") && p.contains("/envelope") => {
            "/api/{projectId}/envelope/"
        }
        p if !p.starts_with("/api/v1/") && p.starts_with("/api/") && p.contains("/cron/") => {
            "/api/{projectId}/cron/{monitorSlug}/{key}/"
        }
        "/api/v1/admin/projection" => "/api/v1/admin/projection",
        "/api/v1/admin/dead-letters" => "/api/v1/admin/dead-letters",
        p if p == "/ui" || p.starts_with("/ui/") => "/ui",
        _ => "other",
    }
}

/// What every request passes through before routing, in one layer (each poem layer nests
/// and moves the request's future, which showed in profiles): request metrics, bearer
/// authentication of `/api/v1/admin/*` before anything else is looked at (so an
/// unauthenticated caller learns nothing, not even whether the tenant or job name is valid),
/// and the job-name error for path segments poem's router cannot decode.
async fn edge<E: Endpoint>(
    endpoint: Arc<E>,
    mut request: Request,
    state: &AppState,
) -> poem::Result<Response> {
    let started = Instant::now();
    let path = request.uri().path();
    let route = route_label(path);
    // poem's router rejects undecodable path segments (e.g. `%FF`) before any handler; on the
    // jobs path the only path segment a client controls is the job name.
    let on_jobs_path = path.starts_with("/api/v1/admin/jobs/");
    // Reads, and the one write the OpenAPI document holds (a silence); the keys routes
    // authenticate themselves.
    let guarded = path.starts_with("/api/v1/admin/")
        && (matches!(
            *request.method(),
            poem::http::Method::GET | poem::http::Method::HEAD
        ) || (on_jobs_path
            && request.method() == poem::http::Method::POST
            && path.ends_with("/silence")));
    let result = async {
        if guarded {
            match state
                .authenticator
                .authenticate_headers(request.headers())
                .await
            {
                Ok(principal) => {
                    request.extensions_mut().insert(principal);
                }
                Err(error) => return Ok(ApiError::Unauthorized(error.to_string()).into_response()),
            }
        }
        match endpoint.call(request).await {
            Err(error)
                if on_jobs_path
                    && error.status() == poem::http::StatusCode::BAD_REQUEST
                    && !error.is_from_response() =>
            {
                Ok(ApiError::InvalidJobName("Invalid job name".into()).into_response())
            }
            other => other.map(IntoResponse::into_response),
        }
    }
    .await;
    let status = match &result {
        Ok(response) => response.status(),
        Err(error) => error.status(),
    };
    let labels = RequestLabels {
        route: route.to_owned(),
        status: status.as_u16(),
    };
    state.metrics.http_requests.get_or_create(&labels).inc();
    state
        .metrics
        .http_latency_seconds
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    result
}

/// Every error that escapes the routes becomes the JSON envelope.
fn json_error(error: poem::Error) -> Response {
    if error.is_from_response() {
        return error.into_response();
    }
    let api_error = if error.is::<poem::error::NotFoundError>() {
        ApiError::RouteNotFound
    } else if error.is::<poem::error::MethodNotAllowedError>() {
        ApiError::MethodNotAllowed
    } else if error.status().is_client_error() {
        ApiError::InvalidParameter("Invalid request".into())
    } else {
        ApiError::Internal(error.to_string())
    };
    let mut response = api_error.into_response();
    if error.status().is_client_error()
        && !matches!(
            error.status(),
            poem::http::StatusCode::NOT_FOUND | poem::http::StatusCode::METHOD_NOT_ALLOWED
        )
    {
        response.set_status(error.status());
    }
    response
}

/// The admin listener's application: `/healthz`, `/readyz` and `/metrics` only.
pub fn admin_app(state: Arc<AppState>) -> impl Endpoint<Output = Response> {
    Route::new()
        .at("/healthz", poem::get(health::healthz))
        .at("/readyz", poem::get(health::readyz))
        .at("/metrics", poem::get(health::metrics))
        .data(state)
        .catch_all_error(|error: poem::Error| async move { json_error(error) })
}

/// Serves the API (and, given `admin`, the operations endpoints there instead) until
/// `shutdown` resolves, then drains requests for up to 0.7 s. With `tls`, both listeners
/// speak HTTPS.
pub async fn serve(
    listener: tokio::net::TcpListener,
    admin: Option<tokio::net::TcpListener>,
    state: Arc<AppState>,
    limits: &limits::HttpLimits,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use futures::FutureExt;
    use poem::listener::AcceptorExt;
    let shutdown = shutdown.shared();
    let server = |listener| -> std::io::Result<_> {
        let acceptor = limits::LimitedAcceptor::new(TcpAcceptor::from_tokio(listener)?, limits);
        let acceptor = match &tls {
            Some(config) => tls::TlsAcceptor::new(acceptor, config.clone()).boxed(),
            None => acceptor.boxed(),
        };
        Ok(poem::Server::new_with_acceptor(acceptor)
            .idle_timeout(limits.idle_timeout)
            .http2_max_concurrent_streams(limits.http2_max_streams)
            .http2_max_header_list_size(limits.http2_max_header_bytes))
    };
    // Short: `serve` stops within 2 s of SIGTERM (CONTRACT §3); a read-your-writes wait
    // cut off here is retried by its client like any dropped request.
    let drain = Some(Duration::from_millis(700));
    match admin {
        None => {
            server(listener)?
                .run_with_graceful_shutdown(app(state, Operations::WithApi), shutdown, drain)
                .await
        }
        Some(admin) => {
            let api = server(listener)?.run_with_graceful_shutdown(
                app(state.clone(), Operations::Separate),
                shutdown.clone(),
                drain,
            );
            let operations =
                server(admin)?.run_with_graceful_shutdown(admin_app(state), shutdown, drain);
            let (api, operations) = tokio::join!(api, operations);
            api.and(operations)
        }
    }
}
