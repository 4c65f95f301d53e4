//! Command-line arguments and configuration (CONTRACT §4). Every option has a `JOBSTATS_*` environment
//! variable; an optional TOML file (`--config` / `JOBSTATS_CONFIG`) fills in options that are
//! not set, so the precedence is flag > environment > file > default ([`parse_layered`]). A bad value stops
//! start-up with a message naming the variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use std::ffi::OsString;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use crate::api::auth::AuthSettings;
use crate::api::limits::HttpLimits;
use crate::api::ui::{UiConfigError, UiSettings};
use crate::events::TenantId;
use crate::ingest::replay::RebuildUntil;
use crate::projection::HealthState;
use crate::scope::TenantScope;
use crate::stream::{NatsAuth, NatsSettings, NatsTls, Secret};

#[derive(Debug, Parser)]
#[command(
    name = "jobstats",
    version,
    about = "Job statistics from job lifecycle events (NATS JetStream → SQLite → HTTP)"
)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonOptions,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command shares.
#[derive(Debug, Clone, Args)]
pub struct CommonOptions {
    /// NATS server URL, or comma-separated seed URLs of one cluster.
    #[arg(
        long,
        global = true,
        env = "JOBSTATS_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
    /// JetStream stream holding the events (created when missing).
    #[arg(long, global = true, env = "JOBSTATS_STREAM", default_value = "JOB_EVENTS", value_parser = parse_stream_name)]
    pub stream: String,
    /// Copies of the stream when jobstats creates it: 1, 3 or 5 (a cluster of at least that
    /// many servers). An existing stream keeps its own.
    #[arg(long, global = true, env = "JOBSTATS_STREAM_REPLICAS", default_value_t = 1, value_parser = parse_replicas)]
    pub stream_replicas: usize,
    /// Comma-separated tenant ids this replica projects and serves (a tenant shard); unset:
    /// all tenants.
    #[arg(long, global = true, env = "JOBSTATS_TENANTS", value_parser = parse_tenants)]
    pub tenants: Option<TenantScope>,
    /// SQLite read-model file (a plain file, or a symlink managed by `rebuild`).
    #[arg(
        long = "db",
        global = true,
        env = "JOBSTATS_DB_PATH",
        default_value = "./data/jobstats.db"
    )]
    pub db_path: PathBuf,
    /// Optional TOML config file; its keys are the variable names without `JOBSTATS_`, in
    /// lowercase (`nats_url = "nats://..."`). The environment wins over it.
    #[arg(long, global = true, env = "JOBSTATS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format (filter with RUST_LOG, e.g. `info,jobstats=debug`).
    #[arg(long, global = true, env = "JOBSTATS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub nats: NatsOptions,
}

/// Credentials and TLS towards NATS (every command that connects). Set at most one way of
/// authenticating; each secret also has a `…_FILE` form (a Kubernetes secret mounted as a file).
#[derive(Debug, Clone, Args)]
pub struct NatsOptions {
    /// NATS user (with JOBSTATS_NATS_PASSWORD).
    #[arg(long, global = true, env = "JOBSTATS_NATS_USER")]
    pub nats_user: Option<String>,
    /// NATS password.
    #[arg(
        long,
        global = true,
        env = "JOBSTATS_NATS_PASSWORD",
        hide_env_values = true
    )]
    pub nats_password: Option<String>,
    /// File holding the NATS password (trailing newline stripped).
    #[arg(long, global = true, env = "JOBSTATS_NATS_PASSWORD_FILE")]
    pub nats_password_file: Option<PathBuf>,
    /// NATS token.
    #[arg(
        long,
        global = true,
        env = "JOBSTATS_NATS_TOKEN",
        hide_env_values = true
    )]
    pub nats_token: Option<String>,
    /// File holding the NATS token.
    #[arg(long, global = true, env = "JOBSTATS_NATS_TOKEN_FILE")]
    pub nats_token_file: Option<PathBuf>,
    /// File holding an nkey seed (`SU…`).
    #[arg(long, global = true, env = "JOBSTATS_NATS_NKEY_SEED_FILE")]
    pub nats_nkey_seed_file: Option<PathBuf>,
    /// A `.creds` file (user JWT + nkey seed; decentralised auth).
    #[arg(long, global = true, env = "JOBSTATS_NATS_CREDS_FILE")]
    pub nats_creds_file: Option<PathBuf>,
    /// PEM CA bundle the server's certificate must chain to (makes TLS required).
    #[arg(long, global = true, env = "JOBSTATS_NATS_TLS_CA_FILE")]
    pub nats_tls_ca_file: Option<PathBuf>,
    /// Client certificate for mutual TLS (PEM; with JOBSTATS_NATS_TLS_KEY_FILE).
    #[arg(long, global = true, env = "JOBSTATS_NATS_TLS_CERT_FILE")]
    pub nats_tls_cert_file: Option<PathBuf>,
    /// Client certificate's private key (PEM).
    #[arg(long, global = true, env = "JOBSTATS_NATS_TLS_KEY_FILE")]
    pub nats_tls_key_file: Option<PathBuf>,
}

/// A secret given directly (`var`) or as a file (`file_var`): at most one; the file's trailing
/// newline is stripped. Also names the variable that supplied it.
pub fn secret_from(
    value: Option<&str>,
    file: Option<&std::path::Path>,
    var: &'static str,
    file_var: &'static str,
) -> Result<Option<(Secret, &'static str)>, String> {
    let value = value.filter(|v| !v.is_empty());
    match (value, file) {
        (Some(_), Some(_)) => Err(format!("set {var} or {file_var}, not both")),
        (Some(value), None) => Ok(Some((Secret::new(value), var))),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("{file_var}: cannot read {}: {e}", path.display()))?;
            let text = text.strip_suffix('\n').unwrap_or(&text);
            let text = text.strip_suffix('\r').unwrap_or(text);
            if text.is_empty() {
                return Err(format!("{file_var}: {} is empty", path.display()));
            }
            Ok(Some((Secret::new(text), file_var)))
        }
        (None, None) => Ok(None),
    }
}

