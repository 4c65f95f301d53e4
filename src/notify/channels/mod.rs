//! Alert channels (CONTRACT §11): `JOBSTATS_CHANNELS_FILE`'s `[[channels]]` (and
//! `JOBSTATS_WEBHOOKS_FILE`'s `[[webhooks]]`, which are channels of kind `webhook`).
//!
//! Every channel is delivered by the same machinery ([`delivery`]: its own durable consumer
//! on `JOB_HEALTH`, one message out at a time across replicas, backoff retries, dead letters
//! on `jobstats.webhook-dead.<name>`); only "render and send" differs per kind, one file
//! each. [`follow`] keeps, per replica, the last change of every job for what is sent while a
//! state holds: Alertmanager's re-posts and reminders (`repeat_ms`).

pub mod alertmanager;
pub mod delivery;
pub mod email;
pub mod follow;
pub mod opsgenie;
pub mod pagerduty;
pub mod slack;
pub mod teams;
pub mod webhook;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::HealthChange;
use crate::events::TenantId;
use crate::projection::HealthState;

/// `JOBSTATS_CHANNELS_FILE` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelsFile {
    #[serde(default)]
    channels: Vec<ChannelEntry>,
}

/// One `[[channels]]` table: the fields of every kind; [`validate`] says which belong.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelEntry {
    kind: Option<String>,
    name: Option<String>,
    tenants: Option<Vec<String>>,
    states: Option<Vec<String>>,
    labels: Option<BTreeMap<String, String>>,
    repeat_ms: Option<u64>,
    timeout_ms: Option<u64>,
    max_attempts: Option<u32>,
    retry_initial_ms: Option<u64>,
    retry_max_ms: Option<u64>,
    url: Option<String>,
    secret: Option<String>,
    secret_file: Option<String>,
    routing_key: Option<String>,
    routing_key_file: Option<String>,
    severity: Option<String>,
    api_key: Option<String>,
    api_key_file: Option<String>,
    smtp_url: Option<String>,
    username: Option<String>,
    password: Option<String>,
    password_file: Option<String>,
    from: Option<String>,
    to: Option<Vec<String>>,
    resend_ms: Option<u64>,
}

/// Which jobs' changes a channel gets (absent = all).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filters {
    pub tenants: Option<Vec<TenantId>>,
    pub states: Option<Vec<HealthState>>,
    /// A job matches when its labels include every pair.
    pub labels: BTreeMap<String, String>,
}

impl Filters {
    pub fn wants(&self, change: &HealthChange, labels: &BTreeMap<String, String>) -> bool {
        let tenant_ok = self.tenants.as_ref().is_none_or(|tenants| {
            TenantId::parse(&change.tenant_id).is_ok_and(|t| tenants.contains(&t))
        });
        let state_ok = self.states.as_ref().is_none_or(|states| {
            HealthState::parse(&change.state).is_some_and(|s| states.contains(&s))
        });
        let labels_ok = self
            .labels
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value));
        tenant_ok && state_ok && labels_ok
    }
}

/// How a change is retried before it becomes a dead letter.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub timeout: Duration,
    pub max_attempts: u32,
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

impl RetryPolicy {
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

/// What a kind needs to send.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Webhook {
        url: reqwest::Url,
        secret: String,
    },
    Slack {
        url: reqwest::Url,
    },
    PagerDuty {
        url: reqwest::Url,
        routing_key: String,
        severity: String,
    },
    Opsgenie {
        url: reqwest::Url,
        api_key: String,
    },
    Teams {
        url: reqwest::Url,
    },
    Email(email::EmailSettings),
    Alertmanager {
        url: reqwest::Url,
        resend: Duration,
    },
}

impl Kind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Webhook { .. } => "webhook",
            Kind::Slack { .. } => "slack",
            Kind::PagerDuty { .. } => "pagerduty",
            Kind::Opsgenie { .. } => "opsgenie",
            Kind::Teams { .. } => "teams",
            Kind::Email(_) => "email",
            Kind::Alertmanager { .. } => "alertmanager",
        }
    }

    /// Where it goes, as it may be shown (no credentials, no query: receivers often keep a
    /// token there).
    pub fn shown_target(&self) -> String {
        let url = match self {
            // An incoming webhook's path is its secret (`/services/T…/B…/<token>`).
            Kind::Slack { url } => {
                let mut shown = url.clone();
                shown.set_path("/...");
                return shown_url(&shown);
            }
            Kind::Webhook { url, .. }
            | Kind::PagerDuty { url, .. }
            | Kind::Opsgenie { url, .. }
            | Kind::Teams { url }
            | Kind::Alertmanager { url, .. } => url,
            Kind::Email(settings) => return settings.shown_target(),
        };
        shown_url(url)
    }
}

