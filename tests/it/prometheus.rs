//! Per-job metrics (CONTRACT §12) with the real parts: a real `serve` (two replicas), a real
//! Prometheus (Debian's) scraping their admin listeners with the shipped rules loaded, and
//! promtool checking the shipped rules and the Grafana dashboard's expressions.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use jobstats::publish::EventBuilder;
use serde_json::Value;

use crate::helpers::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const RULES: &str = "deploy/prometheus/jobstats-rules.yml";
const RULE_TESTS: &str = "deploy/prometheus/jobstats-rules.test.yml";
const DASHBOARD: &str = "deploy/grafana/jobstats.json";

/// `prometheus` and `promtool` from PATH (Debian puts them in /usr/bin); `None` (after saying
/// so) when missing outside CI; under `CI=true` a missing Prometheus fails the test.
fn prometheus_binaries(test: &str) -> Option<(PathBuf, PathBuf)> {
    let find = |name: &str| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|path| path.is_file())
        })
    };
    match (find("prometheus"), find("promtool")) {
        (Some(prometheus), Some(promtool)) => Some((prometheus, promtool)),
        _ => {
            let reason = "prometheus/promtool are not installed (apt-get install -y prometheus; \
                          .ci/run does it)";
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(!ci, "{test}: under CI=true, yet {reason}");
            skip(test, reason);
            None
        }
    }
}

fn promtool(promtool: &Path, args: &[&str]) -> String {
    let output = Command::new(promtool)
        .args(args)
        .current_dir(ROOT)
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?}: {text}");
    text
}

