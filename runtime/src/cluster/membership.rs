//! The node registry: who is in the cluster, and who is still heartbeating.
//!
//! Every node writes its [`NodeRecord`] to KV bucket `<ns>_nodes` (key = node id) once per
//! heartbeat. Every node watches the bucket and notes, by its own monotonic clock, when it
//! last saw each node's record change — so failure detection needs no synchronised clocks.
//! A graceful leave deletes the key; the leader marks a silent node `Failed`. The bucket's
//! `max_age` (several failure timeouts) garbage-collects records of nodes that died.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// A node's state as it advertises it (or, for `Failed`, as the leader declared it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeStatus {
    /// Heartbeating, serving shards.
    Alive,
    /// Shutting down gracefully.
    Leaving,
    /// Declared failed by the leader.
    Failed,
}

/// One node's entry in the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node id.
    pub node: String,
    /// When the node started, milliseconds since the Unix epoch (its own clock).
    pub started_ms: u64,
    /// Advertised capacity (relative weight).
    pub capacity: u32,
    /// Its status.
    pub status: NodeStatus,
    /// The node's heartbeat counter (changes the record every heartbeat).
    pub beat: u64,
    /// The highest shard-map epoch this node has **released**: it has adopted that map and
    /// stopped every activation of the shards the map does not give it. A node gaining a shard
    /// in epoch `e` serves it only once every other live node has released `e` (see
    /// `cluster::handoff`). Absent in records of older nodes, which read as 0.
    #[serde(default)]
    pub released_epoch: u64,
}

/// A node as this node sees it.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub record: NodeRecord,
    /// Local time the record last changed.
    pub at: Instant,
}

/// The registry as seen through the watch.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    pub nodes: BTreeMap<String, Seen>,
}

/// A change worth an event.
pub(crate) enum Change {
    Joined(String),
    Left(String),
    Failed(String),
}

impl Registry {
    /// Applies a put; returns the change it represents, if any.
    pub fn put(&mut self, record: NodeRecord, now: Instant) -> Option<Change> {
        let node = record.node.clone();
        let previous = self.nodes.insert(
            node.clone(),
            Seen {
                record: record.clone(),
                at: now,
            },
        );
        let was = previous.map(|p| p.record.status);
        match (was, record.status) {
            (None, NodeStatus::Alive) => Some(Change::Joined(node)),
            (Some(NodeStatus::Failed), NodeStatus::Alive) => Some(Change::Joined(node)),
            (Some(NodeStatus::Alive) | None, NodeStatus::Failed) => Some(Change::Failed(node)),
            (Some(NodeStatus::Alive) | None, NodeStatus::Leaving) => Some(Change::Left(node)),
            _ => None,
        }
    }

    /// Applies a delete or purge.
    pub fn remove(&mut self, node: &str) -> Option<Change> {
        let previous = self.nodes.remove(node)?;
        match previous.record.status {
            NodeStatus::Alive => Some(Change::Left(node.to_owned())),
            NodeStatus::Leaving | NodeStatus::Failed => None,
        }
    }

    /// Nodes that advertise `Alive` and were heard from within `timeout` of `now`.
    pub fn alive(&self, now: Instant, timeout: std::time::Duration) -> Vec<String> {
        self.nodes
            .values()
            .filter(|s| s.record.status == NodeStatus::Alive && now.duration_since(s.at) < timeout)
            .map(|s| s.record.node.clone())
            .collect()
    }

    /// Nodes that may still run activations of shards they lost before epoch `epoch`: every
    /// node but `me` that is not `Failed`, was heard from within `timeout`, and has not
    /// released `epoch` yet. A gaining node waits for this list to be empty.
    pub fn unreleased(
        &self,
        me: &str,
        epoch: u64,
        now: Instant,
        timeout: std::time::Duration,
    ) -> Vec<String> {
        self.nodes
            .values()
            .filter(|s| {
                s.record.node != me
                    && s.record.status != NodeStatus::Failed
                    && now.duration_since(s.at) < timeout
                    && s.record.released_epoch < epoch
            })
            .map(|s| s.record.node.clone())
            .collect()
    }

    /// Nodes that advertise `Alive` but have been silent for `timeout` or more.
    pub fn silent(&self, now: Instant, timeout: std::time::Duration) -> Vec<NodeRecord> {
        self.nodes
            .values()
            .filter(|s| s.record.status == NodeStatus::Alive && now.duration_since(s.at) >= timeout)
            .map(|s| s.record.clone())
            .collect()
    }
}
