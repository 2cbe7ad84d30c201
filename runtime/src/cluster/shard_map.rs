//! The shard map: which node owns which shard, as written by the leader.

use serde::{Deserialize, Serialize};

use crate::wire::codec::{self, CodecError};

/// Who owns every shard of a namespace, at one epoch.
///
/// Written by the leader to KV (`<ns>_shards`, key `map`) by compare-and-set, read by every
/// node. `epoch` increases with every change; `term` is the leader term that wrote it (the
/// fencing token: a map is never replaced by one of a lower term).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMap {
    /// Increases by one with every published map.
    pub epoch: u64,
    /// The term of the leader that wrote it.
    pub term: u64,
    /// The nodes that own shards, sorted.
    pub nodes: Vec<String>,
    /// Per shard, an index into `nodes`.
    pub owners: Vec<u16>,
}

impl ShardMap {
    /// Number of shards.
    pub fn shard_count(&self) -> u32 {
        self.owners.len() as u32
    }

    /// The owner of `shard`, if the shard exists.
    pub fn owner(&self, shard: u32) -> Option<&str> {
        let i = *self.owners.get(shard as usize)?;
        self.nodes.get(usize::from(i)).map(String::as_str)
    }

    /// The shards owned by `node`.
    pub fn shards_of(&self, node: &str) -> Vec<u32> {
        match self.nodes.iter().position(|n| n == node) {
            Some(i) => self
                .owners
                .iter()
                .enumerate()
                .filter(|(_, o)| usize::from(**o) == i)
                .map(|(s, _)| s as u32)
                .collect(),
            None => Vec::new(),
        }
    }

    /// Shards per node.
    pub fn counts(&self) -> Vec<(String, usize)> {
        let mut counts = vec![0usize; self.nodes.len()];
        for o in &self.owners {
            if let Some(c) = counts.get_mut(usize::from(*o)) {
                *c += 1;
            }
        }
        self.nodes.iter().cloned().zip(counts).collect()
    }

    /// Builds the map for `alive` nodes (see `cluster/assignment.rs`).
    pub(crate) fn compute(alive: &[String], shard_count: u32, epoch: u64, term: u64) -> ShardMap {
        let mut nodes = alive.to_vec();
        nodes.sort();
        nodes.dedup();
        let owners = super::assignment::assign(&nodes, shard_count)
            .into_iter()
            .map(|i| i as u16)
            .collect();
        ShardMap {
            epoch,
            term,
            nodes,
            owners,
        }
    }

    /// Checks the map's shape: every owner index points at a node.
    pub(crate) fn is_well_formed(&self) -> bool {
        !self.nodes.is_empty()
            && self
                .owners
                .iter()
                .all(|o| usize::from(*o) < self.nodes.len())
    }

    /// Encodes the map.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, CodecError> {
        codec::encode("shard map", self)
    }

    /// Decodes a map and checks its shape.
    pub(crate) fn decode(bytes: &[u8]) -> Result<ShardMap, CodecError> {
        let map: ShardMap = codec::decode("shard map", bytes)?;
        if !map.is_well_formed() {
            return Err(CodecError {
                what: "shard map",
                reason: "an owner points at no node".into(),
            });
        }
        Ok(map)
    }
}
