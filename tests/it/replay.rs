//! Rebuilds from the stream: same rows as live, zero failed requests during a swap, crash
//! safety, point-in-time copies.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use proptest::prelude::*;

use crate::helpers::*;

fn t0() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 7, 10, 0, 0, 0).unwrap()
}

fn rebuild(nats: &NatsServer, db: &std::path::Path, extra: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("rebuild")
        .args(extra)
        .env("JOBSTATS_NATS_URL", nats.url())
        .env("JOBSTATS_DB_PATH", db)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run jobstats rebuild")
}

/// The `.building` files of unfinished rebuilds in `dir`.
fn building_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".building"))
        .collect()
}

/// A random stream: valid executions (with duplicates and reorderings) and poison messages.
fn stream_strategy() -> impl Strategy<Value = Vec<(u8, u8, u8, bool)>> {
    proptest::collection::vec((0u8..6, 0u8..4, 0u8..5, any::<bool>()), 1..60)
}

async fn publish_random_stream(nats: &NatsServer, spec: &[(u8, u8, u8, bool)]) -> u64 {
    let publisher = nats.publisher().await;
    let mut last = 0;
    for (i, (execution, step, kind, ok)) in spec.iter().enumerate() {
        let receipt = if *kind == 4 {
            let subject = format!("jobs.events.{TENANT}.started");
            publisher
                .publish_raw(&subject, format!("{{poison {i}").into_bytes(), "")
                .await
                .unwrap()
        } else {
            let events = execution_events(
                &format!("job-{}", execution % 3),
                &format!("e{execution}"),
                t0(),
                1_000 * (*execution as i64 + 1),
                *ok,
            );
            publisher
                .publish(&events[(*step % 3) as usize])
                .await
                .unwrap()
        };
        last = receipt.sequence;
    }
    last
}

#[test]
fn a_rebuild_produces_the_same_tables_as_live_consumption() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 6,
        ..ProptestConfig::default()
    });
    runner
        .run(&stream_strategy(), |spec| {
            runtime.block_on(async {
                let nats = NatsServer::start();
                let dir = tempfile::tempdir().unwrap();
                let live = dir.path().join("live.db");
                let app = App::spawn(&nats.url(), &live).await;
                let head = publish_random_stream(&nats, &spec).await;
                app.wait_applied(head).await;
                app.stop().await;
                let copy = dir.path().join("copy.db");
                let output = rebuild(&nats, &live, &["--output", copy.to_str().unwrap()]);
                assert!(
                    output.status.success(),
                    "{}",
                    String::from_utf8_lossy(&output.stderr)
                );
                prop_assert_eq!(dump(&live), dump(&copy));
                Ok(())
            })
        })
        .unwrap();
}

