//! What a channel sends while a state holds, from each replica's own view of the last change
//! of every job (an ordered consumer on `JOB_HEALTH` from the last message per subject, so a
//! restarted or another replica rebuilds it from the stream):
//!
//! - `alertmanager`: every firing alert is re-posted each `resend_ms` (Alertmanager resolves
//!   an alert it has not heard of for its `resolve_timeout`); every replica re-posts, which
//!   Alertmanager merges into one alert, so a killed replica's alerts keep firing. Seeing a
//!   job leave trouble, the follower posts the resolution too, so its own last word on the
//!   job is never a stale firing.
//! - reminders (`repeat_ms`): while a job stays in the same trouble state, the `n`-th
//!   reminder is due at n × repeat after the change was stored on `JOB_HEALTH`. One replica sends it: each due reminder is claimed
//!   in the `JOBSTATS_REMINDERS` bucket (`create` succeeds once); a replica that dies between
//!   the claim and the send loses that one reminder, never duplicates it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy, kv};
use futures::StreamExt;

use super::{Channel, Kind, Message};
use crate::metrics::Metrics;
use crate::notify::{HealthChange, HEALTH_STREAM, HEALTH_SUBJECTS};

/// The bucket reminders are claimed in.
pub const REMINDERS_BUCKET: &str = "JOBSTATS_REMINDERS";

/// The last change of one job.
struct Tracked {
    change: HealthChange,
    raw: Vec<u8>,
    labels: std::collections::BTreeMap<String, String>,
    /// When the change was stored on `JOB_HEALTH`: reminders count from there (the same
    /// instant for every replica; `since` may lie long before the change was announced).
    published_ms: i64,
    /// The last reminder this replica sent or saw claimed.
    reminded: u64,
}

impl Tracked {
    fn message<'a>(&'a self, link: Option<&'a str>) -> Message<'a> {
        Message {
            change: &self.change,
            raw: &self.raw,
            labels: &self.labels,
            link,
        }
    }

    /// A silenced job in trouble gets no re-posts and no reminders.
    fn silenced(&self) -> bool {
        super::is_silenced_trouble(&self.change, &self.raw)
    }
}

pub async fn run(
    js: jetstream::Context,
    http: reqwest::Client,
    channel: Arc<Channel>,
    stream_replicas: usize,
    metrics: Arc<Metrics>,
    shutdown: crate::shutdown::Shutdown,
) {
    let follower = Follower {
        js,
        http,
        channel,
        stream_replicas,
        metrics,
    };
    let mut supervisor = crate::retry::Supervisor::new("channel follower");
    loop {
        let began = std::time::Instant::now();
        let result = tokio::select! {
            result = follower.session() => result,
            _ = shutdown.wait() => return,
        };
        if let Err(error) = result {
            if began.elapsed() > crate::retry::LONG_SESSION {
                supervisor.succeeded();
            }
            let pause = supervisor.failed(&error, &follower.channel.name);
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.wait() => return,
            }
        }
    }
}

struct Follower {
    js: jetstream::Context,
    http: reqwest::Client,
    channel: Arc<Channel>,
    stream_replicas: usize,
    metrics: Arc<Metrics>,
}

