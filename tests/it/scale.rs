//! CONTRACT §7 on one nats-server: seed-URL lists, tenant shards (421 for another tenant),
//! instance-named consumers, and snapshots that bootstrap a replica.

use std::process::Command;
use std::time::Duration;

use chrono::Utc;
use reqwest::StatusCode;

use crate::helpers::*;

const OTHER: &str = "00000000-0000-4000-8000-0000000000b2";
/// The shard's second tenant (several tenants: several filter subjects on one consumer).
const THIRD: &str = "00000000-0000-4000-8000-0000000000c3";

async fn get(serve: &ServeProcess, path: &str, tenant: &str) -> reqwest::Response {
    serve
        .http
        .get(serve.url(path))
        .bearer_auth(token(&["super_admin"], None))
        .header("x-tenantid", tenant)
        .send()
        .await
        .expect("request")
}

fn runs_of(tenant: &str, job: &str, count: i64) -> Vec<jobstats::events::Event> {
    let t0 = Utc::now() - chrono::Duration::hours(3);
    (0..count)
        .flat_map(|i| {
            jobstats::publish::EventBuilder::new(tenant, job)
                .and_then(|b| b.execution(&format!("{job}-{i}")))
                .and_then(|run| {
                    run.run(
                        t0 + chrono::Duration::minutes(i),
                        Some(chrono::Duration::milliseconds(50)),
                        chrono::Duration::milliseconds(300 + 37 * i),
                        if i % 5 == 4 {
                            jobstats::publish::RunEnd::Failed {
                                items: None,
                                error: Some("boom"),
                            }
                        } else {
                            jobstats::publish::RunEnd::Completed { items: Some(3) }
                        },
                    )
                })
                .expect("valid run")
        })
        .collect()
}

