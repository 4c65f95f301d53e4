//! The health evaluator inside `serve`: it follows the projection and publishes each change of
//! a job's health state to `JOB_HEALTH` (CONTRACT §8).
//!
//! What it judges, and when:
//! - jobs touched by a commit, as soon as the projector reports them;
//! - a job whose state the clock alone can change (a fire + grace, a run passing its maximum
//!   run time) at that instant, from a timer per job: no scan of every job per tick;
//! - every job once the announced states are loaded, and again after a rebuild swapped the
//!   database in (its states equal the old file's, so that publishes nothing new).
//!
//! It judges only while the projector is caught up and the stream is reachable, and then at
//! the current time: a lagging projection never announces a `missed` for a run it has not
//! applied yet, and a change that happened while the service was down or behind is announced
//! once it has caught up. What was announced last is read back from the stream (last message
//! per job subject), so it survives restarts and is shared by every replica.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy};
use futures::StreamExt;

use super::{change, next_clock_change, HealthChange, HEALTH_STREAM, HEALTH_SUBJECTS};
use crate::events::TenantId;
use crate::ingest::Position;
use crate::metrics::{Metrics, ProjectorStatus, StateLabel};
use crate::projection::{HealthState, Judgement};
use crate::store::{CurrentReader, ReadPool};
use crate::stream::NatsError;

/// A job: tenant and name.
pub use crate::ingest::touched::JobKey;

/// How long after a clock-driven instant the job is judged, so that an event published just
/// before it (a run starting at the last moment of its grace) has been applied.
const SETTLE_MS: i64 = 500;
/// How often conditions (caught up, reachable) are looked at while nothing else happens.
const IDLE_TICK: Duration = Duration::from_secs(1);

pub use crate::ingest::touched::TouchedJobs;

/// What the evaluator runs with.
#[derive(Clone)]
pub struct EvaluatorConfig {
    /// Replicas of `JOB_HEALTH` when this service creates it (as for the events stream).
    pub stream_replicas: usize,
    /// `JOBSTATS_MAX_RUNTIME` in ms.
    pub default_max_runtime_ms: i64,
}

/// What the evaluator shares with the rest of `serve`.
#[derive(Clone)]
pub struct EvaluatorHandles {
    pub readers: Arc<CurrentReader>,
    pub status: Arc<ProjectorStatus>,
    pub metrics: Arc<Metrics>,
    pub touched: Arc<TouchedJobs>,
    /// Where the announced states are shown to the per-job metrics.
    pub job_health: Arc<crate::job_metrics::JobHealthBoard>,
}

/// One job judged: what to announce, and when the clock may next change it.
struct Judged {
    job: JobKey,
    state: HealthState,
    since: Option<i64>,
    change: Option<HealthChange>,
    next: Option<i64>,
}

/// What was last announced for a job: its state, and as of when.
#[derive(Debug, Clone, Copy)]
struct Announced {
    state: HealthState,
    as_of: Option<i64>,
}

impl Announced {
    fn of(change: &HealthChange, state: HealthState) -> Self {
        Announced {
            state,
            as_of: chrono::DateTime::parse_from_rfc3339(&change.as_of)
                .ok()
                .map(|t| t.timestamp_millis()),
        }
    }
}

/// A round's failure, with the jobs to judge again.
type RoundError = (String, Vec<JobKey>);

