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

/// The key of a resident activation: its kind, its id, and their hash (computed once, and
/// used both to pick the registry shard and inside the shard's map).
#[derive(Clone)]
pub(crate) struct RegKey {
    pub(super) kind: &'static str,
    pub(super) id: ActorId,
    hash: u64,
}

impl RegKey {
    pub(super) fn new(kind: &'static str, id: ActorId) -> Self {
        let hash = key_hash(kind, id.as_str());
        RegKey { kind, id, hash }
    }

    /// Takes a borrowed key's hash along, instead of hashing again.
    pub(super) fn from_view(view: &Borrowed<'_>, kind: &'static str, id: ActorId) -> Self {
        RegKey {
            kind,
            id,
            hash: view.hash,
        }
    }
}

impl PartialEq for RegKey {
    fn eq(&self, other: &Self) -> bool {
        (self as &dyn KeyView) == (other as &dyn KeyView)
    }
}

impl Eq for RegKey {}

/// The hash of a registry key: eight bytes at a time, multiply and rotate (in the manner of
/// rustc's FxHash), with the lengths mixed in so `("ab", "c")` and `("a", "bc")` differ. One
/// pass per ask, where hashing byte by byte for the shard and again for the map took two.
pub(super) fn key_hash(kind: &str, id: &str) -> u64 {
    const K: u64 = 0xf135_7aea_2e62_a9c5;
    let mut h: u64 = (kind.len() as u64) << 32 | id.len() as u64;
    for part in [kind.as_bytes(), id.as_bytes()] {
        let mut chunks = part.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            h = (h ^ u64::from_le_bytes(word))
                .wrapping_mul(K)
                .rotate_left(26);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            h = (h ^ u64::from_le_bytes(word))
                .wrapping_mul(K)
                .rotate_left(26);
        }
    }
    // Spread the high bits down: the shard is picked from the low bits.
    h ^ (h >> 29)
}

/// A borrowed view of a [`RegKey`], so lookups need no `ActorId` clone (an atomic
/// increment and decrement on a counter shared with the actor, on the hottest path).
pub(super) trait KeyView {
    fn kind(&self) -> &str;
    fn id(&self) -> &str;
    fn key_hash(&self) -> u64;
}

impl KeyView for RegKey {
    fn kind(&self) -> &str {
        self.kind
    }
    fn id(&self) -> &str {
        self.id.as_str()
    }
    fn key_hash(&self) -> u64 {
        self.hash
    }
}

/// A key made of borrowed strings, hashed once.
pub(super) struct Borrowed<'a> {
    kind: &'a str,
    id: &'a str,
    pub(super) hash: u64,
}

impl<'a> Borrowed<'a> {
    pub(super) fn new(kind: &'a str, id: &'a str) -> Self {
        Borrowed {
            kind,
            id,
            hash: key_hash(kind, id),
        }
    }

    /// A view whose hash the caller computed before (with [`key_hash`] of the same strings).
    pub(super) fn hashed(kind: &'a str, id: &'a str, hash: u64) -> Self {
        debug_assert_eq!(hash, key_hash(kind, id), "a stale key hash");
        Borrowed { kind, id, hash }
    }
}

impl KeyView for Borrowed<'_> {
    fn kind(&self) -> &str {
        self.kind
    }
    fn id(&self) -> &str {
        self.id
    }
    fn key_hash(&self) -> u64 {
        self.hash
    }
}

impl<'a> std::borrow::Borrow<dyn KeyView + 'a> for RegKey {
    fn borrow(&self) -> &(dyn KeyView + 'a) {
        self
    }
}

impl std::hash::Hash for dyn KeyView + '_ {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.key_hash());
    }
}

impl PartialEq for dyn KeyView + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.key_hash() == other.key_hash()
            && self.id() == other.id()
            && self.kind() == other.kind()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_hash_apart_and_spread_over_the_shards() {
        assert_ne!(key_hash("ab", "c"), key_hash("a", "bc"));
        assert_ne!(key_hash("counter", "x"), key_hash("counter", "x\0"));
        assert_eq!(key_hash("counter", "c-1"), key_hash("counter", "c-1"));
        // 64 000 ids over 64 shards: each shard within a fifth of its fair share.
        let mut per_shard = [0usize; RESIDENT_SHARDS];
        for i in 0..64_000 {
            let id = format!("account-{i}");
            per_shard[(key_hash("account", &id) % RESIDENT_SHARDS as u64) as usize] += 1;
        }
        let (min, max) = (per_shard.iter().min(), per_shard.iter().max());
        assert!(
            min.is_some_and(|&m| m >= 800) && max.is_some_and(|&m| m <= 1200),
            "{per_shard:?}"
        );
    }

    #[test]
    fn a_borrowed_view_finds_its_owned_key() {
        let mut map: HashMap<RegKey, u32> = HashMap::new();
        let id = ActorId::new("c-7").expect("id");
        map.insert(RegKey::new("counter", id), 7);
        let view = Borrowed::new("counter", "c-7");
        assert_eq!(map.get(&view as &dyn KeyView), Some(&7));
        let other = Borrowed::new("counter", "c-8");
        assert_eq!(map.get(&other as &dyn KeyView), None);
    }
}
