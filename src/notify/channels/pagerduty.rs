//! `pagerduty`: Events API v2 (<https://developer.pagerduty.com/docs/events-api-v2/trigger-events/>):
//! `trigger` when a job enters stuck, missed or failing, `resolve` when it becomes healthy,
//! both with the `dedup_key` `jobstats/<tenantId>/<jobName>`. PagerDuty answers 202
//! `{"status": "success", "dedup_key": …}`; 400 for an invalid event (permanent); 429 when
//! throttled.

use std::time::Duration;

use serde_json::json;

use super::{Failure, Message, Sent};

/// The Events API v2 enqueue URL.
pub const EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// The event, or `None` for a change that neither opens nor closes an incident (to `new`).
pub fn render(
    routing_key: &str,
    severity: &str,
    message: Message<'_>,
) -> Option<serde_json::Value> {
    let change = message.change;
    let dedup_key = super::dedup_key(change);
    if change.state == "healthy" && super::is_trouble(&change.previous_state) {
        return Some(json!({
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": dedup_key,
        }));
    }
    if !super::is_trouble(&change.state) {
        // To healthy from new (nothing was opened), or to new.
        return None;
    }
    let details =
        serde_json::from_slice::<serde_json::Value>(message.raw).unwrap_or_else(|_| json!({}));
    let mut event = json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "payload": {
            "summary": super::slack::truncate(&format!("{}: {}", super::title(change), change.reason), 1024),
            "source": change.job_name,
            "severity": severity,
            "timestamp": change.since.as_deref().unwrap_or(&change.as_of),
            "component": change.job_name,
            "group": change.tenant_id,
            "class": change.state,
            "custom_details": details,
        },
        "client": "jobstats",
    });
    if let Some(link) = message.link {
        event["links"] = json!([{"href": link, "text": "Open in jobstats"}]);
        event["client_url"] = json!(link);
    }
    Some(event)
}

pub async fn send(
    http: &reqwest::Client,
    url: &reqwest::Url,
    routing_key: &str,
    severity: &str,
    timeout: Duration,
    message: Message<'_>,
) -> Result<Sent, Failure> {
    match render(routing_key, severity, message) {
        Some(event) => super::post_json(http.post(url.clone()), &event, timeout).await,
        None => Ok(Sent::NothingToSend),
    }
}
