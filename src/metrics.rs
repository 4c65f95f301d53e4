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
pub struct RequestLabels {
    pub route: String,
    pub status: u16,
}

/// Every metric the service exports.
pub struct Metrics {
    registry: Registry,
    pub events_applied: Counter,
    pub dead_letters: Family<ReasonLabel, Counter>,
    pub last_applied_sequence: Gauge,
    pub projector_lag: Gauge,
    pub batches_committed: Counter,
    pub http_requests: Family<RequestLabels, Counter>,
    pub http_latency_seconds: Family<RequestLabels, Histogram>,
    pub rebuild_in_progress: Gauge,
    pub rebuild_events_done: Gauge,
    pub rebuild_events_total: Gauge,
    pub rebuilds_completed: Counter,
    pub jobs_by_health: Family<JobHealthLabels, Gauge>,
    pub projector_errors: Counter,
    pub health_changes_published: Family<StateLabel, Counter>,
    pub health_change_delay_seconds: Histogram,
    pub webhook_deliveries: Family<WebhookLabels, Counter>,
    pub webhook_delivery_seconds: Histogram,
    /// When `jobs_by_health` was last counted; held while a scrape recounts, so concurrent
    /// scrapes wait for one count instead of each judging every job.
    pub jobs_by_health_counted: tokio::sync::Mutex<Option<std::time::Instant>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut metrics = Metrics {
            registry: Registry::with_prefix("jobstats"),
            events_applied: Counter::default(),
            dead_letters: Family::default(),
            last_applied_sequence: Gauge::default(),
            projector_lag: Gauge::default(),
            batches_committed: Counter::default(),
            http_requests: Family::default(),
            http_latency_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_25, 2.0, 14))
            }),
            rebuild_in_progress: Gauge::default(),
            rebuild_events_done: Gauge::default(),
            rebuild_events_total: Gauge::default(),
            rebuilds_completed: Counter::default(),
            jobs_by_health: Family::default(),
            projector_errors: Counter::default(),
            health_changes_published: Family::default(),
            health_change_delay_seconds: Histogram::new(exponential_buckets(0.05, 2.0, 14)),
            webhook_deliveries: Family::default(),
            webhook_delivery_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 18)),
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
        registry.register(
            "jobs",
            "Jobs by health state (CONTRACT §5) per tenant, counted at scrape time at most every \
             10 s; tenants past the 100 with most jobs are summed under tenant=\"_other\"",
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
        registry.register(
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

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
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
    /// What that error said (e.g. "database or disk is full").
    pub last_error: std::sync::Mutex<Option<String>>,
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

    pub fn record_error(&self, error: &str) {
        self.last_error_at_ms
            .store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error.to_owned());
    }

    pub fn clear_error(&self) {
        if self.last_error_at_ms.swap(0, Ordering::Relaxed) != 0 {
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    /// The projector's failure since its last successful commit, if any.
    pub fn error(&self) -> Option<String> {
        if self.last_error_at_ms.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
