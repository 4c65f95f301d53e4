//! CONTRACT §6: percentiles, queue wait and items from sketches, trailing windows from
//! rollups, identical answers from replicas, conditional requests on the list and executions.

use chrono::{DateTime, Duration, Utc};
use reqwest::StatusCode;

use crate::helpers::*;

/// A small deterministic generator (xorshift64*), so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in (0, 1).
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Log-normal around `median_ms` (Box–Muller), at least 1 ms.
    fn log_normal(&mut self, median_ms: f64, sigma: f64) -> i64 {
        let z = (-2.0 * self.unit().ln()).sqrt() * (std::f64::consts::TAU * self.unit()).cos();
        ((median_ms.ln() + sigma * z).exp().round() as i64).max(1)
    }
}

/// The value at rank ⌈p·n/100⌉ of `sorted` (the contract's definition).
fn order_statistic(sorted: &[i64], percent: usize) -> i64 {
    let rank = (percent * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

fn assert_within_one_percent(reported: &serde_json::Value, exact: i64, what: &str) {
    let reported = reported
        .as_i64()
        .unwrap_or_else(|| panic!("{what}: {reported}"));
    assert!(
        (reported - exact).abs() as f64 <= exact as f64 * 0.01,
        "{what}: reported {reported}, exact {exact}"
    );
}

async fn get(app: &App, path: &str, if_none_match: Option<&str>) -> reqwest::Response {
    let mut request = app
        .http
        .get(app.url(path))
        .bearer_auth(admin_token())
        .header("x-tenantid", TENANT);
    if let Some(tag) = if_none_match {
        request = request.header("if-none-match", tag);
    }
    request.send().await.expect("request")
}

fn etag(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("etag")
        .expect("an ETag")
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn percentiles_of_a_heavy_tailed_history_are_within_one_percent_and_survive_a_rebuild() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("stats.db");
    let app = App::spawn(&nats.url(), &db).await;
    let publisher = nats.publisher().await;

    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let first = Utc::now() - Duration::days(20);
    let mut durations = Vec::new();
    let mut events = Vec::new();
    for i in 0..20_000i64 {
        // Log-normal around 30 s, and every 1,000th run takes hours.
        let duration = if i % 1_000 == 999 {
            2 * 3_600_000 + (rng.unit() * 8.0 * 3_600_000.0) as i64
        } else {
            rng.log_normal(30_000.0, 1.5).min(30 * 86_400_000)
        };
        durations.push(duration);
        let start = first + Duration::seconds(60 * i);
        events.extend(execution_events(
            "heavy-tail",
            &format!("e{i:06}"),
            start,
            duration,
            true,
        ));
    }
    app.wait_applied(publish_all(&publisher, &events).await)
        .await;
    durations.sort_unstable();

    let performance = app.stats("heavy-tail").await["data"]["performance"].clone();
    for percent in [50, 90, 95, 99] {
        assert_within_one_percent(
            &performance["percentiles"][format!("p{percent}Ms")],
            order_statistic(&durations, percent),
            &format!("p{percent}"),
        );
    }
    // Every run waited exactly 100 ms in the queue and processed 10 items.
    assert_eq!(performance["queueWait"]["averageMs"], 100);
    assert_within_one_percent(&performance["queueWait"]["p95Ms"], 100, "queue wait p95");
    assert_eq!(performance["itemsProcessed"]["total"], 200_000);
    assert_eq!(performance["itemsProcessed"]["averagePerRun"], 10.0);
    let exact_mean = (durations.iter().map(|d| i128::from(*d)).sum::<i128>() + 10_000) / 20_000;
    assert_eq!(
        performance["averageExecutionTimeMs"], exact_mean as i64,
        "the mean stays exact"
    );

    app.stop().await;
    rebuild(&nats, &db);
    let app = App::spawn(&nats.url(), &db).await;
    assert_eq!(
        app.stats("heavy-tail").await["data"]["performance"],
        performance,
        "a rebuild gives the same figures"
    );
}

/// One finished execution as the test knows it.
struct Finished {
    finished_at: i64,
    duration_ms: i64,
    ok: bool,
}

/// What the contract says a window holds, computed from the executions themselves.
fn brute_force_window(all: &[Finished], name: &str, as_of: i64) -> (i64, serde_json::Value) {
    let (length, width) = match name {
        "1h" => (3_600_000, 60_000),
        "24h" => (86_400_000, 60_000),
        "7d" => (7 * 86_400_000, 3_600_000),
        "30d" => (30 * 86_400_000, 3_600_000),
        other => panic!("{other}"),
    };
    let bucket = |t: i64| t.div_euclid(width) * width;
    let from = bucket(as_of - length);
    let last = bucket(as_of);
    let inside: Vec<&Finished> = all
        .iter()
        .filter(|f| (from..=last).contains(&bucket(f.finished_at)))
        .collect();
    let completed = inside.iter().filter(|f| f.ok).count() as i64;
    let failed = inside.len() as i64 - completed;
    let mut times: Vec<i64> = inside
        .iter()
        .filter(|f| f.ok)
        .map(|f| f.duration_ms)
        .collect();
    times.sort_unstable();
    let average = (!times.is_empty()).then(|| {
        let n = times.len() as i128;
        ((times.iter().map(|t| i128::from(*t)).sum::<i128>() + n / 2) / n) as i64
    });
    let percentiles: Vec<i64> = [50, 90, 95, 99]
        .iter()
        .filter(|_| !times.is_empty())
        .map(|p| order_statistic(&times, *p))
        .collect();
    (
        from,
        serde_json::json!({
            "completed": completed,
            "failed": failed,
            "averageExecutionTimeMs": average,
            "percentiles": percentiles,
        }),
    )
}

#[tokio::test]
async fn trailing_windows_equal_a_brute_force_count_at_their_bucket_granularity() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let app = App::spawn(&nats.url(), &dir.path().join("stats.db")).await;
    let publisher = nats.publisher().await;

    let mut rng = Rng(0x5eed_0000_0040_da75);
    let now = Utc::now().timestamp_millis();
    let mut finished = Vec::new();
    let mut events = Vec::new();
    for i in 0..3_000 {
        // Finishes spread over 40 days, denser in the last hours so short windows hold some.
        let age = if i % 3 == 0 {
            rng.unit() * 3.0 * 3_600_000.0
        } else {
            rng.unit() * 40.0 * 86_400_000.0
        };
        let finished_at = now - 5_000 - age as i64;
        let duration_ms = rng.log_normal(20_000.0, 1.2).min(6 * 3_600_000);
        let ok = rng.unit() < 0.8;
        let start = DateTime::from_timestamp_millis(finished_at - duration_ms).unwrap();
        events.extend(execution_events(
            "windowed",
            &format!("w{i:05}"),
            start,
            duration_ms,
            ok,
        ));
        finished.push(Finished {
            finished_at,
            duration_ms,
            ok,
        });
    }
    app.wait_applied(publish_all(&publisher, &events).await)
        .await;

    let plain = app.stats("windowed").await["data"].clone();
    assert!(plain.get("window").is_none(), "no window unless asked");
    for name in ["1h", "24h", "7d", "30d"] {
        let response = get(
            &app,
            &format!("/api/v1/admin/jobs/windowed/stats?window={name}"),
            None,
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK, "{name}");
        let tag = etag(&response);
        let body: serde_json::Value = response.json().await.unwrap();
        let data = &body["data"];
        let window = &data["window"];
        assert_eq!(window["name"], name);
        let as_of = DateTime::parse_from_rfc3339(window["to"].as_str().unwrap())
            .unwrap()
            .timestamp_millis();
        assert_eq!(
            window["to"], data["health"]["asOf"],
            "a window ends at asOf"
        );
        let (from, expected) = brute_force_window(&finished, name, as_of);
        assert_eq!(
            window["from"],
            jobstats::api::rfc3339_millis(from),
            "{name}: the bucket edge used"
        );
        assert_eq!(window["completed"], expected["completed"], "{name}");
        assert_eq!(window["failed"], expected["failed"], "{name}");
        let (completed, failed) = (
            expected["completed"].as_i64().unwrap(),
            expected["failed"].as_i64().unwrap(),
        );
        assert!(completed > 0 && failed > 0, "{name} holds both outcomes");
        // One decimal, rounded down (the epsilon absorbs a product like 0.7 * 100 landing a
        // hair under 70).
        let percent = completed as f64 * 100.0 / (completed + failed) as f64;
        let rate = (percent * 10.0 + 1e-9).floor() / 10.0;
        assert_eq!(window["successRatePercent"], rate, "{name}");
        assert_eq!(
            window["averageExecutionTimeMs"], expected["averageExecutionTimeMs"],
            "{name}"
        );
        for (i, percent) in [50, 90, 95, 99].iter().enumerate() {
            assert_within_one_percent(
                &window["percentiles"][format!("p{percent}Ms")],
                expected["percentiles"][i].as_i64().unwrap(),
                &format!("{name} p{percent}"),
            );
        }
        // The whole-stream fields do not move with a window.
        assert_eq!(data["queue"], plain["queue"], "{name}");
        assert_eq!(data["performance"], plain["performance"], "{name}");
        assert_eq!(
            data["health"]["consecutiveFailures"],
            plain["health"]["consecutiveFailures"]
        );
        // The windowed answer is its own representation, and conditional like the others.
        let again = get(
            &app,
            &format!("/api/v1/admin/jobs/windowed/stats?window={name}"),
            Some(&tag),
        )
        .await;
        match again.status() {
            StatusCode::NOT_MODIFIED => assert_eq!(etag(&again), tag),
            // Only when the window moved to its next bucket between the two requests.
            StatusCode::OK => assert_ne!(etag(&again), tag, "{name}: 200 with the same tag"),
            other => panic!("{name}: {other}"),
        }
    }
    for bad in [
        "?window=2h",
        "?window=",
        "?window=7D",
        "?window=1h&window=24h",
    ] {
        let response = get(
            &app,
            &format!("/api/v1/admin/jobs/windowed/stats{bad}"),
            None,
        )
        .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "INVALID_PARAMETER", "{bad}");
        assert!(
            body["message"].as_str().unwrap().contains("window"),
            "{bad}: {body}"
        );
    }
}

