//! `webhook` (CONTRACT §8): the change as stored, signed with the entry's secret.

use std::time::Duration;

use super::{Failure, Message, Sent};

pub async fn send(
    http: &reqwest::Client,
    url: &reqwest::Url,
    secret: &str,
    timeout: Duration,
    message: Message<'_>,
) -> Result<Sent, Failure> {
    let answer = http
        .post(url.clone())
        .timeout(timeout)
        .header("content-type", "application/json")
        .header(
            "x-jobstats-signature",
            crate::notify::webhooks::signature(secret, message.raw),
        )
        .header("x-jobstats-delivery", message.change.message_id())
        .body(message.raw.to_vec())
        .send()
        .await;
    super::answer(answer).await
}
