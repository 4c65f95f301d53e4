//! `jobstats run`: wraps any command as one execution of a job. The command's result is never
//! lost to a publishing problem: it starts at once (publishing `enqueued`/`started` in the
//! background), its output passes through untouched, its exit code is ours, and publishes are
//! retried; if NATS stays unreachable the failure is reported on stderr.
//!
//! The finish event carries the exit code (a signal n gives 128 + n, as shells report it) and
//! the last 16 KiB of the command's stdout and stderr together, in the order they arrived
//! (CONTRACT §10). To see them the command writes into pipes, which this process copies to
//! its own stdout and stderr byte for byte as they come, keeping only the tail in memory.

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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

/// The last bytes of the output, whatever its length (a little over the kept 16 KiB, so the
/// tail can start on a character boundary).
#[derive(Default)]
struct OutputTail(std::collections::VecDeque<u8>);

impl OutputTail {
    const KEEP: usize = crate::events::MAX_OUTPUT_BYTES + 8;

    fn push(&mut self, bytes: &[u8]) {
        let bytes = &bytes[bytes.len().saturating_sub(Self::KEEP)..];
        let over = (self.0.len() + bytes.len()).saturating_sub(Self::KEEP);
        self.0.drain(..over);
        self.0.extend(bytes);
    }

    fn text(&self) -> String {
        let bytes: Vec<u8> = self.0.iter().copied().collect();
        let text = String::from_utf8_lossy(&bytes);
        crate::events::tail_output(&text).to_owned()
    }
}

/// Copies `from` to `to` as it comes, adding each chunk to `tail`.
async fn pass_through(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    tail: Arc<Mutex<OutputTail>>,
) {
    let mut buffer = vec![0u8; 8192];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        tail.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(&buffer[..read]);
        // A closed stdout of ours must not stop the command: keep draining its pipe.
        if to.write_all(&buffer[..read]).await.is_ok() {
            let _ = to.flush().await;
        }
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
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(false)
        .spawn();
    let tail = Arc::new(Mutex::new(OutputTail::default()));
    let (exit_code, failure) = match spawned {
        Ok(mut child) => {
            let copies =
                (
                    child.stdout.take().map(|out| {
                        tokio::spawn(pass_through(out, tokio::io::stdout(), tail.clone()))
                    }),
                    child.stderr.take().map(|err| {
                        tokio::spawn(pass_through(err, tokio::io::stderr(), tail.clone()))
                    }),
                );
            let status = child.wait().await;
            // The pipes end when the command (and whatever it left running with them) closes
            // them: all of its output is copied before the outcome is published.
            for copy in [copies.0, copies.1].into_iter().flatten() {
                let _ = copy.await;
            }
            match status {
                Ok(status) => describe(&status),
                Err(e) => (1, Some(format!("waiting for the command failed: {e}"))),
            }
        }
        Err(e) => (127, Some(format!("could not start {:?}: {e}", command[0]))),
    };
    let output = tail.lock().unwrap_or_else(|p| p.into_inner()).text();
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
    let mut finished = builder
        .at(now + chrono::Duration::from_std(started.elapsed()).unwrap_or_default())
        .exit_code(exit_code.clamp(0, 255) as u8);
    if !output.is_empty() {
        finished = finished.output(&output);
    }
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
