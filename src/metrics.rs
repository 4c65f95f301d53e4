//! Prometheus metrics of the process (served as text at `/metrics`) and the projector status
//! that `/readyz` reads. Updated by the projector, the rebuild and the HTTP middleware.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobHealthLabels {
    pub tenant: String,
    pub health: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub webhook: String,
    /// `delivered`, `failed_attempt`, `dead_lettered`, `filtered`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabels {
    pub channel: String,
    pub kind: String,
    /// `delivered`, `failed_attempt`, `dead_lettered`, `refused`, `filtered`, `silenced`,
    /// `nothing_to_send`, `resent`, `resend_failed`, `reminded`, `reminder_failed`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelName {
    pub channel: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookName {
    pub webhook: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `ok` or `error`.
    pub outcome: String,
}

/// The identity provider's key sets (`JOBSTATS_JWT_JWKS_URL`): fetches by outcome and the keys
/// held, all realms together (realms are configured, but a realm label is not worth a series
/// per realm here).
#[derive(Clone, Debug, Default)]
pub struct JwksMetrics {
    pub fetches: Family<OutcomeLabel, Counter>,
    pub keys: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub status: u16,
}

/// Every metric the service exports.
pub struct Metrics {
    /// What names neither a tenant, a job nor a webhook: served on the API port too.
    registry: Registry,
    /// Series labelled by tenant or webhook: only on the admin listener (CONTRACT §3).
    labelled: Registry,
    pub events_applied: Counter,
    pub dead_letters: Family<ReasonLabel, Counter>,
    pub last_applied_sequence: Gauge,
    pub projector_lag: Gauge,
    pub batches_committed: Counter,
    pub http_requests: Family<RequestLabels, Counter>,
    pub http_latency_seconds: Family<RequestLabels, Histogram>,
    pub jwks: JwksMetrics,
    pub rebuild_in_progress: Gauge,
    /// Read-your-writes requests waiting now (capped by `JOBSTATS_HTTP_MAX_WAITERS`).
    pub read_your_writes_waiting: Gauge,
    pub rebuild_events_done: Gauge,
    pub rebuild_events_total: Gauge,
    pub rebuilds_completed: Counter,
    pub jobs_by_health: Family<JobHealthLabels, Gauge>,
    pub projector_errors: Counter,
    pub health_changes_published: Family<StateLabel, Counter>,
    pub health_change_delay_seconds: Histogram,
    pub webhook_deliveries: Family<WebhookLabels, Counter>,
    pub webhook_delivery_seconds: Histogram,
    /// Alert channels (webhooks included), by channel, kind and outcome.
    pub channel_deliveries: Family<ChannelLabels, Counter>,
    pub channel_delivery_seconds: Family<ChannelName, Histogram>,
    /// Where each webhook's delivery stands, set by the delivery and read by the scrape and
    /// the admin `/readyz`.
    pub webhook_lag: std::sync::Mutex<std::collections::BTreeMap<String, WebhookLag>>,
    webhook_oldest_age_seconds: Family<WebhookName, Gauge<f64, std::sync::atomic::AtomicU64>>,
    webhook_backlog: Family<WebhookName, Gauge>,
    /// When `jobs_by_health` was last counted; held while a scrape recounts, so concurrent
    /// scrapes wait for one count instead of each judging every job.
    pub jobs_by_health_counted: tokio::sync::Mutex<Option<std::time::Instant>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut metrics = Metrics {
            registry: Registry::with_prefix("jobstats"),
            labelled: Registry::with_prefix("jobstats"),
            events_applied: Counter::default(),
            dead_letters: Family::default(),
            last_applied_sequence: Gauge::default(),
            projector_lag: Gauge::default(),
            batches_committed: Counter::default(),
            http_requests: Family::default(),
            http_latency_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_25, 2.0, 14))
            }),
            jwks: JwksMetrics::default(),
            rebuild_in_progress: Gauge::default(),
            read_your_writes_waiting: Gauge::default(),
            rebuild_events_done: Gauge::default(),
            rebuild_events_total: Gauge::default(),
            rebuilds_completed: Counter::default(),
            jobs_by_health: Family::default(),
            projector_errors: Counter::default(),
            health_changes_published: Family::default(),
            health_change_delay_seconds: Histogram::new(exponential_buckets(0.05, 2.0, 14)),
            webhook_deliveries: Family::default(),
            webhook_delivery_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 18)),
            channel_deliveries: Family::default(),
            channel_delivery_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 18))
            }),
            webhook_lag: Default::default(),
            webhook_backlog: Family::default(),
            webhook_oldest_age_seconds: Family::default(),
            jobs_by_health_counted: tokio::sync::Mutex::new(None),
        };
        metrics.register_projection();
        metrics.register_serving();
        metrics.register_notifications();
        metrics
    }
}

