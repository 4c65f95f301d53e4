//! Flips and uptime from announced health changes: a job healthy for 20 hours and failing for
//! the last 4 shows those changes (newest first, paged) and 83.3% over 24 hours, the same on a
//! second replica, after a restart, and after a rebuild of the read model.

use std::time::{Duration, Instant};

use chrono::Utc;

use crate::helpers::*;

async fn get(serve: &ServeProcess, path: &str) -> serde_json::Value {
    let response = serve
        .http
        .get(serve.url(path))
        .bearer_auth(admin_token())
        .header("x-tenantid", TENANT)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.expect("json")
}

/// The job's flips without the request time, once the replica shows `count` of them.
async fn flips_when(serve: &ServeProcess, count: usize) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // 404 until the replica has projected the job.
        let response = serve
            .http
            .get(serve.url("/api/v1/admin/jobs/nightly/flips"))
            .bearer_auth(admin_token())
            .header("x-tenantid", TENANT)
            .send()
            .await
            .expect("request");
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        if body["data"]["flips"]
            .as_array()
            .is_some_and(|f| f.len() >= count)
        {
            return body["data"].clone();
        }
        assert!(Instant::now() < deadline, "only {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every flip through pages of one.
async fn paged_flips(serve: &ServeProcess) -> Vec<serde_json::Value> {
    let mut all = Vec::new();
    let mut path = "/api/v1/admin/jobs/nightly/flips?limit=1".to_owned();
    loop {
        let body = get(serve, &path).await;
        all.extend(body["data"]["flips"].as_array().unwrap().iter().cloned());
        match body["data"]["nextCursor"].as_str() {
            Some(cursor) => {
                path = format!("/api/v1/admin/jobs/nightly/flips?limit=1&cursor={cursor}")
            }
            None => return all,
        }
    }
}

fn uptime_of(body: &serde_json::Value) -> serde_json::Value {
    body["data"]["uptime"].clone()
}

/// The same figures, read at another instant: the week's and the month's exactly (their windows
/// begin before the job's first change), the day's within a tenth (its window moves on).
#[track_caller]
fn assert_same_uptime(seen: &serde_json::Value, expected: &serde_json::Value) {
    for key in ["last7d", "last7dPercent", "last30d", "last30dPercent"] {
        assert_eq!(seen[key], expected[key], "{key}: {seen} vs {expected}");
    }
    let (day, expected_day) = (
        seen["last24hPercent"].as_f64().unwrap(),
        expected["last24hPercent"].as_f64().unwrap(),
    );
    assert!(
        (day - expected_day).abs() <= 0.1 + 1e-9,
        "{seen} vs {expected}"
    );
}

async fn list_uptime(serve: &ServeProcess) -> serde_json::Value {
    let list = get(serve, "/api/v1/admin/jobs?sort=uptime24h").await;
    list["data"]["jobs"][0]["uptime"].clone()
}

#[tokio::test]
async fn flips_and_uptime_agree_across_replicas_restarts_and_rebuilds() {
    let nats = NatsServer::start();
    nats.ensure_stream().await;
    let dir = tempfile::tempdir().unwrap();
    let (db_a, db_b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let mut a = ServeProcess::start_with_env(&nats.url(), &db_a, &[("JOBSTATS_INSTANCE_ID", "a")]);
    let b = ServeProcess::start_with_env(&nats.url(), &db_b, &[("JOBSTATS_INSTANCE_ID", "b")]);
    let publisher = nats.publisher().await;
    let now = Utc::now();
    // Healthy from 24 hours ago; failing since 4 hours ago.
    publish_all(
        &publisher,
        &execution_events("nightly", "r1", now - chrono::Duration::hours(24), 1, true),
    )
    .await;
    flips_when(&a, 1).await;
    publish_all(
        &publisher,
        &execution_events("nightly", "r2", now - chrono::Duration::hours(4), 1, false),
    )
    .await;
    let flips = flips_when(&a, 2).await;
    let listed: Vec<(String, String)> = flips["flips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["previousState"].as_str().unwrap().to_owned(),
                f["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("healthy".into(), "failing".into()),
            ("new".into(), "healthy".into())
        ]
    );
    assert_eq!(flips["flips"][0]["silenced"], false);
    assert!(flips["nextCursor"].is_null());

    // 20 of the 24 hours up; the week and the month know only those hours.
    let stats = get(&a, "/api/v1/admin/jobs/nightly/stats").await;
    let uptime = uptime_of(&stats);
    assert_eq!(uptime["last24h"], "83.3%", "{uptime}");
    assert_eq!(uptime["last24hPercent"], 83.3, "{uptime}");
    assert_eq!(uptime["last7d"], "83.3%", "{uptime}");
    assert_eq!(uptime["last30dPercent"], 83.3, "{uptime}");
    assert_same_uptime(&list_uptime(&a).await, &uptime);

    // Silenced for the last hour (and the next): that hour counts on neither side, 20 / 23 in
    // the week and the month (their windows begin before the job's first change); the day's
    // window has moved on since `now`, so its up time is a little short of 20 hours.
    let silence = jobstats::publish::EventBuilder::new(TENANT, "nightly")
        .unwrap()
        .at(now - chrono::Duration::hours(1))
        .silenced(
            Some(now + chrono::Duration::hours(1)),
            Some("maintenance".into()),
            None,
        );
    let head = publish_all(&publisher, &[silence]).await;
    a.wait_applied(head).await;
    let stats = get(&a, "/api/v1/admin/jobs/nightly/stats").await;
    let uptime = uptime_of(&stats);
    assert_eq!(uptime["last7d"], "86.9%", "{uptime}");
    assert_eq!(uptime["last7dPercent"], 86.9, "{uptime}");
    assert_eq!(uptime["last30d"], "86.9%", "{uptime}");
    let day = uptime["last24hPercent"].as_f64().unwrap();
    assert!((86.0..=86.9).contains(&day), "{uptime}");
    assert_same_uptime(&list_uptime(&a).await, &uptime);
    // Still failing, judged as always: no change was announced for the silence.
    assert_eq!(stats["data"]["health"]["state"], "failing");
    assert_eq!(flips_when(&a, 2).await, flips);

    // The second replica, pages of one, a restart, a rebuild: the same.
    b.wait_applied(head).await;
    assert_eq!(flips_when(&b, 2).await, flips);
    assert_same_uptime(
        &uptime_of(&get(&b, "/api/v1/admin/jobs/nightly/stats").await),
        &uptime,
    );
    assert_eq!(
        paged_flips(&b).await,
        flips["flips"].as_array().unwrap().clone()
    );
    a.kill_9();
    let a = ServeProcess::start_with_env(&nats.url(), &db_a, &[("JOBSTATS_INSTANCE_ID", "a")]);
    a.wait_applied(head).await;
    assert_eq!(flips_when(&a, 2).await, flips);
    assert_same_uptime(
        &uptime_of(&get(&a, "/api/v1/admin/jobs/nightly/stats").await),
        &uptime,
    );
    rebuild(&nats, &db_b);
    b.wait_applied(head).await;
    assert_eq!(flips_when(&b, 2).await, flips);
    assert_same_uptime(
        &uptime_of(&get(&b, "/api/v1/admin/jobs/nightly/stats").await),
        &uptime,
    );

    // A range keeps the changes whose state began in it.
    let from =
        (now - chrono::Duration::hours(5)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let ranged = get(&b, &format!("/api/v1/admin/jobs/nightly/flips?from={from}")).await;
    assert_eq!(ranged["data"]["flips"].as_array().unwrap().len(), 1);
    assert_eq!(ranged["data"]["flips"][0]["state"], "failing");
}

#[tokio::test]
async fn flips_requests_are_checked() {
    let nats = NatsServer::start();
    nats.ensure_stream().await;
    let dir = tempfile::tempdir().unwrap();
    let serve = ServeProcess::start(&nats.url(), &dir.path().join("stats.db"));
    let publisher = nats.publisher().await;
    let head = publish_all(
        &publisher,
        &execution_events("nightly", "r1", Utc::now(), 1, true),
    )
    .await;
    serve.wait_applied(head).await;
    for (query, field) in [
        ("?limit=0", "limit"),
        ("?from=yesterday", "from"),
        ("?cursor=bm9wZQ", "cursor"),
        ("?from=2026-12-02T00:00:00Z&to=2026-12-01T00:00:00Z", "from"),
    ] {
        let response = serve
            .http
            .get(serve.url(&format!("/api/v1/admin/jobs/nightly/flips{query}")))
            .bearer_auth(admin_token())
            .header("x-tenantid", TENANT)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{query}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(
            body["message"].as_str().unwrap().contains(field),
            "{query}: {body}"
        );
    }
    let missing = serve
        .http
        .get(serve.url("/api/v1/admin/jobs/no-such-job/flips"))
        .bearer_auth(admin_token())
        .header("x-tenantid", TENANT)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}
