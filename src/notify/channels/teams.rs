//! `teams`: a Workflows webhook ("Post to a channel when a webhook request is received"),
//! which takes a message with one Adaptive Card attachment
//! (<https://learn.microsoft.com/en-us/microsoftteams/platform/webhooks-and-connectors/how-to/connectors-using>).
//! Workflows answer 202 Accepted.

use std::time::Duration;

use serde_json::json;

use super::{Failure, Message, Sent};

pub fn render(message: Message<'_>) -> serde_json::Value {
    let change = message.change;
    let since = change.since.as_deref().unwrap_or(&change.as_of);
    let color = if change.state == "healthy" {
        "Good"
    } else {
        "Attention"
    };
    let mut card = json!({
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": [
            {"type": "TextBlock", "text": super::title(change), "size": "Large", "weight": "Bolder", "color": color, "wrap": true},
            {"type": "TextBlock", "text": change.reason, "wrap": true},
            {"type": "FactSet", "facts": [
                {"title": "Job", "value": change.job_name},
                {"title": "Tenant", "value": change.tenant_id},
                {"title": "State", "value": format!("{} (was {})", change.state, change.previous_state)},
                {"title": "Since", "value": since},
            ]},
        ],
    });
    if let Some(link) = message.link {
        card["actions"] =
            json!([{"type": "Action.OpenUrl", "title": "Open in jobstats", "url": link}]);
    }
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": card,
        }],
    })
}

pub async fn send(
    http: &reqwest::Client,
    url: &reqwest::Url,
    timeout: Duration,
    message: Message<'_>,
) -> Result<Sent, Failure> {
    super::post_json(http.post(url.clone()), &render(message), timeout).await
}