#[tokio::test]
async fn two_replicas_on_one_stream_give_byte_identical_answers() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    nats.ensure_stream().await;
    let publisher = nats.publisher().await;
    let t0 = Utc::now() - Duration::hours(30);
    let mut events = runs(
        "replicated",
        40,
        t0,
        Duration::minutes(37),
        |i| 500 + 97 * i,
        |i| i % 7 != 3,
    );
    events.extend(runs(
        "other",
        25,
        t0,
        Duration::minutes(50),
        |i| 20_000 + i,
        |_| true,
    ));
    let head = publish_all(&publisher, &events).await;
    let a = ServeProcess::start_with_env(
        &nats.url(),
        &dir.path().join("a.db"),
        &[("JOBSTATS_CONSUMER", "jobstats-a")],
    );
    let b = ServeProcess::start_with_env(
        &nats.url(),
        &dir.path().join("b.db"),
        &[("JOBSTATS_CONSUMER", "jobstats-b")],
    );
    a.wait_applied(head).await;
    b.wait_applied(head).await;
    // The answer's uptime comes from the job's announced health changes (JOB_HEALTH), which
    // each replica reads on its own: identical once both have read the job's change.
    let flips_of = |serve: &ServeProcess| {
        serve
            .http
            .get(serve.url("/api/v1/admin/jobs/replicated/flips"))
            .bearer_auth(admin_token())
            .header("x-tenantid", TENANT)
            .send()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (fa, fb) = (flips_of(&a).await.unwrap(), flips_of(&b).await.unwrap());
        let fa: serde_json::Value = fa.json().await.unwrap();
        let fb: serde_json::Value = fb.json().await.unwrap();
        let read = |f: &serde_json::Value| f["data"]["flips"].as_array().map_or(0, Vec::len);
        if read(&fa) > 0 && fa["data"] == fb["data"] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{fa} / {fb}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let fetch = |serve: &ServeProcess, query: &str| {
        serve
            .http
            .get(serve.url(&format!("/api/v1/admin/jobs/replicated/stats{query}")))
            .bearer_auth(admin_token())
            .header("x-tenantid", TENANT)
            .send()
    };
    for query in ["", "?window=24h", "?window=30d&recent=50"] {
        let mut agreed = false;
        for _ in 0..3 {
            let (ra, rb) = (
                fetch(&a, query).await.unwrap(),
                fetch(&b, query).await.unwrap(),
            );
            assert_eq!(ra.status(), StatusCode::OK);
            assert_eq!(rb.status(), StatusCode::OK);
            let (tag_a, tag_b) = (etag(&ra), etag(&rb));
            let (body_a, body_b) = (ra.bytes().await.unwrap(), rb.bytes().await.unwrap());
            if tag_a != tag_b {
                // The two reads fell on either side of a bucket edge: ask again.
                continue;
            }
            assert_eq!(
                without_request_time(&body_a),
                without_request_time(&body_b),
                "{query}"
            );
            let value: serde_json::Value = serde_json::from_slice(&body_a).unwrap();
            assert_eq!(value["data"]["freshness"]["appliedSequence"], head);
            agreed = true;
            break;
        }
        assert!(agreed, "{query}: the replicas' ETags never agreed");
    }
}

