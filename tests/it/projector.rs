//! The projector against a real JetStream and real SQLite files.

use std::time::Duration;

use chrono::{TimeZone, Utc};
use futures::StreamExt;
use jobstats::publish::EventBuilder;

use crate::helpers::*;

fn base_time() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 7, 10, 0, 0, 0).unwrap()
}

#[tokio::test]
async fn a_realistic_mix_projects_the_expected_counts_and_durations() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let app = App::spawn(&nats.url(), &dir.path().join("stats.db")).await;
    let publisher = nats.publisher().await;

    // 60 executions: every 7th fails, every 11th is still running, every 13th only enqueued.
    let mut events = Vec::new();
    let (mut completed, mut failed, mut processing, mut pending) = (0, 0, 0, 0);
    let mut duration_sum = 0i64;
    let mut latest_finish: Option<(chrono::DateTime<Utc>, i64)> = None;
    for i in 0..60i64 {
        let start = base_time() + chrono::Duration::minutes(10 * i);
        let duration = 1_000 + 137 * i;
        let mut run = execution_events(
            "reports",
            &format!("exec-{i:03}"),
            start,
            duration,
            i % 7 != 0,
        );
        if i % 13 == 5 {
            run.truncate(1);
            pending += 1;
        } else if i % 11 == 3 {
            run.truncate(2);
            processing += 1;
        } else {
            if i % 7 == 0 {
                failed += 1;
            } else {
                completed += 1;
                duration_sum += duration;
            }
            let finish = start + chrono::Duration::milliseconds(duration);
            if latest_finish.is_none_or(|(t, _)| finish > t) {
                latest_finish = Some((finish, duration));
            }
        }
        // Deliver some executions' events out of order: terminal before start.
        if i % 5 == 0 && run.len() == 3 {
            run.swap(1, 2);
        }
        events.extend(run);
    }
    let schedule = EventBuilder::new(TENANT, "reports")
        .unwrap()
        .at(base_time())
        .scheduled(Some("0 */6 * * *"))
        .unwrap();
    events.push(schedule);
    let head = publish_all(&publisher, &events).await;
    app.wait_applied(head).await;

    let body = app.stats("reports").await;
    let data = &body["data"];
    assert_eq!(data["queue"]["completed"], completed);
    assert_eq!(data["queue"]["failed"], failed);
    assert_eq!(data["queue"]["processing"], processing);
    assert_eq!(data["queue"]["pending"], pending);
    assert_eq!(
        data["status"],
        if processing > 0 { "running" } else { "idle" }
    );
    let average = (duration_sum + completed / 2) / completed;
    assert_eq!(data["performance"]["averageExecutionTimeMs"], average);
    assert_eq!(
        data["performance"]["lastExecutionTimeMs"],
        latest_finish.unwrap().1
    );
    let rate = (completed as f64 * 1000.0 / (completed + failed) as f64).floor() / 10.0;
    assert_eq!(data["performance"]["successRate"], format!("{rate:.1}%"));
    assert_eq!(data["schedule"]["cron"], "0 */6 * * *");
    let last_start = base_time() + chrono::Duration::minutes(10 * 59);
    let expected_last_run = if 59 % 13 == 5 { None } else { Some(last_start) };
    assert_eq!(
        data["schedule"]["lastRun"].as_str(),
        expected_last_run
            .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
            .as_deref()
    );
    let recent = data["recentExecutions"].as_array().unwrap();
    assert_eq!(recent.len(), 10);
    assert_eq!(recent[0]["id"], "exec-059");
    assert_eq!(recent[9]["id"], "exec-050");
    app.stop().await;
}

#[tokio::test]
async fn duplicates_and_second_terminal_events_change_nothing() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let app = App::spawn(&nats.url(), &dir.path().join("stats.db")).await;
    let publisher = nats.publisher().await;

    let run = execution_events("dupes", "e1", base_time(), 5_000, true);
    let head = publish_all(&publisher, &run).await;
    app.wait_applied(head).await;
    let before = app.stats("dupes").await["data"].clone();

    // The same eventId again: JetStream's duplicate window drops it.
    let receipt = publisher.publish(&run[2]).await.unwrap();
    assert!(
        receipt.duplicate,
        "same Nats-Msg-Id must be dropped by the stream"
    );
    // The same transitions under new eventIds, and a conflicting second terminal event.
    let mut again = execution_events("dupes", "e1", base_time(), 5_000, true);
    again.extend(execution_events("dupes", "e1", base_time(), 9_000, false));
    let head = publish_all(&publisher, &again).await;
    app.wait_applied(head).await;

    let after = app.stats("dupes").await["data"].clone();
    assert_eq!(before["queue"], after["queue"]);
    assert_eq!(before["performance"], after["performance"]);
    assert_eq!(before["recentExecutions"], after["recentExecutions"]);
    assert_eq!(after["queue"]["completed"], 1);
    assert_eq!(after["queue"]["failed"], 0);
    app.stop().await;
}

