//! Test fixtures: a real `nats-server -js` per test, the real `jobstats` binary or the real
//! in-process server on a free port, real SQLite files, tokens minted here.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use jobstats::api::auth::AuthSettings;
use jobstats::api::auth::{mint_hs256, DevClaims};
use jobstats::publish::{EventBuilder, Publisher, RunEnd};
use jobstats::service::{ServeConfig, Shutdown};
use tempfile::TempDir;

pub const TENANT: &str = "3f0c7f7e-8a51-4a52-9f7e-0d6a4c1b2e11";
pub const OTHER_TENANT: &str = "9b2d6a1e-4c3f-4e8a-b1d2-7f6e5d4c3b2a";
pub const SECRET: &str = "test-secret-0123456789abcdef0123456789";
pub const BIN: &str = env!("CARGO_BIN_EXE_jobstats");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .expect("local address")
        .port()
}

/// The nats-server binary: `NATS_SERVER_BIN`, else PATH (installed when missing, once).
pub fn nats_server_binary() -> PathBuf {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY
        .get_or_init(|| {
            jobstats::nats_server::find_or_install(std::path::Path::new(env!(
                "CARGO_TARGET_TMPDIR"
            )))
            .unwrap_or_else(|e| panic!("{e}"))
        })
        .clone()
}

/// A `nats-server -js` of this test: own port, own store, killed and deleted on drop.
pub struct NatsServer {
    server: jobstats::nats_server::JetStreamServer,
    _store: TempDir,
}

impl NatsServer {
    /// A nats-server of this test's own, on a port it picks itself, with a fresh store.
    pub fn start() -> Self {
        let store = tempfile::tempdir().expect("temp dir");
        let server = jobstats::nats_server::JetStreamServer::start(
            &nats_server_binary(),
            store.path(),
            None,
        )
        .expect("start nats-server");
        NatsServer {
            server,
            _store: store,
        }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Kills the server (SIGKILL).
    pub fn stop(&mut self) {
        self.server.stop();
    }

    /// Kills the server and starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.server.restart().expect("restart nats-server");
    }

    /// Kills the server, deletes its store (every stream is gone) and starts it again on the
    /// same port: what a NATS without persistent storage looks like after a restart.
    pub fn restart_empty(&mut self) {
        self.server.stop();
        std::fs::remove_dir_all(self._store.path().join("jetstream")).expect("delete the store");
        self.server.restart().expect("restart nats-server");
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .expect("connect to test NATS")
    }

    pub async fn publisher(&self) -> Publisher {
        Publisher::new(self.client().await)
    }

    /// Creates the stream the way `serve` does.
    pub async fn ensure_stream(&self) {
        let js = jetstream::new(self.client().await);
        jobstats::stream::ensure_stream(&js, &jobstats::stream::StreamSpec::single("JOB_EVENTS"))
            .await
            .expect("create stream");
    }
}

pub fn token(roles: &[&str], tenant: Option<&str>) -> String {
    let claims = DevClaims::new("tester", roles, tenant, Duration::from_secs(600));
    mint_hs256(SECRET, &claims).expect("mint token")
}

pub fn admin_token() -> String {
    token(&["system_admin"], Some(TENANT))
}

/// The in-process server (`service::serve`) on a free port.
pub struct App {
    pub address: SocketAddr,
    /// The admin listener: `/readyz` and `/metrics` with their details (never on the API port).
    pub admin: SocketAddr,
    pub http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Verification of the HS256 tokens the tests sign with [`SECRET`].
pub fn jwt_options() -> AuthSettings {
    AuthSettings {
        hs256_secret: Some(SECRET.into()),
        public_key_file: None,
        issuer: None,
        realms: None,
        audience: None,
        jwks_url: None,
    }
}

impl App {
    pub async fn spawn(nats_url: &str, db_path: &Path) -> App {
        Self::spawn_with(nats_url, db_path, jwt_options(), false).await
    }

