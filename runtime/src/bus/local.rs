//! In-process delivery: the subscription registry, fan-out into bounded buffers, and the
//! [`Subscription`] handle.
//!
//! # Never blocking the publisher
//!
//! Every subscription owns a bounded buffer (`bus_buffer` events, 1 024 by default). Publishing
//! walks the subscriptions whose namespace matches, and for each one whose pattern and filter
//! accept the event, *tries* to put it in the buffer: there is room → `delivered` + 1; the
//! buffer is full → the event is dropped **for that subscriber only** and its `dropped` + 1.
//! Nothing waits. A stalled subscriber loses events and says how many; the publisher and every
//! other subscriber go on at full speed (DESIGN §14.7).
//!
//! # Namespace isolation
//!
//! Subscriptions are indexed by namespace: publishing an event of namespace `bank` only looks at
//! subscriptions made for `bank` and at those that opted in to every namespace. A subscription
//! for `shop` is never even considered (DESIGN §14.6).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Weak;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc;

use super::event::BusEvent;
use super::filter::Filter;
use super::pattern::Pattern;
use crate::names::Namespace;

/// The id of a subscription, unique per bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionId(pub u64);

impl std::fmt::Display for SubscriptionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sub-{}", self.0)
    }
}

/// What kind of subscription a [`SubscriptionInfo`] describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionKind {
    /// Live, one namespace.
    Live,
    /// Live, every namespace (opted in with `subscribe_all_namespaces`).
    AllNamespaces,
    /// A durable subscription of this name (stored events, resumes after downtime).
    Durable(String),
    /// A projection of this name.
    Projection(String),
}

/// One subscription and its counters, as listed by [`Bus::subscriptions`](super::Bus::subscriptions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionInfo {
    /// Its id.
    pub id: SubscriptionId,
    /// What kind it is.
    pub kind: SubscriptionKind,
    /// Its pattern.
    pub pattern: Pattern,
    /// Its filter.
    pub filter: Filter,
    /// The namespace it is confined to (`None`: every namespace).
    pub namespace: Option<Namespace>,
    /// Events put in its buffer (live) or handed to its consumer (durable, projection).
    pub delivered: u64,
    /// Events dropped because its buffer was full (always 0 for durable kinds, which never drop:
    /// they read at their own pace from the store).
    pub dropped: u64,
    /// Events waiting in its buffer now.
    pub pending: usize,
    /// Its buffer's size (0 for durable kinds).
    pub capacity: usize,
    /// When it was created, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
}

/// The registry's record of one subscription.
pub(crate) struct Slot {
    pub id: SubscriptionId,
    pub kind: SubscriptionKind,
    pub pattern: Pattern,
    pub filter: Filter,
    pub namespace: Option<Namespace>,
    /// The buffer's sending side; `None` for durable kinds (listed, never fanned out to).
    tx: Option<mpsc::Sender<Arc<BusEvent>>>,
    capacity: usize,
    pub delivered: AtomicU64,
    pub dropped: AtomicU64,
    created_at_ms: u64,
}

/// What happened to one offered event.
pub(crate) enum Offer {
    Delivered,
    Dropped,
    Closed,
}

impl Slot {
    /// Puts `event` in the buffer if there is room; never waits.
    pub fn offer(&self, event: &Arc<BusEvent>) -> Offer {
        let Some(tx) = &self.tx else {
            return Offer::Closed;
        };
        match tx.try_send(Arc::clone(event)) {
            Ok(()) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                Offer::Delivered
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                let before = self.dropped.fetch_add(1, Ordering::Relaxed);
                // Say so the first time, then at every power of two: visible, not a flood.
                let n = before + 1;
                if n.is_power_of_two() {
                    tracing::warn!(
                        target: "aether::bus",
                        subscription = %self.id,
                        pattern = %self.pattern,
                        dropped = n,
                        "subscriber buffer full: events dropped for this subscriber"
                    );
                }
                Offer::Dropped
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Offer::Closed,
        }
    }

