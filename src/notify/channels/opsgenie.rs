//! `opsgenie`: Alert API v2 (<https://docs.opsgenie.com/docs/alert-api>): create
//! (`POST /v2/alerts`) with `alias` = `jobstats/<tenantId>/<jobName>` when a job enters
//! trouble, close by alias (`POST /v2/alerts/{alias}/close?identifierType=alias`) when it is
//! healthy; header `Authorization: GenieKey <key>`. Opsgenie answers 202 `{"result": "Request
//! will be processed", …}`; 401/403/422 are permanent, 429 throttled.

use std::time::Duration;

use serde_json::json;

use super::{Failure, Message, Sent};

/// The Alert API v2 URL (EU accounts: `https://api.eu.opsgenie.com/v2/alerts`).
pub const ALERTS_URL: &str = "https://api.opsgenie.com/v2/alerts";

/// Where to POST and what, or `None` for a change that neither opens nor closes an alert.
pub fn render(
    alerts_url: &reqwest::Url,
    message: Message<'_>,
) -> Option<(reqwest::Url, serde_json::Value)> {
    let change = message.change;
    let alias = super::dedup_key(change);
    if change.state == "healthy" && super::is_trouble(&change.previous_state) {
        let mut url = alerts_url.clone();
        url.path_segments_mut()
            .expect("an http URL has path segments")
            .pop_if_empty()
            .push(&alias)
            .push("close");
        url.set_query(Some("identifierType=alias"));
        return Some((
            url,
            json!({"source": "jobstats", "user": "jobstats", "note": change.reason}),
        ));
    }
    if !super::is_trouble(&change.state) {
        // To healthy from new (nothing was opened), or to new.
        return None;
    }
    let since = change.since.as_deref().unwrap_or(&change.as_of);
    let mut details = serde_json::Map::new();
    for (key, value) in [
        ("tenantId", change.tenant_id.as_str()),
        ("jobName", change.job_name.as_str()),
        ("state", change.state.as_str()),
        ("previousState", change.previous_state.as_str()),
        ("since", since),
    ] {
        details.insert(key.into(), json!(value));
    }
    details.insert(
        "consecutiveFailures".into(),
        json!(change.consecutive_failures.to_string()),
    );
    if let Some(execution) = &change.execution_id {
        details.insert("executionId".into(), json!(execution));
    }
    if let Some(link) = message.link {
        details.insert("link".into(), json!(link));
    }
    let mut description = change.reason.clone();
    if let Some(link) = message.link {
        description.push_str("\n\n");
        description.push_str(link);
    }
    Some((
        alerts_url.clone(),
        json!({
            "message": super::slack::truncate(&super::title(change), 130),
            "alias": alias,
            "description": super::slack::truncate(&description, 15_000),
            "details": details,
            "source": "jobstats",
            "entity": change.job_name,
            "tags": ["jobstats", change.state],
        }),
    ))
}

pub async fn send(
    http: &reqwest::Client,
    alerts_url: &reqwest::Url,
    api_key: &str,
    timeout: Duration,
    message: Message<'_>,
) -> Result<Sent, Failure> {
    match render(alerts_url, message) {
        Some((url, body)) => {
            let request = http
                .post(url)
                .header("authorization", format!("GenieKey {api_key}"));
            super::post_json(request, &body, timeout).await
        }
        None => Ok(Sent::NothingToSend),
    }
}