impl NatsOptions {
    /// The credentials: at most one of user+password, token, nkey seed file, creds file.
    fn auth(&self) -> Result<NatsAuth, String> {
        let password = secret_from(
            self.nats_password.as_deref(),
            self.nats_password_file.as_deref(),
            "JOBSTATS_NATS_PASSWORD",
            "JOBSTATS_NATS_PASSWORD_FILE",
        )?;
        let token = secret_from(
            self.nats_token.as_deref(),
            self.nats_token_file.as_deref(),
            "JOBSTATS_NATS_TOKEN",
            "JOBSTATS_NATS_TOKEN_FILE",
        )?;
        let user = self.nats_user.clone().filter(|u| !u.is_empty());
        let mut chosen = Vec::new();
        match (user, password) {
            (Some(user), Some((password, source))) => chosen.push(NatsAuth::UserPassword {
                user,
                password,
                source,
            }),
            (Some(_), None) => {
                return Err("JOBSTATS_NATS_USER is set without JOBSTATS_NATS_PASSWORD".into())
            }
            (None, Some((_, source))) => {
                return Err(format!("{source} is set without JOBSTATS_NATS_USER"))
            }
            (None, None) => {}
        }
        if let Some((token, source)) = token {
            chosen.push(NatsAuth::Token { token, source });
        }
        if let Some(path) = &self.nats_nkey_seed_file {
            chosen.push(NatsAuth::NkeySeed {
                seed: read_nkey_seed(path)?,
            });
        }
        if let Some(path) = &self.nats_creds_file {
            std::fs::metadata(path).map_err(|e| {
                format!(
                    "JOBSTATS_NATS_CREDS_FILE: cannot read {}: {e}",
                    path.display()
                )
            })?;
            chosen.push(NatsAuth::CredsFile { path: path.clone() });
        }
        match chosen.len() {
            0 => Ok(NatsAuth::Anonymous),
            1 => Ok(chosen.remove(0)),
            _ => Err(format!(
                "set one way of authenticating to NATS, not several: {}",
                chosen
                    .iter()
                    .filter_map(NatsAuth::source)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    fn tls(&self) -> Result<NatsTls, String> {
        let readable = |path: &PathBuf, var: &str| {
            std::fs::metadata(path)
                .map(|_| ())
                .map_err(|e| format!("{var}: cannot read {}: {e}", path.display()))
        };
        if let Some(ca) = &self.nats_tls_ca_file {
            readable(ca, "JOBSTATS_NATS_TLS_CA_FILE")?;
        }
        let client_cert = match (&self.nats_tls_cert_file, &self.nats_tls_key_file) {
            (Some(cert), Some(key)) => {
                readable(cert, "JOBSTATS_NATS_TLS_CERT_FILE")?;
                readable(key, "JOBSTATS_NATS_TLS_KEY_FILE")?;
                Some((cert.clone(), key.clone()))
            }
            (None, None) => None,
            _ => {
                return Err("JOBSTATS_NATS_TLS_CERT_FILE and JOBSTATS_NATS_TLS_KEY_FILE go together: set both or neither".into())
            }
        };
        Ok(NatsTls {
            ca_file: self.nats_tls_ca_file.clone(),
            client_cert,
        })
    }
}

fn read_nkey_seed(path: &std::path::Path) -> Result<Secret, String> {
    let var = "JOBSTATS_NATS_NKEY_SEED_FILE";
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{var}: cannot read {}: {e}", path.display()))?;
    // A seed file may hold the seed alone or among comment lines (as `nsc` writes them).
    text.lines()
        .map(str::trim)
        .find(|line| line.starts_with("SU") && line.len() > 50)
        .map(Secret::new)
        .ok_or_else(|| {
            format!(
                "{var}: {} holds no user nkey seed (a line starting SU)",
                path.display()
            )
        })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the projector and the HTTP API in one process.
    // Boxed: its options are many times the size of any other command's.
    Serve(Box<ServeOptions>),
    /// Replay the whole stream into a new SQLite file and swap it in atomically (a running
    /// `serve` switches to it without failing a request); or, with --output, build a
    /// point-in-time copy without swapping.
    Rebuild(RebuildOptions),
    /// Copy the live database consistently (SQLite online backup) while `serve` keeps
    /// projecting: `serve` started on the copy resumes from its checkpoint (a new replica
    /// bootstraps from it instead of replaying the whole stream).
    Snapshot(SnapshotOptions),
    /// Publish one validated event and wait for the JetStream ack.
    Publish(PublishOptions),
    /// Silence a job's alerts until a time (or for a duration), or lift its silence
    /// (`--until none`): publishes a `silenced` event. The job is judged as always.
    Silence(SilenceOptions),
    /// Run a command as one execution of a job: publishes enqueued, started, then completed or
    /// failed; passes its output through and exits with its exit code.
    Run(RunOptions),
    /// Mint a development token signed with the configured HS256 secret.
    Token(TokenOptions),
    /// Start everything for a first look: NATS (when none is reachable), `serve`, and demo job
    /// runners; prints a token and a curl command. Ctrl-C stops it all.
    Demo(DemoOptions),
    /// Publish demo job runs forever (what `demo` runs; the compose file's demo profile).
    /// With the service's HS256 secret, prints a token and curl commands first.
    DemoRunners(DemoRunnersOptions),
    /// Print health changes as they are published, one line each (Ctrl-C stops):
    /// `asOf tenant job previous->state since=… reason`.
    Watch(WatchOptions),
    /// Print one job's executions, newest first, as NDJSON (default) or CSV, read from the
    /// database file (one consistent snapshot, constant memory): what
    /// `GET …/executions?format=` answers.
    Export(ExportOptions),
    /// Ingest keys for `POST /api/v1/events`, ping URLs and Sentry check-ins: `create` prints
    /// a new key once, `list` shows them (never the key), `revoke` ends one everywhere.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Alert channels (`JOBSTATS_CHANNELS_FILE`, `JOBSTATS_WEBHOOKS_FILE`): `test NAME` sends
    /// one test message and prints the receiver's answer (exit 1 when it fails).
    #[command(subcommand)]
    Channels(ChannelsCommand),
    /// Print the OpenAPI document.
    Openapi,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ChannelsCommand {
    /// Send a test message (a `failing` change of the job `jobstats-test`) to one channel,
    /// read from the files exactly as `serve` reads them.
    Test {
        /// The channel's `name`.
        name: String,
        #[command(flatten)]
        files: ChannelFileArgs,
    },
}

/// Where alert channels are configured (shared by `serve` and `channels test`).
#[derive(Debug, Clone, clap::Args)]
pub struct ChannelFileArgs {
    /// A TOML file of `[[webhooks]]` (url, secret, optional tenants, states) that receive
    /// every health change, signed (see the README).
    #[arg(long, env = "JOBSTATS_WEBHOOKS_FILE")]
    pub webhooks_file: Option<PathBuf>,
    /// A TOML file of `[[channels]]`: webhook, slack, pagerduty, opsgenie, teams, email,
    /// alertmanager (see the README's "Alert channels").
    #[arg(long, env = "JOBSTATS_CHANNELS_FILE")]
    pub channels_file: Option<PathBuf>,
    /// The dashboard's address as users reach it (e.g. `https://jobs.example.com`): every
    /// alert links to the job's page under it.
    #[arg(long, env = "JOBSTATS_PUBLIC_URL", value_parser = parse_public_url)]
    pub public_url: Option<reqwest::Url>,
}

impl ChannelFileArgs {
    /// Every channel of both files, validated.
    pub fn channels(&self) -> Result<Vec<crate::notify::channels::Channel>, String> {
        use crate::notify::{channels, webhooks};
        let public = self.public_url.as_ref();
        let hooks = match &self.webhooks_file {
            Some(path) => webhooks::load(path, public)?,
            None => Vec::new(),
        };
        let more = match &self.channels_file {
            Some(path) => channels::load(path, public)?,
            None => Vec::new(),
        };
        channels::combine(hooks, more)
    }
}

fn parse_public_url(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text).map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("an http or https URL with a host".into());
    }
    Ok(url)
}

#[derive(Debug, Clone, Subcommand)]
pub enum KeysCommand {
    /// Make a key for one tenant and print it (only this once).
    Create {
        /// The tenant the key reports for.
        #[arg(long, value_parser = parse_tenant_id)]
        tenant: TenantId,
        /// A name people read in `keys list`.
        #[arg(long)]
        name: Option<String>,
        /// Pings and check-ins for a job never seen create the job (as `?create=1`).
        #[arg(long)]
        auto_create: bool,
        /// Print the key's record as JSON (with the key) instead of the key alone.
        #[arg(long)]
        json: bool,
    },
    /// List the keys (of one tenant): id, name, tenant, created, last 4 characters.
    List {
        #[arg(long, value_parser = parse_tenant_id)]
        tenant: Option<TenantId>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by its id: every replica refuses it within seconds.
    Revoke { id: String },
}

#[derive(Debug, Clone, Args)]
pub struct ExportOptions {
    /// The job's tenant.
    #[arg(long, env = "JOBSTATS_TENANT", value_parser = parse_tenant_id)]
    pub tenant: TenantId,
    /// The job's name.
    #[arg(long)]
    pub job: String,
    #[arg(long, value_enum, default_value_t = ExportFormatArg::Ndjson)]
    pub format: ExportFormatArg,
    /// RFC 3339: executions that started (or were enqueued, if not started) at or after.
    #[arg(long, value_parser = parse_instant)]
    pub from: Option<i64>,
    /// RFC 3339: … at or before.
    #[arg(long, value_parser = parse_instant)]
    pub to: Option<i64>,
    /// Comma-separated: pending, processing, completed, failed.
    #[arg(long, value_delimiter = ',', value_parser = parse_execution_state)]
    pub status: Vec<crate::projection::ExecutionState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormatArg {
    Ndjson,
    Csv,
}

fn parse_instant(value: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(value.trim())
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("{value:?} is not an RFC 3339 time: {e}"))
}

fn parse_execution_state(value: &str) -> Result<crate::projection::ExecutionState, String> {
    use crate::projection::ExecutionState;
    [
        ExecutionState::Pending,
        ExecutionState::Processing,
        ExecutionState::Completed,
        ExecutionState::Failed,
    ]
    .into_iter()
    .find(|s| s.as_str() == value.trim())
    .ok_or_else(|| format!("{value:?} is not one of pending, processing, completed, failed"))
}

#[derive(Debug, Clone, Args)]
pub struct WatchOptions {
    /// Only this tenant's jobs.
    #[arg(long, value_parser = parse_tenant_id)]
    pub tenant: Option<TenantId>,
    /// Only changes to these states (comma-separated: stuck, missed, failing, healthy, new).
    #[arg(long, value_delimiter = ',', value_parser = parse_announced_state)]
    pub state: Vec<HealthState>,
    /// First print each job's last announced change (its current state), then follow.
    #[arg(long)]
    pub current: bool,
    /// Print each change as its JSON body (the webhook body) instead of a line.
    #[arg(long)]
    pub json: bool,
}

fn parse_tenant_id(value: &str) -> Result<TenantId, String> {
    TenantId::parse(value)
}

fn parse_announced_state(value: &str) -> Result<HealthState, String> {
    HealthState::parse(value.trim())
        .filter(|s| *s != HealthState::Unknown)
        .ok_or_else(|| format!("{value:?} is not one of stuck, missed, failing, healthy, new"))
}

/// Token verification settings.
#[derive(Debug, Clone, Args)]
pub struct JwtOptions {
    /// HS256 secret (at least 32 bytes); unset: HS256 tokens are refused.
    #[arg(long, env = "JOBSTATS_JWT_HS256_SECRET", hide_env_values = true)]
    pub jwt_hs256_secret: Option<String>,
    /// File holding the HS256 secret (trailing newline stripped).
    #[arg(long, env = "JOBSTATS_JWT_HS256_SECRET_FILE")]
    pub jwt_hs256_secret_file: Option<PathBuf>,
    /// PEM file with one or more RS256/ES256 public keys.
    #[arg(long, env = "JOBSTATS_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,
    /// Expected issuer; may contain `{realm}` (e.g. `https://sso.example.com/realms/{realm}`).
    /// Unset: the issuer is not checked.
    #[arg(long, env = "JOBSTATS_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Comma-separated realm allow-list for the `realmname` header. Unset: any realm name.
    #[arg(long, env = "JOBSTATS_JWT_REALMS", value_delimiter = ',')]
    pub jwt_realms: Option<Vec<String>>,
    /// Expected audience. Unset: `aud` is not checked.
    #[arg(long, env = "JOBSTATS_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// The identity provider's JSON Web Key Set: `https://` (or `http://` to a loopback
    /// address); may contain `{realm}`, then JOBSTATS_JWT_REALMS lists the realms fetched
    /// (Keycloak: `https://kc.example/realms/{realm}/protocol/openid-connect/certs`).
    #[arg(long, env = "JOBSTATS_JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,
}

impl CommonOptions {
    /// The NATS URLs, credentials and TLS, checked (files readable, one way of
    /// authenticating, no secret given twice).
    pub fn nats(&self) -> Result<NatsSettings, String> {
        NatsSettings::new(&self.nats_url, self.nats.auth()?, self.nats.tls()?)
    }

    pub fn stream_spec(&self) -> crate::stream::StreamSpec {
        crate::stream::StreamSpec {
            name: self.stream.clone(),
            replicas: self.stream_replicas,
        }
    }

    pub fn tenant_scope(&self) -> TenantScope {
        self.tenants.clone().unwrap_or_default()
    }
}

impl ServeOptions {
    /// `JOBSTATS_CONSUMER`, else `jobstats-<JOBSTATS_INSTANCE_ID or host name>` (characters a
    /// consumer name cannot hold become `-`).
    pub fn consumer_name(&self) -> String {
        if let Some(consumer) = &self.consumer {
            return consumer.clone();
        }
        let instance = self
            .instance_id
            .clone()
            .filter(|i| !i.trim().is_empty())
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "local".into());
        let instance: String = instance
            .trim()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        format!("jobstats-{instance}")
    }
}

fn parse_replicas(value: &str) -> Result<usize, String> {
    match value.trim() {
        "1" => Ok(1),
        "3" => Ok(3),
        "5" => Ok(5),
        other => Err(format!(
            "JOBSTATS_STREAM_REPLICAS: {other:?} must be 1, 3 or 5"
        )),
    }
}

fn parse_tenants(value: &str) -> Result<TenantScope, String> {
    TenantScope::parse(value).map_err(|e| format!("JOBSTATS_TENANTS: {e}"))
}

impl ServeOptions {
    /// HTTPS's files: both or neither.
    pub fn tls_files(&self) -> Result<Option<crate::api::tls::TlsFiles>, String> {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => Ok(Some(crate::api::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            })),
            (None, None) => Ok(None),
            _ => Err(
                "JOBSTATS_TLS_CERT_FILE and JOBSTATS_TLS_KEY_FILE go together: set both or neither"
                    .into(),
            ),
        }
    }
}

impl JwtOptions {
    pub fn settings(&self) -> Result<AuthSettings, String> {
        Ok(AuthSettings {
            hs256_secret: hs256_secret(
                self.jwt_hs256_secret.as_deref(),
                self.jwt_hs256_secret_file.as_deref(),
            )?,
            public_key_file: self.jwt_public_key_file.clone(),
            issuer: self.jwt_issuer.clone().filter(|s| !s.is_empty()),
            realms: self.jwt_realms.clone().map(|realms| {
                realms
                    .into_iter()
                    .map(|r| r.trim().to_owned())
                    .filter(|r| !r.is_empty())
                    .collect()
            }),
            audience: self.jwt_audience.clone().filter(|s| !s.is_empty()),
            jwks_url: self.jwt_jwks_url.clone().filter(|s| !s.trim().is_empty()),
        })
    }
}

/// `JOBSTATS_JWT_HS256_SECRET` or its `…_FILE` form.
pub fn hs256_secret(
    value: Option<&str>,
    file: Option<&std::path::Path>,
) -> Result<Option<String>, String> {
    let secret = secret_from(
        value,
        file,
        "JOBSTATS_JWT_HS256_SECRET",
        "JOBSTATS_JWT_HS256_SECRET_FILE",
    )?;
    Ok(secret.map(|(secret, _)| secret.expose().to_owned()))
}

#[derive(Debug, Clone, Args)]
pub struct ServeOptions {
    /// PEM certificate (chain) for HTTPS on the API and admin listeners; re-read when it
    /// changes or on SIGHUP. With JOBSTATS_TLS_KEY_FILE.
    #[arg(long, env = "JOBSTATS_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of JOBSTATS_TLS_CERT_FILE.
    #[arg(long, env = "JOBSTATS_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// Address the HTTP API listens on.
    #[arg(long, env = "JOBSTATS_LISTEN", default_value = "127.0.0.1:8080", value_parser = parse_listen)]
    pub listen: SocketAddr,
    /// Durable consumer name (one per read replica); default `jobstats-<instance id>`.
    #[arg(long, env = "JOBSTATS_CONSUMER", value_parser = parse_consumer_name)]
    pub consumer: Option<String>,
    /// This replica's name, for its durable consumer; default: the host name.
    #[arg(long, env = "JOBSTATS_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Serve the database as it is, without projecting (audit copies made by `rebuild --output`
    /// are always served this way).
    #[arg(long, env = "JOBSTATS_READ_ONLY")]
    pub read_only: bool,
    /// How long an execution may process before its job is `stuck`, for jobs whose schedule
    /// sets no `maxRuntimeMs` (e.g. `90m`, `2h`; 1s–30d).
    #[arg(long, env = "JOBSTATS_MAX_RUNTIME", default_value = "1h", value_parser = parse_max_runtime)]
    pub max_runtime: Duration,
    /// A second address for `/readyz` and `/metrics` (and `/healthz`); when set, the API
    /// address no longer serves the first two, so it can face the internet.
    #[arg(long, env = "JOBSTATS_ADMIN_LISTEN", value_parser = parse_listen)]
    pub admin_listen: Option<SocketAddr>,
    /// Most jobs with per-job series on the admin listener's `/metrics` (the first seen
    /// first); the rest are left out and counted in `jobstats_job_metrics_omitted`. 0: none.
    #[arg(long, env = "JOBSTATS_JOB_METRICS_MAX", default_value_t = crate::job_metrics::DEFAULT_MAX_JOBS as u32,
          value_parser = clap::value_parser!(u32).range(0..=10_000_000))]
    pub job_metrics_max: u32,
    #[command(flatten)]
    pub channel_files: ChannelFileArgs,
    /// Requests per second each ingest key (or job_runner token) may make to the ingestion
    /// endpoints, with bursts of ten seconds' worth (at least 100); over it: 429 with
    /// Retry-After.
    #[arg(long, env = "JOBSTATS_INGEST_RATE", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub ingest_rate: u32,
    #[command(flatten)]
    pub jwt: JwtOptions,
    #[command(flatten)]
    pub http: HttpLimitArgs,
    #[command(flatten)]
    pub ui: UiSignInArgs,
}

