//! Handoff: moving shards between nodes with no lost and no doubly applied command.
//!
//! A published shard map says who *should* own each shard; the handoff decides when a node
//! actually *serves* one. Every node runs one handoff task that follows the maps it adopts,
//! and advertises in its registry record two things: the map epoch it works under
//! (`handoff_epoch`: it will start serving no shard that map does not give it) and the shards
//! it **holds** — those it serves and those it is still draining, i.e. every shard that may
//! have a live activation on it. For a shard moving from node A to node B in epoch `e`:
//!
//! 1. **A stops starting turns.** On adopting `e`, A removes the shard from its serving set:
//!    routing drains its subscription and placement stops saying `Local`, so new commands for
//!    the shard are not taken here, and no activation of it can *start* here any more (the
//!    actor host checks ownership under its registry lock before it activates anyone). A
//!    advertises `handoff_epoch = e`, still holding the shard.
//! 2. **A drains.** Every activation of the shard is asked to passivate: the running turn
//!    finishes, commands already queued are served, the state is snapshotted, the activation
//!    stops. Each shard drains on its own, so a turn of one draining shard that waits on
//!    another moving shard does not hold that one up.
//! 3. **A releases.** Once the shard's activations have stopped, A advertises that it no
//!    longer holds it.
//! 4. **B serves.** B, having adopted `e`, serves the shard as soon as every other live node
//!    has adopted `e` and none holds the shard — nodes declared failed, or silent for the
//!    failure timeout, are not waited for. B's first command for an actor of the shard
//!    activates it by replaying its snapshot and events, which include everything A wrote.
//!    Shards are served one by one as they are released: one slow shard does not delay the
//!    others.
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
//! **Maps that change mid-handoff.** A newer map simply becomes the target: shards lost
//! meanwhile are never served, shards still gained wait for the newer epoch's releases, and
//! drains already running go on.
//!
//! **A node cut off from NATS fences itself.** When no beat of it has been granted for nine
//! tenths of the failure timeout (see `cluster::liveness`) — before the leader can declare it
//! failed — a node stops serving every shard and drains its actors; placement routes even its
//! local callers away. Once a beat is granted again it adopts a map at least as new as the
//! grant's and takes part in the handoff afresh, serving only what that map gives it, once
//! nobody else holds it.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::time::Instant;

use super::{ClusterEvent, Inner, OwnedShards, ShardMap};
use crate::routing::Dispatch;

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
    /// Drains that took longer than the handoff timeout.
    pub drain_timeouts: u64,
    /// The last handoff into this node, from adopting the map to serving: milliseconds.
    pub last_handoff_ms: u64,
    /// The longest such handoff so far: milliseconds.
    pub max_handoff_ms: u64,
    /// The last drain of this node's lost shards: milliseconds.
    pub last_drain_ms: u64,
    /// The map epoch whose shards this node serves in full.
    pub serving_epoch: u64,
    /// The map epoch this node's handoff works under.
    pub handoff_epoch: u64,
    /// Shards that may have live activations here (served or draining).
    pub held: usize,
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
            handoff_epoch: inner.handoff_epoch.load(Ordering::Acquire),
            held: inner.held.lock().len(),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A running drain: resolves with the shard, the actors it stopped, and whether it took longer
/// than the handoff timeout.
type Drain = Pin<Box<dyn Future<Output = (u32, usize, bool)> + Send>>;

/// What one node's handoff knows.
#[derive(Default)]
struct State {
    /// The map epoch being worked towards.
    epoch: u64,
    /// The last epoch whose shards were all served (what routing is told).
    served_epoch: u64,
    serving: BTreeSet<u32>,
    draining: BTreeSet<u32>,
    /// Owned under `epoch`, not served yet.
    pending: BTreeSet<u32>,
    /// When `epoch` was adopted; the hard deadline of its pending shards.
    adopted_at: Option<Instant>,
    /// The map before `epoch` (where gained shards come from).
    previous_map: Option<Arc<ShardMap>>,
    map: Option<Arc<ShardMap>>,
    /// Shards released since the drain set was last empty, and when that drain began.
    released: Vec<u32>,
    released_actors: usize,
    drain_started: Option<Instant>,
    /// The node fenced itself (see `Inner::fence`): everything is drained, nothing served.
    fenced: bool,
}

