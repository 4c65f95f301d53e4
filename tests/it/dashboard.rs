//! The dashboard (issue 14) in a real headless Chromium, driven by Playwright
//! (`tests/ui/dashboard.mjs`, playwright-core with Debian's chromium) against the real
//! `jobstats serve` on real NATS with seeded events. The numbers the page must show are read
//! from the API first, so the browser test checks that the page shows what the API says.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use chrono::Utc;
use jobstats::api::auth::{mint_hs256, DevClaims};
use serde_json::{json, Value};

use crate::helpers::*;

const FAILURE: &str = "disk full on /var";
const FAILURE_EXIT_CODE: u8 = 3;
const FAILURE_OUTPUT_LINE: &str = "write /var/report.csv: no space left on device";
/// cache.warmup's schedule: its zone, a failure threshold and a label.
const ZONE: &str = "Europe/Berlin";
const ZONED_FAILURE_THRESHOLD: u64 = 2;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One installer at a time.
static INSTALL: Mutex<()> = Mutex::new(());

/// Chromium and the test's node packages, installed when missing (CI's .ci/run installs
/// them first; a developer's `cargo test` gets them here).
pub(crate) fn browser_tools() -> (PathBuf, PathBuf) {
    let ui = node_packages();
    let _one = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    let chromium = PathBuf::from(std::env::var("CHROMIUM").unwrap_or("/usr/bin/chromium".into()));
    if !chromium.exists() && running_as_root() {
        let installed = Command::new("sh")
            .arg("-c")
            .arg("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver")
            .status();
        assert!(
            installed.is_ok_and(|s| s.success()),
            "apt-get install chromium failed"
        );
    }
    assert!(
        chromium.exists(),
        "the dashboard test needs Chromium: `apt-get install chromium` (or set CHROMIUM)"
    );
    (chromium, ui)
}

/// `tests/ui` with its node packages (playwright-core, axe-core, oidc-provider), installed by
/// `npm ci` when one is missing.
pub(crate) fn node_packages() -> PathBuf {
    let _one = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    let ui = root().join("tests/ui");
    let missing = ["playwright-core", "axe-core", "oidc-provider"]
        .iter()
        .any(|package| !ui.join("node_modules").join(package).exists());
    if missing {
        let installed = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(&ui)
            .status();
        assert!(
            installed.is_ok_and(|s| s.success()),
            "`npm ci --prefix tests/ui` failed: the browser and identity-provider tests need \
             Node.js 20+ and npm, and the packages of tests/ui/package-lock.json"
        );
    }
    ui
}

fn run(
    job: &str,
    execution: &str,
    minutes_ago: i64,
    duration_ms: i64,
    ok: bool,
) -> Vec<jobstats::events::Event> {
    execution_events(
        job,
        execution,
        Utc::now() - chrono::Duration::minutes(minutes_ago),
        duration_ms,
        ok,
    )
}

/// Four jobs in trouble or not, one job of another tenant, two dead letters.
async fn seed(nats: &NatsServer) -> u64 {
    let publisher = nats.publisher().await;
    let mut events = Vec::new();
    for i in 0..10 {
        events.extend(run(
            "nightly-report",
            &format!("n{i}"),
            600 - i * 60,
            1_000 + i * 1_000,
            true,
        ));
    }
    for (i, ok) in [true, true, true, false, false].into_iter().enumerate() {
        let i = i as i64;
        let failure = jobstats::publish::EventBuilder::new(TENANT, "payments.reconcile")
            .unwrap()
            .execution(&format!("p{i}"))
            .unwrap();
        let start = Utc::now() - chrono::Duration::minutes(300 - i * 60);
        if ok {
            events.extend(run(
                "payments.reconcile",
                &format!("p{i}"),
                300 - i * 60,
                (i + 1) * 1_000,
                true,
            ));
        } else {
            events.push(failure.clone().at(start).started().unwrap());
            events.push(
                failure
                    .at(start + chrono::Duration::seconds(5))
                    .exit_code(FAILURE_EXIT_CODE)
                    .output(&format!("reconciling batch {i}\n{FAILURE_OUTPUT_LINE}\n"))
                    .failed(None, Some(FAILURE))
                    .unwrap(),
            );
        }
    }
    events.extend(run("inventory.sync", "i0", 240, 2_000, true));
    let hung = jobstats::publish::EventBuilder::new(TENANT, "inventory.sync")
        .unwrap()
        .execution("i1")
        .unwrap()
        .at(Utc::now() - chrono::Duration::minutes(120));
    events.push(hung.started().unwrap());
    let schedule = jobstats::publish::EventBuilder::new(TENANT, "cache.warmup")
        .unwrap()
        .at(Utc::now() - chrono::Duration::minutes(180))
        .timezone(ZONE)
        .unwrap()
        .schedule_options(
            &[("team".to_owned(), "payments".to_owned())],
            Some(ZONED_FAILURE_THRESHOLD),
            None,
        )
        .unwrap()
        .scheduled(Some("*/5 * * * *"))
        .unwrap();
    events.push(schedule);
    events.extend(run("cache.warmup", "c0", 175, 800, true));
    let other = jobstats::publish::EventBuilder::new(OTHER_TENANT, "secret-job")
        .unwrap()
        .execution("s0")
        .unwrap();
    let start = Utc::now() - chrono::Duration::minutes(30);
    events.push(other.clone().at(start).started().unwrap());
    events.push(
        other
            .at(start + chrono::Duration::seconds(3))
            .completed(None)
            .unwrap(),
    );
    publish_all(&publisher, &events).await;
    publisher
        .publish_raw(
            &format!("jobs.events.{TENANT}.completed"),
            b"{not json".to_vec(),
            "",
        )
        .await
        .unwrap();
    publisher
        .publish_raw(
            &format!("jobs.events.{TENANT}.finished"),
            b"{}".to_vec(),
            "",
        )
        .await
        .unwrap()
        .sequence
}

