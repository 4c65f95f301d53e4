//! Health notifications (CONTRACT §8, issue 15): real NATS, the real `jobstats serve` binary,
//! and a webhook receiver in the test.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy};
use chrono::{DateTime, Timelike, Utc};
use futures::StreamExt;
use hmac::{KeyInit, Mac};
use jobstats::notify::HealthChange;
use jobstats::publish::EventBuilder;

use crate::helpers::*;

const HOOK_SECRET: &str = "webhook-secret-for-tests";

/// A change as stored in `JOB_HEALTH`.
#[derive(Debug, Clone)]
struct Stored {
    change: HealthChange,
    body: Vec<u8>,
    message_id: String,
    published_ms: i64,
}

/// Every health change in the stream, in stream order.
async fn stored_changes(nats: &NatsServer) -> Vec<Stored> {
    let js = jetstream::new(nats.client().await);
    let Ok(stream) = js.get_stream("JOB_HEALTH").await else {
        return Vec::new();
    };
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: "jobstats.health.>".into(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("ordered consumer");
    if consumer.cached_info().num_pending == 0 {
        return Vec::new();
    }
    let mut messages = consumer.messages().await.expect("messages");
    let mut stored = Vec::new();
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_secs(5), messages.next()).await
    {
        let message = message.expect("message");
        let info = message.info().expect("JetStream metadata");
        let pending = info.pending;
        stored.push(Stored {
            change: serde_json::from_slice(&message.payload).expect("a health change"),
            body: message.payload.to_vec(),
            message_id: message
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(|v| v.to_string())
                .unwrap_or_default(),
            published_ms: (info.published.unix_timestamp_nanos() / 1_000_000) as i64,
        });
        if pending == 0 {
            break;
        }
    }
    stored
}

fn of_job<'a>(stored: &'a [Stored], job: &str) -> Vec<&'a Stored> {
    stored.iter().filter(|s| s.change.job_name == job).collect()
}

fn transitions(stored: &[&Stored]) -> Vec<(String, String)> {
    stored
        .iter()
        .map(|s| (s.change.previous_state.clone(), s.change.state.clone()))
        .collect()
}