/// The dashboard's sign-in with an OpenID provider (CONTRACT §9).
#[derive(Debug, Clone, Args)]
pub struct UiSignInArgs {
    /// The OpenID provider the dashboard offers to sign in with: its issuer, as its tokens name
    /// it (Keycloak: `https://kc.example/realms/acme`). Unset: tokens are pasted.
    #[arg(long, env = "JOBSTATS_UI_OIDC_ISSUER")]
    pub ui_oidc_issuer: Option<String>,
    /// The dashboard's client id at that provider: a public client (no secret) with PKCE.
    #[arg(long, env = "JOBSTATS_UI_OIDC_CLIENT_ID")]
    pub ui_oidc_client_id: Option<String>,
    /// Scopes the dashboard asks for, space- or comma-separated; must include `openid`.
    #[arg(long, env = "JOBSTATS_UI_OIDC_SCOPES", default_value = "openid")]
    pub ui_oidc_scopes: String,
}

impl UiSignInArgs {
    pub fn settings(&self) -> Result<UiSettings, UiConfigError> {
        UiSettings::new(
            self.ui_oidc_issuer.as_deref(),
            self.ui_oidc_client_id.as_deref(),
            &self.ui_oidc_scopes,
        )
    }
}

/// Limits that keep an exposed HTTP server from being exhausted by its clients.
#[derive(Debug, Clone, Args)]
pub struct HttpLimitArgs {
    /// Most open client connections; more wait in the listen backlog until one closes.
    #[arg(long, env = "JOBSTATS_HTTP_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub http_max_connections: u32,
    /// Most open connections from one client IP address; more are closed at once (behind a
    /// proxy, raise it to the proxy's own connection count).
    #[arg(long, env = "JOBSTATS_HTTP_MAX_CONNECTIONS_PER_CLIENT", default_value_t = 128,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub http_max_connections_per_client: u32,
    /// A new connection that sends nothing for this long is closed (e.g. 5s).
    #[arg(long, env = "JOBSTATS_HTTP_FIRST_BYTE_TIMEOUT", default_value = "5s", value_parser = parse_http_timeout)]
    pub http_first_byte_timeout: Duration,
    /// A connection with no bytes read or written for this long is closed (e.g. 60s).
    #[arg(long, env = "JOBSTATS_HTTP_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_http_timeout)]
    pub http_idle_timeout: Duration,
    /// Once a client has sent bytes, the answer must start within this long, or the
    /// connection is closed (a request that never completes its headers).
    #[arg(long, env = "JOBSTATS_HTTP_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_http_timeout)]
    pub http_request_timeout: Duration,
    /// Most concurrent HTTP/2 streams per connection.
    #[arg(long, env = "JOBSTATS_HTTP2_MAX_STREAMS", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub http2_max_streams: u32,
    /// Most bytes of request headers on HTTP/2 (HTTP/1 has hyper's fixed limits: 100
    /// headers, ~400 KB of head).
    #[arg(long, env = "JOBSTATS_HTTP2_MAX_HEADER_BYTES", default_value_t = 16_384,
          value_parser = clap::value_parser!(u32).range(1_024..=1_048_576))]
    pub http2_max_header_bytes: u32,
    /// Most read-your-writes requests (`minSequence` with `waitMs`) waiting at once; more are
    /// answered 503 PROJECTION_BEHIND at once.
    #[arg(long, env = "JOBSTATS_HTTP_MAX_WAITERS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub http_max_waiters: u32,
}

