//! Availability under hostile or broken input (issue 27): crons that never fire, idle
//! connection floods, read-your-writes waiters, SIGTERM while NATS is down, and what the API
//! port tells anyone who asks. Each attack is bounded in count and time, over real sockets,
//! against the real binary and a real NATS.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};

use crate::helpers::*;

/// A real `jobstats serve` with an admin listener, its own NATS and database.
struct Served {
    serve: ServeProcess,
    nats: NatsServer,
    _dir: tempfile::TempDir,
}

async fn served(env: &[(&str, &str)]) -> Served {
    let nats = NatsServer::start();
    nats.ensure_stream().await;
    let dir = tempfile::tempdir().unwrap();
    let admin = ServeProcess::admin_env();
    let mut all = vec![("JOBSTATS_ADMIN_LISTEN", admin.as_str())];
    all.extend_from_slice(env);
    let serve = ServeProcess::start_with_env(&nats.url(), &dir.path().join("stats.db"), &all);
    serve.wait_applied(0).await;
    Served {
        serve,
        nats,
        _dir: dir,
    }
}

/// A GET that must answer 200 within `within`; how long it took.
async fn get_within(
    url: &str,
    headers: &[(&str, &str)],
    within: Duration,
) -> Result<Duration, String> {
    let client = reqwest::Client::builder().timeout(within).build().unwrap();
    let mut request = client.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let started = Instant::now();
    match request.send().await {
        Ok(response) if response.status() == 200 => Ok(started.elapsed()),
        Ok(response) => Err(format!("status {}", response.status())),
        Err(error) => Err(format!("{error} after {:?}", started.elapsed())),
    }
}

/// A raw `scheduled` event, as a publisher that skips client-side validation sends it.
fn scheduled_json(tenant: &str, job: &str, cron: &str) -> String {
    serde_json::json!({
        "eventId": uuid::Uuid::new_v4().to_string(),
        "type": "scheduled",
        "tenantId": tenant,
        "jobName": job,
        "occurredAt": "2026-01-01T00:00:00Z",
        "cron": cron,
    })
    .to_string()
}

