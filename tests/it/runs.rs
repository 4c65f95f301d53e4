//! CONTRACT §10's run results and time zones: `jobstats run` capturing a command's exit code
//! and output tail, the one-execution endpoint, and a cron in `Europe/Berlin` across both of
//! 2026's clock changes, checked against Python's `zoneinfo`.

use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, Utc};
use jobstats::projection::health::{self, Fires, HealthInput, HealthState, Judgement};
use jobstats::publish::EventBuilder;
use serde_json::Value;

use crate::helpers::*;

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

async fn get(app: &App, path: &str, token: &str, tenant: &str) -> (u16, Value) {
    let response = app
        .http
        .get(app.url(path))
        .bearer_auth(token)
        .header("x-tenantid", tenant)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `jobstats run … -- sh -c script`, with `--print-sequence`: (exit code, stdout, stderr,
/// the outcome's sequence).
fn run_wrapped(
    nats_url: &str,
    job: &str,
    execution: &str,
    script: &str,
) -> (i32, String, String, u64) {
    let output = Command::new(BIN)
        .env("JOBSTATS_NATS_URL", nats_url)
        .env("RUST_LOG", "warn")
        .args([
            "run",
            "--tenant",
            TENANT,
            "--job",
            job,
            "--execution",
            execution,
        ])
        .args(["--print-sequence", "--", "sh", "-c", script])
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let sequence = stdout
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("sequence="))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no sequence line in {:?}",
                &stdout[stdout.len().saturating_sub(200)..]
            )
        });
    (
        output.status.code().unwrap_or(-1),
        stdout,
        String::from_utf8(output.stderr).unwrap(),
        sequence,
    )
}

#[tokio::test]
async fn run_reports_the_exit_code_and_output_tail_while_passing_the_output_through() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let app = App::spawn(&nats.url(), &dir.path().join("stats.db")).await;

    // 3000 numbered lines on stdout (~29 KB), one marker on stderr, the last words on stdout.
    let script = "i=0; while [ $i -lt 3000 ]; do echo \"line $i of the nightly report\"; \
                  i=$((i+1)); done; echo 'disk full' >&2; echo 'giving up'; exit 3";
    let (code, stdout, stderr, sequence) = run_wrapped(&nats.url(), "report", "run-3", script);
    assert_eq!(code, 3);
    let printed: String = (0..3000)
        .map(|i| format!("line {i} of the nightly report\n"))
        .collect::<String>()
        + "giving up\n";
    assert!(
        stdout.starts_with(&printed),
        "stdout passed through unchanged"
    );
    assert_eq!(stderr, "disk full\n");

    let (code, _, _, killed_sequence) = run_wrapped(
        &nats.url(),
        "report",
        "run-killed",
        "echo going >&2; kill -9 $$",
    );
    assert_eq!(code, 137);
    app.wait_applied(sequence.max(killed_sequence)).await;

    let (status, body) = get(
        &app,
        "/api/v1/admin/jobs/report/executions/run-3",
        &admin_token(),
        TENANT,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let data = &body["data"];
    assert_eq!(body["message"], "Execution retrieved successfully");
    assert_eq!(data["status"], "failed");
    assert_eq!(data["exitCode"], 3);
    assert_eq!(data["error"], "exit status 3");
    let output = data["output"].as_str().unwrap();
    assert!(
        output.len() <= 16 * 1024 && output.len() > 16 * 1024 - 64,
        "{}",
        output.len()
    );
    // stdout and stderr come through two pipes: the stderr line lands wherever it was read.
    assert!(
        output
            .replacen("disk full\n", "", 1)
            .ends_with("line 2999 of the nightly report\ngiving up\n"),
        "{}",
        &output[output.len().saturating_sub(200)..]
    );
    // (it may have been read before the tail began; the killed run below shows stderr kept)
    assert!(output.matches("disk full\n").count() <= 1);
    let stdout_part = output.replacen("disk full\n", "", 1);
    let whole_lines = stdout_part.split_once('\n').unwrap().1;
    assert!(
        printed.ends_with(whole_lines),
        "the tail is the end of what was printed"
    );

    let (_, killed) = get(
        &app,
        "/api/v1/admin/jobs/report/executions/run-killed",
        &admin_token(),
        TENANT,
    )
    .await;
    assert_eq!(killed["data"]["exitCode"], 137);
    assert_eq!(killed["data"]["error"], "killed by signal 9");
    assert_eq!(killed["data"]["output"], "going\n");

    // The list shows exit codes and never the output.
    let (status, list) = get(
        &app,
        "/api/v1/admin/jobs/report/executions",
        &admin_token(),
        TENANT,
    )
    .await;
    assert_eq!(status, 200);
    let rows = list["data"]["executions"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for row in rows {
        assert!(row.get("output").is_none(), "{row}");
        assert!(row["exitCode"] == 3 || row["exitCode"] == 137, "{row}");
    }
}

#[tokio::test]
async fn the_one_execution_endpoint_shows_the_output_and_404s_in_the_envelope_per_tenant() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let app = App::spawn(&nats.url(), &dir.path().join("stats.db")).await;
    let publisher = nats.publisher().await;
    let start = at("2026-12-01T10:00:00Z");
    let mine = EventBuilder::new(TENANT, "etl")
        .unwrap()
        .execution("e-1")
        .unwrap();
    let theirs = EventBuilder::new(OTHER_TENANT, "etl")
        .unwrap()
        .execution("e-2")
        .unwrap();
    let events = vec![
        mine.clone().at(start).started().unwrap(),
        mine.at(start + chrono::Duration::seconds(5))
            .exit_code(0)
            .output("rows: 42\n")
            .completed(Some(42))
            .unwrap(),
        theirs.clone().at(start).started().unwrap(),
        theirs
            .at(start + chrono::Duration::seconds(5))
            .exit_code(2)
            .output("their secret\n")
            .failed(None, Some("exit status 2"))
            .unwrap(),
    ];
    app.wait_applied(publish_all(&publisher, &events).await)
        .await;

    let path = |id: &str| format!("/api/v1/admin/jobs/etl/executions/{id}");
    let (status, body) = get(&app, &path("e-1"), &admin_token(), TENANT).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["output"], "rows: 42\n");
    assert_eq!(body["data"]["exitCode"], 0);
    assert_eq!(body["data"]["itemsProcessed"], 42);
    assert_eq!(body["data"]["durationMs"], 5000);

    // Another tenant's execution of a job with the same name is not found here…
    let (status, body) = get(&app, &path("e-2"), &admin_token(), TENANT).await;
    assert_eq!(status, 404);
    assert_eq!(body["success"], false);
    assert_eq!(body["error"]["code"], "EXECUTION_NOT_FOUND");
    assert!(body["timestamp"].is_string());
    // …an unknown job is JOB_NOT_FOUND, a token for another tenant is refused…
    let (status, body) = get(
        &app,
        "/api/v1/admin/jobs/nope/executions/e-1",
        &admin_token(),
        TENANT,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (404, "JOB_NOT_FOUND".into())
    );
    let other_admin = token(&["system_admin"], Some(OTHER_TENANT));
    let (status, body) = get(&app, &path("e-1"), &other_admin, TENANT).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (403, "FORBIDDEN".into())
    );
    let (status, _) = get(&app, &path("e-1"), "not-a-token", TENANT).await;
    assert_eq!(status, 401);
    // …and that tenant sees its own.
    let (status, body) = get(&app, &path("e-2"), &other_admin, OTHER_TENANT).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["output"], "their secret\n");
    assert_eq!(body["data"]["exitCode"], 2);
    let (status, body) = get(&app, &path("e-1"), &other_admin, OTHER_TENANT).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (404, "EXECUTION_NOT_FOUND".into())
    );
}