impl HttpLimitArgs {
    pub fn limits(&self) -> HttpLimits {
        HttpLimits {
            max_connections: self.http_max_connections,
            max_connections_per_client: self.http_max_connections_per_client,
            first_byte_timeout: self.http_first_byte_timeout,
            idle_timeout: self.http_idle_timeout,
            request_timeout: self.http_request_timeout,
            http2_max_streams: self.http2_max_streams,
            http2_max_header_bytes: self.http2_max_header_bytes,
            max_waiters: self.http_max_waiters,
        }
    }
}

fn parse_http_timeout(value: &str) -> Result<Duration, String> {
    let duration = parse_duration(value)?;
    if (Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&duration) {
        Ok(duration)
    } else {
        Err(format!("{value:?} must be between 100ms and 1h"))
    }
}

fn parse_max_runtime(value: &str) -> Result<Duration, String> {
    let duration =
        parse_duration(value).map_err(|e| format!("JOBSTATS_MAX_RUNTIME/--max-runtime: {e}"))?;
    let ms = duration.as_millis();
    if (crate::events::MIN_MAX_RUNTIME_MS as u128..=crate::events::MAX_MAX_RUNTIME_MS as u128)
        .contains(&ms)
    {
        Ok(duration)
    } else {
        Err(format!(
            "JOBSTATS_MAX_RUNTIME/--max-runtime: {value:?} must be between 1s and 30d"
        ))
    }
}