/// Judges `jobs` (and every job of the file when `whole`) at `now` against what was last
/// announced for each: the SQLite half of a round, run on the blocking pool. Returns the
/// judgements and the jobs whose read failed (judged again at the next wake).
fn judge_all(
    pool: &ReadPool,
    whole: bool,
    mut jobs: Vec<(JobKey, Option<Announced>)>,
    now: i64,
    default_max_runtime_ms: i64,
) -> Result<(Vec<Judged>, Vec<JobKey>), RoundError> {
    if whole {
        let listed: HashSet<JobKey> = jobs.iter().map(|(job, _)| job.clone()).collect();
        let all = pool.all_jobs().map_err(|e| {
            (
                format!("listing the jobs: {e}"),
                jobs.iter().map(|(job, _)| job.clone()).collect(),
            )
        })?;
        jobs.extend(
            all.into_iter()
                .map(|(tenant, name)| (tenant, name.as_str().to_owned()))
                .filter(|job| !listed.contains(job))
                .map(|job| (job, None)),
        );
    }
    let mut judged = Vec::with_capacity(jobs.len());
    let mut failed = Vec::new();
    for (job, last) in jobs {
        let Ok(name) = crate::events::JobName::parse(&job.1) else {
            continue;
        };
        // Past the API's snapshot cache: judging every job (at start, after a rebuild) would
        // otherwise fill it with jobs nobody is asking about, and a touched job's cached
        // snapshot is stale anyway.
        let snapshot = match pool.job_snapshot(&job.0, &name, 0) {
            Ok(Some(snapshot)) => snapshot,
            Ok(None) => continue,
            Err(error) => {
                tracing::warn!(%error, tenant = %job.0, job = %job.1, "cannot read a job to judge");
                failed.push(job);
                continue;
            }
        };
        let health = snapshot.judge(Judgement::At(now), default_max_runtime_ms);
        let stats = &snapshot.stats;
        let change = change(&job.0, &job.1, last.map(|l| l.state), &health, stats).or_else(|| {
            super::silence_ended(&job.0, &job.1, last.and_then(|l| l.as_of), &health, stats)
        });
        judged.push(Judged {
            change,
            next: next_clock_change(
                &health,
                snapshot.health.fires.as_ref(),
                &snapshot.health.processing,
            ),
            state: health.state,
            since: health.since,
            job,
        });
    }
    Ok((judged, failed))
}

/// The `JOB_HEALTH` stream as this service creates it when missing (mirrors
/// `nats/stream-job-health.json`).
pub fn health_stream_config(replicas: usize) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: HEALTH_STREAM.to_owned(),
        description: Some("jobstats: every change of a job's health state (CONTRACT §8)".into()),
        subjects: vec![HEALTH_SUBJECTS.to_owned()],
        retention: jetstream::stream::RetentionPolicy::Limits,
        storage: jetstream::stream::StorageType::File,
        discard: jetstream::stream::DiscardPolicy::Old,
        // The last change per job is the evaluator's memory; 1,000 keep a long history.
        max_messages_per_subject: 1_000,
        // Replicas announcing the same change within this window store it once.
        duplicate_window: Duration::from_secs(3_600),
        num_replicas: replicas,
        ..Default::default()
    }
}