/// The contract's fire instants of `30 2 * * *` in Europe/Berlin, as Python's `zoneinfo`
/// gives them: for each local day, the first instant (scanned minute by minute in UTC) whose
/// local time is 02:30 or later. Independent of the Rust side's gap and overlap handling.
fn python_fires(from_day: &str, days: u32) -> Vec<DateTime<Utc>> {
    let script = r#"
import sys, json
from datetime import datetime, date, timedelta, timezone
from zoneinfo import ZoneInfo
zone = ZoneInfo("Europe/Berlin")
first = date.fromisoformat(sys.argv[1])
fires = []
for d in range(int(sys.argv[2])):
    day = first + timedelta(days=d)
    wanted = datetime(day.year, day.month, day.day, 2, 30)
    t = datetime(day.year, day.month, day.day, tzinfo=timezone.utc) - timedelta(hours=3)
    while t.astimezone(zone).replace(tzinfo=None) < wanted:
        t += timedelta(minutes=1)
    fires.append(t.strftime("%Y-%m-%dT%H:%M:%SZ"))
print(json.dumps(fires))
"#;
    let output = Command::new("python3")
        .args(["-c", script, from_day, &days.to_string()])
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let fires: Vec<String> = serde_json::from_slice(&output.stdout).unwrap();
    fires.iter().map(|f| at(f)).collect()
}

