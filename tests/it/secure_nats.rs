//! A secured NATS, as production runs it: accounts with user/password and nkey users, token
//! authentication, and mutual TLS with a private CA (certificates made here with `openssl`).
//! Every command that connects is run against it (`serve`, `publish`, `run`, `watch`,
//! `rebuild`); refused credentials and an untrusted CA fail with the sentences the README
//! states, and no secret shows up in a log line, an error, `/readyz` or `/metrics`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::helpers::*;

const PASSWORD: &str = "s3cret-pa55word";
const NATS_TOKEN: &str = "t0ken-for-jobstats";

/// A nats-server of this test started with `config` (auth and TLS blocks), JetStream on.
struct SecuredNats {
    server: jobstats::nats_server::JetStreamServer,
    _dir: TempDir,
}

impl SecuredNats {
    fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.conf");
        std::fs::write(&path, config).unwrap();
        let server = jobstats::nats_server::JetStreamServer::start_with_config(
            &nats_server_binary(),
            dir.path(),
            &path,
        )
        .expect("start the secured nats-server");
        SecuredNats { server, _dir: dir }
    }

    /// `nats://127.0.0.1:PORT` (or `tls://…`).
    fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}", self.server.port())
    }
}

/// The account config: one JetStream account with a password user and an nkey user.
fn accounts_config(nkey_public: &str) -> String {
    format!(
        r#"accounts {{
  JOBS {{
    jetstream: enabled
    users: [
      {{ user: js, password: "{PASSWORD}" }}
      {{ nkey: {nkey_public} }}
    ]
  }}
}}
"#
    )
}

/// `jobstats <args>` with exactly `env` for NATS (nothing inherited from the machine).
fn jobstats(env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("JOBSTATS_NATS_URL")
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run jobstats")
}

fn publish_args(job: &str, kind: &str, execution: &str) -> Vec<String> {
    [
        "publish",
        kind,
        "--tenant",
        TENANT,
        "--job",
        job,
        "--execution",
        execution,
    ]
    .map(str::to_owned)
    .to_vec()
}