impl Metrics {
    /// The projector's and the read model's metrics.
    fn register_projection(&mut self) {
        let registry = &mut self.registry;
        registry.register(
            "projector_errors",
            "Projector sessions that failed (NATS, or the database: a full disk, an I/O \
             error); nothing past the checkpoint is acknowledged, and it retries",
            self.projector_errors.clone(),
        );
        self.labelled.register(
            "jobs",
            "Jobs by health state per tenant, counted at scrape time at most every 10 s; \
             tenants past the 100 with most jobs are summed under tenant=\"_other\"",
            self.jobs_by_health.clone(),
        );
        registry.register(
            "events_applied",
            "Valid events applied to the read model by this process",
            self.events_applied.clone(),
        );
        registry.register(
            "dead_letters",
            "Messages recorded as dead letters by this process, by reason",
            self.dead_letters.clone(),
        );
        registry.register(
            "last_applied_sequence",
            "Stream sequence of the read model's checkpoint",
            self.last_applied_sequence.clone(),
        );
        registry.register(
            "projector_lag_events",
            "Messages in the stream not yet applied (consumer pending count)",
            self.projector_lag.clone(),
        );
        registry.register(
            "batches_committed",
            "SQLite transactions committed by the projector",
            self.batches_committed.clone(),
        );
    }

    /// HTTP and rebuild metrics.
    fn register_serving(&mut self) {
        let registry = &mut self.registry;
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            self.http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency, by route and status",
            self.http_latency_seconds.clone(),
        );
        registry.register(
            "jwks_fetches",
            "Fetches of the identity provider's key sets (JOBSTATS_JWT_JWKS_URL), by outcome",
            self.jwks.fetches.clone(),
        );
        registry.register(
            "jwks_keys",
            "Signing keys held from the identity provider's key sets, all realms",
            self.jwks.keys.clone(),
        );
        registry.register(
            "read_your_writes_waiting",
            "Requests waiting for minSequence now; past JOBSTATS_HTTP_MAX_WAITERS they are \
             answered 503 PROJECTION_BEHIND at once",
            self.read_your_writes_waiting.clone(),
        );
        registry.register(
            "rebuild_in_progress",
            "1 while this process rebuilds the read model",
            self.rebuild_in_progress.clone(),
        );
        registry.register(
            "rebuild_events_done",
            "Messages replayed by the running rebuild",
            self.rebuild_events_done.clone(),
        );
        registry.register(
            "rebuild_events_total",
            "Stream head the running rebuild replays up to",
            self.rebuild_events_total.clone(),
        );
        registry.register(
            "rebuilds_completed",
            "Rebuilds this process completed and swapped in",
            self.rebuilds_completed.clone(),
        );
    }
}

