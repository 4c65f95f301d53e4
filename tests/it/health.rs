//! Job health (CONTRACT §5) end to end: real NATS, the real server, events timed relative to
//! the real clock.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use jobstats::publish::EventBuilder;
use jobstats::schedule::CronSchedule;
use serde_json::Value;

use crate::helpers::*;

const MIN: i64 = 60_000;

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn at(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).unwrap()
}

fn parse_ms(value: &Value) -> i64 {
    DateTime::parse_from_rfc3339(value.as_str().expect("a time"))
        .expect("RFC 3339")
        .timestamp_millis()
}

fn job(name: &str) -> EventBuilder {
    EventBuilder::new(TENANT, name).expect("valid job")
}

/// Started (and finished, when `duration` is given) at `start`.
fn run(
    name: &str,
    id: &str,
    start: i64,
    duration: Option<i64>,
    ok: bool,
) -> Vec<jobstats::events::Event> {
    let run = job(name).execution(id).expect("valid id");
    let mut events = vec![run.clone().at(at(start)).started().unwrap()];
    if let Some(d) = duration {
        let end = run.at(at(start + d));
        events.push(if ok {
            end.completed(None).unwrap()
        } else {
            end.failed(None, Some("exit 1")).unwrap()
        });
    }
    events
}

/// The contract's matching, by brute force: fires in `(since, as_of − grace]` within the
/// window, each taking the earliest free start in `[f − grace, f + grace)`.
fn missed_by_brute_force(
    cron: &str,
    since: i64,
    grace: i64,
    as_of: i64,
    starts: &[i64],
    window: i64,
) -> u32 {
    let cron = CronSchedule::parse(cron).unwrap();
    let begin = since.max(as_of - 8 * 24 * 60 * MIN);
    let mut taken = vec![false; starts.len()];
    let mut missed = 0;
    for fire in cron.fires_between(begin, as_of - grace, usize::MAX) {
        match (0..starts.len())
            .find(|&i| !taken[i] && starts[i] >= fire - grace && starts[i] < fire + grace)
        {
            Some(i) => taken[i] = true,
            None => missed += u32::from(fire > as_of - window),
        }
    }
    missed
}

