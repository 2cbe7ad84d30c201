//! [`ClusterError`]: why a node, a cluster client or a [`ClusterView`](super::ClusterView)
//! could not reach or join its cluster.

use std::time::Duration;

use crate::names::NameError;
use crate::store::StoreError;

/// Why joining or reaching a cluster failed. Carried by
/// [`StartError::Cluster`](crate::StartError::Cluster).
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No connection to NATS: unreachable (within the join timeout, for a node), refused
    /// credentials, a failed TLS handshake, an unreadable key or certificate file.
    #[error(transparent)]
    Connect(#[from] crate::connection::ConnectError),
    /// The namespace or the node id is not a valid name.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// The server cannot host the cluster (too old, no JetStream).
    #[error(transparent)]
    Server(#[from] StoreError),
    /// A coordination bucket (nodes, leader lease, shard map) could not be opened or written
    /// (for a view: it does not exist, so no node has joined yet).
    #[error("coordination bucket {bucket}: {reason}")]
    Coordination {
        /// The bucket.
        bucket: String,
        /// What happened.
        reason: String,
    },
    /// The cluster runs with another shard count than this node is configured for.
    #[error("the cluster uses {cluster} shards, this node is configured for {node}")]
    ShardCountMismatch {
        /// The cluster's shard count.
        cluster: u32,
        /// This node's `RuntimeConfig::shard_count`.
        node: u32,
    },
    /// No shard map that includes this node appeared within the join timeout (no leader, or
    /// the leader does not see this node).
    #[error("no shard map including node {node} within {waited:?}")]
    NotAssigned {
        /// This node.
        node: String,
        /// How long it waited.
        waited: Duration,
    },
    /// This node could not serve the shards it was assigned in time (their previous owners
    /// did not release them).
    #[error("could not serve the owned shards within {waited:?}")]
    NotServing {
        /// How long it waited.
        waited: Duration,
    },
}
