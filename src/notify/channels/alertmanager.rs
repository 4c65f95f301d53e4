//! `alertmanager`: API v2 (`POST /api/v2/alerts`,
//! <https://github.com/prometheus/alertmanager/blob/main/api/v2/openapi.yaml>): one alert per
//! job in trouble, labelled `alertname="JobstatsJobUnhealthy"`, `tenant`, `job`, `state` and
//! the job's labels; `startsAt` = since. Alertmanager resolves an alert it has not heard of
//! for its `resolve_timeout`, so [`super::follow`] re-posts every firing alert each
//! `resend_ms`; on healthy the alert is posted once more with `endsAt`.

use std::time::Duration;

use serde_json::json;

use super::{Failure, Message, Sent};

/// The alerts for one change: firing for trouble, resolved (`endsAt` = the change's since)
/// for the trouble it leaves. The `state` label is part of an alert's identity, so a job going
/// from stuck to failing resolves the stuck alert and fires a failing one.
pub fn render(message: Message<'_>) -> Vec<serde_json::Value> {
    let change = message.change;
    let since = change.since.as_deref().unwrap_or(&change.as_of);
    let mut alerts = Vec::new();
    if super::is_trouble(&change.previous_state) && change.previous_state != change.state {
        let mut resolved = alert(message, &change.previous_state);
        resolved["endsAt"] = json!(since);
        alerts.push(resolved);
    }
    if super::is_trouble(&change.state) {
        let mut firing = alert(message, &change.state);
        firing["startsAt"] = json!(since);
        alerts.push(firing);
    }
    alerts
}

fn alert(message: Message<'_>, state: &str) -> serde_json::Value {
    let change = message.change;
    let since = change.since.as_deref().unwrap_or(&change.as_of);
    let mut labels = serde_json::Map::new();
    for (key, value) in message.labels {
        labels.insert(key.clone(), json!(value));
    }
    labels.insert("alertname".into(), json!("JobstatsJobUnhealthy"));
    labels.insert("tenant".into(), json!(change.tenant_id));
    labels.insert("job".into(), json!(change.job_name));
    labels.insert("state".into(), json!(state));
    let mut alert = json!({
        "labels": labels,
        "annotations": {
            "summary": change.reason,
            "description": format!(
                "{} (tenant {}) is {} since {since}: {}",
                change.job_name, change.tenant_id, change.state, change.reason
            ),
        },
    });
    if let Some(link) = message.link {
        alert["generatorURL"] = json!(link);
    }
    alert
}

/// The API's alerts URL under the configured Alertmanager.
pub fn alerts_url(base: &reqwest::Url) -> reqwest::Url {
    let mut url = base.clone();
    url.path_segments_mut()
        .expect("an http URL has path segments")
        .pop_if_empty()
        .extend(["api", "v2", "alerts"]);
    url
}

/// Posts the alerts of these changes in one request.
pub async fn send(
    http: &reqwest::Client,
    base: &reqwest::Url,
    timeout: Duration,
    messages: &[Message<'_>],
) -> Result<Sent, Failure> {
    let alerts: Vec<serde_json::Value> = messages.iter().flat_map(|m| render(*m)).collect();
    if alerts.is_empty() {
        return Ok(Sent::NothingToSend);
    }
    super::post_json(http.post(alerts_url(base)), &json!(alerts), timeout).await
}
