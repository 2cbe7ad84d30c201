//! [`ClusterView`]: read the cluster's state from NATS without joining it (tools, tests).

use std::time::Duration;

use async_nats::jetstream::kv;
use futures_util::StreamExt;

use super::{ClusterError, LEADER_KEY, LeaderRecord, MAP_KEY, NodeRecord, ShardMap};
use crate::names::Namespace;
use crate::wire::codec;

/// The leader: its node id and term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInfo {
    /// The node holding the lease.
    pub node: String,
    /// The lease's term: grows with every new leader.
    pub term: u64,
}

/// One change in the node registry, as [`ClusterView::watch_nodes`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryChange {
    /// A node wrote its record (a heartbeat, a status change, a release), or the leader
    /// declared it failed.
    Put(NodeRecord),
    /// The node's record was deleted (graceful leave) or expired.
    Gone(String),
}

/// A read-only view of a namespace's cluster state, straight from its KV buckets.
pub struct ClusterView {
    nodes: kv::Store,
    leader: kv::Store,
    shards: kv::Store,
}

impl ClusterView {
    /// Connects to NATS (a URL, or a [`NatsConfig`](crate::NatsConfig) with credentials and
    /// TLS) and opens the buckets of `namespace` (they must exist: some node has joined).
    pub async fn connect(
        nats: impl Into<crate::NatsConfig>,
        namespace: &str,
    ) -> Result<ClusterView, ClusterError> {
        let namespace = Namespace::new(namespace)?;
        let nats = nats.into();
        let client = nats
            .connect_once("aether-view", nats.connect_timeout)
            .await?;
        let js = async_nats::jetstream::new(client);
        let open = |name: String| {
            let js = js.clone();
            async move {
                js.get_key_value(name.clone())
                    .await
                    .map_err(|e| ClusterError::Coordination {
                        bucket: name,
                        reason: e.to_string(),
                    })
            }
        };
        Ok(ClusterView {
            nodes: open(format!("{namespace}_nodes")).await?,
            leader: open(format!("{namespace}_leader")).await?,
            shards: open(format!("{namespace}_shards")).await?,
        })
    }

    /// The current leader, if a lease is held.
    pub async fn leader(&self) -> Result<Option<LeaderInfo>, String> {
        let entry = read_entry(&self.leader, LEADER_KEY).await?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .and_then(|e| {
                let record: LeaderRecord = codec::decode("leader record", &e.value).ok()?;
                Some(LeaderInfo {
                    term: if record.term == 0 {
                        e.revision
                    } else {
                        record.term
                    },
                    node: record.node,
                })
            }))
    }

    /// The published shard map, if any.
    pub async fn shard_map(&self) -> Result<Option<ShardMap>, String> {
        let entry = read_entry(&self.shards, MAP_KEY).await?;
        entry
            .filter(|e| e.operation == kv::Operation::Put)
            .map(|e| ShardMap::decode(&e.value).map_err(|e| e.to_string()))
            .transpose()
    }

    /// One node's record, read directly (no watch or consumer needed: it works while the
    /// JetStream meta leader re-elects).
    pub async fn node(&self, node: &str) -> Result<Option<NodeRecord>, String> {
        Ok(read_entry(&self.nodes, node)
            .await?
            .filter(|e| e.operation == kv::Operation::Put)
            .and_then(|e| codec::decode::<NodeRecord>("node record", &e.value).ok()))
    }

    /// Every node record in the registry.
    pub async fn nodes(&self) -> Result<Vec<NodeRecord>, String> {
        let mut keys = self.nodes.keys().await.map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| e.to_string())?;
            if let Some(entry) = read_entry(&self.nodes, &key).await?
                && entry.operation == kv::Operation::Put
                && let Ok(record) = codec::decode::<NodeRecord>("node record", &entry.value)
            {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// Watches the node registry: every record as it is written, and every node that leaves
    /// it (deleted on a graceful leave, or expired), from the current records on.
    pub async fn watch_nodes(
        &self,
    ) -> Result<
        std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<RegistryChange, String>> + Send>>,
        String,
    > {
        let watch = self
            .nodes
            .watch_with_history(">")
            .await
            .map_err(|e| e.to_string())?;
        Ok(Box::pin(watch.filter_map(|entry| async move {
            match entry {
                Ok(e) if e.operation == kv::Operation::Put => Some(
                    codec::decode::<NodeRecord>("node record", &e.value)
                        .map(RegistryChange::Put)
                        .map_err(|err| format!("record of {}: {err}", e.key)),
                ),
                Ok(e) => Some(Ok(RegistryChange::Gone(e.key))),
                Err(e) => Some(Err(e.to_string())),
            }
        })))
    }

    /// Watches the shard map: every published map, from the current one on.
    pub async fn watch_maps(
        &self,
    ) -> Result<
        std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<ShardMap, String>> + Send>>,
        String,
    > {
        let watch = self
            .shards
            .watch_with_history(MAP_KEY)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Box::pin(watch.filter_map(|entry| async move {
            match entry {
                Ok(e) if e.operation == kv::Operation::Put => {
                    Some(ShardMap::decode(&e.value).map_err(|e| e.to_string()))
                }
                Ok(_) => None,
                Err(e) => Some(Err(e.to_string())),
            }
        })))
    }
}

/// How long a read of a coordination bucket may take, all attempts together.
pub(super) const READ_BUDGET: Duration = Duration::from_secs(5);

/// A bucket entry, from any replica that answers: a replica on a frozen server that is still
/// routed never does, and asking again reaches another
/// (see [`crate::store::jetstream::direct_get::from_any_replica`]).
pub(super) async fn read_entry(bucket: &kv::Store, key: &str) -> Result<Option<kv::Entry>, String> {
    crate::store::jetstream::direct_get::from_any_replica(READ_BUDGET, || bucket.entry(key))
        .await
        .ok_or_else(|| format!("no replica answered a read of {key} within {READ_BUDGET:?}"))?
        .map_err(|e| e.to_string())
}