#[tokio::test]
async fn a_berlin_cron_fires_and_misses_across_both_2026_clock_changes_as_zoneinfo_says() {
    let march = python_fires("2026-03-20", 16);
    let october = python_fires("2026-10-18", 14);
    // The Python side saw the changes: 02:30 is skipped on 29 March (fires at 03:00 CEST,
    // 01:00 UTC) and repeated on 25 October (fires at the first, 00:30 UTC).
    assert!(march.contains(&at("2026-03-29T01:00:00Z")), "{march:?}");
    assert!(october.contains(&at("2026-10-25T00:30:00Z")), "{october:?}");

    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("stats.db");
    let app = App::spawn(&nats.url(), &db).await;
    let publisher = nats.publisher().await;
    let job = EventBuilder::new(TENANT, "berlin-nightly")
        .unwrap()
        .timezone("Europe/Berlin")
        .unwrap();
    // Grace of 10 minutes: a run matches only a fire within 10 minutes of it.
    let mut events = vec![job
        .clone()
        .at(at("2026-03-01T00:00:00Z"))
        .scheduled_with(Some("30 2 * * *"), Some(Duration::from_secs(600)), None)
        .unwrap()];
    // A run 30 s after every fire but the one on the day the clocks go forward.
    let gap_day = at("2026-03-29T01:00:00Z");
    let mut starts = Vec::new();
    for (i, fire) in march.iter().chain(&october).enumerate() {
        if *fire == gap_day {
            continue;
        }
        let start = *fire + chrono::Duration::seconds(30);
        starts.push(ms(start));
        let run = job.clone().execution(&format!("run-{i:03}")).unwrap();
        events.push(run.clone().at(start).started().unwrap());
        events.push(
            run.at(start + chrono::Duration::seconds(60))
                .completed(None)
                .unwrap(),
        );
    }
    app.wait_applied(publish_all(&publisher, &events).await)
        .await;

    // What the API says now: the zone, and the next fire as Python computes it.
    let stats = app.stats("berlin-nightly").await;
    let schedule = &stats["data"]["schedule"];
    assert_eq!(schedule["timezone"], "Europe/Berlin");
    assert_eq!(schedule["cron"], "30 2 * * *");
    let generated = at(stats["data"]["generatedAt"].as_str().unwrap());
    let today = (generated - chrono::Duration::days(1))
        .date_naive()
        .to_string();
    let next = python_fires(&today, 4)
        .into_iter()
        .find(|f| *f > generated)
        .unwrap();
    assert_eq!(at(schedule["nextRun"].as_str().unwrap()), next);

    // The stored schedule read back from SQLite, judged at instants around both changes.
    let pool = jobstats::store::ReadPool::open(&db).unwrap();
    let name = jobstats::events::JobName::parse("berlin-nightly").unwrap();
    let tenant = jobstats::events::TenantId::parse(TENANT).unwrap();
    let snapshot = pool.job_snapshot(&tenant, &name, 1).unwrap().unwrap();
    let cron = snapshot
        .cron
        .clone()
        .expect("a cron read back with its zone");
    assert_eq!(cron.timezone(), "Europe/Berlin");
    for fires in [&march, &october] {
        let from = *fires.first().unwrap() - chrono::Duration::hours(1);
        let until = *fires.last().unwrap();
        let listed: Vec<i64> = cron.fires_between(ms(from), ms(until), 100);
        assert_eq!(listed, fires.iter().map(|f| ms(*f)).collect::<Vec<_>>());
        for pair in fires.windows(2) {
            assert_eq!(cron.next_after(pair[0]), Some(pair[1]));
            assert_eq!(cron.latest_at_or_before(ms(pair[1]) - 1), Some(ms(pair[0])));
        }
    }
    let judge = |as_of: DateTime<Utc>| {
        let fires = Fires::for_judging(cron.clone(), ms(as_of), ms(as_of));
        health::evaluate(
            &HealthInput {
                stats: &snapshot.stats,
                fires: Some(&fires),
                starts: &starts,
                processing: &[],
                default_max_runtime_ms: 3_600_000,
            },
            Judgement::At(ms(as_of)),
        )
    };
    // Two hours after the skipped 02:30: missed since that fire + grace, one run missed.
    let health = judge(gap_day + chrono::Duration::hours(2));
    assert_eq!(health.state, HealthState::Missed);
    assert_eq!(health.since, Some(ms(gap_day) + 600_000));
    assert_eq!(health.expected_at, Some(ms(gap_day)));
    assert_eq!((health.missed_last_24h, health.missed_last_7d), (1, 1));
    // A week later the miss is still counted in 7 days, no longer in 24 hours.
    let health = judge(at("2026-04-02T12:00:00Z"));
    assert_eq!(health.state, HealthState::Healthy);
    assert_eq!((health.missed_last_24h, health.missed_last_7d), (0, 1));
    // The repeated hour: the run at the first 02:30 covers the day; the second 02:30
    // (01:30 UTC) is no fire, so nothing is missed.
    for as_of in [
        "2026-10-25T01:45:00Z",
        "2026-10-25T04:00:00Z",
        "2026-10-31T12:00:00Z",
    ] {
        let health = judge(at(as_of));
        assert_eq!(health.state, HealthState::Healthy, "{as_of}");
        assert_eq!(
            (health.missed_last_24h, health.missed_last_7d),
            (0, 0),
            "{as_of}"
        );
    }
    assert_eq!(
        judge(at("2026-10-25T04:00:00Z")).expected_at,
        Some(ms(at("2026-10-25T00:30:00Z")))
    );
}