#[tokio::test]
async fn the_list_and_executions_answer_304_until_their_data_changes() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let app = App::spawn(&nats.url(), &dir.path().join("stats.db")).await;
    let publisher = nats.publisher().await;
    let t0 = Utc::now() - Duration::hours(2);
    let mut events = runs("listed-a", 3, t0, Duration::minutes(5), |_| 1_000, |_| true);
    events.extend(runs(
        "listed-b",
        3,
        t0,
        Duration::minutes(5),
        |_| 1_000,
        |_| true,
    ));
    app.wait_applied(publish_all(&publisher, &events).await)
        .await;

    let list = "/api/v1/admin/jobs";
    let history = "/api/v1/admin/jobs/listed-a/executions?limit=2";
    let mut tags = Vec::new();
    for path in [list, history] {
        let first = get(&app, path, None).await;
        assert_eq!(first.status(), StatusCode::OK, "{path}");
        let tag = etag(&first);
        assert!(tag.starts_with("W/\""), "{tag}");
        let again = get(&app, path, Some(&tag)).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{path}");
        assert_eq!(etag(&again), tag);
        assert!(again.bytes().await.unwrap().is_empty());
        tags.push(tag);
    }
    // Another page of the same history is another answer.
    let more = get(
        &app,
        "/api/v1/admin/jobs/listed-a/executions?limit=3",
        Some(&tags[1]),
    )
    .await;
    assert_eq!(more.status(), StatusCode::OK);

    // listed-b changes: the list (which shows it) changes, listed-a's history does not.
    let later = execution_events(
        "listed-b",
        "late",
        Utc::now() - Duration::minutes(1),
        500,
        false,
    );
    app.wait_applied(publish_all(&publisher, &later).await)
        .await;
    assert_eq!(
        get(&app, list, Some(&tags[0])).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        get(&app, history, Some(&tags[1])).await.status(),
        StatusCode::NOT_MODIFIED
    );
    let mine = execution_events(
        "listed-a",
        "late",
        Utc::now() - Duration::minutes(1),
        500,
        true,
    );
    app.wait_applied(publish_all(&publisher, &mine).await).await;
    let changed = get(&app, history, Some(&tags[1])).await;
    assert_eq!(changed.status(), StatusCode::OK);
    let body: serde_json::Value = changed.json().await.unwrap();
    assert_eq!(body["data"]["executions"][0]["id"], "late");
}
