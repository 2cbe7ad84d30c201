//! Waiting until a node has settled: it serves every shard the latest shard map gives it.
//!
//! A node that just joined owns shards on paper before it serves them: each gained shard is
//! served once its previous owner released it (see the handoff module). Code that starts a
//! cluster and then measures it, tests it or hands it traffic wants to wait for that moment
//! rather than poll the map: [`Cluster::settled`] and [`Cluster::settled_with`] return once
//! the node's serving set has caught up with the latest map, with that map's epoch.

use std::time::Duration;

use tokio::time::Instant;

use super::{Cluster, ShardMap};

/// How often the wait looks again even without a change notice (the map and the serving set
/// are published apart, so one notice can come before the other is visible).
const RECHECK: Duration = Duration::from_millis(100);

/// The node did not settle within the time allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the node did not settle within {waited:?}: {last_seen}")]
pub struct NotSettled {
    /// How long it waited.
    pub waited: Duration,
    /// What it saw last: the map's epoch and nodes, and the epoch this node serves.
    pub last_seen: String,
}

impl Cluster {
    /// Waits until this node serves every shard of the latest shard map (no handoff to it is
    /// still running) and returns that map's epoch; fails after `timeout`.
    pub async fn settled(&self, timeout: Duration) -> Result<u64, NotSettled> {
        self.settled_when(timeout, |_| true).await
    }

    /// Like [`settled`](Self::settled), once the map also has exactly `nodes` nodes: after
    /// starting `nodes` nodes, every one of them has joined and this one serves its part.
    pub async fn settled_with(&self, nodes: usize, timeout: Duration) -> Result<u64, NotSettled> {
        self.settled_when(timeout, |map| map.nodes.len() == nodes)
            .await
    }

    async fn settled_when(
        &self,
        timeout: Duration,
        wanted: impl Fn(&ShardMap) -> bool,
    ) -> Result<u64, NotSettled> {
        let started = Instant::now();
        let deadline = started + timeout.min(crate::config::MAX_DURATION);
        let mut serving = self.serving_shards();
        loop {
            let map = self.shard_map();
            let serving_epoch = serving.borrow_and_update().epoch;
            if let Some(map) = &map
                && wanted(map)
                && serving_epoch == map.epoch
            {
                return Ok(map.epoch);
            }
            let last_seen = match &map {
                Some(map) => format!(
                    "map epoch {} with {} node(s) {:?}; this node serves epoch {serving_epoch}",
                    map.epoch,
                    map.nodes.len(),
                    map.nodes
                ),
                None => "no shard map published yet".to_owned(),
            };
            tokio::select! {
                changed = serving.changed() => {
                    if changed.is_err() {
                        return Err(NotSettled {
                            waited: started.elapsed(),
                            last_seen: format!("the node stopped; {last_seen}"),
                        });
                    }
                }
                () = tokio::time::sleep(RECHECK) => {}
                () = tokio::time::sleep_until(deadline) => {
                    return Err(NotSettled { waited: started.elapsed(), last_seen });
                }
            }
        }
    }
}
