//! The host: what one runtime shares between its actors — stores, settings, the resident
//! registry — and the local delivery path of every ask and tell.
//!
//! # The resident registry
//!
//! Resident actors are kept in a map from `(kind, id)` to the actor's mailbox (split into 64
//! shards from 4 096 residents up, see `residents.rs`). Delivery looks the actor up,
//! activating it on a miss, stamps the mailbox with the use (its place in the host's order of
//! uses) and queues the command. An [`ActorRef`](super::ActorRef) keeps the mailbox it
//! delivered to and, while that mailbox is open, queues into it directly, stamping it the same
//! way ([`Host::deliver_cached`]). The map is bounded by `max_resident`: inserting past the
//! bound passivates the least recently used actor, found exactly from the stamps (across
//! shards: the oldest of their least recently used; concurrent activations may pass the bound
//! for a moment, until each has passivated one); an idle sweeper passivates actors unused for
//! `idle_passivation`.
//!
//! # Hibernation
//!
//! The same sweeper asks actors unused for `hibernate_after` to hibernate: the activation
//! leaves its ractor actor, keeping its state, and parks on its mailbox (see
//! [`activation`](super::activation)). It stays in the registry, so it stays resident and in
//! the LRU order; the next message spawns a ractor actor for it again. The sweeper finds the
//! candidates without walking the registry: every activation that starts or wakes joins the
//! *awake* queue, in the order of the coarse clock, and the sweeper looks only at the front
//! of it, where the actors awake longest are. One that was used since it joined goes to the
//! back again.
//!
//! Passivation is ordered so an actor never runs twice at once: the old activation is removed
//! from the map, and its mailbox is closed behind a request to stop (late senders, a ref's
//! kept mailbox included, see it closed and come back to the map); it finishes its queued
//! commands, snapshots, and signals that it is done. A new activation of the same actor waits
//! for that signal before it reads the store.
//!
//! Activating an actor spawns a ractor actor linked under the runtime's root (see
//! [`activation`](super::activation)); the registry holds the activation's mailbox, not the
//! ractor actor, because a fresh ractor actor takes over the same mailbox after a handler
//! panic.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::sync::Weak;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use ractor::ActorCell;
use tokio::sync::Semaphore;

use super::activation::{Hosted, Kit, Life, Live, Orphan, Start};
use super::contract::Behavior;
use super::inbox::Msg;
use super::mailbox;
use super::residents::{
    Borrowed, Entry, KeyView, RESIDENT_SHARDS, RegKey, ResidentMailbox, Residents, SHARDED_FROM,
};
pub(crate) use super::residents::{Done, DoneTx, done_channel, wait_done};
use crate::config::RuntimeConfig;
use crate::errors::{AskError, CallError};
use crate::names::{ActorId, ActorKey, Kind, Namespace};
use crate::routing::{Placement, shard_of};
use crate::store::{EventStore, SnapshotStore};

/// Per-kind settings, fixed at registration.
pub(crate) struct KindInfo {
    pub name: &'static str,
    pub kind: Kind,
    pub snapshot_every: Option<u64>,
    /// Runs commands of this kind that arrive from other nodes.
    pub remote: Arc<dyn super::remote::RemoteKind>,
}

/// The shared core of a runtime.
pub(crate) struct Host {
    pub namespace: Namespace,
    pub config: RuntimeConfig,
    pub events: Arc<dyn EventStore>,
    pub snapshots: Arc<dyn SnapshotStore>,
    /// Registered kinds. Few, so a list: cheaper to search than to hash a key.
    pub kinds: Vec<KindInfo>,
    pub placement: Arc<dyn Placement>,
    /// Sends commands to other nodes (cluster mode only).
    pub transport: Option<Arc<crate::routing::Transport>>,
    /// Where stored events and system events are published.
    pub bus: crate::bus::Bus,
    pub replays: Semaphore,
    pub stats: Stats,
    /// The resident registry, in shards (one when `max_resident` is small).
    registry: Box<[Mutex<Residents>]>,
    /// Residents across all shards (the cap is enforced on it).
    resident_total: Arc<std::sync::atomic::AtomicUsize>,
    /// Held while passivating past the cap across shards (see [`Host::enforce_cap`]).
    evicting: Mutex<()>,
    /// The next use's place in the order of uses across shards (`mailbox::LastUse`).
    /// Alone on its cache lines: every ask writes it, and the fields every ask reads (the
    /// registry, the clock, the shutdown flag) should not be invalidated on the other core.
    uses: CacheAligned<AtomicU64>,
    /// Decides which workflows are traced (`trace_one_in`), without a division per ask.
    sampler: crate::wire::Sampler,
    next_generation: AtomicU64,
    pub shutting_down: AtomicBool,
    pub tokio: tokio::runtime::Handle,
    /// Coarse clock (milliseconds since start) for idle tracking, advanced by the sweeper.
    pub clock_ms: AtomicU64,
    /// The runtime's root ractor actor: every activation's actor is linked under it.
    root: OnceLock<ActorCell>,
    /// Kits of activations whose actor died, until the root restarts them.
    orphans: Mutex<Orphans>,
    /// This node's name in metrics and spans: the cluster node id, `local` or `client`.
    pub node: String,
    /// The metric handles, when metrics are on (see [`crate::metrics`]).
    meters: Option<crate::metrics::Meters>,
    /// Awake activations, oldest first, for the hibernation sweep (see the module docs).
    awake: Mutex<VecDeque<Awake>>,
}

