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

/// One change as one line: `asOf tenant job previous->state since=… reason`, its instants
/// (in the reason too) in the viewer's time zone, as a person reads them; `--json` keeps the
/// machine form.
pub fn line(change: &HealthChange) -> String {
    line_in(change, &chrono::Local)
}

fn line_in<Tz: chrono::TimeZone>(change: &HealthChange, zone: &Tz) -> String
where
    Tz::Offset: std::fmt::Display,
{
    format!(
        "{} {} {} {}->{} since={} {}",
        local_instants(&change.as_of, zone),
        change.tenant_id,
        change.job_name,
        change.previous_state,
        change.state,
        change
            .since
            .as_deref()
            .map_or_else(|| "-".to_owned(), |s| local_instants(s, zone)),
        local_instants(&change.reason, zone)
    )
}

/// `text` with every RFC 3339 instant the service writes (`2026-12-06T21:00:18.100Z`)
/// rewritten in `zone` (`2026-12-06 22:00:18+01:00`).
fn local_instants<Tz: chrono::TimeZone>(text: &str, zone: &Tz) -> String
where
    Tz::Offset: std::fmt::Display,
{
    const LEN: usize = "2026-12-06T21:00:18.100Z".len();
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('T') {
        let start = at.saturating_sub(10);
        let candidate = rest.get(start..start + LEN).filter(|_| at >= 10);
        match candidate.and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok()) {
            Some(instant) if candidate.is_some_and(|c| c.ends_with('Z')) => {
                out.push_str(&rest[..start]);
                let local = instant.with_timezone(zone);
                out.push_str(&local.format("%Y-%m-%d %H:%M:%S%:z").to_string());
                rest = &rest[start + LEN..];
            }
            _ => {
                out.push_str(&rest[..=at]);
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_are_shown_in_the_viewers_zone_everywhere_in_the_line() {
        let zone = chrono::FixedOffset::east_opt(3_600).unwrap();
        assert_eq!(
            local_instants("failed (the latest at 2026-12-06T21:00:18.100Z).", &zone),
            "failed (the latest at 2026-12-06 22:00:18+01:00)."
        );
        assert_eq!(
            local_instants(
                "Two: 2026-01-01T00:00:00.000Z, 2026-01-01T01:00:00.000Z",
                &zone
            ),
            "Two: 2026-01-01 01:00:00+01:00, 2026-01-01 02:00:00+01:00"
        );
        // Words with a T, and text that only looks like a date, stay as they are.
        for text in [
            "The event stream cannot be read.",
            "2026-13-99T99:99:99.999Z",
            "T",
        ] {
            assert_eq!(local_instants(text, &zone), text);
        }
    }
}
