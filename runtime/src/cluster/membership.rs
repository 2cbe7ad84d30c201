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

use super::ShardMap;

/// A set of shards as a bitmap (bit `s` of byte `s / 8`): 128 bytes for 1 024 shards, so a
/// node can advertise what it holds in every heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSet(#[serde(with = "serde_bytes")] Vec<u8>);

impl ShardSet {
    /// Whether `shard` is in the set.
    pub fn contains(&self, shard: u32) -> bool {
        let (byte, bit) = ((shard / 8) as usize, shard % 8);
        self.0.get(byte).is_some_and(|b| b & (1 << bit) != 0)
    }

    /// Adds `shard`.
    pub(crate) fn insert(&mut self, shard: u32) {
        let (byte, bit) = ((shard / 8) as usize, shard % 8);
        if self.0.len() <= byte {
            self.0.resize(byte + 1, 0);
        }
        self.0[byte] |= 1 << bit;
    }

    /// The shards, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().enumerate().flat_map(|(i, b)| {
            (0..8u32)
                .filter(move |bit| b & (1 << bit) != 0)
                .map(move |bit| i as u32 * 8 + bit)
        })
    }

    /// Number of shards in the set.
    pub fn len(&self) -> usize {
        self.0.iter().map(|b| b.count_ones() as usize).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|b| *b == 0)
    }
}

impl FromIterator<u32> for ShardSet {
    fn from_iter<I: IntoIterator<Item = u32>>(iter: I) -> Self {
        let mut set = ShardSet::default();
        for shard in iter {
            set.insert(shard);
        }
        set
    }
}

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
    /// Advertised capacity (relative weight; every node advertises 1: placement does not
    /// weigh nodes yet).
    pub capacity: u32,
    /// Its status.
    pub status: NodeStatus,
    /// The node's heartbeat counter (changes the record every heartbeat).
    pub beat: u64,
    /// The shard-map epoch this node's handoff works under: it starts serving no shard that
    /// map does not give it. Absent in records of older nodes, which read as 0.
    #[serde(default)]
    pub handoff_epoch: u64,
    /// The shards that may have live activations on this node: those it serves and those it
    /// is still draining. A node gaining a shard serves it only once no other live node holds
    /// it under the gaining map's epoch (see `cluster::handoff`).
    #[serde(default)]
    pub held: ShardSet,
    /// Actors resident on the node when it wrote this record (0 in records of older nodes).
    #[serde(default)]
    pub resident: u64,
    /// Commits the node's actors have written since it started, when it wrote this record:
    /// two records give its write rate (0 in records of older nodes).
    #[serde(default)]
    pub commits: u64,
}

/// A node as this node sees it.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub record: NodeRecord,
    /// Local time the node was last heard from: its record changed, or a beat arrived.
    pub at: Instant,
    /// The KV revision of the record (to replace it only if it did not change meanwhile).
    pub revision: u64,
    /// The NATS server the node's last beat came through (its `server_id`), if it said.
    pub server: Option<String>,
}

/// The registry as seen through the watch.
#[derive(Debug, Default)]
pub(crate) struct Members {
    pub nodes: BTreeMap<String, Seen>,
}

/// A change worth an event.
pub(crate) enum Change {
    Joined(String),
    Left(String),
    Failed(String),
}