fn publish(env: &[(&str, &str)], job: &str, kind: &str, execution: &str) -> Output {
    let args = publish_args(job, kind, execution);
    jobstats(env, &args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The error a one-shot command exits with; it must be non-zero and hold no secret.
fn refusal(output: &Output, secrets: &[&str]) -> String {
    assert!(!output.status.success(), "expected a refusal: {output:?}");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        stderr(output)
    );
    for secret in secrets {
        assert!(!text.contains(secret), "a secret leaked into: {text}");
    }
    text
}

fn write_secret(dir: &Path, name: &str, value: &str) -> PathBuf {
    let path = dir.join(name);
    // With the trailing newline `echo` and Kubernetes secrets often have.
    std::fs::write(&path, format!("{value}\n")).unwrap();
    path
}

/// Waits for `serve` to be connected and caught up (it has created the stream by then).
async fn wait_ready(serve: &ServeProcess) {
    let http = reqwest::Client::new();
    let readyz = match serve.admin {
        Some(_) => serve.admin_url("/readyz"),
        None => serve.url("/readyz"),
    };
    wait_for("serve ready", Duration::from_secs(30), async || {
        let body: serde_json::Value = match http.get(&readyz).send().await {
            Ok(response) => response.json().await.unwrap_or_default(),
            Err(_) => return false,
        };
        body["status"] == "ready"
    })
    .await;
}

async fn wait_for(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn every_command_authenticates_with_passwords_and_nkeys_and_no_secret_leaks() {
    let user_key = nkeys::KeyPair::new_user();
    let nats = SecuredNats::start(&accounts_config(&user_key.public_key()));
    let url = nats.url("nats");
    let dir = tempfile::tempdir().unwrap();
    let password_file = write_secret(dir.path(), "password", PASSWORD);
    let seed_file = write_secret(dir.path(), "user.nk", &user_key.seed().unwrap());
    let password_file = password_file.to_str().unwrap();
    let seed_file = seed_file.to_str().unwrap();

    // serve: user and password from a file (a Kubernetes secret).
    let log_path = dir.path().join("serve.log");
    let admin = ServeProcess::admin_env();
    let serve = ServeProcess::start_logging(
        &url,
        &dir.path().join("stats.db"),
        &[
            ("JOBSTATS_NATS_USER", "js"),
            ("JOBSTATS_NATS_PASSWORD_FILE", password_file),
            ("JOBSTATS_ADMIN_LISTEN", &admin),
            ("RUST_LOG", "info"),
        ],
        std::fs::File::create(&log_path).unwrap(),
    );
    let http = reqwest::Client::new();
    wait_ready(&serve).await;

    // publish: the password in the environment; then inside the URL.
    let env_password = [
        ("JOBSTATS_NATS_URL", url.as_str()),
        ("JOBSTATS_NATS_USER", "js"),
        ("JOBSTATS_NATS_PASSWORD", PASSWORD),
    ];
    let output = publish(&env_password, "secured", "started", "r1");
    assert!(output.status.success(), "{}", stderr(&output));
    let in_url = format!("nats://js:{PASSWORD}@127.0.0.1:{}", nats.server.port());
    let output = publish(
        &[("JOBSTATS_NATS_URL", in_url.as_str())],
        "secured",
        "completed",
        "r1",
    );
    assert!(output.status.success(), "{}", stderr(&output));

    // watch: an nkey seed file; it prints the job's change once `run` below fails.
    let seed_env = [
        ("JOBSTATS_NATS_URL", url.as_str()),
        ("JOBSTATS_NATS_NKEY_SEED_FILE", seed_file),
    ];
    let mut watch = Command::new(BIN)
        .args(["watch", "--tenant", TENANT])
        .env("RUST_LOG", "warn")
        .envs(seed_env)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let watched = lines_of(&mut watch);

    // run: the nkey too; its command fails, so the job turns failing.
    let output = jobstats(
        &seed_env,
        &[
            "run",
            "--tenant",
            TENANT,
            "--job",
            "nkeyed",
            "--print-sequence",
            "--",
            "false",
        ],
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let printed = String::from_utf8_lossy(&output.stdout);
    let sequence: u64 = printed
        .lines()
        .find_map(|l| l.strip_prefix("sequence="))
        .unwrap_or_else(|| panic!("no sequence in {printed:?}: {}", stderr(&output)))
        .parse()
        .unwrap();
    serve.wait_applied(sequence).await;
    let line = watched
        .recv_timeout(Duration::from_secs(30))
        .expect("watch printed the change");
    assert!(
        line.contains("nkeyed") && line.contains("failing"),
        "{line}"
    );
    let _ = watch.kill();

    let stats = serve.stats("secured").await;
    assert_eq!(stats["data"]["queue"]["completed"], 1, "{stats}");

    // rebuild: a point-in-time copy with the nkey.
    let copy = dir.path().join("copy.db");
    let db = dir.path().join("stats.db");
    let output = jobstats(
        &seed_env,
        &[
            "rebuild",
            "--db",
            db.to_str().unwrap(),
            "--output",
            copy.to_str().unwrap(),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(copy.exists());

    // Nothing secret in what serve shows or says.
    let readyz = http.get(serve.admin_url("/readyz")).send().await.unwrap();
    let readyz = readyz.text().await.unwrap();
    let metrics = http.get(serve.admin_url("/metrics")).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    drop(serve);
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("connected to NATS"), "{log}");
    for text in [&readyz, &metrics, &log] {
        assert!(!text.contains(PASSWORD), "the password leaked: {text}");
    }
}

#[tokio::test]
async fn refused_credentials_name_their_variable_and_serve_reports_them_in_readyz() {
    let user_key = nkeys::KeyPair::new_user();
    let nats = SecuredNats::start(&accounts_config(&user_key.public_key()));
    let url = nats.url("nats");
    let dir = tempfile::tempdir().unwrap();
    let wrong = "not-the-pa55word";

    let output = publish(
        &[
            ("JOBSTATS_NATS_URL", url.as_str()),
            ("JOBSTATS_NATS_USER", "js"),
            ("JOBSTATS_NATS_PASSWORD", wrong),
        ],
        "secured",
        "started",
        "r1",
    );
    let text = refusal(&output, &[wrong]);
    assert!(
        text.contains("NATS refused the credentials from JOBSTATS_NATS_PASSWORD"),
        "{text}"
    );

    let in_url = format!("nats://js:{wrong}@127.0.0.1:{}", nats.server.port());
    let output = publish(
        &[("JOBSTATS_NATS_URL", in_url.as_str())],
        "secured",
        "started",
        "r1",
    );
    let text = refusal(&output, &[wrong]);
    assert!(
        text.contains("NATS refused the credentials from JOBSTATS_NATS_URL"),
        "{text}"
    );

    let output = publish(
        &[("JOBSTATS_NATS_URL", url.as_str())],
        "secured",
        "started",
        "r1",
    );
    let text = refusal(&output, &[]);
    assert!(
        text.contains("NATS requires credentials and none are set"),
        "{text}"
    );

    // A seed that is not this server's user.
    let stranger = write_secret(
        dir.path(),
        "stranger.nk",
        &nkeys::KeyPair::new_user().seed().unwrap(),
    );
    let output = publish(
        &[
            ("JOBSTATS_NATS_URL", url.as_str()),
            ("JOBSTATS_NATS_NKEY_SEED_FILE", stranger.to_str().unwrap()),
        ],
        "secured",
        "started",
        "r1",
    );
    let text = refusal(&output, &[]);
    assert!(
        text.contains("NATS refused the credentials from JOBSTATS_NATS_NKEY_SEED_FILE"),
        "{text}"
    );

    // Both forms of one secret, or two ways of authenticating: refused before connecting.
    let password_file = write_secret(dir.path(), "password", PASSWORD);
    let output = publish(
        &[
            ("JOBSTATS_NATS_URL", url.as_str()),
            ("JOBSTATS_NATS_USER", "js"),
            ("JOBSTATS_NATS_PASSWORD", PASSWORD),
            (
                "JOBSTATS_NATS_PASSWORD_FILE",
                password_file.to_str().unwrap(),
            ),
        ],
        "secured",
        "started",
        "r1",
    );
    let text = refusal(&output, &[PASSWORD]);
    assert!(
        text.contains("set JOBSTATS_NATS_PASSWORD or JOBSTATS_NATS_PASSWORD_FILE, not both"),
        "{text}"
    );
    let output = publish(
        &[
            ("JOBSTATS_NATS_URL", url.as_str()),
            ("JOBSTATS_NATS_USER", "js"),
            ("JOBSTATS_NATS_PASSWORD", PASSWORD),
            ("JOBSTATS_NATS_TOKEN", NATS_TOKEN),
        ],
        "secured",
        "started",
        "r1",
    );
    let text = refusal(&output, &[PASSWORD, NATS_TOKEN]);
    assert!(text.contains("not several"), "{text}");

    // serve keeps retrying; /readyz says why it is not ready, and the log says it once.
    let wrong_file = write_secret(dir.path(), "wrong", wrong);
    let log_path = dir.path().join("serve.log");
    let admin = ServeProcess::admin_env();
    let serve = ServeProcess::start_logging(
        &url,
        &dir.path().join("stats.db"),
        &[
            ("JOBSTATS_NATS_USER", "js"),
            ("JOBSTATS_NATS_PASSWORD_FILE", wrong_file.to_str().unwrap()),
            ("JOBSTATS_ADMIN_LISTEN", &admin),
        ],
        std::fs::File::create(&log_path).unwrap(),
    );
    let http = reqwest::Client::new();
    let mut readyz = serde_json::Value::Null;
    wait_for("readyz to say why", Duration::from_secs(30), async || {
        if let Ok(response) = http.get(serve.admin_url("/readyz")).send().await {
            readyz = response.json().await.unwrap_or_default();
        }
        readyz["natsError"].is_string()
    })
    .await;
    assert_eq!(readyz["status"], "not_ready", "{readyz}");
    assert_eq!(readyz["natsConnected"], false, "{readyz}");
    let reason = readyz["natsError"].as_str().unwrap();
    assert!(
        reason.contains("NATS refused the credentials from JOBSTATS_NATS_PASSWORD_FILE"),
        "{reason}"
    );
    drop(serve);
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(!log.contains(wrong), "the password leaked: {log}");
    let said = log.matches("NATS refused the credentials").count();
    assert_eq!(said, 1, "the refusal is logged once, not per retry: {log}");
}

#[tokio::test]
async fn token_authentication_from_the_variable_or_its_file() {
    let nats = SecuredNats::start(&format!(
        "authorization {{\n  token: \"{NATS_TOKEN}\"\n}}\n"
    ));
    let url = nats.url("nats");
    let dir = tempfile::tempdir().unwrap();
    let token_file = write_secret(dir.path(), "token", NATS_TOKEN);
    let serve = ServeProcess::start_with_env(
        &url,
        &dir.path().join("stats.db"),
        &[("JOBSTATS_NATS_TOKEN_FILE", token_file.to_str().unwrap())],
    );
    wait_ready(&serve).await;
    for env in [
        ("JOBSTATS_NATS_TOKEN", NATS_TOKEN),
        ("JOBSTATS_NATS_TOKEN_FILE", token_file.to_str().unwrap()),
    ] {
        let output = publish(
            &[("JOBSTATS_NATS_URL", url.as_str()), env],
            "tokened",
            "started",
            env.0,
        );
        assert!(output.status.success(), "{}: {}", env.0, stderr(&output));
    }
    let output = publish(
        &[
            ("JOBSTATS_NATS_URL", url.as_str()),
            ("JOBSTATS_NATS_TOKEN", "wrong-token-value"),
        ],
        "tokened",
        "started",
        "r3",
    );
    let text = refusal(&output, &["wrong-token-value"]);
    assert!(
        text.contains("NATS refused the credentials from JOBSTATS_NATS_TOKEN"),
        "{text}"
    );
}

#[tokio::test]
async fn mutual_tls_with_a_private_ca_and_an_untrusted_one_refused() {
    let pki = Pki::make();
    let nats = SecuredNats::start(&format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n  timeout: 2\n}}\n",
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
    ));
    let (ca, cert, key, rogue) = (
        pki.path("ca.pem"),
        pki.path("client.pem"),
        pki.path("client.key"),
        pki.path("rogue-ca.pem"),
    );
    let dir = tempfile::tempdir().unwrap();
    let tls_url = nats.url("tls");
    let plain_url = nats.url("nats");
    let mutual = |url: &str, ca: &str| {
        [
            ("JOBSTATS_NATS_URL", url.to_owned()),
            ("JOBSTATS_NATS_TLS_CA_FILE", ca.to_owned()),
            ("JOBSTATS_NATS_TLS_CERT_FILE", cert.clone()),
            ("JOBSTATS_NATS_TLS_KEY_FILE", key.clone()),
        ]
    };
    let as_refs = |env: &[(&'static str, String)]| {
        env.iter().map(|(k, v)| (*k, v.clone())).collect::<Vec<_>>()
    };

    // serve over mutual TLS (it creates the stream).
    let env = as_refs(&mutual(&tls_url, &ca));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let serve = ServeProcess::start_with_env(&tls_url, &dir.path().join("stats.db"), &env);
    wait_ready(&serve).await;

    // A tls:// URL, and a nats:// URL where the CA variable alone makes TLS required.
    for url in [&tls_url, &plain_url] {
        let env = as_refs(&mutual(url, &ca));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let output = publish(&env, "tls-job", "started", url);
        assert!(output.status.success(), "{url}: {}", stderr(&output));
    }
    let output = publish(&env, "tls-job", "completed", &tls_url);
    assert!(output.status.success(), "{}", stderr(&output));
    let http = reqwest::Client::new();
    wait_for(
        "the runs over TLS projected",
        Duration::from_secs(30),
        async || {
            let Ok(response) = http
                .get(serve.url("/api/v1/admin/jobs/tls-job/stats"))
                .bearer_auth(admin_token())
                .header("x-tenantid", TENANT)
                .send()
                .await
            else {
                return false;
            };
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            body["data"]["queue"]["completed"] == 1
        },
    )
    .await;
    drop(serve);

    // The server's certificate does not chain to the CA given: refused, saying so.
    let env = as_refs(&mutual(&tls_url, &rogue));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let text = refusal(&publish(&env, "tls-job", "started", "rogue"), &[]);
    assert!(
        text.contains("TLS with NATS failed; the server's certificate must chain to the CA in JOBSTATS_NATS_TLS_CA_FILE"),
        "{text}"
    );
    // serve with that CA keeps retrying; /readyz has the whole reason.
    let admin = ServeProcess::admin_env();
    let mut env = env.clone();
    env.push(("JOBSTATS_ADMIN_LISTEN", &admin));
    let serve = ServeProcess::start_with_env(&tls_url, &dir.path().join("rogue.db"), &env);
    let mut readyz = serde_json::Value::Null;
    wait_for("readyz to say why", Duration::from_secs(30), async || {
        if let Ok(response) = http.get(serve.admin_url("/readyz")).send().await {
            readyz = response.json().await.unwrap_or_default();
        }
        readyz["natsError"].is_string()
    })
    .await;
    assert_eq!(readyz["status"], "not_ready", "{readyz}");
    let reason = readyz["natsError"].as_str().unwrap();
    assert!(
        reason.contains("TLS with NATS failed") && reason.contains("JOBSTATS_NATS_TLS_CA_FILE"),
        "{reason}"
    );
    drop(serve);
    // No CA given: the system's roots do not know the private CA either.
    let text = refusal(
        &publish(
            &[("JOBSTATS_NATS_URL", tls_url.as_str())],
            "tls-job",
            "started",
            "roots",
        ),
        &[],
    );
    assert!(text.contains("TLS with NATS failed"), "{text}");
    assert!(text.contains("system's roots"), "{text}");
    // The server requires a client certificate.
    let text = refusal(
        &publish(
            &[
                ("JOBSTATS_NATS_URL", tls_url.as_str()),
                ("JOBSTATS_NATS_TLS_CA_FILE", ca.as_str()),
            ],
            "tls-job",
            "started",
            "no-client-cert",
        ),
        &[],
    );
    assert!(text.contains("cannot connect to NATS"), "{text}");
}

/// Decentralised auth as `nsc` sets it up: an operator, an account with JetStream, a user;
/// the server trusts the operator and holds the account (memory resolver); the client has a
/// `.creds` file. The JWTs are signed here with nkeys, as nats-io/jwt v2 encodes them.
struct Decentralised {
    server_config: String,
    creds: String,
    /// A user of the same account whose JWT the server never saw signed by it (a stranger).
    stranger_creds: String,
}

fn nats_jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    use base64::Engine;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = serde_json::json!({"typ": "JWT", "alg": "ed25519-nkey"});
    let claims = serde_json::json!({
        "jti": uuid::Uuid::new_v4().simple().to_string().to_uppercase(),
        "iat": chrono::Utc::now().timestamp(),
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let signed = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = issuer.sign(signed.as_bytes()).expect("sign");
    format!("{signed}.{}", b64(&signature))
}

fn creds_file(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )
}

impl Decentralised {
    fn make() -> Self {
        let operator = nkeys::KeyPair::new_operator();
        let account = nkeys::KeyPair::new_account();
        let user = nkeys::KeyPair::new_user();
        // JetStream needs a system account in operator mode.
        let system = nkeys::KeyPair::new_account();
        let operator_jwt = nats_jwt(
            &operator,
            &operator.public_key(),
            "jobstats-test-operator",
            serde_json::json!({"type": "operator", "version": 2,
                "system_account": system.public_key()}),
        );
        let system_jwt = nats_jwt(
            &operator,
            &system.public_key(),
            "SYS",
            serde_json::json!({"type": "account", "version": 2}),
        );
        let unlimited = serde_json::json!({
            "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
            "wildcards": true, "conn": -1, "leaf": -1,
            "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
        });
        let account_jwt = nats_jwt(
            &operator,
            &account.public_key(),
            "JOBS",
            serde_json::json!({"type": "account", "version": 2, "limits": unlimited}),
        );
        let user_claims = serde_json::json!({"type": "user", "version": 2, "subs": -1, "data": -1, "payload": -1});
        let user_jwt = nats_jwt(
            &account,
            &user.public_key(),
            "jobstats",
            user_claims.clone(),
        );
        // Signed by an account the server does not know.
        let stranger = nkeys::KeyPair::new_user();
        let stranger_jwt = nats_jwt(
            &nkeys::KeyPair::new_account(),
            &stranger.public_key(),
            "stranger",
            user_claims,
        );
        Decentralised {
            server_config: format!(
                "operator: {operator_jwt}\nsystem_account: {system}\nresolver: MEMORY\n\
                 resolver_preload: {{\n  {system}: {system_jwt}\n  {account}: {account_jwt}\n}}\n",
                system = system.public_key(),
                account = account.public_key(),
            ),
            creds: creds_file(&user_jwt, &user.seed().unwrap()),
            stranger_creds: creds_file(&stranger_jwt, &stranger.seed().unwrap()),
        }
    }
}

#[tokio::test]
async fn decentralised_auth_with_a_creds_file() {
    let setup = Decentralised::make();
    let nats = SecuredNats::start(&setup.server_config);
    let url = nats.url("nats");
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("jobstats.creds");
    std::fs::write(&creds, &setup.creds).unwrap();
    let creds = creds.to_str().unwrap();
    let env = [("JOBSTATS_NATS_CREDS_FILE", creds)];
    let serve = ServeProcess::start_with_env(&url, &dir.path().join("stats.db"), &env);
    wait_ready(&serve).await;
    let with_creds = [("JOBSTATS_NATS_URL", url.as_str()), env[0]];
    for kind in ["started", "completed"] {
        let output = publish(&with_creds, "creds-job", kind, "r1");
        assert!(output.status.success(), "{kind}: {}", stderr(&output));
    }
    let http = reqwest::Client::new();
    wait_for("the runs projected", Duration::from_secs(30), async || {
        let Ok(response) = http
            .get(serve.url("/api/v1/admin/jobs/creds-job/stats"))
            .bearer_auth(admin_token())
            .header("x-tenantid", TENANT)
            .send()
            .await
        else {
            return false;
        };
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        body["data"]["queue"]["completed"] == 1
    })
    .await;

    let stranger = dir.path().join("stranger.creds");
    std::fs::write(&stranger, &setup.stranger_creds).unwrap();
    let output = publish(
        &[
            ("JOBSTATS_NATS_URL", url.as_str()),
            ("JOBSTATS_NATS_CREDS_FILE", stranger.to_str().unwrap()),
        ],
        "creds-job",
        "started",
        "r2",
    );
    let text = refusal(&output, &[]);
    assert!(
        text.contains("NATS refused the credentials from JOBSTATS_NATS_CREDS_FILE"),
        "{text}"
    );
}
