//! Webhooks (CONTRACT §8): each entry of `JOBSTATS_WEBHOOKS_FILE` gets every matching health
//! change POSTed, signed with its secret, from its own durable consumer on `JOB_HEALTH`.
//!
//! The consumer is shared by every replica (`jobstats-webhook-<name>`) and lets one message
//! out at a time (`max_ack_pending` 1): any replica may deliver, a message goes to one of
//! them, and changes arrive in stream order, so in order per job. A message is acknowledged
//! once its receiver answered 2xx, or once it was given up on after `max_attempts` and
//! recorded on `jobstats.webhook-dead.<name>`; while it is retried the consumer is told the
//! work is in progress, so no other replica takes it. A replica that dies mid-delivery leaves
//! it unacknowledged and another (or the restarted one) delivers it: at least once.
//!
//! Delivery runs on its own tasks and never holds up the projector.

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy, DeliverPolicy},
    AckKind,
};
use futures::StreamExt;
use hmac::{KeyInit, Mac};
use serde::Deserialize;

use super::{HealthChange, HEALTH_STREAM, HEALTH_SUBJECTS};
use crate::events::TenantId;
use crate::ingest::Position;
use crate::metrics::{Metrics, WebhookLabels};
use crate::projection::HealthState;

/// `JOBSTATS_WEBHOOKS_FILE` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhooksFile {
    #[serde(default)]
    webhooks: Vec<WebhookEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookEntry {
    name: Option<String>,
    url: String,
    secret: String,
    tenants: Option<Vec<String>>,
    states: Option<Vec<String>>,
    timeout_ms: Option<u64>,
    max_attempts: Option<u32>,
    retry_initial_ms: Option<u64>,
    retry_max_ms: Option<u64>,
}

/// One receiver, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    /// Names its durable consumer and its dead-letter subject.
    pub name: String,
    pub url: reqwest::Url,
    pub secret: String,
    /// `None`: every tenant.
    pub tenants: Option<Vec<TenantId>>,
    /// `None`: every state.
    pub states: Option<Vec<HealthState>>,
    pub timeout: Duration,
    pub max_attempts: u32,
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

impl Webhook {
    /// The URL as it may be shown (consumer descriptions, dead-letter headers): without
    /// credentials or a query string, where receivers often keep a token.
    pub fn shown_url(&self) -> String {
        let mut url = self.url.clone();
        let _ = url.set_username("");
        let _ = url.set_password(None);
        url.set_query(None);
        url.set_fragment(None);
        url.to_string()
    }

    fn wants(&self, change: &HealthChange) -> bool {
        let tenant_ok = self.tenants.as_ref().is_none_or(|tenants| {
            TenantId::parse(&change.tenant_id).is_ok_and(|t| tenants.contains(&t))
        });
        let state_ok = self.states.as_ref().is_none_or(|states| {
            HealthState::parse(&change.state).is_some_and(|s| states.contains(&s))
        });
        tenant_ok && state_ok
    }

    /// The pause before attempt `attempt + 1` (after `attempt` failures): exponential from
    /// `retry_initial`, capped at `retry_max`, with jitter (a random 50–100% of it) so that
    /// many receivers coming back do not get every retry at once.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let full = self
            .retry_initial
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
            .min(self.retry_max);
        full.mul_f64(0.5 + fastrand::f64() * 0.5)
    }
}

/// Reads and validates the webhooks file; every problem names the entry and the key.
pub fn load(path: &Path) -> Result<Vec<Webhook>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("JOBSTATS_WEBHOOKS_FILE {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("JOBSTATS_WEBHOOKS_FILE {}: {e}", path.display()))
}

/// Parses the file's text (see [`load`]).
pub fn parse(text: &str) -> Result<Vec<Webhook>, String> {
    let file: WebhooksFile = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut names = std::collections::HashSet::new();
    let mut webhooks = Vec::new();
    for (index, entry) in file.webhooks.into_iter().enumerate() {
        let webhook = validate(entry).map_err(|e| format!("webhooks[{index}]: {e}"))?;
        if !names.insert(webhook.name.clone()) {
            return Err(format!(
                "webhooks[{index}]: name {:?} is used twice (set `name` to tell them apart)",
                webhook.name
            ));
        }
        webhooks.push(webhook);
    }
    Ok(webhooks)
}

