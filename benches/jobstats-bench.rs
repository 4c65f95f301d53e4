//! Benchmark harness: one run, one local nats-server, ratios against ceilings measured in the
//! same run (absolute numbers drift ±20% on shared machines; ratios hold).
//!
//! `cargo bench --bench jobstats-bench` writes BENCHMARKS.md (`-- --cluster`:
//! BENCHMARKS-cluster.md); `-- --smoke` runs a tiny version in seconds (CI: `cargo test
//! --bench jobstats-bench -- --smoke`) and writes nothing.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, consumer::DeliverPolicy};
use chrono::{TimeZone, Utc};
use futures::StreamExt;
use jobstats::nats_server::JetStreamServer;
use jobstats::publish::{EventBuilder, RunEnd};
use jobstats::store::{IncomingMessage, ReadPool, Writer};

#[path = "support/figures.rs"]
mod figures;
use figures::{
    goal_only, stated, verdict, wrk_errors, wrk_ms, Direction::AtLeast, Direction::AtMost,
};

/// The note of a figure judged by the ratio (or median) right after it.
const JUDGED_BELOW: &str = "verdict: the ratio below";

struct Row {
    figure: String,
    value: String,
    note: String,
}

/// The realistic mix: 10 tenants × 100 jobs; enqueued, started, then completed (~97%) or
/// failed (~3%); ~1% of events repeated under a new event id.
fn mix(total: usize) -> Vec<jobstats::events::Event> {
    mix_from(total, 0)
}

/// [`mix`] with execution numbers starting at `first_execution`.
fn mix_from(total: usize, first_execution: u64) -> Vec<jobstats::events::Event> {
    let tenants: Vec<String> = (0..10)
        .map(|i| format!("00000000-0000-4000-8000-{i:012}"))
        .collect();
    // Runs one per second up to about now (1M events are ~4 days of runs), so their finishes
    // land in the minute and hour rollups the way live traffic does, and windows hold them.
    let t0 = Utc::now() - chrono::Duration::seconds((total / 3) as i64);
    let mut events = Vec::with_capacity(total + total / 50);
    let mut execution = first_execution;
    while events.len() < total {
        let tenant = &tenants[(execution % 10) as usize];
        let job = format!("job-{}", (execution / 10) % 100);
        let start = t0 + chrono::Duration::seconds(execution as i64);
        let run = EventBuilder::new(tenant, &job)
            .unwrap()
            .execution(&format!("exec-{execution}"))
            .unwrap();
        let duration = chrono::Duration::milliseconds(500 + (execution * 7919 % 60_000) as i64);
        let end = if execution.is_multiple_of(33) {
            RunEnd::Failed {
                items: Some(1),
                error: Some("boom"),
            }
        } else {
            RunEnd::Completed {
                items: Some(execution % 500),
            }
        };
        let mut run = run
            .run(start, Some(chrono::Duration::zero()), duration, end)
            .unwrap();
        if execution % 33 == 7 {
            let mut again = run[2].clone();
            again.event_id = uuid::Uuid::new_v4();
            run.insert(2, again);
        }
        events.extend(run);
        execution += 1;
    }
    events.truncate(total);
    events
}

async fn publish(js: &jetstream::Context, events: &[jobstats::events::Event]) -> u64 {
    let mut last = 0;
    for chunk in events.chunks(2_000) {
        let mut acks = Vec::with_capacity(chunk.len());
        for event in chunk {
            acks.push(
                js.publish(event.subject(), event.to_bytes().into())
                    .await
                    .expect("publish"),
            );
        }
        for ack in acks {
            last = last.max(ack.await.expect("ack").sequence);
        }
    }
    last
}

/// [`publish`] with each event's id as its `Nats-Msg-Id`, as every jobstats publisher sends
/// it (JetStream then keeps each id for its duplicate window).
async fn publish_with_ids(js: &jetstream::Context, events: &[jobstats::events::Event]) -> u64 {
    let mut last = 0;
    for chunk in events.chunks(2_000) {
        let mut acks = Vec::with_capacity(chunk.len());
        for event in chunk {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", event.event_id.to_string().as_str());
            acks.push(
                js.publish_with_headers(event.subject(), headers, event.to_bytes().into())
                    .await
                    .expect("publish"),
            );
        }
        for ack in acks {
            last = last.max(ack.await.expect("ack").sequence);
        }
    }
    last
}

