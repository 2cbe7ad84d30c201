//! The table of resident activations and the signal that one has stopped.
//!
//! [`Residents`] is one LRU of the activations of one shard of the host's table (a table of
//! at least `SHARDED_FROM` entries is split into `RESIDENT_SHARDS` of them, so two cores
//! rarely take the same lock): lookups by `(kind, id)` without cloning the id, the least
//! recently used passivated beyond the cap, and the activations asked to stop that have not
//! finished yet, so a new activation of the same actor waits for its predecessor ([`Done`]).

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use lru::LruCache;

use crate::names::ActorId;

#[derive(Clone, PartialEq, Eq)]
pub(crate) struct RegKey {
    pub(super) kind: &'static str,
    pub(super) id: ActorId,
}

/// A borrowed view of a [`RegKey`], so lookups need no `ActorId` clone (an atomic
/// increment and decrement on a counter shared with the actor, on the hottest path).
pub(super) trait KeyView {
    fn kind(&self) -> &str;
    fn id(&self) -> &str;
}

impl KeyView for RegKey {
    fn kind(&self) -> &str {
        self.kind
    }
    fn id(&self) -> &str {
        self.id.as_str()
    }
}

impl KeyView for (&str, &str) {
    fn kind(&self) -> &str {
        self.0
    }
    fn id(&self) -> &str {
        self.1
    }
}

impl<'a> std::borrow::Borrow<dyn KeyView + 'a> for RegKey {
    fn borrow(&self) -> &(dyn KeyView + 'a) {
        self
    }
}

impl std::hash::Hash for dyn KeyView + '_ {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.kind().hash(state);
        self.id().hash(state);
    }
}

impl PartialEq for dyn KeyView + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.kind() == other.kind() && self.id() == other.id()
    }
}

impl Eq for dyn KeyView + '_ {}

impl std::hash::Hash for RegKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self as &dyn KeyView).hash(state);
    }
}

pub(super) struct Entry {
    /// `mailbox::Sender<Msg<A>>` for the actor's type `A`.
    pub(super) sender: Box<dyn Any + Send + Sync>,
    /// Asks the activation behind `sender` to passivate.
    pub(super) passivate: fn(&(dyn Any + Send + Sync)),
    /// Closes (the sender is dropped) when the activation has fully stopped.
    pub(super) done: Done,
    pub(super) generation: u64,
    /// The coarse clock at its last use (idle passivation).
    pub(super) last_used_ms: u64,
    /// Its last use's place in the host's order of uses (`Host::use_seq`): orders the least
    /// recently used actors of different shards (the cap's victim).
    pub(super) used_seq: u64,
    /// The activation's outbox (to see whether durable effects are waiting).
    pub(super) outbox: Arc<super::delivery::OutboxCell>,
}

/// Registries of at least this capacity are split into [`RESIDENT_SHARDS`] shards, each an LRU
/// of its own: less contention on the ask path (with 64, two cores rarely take the same lock).
/// The cap and the order stay global: the shards share one count of residents, and past the
/// cap the host passivates the least recently used of the shards' least recently used actors,
/// compared by the order of their last use (`Host::enforce_cap`). Activations racing on other
/// cores may pass the cap for a moment; each then passivates one, so the count returns to it.
pub(super) const SHARDED_FROM: usize = 4096;
pub(super) const RESIDENT_SHARDS: usize = 64;

pub(crate) struct Residents {
    /// The activations, least recently used first. Read and promote through it; add and
    /// remove through [`Residents::put`], [`Residents::pop`] and [`Residents::pop_lru`], which
    /// keep the shared count.
    pub(super) resident: LruCache<RegKey, Entry>,
    /// This shard's own cap: the host's when it is the only shard, unbounded otherwise (the
    /// host enforces the cap across shards).
    pub(super) capacity: usize,
    /// Residents of every shard of the host's table.
    total: Arc<AtomicUsize>,
    /// Activations asked to stop that have not finished yet.
    pub(super) stopping: HashMap<RegKey, (u64, Done)>,
}

impl Residents {
    pub(super) fn new(capacity: usize, total: Arc<AtomicUsize>) -> Self {
        Residents {
            resident: LruCache::unbounded(),
            capacity: capacity.max(1),
            total,
            stopping: HashMap::new(),
        }
    }

    /// Adds (or replaces) a resident activation, most recently used.
    pub(super) fn put(&mut self, key: RegKey, entry: Entry) {
        if self.resident.put(key, entry).is_none() {
            self.total.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Removes a resident activation.
    pub(super) fn pop<Q>(&mut self, key: &Q) -> Option<Entry>
    where
        RegKey: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let entry = self.resident.pop(key)?;
        self.total.fetch_sub(1, Ordering::AcqRel);
        Some(entry)
    }

    /// Removes this shard's least recently used activation.
    pub(super) fn pop_lru(&mut self) -> Option<(RegKey, Entry)> {
        let popped = self.resident.pop_lru()?;
        self.total.fetch_sub(1, Ordering::AcqRel);
        Some(popped)
    }

    pub(super) fn evict(&mut self, key: RegKey, entry: Entry) {
        (entry.passivate)(&*entry.sender);
        self.stopping.insert(key, (entry.generation, entry.done));
    }
}

/// The signal that an activation has fully stopped: fired when the [`DoneTx`] is dropped.
/// (Lighter than a `watch` channel, which carries eight wait lists: one of these lives as long
/// as each resident actor.)
pub(super) struct DoneSignal {
    pub(super) fired: AtomicBool,
    pub(super) waiters: tokio::sync::Notify,
}

/// The activation's end of the stop signal: dropping it fires the signal.
pub(crate) struct DoneTx(Arc<DoneSignal>);

/// A waiter's end of the stop signal.
#[derive(Clone)]
pub(crate) struct Done(Arc<DoneSignal>);

/// A new, unfired stop signal.
pub(crate) fn done_channel() -> (DoneTx, Done) {
    let signal = Arc::new(DoneSignal {
        fired: AtomicBool::new(false),
        waiters: tokio::sync::Notify::new(),
    });
    (DoneTx(Arc::clone(&signal)), Done(signal))
}

impl Drop for DoneTx {
    fn drop(&mut self) {
        self.0.fired.store(true, Ordering::Release);
        self.0.waiters.notify_waiters();
    }
}

/// Waits until the activation behind `done` has stopped (its [`DoneTx`] is dropped).
pub(crate) async fn wait_done(done: Done) {
    loop {
        let woken = done.0.waiters.notified();
        let mut woken = std::pin::pin!(woken);
        // Registered before the check, so a signal fired in between is not missed.
        woken.as_mut().enable();
        if done.0.fired.load(Ordering::Acquire) {
            return;
        }
        woken.await;
    }
}