#[tokio::test]
async fn every_bad_publish_becomes_a_dead_letter_and_the_events_behind_it_apply() {
    let nats = NatsServer::start();
    nats.ensure_stream().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("stats.db");
    let app = App::spawn(&nats.url(), &db).await;
    let publisher = nats.publisher().await;

    let cases = crate::contract::corpus();
    let mut expected_dead = Vec::new();
    let mut last = 0;
    for case in &cases {
        let receipt = publisher
            .publish_raw(&case.subject, case.payload.clone(), "")
            .await
            .unwrap();
        last = receipt.sequence;
        if !case.valid {
            expected_dead.push((
                receipt.sequence,
                case.reason.clone().unwrap(),
                case.subject.clone(),
                case.payload.len() as u64,
            ));
        }
        // A good event right behind every bad one must still apply.
    }
    let follow_up = execution_events("after-the-poison", "e1", base_time(), 1_000, true);
    let head = publish_all(&publisher, &follow_up).await.max(last);
    app.wait_applied(head).await;

    let dead = jobstats::store::ReadPool::open(&db)
        .unwrap()
        .dead_letters(0, 1_000)
        .unwrap();
    // Each with the subject it came on and the size of what was published.
    let recorded: Vec<(u64, String, String, u64)> = dead
        .iter()
        .map(|d| {
            (
                d.sequence,
                d.reason_code.clone(),
                d.subject.clone(),
                d.payload_bytes,
            )
        })
        .collect();
    assert_eq!(recorded, expected_dead);
    assert!(dead.iter().all(|d| !d.reason.is_empty()));
    assert_eq!(
        app.stats("after-the-poison").await["data"]["queue"]["completed"],
        1
    );

    let metrics = app.metrics().await;
    assert!(
        metrics.contains("jobstats_dead_letters_total{reason=\"malformed_json\"}"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_killed_service_resumes_after_its_checkpoint_with_exact_counts() {
    let nats = NatsServer::start();
    nats.ensure_stream().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("stats.db");
    let mut service = ServeProcess::start(&nats.url(), &db);
    let publisher = nats.publisher().await;

    let events = runs(
        "burst",
        1_500,
        base_time(),
        chrono::Duration::seconds(1),
        |_| 1_000,
        |i| i % 10 != 0,
    );
    // Kill -9 once a checkpoint is committed, so the restart resumes after one (not from an
    // empty file); the second half is published after the kill, so the burst is unfinished.
    let (first, second) = events.split_at(events.len() / 2);
    publish_all(&publisher, first).await;
    let committed = wait_checkpoint(&db, 1, Duration::from_secs(30)).await;
    service.kill_9();
    let head = publish_all(&publisher, second).await;
    let kept = wait_checkpoint(&db, 1, Duration::ZERO).await;
    assert!(
        kept >= committed && kept < head,
        "the killed service left checkpoint {kept} (saw {committed}; head {head})"
    );

    let service = ServeProcess::start(&nats.url(), &db);
    service.wait_applied(head).await;
    let data = service.stats("burst").await["data"].clone();
    assert_eq!(data["queue"]["completed"], 1_350);
    assert_eq!(data["queue"]["failed"], 150);
    assert_eq!(data["queue"]["processing"], 0);
    assert_eq!(data["queue"]["pending"], 0);
    assert_eq!(data["performance"]["averageExecutionTimeMs"], 1_000);
    // Counts survive a lost `enqueued` or `started`; the tables do not: nothing was skipped
    // or applied twice.
    drop(service);
    assert_same_tables(&db, &rebuilt_copy(&nats, &db, dir.path()));
}

#[tokio::test]
async fn the_projector_reconnects_after_nats_restarts() {
    let mut nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let app = App::spawn(&nats.url(), &dir.path().join("stats.db")).await;
    {
        let publisher = nats.publisher().await;
        let head = publish_all(
            &publisher,
            &execution_events("survivor", "e1", base_time(), 1_000, true),
        )
        .await;
        app.wait_applied(head).await;
    }
    nats.restart();
    let publisher = nats.publisher().await;
    let head = publish_all(
        &publisher,
        &execution_events(
            "survivor",
            "e2",
            base_time() + chrono::Duration::hours(1),
            2_000,
            true,
        ),
    )
    .await;
    app.wait_applied(head).await;
    let data = app.stats("survivor").await["data"].clone();
    assert_eq!(data["queue"]["completed"], 2);
    assert_eq!(app.readyz().await["status"], "ready");
    app.stop().await;
}

#[tokio::test]
async fn sigterm_commits_the_batch_in_hand_and_exits_cleanly() {
    let nats = NatsServer::start();
    nats.ensure_stream().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("stats.db");
    let mut service = ServeProcess::start(&nats.url(), &db);
    let publisher = nats.publisher().await;
    let head = publish_all(
        &publisher,
        &execution_events("graceful", "e1", base_time(), 1_000, true),
    )
    .await;
    service.wait_applied(head).await;
    service.signal("TERM");
    let status = service.child.wait().unwrap();
    assert!(
        status.success(),
        "serve must exit 0 on SIGTERM, got {status:?}"
    );
    let freshness = jobstats::store::ReadPool::open(&db)
        .unwrap()
        .freshness()
        .unwrap();
    assert_eq!(freshness.last_sequence, head);
}

#[tokio::test]
async fn cached_answers_follow_every_change_of_their_job() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let app = App::spawn(&nats.url(), &dir.path().join("stats.db")).await;
    let publisher = nats.publisher().await;
    for round in 0..5i64 {
        let start = base_time() + chrono::Duration::hours(round);
        // A change to another job keeps the cached answer valid...
        let head = publish_all(
            &publisher,
            &execution_events("other", &format!("o{round}"), start, 1_000, true),
        )
        .await;
        app.wait_applied(head).await;
        if round > 0 {
            let before = app.stats("watched").await;
            assert_eq!(before["data"]["queue"]["completed"], round);
        }
        // ...a change to this job is visible in the very next answer.
        let head = publish_all(
            &publisher,
            &execution_events("watched", &format!("w{round}"), start, 1_000, true),
        )
        .await;
        app.wait_applied(head).await;
        let after = app.stats("watched").await;
        assert_eq!(after["data"]["queue"]["completed"], round + 1);
        assert!(
            after["data"]["freshness"]["appliedSequence"]
                .as_u64()
                .unwrap()
                >= head
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn a_delivery_that_goes_missing_makes_the_projector_resume_from_its_checkpoint_in_order() {
    let nats = NatsServer::start();
    nats.ensure_stream().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("stats.db");
    let app = App::spawn(&nats.url(), &db).await;
    let publisher = nats.publisher().await;
    // A first burst, so the projector's consumer session has delivered something.
    let every = chrono::Duration::minutes(1);
    let head = publish_all(
        &publisher,
        &runs("warm-up", 10, base_time(), every, |i| 1_000 + i, |_| true),
    )
    .await;
    app.wait_applied(head).await;

    // Another client pulls one message from the projector's own durable consumer: a delivery
    // the projector never receives, as when one is lost in flight. The server hands its
    // waiting pull requests messages in turn, so it is among the next two.
    let thief = nats.client().await;
    let js = async_nats::jetstream::new(thief.clone());
    let stream = js.get_stream("JOB_EVENTS").await.unwrap();
    let consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer("jobstats-test").await.unwrap();
    let mut stolen = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .unwrap();
    thief.flush().await.unwrap();
    let later = runs(
        "lossy",
        30,
        base_time() + chrono::Duration::hours(1),
        every,
        |i| 2_000 + i,
        |i| i % 4 != 0,
    );
    let mut head = 0;
    for event in &later {
        // One at a time, so the stream's order is the runs' causal order.
        head = publisher.publish(event).await.unwrap().sequence;
    }
    let lost = tokio::time::timeout(Duration::from_secs(10), stolen.next())
        .await
        .expect("the second client got a delivery")
        .expect("a message")
        .unwrap();
    let lost = lost.info().unwrap().stream_sequence;
    assert!(lost > 30 && lost < head, "lost {lost}, head {head}");
    drop(stolen);

    app.wait_applied(head).await;
    // The projector saw the consumer sequence jump, committed what came before the lost
    // message and replaced its consumer to start right at it.
    let info = stream.consumer_info("jobstats-test").await.unwrap();
    assert_eq!(
        info.config.deliver_policy,
        async_nats::jetstream::consumer::DeliverPolicy::ByStartSequence {
            start_sequence: lost
        },
        "the consumer was recreated at checkpoint + 1"
    );
    // Nothing was skipped or applied out of order: the file equals a rebuild from the stream,
    // and every run counts.
    let data = app.stats("lossy").await["data"].clone();
    assert_eq!(data["queue"]["completed"], 22, "{data}");
    assert_eq!(data["queue"]["failed"], 8, "{data}");
    assert_eq!(data["queue"]["processing"], 0, "{data}");
    app.stop().await;
    assert_same_tables(&db, &rebuilt_copy(&nats, &db, dir.path()));
}

/// A rebuild of the whole stream into a copy beside `db` (the live file is left alone).
fn rebuilt_copy(
    nats: &NatsServer,
    db: &std::path::Path,
    dir: &std::path::Path,
) -> std::path::PathBuf {
    let copy = dir.join("copy.db");
    let rebuilt = std::process::Command::new(BIN)
        .args(["rebuild", "--output"])
        .arg(&copy)
        .env("JOBSTATS_NATS_URL", nats.url())
        .env("JOBSTATS_DB_PATH", db)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        rebuilt.status.success(),
        "{}",
        String::from_utf8_lossy(&rebuilt.stderr)
    );
    copy
}
