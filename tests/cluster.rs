//! The cluster with several runtimes in one process, on a real NATS server or cluster:
//! leader, shard map, routing across nodes, handles across nodes, bad frames on the wire.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use aether::prelude::*;
use aether::{ClusterConfig, ClusterEvent, Runtime};
use common::nats::{NatsCluster, NatsServer, wait_for_jetstream};
use common::*;

const WAIT: Duration = Duration::from_secs(20);

fn fast(urls: &str, ns: &str, node: &str, replicas: usize) -> ClusterConfig {
    ClusterConfig::new(urls, ns)
        .node_id(node)
        .heartbeat(Duration::from_millis(200))
        .failure_timeout(Duration::from_millis(1000))
        .lease(Duration::from_millis(1000))
        .replicas(replicas)
}

async fn node(urls: &str, ns: &str, node_id: &str, replicas: usize) -> Runtime {
    Runtime::join_cluster(
        fast(urls, ns, node_id, replicas),
        Runtime::builder().register::<Counter>().register::<Tally>(),
    )
    .await
    .unwrap_or_else(|e| panic!("{node_id} joins: {e}"))
}

/// Waits until every runtime sees the same leader and a map with exactly `nodes`.
async fn converged(rts: &[&Runtime], nodes: &[&str]) -> (String, u64, u64) {
    let want: Vec<String> = nodes.iter().map(|s| s.to_string()).collect();
    let mut result = None;
    poll_until(WAIT, "one leader and one map everywhere", || {
        let views: Vec<_> = rts
            .iter()
            .map(|rt| {
                let c = rt.cluster().unwrap();
                (c.leader(), c.shard_map())
            })
            .collect();
        let ok = views.iter().all(|(l, m)| {
            l.is_some()
                && l == &views[0].0
                && m.as_ref().is_some_and(|m| {
                    m.nodes == want && Some(m.epoch) == views[0].1.as_ref().map(|x| x.epoch)
                })
        });
        if ok {
            let (l, m) = &views[0];
            let (l, m) = (l.clone().unwrap(), m.clone().unwrap());
            result = Some((l.node, l.term, m.epoch));
        }
        async move { ok }
    })
    .await;
    result.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_agree_and_route_asks_to_owners() {
    let server = NatsServer::start();
    let url = server.url();
    let a = node(&url, "trio", "node-1", 1).await;
    let b = node(&url, "trio", "node-2", 1).await;
    let c = node(&url, "trio", "node-3", 1).await;
    let (leader, term, _) = converged(&[&a, &b, &c], &["node-1", "node-2", "node-3"]).await;
    assert!(["node-1", "node-2", "node-3"].contains(&leader.as_str()));
    assert!(term > 0);
    let map = a.cluster().unwrap().shard_map().unwrap();
    assert_eq!(map.owners.len(), 1024);
    for (n, count) in map.counts() {
        let fair = 1024.0 / 3.0;
        assert!(
            (count as f64 - fair).abs() <= fair * 0.15,
            "{n} owns {count}"
        );
    }
    // Asks from every node reach the owner; state is the same from everywhere.
    for i in 0..30u64 {
        let from = [&a, &b, &c][(i % 3) as usize];
        let id = format!("acct-{}", i % 10);
        from.actor::<Counter>(&id)
            .unwrap()
            .ask(CounterCmd::Add(1))
            .await
            .unwrap();
    }
    for rt in [&a, &b, &c] {
        for i in 0..10 {
            let id = format!("acct-{i}");
            assert_eq!(
                rt.actor::<Counter>(&id)
                    .unwrap()
                    .ask(CounterCmd::Get)
                    .await
                    .unwrap(),
                3
            );
        }
    }
    // Each actor is resident only on its owner.
    for i in 0..10 {
        let id = format!("acct-{i}");
        let owner = a.cluster().unwrap().locate("counter", &id).owner.unwrap();
        for rt in [&a, &b, &c] {
            let here = rt.is_resident(&rt.actor::<Counter>(&id).unwrap());
            assert_eq!(
                here,
                rt.cluster().unwrap().node_id() == owner,
                "{id} on {}",
                rt.cluster().unwrap().node_id()
            );
        }
    }
    for rt in [a, b, c] {
        rt.shutdown().await.unwrap();
    }
}
