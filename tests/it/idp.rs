//! A real OpenID provider (`tests/ui/provider.mjs`: the certified `oidc-provider` package,
//! shaped like a Keycloak realm) in front of the real `jobstats serve`: key sets fetched from
//! its JWKS URL (CONTRACT §9) — rotation without a restart, one fetch per 30 s however many
//! unknown key ids arrive, the last good set kept while the provider is down, a provider down
//! at start-up — and the dashboard's sign-in through its login page in Chromium.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;

use crate::helpers::*;

/// The realm the provider plays.
pub const REALM: &str = "acme";
/// The contract's least time between two fetches of one realm's set.
const FETCH_GAP: Duration = Duration::from_secs(30);

/// `node tests/ui/provider.mjs` on its own port; killed on drop.
pub struct Provider {
    child: Child,
    pub port: u16,
    pub issuer: String,
    http: reqwest::Client,
}

impl Provider {
    /// A provider on any free port whose dashboard client redirects to `redirect_uri`.
    pub fn start(redirect_uri: &str, access_token_ttl: Duration) -> Provider {
        Self::start_on(0, redirect_uri, access_token_ttl)
    }

    /// A provider on `port` (0: any free one), with a fresh signing key.
    pub fn start_on(port: u16, redirect_uri: &str, access_token_ttl: Duration) -> Provider {
        let ui = crate::dashboard::node_packages();
        let mut child = Command::new("node")
            .arg(ui.join("provider.mjs"))
            .env("PORT", port.to_string())
            .env("REALM", REALM)
            .env("REDIRECT_URI", redirect_uri)
            .env("TENANT_A", TENANT)
            .env("ACCESS_TOKEN_TTL", access_token_ttl.as_secs().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the identity-provider tests need Node.js 20+ (`node` on PATH)");
        let lines = lines_of(&mut child);
        let ready = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("tests/ui/provider.mjs did not say it was listening within 30 s");
        let ready: Value = serde_json::from_str(&ready).expect("provider's first line is JSON");
        Provider {
            child,
            port: ready["port"].as_u64().expect("port") as u16,
            issuer: ready["issuer"].as_str().expect("issuer").to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// What `serve` needs to fetch this provider's keys the Keycloak way (one URL per realm).
    pub fn jwks_env(&self) -> Vec<(&'static str, String)> {
        Self::jwks_env_on(self.port)
    }

    /// [`Provider::jwks_env`] of a provider on `port`, up or not.
    pub fn jwks_env_on(port: u16) -> Vec<(&'static str, String)> {
        vec![
            (
                "JOBSTATS_JWT_JWKS_URL",
                format!("http://127.0.0.1:{port}/realms/{{realm}}/protocol/openid-connect/certs"),
            ),
            ("JOBSTATS_JWT_REALMS", REALM.to_owned()),
        ]
    }

    /// An access token of the confidential test client (client credentials): a JWT signed with
    /// the provider's current key, system_admin of [`TENANT`].
    pub async fn probe_token(&self) -> String {
        let response = self
            .http
            .post(format!("{}/protocol/openid-connect/token", self.issuer))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", "jobstats-probe"),
                ("client_secret", "probe-secret"),
                ("scope", "jobstats"),
            ])
            .send()
            .await
            .expect("token request");
        assert_eq!(response.status(), 200, "client credentials grant");
        let body: Value = response.json().await.expect("token response");
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    /// Replaces the signing key; returns the new key's id.
    pub async fn rotate(&self) -> String {
        let response = self
            .http
            .post(format!("http://127.0.0.1:{}/test/rotate", self.port))
            .send()
            .await
            .expect("rotate");
        let body: Value = response.json().await.expect("rotate answer");
        body["kids"][0].as_str().expect("kid").to_owned()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `kid` of a token's header.
pub fn kid_of(token: &str) -> String {
    header_of(token)["kid"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn header_of(token: &str) -> Value {
    let header = token.split('.').next().expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .expect("base64url header");
    serde_json::from_slice(&bytes).expect("JSON header")
}

/// `token` with its header's `kid` replaced: a key no set holds (the signature no longer
/// matters: the key is looked up first).
fn with_kid(token: &str, kid: &str) -> String {
    let mut header = header_of(token);
    header["kid"] = Value::from(kid);
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(header.to_string());
    let rest = token.split_once('.').expect("a JWT").1;
    format!("{header}.{rest}")
}

/// `jobstats_jwks_fetches_total` by outcome: (ok, error).
async fn fetches(serve: &ServeProcess) -> (u64, u64) {
    let text = serve
        .http
        .get(serve.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let count = |outcome: &str| {
        let series = format!("jobstats_jwks_fetches_total{{outcome=\"{outcome}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&series))
            .map_or(0, |n| n.trim().parse().expect("a count"))
    };
    (count("ok"), count("error"))
}

/// Waits until the fetch counters satisfy `done`; returns them.
async fn wait_fetches(serve: &ServeProcess, done: impl Fn((u64, u64)) -> bool) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let counts = fetches(serve).await;
        if done(counts) {
            return counts;
        }
        assert!(
            Instant::now() < deadline,
            "JWKS fetches stuck at (ok, error) = {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The job list of [`TENANT`] with `token`: its status.
async fn jobs_status(serve: &ServeProcess, token: &str) -> u16 {
    serve
        .http
        .get(serve.url("/api/v1/admin/jobs"))
        .bearer_auth(token)
        .header("x-tenantid", TENANT)
        .send()
        .await
        .expect("jobs request")
        .status()
        .as_u16()
}

/// Polls with `token` until it is accepted; returns how long that took. Every refusal before
/// must be a 401.
async fn accepted_within(serve: &ServeProcess, token: &str, patience: Duration) -> Duration {
    let first_use = Instant::now();
    loop {
        match jobs_status(serve, token).await {
            200 => return first_use.elapsed(),
            401 => {}
            other => panic!("token answered {other}"),
        }
        assert!(
            first_use.elapsed() < patience,
            "token not accepted within {patience:?} of its first use"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// NATS, the stream and a `serve` verifying with `provider`'s keys (and the tests' HS256 secret).
async fn serve_with(
    provider_env: &[(&'static str, String)],
) -> (NatsServer, tempfile::TempDir, ServeProcess) {
    let nats = NatsServer::start();
    nats.ensure_stream().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let env: Vec<(&str, &str)> = provider_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let serve = ServeProcess::start_with_env(&nats.url(), &dir.path().join("db"), &env);
    (nats, dir, serve)
}

/// Sends `count` requests with made-up key ids, `parallel` at a time; each must be a 401.
async fn flood_unknown_kids(serve: &ServeProcess, token: &str, count: usize, parallel: usize) {
    use futures::StreamExt;
    let statuses: Vec<u16> = futures::stream::iter(0..count)
        .map(|i| {
            let forged = with_kid(token, &format!("no-such-key-{i}"));
            async move { jobs_status(serve, &forged).await }
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    assert!(
        statuses.iter().all(|s| *s == 401),
        "a token with an unknown kid was not refused: {:?}",
        statuses.iter().filter(|s| **s != 401).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_signing_key_is_accepted_within_30_seconds_of_its_first_use_without_a_restart() {
    let provider = Provider::start("http://127.0.0.1:9/ui/", Duration::from_secs(300));
    let (_nats, _dir, serve) = serve_with(&provider.jwks_env()).await;
    wait_fetches(&serve, |(ok, _)| ok == 1).await;
    let before = provider.probe_token().await;
    assert_eq!(
        jobs_status(&serve, &before).await,
        200,
        "the provider's token"
    );
    assert_eq!(
        jobs_status(&serve, &admin_token()).await,
        200,
        "static keys work beside the key set"
    );

    let new_kid = provider.rotate().await;
    let after = provider.probe_token().await;
    assert_eq!(kid_of(&after), new_kid);
    assert_ne!(kid_of(&after), kid_of(&before));
    let took = accepted_within(&serve, &after, FETCH_GAP + Duration::from_secs(2)).await;
    println!("rotated key accepted {took:?} after its first use");
    assert!(took <= FETCH_GAP + Duration::from_secs(1), "{took:?}");
    assert_eq!(
        fetches(&serve).await,
        (2, 0),
        "the start-up fetch and one for the new kid"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_key_ids_fetches_the_key_set_at_most_once_per_30_seconds() {
    let provider = Provider::start("http://127.0.0.1:9/ui/", Duration::from_secs(300));
    let (_nats, _dir, serve) = serve_with(&provider.jwks_env()).await;
    wait_fetches(&serve, |(ok, _)| ok == 1).await;
    let fetched_at = Instant::now();
    let token = provider.probe_token().await;

    // Just after the start-up fetch: no fetch at all.
    let started = Instant::now();
    flood_unknown_kids(&serve, &token, 1_000, 100).await;
    let first_flood = started.elapsed();
    let after_first = fetches(&serve).await;
    println!("flood 1: 1000 requests in {first_flood:?}, fetches (ok, error) {after_first:?}");
    assert!(first_flood < FETCH_GAP, "the flood must fit in one gap");
    assert_eq!(after_first, (1, 0), "no fetch within 30 s of the last one");

    // Once the gap has passed (the contract's 30 s: nothing to wait on but the clock), 100
    // requests at a time all need the set again: exactly one fetch serves them.
    tokio::time::sleep((fetched_at + FETCH_GAP + Duration::from_secs(1)) - Instant::now()).await;
    let started = Instant::now();
    flood_unknown_kids(&serve, &token, 1_000, 100).await;
    let second_flood = started.elapsed();
    let after_second = fetches(&serve).await;
    println!("flood 2: 1000 requests in {second_flood:?}, fetches (ok, error) {after_second:?}");
    assert!(second_flood < FETCH_GAP, "the flood must fit in one gap");
    assert_eq!(after_second, (2, 0), "one fetch for the whole flood");
    assert_eq!(
        jobs_status(&serve, &token).await,
        200,
        "the real key still works"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_good_key_set_keeps_working_while_the_provider_is_down() {
    let mut provider = Provider::start("http://127.0.0.1:9/ui/", Duration::from_secs(300));
    let (_nats, _dir, serve) = serve_with(&provider.jwks_env()).await;
    wait_fetches(&serve, |(ok, _)| ok == 1).await;
    // Two tokens: one used now, one first used after the provider is gone (so it is not
    // answered from the verified-token cache).
    let used = provider.probe_token().await;
    let unused = provider.probe_token().await;
    assert_eq!(jobs_status(&serve, &used).await, 200);
    provider.stop();

    // An unknown kid makes serve fetch again once the gap has passed; that fetch fails.
    let deadline = Instant::now() + FETCH_GAP + Duration::from_secs(10);
    while fetches(&serve).await.1 == 0 {
        assert!(Instant::now() < deadline, "no fetch was tried");
        assert_eq!(
            jobs_status(&serve, &with_kid(&used, "rotated-away")).await,
            401
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(fetches(&serve).await, (1, 1));
    assert_eq!(
        jobs_status(&serve, &unused).await,
        200,
        "a failed fetch keeps the last good set"
    );
    assert_eq!(jobs_status(&serve, &used).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_starts_while_the_provider_is_down_and_takes_its_keys_once_it_is_up() {
    // The provider's port, then the provider gone before serve starts.
    let port = Provider::start("http://127.0.0.1:9/ui/", Duration::from_secs(300)).port;
    let env = Provider::jwks_env_on(port);
    let (_nats, _dir, serve) = serve_with(&env).await;
    wait_fetches(&serve, |(_, error)| error == 1).await;
    assert_eq!(
        jobs_status(&serve, &admin_token()).await,
        200,
        "serve runs, and its static keys verify"
    );

    let provider = Provider::start_on(port, "http://127.0.0.1:9/ui/", Duration::from_secs(300));
    let token = provider.probe_token().await;
    let took = accepted_within(&serve, &token, FETCH_GAP + Duration::from_secs(5)).await;
    println!("provider's token accepted {took:?} after its first use");
    assert_eq!(fetches(&serve).await.0, 1);
}

/// Two jobs of [`TENANT`], one of [`OTHER_TENANT`]; returns the last stream sequence.
async fn seed(nats: &NatsServer) -> u64 {
    let publisher = nats.publisher().await;
    let now = chrono::Utc::now();
    let mut events = Vec::new();
    for (i, job) in ["nightly-report", "payments.reconcile"].iter().enumerate() {
        let start = now - chrono::Duration::minutes(30 + i as i64);
        events.extend(execution_events(job, &format!("e{i}"), start, 1_000, true));
    }
    let other = jobstats::publish::EventBuilder::new(OTHER_TENANT, "secret-job")
        .and_then(|job| job.execution("s0"))
        .expect("valid job");
    events.push(
        other
            .at(now - chrono::Duration::minutes(5))
            .started()
            .expect("started"),
    );
    publish_all(&publisher, &events).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_signs_in_with_the_provider_renews_its_token_and_signs_out_in_a_real_browser()
{
    let (chromium, ui) = crate::dashboard::browser_tools();
    // The serve's address first: the provider's client redirects there.
    let serve_port = free_port();
    let dashboard = format!("http://127.0.0.1:{serve_port}/ui/");
    // Short-lived access tokens, so the page has to renew one while the test watches.
    let provider = Provider::start(&dashboard, Duration::from_secs(20));
    let nats = NatsServer::start();
    nats.ensure_stream().await;
    let last = seed(&nats).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut env = provider.jwks_env();
    env.extend([
        (
            "JOBSTATS_JWT_ISSUER",
            format!("http://127.0.0.1:{}/realms/{{realm}}", provider.port),
        ),
        ("JOBSTATS_UI_OIDC_ISSUER", provider.issuer.clone()),
        ("JOBSTATS_UI_OIDC_CLIENT_ID", "jobstats-dashboard".into()),
        ("JOBSTATS_UI_OIDC_SCOPES", "openid jobstats".into()),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let serve = ServeProcess::start_on(serve_port, &nats.url(), &dir.path().join("db"), &env);
    serve.wait_applied(last).await;

    let config = serve
        .http
        .get(serve.url("/ui/config.json"))
        .send()
        .await
        .expect("config.json");
    assert_eq!(config.status(), 200);
    let page = serve
        .http
        .get(serve.url("/ui/"))
        .send()
        .await
        .expect("page");
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains(&format!(
            "connect-src 'self' http://127.0.0.1:{};",
            provider.port
        )),
        "{csp}"
    );
    let config: Value = config.json().await.expect("json");
    assert_eq!(
        config,
        serde_json::json!({"oidc": {"issuer": provider.issuer, "clientId": "jobstats-dashboard",
                                    "scopes": ["openid", "jobstats"]}})
    );

    let mut paste = jobstats::api::auth::DevClaims::new(
        "paster",
        &["system_admin"],
        Some(TENANT),
        Duration::from_secs(600),
    );
    paste.iss = Some(provider.issuer.clone());
    let paste = jobstats::api::auth::mint_hs256(SECRET, &paste).expect("token");
    let shots = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
    let output = Command::new("node")
        .arg(ui.join("signin.mjs"))
        .env("JOBSTATS_URL", format!("http://{}", serve.address))
        .env("ISSUER", &provider.issuer)
        .env("TENANT_A", TENANT)
        .env("JOBS_A", r#"["nightly-report","payments.reconcile"]"#)
        .env(
            "TENANTS",
            serde_json::json!([TENANT, OTHER_TENANT]).to_string(),
        )
        .env("TOKEN_PASTE", paste)
        .env("SCREENSHOT_DIR", &shots)
        .env("CHROMIUM", &chromium)
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
        "browser sign-in checks failed:\n{stdout}\n{stderr}"
    );
}

#[tokio::test]
async fn without_sign_in_settings_config_json_says_so() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let serve = ServeProcess::start(&nats.url(), &dir.path().join("db"));
    let response = serve
        .http
        .get(serve.url("/ui/config.json"))
        .send()
        .await
        .expect("config.json");
    assert_eq!(response.status(), 200);
    let config: Value = response.json().await.expect("json");
    assert_eq!(config, serde_json::json!({"oidc": null}));
}

#[test]
fn bad_key_set_and_sign_in_settings_stop_start_up_naming_the_variable() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("JOBSTATS_JWT_JWKS_URL", "http://kc.example/certs")],
            "JOBSTATS_JWT_JWKS_URL",
        ),
        (
            &[(
                "JOBSTATS_JWT_JWKS_URL",
                "https://kc.example/realms/{realm}/certs",
            )],
            "JOBSTATS_JWT_REALMS",
        ),
        (
            &[("JOBSTATS_UI_OIDC_ISSUER", "https://kc.example/realms/acme")],
            "JOBSTATS_UI_OIDC_CLIENT_ID",
        ),
        (
            &[
                ("JOBSTATS_UI_OIDC_ISSUER", "http://kc.example/realms/acme"),
                ("JOBSTATS_UI_OIDC_CLIENT_ID", "jobstats"),
            ],
            "JOBSTATS_UI_OIDC_ISSUER",
        ),
    ];
    for (env, variable) in cases {
        let dir = tempfile::tempdir().expect("temp dir");
        let output = Command::new(BIN)
            .arg("serve")
            .env("JOBSTATS_NATS_URL", "nats://127.0.0.1:1")
            .env("JOBSTATS_DB_PATH", dir.path().join("db"))
            .env("JOBSTATS_LISTEN", format!("127.0.0.1:{}", free_port()))
            .env("JOBSTATS_JWT_HS256_SECRET", SECRET)
            .envs(env.iter().copied())
            .output()
            .expect("run serve");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{env:?} started");
        assert!(stderr.contains(variable), "{env:?}: {stderr}");
    }
}