#[tokio::test]
async fn a_tenant_shard_projects_and_serves_only_its_tenants_and_agrees_with_a_full_replica() {
    let nats = NatsServer::start();
    nats.ensure_stream().await;
    let dir = tempfile::tempdir().unwrap();
    let publisher = nats.publisher().await;
    let mut events = runs_of(TENANT, "shared-name", 30);
    events.extend(runs_of(OTHER, "shared-name", 20));
    events.extend(runs_of(THIRD, "third-only", 4));
    events.extend(runs_of(OTHER, "other-only", 5));
    publish_all(&publisher, &events).await;
    // Poison messages: the other tenant's is the full replica's dead letter alone; the
    // shard's tenant's is a dead letter in both.
    for tenant in [OTHER, TENANT] {
        publisher
            .publish_raw(
                &format!("jobs.events.{tenant}.started"),
                b"{not json".to_vec(),
                "",
            )
            .await
            .unwrap();
    }
    publish_all(&publisher, &runs_of(TENANT, "late", 2)).await;
    // The stream ends with messages the shard never projects: its checkpoint must still
    // reach the head, as a full replica's does.
    let head = publish_all(&publisher, &runs_of(OTHER, "after", 3)).await;
    let shard_tenants = |event: &&jobstats::events::Event| {
        [TENANT, THIRD].contains(&event.tenant_id.to_string().as_str())
    };
    let shard_messages =
        events.iter().filter(shard_tenants).count() + 1 + runs_of(TENANT, "late", 2).len();

    let full = ServeProcess::start_with_env(
        &nats.url(),
        &dir.path().join("full.db"),
        &[("JOBSTATS_CONSUMER", "jobstats-full")],
    );
    let shard_db = dir.path().join("shard.db");
    let shard = ServeProcess::start_with_env(
        &nats.url(),
        &shard_db,
        &[
            ("JOBSTATS_CONSUMER", "jobstats-shard"),
            ("JOBSTATS_TENANTS", &format!("{TENANT},{THIRD}")),
        ],
    );
    full.wait_applied(head).await;
    // The shard's checkpoint moves past the other tenant's messages (gaps in its sequence).
    shard.wait_applied(head).await;

    // From nats-server 2.10 the server filters (one subject per tenant): the shard is sent its
    // tenants' messages only. Before, it is sent everything and passes over the rest.
    let js = async_nats::jetstream::new(nats.client().await);
    let stream = js.get_stream("JOB_EVENTS").await.unwrap();
    let consumer = stream
        .consumer_info("jobstats-shard")
        .await
        .unwrap()
        .clone();
    let server = nats.client().await.server_info().version;
    let (minor, delivered) = (
        server.split('.').nth(1).unwrap().parse::<u32>().unwrap(),
        consumer.delivered.consumer_sequence as usize,
    );
    if minor >= 10 {
        let mut filters = consumer.config.filter_subjects.clone();
        filters.sort();
        assert_eq!(
            filters,
            [
                format!("jobs.events.{THIRD}.>"),
                format!("jobs.events.{TENANT}.>")
            ]
        );
        assert_eq!(
            delivered, shard_messages,
            "only the shard's tenants' messages"
        );
    } else {
        assert_eq!(delivered as u64, head);
    }

    for path in [
        "/api/v1/admin/jobs/shared-name/stats?window=24h",
        "/api/v1/admin/jobs",
        "/api/v1/admin/jobs/shared-name/executions?limit=5",
    ] {
        // Uptime comes from JOB_HEALTH, which each replica follows on its own: the answers
        // are identical once both have read the jobs' health changes (waited for, bounded).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let (a, b) = loop {
            let (a, b) = (
                get(&full, path, TENANT).await,
                get(&shard, path, TENANT).await,
            );
            assert_eq!(a.status(), StatusCode::OK, "{path}");
            assert_eq!(b.status(), StatusCode::OK, "{path}");
            let (a, b) = (
                without_request_time(&a.bytes().await.unwrap()),
                without_request_time(&b.bytes().await.unwrap()),
            );
            if a == b || std::time::Instant::now() > deadline {
                break (a, b);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        assert_eq!(
            a, b,
            "{path}: the shard answers its tenant like a full replica"
        );
        let refused = get(&shard, path, OTHER).await;
        assert_eq!(refused.status(), 421, "{path}");
        let body: serde_json::Value = refused.json().await.unwrap();
        assert_eq!(body["error"]["code"], "TENANT_NOT_SERVED", "{path}");
        assert_eq!(get(&full, path, OTHER).await.status(), StatusCode::OK);
    }
    // Never a 404 for a job the shard does not hold: the other tenant's own job is a 421 too.
    let refused = get(&shard, "/api/v1/admin/jobs/other-only/stats", OTHER).await;
    assert_eq!(refused.status(), 421);

    // The shard's file holds nothing of the other tenant, not even its dead letter.
    assert_eq!(
        without_request_time(
            &get(&full, "/api/v1/admin/jobs/third-only/stats", THIRD)
                .await
                .bytes()
                .await
                .unwrap()
        ),
        without_request_time(
            &get(&shard, "/api/v1/admin/jobs/third-only/stats", THIRD)
                .await
                .bytes()
                .await
                .unwrap()
        )
    );
    let tenants: Vec<String> = jobstats::store::ReadPool::open(&shard_db)
        .unwrap()
        .all_jobs()
        .unwrap()
        .into_iter()
        .map(|(tenant, _)| tenant.to_string())
        .collect();
    assert!(
        tenants.contains(&THIRD.to_owned()) && tenants.iter().all(|t| t == TENANT || t == THIRD),
        "{tenants:?}"
    );
    let dead_letters = |db: &std::path::Path| {
        jobstats::store::ReadPool::open(db)
            .unwrap()
            .freshness()
            .unwrap()
            .dead_letters
    };
    assert_eq!(dead_letters(&dir.path().join("full.db")), 2);
    assert_eq!(dead_letters(&shard_db), 1);
}

#[tokio::test]
async fn serve_and_publish_take_a_list_of_seed_urls() {
    let nats = NatsServer::start();
    // The stream exists before the publish below (serve creates it too, but its projector may
    // still be trying the dead seed when the CLI publishes).
    nats.ensure_stream().await;
    let dir = tempfile::tempdir().unwrap();
    // The first seed is down: the client goes on to the next.
    let seeds = format!("nats://127.0.0.1:{},{}", free_port(), nats.url());
    let serve = ServeProcess::start_with_env(&seeds, &dir.path().join("stats.db"), &[]);
    let output = Command::new(BIN)
        .args([
            "publish",
            "--tenant",
            TENANT,
            "--job",
            "seeded",
            "--execution",
            "e1",
        ])
        .args(["completed"])
        .env("JOBSTATS_NATS_URL", &seeds)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let sequence: u64 = String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("sequence=").and_then(|n| n.parse().ok()))
        .expect("sequence=N");
    serve.wait_applied(sequence).await;
    assert_eq!(serve.stats("seeded").await["data"]["queue"]["completed"], 1);
}

