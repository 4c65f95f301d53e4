//! The delivery of every channel (CONTRACT §8, §11): one loop, the per-kind part is
//! [`super::send`].
//!
//! The consumer is shared by every replica (`Channel::durable`) and lets one message out at
//! a time (`max_ack_pending` 1): any replica may deliver, a message goes to one of them, and
//! changes arrive in stream order, so in order per job. A message is acknowledged once its
//! receiver took it, or once it was given up on (after `max_attempts`, or at once when the
//! receiver refused it for good) and recorded on `jobstats.webhook-dead.<name>`; while it is
//! retried the consumer is told the work is in progress, so no other replica takes it. A
//! replica that dies mid-delivery leaves it unacknowledged and another (or the restarted one)
//! delivers it: at least once. Within a replica nothing is sent twice: an attempt in flight
//! keeps telling JetStream it is at work (a slow SMTP exchange can outlast the ack wait, and
//! JetStream would hand the message out again), and a redelivery of a sequence this replica
//! already acknowledged is acknowledged again without sending.
//!
//! Delivery runs on its own tasks and never holds up the projector.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy, DeliverPolicy},
    AckKind,
};
use futures::StreamExt;

use super::{Channel, Failure, Kind, Message, Sent};
use crate::ingest::Position;
use crate::metrics::Metrics;
use crate::notify::{HealthChange, HEALTH_STREAM, HEALTH_SUBJECTS};

/// How long a delivery may go without telling JetStream it is still at work.
const ACK_WAIT: Duration = Duration::from_secs(30);

pub struct Delivery {
    pub js: jetstream::Context,
    pub http: reqwest::Client,
    pub channel: Arc<Channel>,
    pub stream_replicas: usize,
    pub metrics: Arc<Metrics>,
    /// The highest `JOB_HEALTH` sequence this replica acknowledged for the channel.
    pub acknowledged: AtomicU64,
}

impl Delivery {
    pub async fn run(self, shutdown: crate::shutdown::Shutdown) {
        self.metrics.set_webhook_lag(&self.channel.name, None, 0);
        let mut supervisor = crate::retry::Supervisor::new("channel delivery");
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
                let pause = supervisor.failed(&error, &self.channel.name);
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
            .get_or_create_stream(crate::notify::evaluator::health_stream_config(
                self.stream_replicas,
            ))
            .await
            .map_err(|e| format!("stream {HEALTH_STREAM}: {e}"))?;
        ensure_dead_delivery_stream(&self.js, &stream, self.stream_replicas).await?;
        let durable = self.channel.durable();
        let consumer = stream
            .get_or_create_consumer(
                &durable,
                pull::Config {
                    durable_name: Some(durable.clone()),
                    description: Some(format!(
                        "jobstats {} {}",
                        self.channel.kind.as_str(),
                        self.channel.kind.shown_target()
                    )),
                    filter_subject: HEALTH_SUBJECTS.to_owned(),
                    // A new channel gets changes from now on, not the stream's history.
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
                .set_webhook_lag(&self.channel.name, published.or(Some(1)), behind);
            self.deliver(message, &consumer).await?;
            self.metrics
                .set_webhook_lag(&self.channel.name, None, behind);
        }
        Err(format!("consumer {durable}: message stream ended"))
    }

    fn count(&self, outcome: &str) {
        self.metrics
            .count_channel(&self.channel.name, self.channel.kind.as_str(), outcome);
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
        let sequence = message.info().map(|info| info.stream_sequence).unwrap_or(0);
        if sequence != 0 && sequence <= self.acknowledged.load(Ordering::Relaxed) {
            // Handed out again although it was acknowledged here (the ack was lost, or it
            // arrived after the ack wait): it was dealt with once already.
            self.count("redelivery_skipped");
            return ack(AckKind::Ack).await;
        }
        let acknowledge = |kind: AckKind| {
            let ack = &ack;
            async move {
                ack(kind).await?;
                self.acknowledged.fetch_max(sequence, Ordering::Relaxed);
                Ok::<(), String>(())
            }
        };
        let change = match serde_json::from_slice::<HealthChange>(&message.payload) {
            Ok(change) => change,
            Err(error) => {
                tracing::warn!(%error, subject = %message.subject, "JOB_HEALTH message is not a health change; skipped");
                return acknowledge(AckKind::Ack).await;
            }
        };
        let labels = super::labels_of(&message.payload);
        if !self.channel.filters.wants(&change, &labels) {
            self.count("filtered");
            return acknowledge(AckKind::Ack).await;
        }
        if super::is_silenced_trouble(&change, &message.payload) {
            self.count("silenced");
            return acknowledge(AckKind::Ack).await;
        }
        let published_at_ms = Position::of(&message).map(|p| p.published_at_ms).ok();
        let link = self.channel.link(&change);
        let outgoing = Message {
            change: &change,
            raw: &message.payload,
            labels: &labels,
            link: link.as_deref(),
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let failure = match self.send_telling_progress(outgoing, &ack).await? {
                Ok(Sent::NothingToSend) => {
                    self.count("nothing_to_send");
                    return acknowledge(AckKind::Ack).await;
                }
                Ok(Sent::Answered(_)) => {
                    self.count("delivered");
                    if let Some(published) = published_at_ms {
                        let elapsed = chrono::Utc::now().timestamp_millis() - published;
                        self.metrics.observe_channel_latency(
                            &self.channel.name,
                            self.channel.kind.as_str(),
                            elapsed.max(0) as f64 / 1e3,
                        );
                    }
                    return acknowledge(AckKind::Ack).await;
                }
                Err(failure) => failure,
            };
            self.count("failed_attempt");
            tracing::warn!(channel = %self.channel.name, kind = self.channel.kind.as_str(), attempt, failure = failure.text(), "delivery failed");
            let permanent = matches!(failure, Failure::Permanent(_));
            if permanent || attempt >= self.channel.retry.max_attempts {
                dead_letter(
                    &self.js,
                    &self.channel,
                    &message.payload,
                    &change,
                    attempt,
                    failure.text(),
                )
                .await?;
                self.count(if permanent {
                    "refused"
                } else {
                    "dead_lettered"
                });
                return acknowledge(AckKind::Ack).await;
            }
            // Sleep in slices under the ack wait, telling JetStream the message is in hand.
            let mut pause = self.channel.retry.backoff(attempt);
            while !pause.is_zero() {
                let slice = pause.min(ACK_WAIT / 3);
                tokio::time::sleep(slice).await;
                pause -= slice;
                ack(AckKind::Progress).await?;
            }
            self.report_backlog(consumer, published_at_ms).await;
        }
    }

    /// One attempt, with a progress ack every third of the ack wait while it is in flight.
    async fn send_telling_progress<F, A>(
        &self,
        outgoing: Message<'_>,
        ack: &F,
    ) -> Result<Result<Sent, Failure>, String>
    where
        F: Fn(AckKind) -> A,
        A: std::future::Future<Output = Result<(), String>>,
    {
        let send = super::send(&self.channel, &self.http, outgoing);
        tokio::pin!(send);
        let mut ticks = tokio::time::interval(ACK_WAIT / 3);
        ticks.tick().await;
        loop {
            tokio::select! {
                result = &mut send => return Ok(result),
                _ = ticks.tick() => ack(AckKind::Progress).await?,
            }
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
                &self.channel.name,
                published_at_ms.or(Some(1)),
                info.num_pending,
            );
        }
    }
}

