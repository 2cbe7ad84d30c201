//! Drain-aware handoff, with several runtimes in one process on a real nats-server: while a
//! client (or a node, whose asks go in batches) keeps writing, a node joins and another
//! leaves gracefully; no command is lost, none
//! is applied twice, no shard is ever without an alive owner, and — because the old owner
//! drains and releases before the new one serves — no two activations of one actor ever race
//! (zero store conflicts, zero forced handoffs).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aether::{ClusterConfig, ClusterEvent, Runtime};
use common::map_watch::MapWatch;
use common::nats::NatsServer;
use common::workload;
use common::*;

const WAIT: Duration = Duration::from_secs(20);

fn fast(url: &str, ns: &str, node: &str) -> ClusterConfig {
    ClusterConfig::new(url, ns)
        .node_id(node)
        .heartbeat(Duration::from_millis(200))
        .failure_timeout(Duration::from_millis(1000))
        .lease(Duration::from_millis(1000))
}

async fn node(url: &str, ns: &str, node_id: &str) -> Runtime {
    Runtime::join_cluster(
        fast(url, ns, node_id),
        Runtime::builder().register::<Counter>().register::<Tally>(),
    )
    .await
    .unwrap_or_else(|e| panic!("{node_id} joins: {e}"))
}

/// Waits until every runtime serves, in full, a map of exactly `nodes`.
async fn settled(rts: &[&Runtime], nodes: &[&str]) -> u64 {
    let want: Vec<String> = nodes.iter().map(|s| s.to_string()).collect();
    let mut epoch = 0;
    poll_until(WAIT, "every node serving the same map", || {
        let maps: Vec<_> = rts
            .iter()
            .map(|rt| {
                let c = rt.cluster().expect("cluster node");
                (c.shard_map(), c.handoff_stats().serving_epoch)
            })
            .collect();
        let first = maps[0].0.as_ref().map(|m| m.epoch);
        let ok = maps.iter().all(|(m, serving)| {
            m.as_ref()
                .is_some_and(|m| m.nodes == want && Some(m.epoch) == first && *serving == m.epoch)
        });
        if ok {
            epoch = first.unwrap_or(0);
        }
        async move { ok }
    })
    .await;
    epoch
}