#[derive(Debug, Clone, Args)]
pub struct SnapshotOptions {
    /// Where the copy goes (a new file; an existing one is refused).
    #[arg(long)]
    pub output: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct RebuildOptions {
    /// Stop at this point: an RFC 3339 time (events the stream received up to then) or a
    /// stream sequence. Requires --output.
    #[arg(long, requires = "output", value_parser = parse_until)]
    pub until: Option<RebuildUntil>,
    /// Write a point-in-time copy to this file instead of swapping the live database.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EventTypeArg {
    Scheduled,
    Enqueued,
    Started,
    Completed,
    Failed,
}

#[derive(Debug, Clone, Args)]
pub struct PublishOptions {
    /// Event type.
    #[arg(value_enum)]
    pub event_type: EventTypeArg,
    /// Tenant UUID.
    #[arg(long, env = "JOBSTATS_TENANT")]
    pub tenant: String,
    /// Job name.
    #[arg(long)]
    pub job: String,
    /// Execution id (required for all types but scheduled).
    #[arg(long)]
    pub execution: Option<String>,
    /// Items processed (completed, failed).
    #[arg(long, allow_negative_numbers = true)]
    pub items: Option<u64>,
    /// Error message (failed).
    #[arg(long)]
    pub error: Option<String>,
    /// 5-field cron expression (scheduled); `none` removes the schedule.
    #[arg(long)]
    pub cron: Option<String>,
    /// IANA time zone the cron is evaluated in, e.g. `Europe/Berlin` (scheduled; default UTC).
    #[arg(long)]
    pub timezone: Option<String>,
    /// The command's exit code, 0–255 (completed, failed).
    #[arg(long)]
    pub exit_code: Option<u8>,
    /// The run's output (completed, failed): its last 16 KiB are sent.
    #[arg(long)]
    pub output: Option<String>,
    /// How late a run may start and still count for its fire, e.g. `5m` (scheduled; 1s–1d;
    /// default: 10% of the cron period, clamped to 1m–1h).
    #[arg(long, value_parser = parse_duration)]
    pub grace: Option<Duration>,
    /// How long a run may process before it is stuck, e.g. `2h` (scheduled; 1s–30d; default:
    /// the service's JOBSTATS_MAX_RUNTIME).
    #[arg(long, value_parser = parse_duration)]
    pub max_runtime: Option<Duration>,
    /// A job label `key=value` for channel routing (scheduled; repeatable, at most 16).
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Failed executions in a row before the job is failing (scheduled; 1–100; default 1).
    #[arg(long)]
    pub failure_threshold: Option<u64>,
    /// Completed executions in a row before a failing job is healthy again (scheduled;
    /// 1–100; default 1).
    #[arg(long)]
    pub recovery_threshold: Option<u64>,
    /// When it happened (RFC 3339); default: now.
    #[arg(long)]
    pub occurred_at: Option<String>,
    /// Event id (UUID); default: a new one. Reuse it to retry a publish safely.
    #[arg(long)]
    pub event_id: Option<String>,
}

/// `key=value`.
fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected key=value, got {text:?}"))
}