#[tokio::test]
async fn the_api_keeps_answering_through_a_rebuild_and_swap() {
    let nats = NatsServer::start();
    nats.ensure_stream().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("stats.db");
    let service = ServeProcess::start(&nats.url(), &db);
    let publisher = nats.publisher().await;
    let events = runs(
        "hammered",
        100_000,
        t0(),
        chrono::Duration::seconds(1),
        |_| 2_000,
        |i| i % 50 != 0,
    );
    publish_all(&publisher, &events).await;
    // One more run, one event at a time, and an event of another job behind it.
    let mut finished = 0;
    for event in execution_events(
        "hammered",
        "marked",
        t0() + chrono::Duration::days(3),
        2_000,
        true,
    ) {
        finished = publisher.publish(&event).await.unwrap().sequence;
    }
    let head = publish_all(
        &publisher,
        &execution_events("bystander", "b1", t0(), 1_000, true),
    )
    .await;
    service.wait_applied(head).await;
    let old = service.stats("hammered").await["data"]["queue"].clone();
    // The marked run's finish leaves the stream: the live file counts it, a rebuild cannot,
    // so every answer says which generation it came from.
    let js = async_nats::jetstream::new(nats.client().await);
    let stream = js.get_stream("JOB_EVENTS").await.unwrap();
    assert!(stream.delete_message(finished).await.unwrap());
    let mut new = old.clone();
    new["completed"] = (old["completed"].as_i64().unwrap() - 1).into();
    new["processing"] = (old["processing"].as_i64().unwrap() + 1).into();

    let rebuilt = Arc::new(AtomicBool::new(false));
    let mut hammers = Vec::new();
    for _ in 0..4 {
        let rebuilt = rebuilt.clone();
        let url = service.url("/api/v1/admin/jobs/hammered/stats");
        let (old, new) = (old.clone(), new.clone());
        hammers.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let token = admin_token();
            let (mut from_old, mut from_new) = (0u64, 0u64);
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            // Until the rebuild is done and this client has had a few answers from its file.
            while !(rebuilt.load(Ordering::Relaxed) && from_new >= 5) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "serve never answered from the new generation ({from_old} old, {from_new} new)"
                );
                let response = http
                    .get(&url)
                    .bearer_auth(&token)
                    .header("x-tenantid", TENANT)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(
                    response.status(),
                    200,
                    "a request failed during the rebuild"
                );
                let body: serde_json::Value = response.json().await.unwrap();
                let queue = &body["data"]["queue"];
                if *queue == old {
                    // This client's requests follow one another: once it was answered from
                    // the new file, the old one is gone for it.
                    assert_eq!(from_new, 0, "an answer from the old file after the swap");
                    from_old += 1;
                } else {
                    assert_eq!(*queue, new, "an answer mixed states");
                    from_new += 1;
                }
            }
            (from_old, from_new)
        }));
    }
    let output = tokio::task::spawn_blocking({
        let url = nats.url();
        let db = db.clone();
        move || {
            Command::new(BIN)
                .arg("rebuild")
                .env("JOBSTATS_NATS_URL", url)
                .env("JOBSTATS_DB_PATH", db)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        db.is_symlink(),
        "the live path now points at the new generation"
    );
    rebuilt.store(true, Ordering::Relaxed);
    let mut answered_old = 0;
    for hammer in hammers {
        answered_old += hammer.await.unwrap().0;
    }
    assert!(answered_old > 20, "{answered_old} answers before the swap");
    // New events land in the new generation.
    let more = execution_events(
        "hammered",
        "after-swap",
        t0() + chrono::Duration::days(2),
        2_000,
        true,
    );
    let head = publish_all(&publisher, &more).await;
    service.wait_applied(head).await;
    let queue = service.stats("hammered").await["data"]["queue"].clone();
    assert_eq!(queue["completed"], new["completed"].as_i64().unwrap() + 1);
}

#[tokio::test]
async fn a_killed_rebuild_leaves_the_live_file_alone_and_the_next_one_completes() {
    let nats = NatsServer::start();
    nats.ensure_stream().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("stats.db");
    let service = ServeProcess::start(&nats.url(), &db);
    let publisher = nats.publisher().await;
    let events = runs(
        "crashy",
        15_000,
        t0(),
        chrono::Duration::seconds(1),
        |_| 1_000,
        |_| true,
    );
    let head = publish_all(&publisher, &events).await;
    service.wait_applied(head).await;

    let mut child = Command::new(BIN)
        .arg("rebuild")
        .env("JOBSTATS_NATS_URL", nats.url())
        .env("JOBSTATS_DB_PATH", &db)
        .spawn()
        .unwrap();
    // Killed mid-build: once its `.building` file exists, while it still runs.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while building_files(dir.path()).is_empty() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the rebuild ended before its .building file was seen"
        );
        assert!(std::time::Instant::now() < deadline, "no .building file");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the rebuild was killed, not finished: {status}"
    );
    assert!(!db.is_symlink(), "a killed rebuild must not swap");
    assert!(
        !building_files(dir.path()).is_empty(),
        "the killed build's file stays until the next rebuild"
    );
    let js = async_nats::jetstream::new(nats.client().await);
    let stream = js.get_stream("JOB_EVENTS").await.unwrap();
    let consumer_before = stream.consumer_info("jobstats-test").await.unwrap().created;
    assert_eq!(
        service.stats("crashy").await["data"]["queue"]["completed"],
        15_000
    );

    let output = rebuild(&nats, &db, &[]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let leftovers = building_files(dir.path());
    assert!(
        leftovers.is_empty(),
        "interrupted build files are cleaned up: {leftovers:?}"
    );
    // serve follows the swap: its projector moves to the new file with a new consumer.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    // (While serve swaps, its consumer is briefly gone: not yet moved.)
    while !matches!(
        stream.consumer_info("jobstats-test").await,
        Ok(info) if info.created != consumer_before
    ) {
        assert!(
            std::time::Instant::now() < deadline,
            "serve never moved to the new generation"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        service.stats("crashy").await["data"]["queue"]["completed"],
        15_000
    );
}

#[tokio::test]
async fn serve_rebuilds_the_same_stats_after_the_file_is_deleted() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("stats.db");
    let app = App::spawn(&nats.url(), &db).await;
    let publisher = nats.publisher().await;
    let events = runs(
        "phoenix",
        300,
        t0(),
        chrono::Duration::minutes(1),
        |i| 500 + i,
        |i| i % 9 != 0,
    );
    let head = publish_all(&publisher, &events).await;
    app.wait_applied(head).await;
    let before = app.stats("phoenix").await["data"].clone();
    app.stop().await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let app = App::spawn(&nats.url(), &db).await;
    app.wait_applied(head).await;
    let after = app.stats("phoenix").await["data"].clone();
    assert_eq!(before["queue"], after["queue"]);
    assert_eq!(before["performance"], after["performance"]);
    assert_eq!(before["recentExecutions"], after["recentExecutions"]);
    app.stop().await;
}