fn validate(entry: WebhookEntry) -> Result<Webhook, String> {
    let url = reqwest::Url::parse(&entry.url).map_err(|e| format!("url {:?}: {e}", entry.url))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "url {:?}: must be an http or https URL with a host",
            entry.url
        ));
    }
    if entry.secret.is_empty() {
        return Err("secret: must not be empty".into());
    }
    let name = match entry.name {
        Some(name) => name,
        None => default_name(&url),
    };
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!("name {name:?}: 1-64 letters, digits, '-' or '_'"));
    }
    let tenants = entry.tenants.as_deref().map(parse_tenants).transpose()?;
    let states = entry.states.as_deref().map(parse_states).transpose()?;
    let ranged =
        |key: &str, value: Option<u64>, default: u64, range: std::ops::RangeInclusive<u64>| {
            let value = value.unwrap_or(default);
            if range.contains(&value) {
                Ok(Duration::from_millis(value))
            } else {
                Err(format!(
                    "{key}: {value} is outside {}..={}",
                    range.start(),
                    range.end()
                ))
            }
        };
    let max_attempts = entry.max_attempts.unwrap_or(12);
    if !(1..=1_000).contains(&max_attempts) {
        return Err(format!("max_attempts: {max_attempts} is outside 1..=1000"));
    }
    Ok(Webhook {
        name,
        url,
        secret: entry.secret,
        tenants,
        states,
        timeout: ranged("timeout_ms", entry.timeout_ms, 10_000, 100..=20_000)?,
        max_attempts,
        retry_initial: ranged(
            "retry_initial_ms",
            entry.retry_initial_ms,
            1_000,
            10..=3_600_000,
        )?,
        retry_max: ranged("retry_max_ms", entry.retry_max_ms, 300_000, 10..=86_400_000)?,
    })
}

fn parse_tenants(list: &[String]) -> Result<Vec<TenantId>, String> {
    list.iter()
        .map(|t| TenantId::parse(t).map_err(|e| format!("tenants: {t:?}: {e}")))
        .collect()
}

fn parse_states(list: &[String]) -> Result<Vec<HealthState>, String> {
    list.iter()
        .map(|s| {
            HealthState::parse(s)
                .filter(|s| *s != HealthState::Unknown)
                .ok_or_else(|| {
                    format!("states: {s:?} is not one of stuck, missed, failing, healthy, new")
                })
        })
        .collect()
}

