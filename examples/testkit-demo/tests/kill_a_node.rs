//! Three node processes of this crate's binary on a real nats-server; one is killed (SIGKILL)
//! and the counters it served answer from the survivors with their state intact; then it is
//! restarted and serves again.

use std::path::Path;
use std::time::{Duration, Instant};

use aether_testkit::nats::NatsServer;
use aether_testkit::process::{FAST, NodeProcess};

#[test]
fn the_counters_of_a_killed_node_answer_from_the_survivors() {
    let server = NatsServer::start();
    let binary = Path::new(env!("CARGO_BIN_EXE_testkit-demo"));
    // One server: one replica per stream.
    let env = [("AETHER_REPLICAS", "1")];
    let mut nodes: Vec<NodeProcess> = ["node-1", "node-2", "node-3"]
        .iter()
        .map(|id| NodeProcess::spawn_with(binary, &server.url(), "demo", id, FAST, &env))
        .collect();

    // Wait until node-1 sees all three nodes in the map (node-3 owns some counters).
    let ids: Vec<String> = (0..30).map(|i| format!("c-{i}")).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let on_node_3 = loop {
        let on_3: Vec<&String> = ids
            .iter()
            .filter(|id| nodes[0].command(&format!("owner {id}")) == "node-3")
            .collect();
        if !on_3.is_empty() {
            break on_3.len();
        }
        assert!(Instant::now() < deadline, "node-3 never owned a counter");
        std::thread::sleep(Duration::from_millis(100));
    };
    for id in &ids {
        assert_eq!(nodes[0].command(&format!("add {id} 1")), "1", "{id}");
    }

    nodes[2].kill();

    // Every counter answers through node-1 again — node-3's once the survivors took its
    // shards over — with the value it had.
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in &ids {
        loop {
            let answer = nodes[0].command(&format!("get {id}"));
            if answer == "1" {
                break;
            }
            assert!(
                answer.starts_with("error") && Instant::now() < deadline,
                "{id}: {answer}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(nodes[0].command(&format!("add {id} 1")), "2", "{id}");
        assert_ne!(nodes[0].command(&format!("owner {id}")), "node-3");
    }
    println!("{on_node_3} of 30 counters failed over from node-3");

    // The crashed node comes back (same id, same settings) and takes a share again; every
    // counter still has its value, whoever serves it now.
    nodes[2].restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ids
        .iter()
        .any(|id| nodes[0].command(&format!("owner {id}")) == "node-3")
    {
        assert!(
            Instant::now() < deadline,
            "the restarted node-3 never owned a counter"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in &ids {
        loop {
            let answer = nodes[1].command(&format!("get {id}"));
            if answer == "2" {
                break;
            }
            assert!(
                answer.starts_with("error") && Instant::now() < deadline,
                "{id} after the restart: {answer}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    println!("node-3 restarted and serves again");
    for node in nodes.drain(..) {
        node.shutdown();
    }
}
