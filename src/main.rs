//! The `jobstats` binary: parses the command line, sets up logging, dispatches.

use std::process::ExitCode;

use jobstats::cli::{self, LogFormat};

fn main() -> ExitCode {
    let cli = match cli::parse_layered(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    // Long-running commands log progress; one-shot tools only warnings (their output is the result).
    let quiet = cli::is_quiet(&cli.command);
    // Our progress lines at INFO, dependencies only when something is wrong (async_nats
    // alone logs four "connected" lines at start); RUST_LOG overrides both.
    init_tracing(
        cli.common.log_format,
        if quiet { "warn" } else { "warn,jobstats=info" },
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime can always be built on Linux");
    let code = match runtime.block_on(cli::dispatch(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    };
    // Dropping a runtime waits for every blocking task; one stuck on I/O must not keep a
    // stopped process alive.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    code
}

fn init_tracing(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