/// Waits until the job's `n`-th change (1-based) is in the stream; returns all of the job's.
async fn wait_for_changes(nats: &NatsServer, job: &str, n: usize, within: Duration) -> Vec<Stored> {
    let deadline = Instant::now() + within;
    loop {
        let all = stored_changes(nats).await;
        let mine: Vec<Stored> = of_job(&all, job).into_iter().cloned().collect();
        if mine.len() >= n {
            return mine;
        }
        assert!(
            Instant::now() < deadline,
            "{job}: {n} changes expected, the stream holds {:?}",
            transitions(&mine.iter().collect::<Vec<_>>())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn ms(text: &Option<String>) -> i64 {
    DateTime::parse_from_rfc3339(text.as_deref().expect("since"))
        .expect("RFC 3339")
        .timestamp_millis()
}

/// What a webhook receiver got.
#[derive(Debug, Clone)]
struct Post {
    body: Vec<u8>,
    signature: String,
    at_ms: i64,
}

/// A webhook receiver on a local port: records every POST and answers 204.
struct Receiver {
    address: SocketAddr,
    posts: Arc<Mutex<Vec<Post>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Receiver {
        Self::start_on(format!("127.0.0.1:{}", free_port()).parse().unwrap()).await
    }

    async fn start_on(address: SocketAddr) -> Receiver {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(address).expect("bind the receiver");
        let listener = socket.listen(64).unwrap();
        let posts: Arc<Mutex<Vec<Post>>> = Arc::default();
        let recorded = posts.clone();
        let endpoint = poem::endpoint::make(move |request: poem::Request| {
            let recorded = recorded.clone();
            async move {
                let signature = request
                    .header("x-jobstats-signature")
                    .unwrap_or_default()
                    .to_owned();
                let body = request.into_body().into_vec().await.unwrap_or_default();
                recorded.lock().unwrap().push(Post {
                    body,
                    signature,
                    at_ms: Utc::now().timestamp_millis(),
                });
                poem::http::StatusCode::NO_CONTENT
            }
        });
        let acceptor = poem::listener::TcpAcceptor::from_tokio(listener).unwrap();
        let task = tokio::spawn(async move {
            let _ = poem::Server::new_with_acceptor(acceptor)
                .run(endpoint)
                .await;
        });
        Receiver {
            address,
            posts,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hooks/jobstats", self.address)
    }

    fn posts(&self) -> Vec<Post> {
        self.posts.lock().unwrap().clone()
    }

    /// The bodies received once `count` have arrived (or `within` has passed).
    async fn bodies_after(&self, count: usize, within: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + within;
        while self.posts().len() < count && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.posts().into_iter().map(|p| p.body).collect()
    }
}

fn bodies(stored: &[Stored]) -> Vec<Vec<u8>> {
    stored.iter().map(|s| s.body.clone()).collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn signature_is_valid(post: &Post) -> bool {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
    mac.update(&post.body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    post.signature == format!("sha256={hex}")
}

/// A webhooks file with one receiver.
fn webhooks_file(dir: &Path, url: &str, extra: &str) -> PathBuf {
    let path = dir.join("webhooks.toml");
    std::fs::write(
        &path,
        format!(
            "[[webhooks]]\nname = \"test\"\nurl = \"{url}\"\nsecret = \"{HOOK_SECRET}\"\n{extra}\n"
        ),
    )
    .unwrap();
    path
}

fn serve_with_hooks(
    nats: &NatsServer,
    db: &Path,
    hooks: &Path,
    env: &[(&str, &str)],
) -> ServeProcess {
    let hooks = hooks.to_str().unwrap().to_owned();
    let mut all = vec![
        ("JOBSTATS_WEBHOOKS_FILE", hooks.as_str()),
        ("JOBSTATS_MAX_RUNTIME", "3s"),
    ];
    all.extend_from_slice(env);
    ServeProcess::start_with_env(&nats.url(), db, &all)
}

async fn publish(nats: &NatsServer, events: Vec<jobstats::events::Event>) -> u64 {
    publish_all(&nats.publisher().await, &events).await
}

fn builder(job: &str, execution: &str, at: DateTime<Utc>) -> EventBuilder {
    EventBuilder::new(TENANT, job)
        .unwrap()
        .execution(execution)
        .unwrap()
        .at(at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_health_change_is_published_once_and_posted_signed_within_15_seconds() {
    let nats = NatsServer::start();
    nats.ensure_stream().await;
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let hooks = webhooks_file(dir.path(), &receiver.url(), "");
    let _serve = serve_with_hooks(&nats, &dir.path().join("db"), &hooks, &[]);
    // Keep a minute boundary away from the cron job's first run.
    let second = Utc::now().second();
    if second > 40 {
        tokio::time::sleep(Duration::from_secs(u64::from(61 - second))).await;
    }

    // `jobstats watch` for missed jobs, once the stream exists.
    let js = jetstream::new(nats.client().await);
    let deadline = Instant::now() + Duration::from_secs(15);
    while js.get_stream("JOB_HEALTH").await.is_err() {
        assert!(Instant::now() < deadline, "serve did not create JOB_HEALTH");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut watch = Command::new(BIN)
        .args(["watch", "--tenant", TENANT, "--state", "missed"])
        .env("JOBSTATS_NATS_URL", nats.url())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let watched = lines_of(&mut watch);

    // solo (no cron): new → healthy → stuck → failing → healthy.
    let now = Utc::now();
    publish(
        &nats,
        execution_events("solo", "r1", now - chrono::Duration::seconds(2), 100, true),
    )
    .await;
    // minutely (every minute, 1 s grace): new → healthy now; missed after the next fire.
    let schedule = EventBuilder::new(TENANT, "minutely")
        .unwrap()
        .at(now)
        .scheduled_with(Some("* * * * *"), Some(Duration::from_secs(1)), None)
        .unwrap();
    let mut minutely = vec![schedule];
    minutely.extend(execution_events("minutely", "m1", now, 100, true));
    publish(&nats, minutely).await;

    let r2_start = Utc::now();
    publish(
        &nats,
        vec![builder("solo", "r2", r2_start).started().unwrap()],
    )
    .await;
    wait_for_changes(&nats, "solo", 2, Duration::from_secs(20)).await;
    let r2_end = Utc::now();
    publish(
        &nats,
        vec![builder("solo", "r2", r2_end)
            .failed(None, Some("disk full"))
            .unwrap()],
    )
    .await;
    wait_for_changes(&nats, "solo", 3, Duration::from_secs(15)).await;
    let r3 = Utc::now();
    publish(&nats, execution_events("solo", "r3", r3, 50, true)).await;
    let solo = wait_for_changes(&nats, "solo", 4, Duration::from_secs(15)).await;

    let until_missed = Duration::from_secs(u64::from(75 - Utc::now().second()));
    wait_for_changes(&nats, "minutely", 2, until_missed).await;
    // The late run, finished at once (JOBSTATS_MAX_RUNTIME is 3 s here: left running, it would
    // become stuck while the test reads).
    let late = Utc::now();
    publish(&nats, execution_events("minutely", "m2", late, 100, true)).await;
    let minutely = wait_for_changes(&nats, "minutely", 3, Duration::from_secs(15)).await;

    let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    let solo_refs: Vec<&Stored> = solo.iter().collect();
    assert_eq!(
        transitions(&solo_refs),
        pairs(&[
            ("new", "healthy"),
            ("healthy", "stuck"),
            ("stuck", "failing"),
            ("failing", "healthy")
        ])
    );
    let ms_of = |t: DateTime<Utc>| t.timestamp_millis();
    assert_eq!(
        ms(&solo[0].change.since),
        ms_of(now - chrono::Duration::seconds(2)) + 100
    );
    assert_eq!(ms(&solo[1].change.since), ms_of(r2_start) + 3_000);
    assert_eq!(solo[1].change.execution_id.as_deref(), Some("r2"));
    assert_eq!(ms(&solo[2].change.since), ms_of(r2_end));
    assert_eq!(solo[2].change.consecutive_failures, 1);
    assert_eq!(ms(&solo[3].change.since), ms_of(r3) + 50);
    let minutely_refs: Vec<&Stored> = minutely.iter().collect();
    assert_eq!(
        transitions(&minutely_refs),
        pairs(&[
            ("new", "healthy"),
            ("healthy", "missed"),
            ("missed", "healthy")
        ])
    );
    let fire = ms(&minutely[1].change.since) - 1_000;
    assert_eq!(fire % 60_000, 0, "missed since a whole minute + grace");
    assert_eq!(
        ms(&minutely[2].change.since),
        ms_of(late),
        "healthy again since the late start"
    );
    for stored in solo.iter().chain(&minutely) {
        let change = &stored.change;
        let id = format!(
            "{}/{}/{}/{}",
            TENANT,
            change.job_name,
            change.state,
            change.since.as_deref().unwrap()
        );
        assert_eq!(stored.message_id, id);
        assert!(!change.reason.is_empty());
    }

    // Each change once at the webhook too, in stream order, signed, within 15 s.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = stored_changes(&nats).await;
    assert_eq!(
        all.len(),
        7,
        "no change is stored twice: {:?}",
        transitions(&all.iter().collect::<Vec<_>>())
    );
    assert_eq!(
        receiver
            .bodies_after(all.len(), Duration::from_secs(15))
            .await,
        bodies(&all)
    );
    let posts = receiver.posts();
    assert!(
        posts.iter().all(signature_is_valid),
        "every POST carries a valid signature"
    );
    let mut to_stream: Vec<i64> = all
        .iter()
        .map(|s| s.published_ms - ms(&s.change.since))
        .collect();
    let mut to_hook: Vec<i64> = posts
        .iter()
        .zip(&all)
        .map(|(p, s)| p.at_ms - ms(&s.change.since))
        .collect();
    to_stream.sort();
    to_hook.sort();
    println!("state true -> JOB_HEALTH (ms, sorted): {to_stream:?}; -> webhook: {to_hook:?}");
    assert!(to_hook.iter().all(|d| *d <= 15_000), "{to_hook:?}");
    assert!(to_stream.iter().all(|d| *d <= 15_000), "{to_stream:?}");

    // `jobstats watch --state missed` printed the missed change and nothing else.
    let line = watched
        .recv_timeout(Duration::from_secs(10))
        .expect("a watch line");
    assert!(line.contains(" minutely healthy->missed since="), "{line}");
    assert!(watched.try_recv().is_err());
    let _ = watch.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_store_each_change_once_and_deliver_it_once() {
    let nats = NatsServer::start();
    nats.ensure_stream().await;
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let hooks = webhooks_file(dir.path(), &receiver.url(), "");
    let _a = serve_with_hooks(
        &nats,
        &dir.path().join("a.db"),
        &hooks,
        &[("JOBSTATS_INSTANCE_ID", "a")],
    );
    let _b = serve_with_hooks(
        &nats,
        &dir.path().join("b.db"),
        &hooks,
        &[("JOBSTATS_INSTANCE_ID", "b")],
    );
    let start = Utc::now() - chrono::Duration::minutes(5);
    for (n, ok) in [(1, true), (2, false), (3, true)] {
        let at = start + chrono::Duration::seconds(n);
        publish(
            &nats,
            execution_events("shared", &format!("s{n}"), at, 100, ok),
        )
        .await;
        wait_for_changes(&nats, "shared", n as usize, Duration::from_secs(15)).await;
    }
    // Both replicas judged every change; give the slower one time to try.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stored = stored_changes(&nats).await;
    assert_eq!(
        transitions(&stored.iter().collect::<Vec<_>>()),
        pairs(&[
            ("new", "healthy"),
            ("healthy", "failing"),
            ("failing", "healthy")
        ])
    );
    assert_eq!(
        receiver
            .bodies_after(stored.len(), Duration::from_secs(5))
            .await,
        bodies(&stored),
        "each change delivered once across the two replicas"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_was_down_gets_every_change_in_order_when_it_is_back() {
    let nats = NatsServer::start();
    nats.ensure_stream().await;
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there yet: every attempt is refused.
    let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let hooks = webhooks_file(
        dir.path(),
        &format!("http://{address}/hooks"),
        "retry_initial_ms = 100\nretry_max_ms = 400\nmax_attempts = 1000",
    );
    let admin = ServeProcess::admin_env();
    let serve = serve_with_hooks(
        &nats,
        &dir.path().join("db"),
        &hooks,
        &[("JOBSTATS_ADMIN_LISTEN", admin.as_str())],
    );
    let start = Utc::now() - chrono::Duration::minutes(10);
    let plan = [
        ("j1", true),
        ("j2", false),
        ("j1", false),
        ("j2", true),
        ("j1", true),
    ];
    let mut counts = std::collections::HashMap::new();
    for (n, (job, ok)) in plan.iter().enumerate() {
        let at = start + chrono::Duration::seconds(n as i64);
        publish(&nats, execution_events(job, &format!("x{n}"), at, 100, *ok)).await;
        let count = counts.entry(*job).or_insert(0);
        *count += 1;
        wait_for_changes(&nats, job, *count, Duration::from_secs(15)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let metrics = serve
        .http
        .get(serve.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The operator sees the receiver falling behind: the oldest undelivered change's age (the
    // first was published over 2 s ago) and the changes waiting behind it.
    let ready: serde_json::Value = serve
        .http
        .get(serve.admin_url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let lag = &ready["webhooks"][0];
    assert!(
        lag["oldestUndeliveredAgeSeconds"].as_f64().unwrap_or(0.0) >= 2.0
            && lag["backlog"].as_u64().unwrap_or(0) >= 3,
        "webhook lag on the admin /readyz: {ready}"
    );
    let age_line = metrics
        .lines()
        .find(|l| l.starts_with("jobstats_webhook_oldest_undelivered_age_seconds{"))
        .unwrap_or_default();
    let age: f64 = age_line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(age >= 2.0, "webhook lag in /metrics: {age_line:?}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("jobstats_webhook_deliveries_total{")
                && l.contains("outcome=\"failed_attempt\"")),
        "failed attempts are counted:\n{metrics}"
    );

    let receiver = Receiver::start_on(address).await;
    let stored = stored_changes(&nats).await;
    assert_eq!(stored.len(), 5);
    assert_eq!(
        receiver
            .bodies_after(stored.len(), Duration::from_secs(15))
            .await,
        bodies(&stored),
        "every change, in stream order (so in order per job), once"
    );
    // Caught up: nothing undelivered any more.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ready: serde_json::Value = serve
            .http
            .get(serve.admin_url("/readyz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let lag = &ready["webhooks"][0];
        if lag["oldestUndeliveredAgeSeconds"] == 0.0 && lag["backlog"] == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "lag stays: {ready}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_while_serve_was_killed_is_published_once_and_a_rebuild_adds_nothing() {
    let nats = NatsServer::start();
    nats.ensure_stream().await;
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let hooks = webhooks_file(dir.path(), &receiver.url(), "");
    let db = dir.path().join("db");
    let mut serve = serve_with_hooks(&nats, &db, &hooks, &[]);
    let start = Utc::now() - chrono::Duration::minutes(3);
    publish(&nats, execution_events("k", "k1", start, 100, true)).await;
    wait_for_changes(&nats, "k", 1, Duration::from_secs(15)).await;

    // The failure is applied (or not) and the process dies before or after judging it.
    let sequence = publish(
        &nats,
        execution_events("k", "k2", start + chrono::Duration::seconds(10), 100, false),
    )
    .await;
    serve.kill_9();
    let mut serve = serve_with_hooks(&nats, &db, &hooks, &[]);
    serve.wait_applied(sequence).await;
    wait_for_changes(&nats, "k", 2, Duration::from_secs(15)).await;
    serve.kill_9();
    // Restarted again, and on a rebuilt database: nothing new to say.
    rebuild(&nats, &db);
    let serve = serve_with_hooks(&nats, &db, &hooks, &[]);
    serve.wait_applied(sequence).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stored = stored_changes(&nats).await;
    assert_eq!(
        transitions(&stored.iter().collect::<Vec<_>>()),
        pairs(&[("new", "healthy"), ("healthy", "failing")])
    );
    // At least once: a delivery cut by the kill may be repeated, never lost.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let posts = receiver.posts();
        if stored
            .iter()
            .all(|s| posts.iter().any(|p| p.body == s.body))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "webhook missed a change: {posts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_projector_never_announces_missed_for_a_run_that_started() {
    let nats = NatsServer::start();
    nats.ensure_stream().await;
    let dir = tempfile::tempdir().unwrap();
    let now = Utc::now();
    // Due at the start of the previous minute; the next fire is about an hour away.
    let fire =
        now.with_second(0).unwrap().with_nanosecond(0).unwrap() - chrono::Duration::minutes(1);
    let cron = format!("{} * * * *", fire.minute());
    let schedule = EventBuilder::new(TENANT, "hourly")
        .unwrap()
        .at(fire - chrono::Duration::seconds(30))
        .scheduled_with(Some(&cron), Some(Duration::from_secs(1)), None)
        .unwrap();
    let mut before = vec![schedule];
    before.extend(execution_events(
        "hourly",
        "h0",
        fire - chrono::Duration::minutes(20),
        100,
        true,
    ));
    publish(&nats, before).await;
    // A long backlog, then the run that started on time: until the projector has applied it,
    // the job looks missed.
    let filler: Vec<_> = (0..10_000)
        .flat_map(|i| {
            execution_events(
                "filler",
                &format!("f{i}"),
                fire - chrono::Duration::hours(2),
                10,
                true,
            )
        })
        .collect();
    publish(&nats, filler).await;
    let last = publish(
        &nats,
        execution_events(
            "hourly",
            "h1",
            fire + chrono::Duration::milliseconds(200),
            500,
            true,
        ),
    )
    .await;

    let serve = ServeProcess::start(&nats.url(), &dir.path().join("db"));
    serve.wait_applied(last).await;
    let hourly = wait_for_changes(&nats, "hourly", 1, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stored = stored_changes(&nats).await;
    let hourly_now = of_job(&stored, "hourly");
    assert_eq!(
        transitions(&hourly_now),
        pairs(&[("new", "healthy")]),
        "judged only once caught up"
    );
    assert_eq!(hourly.len(), 1);
}

/// A receiver that answers every POST with a redirect to `to`, counting what it got.
async fn redirecting_receiver(
    to: String,
) -> (String, Arc<Mutex<usize>>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let hits: Arc<Mutex<usize>> = Arc::default();
    let counted = hits.clone();
    let endpoint = poem::endpoint::make_sync(move |_| {
        *counted.lock().unwrap() += 1;
        poem::Response::builder()
            .status(poem::http::StatusCode::TEMPORARY_REDIRECT)
            .header("location", to.clone())
            .finish()
    });
    let acceptor = poem::listener::TcpAcceptor::from_tokio(listener).unwrap();
    let task = tokio::spawn(async move {
        let _ = poem::Server::new_with_acceptor(acceptor)
            .run(endpoint)
            .await;
    });
    (format!("http://{address}/hooks"), hits, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_never_followed_and_a_change_given_up_on_is_a_dead_letter() {
    let nats = NatsServer::start();
    nats.ensure_stream().await;
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = Receiver::start().await;
    let (url, hits, _task) = redirecting_receiver(elsewhere.url()).await;
    let hooks = webhooks_file(
        dir.path(),
        &url,
        "max_attempts = 3\nretry_initial_ms = 50\nretry_max_ms = 100",
    );
    let _serve = serve_with_hooks(&nats, &dir.path().join("db"), &hooks, &[]);
    let start = Utc::now() - chrono::Duration::minutes(5);
    publish(&nats, execution_events("r", "r1", start, 100, true)).await;
    let changes = wait_for_changes(&nats, "r", 1, Duration::from_secs(15)).await;

    // The attempts are used up and the change is recorded on jobstats.webhook-dead.<name>,
    // in a stream that keeps such letters 30 days (by age, not only by count).
    let js = jetstream::new(nats.client().await);
    let mut stream = js.get_stream("JOBSTATS_DEAD_DELIVERIES").await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    assert_eq!(config.max_age, Duration::from_secs(30 * 86_400));
    assert_eq!(config.max_messages_per_subject, 100_000);
    assert_eq!(config.subjects, vec!["jobstats.webhook-dead.>".to_owned()]);
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: "jobstats.webhook-dead.test".into(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut dead = consumer.messages().await.unwrap();
    let letter = tokio::time::timeout(Duration::from_secs(15), dead.next())
        .await
        .expect("a dead letter within 15 s")
        .unwrap()
        .unwrap();
    assert_eq!(letter.payload.to_vec(), changes[0].body);
    let headers = letter.headers.clone().unwrap();
    assert_eq!(headers.get("Jobstats-Attempts").unwrap().as_str(), "3");
    assert!(
        headers
            .get("Jobstats-Last-Error")
            .unwrap()
            .as_str()
            .contains("307"),
        "{headers:?}"
    );
    assert_eq!(*hits.lock().unwrap(), 3);
    assert!(elsewhere.posts().is_empty(), "the redirect was followed");

    // Delivery moves on to the next change.
    publish(
        &nats,
        execution_events("r", "r2", start + chrono::Duration::minutes(1), 100, false),
    )
    .await;
    wait_for_changes(&nats, "r", 2, Duration::from_secs(15)).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while *hits.lock().unwrap() < 4 {
        assert!(
            Instant::now() < deadline,
            "the next change was not attempted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_stays_missed_is_announced_once_since_its_first_missed_fire() {
    let nats = NatsServer::start();
    nats.ensure_stream().await;
    let dir = tempfile::tempdir().unwrap();
    let serve = ServeProcess::start(&nats.url(), &dir.path().join("db"));
    // Every minute with 1 s of grace since 10 minutes ago; its last run was 5 minutes ago.
    let now = Utc::now();
    let minute = now.with_second(0).unwrap().with_nanosecond(0).unwrap();
    let schedule = EventBuilder::new(TENANT, "down")
        .unwrap()
        .at(minute - chrono::Duration::minutes(10))
        .scheduled_with(Some("* * * * *"), Some(Duration::from_secs(1)), None)
        .unwrap();
    let mut events = vec![schedule];
    events.extend(execution_events(
        "down",
        "last",
        minute - chrono::Duration::minutes(5),
        100,
        true,
    ));
    let head = publish(&nats, events).await;
    serve.wait_applied(head).await;
    // The first fire without a start is the one after the last run.
    let first_missed = minute - chrono::Duration::minutes(4);
    let want_since = (first_missed + chrono::Duration::seconds(1)).timestamp_millis();
    let changes = wait_for_changes(&nats, "down", 1, Duration::from_secs(15)).await;
    assert_eq!(changes[0].change.state, "missed");
    let since = |text: &str| {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .timestamp_millis()
    };
    assert_eq!(
        since(changes[0].change.since.as_deref().unwrap()),
        want_since
    );
    let missed_now = serve.stats("down").await["data"]["health"]["missedRuns"]["last24h"]
        .as_u64()
        .unwrap();

    // One more fire passes unmatched: the job is still missed since the same instant, and
    // nothing new is announced.
    let deadline = Instant::now() + Duration::from_secs(75);
    let health = loop {
        let health = serve.stats("down").await["data"]["health"].clone();
        if health["missedRuns"]["last24h"].as_u64().unwrap() > missed_now {
            break health;
        }
        assert!(
            Instant::now() < deadline,
            "no further fire counted: {health}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(health["state"], "missed");
    assert_eq!(
        since(health["since"].as_str().unwrap()),
        want_since,
        "{health}"
    );
    // The evaluator has judged the fire by now (it runs within a second of it).
    let settle = Instant::now() + Duration::from_secs(3);
    while Instant::now() < settle {
        let stored = stored_changes(&nats).await;
        assert_eq!(of_job(&stored, "down").len(), 1, "announced again");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until `check` holds for the job's stats' `health`.
async fn wait_health(
    serve: &ServeProcess,
    job: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let health = serve.stats(job).await["data"]["health"].clone();
        if check(&health) {
            return health;
        }
        assert!(Instant::now() < deadline, "{job}: {what}: {health}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thresholds_hold_announcements_and_a_silence_quiets_openings_until_it_ends() {
    let nats = NatsServer::start();
    nats.ensure_stream().await;
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let hooks = webhooks_file(dir.path(), &receiver.url(), "");
    // Two replicas judge and deliver; every count below is exact across both.
    let replica = |name: &str| {
        ServeProcess::start_with_env(
            &nats.url(),
            &dir.path().join(format!("{name}.db")),
            &[
                ("JOBSTATS_WEBHOOKS_FILE", hooks.to_str().unwrap()),
                ("JOBSTATS_INSTANCE_ID", name),
            ],
        )
    };
    let serve = replica("a");
    let mut other = replica("b");
    let job = "flaky";
    let schedule = EventBuilder::new(TENANT, job)
        .unwrap()
        .schedule_options(&[("team".into(), "payments".into())], Some(3), Some(2))
        .unwrap()
        .scheduled_with(None, None, None)
        .unwrap();
    let start = Utc::now() - chrono::Duration::minutes(30);
    let mut n = 0;
    let mut runs = |outcomes: &[bool]| {
        let mut events = Vec::new();
        for ok in outcomes {
            n += 1;
            events.extend(execution_events(
                job,
                &format!("run-{n:02}"),
                start + chrono::Duration::seconds(10 * n),
                1_000,
                *ok,
            ));
        }
        events
    };
    let mut first = vec![schedule];
    first.extend(runs(&[true]));
    publish(&nats, first).await;
    let changes = wait_for_changes(&nats, job, 1, Duration::from_secs(15)).await;
    assert_eq!(changes[0].change.state, "healthy");
    let labels = &changes[0].change.labels;
    assert_eq!(labels.get("team").map(String::as_str), Some("payments"));

    // Two failures of the three the threshold asks for: nothing announced.
    let head = publish(&nats, runs(&[false, false])).await;
    serve.wait_applied(head).await;
    let health = serve.stats(job).await["data"]["health"].clone();
    assert_eq!(health["state"], "healthy", "{health}");
    assert_eq!(health["consecutiveFailures"], 2);
    let stats = serve.stats(job).await;
    assert_eq!(stats["data"]["schedule"]["failureThreshold"], 3);
    assert_eq!(stats["data"]["schedule"]["labels"]["team"], "payments");
    // The third announces failing, since the first of the three.
    publish(&nats, runs(&[false])).await;
    let changes = wait_for_changes(&nats, job, 2, Duration::from_secs(15)).await;
    assert_eq!(changes[1].change.state, "failing");
    assert_eq!(
        ms(&changes[1].change.since),
        (start + chrono::Duration::seconds(20) + chrono::Duration::milliseconds(1_000))
            .timestamp_millis()
    );
    // One completion of the two recovery asks for: still failing; the second recovers.
    let head = publish(&nats, runs(&[true])).await;
    serve.wait_applied(head).await;
    assert_eq!(serve.stats(job).await["data"]["health"]["state"], "failing");
    publish(&nats, runs(&[true])).await;
    let changes = wait_for_changes(&nats, job, 3, Duration::from_secs(15)).await;
    assert_eq!(changes[2].change.state, "healthy");

    // Silenced for a few seconds: the failing change is published marked silenced, the
    // stats show the silence, and when it ends one silenceEnded message follows.
    let until = Utc::now() + chrono::Duration::seconds(6);
    let answer = reqwest::Client::new()
        .post(serve.url(&format!("/api/v1/admin/jobs/{job}/silence")))
        .bearer_auth(admin_token())
        .header("x-tenantid", TENANT)
        .json(&serde_json::json!({
            "until": until.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "reason": "planned maintenance"
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    let body: serde_json::Value = answer.json().await.unwrap();
    serve
        .wait_applied(body["data"]["sequence"].as_u64().unwrap())
        .await;
    let health = serve.stats(job).await["data"]["health"].clone();
    assert_eq!(health["silenceReason"], "planned maintenance", "{health}");
    assert!(health["silencedUntil"].is_string(), "{health}");
    let unauthenticated = reqwest::Client::new()
        .post(serve.url(&format!("/api/v1/admin/jobs/{job}/silence")))
        .header("x-tenantid", TENANT)
        .json(&serde_json::json!({"until": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);

    publish(&nats, runs(&[false, false, false])).await;
    let changes = wait_for_changes(&nats, job, 4, Duration::from_secs(15)).await;
    assert_eq!(changes[3].change.state, "failing");
    assert!(changes[3].change.silenced, "{:?}", changes[3].change);
    let changes = wait_for_changes(&nats, job, 5, Duration::from_secs(20)).await;
    let ended = &changes[4].change;
    assert!(ended.silence_ended, "{ended:?}");
    assert!(!ended.silenced);
    assert_eq!(ended.state, "failing");
    wait_health(&serve, job, "silence over", |h| {
        h["silencedUntil"].is_null()
    })
    .await;

    // Silenced until lifted while failing: a recovery is still delivered. Then replica b's
    // read model is rebuilt from the stream: it answers what a's does and announces nothing.
    let answer = reqwest::Client::new()
        .post(serve.url(&format!("/api/v1/admin/jobs/{job}/silence")))
        .bearer_auth(admin_token())
        .header("x-tenantid", TENANT)
        .json(&serde_json::json!({"until": "9999-12-31T23:59:59.999Z", "reason": "until lifted"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    publish(&nats, runs(&[false])).await;
    let head = publish(&nats, runs(&[true, true])).await;
    let changes = wait_for_changes(&nats, job, 6, Duration::from_secs(15)).await;
    assert_eq!(changes[5].change.state, "healthy");
    // Delivered: everything but the opening made while silenced, once across the replicas.
    let delivered: Vec<Vec<u8>> = changes
        .iter()
        .filter(|s| !(s.change.silenced && !s.change.silence_ended && s.change.state != "healthy"))
        .map(|s| s.body.clone())
        .collect();
    assert_eq!(delivered.len(), 5);
    assert_eq!(
        receiver
            .bodies_after(delivered.len(), Duration::from_secs(15))
            .await,
        delivered
    );
    serve.wait_applied(head).await;
    other.kill_9();
    rebuild(&nats, &dir.path().join("b.db"));
    let other = replica("b");
    other.wait_applied(head).await;
    let judged = |stats: &serde_json::Value| {
        let (health, schedule) = (&stats["data"]["health"], &stats["data"]["schedule"]);
        serde_json::json!([
            health["state"],
            health["since"],
            health["consecutiveFailures"],
            health["silencedUntil"],
            health["silenceReason"],
            health["silencedBy"],
            schedule["failureThreshold"],
            schedule["recoveryThreshold"],
            schedule["labels"],
        ])
    };
    let on_a = judged(&serve.stats(job).await);
    assert_eq!(on_a[0], "healthy");
    assert_eq!(on_a[3], "9999-12-31T23:59:59.999Z");
    assert_eq!(judged(&other.stats(job).await), on_a, "the rebuilt replica");

    // Exactly once, also after both evaluators' next rounds and the rebuild.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stored = stored_changes(&nats).await;
    let mine = of_job(&stored, job);
    assert_eq!(
        transitions(&mine),
        pairs(&[
            ("new", "healthy"),
            ("healthy", "failing"),
            ("failing", "healthy"),
            ("healthy", "failing"),
            ("failing", "failing"),
            ("failing", "healthy"),
        ]),
        "the fifth is the silenceEnded message"
    );
    assert_eq!(mine.iter().filter(|s| s.change.silence_ended).count(), 1);
    assert_eq!(
        receiver.posts().len(),
        delivered.len(),
        "nothing delivered twice"
    );
}
