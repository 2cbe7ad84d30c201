//! Handoff: moving shards between nodes with no lost and no doubly applied command.
//!
//! A published shard map says who *should* own each shard; the handoff decides when a node
//! actually *serves* one. Every node runs one handoff task that follows the maps it adopts.
//! For a shard moving from node A to node B in map epoch `e`:
//!
//! 1. **A stops starting turns.** On adopting `e`, A removes the shard from its serving set:
//!    routing drops its subscription and placement stops saying `Local`, so new commands for
//!    the shard are not taken here, and no activation of it can *start* here any more (the
//!    actor host checks ownership under its registry lock before it activates anyone).
//! 2. **A drains.** Every activation of the shard is asked to passivate: the running turn
//!    finishes, commands already queued are served, the state is snapshotted, the activation
//!    stops. A waits for all of them (at most the handoff timeout).
//! 3. **A releases.** A records `released_epoch = e` in its registry record (written at once,
//!    and with every heartbeat after).
//! 4. **B serves.** B, having adopted `e`, waits until every other live node has released
//!    `e` — nodes declared failed, or silent for the failure timeout, are not waited for —
//!    and only then subscribes to the shard. B's first command for an actor of the shard
//!    activates it by replaying its snapshot and events, which now include everything A wrote.
//!
//! Between 1 and 4 nobody serves the shard. A command sent meanwhile finds no subscriber (or
//! A's `NotOwner` answer, if it raced the unsubscribe) and its sender backs off and retries
//! with the same command id until its deadline: it is delayed, never dropped and never run
//! twice. A command that was already queued at A when the map changed is served by A during
//! the drain. Tells are the exception: they are at most once, and one that meets a moving
//! shard may be lost.
//!
//! **The hard deadline.** If a live node does not release within the handoff timeout (stuck,
//! partitioned but not yet declared failed), B serves anyway and the handoff counts as
//! *forced*. That is safe: the store's optimistic-concurrency check is the fence, so a
//! straggling activation at A can never append at a version B's activation also appends at —
//! it gets a version conflict and stops. A forced handoff can cost a caller a retryable
//! error; it can never cost a lost or a doubly applied command.
//!
//! **Maps that change mid-handoff.** If a newer map arrives while B waits, B starts over
//! with it: shards it lost meanwhile are never served, shards it still gains wait for
//! releases of the newer epoch (which imply the older ones).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{ClusterEvent, Inner, OwnedShards, ShardMap};
use crate::routing::Dispatch;
use crate::wire::codec;

/// Handoff counters of one node (see [`Cluster::handoff_stats`](super::Cluster::handoff_stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandoffStats {
    /// Shards this node started serving after a handoff.
    pub shards_gained: u64,
    /// Shards this node stopped serving and released.
    pub shards_released: u64,
    /// Gained shards served before every previous owner had released them (hard deadline).
    pub forced: u64,
    /// Actors passivated because their shard moved away.
    pub actors_drained: u64,
    /// Drains that did not finish within the handoff timeout.
    pub drain_timeouts: u64,
    /// The last handoff into this node, from adopting the map to serving: milliseconds.
    pub last_handoff_ms: u64,
    /// The longest such handoff so far: milliseconds.
    pub max_handoff_ms: u64,
    /// The last drain of this node's lost shards: milliseconds.
    pub last_drain_ms: u64,
    /// The map epoch whose shards this node serves in full.
    pub serving_epoch: u64,
    /// The highest map epoch this node has released.
    pub released_epoch: u64,
}

/// The live counters behind [`HandoffStats`].
#[derive(Default)]
pub(crate) struct Counters {
    shards_gained: AtomicU64,
    shards_released: AtomicU64,
    forced: AtomicU64,
    actors_drained: AtomicU64,
    drain_timeouts: AtomicU64,
    last_handoff_ms: AtomicU64,
    max_handoff_ms: AtomicU64,
    last_drain_ms: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self, inner: &Inner) -> HandoffStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        HandoffStats {
            shards_gained: get(&self.shards_gained),
            shards_released: get(&self.shards_released),
            forced: get(&self.forced),
            actors_drained: get(&self.actors_drained),
            drain_timeouts: get(&self.drain_timeouts),
            last_handoff_ms: get(&self.last_handoff_ms),
            max_handoff_ms: get(&self.max_handoff_ms),
            last_drain_ms: get(&self.last_drain_ms),
            serving_epoch: inner.serving.borrow().epoch,
            released_epoch: inner.released.load(Ordering::Acquire),
        }
    }
}