#[tokio::test]
async fn a_point_in_time_copy_holds_the_first_n_events_and_is_served_read_only() {
    let nats = NatsServer::start();
    nats.ensure_stream().await;
    let publisher = nats.publisher().await;
    let events = runs(
        "audited",
        100,
        t0(),
        chrono::Duration::minutes(1),
        |_| 1_000,
        |_| true,
    );
    // Publish in order so that the first 150 sequences are exactly the first 50 executions.
    for event in &events {
        publisher.publish(event).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("stats.db");
    let copy = dir.path().join("audit.db");
    let output = rebuild(
        &nats,
        &db,
        &["--until", "150", "--output", copy.to_str().unwrap()],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !db.exists(),
        "a point-in-time build never touches the live database"
    );

    let app = App::spawn_with(&nats.url(), &copy, jwt_options(), false).await;
    let data = app.stats("audited").await["data"].clone();
    assert_eq!(data["queue"]["completed"], 50);
    assert_eq!(data["freshness"]["appliedSequence"], 150);
    assert_eq!(app.readyz().await["status"], "ready");
    app.stop().await;

    // The same copy as an older build made it: without a column this build reads.
    let conn = rusqlite::Connection::open(&copy).unwrap();
    conn.execute_batch(
        "ALTER TABLE job_stats DROP COLUMN late_write_sequence;
         DROP INDEX executions_by_recency_change;
         ALTER TABLE executions DROP COLUMN enqueued_seq;
         ALTER TABLE executions DROP COLUMN started_seq;
         ALTER TABLE executions DROP COLUMN finished_seq;
         ALTER TABLE executions DROP COLUMN recency_seq;
         ALTER TABLE job_stats DROP COLUMN schedule_timezone;
         ALTER TABLE executions DROP COLUMN exit_code;
         DROP TABLE execution_outputs;
         ALTER TABLE job_stats DROP COLUMN schedule_labels;
         ALTER TABLE job_stats DROP COLUMN schedule_failure_threshold;
         ALTER TABLE job_stats DROP COLUMN schedule_recovery_threshold;
         ALTER TABLE job_stats DROP COLUMN silence_until;
         ALTER TABLE job_stats DROP COLUMN silence_reason;
         ALTER TABLE job_stats DROP COLUMN silence_by;
         ALTER TABLE job_stats DROP COLUMN silence_occurred_at;
         ALTER TABLE job_stats DROP COLUMN silence_event_id;
         ALTER TABLE job_stats DROP COLUMN verdict_failing;
         ALTER TABLE job_stats DROP COLUMN verdict_since;
         ALTER TABLE job_stats DROP COLUMN silence_marks;
         PRAGMA user_version = 6;",
    )
    .unwrap();
    drop(conn);
    // --read-only never writes to the file: it refuses to start and says what to do.
    let error = App::start_failure(&nats.url(), &copy, true).await;
    assert!(error.contains("older jobstats"), "{error}");
    // Served as a frozen copy, the file gains what this build reads; its data stays put.
    let app = App::spawn_with(&nats.url(), &copy, jwt_options(), false).await;
    let answer = app
        .http
        .get(app.url("/api/v1/admin/jobs/audited/stats?window=30d"))
        .bearer_auth(admin_token())
        .header("x-tenantid", TENANT)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let data = answer.json::<serde_json::Value>().await.unwrap()["data"].clone();
    assert_eq!(data["queue"]["completed"], 50);
    assert_eq!(data["freshness"]["appliedSequence"], 150);
    app.stop().await;

    // A copy another projection built is refused, not served with empty windows.
    let conn = rusqlite::Connection::open(&copy).unwrap();
    conn.execute(
        "UPDATE meta SET value = '2' WHERE key = 'projection_version'",
        [],
    )
    .unwrap();
    drop(conn);
    let error = App::start_failure(&nats.url(), &copy, false).await;
    assert!(error.contains("projection version 2"), "{error}");
}

#[tokio::test]
async fn serve_rebuilds_on_start_when_the_file_was_built_by_another_projection_version() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("stats.db");
    let app = App::spawn(&nats.url(), &db).await;
    let publisher = nats.publisher().await;
    let events = runs(
        "upgraded",
        200,
        t0(),
        chrono::Duration::minutes(1),
        |_| 700,
        |i| i % 4 != 0,
    );
    let head = publish_all(&publisher, &events).await;
    app.wait_applied(head).await;
    let before = app.stats("upgraded").await["data"].clone();
    app.stop().await;

    // Pretend an older build made the file, and damage its aggregates: a rebuild must fix them.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute(
        "UPDATE meta SET value = '0' WHERE key = 'projection_version'",
        [],
    )
    .unwrap();
    conn.execute("UPDATE job_stats SET completed = 1", [])
        .unwrap();
    drop(conn);

    let app = App::spawn(&nats.url(), &db).await;
    assert_eq!(app.readyz().await["rebuild"]["inProgress"], false);
    let after = app.stats("upgraded").await["data"].clone();
    assert_eq!(before["queue"], after["queue"]);
    assert_eq!(before["performance"], after["performance"]);
    assert_eq!(
        jobstats::store::projection_version_of(&db).unwrap(),
        Some(jobstats::store::PROJECTION_VERSION)
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("jobstats_rebuilds_completed_total 1"),
        "{metrics}"
    );
    app.stop().await;
}