async fn get(serve: &ServeProcess, path: &str) -> Value {
    let response = serve
        .http
        .get(serve.url(path))
        .bearer_auth(admin_token())
        .header("x-tenantid", TENANT)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.unwrap()
}

/// What the page must show, read from the API.
async fn expectations(serve: &ServeProcess) -> Value {
    let list = get(serve, "/api/v1/admin/jobs?limit=500").await;
    let mut jobs = serde_json::Map::new();
    let (mut unhealthy, mut healthy) = (Vec::new(), Vec::new());
    for job in list["data"]["jobs"].as_array().unwrap() {
        let name = job["jobName"].as_str().unwrap().to_owned();
        let state = job["health"]["state"].as_str().unwrap();
        if ["unknown", "stuck", "missed", "failing"].contains(&state) {
            unhealthy.push(name.clone());
        } else {
            healthy.push(name.clone());
        }
        jobs.insert(
            name,
            json!({
                "state": state,
                "completed": job["queue"]["completed"],
                "failed": job["queue"]["failed"],
                "successRate": job["successRate"],
                "p95Ms": job["p95Ms"],
            }),
        );
    }
    let failing = get(serve, "/api/v1/admin/jobs/payments.reconcile/stats").await;
    let data = &failing["data"];
    json!({
        "jobs": jobs,
        "failingJob": "payments.reconcile",
        "failureMessage": FAILURE,
        "failureExitCode": FAILURE_EXIT_CODE,
        "failureOutputLine": FAILURE_OUTPUT_LINE,
        "zonedJob": "cache.warmup",
        "zone": ZONE,
        "zonedFailureThreshold": ZONED_FAILURE_THRESHOLD,
        "failingCounts": {"completed": data["queue"]["completed"], "failed": data["queue"]["failed"]},
        "failingPercentiles": {
            "p50Ms": data["performance"]["percentiles"]["p50Ms"],
            "p95Ms": data["performance"]["percentiles"]["p95Ms"],
        },
        "otherTenantJob": "secret-job",
        "otherTenantJobs": ["secret-job"],
        "deadLetters": 2,
        "unhealthyJobs": unhealthy,
        "healthyJobs": healthy,
    })
}

fn expired_token() -> String {
    let mut claims = DevClaims::new(
        "tester",
        &["system_admin"],
        Some(TENANT),
        Duration::from_secs(60),
    );
    claims.iat -= 7_200;
    claims.exp -= 7_200;
    mint_hs256(SECRET, &claims).unwrap()
}

fn screenshot_dir() -> PathBuf {
    let dir = root().join("target/ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_jobs_health_and_history_in_a_real_browser() {
    let (chromium, ui) = browser_tools();
    let nats = NatsServer::start();
    nats.ensure_stream().await;
    let last = seed(&nats).await;
    let dir = tempfile::tempdir().unwrap();
    let serve = ServeProcess::start(&nats.url(), &dir.path().join("db"));
    serve.wait_applied(last).await;
    let expect = expectations(&serve).await;
    assert_eq!(
        expect["unhealthyJobs"].as_array().unwrap().len(),
        3,
        "seeded: one failing, one stuck, one missed job: {expect}"
    );
    let shots = screenshot_dir();
    let output = Command::new("node")
        .arg(ui.join("dashboard.mjs"))
        .env("JOBSTATS_URL", format!("http://{}", serve.address))
        .env("TOKEN_SYSTEM", admin_token())
        .env("TOKEN_SUPER", token(&["super_admin"], None))
        .env("TOKEN_OTHER", token(&["system_admin"], Some(OTHER_TENANT)))
        .env("TOKEN_EXPIRED", expired_token())
        .env("TENANT_A", TENANT)
        .env("TENANT_B", OTHER_TENANT)
        .env("SCREENSHOT_DIR", &shots)
        .env("CHROMIUM", &chromium)
        .env("EXPECT", expect.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    let summary = stdout
        .lines()
        .rev()
        .find(|l| l.contains(" passed, "))
        .unwrap_or("");
    assert!(
        output.status.success() && summary.ends_with(" 0 failed"),
        "browser checks failed:\n{stdout}\n{stderr}"
    );
    for shot in ["signin.png", "jobs.png", "job.png", "projection.png"] {
        let size = std::fs::metadata(shots.join(shot))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(size > 10_000, "{shot}: {size} bytes");
    }
}