/// An awake activation in the hibernation sweep's queue.
struct Awake {
    /// The coarse clock when it joined the queue (the queue is in this order).
    since_ms: u64,
    mailbox: Box<dyn Drowsy>,
}

/// What the hibernation sweep needs of an awake activation's mailbox.
pub(crate) trait Drowsy: Send {
    /// The coarse clock at the actor's last use.
    fn used_ms(&self) -> u64;
    /// Asks the actor to hibernate, without stamping a use.
    fn hibernate(&self) -> Asked;
}

/// How a request to hibernate went.
pub(crate) enum Asked {
    /// Queued: the actor hibernates, or joins the awake queue again if it cannot.
    Sent,
    /// The mailbox is full: the actor is busy.
    Busy,
    /// The actor is gone.
    Gone,
}

impl<A: Behavior> Drowsy for mailbox::WeakSender<Msg<A>> {
    fn used_ms(&self) -> u64 {
        self.last_use().ms()
    }

    fn hibernate(&self) -> Asked {
        match self.try_send_quiet(Msg::Hibernate) {
            Ok(()) => Asked::Sent,
            Err(mailbox::TrySendError::Full(_)) => Asked::Busy,
            Err(mailbox::TrySendError::Closed(_)) => Asked::Gone,
        }
    }
}

/// Kits of dead activations by their ractor actor, until the root actor hears of the failure.
#[derive(Default)]
struct Orphans {
    /// The root is gone: nobody will restart an orphan, so none is kept.
    closed: bool,
    kits: HashMap<ractor::ActorId, Box<dyn Orphan>>,
}

/// Counters, readable through `Runtime::stats`.
#[derive(Default)]
pub(crate) struct Stats {
    pub activations: AtomicU64,
    pub activation_failures: AtomicU64,
    pub passivations: AtomicU64,
    pub replayed_events: AtomicU64,
    pub commits: AtomicU64,
    pub conflicts: AtomicU64,
    pub deduplicated: AtomicU64,
    pub snapshots_saved: AtomicU64,
    pub snapshot_fallbacks: AtomicU64,
    pub snapshot_migrations: AtomicU64,
    pub history_truncations: AtomicU64,
    pub handler_panics: AtomicU64,
    pub abandoned: AtomicU64,
    pub effects_applied: AtomicU64,
    pub effects_rejected: AtomicU64,
    pub effects_duplicates: AtomicU64,
    pub effects_settled: AtomicU64,
    pub effects_retries: AtomicU64,
    pub deadlocks_refused: AtomicU64,
    /// Activations loading from the store now (a gauge).
    pub activating: AtomicU64,
    /// Resident actors hibernating now (a gauge).
    pub hibernating: AtomicU64,
    pub hibernations: AtomicU64,
}

impl Stats {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl<A: Behavior> ResidentMailbox for mailbox::Sender<Msg<A>> {
    fn passivate(&self) {
        // Behind the queued work, full or not; later senders find the mailbox closed and
        // come back to the registry.
        self.close_with(Msg::Passivate);
    }

    fn last_use(&self) -> &mailbox::LastUse {
        mailbox::Sender::last_use(self)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Where an [`ActorRef`](super::ActorRef) keeps its actor's mailbox, to deliver without the
/// registry next time (see [`Host::deliver_cached`]). Kept once: when that mailbox closes
/// (the activation passivated, failed or moved away), the ref goes through the registry from
/// then on, as it did before it kept one; a fresh ref (`Runtime::actor`) keeps the next.
pub(crate) struct MailboxCache<A: Behavior> {
    kept: OnceLock<mailbox::WeakSender<Msg<A>>>,
    /// The kept mailbox was found closed.
    closed: AtomicBool,
}

impl<A: Behavior> MailboxCache<A> {
    /// Nothing kept yet.
    pub fn new() -> Self {
        MailboxCache {
            kept: OnceLock::new(),
            closed: AtomicBool::new(false),
        }
    }

    /// The kept mailbox, unless it was found closed.
    fn open(&self) -> Option<&mailbox::WeakSender<Msg<A>>> {
        if self.closed.load(Ordering::Relaxed) {
            return None;
        }
        self.kept.get()
    }

    /// Keeps `tx` if nothing was kept yet.
    fn keep(&self, tx: &mailbox::Sender<Msg<A>>) {
        if self.kept.get().is_none() {
            let _ = self.kept.set(tx.downgrade());
        }
    }
}

impl<A: Behavior> Clone for MailboxCache<A> {
    fn clone(&self) -> Self {
        MailboxCache {
            kept: self.kept.clone(),
            closed: AtomicBool::new(self.closed.load(Ordering::Relaxed)),
        }
    }
}

/// Outcome of the non-blocking part of delivery.
enum TryDeliver<A: Behavior> {
    Sent,
    /// The mailbox is full: wait for room on this sender.
    Full(mailbox::Sender<Msg<A>>, Msg<A>),
}

/// Why a command was not queued here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Undelivered {
    /// The actor is not resident and its shard is not served by this node (any more): the
    /// caller routes the command to the shard's owner instead. Never reached on a single node.
    NotOwner(u32),
    /// The mailbox is full (only from the non-waiting path).
    Full,
    /// The runtime is shutting down.
    Shutdown,
    /// The actor's mailbox kept closing under us.
    Unavailable,
}

impl Undelivered {
    pub fn to_ask<E>(&self) -> AskError<E> {
        AskError::Failed(self.to_call())
    }