    pub async fn spawn_with(
        nats_url: &str,
        db_path: &Path,
        auth: AuthSettings,
        read_only: bool,
    ) -> App {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .expect("address");
        let mut config = serve_config(nats_url, db_path, auth, read_only);
        config.admin_listen = Some(admin);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown = Shutdown::new(async move {
            let _ = stopped.await;
        });
        let task = tokio::spawn(async move {
            let (applied, _) = tokio::sync::watch::channel(0);
            jobstats::service::serve(&config, listener, shutdown, applied).await
        });
        let app = App {
            address,
            admin,
            http: reqwest::Client::new(),
            stop: Some(stop),
            task: Some(task),
        };
        app.wait_ready().await;
        app
    }

    /// Runs `serve` on `db_path` expecting it to fail at start; returns its error.
    pub async fn start_failure(nats_url: &str, db_path: &Path, read_only: bool) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let config = serve_config(nats_url, db_path, jwt_options(), read_only);
        let shutdown = Shutdown::new(std::future::pending());
        let (applied, _) = tokio::sync::watch::channel(0);
        let served = tokio::time::timeout(
            Duration::from_secs(30),
            jobstats::service::serve(&config, listener, shutdown, applied),
        )
        .await
        .expect("serve should have failed at start");
        format!("{:#}", served.expect_err("serve should fail at start"))
    }

    /// Ready: the stream exists and the projector caught up (or a read-only file is open).
    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.http.get(self.admin_url("/readyz")).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            if self.task.as_ref().is_some_and(|t| t.is_finished()) {
                panic!("server exited during start-up");
            }
            assert!(Instant::now() < deadline, "server did not become healthy");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.address, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub async fn stats_with(&self, job: &str, token: &str, tenant: &str) -> reqwest::Response {
        self.http
            .get(self.url(&format!("/api/v1/admin/jobs/{job}/stats")))
            .header("accept", "application/json")
            .bearer_auth(token)
            .header("x-tenantid", tenant)
            .send()
            .await
            .expect("request")
    }

    /// The stats body of `job` (asserting 200).
    pub async fn stats(&self, job: &str) -> serde_json::Value {
        let response = self.stats_with(job, &admin_token(), TENANT).await;
        assert_eq!(response.status(), 200, "stats of {job}");
        response.json().await.expect("json")
    }

    /// The admin listener's `/readyz`.
    pub async fn readyz(&self) -> serde_json::Value {
        self.http
            .get(self.admin_url("/readyz"))
            .send()
            .await
            .expect("readyz")
            .json()
            .await
            .expect("json")
    }

