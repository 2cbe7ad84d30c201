//! Cluster nodes as separate processes (`examples/cluster_node.rs`) on a 3-server NATS
//! cluster: they agree on a leader and a map, route asks, survive SIGKILL of the leader, and a
//! leader paused with SIGSTOP past its lease does not act when it resumes.

mod common;

use std::time::{Duration, Instant};

use aether::ClusterView;
use aether::bus::{Bus, BusConfig, EventBody, Filter, SystemEvent};
use aether::cluster::ShardMap;
use common::nats::{NatsCluster, wait_for_jetstream};
use common::process::{FAST, NodeProcess, node_binary, poll};
use futures_util::StreamExt;

const HEARTBEAT_MS: u64 = FAST.heartbeat_ms;
const LEASE_MS: u64 = FAST.lease_ms;

fn assert_complete(map: &ShardMap, alive: &[&str]) {
    assert_eq!(map.owners.len(), 1024);
    for shard in 0..1024 {
        let owner = map.owner(shard).expect("every shard has an owner");
        assert!(
            alive.contains(&owner),
            "shard {shard} owned by {owner}, not alive"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_processes_agree_fail_over_and_fence_a_paused_leader() {
    let cluster = NatsCluster::start();
    let urls = cluster.urls();
    wait_for_jetstream(&urls).await;
    let ns = "procs";
    let mut nodes: Vec<NodeProcess> = ["node-1", "node-2", "node-3"]
        .iter()
        .map(|id| tokio::task::block_in_place(|| NodeProcess::spawn(&node_binary(), &urls, ns, id)))
        .collect();
    let view = ClusterView::connect(&urls, ns).await.unwrap();
    // What the nodes say on the bus about the cluster (system events, over NATS).
    let watcher = Bus::connect(&urls, BusConfig::default()).await.unwrap();
    let mut system = watcher
        .subscribe(format!("{ns}.system.*").as_str(), Filter::all())
        .await
        .unwrap();
    let mut said: Vec<(String, SystemEvent)> = Vec::new();

    // One leader, one map of the three, every shard owned by one of them.
    let map = poll(
        Duration::from_secs(20),
        "a map of three nodes",
        async || {
            view.shard_map()
                .await
                .unwrap()
                .filter(|m| m.nodes.len() == 3)
        },
    )
    .await;
    assert_complete(&map, &["node-1", "node-2", "node-3"]);
    let leader = view.leader().await.unwrap().expect("a leader");
    for node in nodes.iter_mut() {
        let said = tokio::task::block_in_place(|| node.command("leader"));
        assert_eq!(said, format!("leader {} {}", leader.node, leader.term));
    }

    // Asks from any node reach the owner; every node sees the same state.
    for (i, account) in ["alice", "bob", "carol", "dave"].iter().enumerate() {
        let node = &mut nodes[i % 3];
        assert_eq!(
            tokio::task::block_in_place(|| node.command(&format!("open {account}"))),
            format!("ok {account} 0")
        );
        tokio::task::block_in_place(|| node.command(&format!("deposit {account} 10")));
    }
    for node in nodes.iter_mut() {
        for account in ["alice", "bob", "carol", "dave"] {
            assert_eq!(
                tokio::task::block_in_place(|| node.command(&format!("balance {account}"))),
                format!("ok {account} 10")
            );
        }
    }

    // SIGKILL the leader: a new leader with a higher term within the lease plus a heartbeat.
    let victim = nodes
        .iter()
        .position(|n| n.id == leader.node)
        .expect("leader is one of the nodes");
    let killed_at = Instant::now();
    nodes[victim].kill();
    let successor = poll(Duration::from_secs(10), "a new leader", async || {
        view.leader()
            .await
            .ok()
            .flatten()
            .filter(|l| l.node != leader.node && l.term > leader.term)
    })
    .await;
    let failover = killed_at.elapsed();
    println!(
        "leader {} (term {}) killed; {} elected with term {} after {failover:?} (lease {LEASE_MS} ms, heartbeat {HEARTBEAT_MS} ms)",
        leader.node, leader.term, successor.node, successor.term
    );
    assert!(
        failover <= Duration::from_millis(LEASE_MS + HEARTBEAT_MS + 250),
        "failover took {failover:?}"
    );
    let dead = nodes.remove(victim);
    let survivors: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    let map = poll(
        Duration::from_secs(10),
        "a map without the dead node",
        async || {
            view.shard_map()
                .await
                .unwrap()
                .filter(|m| m.nodes.len() == 2 && !m.nodes.contains(&dead.id))
        },
    )
    .await;
    assert_complete(&map, &survivors);
    assert_eq!(map.term, successor.term, "published by the new leader");
    // The survivors said the killed node failed (not that it left).
    poll(
        Duration::from_secs(10),
        "NodeFailed for the killed leader",
        async || {
            while let Some(e) = system.try_recv() {
                if let EventBody::System(s) = e.body() {
                    said.push((s.origin.clone(), s.event.clone()));
                }
            }
            said.iter()
                .any(|(origin, e)| {
                    survivors.contains(&origin.as_str())
                        && matches!(e, SystemEvent::NodeFailed { node } if *node == leader.node)
                })
                .then_some(())
        },
    )
    .await;
    assert!(
        !said
            .iter()
            .any(|(_, e)| matches!(e, SystemEvent::NodeLeft { node } if *node == leader.node)),
        "a killed node did not leave: {said:?}"
    );
    for node in nodes.iter_mut() {
        assert_eq!(
            tokio::task::block_in_place(|| node.command("balance carol")),
            "ok carol 10",
            "state survives on the new owners"
        );
    }
    drop(dead);

    // SIGSTOP the current leader past its lease, then resume it.
    let paused = nodes
        .iter()
        .position(|n| n.id == successor.node)
        .expect("successor is alive");
    nodes[paused].signal(libc::SIGSTOP);
    let third = poll(
        Duration::from_secs(10),
        "a leader while paused",
        async || {
            view.leader()
                .await
                .ok()
                .flatten()
                .filter(|l| l.term > successor.term)
        },
    )
    .await;
    poll(
        Duration::from_secs(10),
        "a map of the new term",
        async || {
            view.shard_map()
                .await
                .unwrap()
                .filter(|m| m.term == third.term && m.nodes.len() == 1)
        },
    )
    .await;
    let mut maps = view.watch_maps().await.unwrap();
    // Skip the current map; everything after the resume is what matters.
    let _ = tokio::time::timeout(Duration::from_secs(1), maps.next()).await;
    nodes[paused].signal(libc::SIGCONT);
    let resumed_at = Instant::now();
    let mut seen = Vec::new();
    while resumed_at.elapsed() < Duration::from_millis(4 * LEASE_MS) {
        if let Ok(Some(Ok(map))) =
            tokio::time::timeout(Duration::from_millis(200), maps.next()).await
        {
            seen.push((map.epoch, map.term, map.nodes.clone()));
        }
    }
    println!("maps after the paused leader resumed: {seen:?}");
    assert!(
        seen.iter().all(|(_, term, _)| *term >= third.term),
        "a map of an old term was published after resume: {seen:?}"
    );
    let leader_now = view.leader().await.unwrap().expect("a leader");
    assert_eq!(
        leader_now, third,
        "the resumed node did not take the lease back"
    );

    // The resumed node rejoins as a plain member, in a map of the new term.
    let map = poll(
        Duration::from_secs(10),
        "the resumed node back in the map",
        async || {
            view.shard_map()
                .await
                .unwrap()
                .filter(|m| m.nodes.len() == 2)
        },
    )
    .await;
    assert_eq!(map.term, third.term);
    for node in nodes.drain(..) {
        tokio::task::block_in_place(|| node.shutdown());
    }
}
