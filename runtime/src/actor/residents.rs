//! The table of resident activations and the signal that one has stopped.
//!
//! [`Residents`] holds the activations of one shard of the host's table (a table of at least
//! `SHARDED_FROM` entries is split into `RESIDENT_SHARDS` of them, so two cores rarely take the
//! same lock): lookups by `(kind, id)` without cloning the id, the exact order of their last
//! uses (the least recently used is passivated beyond the cap), and the activations asked to
//! stop that have not finished yet, so a new activation of the same actor waits for its
//! predecessor ([`Done`]).

use std::any::Any;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use hashbrown::HashTable;

use super::mailbox::LastUse;
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

/// A resident activation's mailbox, as the registry sees it (whatever the actor's type).
pub(super) trait ResidentMailbox: Send + Sync {
    /// Asks the activation to passivate: closes its mailbox behind the request, so whatever
    /// is sent later comes back to the registry (and waits for a new activation).
    fn passivate(&self);
    /// When the actor was last used.
    fn last_use(&self) -> &LastUse;
    /// The typed mailbox (`mailbox::Sender<Msg<A>>`), for a downcast.
    fn as_any(&self) -> &dyn Any;
}

pub(super) struct Entry {
    /// The activation's mailbox.
    pub(super) sender: Box<dyn ResidentMailbox>,
    /// Closes (the sender is dropped) when the activation has fully stopped.
    pub(super) done: Done,
    pub(super) generation: u64,
    /// The activation's outbox (to see whether durable effects are waiting).
    pub(super) outbox: Arc<super::delivery::OutboxCell>,
}

/// Registries of at least this capacity are split into [`RESIDENT_SHARDS`] shards: less
/// contention on the ask path (with 64, two cores rarely take the same lock). The cap and the
/// order stay global: the shards share one count of residents, and past the cap the host
/// passivates the least recently used of the shards' least recently used actors, compared by
/// the order of their last use (`Host::enforce_cap`). Activations racing on other cores may
/// pass the cap for a moment; each then passivates one, so the count returns to it.
pub(super) const SHARDED_FROM: usize = 4096;
pub(super) const RESIDENT_SHARDS: usize = 64;

/// A place in the order of uses: an activation (by generation and key hash) and its last use
/// when the mark was made (or renewed).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Mark {
    seq: u64,
    generation: u64,
    hash: u64,
}

