//! Alert channels (CONTRACT §11, issue 31): the real `jobstats serve` binary, real NATS, a
//! real Alertmanager (Debian's prometheus-alertmanager), a real SMTP server (Python's
//! aiosmtpd) and, for the services that cannot be reached from here, receivers in the test
//! that check each request against the service's published format and answer as it does.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy};
use chrono::Utc;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::helpers::*;

const PUBLIC_URL: &str = "https://jobs.example.com";

/// The dashboard page every message must link to.
fn job_page(job: &str) -> String {
    format!("{PUBLIC_URL}/ui/#/jobs/{job}?tenant={TENANT}")
}

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Request {
    path: String,
    headers: BTreeMap<String, String>,
    body: Value,
    at_ms: i64,
}

type Answer = Arc<dyn Fn(&Request) -> (u16, String) + Send + Sync>;

/// An HTTP receiver on a local port (poem): records every request and answers with `answer`.
struct Receiver {
    address: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(answer: Answer) -> Receiver {
        let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let listener = tokio::net::TcpListener::bind(address).await.unwrap();
        let requests: Arc<Mutex<Vec<Request>>> = Arc::default();
        let recorded = requests.clone();
        let endpoint = poem::endpoint::make(move |request: poem::Request| {
            let recorded = recorded.clone();
            let answer = answer.clone();
            async move {
                let path = request
                    .uri()
                    .path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_default();
                let headers = request
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                    .collect();
                let body = request.into_body().into_vec().await.unwrap_or_default();
                let got = Request {
                    path,
                    headers,
                    body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                    at_ms: Utc::now().timestamp_millis(),
                };
                let (status, text) = answer(&got);
                recorded.lock().unwrap().push(got);
                poem::Response::builder()
                    .status(poem::http::StatusCode::from_u16(status).unwrap())
                    .content_type("application/json")
                    .body(text)
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
            requests,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    fn under(&self, prefix: &str) -> Vec<Request> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// The requests under `prefix` once there are `count` (fails after `within`).
    async fn wait_for(&self, prefix: &str, count: usize, within: Duration) -> Vec<Request> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.under(prefix);
            if got.len() >= count {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{prefix}: {count} requests expected, got {got:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn serve_with_channels(
    nats: &NatsServer,
    db: &Path,
    channels: &Path,
    env: &[(&str, &str)],
) -> ServeProcess {
    let channels = channels.to_str().unwrap().to_owned();
    let mut all = vec![
        ("JOBSTATS_CHANNELS_FILE", channels.as_str()),
        ("JOBSTATS_PUBLIC_URL", PUBLIC_URL),
        ("JOBSTATS_MAX_RUNTIME", "3s"),
    ];
    all.extend_from_slice(env);
    ServeProcess::start_with_env(&nats.url(), db, &all)
}

async fn publish(nats: &NatsServer, events: Vec<jobstats::events::Event>) {
    publish_all(&nats.publisher().await, &events).await;
}

/// The job's health changes in `JOB_HEALTH`, once there are `n`.
async fn wait_for_changes(nats: &NatsServer, job: &str, n: usize, within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    let js = jetstream::new(nats.client().await);
    loop {
        let mut found = Vec::new();
        if let Ok(stream) = js.get_stream("JOB_HEALTH").await {
            let consumer = stream
                .create_consumer(pull::OrderedConfig {
                    filter_subject: format!("jobstats.health.{TENANT}.{job}"),
                    deliver_policy: DeliverPolicy::All,
                    ..Default::default()
                })
                .await
                .unwrap();
            if consumer.cached_info().num_pending > 0 {
                let mut messages = consumer.messages().await.unwrap();
                while let Ok(Some(Ok(message))) =
                    tokio::time::timeout(Duration::from_secs(2), messages.next()).await
                {
                    found.push(serde_json::from_slice(&message.payload).unwrap());
                    if message.info().unwrap().pending == 0 {
                        break;
                    }
                }
            }
        }
        if found.len() >= n {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{job}: {n} changes expected, found {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn state_of(change: &Value) -> (&str, &str) {
    (
        change["previousState"].as_str().unwrap(),
        change["state"].as_str().unwrap(),
    )
}

fn ms_of(text: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text.as_str().expect("an instant"))
        .expect("RFC 3339")
        .timestamp_millis()
}

/// Latency from a change being judged (`asOf`) to its receiver getting it.
fn latency_ms(change: &Value, request: &Request) -> i64 {
    request.at_ms - ms_of(&change["asOf"])
}

/// new → healthy → failing → healthy for `job`, waiting for each change in `JOB_HEALTH`.
async fn heal_fail_heal(nats: &NatsServer, job: &str) -> Vec<Value> {
    let start = Utc::now() - chrono::Duration::minutes(5);
    for (n, ok) in [(1, true), (2, false), (3, true)] {
        let at = start + chrono::Duration::seconds(n);
        publish(
            nats,
            execution_events(job, &format!("{job}-{n}"), at, 100, ok),
        )
        .await;
        wait_for_changes(nats, job, n as usize, Duration::from_secs(15)).await;
    }
    wait_for_changes(nats, job, 3, Duration::from_secs(1)).await
}

fn is_rfc3339(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok())
}

/// Slack answers an incoming webhook 200 `ok`; PagerDuty's Events API 202 with the dedup key;
/// Opsgenie 202 "Request will be processed"; a Teams Workflow 202.
fn like_the_services(request: &Request) -> (u16, String) {
    if request.path.starts_with("/slack") {
        (200, "ok".into())
    } else if request.path.starts_with("/pd") {
        let key = request.body["dedup_key"].as_str().unwrap_or("");
        (
            202,
            json!({"status": "success", "message": "Event processed", "dedup_key": key})
                .to_string(),
        )
    } else if request.path.starts_with("/og") {
        (
            202,
            json!({"result": "Request will be processed", "took": 0.01, "requestId": "43a29c5c-3dbf-4fa4-9c26-f4f71023e120"}).to_string(),
        )
    } else {
        (202, String::new())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_pagerduty_opsgenie_and_teams_get_their_published_formats_linked_to_the_job_page() {
    let nats = NatsServer::start();
    nats.ensure_stream().await;
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(Arc::new(like_the_services)).await;
    std::fs::write(
        dir.path().join("pd-key"),
        "R0UT1NGKEY0123456789abcdef012345\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("og-key"),
        "eb243592-faa2-4ba2-a551q-1afdf565c889\n",
    )
    .unwrap();
    let channels = dir.path().join("channels.toml");
    std::fs::write(
        &channels,
        format!(
            r#"
[[channels]]
kind = "slack"
name = "slack"
url = "{slack}"

[[channels]]
kind = "pagerduty"
name = "pagerduty"
url = "{pd}"
routing_key_file = "{pd_key}"

[[channels]]
kind = "opsgenie"
name = "opsgenie"
url = "{og}"
api_key_file = "{og_key}"

[[channels]]
kind = "teams"
name = "teams"
url = "{teams}"
"#,
            slack = receiver.url("/slack/services/T0/B0/XXXX"),
            pd = receiver.url("/pd/v2/enqueue"),
            og = receiver.url("/og/v2/alerts"),
            teams = receiver.url("/teams/workflows/abc"),
            pd_key = dir.path().join("pd-key").display(),
            og_key = dir.path().join("og-key").display(),
        ),
    )
    .unwrap();
    let admin = ServeProcess::admin_env();
    let _serve = serve_with_channels(
        &nats,
        &dir.path().join("db"),
        &channels,
        &[("JOBSTATS_ADMIN_LISTEN", admin.as_str())],
    );
    let changes = heal_fail_heal(&nats, "etl").await;
    assert_eq!(
        changes.iter().map(state_of).collect::<Vec<_>>(),
        [
            ("new", "healthy"),
            ("healthy", "failing"),
            ("failing", "healthy")
        ]
    );
    let failing = &changes[1];
    let link = job_page("etl");
    let dedup_key = format!("jobstats/{TENANT}/etl");

    // Slack: every change, `text` (the notification) and Block Kit blocks with the link.
    let slack = receiver
        .wait_for("/slack", 3, Duration::from_secs(15))
        .await;
    for (request, change) in slack.iter().zip(&changes) {
        let text = request.body["text"].as_str().expect("text is a string");
        assert!(
            text.contains("etl") && text.contains(change["state"].as_str().unwrap()),
            "{text}"
        );
        let blocks = request.body["blocks"]
            .as_array()
            .expect("blocks is an array");
        let kinds: Vec<&str> = blocks.iter().map(|b| b["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["header", "section", "section", "actions"]);
        assert_eq!(blocks[0]["text"]["type"], "plain_text");
        assert_eq!(blocks[1]["text"]["text"], change["reason"]);
        let fields = blocks[2]["fields"].as_array().unwrap();
        assert!(fields
            .iter()
            .all(|f| f["type"] == "mrkdwn" && f["text"].is_string()));
        assert!(fields
            .iter()
            .any(|f| f["text"].as_str().unwrap().contains(TENANT)));
        assert_eq!(blocks[3]["elements"][0]["type"], "button");
        assert_eq!(blocks[3]["elements"][0]["url"], link.as_str());
        assert_eq!(request.headers["content-type"], "application/json");
    }

    // PagerDuty Events API v2: trigger on failing, resolve on healthy, one dedup key; nothing
    // for new → healthy (no incident was open).
    let pd = receiver.wait_for("/pd", 2, Duration::from_secs(15)).await;
    let trigger = &pd[0].body;
    assert_eq!(trigger["routing_key"], "R0UT1NGKEY0123456789abcdef012345");
    assert_eq!(trigger["event_action"], "trigger");
    assert_eq!(trigger["dedup_key"], dedup_key.as_str());
    let payload = &trigger["payload"];
    assert!(payload["summary"]
        .as_str()
        .is_some_and(|s| !s.is_empty() && s.len() <= 1024));
    assert_eq!(payload["source"], "etl");
    assert_eq!(payload["severity"], "error");
    assert_eq!(payload["timestamp"], failing["since"]);
    assert!(is_rfc3339(&payload["timestamp"]));
    assert_eq!(
        &payload["custom_details"], failing,
        "custom_details is the change"
    );
    assert_eq!(trigger["links"][0]["href"], link.as_str());
    assert!(trigger["links"][0]["text"].is_string());
    let resolve = &pd[1].body;
    assert_eq!(
        resolve,
        &json!({"routing_key": "R0UT1NGKEY0123456789abcdef012345", "event_action": "resolve", "dedup_key": dedup_key})
    );

    // Opsgenie Alert API v2: create with the alias, close by alias; the GenieKey header.
    let og = receiver.wait_for("/og", 2, Duration::from_secs(15)).await;
    for request in &og {
        assert_eq!(
            request.headers["authorization"],
            "GenieKey eb243592-faa2-4ba2-a551q-1afdf565c889"
        );
    }
    assert_eq!(og[0].path, "/og/v2/alerts");
    let create = &og[0].body;
    assert_eq!(create["alias"], dedup_key.as_str());
    let message = create["message"].as_str().unwrap();
    assert!(
        message.chars().count() <= 130 && message.contains("etl"),
        "{message}"
    );
    assert!(create["description"].as_str().unwrap().contains(&link));
    let details = create["details"].as_object().unwrap();
    assert!(
        details.values().all(Value::is_string),
        "Opsgenie details are strings: {details:?}"
    );
    assert_eq!(details["jobName"], "etl");
    assert_eq!(
        og[1].path,
        format!("/og/v2/alerts/jobstats%2F{TENANT}%2Fetl/close?identifierType=alias")
    );
    assert!(og[1].body["note"].is_string() && og[1].body["source"].is_string());

    // Teams Workflows: a message with one Adaptive Card attachment.
    let teams = receiver
        .wait_for("/teams", 3, Duration::from_secs(15))
        .await;
    for request in &teams {
        let body = &request.body;
        assert_eq!(body["type"], "message");
        let attachments = body["attachments"].as_array().unwrap();
        assert_eq!(attachments.len(), 1);
        assert_eq!(
            attachments[0]["contentType"],
            "application/vnd.microsoft.card.adaptive"
        );
        let card = &attachments[0]["content"];
        assert_eq!(card["type"], "AdaptiveCard");
        assert_eq!(
            card["$schema"],
            "http://adaptivecards.io/schemas/adaptive-card.json"
        );
        assert!(card["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("1.")));
        assert!(card["body"]
            .as_array()
            .is_some_and(|b| b.iter().all(|e| e["type"].is_string())));
        assert_eq!(card["actions"][0]["type"], "Action.OpenUrl");
        assert_eq!(card["actions"][0]["url"], link.as_str());
    }

    let latencies = [
        ("slack", latency_ms(failing, &slack[1])),
        ("pagerduty", latency_ms(failing, &pd[0])),
        ("opsgenie", latency_ms(failing, &og[0])),
        ("teams", latency_ms(failing, &teams[1])),
    ];
    eprintln!("change judged → receiver (ms): {latencies:?}");

    // Per channel: deliveries by outcome, and a latency histogram.
    let metrics = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (channel, kind, delivered, nothing) in [
        ("slack", "slack", 3, 0),
        ("pagerduty", "pagerduty", 2, 1),
        ("opsgenie", "opsgenie", 2, 1),
        ("teams", "teams", 3, 0),
    ] {
        let line = format!(
            "jobstats_channel_deliveries_total{{channel=\"{channel}\",kind=\"{kind}\",outcome=\"delivered\"}} {delivered}"
        );
        assert!(metrics.contains(&line), "{line} missing from\n{metrics}");
        if nothing > 0 {
            let line = format!(
                "jobstats_channel_deliveries_total{{channel=\"{channel}\",kind=\"{kind}\",outcome=\"nothing_to_send\"}} {nothing}"
            );
            assert!(metrics.contains(&line), "{line} missing");
        }
        let count = format!(
            "jobstats_channel_delivery_seconds_count{{channel=\"{channel}\",kind=\"{kind}\"}} {delivered}"
        );
        assert!(metrics.contains(&count), "{count} missing");
    }
}

/// A dead letter of the channel, within 15 s.
async fn dead_letter(nats: &NatsServer, channel: &str) -> async_nats::jetstream::Message {
    let js = jetstream::new(nats.client().await);
    let deadline = Instant::now() + Duration::from_secs(15);
    let stream = loop {
        match js.get_stream("JOBSTATS_DEAD_DELIVERIES").await {
            Ok(stream) => break stream,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(error) => panic!("no dead-delivery stream: {error}"),
        }
    };
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: format!("jobstats.webhook-dead.{channel}"),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut letters = consumer.messages().await.unwrap();
    tokio::time::timeout(Duration::from_secs(15), letters.next())
        .await
        .expect("a dead letter within 15 s")
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_refusal_is_one_attempt_and_a_dead_letter_at_once() {
    let nats = NatsServer::start();
    nats.ensure_stream().await;
    let dir = tempfile::tempdir().unwrap();
    // Slack's answer for a removed incoming webhook.
    let receiver = Receiver::start(Arc::new(|_: &Request| (404, "no_service".to_owned()))).await;
    let channels = dir.path().join("channels.toml");
    std::fs::write(
        &channels,
        format!(
            "[[channels]]\nkind = \"slack\"\nname = \"gone\"\nurl = \"{}\"\nretry_initial_ms = 50\nretry_max_ms = 100\n",
            receiver.url("/slack/services/T0/B0/GONE")
        ),
    )
    .unwrap();
    let _serve = serve_with_channels(&nats, &dir.path().join("db"), &channels, &[]);
    let start = Utc::now() - chrono::Duration::minutes(5);
    publish(&nats, execution_events("r", "r1", start, 100, true)).await;
    let changes = wait_for_changes(&nats, "r", 1, Duration::from_secs(15)).await;

    let letter = dead_letter(&nats, "gone").await;
    let stored: Value = serde_json::from_slice(&letter.payload).unwrap();
    assert_eq!(stored, changes[0]);
    let headers = letter.headers.clone().unwrap();
    assert_eq!(headers.get("Jobstats-Attempts").unwrap().as_str(), "1");
    assert_eq!(
        headers.get("Jobstats-Channel-Kind").unwrap().as_str(),
        "slack"
    );
    let error = headers
        .get("Jobstats-Last-Error")
        .unwrap()
        .as_str()
        .to_owned();
    assert!(
        error.contains("404") && error.contains("no_service"),
        "{error}"
    );

    // Delivery moves on: the next change is the second request, so the first had one.
    publish(
        &nats,
        execution_events("r", "r2", start + chrono::Duration::minutes(1), 100, false),
    )
    .await;
    wait_for_changes(&nats, "r", 2, Duration::from_secs(15)).await;
    let requests = receiver
        .wait_for("/slack", 2, Duration::from_secs(15))
        .await;
    assert_eq!(
        requests[0].body["blocks"][1]["text"]["text"],
        changes[0]["reason"]
    );
    assert_ne!(
        requests[1].body["text"], requests[0].body["text"],
        "a retry of the first"
    );
}

/// A real Alertmanager on a free port with a short `resolve_timeout`, or `None` when Debian's
/// prometheus-alertmanager is missing and cannot be installed (a skip outside CI as root).
struct Alertmanager {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Alertmanager {
    fn binary(test: &str) -> Option<PathBuf> {
        let found = |name: &str| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(name))
                    .find(|path| path.is_file())
            })
        };
        if let Some(binary) = found("prometheus-alertmanager") {
            return Some(binary);
        }
        if running_as_root() {
            let installed = Command::new("sh")
                .args(["-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus-alertmanager"])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if installed {
                if let Some(binary) = found("prometheus-alertmanager") {
                    return Some(binary);
                }
            }
        }
        skip(
            test,
            "Debian's prometheus-alertmanager is not installed and `apt-get install -y prometheus-alertmanager` failed (run as root with apt sources reachable)",
        );
        None
    }

    fn start(binary: &Path, resolve_timeout: Duration) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  resolve_timeout: {}s\nroute:\n  receiver: \"null\"\nreceivers:\n  - name: \"null\"\n",
                resolve_timeout.as_secs()
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // No cluster: one Alertmanager, no gossip port to find.
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus-alertmanager");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = blocking_get_ok(&format!("{url}/-/ready"));
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "Alertmanager did not become ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Alertmanager {
            child,
            url,
            _dir: dir,
        }
    }

    /// The active alerts of `job` (Alertmanager leaves resolved ones out of the API).
    async fn active(&self, job: &str) -> Vec<Value> {
        let alerts: Vec<Value> = reqwest::get(format!("{}/api/v2/alerts", self.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        alerts
            .into_iter()
            .filter(|a| a["labels"]["job"] == job && a["status"]["state"] == "active")
            .collect()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.0 GET (reqwest's blocking client is not a dependency), true on a 200.
fn blocking_get_ok(url: &str) -> bool {
    use std::io::{Read, Write};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let Ok(mut stream) = std::net::TcpStream::connect(host) else {
        return false;
    };
    let _ = write!(stream, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_keeps_a_stuck_job_firing_past_its_resolve_timeout_through_a_killed_replica_and_resolves_it_once(
) {
    let test = "alertmanager_keeps_a_stuck_job_firing";
    let Some(binary) = Alertmanager::binary(test) else {
        return;
    };
    let resolve_timeout = Duration::from_secs(4);
    let alertmanager = Alertmanager::start(&binary, resolve_timeout);
    let nats = NatsServer::start();
    nats.ensure_stream().await;
    let dir = tempfile::tempdir().unwrap();
    let channels = dir.path().join("channels.toml");
    std::fs::write(
        &channels,
        format!(
            "[[channels]]\nkind = \"alertmanager\"\nname = \"am\"\nurl = \"{}\"\nresend_ms = 1000\n",
            alertmanager.url
        ),
    )
    .unwrap();
    let mut a = serve_with_channels(
        &nats,
        &dir.path().join("a.db"),
        &channels,
        &[("JOBSTATS_INSTANCE_ID", "a")],
    );
    let _b = serve_with_channels(
        &nats,
        &dir.path().join("b.db"),
        &channels,
        &[("JOBSTATS_INSTANCE_ID", "b")],
    );

    // healthy, then a run that never ends: stuck after JOBSTATS_MAX_RUNTIME (3 s).
    let now = Utc::now();
    publish(
        &nats,
        execution_events(
            "nightly",
            "n1",
            now - chrono::Duration::seconds(10),
            100,
            true,
        ),
    )
    .await;
    wait_for_changes(&nats, "nightly", 1, Duration::from_secs(15)).await;
    let started = Utc::now();
    publish(
        &nats,
        vec![jobstats::publish::EventBuilder::new(TENANT, "nightly")
            .unwrap()
            .execution("n2")
            .unwrap()
            .at(started)
            .started()
            .unwrap()],
    )
    .await;
    let changes = wait_for_changes(&nats, "nightly", 2, Duration::from_secs(15)).await;
    assert_eq!(state_of(&changes[1]), ("healthy", "stuck"));
    let stuck_at = ms_of(&changes[1]["asOf"]);

    // Active in Alertmanager's own API with the labels, within 15 s.
    let deadline = Instant::now() + Duration::from_secs(15);
    let alert = loop {
        if let Some(alert) = alertmanager.active("nightly").await.pop() {
            break alert;
        }
        assert!(Instant::now() < deadline, "no active alert within 15 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let firing_ms = Utc::now().timestamp_millis() - stuck_at;
    eprintln!("stuck judged → active in Alertmanager: {firing_ms} ms");
    assert_eq!(alert["labels"]["alertname"], "JobstatsJobUnhealthy");
    assert_eq!(alert["labels"]["tenant"], TENANT);
    assert_eq!(alert["labels"]["job"], "nightly");
    assert_eq!(alert["labels"]["state"], "stuck");
    assert_eq!(alert["annotations"]["summary"], changes[1]["reason"]);
    assert!(alert["annotations"]["description"].is_string());
    assert_eq!(alert["generatorURL"], job_page("nightly").as_str());
    assert_eq!(ms_of(&alert["startsAt"]), ms_of(&changes[1]["since"]));

    // Re-posted: still active well past the resolve timeout, and after replica a is killed
    // (b keeps re-posting).
    let alertmanager = &alertmanager;
    let hold = |from: Instant, span: Duration| async move {
        while from.elapsed() < span {
            assert_eq!(
                alertmanager.active("nightly").await.len(),
                1,
                "the alert stopped firing {:?} in",
                from.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    hold(Instant::now(), resolve_timeout * 2).await;
    a.kill_9();
    hold(Instant::now(), resolve_timeout * 2).await;

    // Recovers: resolved, and stays resolved (no stale re-post fires it again).
    publish(
        &nats,
        vec![jobstats::publish::EventBuilder::new(TENANT, "nightly")
            .unwrap()
            .execution("n2")
            .unwrap()
            .at(Utc::now())
            .completed(Some(1))
            .unwrap()],
    )
    .await;
    let changes = wait_for_changes(&nats, "nightly", 3, Duration::from_secs(15)).await;
    assert_eq!(state_of(&changes[2]), ("stuck", "healthy"));
    // Within half the resolve timeout: the `endsAt` resolved it, not Alertmanager's timeout.
    let deadline = Instant::now() + resolve_timeout / 2;
    while !alertmanager.active("nightly").await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "not resolved within {:?}",
            resolve_timeout / 2
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resolved_at = Instant::now();
    while resolved_at.elapsed() < Duration::from_secs(3) {
        assert!(
            alertmanager.active("nightly").await.is_empty(),
            "fired again after it resolved"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// aiosmtpd on two ports (STARTTLS required on one, implicit TLS on the other) with the test
/// certificate and a login; prints each message as one JSON line.
const SMTP_SCRIPT: &str = r#"
import asyncio, email, email.policy, json, ssl, sys
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

cert, key, starttls_port, tls_port = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)

def check(server, session, envelope, mechanism, auth_data):
    ok = auth_data.login == b"jobstats" and auth_data.password == b"smtp-password"
    return AuthResult(success=ok)

class Handler:
    def __init__(self, mode):
        self.mode = mode
    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        print(json.dumps({
            "mode": self.mode,
            "tls": server.transport.get_extra_info("ssl_object") is not None,
            "authenticated": session.authenticated,
            "from": envelope.mail_from,
            "to": envelope.rcpt_tos,
            "subject": message["subject"],
            "text": message.get_body(("plain",)).get_content(),
            "html": message.get_body(("html",)).get_content(),
        }), flush=True)
        return "250 Message accepted for delivery"

starttls = Controller(Handler("starttls"), hostname="127.0.0.1", port=starttls_port,
                      tls_context=ctx, require_starttls=True, authenticator=check, auth_required=True)
implicit = Controller(Handler("implicit"), hostname="127.0.0.1", port=tls_port,
                      ssl_context=ctx, authenticator=check, auth_required=True,
                      # TLS from the first byte, which aiosmtpd's AUTH check does not see.
                      auth_require_tls=False, server_hostname="127.0.0.1")
starttls.start()
implicit.start()
print(json.dumps({"ready": True}), flush=True)
asyncio.get_event_loop().run_until_complete(asyncio.sleep(3600))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_arrives_once_over_starttls_and_over_implicit_tls_with_subject_both_bodies_and_the_link(
) {
    let python = python_venv("aiosmtpd", &["aiosmtpd>=1.4,<2"]);
    let pki = Pki::make();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("smtp.py");
    std::fs::write(&script, SMTP_SCRIPT).unwrap();
    let (starttls_port, tls_port) = (free_port(), free_port());
    let mut smtp = Command::new(&python)
        .arg(&script)
        .args([pki.path("server.pem"), pki.path("server.key")])
        .args([starttls_port.to_string(), tls_port.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start aiosmtpd");
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let (lines_tx, lines) = std::sync::mpsc::channel::<Value>();
    let stdout = smtp.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Ok(value) = serde_json::from_str(&line) {
                let _ = lines_tx.send(value);
            }
        }
    });
    let _smtp = Kill(smtp);
    let ready = lines
        .recv_timeout(Duration::from_secs(20))
        .expect("aiosmtpd started");
    assert_eq!(ready["ready"], true);

    std::fs::write(dir.path().join("smtp-password"), "smtp-password\n").unwrap();
    let channels = dir.path().join("channels.toml");
    let mut text = String::new();
    for (name, url) in [
        ("mail-starttls", format!("smtp://127.0.0.1:{starttls_port}")),
        ("mail-tls", format!("smtps://127.0.0.1:{tls_port}")),
    ] {
        text.push_str(&format!(
            "[[channels]]\nkind = \"email\"\nname = \"{name}\"\nsmtp_url = \"{url}\"\nusername = \"jobstats\"\npassword_file = \"{}\"\nfrom = \"jobstats <jobstats@example.com>\"\nto = [\"ops@example.com\"]\nstates = [\"failing\"]\n\n",
            dir.path().join("smtp-password").display()
        ));
    }
    std::fs::write(&channels, text).unwrap();
    let ca = pki.path("ca.pem");
    let nats = NatsServer::start();
    nats.ensure_stream().await;
    let _serve = serve_with_channels(
        &nats,
        &dir.path().join("db"),
        &channels,
        &[("SSL_CERT_FILE", ca.as_str())],
    );
    let changes = heal_fail_heal(&nats, "billing").await;
    let failing = &changes[1];
    let link = job_page("billing");

    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(45);
    while got.len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        got.push(
            lines
                .recv_timeout(left)
                .expect("two messages within 45 s (a shared 2-core machine under the whole suite)"),
        );
    }
    eprintln!(
        "failing judged → both messages in aiosmtpd: {} ms",
        Utc::now().timestamp_millis() - ms_of(&failing["asOf"])
    );
    got.sort_by_key(|m| m["mode"].as_str().unwrap().to_owned());
    let modes: Vec<&str> = got.iter().map(|m| m["mode"].as_str().unwrap()).collect();
    assert_eq!(modes, ["implicit", "starttls"]);
    for message in &got {
        assert_eq!(message["tls"], true, "{message}");
        assert_eq!(message["authenticated"], true);
        assert_eq!(message["from"], "jobstats@example.com");
        assert_eq!(message["to"], json!(["ops@example.com"]));
        assert_eq!(message["subject"], "[jobstats] billing is failing");
        let text = message["text"].as_str().unwrap();
        assert!(text.contains(failing["reason"].as_str().unwrap()), "{text}");
        assert!(text.contains(TENANT) && text.contains(&link), "{text}");
        let html = message["html"].as_str().unwrap();
        assert!(
            html.contains("<html>")
                && html.contains(&format!("href=\"{}\"", link.replace('&', "&amp;"))),
            "{html}"
        );
    }
    // Once each: the filter (failing only) left the two healthy changes out, and nothing
    // else arrives.
    assert!(
        lines.recv_timeout(Duration::from_secs(2)).is_err(),
        "a message arrived twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reminder_repeats_the_change_once_across_two_replicas_while_the_job_stays_failing() {
    let nats = NatsServer::start();
    nats.ensure_stream().await;
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(Arc::new(like_the_services)).await;
    let channels = dir.path().join("channels.toml");
    std::fs::write(
        &channels,
        format!(
            "[[channels]]\nkind = \"slack\"\nname = \"slack\"\nurl = \"{}\"\nstates = [\"failing\"]\nrepeat_ms = 60000\n",
            receiver.url("/slack/services/T0/B0/XXXX")
        ),
    )
    .unwrap();
    let _a = serve_with_channels(
        &nats,
        &dir.path().join("a.db"),
        &channels,
        &[("JOBSTATS_INSTANCE_ID", "a")],
    );
    let _b = serve_with_channels(
        &nats,
        &dir.path().join("b.db"),
        &channels,
        &[("JOBSTATS_INSTANCE_ID", "b")],
    );
    let start = Utc::now() - chrono::Duration::minutes(5);
    publish(&nats, execution_events("flaky", "f1", start, 100, false)).await;
    let changes = wait_for_changes(&nats, "flaky", 1, Duration::from_secs(15)).await;
    assert_eq!(state_of(&changes[0]), ("new", "failing"));
    let first = receiver
        .wait_for("/slack", 1, Duration::from_secs(15))
        .await;

    // One reminder a minute after the change was announced (not a minute after `since`,
    // five minutes ago), from one of the two replicas.
    let reminded = receiver
        .wait_for("/slack", 2, Duration::from_secs(75))
        .await;
    let after = reminded[1].at_ms - first[0].at_ms;
    eprintln!("reminder {after} ms after the first delivery");
    assert!(
        (59_000..=65_000).contains(&after),
        "reminder after {after} ms"
    );
    assert_eq!(
        reminded[1].body, first[0].body,
        "the reminder re-sends the change"
    );
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(3) {
        assert_eq!(
            receiver.under("/slack").len(),
            2,
            "a second replica reminded too"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_test_sends_one_message_prints_the_answer_and_fails_on_a_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(Arc::new(|request: &Request| {
        if request.path.contains("GONE") {
            (404, "no_service".to_owned())
        } else {
            (200, "ok".to_owned())
        }
    }))
    .await;
    let channels = dir.path().join("channels.toml");
    std::fs::write(
        &channels,
        format!(
            "[[channels]]\nkind = \"slack\"\nname = \"ok\"\nurl = \"{}\"\n\n[[channels]]\nkind = \"slack\"\nname = \"gone\"\nurl = \"{}\"\n",
            receiver.url("/slack/services/T0/B0/OK"),
            receiver.url("/slack/services/T0/B0/GONE")
        ),
    )
    .unwrap();
    let run = |name: &str| {
        Command::new(BIN)
            .args(["channels", "test", name])
            .env("JOBSTATS_CHANNELS_FILE", &channels)
            .env("JOBSTATS_PUBLIC_URL", PUBLIC_URL)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let ok = run("ok");
    assert!(ok.status.success(), "{ok:?}");
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(stdout.contains("HTTP 200: ok"), "{stdout}");
    let sent = receiver.under("/slack/services/T0/B0/OK");
    assert_eq!(sent.len(), 1);
    assert!(sent[0].body["text"]
        .as_str()
        .unwrap()
        .contains("jobstats-test"));
    assert_eq!(
        sent[0].body["blocks"][3]["elements"][0]["url"],
        job_page("jobstats-test").replace(TENANT, "00000000-0000-0000-0000-000000000000")
    );

    let gone = run("gone");
    assert!(!gone.status.success(), "{gone:?}");
    let stderr = String::from_utf8_lossy(&gone.stderr);
    assert!(
        stderr.contains("404") && stderr.contains("no_service"),
        "{stderr}"
    );
    assert_eq!(
        receiver.under("/slack/services/T0/B0/GONE").len(),
        1,
        "one attempt"
    );

    let missing = run("nope");
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("ok, gone"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_errors_a_throttle_is_retried_and_an_invalid_event_is_a_dead_letter_at_once() {
    let nats = NatsServer::start();
    nats.ensure_stream().await;
    let dir = tempfile::tempdir().unwrap();
    // PagerDuty throttles the first trigger (429) and takes the retry (202); it refuses every
    // event of the second routing key as invalid (400). Opsgenie refuses a bad key (422).
    let throttled = Arc::new(Mutex::new(false));
    let receiver = Receiver::start(Arc::new(move |request: &Request| {
        if request.path.starts_with("/og") {
            return (
                422,
                json!({"message": "Key format is not valid!", "took": 0.0, "requestId": "r"})
                    .to_string(),
            );
        }
        if request.body["routing_key"] == "invalid" {
            return (
                400,
                json!({"status": "invalid event", "message": "Event object is invalid", "errors": ["Length of 'routing_key' is incorrect (should be 32 characters)"]})
                    .to_string(),
            );
        }
        let mut once = throttled.lock().unwrap();
        if !*once {
            *once = true;
            return (429, String::new());
        }
        like_the_services(request)
    }))
    .await;
    let channels = dir.path().join("channels.toml");
    std::fs::write(
        &channels,
        format!(
            r#"
[[channels]]
kind = "pagerduty"
name = "pd-ok"
url = "{pd}"
routing_key = "R0UT1NGKEY0123456789abcdef012345"
retry_initial_ms = 50

[[channels]]
kind = "pagerduty"
name = "pd-invalid"
url = "{pd_invalid}"
routing_key = "invalid"
retry_initial_ms = 50

[[channels]]
kind = "opsgenie"
name = "og-bad-key"
url = "{og}"
api_key = "not-a-key"
retry_initial_ms = 50
"#,
            pd = receiver.url("/pd-ok/v2/enqueue"),
            pd_invalid = receiver.url("/pd-invalid/v2/enqueue"),
            og = receiver.url("/og/v2/alerts"),
        ),
    )
    .unwrap();
    let _serve = serve_with_channels(&nats, &dir.path().join("db"), &channels, &[]);
    let start = Utc::now() - chrono::Duration::minutes(5);
    publish(&nats, execution_events("pay", "p1", start, 100, false)).await;
    wait_for_changes(&nats, "pay", 1, Duration::from_secs(15)).await;

    let ok = receiver
        .wait_for("/pd-ok", 2, Duration::from_secs(15))
        .await;
    assert_eq!(
        ok[0].body, ok[1].body,
        "the throttled trigger is sent again"
    );
    let invalid = dead_letter(&nats, "pd-invalid").await;
    let headers = invalid.headers.clone().unwrap();
    assert_eq!(headers.get("Jobstats-Attempts").unwrap().as_str(), "1");
    assert!(headers
        .get("Jobstats-Last-Error")
        .unwrap()
        .as_str()
        .contains("invalid event"));
    let og = dead_letter(&nats, "og-bad-key").await;
    let headers = og.headers.clone().unwrap();
    assert_eq!(headers.get("Jobstats-Attempts").unwrap().as_str(), "1");
    assert!(headers
        .get("Jobstats-Last-Error")
        .unwrap()
        .as_str()
        .contains("422"));
    assert_eq!(receiver.under("/pd-invalid").len(), 1);
    assert_eq!(receiver.under("/og").len(), 1);
}