/// A Prometheus of this test: own port, own data dir, killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Prometheus {
    /// Scrapes `targets` every second and evaluates `rules` every second. `honor_labels`, as
    /// the README says: the series' own `job` label (the job's name) must win over the one
    /// Prometheus gives the scrape target, which would rename it `exported_job`.
    async fn start(binary: &Path, targets: &[String], rules: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("rules.yml"), rules).expect("write rules");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: jobstats\n    honor_labels: true\n    static_configs:\n      - targets: [{}]\n",
            dir.path().join("rules.yml").display(),
            targets.join(", ")
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("write config");
        let port = free_port();
        let child = Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start prometheus");
        let prometheus = Prometheus {
            child,
            port,
            _dir: dir,
            http: reqwest::Client::new(),
        };
        let ready = format!("http://127.0.0.1:{port}/-/ready");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(response) = prometheus.http.get(&ready).send().await {
                if response.status() == 200 {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "prometheus did not get ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        prometheus
    }

    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let response = self
            .http
            .get(format!("http://127.0.0.1:{}{path}", self.port))
            .query(query)
            .send()
            .await
            .expect("prometheus answers");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["status"], "success", "{path}: {body}");
        body["data"].clone()
    }

    /// An instant query's result: (labels, value) per series.
    async fn query(&self, expr: &str) -> Vec<(Value, f64)> {
        let data = self.api("/api/v1/query", &[("query", expr)]).await;
        data["result"]
            .as_array()
            .expect("a vector")
            .iter()
            .map(|s| {
                let value = s["value"][1].as_str().expect("a value").parse().unwrap();
                (s["metric"].clone(), value)
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` until it returns `Some`, for at most `patience`; `what` names the wait.
async fn eventually<T, F, Fut>(what: &str, patience: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + patience;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what}: not within {patience:?}; last: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

async fn text(http: &reqwest::Client, url: &str) -> String {
    let response = http.get(url).send().await.expect("request");
    assert_eq!(response.status(), 200, "{url}");
    response.text().await.expect("text")
}

/// The per-job samples of a scrape, once every job's health has been read back (no job
/// `unknown`): what must be equal on every replica and after a restart.
async fn settled_job_lines(serve: &ServeProcess) -> Result<BTreeSet<String>, String> {
    let scrape = text(&serve.http, &serve.admin_url("/metrics")).await;
    let lines: BTreeSet<String> = scrape
        .lines()
        .filter(|l| l.starts_with("jobstats_job_"))
        .map(str::to_owned)
        .collect();
    if lines.is_empty() || lines.iter().any(|l| l.contains("state=\"unknown\"} 1")) {
        return Err(format!("not settled: {lines:?}"));
    }
    Ok(lines)
}

/// A job that failed twice and completed once, and a job stuck in a run started 5 minutes ago
/// with a 1-minute maxRuntime.
fn history() -> Vec<jobstats::events::Event> {
    let now = Utc::now();
    let minutes = |m: i64| now - chrono::Duration::minutes(m);
    let mut events = Vec::new();
    events.extend(execution_events("nightly", "n1", minutes(30), 1_000, true));
    events.extend(execution_events("nightly", "n2", minutes(20), 2_000, false));
    events.extend(execution_events("nightly", "n3", minutes(10), 3_000, false));
    let hung = EventBuilder::new(TENANT, "hung").expect("valid job");
    events.push(
        hung.clone()
            .at(minutes(10))
            .scheduled_with(None, None, Some(Duration::from_secs(60)))
            .expect("scheduled"),
    );
    events.push(
        hung.execution("h1")
            .expect("execution")
            .at(minutes(5))
            .started()
            .expect("started"),
    );
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_sees_the_api_figures_and_fires_the_stuck_rule_on_every_replica() {
    const TEST: &str = "a_real_prometheus_sees_the_api_figures_and_fires_the_stuck_rule";
    let Some((prometheus_bin, _)) = prometheus_binaries(TEST) else {
        return;
    };
    let nats = NatsServer::start();
    nats.ensure_stream().await;
    let dir = tempfile::tempdir().unwrap();
    let (admin_a, admin_b) = (ServeProcess::admin_env(), ServeProcess::admin_env());
    let db_a = dir.path().join("a.db");
    let mut serve_a =
        ServeProcess::start_with_env(&nats.url(), &db_a, &[("JOBSTATS_ADMIN_LISTEN", &admin_a)]);
    let serve_b = ServeProcess::start_with_env(
        &nats.url(),
        &dir.path().join("b.db"),
        &[
            ("JOBSTATS_ADMIN_LISTEN", &admin_b),
            ("JOBSTATS_CONSUMER", "jobstats-test-b"),
        ],
    );
    let publisher = nats.publisher().await;
    let last = publish_all(&publisher, &history()).await;
    serve_a.wait_applied(last).await;
    serve_b.wait_applied(last).await;

    // The shipped rules, with JobstatsJobStuck's hold cut to 0s so it fires within the test
    // (the shipped `for: 1m` is covered by promtool test rules).
    let shipped = std::fs::read_to_string(Path::new(ROOT).join(RULES)).unwrap();
    let stuck_at = shipped
        .find("alert: JobstatsJobStuck")
        .expect("the stuck rule");
    let hold = stuck_at + shipped[stuck_at..].find("for: 1m").expect("its hold");
    let rules = format!(
        "{}for: 0s{}",
        &shipped[..hold],
        &shipped[hold + "for: 1m".len()..]
    );
    let prometheus =
        Prometheus::start(&prometheus_bin, &[admin_a.clone(), admin_b.clone()], &rules).await;

    let api_failed = serve_a.stats("nightly").await["data"]["queue"]["failed"]
        .as_f64()
        .expect("queue.failed");
    assert_eq!(api_failed, 2.0);
    let failed_query = r#"jobstats_job_executions_total{job="nightly",outcome="failed"}"#;
    let answer = eventually(
        "both replicas' failed count in Prometheus",
        Duration::from_secs(60),
        || async {
            let result = prometheus.query(failed_query).await;
            if result.len() == 2 {
                Ok(result)
            } else {
                Err(format!("{result:?}"))
            }
        },
    )
    .await;
    eprintln!("PromQL {failed_query} -> {answer:?}");
    for (labels, value) in &answer {
        assert_eq!(*value, api_failed, "{labels}");
        assert_eq!(labels["tenant"], TENANT);
        // tenant and job only (plus outcome, and the instance/job Prometheus adds itself).
        let mut names: Vec<&str> = labels
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        names.sort_unstable();
        assert_eq!(names, ["__name__", "instance", "job", "outcome", "tenant"]);
    }

    let stuck_query = r#"jobstats_job_health{job="hung",state="stuck"} == 1"#;
    eventually(
        "the stuck job's health in Prometheus",
        Duration::from_secs(60),
        || async {
            let result = prometheus.query(stuck_query).await;
            if result.len() == 2 {
                Ok(())
            } else {
                Err(format!("{result:?}"))
            }
        },
    )
    .await;
    let other = prometheus
        .query(r#"jobstats_job_health{job="hung",state!="stuck"} == 1"#)
        .await;
    assert!(other.is_empty(), "one state at a time: {other:?}");

    let alert = eventually(
        "JobstatsJobStuck firing",
        Duration::from_secs(60),
        || async {
            let data = prometheus.api("/api/v1/alerts", &[]).await;
            let alerts = data["alerts"].as_array().cloned().unwrap_or_default();
            alerts
                .iter()
                .find(|a| a["labels"]["alertname"] == "JobstatsJobStuck" && a["state"] == "firing")
                .cloned()
                .ok_or_else(|| format!("{alerts:?}"))
        },
    )
    .await;
    assert_eq!(alert["labels"]["job"], "hung", "{alert}");
    assert_eq!(alert["labels"]["tenant"], TENANT, "{alert}");
    let alerts = prometheus.api("/api/v1/alerts", &[]).await;
    let stuck_alerts = alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["labels"]["alertname"] == "JobstatsJobStuck")
        .count();
    assert_eq!(stuck_alerts, 1, "one alert for two replicas: {alerts}");

    // The same numbers on both replicas, and after a restart.
    let patience = Duration::from_secs(30);
    let lines_a = eventually("replica a settled", patience, || {
        settled_job_lines(&serve_a)
    })
    .await;
    let lines_b = eventually("replica b settled", patience, || {
        settled_job_lines(&serve_b)
    })
    .await;
    assert_eq!(lines_a, lines_b);
    serve_a.kill_9();
    let serve_a =
        ServeProcess::start_with_env(&nats.url(), &db_a, &[("JOBSTATS_ADMIN_LISTEN", &admin_a)]);
    serve_a.wait_applied(last).await;
    let restarted = eventually("restarted replica settled", patience, || {
        settled_job_lines(&serve_a)
    })
    .await;
    assert_eq!(restarted, lines_a);

    // The API port's /metrics names no job and no tenant: with an admin listener it has no
    // /metrics at all, and without one (served there) it has the service-level series only.
    let response = serve_a
        .http
        .get(serve_a.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    drop(serve_a);
    let serve_a = ServeProcess::start(&nats.url(), &db_a);
    serve_a.wait_applied(last).await;
    let public = text(&serve_a.http, &serve_a.url("/metrics")).await;
    assert!(public.contains("jobstats_events_applied_total"), "{public}");
    assert!(!public.contains("jobstats_job_"), "{public}");
    assert!(!public.contains(TENANT), "{public}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_metrics_cap_exports_the_first_jobs_and_counts_the_rest() {
    let nats = NatsServer::start();
    nats.ensure_stream().await;
    let dir = tempfile::tempdir().unwrap();
    let admin = ServeProcess::admin_env();
    let serve = ServeProcess::start_with_env(
        &nats.url(),
        &dir.path().join("db"),
        &[
            ("JOBSTATS_ADMIN_LISTEN", &admin),
            ("JOBSTATS_JOB_METRICS_MAX", "2"),
        ],
    );
    let publisher = nats.publisher().await;
    let start = Utc::now() - chrono::Duration::minutes(5);
    let mut last = 0;
    // One at a time, so the jobs are first seen in this order.
    for job in ["first", "second", "third"] {
        last = publish_all(&publisher, &execution_events(job, "e1", start, 500, true)).await;
    }
    serve.wait_applied(last).await;
    let scrape = text(&serve.http, &serve.admin_url("/metrics")).await;
    let jobs: BTreeSet<&str> = scrape
        .lines()
        .filter(|l| l.starts_with("jobstats_job_executions_total{"))
        .filter_map(|l| l.split("job=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(jobs, BTreeSet::from(["first", "second"]), "{scrape}");
    assert!(
        scrape
            .lines()
            .any(|l| l == "jobstats_job_metrics_omitted 1"),
        "{scrape}"
    );
}

#[test]
fn the_shipped_rules_pass_promtool_check_and_their_unit_tests() {
    let Some((_, promtool_bin)) = prometheus_binaries("the_shipped_rules_pass_promtool") else {
        return;
    };
    let checked = promtool(&promtool_bin, &["check", "rules", RULES]);
    assert!(checked.contains("5 rules found"), "{checked}");
    promtool(&promtool_bin, &["test", "rules", RULE_TESTS]);
}

#[test]
fn the_grafana_dashboard_has_what_grafana_needs_and_promtool_parses_every_expression() {
    let Some((_, promtool_bin)) = prometheus_binaries("the_grafana_dashboard") else {
        return;
    };
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(ROOT).join(DASHBOARD)).unwrap())
            .expect("the dashboard is JSON");
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 30));
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dashboard["uid"].as_str().is_some_and(|u| !u.is_empty()));
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating");
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no variable {name}"))
    };
    assert_eq!(variable("datasource")["type"], "datasource");
    assert_eq!(variable("datasource")["query"], "prometheus");
    for name in ["tenant", "job"] {
        let query = variable(name)["query"]["query"]
            .as_str()
            .unwrap_or_default();
        assert!(query.starts_with("label_values("), "{name}: {query}");
        assert!(query.ends_with(&format!(", {name})")), "{name}: {query}");
    }
    let panels = dashboard["panels"].as_array().expect("panels");
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for wanted in [
        "Jobs in trouble",
        "Runs and failures",
        "Durations",
        "Projector lag",
        "Dead letters",
    ] {
        assert!(
            titles.iter().any(|t| t.starts_with(wanted)),
            "{wanted}: {titles:?}"
        );
    }
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, panel) in panels.iter().enumerate() {
        assert!(
            panel["type"].is_string() && panel["gridPos"].is_object(),
            "{panel}"
        );
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{panel}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{panel}");
        for (j, target) in targets.iter().enumerate() {
            assert!(target["refId"].is_string(), "{target}");
            let expr = target["expr"].as_str().expect("expr");
            // Grafana's variables as it would substitute them.
            let expr = expr
                .replace("$__rate_interval", "5m")
                .replace("$tenant", ".*")
                .replace("$job", ".*");
            rules.push_str(&format!(
                "      - record: dashboard:panel_{i}_{j}\n        expr: {}\n",
                serde_json::to_string(&expr).unwrap()
            ));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-rules.yml");
    std::fs::write(&file, rules).unwrap();
    promtool(&promtool_bin, &["check", "rules", file.to_str().unwrap()]);
}