    pub fn info(&self) -> SubscriptionInfo {
        let pending = self
            .tx
            .as_ref()
            .map_or(0, |tx| tx.max_capacity() - tx.capacity());
        SubscriptionInfo {
            id: self.id,
            kind: self.kind.clone(),
            pattern: self.pattern.clone(),
            filter: self.filter.clone(),
            namespace: self.namespace.clone(),
            delivered: self.delivered.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            pending,
            capacity: self.capacity,
            created_at_ms: self.created_at_ms,
        }
    }
}

#[derive(Default)]
struct Index {
    by_namespace: HashMap<Namespace, Vec<Arc<Slot>>>,
    all_namespaces: Vec<Arc<Slot>>,
}

/// Every subscription of one bus.
#[derive(Default)]
pub(crate) struct Subscriptions {
    index: RwLock<Index>,
    /// Live subscriptions in `index` (a fast "anyone listening?" check).
    live: AtomicUsize,
    /// Every subscription, for listing (durable kinds included).
    listed: Mutex<Vec<Arc<Slot>>>,
    next_id: AtomicU64,
}

/// What one fan-out did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Fanout {
    /// Subscribers that received the event.
    pub delivered: usize,
    /// Subscribers whose buffer was full.
    pub dropped: usize,
}

impl Subscriptions {
    pub fn next_id(&self) -> SubscriptionId {
        SubscriptionId(self.next_id.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// Whether any live subscription could receive events of `namespace`.
    pub fn has_live(&self, namespace: &Namespace) -> bool {
        if self.live.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let index = self.index.read();
        !index.all_namespaces.is_empty() || index.by_namespace.contains_key(namespace)
    }

    /// A live slot with a buffer of `capacity`, and the buffer's receiving side.
    pub fn live_slot(
        &self,
        pattern: Pattern,
        filter: Filter,
        namespace: Option<Namespace>,
        capacity: usize,
    ) -> (Arc<Slot>, mpsc::Receiver<Arc<BusEvent>>) {
        let capacity = capacity.max(1);
        let (tx, rx) = mpsc::channel(capacity);
        let kind = if namespace.is_some() {
            SubscriptionKind::Live
        } else {
            SubscriptionKind::AllNamespaces
        };
        let slot = Arc::new(Slot {
            id: self.next_id(),
            kind,
            pattern,
            filter,
            namespace,
            tx: Some(tx),
            capacity,
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            created_at_ms: crate::wire::now_ms(),
        });
        (slot, rx)
    }

    /// A slot that is only listed (durable subscriptions, projections).
    pub fn tracked_slot(
        &self,
        kind: SubscriptionKind,
        pattern: Pattern,
        filter: Filter,
        namespace: Option<Namespace>,
    ) -> Arc<Slot> {
        let slot = Arc::new(Slot {
            id: self.next_id(),
            kind,
            pattern,
            filter,
            namespace,
            tx: None,
            capacity: 0,
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            created_at_ms: crate::wire::now_ms(),
        });
        self.listed.lock().push(Arc::clone(&slot));
        slot
    }

    /// Starts fanning out to `slot`.
    pub fn insert_live(&self, slot: &Arc<Slot>) {
        let mut index = self.index.write();
        match &slot.namespace {
            Some(ns) => index
                .by_namespace
                .entry(ns.clone())
                .or_default()
                .push(Arc::clone(slot)),
            None => index.all_namespaces.push(Arc::clone(slot)),
        }
        self.live.fetch_add(1, Ordering::Relaxed);
        drop(index);
        self.listed.lock().push(Arc::clone(slot));
    }

    /// Forgets a subscription.
    pub fn remove(&self, id: SubscriptionId) {
        {
            let mut index = self.index.write();
            let mut removed = 0;
            index.by_namespace.retain(|_, slots| {
                let before = slots.len();
                slots.retain(|s| s.id != id);
                removed += before - slots.len();
                !slots.is_empty()
            });
            let before = index.all_namespaces.len();
            index.all_namespaces.retain(|s| s.id != id);
            removed += before - index.all_namespaces.len();
            if removed > 0 {
                self.live.fetch_sub(removed, Ordering::Relaxed);
            }
        }
        self.listed.lock().retain(|s| s.id != id);
    }

    /// Offers `event` to every live subscription that wants it. Never waits.
    pub fn fan_out(&self, event: &Arc<BusEvent>) -> Fanout {
        let mut out = Fanout::default();
        if self.live.load(Ordering::Relaxed) == 0 {
            return out;
        }
        let index = self.index.read();
        let exact = index
            .by_namespace
            .get(event.namespace())
            .map_or(&[][..], Vec::as_slice);
        for slot in exact.iter().chain(index.all_namespaces.iter()) {
            if slot.pattern.matches(event.topic()) && slot.filter.matches(event) {
                match slot.offer(event) {
                    Offer::Delivered => out.delivered += 1,
                    Offer::Dropped => out.dropped += 1,
                    Offer::Closed => {}
                }
            }
        }
        out
    }

    /// Every subscription with its counters, oldest first.
    pub fn list(&self) -> Vec<SubscriptionInfo> {
        let mut all: Vec<SubscriptionInfo> = self.listed.lock().iter().map(|s| s.info()).collect();
        all.sort_by_key(|s| s.id);
        all
    }
}

/// A live subscription: events arrive in its bounded buffer; read them with
/// [`recv`](Subscription::recv) or as a `Stream`. Dropping it unsubscribes.
///
/// Events from one publisher arrive in the order they were published. When the buffer is full,
/// new events are dropped for this subscription and counted ([`Subscription::info`]).
#[must_use = "a subscription receives nothing once dropped"]
pub struct Subscription {
    rx: mpsc::Receiver<Arc<BusEvent>>,
    slot: Arc<Slot>,
    registry: Weak<Subscriptions>,
    /// Forwards events from other nodes (NATS bus only); aborted on drop.
    remote: Option<tokio::task::JoinHandle<()>>,
}

impl Subscription {
    pub(crate) fn new(
        rx: mpsc::Receiver<Arc<BusEvent>>,
        slot: Arc<Slot>,
        registry: Weak<Subscriptions>,
        remote: Option<tokio::task::JoinHandle<()>>,
    ) -> Self {
        Subscription {
            rx,
            slot,
            registry,
            remote,
        }
    }

    /// Its id.
    pub fn id(&self) -> SubscriptionId {
        self.slot.id
    }

    /// Its pattern.
    pub fn pattern(&self) -> &Pattern {
        &self.slot.pattern
    }

    /// Its filter.
    pub fn filter(&self) -> &Filter {
        &self.slot.filter
    }

    /// The next event; waits for one. `None` once the bus is gone.
    pub async fn recv(&mut self) -> Option<Arc<BusEvent>> {
        self.rx.recv().await
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<Arc<BusEvent>> {
        self.rx.try_recv().ok()
    }

    /// Its counters now.
    pub fn info(&self) -> SubscriptionInfo {
        self.slot.info()
    }
}

impl futures_util::Stream for Subscription {
    type Item = Arc<BusEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(task) = self.remote.take() {
            task.abort();
        }
        if let Some(registry) = self.registry.upgrade() {
            registry.remove(self.slot.id);
        }
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.slot.id)
            .field("pattern", &self.slot.pattern)
            .finish()
    }
}

/// Removes a listed slot when dropped (durable subscriptions, projections).
pub(crate) struct Listed {
    pub slot: Arc<Slot>,
    registry: Weak<Subscriptions>,
}

impl Listed {
    pub fn new(slot: Arc<Slot>, registry: Weak<Subscriptions>) -> Self {
        Listed { slot, registry }
    }
}

impl Drop for Listed {
    fn drop(&mut self) {
        if let Some(registry) = self.registry.upgrade() {
            registry.remove(self.slot.id);
        }
    }
}