    pub fn to_call(&self) -> CallError {
        match self {
            Undelivered::Shutdown => CallError::Shutdown,
            Undelivered::NotOwner(shard) => {
                CallError::unavailable(format!("shard {shard} is moving to another node; retry"))
            }
            Undelivered::Full => CallError::unavailable("the actor's mailbox is full"),
            Undelivered::Unavailable => CallError::unavailable("the actor's mailbox keeps closing"),
        }
    }
}

/// Every live host of this process, for binding refs that arrive without one.
static HOSTS: Mutex<Vec<Weak<Host>>> = Mutex::new(Vec::new());

/// A value on cache lines of its own (128 bytes: adjacent-line prefetching pairs lines).
#[repr(align(128))]
struct CacheAligned<T>(T);

impl Host {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        namespace: Namespace,
        config: RuntimeConfig,
        events: Arc<dyn EventStore>,
        snapshots: Arc<dyn SnapshotStore>,
        kinds: Vec<KindInfo>,
        placement: Arc<dyn Placement>,
        transport: Option<Arc<crate::routing::Transport>>,
        bus: crate::bus::Bus,
        tokio: tokio::runtime::Handle,
        node: String,
        meters: Option<crate::metrics::Meters>,
    ) -> Arc<Host> {
        let shards = if config.max_resident >= SHARDED_FROM {
            RESIDENT_SHARDS
        } else {
            1
        };
        // One shard caps itself; several are capped together (`enforce_cap`).
        let per_shard = if shards == 1 {
            config.max_resident
        } else {
            usize::MAX
        };
        let resident_total = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let host = Arc::new(Host {
            namespace,
            replays: Semaphore::new(config.max_concurrent_replays),
            sampler: crate::wire::Sampler::new(config.trace_one_in),
            config,
            events,
            snapshots,
            kinds,
            placement,
            transport,
            bus,
            stats: Stats::default(),
            registry: (0..shards)
                .map(|_| Mutex::new(Residents::new(per_shard, Arc::clone(&resident_total))))
                .collect(),
            resident_total,
            evicting: Mutex::new(()),
            uses: CacheAligned(AtomicU64::new(1)),
            next_generation: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
            tokio,
            clock_ms: AtomicU64::new(0),
            root: OnceLock::new(),
            orphans: Mutex::new(Orphans::default()),
            node,
            meters,
            awake: Mutex::new(VecDeque::new()),
        });
        let mut hosts = HOSTS.lock();
        hosts.retain(|h| h.strong_count() > 0);
        hosts.push(Arc::downgrade(&host));
        drop(hosts);
        let (idle, hibernate) = (host.config.idle_passivation, host.config.hibernate_after);
        if let Some(shortest) = idle.into_iter().chain(hibernate).min() {
            let tick = (shortest / 4).clamp(Duration::from_millis(5), Duration::from_secs(1));
            host.tokio
                .spawn(sweep(Arc::downgrade(&host), idle, hibernate, tick));
        }
        host
    }

    /// The single live host serving `namespace` in this process, if there is exactly one.
    pub fn find(namespace: &Namespace) -> Result<Arc<Host>, String> {
        let hosts = HOSTS.lock();
        let mut found = hosts
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|h| &h.namespace == namespace && !h.shutting_down.load(Ordering::Acquire));
        match (found.next(), found.next()) {
            (Some(h), None) => Ok(h),
            (None, _) => Err(format!(
                "no runtime serves namespace {namespace} in this process"
            )),
            (Some(_), Some(_)) => Err(format!(
                "several runtimes serve namespace {namespace}; bind the ref with Runtime::bind"
            )),
        }
    }

    pub fn unregister(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        HOSTS
            .lock()
            .retain(|h| h.strong_count() > 0 && !Weak::ptr_eq(h, &me));
    }

    pub fn kind_of<A: Behavior>(&self) -> Option<&Kind> {
        self.kind_info(A::KIND).map(|k| &k.kind)
    }

    /// The registry shard of the actor whose key hashes to `hash` (`residents::key_hash`).
    fn shard_at(&self, hash: u64) -> &Mutex<Residents> {
        &self.registry[(hash % self.registry.len() as u64) as usize]
    }

