//! The cluster's state as the tool shows it: read once from the KV buckets, then turned into
//! node rows, shard rows and JSON (by `cluster status`, `shards` and the dashboard alike).

use std::collections::BTreeSet;
use std::time::Duration;

use aether_runtime::ClusterView;
use aether_runtime::cluster::{LeaderInfo, NodeEntry, NodeStatus, ShardMap};
use serde_json::{Value, json};

/// A node whose record is older than this is reported `silent`. Nodes rewrite their record
/// every heartbeat (1 s by default), and the leader declares a node failed after its failure
/// timeout (3 s by default): a record this old belongs to a node that is failing, or to a
/// cluster whose leader is not judging (none elected, or cut off).
pub const SILENT_AFTER: Duration = Duration::from_secs(5);

/// Everything read from the buckets in one go.
pub struct ClusterState {
    pub namespace: String,
    pub leader: Option<LeaderInfo>,
    pub map: Option<ShardMap>,
    pub nodes: Vec<NodeEntry>,
    pub drained: BTreeSet<String>,
}

/// One node, as the tables show it.
pub struct NodeRow {
    pub node: String,
    /// `ok`, `silent`, `draining`, `drained`, `leaving` or `failed`.
    pub health: &'static str,
    pub age: Duration,
    /// Shards the current map gives it.
    pub shards: usize,
    /// Shards that may have live activations on it (serving or still draining).
    pub held: usize,
    pub handoff_epoch: u64,
    pub started_ms: u64,
    pub leader: bool,
    /// Actors resident on it, as of its last record.
    pub resident: u64,
    /// Commits its actors wrote since it started, as of its last record.
    pub commits: u64,
}

impl NodeRow {
    pub fn to_json(&self) -> Value {
        json!({
            "node": self.node,
            "health": self.health,
            "leader": self.leader,
            "heartbeat_age_ms": self.age.as_millis() as u64,
            "shards": self.shards,
            "held": self.held,
            "handoff_epoch": self.handoff_epoch,
            "started_ms": self.started_ms,
            "resident": self.resident,
            "commits": self.commits,
        })
    }
}

/// One shard, as the tables show it.
pub struct ShardRow {
    pub shard: u32,
    pub owner: String,
    /// The owner does not serve it yet under the current map, or another node still drains it.
    pub moving: bool,
    /// Live nodes other than the owner that still hold it.
    pub draining_on: Vec<String>,
}

fn err(e: String) -> anyhow::Error {
    anyhow::anyhow!("cannot read the cluster's state: {e}")
}

impl ClusterState {
    pub async fn read(view: &ClusterView, namespace: &str) -> anyhow::Result<ClusterState> {
        Ok(ClusterState {
            namespace: namespace.to_owned(),
            leader: view.leader().await.map_err(err)?,
            map: view.shard_map().await.map_err(err)?,
            nodes: view.node_entries().await.map_err(err)?,
            drained: view.drained().await.map_err(err)?,
        })
    }

    pub fn node_rows(&self) -> Vec<NodeRow> {
        self.nodes
            .iter()
            .map(|e| {
                let r = &e.record;
                let drained = self.drained.contains(&r.node);
                let health = match r.status {
                    NodeStatus::Failed => "failed",
                    NodeStatus::Leaving => "leaving",
                    NodeStatus::Alive if e.age >= SILENT_AFTER => "silent",
                    NodeStatus::Alive if drained && !r.held.is_empty() => "draining",
                    NodeStatus::Alive if drained => "drained",
                    NodeStatus::Alive => "ok",
                };
                NodeRow {
                    node: r.node.clone(),
                    health,
                    age: e.age,
                    shards: self.map.as_ref().map_or(0, |m| m.shards_of(&r.node).len()),
                    held: r.held.len(),
                    handoff_epoch: r.handoff_epoch,
                    started_ms: r.started_ms,
                    leader: self.leader.as_ref().is_some_and(|l| l.node == r.node),
                    resident: r.resident,
                    commits: r.commits,
                }
            })
            .collect()
    }

    pub fn shard_rows(&self) -> Vec<ShardRow> {
        let Some(map) = &self.map else {
            return Vec::new();
        };
        let live: Vec<&NodeEntry> = self
            .nodes
            .iter()
            .filter(|e| e.record.status != NodeStatus::Failed)
            .collect();
        (0..map.shard_count())
            .map(|shard| {
                let owner = map.owner(shard).unwrap_or("").to_owned();
                let settled = live.iter().any(|e| {
                    e.record.node == owner
                        && e.record.handoff_epoch >= map.epoch
                        && e.record.held.contains(shard)
                });
                let draining_on: Vec<String> = live
                    .iter()
                    .filter(|e| e.record.node != owner && e.record.held.contains(shard))
                    .map(|e| e.record.node.clone())
                    .collect();
                ShardRow {
                    shard,
                    moving: !settled || !draining_on.is_empty(),
                    owner,
                    draining_on,
                }
            })
            .collect()
    }

    pub fn to_json(&self) -> Value {
        let nodes: Vec<Value> = self.node_rows().into_iter().map(|n| n.to_json()).collect();
        let moving: Vec<Value> = self
            .shard_rows()
            .into_iter()
            .filter(|s| s.moving)
            .map(|s| json!({"shard": s.shard, "owner": s.owner, "draining_on": s.draining_on}))
            .collect();
        json!({
            "namespace": self.namespace,
            "leader": self.leader.as_ref().map(|l| json!({"node": l.node, "term": l.term})),
            "map": self.map.as_ref().map(|m| json!({
                "epoch": m.epoch,
                "term": m.term,
                "shard_count": m.shard_count(),
                "nodes": m.nodes,
            })),
            "drained": self.drained,
            "nodes": nodes,
            "moving": moving,
        })
    }
}
