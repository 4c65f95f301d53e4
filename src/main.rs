//! The `jobstats` binary: parses the command line, sets up logging, dispatches.

use std::process::ExitCode;

use anyhow::Context;
use jobstats::config::{Cli, Command, EventTypeArg, LogFormat};
use jobstats::publish::{EventBuilder, Publisher};
use jobstats::service::{self, Shutdown};

fn main() -> ExitCode {
    let cli = match jobstats::config::parse_layered(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    // Long-running commands log progress; one-shot tools only warnings (their output is the result).
    let quiet = matches!(
        cli.command,
        Command::Publish(_) | Command::Run(_) | Command::Token(_) | Command::Openapi
    );
    // Our progress lines at INFO, dependencies only when something is wrong (async_nats
    // alone logs four "connected" lines at start); RUST_LOG overrides both.
    init_tracing(
        cli.common.log_format,
        if quiet { "warn" } else { "warn,jobstats=info" },
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime can always be built on Linux");
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let common = cli.common;
    match cli.command {
        Command::Serve(options) => {
            let listener = tokio::net::TcpListener::bind(options.listen)
                .await
                .with_context(|| format!("JOBSTATS_LISTEN {}: cannot listen", options.listen))?;
            let shutdown = Shutdown::new(service::termination_signal());
            service::serve(&common, &options, listener, shutdown).await?;
        }
        Command::Rebuild(options) => {
            let client =
                jobstats::stream::connect(&common.nats_url, "jobstats-rebuild", true).await?;
            let mut progress = jobstats::ingest::replay::HumanProgress::default();
            let report = match &options.output {
                Some(output) => {
                    jobstats::ingest::replay::rebuild_copy(
                        &client,
                        &common.stream,
                        &common.db_path,
                        output,
                        options.until,
                        &mut progress,
                    )
                    .await?
                }
                None => {
                    jobstats::ingest::replay::rebuild_live(
                        &client,
                        &common.stream,
                        &common.db_path,
                        &mut progress,
                    )
                    .await?
                }
            };
            let rate = report.messages as f64 * 1000.0 / (report.elapsed_ms.max(1) as f64);
            println!(
                "rebuilt {} from {} messages (last sequence {}) in {:.1} s ({:.0} events/s)",
                report.path.display(),
                report.messages,
                report.last_sequence,
                report.elapsed_ms as f64 / 1000.0,
                rate
            );
        }
        Command::Publish(options) => {
            let builder = EventBuilder::new(&options.tenant, &options.job)?;
            let builder = match &options.execution {
                Some(execution) => builder.execution(execution)?,
                None => builder,
            };
            let builder = match &options.occurred_at {
                Some(at) => builder.at(chrono::DateTime::parse_from_rfc3339(at)
                    .map_err(|_| {
                        anyhow::anyhow!("invalid --occurred-at {at:?}: expected an RFC 3339 time")
                    })?
                    .with_timezone(&chrono::Utc)),
                None => builder,
            };
            let not_for = |field: &str, given: bool| -> anyhow::Result<()> {
                anyhow::ensure!(
                    !given,
                    "--{field} is not allowed on {:?} events",
                    options.event_type
                );
                Ok(())
            };
            if options.event_type != EventTypeArg::Scheduled {
                not_for("grace", options.grace.is_some())?;
                not_for("max-runtime", options.max_runtime.is_some())?;
            }
            let mut event = match options.event_type {
                EventTypeArg::Scheduled => {
                    not_for("items", options.items.is_some())?;
                    not_for("error", options.error.is_some())?;
                    not_for("execution", options.execution.is_some())?;
                    let cron = options
                        .cron
                        .as_deref()
                        .ok_or_else(|| anyhow::anyhow!("--cron is required for scheduled events (use --cron none to remove the schedule)"))?;
                    builder.scheduled_with(
                        (cron != "none").then_some(cron),
                        options.grace,
                        options.max_runtime,
                    )?
                }
                EventTypeArg::Enqueued | EventTypeArg::Started => {
                    not_for("items", options.items.is_some())?;
                    not_for("error", options.error.is_some())?;
                    not_for("cron", options.cron.is_some())?;
                    if options.event_type == EventTypeArg::Enqueued {
                        builder.enqueued()?
                    } else {
                        builder.started()?
                    }
                }
                EventTypeArg::Completed => {
                    not_for("error", options.error.is_some())?;
                    not_for("cron", options.cron.is_some())?;
                    builder.completed(options.items)?
                }
                EventTypeArg::Failed => {
                    not_for("cron", options.cron.is_some())?;
                    builder.failed(options.items, options.error.as_deref())?
                }
            };
            if let Some(id) = &options.event_id {
                event.event_id = uuid::Uuid::try_parse(id)
                    .map_err(|_| anyhow::anyhow!("invalid --event-id {id:?}: expected a UUID"))?;
            }
            let publisher = Publisher::connect(&common.nats_url).await?;
            let receipt = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                publisher.publish(&event),
            )
            .await
            .map_err(|_| anyhow::anyhow!("no JetStream ack within 10 s"))??;
            println!(
                "published {} {} (event {}) at stream sequence {}{}",
                event.event_type(),
                event.job_name,
                event.event_id,
                receipt.sequence,
                if receipt.duplicate {
                    " (duplicate: already stored)"
                } else {
                    ""
                }
            );
        }
        Command::Run(options) => {
            let builder = EventBuilder::new(&options.tenant, &options.job)?;
            let execution = options
                .execution
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            let builder = builder.execution(&execution)?;
            let outcome = jobstats::runner::run(
                &common.nats_url,
                builder,
                &options.command,
                options.publish_timeout,
            )
            .await;
            for error in &outcome.publish_errors {
                eprintln!("jobstats run: {error}");
            }
            return Ok(ExitCode::from(outcome.exit_code.clamp(0, 255) as u8));
        }
        Command::Token(options) => {
            let secret = options
                .secret
                .as_deref()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "JOBSTATS_JWT_HS256_SECRET (or --secret) is required to sign a token"
                    )
                })?;
            if let Some(tenant) = &options.tenant {
                jobstats::events::TenantId::parse(tenant)
                    .map_err(|reason| anyhow::anyhow!("invalid --tenant {tenant:?}: {reason}"))?;
            }
            let now = chrono::Utc::now().timestamp();
            let token = jobstats::api::auth::mint_hs256(
                secret,
                &jobstats::api::auth::DevClaims {
                    sub: options.subject.clone(),
                    roles: options.roles.clone(),
                    tenant_id: options.tenant.clone(),
                    iss: options.issuer.clone(),
                    iat: now,
                    exp: now + options.ttl.as_secs() as i64,
                },
            )
            .map_err(anyhow::Error::msg)?;
            println!("{token}");
        }
        Command::Demo(options) => {
            let shutdown = Shutdown::new(service::termination_signal());
            jobstats::demo::demo(&common, &options, shutdown).await?;
        }
        Command::DemoRunners(options) => {
            let publisher = Publisher::connect(&common.nats_url).await?;
            jobstats::demo::run_demo_runners(publisher, &options, service::termination_signal())
                .await?;
        }
        Command::Openapi => {
            println!("{}", jobstats::api::openapi_json());
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
