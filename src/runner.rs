//! `jobstats run`: wraps any command as one execution of a job. The command's result is never
//! lost to a publishing problem: it starts at once (publishing `enqueued`/`started` in the
//! background), its output passes through untouched, its exit code is ours, and publishes are
//! retried; if NATS stays unreachable the failure is reported on stderr.

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use crate::publish::{EventBuilder, PublishError, Publisher};
use crate::stream::NatsSettings;

/// What happened to the wrapped command and to the publishing.
#[derive(Debug)]
pub struct RunOutcome {
    /// The exit code to exit with (the command's; 127 when it could not start).
    pub exit_code: i32,
    pub publish_errors: Vec<String>,
    /// The stream sequence of the outcome event, once stored (what `?minSequence=` waits for).
    pub outcome_sequence: Option<u64>,
}

fn describe(status: &ExitStatus) -> (i32, Option<String>) {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(0), _) => (0, None),
        (Some(code), _) => (code, Some(format!("exit status {code}"))),
        (None, Some(signal)) => (128 + signal, Some(format!("killed by signal {signal}"))),
        (None, None) => (1, Some("ended abnormally".into())),
    }
}

/// Runs `command` (program + args) as one execution.
pub async fn run(
    nats: &NatsSettings,
    builder: EventBuilder,
    command: &[String],
    patience: Duration,
) -> RunOutcome {
    let mut publish_errors = Vec::new();
    let settings = nats.clone();
    let now = chrono::Utc::now();
    let opening_events = [
        builder.clone().at(now).enqueued(),
        builder.clone().at(now).started(),
    ];
    // Connect and publish the opening events while the command already runs.
    let opening = tokio::spawn(async move {
        let publisher = connect_with_retry(&settings, patience).await?;
        for event in opening_events {
            let event = event?;
            publisher.publish_with_retry(&event, patience).await?;
        }
        Ok::<_, PublishError>(publisher)
    });

    let started = Instant::now();
    let spawned = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .kill_on_drop(false)
        .spawn();
    let (exit_code, failure) = match spawned {
        Ok(mut child) => match child.wait().await {
            Ok(status) => describe(&status),
            Err(e) => (1, Some(format!("waiting for the command failed: {e}"))),
        },
        Err(e) => (127, Some(format!("could not start {:?}: {e}", command[0]))),
    };
    tracing::debug!(elapsed = ?started.elapsed(), exit_code, "command finished");

    let publisher = match opening.await {
        Ok(Ok(publisher)) => Some(publisher),
        Ok(Err(e)) => {
            publish_errors.push(format!("publishing enqueued/started failed: {e}"));
            None
        }
        Err(e) => {
            publish_errors.push(format!("publishing enqueued/started failed: {e}"));
            None
        }
    };
    let finished =
        builder.at(now + chrono::Duration::from_std(started.elapsed()).unwrap_or_default());
    let terminal = match &failure {
        None => finished.completed(None),
        Some(reason) => finished.failed(None, Some(reason)),
    };
    let result = async {
        let publisher = match publisher {
            Some(p) => p,
            None => connect_with_retry(nats, patience).await?,
        };
        publisher.publish_with_retry(&terminal?, patience).await
    }
    .await;
    let outcome_sequence = match result {
        Ok(receipt) => Some(receipt.sequence),
        Err(e) => {
            publish_errors.push(format!("publishing the outcome failed: {e}"));
            None
        }
    };
    RunOutcome {
        exit_code,
        publish_errors,
        outcome_sequence,
    }
}

/// Retries an unreachable NATS until `patience` runs out; refused credentials or TLS trust
/// end it at once (retrying would not cure them).
async fn connect_with_retry(
    nats: &NatsSettings,
    patience: Duration,
) -> Result<Publisher, PublishError> {
    let deadline = Instant::now() + patience;
    loop {
        match Publisher::connect(nats).await {
            Ok(publisher) => return Ok(publisher),
            Err(e)
                if nats.refusal().is_none()
                    && Instant::now() + Duration::from_millis(500) < deadline =>
            {
                tracing::debug!(error = %e, "NATS not reachable yet");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
}
