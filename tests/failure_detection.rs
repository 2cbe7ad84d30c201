//! How fast a dead node is told from a slow one (`cluster/liveness.rs`).
//!
//! A node that dies loses its NATS connection, and the server drops its subscriptions at once.
//! The leader checks the connection of any node silent for two beats; the server's "no
//! responders" — asked over a connection to the node's own server, directly or through another
//! node on it — lets it declare the node failed long before the failure timeout. A node that is
//! merely slow or paused keeps its connection, so it is left to the failure timeout.
//!
//! The tests set a long failure timeout (12 s): a declaration well within it can only come from
//! the connection check.

mod common;

use std::time::{Duration, Instant};

use aether::ClusterView;
use aether::cluster::{NodeStatus, RegistryChange};
use aether::routing::shard_of;
use common::nats::{NatsCluster, NatsServer, wait_for_jetstream};
use common::process::{NodeProcess, Timing, node_binary, poll};
use common::proxy::{Mode, Proxy};
use futures_util::StreamExt;

/// A long failure timeout, so that only the connection check can declare a node early.
const SLOW: Timing = Timing {
    heartbeat_ms: 1000,
    failure_ms: 12_000,
    lease_ms: 3000,
};

/// One test of this file at a time: the soak saturates both cores on purpose, and the others
/// time failure detection against deadlines that such load would stretch (a detection test
/// beside the soak once took over its 6 s).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn failure_timeout() -> Duration {
    Duration::from_millis(SLOW.failure_ms)
}

/// A node on `url`; one replica unless the servers are a cluster.
fn spawn(url: &str, ns: &str, id: &str, replicas: &str) -> NodeProcess {
    tokio::task::block_in_place(|| {
        NodeProcess::spawn_with(
            &node_binary(),
            url,
            ns,
            id,
            SLOW,
            &[("AETHER_REPLICAS", replicas)],
        )
    })
}

async fn map_of(view: &ClusterView, nodes: &[&str]) {
    poll(
        Duration::from_secs(30),
        &format!("a map of {nodes:?}"),
        async || {
            view.shard_map().await.ok().flatten().filter(|m| {
                m.nodes.len() == nodes.len() && nodes.iter().all(|n| m.nodes.iter().any(|m| m == n))
            })
        },
    )
    .await;
}

/// Three nodes on one fresh nats-server, with `timing`, serving a complete map; their logs go
/// into `logs` when given.
async fn three_nodes(
    ns: &str,
    timing: Timing,
    logs: Option<&std::path::Path>,
) -> (NatsServer, ClusterView, Vec<NodeProcess>) {
    let server = NatsServer::start();
    let url = server.url();
    wait_for_jetstream(&url).await;
    let nodes: Vec<NodeProcess> = ["node-1", "node-2", "node-3"]
        .iter()
        .map(|id| {
            tokio::task::block_in_place(|| {
                let env = [("AETHER_REPLICAS".to_owned(), "1".to_owned())];
                let mut node = match logs {
                    Some(dir) => NodeProcess::start_logged(
                        &node_binary(),
                        &url,
                        ns,
                        id,
                        timing,
                        &env,
                        &dir.join(format!("{id}.log")),
                    ),
                    None => NodeProcess::start(
                        &node_binary(),
                        &url,
                        ns,
                        id,
                        timing,
                        &[("AETHER_REPLICAS", "1")],
                    ),
                };
                node.wait_ready();
                node
            })
        })
        .collect();
    let view = ClusterView::connect(url.as_str(), ns).await.unwrap();
    map_of(&view, &["node-1", "node-2", "node-3"]).await;
    (server, view, nodes)
}

