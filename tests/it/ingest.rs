//! HTTP ingestion (CONTRACT §10) against real `serve` processes and a real nats-server:
//! ingest keys made and revoked with the CLI, `POST /api/v1/events`, ping URLs driven by
//! `curl` exactly as healthchecks.io documents it, and check-ins from the real `sentry-sdk`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::*;

/// `jobstats keys …` against `nats_url`; its stdout.
fn keys_cli(nats_url: &str, args: &[&str]) -> String {
    let output = Command::new(BIN)
        .arg("keys")
        .args(args)
        .env("JOBSTATS_NATS_URL", nats_url)
        .stderr(Stdio::inherit())
        .output()
        .expect("run jobstats keys");
    assert!(output.status.success(), "jobstats keys {args:?} failed");
    String::from_utf8(output.stdout).expect("utf-8")
}

fn new_key(nats_url: &str, extra: &[&str]) -> String {
    let mut args = vec!["create", "--tenant", TENANT];
    args.extend_from_slice(extra);
    let key = keys_cli(nats_url, &args).trim().to_owned();
    assert!(key.starts_with("jsk_") && key.len() >= 40, "a key: {key}");
    key
}

fn run_event(kind: &str, job: &str, execution: &str, at: &str) -> Value {
    json!({
        "eventId": uuid::Uuid::new_v4().to_string(),
        "type": kind,
        "tenantId": TENANT,
        "jobName": job,
        "executionId": execution,
        "occurredAt": at,
    })
}

async fn stream_head(nats: &NatsServer) -> u64 {
    let js = async_nats::jetstream::new(nats.client().await);
    let mut stream = js.get_stream("JOB_EVENTS").await.expect("stream");
    stream.info().await.expect("info").state.last_sequence
}

