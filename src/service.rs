//! Wiring: `serve` (projector + HTTP API in one process) and the start-up rebuild when the
//! database was built by another projection version. Every long-running piece gets its
//! connections and a shutdown future from here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::api::auth::{AuthSettings, Authenticator};
use crate::api::limits::HttpLimits;
use crate::api::{self, AppState};
use crate::ingest::live::{self, ProjectorConfig, ProjectorHandles};
use crate::ingest::replay::{self, Progress};
use crate::metrics::{Metrics, ProjectorStatus};
use crate::notify::evaluator::{self, EvaluatorConfig, EvaluatorHandles, TouchedJobs};
use crate::scope::TenantScope;
use crate::store::{self, generation, CurrentReader, ReadPool, Writer, PROJECTION_VERSION};
use crate::stream::StreamSpec;

pub use crate::shutdown::Shutdown;

/// Resolves on SIGINT or SIGTERM.
pub async fn termination_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler only fails outside a Tokio runtime");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

/// How long `serve` waits, once its HTTP server has stopped, for its tasks to finish.
const STOP_PATIENCE: Duration = Duration::from_millis(1_000);

/// What `serve` runs with (the CLI builds it from flags, environment and file).
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Seed URLs, credentials and TLS towards NATS.
    pub nats: crate::stream::NatsSettings,
    /// The stream, and its replicas when this service creates it.
    pub stream: StreamSpec,
    /// The read model: a plain file or a generation symlink.
    pub db_path: PathBuf,
    /// Durable consumer name; each read replica uses its own.
    pub consumer: String,
    /// The tenants this replica projects and serves (`JOBSTATS_TENANTS`).
    pub tenants: TenantScope,
    /// Serve the file as it is, without projecting.
    pub read_only: bool,
    /// How long an execution may process before its job is `stuck`, for schedules that set
    /// no `maxRuntimeMs`.
    pub default_max_runtime: Duration,
    /// Where `/readyz` and `/metrics` go instead of the API address, when set.
    pub admin_listen: Option<SocketAddr>,
    /// `JOBSTATS_JOB_METRICS_MAX`: the jobs with per-job series on the admin `/metrics`.
    pub job_metrics_max: usize,
    pub auth: AuthSettings,
    pub http: HttpLimits,
    /// HTTPS on both listeners (`JOBSTATS_TLS_CERT_FILE` + `JOBSTATS_TLS_KEY_FILE`).
    pub tls: Option<crate::api::tls::TlsFiles>,
    /// Receivers of health changes (`JOBSTATS_WEBHOOKS_FILE` and `JOBSTATS_CHANNELS_FILE`).
    pub channels: Vec<crate::notify::channels::Channel>,
    /// The dashboard's sign-in with an OpenID provider.
    pub ui: crate::api::ui::UiSettings,
    /// `JOBSTATS_INGEST_RATE`: each ingest key's request rate.
    pub ingest_limits: crate::api::ingest::IngestLimits,
}