    /// The registration of the kind named `name` (from a frame, an outbox entry).
    pub fn kind_named(&self, name: &str) -> Option<&KindInfo> {
        self.kinds.iter().find(|k| k.name == name)
    }

    /// The registration of `kind` (pointer comparison first: kinds are `'static` strings).
    pub fn kind_info(&self, kind: &'static str) -> Option<&KindInfo> {
        self.kinds
            .iter()
            .find(|k| std::ptr::eq(k.name, kind) || k.name == kind)
    }

    pub fn now_ms(&self) -> u64 {
        self.clock_ms.load(Ordering::Relaxed)
    }

    /// The routing seam: `Some(shard)` when the actor's shard is served by another node (or
    /// by nobody yet), `None` when it is served here.
    pub fn remote_shard(&self, kind: &str, id: &ActorId) -> Option<u32> {
        if self.placement.single_node() {
            return None;
        }
        let shard = self.shard_of(kind, id);
        (!self.placement.is_local(shard)).then_some(shard)
    }

    /// The shard of an actor of this namespace.
    pub fn shard_of(&self, kind: &str, id: &ActorId) -> u32 {
        shard_of(
            self.namespace.as_str(),
            kind,
            id.as_str(),
            self.config.shard_count,
        )
    }

    /// Whether this node serves `shard` now.
    pub fn owns(&self, shard: u32) -> bool {
        self.placement.single_node() || self.placement.is_local(shard)
    }

    /// Starts passivating every resident actor whose shard is in `shards` (they moved away)
    /// and returns how many it stopped plus the completion signals of every activation of
    /// those shards still running — including ones already stopping for other reasons. The
    /// handoff awaits them all before it releases the shards to their new owner.
    ///
    /// The caller must already have stopped routing `shards` here ([`Host::owns`] is false
    /// for them): then no new activation of them can start (see [`Host::try_deliver`]), so
    /// once these signals fire, nothing of the shards runs on this node.
    pub fn drain_shards(&self, shards: &[u32]) -> HashMap<u32, (usize, Vec<Done>)> {
        let lost: std::collections::HashSet<u32> = shards.iter().copied().collect();
        let mut out: HashMap<u32, (usize, Vec<Done>)> = HashMap::new();
        let mut count = 0usize;
        for registry in self.registry.iter() {
            let mut reg = registry.lock();
            let leaving: Vec<(u32, RegKey)> = reg
                .iter()
                .map(|(k, _)| (self.shard_of(k.kind, &k.id), k))
                .filter(|(shard, _)| lost.contains(shard))
                .map(|(shard, k)| (shard, k.clone()))
                .collect();
            for (shard, key) in leaving {
                if let Some(entry) = reg.pop(&key) {
                    reg.evict(key, entry);
                    out.entry(shard).or_default().0 += 1;
                    count += 1;
                }
            }
            for (key, (_, done)) in reg.stopping.iter() {
                let shard = self.shard_of(key.kind, &key.id);
                if lost.contains(&shard) {
                    out.entry(shard).or_default().1.push(done.clone());
                }
            }
        }
        if count > 0 {
            tracing::debug!(
                actors = count,
                shards = shards.len(),
                "passivating actors of moved shards"
            );
        }
        out
    }

    /// Queues `msg` for actor `id` of kind `A` without waiting, activating it if needed.
    ///
    /// A new activation starts only while this node serves the actor's shard, checked under
    /// the registry lock: the handoff switches ownership first and drains under the same lock
    /// after, so an actor of a shard that moved away is never brought back to life here.
    fn try_deliver<A: Behavior>(
        self: &Arc<Self>,
        id: &ActorId,
        msg: Msg<A>,
    ) -> Result<TryDeliver<A>, (Undelivered, Msg<A>)> {
        self.try_deliver_at::<A>(Borrowed::new(A::KIND, id.as_str()), id, msg, None)
    }

