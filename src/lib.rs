//! jobstats: job lifecycle events from NATS JetStream, projected into SQLite read models and
//! served as job statistics over a JWT-protected HTTP API.
//!
//! Module map (arrows point inward: edges depend on the core, never the reverse):
//!
//! | module | owns | must not |
//! |---|---|---|
//! | [`events`] | the wire contract: types, decoding, validation, `DecodeError` | do I/O |
//! | [`schedule`] | 5-field cron parsing and next fire time | do I/O |
//! | [`scope`] | tenant shards: which tenants a replica projects and serves | do I/O |
//! | [`projection`] | the pure core: execution state machine, aggregate deltas, formatting | do I/O or async |
//! | [`store`] | SQLite: migrations, the batch writer + checkpoint, read-only readers, generations | await anything |
//! | [`stream`] | NATS connection and the stream definition | touch SQLite |
//! | [`ingest`] | the one path stream → decode → batches → writer; [`ingest::live`] (durable consumer, ack after commit) and [`ingest::replay`] (rebuilds, the swap) are policies over it | answer HTTP |
//! | [`api`] | HTTP: routes, auth, errors, health, metrics | write SQLite |
//! | [`job_metrics`] | the per-job Prometheus series: rendered from `job_stats` rows and the announced health states | read history |
//! | [`keys`] | ingest keys: made, hashed, kept in the `JOBSTATS_KEYS` bucket, followed into each replica's key ring | touch SQLite |
//! | [`notify`] | health notifications: the evaluator that publishes each job's state changes to `JOB_HEALTH`, and alert channel delivery from it (webhooks, Slack, PagerDuty, Opsgenie, Teams, e-mail, Alertmanager) | write SQLite |
//! | [`publish`] | the publisher used by `jobstats publish`/`run`, the demo and Rust runners | read SQLite |
//! | [`service`] | wires the pieces into `serve` (projector + API, start-up rebuild) | hold business rules |
//! | [`shutdown`] | the stop signal every task of `serve` waits on | |
//! | [`retry`] | supervised retries: exponential back-off with jitter, a repeated failure logged once | do I/O |
//! | [`runner`] | `jobstats run`: wraps a command as one execution | |
//! | [`demo`] | `jobstats demo`: NATS + serve + demo job runners | |
//! | [`cli`] | the command line: flags, environment and file layered; one function per subcommand, turning them into domain options | be called by the library |
#![forbid(unsafe_code)]

pub mod api;
pub mod cache;
pub mod cli;
pub mod demo;
pub mod events;
pub mod ingest;
pub mod job_metrics;
pub mod keys;
pub mod metrics;
pub mod nats_server;
pub mod notify;
pub mod projection;
pub mod publish;
pub mod retry;
pub mod runner;
pub mod schedule;
pub mod scope;
pub mod service;
pub mod shutdown;
pub mod store;
pub mod stream;