/// A URL without credentials, query or fragment.
pub fn shown_url(url: &reqwest::Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    url.set_fragment(None);
    url.to_string()
}

/// One channel, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Channel {
    /// Names its durable consumer and its dead-letter subject (unique across both files).
    pub name: String,
    pub kind: Kind,
    pub filters: Filters,
    pub retry: RetryPolicy,
    /// Reminders while a job stays in the same trouble state.
    pub repeat: Option<Duration>,
    /// `JOBSTATS_PUBLIC_URL`: the dashboard's address as users reach it.
    pub public_url: Option<reqwest::Url>,
}

impl Channel {
    /// Its durable consumer on `JOB_HEALTH`. Webhooks keep the name they had before channels.
    pub fn durable(&self) -> String {
        match self.kind {
            Kind::Webhook { .. } => format!("jobstats-webhook-{}", self.name),
            _ => format!("jobstats-channel-{}", self.name),
        }
    }

    /// Where a change given up on is recorded (the subjects of `JOBSTATS_DEAD_DELIVERIES`).
    pub fn dead_subject(&self) -> String {
        format!("jobstats.webhook-dead.{}", self.name)
    }

    /// The job's dashboard page, when `JOBSTATS_PUBLIC_URL` is set.
    pub fn link(&self, change: &HealthChange) -> Option<String> {
        self.public_url
            .as_ref()
            .map(|base| job_page(base, &change.tenant_id, &change.job_name))
    }
}

/// The dashboard's page of a job: `<public>/ui/#/jobs/<job>?tenant=<tenant>` (as app.js
/// routes it).
pub fn job_page(base: &reqwest::Url, tenant: &str, job: &str) -> String {
    let base = base.as_str().trim_end_matches('/');
    const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    let encode = |text: &str| percent_encoding::utf8_percent_encode(text, COMPONENT).to_string();
    format!("{base}/ui/#/jobs/{}?tenant={}", encode(job), encode(tenant))
}

/// The key that ties an opening to its resolution (PagerDuty `dedup_key`, Opsgenie `alias`).
pub fn dedup_key(change: &HealthChange) -> String {
    format!("jobstats/{}/{}", change.tenant_id, change.job_name)
}

/// Whether a state is trouble that opens an alert (stuck, missed, failing).
pub fn is_trouble(state: &str) -> bool {
    matches!(state, "stuck" | "missed" | "failing")
}

/// The job's labels as the change carries them (`labels`, an object of strings). Job labels
/// arrive with `scheduled` events (issue 31); until the health change carries them, a job has
/// none. This is the one place that reads them.
pub fn labels_of(raw: &[u8]) -> BTreeMap<String, String> {
    #[derive(Deserialize)]
    struct Labelled {
        #[serde(default)]
        labels: Option<BTreeMap<String, String>>,
    }
    serde_json::from_slice::<Labelled>(raw)
        .ok()
        .and_then(|l| l.labels)
        .unwrap_or_default()
}

/// Whether the change opens (or keeps open) trouble for a silenced job: channels send no
/// openings and no reminders for those, but do send recoveries and the one `silenceEnded`
/// message (CONTRACT §11; the evaluator sets `silenced` / `silenceEnded` on the change).
pub fn is_silenced_trouble(change: &HealthChange, raw: &[u8]) -> bool {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Silence {
        #[serde(default)]
        silenced: bool,
        #[serde(default)]
        silence_ended: bool,
    }
    let silence = serde_json::from_slice::<Silence>(raw).unwrap_or(Silence {
        silenced: false,
        silence_ended: false,
    });
    silence.silenced && !silence.silence_ended && is_trouble(&change.state)
}