    /// [`Host::try_deliver`] with the key already hashed; fills `cache` (when empty) with
    /// the mailbox it delivered to.
    fn try_deliver_at<A: Behavior>(
        self: &Arc<Self>,
        view: Borrowed<'_>,
        id: &ActorId,
        mut msg: Msg<A>,
        cache: Option<&MailboxCache<A>>,
    ) -> Result<TryDeliver<A>, (Undelivered, Msg<A>)> {
        let key: &dyn KeyView = &view;
        let now = self.now_ms();
        let mut reg = self.shard_at(view.hash).lock();
        if self.shutting_down.load(Ordering::Acquire) {
            return Err((Undelivered::Shutdown, msg));
        }
        // At most two rounds: a closed mailbox found in the map is replaced once.
        for _ in 0..2 {
            if let Some(entry) = reg.get(key) {
                let Some(tx) = entry
                    .sender
                    .as_any()
                    .downcast_ref::<mailbox::Sender<Msg<A>>>()
                else {
                    return Err((Undelivered::Unavailable, msg));
                };
                match tx.try_send_used(msg, self.use_clock()) {
                    Ok(()) => {
                        if let Some(cache) = cache {
                            cache.keep(tx);
                        }
                        return Ok(TryDeliver::Sent);
                    }
                    Err(mailbox::TrySendError::Full(m)) => {
                        return Ok(TryDeliver::Full(tx.clone(), m));
                    }
                    Err(mailbox::TrySendError::Closed(m)) => {
                        // The activation ended without leaving the map (it failed): replace it.
                        msg = m;
                        reg.pop(key);
                        continue;
                    }
                }
            }
            if !self.placement.single_node() {
                let shard = self.shard_of(A::KIND, id);
                if !self.owns(shard) {
                    return Err((Undelivered::NotOwner(shard), msg));
                }
            }
            let owned = RegKey::from_view(&view, A::KIND, id.clone());
            let tx = self.spawn_activation::<A>(&mut reg, owned, id.clone(), now);
            let delivered = match tx.try_send_used(msg, self.use_clock()) {
                Ok(()) => {
                    if let Some(cache) = cache {
                        cache.keep(&tx);
                    }
                    TryDeliver::Sent
                }
                Err(mailbox::TrySendError::Full(m)) => TryDeliver::Full(tx, m),
                Err(mailbox::TrySendError::Closed(m)) => {
                    msg = m;
                    continue;
                }
            };
            drop(reg);
            self.enforce_cap();
            return Ok(delivered);
        }
        Err((Undelivered::Unavailable, msg))
    }

    fn spawn_activation<A: Behavior>(
        self: &Arc<Self>,
        reg: &mut Residents,
        key: RegKey,
        id: ActorId,
        now: u64,
    ) -> mailbox::Sender<Msg<A>> {
        let (tx, rx) = mailbox::channel(self.config.mailbox_capacity);
        tx.last_use().touch(self.use_seq(), now);
        let (done_tx, done_rx) = done_channel();
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let predecessor = reg.stopping.get(&key).map(|(_, done)| done.clone());
        let weak = tx.downgrade();
        let outbox = Arc::new(super::delivery::OutboxCell::default());
        reg.put(
            key,
            Entry {
                sender: Box::new(tx.clone()),
                done: done_rx,
                generation,
                outbox: Arc::clone(&outbox),
            },
        );
        while reg.len() > reg.capacity {
            match reg.pop_oldest() {
                Some((k, e)) => reg.evict(k, e),
                None => break,
            }
        }
        let kind = self
            .kind_info(A::KIND)
            .map(|k| k.kind.clone())
            .unwrap_or_else(|| unreachable_kind(A::KIND));
        let actor = ActorKey::new(self.namespace.clone(), kind, id);
        let kit = Kit::new(
            Arc::clone(self),
            actor,
            rx,
            weak,
            outbox,
            done_tx,
            generation,
        );
        self.spawn_hosted(Life::new(kit), predecessor);
        tx
    }

    /// Starts an activation in a ractor actor of its own, linked under the root actor.
    pub(crate) fn spawn_hosted<A: Behavior>(&self, life: Life<A>, predecessor: Option<Done>) {
        let start: Start<A> = Box::new((life, predecessor));
        // ractor spawns with `tokio::spawn`: callers may be outside the runtime's threads.
        let _context = self.tokio.enter();
        let spawned = match self.root.get() {
            Some(root) => ractor::ActorRuntime::spawn_linked_instant(
                None,
                Hosted::<A>::new(),
                start,
                root.clone(),
            ),
            None => ractor::ActorRuntime::spawn_instant(None, Hosted::<A>::new(), start),
        };
        match spawned {
            // Its life starts with its first message: ractor has linked it by then.
            Ok((actor, _)) => {
                if let Err(e) = actor.cast(Live) {
                    tracing::warn!(error = %e, kind = A::KIND, "an activation's actor refused to start");
                }
            }
            // Only a name clash fails a spawn, and activations have no names.
            Err(e) => tracing::warn!(error = %e, kind = A::KIND, "cannot spawn an activation"),
        }
    }

    /// Links every later activation under `root`, the runtime's root actor.
    pub(crate) fn adopt_root(&self, root: ActorCell) {
        let _ = self.root.set(root);
    }

    /// Keeps the kit of a dead activation until the root hears of the failure.
    pub(crate) fn orphan(&self, actor: ractor::ActorId, kit: Box<dyn Orphan>) {
        let mut orphans = self.orphans.lock();
        if !orphans.closed {
            orphans.kits.insert(actor, kit);
        }
    }

    /// Restarts the activation that ran in `actor`, which failed with `reason`.
    pub(crate) fn restart(&self, actor: ractor::ActorId, reason: String) {
        let kit = self.orphans.lock().kits.remove(&actor);
        match kit {
            Some(kit) => kit.restart(reason),
            None => tracing::warn!(%actor, %reason, "an actor under the runtime's root failed"),
        }
    }

    /// The root is gone: drops every orphan (answering their queues) and every later one.
    pub(crate) fn close_orphans(&self) {
        let kits = {
            let mut orphans = self.orphans.lock();
            orphans.closed = true;
            std::mem::take(&mut orphans.kits)
        };
        drop(kits);
    }