#[derive(Debug, Clone, Args)]
pub struct SilenceOptions {
    /// Tenant UUID.
    #[arg(long, env = "JOBSTATS_TENANT")]
    pub tenant: String,
    /// Job name.
    #[arg(long)]
    pub job: String,
    /// Until when: an RFC 3339 time, a duration from now (`1h`, `1d`), `forever` (until
    /// lifted: 9999-12-31T23:59:59.999Z), or `none` to lift the silence.
    #[arg(long)]
    pub until: String,
    /// Why (shown in stats, the job list and the dashboard; at most 512 characters).
    #[arg(long)]
    pub reason: Option<String>,
    /// Who silences it; default: the user running the command (`$USER`).
    #[arg(long)]
    pub by: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct RunOptions {
    /// Tenant UUID.
    #[arg(long, env = "JOBSTATS_TENANT")]
    pub tenant: String,
    /// Job name.
    #[arg(long)]
    pub job: String,
    /// Execution id; default: a new UUID.
    #[arg(long)]
    pub execution: Option<String>,
    /// How long to keep retrying a publish while NATS is unreachable, per event.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub publish_timeout: Duration,
    /// After the command, print the outcome event's stream sequence as `sequence=N` on
    /// stdout (for `?minSequence=N` reads that must see this run).
    #[arg(long)]
    pub print_sequence: bool,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct TokenOptions {
    /// Role to grant (repeatable).
    #[arg(long = "role", default_value = "system_admin")]
    pub roles: Vec<String>,
    /// Tenant UUID for the `tenant_id` claim.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Lifetime, e.g. `30m`, `1h`, `7d`.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// `sub` claim.
    #[arg(long, default_value = "jobstats-dev")]
    pub subject: String,
    /// `iss` claim (default: none).
    #[arg(long)]
    pub issuer: Option<String>,
    /// HS256 secret to sign with.
    #[arg(long, env = "JOBSTATS_JWT_HS256_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// File holding the HS256 secret.
    #[arg(long, env = "JOBSTATS_JWT_HS256_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,
    /// Print a dashboard sign-in link (`<URL>/ui/#token=…`) instead of the bare token; the
    /// URL is the service's base (default `http://127.0.0.1:8080`).
    #[arg(long, value_name = "URL", num_args = 0..=1, default_missing_value = "http://127.0.0.1:8080")]
    pub ui: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct DemoOptions {
    /// Address the HTTP API listens on.
    #[arg(long, env = "JOBSTATS_LISTEN", default_value = "127.0.0.1:8080", value_parser = parse_listen)]
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Args)]
pub struct DemoRunnersOptions {
    /// The service's HS256 secret: when set, a demo token is printed.
    #[arg(long, env = "JOBSTATS_JWT_HS256_SECRET", hide_env_values = true)]
    pub jwt_hs256_secret: Option<String>,
    /// File holding the service's HS256 secret.
    #[arg(long, env = "JOBSTATS_JWT_HS256_SECRET_FILE")]
    pub jwt_hs256_secret_file: Option<PathBuf>,
    /// Where users reach the API, for the printed commands.
    #[arg(
        long,
        env = "JOBSTATS_DEMO_API_URL",
        default_value = "http://localhost:8080"
    )]
    pub api_url: String,
}

fn parse_listen(value: &str) -> Result<SocketAddr, String> {
    value.parse().map_err(|_| {
        format!("JOBSTATS_LISTEN/--listen: {value:?} is not an address like 127.0.0.1:8080")
    })
}

fn parse_stream_name(value: &str) -> Result<String, String> {
    let valid = !value.is_empty()
        && value.len() <= 255
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if valid {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "JOBSTATS_STREAM/--stream: {value:?} is not a valid stream name (A-Z a-z 0-9 _ -)"
        ))
    }
}

