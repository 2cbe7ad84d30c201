//! Draining nodes: moving every shard off a node that stays up, before maintenance.
//!
//! An operator (`aether drain <node>`, or [`ClusterView::set_drained`](super::ClusterView::set_drained))
//! adds the node to the **drain set**, one record under the key `drains` of the namespace's
//! shard bucket, written by compare-and-set so two operators never lose each other's change.
//! The leader reads the set on every tick and leaves drained nodes out of the nodes it places
//! shards on — exactly as if they had left: consistent hashing moves their shards, and only
//! theirs, to the others, through the usual handoff (drain, release, serve), so no command is
//! lost or applied twice. A drained node keeps heartbeating, keeps its place in the registry,
//! and can still lead; its callers' asks go to the new owners. Restarted while drained (the
//! rolling upgrade: drain, stop, start the new version, undrain), it joins with no shards. Taking it out of the set
//! (`aether undrain`, or `aether rebalance` for all) gives it its shards back.
//!
//! The leader never drains the last node: a drain set covering every alive node is ignored
//! (and logged) rather than leaving shards without an owner.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::*;

/// The key of the drain set in the shard bucket.
pub(super) const DRAINS_KEY: &str = "drains";

/// The drain set as stored (MessagePack with field names).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct DrainRecord {
    /// The drained nodes.
    #[serde(default)]
    pub nodes: BTreeSet<String>,
}

impl DrainRecord {
    pub(super) fn decode(bytes: &[u8]) -> Result<DrainRecord, String> {
        codec::decode("drain set", bytes).map_err(|e| e.to_string())
    }
}

impl Inner {
    /// The drain set as the leader last read it, refreshed now if the bucket answers within a
    /// heartbeat (a slow bucket keeps the last known set: the leader's tick must not stall).
    pub(super) async fn drained(&self) -> BTreeSet<String> {
        let read = tokio::time::timeout(
            self.config.heartbeat,
            read_entry(&self.buckets.shards, DRAINS_KEY),
        )
        .await;
        if let Ok(Ok(entry)) = read {
            let set = match entry {
                Some(e) if e.operation == kv::Operation::Put => match DrainRecord::decode(&e.value)
                {
                    Ok(record) => record.nodes,
                    Err(error) => {
                        tracing::warn!(%error, "undecodable drain set ignored");
                        BTreeSet::new()
                    }
                },
                _ => BTreeSet::new(),
            };
            *self.drains.lock() = set;
        }
        self.drains.lock().clone()
    }
}