/// Runs `jobstats serve` on an already bound listener until `shutdown`. `applied` receives
/// the checkpoint at start and after each commit, for in-process observers (the demo waits
/// on it before it prints its curl commands).
pub async fn serve(
    config: &ServeConfig,
    listener: tokio::net::TcpListener,
    shutdown: Shutdown,
    applied: watch::Sender<u64>,
) -> anyhow::Result<()> {
    let tls = match &config.tls {
        Some(files) => {
            let cert = crate::api::tls::ReloadingCert::load(files)?;
            let server_config = cert.server_config();
            tokio::spawn(cert.watch());
            Some(server_config)
        }
        None => None,
    };
    let metrics = Arc::new(Metrics::default());
    let authenticator = Authenticator::with_metrics(config.auth.clone(), metrics.jwks.clone())?;
    if let Some(key_sets) = authenticator.key_sets() {
        // Fetched in the background: an identity provider that is down at start-up delays
        // nothing but the tokens only its keys verify (CONTRACT §9).
        tokio::spawn(key_sets.keep_fresh(shutdown.wait()));
    }
    let db_path = &config.db_path;
    let status = Arc::new(ProjectorStatus::default());
    if !config.read_only {
        move_aside_if_damaged(db_path, &status)?;
    }
    let applied_sequence = applied.subscribe();
    let flips = Arc::new(crate::notify::history::FlipHistory::default());
    let job_health = Arc::new(crate::job_metrics::JobHealthBoard::default());
    let keys = Arc::new(crate::keys::KeyRing::default());
    let state = |readers, nats| {
        Arc::new(AppState {
            readers,
            authenticator,
            metrics: metrics.clone(),
            status: status.clone(),
            nats,
            bodies: Default::default(),
            default_max_runtime_ms: config.default_max_runtime.as_millis() as i64,
            applied: applied_sequence,
            tenants: config.tenants.clone(),
            waiters: tokio::sync::Semaphore::new(config.http.max_waiters as usize),
            list_orders: Default::default(),
            flips: flips.clone(),
            ui: config.ui.clone(),
            job_health: job_health.clone(),
            job_metrics_max: config.job_metrics_max,
            ingest: crate::api::ingest::IngestState::new(keys.clone(), config.ingest_limits),
        })
    };
    let admin = admin_listener(config.admin_listen).await?;

    let frozen = store::frozen_until(db_path)
        .with_context(|| format!("JOBSTATS_DB_PATH {}", db_path.display()))?;
    if config.read_only || frozen.is_some() {
        tracing::info!(db = %db_path.display(), frozen_until = ?frozen, "serving read-only");
        let readers = open_read_only(db_path, &status, !config.read_only)?;
        applied.send_replace(status.last_sequence.load(Ordering::Relaxed));
        let state = state(readers, None);
        api::serve(listener, admin, state, &config.http, tls, shutdown.wait()).await?;
        return Ok(());
    }

    let _serve_lock = generation::lock_serve(db_path)
        .with_context(|| format!("JOBSTATS_DB_PATH {}", db_path.display()))?;
    generation::remove_leftovers(db_path)?;
    let (writer, built_with) = open_writer(db_path)?;
    let readers = Arc::new(CurrentReader::new(ReadPool::open(db_path)?));
    let client = crate::stream::connect(&config.nats, "jobstats-serve", false).await?;
    let freshness = readers.get().freshness().unwrap_or_default();
    status.last_published_at_ms.store(
        freshness.last_published_at_ms.unwrap_or(0),
        Ordering::Relaxed,
    );
    applied.send_replace(freshness.last_sequence);
    let (touched, notifications) = spawn_notifications(
        &client,
        config,
        &readers,
        &status,
        &metrics,
        AnnouncedHealth {
            flips: &flips,
            job_health: &job_health,
        },
        &shutdown,
    );
    let handles = ProjectorHandles {
        status: status.clone(),
        metrics: metrics.clone(),
        readers: readers.clone(),
        applied,
        touched: Some(touched),
    };
    let projector = tokio::spawn(project(
        client.clone(),
        ProjectorConfig::new(
            config.stream.clone(),
            &config.consumer,
            db_path.clone(),
            config.tenants.clone(),
        ),
        writer.ok_or(built_with),
        handles,
        shutdown.clone(),
    ));

    let key_follower = tokio::spawn(crate::keys::follow(
        client.clone(),
        config.stream.replicas,
        keys.clone(),
        shutdown.wait(),
    ));
    let link = api::NatsLink {
        client: client.clone(),
        settings: config.nats.clone(),
    };
    let state = state(readers, Some(link));
    tracing::info!(listen = %listener.local_addr()?, db = %db_path.display(), "serving");
    let http_result = api::serve(listener, admin, state, &config.http, tls, shutdown.wait()).await;
    // The projector commits the batch in hand before it returns. A task waiting on NATS
    // while it is unreachable (an ack, a publish, a flush) would wait for as long as the
    // outage lasts; nothing it holds is lost by not waiting (the checkpoint is in SQLite and
    // unacknowledged messages are redelivered), so stopping is bounded instead.
    stop_tasks(
        [projector, key_follower].into_iter().chain(notifications),
        &client,
    )
    .await;
    http_result?;
    Ok(())
}

/// Waits up to [`STOP_PATIENCE`] for `tasks` and a last flush.
async fn stop_tasks(
    tasks: impl Iterator<Item = tokio::task::JoinHandle<()>>,
    client: &async_nats::Client,
) {
    let stopping = async {
        for task in tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "background task failed");
            }
        }
        client.flush().await.ok();
    };
    if tokio::time::timeout(STOP_PATIENCE, stopping).await.is_err() {
        tracing::warn!(patience = ?STOP_PATIENCE, "background tasks still waiting on NATS; stopping without them");
    }
}

/// Where the announced health changes are kept for reading: each job's flips (flips endpoint,
/// uptime) and its current state (per-job metrics).
struct AnnouncedHealth<'a> {
    flips: &'a Arc<crate::notify::history::FlipHistory>,
    job_health: &'a Arc<crate::job_metrics::JobHealthBoard>,
}