/// The handoff task of one node. See the module docs.
pub(crate) async fn run(inner: Arc<Inner>, dispatch: Arc<dyn Dispatch>) {
    let mut owned = inner.owned.subscribe();
    let mut stop = inner.stop.subscribe();
    let mut registry = inner.registry_rev.subscribe();
    let mut fence = inner.fenced.subscribe();
    let mut st = State::default();
    let mut drains: FuturesUnordered<Drain> = FuturesUnordered::new();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if *stop.borrow() {
            return;
        }
        let mut changed = false;
        let fenced = *fence.borrow_and_update();
        if fenced && !st.fenced {
            st.fenced = true;
            drop_everything(&inner, &mut st, dispatch.as_ref(), &mut drains);
            changed = true;
        } else if !fenced && st.fenced {
            // Rejoining: take the current map afresh (the fence drained everything).
            st.fenced = false;
            st.epoch = 0;
        }
        let target = Arc::clone(&owned.borrow_and_update());
        if !st.fenced && target.epoch > st.epoch {
            adopt(&inner, &mut st, &target, dispatch.as_ref(), &mut drains);
            changed = true;
        }
        if !st.fenced && !st.pending.is_empty() && serve_free(&inner, &mut st) {
            changed = true;
        }
        if changed {
            advertise(&inner, &st);
        }
        tokio::select! {
            r = owned.changed() => if r.is_err() { return },
            Some((shard, actors, slow)) = drains.next(), if !drains.is_empty() => {
                drained(&inner, &mut st, shard, actors, slow);
                // Collect every drain that finished meanwhile, then advertise once.
                while let Some(Some((shard, actors, slow))) = drains.next().now_or_never() {
                    drained(&inner, &mut st, shard, actors, slow);
                }
                advertise(&inner, &st);
            }
            r = registry.changed() => if r.is_err() { return },
            r = fence.changed() => if r.is_err() { return },
            _ = tick.tick(), if !st.pending.is_empty() => {}
            _ = stop.changed() => return,
        }
    }
}

/// Takes a newer map: stop serving (and start draining) what it does not give this node, and
/// note what it gives that is not served yet.
fn adopt(
    inner: &Inner,
    st: &mut State,
    target: &OwnedShards,
    dispatch: &dyn Dispatch,
    drains: &mut FuturesUnordered<Drain>,
) {
    st.epoch = target.epoch;
    st.adopted_at = Some(Instant::now());
    st.previous_map = st.map.take().or_else(|| inner.map.read().clone());
    st.map = inner.map.read().clone();
    // Lost: not ours any more — or ours again after an interruption this node did not serve
    // through (a map it missed, or one that gave the shard away meanwhile): its activations
    // may hold state another node has since written to, so they go too.
    let lost: Vec<u32> = st
        .serving
        .iter()
        .copied()
        .filter(|&s| !target.shards.contains(&s) || target.owned_since(s) > st.epoch)
        .collect();
    if !lost.is_empty() {
        for shard in &lost {
            st.serving.remove(shard);
        }
        publish_serving(inner, st.served_epoch, &st.serving);
        start_drains(inner, st, lost, dispatch, drains);
    }
    st.pending = target
        .shards
        .iter()
        .copied()
        .filter(|s| !st.serving.contains(s))
        .collect();
    if st.pending.is_empty() {
        st.served_epoch = st.epoch;
        publish_serving(inner, st.served_epoch, &st.serving);
    }
}

/// The node fenced itself: stop serving every shard and drain every activation (the leader may
/// be giving the shards to other nodes right now).
fn drop_everything(
    inner: &Inner,
    st: &mut State,
    dispatch: &dyn Dispatch,
    drains: &mut FuturesUnordered<Drain>,
) {
    st.pending.clear();
    let lost: Vec<u32> = std::mem::take(&mut st.serving).into_iter().collect();
    publish_serving(inner, st.served_epoch, &st.serving);
    if !lost.is_empty() {
        start_drains(inner, st, lost, dispatch, drains);
    }
}

/// Starts draining `lost` (no longer served): passivates their activations and tracks when
/// each shard's have all stopped.
fn start_drains(
    inner: &Inner,
    st: &mut State,
    lost: Vec<u32>,
    dispatch: &dyn Dispatch,
    drains: &mut FuturesUnordered<Drain>,
) {
    st.draining.extend(lost.iter().copied());
    st.drain_started.get_or_insert_with(Instant::now);
    // No timeout: a shard is released only once its activations have really stopped (their
    // turns end by their deadlines). A gaining node that cannot wait that long forces the
    // handoff on its side, where it is counted.
    let timeout = inner.config.handoff_timeout;
    for (shard, done) in dispatch.drain(lost) {
        drains.push(Box::pin(async move {
            let started = Instant::now();
            let actors = done.await;
            (shard, actors, started.elapsed() > timeout)
        }));
    }
}

