//! The one integration-test binary: real NATS JetStream servers, real SQLite files, the real
//! `jobstats` binary and server.

mod api;
mod availability;
mod bench;
mod channels;
mod cli;
mod cluster;
mod contract;
mod dashboard;
mod export;
mod flips;
mod fresh_machine;
mod freshness;
mod hardening;
mod health;
mod helpers;
mod https;
mod idp;
mod ingest;
mod jobs;
mod notify;
mod percentiles;
mod projector;
mod prometheus;
mod replay;
mod runs;
mod scale;
mod secure_nats;