/// Holds `<db>.rebuild.lock` as a running rebuild does (an exclusive advisory lock, README
/// "Operations"), until dropped.
fn hold_rebuild_lock(db: &std::path::Path) -> std::fs::File {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(format!("{}.rebuild.lock", db.display()))
        .unwrap();
    lock.try_lock().expect("no rebuild holds the lock yet");
    lock
}

#[tokio::test]
async fn a_second_serve_or_rebuild_of_one_database_file_is_refused_and_says_who_holds_it() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("stats.db");
    let app = App::spawn(&nats.url(), &db).await;
    let publisher = nats.publisher().await;
    let head = publish_all(
        &publisher,
        &execution_events("locked", "e1", t0(), 1_000, true),
    )
    .await;
    app.wait_applied(head).await;

    let refused = App::start_failure(&nats.url(), &db, false).await;
    assert!(
        refused.contains("another jobstats serve holds")
            && refused.contains(&format!("{}.serve.lock", db.display())),
        "{refused}"
    );

    // While a rebuild holds the database, another is refused and swaps nothing in.
    let held = hold_rebuild_lock(&db);
    let output = rebuild(&nats, &db, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("another jobstats rebuild holds")
            && stderr.contains(&format!("{}.rebuild.lock", db.display())),
        "{stderr}"
    );
    assert!(!db.is_symlink(), "a refused rebuild swaps nothing in");
    drop(held);
    let output = rebuild(&nats, &db, &[]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(db.is_symlink());
    // The first serve goes on, on the new generation.
    assert_eq!(app.stats("locked").await["data"]["queue"]["completed"], 1);
    app.stop().await;
}

#[tokio::test]
async fn during_a_projection_upgrade_serve_answers_from_the_old_file() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("stats.db");
    let app = App::spawn(&nats.url(), &db).await;
    let publisher = nats.publisher().await;
    let events = runs(
        "upgrading",
        200,
        t0(),
        chrono::Duration::minutes(1),
        |_| 700,
        |i| i % 4 != 0,
    );
    let head = publish_all(&publisher, &events).await;
    app.wait_applied(head).await;
    let before = app.stats("upgrading").await["data"].clone();
    app.stop().await;
    // An older projection's file, whose figures differ from what this build projects.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute(
        "UPDATE meta SET value = '0' WHERE key = 'projection_version'",
        [],
    )
    .unwrap();
    conn.execute("UPDATE job_stats SET completed = 1", [])
        .unwrap();
    drop(conn);

    // An operator's rebuild holds the file, so serve's upgrade waits (and retries) for as
    // long as this test needs to look.
    let held = hold_rebuild_lock(&db);
    let serve = ServeProcess::start(&nats.url(), &db);
    let readyz = || async {
        serve
            .http
            .get(serve.url("/readyz"))
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ready = readyz().await;
        if ready["rebuild"]["inProgress"] == true {
            assert_eq!(ready["status"], "not_ready", "{ready}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no upgrade under way: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let during = serve.stats("upgrading").await["data"].clone();
    assert_eq!(
        during["queue"]["completed"], 1,
        "the old file's figure: {during}"
    );
    assert_eq!(during["queue"]["failed"], before["queue"]["failed"]);
    assert_eq!(readyz().await["rebuild"]["inProgress"], true);

    drop(held);
    serve.wait_applied(head).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while readyz().await["status"] != "ready" {
        assert!(
            std::time::Instant::now() < deadline,
            "the upgrade never finished"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = serve.stats("upgrading").await["data"].clone();
    assert_eq!(after["queue"], before["queue"]);
    assert_eq!(after["performance"], before["performance"]);
}
