//! Cluster events: what a node observes about the cluster, as it happens.

use std::time::Duration;

/// Something that happened in the cluster, as seen by this node. Subscribe with
/// `Cluster::events`; each event is also logged through `tracing`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterEvent {
    /// A node registered.
    NodeJoined {
        /// The node.
        node: String,
    },
    /// A node left gracefully.
    NodeLeft {
        /// The node.
        node: String,
    },
    /// The leader declared a node failed (no heartbeat for the failure timeout).
    NodeFailed {
        /// The node.
        node: String,
    },
    /// A node became leader.
    LeaderElected {
        /// The new leader.
        node: String,
        /// Its term (the fencing token of everything it writes).
        term: u64,
    },
    /// This node stopped being leader (lease lost or not renewed in time).
    LeadershipLost {
        /// This node.
        node: String,
        /// The term it held.
        term: u64,
    },
    /// A shard got a new owner in a published map.
    ShardAssigned {
        /// The shard.
        shard: u32,
        /// Its owner.
        node: String,
        /// The map's epoch.
        epoch: u64,
    },
    /// This node started serving a shard it gained, after the handoff from its previous owner.
    ShardMigrated {
        /// The shard.
        shard: u32,
        /// Its previous owner in the last map this node served under (`None`: unowned before).
        from: Option<String>,
        /// This node.
        to: String,
        /// The map's epoch.
        epoch: u64,
        /// From adopting the map to serving the shard (the old owner's drain and release).
        after: Duration,
        /// `true` when the old owner did not release in time and the shard was taken anyway
        /// (the store's version check fences any straggling activation).
        forced: bool,
    },
    /// This node stopped every activation of shards it lost and recorded its release.
    ShardsReleased {
        /// The shards.
        shards: Vec<u32>,
        /// The map's epoch.
        epoch: u64,
        /// Actors that were passivated (snapshotted and stopped).
        actors: usize,
        /// How long the drain took.
        after: Duration,
    },
}
