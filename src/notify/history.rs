//! Each job's announced health changes (its flips), kept in memory from `JOB_HEALTH`: what the
//! flips endpoint pages and the uptime figures are computed from. The stream is the one
//! source every replica reads, so replicas that have read as far answer the same, and a
//! restart or a rebuild of the read model changes nothing (the history is not in SQLite).
//! `JOB_HEALTH` keeps the last 1,000 changes per job; so does this.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy};
use futures::StreamExt;

use super::{HealthChange, HEALTH_STREAM, HEALTH_SUBJECTS};
use crate::projection::uptime::{uptime_percent, StateSpan};
use crate::projection::HealthState;
use crate::stream::NatsError;

/// Changes kept per job (as `JOB_HEALTH`'s `max_messages_per_subject`).
const KEPT_PER_JOB: usize = 1_000;

const DAY_MS: i64 = 86_400_000;

/// One announced change.
#[derive(Debug, Clone, PartialEq)]
pub struct Flip {
    /// Its `JOB_HEALTH` sequence: the page key, the same on every replica.
    pub sequence: u64,
    /// When the new state began (`since`, else when it was announced), ms.
    pub at: i64,
    pub state: HealthState,
    pub previous_state: HealthState,
    pub reason: String,
    /// Announced while the job was silenced.
    pub silenced: bool,
}

/// The uptime figures of one job.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct UptimeFigures {
    pub last24h: Option<f64>,
    pub last7d: Option<f64>,
    pub last30d: Option<f64>,
}

/// What [`FlipHistory::page`] returns: newest first, and whether older ones remain.
#[derive(Debug, Clone, PartialEq)]
pub struct FlipPage {
    pub flips: Vec<Flip>,
    pub more: bool,
}

type JobKey = (String, String);

/// Every job's flips, ascending by sequence.
#[derive(Debug, Default)]
pub struct FlipHistory {
    jobs: RwLock<HashMap<JobKey, Vec<Flip>>>,
    /// The last `JOB_HEALTH` sequence read.
    position: AtomicU64,
}

fn instant_ms(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_millis())
}

impl FlipHistory {
    /// The last `JOB_HEALTH` sequence read (0: none yet).
    pub fn position(&self) -> u64 {
        self.position.load(Ordering::Acquire)
    }

    /// Adds the change stored at `sequence`; one already read (a redelivery) is ignored.
    pub fn record(&self, sequence: u64, change: &HealthChange) {
        // A silence's end is a message, not a change of state.
        if change.silence_ended {
            self.position.fetch_max(sequence, Ordering::AcqRel);
            return;
        }
        let (Some(state), Some(previous_state)) = (
            HealthState::parse(&change.state),
            HealthState::parse(&change.previous_state),
        ) else {
            return;
        };
        let Some(at) = change
            .since
            .as_deref()
            .or(Some(&change.as_of))
            .and_then(instant_ms)
        else {
            return;
        };
        let mut jobs = self.jobs.write().unwrap_or_else(|p| p.into_inner());
        let flips = jobs
            .entry((change.tenant_id.clone(), change.job_name.clone()))
            .or_default();
        if flips.last().is_some_and(|last| last.sequence >= sequence) {
            return;
        }
        flips.push(Flip {
            sequence,
            at,
            state,
            previous_state,
            reason: change.reason.clone(),
            silenced: change.silenced,
        });
        if flips.len() > KEPT_PER_JOB {
            let excess = flips.len() - KEPT_PER_JOB;
            flips.drain(..excess);
        }
        drop(jobs);
        self.position.fetch_max(sequence, Ordering::AcqRel);
    }

    /// Newest first: flips with `at` in `[from, to]`, below sequence `before`, at most `limit`.
    pub fn page(
        &self,
        tenant: &str,
        job: &str,
        range: (Option<i64>, Option<i64>),
        before: Option<u64>,
        limit: usize,
    ) -> FlipPage {
        let jobs = self.jobs.read().unwrap_or_else(|p| p.into_inner());
        let Some(flips) = jobs.get(&(tenant.to_owned(), job.to_owned())) else {
            return FlipPage {
                flips: Vec::new(),
                more: false,
            };
        };
        let (from, to) = range;
        let mut selected = flips.iter().rev().filter(|flip| {
            before.is_none_or(|b| flip.sequence < b)
                && from.is_none_or(|f| flip.at >= f)
                && to.is_none_or(|t| flip.at <= t)
        });
        let page: Vec<Flip> = selected.by_ref().take(limit).cloned().collect();
        let more = selected.next().is_some();
        FlipPage { flips: page, more }
    }

    /// The job's uptime over the last 24 hours, 7 and 30 days before `now`, leaving out its
    /// `silenced` stretches (from the read model: [`crate::projection::silenced_spans`]).
    pub fn uptime(
        &self,
        tenant: &str,
        job: &str,
        now: i64,
        silenced: &[(i64, i64)],
    ) -> UptimeFigures {
        let jobs = self.jobs.read().unwrap_or_else(|p| p.into_inner());
        let Some(flips) = jobs.get(&(tenant.to_owned(), job.to_owned())) else {
            return UptimeFigures::default();
        };
        let spans: Vec<StateSpan> = flips
            .iter()
            .map(|flip| StateSpan {
                at: flip.at,
                state: flip.state,
            })
            .collect();
        UptimeFigures {
            last24h: uptime_percent(&spans, silenced, now, DAY_MS),
            last7d: uptime_percent(&spans, silenced, now, 7 * DAY_MS),
            last30d: uptime_percent(&spans, silenced, now, 30 * DAY_MS),
        }
    }
}