/// The stream of webhook deliveries given up on, as this service creates it when missing
/// (mirrors `nats/stream-dead-deliveries.json`): kept by age, and by count per webhook.
pub fn dead_delivery_stream_config(replicas: usize) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: super::DEAD_DELIVERY_STREAM.to_owned(),
        description: Some("jobstats: webhook deliveries given up on, with why".into()),
        subjects: vec![super::WEBHOOK_DEAD_SUBJECTS.to_owned()],
        retention: jetstream::stream::RetentionPolicy::Limits,
        storage: jetstream::stream::StorageType::File,
        discard: jetstream::stream::DiscardPolicy::Old,
        max_age: super::DEAD_DELIVERY_MAX_AGE,
        max_messages_per_subject: super::DEAD_DELIVERIES_PER_WEBHOOK,
        duplicate_window: Duration::from_secs(3_600),
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Runs until `shutdown` resolves, retrying NATS failures with back-off.
pub async fn run(
    client: async_nats::Client,
    config: EvaluatorConfig,
    handles: EvaluatorHandles,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let js = jetstream::new(client);
    let mut evaluator = Evaluator {
        js,
        config,
        handles,
        announced: HashMap::new(),
        timers: BTreeSet::new(),
        timer_of: HashMap::new(),
        judged_pool: None,
        supervisor: crate::retry::Supervisor::new("health evaluator"),
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            result = evaluator.session() => {
                let error = match result { Ok(never) => match never {}, Err(error) => error };
                // A lost JOB_HEALTH (NATS restarted on an empty store) is made again by the
                // next session, as at start-up.
                let pause = evaluator.supervisor.failed(&error, "session");
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

enum Never {}

struct Evaluator {
    js: jetstream::Context,
    config: EvaluatorConfig,
    handles: EvaluatorHandles,
    /// The last state announced per job (absent: `new`), from the stream.
    announced: HashMap<JobKey, Announced>,
    /// (instant, job): when the clock alone may change a job's state.
    timers: BTreeSet<(i64, JobKey)>,
    timer_of: HashMap<JobKey, i64>,
    /// The reader pool every job was last judged on; another one (a rebuild's) means judging
    /// every job again.
    judged_pool: Option<Arc<ReadPool>>,
    /// Back-off and logging of failed sessions.
    supervisor: crate::retry::Supervisor,
}

impl Evaluator {
    /// Loads what was announced, then follows the stream and the projection until an error.
    async fn session(&mut self) -> Result<Never, NatsError> {
        let stream = self
            .js
            .get_or_create_stream(health_stream_config(self.config.stream_replicas))
            .await
            .map_err(|e| NatsError::Stream {
                stream: HEALTH_STREAM.to_owned(),
                message: e.to_string(),
            })?;
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: HEALTH_SUBJECTS.to_owned(),
                deliver_policy: DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(|e| NatsError::Consumer(e.to_string()))?;
        let mut loaded = consumer.cached_info().num_pending == 0;
        if loaded {
            self.handles.job_health.mark_loaded();
        }
        let mut announcements = consumer
            .messages()
            .await
            .map_err(|e| NatsError::Consumer(e.to_string()))?;
        self.announced.clear();
        self.judged_pool = None;
        let touched = self.handles.touched.clone();
        loop {
            let wake = self.next_wake();
            tokio::select! {
                message = announcements.next() => {
                    let message = message
                        .ok_or_else(|| NatsError::Messages("JOB_HEALTH consumer ended".into()))?
                        .map_err(|e| NatsError::Messages(e.to_string()))?;
                    self.remember(&message.payload);
                    let position = Position::of(&message)?;
                    if position.pending == 0 {
                        loaded = true;
                        self.handles.job_health.mark_loaded();
                    }
                    continue;
                }
                _ = touched.added() => {}
                _ = tokio::time::sleep(wake) => {}
            }
            if loaded && self.may_judge() {
                self.judge_due().await?;
            }
        }
    }

    /// Records an announcement read back from the stream (ours or another replica's).
    fn remember(&mut self, payload: &[u8]) {
        let Ok(change) = serde_json::from_slice::<HealthChange>(payload) else {
            tracing::warn!("JOB_HEALTH holds a message that is not a health change; ignored");
            return;
        };
        let (Ok(tenant), Some(state)) = (
            TenantId::parse(&change.tenant_id),
            HealthState::parse(&change.state),
        ) else {
            return;
        };
        self.handles
            .job_health
            .set(&tenant.to_string(), &change.job_name, state);
        let announced = Announced::of(&change, state);
        self.announced.insert((tenant, change.job_name), announced);
    }

    /// Judging is honest only while the projection has seen everything and the stream is
    /// there (CONTRACT §5): otherwise wait.
    fn may_judge(&self) -> bool {
        let status = &self.handles.status;
        let position = status.position();
        position.caught_up
            && position.unreachable_since.is_none()
            && !status.rebuilding.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn next_wake(&self) -> Duration {
        let now = chrono::Utc::now().timestamp_millis();
        self.timers
            .first()
            .map(|(at, _)| Duration::from_millis((at + SETTLE_MS - now).max(0) as u64))
            .unwrap_or(IDLE_TICK)
            .min(IDLE_TICK)
    }

    /// Judges every job when the pool changed (first run, a rebuild), else the touched jobs
    /// and those whose timer passed.
    async fn judge_due(&mut self) -> Result<(), NatsError> {
        let pool = self.handles.readers.get();
        let mut due: HashSet<JobKey> = self.handles.touched.take();
        let whole = !self
            .judged_pool
            .as_ref()
            .is_some_and(|judged| Arc::ptr_eq(judged, &pool));
        let now = chrono::Utc::now().timestamp_millis();
        while let Some((at, _)) = self.timers.first() {
            if at + SETTLE_MS > now {
                break;
            }
            let (_, job) = self.timers.pop_first().expect("first exists");
            self.timer_of.remove(&job);
            due.insert(job);
        }
        let jobs: Vec<(JobKey, Option<Announced>)> = due
            .into_iter()
            .map(|job| {
                let last = self.announced.get(&job).copied();
                (job, last)
            })
            .collect();
        let keys: Vec<JobKey> = jobs.iter().map(|(job, _)| job.clone()).collect();
        // SQLite is synchronous: the reads of a whole round go to the blocking pool at once.
        let default_max_runtime_ms = self.config.default_max_runtime_ms;
        let reading = pool.clone();
        let judged = tokio::task::spawn_blocking(move || {
            judge_all(&reading, whole, jobs, now, default_max_runtime_ms)
        })
        .await;
        let (judged, retry) = match judged {
            Ok(Ok(judged)) => judged,
            Ok(Err((error, jobs))) => {
                tracing::warn!(%error, "cannot judge jobs; retrying");
                self.handles.touched.add(&jobs);
                return Ok(());
            }
            Err(error) => {
                tracing::error!(%error, "judging jobs failed; retrying");
                self.handles.touched.add(&keys);
                return Ok(());
            }
        };
        if whole {
            self.judged_pool = Some(pool);
        }
        let failed = retry;
        let mut judged = judged.into_iter();
        let mut published = false;
        while let Some(judgement) = judged.next() {
            if let Some(change) = &judgement.change {
                if let Err(error) = self.publish(change).await {
                    // This job and every one not yet published are judged again by the next
                    // session, after the supervisor's back-off: retrying at once spun
                    // (thousands of warnings a second while JOB_HEALTH was gone).
                    let mut again: Vec<JobKey> = failed;
                    again.push(judgement.job);
                    again.extend(judged.map(|j| j.job));
                    self.handles.touched.add(&again);
                    return Err(error);
                }
                published = true;
                self.handles.job_health.set(
                    &judgement.job.0.to_string(),
                    &judgement.job.1,
                    judgement.state,
                );
                self.announced.insert(
                    judgement.job.clone(),
                    Announced::of(change, judgement.state),
                );
                self.count(change, judgement.since);
            }
            self.set_timer(&judgement.job, judgement.next);
        }
        if published {
            self.supervisor.succeeded();
        }
        if !failed.is_empty() {
            // Judged again at the next wake (a second at most).
            self.handles.touched.add(&failed);
        }
        Ok(())
    }

    fn count(&self, change: &HealthChange, since: Option<i64>) {
        let metrics = &self.handles.metrics;
        metrics
            .health_changes_published
            .get_or_create(&StateLabel {
                state: change.state.clone(),
            })
            .inc();
        if let Some(since) = since {
            metrics
                .health_change_delay_seconds
                .observe((chrono::Utc::now().timestamp_millis() - since).max(0) as f64 / 1e3);
        }
    }

    async fn publish(&self, change: &HealthChange) -> Result<(), NatsError> {
        let tenant = TenantId::parse(&change.tenant_id).map_err(NatsError::Messages)?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", change.message_id().as_str());
        let ack = self
            .js
            .publish_with_headers(
                super::subject(&tenant, &change.job_name),
                headers,
                change.to_bytes().into(),
            )
            .await
            .map_err(|e| NatsError::Messages(format!("publishing a health change: {e}")))?
            .await
            .map_err(|e| NatsError::Messages(format!("publishing a health change: {e}")))?;
        tracing::info!(
            tenant = %change.tenant_id, job = %change.job_name, state = %change.state,
            previous = %change.previous_state, since = change.since.as_deref().unwrap_or("-"),
            duplicate = ack.duplicate,
            "health changed"
        );
        Ok(())
    }

    fn set_timer(&mut self, job: &JobKey, at: Option<i64>) {
        if let Some(old) = self.timer_of.remove(job) {
            self.timers.remove(&(old, job.clone()));
        }
        if let Some(at) = at {
            self.timers.insert((at, job.clone()));
            self.timer_of.insert(job.clone(), at);
        }
    }
}
