//! The server meets the internet's clients: bounded attackers through real sockets against the
//! real binary, while a legitimate client keeps getting answers.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

/// Whether the server has closed `stream` (reads end or fail) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // An answer (e.g. a 408) is fine; what matters is that the connection ends.
            Ok(Ok(_)) => continue,
        }
    }
}

async fn healthz_within(url: &str, within: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let client = reqwest::Client::builder().timeout(within).build().unwrap();
    match client.get(url).send().await {
        Ok(response) if response.status() == 200 => Ok(started.elapsed()),
        Ok(response) => Err(format!("status {}", response.status())),
        Err(error) => Err(error.to_string()),
    }
}

#[tokio::test]
async fn requests_that_never_complete_their_headers_are_cut_off_and_others_still_answer() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let serve = ServeProcess::start_with_env(
        &nats.url(),
        &dir.path().join("stats.db"),
        &[
            ("JOBSTATS_HTTP_REQUEST_TIMEOUT", "1s"),
            ("JOBSTATS_HTTP_IDLE_TIMEOUT", "3s"),
        ],
    );
    let healthz = serve.url("/healthz");
    healthz_within(&healthz, Duration::from_secs(10))
        .await
        .unwrap();

    // 100 slowloris connections: a header line, then one byte every 300 ms, never finishing;
    // and 100 that connect and send nothing.
    let mut slow = Vec::new();
    for _ in 0..100 {
        let mut stream = TcpStream::connect(serve.address).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(stream);
    }
    let mut silent = Vec::new();
    for _ in 0..100 {
        silent.push(TcpStream::connect(serve.address).await.unwrap());
    }
    let dripping = {
        let mut slow = slow;
        tokio::spawn(async move {
            for _ in 0..20 {
                for stream in slow.iter_mut() {
                    let _ = stream.write_all(b"X").await;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            slow
        })
    };
    // The legitimate client is answered throughout.
    for _ in 0..5 {
        let took = healthz_within(&healthz, Duration::from_secs(2)).await;
        assert!(
            took.is_ok(),
            "a legitimate request failed under attack: {took:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut slow = dripping.await.unwrap();
    // 6 s of dripping is far past the 1 s request deadline: every one was cut off.
    let mut still_open = 0;
    for stream in slow.iter_mut() {
        if !closed_within(stream, Duration::from_millis(500)).await {
            still_open += 1;
        }
    }
    assert_eq!(still_open, 0, "partial-header connections left open");
    // And past the 3 s idle timeout, the silent ones too.
    let mut silent_open = 0;
    for stream in silent.iter_mut() {
        if !closed_within(stream, Duration::from_secs(4)).await {
            silent_open += 1;
        }
    }
    assert_eq!(silent_open, 0, "idle connections left open");
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_instead_of_growing_the_server() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let serve = ServeProcess::start_with_env(
        &nats.url(),
        &dir.path().join("stats.db"),
        &[
            ("JOBSTATS_HTTP_MAX_CONNECTIONS", "8"),
            ("JOBSTATS_HTTP_IDLE_TIMEOUT", "2s"),
        ],
    );
    let healthz = serve.url("/healthz");
    healthz_within(&healthz, Duration::from_secs(10))
        .await
        .unwrap();
    // Let the start-up probe's connection go.
    tokio::time::sleep(Duration::from_millis(2_500)).await;

    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(TcpStream::connect(serve.address).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // All eight slots are taken: a ninth client is not served while they are...
    let refused = healthz_within(&healthz, Duration::from_millis(1_000)).await;
    assert!(
        refused.is_err(),
        "served past the connection cap: {refused:?}"
    );
    // ...and is served once the idle timeout frees them.
    let took = healthz_within(&healthz, Duration::from_secs(5)).await;
    assert!(
        took.is_ok(),
        "never served after idle connections closed: {took:?}"
    );
    drop(held);
}

#[tokio::test]
async fn the_swagger_page_is_served_from_one_shared_buffer() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let serve = ServeProcess::start(&nats.url(), &dir.path().join("stats.db"));
    healthz_within(&serve.url("/healthz"), Duration::from_secs(10))
        .await
        .unwrap();
    for path in ["/api/v1/docs", "/api/v1/docs/"] {
        let response = reqwest::get(serve.url(path)).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let page = response.text().await.unwrap();
        assert!(page.contains("swagger"), "{path}");
    }
    // 200 concurrent readers that never read their answers: memory stays bounded because the
    // 1.6 MB page is not copied per request.
    let rss_before = rss_kb(serve.child.id());
    let mut readers = Vec::new();
    for _ in 0..200 {
        let mut stream = TcpStream::connect(serve.address).await.unwrap();
        stream
            .write_all(b"GET /api/v1/docs HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        readers.push(stream);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let grown_mb = (rss_kb(serve.child.id()) - rss_before) as f64 / 1024.0;
    // A copy of the page per request costs more than its 1.6 MB per connection (356 MB for
    // these 200 before it was streamed from one buffer; ~110 MB after, the connections' own
    // buffers).
    assert!(
        grown_mb / 200.0 < 1.0,
        "200 unread Swagger answers grew the server by {grown_mb:.0} MB"
    );
    drop(readers);
}

fn rss_kb(pid: u32) -> i64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}