/// Reads `JOB_HEALTH` into `history` from where it stands, and follows it, until `shutdown`;
/// a failure (the stream not made yet, NATS away) is retried with back-off.
pub async fn follow(
    client: async_nats::Client,
    history: Arc<FlipHistory>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let js = jetstream::new(client);
    let mut supervisor = crate::retry::Supervisor::new("flip history");
    tokio::pin!(shutdown);
    loop {
        let error = tokio::select! {
            _ = &mut shutdown => return,
            result = read(&js, &history, &mut supervisor) => result,
        };
        // At a first start the evaluator has not made JOB_HEALTH yet: not worth a warning.
        let not_made = matches!(&error, NatsError::Stream { message, .. } if message.contains("stream not found"));
        let pause = if not_made && supervisor.failures() == 0 {
            std::time::Duration::from_millis(250)
        } else {
            supervisor.failed(&error, "following JOB_HEALTH")
        };
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// One session: an ordered consumer from the next unread sequence; returns its failure.
async fn read(
    js: &jetstream::Context,
    history: &FlipHistory,
    supervisor: &mut crate::retry::Supervisor,
) -> NatsError {
    let stream = match js.get_stream(HEALTH_STREAM).await {
        Ok(stream) => stream,
        Err(e) => {
            return NatsError::Stream {
                stream: HEALTH_STREAM.to_owned(),
                message: e.to_string(),
            }
        }
    };
    let deliver_policy = match history.position() {
        0 => DeliverPolicy::All,
        read => DeliverPolicy::ByStartSequence {
            start_sequence: read + 1,
        },
    };
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: HEALTH_SUBJECTS.to_owned(),
            deliver_policy,
            ..Default::default()
        })
        .await;
    let mut messages = match consumer {
        Ok(consumer) => match consumer.messages().await {
            Ok(messages) => messages,
            Err(e) => return NatsError::Consumer(e.to_string()),
        },
        Err(e) => return NatsError::Consumer(e.to_string()),
    };
    supervisor.succeeded();
    while let Some(message) = messages.next().await {
        let message = match message {
            Ok(message) => message,
            Err(e) => return NatsError::Messages(e.to_string()),
        };
        let Ok(info) = message.info() else { continue };
        let sequence = info.stream_sequence;
        if let Ok(change) = serde_json::from_slice::<HealthChange>(&message.payload) {
            history.record(sequence, &change);
        }
    }
    NatsError::Messages("the JOB_HEALTH consumer ended".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(job: &str, state: &str, previous: &str, since: &str) -> HealthChange {
        HealthChange {
            spec_version: 1,
            tenant_id: "t".into(),
            job_name: job.into(),
            state: state.into(),
            previous_state: previous.into(),
            since: Some(since.into()),
            as_of: since.into(),
            reason: format!("{state} since {since}"),
            consecutive_failures: 0,
            execution_id: None,
            ..HealthChange::default()
        }
    }

    #[test]
    fn pages_are_newest_first_keyed_on_the_stream_sequence() {
        let history = FlipHistory::default();
        let states = [("new", "new"), ("failing", "new"), ("healthy", "failing")];
        for (i, (state, previous)) in states.into_iter().enumerate() {
            let since = format!("2026-12-0{}T00:00:00.000Z", i + 1);
            history.record(10 + i as u64, &change("a", state, previous, &since));
            history.record(11 + i as u64 * 7, &change("b", state, previous, &since));
        }
        // A redelivery adds nothing.
        history.record(
            11,
            &change("a", "stuck", "healthy", "2026-12-05T00:00:00.000Z"),
        );
        let first = history.page("t", "a", (None, None), None, 2);
        let sequences: Vec<u64> = first.flips.iter().map(|f| f.sequence).collect();
        assert_eq!((sequences, first.more), (vec![12, 11], true));
        let rest = history.page("t", "a", (None, None), Some(11), 2);
        assert_eq!(rest.flips.len(), 1);
        assert!(!rest.more);
        assert_eq!(rest.flips[0].state, HealthState::New);
        let from = instant_ms("2026-12-02T00:00:00.000Z");
        let ranged = history.page("t", "a", (from, None), None, 10);
        assert_eq!(ranged.flips.len(), 2);
        assert_eq!(history.position(), 25);
    }

    #[test]
    fn uptime_comes_from_the_flips() {
        let history = FlipHistory::default();
        history.record(
            1,
            &change("a", "healthy", "new", "2026-12-01T00:00:00.000Z"),
        );
        history.record(
            2,
            &change("a", "failing", "healthy", "2026-12-01T18:00:00.000Z"),
        );
        let now = instant_ms("2026-12-02T00:00:00.000Z").unwrap();
        let figures = history.uptime("t", "a", now, &[]);
        assert_eq!(figures.last24h, Some(75.0));
        assert_eq!(figures.last30d, Some(75.0));
        // Silenced for the last three hours of the failure: 18 of 21 hours up.
        let silenced = history.uptime("t", "a", now, &[(now - 3 * 3_600_000, now)]);
        assert!((silenced.last24h.unwrap() - 1800.0 / 21.0).abs() < 1e-9);
        assert_eq!(
            history.uptime("t", "other", now, &[]),
            UptimeFigures::default()
        );
    }
}
