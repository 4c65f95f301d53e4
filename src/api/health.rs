//! Liveness, readiness and Prometheus metrics.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use poem::{handler, web::Data, Response};

use super::AppState;

/// Alive: the process answers.
#[handler]
pub fn healthz() -> Response {
    json(
        poem::http::StatusCode::OK,
        serde_json::json!({ "status": "ok" }),
    )
}

/// Ready: NATS connected and the projector caught up (and no start-up rebuild running).
/// A read-only audit copy is ready as soon as it is open.
#[handler]
pub fn readyz(state: Data<&Arc<AppState>>) -> Response {
    let status = &state.status;
    let nats_connected = state
        .nats
        .as_ref()
        .map(|c| c.connection_state() == async_nats::connection::State::Connected);
    let caught_up = status.caught_up.load(Ordering::Relaxed);
    let rebuilding = status.rebuilding.load(Ordering::Relaxed);
    let ready = match nats_connected {
        None => true,
        Some(connected) => connected && caught_up && !rebuilding,
    };
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not_ready" },
        "natsConnected": nats_connected,
        "caughtUp": caught_up,
        "lastAppliedSequence": status.last_sequence.load(Ordering::Relaxed),
        "lagEvents": status.lag.load(Ordering::Relaxed),
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
    let code = if ready {
        poem::http::StatusCode::OK
    } else {
        poem::http::StatusCode::SERVICE_UNAVAILABLE
    };
    json(code, body)
}

#[handler]
pub fn metrics(state: Data<&Arc<AppState>>) -> Response {
    Response::builder()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(state.metrics.render())
}

fn json(status: poem::http::StatusCode, body: serde_json::Value) -> Response {
    Response::builder()
        .status(status)
        .content_type("application/json")
        .body(body.to_string())
}