/// One shard finished draining.
fn drained(inner: &Inner, st: &mut State, shard: u32, actors: usize, slow: bool) {
    st.draining.remove(&shard);
    let c = &inner.handoff;
    c.shards_released.fetch_add(1, Ordering::Relaxed);
    st.released.push(shard);
    c.actors_drained.fetch_add(actors as u64, Ordering::Relaxed);
    st.released_actors += actors;
    if slow {
        c.drain_timeouts.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            shard,
            "drain took longer than the handoff timeout (its new owner may have forced it)"
        );
    }
    if st.draining.is_empty() {
        let took = st
            .drain_started
            .take()
            .map_or(Duration::ZERO, |t| t.elapsed());
        c.last_drain_ms.store(millis(took), Ordering::Relaxed);
        inner.emit(ClusterEvent::ShardsReleased {
            shards: std::mem::take(&mut st.released),
            epoch: st.epoch,
            actors: std::mem::take(&mut st.released_actors),
            after: took,
        });
    }
}

/// Serves every pending shard no other live node may still run (all of them once the hard
/// deadline has passed). Returns whether any was served.
fn serve_free(inner: &Inner, st: &mut State) -> bool {
    let me = inner.config.node_id.as_str();
    let now = Instant::now();
    let since = st.adopted_at.unwrap_or(now);
    let forced = now.duration_since(since) >= inner.config.handoff_timeout;
    let free: Vec<u32> = {
        let registry = inner.registry.lock();
        // Trust this node's view of the registry only once it has caught up with the bucket
        // and its own latest heartbeat has come back through it: a view that is behind (just
        // started, re-watching, or starved of CPU) could miss a node still holding a shard.
        let current = inner.registry_synced.load(Ordering::Acquire)
            && registry.heard_within(me, now, inner.config.failure_timeout);
        if !forced && !current {
            return false;
        }
        st.pending
            .iter()
            .copied()
            .filter(|&shard| {
                forced
                    || (!st.draining.contains(&shard)
                        && registry
                            .holders(
                                me,
                                st.epoch,
                                shard,
                                st.previous_map.as_deref(),
                                now,
                                inner.config.failure_timeout,
                            )
                            .next()
                            .is_none())
            })
            .collect()
    };
    if free.is_empty() {
        return false;
    }
    if forced {
        let waiting: Vec<String> = {
            let registry = inner.registry.lock();
            let mut nodes: Vec<String> = free
                .iter()
                .flat_map(|&s| {
                    registry
                        .holders(
                            me,
                            st.epoch,
                            s,
                            st.previous_map.as_deref(),
                            now,
                            inner.config.failure_timeout,
                        )
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                })
                .collect();
            nodes.sort();
            nodes.dedup();
            nodes
        };
        inner
            .handoff
            .forced
            .fetch_add(free.len() as u64, Ordering::Relaxed);
        tracing::warn!(
            epoch = st.epoch,
            shards = free.len(),
            ?waiting,
            "shards not released within the handoff timeout; serving anyway \
             (the store fences straggling activations)"
        );
    }
    let took = now.duration_since(since);
    for &shard in &free {
        st.pending.remove(&shard);
        st.serving.insert(shard);
    }
    if st.pending.is_empty() {
        st.served_epoch = st.epoch;
    }
    publish_serving(inner, st.served_epoch, &st.serving);
    let c = &inner.handoff;
    c.shards_gained
        .fetch_add(free.len() as u64, Ordering::Relaxed);
    c.last_handoff_ms.store(millis(took), Ordering::Relaxed);
    c.max_handoff_ms.fetch_max(millis(took), Ordering::Relaxed);
    tracing::info!(
        node = me,
        epoch = st.epoch,
        shards = free.len(),
        after_ms = millis(took),
        forced,
        "serving gained shards"
    );
    for shard in free {
        let from = st
            .previous_map
            .as_ref()
            .and_then(|m| m.owner(shard))
            .filter(|n| *n != me)
            .map(str::to_owned);
        let _ = inner.events.send(ClusterEvent::ShardMigrated {
            shard,
            from,
            to: me.to_owned(),
            epoch: st.epoch,
            after: took,
            forced,
        });
    }
    true
}

fn publish_serving(inner: &Inner, epoch: u64, shards: &BTreeSet<u32>) {
    inner.serving.send_replace(Arc::new(OwnedShards {
        epoch,
        shards: shards.clone(),
        owned_since: Default::default(),
    }));
}

/// Advertises the epoch and the held shards in this node's registry record: the record writer
/// writes it at once, apart from this loop (a write stuck behind a raft election must not keep
/// the handoff from serving), and every later record carries it too.
fn advertise(inner: &Inner, st: &State) {
    *inner.held.lock() = st
        .serving
        .iter()
        .chain(st.draining.iter())
        .copied()
        .collect();
    inner.handoff_epoch.store(st.epoch, Ordering::Release);
    inner.write_record.notify_one();
}
