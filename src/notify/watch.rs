//! `jobstats watch`: health changes as they are published, for terminals and shell alerting.
//! An ordered consumer on `JOB_HEALTH` (nothing is stored on the server for it).

use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy};
use futures::StreamExt;

use super::{HealthChange, HEALTH_STREAM};
use crate::events::TenantId;
use crate::projection::HealthState;
use crate::stream::NatsError;

/// Which changes to show.
#[derive(Debug, Clone, Default)]
pub struct WatchFilter {
    pub tenant: Option<TenantId>,
    /// Empty: every state.
    pub states: Vec<HealthState>,
    /// Start with each job's last announced change (its current state), then follow.
    pub current: bool,
}

impl WatchFilter {
    fn subject(&self) -> String {
        match &self.tenant {
            Some(tenant) => format!("jobstats.health.{tenant}.>"),
            None => super::HEALTH_SUBJECTS.to_owned(),
        }
    }

    fn shows(&self, change: &HealthChange) -> bool {
        self.states.is_empty()
            || HealthState::parse(&change.state).is_some_and(|s| self.states.contains(&s))
    }
}

/// One change as one line: `asOf tenant job previous->state since=… reason`.
pub fn line(change: &HealthChange) -> String {
    format!(
        "{} {} {} {}->{} since={} {}",
        change.as_of,
        change.tenant_id,
        change.job_name,
        change.previous_state,
        change.state,
        change.since.as_deref().unwrap_or("-"),
        change.reason
    )
}

/// Calls `shown` for each change that passes `filter`, until the connection fails or `shown`
/// returns false.
pub async fn follow(
    client: async_nats::Client,
    filter: &WatchFilter,
    mut shown: impl FnMut(&HealthChange) -> bool,
) -> Result<(), NatsError> {
    let js = jetstream::new(client);
    let stream = js
        .get_stream(HEALTH_STREAM)
        .await
        .map_err(|e| NatsError::Stream {
            stream: HEALTH_STREAM.to_owned(),
            message: format!("{e} (it is created by `jobstats serve`)"),
        })?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: filter.subject(),
            deliver_policy: if filter.current {
                DeliverPolicy::LastPerSubject
            } else {
                DeliverPolicy::New
            },
            ..Default::default()
        })
        .await
        .map_err(|e| NatsError::Consumer(e.to_string()))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| NatsError::Consumer(e.to_string()))?;
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| NatsError::Messages(e.to_string()))?;
        let Ok(change) = serde_json::from_slice::<HealthChange>(&message.payload) else {
            continue;
        };
        if filter.shows(&change) && !shown(&change) {
            return Ok(());
        }
    }
    Err(NatsError::Messages("the JOB_HEALTH consumer ended".into()))
}