/// One change to send, with what every kind renders from it.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub change: &'a HealthChange,
    /// The change as stored on `JOB_HEALTH` (a webhook's body).
    pub raw: &'a [u8],
    pub labels: &'a BTreeMap<String, String>,
    /// The job's dashboard page.
    pub link: Option<&'a str>,
}

/// A send that did not succeed.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// Worth another attempt (down, timeout, 5xx, 408, 429, a redirect).
    Transient(String),
    /// The receiver refused for good (another 4xx, a 5xx SMTP reply): a dead letter at once.
    Permanent(String),
}

impl Failure {
    pub fn text(&self) -> &str {
        match self {
            Failure::Transient(text) | Failure::Permanent(text) => text,
        }
    }
}

/// What a successful send returned: the receiver's answer (shown by `channels test`), or
/// that the kind has nothing to send for this change.
#[derive(Debug, Clone, PartialEq)]
pub enum Sent {
    Answered(String),
    NothingToSend,
}

/// Sends one message to a channel: the per-kind part of delivery.
pub async fn send(
    channel: &Channel,
    http: &reqwest::Client,
    message: Message<'_>,
) -> Result<Sent, Failure> {
    let timeout = channel.retry.timeout;
    match &channel.kind {
        Kind::Webhook { url, secret } => webhook::send(http, url, secret, timeout, message).await,
        Kind::Slack { url } => slack::send(http, url, timeout, message).await,
        Kind::PagerDuty {
            url,
            routing_key,
            severity,
        } => pagerduty::send(http, url, routing_key, severity, timeout, message).await,
        Kind::Opsgenie { url, api_key } => {
            opsgenie::send(http, url, api_key, timeout, message).await
        }
        Kind::Teams { url } => teams::send(http, url, timeout, message).await,
        Kind::Email(settings) => email::send(settings, timeout, message).await,
        Kind::Alertmanager { url, .. } => alertmanager::send(http, url, timeout, &[message]).await,
    }
}

/// The HTTP client every kind sends with: redirects are never followed.
pub fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("jobstats/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// POSTs a JSON body and classifies the answer (2xx: its body; 4xx other than 408 and 429:
/// permanent; the rest: transient).
pub async fn post_json(
    request: reqwest::RequestBuilder,
    body: &serde_json::Value,
    timeout: Duration,
) -> Result<Sent, Failure> {
    let request = request
        .timeout(timeout)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body).expect("a JSON value serializes"));
    answer(request.send().await).await
}

/// Classifies an HTTP answer (see [`post_json`]).
pub async fn answer(result: Result<reqwest::Response, reqwest::Error>) -> Result<Sent, Failure> {
    let response = result.map_err(|e| Failure::Transient(failure_text(e)))?;
    let status = response.status();
    let text: String = response
        .text()
        .await
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .take(512)
        .collect();
    let described = if text.is_empty() {
        format!("HTTP {}", status.as_u16())
    } else {
        format!("HTTP {}: {text}", status.as_u16())
    };
    if status.is_success() {
        Ok(Sent::Answered(described))
    } else if status.is_client_error() && status.as_u16() != 408 && status.as_u16() != 429 {
        Err(Failure::Permanent(described))
    } else {
        Err(Failure::Transient(described))
    }
}

/// A failed request in words, with its causes ("connection refused"), without the URL: it
/// may carry a token in its query.
pub fn failure_text(error: reqwest::Error) -> String {
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

/// A one-line title: `<job> is <state>` (with the tenant for the reader who runs several).
pub fn title(change: &HealthChange) -> String {
    format!("{} is {}", change.job_name, change.state)
}

/// Reads and validates the channels file; every problem names the entry and the key.
pub fn load(path: &Path, public_url: Option<&reqwest::Url>) -> Result<Vec<Channel>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("JOBSTATS_CHANNELS_FILE {}: {e}", path.display()))?;
    parse(&text, public_url).map_err(|e| format!("JOBSTATS_CHANNELS_FILE {}: {e}", path.display()))
}

/// Parses the file's text (see [`load`]).
pub fn parse(text: &str, public_url: Option<&reqwest::Url>) -> Result<Vec<Channel>, String> {
    let file: ChannelsFile = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut channels = Vec::new();
    for (index, entry) in file.channels.into_iter().enumerate() {
        let mut channel = validate(entry).map_err(|e| format!("channels[{index}]: {e}"))?;
        channel.public_url = public_url.cloned();
        channels.push(channel);
    }
    Ok(channels)
}