impl Members {
    /// Applies a put; returns the change it represents, if any. The revision already seen
    /// (delivered again by a watch made anew) changes nothing: it is no news from the node.
    pub fn put(&mut self, record: NodeRecord, revision: u64, now: Instant) -> Option<Change> {
        if self
            .nodes
            .get(&record.node)
            .is_some_and(|seen| seen.revision == revision)
        {
            return None;
        }
        let node = record.node.clone();
        let server = self.nodes.get(&node).and_then(|s| s.server.clone());
        let previous = self.nodes.insert(
            node.clone(),
            Seen {
                record: record.clone(),
                at: now,
                revision,
                server,
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

    /// Notes a beat from `node` heard at `now` (see `cluster::liveness`): it counts as hearing
    /// from the node, like a record change. Nodes without a record yet are ignored (they join
    /// through the registry). `server` is the NATS server the beat came through, if it said.
    pub fn heard(&mut self, node: &str, now: Instant, server: Option<&str>) {
        if let Some(seen) = self.nodes.get_mut(node) {
            // The latest beat says where the node is, or that it cannot be checked (an older
            // node, or one whose check subject does not answer).
            if now >= seen.at && seen.server.as_deref() != server {
                seen.server = server.map(str::to_owned);
            }
            seen.at = seen.at.max(now);
        }
    }

    /// Nodes that advertise `Alive` and have been silent for `after` or more (counting from
    /// `from` at the earliest, as in [`Members::alive`]), and whose server is known: the ones
    /// whose connection the leader may check (see `cluster/liveness.rs`), with the revision of
    /// their last record and their server.
    pub fn suspects(
        &self,
        now: Instant,
        after: std::time::Duration,
        from: Option<Instant>,
    ) -> Vec<(NodeRecord, u64, String)> {
        self.nodes
            .values()
            .filter(|s| {
                let silent = now.duration_since(Self::since(s.at, from));
                s.record.status == NodeStatus::Alive && silent >= after
            })
            .filter_map(|s| Some((s.record.clone(), s.revision, s.server.clone()?)))
            .collect()
    }

    /// Nodes other than `except` that advertise `Alive`, were heard within `within` of `now`,
    /// and beat through `server`: they can check a connection to that server for the leader.
    pub fn on_server(
        &self,
        server: &str,
        now: Instant,
        within: std::time::Duration,
        except: &[&str],
    ) -> Vec<String> {
        self.nodes
            .values()
            .filter(|s| {
                s.record.status == NodeStatus::Alive
                    && s.server.as_deref() == Some(server)
                    && now.duration_since(s.at) < within
                    && !except.contains(&s.record.node.as_str())
            })
            .map(|s| s.record.node.clone())
            .collect()
    }

    /// Applies a delete or purge.
    pub fn remove(&mut self, node: &str) -> Option<Change> {
        let previous = self.nodes.remove(node)?;
        match previous.record.status {
            NodeStatus::Alive => Some(Change::Left(node.to_owned())),
            NodeStatus::Leaving | NodeStatus::Failed => None,
        }
    }

    /// Nodes that advertise `Alive` and were heard from within `timeout` of `now`, counting
    /// from `from` at the earliest (when the watcher's view of the registry became trustworthy).
    pub fn alive(
        &self,
        now: Instant,
        timeout: std::time::Duration,
        from: Option<Instant>,
    ) -> Vec<String> {
        self.nodes
            .values()
            .filter(|s| {
                s.record.status == NodeStatus::Alive
                    && now.duration_since(Self::since(s.at, from)) < timeout
            })
            .map(|s| s.record.node.clone())
            .collect()
    }

    fn since(at: Instant, from: Option<Instant>) -> Instant {
        from.map_or(at, |f| f.max(at))
    }

    /// The live nodes other than `me` that may still run activations of `shard`, as far as
    /// a node handing shards over under map `epoch` can tell: nodes not declared failed, heard
    /// from within `timeout`, that either still hold the shard or have not adopted `epoch` yet
    /// (their state may predate it).
    ///
    /// One exception to the second: a node that has adopted `previous` — the map just before
    /// `epoch` — under which the shard was not its own, and that does not hold it, cannot run
    /// it: under `previous` it never will, and under `epoch` the shard is `me`'s. So a move
    /// between two nodes does not wait for every third node's record to catch up (which a
    /// stalled registry bucket can delay for seconds).
    pub fn holders<'a>(
        &'a self,
        me: &'a str,
        epoch: u64,
        shard: u32,
        previous: Option<&'a ShardMap>,
        now: Instant,
        timeout: std::time::Duration,
    ) -> impl Iterator<Item = &'a str> {
        let settled = move |s: &Seen| {
            previous.is_some_and(|p| {
                p.epoch + 1 == epoch
                    && s.record.handoff_epoch == p.epoch
                    && p.owner(shard) != Some(s.record.node.as_str())
            })
        };
        self.nodes
            .values()
            .filter(move |s| {
                s.record.node != me
                    && s.record.status != NodeStatus::Failed
                    && now.duration_since(s.at) < timeout
                    && (s.record.held.contains(shard)
                        || (s.record.handoff_epoch < epoch && !settled(s)))
            })
            .map(|s| s.record.node.as_str())
    }

    /// Whether `node`'s record last changed within `timeout` of `now`.
    pub fn heard_within(&self, node: &str, now: Instant, timeout: std::time::Duration) -> bool {
        self.nodes
            .get(node)
            .is_some_and(|s| now.duration_since(s.at) < timeout)
    }

    /// Nodes that advertise `Alive` but have been silent for `timeout` or more (counting from
    /// `from` at the earliest, as in [`Members::alive`]), with the revision of their last
    /// record.
    pub fn silent(
        &self,
        now: Instant,
        timeout: std::time::Duration,
        from: Option<Instant>,
    ) -> Vec<(NodeRecord, u64)> {
        self.nodes
            .values()
            .filter(|s| {
                s.record.status == NodeStatus::Alive
                    && now.duration_since(Self::since(s.at, from)) >= timeout
            })
            .map(|s| (s.record.clone(), s.revision))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn shard_sets_hold_exactly_what_was_put_in(shards in proptest::collection::btree_set(0u32..4096, 0..200)) {
            let set: ShardSet = shards.iter().copied().collect();
            prop_assert_eq!(set.iter().collect::<Vec<_>>(), shards.iter().copied().collect::<Vec<_>>());
            prop_assert_eq!(set.len(), shards.len());
            for s in 0..4096u32 {
                prop_assert_eq!(set.contains(s), shards.contains(&s));
            }
        }
    }
}