/// How waiting for the previous owners ended.
enum Barrier {
    /// Every live node released the epoch.
    Released,
    /// The hard deadline passed; these nodes had not released.
    TimedOut(Vec<String>),
    /// A newer map arrived: start over with it.
    Superseded,
    /// The cluster membership is stopping.
    Stopped,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The handoff task of one node. See the module docs.
pub(crate) async fn run(inner: Arc<Inner>, dispatch: Arc<dyn Dispatch>) {
    let mut owned = inner.owned.subscribe();
    let mut stop = inner.stop.subscribe();
    let mut registry = inner.registry_rev.subscribe();
    let me = inner.config.node_id.clone();
    let mut serving: BTreeSet<u32> = BTreeSet::new();
    // The map this node last served under in full: where gained shards come from.
    let mut served_map: Option<Arc<ShardMap>> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        let target = Arc::clone(&owned.borrow_and_update());
        let served_epoch = inner.serving.borrow().epoch;
        if target.epoch > served_epoch {
            let adopted_at = Instant::now();
            let map = inner.map.read().clone();

            // 1–2: stop serving lost shards, then drain them.
            let lost: Vec<u32> = serving
                .iter()
                .copied()
                .filter(|s| !target.shards.contains(s))
                .collect();
            if !lost.is_empty() {
                serving.retain(|s| target.shards.contains(s));
                publish_serving(&inner, served_epoch, &serving);
                let drained = tokio::time::timeout(
                    inner.config.handoff_timeout,
                    dispatch.drain(lost.clone()),
                )
                .await;
                let took = adopted_at.elapsed();
                let c = &inner.handoff;
                c.last_drain_ms.store(millis(took), Ordering::Relaxed);
                c.shards_released
                    .fetch_add(lost.len() as u64, Ordering::Relaxed);
                let actors = match drained {
                    Ok(actors) => actors,
                    Err(_) => {
                        c.drain_timeouts.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            shards = lost.len(),
                            epoch = target.epoch,
                            "drain did not finish within the handoff timeout; releasing anyway \
                             (the store fences straggling activations)"
                        );
                        0
                    }
                };
                c.actors_drained.fetch_add(actors as u64, Ordering::Relaxed);
                inner.emit(ClusterEvent::ShardsReleased {
                    shards: lost,
                    epoch: target.epoch,
                    actors,
                    after: took,
                });
            }

            // 3: record the release (at once; every later heartbeat carries it too).
            release(&inner, target.epoch).await;

            // 4: serve gained shards once their previous owners released them.
            let gained: Vec<u32> = target
                .shards
                .iter()
                .copied()
                .filter(|s| !serving.contains(s))
                .collect();
            let mut forced = false;
            if !gained.is_empty() {
                match barrier(&inner, target.epoch, &mut owned, &mut stop, &mut registry).await {
                    Barrier::Released => {}
                    Barrier::TimedOut(waiting) => {
                        forced = true;
                        inner
                            .handoff
                            .forced
                            .fetch_add(gained.len() as u64, Ordering::Relaxed);
                        tracing::warn!(
                            epoch = target.epoch,
                            ?waiting,
                            "previous owners did not release within the handoff timeout; \
                             serving anyway (the store fences straggling activations)"
                        );
                    }
                    Barrier::Superseded => continue,
                    Barrier::Stopped => return,
                }
            }
            serving.extend(gained.iter().copied());
            publish_serving(&inner, target.epoch, &serving);
            if !gained.is_empty() {
                let took = adopted_at.elapsed();
                let c = &inner.handoff;
                c.shards_gained
                    .fetch_add(gained.len() as u64, Ordering::Relaxed);
                c.last_handoff_ms.store(millis(took), Ordering::Relaxed);
                c.max_handoff_ms.fetch_max(millis(took), Ordering::Relaxed);
                tracing::info!(
                    node = %me,
                    epoch = target.epoch,
                    shards = gained.len(),
                    after_ms = millis(took),
                    forced,
                    "serving gained shards"
                );
                for shard in gained {
                    let from = served_map
                        .as_ref()
                        .and_then(|m| m.owner(shard))
                        .filter(|n| *n != me)
                        .map(str::to_owned);
                    let _ = inner.events.send(ClusterEvent::ShardMigrated {
                        shard,
                        from,
                        to: me.clone(),
                        epoch: target.epoch,
                        after: took,
                        forced,
                    });
                }
            }
            served_map = map;
        }
        tokio::select! {
            changed = owned.changed() => if changed.is_err() { return },
            _ = stop.changed() => return,
        }
    }
}

fn publish_serving(inner: &Inner, epoch: u64, shards: &BTreeSet<u32>) {
    inner.serving.send_replace(Arc::new(OwnedShards {
        epoch,
        shards: shards.clone(),
    }));
}

/// Records that this node released `epoch`: no activation of a shard it does not own in that
/// map runs here any more.
async fn release(inner: &Inner, epoch: u64) {
    let previous = inner.released.fetch_max(epoch, Ordering::AcqRel);
    if previous >= epoch {
        return;
    }
    let status = if inner.leaving.load(Ordering::Acquire) {
        super::NodeStatus::Leaving
    } else {
        super::NodeStatus::Alive
    };
    match codec::encode("node record", &inner.record(status)) {
        Ok(bytes) => {
            if let Err(e) = inner
                .buckets
                .nodes
                .put(&inner.config.node_id, Bytes::from(bytes))
                .await
            {
                // The next heartbeat carries the release.
                tracing::warn!(epoch, error = %e, "release not recorded yet");
            }
        }
        Err(e) => tracing::warn!(epoch, error = %e, "cannot encode the node record"),
    }
}

/// Waits until every other live node has released `epoch`, a newer map arrives, or the
/// handoff timeout passes.
async fn barrier(
    inner: &Inner,
    epoch: u64,
    owned: &mut watch::Receiver<Arc<OwnedShards>>,
    stop: &mut watch::Receiver<bool>,
    registry: &mut watch::Receiver<u64>,
) -> Barrier {
    let deadline = Instant::now() + inner.config.handoff_timeout;
    let me = inner.config.node_id.as_str();
    loop {
        let now = Instant::now();
        let waiting =
            inner
                .registry
                .lock()
                .unreleased(me, epoch, now, inner.config.failure_timeout);
        if waiting.is_empty() {
            return Barrier::Released;
        }
        if owned.borrow().epoch > epoch {
            return Barrier::Superseded;
        }
        if now >= deadline {
            return Barrier::TimedOut(waiting);
        }
        // Re-check on every registry change, and now and then for nodes falling silent.
        let recheck = (deadline - now).min(Duration::from_millis(50));
        tokio::select! {
            changed = registry.changed() => if changed.is_err() { return Barrier::Stopped },
            changed = owned.changed() => if changed.is_err() { return Barrier::Stopped },
            _ = stop.changed() => return Barrier::Stopped,
            () = tokio::time::sleep(recheck) => {}
        }
    }
}
