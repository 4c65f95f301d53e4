//! The executions export (`?format=ndjson|csv`, `jobstats export`): 100 000 executions stream
//! from a real `serve` with its memory flat, the CSV parses with Python's `csv` module, and
//! both match the paged API row for row.

use std::process::Command;
use std::time::Duration;

use chrono::Utc;

use crate::helpers::*;

const RUNS: i64 = 100_000;
/// A failure message that needs CSV quoting: a comma, quotes and a line break.
const AWKWARD_ERROR: &str = "boom, \"quoted\"\nsecond line";

fn finished_runs(job: &str, count: i64) -> Vec<jobstats::events::Event> {
    let t0 = Utc::now() - chrono::Duration::days(30);
    (0..count)
        .map(|i| {
            let run = jobstats::publish::EventBuilder::new(TENANT, job)
                .and_then(|b| b.execution(&format!("run-{i:06}")))
                .expect("valid run")
                .at(t0 + chrono::Duration::seconds(i * 20));
            if i % 7 == 3 {
                run.exit_code((i % 255 + 1) as u8)
                    .failed(None, Some(AWKWARD_ERROR))
            } else {
                run.completed(Some(i as u64 % 13))
            }
            .expect("valid event")
        })
        .collect()
}

/// Streams `url` without holding the body; the bytes, and serve's peak RSS growth while it
/// streamed (kB).
async fn stream_measuring(serve: &ServeProcess, url: &str) -> (Vec<u8>, i64) {
    let pid = serve.child.id();
    let before = rss_kb(pid);
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(before));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(rss_kb(pid), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let response = serve
        .http
        .get(url)
        .bearer_auth(admin_token())
        .header("x-tenantid", TENANT)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut response = response;
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .expect("the export streams to its end")
    {
        body.extend_from_slice(&chunk);
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    sampler.join().unwrap();
    (
        body,
        peak.load(std::sync::atomic::Ordering::Relaxed) - before,
    )
}

/// Every execution through the paged API (500 a page), newest first.
async fn paged(serve: &ServeProcess, job: &str) -> Vec<serde_json::Value> {
    let mut rows = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = serve.url(&format!("/api/v1/admin/jobs/{job}/executions?limit=500"));
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let page: serde_json::Value = serve
            .http
            .get(url)
            .bearer_auth(admin_token())
            .header("x-tenantid", TENANT)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        rows.extend(
            page["data"]["executions"]
                .as_array()
                .unwrap()
                .iter()
                .cloned(),
        );
        match page["data"]["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return rows,
        }
    }
}

/// A page row as the CSV writes it: every field as text, null as empty.
fn as_csv_row(row: &serde_json::Value) -> Vec<String> {
    [
        "id",
        "status",
        "enqueuedAt",
        "startedAt",
        "completedAt",
        "durationMs",
        "itemsProcessed",
        "error",
        "exitCode",
    ]
    .iter()
    .map(|field| match &row[field] {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    })
    .collect()
}