/// Both files together: names must be unique across them (they name consumers and subjects).
pub fn combine(webhooks: Vec<Channel>, channels: Vec<Channel>) -> Result<Vec<Channel>, String> {
    let mut names = std::collections::HashSet::new();
    let all: Vec<Channel> = webhooks.into_iter().chain(channels).collect();
    for channel in &all {
        if !names.insert(channel.name.clone()) {
            return Err(format!(
                "channel name {:?} is used twice (set `name` to tell them apart)",
                channel.name
            ));
        }
    }
    Ok(all)
}

/// A secret given inline or as a file (`<field>_file`, its content without the trailing
/// newline); both is an error naming the field.
fn secret(
    field: &str,
    inline: Option<String>,
    file: Option<String>,
) -> Result<Option<String>, String> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(format!("{field} and {field}_file are both set: keep one")),
        (Some(value), None) => Ok(Some(value)),
        (None, Some(path)) => std::fs::read_to_string(&path)
            .map(|text| Some(text.trim_end_matches(['\n', '\r']).to_owned()))
            .map_err(|e| format!("{field}_file {path:?}: {e}")),
        (None, None) => Ok(None),
    }
}

fn http_url(key: &str, value: Option<&str>, default: Option<&str>) -> Result<reqwest::Url, String> {
    let text = value
        .or(default)
        .ok_or_else(|| format!("{key}: required"))?;
    let url = reqwest::Url::parse(text).map_err(|e| format!("{key} {text:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "{key} {text:?}: must be an http or https URL with a host"
        ));
    }
    Ok(url)
}

fn required(key: &str, value: Option<String>) -> Result<String, String> {
    match value {
        Some(value) if !value.is_empty() => Ok(value),
        Some(_) => Err(format!("{key}: must not be empty")),
        None => Err(format!("{key}: required")),
    }
}

/// The fields only some kinds take; one set for a kind that does not take it is an error.
fn check_fields(kind: &str, entry: &ChannelEntry) -> Result<(), String> {
    let present = [
        (
            "url",
            entry.url.is_some(),
            &[
                "webhook",
                "slack",
                "pagerduty",
                "opsgenie",
                "teams",
                "alertmanager",
            ][..],
        ),
        (
            "secret",
            entry.secret.is_some() || entry.secret_file.is_some(),
            &["webhook"][..],
        ),
        (
            "routing_key",
            entry.routing_key.is_some() || entry.routing_key_file.is_some(),
            &["pagerduty"][..],
        ),
        ("severity", entry.severity.is_some(), &["pagerduty"][..]),
        (
            "api_key",
            entry.api_key.is_some() || entry.api_key_file.is_some(),
            &["opsgenie"][..],
        ),
        ("smtp_url", entry.smtp_url.is_some(), &["email"][..]),
        ("username", entry.username.is_some(), &["email"][..]),
        (
            "password",
            entry.password.is_some() || entry.password_file.is_some(),
            &["email"][..],
        ),
        ("from", entry.from.is_some(), &["email"][..]),
        ("to", entry.to.is_some(), &["email"][..]),
        (
            "resend_ms",
            entry.resend_ms.is_some(),
            &["alertmanager"][..],
        ),
    ];
    for (field, set, kinds) in present {
        if set && !kinds.contains(&kind) {
            return Err(format!("{field}: not a field of kind {kind:?}"));
        }
    }
    Ok(())
}