fn parse_consumer_name(value: &str) -> Result<String, String> {
    let valid = !value.is_empty()
        && value.len() <= 255
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if valid {
        Ok(value.to_owned())
    } else {
        Err(format!("JOBSTATS_CONSUMER/--consumer: {value:?} is not a valid consumer name (A-Z a-z 0-9 _ -)"))
    }
}

fn parse_until(value: &str) -> Result<RebuildUntil, String> {
    if let Ok(sequence) = value.parse::<u64>() {
        return Ok(RebuildUntil::Sequence(sequence));
    }
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| RebuildUntil::Time(t.timestamp_millis()))
        .map_err(|_| {
            format!("--until: {value:?} is neither a stream sequence nor an RFC 3339 time")
        })
}

/// `500ms`, `30s`, `10m`, `1h`, `7d`.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{value:?} is not a duration like 30s, 10m, 1h or 7d"))?;
    let seconds = match unit {
        "ms" => return Ok(Duration::from_millis(number)),
        "s" | "" => number,
        "m" => number * 60,
        "h" => number * 3600,
        "d" => number * 86_400,
        _ => {
            return Err(format!(
                "{value:?} is not a duration like 30s, 10m, 1h or 7d"
            ))
        }
    };
    Ok(Duration::from_secs(seconds))
}

/// Parses the command line with the optional TOML file layered under it:
/// flag > environment > file > default. The file's values become command-line arguments of
/// this parse only; the process environment is never touched, so a command that `jobstats run`
/// spawns inherits exactly the environment it was given. A key no option of jobstats has stops
/// start-up, naming the key; a key that belongs to another subcommand is left alone (one file
/// serves every command).
pub fn parse_layered(args: Vec<OsString>) -> Result<Cli, String> {
    let path = config_path(&args, |name| std::env::var_os(name));
    let Some(path) = path else {
        return Ok(parse_from(args));
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("JOBSTATS_CONFIG/--config {}: {e}", path.display()))?;
    let args = with_file_layer(args, &text, |name| std::env::var_os(name).is_some())
        .map_err(|e| format!("JOBSTATS_CONFIG/--config {}: {e}", path.display()))?;
    Ok(parse_from(args))
}

/// The shared options a command does not read, hidden from its `--help` (still accepted, so
/// one environment or config file serves every command).
/// Commands that never connect to NATS: its options (`nats_*`) are hidden from their help.
const WITHOUT_NATS: &[&str] = &["token", "openapi", "export"];

const UNUSED_SHARED_OPTIONS: &[(&str, &[&str])] = &[
    (
        "token",
        &["stream", "stream_replicas", "tenants", "db_path"],
    ),
    (
        "openapi",
        &["stream", "stream_replicas", "tenants", "db_path"],
    ),
    ("publish", &["tenants", "db_path"]),
    ("run", &["tenants", "db_path"]),
    (
        "watch",
        &["stream", "stream_replicas", "tenants", "db_path"],
    ),
    ("demo-runners", &["tenants", "db_path"]),
    ("export", &["stream", "stream_replicas", "tenants"]),
];

/// The command line as clap builds it, with each command's `--help` listing what it uses.
pub fn command() -> clap::Command {
    let mut command = Cli::command();
    // Global options reach the subcommands when the command is built.
    command.build();
    for (name, unused) in UNUSED_SHARED_OPTIONS {
        // In place (`mut_arg` moves the argument, which a built command's index does not
        // follow).
        command = command.mut_subcommand(*name, |sub| {
            sub.mut_args(|arg| {
                let id = arg.get_id().as_str();
                let unused_here = unused.contains(&id)
                    || (WITHOUT_NATS.contains(name) && id.starts_with("nats_"));
                arg.hide(unused_here)
            })
        });
    }
    command
}

fn parse_from(args: Vec<OsString>) -> Cli {
    use clap::FromArgMatches;
    let matches = command().get_matches_from(args);
    Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
}

/// `--config FILE`, `--config=FILE`, else `JOBSTATS_CONFIG`.
fn config_path(args: &[OsString], env: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let from_args = args
        .windows(2)
        .find(|w| w[0] == "--config")
        .map(|w| w[1].clone());
    let from_args = from_args.or_else(|| {
        args.iter()
            .find_map(|a| a.to_str()?.strip_prefix("--config=").map(OsString::from))
    });
    from_args
        .or_else(|| env("JOBSTATS_CONFIG"))
        .map(PathBuf::from)
}

/// The arguments with the file's values added for every option that neither the command line
/// nor the environment (`is_set`) gives.
fn with_file_layer(
    mut args: Vec<OsString>,
    file: &str,
    is_set: impl Fn(&str) -> bool,
) -> Result<Vec<OsString>, String> {
    let table: toml::Table = toml::from_str(file).map_err(|e| e.to_string())?;
    let command = Cli::command();
    // What was given so far; an unparsable line is left for the real parse to report.
    let Ok(given) = command
        .clone()
        .ignore_errors(true)
        .try_get_matches_from(&args)
    else {
        return Ok(args);
    };
    let subcommand = given
        .subcommand()
        .and_then(|(name, matches)| Some((command.find_subcommand(name)?, matches)));
    let known = |key: &str| {
        let env = format!("JOBSTATS_{}", key.to_ascii_uppercase());
        std::iter::once(&command)
            .chain(command.get_subcommands())
            .flat_map(|c| c.get_arguments())
            .any(|a| a.get_env().is_some_and(|e| e == env.as_str()))
    };
    let (mut global, mut local) = (Vec::new(), Vec::new());
    for (key, value) in &table {
        if !known(key) || key == "config" {
            return Err(format!("unknown key `{key}` (keys are the JOBSTATS_* variable names without the prefix, in lowercase)"));
        }
        let env = format!("JOBSTATS_{}", key.to_ascii_uppercase());
        let find = |c: &clap::Command| {
            c.get_arguments()
                .find(|a| a.get_env().is_some_and(|e| e == env.as_str()))
                .cloned()
        };
        let (arg, matches, target) = if let Some(arg) = find(&command) {
            (arg, &given, &mut global)
        } else if let Some((arg, matches)) =
            subcommand.as_ref().and_then(|(c, m)| Some((find(c)?, *m)))
        {
            (arg, matches, &mut local)
        } else {
            continue; // another subcommand's option
        };
        let on_command_line = matches
            .value_source(arg.get_id().as_str())
            .is_some_and(|s| s == clap::parser::ValueSource::CommandLine);
        if is_set(&env) || on_command_line {
            continue;
        }
        let long = arg
            .get_long()
            .expect("every option with a variable has a long flag");
        let is_switch = matches!(arg.get_action(), clap::ArgAction::SetTrue);
        target.extend(file_argument(key, value, long, is_switch)?);
    }
    // Subcommand options go right after the subcommand's name (before a `run` command's own
    // arguments); global ones right after the program name.
    if let Some((subcommand, _)) = &subcommand {
        let name = subcommand.get_name();
        let at = args
            .iter()
            .skip(1)
            .position(|a| a == name)
            .map_or(args.len(), |i| i + 2);
        args.splice(at..at, local);
    }
    args.splice(1..1, global);
    Ok(args)
}