    /// Delivers `msg`, waiting for mailbox room if needed. The caller bounds the wait. A
    /// refused message comes back with the reason.
    pub async fn deliver<A: Behavior>(
        self: &Arc<Self>,
        id: &ActorId,
        msg: Msg<A>,
    ) -> Result<(), (Undelivered, Msg<A>)> {
        let mut msg = msg;
        loop {
            match self.try_deliver::<A>(id, msg)? {
                TryDeliver::Sent => return Ok(()),
                TryDeliver::Full(tx, m) => match tx.send(m).await {
                    Ok(()) => return Ok(()),
                    // Closed while we waited (passivated): go back to the map.
                    Err(mailbox::SendError(m)) => msg = m,
                },
            }
            tokio::task::yield_now().await;
        }
    }

    /// Queues `msg` for actor `id` only if it is resident and has room now: never activates,
    /// never waits. For deadlock probes, which concern running turns only.
    pub fn deliver_if_resident<A: Behavior>(&self, id: &ActorId, msg: Msg<A>) {
        let view = Borrowed::new(A::KIND, id.as_str());
        let key: &dyn KeyView = &view;
        let reg = self.shard_at(view.hash).lock();
        if let Some(entry) = reg.get(key)
            && let Some(tx) = entry
                .sender
                .as_any()
                .downcast_ref::<mailbox::Sender<Msg<A>>>()
        {
            let _ = tx.try_send(msg);
        }
    }

    /// Queues `msg` if there is room now; never waits. A refused message comes back.
    pub fn deliver_now<A: Behavior>(
        self: &Arc<Self>,
        id: &ActorId,
        msg: Msg<A>,
    ) -> Result<(), (Undelivered, Msg<A>)> {
        match self.try_deliver::<A>(id, msg)? {
            TryDeliver::Sent => Ok(()),
            TryDeliver::Full(_, m) => Err((Undelivered::Full, m)),
        }
    }

    /// [`Host::deliver_now`] for an [`ActorRef`](super::ActorRef), which keeps the key's
    /// hash (`residents::key_hash` of `A::KIND` and `id`) and a `cache` of the actor's
    /// mailbox: while that mailbox is open, the command goes straight into it, stamped with
    /// its use (the registry's order of uses stays exact, see `Residents`), without the
    /// registry's lock and lookup. A mailbox is closed when its actor leaves the registry
    /// (passivated, handed off: the registry removes it, then closes it behind the request to
    /// stop) or its activation ends; a closed one sends the command through the registry, as
    /// if there were no cache, and so does a full one.
    pub fn deliver_cached<A: Behavior>(
        self: &Arc<Self>,
        id: &ActorId,
        hash: u64,
        msg: Msg<A>,
        cache: &MailboxCache<A>,
    ) -> Result<(), (Undelivered, Msg<A>)> {
        let mut msg = msg;
        if let Some(tx) = cache.open()
            && !self.shutting_down.load(Ordering::Acquire)
        {
            match tx.try_send_used(msg, self.use_clock()) {
                Ok(()) => return Ok(()),
                Err(mailbox::TrySendError::Full(m)) => msg = m,
                Err(mailbox::TrySendError::Closed(m)) => {
                    cache.closed.store(true, Ordering::Relaxed);
                    msg = m;
                }
            }
        }
        let view = Borrowed::hashed(A::KIND, id.as_str(), hash);
        match self.try_deliver_at::<A>(view, id, msg, Some(cache))? {
            TryDeliver::Sent => Ok(()),
            TryDeliver::Full(_, m) => Err((Undelivered::Full, m)),
        }
    }

    /// Called by an activation as it ends: forget it in the map, so the next message activates
    /// the actor afresh.
    pub fn forget(&self, kind: &'static str, id: &ActorId, generation: u64) {
        let key = RegKey::new(kind, id.clone());
        let mut reg = self.shard_at(key.key_hash()).lock();
        if reg.get(&key).is_some_and(|e| e.generation == generation) {
            reg.pop(&key);
        }
        if reg
            .stopping
            .get(&key)
            .is_some_and(|(g, _)| *g == generation)
        {
            reg.stopping.remove(&key);
        }
    }

    /// Passivates one actor and waits until it has stopped. `false` if it was not resident.
    pub async fn passivate(&self, kind: &'static str, id: &ActorId) -> bool {
        let key = RegKey::new(kind, id.clone());
        let done = {
            let mut reg = self.shard_at(key.key_hash()).lock();
            match reg.pop(&key) {
                Some(entry) => {
                    let done = entry.done.clone();
                    reg.evict(key, entry);
                    done
                }
                None => return false,
            }
        };
        wait_done(done).await;
        true
    }

    /// Asks every resident actor to passivate (hibernating ones wake to do it); returns what
    /// to wait on for all of them to stop.
    pub fn evict_all(&self) -> Vec<Done> {
        let mut waits: Vec<Done> = Vec::new();
        for shard in self.registry.iter() {
            let mut reg = shard.lock();
            for (k, e) in reg.take_all() {
                reg.evict(k, e);
            }
            waits.extend(reg.stopping.values().map(|(_, d)| d.clone()));
        }
        waits
    }