impl Follower {
    async fn session(&self) -> Result<(), String> {
        let stream = self
            .js
            .get_or_create_stream(crate::notify::evaluator::health_stream_config(
                self.stream_replicas,
            ))
            .await
            .map_err(|e| format!("stream {HEALTH_STREAM}: {e}"))?;
        let reminders = match self.channel.repeat {
            Some(_) => Some(self.reminders_bucket().await?),
            None => None,
        };
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: HEALTH_SUBJECTS.to_owned(),
                deliver_policy: DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("following {HEALTH_STREAM}: {e}"))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| format!("following {HEALTH_STREAM}: {e}"))?;
        let mut jobs: HashMap<String, Tracked> = HashMap::new();
        let resend = match self.channel.kind {
            Kind::Alertmanager { resend, .. } => resend,
            // Unused: a far tick.
            _ => Duration::from_secs(86_400),
        };
        let mut resend_tick = tokio::time::interval(resend);
        resend_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut remind_tick = tokio::time::interval(Duration::from_secs(1));
        remind_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut caught_up = false;
        loop {
            tokio::select! {
                message = messages.next() => {
                    let message = message
                        .ok_or_else(|| format!("following {HEALTH_STREAM}: ended"))?
                        .map_err(|e| format!("following {HEALTH_STREAM}: {e}"))?;
                    let pending = message.info().map(|i| i.pending).unwrap_or(0);
                    let published_ms = crate::ingest::Position::of(&message)
                        .map(|p| p.published_at_ms)
                        .unwrap_or_else(|_| chrono::Utc::now().timestamp_millis());
                    self.track(&mut jobs, &message.subject, &message.payload, published_ms)
                        .await;
                    if pending == 0 && !caught_up {
                        // Rebuilt from the stream: post what fires now, not a resend later.
                        caught_up = true;
                        self.resend(&jobs).await;
                    }
                }
                _ = resend_tick.tick(), if caught_up && matches!(self.channel.kind, Kind::Alertmanager { .. }) => {
                    self.resend(&jobs).await;
                }
                _ = remind_tick.tick(), if caught_up && reminders.is_some() => {
                    if let Some(bucket) = &reminders {
                        self.remind(&mut jobs, bucket).await;
                    }
                }
            }
        }
    }

    async fn reminders_bucket(&self) -> Result<kv::Store, String> {
        match self.js.get_key_value(REMINDERS_BUCKET).await {
            Ok(kv) => Ok(kv),
            Err(_) => self
                .js
                .create_key_value(kv::Config {
                    bucket: REMINDERS_BUCKET.to_owned(),
                    description: "jobstats: reminders claimed, one sender across replicas"
                        .to_owned(),
                    history: 1,
                    max_age: Duration::from_secs(30 * 86_400),
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: self.stream_replicas.max(1),
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("bucket {REMINDERS_BUCKET}: {e}")),
        }
    }

    /// Records a job's last change; for Alertmanager, a job leaving trouble is resolved here
    /// too (see the module's doc).
    async fn track(
        &self,
        jobs: &mut HashMap<String, Tracked>,
        subject: &str,
        raw: &[u8],
        published_ms: i64,
    ) {
        let Ok(change) = serde_json::from_slice::<HealthChange>(raw) else {
            return;
        };
        let labels = super::labels_of(raw);
        let tracked = Tracked {
            change,
            raw: raw.to_vec(),
            labels,
            published_ms,
            reminded: 0,
        };
        let was_firing = jobs
            .get(subject)
            .is_some_and(|t| super::is_trouble(&t.change.state));
        let wanted = self.wanted(&tracked);
        if was_firing && wanted && matches!(self.channel.kind, Kind::Alertmanager { .. }) {
            let link = self.channel.link(&tracked.change);
            if let Kind::Alertmanager { url, .. } = &self.channel.kind {
                let sent = super::alertmanager::send(
                    &self.http,
                    url,
                    self.channel.retry.timeout,
                    &[tracked.message(link.as_deref())],
                )
                .await;
                if let Err(failure) = sent {
                    tracing::warn!(channel = %self.channel.name, failure = failure.text(), "Alertmanager resolution not posted (delivery retries it)");
                }
            }
        }
        jobs.insert(subject.to_owned(), tracked);
    }

    fn wanted(&self, tracked: &Tracked) -> bool {
        self.channel.filters.wants(&tracked.change, &tracked.labels)
    }

    /// Re-posts every firing alert in one request.
    async fn resend(&self, jobs: &HashMap<String, Tracked>) {
        let Kind::Alertmanager { url, .. } = &self.channel.kind else {
            return;
        };
        let links: Vec<(&Tracked, Option<String>)> = jobs
            .values()
            .filter(|t| super::is_trouble(&t.change.state) && !t.silenced() && self.wanted(t))
            .map(|t| (t, self.channel.link(&t.change)))
            .collect();
        if links.is_empty() {
            return;
        }
        let messages: Vec<Message<'_>> = links
            .iter()
            .map(|(t, link)| t.message(link.as_deref()))
            .collect();
        match super::alertmanager::send(&self.http, url, self.channel.retry.timeout, &messages)
            .await
        {
            Ok(_) => self
                .metrics
                .count_channel(&self.channel.name, "alertmanager", "resent"),
            Err(failure) => {
                self.metrics
                    .count_channel(&self.channel.name, "alertmanager", "resend_failed");
                tracing::warn!(channel = %self.channel.name, failure = failure.text(), "Alertmanager re-post failed; the next one retries");
            }
        }
    }

    /// Sends the reminders that are due and not claimed by another replica.
    async fn remind(&self, jobs: &mut HashMap<String, Tracked>, bucket: &kv::Store) {
        let Some(repeat) = self.channel.repeat else {
            return;
        };
        let now = chrono::Utc::now().timestamp_millis();
        for tracked in jobs.values_mut() {
            if !super::is_trouble(&tracked.change.state) || tracked.silenced() {
                continue;
            }
            let wanted = self.channel.filters.wants(&tracked.change, &tracked.labels);
            let due = ((now - tracked.published_ms).max(0) as u64) / repeat.as_millis() as u64;
            if !wanted || due == 0 || due <= tracked.reminded {
                continue;
            }
            tracked.reminded = due;
            let key = reminder_key(&self.channel.name, &tracked.change.message_id(), due);
            if bucket.create(&key, Vec::new().into()).await.is_err() {
                // Another replica claimed it (or the bucket is away: better none than two).
                continue;
            }
            let link = self.channel.link(&tracked.change);
            let outcome =
                super::send(&self.channel, &self.http, tracked.message(link.as_deref())).await;
            let kind = self.channel.kind.as_str();
            match outcome {
                Ok(_) => self
                    .metrics
                    .count_channel(&self.channel.name, kind, "reminded"),
                Err(failure) => {
                    self.metrics
                        .count_channel(&self.channel.name, kind, "reminder_failed");
                    tracing::warn!(channel = %self.channel.name, failure = failure.text(), "reminder not delivered");
                }
            }
        }
    }
}

/// A KV key for the `n`-th reminder of a change on a channel.
fn reminder_key(channel: &str, message_id: &str, n: u64) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{channel}/{message_id}").as_bytes());
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("{channel}.{hex}.{n}")
}