impl Metrics {
    /// Health notifications and webhook deliveries.
    fn register_notifications(&mut self) {
        let registry = &mut self.registry;
        registry.register(
            "health_changes_published",
            "Health state changes this process published to JOB_HEALTH, by new state (a change \
             another replica stored first counts here too: the stream keeps one)",
            self.health_changes_published.clone(),
        );
        registry.register(
            "health_change_delay_seconds",
            "From the instant a health state became true (its `since`) to its publication",
            self.health_change_delay_seconds.clone(),
        );
        let labelled = &mut self.labelled;
        labelled.register(
            "webhook_deliveries",
            "Webhook delivery attempts by webhook and outcome (delivered, failed_attempt, \
             dead_lettered, filtered)",
            self.webhook_deliveries.clone(),
        );
        registry.register(
            "webhook_delivery_seconds",
            "From a change's publication on JOB_HEALTH to its receiver's 2xx answer",
            self.webhook_delivery_seconds.clone(),
        );
        labelled.register(
            "channel_deliveries",
            "Alert channel deliveries by channel, kind and outcome (delivered, failed_attempt, \
             dead_lettered, refused, filtered, silenced, nothing_to_send, redelivery_skipped, resent, resend_failed, \
             reminded, reminder_failed)",
            self.channel_deliveries.clone(),
        );
        labelled.register(
            "channel_delivery_seconds",
            "Per alert channel, from a change's publication on JOB_HEALTH to its receiver \
             taking it",
            self.channel_delivery_seconds.clone(),
        );
        labelled.register(
            "webhook_oldest_undelivered_age_seconds",
            "Per webhook, the age of the oldest health change not yet delivered (0: none)",
            self.webhook_oldest_age_seconds.clone(),
        );
        labelled.register(
            "webhook_backlog",
            "Per webhook, health changes on JOB_HEALTH not yet handed to its delivery",
            self.webhook_backlog.clone(),
        );
    }