/// Where deliveries given up on are kept. Before `JOBSTATS_DEAD_DELIVERIES`, `JOB_HEALTH`
/// itself held their subjects (1,000 per webhook, no age limit); such a stream keeps them
/// until an operator moves them (two streams cannot share subjects).
async fn ensure_dead_delivery_stream(
    js: &jetstream::Context,
    health: &jetstream::stream::Stream,
    replicas: usize,
) -> Result<(), String> {
    use crate::notify::{DEAD_DELIVERY_MAX_AGE, DEAD_DELIVERY_STREAM, WEBHOOK_DEAD_SUBJECTS};
    let held_by_health = health
        .cached_info()
        .config
        .subjects
        .iter()
        .any(|s| s == WEBHOOK_DEAD_SUBJECTS);
    if held_by_health {
        tracing::warn!(
            "JOB_HEALTH holds {WEBHOOK_DEAD_SUBJECTS}: dead deliveries stay there (1,000 per \
             webhook); remove that subject from JOB_HEALTH to keep them {} days in \
             {DEAD_DELIVERY_STREAM}",
            DEAD_DELIVERY_MAX_AGE.as_secs() / 86_400,
        );
        return Ok(());
    }
    js.get_or_create_stream(crate::notify::evaluator::dead_delivery_stream_config(
        replicas,
    ))
    .await
    .map(|_| ())
    .map_err(|e| format!("stream {DEAD_DELIVERY_STREAM}: {e}"))
}

/// Records a change given up on, with why, where anyone can read or replay it.
async fn dead_letter(
    js: &jetstream::Context,
    channel: &Channel,
    payload: &[u8],
    change: &HealthChange,
    attempts: u32,
    failure: &str,
) -> Result<(), String> {
    let mut headers = async_nats::HeaderMap::new();
    let id = format!("{}/{}", channel.name, change.message_id());
    headers.insert("Nats-Msg-Id", id.as_str());
    let target = channel.kind.shown_target();
    // The webhook header keeps its name; every kind says where it was going.
    if matches!(channel.kind, Kind::Webhook { .. }) {
        headers.insert("Jobstats-Webhook-Url", target.as_str());
    }
    headers.insert("Jobstats-Channel-Kind", channel.kind.as_str());
    headers.insert("Jobstats-Channel-Target", target.as_str());
    headers.insert("Jobstats-Attempts", attempts.to_string().as_str());
    let failure: String = failure
        .chars()
        .filter(|c| !c.is_control())
        .take(512)
        .collect();
    headers.insert("Jobstats-Last-Error", failure.as_str());
    js.publish_with_headers(channel.dead_subject(), headers, payload.to_vec().into())
        .await
        .map_err(|e| format!("recording a dead letter: {e}"))?
        .await
        .map_err(|e| format!("recording a dead letter: {e}"))?;
    tracing::error!(channel = %channel.name, attempts, %failure, id, "delivery given up; recorded on jobstats.webhook-dead");
    Ok(())
}
