//! CONTRACT §6, the parts that have landed: freshness from the stream, and conditional
//! requests on the stats endpoint.

use chrono::{TimeZone, Utc};
use reqwest::StatusCode;

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
