//! `jobstats demo`: everything for a first look in one command — a NATS server when none is
//! reachable, `serve`, and demo job runners publishing through the same [`Publisher`] a Rust
//! runner uses — then a ready token and curl command. Ctrl-C stops all of it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};

use crate::api::auth::AuthSettings;
use crate::api::auth::{mint_hs256, DevClaims, ROLE_SYSTEM_ADMIN};
use crate::nats_server::JetStreamServer;
use crate::publish::{EventBuilder, PublishError, Publisher, RunEnd};
use crate::schedule::CronSchedule;
use crate::service::{self, ServeConfig, Shutdown};
use crate::stream::NatsSettings;

/// Where the demo keeps what it makes: the NATS store and a nats-server it had to install.
const DATA_DIR: &str = "data";

/// The tenant whose stats the printed curl command reads.
pub const DEMO_TENANT: &str = crate::api::params::EXAMPLE_TENANT;
pub const OTHER_DEMO_TENANT: &str = "9b2d6a1e-4c3f-4e8a-b1d2-7f6e5d4c3b2a";

/// What a demo job shows, so the demo has a job in every health state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shows {
    /// Runs on schedule (with its share of failures); live runs keep coming.
    Normal,
    /// The run before the latest is still processing, past its 10-minute limit.
    Stuck,
    /// Stopped running 20 minutes ago.
    Missed,
    /// Its last three runs failed.
    Failing,
    /// One execution enqueued, nothing finished.
    New,
}

/// How a demo job behaves.
struct DemoJob {
    tenant: &'static str,
    name: &'static str,
    cron: Option<&'static str>,
    /// Typical run time and spread, in ms.
    duration_ms: (i64, i64),
    /// Failures per thousand runs.
    failures_per_mille: u64,
    shows: Shows,
}

const DEMO_JOBS: &[DemoJob] = &[
    DemoJob {
        tenant: DEMO_TENANT,
        name: "tokenExpiry",
        cron: Some("0 */6 * * *"),
        duration_ms: (38_000, 8_000),
        failures_per_mille: 5,
        shows: Shows::Normal,
    },
    DemoJob {
        tenant: DEMO_TENANT,
        name: "nightly-report",
        cron: Some("0 2 * * *"),
        duration_ms: (1_500_000, 600_000),
        failures_per_mille: 0,
        shows: Shows::Normal,
    },
    DemoJob {
        tenant: DEMO_TENANT,
        name: "email-digest",
        cron: Some("*/15 * * * *"),
        duration_ms: (850, 400),
        failures_per_mille: 100,
        shows: Shows::Normal,
    },
    DemoJob {
        tenant: DEMO_TENANT,
        name: "inventory.sync",
        cron: Some("*/30 * * * *"),
        duration_ms: (125_000, 20_000),
        failures_per_mille: 10,
        shows: Shows::Stuck,
    },
    DemoJob {
        tenant: DEMO_TENANT,
        name: "cache.warmup",
        cron: Some("*/5 * * * *"),
        duration_ms: (4_000, 1_000),
        failures_per_mille: 0,
        shows: Shows::Missed,
    },
    DemoJob {
        tenant: DEMO_TENANT,
        name: "payments.reconcile",
        cron: Some("0 * * * *"),
        duration_ms: (20_000, 5_000),
        failures_per_mille: 0,
        shows: Shows::Failing,
    },
    DemoJob {
        tenant: DEMO_TENANT,
        name: "reports.backfill",
        cron: None,
        duration_ms: (60_000, 10_000),
        failures_per_mille: 0,
        shows: Shows::New,
    },
    DemoJob {
        tenant: OTHER_DEMO_TENANT,
        name: "billing:export",
        cron: Some("30 1 * * *"),
        duration_ms: (300_000, 60_000),
        failures_per_mille: 20,
        shows: Shows::Normal,
    },
    DemoJob {
        tenant: OTHER_DEMO_TENANT,
        name: "tokenExpiry",
        cron: Some("0 */6 * * *"),
        duration_ms: (41_000, 5_000),
        failures_per_mille: 0,
        shows: Shows::Normal,
    },
];

/// A small deterministic generator: the demo's history is the same on every run, so a
/// restarted demo re-publishes the same executions and nothing is counted twice.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn spread(&mut self, (base, spread): (i64, i64)) -> i64 {
        base - spread + (self.next() % (2 * spread.max(1) as u64)) as i64
    }
}