    /// Counts one outcome of an alert channel (a webhook's also under `webhook_deliveries`).
    pub fn count_channel(&self, channel: &str, kind: &str, outcome: &str) {
        self.channel_deliveries
            .get_or_create(&ChannelLabels {
                channel: channel.to_owned(),
                kind: kind.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        if kind == "webhook" {
            self.webhook_deliveries
                .get_or_create(&WebhookLabels {
                    webhook: channel.to_owned(),
                    outcome: outcome.to_owned(),
                })
                .inc();
        }
    }

    /// Records how long a change took from its publication to the channel's receiver.
    pub fn observe_channel_latency(&self, channel: &str, kind: &str, seconds: f64) {
        self.channel_delivery_seconds
            .get_or_create(&ChannelName {
                channel: channel.to_owned(),
                kind: kind.to_owned(),
            })
            .observe(seconds);
        if kind == "webhook" {
            self.webhook_delivery_seconds.observe(seconds);
        }
    }

    /// Replaces the jobs-by-health gauges with `counts` (tenant label, state, jobs); states
    /// absent from `counts` read 0 rather than vanish, so a job leaving a state shows.
    pub fn set_jobs_by_health(&self, counts: &[(String, &'static str, i64)]) {
        self.jobs_by_health.clear();
        for (tenant, health, jobs) in counts {
            self.jobs_by_health
                .get_or_create(&JobHealthLabels {
                    tenant: tenant.clone(),
                    health: (*health).to_owned(),
                })
                .set(*jobs);
        }
    }

    /// The Prometheus text exposition: the service-level series, and with `labelled` also
    /// those that name tenants and webhooks (the admin listener's).
    pub fn render(&self, labelled: bool) -> String {
        self.render_with(labelled, |_| {})
    }

    /// [`Metrics::render`], with `more` appending further families (the per-job series)
    /// before the closing `# EOF`.
    pub fn render_with(&self, labelled: bool, more: impl FnOnce(&mut String)) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        if labelled {
            self.refresh_webhook_ages();
        }
        let mut text = String::new();
        encode_registry(&mut text, &self.registry).expect("writing to a String cannot fail");
        if labelled {
            encode_registry(&mut text, &self.labelled).expect("writing to a String cannot fail");
        }
        more(&mut text);
        encode_eof(&mut text).expect("writing to a String cannot fail");
        text
    }

    /// Per webhook (by name): the age in seconds of its oldest undelivered change (0: none)
    /// and how many more wait behind it: the operator's view of a receiver falling behind.
    pub fn webhook_lag(&self) -> Vec<(String, f64, u64)> {
        let now = chrono::Utc::now().timestamp_millis();
        let lags = self.webhook_lag.lock().unwrap_or_else(|p| p.into_inner());
        lags.iter()
            .map(|(name, lag)| {
                let age = match lag.undelivered_since_ms {
                    0 => 0.0,
                    since => (now - since).max(0) as f64 / 1e3,
                };
                (name.clone(), age, lag.backlog)
            })
            .collect()
    }

    /// Records that `webhook` is delivering a change published at `published_ms` (None: it
    /// has caught up) with `backlog` more behind it.
    pub fn set_webhook_lag(&self, webhook: &str, published_ms: Option<i64>, backlog: u64) {
        let mut lags = self.webhook_lag.lock().unwrap_or_else(|p| p.into_inner());
        let lag = lags.entry(webhook.to_owned()).or_default();
        lag.undelivered_since_ms = published_ms.unwrap_or(0);
        lag.backlog = backlog;
    }

    fn refresh_webhook_ages(&self) {
        for (name, age, backlog) in self.webhook_lag() {
            let labels = WebhookName { webhook: name };
            self.webhook_oldest_age_seconds
                .get_or_create(&labels)
                .set(age);
            self.webhook_backlog
                .get_or_create(&labels)
                .set(backlog.min(i64::MAX as u64) as i64);
        }
    }
}

/// Where one webhook's delivery stands.
#[derive(Debug, Default, Clone, Copy)]
pub struct WebhookLag {
    /// Stream publish time (Unix ms) of the change being delivered; 0 while none is.
    pub undelivered_since_ms: i64,
    /// Changes stored after it, not yet handed to the delivery.
    pub backlog: u64,
}

/// What the projector last reported, for `/readyz` and read-your-writes waits.
#[derive(Default)]
pub struct ProjectorStatus {
    pub nats_connected: AtomicBool,
    /// Set once the projector has applied everything the stream held at some point.
    pub caught_up: AtomicBool,
    pub last_sequence: AtomicU64,
    pub lag: AtomicU64,
    /// 1 while a start-up rebuild (projection version change) runs.
    pub rebuilding: AtomicBool,
    pub rebuild_done: AtomicU64,
    pub rebuild_total: AtomicU64,
    /// Unix ms of the last projector error (0: none since the last successful commit).
    pub last_error_at_ms: AtomicI64,
    /// What that error said, and the kind of failure in fixed words (for the API port).
    pub last_error: std::sync::Mutex<Option<(String, &'static str)>>,
    /// What start-up had to repair (a damaged database moved aside), reported until restart.
    pub startup_recovery: std::sync::Mutex<Option<String>>,
    /// Unix ms since which NATS has been unreachable (0: connected).
    pub disconnected_since_ms: AtomicI64,
    /// The highest stream sequence delivered to the projector (applied or not yet).
    pub delivered_sequence: AtomicU64,
    /// Stream publish time (Unix ms) of the last applied message (0: none yet).
    pub last_published_at_ms: AtomicI64,
}

impl ProjectorStatus {
    /// Where the projection stands, for judging health (CONTRACT §5).
    pub fn position(&self) -> crate::projection::health::Position {
        let connected = self.nats_connected.load(Ordering::Relaxed);
        let applied = self.last_sequence.load(Ordering::Acquire);
        let caught_up = connected
            && self.caught_up.load(Ordering::Relaxed)
            && self.lag.load(Ordering::Relaxed) == 0
            && self.delivered_sequence.load(Ordering::Relaxed) <= applied;
        let since = self.disconnected_since_ms.load(Ordering::Relaxed);
        let published = self.last_published_at_ms.load(Ordering::Relaxed);
        crate::projection::health::Position {
            caught_up,
            unreachable_since: (since > 0).then_some(since),
            last_published_at: (published > 0).then_some(published),
        }
    }

    pub fn record_error(&self, error: &str, summary: &'static str) {
        self.last_error_at_ms
            .store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((error.to_owned(), summary));
    }

    pub fn clear_error(&self) {
        if self.last_error_at_ms.swap(0, Ordering::Relaxed) != 0 {
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    /// The projector's failure since its last successful commit, if any: its text and its
    /// kind in fixed words.
    pub fn error(&self) -> Option<(String, &'static str)> {
        if self.last_error_at_ms.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
