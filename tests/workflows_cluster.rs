//! Deadlocks across nodes, with several runtimes in one process on a real nats-server: wait-for
//! cycles whose turns live on three different nodes are refused with `Deadlock` within 250 ms
//! of forming (probes and breaks travel over NATS). Durable effects across nodes are proven by
//! the chaos workload (`tests/chaos.rs`) and the reminder tests (`tests/reminders_cluster.rs`).

mod common;

use std::time::Duration;

use aether::prelude::*;
use aether::{ClusterConfig, Runtime};
use common::link::{Link, assert_cycle_refused};
use common::nats::{NatsServer, wait_for_jetstream};
use common::*;

fn config(url: &str, ns: &str, node: &str) -> ClusterConfig {
    ClusterConfig::new(url, ns)
        .node_id(node)
        .heartbeat(Duration::from_millis(200))
        .failure_timeout(Duration::from_millis(1000))
        .lease(Duration::from_millis(1000))
}

async fn node(url: &str, ns: &str, id: &str) -> Runtime {
    Runtime::join_cluster(config(url, ns, id), Runtime::builder().register::<Link>())
        .await
        .unwrap_or_else(|e| panic!("{id} joins: {e}"))
}

/// `n` link ids whose owners go round the three nodes (so every hop of the cycle crosses
/// nodes).
fn spread(rt: &Runtime, prefix: &str, n: usize) -> Vec<String> {
    let cluster = rt.cluster().expect("a node");
    let nodes = ["node-1", "node-2", "node-3"];
    let mut out = Vec::new();
    let mut candidate = 0usize;
    while out.len() < n {
        let id = format!("{prefix}-{candidate}");
        candidate += 1;
        let owner = cluster.locate::<Link>(&id).owner;
        if owner.as_deref() == Some(nodes[out.len() % 3]) {
            out.push(id);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cycles_across_three_nodes_are_refused_quickly() {
    let server = NatsServer::start();
    let url = server.url();
    wait_for_jetstream(&url).await;
    let a = node(&url, "dlx", "node-1").await;
    let b = node(&url, "dlx", "node-2").await;
    let c = node(&url, "dlx", "node-3").await;
    poll_until(Duration::from_secs(20), "a map of three", || {
        let ok = a
            .cluster()
            .and_then(|c| c.shard_map())
            .is_some_and(|m| m.nodes.len() == 3);
        async move { ok }
    })
    .await;
    for n in [3usize, 5] {
        let ids = spread(&a, &format!("x{n}"), n);
        // Each link is asked from a different node than the one that owns it.
        let rts = [&a, &b, &c];
        let links: Vec<ActorRef<Link>> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| rts[(i + 1) % 3].actor::<Link>(id).expect("id"))
            .collect();
        let store = a.event_store();
        let keys: Vec<aether::ActorKey> = links.iter().map(|l| l.key().clone()).collect();
        assert_cycle_refused(&links, async || {
            let mut total = 0;
            for k in &keys {
                total += store.read(k, 1).await.expect("read").len() as u64;
            }
            total
        })
        .await;
    }
    let refused: u64 = [&a, &b, &c]
        .iter()
        .map(|rt| rt.stats().deadlocks_refused)
        .sum();
    assert_eq!(refused, 2, "one refusal per cycle");
    for rt in [a, b, c] {
        rt.shutdown().await.expect("shutdown");
    }
}