fn validate(entry: ChannelEntry) -> Result<Channel, String> {
    let kind_name = entry.kind.clone().unwrap_or_else(|| "webhook".to_owned());
    check_fields(&kind_name, &entry)?;
    let ChannelEntry {
        url,
        secret: secret_inline,
        secret_file,
        routing_key,
        routing_key_file,
        severity,
        api_key,
        api_key_file,
        smtp_url,
        username,
        password,
        password_file,
        from,
        to,
        resend_ms,
        ..
    } = entry;
    let kind = match kind_name.as_str() {
        "webhook" => Kind::Webhook {
            url: http_url("url", url.as_deref(), None)?,
            secret: required("secret", secret("secret", secret_inline, secret_file)?)?,
        },
        "slack" => Kind::Slack {
            url: http_url("url", url.as_deref(), None)?,
        },
        "pagerduty" => {
            let severity = severity.unwrap_or_else(|| "error".to_owned());
            if !matches!(severity.as_str(), "critical" | "error" | "warning" | "info") {
                return Err(format!(
                    "severity {severity:?}: one of critical, error, warning, info"
                ));
            }
            Kind::PagerDuty {
                url: http_url("url", url.as_deref(), Some(pagerduty::EVENTS_URL))?,
                routing_key: required(
                    "routing_key",
                    secret("routing_key", routing_key, routing_key_file)?,
                )?,
                severity,
            }
        }
        "opsgenie" => Kind::Opsgenie {
            url: http_url("url", url.as_deref(), Some(opsgenie::ALERTS_URL))?,
            api_key: required("api_key", secret("api_key", api_key, api_key_file)?)?,
        },
        "teams" => Kind::Teams {
            url: http_url("url", url.as_deref(), None)?,
        },
        "email" => Kind::Email(email::EmailSettings::validate(
            &required("smtp_url", smtp_url)?,
            username,
            secret("password", password, password_file)?,
            &required("from", from)?,
            to.unwrap_or_default(),
        )?),
        "alertmanager" => {
            let resend = resend_ms.unwrap_or(60_000);
            if !(1_000..=3_600_000).contains(&resend) {
                return Err(format!("resend_ms: {resend} is outside 1000..=3600000"));
            }
            Kind::Alertmanager {
                url: http_url("url", url.as_deref(), None)?,
                resend: Duration::from_millis(resend),
            }
        }
        other => {
            return Err(format!(
                "kind {other:?}: one of webhook, slack, pagerduty, opsgenie, teams, email, alertmanager"
            ))
        }
    };
    let name = match entry.name {
        Some(name) => name,
        None => return Err("name: required".into()),
    };
    check_name(&name)?;
    let repeat = match entry.repeat_ms {
        None => None,
        Some(ms) if ms >= 60_000 => Some(Duration::from_millis(ms)),
        Some(ms) => return Err(format!("repeat_ms: {ms} is under 60000")),
    };
    Ok(Channel {
        name,
        kind,
        filters: Filters {
            tenants: entry.tenants.as_deref().map(parse_tenants).transpose()?,
            states: entry.states.as_deref().map(parse_states).transpose()?,
            labels: entry.labels.unwrap_or_default(),
        },
        retry: retry_policy(
            entry.timeout_ms,
            entry.max_attempts,
            entry.retry_initial_ms,
            entry.retry_max_ms,
        )?,
        repeat,
        public_url: None,
    })
}

/// A consumer and subject token: 1-64 letters, digits, '-' or '_'.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!("name {name:?}: 1-64 letters, digits, '-' or '_'"));
    }
    Ok(())
}

/// The §8 retry settings, with their defaults and ranges.
pub fn retry_policy(
    timeout_ms: Option<u64>,
    max_attempts: Option<u32>,
    retry_initial_ms: Option<u64>,
    retry_max_ms: Option<u64>,
) -> Result<RetryPolicy, String> {
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
    let max_attempts = max_attempts.unwrap_or(12);
    if !(1..=1_000).contains(&max_attempts) {
        return Err(format!("max_attempts: {max_attempts} is outside 1..=1000"));
    }
    Ok(RetryPolicy {
        timeout: ranged("timeout_ms", timeout_ms, 10_000, 100..=20_000)?,
        max_attempts,
        retry_initial: ranged("retry_initial_ms", retry_initial_ms, 1_000, 10..=3_600_000)?,
        retry_max: ranged("retry_max_ms", retry_max_ms, 300_000, 10..=86_400_000)?,
    })
}

pub fn parse_tenants(list: &[String]) -> Result<Vec<TenantId>, String> {
    list.iter()
        .map(|t| TenantId::parse(t).map_err(|e| format!("tenants: {t:?}: {e}")))
        .collect()
}

