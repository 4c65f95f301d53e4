//! The command line at the edge: [`args`] parses flags, environment and file; each subcommand
//! is one function here that turns its arguments into the library's domain options and calls
//! it. Nothing below this module sees a clap type.

pub mod args;

use std::process::ExitCode;

use anyhow::{anyhow, Context};
use serde_json::{json, Value};

use crate::events::{self, DecodeError, Event, TenantId};
use crate::publish::{EventBuilder, Publisher};
use crate::service::{self, ServeConfig, Shutdown};
pub use args::{parse_layered, Cli, Command, LogFormat};
use args::{
    CommonOptions, DemoOptions, DemoRunnersOptions, EventTypeArg, PublishOptions, RebuildOptions,
    RunOptions, ServeOptions, TokenOptions,
};

/// Runs the parsed command; its exit code.
pub async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let common = &cli.common;
    match &cli.command {
        Command::Serve(options) => serve(common, options).await?,
        Command::Rebuild(options) => rebuild(common, options).await?,
        Command::Snapshot(options) => {
            let report = crate::store::snapshot(&common.db_path, &options.output)
                .with_context(|| format!("snapshot of {}", common.db_path.display()))?;
            println!(
                "snapshot {} at sequence {} ({} bytes)",
                options.output.display(),
                report.last_sequence,
                report.bytes
            );
        }
        Command::Publish(options) => publish(common, options).await?,
        Command::Silence(options) => silence(common, options).await?,
        Command::Run(options) => return run(common, options).await,
        Command::Token(options) => token(options)?,
        Command::Demo(options) => demo(common, options).await?,
        Command::DemoRunners(options) => demo_runners(common, options).await?,
        Command::Watch(options) => watch(common, options).await?,
        Command::Export(options) => export(common, options)?,
        Command::Keys(command) => keys(common, command).await?,
        Command::Channels(command) => return channels(command).await,
        Command::Openapi => println!("{}", crate::api::openapi_json()),
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether the command is a one-shot tool whose output is its result (it logs warnings only).
pub fn is_quiet(command: &Command) -> bool {
    matches!(
        command,
        Command::Publish(_)
            | Command::Silence(_)
            | Command::Export(_)
            | Command::Run(_)
            | Command::Token(_)
            | Command::Watch(_)
            | Command::Keys(_)
            | Command::Channels(_)
            | Command::Openapi
    )
}

/// `jobstats channels test NAME`: the receiver's answer on stdout, or why it failed on
/// stderr and exit code 1.
async fn channels(command: &args::ChannelsCommand) -> anyhow::Result<ExitCode> {
    let args::ChannelsCommand::Test { name, files } = command;
    let channels = files.channels().map_err(anyhow::Error::msg)?;
    let Some(channel) = channels.iter().find(|c| &c.name == name) else {
        let names: Vec<&str> = channels.iter().map(|c| c.name.as_str()).collect();
        anyhow::bail!(
            "no channel named {name:?} (configured: {})",
            names.join(", ")
        );
    };
    match crate::notify::channels::test(channel).await {
        Ok(answer) => {
            println!(
                "{} {} ({}): {answer}",
                channel.kind.as_str(),
                channel.name,
                channel.kind.shown_target()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(failure) => {
            eprintln!(
                "{} {} ({}): {failure}",
                channel.kind.as_str(),
                channel.name,
                channel.kind.shown_target()
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

fn export(common: &CommonOptions, options: &args::ExportOptions) -> anyhow::Result<()> {
    use crate::api::export::{export_chunks, ExportFormat};
    use std::io::Write;
    let job = events::JobName::parse(&options.job)
        .map_err(|reason| anyhow!("invalid --job {:?}: {reason}", options.job))?;
    if let (Some(from), Some(to)) = (options.from, options.to) {
        anyhow::ensure!(from <= to, "--from must not be after --to");
    }
    let readers = crate::store::ReadPool::open(&common.db_path)
        .with_context(|| format!("JOBSTATS_DB_PATH {}", common.db_path.display()))?;
    let mut states = options.status.clone();
    states.sort();
    states.dedup();
    let query = crate::store::ExecutionsQuery {
        states,
        from: options.from,
        to: options.to,
        ..Default::default()
    };
    let format = match options.format {
        args::ExportFormatArg::Ndjson => ExportFormat::Ndjson,
        args::ExportFormatArg::Csv => ExportFormat::Csv,
    };
    let mut stdout = std::io::stdout().lock();
    let mut failed = None;
    let exported =
        export_chunks(
            &readers,
            &options.tenant,
            &job,
            &query,
            format,
            |chunk| match stdout.write_all(&chunk) {
                Ok(()) => true,
                Err(e) => {
                    failed = Some(e);
                    false
                }
            },
        )?;
    match (exported, failed) {
        (None, _) => Err(anyhow!(
            "no job {:?} in tenant {}",
            options.job,
            options.tenant
        )),
        // A closed pipe (`| head`) is the reader's choice, not a failure.
        (_, Some(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        (_, Some(e)) => Err(e.into()),
        (Some(_), None) => Ok(stdout.flush()?),
    }
}

async fn keys(common: &CommonOptions, command: &args::KeysCommand) -> anyhow::Result<()> {
    use crate::keys::{generate, KeyStore};
    let client = crate::stream::connect(&nats(common)?, "jobstats-keys", true).await?;
    let js = async_nats::jetstream::new(client.clone());
    let store = KeyStore::open(&js, common.stream_spec().replicas).await?;
    match command {
        args::KeysCommand::Create {
            tenant,
            name,
            auto_create,
            json,
        } => {
            let made = generate(*tenant, name.as_deref(), *auto_create, chrono::Utc::now())?;
            store.insert(&made.record).await?;
            if *json {
                let mut record = crate::api::ingest::keys::listed(&made.record);
                record["key"] = made.secret.clone().into();
                println!("{record}");
            } else {
                eprintln!(
                    "ingest key {} for tenant {} (shown only now; store it as a secret):",
                    made.record.id, made.record.tenant_id
                );
                println!("{}", made.secret);
            }
        }
        args::KeysCommand::List { tenant, json } => {
            let keys = store.list(tenant.as_ref()).await?;
            if *json {
                for key in &keys {
                    println!("{}", crate::api::ingest::keys::listed(key));
                }
            } else {
                println!(
                    "{:<20} {:<36} {:<24} {:<6} {:<5} NAME",
                    "ID", "TENANT", "CREATED", "LAST4", "AUTO"
                );
                for key in &keys {
                    println!(
                        "{:<20} {:<36} {:<24} {:<6} {:<5} {}",
                        key.id,
                        key.tenant_id,
                        key.created_at,
                        key.last4,
                        if key.auto_create { "yes" } else { "no" },
                        key.name.as_deref().unwrap_or("")
                    );
                }
            }
        }
        args::KeysCommand::Revoke { id } => {
            let record = store.revoke(id).await?;
            eprintln!(
                "revoked {} (tenant {}, ...{})",
                record.id, record.tenant_id, record.last4
            );
        }
    }
    client.flush().await.ok();
    Ok(())
}

async fn watch(common: &CommonOptions, options: &args::WatchOptions) -> anyhow::Result<()> {
    use crate::notify::watch::{follow, line, WatchFilter};
    use std::io::Write;
    let client = crate::stream::connect(&nats(common)?, "jobstats-watch", true).await?;
    let filter = WatchFilter {
        tenant: options.tenant,
        states: options.state.clone(),
        current: options.current,
    };
    let stdout = std::io::stdout();
    let following = follow(client, &filter, |change| {
        let text = if options.json {
            serde_json::to_string(change).unwrap_or_default()
        } else {
            line(change)
        };
        let mut out = stdout.lock();
        // A closed pipe (`jobstats watch | head -1`) ends the watch.
        writeln!(out, "{text}").and_then(|_| out.flush()).is_ok()
    });
    tokio::select! {
        result = following => Ok(result?),
        _ = service::termination_signal() => Ok(()),
    }
}

/// The NATS settings, or the start-up error naming the variable to fix.
fn nats(common: &CommonOptions) -> anyhow::Result<crate::stream::NatsSettings> {
    common.nats().map_err(anyhow::Error::msg)
}

fn serve_config(common: &CommonOptions, options: &ServeOptions) -> anyhow::Result<ServeConfig> {
    let channels = options
        .channel_files
        .channels()
        .map_err(anyhow::Error::msg)?;
    Ok(ServeConfig {
        nats: nats(common)?,
        stream: common.stream_spec(),
        db_path: common.db_path.clone(),
        consumer: options.consumer_name(),
        tenants: common.tenant_scope(),
        read_only: options.read_only,
        default_max_runtime: options.max_runtime,
        admin_listen: options.admin_listen,
        job_metrics_max: options.job_metrics_max as usize,
        auth: options.jwt.settings().map_err(anyhow::Error::msg)?,
        http: options.http.limits(),
        tls: options.tls_files().map_err(anyhow::Error::msg)?,
        channels,
        ui: options.ui.settings()?,
        ingest_limits: crate::api::ingest::IngestLimits::per_second(options.ingest_rate),
    })
}

async fn serve(common: &CommonOptions, options: &ServeOptions) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("JOBSTATS_LISTEN {}: cannot listen", options.listen))?;
    let shutdown = Shutdown::new(service::termination_signal());
    let (applied, _) = tokio::sync::watch::channel(0);
    service::serve(&serve_config(common, options)?, listener, shutdown, applied).await
}

async fn rebuild(common: &CommonOptions, options: &RebuildOptions) -> anyhow::Result<()> {
    use crate::ingest::replay;
    let client = crate::stream::connect(&nats(common)?, "jobstats-rebuild", true).await?;
    let mut progress = replay::HumanProgress::default();
    let report = match &options.output {
        Some(output) => {
            let until = options.until;
            replay::rebuild_copy(
                &client,
                &common.stream_spec(),
                &common.db_path,
                output,
                until,
                &common.tenant_scope(),
                &mut progress,
            )
            .await?
        }
        None => {
            replay::rebuild_live(
                &client,
                &common.stream_spec(),
                &common.db_path,
                &common.tenant_scope(),
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
    Ok(())
}

async fn publish(common: &CommonOptions, options: &PublishOptions) -> anyhow::Result<()> {
    let event = event_from_flags(options)?;
    let publisher = Publisher::connect(&nats(common)?).await?;
    let receipt = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        publisher.publish(&event),
    )
    .await
    .map_err(|_| anyhow!("no JetStream ack within 10 s"))??;
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
    // The line read-your-writes needs (`?minSequence=N`), easy to pick out in scripts.
    println!("sequence={}", receipt.sequence);
    Ok(())
}

/// `jobstats silence`: publishes a `silenced` event (CONTRACT §11).
async fn silence(common: &CommonOptions, options: &args::SilenceOptions) -> anyhow::Result<()> {
    let tenant = TenantId::parse(&options.tenant)
        .map_err(|reason| anyhow!("invalid --tenant {:?}: {reason}", options.tenant))?;
    let now = chrono::Utc::now();
    let until = match options.until.as_str() {
        "none" | "null" | "lift" => Value::Null,
        "forever" | "lifted" => crate::events::SILENCED_UNTIL_LIFTED.into(),
        text => match chrono::DateTime::parse_from_rfc3339(text) {
            Ok(at) => at
                .with_timezone(&chrono::Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                .into(),
            Err(_) => {
                let span = args::parse_duration(text).map_err(|_| {
                    anyhow!(
                        "invalid --until {text:?}: expected an RFC 3339 time, a duration such \
                         as 1h or 1d, forever (until lifted), or none (lift it)"
                    )
                })?;
                let at = now + chrono::Duration::from_std(span)?;
                at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                    .into()
            }
        },
    };
    let by = options
        .by
        .clone()
        .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()));
    let body = json!({
        "specVersion": 1,
        "eventId": uuid::Uuid::new_v4(),
        "type": "silenced",
        "tenantId": tenant.to_string(),
        "jobName": options.job,
        "occurredAt": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "until": until,
        "reason": options.reason,
        "by": by,
    });
    let event = events::decode(
        &events::subject_for(&tenant, events::EventType::Silenced),
        &serde_json::to_vec(&body)?,
    )
    .map_err(|error| anyhow!("{}", in_flag_terms(&error)))?;
    let publisher = Publisher::connect(&nats(common)?).await?;
    let receipt = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        publisher.publish(&event),
    )
    .await
    .map_err(|_| anyhow!("no JetStream ack within 10 s"))??;
    match &until {
        Value::String(at) => println!(
            "silenced {} until {at} (event {}) at stream sequence {}",
            event.job_name, event.event_id, receipt.sequence
        ),
        _ => println!(
            "lifted the silence of {} (event {}) at stream sequence {}",
            event.job_name, event.event_id, receipt.sequence
        ),
    }
    println!("sequence={}", receipt.sequence);
    Ok(())
}

/// The event the flags describe, checked by the decoder the projector uses: which fields a
/// type takes and their ranges are decided in one place, and a flag the decoder would turn
/// into a dead letter is refused here, named as the flag.
fn event_from_flags(options: &PublishOptions) -> anyhow::Result<Event> {
    let tenant = TenantId::parse(&options.tenant)
        .map_err(|reason| anyhow!("invalid --tenant {:?}: {reason}", options.tenant))?;
    let event_type = match options.event_type {
        EventTypeArg::Scheduled => events::EventType::Scheduled,
        EventTypeArg::Enqueued => events::EventType::Enqueued,
        EventTypeArg::Started => events::EventType::Started,
        EventTypeArg::Completed => events::EventType::Completed,
        EventTypeArg::Failed => events::EventType::Failed,
    };
    let occurred_at = match &options.occurred_at {
        Some(at) => chrono::DateTime::parse_from_rfc3339(at)
            .map_err(|_| anyhow!("invalid --occurred-at {at:?}: expected an RFC 3339 time"))?
            .with_timezone(&chrono::Utc),
        None => chrono::Utc::now(),
    };
    let event_id = match &options.event_id {
        Some(id) => uuid::Uuid::try_parse(id)
            .map_err(|_| anyhow!("invalid --event-id {id:?}: expected a UUID"))?,
        None => uuid::Uuid::new_v4(),
    };
    let mut body = json!({
        "specVersion": 1,
        "eventId": event_id,
        "type": event_type.to_string(),
        "tenantId": tenant.to_string(),
        "jobName": options.job,
        "occurredAt": occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    });
    let fields = body.as_object_mut().expect("a JSON object");
    let millis = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let optional = [
        ("executionId", options.execution.clone().map(Value::from)),
        ("itemsProcessed", options.items.map(Value::from)),
        ("error", options.error.clone().map(Value::from)),
        (
            "cron",
            options
                .cron
                .as_deref()
                .map(|c| if c == "none" { Value::Null } else { c.into() }),
        ),
        ("timezone", options.timezone.clone().map(Value::from)),
        ("exitCode", options.exit_code.map(Value::from)),
        (
            "output",
            options
                .output
                .as_deref()
                .map(|o| events::tail_output(o).into()),
        ),
        ("graceMs", options.grace.map(millis).map(Value::from)),
        (
            "maxRuntimeMs",
            options.max_runtime.map(millis).map(Value::from),
        ),
        (
            "labels",
            (!options.labels.is_empty()).then(|| {
                Value::Object(
                    options
                        .labels
                        .iter()
                        .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
                        .collect(),
                )
            }),
        ),
        (
            "failureThreshold",
            options.failure_threshold.map(Value::from),
        ),
        (
            "recoveryThreshold",
            options.recovery_threshold.map(Value::from),
        ),
    ];
    for (field, value) in optional {
        if let Some(value) = value {
            fields.insert(field.to_owned(), value);
        }
    }
    let bytes = serde_json::to_vec(&body)?;
    events::decode(&events::subject_for(&tenant, event_type), &bytes)
        .map_err(|error| anyhow!("{}", in_flag_terms(&error)))
}

/// A decoder's complaint about a field, told in the flag that set it.
fn in_flag_terms(error: &DecodeError) -> String {
    let flag = |field: &str| match field {
        "executionId" => "--execution",
        "itemsProcessed" => "--items",
        "error" => "--error",
        "cron" => "--cron",
        "timezone" => "--timezone",
        "exitCode" => "--exit-code",
        "output" => "--output",
        "graceMs" => "--grace",
        "maxRuntimeMs" => "--max-runtime",
        "labels" => "--label",
        "failureThreshold" => "--failure-threshold",
        "recoveryThreshold" => "--recovery-threshold",
        "until" => "--until",
        "reason" => "--reason",
        "by" => "--by",
        "jobName" => "--job",
        "tenantId" => "--tenant",
        "occurredAt" => "--occurred-at",
        "eventId" => "--event-id",
        _ => "a flag",
    };
    match error {
        DecodeError::MissingField("cron") => {
            "--cron is required for scheduled events (use --cron none to remove the schedule)"
                .into()
        }
        DecodeError::MissingField(field) => {
            format!("{} is required for this event type", flag(field))
        }
        DecodeError::FieldNotAllowed { field, event_type } => {
            format!("{} is not allowed on {event_type} events", flag(field))
        }
        // The decoder counts milliseconds; the flags take durations.
        DecodeError::InvalidField {
            field: "graceMs", ..
        } => "invalid --grace: must be between 1s and 1d".into(),
        DecodeError::InvalidField {
            field: "maxRuntimeMs",
            ..
        } => "invalid --max-runtime: must be between 1s and 30d".into(),
        DecodeError::InvalidField { field, reason } => {
            format!("invalid {}: {reason}", flag(field))
        }
        DecodeError::WrongType { field, expected } => {
            format!("invalid {}: must be {expected}", flag(field))
        }
        DecodeError::InvalidCron { expression, reason } => {
            format!("invalid --cron {expression:?}: {reason}")
        }
        other => format!("invalid event: {other}"),
    }
}

async fn run(common: &CommonOptions, options: &RunOptions) -> anyhow::Result<ExitCode> {
    let execution = options
        .execution
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let builder = EventBuilder::new(&options.tenant, &options.job)?.execution(&execution)?;
    let outcome = crate::runner::run(
        &nats(common)?,
        builder,
        &options.command,
        options.publish_timeout,
    )
    .await;
    for error in &outcome.publish_errors {
        eprintln!("jobstats run: {error}");
    }
    if let (true, Some(sequence)) = (options.print_sequence, outcome.outcome_sequence) {
        // After the command's own output, so a script reads it as the last line.
        println!("sequence={sequence}");
    }
    Ok(ExitCode::from(outcome.exit_code.clamp(0, 255) as u8))
}

fn token(options: &TokenOptions) -> anyhow::Result<()> {
    let secret = args::hs256_secret(options.secret.as_deref(), options.secret_file.as_deref())
        .map_err(anyhow::Error::msg)?
        .ok_or_else(|| {
            anyhow!("JOBSTATS_JWT_HS256_SECRET (or --secret, or JOBSTATS_JWT_HS256_SECRET_FILE) is required to sign a token")
        })?;
    let secret = secret.as_str();
    if let Some(tenant) = &options.tenant {
        TenantId::parse(tenant)
            .map_err(|reason| anyhow!("invalid --tenant {tenant:?}: {reason}"))?;
    }
    let roles: Vec<&str> = options.roles.iter().map(String::as_str).collect();
    let claims = crate::api::auth::DevClaims {
        iss: options.issuer.clone(),
        ..crate::api::auth::DevClaims::new(
            &options.subject,
            &roles,
            options.tenant.as_deref(),
            options.ttl,
        )
    };
    let token = crate::api::auth::mint_hs256(secret, &claims).map_err(anyhow::Error::msg)?;
    match &options.ui {
        Some(base) => println!("{}/ui/#token={token}", base.trim_end_matches('/')),
        None => println!("{token}"),
    }
    Ok(())
}

async fn demo(common: &CommonOptions, options: &DemoOptions) -> anyhow::Result<()> {
    let shutdown = Shutdown::new(service::termination_signal());
    let demo = crate::demo::DemoConfig {
        nats: nats(common)?,
        stream: common.stream.clone(),
        db_path: common.db_path.clone(),
        listen: options.listen,
        secret: args::hs256_secret(
            std::env::var("JOBSTATS_JWT_HS256_SECRET").ok().as_deref(),
            std::env::var_os("JOBSTATS_JWT_HS256_SECRET_FILE")
                .map(std::path::PathBuf::from)
                .as_deref(),
        )
        .map_err(anyhow::Error::msg)?,
    };
    crate::demo::demo(&demo, shutdown).await
}

async fn demo_runners(common: &CommonOptions, options: &DemoRunnersOptions) -> anyhow::Result<()> {
    let publisher = Publisher::connect(&nats(common)?).await?;
    let secret = args::hs256_secret(
        options.jwt_hs256_secret.as_deref(),
        options.jwt_hs256_secret_file.as_deref(),
    )
    .map_err(anyhow::Error::msg)?;
    crate::demo::run_demo_runners(
        publisher,
        secret.as_deref(),
        &options.api_url,
        service::termination_signal(),
    )
    .await
}
