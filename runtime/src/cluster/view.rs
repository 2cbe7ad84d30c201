//! [`ClusterView`]: read the cluster's state from NATS without joining it (tools, tests).

use std::time::Duration;

use async_nats::jetstream::kv;
use futures_util::StreamExt;

use std::collections::BTreeSet;

use bytes::Bytes;

use super::drain::{DRAINS_KEY, DrainRecord};
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

/// A node's registry record and how long ago it was written: every node rewrites its record
/// each heartbeat, so the age is the time since its last heartbeat the registry kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEntry {
    /// The record.
    pub record: NodeRecord,
    /// Time since it was written (by the registry's clock, against this machine's).
    pub age: Duration,
}

/// A view of a namespace's cluster state, straight from its KV buckets: reads everything, and
/// writes only the operator's requests (the drain set).
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
        Ok(self
            .node_entries()
            .await?
            .into_iter()
            .map(|e| e.record)
            .collect())
    }

    /// Every node record in the registry, with the age of each.
    pub async fn node_entries(&self) -> Result<Vec<NodeEntry>, String> {
        let mut keys = self.nodes.keys().await.map_err(|e| e.to_string())?;
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        let mut out = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| e.to_string())?;
            if let Some(entry) = read_entry(&self.nodes, &key).await?
                && entry.operation == kv::Operation::Put
                && let Ok(record) = codec::decode::<NodeRecord>("node record", &entry.value)
            {
                let age_ns = (now_ns - entry.created.unix_timestamp_nanos()).max(0);
                out.push(NodeEntry {
                    record,
                    age: Duration::from_nanos(age_ns.min(u64::MAX as i128) as u64),
                });
            }
        }
        out.sort_by(|a, b| a.record.node.cmp(&b.record.node));
        Ok(out)
    }

    /// The drained nodes: those the leader keeps out of the shard map while they stay up
    /// (see [`set_drained`](Self::set_drained)).
    pub async fn drained(&self) -> Result<BTreeSet<String>, String> {
        Ok(self.drain_record().await?.0.nodes)
    }

    async fn drain_record(&self) -> Result<(DrainRecord, Option<u64>), String> {
        match read_entry(&self.shards, DRAINS_KEY).await? {
            Some(e) if e.operation == kv::Operation::Put => {
                Ok((DrainRecord::decode(&e.value)?, Some(e.revision)))
            }
            Some(e) => Ok((DrainRecord::default(), Some(e.revision))),
            None => Ok((DrainRecord::default(), None)),
        }
    }

    /// Drains `node` (`drained = true`): the leader moves every shard off it, to the other
    /// alive nodes, through the usual handoff, and gives it none until it is undrained
    /// (`drained = false`). Returns the drain set after the change. A compare-and-set: a
    /// concurrent change by another operator is retried on, never overwritten.
    pub async fn set_drained(&self, node: &str, drained: bool) -> Result<BTreeSet<String>, String> {
        crate::names::validate_name(crate::names::NameKind::NodeId, node)
            .map_err(|e| e.to_string())?;
        self.change_drains(|set| {
            if drained {
                set.insert(node.to_owned());
            } else {
                set.remove(node);
            }
        })
        .await
    }

    /// Undrains every node: shards spread over all alive nodes again.
    pub async fn clear_drained(&self) -> Result<BTreeSet<String>, String> {
        self.change_drains(BTreeSet::clear).await
    }

    async fn change_drains(
        &self,
        change: impl Fn(&mut BTreeSet<String>),
    ) -> Result<BTreeSet<String>, String> {
        for _ in 0..20 {
            let (mut record, revision) = self.drain_record().await?;
            let before = record.nodes.clone();
            change(&mut record.nodes);
            if record.nodes == before && revision.is_some() {
                return Ok(record.nodes);
            }
            let bytes =
                Bytes::from(codec::encode("drain set", &record).map_err(|e| e.to_string())?);
            let written = match revision {
                Some(r) => self
                    .shards
                    .update(DRAINS_KEY, bytes, r)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                None => self
                    .shards
                    .create(DRAINS_KEY, bytes)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
            };
            if written.is_ok() {
                return Ok(record.nodes);
            }
        }
        Err("the drain set kept changing under this write; try again".into())
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
