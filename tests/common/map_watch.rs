//! A watcher that checks every shard map the leader publishes, while a test runs.
//!
//! It follows the node registry and the shard map of a namespace straight from NATS KV (not
//! through any node) and records a violation when a published map:
//! - does not advance the epoch (epochs only increase);
//! - leaves a shard without exactly one owner among its nodes, or has the wrong shard count;
//! - gives shards to a node that is not alive: never registered, or declared failed / gone
//!   from the registry more than [`GRACE`] before the map arrived (and not back since). The
//!   grace absorbs the two KV streams being delivered in a different order than written.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aether::ClusterView;
use aether::cluster::{NodeStatus, RegistryChange, ShardMap};
use futures_util::StreamExt;
use parking_lot::Mutex;

/// How long after a node is declared failed (or gone) a map may still name it.
pub const GRACE: Duration = Duration::from_secs(1);

#[derive(Default)]
struct State {
    maps: Vec<ShardMap>,
    violations: Vec<String>,
    /// Node → when it stopped being alive (failed or gone), if it has not come back.
    dead_since: HashMap<String, Instant>,
    known: HashMap<String, NodeStatus>,
    /// (epoch, node) of maps naming a node whose record had not arrived yet: checked later.
    unknown: Vec<(u64, String)>,
}

/// Watches maps until dropped. See the module docs.
pub struct MapWatch {
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl MapWatch {
    /// Starts watching namespace `ns` on `urls` (some node must have joined already).
    pub async fn start(urls: &str, ns: &str, shard_count: usize) -> MapWatch {
        let view = ClusterView::connect(urls, ns).await.expect("cluster view");
        let mut nodes = view.watch_nodes().await.expect("registry watch");
        let mut maps = view.watch_maps().await.expect("map watch");
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            // Nodes heartbeat several times a second: a registry watch quiet for this long is
            // stuck (its consumer lived on a nats-server that went away) and is made again.
            const QUIET: Duration = Duration::from_secs(3);
            let mut last = Instant::now();
            loop {
                if last.elapsed() > QUIET {
                    // Making a watch needs the JetStream meta leader, which may be re-electing.
                    if let Ok(Ok(w)) = tokio::time::timeout(QUIET, view.watch_nodes()).await {
                        nodes = w;
                    }
                    if let Ok(Ok(w)) = tokio::time::timeout(QUIET, view.watch_maps()).await {
                        maps = w;
                    }
                    last = Instant::now();
                }
                // Nodes named by a map before their record came through the watch: read their
                // records directly (a watch may have been down when they registered).
                let unknown: Vec<String> = {
                    let s = shared.lock();
                    s.unknown
                        .iter()
                        .filter(|(_, n)| !s.known.contains_key(n))
                        .map(|(_, n)| n.clone())
                        .collect()
                };
                for node in unknown {
                    if let Ok(Some(record)) = view.node(&node).await {
                        shared.lock().known.insert(record.node, record.status);
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(QUIET) => continue,
                    change = nodes.next() => match change {
                        Some(Ok(RegistryChange::Put(record))) => {
                            last = Instant::now();
                            let mut s = shared.lock();
                            match record.status {
                                NodeStatus::Failed => {
                                    s.dead_since.entry(record.node.clone()).or_insert_with(Instant::now);
                                }
                                _ => {
                                    s.dead_since.remove(&record.node);
                                }
                            }
                            s.known.insert(record.node, record.status);
                        }
                        Some(Ok(RegistryChange::Gone(node))) => {
                            shared.lock().dead_since.entry(node).or_insert_with(Instant::now);
                        }
                        // A lost server makes the watch's consumer miss heartbeats; it recovers.
                        Some(Err(e)) if transient(&e.to_string()) => {}
                        Some(Err(e)) => shared.lock().violations.push(format!("registry watch: {e}")),
                        None => last = Instant::now() - QUIET * 2,
                    },
                    map = maps.next() => match map {
                        Some(Ok(map)) => check(&mut shared.lock(), map, shard_count),
                        Some(Err(e)) if transient(&e.to_string()) => {}
                        Some(Err(e)) => shared.lock().violations.push(format!("undecodable map: {e}")),
                        None => last = Instant::now() - QUIET * 2,
                    },
                }
            }
        });
        MapWatch { state, task }
    }

    /// Maps seen so far.
    pub fn maps_seen(&self) -> usize {
        self.state.lock().maps.len()
    }

    /// The latest map seen.
    pub fn latest(&self) -> Option<ShardMap> {
        self.state.lock().maps.last().cloned()
    }

    /// Every violation found so far.
    pub fn violations(&self) -> Vec<String> {
        let s = self.state.lock();
        let mut out = s.violations.clone();
        for (epoch, node) in &s.unknown {
            if !s.known.contains_key(node) {
                out.push(format!(
                    "map {epoch} gives shards to {node}, which never registered"
                ));
            }
        }
        out
    }
}

impl Drop for MapWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A watch error that only says the connection hiccupped (a server went away): the watch goes on.
fn transient(error: &str) -> bool {
    error.contains("heartbeat") || error.contains("consumer")
}

fn check(s: &mut State, map: ShardMap, shard_count: usize) {
    // A watch made again delivers the latest map once more.
    if s.maps.last() == Some(&map) {
        return;
    }
    if let Some(previous) = s.maps.last()
        && map.epoch <= previous.epoch
    {
        s.violations.push(format!(
            "epoch went from {} to {}",
            previous.epoch, map.epoch
        ));
    }
    if map.owners.len() != shard_count {
        s.violations.push(format!(
            "map {} has {} shards, expected {shard_count}",
            map.epoch,
            map.owners.len()
        ));
    }
    for shard in 0..map.shard_count() {
        if map.owner(shard).is_none() {
            s.violations
                .push(format!("map {}: shard {shard} has no owner", map.epoch));
        }
    }
    for node in &map.nodes {
        if !s.known.contains_key(node) {
            s.unknown.push((map.epoch, node.clone()));
        }
        if let Some(since) = s.dead_since.get(node)
            && since.elapsed() > GRACE
        {
            s.violations.push(format!(
                "map {} (term {}) gives shards to {node}, not alive for {:?} (orphaned shards)",
                map.epoch,
                map.term,
                since.elapsed()
            ));
        }
    }
    s.maps.push(map);
}