/// How a published run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Completed or failed at the job's failure rate.
    AsUsual,
    Fails,
    /// Still processing.
    Never,
}

/// Publishes one run that started at `start`. A run whose end would lie in the future is
/// moved back, so no event claims to have happened after it was published.
async fn publish_run(
    publisher: &Publisher,
    job: &DemoJob,
    start: DateTime<Utc>,
    random: &mut SplitMix,
    ending: Ending,
) -> Result<u64, PublishError> {
    let duration = random.spread(job.duration_ms);
    let start = start.min(Utc::now() - chrono::Duration::milliseconds(duration));
    let execution = format!("{}-{}", job.name, start.format("%Y%m%dT%H%M%SZ"));
    let run = EventBuilder::new(job.tenant, job.name)?.execution(&execution)?;
    let fails = random.next() % 1000 < job.failures_per_mille || ending == Ending::Fails;
    let items = Some(random.next() % 500);
    let end = match ending {
        Ending::Never => RunEnd::Never,
        _ if fails => RunEnd::Failed {
            items,
            error: Some("upstream API returned 503"),
        },
        _ => RunEnd::Completed { items },
    };
    let queued = chrono::Duration::milliseconds(200);
    let duration = chrono::Duration::milliseconds(duration);
    let mut last_sequence = 0;
    for event in run.run(start, Some(queued), duration, end)? {
        last_sequence = publisher.publish(&event).await?.sequence;
    }
    Ok(last_sequence)
}

/// Publishes a history for every demo job (its last 40 scheduled runs, shaped by what the job
/// shows); returns the stream sequence of the last event.
pub async fn publish_demo_history(publisher: &Publisher) -> Result<u64, PublishError> {
    let now = Utc::now();
    let mut last_sequence = 0;
    for (index, job) in DEMO_JOBS.iter().enumerate() {
        let builder = EventBuilder::new(job.tenant, job.name)?;
        let Some(cron_text) = job.cron else {
            let run = builder.execution(&format!("{}-queued", job.name))?;
            let queued = run.at(now - chrono::Duration::minutes(2)).enqueued()?;
            last_sequence = publisher.publish(&queued).await?.sequence;
            continue;
        };
        let cron = CronSchedule::parse(cron_text).expect("demo crons are valid");
        let until = match job.shows {
            Shows::Missed => now - chrono::Duration::minutes(20),
            _ => now,
        };
        let mut runs = Vec::new();
        let mut at = now - chrono::Duration::days(30);
        while let Some(next) = cron.next_after(at) {
            if next > until {
                break;
            }
            runs.push(next);
            at = next;
        }
        let recent = &runs[runs.len().saturating_sub(40)..];
        // Scheduled just before its first run: the history covers every fire since, so the
        // only missed runs are the ones the job is meant to show.
        let scheduled_at = recent.first().copied().unwrap_or(now) - chrono::Duration::minutes(1);
        let max_runtime = (job.shows == Shows::Stuck).then_some(Duration::from_secs(600));
        publisher
            .publish(&builder.at(scheduled_at).scheduled_with(
                Some(cron_text),
                None,
                max_runtime,
            )?)
            .await?;
        let mut random = SplitMix(index as u64 + 1);
        for (i, start) in recent.iter().enumerate() {
            let from_end = recent.len() - i;
            let ending = match job.shows {
                Shows::Stuck if from_end == 2 => Ending::Never,
                Shows::Failing if from_end <= 3 => Ending::Fails,
                _ => Ending::AsUsual,
            };
            last_sequence = publish_run(publisher, job, *start, &mut random, ending).await?;
        }
    }
    // What an outdated or broken runner sends: dead letters, with their reasons, for the
    // dashboard's projection view. They never block the events behind them.
    for (subject, payload) in [
        (
            format!("jobs.events.{DEMO_TENANT}.completed"),
            br#"{"eventId": "#.to_vec(),
        ),
        (
            format!("jobs.events.{DEMO_TENANT}.finished"),
            br#"{"specVersion":1,"eventId":"5d6f0c1e-3b1a-4c8e-9a3e-2f1d0c9b8a71","type":"finished"}"#
                .to_vec(),
        ),
    ] {
        last_sequence = publisher.publish_raw(&subject, payload, "").await?.sequence;
    }
    tracing::info!(last_sequence, "demo history published");
    Ok(last_sequence)
}