#[tokio::test]
async fn each_health_state_is_reached_from_events() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let app = App::spawn(&nats.url(), &dir.path().join("stats.db")).await;
    let publisher = nats.publisher().await;
    let now = ms(Utc::now());
    let minute = now - now.rem_euclid(MIN);

    // Every minute, started at each fire + 2 s until 5 minutes ago.
    let mut events = Vec::new();
    let mut starts = Vec::new();
    for name in ["every-minute", "every-minute-patient"] {
        let grace = (name == "every-minute-patient").then_some(Duration::from_secs(600));
        events.push(
            job(name)
                .at(at(minute - 40 * MIN))
                .scheduled_with(Some("* * * * *"), grace, None)
                .unwrap(),
        );
        for i in 0..35 {
            let start = minute - 39 * MIN + i * MIN + 2_000;
            events.extend(run(name, &format!("r{i}"), start, Some(1_000), true));
            if name == "every-minute" {
                starts.push(start);
            }
        }
    }
    // Processing for 5 minutes with a 1-minute limit, after a failure: stuck wins.
    events.push(
        job("hung")
            .at(at(now - 10 * MIN))
            .scheduled_with(None, None, Some(Duration::from_secs(60)))
            .unwrap(),
    );
    events.extend(run("hung", "old", now - 8 * MIN, Some(1_000), false));
    events.extend(run("hung", "h1", now - 5 * MIN, None, true));
    // Two failures after a success.
    events.extend(run("flaky", "a", now - 30 * MIN, Some(1_000), true));
    events.extend(run("flaky", "b", now - 20 * MIN, Some(2_000), false));
    events.extend(run("flaky", "c", now - 10 * MIN, Some(3_000), false));
    // Nothing finished yet.
    events.push(
        job("fresh")
            .execution("q1")
            .unwrap()
            .at(at(now - MIN))
            .enqueued()
            .unwrap(),
    );
    let last = publish_all(&publisher, &events).await;
    app.wait_applied(last).await;

    let missed = app.stats("every-minute").await["data"].clone();
    let health = &missed["health"];
    assert_eq!(health["state"], "missed", "{missed}");
    let as_of = parse_ms(&health["asOf"]);
    assert!(
        (as_of - ms(Utc::now())).abs() < 5_000,
        "caught up: judged now"
    );
    let grace = missed["schedule"]["graceMs"].as_i64().unwrap();
    assert_eq!(grace, MIN, "10% of a minute, clamped to 1 min");
    let since = minute - 40 * MIN;
    assert_eq!(
        health["missedRuns"]["last24h"].as_u64().unwrap() as u32,
        missed_by_brute_force("* * * * *", since, grace, as_of, &starts, 24 * 60 * MIN)
    );
    assert!(health["missedRuns"]["last24h"].as_u64().unwrap() >= 3);
    // Missed since the first due fire without a start, plus grace.
    let first_unmatched = minute - 4 * MIN;
    // (CONTRACT §5: F₀, the first of the unbroken run of missed fires, not the latest one.)
    let latest_due = CronSchedule::parse("* * * * *")
        .unwrap()
        .latest_at_or_before(as_of - grace)
        .unwrap();
    assert!(latest_due > first_unmatched, "several fires missed");
    assert_eq!(parse_ms(&health["since"]) - grace, first_unmatched);
    assert_eq!(missed["schedule"]["lastOutcome"], "completed");
    assert_eq!(
        parse_ms(&missed["schedule"]["expectedAt"]),
        as_of - as_of.rem_euclid(MIN)
    );

    let patient = app.stats("every-minute-patient").await["data"].clone();
    assert_eq!(patient["health"]["state"], "healthy", "{patient}");
    assert_eq!(patient["schedule"]["graceMs"], 600_000);

    let hung = app.stats("hung").await["data"].clone();
    assert_eq!(hung["health"]["state"], "stuck", "{hung}");
    assert_eq!(
        hung["health"]["stuckExecutionIds"],
        serde_json::json!(["h1"])
    );
    assert_eq!(parse_ms(&hung["health"]["since"]), now - 5 * MIN + MIN);
    assert_eq!(hung["schedule"]["maxRuntimeMs"], 60_000);
    assert_eq!(hung["health"]["consecutiveFailures"], 1);

    let flaky = app.stats("flaky").await["data"].clone();
    assert_eq!(flaky["health"]["state"], "failing", "{flaky}");
    assert_eq!(flaky["health"]["consecutiveFailures"], 2);
    assert_eq!(parse_ms(&flaky["health"]["since"]), now - 20 * MIN + 2_000);
    assert_eq!(flaky["schedule"]["lastOutcome"], "failed");
    assert_eq!(flaky["schedule"]["graceMs"], Value::Null);

    let fresh = app.stats("fresh").await["data"].clone();
    assert_eq!(fresh["health"]["state"], "new", "{fresh}");
    assert_eq!(fresh["health"]["since"], Value::Null);
    assert_eq!(fresh["schedule"]["maxRuntimeMs"], 3_600_000);

    // Operators see the same verdicts as counts per tenant and state in /metrics.
    let metrics = app.metrics().await;
    for (state, jobs) in [
        ("missed", 1),
        ("healthy", 1),
        ("stuck", 1),
        ("failing", 1),
        ("new", 1),
        ("unknown", 0),
    ] {
        let line = format!("jobstats_jobs{{tenant=\"{TENANT}\",health=\"{state}\"}} {jobs}");
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing from:\n{}",
            metrics
                .lines()
                .filter(|l| l.starts_with("jobstats_jobs"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    // A success heals the failing job; a late start clears the missed one.
    let mut more = run("flaky", "d", now - 5 * MIN, Some(1_000), true);
    more.extend(run(
        "every-minute",
        "late",
        ms(Utc::now()) - 1_000,
        None,
        true,
    ));
    let last = publish_all(&publisher, &more).await;
    app.wait_applied(last).await;
    let flaky = app.stats("flaky").await["data"].clone();
    assert_eq!(
        (
            &flaky["health"]["state"],
            &flaky["health"]["consecutiveFailures"]
        ),
        (&Value::from("healthy"), &Value::from(0))
    );
    assert_eq!(parse_ms(&flaky["health"]["since"]), now - 5 * MIN + 1_000);
    let cleared = app.stats("every-minute").await["data"].clone();
    assert_eq!(cleared["health"]["state"], "healthy", "{cleared}");
}

/// Waits until the wall clock is `offset_ms` into a minute.
async fn wait_for_second(offset_ms: i64) {
    let now = ms(Utc::now());
    let into = now.rem_euclid(MIN);
    let wait = if into <= offset_ms {
        offset_ms - into
    } else {
        MIN - into + offset_ms
    };
    tokio::time::sleep(Duration::from_millis(wait as u64)).await;
}

#[tokio::test]
async fn a_disconnected_projection_never_cries_wolf_and_says_unknown_after_a_minute() {
    let mut nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let app = App::spawn(&nats.url(), &dir.path().join("stats.db")).await;
    let publisher = nats.publisher().await;
    // Start 5 s into a minute, so the runs below cover every fire due so far.
    wait_for_second(5_000).await;
    let now = ms(Utc::now());
    let minute = now - now.rem_euclid(MIN);
    let mut events = vec![job("heartbeat")
        .at(at(minute - 10 * MIN - 30_000))
        .scheduled_with(Some("* * * * *"), Some(Duration::from_secs(1)), None)
        .unwrap()];
    for i in 0..=10 {
        let fire = minute - (10 - i) * MIN;
        events.extend(run(
            "heartbeat",
            &format!("r{i}"),
            fire + 200,
            Some(100),
            true,
        ));
    }
    let last = publish_all(&publisher, &events).await;
    app.wait_applied(last).await;
    let before = app.stats("heartbeat").await["data"]["health"].clone();
    assert_eq!(before["state"], "healthy", "{before}");
    let last_published = parse_ms(&before["asOf"]);

    // The stream goes away; the runner keeps running but cannot publish. The next fire and its
    // grace pass without a start the projection could see.
    nats.stop();
    let lost_at = ms(Utc::now());
    tokio::time::sleep(Duration::from_millis(
        (minute + MIN + 2_000 - ms(Utc::now())).max(0) as u64,
    ))
    .await;
    let during = app.stats("heartbeat").await["data"]["health"].clone();
    assert_eq!(during["state"], "healthy", "no false missed: {during}");
    assert!(
        parse_ms(&during["asOf"]) <= last_published.max(lost_at),
        "judged no later than what was seen: {during}"
    );
    assert_eq!(during["missedRuns"]["last24h"], 0, "{during}");

    // More than 60 s without the stream: time-based states are not judged at all.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let unknown = loop {
        let health = app.stats("heartbeat").await["data"]["health"].clone();
        if health["state"] == "unknown" {
            break health;
        }
        assert_eq!(health["state"], "healthy", "{health}");
        assert!(std::time::Instant::now() < deadline, "never became unknown");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let since = parse_ms(&unknown["since"]);
    assert!(
        since >= lost_at + 59_000 && since <= lost_at + 70_000,
        "unknown since the stream had been gone 60 s: {unknown}"
    );

    // The stream comes back with the runs the runner could not publish: nothing was missed.
    nats.restart();
    let publisher = nats.publisher().await;
    let now = ms(Utc::now());
    let minute_now = now - now.rem_euclid(MIN);
    let mut backlog = Vec::new();
    let mut fire = minute + MIN;
    while fire <= minute_now {
        backlog.extend(run(
            "heartbeat",
            &format!("late-{fire}"),
            fire + 300,
            Some(100),
            true,
        ));
        fire += MIN;
    }
    let last = publish_all(&publisher, &backlog).await;
    app.wait_applied(last).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let after = loop {
        let health = app.stats("heartbeat").await["data"]["health"].clone();
        // The stream is back and its backlog applied: judged again, at the present.
        if health["state"] != "unknown"
            && (parse_ms(&health["asOf"]) - ms(Utc::now())).abs() < 5_000
        {
            break health;
        }
        assert_ne!(
            health["state"], "missed",
            "a false missed after reconnecting: {health}"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "never caught up: {health}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Only the fire of the current minute may be open (within its one-second grace).
    assert_eq!(after["state"], "healthy", "{after}");
    assert_eq!(after["missedRuns"]["last24h"], 0, "{after}");
}

#[tokio::test]
async fn tenants_past_the_hundred_with_most_jobs_are_counted_together_as_other() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let app = App::spawn(&nats.url(), &dir.path().join("stats.db")).await;
    let publisher = nats.publisher().await;
    // 100 tenants with two jobs each keep their labels; two with one job each do not.
    let tenant = |i: u32| format!("00000000-0000-4000-8000-{i:012}");
    let mut events = Vec::new();
    for i in 0..102u32 {
        let jobs = if i < 100 { 2 } else { 1 };
        for j in 0..jobs {
            let run = EventBuilder::new(&tenant(i), &format!("job-{j}"))
                .unwrap()
                .execution("e1")
                .unwrap();
            let start = Utc::now() - chrono::Duration::minutes(10);
            events.push(run.clone().at(start).started().unwrap());
            events.push(
                run.at(start + chrono::Duration::seconds(1))
                    .completed(None)
                    .unwrap(),
            );
        }
    }
    let head = publish_all(&publisher, &events).await;
    app.wait_applied(head).await;

    let metrics = app.metrics().await;
    let lines: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("jobstats_jobs{"))
        .collect();
    let jobs_of = |label: &str| -> i64 {
        let prefix = format!("jobstats_jobs{{tenant=\"{label}\",health=");
        lines
            .iter()
            .filter(|l| l.starts_with(&prefix))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<i64>().unwrap())
            .sum()
    };
    let shown = lines.join("\n");
    assert_eq!(jobs_of("_other"), 2, "{shown}");
    // One line per state, as for a labelled tenant.
    let other_lines = lines
        .iter()
        .filter(|l| l.contains("tenant=\"_other\""))
        .count();
    assert_eq!(other_lines, 6, "{shown}");
    for i in 0..100 {
        assert_eq!(jobs_of(&tenant(i)), 2, "tenant {i}:\n{shown}");
    }
    for i in 100..102 {
        assert!(
            !shown.contains(&tenant(i)),
            "tenant {i} has its own label:\n{shown}"
        );
    }
    app.stop().await;
}