/// `jobstats snapshot` of `db` into `output`.
fn snapshot(db: &std::path::Path, output: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .args(["snapshot", "--output"])
        .arg(output)
        .env("JOBSTATS_DB_PATH", db)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run jobstats snapshot")
}

#[tokio::test]
async fn a_snapshot_taken_while_events_flow_bootstraps_a_replica_that_catches_up() {
    let nats = NatsServer::start();
    nats.ensure_stream().await;
    let dir = tempfile::tempdir().unwrap();
    let live_db = dir.path().join("live.db");
    let live =
        ServeProcess::start_with_env(&nats.url(), &live_db, &[("JOBSTATS_INSTANCE_ID", "live")]);
    let publisher = nats.publisher().await;
    let first = publish_all(&publisher, &runs_of(TENANT, "flowing", 200)).await;
    live.wait_applied(first).await;

    // Events keep flowing while the copy is taken.
    let flow = {
        let publisher = nats.publisher().await;
        tokio::spawn(async move {
            let mut last = 0;
            for round in 0..20 {
                let batch = runs_of(TENANT, &format!("flowing-{round}"), 20);
                last = publish_all(&publisher, &batch).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            last
        })
    };
    // The copy is taken once the flow is being projected.
    live.wait_applied(first + 1).await;
    let copy = dir.path().join("copy.db");
    let output = snapshot(&live_db, &copy);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let head = flow.await.unwrap();
    let at: u64 = String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "sequence")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("the copy's sequence");
    assert!(
        at >= first,
        "the copy holds what was applied before it: {at} < {first}"
    );
    // Taking another copy onto an existing file is refused.
    let again = snapshot(&live_db, &copy);
    assert!(!again.status.success());

    let replica = ServeProcess::start_with_env(
        &nats.url(),
        &copy,
        &[("JOBSTATS_INSTANCE_ID", "from-snapshot")],
    );
    live.wait_applied(head).await;
    replica.wait_applied(head).await;
    for job in ["flowing", "flowing-0", "flowing-19"] {
        let path = format!("/api/v1/admin/jobs/{job}/stats?window=24h");
        let (a, b) = (
            get(&live, &path, TENANT).await,
            get(&replica, &path, TENANT).await,
        );
        assert_eq!(a.status(), StatusCode::OK, "{job}");
        assert_eq!(
            without_request_time(&a.bytes().await.unwrap()),
            without_request_time(&b.bytes().await.unwrap()),
            "{job}: the bootstrapped replica equals the live one"
        );
    }
    // Each replica projects through its own durable consumer, named by its instance id.
    let js = async_nats::jetstream::new(nats.client().await);
    let stream = js.get_stream("JOB_EVENTS").await.unwrap();
    for consumer in ["jobstats-live", "jobstats-from-snapshot"] {
        stream
            .consumer_info(consumer)
            .await
            .unwrap_or_else(|e| panic!("{consumer}: {e}"));
    }
    // The replica started from the copy's checkpoint: its consumer began right after it and
    // delivered the messages since, once each; none before the copy was replayed.
    let started = stream
        .consumer_info("jobstats-from-snapshot")
        .await
        .unwrap();
    assert_eq!(
        started.config.deliver_policy,
        async_nats::jetstream::consumer::DeliverPolicy::ByStartSequence {
            start_sequence: at + 1
        },
        "the replica's consumer starts after the copy's checkpoint {at}"
    );
    assert_eq!(
        (
            started.delivered.stream_sequence,
            started.delivered.consumer_sequence
        ),
        (head, head - at),
        "deliveries to the replica: the {} messages after the copy",
        head - at
    );
}