/// A client on `nodes` (the seed list) once the cluster has taken an R3 `JOB_EVENTS`.
async fn r3_stream(nodes: &[JetStreamServer]) -> (String, jetstream::Context) {
    let seeds = nodes.iter().map(|n| n.url()).collect::<Vec<_>>().join(",");
    let client = jobstats::stream::connect(
        &jobstats::stream::NatsSettings::from_url(&seeds).unwrap(),
        "bench-cluster",
        true,
    )
    .await
    .unwrap();
    let js = jetstream::new(client);
    let spec = jobstats::stream::StreamSpec {
        name: "JOB_EVENTS".into(),
        replicas: 3,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while jobstats::stream::ensure_stream(&js, &spec).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the cluster never took the stream"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (seeds, js)
}

/// Ceiling 1: a durable pull consumer that does nothing but ack once per batch (AckPolicy All).
async fn noop_durable(js: &jetstream::Context, head: u64, batch: usize) -> f64 {
    let stream = js.get_stream("JOB_EVENTS").await.unwrap();
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("noop".into()),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::All,
            max_ack_pending: (batch * 4) as i64,
            ..Default::default()
        })
        .await
        .unwrap();
    let started = Instant::now();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(2_000)
        .messages()
        .await
        .unwrap();
    let mut count = 0usize;
    while let Some(message) = messages.next().await {
        let message = message.unwrap();
        count += 1;
        let sequence = message.info().unwrap().stream_sequence;
        if count.is_multiple_of(batch) || sequence >= head {
            message.ack().await.unwrap();
        }
        if sequence >= head {
            break;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    stream.delete_consumer("noop").await.unwrap();
    head as f64 / elapsed
}

/// Ceiling 3: an ordered consumer that only reads.
async fn noop_ordered(js: &jetstream::Context, head: u64) -> f64 {
    let stream = js.get_stream("JOB_EVENTS").await.unwrap();
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
    let started = Instant::now();
    let mut messages = consumer.messages().await.unwrap();
    while let Some(message) = messages.next().await {
        if message.unwrap().info().unwrap().stream_sequence >= head {
            break;
        }
    }
    head as f64 / started.elapsed().as_secs_f64()
}

const SECOND: chrono::Duration = chrono::Duration::seconds(1);

const BENCH_SECRET: &str = "bench-secret-0123456789abcdef0123456789";

/// `jobstats serve` (the binary cargo built with this harness) on an empty database.
struct Serve {
    process: std::process::Child,
    port: u16,
}

impl Serve {
    fn start(nats_url: &str, db: &Path, consumer: &str, env: &[(&str, &str)]) -> Serve {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let process = std::process::Command::new(env!("CARGO_BIN_EXE_jobstats"))
            .arg("serve")
            .env("JOBSTATS_NATS_URL", nats_url)
            .env("JOBSTATS_DB_PATH", db)
            .env("JOBSTATS_LISTEN", format!("127.0.0.1:{port}"))
            .env("JOBSTATS_JWT_HS256_SECRET", BENCH_SECRET)
            .env("JOBSTATS_CONSUMER", consumer)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .spawn()
            .expect("jobstats serve (cargo builds it for the bench)");
        Serve { process, port }
    }

    /// Peak resident memory so far, in kB.
    fn peak_rss_kb(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Projector catch-up as users run it: `jobstats serve` started on an empty database, timed
/// from the spawn until its checkpoint (read from the file) reaches the head.
async fn serve_catch_up(nats_url: &str, db: &Path, consumer: &str, head: u64) -> (f64, Serve) {
    serve_catch_up_with(nats_url, db, consumer, head, &[]).await
}

/// [`serve_catch_up`] with more environment for `serve`.
async fn serve_catch_up_with(
    nats_url: &str,
    db: &Path,
    consumer: &str,
    head: u64,
    env: &[(&str, &str)],
) -> (f64, Serve) {
    let started = Instant::now();
    let mut serve = Serve::start(nats_url, db, consumer, env);
    let mut pool = None;
    loop {
        if let Ok(Some(status)) = serve.process.try_wait() {
            panic!("jobstats serve exited during catch-up: {status}");
        }
        if pool.is_none() && db.exists() {
            pool = ReadPool::open(db).ok();
        }
        if let Some(pool) = &pool {
            if pool.freshness().is_ok_and(|f| f.last_sequence >= head) {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "catch-up took over 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (head as f64 / started.elapsed().as_secs_f64(), serve)
}

/// The apply path alone: decode, state machine, aggregates, one WAL commit per 5k events.
fn writer_only_rate(dir: &Path, events: &[jobstats::events::Event]) -> f64 {
    let encoded: Vec<(String, Vec<u8>)> =
        events.iter().map(|e| (e.subject(), e.to_bytes())).collect();
    let (mut writer, _) = Writer::open(&dir.join("writer-only.db")).unwrap();
    let started = Instant::now();
    let mut sequence = 0u64;
    let batch: usize = std::env::var("BENCH_BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(20_000);
    for chunk in encoded.chunks(batch) {
        apply_encoded(&mut writer, chunk, &mut sequence);
    }
    encoded.len() as f64 / started.elapsed().as_secs_f64()
}

/// Applies (subject, payload) pairs as the next stream sequences, in one batch.
fn apply_encoded(writer: &mut Writer, encoded: &[(String, Vec<u8>)], sequence: &mut u64) {
    let incoming: Vec<IncomingMessage<'_>> = encoded
        .iter()
        .map(|(subject, payload)| {
            *sequence += 1;
            IncomingMessage {
                sequence: *sequence,
                subject,
                payload,
                published_at_ms: None,
            }
        })
        .collect();
    writer.apply_batch(&incoming).unwrap();
}

/// p50 of one stats read (aggregates + 10 recent + checkpoint) for a job with `executions`.
fn query_p50_us(dir: &Path, executions: u64) -> f64 {
    let db = dir.join(format!("query-{executions}.db"));
    let (mut writer, _) = Writer::open(&db).unwrap();
    let tenant = "00000000-0000-4000-8000-000000000001";
    let run_base = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
    let mut sequence = 0u64;
    let mut pending: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..executions {
        let run = EventBuilder::new(tenant, "big")
            .unwrap()
            .execution(&format!("e{i}"))
            .unwrap();
        let start = run_base + chrono::Duration::seconds(i as i64);
        let end = RunEnd::Completed { items: None };
        for event in run.run(start, None, SECOND, end).unwrap() {
            pending.push((event.subject(), event.to_bytes()));
        }
        if pending.len() >= 20_000 || i + 1 == executions {
            apply_encoded(&mut writer, &pending, &mut sequence);
            pending.clear();
        }
    }
    let pool = ReadPool::open(&db).unwrap();
    let tenant = jobstats::events::TenantId::parse(tenant).unwrap();
    let job = jobstats::events::JobName::parse("big").unwrap();
    let mut samples = Vec::new();
    for _ in 0..2_000 {
        let started = Instant::now();
        let snapshot = pool.job_snapshot(&tenant, &job, 10).unwrap().unwrap();
        samples.push(started.elapsed().as_secs_f64() * 1e6);
        assert_eq!(snapshot.stats.completed as u64, executions);
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// For two jobs of `sizes` runs spread evenly over 30 days (run times 0.5-60 s, so each
/// hour's sketch holds as many distinct buckets as its runs allow), the p50s (us) of (plain
/// stats read, stats + ?window=30d with no cache at all, stats + ?window=30d as a changed job
/// reads it: closed hours merged before, the current hour read).
fn window_read_p50_us(dir: &Path, sizes: [u64; 2]) -> [(f64, f64, f64); 2] {
    let tenant = jobstats::events::TenantId::parse("00000000-0000-4000-8000-000000000001").unwrap();
    let job = jobstats::events::JobName::parse("windowed").unwrap();
    let end = Utc.with_ymd_and_hms(2025, 7, 1, 0, 0, 0).unwrap();
    let range = jobstats::projection::rollup::Window::Month.buckets(end.timestamp_millis());
    let pools = sizes.map(|executions| {
        let pool = ReadPool::open(&window_db(dir, executions, end)).unwrap();
        pool.read_window_reusing_closed_hours(1, range).unwrap();
        pool
    });
    let reads = std::env::var("BENCH_WINDOW_READS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000);
    // [job][plain, no cache, reusing]: the two jobs' reads alternate, so whatever else the
    // machine does weighs on both alike.
    let mut samples: [[Vec<f64>; 3]; 2] = Default::default();
    for _ in 0..reads {
        for ((pool, executions), samples) in pools.iter().zip(sizes).zip(samples.iter_mut()) {
            let started = Instant::now();
            let alone = pool.job_snapshot(&tenant, &job, 10).unwrap().unwrap();
            samples[0].push(started.elapsed().as_secs_f64() * 1e6);
            assert_eq!(alone.stats.completed as u64, executions);
            let started = Instant::now();
            let snapshot = pool.job_snapshot(&tenant, &job, 10).unwrap().unwrap();
            let (_, merged) = pool.read_window(snapshot.job_id, range).unwrap();
            let _ = merged.percentiles();
            samples[1].push(started.elapsed().as_secs_f64() * 1e6);
            assert_eq!(merged.completed as u64, executions);
            assert_eq!(snapshot.stats.completed as u64, executions);
            let started = Instant::now();
            let snapshot = pool.job_snapshot(&tenant, &job, 10).unwrap().unwrap();
            let (_, again) = pool
                .read_window_reusing_closed_hours(snapshot.job_id, range)
                .unwrap();
            let _ = again.percentiles();
            samples[2].push(started.elapsed().as_secs_f64() * 1e6);
            assert_eq!(again, merged);
        }
    }
    let p50 = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    samples.map(|[mut plain, mut cold, mut reusing]| {
        (p50(&mut plain), p50(&mut cold), p50(&mut reusing))
    })
}

/// A database of one job, `windowed`, with `executions` completed runs over the 30 days
/// before `end`.
fn window_db(dir: &Path, executions: u64, end: chrono::DateTime<Utc>) -> std::path::PathBuf {
    let db = dir.join(format!("window-{executions}.db"));
    let (mut writer, _) = Writer::open(&db).unwrap();
    let tenant = "00000000-0000-4000-8000-000000000001";
    let span_ms = 30 * 86_400_000i64;
    let mut sequence = 0u64;
    let mut pending: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..executions {
        let run = EventBuilder::new(tenant, "windowed")
            .unwrap()
            .execution(&format!("e{i}"))
            .unwrap();
        let start = end - chrono::Duration::milliseconds(span_ms)
            + chrono::Duration::milliseconds((span_ms as u64 / executions * i) as i64);
        let took = chrono::Duration::milliseconds(500 + (i * 7919 % 60_000) as i64);
        for event in run
            .run(start, None, took, RunEnd::Completed { items: None })
            .unwrap()
        {
            pending.push((event.subject(), event.to_bytes()));
        }
        if pending.len() >= 20_000 || i + 1 == executions {
            apply_encoded(&mut writer, &pending, &mut sequence);
            pending.clear();
        }
    }
    db
}

/// Rows and bytes of the rollups in a database: (rows, sketch bytes, days its finishes span).
fn rollup_storage(db: &Path) -> (i64, i64, f64) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(LENGTH(duration_sketch)), 0),
                (MAX(bucket_start) - MIN(bucket_start)) / 86400000.0 + 1
         FROM rollups",
        [],
        |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get::<_, Option<f64>>(2)?.unwrap_or(0.0),
            ))
        },
    )
    .unwrap()
}

/// Sizes of vacuumed copies of a database: as it is, and without what percentiles and
/// windows added (the rollups and the jobs' sketches): the database before and after them.
fn size_without_rollups(db: &Path, scratch: &Path) -> (u64, u64) {
    std::fs::create_dir_all(scratch).unwrap();
    let (whole, stripped) = (scratch.join("whole.db"), scratch.join("stripped.db"));
    let conn = rusqlite::Connection::open(db).unwrap();
    for copy in [&whole, &stripped] {
        let _ = std::fs::remove_file(copy);
        conn.execute("VACUUM INTO ?1", [copy.to_str().unwrap()])
            .unwrap();
    }
    let copy = rusqlite::Connection::open(&stripped).unwrap();
    copy.execute_batch(
        "DELETE FROM rollups;
         UPDATE job_stats SET duration_sketch = NULL, queue_wait_sketch = NULL;
         VACUUM;",
    )
    .unwrap();
    drop(copy);
    let size = |path: &Path| std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    (size(&whole), size(&stripped))
}

/// Writes one `*/10 * * * *` job: `history` runs long before the health window, then one run
/// per fire over the last `recent` fires up to now. Returns the database path.
fn scheduled_job_db(dir: &Path, name: &str, history: u64, recent: u64) -> std::path::PathBuf {
    let db = dir.join(format!("{name}.db"));
    let (mut writer, _) = Writer::open(&db).unwrap();
    let tenant = "00000000-0000-4000-8000-000000000001";
    let job = EventBuilder::new(tenant, "scheduled").unwrap();
    let now = Utc::now();
    let ten_minutes = chrono::Duration::minutes(10);
    let last_fire = now - chrono::Duration::seconds(now.timestamp().rem_euclid(600));
    let first_recent = last_fire - ten_minutes * (recent as i32 - 1);
    let history_base =
        first_recent - chrono::Duration::days(30) - chrono::Duration::seconds(history as i64);
    let mut sequence = 0u64;
    let mut pending: Vec<(String, Vec<u8>)> = Vec::new();
    let scheduled = job
        .clone()
        .at(history_base - chrono::Duration::seconds(1))
        .scheduled(Some("*/10 * * * *"))
        .unwrap();
    pending.push((scheduled.subject(), scheduled.to_bytes()));
    let starts = (0..history)
        .map(|i| history_base + chrono::Duration::seconds(i as i64))
        .chain(
            (0..recent)
                .map(|i| first_recent + ten_minutes * i as i32 + chrono::Duration::seconds(2)),
        );
    for (i, start) in starts.enumerate() {
        let run = job.clone().execution(&format!("e{i}")).unwrap();
        let half_a_second = chrono::Duration::milliseconds(500);
        let end = RunEnd::Completed { items: None };
        for event in run.run(start, None, half_a_second, end).unwrap() {
            pending.push((event.subject(), event.to_bytes()));
        }
        if pending.len() >= 20_000 {
            apply_encoded(&mut writer, &pending, &mut sequence);
            pending.clear();
        }
    }
    apply_encoded(&mut writer, &pending, &mut sequence);
    db
}

/// p50 of a stats read with health (snapshot from SQLite, no cache, then the health verdict
/// at the present) for the job [`scheduled_job_db`] wrote.
fn health_read_p50_us(db: &Path) -> (f64, f64) {
    use jobstats::projection::health::{HealthState, Judgement};
    let pool = ReadPool::open(db).unwrap();
    let tenant = jobstats::events::TenantId::parse("00000000-0000-4000-8000-000000000001").unwrap();
    let job = jobstats::events::JobName::parse("scheduled").unwrap();
    let (mut whole, mut reads) = (Vec::new(), Vec::new());
    for _ in 0..500 {
        let started = Instant::now();
        let snapshot = pool.job_snapshot(&tenant, &job, 10).unwrap().unwrap();
        reads.push(started.elapsed().as_secs_f64() * 1e6);
        let now = Utc::now().timestamp_millis();
        let health = snapshot.judge(Judgement::At(now), 3_600_000);
        whole.push(started.elapsed().as_secs_f64() * 1e6);
        assert_eq!(health.state, HealthState::Healthy, "{health:?}");
    }
    whole.sort_by(f64::total_cmp);
    reads.sort_by(f64::total_cmp);
    (whole[whole.len() / 2], reads[reads.len() / 2])
}

/// `jobs` scheduled jobs in one tenant, every tenth of them failing; p50 and p99 (ms) of
/// `GET /api/v1/admin/jobs?health=missed,failing&limit=50` and of the unfiltered name-sorted page,
/// through the real HTTP stack in-process (auth, parsing, the handler, JSON).
/// `jobs` jobs of one tenant on three crons, one run each, every tenth failing.
fn job_list_db(db: &Path, tenant: &str, jobs: u64) {
    let (mut writer, _) = Writer::open(db).unwrap();
    let base = Utc::now() - chrono::Duration::hours(1);
    let mut sequence = 0u64;
    let mut pending: Vec<(String, Vec<u8>)> = Vec::new();
    // Three crons shared by all jobs, as real fleets share a handful.
    let crons = ["* * * * *", "*/5 * * * *", "0 * * * *"];
    for j in 0..jobs {
        let job = EventBuilder::new(tenant, &format!("job-{j:05}")).unwrap();
        let scheduled = job
            .clone()
            .at(base - chrono::Duration::days(10))
            .scheduled(Some(crons[j as usize % crons.len()]))
            .unwrap();
        pending.push((scheduled.subject(), scheduled.to_bytes()));
        let end = if j % 10 == 0 {
            RunEnd::Failed {
                items: None,
                error: Some("boom"),
            }
        } else {
            RunEnd::Completed { items: None }
        };
        let run = job.execution(&format!("e{j}")).unwrap();
        let start = base + chrono::Duration::milliseconds(j as i64);
        for event in run.run(start, None, SECOND, end).unwrap() {
            pending.push((event.subject(), event.to_bytes()));
        }
    }
    apply_encoded(&mut writer, &pending, &mut sequence);
}

async fn job_list_latencies(dir: &Path, jobs: u64) -> [(f64, f64); 2] {
    use poem::Endpoint;
    let db = dir.join(format!("job-list-{jobs}.db"));
    let tenant = "00000000-0000-4000-8000-000000000001";
    job_list_db(&db, tenant, jobs);
    let state = bench_state(&db, jobstats::job_metrics::DEFAULT_MAX_JOBS);
    let app = jobstats::api::app(state, jobstats::api::Operations::WithApi);
    let token = bench_token("system_admin", Some(tenant));
    let mut figures = [(0.0, 0.0); 2];
    for (figure, query) in figures
        .iter_mut()
        .zip(["health=missed,failing&limit=50", "limit=50"])
    {
        let mut samples = Vec::new();
        for round in 0..220 {
            let request = poem::Request::builder()
                .uri(format!("/api/v1/admin/jobs?{query}").parse().unwrap())
                .header("authorization", format!("Bearer {token}"))
                .header("x-tenantid", tenant)
                .finish();
            let started = Instant::now();
            let response = app.call(request).await.unwrap();
            let body = response.into_body().into_vec().await.unwrap();
            let elapsed = started.elapsed().as_secs_f64() * 1e3;
            let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                page["data"]["jobs"].as_array().map(Vec::len),
                Some(50),
                "a full page of {query}: {}",
                page["message"]
            );
            // The first rounds fill the snapshot cache, as a running server's would be.
            if round >= 20 {
                samples.push(elapsed);
            }
        }
        samples.sort_by(f64::total_cmp);
        *figure = (
            samples[samples.len() / 2],
            samples[samples.len() * 99 / 100],
        );
    }
    figures
}

/// An in-process serve's state over the read model in `db` (no NATS), exporting per-job
/// metrics for up to `job_metrics_max` jobs.
fn bench_state(db: &Path, job_metrics_max: usize) -> Arc<jobstats::api::AppState> {
    let readers = Arc::new(jobstats::store::CurrentReader::new(
        ReadPool::open(db).unwrap(),
    ));
    let authenticator =
        jobstats::api::auth::Authenticator::new(jobstats::api::auth::AuthSettings {
            hs256_secret: Some(BENCH_SECRET.into()),
            public_key_file: None,
            issuer: None,
            realms: None,
            audience: None,
            jwks_url: None,
        })
        .unwrap();
    Arc::new(jobstats::api::AppState {
        readers,
        authenticator,
        metrics: Default::default(),
        status: Default::default(),
        nats: None,
        bodies: Default::default(),
        default_max_runtime_ms: 3_600_000,
        applied: tokio::sync::watch::channel(0).1,
        tenants: jobstats::scope::TenantScope::all(),
        waiters: tokio::sync::Semaphore::new(1024),
        list_orders: Default::default(),
        flips: Default::default(),
        ui: Default::default(),
        job_health: Default::default(),
        job_metrics_max,
        ingest: Default::default(),
    })
}
/// (13): p50 of an admin `/metrics` scrape over `jobs` jobs with every job's series, and of
/// the same scrape with the per-job series off (`JOBSTATS_JOB_METRICS_MAX=0`: the
/// service-level metrics alone), and the resident memory the per-job series add.
async fn scrape_latencies(dir: &Path, jobs: u64) -> ScrapeFigures {
    use poem::Endpoint;
    let db = dir.join("scrape.db");
    let tenant = "00000000-0000-4000-8000-000000000001";
    job_list_db(&db, tenant, jobs);
    let mut p50 = [0.0; 2];
    let mut bytes = [0usize; 2];
    let mut rss_growth_kb = 0;
    // The service-level scrape first, so the RSS growth below is what the series add.
    for (slot, max) in [(1, 0), (0, jobs as usize)] {
        let state = bench_state(&db, max);
        let rss_before = rss_kb();
        for j in 0..jobs {
            let health = if j % 10 == 0 {
                jobstats::projection::HealthState::Failing
            } else {
                jobstats::projection::HealthState::Healthy
            };
            state.job_health.set(tenant, &format!("job-{j:05}"), health);
        }
        state.job_health.mark_loaded();
        let app = jobstats::api::admin_app(state);
        let mut samples = Vec::new();
        for round in 0..120 {
            let request = poem::Request::builder()
                .uri("/metrics".parse().unwrap())
                .finish();
            let started = Instant::now();
            let response = app.call(request).await.unwrap();
            let body = response.into_body().into_vec().await.unwrap();
            let elapsed = started.elapsed().as_secs_f64() * 1e3;
            let series = body
                .split(|b| *b == b'\n')
                .filter(|line| line.starts_with(b"jobstats_job_executions_total{"))
                .count();
            assert_eq!(series, 2 * max, "per-job series in the scrape");
            bytes[slot] = body.len();
            // The first rounds fill the caches (and count jobs by health), as a running
            // server's would be.
            if round >= 20 {
                samples.push(elapsed);
            }
        }
        samples.sort_by(f64::total_cmp);
        p50[slot] = samples[samples.len() / 2];
        if slot == 0 {
            rss_growth_kb = rss_kb().saturating_sub(rss_before);
        }
        drop(app);
    }
    ScrapeFigures {
        per_job_p50_ms: p50[0],
        service_p50_ms: p50[1],
        per_job_bytes: bytes[0],
        service_bytes: bytes[1],
        rss_growth_kb,
    }
}

/// The same series for `jobs` jobs kept in prometheus-client families (what a hand-written
/// exporter holds in memory) and encoded: p50 of the encoding alone (ms) and its bytes.
fn prometheus_client_p50(jobs: u64) -> (f64, usize) {
    use prometheus_client::encoding::text::encode;
    use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
    type Labels = Vec<(&'static str, String)>;
    let mut registry = prometheus_client::registry::Registry::default();
    let executions = Family::<Labels, Counter>::default();
    let health = Family::<Labels, Gauge>::default();
    let gauges: Vec<Family<Labels, Gauge>> = (0..5).map(|_| Family::default()).collect();
    let quantiles = Family::<Labels, Gauge>::default();
    let states = ["new", "healthy", "failing", "stuck", "missed", "unknown"];
    for j in 0..jobs {
        let base: Labels = vec![
            ("tenant", "00000000-0000-4000-8000-000000000001".to_owned()),
            ("job", format!("job-{j:05}")),
        ];
        let with = |name: &'static str, value: &str| {
            let mut labels = base.clone();
            labels.push((name, value.to_owned()));
            labels
        };
        executions
            .get_or_create(&with("outcome", "completed"))
            .inc_by(9);
        executions
            .get_or_create(&with("outcome", "failed"))
            .inc_by(1);
        for state in states {
            health
                .get_or_create(&with("state", state))
                .set(i64::from(state == "healthy"));
        }
        for gauge in &gauges {
            gauge.get_or_create(&base).set(1_765_000_000);
        }
        for q in ["0.5", "0.9", "0.95", "0.99"] {
            quantiles.get_or_create(&with("quantile", q)).set(1);
        }
    }
    registry.register("jobstats_job_executions", "Executions", executions);
    registry.register("jobstats_job_health", "Health", health);
    for (i, gauge) in gauges.into_iter().enumerate() {
        registry.register(format!("jobstats_job_gauge_{i}"), "A per-job gauge", gauge);
    }
    registry.register("jobstats_job_duration_seconds", "Durations", quantiles);
    let mut samples = Vec::new();
    let mut bytes = 0;
    for round in 0..60 {
        let started = Instant::now();
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        let elapsed = started.elapsed().as_secs_f64() * 1e3;
        bytes = text.len();
        if round >= 10 {
            samples.push(elapsed);
        }
    }
    samples.sort_by(f64::total_cmp);
    (samples[samples.len() / 2], bytes)
}

struct ScrapeFigures {
    per_job_p50_ms: f64,
    service_p50_ms: f64,
    per_job_bytes: usize,
    service_bytes: usize,
    rss_growth_kb: u64,
}

/// This process's resident set (kB), 0 where /proc is not there.
fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// wrk's requests per second and its p50 and p99 latencies.
type WrkFigures = (f64, String, String);

/// wrk against `url`: `None` without wrk (or with output it cannot read), `Err` with wrk's
/// error lines when any request got a non-2xx/3xx answer or a socket error (an endpoint that
/// fails fast must not raise a req/s figure).
fn wrk(url: &str, token: Option<&str>) -> Option<Result<WrkFigures, String>> {
    let mut command = std::process::Command::new("wrk");
    command.args(["-t2", "-c64", "-d5s", "--latency"]);
    if let Some(token) = token {
        command.args([
            "-H",
            &format!("authorization: Bearer {token}"),
            "-H",
            "x-tenantid: 00000000-0000-4000-8000-000000000001",
        ]);
    }
    let output = command.arg(url).output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let errors = wrk_errors(&text);
    if !errors.is_empty() {
        return Some(Err(errors.join("; ")));
    }
    let rate = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let percentile = |p: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(p))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?")
            .to_owned()
    };
    Some(Ok((rate, percentile("50%"), percentile("99%"))))
}

/// Flags of the harness.
#[derive(Debug, Clone, clap::Parser)]
#[command(about = "jobstats benchmark harness: ratios against ceilings measured in one run")]
struct BenchArgs {
    /// A tiny run in seconds (CI); writes nothing.
    #[arg(long)]
    smoke: bool,
    /// Events in the stream (default 1,000,000; 5,000 with --smoke). BENCHMARKS.md is written
    /// only by a full run of 1,000,000 with HTTP.
    #[arg(long)]
    events: Option<usize>,
    /// Skip the wrk figures (4).
    #[arg(long)]
    no_http: bool,
    /// Only figure (0), the SQLite writer alone.
    #[arg(long)]
    writer_only: bool,
    /// Only figures (7) and (8), health reads and the job list.
    #[arg(long)]
    health_only: bool,
    /// Only figure (14), HTTP ingestion against publishing to NATS directly.
    #[arg(long)]
    ingest_only: bool,
    /// Only figure (13), a scrape of 10,000 jobs' metrics against the service-level scrape.
    #[arg(long)]
    scrape_only: bool,
    /// Only figure (9), the 30-day window reads (BENCH_WINDOW_READS sets how many).
    #[arg(long)]
    window_only: bool,
    /// Only the cluster figures (11): one node vs a 3-node cluster with an R3 stream, and a
    /// replica bootstrapped from a snapshot vs from the stream; a run of 1,000,000 events
    /// writes them to BENCHMARKS-cluster.md.
    #[arg(long)]
    cluster: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The figures of this run, printed as they come.
#[derive(Default)]
struct Table {
    rows: Vec<Row>,
}

impl Table {
    fn row(&mut self, figure: &str, value: String, note: &str) {
        println!("{figure:<55} {value:>14}  {note}");
        self.rows.push(Row {
            figure: figure.into(),
            value,
            note: note.into(),
        });
    }
}

/// What every section of a run shares: its flags, a temporary directory, one nats-server.
struct Bench {
    args: BenchArgs,
    dir: tempfile::TempDir,
    nats: JetStreamServer,
    client: async_nats::Client,
    js: jetstream::Context,
    table: Table,
    /// Figures that could not be taken honestly (a wrk run that saw errors): the run fails.
    failures: Vec<String>,
}

#[tokio::main]
async fn main() {
    let args = <BenchArgs as clap::Parser>::parse();
    let total = args
        .events
        .unwrap_or(if args.smoke { 5_000 } else { 1_000_000 });
    let mut bench = Bench::start(args).await;
    if bench.args.health_only {
        bench.health_only().await;
        return;
    }
    if bench.args.ingest_only {
        bench.ingest().await;
        for row in &bench.table.rows {
            println!("| {} | {} | {} |", row.figure, row.value, row.note);
        }
        bench.fail_on_failed_figures();
        return;
    }
    if bench.args.scrape_only {
        bench.scrape().await;
        for row in &bench.table.rows {
            println!("| {} | {} | {} |", row.figure, row.value, row.note);
        }
        bench.fail_on_failed_figures();
        return;
    }
    if bench.args.window_only {
        let sizes = [1_000, 1_000_000];
        for (executions, (plain, windowed, reusing)) in sizes
            .into_iter()
            .zip(window_read_p50_us(bench.dir.path(), sizes))
        {
            println!("(9) {executions} runs: plain {plain:.1} us, no cache {windowed:.1} us, reusing {reusing:.1} us");
        }
        return;
    }
    let events = mix(total);
    if bench.args.cluster {
        bench.cluster(events).await;
        bench.fail_on_failed_figures();
        if !bench.args.smoke && total == 1_000_000 {
            bench.write_markdown(
                "BENCHMARKS-cluster.md",
                "One run of `cargo bench --bench jobstats-bench -- --cluster`: one local \
                 nats-server, then three loopback nodes of it with an R3 stream.",
                CLUSTER_METHOD,
            );
        }
        return;
    }
    let writer_only = writer_only_rate(bench.dir.path(), &events);
    if bench.args.writer_only {
        println!("(0) SQLite writer alone: {writer_only:.0} events/s");
        return;
    }
    let head = bench.publish(events, writer_only).await;
    let live = bench.catch_up(head).await;
    bench.shard(head).await;
    bench.rebuild(head).await;
    bench.reads().await;
    bench.scrape().await;
    if !bench.args.smoke && !bench.args.no_http {
        bench.http(&live).await;
    }
    if let Some(peak_kb) = live.peak_rss_kb() {
        let peak_mb = peak_kb as f64 / 1024.0;
        bench.table.row(
            "(6) peak RSS of serve through (2) and (4) (MB)",
            format!("{peak_mb:.0}"),
            &verdict(peak_mb, 250.0, 150.0, AtMost, " MB"),
        );
    }
    drop(live);
    bench.storage();
    bench.fail_on_failed_figures();
    if !bench.args.smoke && total == 1_000_000 && !bench.args.no_http {
        bench.write_markdown(
            "BENCHMARKS.md",
            "One run of `cargo bench --bench jobstats-bench` on one local nats-server.",
            METHOD,
        );
    }
}

impl Bench {
    async fn start(args: BenchArgs) -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let binary = jobstats::nats_server::find(Path::new("data"))
            .expect("nats-server (set NATS_SERVER_BIN)");
        let nats = JetStreamServer::start(&binary, &dir.path().join("nats"), None)
            .expect("start nats-server");
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = jetstream::new(client.clone());
        jobstats::stream::ensure_stream(&js, &jobstats::stream::StreamSpec::single("JOB_EVENTS"))
            .await
            .unwrap();
        Bench {
            args,
            dir,
            nats,
            client,
            js,
            table: Table::default(),
            failures: Vec::new(),
        }
    }

    async fn health_only(&self) {
        let dir = self.dir.path();
        let (small, read_small) =
            health_read_p50_us(&scheduled_job_db(dir, "health-small", 0, 1_000));
        let (large, read_large) =
            health_read_p50_us(&scheduled_job_db(dir, "health-large", 1_000_000, 1_000));
        println!("(7) stats with health p50: 1k {small:.1} us (read {read_small:.1}), 1M+1k {large:.1} us (read {read_large:.1}), ratio {:.2}", large / small);
        for jobs in [10_000, 100_000] {
            let [(f50, f99), (n50, n99)] = job_list_latencies(dir, jobs).await;
            println!("(8) job list of {jobs}: health-filtered p50/p99 {f50:.2}/{f99:.2} ms, by name {n50:.2}/{n99:.2} ms, ratio {:.2}", f50 / n50);
        }
    }

    /// Publishes the mix; returns the stream's head.
    async fn publish(&mut self, events: Vec<jobstats::events::Event>, writer_only: f64) -> u64 {
        let started = Instant::now();
        let head = publish(&self.js, &events).await;
        let publish_rate = head as f64 / started.elapsed().as_secs_f64();
        drop(events);
        let table = &mut self.table;
        table.row(
            "events in the stream",
            head.to_string(),
            "10 tenants x 100 jobs, 97% completed, 3% failed, ~1% duplicates; the input of every figure",
        );
        table.row(
            "publish rate (events/s)",
            format!("{publish_rate:.0}"),
            &format!("async publishes, acks awaited; {}", stated(6)),
        );
        table.row(
            "(0) SQLite writer alone, 20k-event batches (events/s)",
            format!("{writer_only:.0}"),
            &format!("decode + apply + commit, no NATS; {}", stated(6)),
        );
        head
    }

    /// (1)/(2): ceiling and projector alternate, three pairs, and the median pair ratio is
    /// the figure: one pair alone moved by ±0.1 between runs on this shared machine. Returns
    /// the last pair's `serve`, which (4) and (6) measure.
    async fn catch_up(&mut self, head: u64) -> Serve {
        let rounds = if self.args.smoke { 1 } else { 3 };
        let mut ratios = Vec::new();
        let mut live = None;
        for round in 1..=rounds {
            let ceiling = noop_durable(&self.js, head, 40_000).await;
            let (db, consumer) = if round == rounds {
                ("live.db".to_owned(), "bench-projector".to_owned())
            } else {
                (
                    format!("projector-{round}.db"),
                    format!("bench-projector-{round}"),
                )
            };
            let db = self.dir.path().join(db);
            let (projector, serve) = serve_catch_up(&self.nats.url(), &db, &consumer, head).await;
            live = Some(serve);
            ratios.push(projector / ceiling);
            self.table.row(
                &format!("(1) no-op durable consumer, ack per 40k batch, pair {round}"),
                format!("{ceiling:.0}"),
                "events/s, ceiling; verdict: the median pair below",
            );
            self.table.row(
                &format!("(2) projector catch-up (jobstats serve), pair {round}"),
                format!("{projector:.0}"),
                &format!(
                    "events/s, ratio {:.2}; verdict: the median pair below",
                    projector / ceiling
                ),
            );
        }
        ratios.sort_by(f64::total_cmp);
        let median = ratios[ratios.len() / 2];
        self.table.row(
            "(2) projector / no-op consumer (median pair)",
            format!("{median:.2}"),
            &verdict(median, 0.5, 0.8, AtLeast, ""),
        );
        live.expect("at least one round")
    }

    /// (12): a tenant shard of one tenant in ten from an empty file, against the full
    /// replica's catch-up: the server sends it its tenant's messages alone, and it moves its
    /// checkpoint past the rest (CONTRACT §7).
    async fn shard(&mut self, head: u64) {
        let tenant = "00000000-0000-4000-8000-000000000000";
        let (full, _) = serve_catch_up(
            &self.nats.url(),
            &self.dir.path().join("full-again.db"),
            "bench-full-again",
            head,
        )
        .await;
        let (shard, _) = serve_catch_up_with(
            &self.nats.url(),
            &self.dir.path().join("shard.db"),
            "bench-shard",
            head,
            &[("JOBSTATS_TENANTS", tenant)],
        )
        .await;
        self.table.row(
            "(12) tenant shard, 1 of 10 tenants: stream events passed per second",
            format!("{shard:.0}"),
            &format!(
                "full replica right before: {full:.0}; shard / full: {:.1}x; {}",
                shard / full,
                stated(13)
            ),
        );
    }

    /// (11): the same events published to and projected from one node and from a 3-node
    /// cluster (R3 stream) in this run; then a new replica from a snapshot of the cluster
    /// replica's file vs the one that replayed the stream.
    async fn cluster(&mut self, events: Vec<jobstats::events::Event>) {
        let dir = self.dir.path().to_path_buf();
        let started = Instant::now();
        let single_head = publish(&self.js, &events).await;
        let single_publish = single_head as f64 / started.elapsed().as_secs_f64();
        let (single_rate, single) = serve_catch_up(
            &self.nats.url(),
            &dir.join("single.db"),
            "bench-single",
            single_head,
        )
        .await;
        drop(single);

        let binary = jobstats::nats_server::find(Path::new("data")).expect("nats-server");
        let nodes = JetStreamServer::cluster(&binary, &dir.join("cluster"), 3).unwrap();
        let (seeds, js) = r3_stream(&nodes).await;
        let started = Instant::now();
        let head = publish(&js, &events).await;
        let cluster_publish = head as f64 / started.elapsed().as_secs_f64();
        let replica_db = dir.join("replica.db");
        let (cluster_rate, replica) =
            serve_catch_up(&seeds, &replica_db, "bench-replica", head).await;
        let replay_secs = head as f64 / cluster_rate;

        let started = Instant::now();
        let copy = dir.join("from-snapshot.db");
        jobstats::store::snapshot(&replica_db, &copy).unwrap();
        let snapshot_secs = started.elapsed().as_secs_f64();
        drop(replica);
        let started = Instant::now();
        let (_, bootstrapped) = serve_catch_up(&seeds, &copy, "bench-bootstrapped", head).await;
        let bootstrap_secs = snapshot_secs + started.elapsed().as_secs_f64();
        drop(bootstrapped);

        let table = &mut self.table;
        table.row(
            "(11) publish rate, one node (events/s)",
            format!("{single_publish:.0}"),
            &format!("{single_head} events, async publishes, acks awaited; {JUDGED_BELOW}"),
        );
        table.row(
            "(11) publish rate, 3-node cluster, R3 acks (events/s)",
            format!("{cluster_publish:.0}"),
            &format!(
                "ratio {:.2} of one node; {}",
                cluster_publish / single_publish,
                stated(13)
            ),
        );
        table.row(
            "(11) catch-up, one node (events/s)",
            format!("{single_rate:.0}"),
            &format!("jobstats serve on an empty file; {JUDGED_BELOW}"),
        );
        table.row(
            "(11) catch-up, 3-node cluster, R3 (events/s)",
            format!("{cluster_rate:.0}"),
            &format!(
                "ratio {:.2} of one node; {}",
                cluster_rate / single_rate,
                stated(13)
            ),
        );
        table.row(
            "(11) new replica serving: from a snapshot vs replaying the stream (s)",
            format!("{bootstrap_secs:.2} vs {replay_secs:.2}"),
            &format!(
                "snapshot {snapshot_secs:.2} s + start on the copy; {:.0}x faster; {}",
                replay_secs / bootstrap_secs,
                stated(13)
            ),
        );
        drop(nodes);
        self.cluster_syncing_always(&events, &binary, cluster_publish, cluster_rate)
            .await;
    }

    /// (11) again on nodes that fsync before every ack (`sync_interval: always`, what
    /// nats/nats-cluster.conf sets): at most 100,000 events, as each ack waits for a disk
    /// flush on a quorum.
    async fn cluster_syncing_always(
        &mut self,
        events: &[jobstats::events::Event],
        binary: &Path,
        default_publish: f64,
        default_rate: f64,
    ) {
        let dir = self.dir.path().join("cluster-sync-always");
        let nodes = JetStreamServer::cluster_syncing_always(binary, &dir, 3).unwrap();
        let (seeds, js) = r3_stream(&nodes).await;
        let events = &events[..events.len().min(100_000)];
        let started = Instant::now();
        let head = publish(&js, events).await;
        let publish_rate = head as f64 / started.elapsed().as_secs_f64();
        let (rate, replica) =
            serve_catch_up(&seeds, &dir.join("replica.db"), "bench-synced", head).await;
        drop(replica);
        self.table.row(
            "(11) publish rate, 3-node R3, sync_interval always (events/s)",
            format!("{publish_rate:.0}"),
            &format!(
                "{head} events; ratio {:.2} of the same cluster with default fsync; {}",
                publish_rate / default_publish,
                stated(13)
            ),
        );
        self.table.row(
            "(11) catch-up, 3-node R3, sync_interval always (events/s)",
            format!("{rate:.0}"),
            &format!(
                "ratio {:.2} of default fsync; {}",
                rate / default_rate,
                stated(13)
            ),
        );
        drop(nodes);
    }

    /// (10): what the read model costs on disk: the whole file, and the rollups per job-day.
    fn storage(&mut self) {
        let db = self.dir.path().join("rebuilt.db");
        let size = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
        let (rows, sketch_bytes, days) = rollup_storage(&db);
        let (compacted, without) = size_without_rollups(&db, &self.dir.path().join("stripped"));
        let jobs = 1_000.0;
        let table = &mut self.table;
        table.row(
            "(10) database size after the rebuild (MB)",
            format!("{:.1}", size as f64 / 1e6),
            &format!(
                "the rebuilt file of the whole stream, rollups included; {}",
                stated(12)
            ),
        );
        table.row(
            "(10) the same without rollups and sketches (MB)",
            format!("{:.1}", without as f64 / 1e6),
            &format!(
                "both vacuumed: {:.1} MB with them, {:.1} MB without (rollups table and the job \
                 sketches removed); {}",
                compacted as f64 / 1e6,
                without as f64 / 1e6,
                stated(12)
            ),
        );
        table.row(
            "(10) rollup rows per job per day",
            format!("{:.0}", rows as f64 / jobs / days.max(1.0)),
            &format!(
                "{rows} rows over {days:.1} days of finishes; sketches {:.0} bytes per row on average; {}",
                sketch_bytes as f64 / rows.max(1) as f64,
                stated(12)
            ),
        );
    }

    /// (3): `replay_into` (what `jobstats rebuild` runs) against an ordered read.
    async fn rebuild(&mut self, head: u64) {
        let ordered = noop_ordered(&self.js, head).await;
        self.table.row(
            "(3) no-op ordered consumer (events/s)",
            format!("{ordered:.0}"),
            &format!("ceiling; {JUDGED_BELOW}"),
        );
        let started = Instant::now();
        let mut silent = |_: u64, _: u64| {};
        let report = jobstats::ingest::replay::replay_into(
            &self.client,
            &jobstats::stream::StreamSpec::single("JOB_EVENTS"),
            &self.dir.path().join("rebuilt.db"),
            None,
            &jobstats::scope::TenantScope::all(),
            &mut silent,
        )
        .await
        .unwrap();
        let rebuild_rate = report.messages as f64 / started.elapsed().as_secs_f64();
        self.table.row(
            "(3) rebuild (events/s)",
            format!("{rebuild_rate:.0}"),
            &format!("{} ms total; {JUDGED_BELOW}", started.elapsed().as_millis()),
        );
        self.table.row(
            "(3) rebuild / no-op ordered read",
            format!("{:.2}", rebuild_rate / ordered),
            &verdict(rebuild_rate / ordered, 0.4, 0.6, AtLeast, ""),
        );
    }

    /// (5), (7), (8): reads whose cost must not grow with history.
    async fn reads(&mut self) {
        let (dir, smoke) = (self.dir.path().to_path_buf(), self.args.smoke);
        let (small, large) = if smoke {
            (100, 1_000)
        } else {
            (1_000, 1_000_000)
        };
        let (p50_small, p50_large) = (query_p50_us(&dir, small), query_p50_us(&dir, large));
        let table = &mut self.table;
        table.row(
            &format!("(5) stats read p50, {small} executions (us)"),
            format!("{p50_small:.1}"),
            JUDGED_BELOW,
        );
        table.row(
            &format!("(5) stats read p50, {large} executions (us)"),
            format!("{p50_large:.1}"),
            JUDGED_BELOW,
        );
        table.row(
            "(5) p50 ratio large / small",
            format!("{:.2}", p50_large / p50_small),
            &verdict(p50_large / p50_small, 1.5, 1.2, AtMost, ""),
        );
        let (history, recent) = if smoke {
            (1_000, 100)
        } else {
            (1_000_000, 1_000)
        };
        let (health_small, read_small) =
            health_read_p50_us(&scheduled_job_db(&dir, "health-small", 0, recent));
        let (health_large, read_large) =
            health_read_p50_us(&scheduled_job_db(&dir, "health-large", history, recent));
        table.row(
            &format!("(7) stats with health p50, {recent} executions (us)"),
            format!("{health_small:.1}"),
            &format!("*/10 cron, one run per fire, 8-day window full; SQLite read {read_small:.1}; {JUDGED_BELOW}"),
        );
        table.row(
            &format!(
                "(7) stats with health p50, {} executions (us)",
                history + recent
            ),
            format!("{health_large:.1}"),
            &format!(
                "the same window after a long history; SQLite read {read_large:.1}; {JUDGED_BELOW}"
            ),
        );
        table.row(
            "(7) p50 ratio large / small",
            format!("{:.2}", health_large / health_small),
            &verdict(health_large / health_small, 1.5, 1.2, AtMost, ""),
        );
        let (window_small, window_large) = if smoke {
            (100, 2_000)
        } else {
            (1_000, 1_000_000)
        };
        let [(plain_small, cold_small, windowed_small), (plain_large, cold_large, windowed_large)] =
            window_read_p50_us(&dir, [window_small, window_large]);
        for (runs, plain, cold, windowed) in [
            (window_small, plain_small, cold_small, windowed_small),
            (window_large, plain_large, cold_large, windowed_large),
        ] {
            table.row(
                &format!("(9) stats + ?window=30d p50 for a job that changed, {runs} runs over 30 days (us)"),
                format!("{windowed:.1}"),
                &format!(
                    "plain stats read {plain:.1}, ratio {:.2}; with no cache at all {cold:.1}, ratio {:.2}; verdict: the ratios below",
                    windowed / plain,
                    cold / plain
                ),
            );
        }
        table.row(
            "(9) ?window=30d / plain stats p50, large job",
            format!("{:.2}", windowed_large / plain_large),
            &verdict(windowed_large / plain_large, 1.5, 1.2, AtMost, ""),
        );
        table.row(
            "(9) ?window=30d p50, large / small job",
            format!("{:.2}", windowed_large / windowed_small),
            &verdict(windowed_large / windowed_small, 1.5, 1.2, AtMost, ""),
        );
        let list_sizes: &[u64] = if smoke { &[500] } else { &[10_000, 100_000] };
        for &list_jobs in list_sizes {
            let [(filtered_p50, filtered_p99), (named_p50, named_p99)] =
                job_list_latencies(&dir, list_jobs).await;
            table.row(
                &format!(
                    "(8) job list of {list_jobs}, health=missed,failing, 50/page: p50 / p99 (ms)"
                ),
                format!("{filtered_p50:.2} / {filtered_p99:.2}"),
                &format!("the tenant's maintained board: O(matching jobs); {JUDGED_BELOW}"),
            );
            table.row(
                &format!("(8) job list of {list_jobs}, by name, 50/page: p50 / p99 (ms)"),
                format!("{named_p50:.2} / {named_p99:.2}"),
                &format!("an index range: O(page); {JUDGED_BELOW}"),
            );
            table.row(
                &format!("(8) job list of {list_jobs} p50, health-filtered / by name"),
                format!("{:.2}", filtered_p50 / named_p50),
                &goal_only(filtered_p50 / named_p50, 2.0, AtMost, "", 34),
            );
        }
    }

    /// (14): HTTP ingestion (`POST /api/v1/events`, ping URLs) through a real `serve`
    /// against publishing the same events to NATS directly, in one run.
    async fn ingest(&mut self) {
        const CLIENTS: usize = 16;
        let smoke = self.args.smoke;
        let tenant = "00000000-0000-4000-8000-0000000000aa";
        let per_client = if smoke { 50 } else { 1_000 };
        let batches = if smoke { 4 } else { 100 };
        let serve = Serve::start(
            &self.nats.url(),
            &self.dir.path().join("ingest.db"),
            "jobstats-ingest-bench",
            &[("JOBSTATS_INGEST_RATE", "1000000")],
        );
        let base = format!("http://127.0.0.1:{}", serve.port);
        let store = jobstats::keys::KeyStore::open(&self.js, 1).await.unwrap();
        let made = jobstats::keys::generate(
            jobstats::events::TenantId::parse(tenant).unwrap(),
            None,
            true,
            Utc::now(),
        )
        .unwrap();
        store.insert(&made.record).await.unwrap();
        let key = made.secret;
        let http = reqwest::Client::new();
        let events = |from: usize, n: usize| -> Vec<jobstats::events::Event> {
            (from..from + n)
                .map(|i| {
                    EventBuilder::new(tenant, &format!("job-{}", i % 100))
                        .unwrap()
                        .execution(&format!("x{i}"))
                        .unwrap()
                        .started()
                        .unwrap()
                })
                .collect()
        };
        // Wait until the serve knows the key (it follows JOBSTATS_KEYS).
        let probe = serde_json::to_vec(&events(usize::MAX / 2, 1)[0].to_json()).unwrap();
        let started = Instant::now();
        loop {
            let status = http
                .post(format!("{base}/api/v1/events"))
                .bearer_auth(&key)
                .body(probe.clone())
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0);
            if status == 202 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "serve took the key: {status}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // (a) one event per request, CLIENTS at once, vs CLIENTS publishers each awaiting
        // every ack (what `jobstats publish` does per event).
        let publisher = jobstats::publish::Publisher::new(self.client.clone());
        let direct = {
            let started = Instant::now();
            let tasks: Vec<_> = (0..CLIENTS)
                .map(|c| {
                    let publisher = publisher.clone();
                    let batch = events(1_000_000 + c * per_client, per_client);
                    tokio::spawn(async move {
                        for event in &batch {
                            publisher.publish(event).await.unwrap();
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
            (CLIENTS * per_client) as f64 / started.elapsed().as_secs_f64()
        };
        let over_http = {
            let bodies: Vec<Vec<Vec<u8>>> = (0..CLIENTS)
                .map(|c| {
                    events(2_000_000 + c * per_client, per_client)
                        .iter()
                        .map(|e| serde_json::to_vec(&e.to_json()).unwrap())
                        .collect()
                })
                .collect();
            let started = Instant::now();
            let tasks: Vec<_> = bodies
                .into_iter()
                .map(|bodies| {
                    let (http, url, key) =
                        (http.clone(), format!("{base}/api/v1/events"), key.clone());
                    tokio::spawn(async move {
                        for body in bodies {
                            let response = http
                                .post(&url)
                                .bearer_auth(&key)
                                .body(body)
                                .send()
                                .await
                                .unwrap();
                            assert_eq!(response.status(), 202);
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
            (CLIENTS * per_client) as f64 / started.elapsed().as_secs_f64()
        };
        let table = &mut self.table;
        table.row(
            &format!("(14) publish and await each ack, {CLIENTS} publishers (events/s)"),
            format!("{direct:.0}"),
            "what `jobstats publish` does per event; verdict: the ratio below",
        );
        table.row(
            &format!("(14) POST /api/v1/events, 1 event per request, {CLIENTS} clients (events/s)"),
            format!("{over_http:.0}"),
            "ingest key, HTTP/1.1 keep-alive; verdict: the ratio below",
        );
        table.row(
            "(14) 1-event HTTP ingestion / publish-and-ack",
            format!("{:.2}", over_http / direct),
            &goal_only(over_http / direct, 0.5, AtLeast, "", 30),
        );

        // (b) 1 000 events per request vs the raw async publish of the same number.
        let total = batches * 1_000;
        let raw = {
            let batch = events(3_000_000, total);
            let started = Instant::now();
            publish(&self.js, &batch).await;
            total as f64 / started.elapsed().as_secs_f64()
        };
        let raw_with_ids = {
            let batch = events(5_000_000, total);
            let started = Instant::now();
            publish_with_ids(&self.js, &batch).await;
            total as f64 / started.elapsed().as_secs_f64()
        };
        let batched = {
            let bodies: Vec<Vec<u8>> = events(4_000_000, total)
                .chunks(1_000)
                .map(|chunk| {
                    serde_json::to_vec(&chunk.iter().map(|e| e.to_json()).collect::<Vec<_>>())
                        .unwrap()
                })
                .collect();
            let started = Instant::now();
            let mut bodies = bodies.into_iter();
            // Two requests in flight, as a batching runner with a small pool would have.
            let url = format!("{base}/api/v1/events");
            loop {
                let pair: Vec<Vec<u8>> = bodies.by_ref().take(2).collect();
                if pair.is_empty() {
                    break;
                }
                let sends = pair
                    .into_iter()
                    .map(|body| http.post(&url).bearer_auth(&key).body(body).send());
                for response in futures::future::join_all(sends).await {
                    assert_eq!(response.unwrap().status(), 202);
                }
            }
            total as f64 / started.elapsed().as_secs_f64()
        };
        let table = &mut self.table;
        table.row(
            "(14) raw async publish, acks awaited per 2 000 (events/s)",
            format!("{raw:.0}"),
            "no Nats-Msg-Id; verdict: the ratio below",
        );
        table.row(
            "(14) POST /api/v1/events, 1 000 events per request (events/s)",
            format!("{batched:.0}"),
            "two requests in flight, each event validated, Nats-Msg-Id set; verdict: the ratio below",
        );
        table.row(
            "(14) batched HTTP ingestion / raw async publish",
            format!("{:.2}", batched / raw),
            &goal_only(batched / raw, 0.8, AtLeast, "", 30),
        );
        table.row(
            "(14) raw async publish with Nats-Msg-Id, acks per 2 000 (events/s)",
            format!("{raw_with_ids:.0}"),
            &format!(
                "what JetStream's duplicate window costs: {:.2} of the raw rate; no target",
                raw_with_ids / raw
            ),
        );
        table.row(
            "(14) batched HTTP ingestion / raw async publish with Nats-Msg-Id",
            format!("{:.2}", batched / raw_with_ids),
            "the same publishes as the endpoint makes; no target (the goal is against the raw rate)",
        );

        // (c) a ping's latency while ~10k events/s are ingested beside it.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let load = {
            let (stop, js) = (stop.clone(), self.js.clone());
            let batch = events(5_000_000, 200_000);
            tokio::spawn(async move {
                let started = Instant::now();
                let mut sent = 0usize;
                for chunk in batch.chunks(100) {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    publish(&js, chunk).await;
                    sent += chunk.len();
                    // 10k/s: 100 events every 10 ms.
                    let due = Duration::from_millis((sent as u64) / 10);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        tokio::time::sleep(wait).await;
                    }
                }
                sent as f64 / started.elapsed().as_secs_f64()
            })
        };
        let pings = if smoke { 200 } else { 3_000 };
        let mut samples = Vec::with_capacity(pings);
        for i in 0..pings {
            let url = format!("{base}/ping/{key}/pinged/0?rid=p{i}");
            let started = Instant::now();
            let response = http.get(&url).send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.bytes().await.unwrap();
            samples.push(started.elapsed().as_secs_f64() * 1e3);
        }
        stop.store(true, Ordering::Relaxed);
        let load_rate = load.await.unwrap();
        samples.sort_by(f64::total_cmp);
        let p50 = samples[samples.len() / 2];
        let p99 = samples[samples.len() * 99 / 100];
        self.table.row(
            "(14) ping p99 while ingesting ~10k events/s (ms)",
            format!("{p99:.2}"),
            &format!(
                "p50 {p50:.2} ms, {pings} pings one after another, {load_rate:.0} events/s published meanwhile; {}",
                goal_only(p99, 5.0, AtMost, " ms", 30)
            ),
        );
        drop(serve);
    }

    /// (13): a scrape of every job's series against the service-level metrics alone.
    async fn scrape(&mut self) {
        let jobs = if self.args.smoke { 500 } else { 10_000 };
        let figures = scrape_latencies(self.dir.path(), jobs).await;
        let table = &mut self.table;
        table.row(
            &format!("(13) admin /metrics scrape, {jobs} jobs' series, p50 (ms)"),
            format!("{:.2}", figures.per_job_p50_ms),
            &format!(
                "{:.1} MB of text; {}",
                figures.per_job_bytes as f64 / 1e6,
                goal_only(figures.per_job_p50_ms, 50.0, AtMost, " ms", 32)
            ),
        );
        table.row(
            "(13) admin /metrics scrape, service-level only, p50 (ms)",
            format!("{:.3}", figures.service_p50_ms),
            &format!(
                "JOBSTATS_JOB_METRICS_MAX=0, {} bytes of text; {JUDGED_BELOW}",
                figures.service_bytes
            ),
        );
        let ratio = figures.per_job_p50_ms / figures.service_p50_ms;
        table.row(
            "(13) scrape p50, per-job / service-level",
            format!("{ratio:.1}"),
            &format!(
                "{:.0}x the text; {}",
                figures.per_job_bytes as f64 / figures.service_bytes.max(1) as f64,
                goal_only(ratio, 3.0, AtMost, "", 32)
            ),
        );
        let (client_p50, client_bytes) = prometheus_client_p50(jobs);
        table.row(
            &format!("(13) prometheus-client encoding the same {jobs} jobs' series from memory, p50 (ms)"),
            format!("{client_p50:.2}"),
            &format!(
                "{:.1} MB of text; a hand-written exporter's cost, no read at all; verdict: the ratio below",
                client_bytes as f64 / 1e6
            ),
        );
        table.row(
            "(13) scrape p50, ours (read + render) / prometheus-client encode only",
            format!("{:.2}", figures.per_job_p50_ms / client_p50),
            &stated(32),
        );
        table.row(
            &format!("(13) RSS growth for {jobs} jobs' series (MB)"),
            format!("{:.1}", figures.rss_growth_kb as f64 / 1024.0),
            &format!(
                "this process, health board filled and 120 scrapes; {}",
                stated(32)
            ),
        );
    }

    /// (4): wrk against the live `serve`, idle and while the projector ingests.
    async fn http(&mut self, live: &Serve) {
        let base = format!("http://127.0.0.1:{}", live.port);
        let token = bench_token("super_admin", None);
        let stats_url = format!("{base}/api/v1/admin/jobs/job-1/stats");
        let trivial = wrk(&format!("{base}/healthz"), None);
        let stats = wrk(&stats_url, Some(&token));
        let windowed = wrk(&format!("{stats_url}?window=30d"), Some(&token));
        let (stats_ingesting, ingest_rate) = self.wrk_while_ingesting(stats_url, token).await;
        let runs = [
            ("/healthz", &trivial),
            ("stats", &stats),
            ("stats?window=30d", &windowed),
            ("stats while ingesting", &stats_ingesting),
        ];
        let failed: Vec<(&str, String)> = runs
            .iter()
            .filter_map(|(run, figures)| match figures {
                Some(Err(errors)) => Some((*run, errors.clone())),
                _ => None,
            })
            .collect();
        if !failed.is_empty() {
            for (run, errors) in failed {
                self.table
                    .row(&format!("(4) wrk on {run}"), "FAILED".into(), &errors);
                self.failures.push(format!("(4) wrk on {run}: {errors}"));
            }
            return;
        }
        let ok = |figures: Option<Result<WrkFigures, String>>| figures.and_then(Result::ok);
        let windowed = ok(windowed);
        let (Some((trivial, _, _)), Some((stats, p50, p99)), Some((busy, busy_p50, busy_p99))) =
            (ok(trivial), ok(stats), ok(stats_ingesting))
        else {
            self.table.row(
                "(4) HTTP",
                "skipped".into(),
                "wrk not installed (apt-get install wrk)",
            );
            return;
        };
        let table = &mut self.table;
        table.row(
            "(4) /healthz req/s (trivial endpoint)",
            format!("{trivial:.0}"),
            &format!("wrk -t2 -c64 -d5s; {JUDGED_BELOW}"),
        );
        table.row(
            "(4) stats req/s",
            format!("{stats:.0}"),
            &format!("p50 {p50}, p99 {p99}; {JUDGED_BELOW}"),
        );
        table.row(
            "(4) stats / trivial req/s",
            format!("{:.2}", stats / trivial),
            &verdict(stats / trivial, 0.4, 0.7, AtLeast, ""),
        );
        if let Some((windowed, w50, w99)) = windowed {
            let ratio = wrk_ms(&w50).unwrap_or(f64::INFINITY) / wrk_ms(&p50).unwrap_or(0.0);
            table.row(
                "(4) stats?window=30d req/s",
                format!("{windowed:.0}"),
                &format!("p50 {w50}, p99 {w99}; {JUDGED_BELOW}"),
            );
            table.row(
                "(4) stats?window=30d p50 / stats p50",
                format!("{ratio:.2}"),
                &verdict(ratio, 1.5, 1.2, AtMost, ""),
            );
        }
        table.row(
            "(4) stats req/s while ingesting ~10k events/s",
            format!("{busy:.0}"),
            &format!(
                "p50 {busy_p50}, p99 {busy_p99}; {ingest_rate:.0} events/s published meanwhile; \
                 verdict: the p99 below"
            ),
        );
        let p99_ms = wrk_ms(&busy_p99).unwrap_or(f64::INFINITY);
        table.row(
            "(4) stats p99 while ingesting (ms)",
            format!("{p99_ms:.2}"),
            &verdict(p99_ms, 10.0, 5.0, AtMost, " ms"),
        );
    }

    /// wrk on `url` while the projector ingests ~10k events/s, published as many runners
    /// would: a steady 100 events every 10 ms rather than one burst per second. Returns
    /// wrk's figures and the rate actually published meanwhile.
    async fn wrk_while_ingesting(
        &self,
        url: String,
        token: String,
    ) -> (Option<Result<WrkFigures, String>>, f64) {
        let published = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let ingest = {
            let js = self.js.clone();
            let events = mix_from(80_000, 10_000_000);
            let published = published.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                for chunk in events.chunks(100) {
                    tick.tick().await;
                    publish(&js, chunk).await;
                    published.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (from_count, from_time) = (published.load(Ordering::Relaxed), Instant::now());
        let figures = tokio::task::spawn_blocking(move || wrk(&url, Some(&token)))
            .await
            .unwrap();
        let rate = (published.load(Ordering::Relaxed) - from_count) as f64
            / from_time.elapsed().as_secs_f64();
        ingest.abort();
        (figures, rate)
    }

    /// Ends the run with an error, writing nothing, when a figure failed.
    fn fail_on_failed_figures(&self) {
        if !self.failures.is_empty() {
            eprintln!("figures that failed (nothing written):");
            for failure in &self.failures {
                eprintln!("  {failure}");
            }
            std::process::exit(1);
        }
    }

    /// Writes this run's table into `file` (under the repository root, where `cargo bench`
    /// runs), after `intro` and before `method`.
    fn write_markdown(&self, file: &str, intro: &str, method: &str) {
        let binary = jobstats::nats_server::find(Path::new("data")).expect("nats-server");
        let version = std::process::Command::new(&binary)
            .arg("--version")
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default();
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| m.lines().next().map(str::to_owned))
            .unwrap_or_default();
        let mut text = format!("# Benchmarks\n\n{intro}\n\n");
        text.push_str(&format!(
            "- machine: {} cores, {memory}\n- nats-server: {}\n- date: {}\n\n| figure | value | note |\n|---|---|---|\n",
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            String::from_utf8_lossy(&version).trim(),
            Utc::now().format("%Y-%m-%d"),
        ));
        for r in &self.table.rows {
            text.push_str(&format!("| {} | {} | {} |\n", r.figure, r.value, r.note));
        }
        text.push_str(method);
        std::fs::write(file, text).unwrap();
        println!("wrote {file}");
    }
}

/// A bench token with `role`, for `tenant` (none: any).
fn bench_token(role: &str, tenant: Option<&str>) -> String {
    let claims =
        jobstats::api::auth::DevClaims::new("bench", &[role], tenant, Duration::from_secs(3600));
    jobstats::api::auth::mint_hs256(BENCH_SECRET, &claims).unwrap()
}

/// How the figures are taken (appended to BENCHMARKS.md).
const METHOD: &str = "
## How the figures are taken

- Every ratio divides two figures of this run, on this machine, against one local nats-server;
  absolute rates drift by tens of percent between runs on shared machines, ratios much less.
- (1)/(2): the no-op durable pull consumer acks once per 40k messages (AckPolicy All), as the
  projector does. The projector is the real `jobstats serve` process on an empty database,
  timed from its spawn until its checkpoint (read from the SQLite file) reaches the head.
  Ceiling and projector alternate in three pairs; the median pair ratio is the figure.
- (3): `replay_into` (what `jobstats rebuild` runs) into a new file vs an ordered consumer
  that only reads.
- (4): `wrk -t2 -c64 -d5s --latency` against the serve process of the last pair, with a real
  HS256 token, on one job; the ingest load is 100 events every 10 ms published by this
  harness while wrk runs. wrk, nats-server, the harness and serve share the machine's cores.
- (5): `ReadPool::job_snapshot` (SQLite, no cache) for a job with 1k and with 1M executions.
- (6): VmHWM of that serve process after (2) and (4).
- (10): the file `rebuild` wrote from the whole stream; then `VACUUM INTO` copies of it as it
  is and with the rollups table emptied and the jobs' duration and queue-wait sketches
  removed: its size before and after percentiles and windows.
- (7): `ReadPool::job_snapshot` plus the health verdict at the present, for a `*/10 * * * *`
  job with one run per fire over its last 1,000 fires, alone and after 1M older runs: the
  cost follows the 8-day window, not the history.
- (8): `GET /api/v1/admin/jobs` through the API's poem endpoint in-process (token check,
  parsing, handler, JSON) over 10,000 jobs of one tenant on three crons, a tenth failing; 200
  requests after 20 that warm the snapshot cache. The health filter judges every job; the name page does not.
- (12): `serve` with `JOBSTATS_TENANTS` set to one of the ten tenants, on an empty file,
  timed like (2) until its checkpoint reaches the stream's head, right after a full replica
  timed the same way. Its consumer is filtered by the server (one subject per tenant), so
  it is sent a tenth of the messages and moves its checkpoint past the rest.
- (9): a job with 1k and with 1M completed runs spread over 30 days; `ReadPool::job_snapshot`
  plus the 30-day window merged as `serve` does for a job whose answer is not cached (it
  changed): the closed hours (before the hour of its latest finish) merged once and kept
  until a late finish lands in them, the current hour read. With no cache at all it merges every
  bucket of the window (~29 days and up to 46 hours), as after a start or a late finish.
  The two jobs' reads alternate in one loop (1,000 rounds), so the machine's other work
  weighs on both alike.
- Verdicts: each row ends with one: the floor and goal its issue set, a goal alone
  (`goal … (issue N)`), `no target: issue N asks it stated`, or `verdict: the ratio below` for
  the inputs of a ratio. A wrk run that saw any non-2xx/3xx answer or socket error fails the
  whole run, which then writes nothing.
- Cluster figures (11) are in BENCHMARKS-cluster.md, written by `-- --cluster`.
- Rerun: `NATS_SERVER_BIN=$(command -v nats-server) cargo bench --bench jobstats-bench`
  (after `--`: `--events N`, `--no-http`, `--writer-only`, `--health-only`, `--window-only`,
  `--cluster`, `--smoke`).
";

/// How the cluster figures are taken (appended to BENCHMARKS-cluster.md).
const CLUSTER_METHOD: &str = "
## How the figures are taken

- (11): the same events (1M; 100k for `sync_interval: always`) published to and projected from
  one node, then from a 3-node cluster of loopback nodes with an R3 `JOB_EVENTS`, in this run
  on this machine. Catch-up is the real `jobstats serve` on an empty file, timed from its spawn
  until its checkpoint reaches the head. A new replica from a snapshot: `store::snapshot` of the
  cluster replica's file plus `serve` on the copy reaching the head, against the time the
  cluster replica took to replay the stream.
- `sync_interval: always` (what nats/nats-cluster.conf sets): every node flushes to disk
  before it acks, so the publish and the consumer's acks wait on a quorum's fsync.
- Rerun: `NATS_SERVER_BIN=$(command -v nats-server) cargo bench --bench jobstats-bench -- --cluster`.
";

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
