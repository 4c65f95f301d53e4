//! The tools job runners and new users touch: `run`, `publish`, `token`, and the README's
//! first command, `demo`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::*;

fn jobstats(nats_url: &str) -> Command {
    let mut command = Command::new(BIN);
    command
        .env("JOBSTATS_NATS_URL", nats_url)
        .env("RUST_LOG", "warn");
    command
}

#[tokio::test]
async fn run_wraps_commands_and_passes_their_exit_codes_through() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let app = App::spawn(&nats.url(), &dir.path().join("stats.db")).await;
    let cases: [(&[&str], i32); 3] = [(&["true"], 0), (&["false"], 1), (&["sleep", "1"], 0)];
    for (command, expected) in cases {
        let status = jobstats(&nats.url())
            .args(["run", "--tenant", TENANT, "--job", "wrapped", "--"])
            .args(command)
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(expected), "{command:?}");
    }
    let output = jobstats(&nats.url())
        .args([
            "run",
            "--tenant",
            TENANT,
            "--job",
            "echoed",
            "--",
            "sh",
            "-c",
            "echo hello; exit 7",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "hello\n");

    let deadline = Instant::now() + Duration::from_secs(20);
    let data = loop {
        let response = app.stats_with("wrapped", &admin_token(), TENANT).await;
        if response.status() == 200 {
            let body: serde_json::Value = response.json().await.unwrap();
            let queue = &body["data"]["queue"];
            if queue["completed"].as_i64().unwrap_or(0) + queue["failed"].as_i64().unwrap_or(0) == 3
            {
                break body["data"].clone();
            }
        }
        assert!(Instant::now() < deadline, "wrapped runs did not show up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(data["queue"]["completed"], 2);
    assert_eq!(data["queue"]["failed"], 1);
    let recent = data["recentExecutions"].as_array().unwrap();
    let sleep_run = &recent[0];
    assert_eq!(sleep_run["status"], "completed");
    let duration = sleep_run["durationMs"].as_i64().unwrap();
    assert!(
        (1_000..3_000).contains(&duration),
        "sleep 1 took {duration} ms"
    );
    assert_eq!(recent[1]["status"], "failed");
    assert_eq!(recent[1]["error"], "exit status 1");

    // --print-sequence: the last stdout line names the outcome's sequence, and a read that
    // waits for it sees the run.
    let output = jobstats(&nats.url())
        .args([
            "run",
            "--tenant",
            TENANT,
            "--job",
            "sequenced",
            "--print-sequence",
        ])
        .args(["--", "sh", "-c", "echo working"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("working"), "the command's output first");
    let sequence: u64 = lines
        .next()
        .and_then(|l| l.strip_prefix("sequence="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no sequence line: {stdout:?}"));
    let response = app
        .http
        .get(app.url(&format!(
            "/api/v1/admin/jobs/sequenced/stats?minSequence={sequence}&waitMs=3000"
        )))
        .bearer_auth(admin_token())
        .header("x-tenantid", TENANT)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["data"]["queue"]["completed"], 1);
    assert!(
        body["data"]["freshness"]["appliedSequence"]
            .as_u64()
            .unwrap()
            >= sequence
    );
    app.stop().await;
}

#[test]
fn run_still_runs_the_command_when_nats_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let output = jobstats(&format!("nats://127.0.0.1:{}", free_port()))
        .args([
            "run",
            "--tenant",
            TENANT,
            "--job",
            "offline",
            "--publish-timeout",
            "1s",
            "--",
            "touch",
        ])
        .arg(&marker)
        .output()
        .unwrap();
    assert!(marker.exists(), "the wrapped command must run without NATS");
    assert_eq!(
        output.status.code(),
        Some(0),
        "the command's exit code, not the publish failure"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("publishing"),
        "the publish failure is reported: {stderr}"
    );
}

#[test]
fn a_config_file_configures_jobstats_but_never_the_command_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("jobstats.toml");
    let closed = format!("nats://127.0.0.1:{}", free_port());
    std::fs::write(
        &config,
        format!(
            "nats_url = \"{closed}\"\njwt_hs256_secret = \"{SECRET}\"\ntenant = \"{TENANT}\"\n"
        ),
    )
    .unwrap();
    let output = Command::new(BIN)
        .env_remove("JOBSTATS_NATS_URL")
        .env_remove("JOBSTATS_JWT_HS256_SECRET")
        .env_remove("JOBSTATS_TENANT")
        .env("RUST_LOG", "warn")
        .arg("--config")
        .arg(&config)
        .args([
            "run",
            "--job",
            "configured",
            "--publish-timeout",
            "1s",
            "--",
        ])
        .args([
            "sh",
            "-c",
            "echo secret=${JOBSTATS_JWT_HS256_SECRET:-unset}",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The tenant came from the file (the command ran), the NATS URL too (its port is closed).
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_eq!(
        stdout.trim(),
        "secret=unset",
        "the file's secret leaked to the child"
    );
    assert!(stderr.contains("publishing"), "{stderr}");

    std::fs::write(&config, "nats_ur1 = \"nats://x\"\n").unwrap();
    let output = Command::new(BIN)
        .env("JOBSTATS_CONFIG", &config)
        .args(["token", "--secret", SECRET])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr.contains("unknown key `nats_ur1`"), "{stderr}");
}

#[tokio::test]
async fn publish_rejects_invalid_input_naming_the_field() {
    let nats = NatsServer::start();
    nats.ensure_stream().await;
    let cases: [(&[&str], &str); 7] = [
        (
            &[
                "completed",
                "--tenant",
                "nope",
                "--job",
                "j",
                "--execution",
                "e",
            ],
            "tenant",
        ),
        (
            &[
                "completed",
                "--tenant",
                TENANT,
                "--job",
                "bad name",
                "--execution",
                "e",
            ],
            "job",
        ),
        (
            &["completed", "--tenant", TENANT, "--job", "j"],
            "execution",
        ),
        (
            &[
                "scheduled",
                "--tenant",
                TENANT,
                "--job",
                "j",
                "--cron",
                "61 * * * *",
            ],
            "cron",
        ),
        (
            &[
                "started",
                "--tenant",
                TENANT,
                "--job",
                "j",
                "--execution",
                "e",
                "--items",
                "3",
            ],
            "items",
        ),
        (
            &[
                "failed",
                "--tenant",
                TENANT,
                "--job",
                "j",
                "--execution",
                "e",
                "--occurred-at",
                "yesterday",
            ],
            "occurred-at",
        ),
        (
            &[
                "completed",
                "--tenant",
                TENANT,
                "--job",
                "j",
                "--execution",
                "e",
                "--items",
                "-1",
            ],
            "items",
        ),
    ];
    for (args, field) in cases {
        let output = jobstats(&nats.url())
            .arg("publish")
            .args(args)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?} must fail");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(field),
            "{args:?}: message must name {field}: {stderr}"
        );
    }
    let output = jobstats(&nats.url())
        .args([
            "publish",
            "completed",
            "--tenant",
            TENANT,
            "--job",
            "j",
            "--execution",
            "e",
            "--items",
            "3",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let human: u64 = stdout
        .split("at stream sequence ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a human line naming the sequence: {stdout}"));
    // The machine-readable line read-your-writes scripts pick out.
    assert!(
        stdout.lines().any(|l| l == format!("sequence={human}")),
        "{stdout}"
    );
    let unreachable = jobstats(&format!("nats://127.0.0.1:{}", free_port()))
        .args([
            "publish",
            "completed",
            "--tenant",
            TENANT,
            "--job",
            "j",
            "--execution",
            "e",
        ])
        .output()
        .unwrap();
    assert!(!unreachable.status.success());
}

#[test]
fn serve_refuses_to_start_without_a_key_and_names_bad_variables() {
    let output = Command::new(BIN)
        .arg("serve")
        .env_remove("JOBSTATS_JWT_HS256_SECRET")
        .env_remove("JOBSTATS_JWT_PUBLIC_KEY_FILE")
        .env("JOBSTATS_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env(
            "JOBSTATS_DB_PATH",
            tempfile::tempdir().unwrap().path().join("x.db"),
        )
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("JOBSTATS_JWT_HS256_SECRET"));
    let output = Command::new(BIN)
        .arg("serve")
        .env("JOBSTATS_LISTEN", "not-an-address")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("JOBSTATS_LISTEN"));
}