/// One shard of the host's registry: its activations, the order of their last uses, and
/// the activations asked to stop that have not finished yet.
///
/// **The order is exact without being kept on every use.** A use only stamps the actor's
/// [`LastUse`] — from the registry, or from an `ActorRef` that delivers straight into the
/// mailbox without the registry's lock. The order is a min-heap with one *mark* per
/// activation, made when it is added: a mark's `seq` is never newer than its actor's last use.
/// To find the least recently used, the top mark is compared with its actor's stamp: stale
/// (used since), it is renewed with the stamp and sinks; current, it is the answer — every
/// other actor's last use is at least its mark, which is at least the top's. Each renewal
/// pays for uses that happened since, so a use costs one atomic store, and finding the least
/// recently used a logarithmic amount per use since the last search. Marks of activations
/// removed in other ways are dropped when they reach the top, and all are rebuilt when they
/// outnumber the activations twice.
pub(crate) struct Residents {
    /// The activations, hashed by their key's precomputed hash.
    table: HashTable<(RegKey, Entry)>,
    /// The order of uses, least recent on top (see the type docs).
    order: BinaryHeap<Reverse<Mark>>,
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
            table: HashTable::new(),
            order: BinaryHeap::new(),
            capacity: capacity.max(1),
            total,
            stopping: HashMap::new(),
        }
    }

    /// The resident activation of `key`.
    pub(super) fn get(&self, key: &dyn KeyView) -> Option<&Entry> {
        self.table
            .find(key.key_hash(), |(k, _)| k as &dyn KeyView == key)
            .map(|(_, e)| e)
    }

    /// Whether `key` has a resident activation.
    pub(super) fn contains(&self, key: &dyn KeyView) -> bool {
        self.get(key).is_some()
    }

    /// Resident activations in this shard.
    pub(super) fn len(&self) -> usize {
        self.table.len()
    }

    /// The resident activations, in no order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&RegKey, &Entry)> {
        self.table.iter().map(|(k, e)| (k, e))
    }

    /// Adds a resident activation; its mailbox's last use places it. (One already resident
    /// under the key — the registry never does this — is replaced and asked to stop.)
    pub(super) fn put(&mut self, key: RegKey, entry: Entry) {
        let mark = Mark {
            seq: entry.sender.last_use().seq(),
            generation: entry.generation,
            hash: key.hash,
        };
        match self
            .table
            .entry(key.hash, |(k, _)| k == &key, |(k, _)| k.hash)
        {
            hashbrown::hash_table::Entry::Occupied(mut found) => {
                let old = std::mem::replace(&mut found.get_mut().1, entry);
                self.evict(key, old);
            }
            hashbrown::hash_table::Entry::Vacant(room) => {
                room.insert((key, entry));
                self.total.fetch_add(1, Ordering::AcqRel);
            }
        }
        self.order.push(Reverse(mark));
    }

    /// Removes a resident activation.
    pub(super) fn pop(&mut self, key: &dyn KeyView) -> Option<Entry> {
        let found = self
            .table
            .find_entry(key.key_hash(), |(k, _)| k as &dyn KeyView == key)
            .ok()?;
        let ((_, entry), _) = found.remove();
        self.total.fetch_sub(1, Ordering::AcqRel);
        if self.order.len() > 2 * self.table.len() + 32 {
            self.rebuild_order();
        }
        Some(entry)
    }

    /// The least recently used activation's last use (its place in the host's order of uses,
    /// and the coarse clock then); renews stale marks on the way (see the type docs).
    pub(super) fn oldest(&mut self) -> Option<(u64, u64)> {
        loop {
            let mut top = self.order.peek_mut()?;
            let Reverse(mark) = *top;
            match self
                .table
                .find(mark.hash, |(_, e)| e.generation == mark.generation)
            {
                None => {
                    // Removed by other means: its mark goes.
                    std::collections::binary_heap::PeekMut::pop(top);
                }
                Some((_, e)) => {
                    let used = e.sender.last_use();
                    let seq = used.seq();
                    if seq > mark.seq {
                        // Used since: the mark sinks to its place.
                        top.0.seq = seq;
                    } else {
                        return Some((mark.seq, used.ms()));
                    }
                }
            }
        }
    }

    /// Removes this shard's least recently used activation.
    pub(super) fn pop_oldest(&mut self) -> Option<(RegKey, Entry)> {
        self.oldest()?;
        let Reverse(mark) = self.order.pop()?;
        let found = self
            .table
            .find_entry(mark.hash, |(_, e)| e.generation == mark.generation)
            .ok()?;
        let (popped, _) = found.remove();
        self.total.fetch_sub(1, Ordering::AcqRel);
        Some(popped)
    }

    /// Removes every resident activation.
    pub(super) fn take_all(&mut self) -> Vec<(RegKey, Entry)> {
        let all: Vec<(RegKey, Entry)> = self.table.drain().collect();
        self.total.fetch_sub(all.len(), Ordering::AcqRel);
        self.order.clear();
        all
    }

    /// One current mark per activation, the orphans dropped.
    fn rebuild_order(&mut self) {
        let marks: Vec<Reverse<Mark>> = self
            .table
            .iter()
            .map(|(k, e)| {
                Reverse(Mark {
                    seq: e.sender.last_use().seq(),
                    generation: e.generation,
                    hash: k.hash,
                })
            })
            .collect();
        self.order = BinaryHeap::from(marks);
    }

    pub(super) fn evict(&mut self, key: RegKey, entry: Entry) {
        entry.sender.passivate();
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

    /// A resident entry for tests: its mailbox (to stamp uses) and the entry.
    fn resident(generation: u64) -> (super::super::mailbox::Sender<u32>, Entry) {
        struct Plain(super::super::mailbox::Sender<u32>);
        impl ResidentMailbox for Plain {
            fn passivate(&self) {}
            fn last_use(&self) -> &LastUse {
                self.0.last_use()
            }
            fn as_any(&self) -> &dyn Any {
                self
            }
        }
        let (tx, rx) = super::super::mailbox::channel::<u32>(1);
        std::mem::forget(rx);
        let (done_tx, done) = done_channel();
        std::mem::forget(done_tx);
        let entry = Entry {
            sender: Box::new(Plain(tx.clone())),
            done,
            generation,
            outbox: Arc::default(),
        };
        (tx, entry)
    }

    #[test]
    fn the_least_recently_used_is_exact_when_uses_only_stamp_the_mailbox() {
        let mut residents = Residents::new(usize::MAX, Arc::default());
        let mut mailboxes = Vec::new();
        let mut seq = 0u64;
        for i in 0..100u64 {
            let (tx, entry) = resident(i);
            seq += 1;
            tx.last_use().touch(seq, seq);
            residents.put(
                RegKey::new("counter", ActorId::new(format!("c-{i}")).expect("id")),
                entry,
            );
            mailboxes.push(tx);
        }
        // Used again, without the registry, in a scrambled order: 37 × i mod 100.
        for i in 0..100u64 {
            seq += 1;
            mailboxes[(i * 37 % 100) as usize]
                .last_use()
                .touch(seq, seq);
        }
        // One removed by other means leaves a mark behind that must not count.
        let gone = Borrowed::new("counter", "c-0");
        assert!(residents.pop(&gone).is_some());
        let mut order = Vec::new();
        while let Some((key, _)) = residents.pop_oldest() {
            order.push(key.id.as_str().to_owned());
        }
        let expected: Vec<String> = (1..100u64)
            .map(|i| i * 37 % 100)
            .filter(|&n| n != 0)
            .map(|n| format!("c-{n}"))
            .collect();
        assert_eq!(order, expected);
        assert_eq!(residents.len(), 0);
        assert_eq!(residents.total.load(Ordering::Acquire), 0);
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