/// The body of a GET that must succeed, as text.
async fn text_of(url: impl reqwest::IntoUrl) -> String {
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

/// The body of a GET that must succeed, as JSON.
async fn json_of(url: impl reqwest::IntoUrl) -> serde_json::Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

fn counter(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crons_that_never_fire_are_dead_letters_and_stall_no_tenant() {
    let Served { serve, nats, .. } = &served(&[]).await;
    let js = async_nats::jetstream::new(nats.client().await);
    // 200 crons that parse but have no fire time, and 20 with names outside their field;
    // 40 seconds of CPU to judge before (100-200 ms each, per request).
    let never = ["0 0 31 2 *", "0 0 30 2 *", "0 0 31 4,6,9,11 *"];
    let mut head = 0;
    for i in 0..220 {
        let cron = if i < 200 {
            never[i % never.len()]
        } else {
            "MON-SUN * * JAN-DEC *"
        };
        let body = scheduled_json(TENANT, &format!("never-{i}"), cron);
        head = js
            .publish(format!("jobs.events.{TENANT}.scheduled"), body.into())
            .await
            .unwrap()
            .await
            .unwrap()
            .sequence;
    }
    // Another tenant's job with a real schedule and a run.
    let publisher = nats.publisher().await;
    let start = chrono::Utc::now() - chrono::Duration::minutes(5);
    // (The builder's own validation would refuse the crons above; this job's is fine.)
    let mut events = vec![jobstats::publish::EventBuilder::new(OTHER_TENANT, "steady")
        .unwrap()
        .at(start)
        .scheduled(Some("*/5 * * * *"))
        .unwrap()];
    events.extend(
        execution_events("steady", "s1", start, 200, true)
            .into_iter()
            .map(|mut e| {
                e.tenant_id = jobstats::events::TenantId::parse(OTHER_TENANT).unwrap();
                e
            }),
    );
    head = head.max(publish_all(&publisher, &events).await);
    serve.wait_applied(head).await;

    let metrics = text_of(serve.admin_url("/metrics")).await;
    assert_eq!(
        counter(
            &metrics,
            "jobstats_dead_letters_total{reason=\"invalid_cron\"}"
        ),
        220.0,
        "every never-firing or misnamed cron is a dead letter:\n{metrics}"
    );

    // Every surface answers promptly, twice over (the second read is what a polling
    // dashboard gets).
    let auth = format!("Bearer {}", admin_token());
    let super_auth = format!("Bearer {}", token(&["super_admin"], None));
    for _ in 0..2 {
        for (url, headers) in [
            (
                serve.url("/api/v1/admin/jobs?sort=health"),
                vec![("authorization", auth.as_str()), ("x-tenantid", TENANT)],
            ),
            (
                serve.url("/api/v1/admin/jobs?health=missed,failing"),
                vec![("authorization", auth.as_str()), ("x-tenantid", TENANT)],
            ),
            (
                serve.url("/api/v1/admin/jobs/steady/stats"),
                vec![
                    ("authorization", super_auth.as_str()),
                    ("x-tenantid", OTHER_TENANT),
                ],
            ),
            (serve.url("/healthz"), vec![]),
            (serve.admin_url("/healthz"), vec![]),
            (serve.admin_url("/metrics"), vec![]),
        ] {
            let took = get_within(&url, &headers, Duration::from_secs(1)).await;
            assert!(took.is_ok(), "{url}: {took:?}");
        }
    }
}

/// A connection from `source` (another loopback address: another host to the server).
async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// Whether the server has closed `stream` within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_one_host_cannot_take_the_port_down() {
    // The default limits: 1024 connections, 128 per client address, 5 s to the first byte.
    let Served { serve, .. } = &served(&[]).await;
    let healthz = serve.url("/healthz");
    // 1,100 connections from 127.0.0.2 that never send a byte (more than the whole pool).
    let mut idle = Vec::new();
    for _ in 0..1_100 {
        idle.push(connect_from("127.0.0.2", serve.address).await);
    }
    let flooded_at = Instant::now();
    // Everyone else (127.0.0.1) is answered throughout.
    for _ in 0..10 {
        let took = get_within(&healthz, &[], Duration::from_secs(1)).await;
        assert!(took.is_ok(), "/healthz under an idle flood: {took:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And every idle connection is closed by the first-byte deadline, not held for the 60 s
    // idle timeout.
    let mut open = 0;
    for stream in idle.iter_mut() {
        let left = Duration::from_secs(8).saturating_sub(flooded_at.elapsed());
        if !closed_within(stream, left.max(Duration::from_millis(10))).await {
            open += 1;
        }
    }
    assert_eq!(open, 0, "idle connections still open 8 s after the flood");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_waiters_beyond_the_cap_are_answered_at_once() {
    let Served { serve, .. } = &served(&[("JOBSTATS_HTTP_MAX_WAITERS", "20")]).await;
    let url = serve.url("/api/v1/admin/jobs/anything/stats?minSequence=1000000000&waitMs=5000");
    let token = admin_token();
    let request = |http: &reqwest::Client| {
        http.get(&url)
            .bearer_auth(&token)
            .header("x-tenantid", TENANT)
            .send()
    };
    // 20 waiters, each on its own connection, holding for their full 5 s.
    let mut waiting = Vec::new();
    for _ in 0..20 {
        let http = reqwest::Client::new();
        let pending = request(&http);
        waiting.push(tokio::spawn(async move {
            let response = pending.await.unwrap();
            drop(http);
            response.status().as_u16()
        }));
    }
    // Once they are all waiting, one more is answered at once instead of joining them.
    let deadline = Instant::now() + Duration::from_secs(4);
    loop {
        let metrics = text_of(serve.admin_url("/metrics")).await;
        if counter(&metrics, "jobstats_read_your_writes_waiting ") >= 20.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the waiters never waited:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let http = reqwest::Client::new();
    let started = Instant::now();
    let response = request(&http).await.unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "a request past the cap waited {took:?}"
    );
    let status = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").cloned();
    let body: serde_json::Value = response.json().await.unwrap();
    let code = body["error"]["code"].clone();
    assert_eq!((status, code.as_str()), (503, Some("PROJECTION_BEHIND")));
    assert!(retry_after.is_some(), "503 without Retry-After");
    // Meanwhile the server answers everything else.
    let took = get_within(&serve.url("/healthz"), &[], Duration::from_secs(1)).await;
    assert!(took.is_ok(), "{took:?}");
    for waiter in waiting {
        assert_eq!(waiter.await.unwrap(), 503, "a capped waiter ends as behind");
    }
}

/// Sends SIGTERM and waits for the process to exit; how long it took.
fn terminate(serve: &mut ServeProcess) -> Duration {
    let started = Instant::now();
    serve.signal("TERM");
    let deadline = started + Duration::from_secs(10);
    loop {
        if serve.child.try_wait().unwrap().is_some() {
            return started.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "serve still running 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_stops_within_two_seconds_of_sigterm_while_nats_is_down() {
    // NATS lost after start: the projector, the evaluator and the webhook delivery all wait on it.
    let Served {
        mut serve,
        mut nats,
        _dir,
    } = served(&[]).await;
    let publisher = nats.publisher().await;
    let head = publish_all(
        &publisher,
        &execution_events("j", "e1", chrono::Utc::now(), 100, true),
    )
    .await;
    serve.wait_applied(head).await;
    nats.stop();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready: serde_json::Value = json_of(serve.admin_url("/readyz")).await;
        if ready["natsConnected"] == false {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "NATS never seen as down: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // While an HTTP client holds a keep-alive connection, too.
    let http = reqwest::Client::new();
    let _ = http.get(serve.url("/healthz")).send().await.unwrap();
    let took = terminate(&mut serve);
    assert!(took < Duration::from_secs(2), "stopped after {took:?}");

    // NATS never reachable at all since start.
    let dir = tempfile::tempdir().unwrap();
    let nowhere = format!("nats://127.0.0.1:{}", free_port());
    let mut serve = ServeProcess::start_with_env(&nowhere, &dir.path().join("db"), &[]);
    let took = get_within(&serve.url("/healthz"), &[], Duration::from_secs(5)).await;
    assert!(took.is_ok(), "{took:?}");
    let took = terminate(&mut serve);
    assert!(took < Duration::from_secs(2), "stopped after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_port_names_no_tenant_path_or_webhook() {
    // No admin listener: `/readyz` and `/metrics` are on the API port, which may be public.
    let nats = NatsServer::start();
    nats.ensure_stream().await;
    let dir = tempfile::tempdir().unwrap();
    let hooks = dir.path().join("hooks.toml");
    std::fs::write(
        &hooks,
        "[[webhooks]]\nname = \"payments-oncall\"\nurl = \"http://127.0.0.1:9/\"\nsecret = \"s\"\n",
    )
    .unwrap();
    let hooks_text = hooks.to_string_lossy().into_owned();
    let serve = ServeProcess::start_with_env(
        &nats.url(),
        &dir.path().join("stats.db"),
        &[("JOBSTATS_WEBHOOKS_FILE", hooks_text.as_str())],
    );
    let publisher = nats.publisher().await;
    let head = publish_all(
        &publisher,
        &execution_events("secret-job", "e1", chrono::Utc::now(), 100, false),
    )
    .await;
    serve.wait_applied(head).await;
    // A health change, so the webhook has had something to deliver.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut metrics;
    loop {
        metrics = text_of(serve.url("/metrics")).await;
        if counter(
            &metrics,
            "jobstats_health_changes_published_total{state=\"failing\"}",
        ) >= 1.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "no health change: {metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = text_of(serve.url("/readyz")).await;
    let dir_text = dir.path().to_string_lossy().into_owned();
    for (what, text) in [("/metrics", &metrics), ("/readyz", &ready)] {
        for secret in [TENANT, "secret-job", "payments-oncall", dir_text.as_str()] {
            assert!(!text.contains(secret), "{what} names {secret}:\n{text}");
        }
    }
    assert!(
        metrics.contains("jobstats_events_applied_total"),
        "{metrics}"
    );
    assert!(ready.contains("lastAppliedSequence"), "{ready}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_thousand_http2_waiters_from_one_token_stay_within_a_bounded_memory() {
    // The default limits: 1,024 waiters, 64 streams per HTTP/2 connection, 128 connections
    // per address. Uncapped, each waiter held ~27 KB for its 5 s (32,768 of them: 889 MB).
    let Served { serve, .. } = &served(&[]).await;
    let rss_before = rss_kb(serve.child.id());
    let token = admin_token();
    let uri = format!(
        "http://{}/api/v1/admin/jobs/anything/stats?minSequence=1000000000&waitMs=5000",
        serve.address
    );
    let mut answers = Vec::new();
    let mut connections = Vec::new();
    for _ in 0..128 {
        let tcp = connect_from("127.0.0.2", serve.address).await;
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        connections.push(tokio::spawn(connection));
        for _ in 0..64 {
            let mut ready = client.clone().ready().await.unwrap();
            let request = http::Request::get(uri.as_str())
                .header("authorization", format!("Bearer {token}"))
                .header("x-tenantid", TENANT)
                .body(())
                .unwrap();
            let (response, _) = ready.send_request(request, true).unwrap();
            answers.push(tokio::spawn(async move {
                let started = Instant::now();
                let status = response.await.map(|r| r.status().as_u16()).unwrap_or(0);
                (status, started.elapsed())
            }));
        }
    }
    // Everyone else is answered meanwhile.
    let took = get_within(&serve.url("/healthz"), &[], Duration::from_secs(1)).await;
    assert!(took.is_ok(), "/healthz under 8,192 waiters: {took:?}");
    let grown_mb = (rss_kb(serve.child.id()) - rss_before) as f64 / 1024.0;
    let mut at_once = 0;
    for answer in answers {
        let (status, took) = answer.await.unwrap();
        assert_eq!(status, 503, "every waiter ends as PROJECTION_BEHIND");
        if took < Duration::from_secs(2) {
            at_once += 1;
        }
    }
    eprintln!("8,192 h2 waiters: {at_once} answered at once, grew {grown_mb:.0} MB");
    assert!(
        at_once >= 8_192 - 1_024,
        "only {at_once} of 8,192 were answered at once"
    );
    assert!(
        grown_mb < 100.0,
        "8,192 waiters grew the server by {grown_mb:.0} MB"
    );
}

/// User + system CPU seconds a process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) close with ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restarted_on_an_empty_store_while_changes_are_due_is_a_quiet_recovery() {
    let mut nats = NatsServer::start();
    nats.ensure_stream().await;
    let dir = tempfile::tempdir().unwrap();
    let admin = ServeProcess::admin_env();
    let port = free_port();
    let mut child = std::process::Command::new(BIN)
        .arg("serve")
        .env("JOBSTATS_NATS_URL", nats.url())
        .env("JOBSTATS_DB_PATH", dir.path().join("stats.db"))
        .env("JOBSTATS_LISTEN", format!("127.0.0.1:{port}"))
        .env("JOBSTATS_ADMIN_LISTEN", &admin)
        .env("JOBSTATS_JWT_HS256_SECRET", SECRET)
        .env("JOBSTATS_CONSUMER", "jobstats-test")
        // Runs over 3 s are stuck: 40 changes fall due right after the restart below.
        .env("JOBSTATS_MAX_RUNTIME", "3s")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    let serve = ServeProcess {
        child,
        address: format!("127.0.0.1:{port}").parse().unwrap(),
        admin: Some(admin.parse().unwrap()),
        http: reqwest::Client::new(),
    };
    serve.wait_applied(0).await;
    let publisher = nats.publisher().await;
    let started: Vec<jobstats::events::Event> = (0..40)
        .map(|i| {
            jobstats::publish::EventBuilder::new(TENANT, &format!("long-{i:02}"))
                .unwrap()
                .execution("run")
                .unwrap()
                .at(chrono::Utc::now())
                .started()
                .unwrap()
        })
        .collect();
    serve
        .wait_applied(publish_all(&publisher, &started).await)
        .await;
    drop(publisher);

    // NATS comes back with nothing: JOB_HEALTH (and JOB_EVENTS) are gone.
    nats.restart_empty();
    let cpu_before = cpu_seconds(serve.child.id());
    let watched_from = Instant::now();
    // The stuck changes are announced once the streams are made again.
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stored = match js.get_stream("JOB_HEALTH").await {
            Ok(mut stream) => stream.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        };
        if stored >= 40 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "JOB_HEALTH not made again with the due changes ({stored} stored)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Then ten seconds in all, to count what the outage cost.
    let rest = Duration::from_secs(10).saturating_sub(watched_from.elapsed());
    tokio::time::sleep(rest).await;
    let cpu = cpu_seconds(serve.child.id()) - cpu_before;
    let logged: Vec<String> = lines.try_iter().collect();
    let warnings = logged.iter().filter(|l| l.contains("WARN")).count();
    eprintln!("empty-store restart: {warnings} warnings, {cpu:.2} CPU-s in 10 s");
    assert!(
        warnings <= 30,
        "{warnings} warnings in 10 s:\n{}",
        logged.join("\n")
    );
    assert!(cpu < 2.0, "{cpu:.2} CPU-seconds in 10 s");
}