/// Publishes a new run of a random demo job every `interval` until `shutdown`.
pub async fn run_live_runs(
    publisher: Publisher,
    interval: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let now = Utc::now();
    tokio::pin!(shutdown);
    let mut random = SplitMix(now.timestamp_millis() as u64);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let job = &DEMO_JOBS[(random.next() % DEMO_JOBS.len() as u64) as usize];
        // The jobs that show a problem keep it.
        if job.shows != Shows::Normal {
            continue;
        }
        if let Err(e) = publish_run(&publisher, job, Utc::now(), &mut random, Ending::AsUsual).await
        {
            tracing::warn!(error = %e, "demo runner could not publish");
        }
    }
}

/// `jobstats demo-runners`: history, then live runs until `shutdown`. With the service's
/// secret, prints a token and the commands to read what the runners publish at `api_url`.
pub async fn run_demo_runners(
    publisher: Publisher,
    secret: Option<&str>,
    api_url: &str,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    publish_demo_history(&publisher).await?;
    match secret {
        Some(secret) if secret.len() >= 32 => {
            let base = api_url.trim_end_matches('/');
            println!();
            println!("jobstats demo runners are publishing to the service at {base}.");
            print_welcome(base, &demo_token(secret)?, &operator_token(secret)?);
        }
        Some(_) => eprintln!("JOBSTATS_JWT_HS256_SECRET is under 32 bytes: no token printed"),
        None => eprintln!("JOBSTATS_JWT_HS256_SECRET is not set: no token printed"),
    }
    run_live_runs(publisher, Duration::from_secs(3), shutdown).await;
    Ok(())
}

/// A `system_admin` token of the demo tenant, valid 12 hours.
fn demo_token(secret: &str) -> anyhow::Result<String> {
    let twelve_hours = Duration::from_secs(12 * 3600);
    let claims = DevClaims::new(
        "demo-admin",
        &[ROLE_SYSTEM_ADMIN],
        Some(DEMO_TENANT),
        twelve_hours,
    );
    mint_hs256(secret, &claims).map_err(anyhow::Error::msg)
}

/// A `super_admin` token (every tenant, the projection view), valid 12 hours.
fn operator_token(secret: &str) -> anyhow::Result<String> {
    let claims = DevClaims::new(
        "demo-operator",
        &[crate::api::auth::ROLE_SUPER_ADMIN],
        None,
        Duration::from_secs(12 * 3600),
    );
    mint_hs256(secret, &claims).map_err(anyhow::Error::msg)
}

/// What a newcomer needs to look: the token and curl commands that work as printed.
fn print_welcome(base: &str, token: &str, operator: &str) {
    println!("  Dashboard (signs you in as the demo tenant's admin):");
    println!("{base}/ui/#token={token}");
    println!("  Dashboard as the operator (super_admin: every tenant, the projection view, dead letters):");
    println!("{base}/ui/#token={operator}");
    println!("  Swagger UI: {base}/api/v1/docs");
    println!("  Metrics:    {base}/metrics");
    println!("  Token (system_admin of tenant {DEMO_TENANT}, valid 12 h):");
    println!("TOKEN={token}");
    println!("  Stats of the demo job tokenExpiry:");
    println!(
        "curl -s {base}/api/v1/admin/jobs/tokenExpiry/stats -H 'accept: application/json' -H 'authorization: Bearer {token}' -H 'x-tenantid: {DEMO_TENANT}'"
    );
    println!("  Jobs that need attention (missed, stuck, failing), worst first:");
    println!(
        "curl -s '{base}/api/v1/admin/jobs?health=unknown,stuck,missed,failing&sort=health' -H 'authorization: Bearer {token}' -H 'x-tenantid: {DEMO_TENANT}'"
    );
    println!(
        "  Demo jobs: tokenExpiry, nightly-report, email-digest (healthy or failing by chance),"
    );
    println!("  inventory.sync (stuck), cache.warmup (missed), payments.reconcile (failing),");
    println!("  reports.backfill (new)");
    println!();
}

/// Starts a local `nats-server -js` for the URL's port, storing under `./data/nats`.
async fn start_nats(url: &str) -> anyhow::Result<JetStreamServer> {
    let port = url
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok())
        .unwrap_or(4222);
    let binary = crate::nats_server::find_or_install(Path::new(DATA_DIR))?;
    let store = Path::new(DATA_DIR).join("nats");
    eprintln!(
        "starting {} on 127.0.0.1:{port} (store: {})",
        binary.display(),
        store.display()
    );
    let server = tokio::task::spawn_blocking(move || {
        JetStreamServer::start(&binary, &store, Some(port))
            .with_context(|| format!("starting {}", binary.display()))
    })
    .await??;
    Ok(server)
}

