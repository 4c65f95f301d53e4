//! `slack`: an incoming webhook (<https://api.slack.com/messaging/webhooks>): `text` (the
//! notification's fallback) and Block Kit `blocks`. Slack answers 200 `ok`; a removed hook
//! 404 `no_service`, a bad payload 400 `invalid_payload` (permanent); 429 when rate limited.

use std::time::Duration;

use serde_json::json;

use super::{Failure, Message, Sent};

pub fn render(message: Message<'_>) -> serde_json::Value {
    let change = message.change;
    let title = super::title(change);
    let since = change.since.as_deref().unwrap_or(&change.as_of);
    let text = match message.link {
        Some(link) => format!("{title}: {} <{link}|Open in jobstats>", change.reason),
        None => format!("{title}: {}", change.reason),
    };
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": truncate(&title, 150), "emoji": false}}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate(&escape(&change.reason), 3000)}}),
        json!({"type": "section", "fields": [
            {"type": "mrkdwn", "text": format!("*Job*\n{}", escape(&change.job_name))},
            {"type": "mrkdwn", "text": format!("*Tenant*\n{}", escape(&change.tenant_id))},
            {"type": "mrkdwn", "text": format!("*State*\n{} (was {})", change.state, change.previous_state)},
            {"type": "mrkdwn", "text": format!("*Since*\n{since}")},
        ]}),
    ];
    if let Some(link) = message.link {
        blocks.push(json!({"type": "actions", "elements": [
            {"type": "button", "text": {"type": "plain_text", "text": "Open in jobstats"}, "url": link}
        ]}));
    }
    json!({"text": text, "blocks": blocks})
}

/// Slack's mrkdwn control characters.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(max - 1).collect();
        cut.push('…');
        cut
    }
}

pub async fn send(
    http: &reqwest::Client,
    url: &reqwest::Url,
    timeout: Duration,
    message: Message<'_>,
) -> Result<Sent, Failure> {
    super::post_json(http.post(url.clone()), &render(message), timeout).await
}