/// Starts the health evaluator and, when channels are configured, their delivery; returns
/// where the projector reports the jobs each commit touched, and the tasks.
fn spawn_notifications(
    client: &async_nats::Client,
    config: &ServeConfig,
    readers: &Arc<CurrentReader>,
    status: &Arc<ProjectorStatus>,
    metrics: &Arc<Metrics>,
    announced: AnnouncedHealth<'_>,
    shutdown: &Shutdown,
) -> (Arc<TouchedJobs>, Vec<tokio::task::JoinHandle<()>>) {
    let touched = Arc::new(TouchedJobs::default());
    let mut tasks = vec![tokio::spawn(evaluator::run(
        client.clone(),
        EvaluatorConfig {
            stream_replicas: config.stream.replicas,
            default_max_runtime_ms: config.default_max_runtime.as_millis() as i64,
        },
        EvaluatorHandles {
            readers: readers.clone(),
            status: status.clone(),
            metrics: metrics.clone(),
            touched: touched.clone(),
            job_health: announced.job_health.clone(),
        },
        shutdown.wait(),
    ))];
    tasks.push(tokio::spawn(crate::notify::history::follow(
        client.clone(),
        announced.flips.clone(),
        shutdown.wait(),
    )));
    if !config.channels.is_empty() {
        tasks.push(tokio::spawn(crate::notify::channels::run(
            client.clone(),
            config.channels.clone(),
            config.stream.replicas,
            metrics.clone(),
            shutdown.clone(),
        )));
    }
    (touched, tasks)
}

/// The readers of a file served as it is (a copy is judged as of its last event, never as
/// of now).
/// A frozen copy is never projected into, but it may predate columns this build reads:
/// migrations add them without touching its data, when its figures were built by this
/// build's projection (another projection's copy would be served with empty percentiles and
/// windows, so it is refused: rebuild it with `--until`).
fn prepare_frozen_copy(db_path: &Path) -> anyhow::Result<()> {
    let built_with = store::projection_version_of(db_path)?;
    anyhow::ensure!(
        built_with == Some(store::PROJECTION_VERSION),
        "JOBSTATS_DB_PATH {}: a point-in-time copy built by projection version {} (this build's \
         is {}); make it again with `jobstats rebuild --until … --output …`",
        db_path.display(),
        built_with.map_or("unknown".to_owned(), |v| v.to_string()),
        store::PROJECTION_VERSION,
    );
    let (found, supported) = store::schema_versions(db_path)?;
    if found < supported {
        store::migrate_file(db_path)
            .with_context(|| format!("JOBSTATS_DB_PATH {}", db_path.display()))?;
    }
    Ok(())
}

/// Opens a file to serve without projecting; a frozen copy (`frozen_copy`: served read-only
/// because it is one, not because `--read-only` said so) is brought up to this schema first.
fn open_read_only(
    db_path: &Path,
    status: &ProjectorStatus,
    frozen_copy: bool,
) -> anyhow::Result<Arc<CurrentReader>> {
    anyhow::ensure!(
        db_path.exists(),
        "JOBSTATS_DB_PATH {}: no such database to serve read-only",
        db_path.display()
    );
    if frozen_copy {
        prepare_frozen_copy(db_path)?;
    }
    let (found, supported) = store::schema_versions(db_path)?;
    anyhow::ensure!(
        found == supported,
        "JOBSTATS_DB_PATH {}: made by {} jobstats (schema {found}; this build reads {supported}); \
         --read-only never changes the file: serve it once without --read-only (a frozen copy \
         stays frozen, its schema is brought up to date), or use a build that matches it",
        db_path.display(),
        if found < supported {
            "an older"
        } else {
            "a newer"
        },
    );
    let readers = Arc::new(CurrentReader::new(ReadPool::open(db_path)?));
    let freshness = readers.get().freshness()?;
    status
        .last_sequence
        .store(freshness.last_sequence, Ordering::Relaxed);
    status.last_published_at_ms.store(
        freshness.last_published_at_ms.unwrap_or(0),
        Ordering::Relaxed,
    );
    Ok(readers)
}

/// Checked before anything reads the file. The stream is the source of truth: a damaged
/// file is kept for a post-mortem and the read model is built again from sequence 1;
/// /readyz says so until caught up. (A damaged file cannot say whether it was a
/// point-in-time copy, so only an explicit --read-only keeps it from being rebuilt.)
fn move_aside_if_damaged(db_path: &Path, status: &ProjectorStatus) -> anyhow::Result<()> {
    let Some(problem) = store::integrity_problem(db_path) else {
        return Ok(());
    };
    let aside = store::move_aside(db_path).with_context(|| {
        format!(
            "JOBSTATS_DB_PATH {}: moving a damaged file aside",
            db_path.display()
        )
    })?;
    let recovery = format!(
        "{} failed its integrity check ({problem}); moved to {} and rebuilding from the stream",
        db_path.display(),
        aside.display()
    );
    tracing::error!("{recovery}");
    *status
        .startup_recovery
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(recovery);
    Ok(())
}