/// Polls `check` every 50 ms until it holds or `within` passes.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn keys_post_events_all_or_nothing_and_a_revoke_reaches_every_replica() {
    let nats = NatsServer::start();
    nats.ensure_stream().await;
    let dir = tempfile::tempdir().unwrap();
    let a = ServeProcess::start_with_env(
        &nats.url(),
        &dir.path().join("a.db"),
        &[("JOBSTATS_INSTANCE_ID", "a")],
    );
    let b = ServeProcess::start_with_env(
        &nats.url(),
        &dir.path().join("b.db"),
        &[("JOBSTATS_INSTANCE_ID", "b")],
    );
    let key = new_key(&nats.url(), &["--name", "nightly jobs"]);
    // Listed with its last four characters, never the key.
    let listed = keys_cli(&nats.url(), &["list", "--tenant", TENANT, "--json"]);
    let record: Value = serde_json::from_str(listed.lines().next().unwrap()).unwrap();
    assert_eq!(record["name"], "nightly jobs");
    assert_eq!(record["last4"], &key[key.len() - 4..]);
    assert!(!listed.contains(&key[4..]), "the key is never listed");
    let id = record["id"].as_str().unwrap().to_owned();

    let events = json!([
        run_event("enqueued", "importer", "run-1", "2026-12-07T10:00:00Z"),
        run_event("started", "importer", "run-1", "2026-12-07T10:00:01Z"),
        run_event("completed", "importer", "run-1", "2026-12-07T10:00:04Z"),
    ]);
    let post = |server: &ServeProcess, body: &Value, bearer: &str| {
        server
            .http
            .post(server.url("/api/v1/events"))
            .bearer_auth(bearer)
            .json(body)
            .send()
    };
    // Each replica learns the new key from the bucket: poll until both take it.
    let started = Instant::now();
    let response = loop {
        let response = post(&a, &events, &key).await.unwrap();
        if response.status() == 202 {
            break response;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "replica a accepts the new key: {}",
            response.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let header: u64 = response.headers()["x-jobstats-sequence"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["data"]["accepted"], 3);
    let sequences: Vec<u64> = serde_json::from_value(body["data"]["sequences"].clone()).unwrap();
    assert_eq!(sequences.len(), 3);
    assert!(
        sequences.windows(2).all(|w| w[0] < w[1]),
        "in order: {sequences:?}"
    );
    assert_eq!(body["data"]["lastSequence"], header);
    assert_eq!(header, sequences[2]);

    // The other replica answers from the same stream, read-your-writes on the sequence.
    b.wait_applied(header).await;
    let stats = b.stats("importer").await;
    assert_eq!(stats["data"]["queue"]["completed"], 1);
    assert_eq!(stats["data"]["performance"]["lastExecutionTime"], "3s");

    // A retry of the same body stores nothing twice and answers the same sequences.
    let retry: Value = post(&b, &events, &key).await.unwrap().json().await.unwrap();
    assert_eq!(retry["data"]["sequences"], body["data"]["sequences"]);
    assert_eq!(stream_head(&nats).await, header);

    // One bad event of three: nothing is published, each bad one named by index and code.
    let head = stream_head(&nats).await;
    let mut foreign = run_event("started", "importer", "run-2", "2026-12-07T11:00:00Z");
    foreign["tenantId"] = OTHER_TENANT.into();
    let mixed = json!([
        run_event("started", "importer", "run-2", "2026-12-07T11:00:00Z"),
        foreign,
        {"type": "completed", "jobName": "importer"},
    ]);
    let refused = post(&a, &mixed, &key).await.unwrap();
    assert_eq!(refused.status(), 422);
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(refused["error"]["code"], "INVALID_EVENTS");
    let problems: Vec<(u64, String)> = refused["error"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["index"].as_u64().unwrap(),
                p["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        problems,
        vec![
            (1, "tenant_mismatch".to_owned()),
            (2, "missing_field".to_owned())
        ]
    );
    // NDJSON with a malformed line: the same, by line.
    let ndjson = format!(
        "{}\n{{not json\n",
        run_event("started", "importer", "run-3", "2026-12-07T11:00:00Z")
    );
    let refused = a
        .http
        .post(a.url("/api/v1/events"))
        .bearer_auth(&key)
        .header("content-type", "application/x-ndjson")
        .body(ndjson)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(refused["error"]["events"][0]["index"], 1);
    assert_eq!(refused["error"]["events"][0]["code"], "malformed_json");
    // Over 4 MiB: 413 with the envelope.
    let huge = a
        .http
        .post(a.url("/api/v1/events"))
        .bearer_auth(&key)
        .body(vec![b' '; 4 * 1024 * 1024 + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), 413);
    assert_eq!(
        huge.json::<Value>().await.unwrap()["error"]["code"],
        "PAYLOAD_TOO_LARGE"
    );
    assert_eq!(
        stream_head(&nats).await,
        head,
        "nothing published by refused requests"
    );

    // A key never reads; a read token never ingests; a job_runner token does, for its tenant.
    let read = a
        .http
        .get(a.url("/api/v1/admin/jobs/importer/stats"))
        .bearer_auth(&key)
        .header("x-tenantid", TENANT)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 401);
    let by_admin = post(
        &a,
        &json!(run_event(
            "started",
            "importer",
            "r4",
            "2026-12-07T12:00:00Z"
        )),
        &admin_token(),
    )
    .await
    .unwrap();
    assert_eq!(by_admin.status(), 403);
    let runner = token(&["job_runner"], Some(TENANT));
    let by_runner = post(
        &a,
        &json!(run_event(
            "started",
            "importer",
            "r4",
            "2026-12-07T12:00:00Z"
        )),
        &runner,
    )
    .await
    .unwrap();
    assert_eq!(by_runner.status(), 202);
    let foreign_runner = token(&["job_runner"], Some(OTHER_TENANT));
    let by_foreign = post(
        &a,
        &json!(run_event(
            "started",
            "importer",
            "r5",
            "2026-12-07T12:00:00Z"
        )),
        &foreign_runner,
    )
    .await
    .unwrap();
    assert_eq!(
        by_foreign.status(),
        422,
        "another tenant's runner cannot post for this one"
    );

    // Revoked with the CLI: refused by both replicas within 5 s.
    keys_cli(&nats.url(), &["revoke", &id]);
    let revoked_at = Instant::now();
    for server in [&a, &b] {
        eventually(
            Duration::from_secs(5),
            "the revoke reaches the replica",
            || {
                let request = post(server, &events, &key);
                async { request.await.unwrap().status() == 401 }
            },
        )
        .await;
    }
    println!(
        "revoke refused on both replicas after {:?}",
        revoked_at.elapsed()
    );
    assert!(keys_cli(&nats.url(), &["list", "--json"]).trim().is_empty());
}

#[tokio::test]
async fn admin_keys_api_makes_lists_and_revokes_within_the_tokens_tenant() {
    let nats = NatsServer::start();
    nats.ensure_stream().await;
    let dir = tempfile::tempdir().unwrap();
    let serve = ServeProcess::start(&nats.url(), &dir.path().join("keys.db"));
    let http = &serve.http;
    let made = http
        .post(serve.url("/api/v1/admin/keys"))
        .bearer_auth(admin_token())
        .header("x-tenantid", TENANT)
        .json(&json!({"name": "crontab", "autoCreate": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), 201);
    let made: Value = made.json().await.unwrap();
    let key = made["data"]["key"].as_str().unwrap().to_owned();
    let id = made["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!(made["data"]["autoCreate"], true);
    // Another tenant's admin may not make keys for this tenant, nor see or revoke them.
    let other_admin = token(&["system_admin"], Some(OTHER_TENANT));
    let refused = http
        .post(serve.url("/api/v1/admin/keys"))
        .bearer_auth(&other_admin)
        .header("x-tenantid", TENANT)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let listed: Value = http
        .get(serve.url("/api/v1/admin/keys"))
        .bearer_auth(admin_token())
        .header("x-tenantid", TENANT)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"]["keys"][0]["id"], id.as_str());
    assert!(!listed.to_string().contains(&key[4..]), "never the key");
    let gone = http
        .delete(serve.url(&format!("/api/v1/admin/keys/{id}")))
        .bearer_auth(&other_admin)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    // The auto-create key's first ping creates its job.
    let ping = serve.url(&format!("/ping/{key}/made-by-ping"));
    eventually(
        Duration::from_secs(10),
        "the key works on a ping URL",
        || {
            let request = http.get(&ping).send();
            async { request.await.unwrap().status() == 200 }
        },
    )
    .await;
    let revoked = http
        .delete(serve.url(&format!("/api/v1/admin/keys/{id}")))
        .bearer_auth(admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    eventually(Duration::from_secs(5), "a revoked key is refused", || {
        let request = http.get(&ping).send();
        async { request.await.unwrap().status() == 401 }
    })
    .await;
    let unauthenticated = http
        .post(serve.url("/api/v1/admin/keys"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
}

#[tokio::test]
async fn curl_pings_as_healthchecks_documents_them_become_runs() {
    let nats = NatsServer::start();
    nats.ensure_stream().await;
    let dir = tempfile::tempdir().unwrap();
    let serve = ServeProcess::start_with_env(
        &nats.url(),
        &dir.path().join("ping.db"),
        &[("JOBSTATS_INGEST_RATE", "1")],
    );
    let key = new_key(&nats.url(), &[]);
    let base = serve.url(&format!("/ping/{key}"));
    let http = &serve.http;
    eventually(Duration::from_secs(10), "the serve knows the key", || {
        let request = http.get(format!("{base}/backup")).send();
        async { request.await.unwrap().status() == 404 }
    })
    .await;
    // Never seen: 404 in plain text unless ?create=1.
    let unknown = http.get(format!("{base}/backup")).send().await.unwrap();
    assert_eq!(unknown.headers()["ping-body-limit"], "16384");
    assert!(unknown.text().await.unwrap().contains("JOB_NOT_FOUND"));

    // The crontab lines of healthchecks.io's docs, from a shell script: a start, the job's
    // output in a log, its exit status as the last segment.
    let script = dir.path().join("cron.sh");
    std::fs::write(
        &script,
        format!(
            r#"set -u
URL="{base}/backup"
curl -fsS -m 10 --retry 5 -o /dev/null "$URL/start?create=1" || exit 90
sh -c 'echo copying files; echo disk full >&2; exit 3' > "$1" 2>&1
curl -fsS -m 10 --retry 5 --data-binary @"$1" -o /dev/null "$URL/$?" || exit 91
curl -fsS -m 10 --retry 5 -o /dev/null "$URL/start" || exit 92
curl -fsS -m 10 --retry 5 -o /dev/null "$URL" || exit 93
curl -fsS -m 10 --retry 5 -o /dev/null "$URL/0?rid=run-7" || exit 94
curl -fsS -m 10 --retry 5 -o /dev/null "$URL/0?rid=run-7" || exit 95
curl -fsS -m 10 --retry 5 -o /dev/null "$URL/fail" || exit 96
"#
        ),
    )
    .unwrap();
    let status = Command::new("sh")
        .arg(&script)
        .arg(dir.path().join("job.log"))
        .status()
        .expect("run the crontab script");
    assert_eq!(status.code(), Some(0), "every curl succeeded");
    let head = stream_head(&nats).await;
    serve.wait_applied(head).await;
    let stats = serve.stats("backup").await;
    let queue = &stats["data"]["queue"];
    // run 1 failed (exit 3), run 2 completed (paired start), rid run-7 once, a lone fail.
    assert_eq!(queue["failed"], 2, "{stats}");
    assert_eq!(queue["completed"], 2, "{stats}");
    assert_eq!(
        queue["processing"], 0,
        "every start was paired with its end: {stats}"
    );
    assert_eq!(head, 6, "the repeated rid ping was dropped by the stream");
    // The POSTed log is the failed run's output, with its exit status, in the one-execution
    // answer; the list shows the exit code and no output.
    let list: Value = http
        .get(serve.url("/api/v1/admin/jobs/backup/executions"))
        .bearer_auth(admin_token())
        .header("x-tenantid", TENANT)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let failed_run = list["data"]["executions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["exitCode"] == 3)
        .unwrap_or_else(|| panic!("a run with exit code 3: {list}"))
        .clone();
    assert!(failed_run.get("output").is_none(), "no output in the list");
    assert!(
        failed_run["durationMs"].as_i64().is_some(),
        "paired with its start: {failed_run}"
    );
    let detail: Value = http
        .get(serve.url(&format!(
            "/api/v1/admin/jobs/backup/executions/{}",
            failed_run["id"].as_str().unwrap()
        )))
        .bearer_auth(admin_token())
        .header("x-tenantid", TENANT)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        detail["data"]["output"], "copying files\ndisk full\n",
        "{detail}"
    );

    // Bad input: plain-text 400s, 401 for a token where a key belongs.
    let bad_status = http.get(format!("{base}/backup/256")).send().await.unwrap();
    assert_eq!(bad_status.status(), 400);
    assert!(bad_status.text().await.unwrap().contains("exit status"));
    let bad_name = http.get(format!("{base}/-bad/start")).send().await.unwrap();
    assert_eq!(bad_name.status(), 400);
    let with_token = http
        .get(serve.url(&format!("/ping/{}/backup", admin_token())))
        .send()
        .await
        .unwrap();
    assert_eq!(with_token.status(), 401);
    let head_request = http.head(format!("{base}/backup")).send().await.unwrap();
    assert_eq!(head_request.status(), 200);

    // JOBSTATS_INGEST_RATE=1 allows bursts of 100: a runaway loop is told to wait.
    let mut limited = None;
    for _ in 0..150 {
        let response = http
            .get(format!("{base}/backup/start"))
            .send()
            .await
            .unwrap();
        if response.status() == 429 {
            limited = Some(response);
            break;
        }
    }
    let limited = limited.expect("a runaway loop is limited");
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
}

const SENTRY_SCRIPT: &str = r#"
import sys, time
import sentry_sdk
from sentry_sdk.crons import monitor, capture_checkin
from sentry_sdk.crons.consts import MonitorStatus

sentry_sdk.init(dsn=sys.argv[1], environment="production", default_integrations=False)
config = {
    "schedule": {"type": "crontab", "value": "30 2 * * *"},
    "timezone": "Europe/Berlin",
    "checkin_margin": 5,
    "max_runtime": 30,
}

@monitor(monitor_slug="nightly-report", monitor_config=config)
def report():
    time.sleep(0.2)

@monitor(monitor_slug="nightly-report", monitor_config=config)
def broken():
    raise RuntimeError("boom")

report()
try:
    broken()
except RuntimeError:
    pass
interval = {"schedule": {"type": "interval", "value": 15, "unit": "minute"}}
check_in = capture_checkin(monitor_slug="sync", status=MonitorStatus.IN_PROGRESS, monitor_config=interval)
capture_checkin(monitor_slug="sync", check_in_id=check_in, status=MonitorStatus.OK, duration=1.5)
sentry_sdk.flush(timeout=10)
"#;

#[tokio::test]
async fn the_sentry_sdk_reports_check_ins_unchanged() {
    let python = python_venv("sentry", &["sentry-sdk>=2,<3"]);
    let nats = NatsServer::start();
    nats.ensure_stream().await;
    let dir = tempfile::tempdir().unwrap();
    let serve = ServeProcess::start(&nats.url(), &dir.path().join("sentry.db"));
    let key = new_key(&nats.url(), &[]);
    // The key must be known to the serve before the SDK sends (it does not retry).
    let probe = serve.url(&format!("/api/1/cron/probe/{key}/?status=ok"));
    eventually(Duration::from_secs(10), "the serve knows the key", || {
        let request = serve.http.get(&probe).send();
        async { request.await.unwrap().status() != 401 }
    })
    .await;
    let dsn = format!("http://{key}@{}/1", serve.address);
    let script = dir.path().join("sentry_crons.py");
    std::fs::write(&script, SENTRY_SCRIPT).unwrap();
    let status = Command::new(&python)
        .arg(&script)
        .arg(&dsn)
        .status()
        .expect("run the sentry-sdk script");
    assert!(status.success(), "the sentry-sdk script ran");
    // What the SDK sent: 1 scheduled + 2 × (started, completed|failed) for nightly-report;
    // 1 scheduled + started + completed for sync.
    let wanted = 8;
    let started = Instant::now();
    while stream_head(&nats).await < wanted {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "every check-in published"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    serve.wait_applied(stream_head(&nats).await).await;
    let report = serve.stats("nightly-report").await;
    assert_eq!(report["data"]["queue"]["completed"], 1, "{report}");
    assert_eq!(report["data"]["queue"]["failed"], 1, "{report}");
    assert_eq!(report["data"]["queue"]["processing"], 0, "{report}");
    assert_eq!(report["data"]["schedule"]["cron"], "30 2 * * *", "{report}");
    // checkin_margin 5 (minutes) is the grace.
    assert_eq!(report["data"]["schedule"]["graceMs"], 300_000, "{report}");
    assert_eq!(
        report["data"]["schedule"]["timezone"], "Europe/Berlin",
        "{report}"
    );
    let sync = serve.stats("sync").await;
    assert_eq!(sync["data"]["queue"]["completed"], 1, "{sync}");
    assert_eq!(sync["data"]["schedule"]["cron"], "*/15 * * * *", "{sync}");
    // The same config sent with every check-in was published once per job, not each time.
    assert_eq!(stream_head(&nats).await, wanted);

    // The curl form, gzip envelopes and a bad request.
    let curl = Command::new("curl")
        .args(["-fsS", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(serve.url(&format!("/api/1/cron/sync/{key}/?status=error")))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&curl.stdout), "202");
    let unknown_status = serve
        .http
        .get(serve.url(&format!("/api/1/cron/sync/{key}/?status=later")))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown_status.status(), 400);
    let refused = serve
        .http
        .post(serve.url("/api/1/envelope/"))
        .header(
            "x-sentry-auth",
            "Sentry sentry_key=jsk_unknown, sentry_version=7",
        )
        .body("{}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
}