/// A name that stays the same when entries are reordered: host and a hash of the URL.
fn default_name(url: &reqwest::Url) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(url.as_str().as_bytes());
    let host: String = url
        .host_str()
        .unwrap_or("host")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    format!("{host}-{}", hex(&digest[..4]))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A failed request in words, with its causes (\"connection refused\"), without the URL: it
/// may carry a token in its query.
fn failure_text(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `X-Jobstats-Signature`: `sha256=` and the hex HMAC-SHA256 of the body with the secret.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(body);
    format!("sha256={}", hex(&mac.finalize().into_bytes()))
}

/// Delivers to every webhook until `shutdown`, each on its own task.
pub async fn run(
    client: async_nats::Client,
    webhooks: Vec<Webhook>,
    stream_replicas: usize,
    metrics: std::sync::Arc<Metrics>,
    shutdown: crate::shutdown::Shutdown,
) {
    let http = match reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("jobstats/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(http) => http,
        Err(error) => {
            tracing::error!(%error, "cannot build the webhook HTTP client; webhooks are off");
            return;
        }
    };
    let js = jetstream::new(client);
    let tasks = webhooks.into_iter().map(|webhook| {
        let delivery = Delivery {
            js: js.clone(),
            http: http.clone(),
            webhook,
            stream_replicas,
            metrics: metrics.clone(),
        };
        let shutdown = shutdown.clone();
        tokio::spawn(async move { delivery.run(shutdown).await })
    });
    futures::future::join_all(tasks).await;
}

struct Delivery {
    js: jetstream::Context,
    http: reqwest::Client,
    webhook: Webhook,
    stream_replicas: usize,
    metrics: std::sync::Arc<Metrics>,
}

/// How long a delivery may go without telling JetStream it is still at work.
const ACK_WAIT: Duration = Duration::from_secs(30);

impl Delivery {
    async fn run(self, shutdown: crate::shutdown::Shutdown) {
        self.metrics.set_webhook_lag(&self.webhook.name, None, 0);
        let mut supervisor = crate::retry::Supervisor::new("webhook delivery");
        loop {
            let began = std::time::Instant::now();
            let result = tokio::select! {
                result = self.session() => result,
                _ = shutdown.wait() => return,
            };
            if let Err(error) = result {
                if began.elapsed() > crate::retry::LONG_SESSION {
                    supervisor.succeeded();
                }
                let pause = supervisor.failed(&error, &self.webhook.name);
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.wait() => return,
                }
            }
        }
    }

    async fn session(&self) -> Result<(), String> {
        let stream = self
            .js
            .get_or_create_stream(super::evaluator::health_stream_config(self.stream_replicas))
            .await
            .map_err(|e| format!("stream {HEALTH_STREAM}: {e}"))?;
        self.ensure_dead_delivery_stream(&stream).await?;
        let durable = format!("jobstats-webhook-{}", self.webhook.name);
        let consumer = stream
            .get_or_create_consumer(
                &durable,
                pull::Config {
                    durable_name: Some(durable.clone()),
                    description: Some(format!("jobstats webhook {}", self.webhook.shown_url())),
                    filter_subject: HEALTH_SUBJECTS.to_owned(),
                    // A new webhook gets changes from now on, not the stream's history.
                    deliver_policy: DeliverPolicy::New,
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: ACK_WAIT,
                    max_ack_pending: 1,
                    inactive_threshold: Duration::from_secs(7 * 86_400),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| format!("consumer {durable}: {e}"))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| format!("consumer {durable}: {e}"))?;
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| format!("consumer {durable}: {e}"))?;
            // One message out at a time, so the one in hand is the oldest undelivered and
            // `pending` counts those behind it.
            let behind = message.info().map(|info| info.pending).unwrap_or(0);
            let published = Position::of(&message).map(|p| p.published_at_ms).ok();
            self.metrics
                .set_webhook_lag(&self.webhook.name, published.or(Some(1)), behind);
            self.deliver(message, &consumer).await?;
            self.metrics
                .set_webhook_lag(&self.webhook.name, None, behind);
        }
        Err(format!("consumer {durable}: message stream ended"))
    }

    /// Where deliveries given up on are kept. Before `JOBSTATS_DEAD_DELIVERIES`, `JOB_HEALTH`
    /// itself held their subjects (1,000 per webhook, no age limit); such a stream keeps them
    /// until an operator moves them (two streams cannot share subjects).
    async fn ensure_dead_delivery_stream(
        &self,
        health: &jetstream::stream::Stream,
    ) -> Result<(), String> {
        let held_by_health = health
            .cached_info()
            .config
            .subjects
            .iter()
            .any(|s| s == super::WEBHOOK_DEAD_SUBJECTS);
        if held_by_health {
            tracing::warn!(
                "JOB_HEALTH holds {}: dead deliveries stay there (1,000 per webhook); remove that \
                 subject from JOB_HEALTH to keep them {} days in {}",
                super::WEBHOOK_DEAD_SUBJECTS,
                super::DEAD_DELIVERY_MAX_AGE.as_secs() / 86_400,
                super::DEAD_DELIVERY_STREAM
            );
            return Ok(());
        }
        self.js
            .get_or_create_stream(super::evaluator::dead_delivery_stream_config(
                self.stream_replicas,
            ))
            .await
            .map(|_| ())
            .map_err(|e| format!("stream {}: {e}", super::DEAD_DELIVERY_STREAM))
    }

    fn count(&self, outcome: &str) {
        self.metrics
            .webhook_deliveries
            .get_or_create(&WebhookLabels {
                webhook: self.webhook.name.clone(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Delivers one message (retrying) and acknowledges it.
    async fn deliver(
        &self,
        message: jetstream::Message,
        consumer: &jetstream::consumer::Consumer<pull::Config>,
    ) -> Result<(), String> {
        let ack = |kind: AckKind| {
            let message = &message;
            async move {
                message
                    .ack_with(kind)
                    .await
                    .map_err(|e| format!("acknowledging: {e}"))
            }
        };
        let change = match serde_json::from_slice::<HealthChange>(&message.payload) {
            Ok(change) => change,
            Err(error) => {
                tracing::warn!(%error, subject = %message.subject, "JOB_HEALTH message is not a health change; skipped");
                return ack(AckKind::Ack).await;
            }
        };
        if !self.webhook.wants(&change) {
            self.count("filtered");
            return ack(AckKind::Ack).await;
        }
        let published_at_ms = Position::of(&message).map(|p| p.published_at_ms).ok();
        let signature = signature(&self.webhook.secret, &message.payload);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let answer = self
                .http
                .post(self.webhook.url.clone())
                .timeout(self.webhook.timeout)
                .header("content-type", "application/json")
                .header("x-jobstats-signature", &signature)
                .header("x-jobstats-delivery", change.message_id())
                .body(message.payload.clone())
                .send()
                .await;
            let failure = match answer {
                Ok(response) if response.status().is_success() => None,
                Ok(response) => Some(format!("HTTP {}", response.status().as_u16())),
                Err(error) => Some(failure_text(error)),
            };
            let Some(failure) = failure else {
                self.count("delivered");
                if let Some(published) = published_at_ms {
                    let elapsed = chrono::Utc::now().timestamp_millis() - published;
                    self.metrics
                        .webhook_delivery_seconds
                        .observe(elapsed.max(0) as f64 / 1e3);
                }
                return ack(AckKind::Ack).await;
            };
            self.count("failed_attempt");
            tracing::warn!(webhook = %self.webhook.name, attempt, %failure, "webhook delivery failed");
            if attempt >= self.webhook.max_attempts {
                self.dead_letter(&message, &change, attempt, &failure)
                    .await?;
                self.count("dead_lettered");
                return ack(AckKind::Ack).await;
            }
            // Sleep in slices under the ack wait, telling JetStream the message is in hand.
            let mut pause = self.webhook.backoff(attempt);
            while !pause.is_zero() {
                let slice = pause.min(ACK_WAIT / 3);
                tokio::time::sleep(slice).await;
                pause -= slice;
                ack(AckKind::Progress).await?;
            }
            self.report_backlog(consumer, published_at_ms).await;
        }
    }

    /// While a change keeps failing: what piled up behind it, for the operator's view.
    async fn report_backlog(
        &self,
        consumer: &jetstream::consumer::Consumer<pull::Config>,
        published_at_ms: Option<i64>,
    ) {
        if let Ok(info) = consumer.get_info().await {
            self.metrics.set_webhook_lag(
                &self.webhook.name,
                published_at_ms.or(Some(1)),
                info.num_pending,
            );
        }
    }

    /// Records a change given up on, with why, where anyone can read or replay it.
    async fn dead_letter(
        &self,
        message: &jetstream::Message,
        change: &HealthChange,
        attempts: u32,
        failure: &str,
    ) -> Result<(), String> {
        let mut headers = async_nats::HeaderMap::new();
        let id = format!("{}/{}", self.webhook.name, change.message_id());
        headers.insert("Nats-Msg-Id", id.as_str());
        headers.insert("Jobstats-Webhook-Url", self.webhook.shown_url().as_str());
        headers.insert("Jobstats-Attempts", attempts.to_string().as_str());
        let failure: String = failure
            .chars()
            .filter(|c| !c.is_control())
            .take(512)
            .collect();
        headers.insert("Jobstats-Last-Error", failure.as_str());
        self.js
            .publish_with_headers(
                format!("jobstats.webhook-dead.{}", self.webhook.name),
                headers,
                message.payload.clone(),
            )
            .await
            .map_err(|e| format!("recording a dead letter: {e}"))?
            .await
            .map_err(|e| format!("recording a dead letter: {e}"))?;
        tracing::error!(webhook = %self.webhook.name, attempts, %failure, id, "webhook delivery given up; recorded on jobstats.webhook-dead");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hex_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_file_is_validated_with_errors_naming_the_entry_and_key() {
        let ok = parse(
            r#"
            [[webhooks]]
            url = "https://hooks.example.com/jobstats"
            secret = "s3cret"
            states = ["missed", "failing"]

            [[webhooks]]
            name = "ops"
            url = "http://127.0.0.1:9000/"
            secret = "x"
            tenants = ["3f0c7f7e-8a51-4a52-9f7e-0d6a4c1b2e11"]
            retry_initial_ms = 50
            "#,
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert!(
            ok[0].name.starts_with("hooks-example-com-"),
            "{}",
            ok[0].name
        );
        assert_eq!(
            ok[0].states,
            Some(vec![HealthState::Missed, HealthState::Failing])
        );
        assert_eq!(
            (ok[1].max_attempts, ok[1].retry_initial),
            (12, Duration::from_millis(50))
        );
        for (text, fragment) in [
            ("[[webhooks]]\nurl = \"ftp://x/\"\nsecret = \"s\"", "webhooks[0]: url"),
            ("[[webhooks]]\nurl = \"http://x/\"\nsecret = \"\"", "secret"),
            ("[[webhooks]]\nurl = \"http://x/\"\nsecret = \"s\"\nstates = [\"late\"]", "states: \"late\""),
            ("[[webhooks]]\nurl = \"http://x/\"\nsecret = \"s\"\ntenants = [\"acme\"]", "tenants"),
            ("[[webhooks]]\nurl = \"http://x/\"\nsecret = \"s\"\nretries = 3", "unknown field `retries`"),
            ("[[webhooks]]\nurl = \"http://x/\"\nsecret = \"s\"\n[[webhooks]]\nurl = \"http://x/\"\nsecret = \"t\"", "used twice"),
        ] {
            let error = parse(text).unwrap_err();
            assert!(error.contains(fragment), "{text:?}: {error}");
        }
    }

    #[test]
    fn retries_back_off_exponentially_with_jitter_up_to_the_cap() {
        let webhook = &parse("[[webhooks]]\nurl = \"http://x/\"\nsecret = \"s\"\nretry_initial_ms = 1000\nretry_max_ms = 5000").unwrap()[0];
        for (attempt, full) in [(1, 1_000), (2, 2_000), (3, 4_000), (4, 5_000), (30, 5_000)] {
            let pause = webhook.backoff(attempt).as_millis() as u64;
            assert!(
                (full / 2..=full).contains(&pause),
                "attempt {attempt}: {pause} ms"
            );
        }
    }
}