/// Waits until `node` beats naming its NATS server. A node does once it has proved it answers
/// on its check subject; before that the leader cannot check its connection, and a node cut
/// off would be found by the failure timeout alone.
async fn checkable(url: &str, ns: &str, node: &str) {
    #[derive(serde::Deserialize)]
    struct Beat {
        node: String,
        #[serde(default)]
        server: String,
    }
    let nats = async_nats::connect(url).await.unwrap();
    let mut beats = nats
        .subscribe(format!("aether.{ns}.cluster.beat"))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(msg) = beats.next().await {
            if let Ok(beat) = rmp_serde::from_slice::<Beat>(&msg.payload)
                && beat.node == node
                && !beat.server.is_empty()
            {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{node} never beat naming its server"));
}

/// Where the leader (`leader`) or a follower (`!leader`) is in `nodes`.
async fn position_of(view: &ClusterView, nodes: &[NodeProcess], leader: bool) -> usize {
    let current = view.leader().await.unwrap().expect("a leader").node;
    nodes
        .iter()
        .position(|n| (n.id == current) == leader)
        .expect("such a node")
}

/// Opens and funds `accounts` through `node`.
fn fund(node: &mut NodeProcess, accounts: &[String]) {
    for account in accounts {
        tokio::task::block_in_place(|| {
            assert_eq!(
                node.command(&format!("open {account}")),
                format!("ok {account} 0")
            );
            assert_eq!(
                node.command(&format!("deposit {account} 7")),
                format!("ok {account} 7")
            );
        });
    }
}

/// Every account answers through `node` with its balance, within `within`.
async fn all_answer(node: &mut NodeProcess, accounts: &[String], within: Duration) {
    let deadline = Instant::now() + within;
    for account in accounts {
        loop {
            let said = tokio::task::block_in_place(|| node.command(&format!("balance {account}")));
            if said == format!("ok {account} 7") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{account} does not answer through {}: {said}",
                node.id
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Kills `victim` and waits for a map without it; returns how long that took, after checking
/// that the failure timeout cannot explain it and that the registry says `Failed`.
async fn kill_and_see_it_declared(view: &ClusterView, victim: &mut NodeProcess) -> Duration {
    let killed = Instant::now();
    victim.kill();
    poll(
        failure_timeout() / 2,
        "a map without the killed node",
        async || {
            view.shard_map()
                .await
                .ok()
                .flatten()
                .filter(|m| !m.nodes.contains(&victim.id))
        },
    )
    .await;
    let took = killed.elapsed();
    assert!(
        took < failure_timeout() / 2,
        "declared after {took:?}: the failure timeout, not the connection check"
    );
    poll(
        Duration::from_secs(5),
        "its record saying Failed",
        async || {
            view.node(&victim.id)
                .await
                .ok()
                .flatten()
                .filter(|r| r.status == NodeStatus::Failed)
        },
    )
    .await;
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_declared_failed_once_the_server_drops_its_connection() {
    let _serial = SERIAL.lock().await;
    let (_server, view, mut nodes) = three_nodes("gone", SLOW, None).await;
    let accounts: Vec<String> = (0..24).map(|i| format!("acct-{i}")).collect();
    fund(&mut nodes[0], &accounts);

    let at = position_of(&view, &nodes, false).await;
    let mut victim = nodes.remove(at);
    let took = kill_and_see_it_declared(&view, &mut victim).await;
    println!(
        "{} declared failed {took:?} after SIGKILL (heartbeat 1 s, failure timeout 12 s)",
        victim.id
    );
    // Its accounts answer on the survivors, with what it had stored.
    all_answer(&mut nodes[0], &accounts, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_before_its_lease_expires() {
    let _serial = SERIAL.lock().await;
    // A lease as long as the failure timeout: only the connection check can explain a new
    // leader within half of it.
    const LONG_LEASE: Timing = Timing {
        lease_ms: 12_000,
        ..SLOW
    };
    let (_server, view, mut nodes) = three_nodes("deposed", LONG_LEASE, None).await;
    let accounts: Vec<String> = (0..24).map(|i| format!("led-{i}")).collect();
    fund(&mut nodes[0], &accounts);
    let leader = view.leader().await.unwrap().expect("a leader");
    let at = position_of(&view, &nodes, true).await;
    let mut victim = nodes.remove(at);
    let killed = Instant::now();
    victim.kill();
    let successor = poll(failure_timeout() / 2, "a new leader", async || {
        view.leader()
            .await
            .ok()
            .flatten()
            .filter(|l| l.node != leader.node && l.term > leader.term)
    })
    .await;
    let elected = killed.elapsed();
    let took = {
        poll(
            failure_timeout() / 2,
            "a map without the killed leader",
            async || {
                view.shard_map()
                    .await
                    .ok()
                    .flatten()
                    .filter(|m| !m.nodes.contains(&victim.id))
            },
        )
        .await;
        killed.elapsed()
    };
    assert!(
        took < failure_timeout() / 2,
        "the lease or the failure timeout, not the connection check: {took:?}"
    );
    println!(
        "leader {} killed: {} leads after {elected:?}, the map leaves it out after {took:?} \
         (lease and failure timeout 12 s)",
        leader.node, successor.node
    );
    all_answer(&mut nodes[0], &accounts, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_connection_drops_serves_nothing_it_lost_and_rejoins() {
    let _serial = SERIAL.lock().await;
    // node-3 reaches the server through a proxy. The proxy closes its connection and holds
    // every new one: the server drops node-3's subscriptions, the leader finds it gone and
    // gives its accounts away; node-3 fenced itself when it saw the loss, so it answers
    // nothing from its stale state, and after it reconnects it serves only what the new map
    // gives it.
    let server = NatsServer::start();
    let url = server.url();
    wait_for_jetstream(&url).await;
    let proxy = Proxy::start(&format!("127.0.0.1:{}", server.port)).await;
    let ns = "dropped";
    let mut nodes: Vec<NodeProcess> = ["node-1", "node-2"]
        .iter()
        .map(|id| spawn(&url, ns, id, "1"))
        .collect();
    let mut cut = tokio::task::block_in_place(|| {
        NodeProcess::spawn_with(
            &node_binary(),
            &proxy.url(),
            ns,
            "node-3",
            SLOW,
            &[("AETHER_REPLICAS", "1"), ("AETHER_ASK_TIMEOUT_MS", "1500")],
        )
    });
    let view = ClusterView::connect(url.as_str(), ns).await.unwrap();
    map_of(&view, &["node-1", "node-2", "node-3"]).await;
    let map = view.shard_map().await.unwrap().expect("a map");
    let theirs: Vec<String> = (0..)
        .map(|i| format!("held-{i}"))
        .filter(|id| map.owner(shard_of(ns, "account", id, map.shard_count())) == Some("node-3"))
        .take(4)
        .collect();
    fund(&mut nodes[0], &theirs);
    // node-3 has them resident, at 7.
    all_answer(&mut cut, &theirs, Duration::from_secs(10)).await;

    checkable(&url, ns, "node-3").await;
    let leader = view.leader().await.unwrap().expect("a leader").node;
    proxy.set(Mode::BlackHole);
    proxy.reset();
    let cut_at = Instant::now();
    // Polled up to the failure timeout and then judged, so that a miss says how long it took.
    poll(
        failure_timeout() + Duration::from_secs(3),
        "node-3 declared failed",
        async || {
            view.node("node-3")
                .await
                .ok()
                .flatten()
                .filter(|r| r.status == NodeStatus::Failed)
        },
    )
    .await;
    let took = cut_at.elapsed();
    assert!(
        took < failure_timeout() / 2,
        "node-3 declared failed after {took:?} (leader {leader}): the failure timeout, not the \
         connection check"
    );
    // Its accounts move on without it.
    for account in &theirs {
        let said =
            tokio::task::block_in_place(|| nodes[0].command(&format!("deposit {account} 1")));
        assert_eq!(
            said,
            format!("ok {account} 8"),
            "the new owner has the stored state"
        );
    }
    // Cut off, node-3 answers nothing: every read through it fails (it cannot reach the new
    // owners, and it does not answer from its own copy, which says 7).
    for account in &theirs {
        let said = tokio::task::block_in_place(|| cut.command(&format!("balance {account}")));
        assert!(
            said.starts_with("err"),
            "a read through a cut-off node: {said}"
        );
    }
    proxy.set(Mode::Forward);
    // Back: it rejoins, and every read through it sees the deposits made meanwhile.
    map_of(&view, &["node-1", "node-2", "node-3"]).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    for account in &theirs {
        loop {
            let said = tokio::task::block_in_place(|| cut.command(&format!("balance {account}")));
            assert_ne!(
                said,
                format!("ok {account} 7"),
                "a stale read after the rejoin"
            );
            if said == format!("ok {account} 8") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{account} does not answer: {said}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_keeps_its_shards_until_the_failure_timeout() {
    let _serial = SERIAL.lock().await;
    let (_server, view, mut nodes) = three_nodes("slow", SLOW, None).await;
    let accounts: Vec<String> = (0..24).map(|i| format!("slow-{i}")).collect();
    fund(&mut nodes[0], &accounts);
    let paused = position_of(&view, &nodes, false).await;
    let id = nodes[paused].id.clone();

    // Watch every record and map while the node is paused for a third of the failure
    // timeout: silent for many beats, checked many times, but its connection is there.
    let mut records = view.watch_nodes().await.unwrap();
    let mut maps = view.watch_maps().await.unwrap();
    nodes[paused].pause();
    let until = tokio::time::Instant::now() + failure_timeout() / 3;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(until) => break,
            Some(Ok(change)) = records.next() => {
                if let RegistryChange::Put(r) = change {
                    assert!(
                        !(r.node == id && r.status == NodeStatus::Failed),
                        "a paused node, still connected, was declared failed"
                    );
                }
            }
            Some(Ok(map)) = maps.next() => {
                assert!(map.nodes.contains(&id), "a paused node lost its shards: {:?}", map.nodes);
            }
        }
    }
    nodes[paused].resume();
    // It serves again: every account answers through it, its own ones included.
    all_answer(&mut nodes[paused], &accounts, Duration::from_secs(10)).await;
    let map = view.shard_map().await.unwrap().expect("a map");
    assert_eq!(map.nodes.len(), 3, "still three nodes: {:?}", map.nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_another_server_is_checked_through_a_node_on_its_own() {
    let _serial = SERIAL.lock().await;
    // The leader on s1; two nodes on s2. When one of them dies, s1 hears of it only through
    // its route to s2 — not enough (a broken route looks the same) — so the leader asks the
    // other node on s2 to check.
    let cluster = NatsCluster::start();
    let urls = cluster.urls();
    wait_for_jetstream(&urls).await;
    let (s1, s2) = (cluster.servers[0].url(), cluster.servers[1].url());
    let ns = "relay";
    let mut first = spawn(&s1, ns, "node-1", "3");
    let view = ClusterView::connect(urls.as_str(), ns).await.unwrap();
    poll(Duration::from_secs(20), "node-1 leads", async || {
        view.leader()
            .await
            .ok()
            .flatten()
            .filter(|l| l.node == "node-1")
    })
    .await;
    let mut victim = spawn(&s2, ns, "node-2", "3");
    let mut relay = spawn(&s2, ns, "node-3", "3");
    map_of(&view, &["node-1", "node-2", "node-3"]).await;
    let accounts: Vec<String> = (0..24).map(|i| format!("relayed-{i}")).collect();
    fund(&mut first, &accounts);

    assert_eq!(
        view.leader().await.unwrap().expect("a leader").node,
        "node-1",
        "the leader stayed on s1"
    );
    let took = kill_and_see_it_declared(&view, &mut victim).await;
    println!("node-2 (on s2) declared failed {took:?} after SIGKILL, checked through node-3");
    all_answer(&mut relay, &accounts, Duration::from_secs(10)).await;
}

/// The default cluster timing (heartbeat 1 s, failure timeout 3 s, lease 3 s).
const DEFAULT: Timing = Timing {
    heartbeat_ms: 1000,
    failure_ms: 3000,
    lease_ms: 3000,
};

/// Busy loops that keep every core saturated until dropped.
struct Burners(Vec<std::process::Child>);

impl Burners {
    fn start(n: usize) -> Burners {
        Burners(
            (0..n)
                .map(|_| {
                    std::process::Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .expect("a busy loop starts")
                })
                .collect(),
        )
    }
}

impl Drop for Burners {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_node_is_declared_failed_while_both_cores_are_saturated() {
    let _serial = SERIAL.lock().await;
    // 20 s by default; AETHER_SOAK_SECS=600 for the ten-minute run.
    let soak = Duration::from_secs(
        std::env::var("AETHER_SOAK_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20),
    );
    // Logged, to find out afterwards whether a connection check or a lease ending misfired.
    let logs = tempfile::tempdir().unwrap();
    let (_server, view, mut nodes) = three_nodes("busy", DEFAULT, Some(logs.path())).await;
    let accounts: Vec<String> = (0..64).map(|i| format!("busy-{i}")).collect();
    fund(&mut nodes[0], &accounts);
    let leader = view.leader().await.unwrap().expect("a leader");
    let mut records = view.watch_nodes().await.unwrap();
    let mut maps = view.watch_maps().await.unwrap();

    // Two busy loops on two cores, and every node serving deposits to random accounts (most
    // of them owned by another node) as fast as it can.
    let burners = Burners::start(2);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = nodes
        .into_iter()
        .map(|mut node| {
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0u64, 0u64);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let account = format!("busy-{}", fastrand::u32(..64));
                    if node
                        .command(&format!("deposit {account} 1"))
                        .starts_with("ok ")
                    {
                        ok += 1;
                    } else {
                        failed += 1;
                    }
                }
                (node, ok, failed)
            })
        })
        .collect();
    let until = tokio::time::Instant::now() + soak;
    let mut seen = 0u64;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(until) => break,
            Some(Ok(change)) = records.next() => {
                if let RegistryChange::Put(r) = change {
                    seen += 1;
                    assert_ne!(
                        r.status,
                        NodeStatus::Failed,
                        "{} declared failed while saturated (not dead)",
                        r.node
                    );
                }
            }
            Some(Ok(map)) = maps.next() => {
                assert_eq!(map.nodes.len(), 3, "a node lost its shards: {:?}", map.nodes);
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(burners);
    let (mut answered, mut refused) = (0, 0);
    // The nodes are kept running until everything is checked (dropping one kills it).
    let mut running = Vec::new();
    for worker in load {
        let (node, ok, failed) = tokio::task::block_in_place(|| worker.join().expect("load"));
        println!("{}: {ok} deposits, {failed} refused", node.id);
        answered += ok;
        refused += failed;
        running.push(node);
    }
    let map = view.shard_map().await.unwrap().expect("a map");
    assert_eq!(
        map.nodes.len(),
        3,
        "a node lost its shards: {:?}",
        map.nodes
    );
    // Every node stayed connected: no connection check found one gone, no lease was ended on
    // one, no node fenced itself.
    let said = |what: &str| -> usize {
        ["node-1", "node-2", "node-3"]
            .iter()
            .map(|id| {
                std::fs::read_to_string(logs.path().join(format!("{id}.log")))
                    .unwrap_or_default()
                    .matches(what)
                    .count()
            })
            .sum()
    };
    assert_eq!(said("connection is gone"), 0, "a connection check misfired");
    assert_eq!(said("fencing this node"), 0, "a node fenced itself");
    let now = view.leader().await.unwrap();
    println!(
        "{soak:?} saturated: {seen} node records written, none failed; {answered} deposits, \
         {refused} refused; leader {leader:?} at the start, {now:?} at the end; lease renewals \
         that failed: {}",
        said("lease renewal failed")
    );
    assert!(seen > 0, "the registry was watched");
    assert!(answered > 0, "the nodes served");
    assert_eq!(refused, 0, "deposits were refused: a node stopped serving");
    drop(running);
}