pub fn parse_states(list: &[String]) -> Result<Vec<HealthState>, String> {
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

/// Runs every channel's delivery (and, where a kind or `repeat_ms` needs it, its follower)
/// until `shutdown`, each on its own task.
pub async fn run(
    client: async_nats::Client,
    channels: Vec<Channel>,
    stream_replicas: usize,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    shutdown: crate::shutdown::Shutdown,
) {
    let http = match http_client() {
        Ok(http) => http,
        Err(error) => {
            tracing::error!(%error, "alert channels are off");
            return;
        }
    };
    let js = async_nats::jetstream::new(client);
    let mut tasks = Vec::new();
    for channel in channels {
        let channel = std::sync::Arc::new(channel);
        if matches!(channel.kind, Kind::Alertmanager { .. }) || channel.repeat.is_some() {
            tasks.push(tokio::spawn(follow::run(
                js.clone(),
                http.clone(),
                channel.clone(),
                stream_replicas,
                metrics.clone(),
                shutdown.clone(),
            )));
        }
        let delivery = delivery::Delivery {
            js: js.clone(),
            http: http.clone(),
            channel,
            stream_replicas,
            metrics: metrics.clone(),
            acknowledged: Default::default(),
        };
        let shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move { delivery.run(shutdown).await }));
    }
    futures::future::join_all(tasks).await;
}