    /// Passivates every resident actor and waits (up to `timeout`) for all to stop.
    pub async fn passivate_all(&self, timeout: Duration) -> bool {
        let waits = self.evict_all();
        let all = async {
            for done in waits {
                wait_done(done).await;
            }
        };
        tokio::time::timeout(timeout, all).await.is_ok()
    }

    /// Durable effects due now in the outboxes of resident actors (not yet settled).
    pub fn effects_due(&self) -> usize {
        let now = crate::wire::now_ms();
        self.outboxes()
            .iter()
            .map(|c| c.outbox.lock().due_count(now))
            .sum()
    }

    /// The outboxes of resident actors (taken out of the registry's locks before reading).
    fn outboxes(&self) -> Vec<Arc<super::delivery::OutboxCell>> {
        self.registry
            .iter()
            .flat_map(|r| {
                r.lock()
                    .iter()
                    .map(|(_, e)| Arc::clone(&e.outbox))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Pending durable effects and reminders in the outboxes of resident actors.
    pub fn outbox_backlog(&self) -> (usize, usize) {
        self.outboxes()
            .iter()
            .fold((0, 0), |(effects, reminders), c| {
                let (e, r) = c.outbox.lock().backlog();
                (effects + e, reminders + r)
            })
    }

    /// Whether the workflow `correlation_id` is traced on this node's settings.
    pub fn traced(&self, correlation_id: crate::wire::CommandId) -> bool {
        self.sampler.sampled(correlation_id)
    }

    /// Every metric handle, when metrics are on.
    pub fn all_meters(&self) -> Option<&crate::metrics::Meters> {
        self.meters.as_ref()
    }

    /// The metric handles of `kind`, when metrics are on.
    #[inline]
    pub fn meters(&self, kind: &'static str) -> Option<&crate::metrics::KindMeters> {
        self.meters.as_ref()?.kind(kind)
    }

    /// Activations loading from the store now.
    pub fn activating(&self) -> u64 {
        self.stats.activating.load(Ordering::Relaxed)
    }

    /// The counters, as `Runtime::stats` shows them.
    pub fn stats_snapshot(&self) -> crate::runtime::RuntimeStats {
        let s = &self.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        crate::runtime::RuntimeStats {
            activations: get(&s.activations),
            activation_failures: get(&s.activation_failures),
            passivations: get(&s.passivations),
            replayed_events: get(&s.replayed_events),
            commits: get(&s.commits),
            conflicts: get(&s.conflicts),
            deduplicated: get(&s.deduplicated),
            snapshots_saved: get(&s.snapshots_saved),
            snapshot_fallbacks: get(&s.snapshot_fallbacks),
            snapshot_migrations: get(&s.snapshot_migrations),
            history_truncations: get(&s.history_truncations),
            handler_panics: get(&s.handler_panics),
            abandoned: get(&s.abandoned),
            resident: self.resident() as u64,
            hibernating: get(&s.hibernating),
            hibernations: get(&s.hibernations),
            remote_retries: self.transport.as_ref().map_or(0, |t| t.retries()),
            remote_resends: self.transport.as_ref().map_or(0, |t| t.resends()),
            remote_batched: self.transport.as_ref().map_or(0, |t| t.batched()),
            effects_applied: get(&s.effects_applied),
            effects_rejected: get(&s.effects_rejected),
            effects_duplicates: get(&s.effects_duplicates),
            effects_settled: get(&s.effects_settled),
            effects_retries: get(&s.effects_retries),
            deadlocks_refused: get(&s.deadlocks_refused),
        }
    }

    /// Puts an activation that started or woke at the back of the awake queue, for the
    /// hibernation sweep (a no-op when hibernation is off).
    pub(crate) fn note_awake(&self, mailbox: Box<dyn Drowsy>) {
        if self.config.hibernate_after.is_some() {
            let since_ms = self.clock_ms.load(Ordering::Relaxed);
            self.awake.lock().push_back(Awake { since_ms, mailbox });
        }
    }

    /// Asks the activations unused for `after_ms` to hibernate (see the module docs): looks at
    /// the front of the awake queue only, in batches, so delivery's `note_awake` never waits
    /// long behind it.
    fn hibernate_idle(&self, now: u64, after_ms: u64) {
        const BATCH: usize = 4096;
        loop {
            let batch: Vec<Awake> = {
                let mut awake = self.awake.lock();
                let mut batch = Vec::new();
                while batch.len() < BATCH
                    && awake
                        .front()
                        .is_some_and(|a| now.saturating_sub(a.since_ms) >= after_ms)
                {
                    batch.extend(awake.pop_front());
                }
                batch
            };
            let full = batch.len() == BATCH;
            let mut again = Vec::new();
            for mut entry in batch {
                if now.saturating_sub(entry.mailbox.used_ms()) < after_ms {
                    entry.since_ms = now;
                    again.push(entry);
                    continue;
                }
                match entry.mailbox.hibernate() {
                    Asked::Sent | Asked::Gone => {}
                    Asked::Busy => {
                        entry.since_ms = now;
                        again.push(entry);
                    }
                }
            }
            // Stamped `now`: behind everything queued before, in the queue's order.
            self.awake.lock().extend(again);
            if !full {
                return;
            }
        }
    }

    /// Number of resident actors.
    pub fn resident(&self) -> usize {
        self.resident_total.load(Ordering::Acquire)
    }

    /// The place of a use in the order of all uses of this host's actors (the order the
    /// resident cap passivates in, see `Residents`): one atomic increment, where a clock read
    /// cost the ask path about 30 ns.
    fn use_seq(&self) -> u64 {
        self.uses.0.fetch_add(1, Ordering::Relaxed)
    }

    /// The counter and clock a delivery stamps its mailbox from (under the mailbox's lock,
    /// see `mailbox::UseClock`).
    fn use_clock(&self) -> mailbox::UseClock<'_> {
        mailbox::UseClock {
            uses: &self.uses.0,
            ms: &self.clock_ms,
        }
    }

    /// Passivates least recently used actors while more than `max_resident` are resident,
    /// when the table is split into shards (one shard caps itself as it grows). The victim
    /// is the least recently used of the shards' least recently used actors, so the cap is
    /// exact and the order global, as with one shard. Called with no shard lock held.
    fn enforce_cap(&self) {
        let cap = self.config.max_resident;
        if self.registry.len() == 1 || self.resident_total.load(Ordering::Acquire) <= cap {
            return;
        }
        // One evictor at a time, so two callers over the cap by one do not both evict.
        let _evicting = self.evicting.lock();
        while self.resident_total.load(Ordering::Acquire) > cap {
            let mut oldest: Option<(usize, u64)> = None;
            for (i, shard) in self.registry.iter().enumerate() {
                if let Some((seq, _)) = shard.lock().oldest()
                    && oldest.is_none_or(|(_, used)| seq < used)
                {
                    oldest = Some((i, seq));
                }
            }
            let Some((i, used)) = oldest else { return };
            let mut reg = self.registry[i].lock();
            // Used again meanwhile: look again.
            if reg.oldest().is_some_and(|(seq, _)| seq == used)
                && let Some((key, entry)) = reg.pop_oldest()
            {
                reg.evict(key, entry);
            }
        }
    }

    /// Whether `id` of `kind` is resident.
    pub fn is_resident(&self, kind: &'static str, id: &ActorId) -> bool {
        let key = RegKey::new(kind, id.clone());
        self.shard_at(key.key_hash()).lock().contains(&key)
    }
}

impl crate::workflow::scheduler::Wakeable for Host {
    fn serves(&self, actor: &ActorKey) -> bool {
        actor.namespace == self.namespace
            && self.kind_named(actor.kind.as_str()).is_some()
            && self.remote_shard(actor.kind.as_str(), &actor.id).is_none()
    }

    fn is_resident(&self, actor: &ActorKey) -> bool {
        let view = Borrowed::new(actor.kind.as_str(), actor.id.as_str());
        let key: &dyn KeyView = &view;
        self.shard_at(view.hash).lock().contains(key)
    }

    fn wake(self: &Arc<Self>, actor: &ActorKey, revision: u64, due_ms: u64) {
        if let Some(info) = self.kind_named(actor.kind.as_str()) {
            info.remote.wake(self, &actor.id, revision, due_ms);
        }
    }

    fn stopping(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }
}

fn unreachable_kind(kind: &str) -> Kind {
    // Delivery checks registration before it gets here; keep a valid value regardless.
    Kind::new(kind).unwrap_or_else(|_| Kind::new("unknown").expect("'unknown' is a valid kind"))
}

/// Passivates actors idle for `idle`, asks those idle for `hibernate` to hibernate; advances
/// the coarse clock.
async fn sweep(
    host: Weak<Host>,
    idle: Option<Duration>,
    hibernate: Option<Duration>,
    tick: Duration,
) {
    let started = tokio::time::Instant::now();
    let idle_ms = idle.map(|d| d.as_millis() as u64);
    // At least a millisecond: at 0 every entry, even one put back just now, would be due, and
    // a queue of busy actors would keep the sweep going round.
    let hibernate_ms = hibernate.map(|d| (d.as_millis() as u64).max(1));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(host) = host.upgrade() else { return };
        if host.shutting_down.load(Ordering::Acquire) {
            return;
        }
        let now = started.elapsed().as_millis() as u64;
        host.clock_ms.store(now, Ordering::Relaxed);
        if let Some(after_ms) = hibernate_ms {
            host.hibernate_idle(now, after_ms);
        }
        let Some(idle_ms) = idle_ms else { continue };
        for shard in host.registry.iter() {
            let mut reg = shard.lock();
            while reg
                .oldest()
                .is_some_and(|(_, used_ms)| now.saturating_sub(used_ms) >= idle_ms)
            {
                if let Some((k, e)) = reg.pop_oldest() {
                    reg.evict(k, e);
                }
            }
        }
    }
}
