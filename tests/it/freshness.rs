//! CONTRACT §6, the parts that have landed: freshness from the stream, and conditional
//! requests on the stats endpoint.

use chrono::{TimeZone, Utc};
use reqwest::StatusCode;

use jobstats::publish::EventBuilder;

use crate::helpers::*;

async fn get_stats(
    app: &App,
    job: &str,
    query: &str,
    if_none_match: Option<&str>,
) -> reqwest::Response {
    let mut request = app
        .http
        .get(app.url(&format!("/api/v1/admin/jobs/{job}/stats{query}")))
        .bearer_auth(admin_token())
        .header("x-tenantid", TENANT);
    if let Some(tag) = if_none_match {
        request = request.header("if-none-match", tag);
    }
    request.send().await.expect("request")
}

fn etag_of(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("etag")
        .expect("an ETag on every stats answer")
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn the_stats_etag_changes_when_the_job_changes_and_only_then() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let app = App::spawn(&nats.url(), &dir.path().join("stats.db")).await;
    let publisher = nats.publisher().await;
    let t0 = Utc.with_ymd_and_hms(2025, 7, 10, 6, 0, 0).unwrap();
    let minute = chrono::Duration::minutes(1);
    let mut events = runs("watched", 3, t0, minute, |_| 1_000, |_| true);
    events.extend(runs("other", 3, t0, minute, |_| 1_000, |_| true));
    app.wait_applied(publish_all(&publisher, &events).await)
        .await;

    let first = get_stats(&app, "watched", "", None).await;
    assert_eq!(first.status(), StatusCode::OK);
    let tag = etag_of(&first);
    assert!(tag.starts_with("W/\""), "a weak validator: {tag}");
    let unchanged = get_stats(&app, "watched", "", Some(&tag)).await;
    assert_eq!(unchanged.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(etag_of(&unchanged), tag);
    assert!(
        unchanged.bytes().await.unwrap().is_empty(),
        "304 has no body"
    );
    for listed in [
        "*",
        &format!("W/\"nope\", {tag}"),
        tag.trim_start_matches("W/"),
    ] {
        let response = get_stats(&app, "watched", "", Some(listed)).await;
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED, "{listed}");
    }
    // Another shape of the answer is another representation.
    let fewer = get_stats(&app, "watched", "?recent=2", Some(&tag)).await;
    assert_eq!(fewer.status(), StatusCode::OK);
    assert_ne!(etag_of(&fewer), tag);

    // Another job changes: this one's answer is still current.
    let later = t0 + chrono::Duration::hours(1);
    let other = execution_events("other", "late-other", later, 1_000, false);
    app.wait_applied(publish_all(&publisher, &other).await)
        .await;
    let still = get_stats(&app, "watched", "", Some(&tag)).await;
    assert_eq!(still.status(), StatusCode::NOT_MODIFIED);

    // This job changes: a full answer, with the new run counted, under a new tag.
    let mine = execution_events("watched", "late-watched", later, 1_000, false);
    app.wait_applied(publish_all(&publisher, &mine).await).await;
    let changed = get_stats(&app, "watched", "", Some(&tag)).await;
    assert_eq!(changed.status(), StatusCode::OK);
    let new_tag = etag_of(&changed);
    assert_ne!(new_tag, tag);
    let body: serde_json::Value = changed.json().await.unwrap();
    assert_eq!(body["data"]["queue"]["failed"], 1, "{body}");
    assert_eq!(
        get_stats(&app, "watched", "", Some(&new_tag))
            .await
            .status(),
        StatusCode::NOT_MODIFIED
    );
}

#[tokio::test]
async fn freshness_names_the_last_applied_sequence_and_its_stream_time() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let app = App::spawn(&nats.url(), &dir.path().join("stats.db")).await;
    let publisher = nats.publisher().await;
    let t0 = Utc.with_ymd_and_hms(2025, 7, 10, 6, 0, 0).unwrap();
    let events = runs(
        "fresh",
        2,
        t0,
        chrono::Duration::minutes(1),
        |_| 500,
        |_| true,
    );
    let head = publish_all(&publisher, &events).await;
    app.wait_applied(head).await;

    let body = app.stats("fresh").await;
    let freshness = &body["data"]["freshness"];
    assert_eq!(freshness["appliedSequence"], head, "{freshness}");
    let stored = async_nats::jetstream::new(nats.client().await)
        .get_stream("JOB_EVENTS")
        .await
        .unwrap()
        .get_raw_message(head)
        .await
        .unwrap();
    let stored_ms = (stored.time.unix_timestamp_nanos() / 1_000_000) as i64;
    let expected = Utc
        .timestamp_millis_opt(stored_ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    assert_eq!(freshness["lastEventAt"], expected.as_str(), "{freshness}");
    assert!(
        freshness.get("appliedAt").is_none(),
        "no wall-clock field: {freshness}"
    );
}