    /// The Prometheus text of the admin listener's `/metrics`.
    pub async fn metrics(&self) -> String {
        self.http
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    /// Waits until the projector has applied `sequence`.
    pub async fn wait_applied(&self, sequence: u64) {
        self.wait_applied_within(sequence, Duration::from_secs(60))
            .await
    }

    /// Like `wait_applied`, with the patience a cluster's recovery needs.
    pub async fn wait_applied_within(&self, sequence: u64, patience: Duration) {
        wait_applied(&self.http, &self.admin_url("/readyz"), sequence, patience).await
    }

    /// Stops the server (graceful: the projector commits its batch).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("join").expect("serve returned an error");
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub async fn wait_applied(
    http: &reqwest::Client,
    readyz_url: &str,
    sequence: u64,
    patience: Duration,
) {
    let deadline = Instant::now() + patience;
    let mut last = serde_json::Value::Null;
    while Instant::now() < deadline {
        if let Ok(response) = http.get(readyz_url).send().await {
            if let Ok(body) = response.json::<serde_json::Value>().await {
                if body["lastAppliedSequence"].as_u64().unwrap_or(0) >= sequence {
                    return;
                }
                last = body;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("sequence {sequence} not applied in time; last readyz: {last}");
}

/// The real `jobstats serve` binary as a child process.
pub struct ServeProcess {
    pub child: Child,
    pub address: SocketAddr,
    /// `JOBSTATS_ADMIN_LISTEN`, when the test set it.
    pub admin: Option<SocketAddr>,
    pub http: reqwest::Client,
}

impl ServeProcess {
    pub fn start(nats_url: &str, db_path: &Path) -> Self {
        Self::start_with_env(nats_url, db_path, &[])
    }

    /// [`ServeProcess::start`] with more settings in the environment.
    pub fn start_with_env(nats_url: &str, db_path: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_on(free_port(), nats_url, db_path, env)
    }

    /// [`ServeProcess::start_with_env`] on a port the test chose (one it had to tell others
    /// first, such as an identity provider's redirect address).
    pub fn start_on(port: u16, nats_url: &str, db_path: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_on_logging(port, nats_url, db_path, env, Stdio::inherit())
    }

    /// [`ServeProcess::start_with_env`] with its log (stderr) going to `log`, for tests that
    /// read what it says.
    pub fn start_logging(
        nats_url: &str,
        db_path: &Path,
        env: &[(&str, &str)],
        log: impl Into<Stdio>,
    ) -> Self {
        Self::start_on_logging(free_port(), nats_url, db_path, env, log)
    }

    fn start_on_logging(
        port: u16,
        nats_url: &str,
        db_path: &Path,
        env: &[(&str, &str)],
        log: impl Into<Stdio>,
    ) -> Self {
        let mut command = Command::new(BIN);
        if !env.iter().any(|(name, _)| *name == "JOBSTATS_INSTANCE_ID") {
            // An instance id names the consumer only without an explicit one.
            command.env("JOBSTATS_CONSUMER", "jobstats-test");
        }
        let child = command
            .arg("serve")
            .env("JOBSTATS_NATS_URL", nats_url)
            .env("JOBSTATS_DB_PATH", db_path)
            .env("JOBSTATS_LISTEN", format!("127.0.0.1:{port}"))
            .env("JOBSTATS_JWT_HS256_SECRET", SECRET)
            .env("RUST_LOG", "warn")
            // Last, so a test can override any of the above (a second replica's consumer).
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start jobstats serve");
        let address: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(address).is_err() {
            assert!(Instant::now() < deadline, "jobstats serve did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let admin = env
            .iter()
            .find(|(name, _)| *name == "JOBSTATS_ADMIN_LISTEN")
            .map(|(_, value)| value.parse().expect("JOBSTATS_ADMIN_LISTEN is an address"));
        ServeProcess {
            child,
            address,
            admin,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.address, path)
    }

    /// `path` on the admin listener (the test must have set `JOBSTATS_ADMIN_LISTEN`).
    pub fn admin_url(&self, path: &str) -> String {
        let admin = self.admin.expect("this serve has no admin listener");
        format!("http://{admin}{path}")
    }

    /// The environment entry of an admin listener on a free port.
    pub fn admin_env() -> String {
        format!("127.0.0.1:{}", free_port())
    }

    pub fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    pub async fn stats(&self, job: &str) -> serde_json::Value {
        let response = self
            .http
            .get(self.url(&format!("/api/v1/admin/jobs/{job}/stats")))
            .bearer_auth(admin_token())
            .header("x-tenantid", TENANT)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200);
        response.json().await.expect("json")
    }

    pub async fn wait_applied(&self, sequence: u64) {
        self.wait_applied_within(sequence, Duration::from_secs(60))
            .await
    }

    /// Like `wait_applied`, with the patience a cluster's recovery needs.
    pub async fn wait_applied_within(&self, sequence: u64, patience: Duration) {
        let readyz = match self.admin {
            Some(_) => self.admin_url("/readyz"),
            None => self.url("/readyz"),
        };
        wait_applied(&self.http, &readyz, sequence, patience).await
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        self.kill_9();
    }
}

/// One simulated execution: its events in causal order.
pub fn execution_events(
    job: &str,
    execution: &str,
    start: chrono::DateTime<chrono::Utc>,
    duration_ms: i64,
    ok: bool,
) -> Vec<jobstats::events::Event> {
    let end = if ok {
        RunEnd::Completed { items: Some(10) }
    } else {
        RunEnd::Failed {
            items: None,
            error: Some("boom"),
        }
    };
    EventBuilder::new(TENANT, job)
        .and_then(|job| job.execution(execution))
        .and_then(|run| {
            run.run(
                start,
                Some(chrono::Duration::milliseconds(100)),
                chrono::Duration::milliseconds(duration_ms),
                end,
            )
        })
        .expect("valid run")
}

/// Runs `jobstats rebuild` of `db` from the stream, asserting it succeeded.
pub fn rebuild(nats: &NatsServer, db: &Path) {
    let output = Command::new(BIN)
        .arg("rebuild")
        .env("JOBSTATS_NATS_URL", nats.url())
        .env("JOBSTATS_DB_PATH", db)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run jobstats rebuild");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Publishes events concurrently (acks awaited), returning the highest stream sequence.
pub async fn publish_all(publisher: &Publisher, events: &[jobstats::events::Event]) -> u64 {
    let mut last = 0;
    for chunk in events.chunks(256) {
        let results = futures::future::join_all(chunk.iter().map(|e| publisher.publish(e))).await;
        for result in results {
            last = last.max(result.expect("publish").sequence);
        }
    }
    last
}

fn serve_config(
    nats_url: &str,
    db_path: &Path,
    auth: AuthSettings,
    read_only: bool,
) -> ServeConfig {
    ServeConfig {
        nats: jobstats::stream::NatsSettings::from_url(nats_url).expect("a NATS URL"),
        stream: jobstats::stream::StreamSpec::single("JOB_EVENTS"),
        db_path: db_path.to_path_buf(),
        consumer: "jobstats-test".into(),
        tenants: jobstats::scope::TenantScope::all(),
        read_only,
        default_max_runtime: Duration::from_secs(3600),
        admin_listen: None,
        job_metrics_max: jobstats::job_metrics::DEFAULT_MAX_JOBS,
        auth,
        http: Default::default(),
        tls: None,
        channels: Vec::new(),
        ui: Default::default(),
        ingest_limits: Default::default(),
    }
}

/// Opens the read model directly (read-only) for table-level assertions.
pub fn dump(db_path: &Path) -> Vec<String> {
    jobstats::store::ReadPool::open(db_path)
        .expect("open read model")
        .dump()
        .expect("dump")
}

/// `count` executions of `job` (ids `e000000`, `e000001`…, zero-padded so they sort in start
/// order), the i-th starting at `first + i * every`, lasting `duration_ms(i)`, completed where
/// `ok(i)` and failed elsewhere.
pub fn runs(
    job: &str,
    count: i64,
    first: chrono::DateTime<chrono::Utc>,
    every: chrono::Duration,
    duration_ms: impl Fn(i64) -> i64,
    ok: impl Fn(i64) -> bool,
) -> Vec<jobstats::events::Event> {
    (0..count)
        .flat_map(|i| {
            execution_events(
                job,
                &format!("e{i:06}"),
                first + every * i as i32,
                duration_ms(i),
                ok(i),
            )
        })
        .collect()
}

/// A process's resident memory (VmRSS) in KB.
pub fn rss_kb(pid: u32) -> i64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Whether the tests run as root (and may use mount namespaces, other users).
pub fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0")
}

/// Stdout lines of a child, as they come.
pub fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    lines
}

/// Runs a printed `curl` until it answers 200 (the projector may still be applying); with
/// `within` zero, the first answer must be a 200.
pub fn curl_until_ok(curl: &str, within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let output = Command::new("sh")
            .arg("-c")
            .arg(format!("{curl} -w '\\n%{{http_code}}'"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).to_string();
        if let Some((body, "200")) = text.rsplit_once('\n') {
            return serde_json::from_str(body).unwrap();
        }
        assert!(Instant::now() < deadline, "{curl}\nanswered: {text}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A stats, list or executions body with the contract's request-time fields blanked
/// (`generatedAt`, `timestamp`, `asOf`, `nextRun`, and a window's `to`): what two replicas at
/// one sequence must agree on byte for byte.
pub fn without_request_time(body: &[u8]) -> String {
    let fields =
        regex::Regex::new(r#""(generatedAt|timestamp|asOf|nextRun|to)":("[^"]*"|null)"#).unwrap();
    fields
        .replace_all(&String::from_utf8_lossy(body), "\"$1\":\"(request time)\"")
        .into_owned()
}

/// Waits until the checkpoint committed in `db` (read from the file, as a restart would)
/// reaches `at_least`; returns it.
pub async fn wait_checkpoint(db: &Path, at_least: u64, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        // The file may not exist yet, or be between its creation and its first migration.
        let committed = jobstats::store::ReadPool::open(db)
            .and_then(|pool| pool.freshness())
            .map(|f| f.last_sequence);
        match committed {
            Ok(sequence) if sequence >= at_least => return sequence,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint at {at_least} or beyond in {} within {within:?}: {committed:?}",
            db.display()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Whether this run is CI's (`CI=true`) as root: there every environment-dependent test has
/// what it needs, so a skip would hide a broken set-up.
pub fn ci_as_root() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") && running_as_root()
}

/// Says that `test` (or a part of it) is skipped and why, on the real stderr (libtest
/// captures `eprintln!` of passing tests, so a skip would otherwise read as a plain `ok`);
/// in CI as root it fails instead: there nothing should be missing.
pub fn skip(test: &str, reason: &str) {
    assert!(
        !ci_as_root(),
        "{test}: cannot be skipped in CI as root, yet {reason}"
    );
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {test}: {reason}");
}

/// Asserts that two read models hold the same rows ([`dump`]), naming the rows that differ
/// (a dump of thousands of rows is no failure message).
pub fn assert_same_tables(db: &Path, expected: &Path) {
    let (got, want) = (dump(db), dump(expected));
    if got == want {
        return;
    }
    let only_in = |a: &[String], b: &[String]| -> Vec<String> {
        let b: std::collections::HashSet<&String> = b.iter().collect();
        a.iter()
            .filter(|row| !b.contains(row))
            .take(5)
            .cloned()
            .collect()
    };
    panic!(
        "{} differs from {} ({} rows against {}):\nonly in the first: {:#?}\nonly in the second: {:#?}",
        db.display(),
        expected.display(),
        got.len(),
        want.len(),
        only_in(&got, &want),
        only_in(&want, &got)
    );
}

/// A private CA with a server certificate for 127.0.0.1 and a client certificate, and a
/// second, unrelated CA.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn make() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki { dir };
        pki.authority("ca");
        pki.authority("rogue-ca");
        pki.leaf(
            "server",
            "ca",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        );
        pki.leaf("client", "ca", "extendedKeyUsage=clientAuth\n");
        pki
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    fn openssl(&self, args: &[&str]) {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("openssl (Debian's openssl package) makes the test certificates");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn authority(&self, name: &str) {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=jobstats test {name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ]);
    }

    /// A certificate for `name` signed by `ca`, with these openssl extensions.
    pub fn leaf(&self, name: &str, ca: &str, extensions: &str) {
        std::fs::write(self.dir.path().join(format!("{name}.ext")), extensions).unwrap();
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN=jobstats test {name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ]);
    }
}

/// A Python venv under `target/` with `packages` installed (made once, reused by later
/// runs); panics saying what failed when pip cannot install them.
pub fn python_venv(name: &str, packages: &[&str]) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/test-venvs")
        .join(name);
    let python = dir.join("bin/python");
    let marker = dir.join(".installed");
    if marker.exists() {
        return python;
    }
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&dir)
        .status()
        .expect("python3 runs");
    assert!(made.success(), "python3 -m venv {} failed", dir.display());
    let installed = Command::new(&python)
        .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
        .args(packages)
        .status()
        .expect("pip runs");
    assert!(
        installed.success(),
        "pip could not install {packages:?} into {} (is PyPI reachable?)",
        dir.display()
    );
    std::fs::write(&marker, packages.join("\n")).unwrap();
    python
}