async fn acked_at_least(outcome: &workload::Outcome, n: u64) {
    poll_until(WAIT, "the workload to make progress", || {
        let done = outcome.successes.load(Ordering::Relaxed) >= n;
        async move { done }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_and_graceful_leave_under_load_lose_nothing_and_double_nothing() {
    join_and_leave_under_load(false).await;
}

/// The same from a cluster node, whose own shards are local: its asks to the other nodes go
/// in batches to the owner its map names, which is wrong for a moment whenever a shard moves
/// (answered `NotOwner`, or nobody listening once node-2 is gone), and every such ask still
/// lands exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_and_leave_under_load_from_a_node_whose_asks_go_in_batches() {
    join_and_leave_under_load(true).await;
}

/// Writes from a cluster client (or, `from_node`, from node-1) while node-4 joins and node-2
/// leaves gracefully; checks that nothing was lost, doubled or raced.
async fn join_and_leave_under_load(from_node: bool) {
    init_test_log();
    let server = NatsServer::start();
    let url = server.url();
    let ns = "handoff";
    let n1 = node(&url, ns, "node-1").await;
    let n2 = node(&url, ns, "node-2").await;
    let n3 = node(&url, ns, "node-3").await;
    settled(&[&n1, &n2, &n3], &["node-1", "node-2", "node-3"]).await;
    let watch = MapWatch::start(&url, ns, 1024).await;
    let mut migrated = n1.cluster().expect("node").events();
    let cluster_client = match from_node {
        true => None,
        false => Some(
            Runtime::builder()
                .namespace(ns)
                .register::<Counter>()
                .cluster_client(&url)
                .start()
                .await
                .expect("client starts"),
        ),
    };
    let client = cluster_client.as_ref().unwrap_or(&n1);

    let stop = Arc::new(AtomicBool::new(false));
    let (outcome, workers) = workload::start(
        client,
        "acct",
        64,
        8,
        Duration::from_secs(30),
        Arc::clone(&stop),
    );
    acked_at_least(&outcome, 300).await;

    // A node joins under load: about a quarter of the shards move to it.
    let n4 = node(&url, ns, "node-4").await;
    settled(
        &[&n1, &n2, &n3, &n4],
        &["node-1", "node-2", "node-3", "node-4"],
    )
    .await;
    let base = outcome.successes.load(Ordering::Relaxed);
    acked_at_least(&outcome, base + 300).await;

    // node-2 leaves gracefully under load: its shards move to the others.
    let n2_stats = n2.cluster().expect("node").handoff_stats();
    n2.shutdown().await.expect("node-2 shuts down");
    settled(&[&n1, &n3, &n4], &["node-1", "node-3", "node-4"]).await;
    let base = outcome.successes.load(Ordering::Relaxed);
    acked_at_least(&outcome, base + 300).await;

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    let verdict = workload::verify(client, ns, &outcome).await;
    let nodes = [&n1, &n3, &n4];
    let conflicts: u64 = nodes.iter().map(|n| n.stats().conflicts).sum();
    let forced: u64 = nodes
        .iter()
        .map(|n| n.cluster().expect("node").handoff_stats().forced)
        .sum();
    let gained: u64 = nodes
        .iter()
        .map(|n| n.cluster().expect("node").handoff_stats().shards_gained)
        .sum();
    let slow_drains: u64 = nodes
        .iter()
        .map(|n| n.cluster().expect("node").handoff_stats().drain_timeouts)
        .sum::<u64>()
        + n2_stats.drain_timeouts;
    println!("{}", outcome.summary());
    println!(
        "{verdict:?}; conflicts {conflicts}; forced {forced}; shards gained {gained}; \
         client retries {}, resends {}, batched {}; maps seen {}; node-2 before leaving \
         {n2_stats:?}",
        client.stats().remote_retries,
        client.stats().remote_resends,
        client.stats().remote_batched,
        watch.maps_seen()
    );
    assert_eq!(outcome.lost.load(Ordering::Relaxed), 0, "lost commands");
    assert_eq!(verdict.duplicates, 0, "commands applied twice");
    assert_eq!(verdict.missing, 0, "acknowledged commands missing");
    assert!(
        verdict.broken.is_empty(),
        "broken histories: {:?}",
        verdict.broken
    );
    assert_eq!(verdict.unknown, 0, "stored commands nobody sent");
    assert_eq!(
        verdict.commits as u64,
        outcome.successes.load(Ordering::Relaxed),
        "every acknowledged add stored once, nothing else"
    );
    assert_eq!(conflicts, 0, "two activations of one actor raced");
    assert_eq!(forced, 0, "a graceful handoff had to be forced");
    assert_eq!(
        slow_drains, 0,
        "a drain took longer than the handoff timeout"
    );
    assert!(gained > 0, "shards moved");
    // A cluster client follows the map as a node does: both send in batches.
    assert!(
        client.stats().remote_batched > 0,
        "no ask went in a batch: {:?}",
        client.stats()
    );
    assert!(watch.violations().is_empty(), "{:?}", watch.violations());
    assert!(
        watch.maps_seen() >= 3,
        "the watcher saw the join and the leave"
    );

    // Every counter's state agrees with its history, read through the new owners.
    let totals = outcome.acked.lock().clone();
    let mut per_counter = std::collections::HashMap::<String, u64>::new();
    for (id, _) in &totals {
        *per_counter.entry(id.clone()).or_default() += 1;
    }
    for (id, count) in per_counter {
        let total = client
            .actor::<Counter>(&id)
            .expect("ref")
            .ask(CounterCmd::Get)
            .await
            .expect("get");
        assert_eq!(total, count, "{id}");
    }

    // node-1 saw shards migrate to it or others, with their handoff durations.
    let mut seen_migration = false;
    while let Ok(event) = migrated.try_recv() {
        if let ClusterEvent::ShardMigrated { to, forced, .. } = event {
            assert_eq!(to, "node-1");
            assert!(!forced);
            seen_migration = true;
        }
    }
    assert!(seen_migration, "node-1 gained shards when node-2 left");
    if let Some(client) = cluster_client {
        client.shutdown().await.expect("client");
    }
    for rt in [n1, n3, n4] {
        rt.shutdown().await.expect("shutdown");
    }
}