#[tokio::test]
async fn a_hundred_thousand_executions_stream_as_ndjson_and_csv_in_flat_memory() {
    let nats = NatsServer::start();
    nats.ensure_stream().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("stats.db");
    let serve = ServeProcess::start(&nats.url(), &db);
    let publisher = nats.publisher().await;
    let head = publish_all(&publisher, &finished_runs("exported", RUNS)).await;
    serve
        .wait_applied_within(head, Duration::from_secs(300))
        .await;
    let base = serve.url("/api/v1/admin/jobs/exported/executions");
    // Warm: the first request's one-off allocations are not the export's.
    let _ = stream_measuring(&serve, &format!("{base}?format=ndjson&status=failed")).await;

    let (ndjson, ndjson_growth_kb) =
        stream_measuring(&serve, &format!("{base}?format=ndjson")).await;
    let (csv, csv_growth_kb) = stream_measuring(&serve, &format!("{base}?format=csv")).await;
    eprintln!(
        "export of {RUNS}: ndjson {} bytes, RSS +{ndjson_growth_kb} kB; csv {} bytes, RSS +{csv_growth_kb} kB",
        ndjson.len(),
        csv.len()
    );
    // The bound is 20 MB; held to 8 MB, since buffering the whole 17 MB NDJSON
    // answer would stay under 20 MB.
    for growth in [ndjson_growth_kb, csv_growth_kb] {
        assert!(
            growth < 8 * 1024,
            "serve grew by {growth} kB during an export"
        );
    }

    let pages = paged(&serve, "exported").await;
    assert_eq!(pages.len(), RUNS as usize);
    let lines: Vec<serde_json::Value> = ndjson
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice(line).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), pages.len());
    for (i, (line, page_row)) in lines.iter().zip(&pages).enumerate() {
        assert_eq!(line, page_row, "row {i}");
    }

    // Python's csv module reads the file back; its rows are the pages' rows.
    let csv_path = dir.path().join("exported.csv");
    std::fs::write(&csv_path, &csv).unwrap();
    let parsed = Command::new("python3")
        .args([
            "-c",
            "import csv, json, sys\n\
             rows = list(csv.reader(open(sys.argv[1], newline='', encoding='utf-8')))\n\
             json.dump(rows, sys.stdout)",
        ])
        .arg(&csv_path)
        .output()
        .expect("python3");
    assert!(
        parsed.status.success(),
        "{}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    let rows: Vec<Vec<String>> = serde_json::from_slice(&parsed.stdout).unwrap();
    assert_eq!(
        rows[0],
        [
            "id",
            "status",
            "enqueuedAt",
            "startedAt",
            "completedAt",
            "durationMs",
            "itemsProcessed",
            "error",
            "exitCode"
        ]
    );
    assert_eq!(rows.len() - 1, pages.len());
    for (i, (row, page_row)) in rows[1..].iter().zip(&pages).enumerate() {
        assert_eq!(*row, as_csv_row(page_row), "row {i}");
    }
    assert!(rows.iter().any(|row| row[7] == AWKWARD_ERROR));
    assert!(rows
        .iter()
        .any(|row| row[7] == AWKWARD_ERROR && row[8] == "4"));

    // Filters apply as on pages; the command line gives the same bytes from the file.
    let (failed, _) = stream_measuring(&serve, &format!("{base}?format=csv&status=failed")).await;
    let failed_pages = pages.iter().filter(|r| r["status"] == "failed").count();
    let failed_rows = Command::new("python3")
        .args(["-c", "import csv, io, sys; print(len(list(csv.reader(io.StringIO(sys.stdin.read(), newline='')))) - 1)"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(&failed)?;
            child.wait_with_output()
        })
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&failed_rows.stdout).trim(),
        failed_pages.to_string()
    );
    let cli = Command::new(BIN)
        .args([
            "export", "--tenant", TENANT, "--job", "exported", "--format", "csv",
        ])
        .env("JOBSTATS_DB_PATH", &db)
        .output()
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert!(
        cli.stdout == csv,
        "jobstats export differs from the HTTP export"
    );
}

#[tokio::test]
async fn export_requests_are_checked_like_pages() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let app = App::spawn(&nats.url(), &dir.path().join("stats.db")).await;
    let publisher = nats.publisher().await;
    let head = publish_all(&publisher, &finished_runs("small", 3)).await;
    app.wait_applied(head).await;
    let get = |query: &str, tenant: &str| {
        app.http
            .get(app.url(&format!("/api/v1/admin/jobs/small/executions{query}")))
            .bearer_auth(admin_token())
            .header("x-tenantid", tenant)
            .send()
    };
    let response = get("?format=ndjson", TENANT).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    assert_eq!(response.text().await.unwrap().lines().count(), 3);
    for (query, field) in [
        ("?format=xml", "format"),
        ("?format=csv&limit=10", "limit"),
        ("?format=csv&cursor=abc", "cursor"),
        ("?format=csv&status=lost", "status"),
    ] {
        let response = get(query, TENANT).await.unwrap();
        assert_eq!(response.status(), 400, "{query}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(
            body["message"].as_str().unwrap().contains(field),
            "{query}: {body}"
        );
    }
    let response = app
        .http
        .get(app.url("/api/v1/admin/jobs/nothing-here/executions?format=csv"))
        .bearer_auth(admin_token())
        .header("x-tenantid", TENANT)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let other_tenant = "00000000-0000-4000-8000-0000000000b2";
    let response = app
        .http
        .get(app.url("/api/v1/admin/jobs/small/executions?format=csv"))
        .bearer_auth(token(&["system_admin"], Some(other_tenant)))
        .header("x-tenantid", TENANT)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
}