#[tokio::test]
async fn a_reader_sees_its_own_write_or_hears_503_after_about_wait_ms() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let app = App::spawn(&nats.url(), &dir.path().join("stats.db")).await;
    let publisher = nats.publisher().await;
    let t0 = Utc.with_ymd_and_hms(2025, 7, 10, 6, 0, 0).unwrap();
    let head = publish_all(
        &publisher,
        &runs(
            "ryw",
            2,
            t0,
            chrono::Duration::minutes(1),
            |_| 500,
            |_| true,
        ),
    )
    .await;
    app.wait_applied(head).await;

    // The CLI's printed sequence, then a read that must include it.
    let output = std::process::Command::new(BIN)
        .args([
            "publish",
            "started",
            "--tenant",
            TENANT,
            "--job",
            "ryw",
            "--execution",
            "mine",
        ])
        .env("JOBSTATS_NATS_URL", nats.url())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let sequence: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("sequence="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("sequence=N on stdout: {stdout}"));
    let query = format!("?minSequence={sequence}&waitMs=2000");
    let response = get_stats(&app, "ryw", &query, None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["data"]["queue"]["processing"], 1, "{body}");
    assert!(
        body["data"]["freshness"]["appliedSequence"]
            .as_u64()
            .unwrap()
            >= sequence
    );

    // A read waiting for a sequence not yet published wakes when it is applied.
    let next = sequence + 1;
    let waiting = {
        let url = app.url(&format!(
            "/api/v1/admin/jobs/ryw/stats?minSequence={next}&waitMs=4000"
        ));
        let http = app.http.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let response = http
                .get(url)
                .bearer_auth(admin_token())
                .header("x-tenantid", TENANT)
                .send()
                .await
                .unwrap();
            (
                started.elapsed(),
                response.status(),
                response.json::<serde_json::Value>().await.unwrap(),
            )
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let done = EventBuilder::new(TENANT, "ryw")
        .unwrap()
        .execution("mine")
        .unwrap()
        .completed(None)
        .unwrap();
    publish_all(&publisher, &[done]).await;
    let (elapsed, status, body) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["queue"]["completed"], 3, "{body}");
    assert!(
        elapsed >= std::time::Duration::from_millis(250),
        "it waited: {elapsed:?}"
    );
    assert!(
        elapsed < std::time::Duration::from_millis(3_500),
        "woken by the commit: {elapsed:?}"
    );

    // Far ahead: 503 PROJECTION_BEHIND with Retry-After, once waitMs has passed.
    let started = std::time::Instant::now();
    let behind = get_stats(
        &app,
        "ryw",
        &format!("?minSequence={}&waitMs=500", next + 1_000),
        None,
    )
    .await;
    let elapsed = started.elapsed();
    assert_eq!(behind.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(behind.headers()["retry-after"], "1");
    let body: serde_json::Value = behind.json().await.unwrap();
    assert_eq!(body["error"]["code"], "PROJECTION_BEHIND", "{body}");
    assert_eq!(body["success"], false);
    assert!(
        elapsed >= std::time::Duration::from_millis(450),
        "{elapsed:?}"
    );
    assert!(
        elapsed < std::time::Duration::from_millis(3_000),
        "{elapsed:?}"
    );
    // waitMs=0 (the default) answers at once.
    let now = get_stats(&app, "ryw", &format!("?minSequence={}", next + 1_000), None).await;
    assert_eq!(now.status(), StatusCode::SERVICE_UNAVAILABLE);

    for (query, named) in [
        ("?minSequence=1&waitMs=5001", "waitMs"),
        ("?minSequence=-1", "minSequence"),
        ("?minSequence=x", "minSequence"),
    ] {
        let response = get_stats(&app, "ryw", query, None).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "INVALID_PARAMETER", "{query}");
        assert!(
            body["message"].as_str().unwrap().contains(named),
            "{query}: {body}"
        );
    }
}
