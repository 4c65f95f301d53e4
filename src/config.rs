//! Command line and configuration (CONTRACT §4). Every option has a `JOBSTATS_*` environment
//! variable; an optional TOML file (`--config` / `JOBSTATS_CONFIG`) fills in variables that are
//! not set, so the precedence is flag > environment > file > default. A bad value stops
//! start-up with a message naming the variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::api::auth::AuthSettings;

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
    /// NATS server URL.
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the projector and the HTTP API in one process.
    Serve(ServeOptions),
    /// Replay the whole stream into a new SQLite file and swap it in atomically (a running
    /// `serve` switches to it without failing a request); or, with --output, build a
    /// point-in-time copy without swapping.
    Rebuild(RebuildOptions),
    /// Publish one validated event and wait for the JetStream ack.
    Publish(PublishOptions),
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
    /// Print the OpenAPI document.
    Openapi,
}

/// Token verification settings.
#[derive(Debug, Clone, Args)]
pub struct JwtOptions {
    /// HS256 secret (at least 32 bytes); unset: HS256 tokens are refused.
    #[arg(long, env = "JOBSTATS_JWT_HS256_SECRET", hide_env_values = true)]
    pub jwt_hs256_secret: Option<String>,
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
}

impl JwtOptions {
    pub fn settings(&self) -> AuthSettings {
        AuthSettings {
            hs256_secret: self.jwt_hs256_secret.clone().filter(|s| !s.is_empty()),
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
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeOptions {
    /// Address the HTTP API listens on.
    #[arg(long, env = "JOBSTATS_LISTEN", default_value = "127.0.0.1:8080", value_parser = parse_listen)]
    pub listen: SocketAddr,
    /// Durable consumer name (one per read replica).
    #[arg(long, env = "JOBSTATS_CONSUMER", default_value = "jobstats-projector", value_parser = parse_consumer_name)]
    pub consumer: String,
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
    #[command(flatten)]
    pub jwt: JwtOptions,
    #[command(flatten)]
    pub http: HttpLimits,
}

/// Limits that keep an exposed HTTP server from being exhausted by its clients.
#[derive(Debug, Clone, Args)]
pub struct HttpLimits {
    /// Most open client connections; more wait in the listen backlog until one closes.
    #[arg(long, env = "JOBSTATS_HTTP_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub http_max_connections: u32,
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
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            http_max_connections: 1024,
            http_idle_timeout: Duration::from_secs(60),
            http_request_timeout: Duration::from_secs(30),
            http2_max_streams: 64,
            http2_max_header_bytes: 16_384,
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
pub struct RebuildOptions {
    /// Stop at this point: an RFC 3339 time (events the stream received up to then) or a
    /// stream sequence. Requires --output.
    #[arg(long, requires = "output", value_parser = parse_until)]
    pub until: Option<RebuildUntil>,
    /// Write a point-in-time copy to this file instead of swapping the live database.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// Where a point-in-time rebuild stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebuildUntil {
    Sequence(u64),
    /// Unix ms: messages stored by JetStream at or before this time.
    Time(i64),
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
    /// How late a run may start and still count for its fire, e.g. `5m` (scheduled; 1s–1d;
    /// default: 10% of the cron period, clamped to 1m–1h).
    #[arg(long, value_parser = parse_duration)]
    pub grace: Option<Duration>,
    /// How long a run may process before it is stuck, e.g. `2h` (scheduled; 1s–30d; default:
    /// the service's JOBSTATS_MAX_RUNTIME).
    #[arg(long, value_parser = parse_duration)]
    pub max_runtime: Option<Duration>,
    /// When it happened (RFC 3339); default: now.
    #[arg(long)]
    pub occurred_at: Option<String>,
    /// Event id (UUID); default: a new one. Reuse it to retry a publish safely.
    #[arg(long)]
    pub event_id: Option<String>,
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

/// Loads the optional TOML file into the environment for every variable not already set.
/// Runs before any thread starts.
pub fn load_config_file(args: &[String]) -> Result<(), String> {
    let from_args = args
        .windows(2)
        .find(|w| w[0] == "--config")
        .map(|w| w[1].clone())
        .or_else(|| {
            args.iter()
                .find_map(|a| a.strip_prefix("--config=").map(str::to_owned))
        });
    let Some(path) = from_args.or_else(|| std::env::var("JOBSTATS_CONFIG").ok()) else {
        return Ok(());
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("JOBSTATS_CONFIG/--config {path}: {e}"))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| format!("JOBSTATS_CONFIG/--config {path}: {e}"))?;
    for (key, value) in table {
        let variable = format!("JOBSTATS_{}", key.to_ascii_uppercase());
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Array(items) => items
                .iter()
                .map(|i| {
                    i.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| i.to_string())
                })
                .collect::<Vec<_>>()
                .join(","),
            other => other.to_string(),
        };
        if std::env::var_os(&variable).is_none() {
            std::env::set_var(&variable, value);
        }
    }
    Ok(())
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
}