/// What `jobstats demo` runs with.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// An existing NATS to use (with its credentials); when none answers there, the demo
    /// starts its own, anonymous one on that URL's port.
    pub nats: NatsSettings,
    pub stream: String,
    pub db_path: std::path::PathBuf,
    pub listen: SocketAddr,
    /// The HS256 secret to serve with; a random one when unset or under 32 bytes.
    pub secret: Option<String>,
}

/// `serve` as the demo runs it: its own consumer, all tenants, HS256 with `secret`.
fn demo_serve_config(config: &DemoConfig, secret: &str) -> ServeConfig {
    ServeConfig {
        nats: config.nats.clone(),
        stream: crate::stream::StreamSpec::single(&config.stream),
        db_path: config.db_path.clone(),
        consumer: "jobstats-demo".into(),
        tenants: crate::scope::TenantScope::all(),
        read_only: false,
        default_max_runtime: Duration::from_secs(3600),
        admin_listen: None,
        job_metrics_max: crate::job_metrics::DEFAULT_MAX_JOBS,
        ingest_limits: Default::default(),
        auth: AuthSettings {
            hs256_secret: Some(secret.to_owned()),
            public_key_file: None,
            issuer: None,
            realms: None,
            audience: None,
            jwks_url: None,
        },
        http: Default::default(),
        tls: None,
        channels: Vec::new(),
        ui: Default::default(),
    }
}

/// Runs the whole demo until `shutdown`.
pub async fn demo(config: &DemoConfig, shutdown: Shutdown) -> anyhow::Result<()> {
    let shown = config.nats.shown_url();
    let nats_server = match crate::stream::connect(&config.nats, "jobstats-demo-probe", true).await
    {
        Ok(_) => {
            eprintln!("using NATS at {shown}");
            None
        }
        // A server that answered but refused us is not replaced by one of our own.
        Err(e) if config.nats.refusal().is_some() => return Err(e.into()),
        Err(_) => Some(start_nats(&config.nats.urls()[0]).await?),
    };
    let secret = config
        .secret
        .clone()
        .filter(|s| s.len() >= 32)
        .unwrap_or_else(|| format!("jobstats-demo-{}", uuid::Uuid::new_v4().simple()));
    let serve_config = demo_serve_config(config, &secret);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("JOBSTATS_LISTEN {}: cannot listen", config.listen))?;
    let address: SocketAddr = listener.local_addr()?;
    let (applied, mut applied_sequence) = tokio::sync::watch::channel(0);
    let server = {
        let shutdown = shutdown.clone();
        tokio::spawn(
            async move { service::serve(&serve_config, listener, shutdown, applied).await },
        )
    };
    let publisher = Publisher::connect(&config.nats).await?;
    // The stream exists once serve's projector made it; the first publishes wait for that.
    let js = async_nats::jetstream::new(
        crate::stream::connect(&config.nats, "jobstats-demo", true).await?,
    );
    crate::stream::ensure_stream(&js, &crate::stream::StreamSpec::single(&config.stream)).await?;
    let history_head = publish_demo_history(&publisher).await?;
    let runners = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            run_live_runs(publisher, Duration::from_secs(3), shutdown.wait()).await
        })
    };

    let token = demo_token(&secret)?;
    // The curl commands are printed once serve has applied the history they read. A serve
    // that stops first drops the sender: its error is reported below.
    let ready = applied_sequence
        .wait_for(|sequence| *sequence >= history_head)
        .await
        .is_ok();
    if ready {
        println!();
        println!("jobstats demo is running (Ctrl-C stops everything it started).");
        print_welcome(
            &format!("http://{address}"),
            &token,
            &operator_token(&secret)?,
        );
        shutdown.wait().await;
        let _ = runners.await;
    } else {
        runners.abort();
    }
    let served = server.await;
    if let Some(mut server) = nats_server {
        tokio::task::spawn_blocking(move || server.stop()).await?;
    }
    served.map_err(|e| anyhow::anyhow!("serve task failed: {e}"))??;
    Ok(())
}