/// `jobstats channels test NAME`: one test message (a `failing` change of the job
/// `jobstats-test`), sent once; the receiver's answer, or why it failed.
pub async fn test(channel: &Channel) -> Result<String, String> {
    let http = http_client()?;
    let now = crate::projection::format::rfc3339_millis(chrono::Utc::now().timestamp_millis());
    // Built from JSON so that fields the change gains later take their defaults here.
    let change: HealthChange = serde_json::from_value(serde_json::json!({
        "specVersion": 1,
        "tenantId": "00000000-0000-0000-0000-000000000000",
        "jobName": "jobstats-test",
        "state": "failing",
        "previousState": "healthy",
        "since": now,
        "asOf": now,
        "reason": format!(
            "A test message from `jobstats channels test {}`: nothing is wrong.",
            channel.name
        ),
        "consecutiveFailures": 1,
        "executionId": null,
    }))
    .map_err(|e| format!("the test change: {e}"))?;
    let raw = change.to_bytes();
    let labels = BTreeMap::new();
    let link = channel.link(&change);
    let message = Message {
        change: &change,
        raw: &raw,
        labels: &labels,
        link: link.as_deref(),
    };
    match send(channel, &http, message).await {
        Ok(Sent::Answered(answer)) => Ok(answer),
        Ok(Sent::NothingToSend) => Ok("nothing to send".into()),
        Err(Failure::Permanent(text)) => Err(format!("refused: {text}")),
        Err(Failure::Transient(text)) => Err(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_read_with_defaults_and_errors_name_the_entry_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("key");
        std::fs::write(&key_file, "R0UTING\n").unwrap();
        let text = format!(
            r#"
            [[channels]]
            name = "hook"
            url = "https://hooks.example.com/x"
            secret = "s"

            [[channels]]
            kind = "slack"
            name = "ops-slack"
            url = "https://hooks.slack.com/services/T/B/X"
            labels = {{ team = "payments" }}
            repeat_ms = 3600000

            [[channels]]
            kind = "pagerduty"
            name = "pd"
            routing_key_file = "{}"

            [[channels]]
            kind = "opsgenie"
            name = "og"
            api_key = "k"

            [[channels]]
            kind = "teams"
            name = "teams"
            url = "https://example.webhook.office.com/workflows/x"

            [[channels]]
            kind = "email"
            name = "mail"
            smtp_url = "smtps://mail.example.com"
            username = "u"
            password = "p"
            from = "jobstats@example.com"
            to = ["ops@example.com"]

            [[channels]]
            kind = "alertmanager"
            name = "am"
            url = "http://alertmanager:9093"
            "#,
            key_file.display()
        );
        let public = reqwest::Url::parse("https://jobs.example.com/").unwrap();
        let channels = parse(&text, Some(&public)).unwrap();
        assert_eq!(channels.len(), 7);
        match &channels[2].kind {
            Kind::PagerDuty {
                url,
                routing_key,
                severity,
            } => {
                assert_eq!(url.as_str(), pagerduty::EVENTS_URL);
                assert_eq!(
                    (routing_key.as_str(), severity.as_str()),
                    ("R0UTING", "error")
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(channels[1].repeat, Some(Duration::from_secs(3600)));
        assert_eq!(channels[1].durable(), "jobstats-channel-ops-slack");
        assert_eq!(channels[0].durable(), "jobstats-webhook-hook");
        assert!(
            matches!(channels[6].kind, Kind::Alertmanager { resend, .. } if resend == Duration::from_secs(60))
        );
        for (text, fragment) in [
            ("[[channels]]\nkind = \"pagerduty\"\nname = \"p\"\nrouting_key = \"a\"\nrouting_key_file = \"/x\"", "routing_key and routing_key_file are both set"),
            ("[[channels]]\nkind = \"opsgenie\"\nname = \"o\"\napi_key = \"a\"\napi_key_file = \"/x\"", "api_key and api_key_file"),
            ("[[channels]]\nname = \"w\"\nurl = \"http://x/\"\nsecret = \"a\"\nsecret_file = \"/x\"", "secret and secret_file"),
            ("[[channels]]\nkind = \"slack\"\nname = \"s\"\nurl = \"http://x/\"\nrepeat_ms = 1000", "repeat_ms: 1000"),
            ("[[channels]]\nkind = \"slack\"\nname = \"s\"\nurl = \"http://x/\"\nsecret = \"a\"", "secret: not a field of kind \"slack\""),
            ("[[channels]]\nkind = \"sms\"\nname = \"s\"", "kind \"sms\""),
            ("[[channels]]\nkind = \"email\"\nname = \"e\"\nsmtp_url = \"http://x\"\nfrom = \"a@b.c\"\nto = [\"d@e.f\"]", "smtp_url"),
            ("[[channels]]\nkind = \"slack\"\nurl = \"http://x/\"", "name: required"),
        ] {
            let error = parse(text, None).unwrap_err();
            assert!(error.contains("channels[0]") && error.contains(fragment), "{text:?}: {error}");
        }
    }

    #[test]
    fn a_job_matches_when_its_labels_include_every_pair_of_the_filter() {
        let filters = Filters {
            labels: BTreeMap::from([("team".to_owned(), "payments".to_owned())]),
            ..Default::default()
        };
        let change: HealthChange = serde_json::from_value(serde_json::json!({
            "specVersion": 1, "tenantId": "t", "jobName": "j", "state": "failing",
            "previousState": "healthy", "since": null, "asOf": "2026-01-01T00:00:00.000Z",
            "reason": "r", "consecutiveFailures": 1, "executionId": null
        }))
        .unwrap();
        let labels = labels_of(br#"{"labels": {"team": "payments", "tier": "1"}}"#);
        assert!(filters.wants(&change, &labels));
        assert!(!filters.wants(&change, &labels_of(br#"{"labels": {"team": "search"}}"#)));
        assert!(
            !filters.wants(&change, &labels_of(b"{}")),
            "absent labels are no labels"
        );
        assert!(Filters::default().wants(&change, &BTreeMap::new()));
        assert!(is_silenced_trouble(&change, br#"{"silenced": true}"#));
        assert!(!is_silenced_trouble(
            &change,
            br#"{"silenced": true, "silenceEnded": true}"#
        ));
        assert!(!is_silenced_trouble(&change, b"{}"));
    }

    #[test]
    fn a_slack_url_is_shown_without_its_token_path() {
        let kind = Kind::Slack {
            url: reqwest::Url::parse("https://hooks.slack.com/services/T0/B0/SECRET").unwrap(),
        };
        assert_eq!(kind.shown_target(), "https://hooks.slack.com/...");
    }

    #[test]
    fn the_link_is_the_dashboard_page_of_the_job() {
        let base = reqwest::Url::parse("https://jobs.example.com/").unwrap();
        assert_eq!(
            job_page(&base, "3f0c7f7e-8a51-4a52-9f7e-0d6a4c1b2e11", "nightly report"),
            "https://jobs.example.com/ui/#/jobs/nightly%20report?tenant=3f0c7f7e-8a51-4a52-9f7e-0d6a4c1b2e11"
        );
    }
}