#[test]
fn every_command_help_lists_only_the_options_it_uses() {
    let help = |command: &str| {
        let out = Command::new(BIN)
            .args([command, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{command} --help");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let token = help("token");
    for unused in [
        "--nats-url",
        "--stream",
        "--db",
        "--tenants",
        "--stream-replicas",
    ] {
        assert!(
            !token.contains(unused),
            "token --help lists {unused}:\n{token}"
        );
    }
    assert!(
        token.contains("--secret") && token.contains("--role"),
        "{token}"
    );
    let serve = help("serve");
    for used in ["--nats-url", "--stream", "--db", "--tenants"] {
        assert!(serve.contains(used), "serve --help lacks {used}");
    }
    let publish = help("publish");
    assert!(
        publish.contains("--nats-url") && !publish.contains("--db "),
        "{publish}"
    );
    // Hidden is not refused: one environment or config file serves every command.
    let out = Command::new(BIN)
        .args(["token", "--db", "x.db", "--secret"])
        .arg(SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn token_mints_a_token_the_server_accepts_and_requires_a_secret() {
    let output = Command::new(BIN)
        .args([
            "token",
            "--role",
            "system_admin",
            "--tenant",
            TENANT,
            "--ttl",
            "1h",
        ])
        .env("JOBSTATS_JWT_HS256_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(output.status.success());
    let token = String::from_utf8(output.stdout).unwrap();
    let authenticator =
        jobstats::api::auth::Authenticator::new(jobstats::api::auth::AuthSettings {
            hs256_secret: Some(SECRET.into()),
            ..Default::default()
        })
        .unwrap();
    let principal = authenticator.authenticate(token.trim(), None).unwrap();
    assert!(principal.roles.contains("system_admin"));
    let missing = Command::new(BIN)
        .arg("token")
        .env_remove("JOBSTATS_JWT_HS256_SECRET")
        .output()
        .unwrap();
    assert!(!missing.status.success());
}

/// The README's first command, as a new user runs it: it must start its own NATS when none is
/// reachable, print a curl command that returns real stats, and leave nothing behind on Ctrl-C.
#[test]
fn the_demo_comes_up_prints_a_working_curl_and_stops_cleanly_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let nats_port = free_port();
    let listen_port = free_port();
    let mut demo = Command::new(BIN)
        .arg("demo")
        .current_dir(dir.path())
        .env("JOBSTATS_NATS_URL", format!("nats://127.0.0.1:{nats_port}"))
        .env("JOBSTATS_LISTEN", format!("127.0.0.1:{listen_port}"))
        .env("NATS_SERVER_BIN", nats_server_binary())
        .env_remove("JOBSTATS_DB_PATH")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines_rx = lines_of(&mut demo);
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut curls = Vec::new();
    let mut links = Vec::new();
    while curls.len() < 2 {
        let line = lines_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the demo printed no curl command in time");
        if line.starts_with("curl ") {
            curls.push(line);
        } else if let Some((_, token)) = line.split_once("/ui/#token=") {
            links.push(token.to_owned());
        }
    }
    // Two sign-in links: the tenant's admin, and an operator who may open the projection view.
    assert_eq!(links.len(), 2, "{links:?}");
    let projection = |token: &str| {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
            .arg(format!("authorization: Bearer {token}"))
            .arg(format!(
                "http://127.0.0.1:{listen_port}/api/v1/admin/projection"
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .parse::<u16>()
            .unwrap_or(0)
    };
    assert_eq!(projection(&links[0]), 403, "the tenant admin's link");
    assert_eq!(projection(&links[1]), 200, "the operator's link");
    let run_curl = |curl: &str| curl_until_ok(curl, Duration::ZERO);
    // The second command lists the jobs in trouble, worst first: the demo has one of each.
    let trouble = run_curl(&curls[1]);
    let states: Vec<(String, String)> = trouble["data"]["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["jobName"].as_str().unwrap().to_owned(),
                j["health"]["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (job, state) in [
        ("inventory.sync", "stuck"),
        ("cache.warmup", "missed"),
        ("payments.reconcile", "failing"),
    ] {
        assert!(
            states.contains(&(job.to_owned(), state.to_owned())),
            "{job} {state} in {states:?}"
        );
    }
    assert!(
        states.iter().all(|(_, s)| s != "healthy" && s != "new"),
        "{states:?}"
    );
    // cache.warmup (every 5 minutes) stopped 20 minutes ago: about 4 missed runs, not the
    // thousands a history shorter than its schedule would show.
    let warmup = trouble["data"]["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["jobName"] == "cache.warmup")
        .unwrap();
    let missed = warmup["health"]["missedRuns"]["last7d"].as_u64().unwrap();
    assert!((3..=5).contains(&missed), "{warmup}");
    // Missed since its first missed fire (about 15-20 minutes ago), not the latest one; and
    // the entry says why, as the stats answer does.
    let since =
        chrono::DateTime::parse_from_rfc3339(warmup["health"]["since"].as_str().unwrap()).unwrap();
    let age = chrono::Utc::now().signed_duration_since(since);
    assert!(
        age >= chrono::Duration::minutes(12),
        "missed since {since}: {warmup}"
    );
    assert!(
        warmup["health"]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("No run")),
        "{warmup}"
    );
    let stuck = trouble["data"]["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["jobName"] == "inventory.sync")
        .unwrap();
    assert!(
        !stuck["health"]["stuckExecutionIds"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{stuck}"
    );
    let body = run_curl(&curls[0]);
    assert!(
        body["data"]["queue"]["completed"].as_i64().unwrap() > 0,
        "{body}"
    );
    assert!(!body["data"]["recentExecutions"]
        .as_array()
        .unwrap()
        .is_empty());

    let nats_pid = Command::new("sh")
        .arg("-c")
        .arg(format!("pgrep -f '[n]ats-server.*-p {nats_port}'"))
        .output()
        .unwrap();
    assert!(
        !nats_pid.stdout.is_empty(),
        "the demo started its own nats-server"
    );
    Command::new("kill")
        .args(["-INT", &demo.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = demo.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the demo did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let left = Command::new("sh")
        .arg("-c")
        .arg(format!("pgrep -f '[n]ats-server.*-p {nats_port}'"))
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "nats-server left running after Ctrl-C"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", listen_port)).is_err(),
        "the API still listens"
    );
}
