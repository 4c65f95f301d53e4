//! CONTRACT §7 on a real 3-node JetStream cluster (loopback, three nats-server processes):
//! an R3 stream created by `serve`, node failures while a retrying publisher publishes, and
//! the projection counting every acknowledged event exactly once.

use std::time::{Duration, Instant};

use chrono::Utc;

use crate::helpers::*;

/// Publishes as a careful runner does: until acknowledged, always with the event's id as
/// `Nats-Msg-Id`, so a retry of a publish that was stored is dropped by the server.
async fn publish_until_acked(
    publisher: &jobstats::publish::Publisher,
    event: &jobstats::events::Event,
) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match publisher.publish(event).await {
            Ok(receipt) => return receipt.sequence,
            Err(e) => {
                assert!(Instant::now() < deadline, "never acknowledged: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn stream_leader(js: &async_nats::jetstream::Context) -> Option<String> {
    let mut stream = js.get_stream("JOB_EVENTS").await.ok()?;
    let info = stream.info().await.ok()?;
    info.cluster.as_ref()?.leader.clone()
}

#[tokio::test]
async fn an_r3_stream_survives_losing_its_leader_and_another_node_without_losing_or_doubling_an_event(
) {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = jobstats::nats_server::JetStreamServer::cluster(
        &nats_server_binary(),
        &dir.path().join("nats"),
        3,
    )
    .expect("start a 3-node cluster");
    let seeds = nodes.iter().map(|n| n.url()).collect::<Vec<_>>().join(",");
    let serve = ServeProcess::start_with_env(
        &seeds,
        &dir.path().join("a.db"),
        &[
            ("JOBSTATS_STREAM_REPLICAS", "3"),
            ("JOBSTATS_CONSUMER", "jobstats-a"),
        ],
    );
    let client = jobstats::stream::connect(
        &jobstats::stream::NatsSettings::from_url(&seeds).unwrap(),
        "cluster-test",
        true,
    )
    .await
    .unwrap();
    let js = async_nats::jetstream::new(client.clone());
    // serve creates the stream once the cluster has a meta leader.
    let deadline = Instant::now() + Duration::from_secs(60);
    while stream_leader(&js).await.is_none() {
        assert!(Instant::now() < deadline, "no R3 stream came up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let info = js
        .get_stream("JOB_EVENTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(
        info.config.num_replicas, 3,
        "serve created the stream with R3"
    );

    let t0 = Utc::now() - chrono::Duration::hours(6);
    let executions = 900;
    let events: Vec<_> = (0..executions)
        .flat_map(|i| {
            execution_events(
                &format!("job-{}", i % 3),
                &format!("e{i:04}"),
                t0 + chrono::Duration::seconds(i * 10),
                500 + i,
                i % 10 != 0,
            )
        })
        .collect();
    let total = events.len();
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let publishing = {
        let publisher = jobstats::publish::Publisher::new(client.clone());
        let acked = acked.clone();
        tokio::spawn(async move {
            let mut head = 0;
            for event in &events {
                head = head.max(publish_until_acked(&publisher, event).await);
                acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // A steady runner rather than a burst, so the failures land mid-stream.
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            head
        })
    };

    // Kill the stream's leader, bring it back, then kill another node for good.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let leader = stream_leader(&js).await.expect("a leader");
    let index = nodes
        .iter()
        .position(|n| n.name() == Some(&leader))
        .unwrap();
    nodes[index].stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    nodes[index].restart().expect("the old leader comes back");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let other = (index + 1) % 3;
    nodes[other].stop();
    let before_last_kill = acked.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        before_last_kill < total,
        "the failures must hit a publisher at work ({before_last_kill} of {total} acked)"
    );

    let head = tokio::time::timeout(Duration::from_secs(180), publishing)
        .await
        .expect("the publisher finished")
        .unwrap();
    // Consumer groups re-elect after the kills; on a starved 2-core host that has taken over
    // a minute, and the projector replaces a consumer that stays unavailable.
    serve
        .wait_applied_within(head, Duration::from_secs(150))
        .await;

    // A replica built from scratch on the surviving quorum is the rebuild to compare with.
    let rebuilt = ServeProcess::start_with_env(
        &seeds,
        &dir.path().join("b.db"),
        &[("JOBSTATS_CONSUMER", "jobstats-b")],
    );
    rebuilt.wait_applied(head).await;
    for job in 0..3 {
        let name = format!("job-{job}");
        let live = serve.stats(&name).await["data"].clone();
        let fresh = rebuilt.stats(&name).await["data"].clone();
        let runs = (0..executions).filter(|i| i % 3 == job).count() as i64;
        let failed = (0..executions)
            .filter(|i| i % 3 == job && i % 10 == 0)
            .count() as i64;
        assert_eq!(
            live["queue"]["completed"],
            runs - failed,
            "{name}: each acked event once"
        );
        assert_eq!(live["queue"]["failed"], failed, "{name}");
        assert_eq!(live["queue"]["pending"], 0, "{name}");
        assert_eq!(live["queue"]["processing"], 0, "{name}");
        for field in ["queue", "performance"] {
            assert_eq!(
                live[field], fresh[field],
                "{name}: {field} equals a rebuild"
            );
        }
    }
}
