//! Liveness, readiness and Prometheus metrics.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use poem::{handler, web::Data, Response};

use super::stats::judgement;
use super::AppState;
use crate::events::TenantId;
use crate::projection::health::HealthState;
use crate::store::StoreError;

/// Alive: the process answers.
#[handler]
pub fn healthz() -> Response {
    json(
        poem::http::StatusCode::OK,
        serde_json::json!({ "status": "ok" }),
    )
}

/// Ready, as the admin listener tells it: with the projector's error text, what start-up
/// repaired and where each webhook's delivery stands.
#[handler]
pub fn readyz(state: Data<&Arc<AppState>>) -> Response {
    readiness(&state, Detail::Full)
}

/// Ready, as the API port tells it: the same verdict and figures, with the error and the
/// repair said in fixed words (their text may hold paths) and no webhook names.
#[handler]
pub fn public_readyz(state: Data<&Arc<AppState>>) -> Response {
    readiness(&state, Detail::Public)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Detail {
    Full,
    Public,
}

/// Ready: NATS connected and the projector caught up (and no start-up rebuild running).
/// A read-only audit copy is ready as soon as it is open.
fn readiness(state: &AppState, detail: Detail) -> Response {
    let status = &state.status;
    let nats_connected = state
        .nats
        .as_ref()
        .map(|c| c.client.connection_state() == async_nats::connection::State::Connected);
    // Why NATS turns us away (credentials, TLS trust), naming the variable to fix; it never
    // holds the secret itself.
    let nats_refusal = state.nats.as_ref().and_then(|c| c.settings.refusal());
    let caught_up = status.caught_up.load(Ordering::Relaxed);
    let rebuilding = status.rebuilding.load(Ordering::Relaxed);
    let projector_error = status.error();
    let ready = match nats_connected {
        None => true,
        Some(connected) => connected && caught_up && !rebuilding && projector_error.is_none(),
    };
    let mut body = serde_json::json!({
        "status": if ready { "ready" } else { "not_ready" },
        "natsConnected": nats_connected,
        "natsError": nats_refusal,
        "caughtUp": caught_up,
        "lastAppliedSequence": status.last_sequence.load(Ordering::Relaxed),
        "lagEvents": status.lag.load(Ordering::Relaxed),
        // Why the projection stands still (e.g. "database or disk is full"), null when it
        // does not.
        "projectorError": projector_error.map(|(text, summary)| match detail {
            Detail::Full => text,
            Detail::Public => summary.to_owned(),
        }),
        // A damaged database found at start, moved aside and rebuilt (null: none).
        "startupRecovery": *status.startup_recovery.lock().unwrap_or_else(|p| p.into_inner()),
        "rebuild": if rebuilding {
            serde_json::json!({
                "inProgress": true,
                "eventsDone": status.rebuild_done.load(Ordering::Relaxed),
                "eventsTotal": status.rebuild_total.load(Ordering::Relaxed),
            })
        } else {
            serde_json::json!({ "inProgress": false })
        },
    });
    if detail == Detail::Public {
        if !body["startupRecovery"].is_null() {
            body["startupRecovery"] = "the database failed its integrity check; it was moved \
                aside (<file>.corrupt-<unix ms>) and is rebuilt from the stream (details on the \
                admin listener's /readyz)"
                .into();
        }
    } else {
        body["webhooks"] = state
            .metrics
            .webhook_lag()
            .into_iter()
            .map(|(name, age, backlog)| {
                serde_json::json!({
                    "name": name,
                    "oldestUndeliveredAgeSeconds": age,
                    "backlog": backlog,
                })
            })
            .collect();
    }
    let code = if ready {
        poem::http::StatusCode::OK
    } else {
        poem::http::StatusCode::SERVICE_UNAVAILABLE
    };
    json(code, body)
}

/// Tenants labelled in `jobstats_jobs`; the others are summed under [`OTHER_TENANTS`], so the
/// series count stays bounded (101 tenants × 6 states) however many tenants publish.
const MAX_TENANT_LABELS: usize = 100;
const OTHER_TENANTS: &str = "_other";
/// Counting judges every job (O(jobs)); scrapes closer together than this reuse the count.
const JOBS_BY_HEALTH_TTL: Duration = Duration::from_secs(10);

/// The admin listener's metrics: everything, the per-tenant and per-webhook series too.
#[handler]
pub async fn metrics(state: Data<&Arc<AppState>>) -> Response {
    let state = state.0.clone();
    {
        let mut counted = state.metrics.jobs_by_health_counted.lock().await;
        if counted.is_none_or(|at| at.elapsed() >= JOBS_BY_HEALTH_TTL) {
            // SQLite reads and a judgement per job: off the async workers.
            let counting = state.clone();
            match tokio::task::spawn_blocking(move || jobs_by_health(&counting)).await {
                Ok(Ok(counts)) => {
                    state.metrics.set_jobs_by_health(&counts);
                    *counted = Some(Instant::now());
                }
                Ok(Err(error)) => tracing::warn!(%error, "counting jobs by health failed"),
                Err(error) => tracing::warn!(%error, "counting jobs by health panicked"),
            }
        }
    }
    // The per-job series: one pass over `job_stats`, off the async workers too.
    let reading = state.clone();
    let rows = tokio::task::spawn_blocking(move || {
        reading.readers.get().job_metrics(reading.job_metrics_max)
    })
    .await;
    let rows = match rows {
        Ok(Ok(rows)) => Some(rows),
        Ok(Err(error)) => {
            tracing::warn!(%error, "reading the per-job metrics failed");
            None
        }
        Err(error) => {
            tracing::warn!(%error, "reading the per-job metrics panicked");
            None
        }
    };
    let now = chrono::Utc::now().timestamp_millis();
    // Past §5's patience without the stream, nothing time-based is judged: `unknown`.
    let unknown = matches!(
        state.status.position().judgement(now),
        crate::projection::Judgement::Unknown { .. }
    );
    openmetrics(state.metrics.render_with(true, |text| {
        if let Some((rows, total)) = rows {
            let omitted = total.saturating_sub(rows.len() as u64);
            crate::job_metrics::render(text, &rows, &state.job_health, unknown, omitted, now);
        }
    }))
}

/// The API port's metrics: service-level series only, nothing counted per request.
#[handler]
pub fn public_metrics(state: Data<&Arc<AppState>>) -> Response {
    openmetrics(state.metrics.render(false))
}

fn openmetrics(text: String) -> Response {
    Response::builder()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(text)
}

/// (tenant label, state, jobs) for every tenant's jobs, judged now as the stats answer would.
fn jobs_by_health(state: &AppState) -> Result<Vec<(String, &'static str, i64)>, StoreError> {
    let readers = state.readers.get();
    let now = chrono::Utc::now();
    let mut per_tenant: HashMap<TenantId, [i64; HealthState::ALL.len()]> = HashMap::new();
    for (tenant, job) in readers.all_jobs()? {
        let Some(snapshot) = readers.cached_job_snapshot(&tenant, &job, 0)? else {
            continue;
        };
        let health = snapshot.judge(
            judgement(state, &snapshot, now),
            state.default_max_runtime_ms,
        );
        let slot = HealthState::ALL
            .iter()
            .position(|s| *s == health.state)
            .unwrap_or(0);
        per_tenant.entry(tenant).or_default()[slot] += 1;
    }
    let mut tenants: Vec<(TenantId, [i64; 6])> = per_tenant.into_iter().collect();
    // The tenants with most jobs keep their label; ties by id, so the cut is stable.
    tenants.sort_by(|(a, x), (b, y)| {
        let (x, y): (i64, i64) = (x.iter().sum(), y.iter().sum());
        y.cmp(&x).then_with(|| a.to_string().cmp(&b.to_string()))
    });
    let mut other = [0i64; 6];
    let mut counts = Vec::new();
    for (rank, (tenant, states)) in tenants.into_iter().enumerate() {
        if rank < MAX_TENANT_LABELS {
            let label = tenant.to_string();
            for (state, jobs) in HealthState::ALL.iter().zip(states) {
                counts.push((label.clone(), state.as_str(), jobs));
            }
        } else {
            for (sum, jobs) in other.iter_mut().zip(states) {
                *sum += jobs;
            }
        }
    }
    if other.iter().any(|jobs| *jobs > 0) {
        for (state, jobs) in HealthState::ALL.iter().zip(other) {
            counts.push((OTHER_TENANTS.to_owned(), state.as_str(), jobs));
        }
    }
    Ok(counts)
}

fn json(status: poem::http::StatusCode, body: serde_json::Value) -> Response {
    Response::builder()
        .status(status)
        .content_type("application/json")
        .body(body.to_string())
}