/// The writer, or `None` when the file was built by another projection version (then with
/// that version): its schema is still brought up to date (new columns stay empty) so the API
/// can keep answering from it while a rebuild runs.
fn open_writer(db_path: &Path) -> anyhow::Result<(Option<Writer>, Option<i64>)> {
    let built_with = store::projection_version_of(db_path)?;
    let (writer, _) =
        Writer::open(db_path).with_context(|| format!("JOBSTATS_DB_PATH {}", db_path.display()))?;
    if built_with.is_some_and(|v| v != PROJECTION_VERSION) {
        return Ok((None, built_with));
    }
    Ok((Some(writer), built_with))
}

/// The projector task: the live consumer on `writer`, after a start-up rebuild when the file
/// was built by another projection version (`Err(version)`).
async fn project(
    client: async_nats::Client,
    config: ProjectorConfig,
    writer: Result<Writer, Option<i64>>,
    handles: ProjectorHandles,
    shutdown: Shutdown,
) {
    let writer = match writer {
        Ok(writer) => writer,
        Err(built_with) => {
            let rebuilt = rebuild_on_start(
                &client,
                &config,
                &config.db_path,
                &handles,
                &shutdown,
                built_with,
            );
            match rebuilt.await {
                Some(writer) => writer,
                None => return,
            }
        }
    };
    live::run(client, config, writer, handles, shutdown.wait()).await;
}

/// Rebuilds blue-green when the file on disk was built by another projection version, while
/// the API keeps answering from the old file; returns the writer on the new file.
async fn rebuild_on_start(
    client: &async_nats::Client,
    config: &ProjectorConfig,
    db_path: &Path,
    handles: &ProjectorHandles,
    shutdown: &Shutdown,
    built_with: Option<i64>,
) -> Option<Writer> {
    tracing::warn!(found = ?built_with, expected = PROJECTION_VERSION, "database built by another projection version; rebuilding from the stream");
    handles.status.rebuilding.store(true, Ordering::Relaxed);
    handles.metrics.rebuild_in_progress.set(1);
    let mut attempt = 0u32;
    loop {
        let mut progress = StatusProgress {
            handles: handles.clone(),
            human: replay::HumanProgress::default(),
        };
        let rebuild = replay::rebuild_live(
            client,
            &config.stream,
            db_path,
            &config.scope,
            &mut progress,
        );
        let outcome = tokio::select! {
            outcome = rebuild => outcome,
            _ = shutdown.wait() => return None,
        };
        match outcome {
            Ok(report) => {
                tracing::info!(
                    messages = report.messages,
                    elapsed_ms = report.elapsed_ms as u64,
                    "start-up rebuild complete"
                );
                break;
            }
            Err(error) => {
                attempt += 1;
                tracing::error!(%error, attempt, "start-up rebuild failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(2u64.pow(attempt.min(5)))) => {}
                    _ = shutdown.wait() => return None,
                }
            }
        }
    }
    let path = db_path.to_path_buf();
    let opened = tokio::task::spawn_blocking(move || -> Result<_, store::StoreError> {
        let (writer, _) = Writer::open(&path)?;
        let readers = ReadPool::open(&path)?;
        Ok((writer, readers))
    })
    .await;
    let (writer, readers) = match opened {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot open the rebuilt database");
            return None;
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot open the rebuilt database");
            return None;
        }
    };
    let old = handles.readers.replace(readers);
    drop(old);
    handles.status.rebuilding.store(false, Ordering::Relaxed);
    handles.metrics.rebuild_in_progress.set(0);
    handles.metrics.rebuilds_completed.inc();
    Some(writer)
}

struct StatusProgress {
    handles: ProjectorHandles,
    human: replay::HumanProgress,
}

impl Progress for StatusProgress {
    fn update(&mut self, done: u64, total: u64) {
        self.handles
            .status
            .rebuild_done
            .store(done, Ordering::Relaxed);
        self.handles
            .status
            .rebuild_total
            .store(total, Ordering::Relaxed);
        self.handles.metrics.rebuild_events_done.set(done as i64);
        self.handles.metrics.rebuild_events_total.set(total as i64);
        self.human.update(done, total);
    }

    fn finish(&mut self) {
        self.human.finish();
    }
}

/// Binds `JOBSTATS_ADMIN_LISTEN`, when set.
async fn admin_listener(
    address: Option<SocketAddr>,
) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    let Some(address) = address else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("JOBSTATS_ADMIN_LISTEN {address}: cannot listen"))?;
    Ok(Some(listener))
}