/// One file value as a command-line argument (`None` for a switch set to false).
fn file_argument(
    key: &str,
    value: &toml::Value,
    long: &str,
    is_switch: bool,
) -> Result<Option<OsString>, String> {
    let text = match (value, is_switch) {
        (toml::Value::Boolean(true), true) => return Ok(Some(format!("--{long}").into())),
        (toml::Value::Boolean(false), true) => return Ok(None),
        (_, true) => return Err(format!("`{key}` must be true or false")),
        (toml::Value::String(s), false) => s.clone(),
        (toml::Value::Array(items), false) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(","),
        (other, false) => other.to_string(),
    };
    Ok(Some(format!("--{long}={text}").into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_the_usual_units() {
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn until_takes_a_sequence_or_a_time() {
        assert_eq!(parse_until("42"), Ok(RebuildUntil::Sequence(42)));
        assert!(matches!(
            parse_until("2025-07-10T12:00:00Z"),
            Ok(RebuildUntil::Time(_))
        ));
        assert!(parse_until("yesterday").is_err());
    }

    #[test]
    fn bad_values_name_their_variable() {
        assert!(parse_listen("nope")
            .unwrap_err()
            .contains("JOBSTATS_LISTEN"));
        assert!(parse_stream_name("a.b")
            .unwrap_err()
            .contains("JOBSTATS_STREAM"));
    }

    fn layered(cli: &[&str], file: &str, env: &[&str]) -> Result<Vec<String>, String> {
        let args = cli.iter().map(OsString::from).collect();
        with_file_layer(args, file, |name| env.contains(&name))
            .map(|args| args.into_iter().map(|a| a.into_string().unwrap()).collect())
    }

    #[test]
    fn the_file_fills_in_what_flags_and_environment_leave_open() {
        let file = "nats_url = \"nats://file:4222\"\nstream = \"FROM_FILE\"\nlisten = \"127.0.0.1:9\"\nmax_runtime = \"2h\"\nread_only = true\njwt_realms = [\"a\", \"b\"]\n";
        let args = layered(
            &["jobstats", "serve", "--listen", "127.0.0.1:7"],
            file,
            &["JOBSTATS_STREAM"],
        )
        .unwrap();
        let cli = Cli::try_parse_from(&args).unwrap();
        assert_eq!(cli.common.nats_url, "nats://file:4222");
        // The environment wins over the file (clap reads the real environment, where
        // JOBSTATS_STREAM is unset in tests, so the default shows the file was skipped).
        assert_eq!(cli.common.stream, "JOB_EVENTS");
        let Command::Serve(serve) = cli.command else {
            panic!("serve")
        };
        assert_eq!(
            serve.listen,
            "127.0.0.1:7".parse().unwrap(),
            "the flag wins"
        );
        assert_eq!(serve.max_runtime, Duration::from_secs(7200));
        assert!(serve.read_only);
        assert_eq!(serve.jwt.jwt_realms, Some(vec!["a".into(), "b".into()]));
    }

    #[test]
    fn an_unknown_key_stops_start_up_naming_it() {
        let error = layered(&["jobstats", "serve"], "natsurl = \"x\"", &[]).unwrap_err();
        assert!(error.contains("`natsurl`"), "{error}");
    }

    #[test]
    fn another_commands_keys_are_left_alone_and_a_run_command_keeps_its_arguments() {
        let args = layered(
            &["jobstats", "run", "--job", "j", "--", "echo", "hi"],
            "listen = \"127.0.0.1:9\"\ntenant = \"t\"",
            &[],
        )
        .unwrap();
        assert_eq!(
            args,
            [
                "jobstats",
                "run",
                "--tenant=t",
                "--job",
                "j",
                "--",
                "echo",
                "hi"
            ]
        );
    }

    #[test]
    fn a_secret_comes_from_its_variable_or_its_file_never_both() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "from-the-file\r\n").unwrap();
        let (var, file_var) = ("JOBSTATS_NATS_TOKEN", "JOBSTATS_NATS_TOKEN_FILE");
        let read = secret_from(None, Some(&file), var, file_var)
            .unwrap()
            .unwrap();
        assert_eq!((read.0.expose(), read.1), ("from-the-file", file_var));
        let given = secret_from(Some("direct"), None, var, file_var)
            .unwrap()
            .unwrap();
        assert_eq!((given.0.expose(), given.1), ("direct", var));
        let both = secret_from(Some("direct"), Some(&file), var, file_var).unwrap_err();
        assert_eq!(
            both,
            "set JOBSTATS_NATS_TOKEN or JOBSTATS_NATS_TOKEN_FILE, not both"
        );
        std::fs::write(&file, "\n").unwrap();
        let empty = secret_from(None, Some(&file), var, file_var).unwrap_err();
        assert!(empty.contains("is empty"), "{empty}");
        let missing = secret_from(None, Some(&dir.path().join("nope")), var, file_var).unwrap_err();
        assert!(
            missing.starts_with("JOBSTATS_NATS_TOKEN_FILE: cannot read"),
            "{missing}"
        );
        assert!(secret_from(None, None, var, file_var).unwrap().is_none());
    }
}
