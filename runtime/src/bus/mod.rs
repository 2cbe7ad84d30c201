//! The event bus: react to what actors store, without coupling to the actors.
//!
//! Events are the complete history of an Aether system. The bus lets other parts of it — read
//! models, sagas, integrations, other services — follow that history as it is written. Every
//! event an actor stores is published on the bus automatically, with its envelope (actor,
//! version, type, payload, command and correlation ids), right after its commit is durable.
//!
//! ```ignore
//! let mut deposits = rt
//!     .bus()
//!     .subscribe("bank.events.account.*", Filter::all().event_types(["Deposited"]))
//!     .await?;
//! while let Some(event) = deposits.recv().await {
//!     let envelope = event.envelope().expect("an actor event");
//!     println!("{} v{}: {}", envelope.actor, envelope.version, envelope.event_type);
//! }
//! ```
//!
//! # Topics, patterns, filters
//!
//! Every message has a topic that starts with its namespace: `<ns>.events.<kind>.<encoded-id>`
//! for actor events (the same subjects the JetStream store keeps them under) and
//! `<ns>.system.<Name>` for system events. A subscription names a [`Pattern`] with NATS
//! semantics (`*` one token, `>` the rest) and a [`Filter`] on event types and actor ids
//! ([`IdPattern`] globs over the *decoded* id). See [`pattern`] and [`filter`].
//!
//! # Namespace isolation is the default; wildcards are an opt-in
//!
//! [`Bus::subscribe`] accepts only patterns whose first token names one namespace, and such a
//! subscription never sees another namespace's events — locally (subscriptions are indexed by
//! namespace) or over NATS (the subject carries the namespace, and an incoming event whose body
//! names another namespace than its subject is dropped and counted). Seeing several namespaces
//! (`*.events.>`, `>`) takes the explicit [`Bus::subscribe_all_namespaces`]: a security-relevant
//! choice, made visible in code review and in [`Bus::subscriptions`]
//! ([`SubscriptionKind::AllNamespaces`]).
//!
//! # Live delivery never blocks
//!
//! A live subscription has a bounded buffer; a publisher *offers* each event and never waits.
//! A full buffer drops the event for that subscriber only and counts it. Publishing to NATS goes
//! through a bounded queue drained by a background task; a full queue drops and counts too
//! ([`BusStats::remote_dropped`]). So an actor's turn never waits on the bus.
//!
//! # Live or durable?
//!
//! | | live ([`Bus::subscribe`]) | durable ([`Bus::durable`]) / [projection](Projection) |
//! |---|---|---|
//! | reads | what is published while subscribed | the event store, from a stored position |
//! | a slow consumer | loses events (counted) | falls behind, loses nothing |
//! | downtime | events meanwhile are missed | resumes where it stopped, in order |
//! | system events | yes | no (only stored actor events) |
//! | where | every bus | durable: NATS bus on JetStream; projections: every store |
//!
//! # Across nodes
//!
//! A bus made with [`Bus::with_nats`] (every runtime on JetStream or in a cluster gets one)
//! also publishes each event on core NATS, on the live subject
//! `aether.<ns>.bus.<topic without the namespace>` (for example
//! `aether.bank.bus.events.account.alice`; this never overlaps the routing subjects
//! `aether.<ns>.shard.>`), and each live subscription also subscribes there. Messages carry the
//! publishing bus's id in the `Aether-Bus-Origin` header; a bus drops its own echoes, so a local
//! subscriber receives each local event exactly once, and remote subscribers receive it too.
//! A bus sends a namespace's events to NATS only while some bus listens there, without
//! weakening what `subscribe` promises: see [`interest`].
//!
//! Durable subscriptions are JetStream consumers on the namespace's existing event stream
//! (`<ns>_events`, filter subject = the pattern): no second copy of the data. See [`durable`].
//! Projections build read models with exactly-once effects; see [`projection`].
//!
//! # System events
//!
//! The runtime publishes, on `<ns>.system.<Name>`: [`EventStored`](SystemEvent::EventStored)
//! per commit, [`VersionConflict`](SystemEvent::VersionConflict),
//! [`SnapshotCreated`](SystemEvent::SnapshotCreated),
//! [`SubscriptionCreated`](SystemEvent::SubscriptionCreated), and on cluster nodes the cluster's
//! events (`NodeJoined`, `LeaderElected`, `ShardAssigned`, ...). Publishing itself is observable
//! three ways: [`Bus::stats`] (counters), a `trace`-level `EventPublished` record on target
//! `aether::bus` per event, and — opt in with [`BusConfig::publish_notices`] or
//! `Runtime::builder().bus_publish_notices(every)` — an
//! [`EventsPublished`](SystemEvent::EventsPublished) system event per namespace and interval,
//! which subscribers filter on like any other (`<ns>.system.EventsPublished`), locally and
//! across nodes. A notice aggregates an interval rather than echoing each publish, so turning
//! it on costs one counter update per event, not a second publish.

pub mod durable;
mod errors;
mod event;
pub mod filter;
pub mod interest;
pub(crate) mod local;
mod nats;
pub mod pattern;
pub mod projection;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use durable::{DurableSubscription, Offset, StoredEvent};
pub use errors::{DurableError, ProjectionError, PublishError, SubscribeError};
pub use event::{BusEvent, EventBody, SystemEnvelope, SystemEvent};
pub use filter::{Filter, IdPattern, IdPatternError};
pub use local::{Subscription, SubscriptionId, SubscriptionInfo, SubscriptionKind};
pub use pattern::{Pattern, PatternError};
pub use projection::{
    Projection, ProjectionOptions, ProjectionState, ProjectionStatus, ReadModel, ReadModelError,
};

use crate::names::Namespace;
use crate::wire::{CommitRecord, EventEnvelope, now_ms};
use local::Subscriptions;

/// Settings of a [`Bus`]. The runtime fills them from [`RuntimeConfig`](crate::RuntimeConfig)
/// (`bus_buffer`, `bus_outbound_buffer`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusConfig {
    /// Events buffered per live subscription before new ones are dropped for it.
    pub buffer: usize,
    /// Events queued for NATS before new ones are dropped (NATS bus only).
    pub outbound_buffer: usize,
    /// How this bus names itself in system events and echo suppression; a random id when
    /// `None`. Cluster nodes use their node id.
    pub origin: Option<String>,
    /// Publish [`SystemEvent::EventsPublished`] on `<ns>.system.EventsPublished` every this
    /// often, for each namespace that published something (needs a tokio runtime when the bus
    /// is made); `None` (the default): no notices.
    pub publish_notices: Option<Duration>,
    /// Send every event to NATS, even while no bus listens in its namespace (NATS bus only).
    /// Off by default: a bus probes who listens and stays quiet where nobody does (see
    /// [`interest`]). Turn it on for plain NATS subscribers that do not answer the probe.
    pub forward_unheard: bool,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            buffer: crate::config::defaults::BUS_BUFFER,
            outbound_buffer: crate::config::defaults::BUS_OUTBOUND_BUFFER,
            origin: None,
            publish_notices: None,
            forward_unheard: false,
        }
    }
}

/// Options of one live subscription.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Its buffer size; the bus's default when `None`.
    pub buffer: Option<usize>,
    /// Accept a pattern that spans namespaces (see the [module docs](self)).
    pub all_namespaces: bool,
}

/// The bus's counters, from [`Bus::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BusStats {
    /// Events published on this bus (actor and system).
    pub published: u64,
    /// Deliveries into local subscription buffers (one event, three subscribers: three).
    pub delivered: u64,
    /// Deliveries dropped because a subscriber's buffer was full.
    pub dropped: u64,
    /// Live subscriptions now.
    pub subscriptions: usize,
    /// Events sent to NATS.
    pub remote_sent: u64,
    /// Events not sent to NATS because the outbound queue was full, or the send failed.
    pub remote_dropped: u64,
    /// Events not sent to NATS because no bus listened in their namespace (see [`interest`]).
    pub remote_unheard: u64,
    /// Events received from other nodes (per subscription).
    pub remote_received: u64,
    /// This bus's own events coming back from NATS, ignored.
    pub echoes_ignored: u64,
    /// Events from NATS that did not decode or named another topic than their subject, and
    /// batches whose size or framing did not hold (see `bus::nats`).
    pub malformed: u64,
}

/// What [`Bus::publish`] did with one event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishReceipt {
    /// Local subscribers that received it.
    pub delivered: usize,
    /// Local subscribers whose buffer was full (it was dropped for them, and counted).
    pub dropped: usize,
    /// Whether it was queued for other nodes.
    pub forwarded: bool,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub published: AtomicU64,
    pub delivered: AtomicU64,
    pub dropped: AtomicU64,
    pub remote_sent: AtomicU64,
    pub remote_dropped: AtomicU64,
    pub remote_unheard: AtomicU64,
    pub remote_received: AtomicU64,
    pub echoes_ignored: AtomicU64,
    pub malformed: AtomicU64,
}

impl Counters {
    pub fn bump(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }
}

struct Inner {
    origin: String,
    config: BusConfig,
    registry: Arc<Subscriptions>,
    counters: Arc<Counters>,
    nats: Option<nats::NatsSide>,
    /// Per namespace, what was published since the last notice (only with notices on).
    notices: Option<parking_lot::Mutex<HashMap<Namespace, Published>>>,
}

/// Where an event published now can go.
#[derive(Clone, Copy)]
struct Reach {
    /// Some local live subscription may match.
    local: bool,
    /// Some bus may listen on NATS.
    remote: bool,
}

impl Reach {
    fn any(self) -> bool {
        self.local || self.remote
    }
}

/// What one namespace published in the current notice interval.
#[derive(Default)]
struct Published {
    published: u64,
    delivered: u64,
    dropped: u64,
    forwarded: u64,
}

/// The event bus of one or more runtimes. Cheap to clone; clones share everything.
///
/// A runtime makes its own bus (a local one, or a NATS one when it runs on JetStream or in a
/// cluster) unless given one with `RuntimeBuilder::bus`; several runtimes of one process can
/// share a bus that way. See the [module docs](self).
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

/// Anything that names a pattern: `&str`, `String`, [`Pattern`].
pub trait IntoPattern {
    /// Parses (or passes through) the pattern.
    fn into_pattern(self) -> Result<Pattern, PatternError>;
}

impl IntoPattern for Pattern {
    fn into_pattern(self) -> Result<Pattern, PatternError> {
        Ok(self)
    }
}

impl IntoPattern for &Pattern {
    fn into_pattern(self) -> Result<Pattern, PatternError> {
        Ok(self.clone())
    }
}

impl IntoPattern for &str {
    fn into_pattern(self) -> Result<Pattern, PatternError> {
        Pattern::parse(self)
    }
}

impl IntoPattern for String {
    fn into_pattern(self) -> Result<Pattern, PatternError> {
        Pattern::parse(&self)
    }
}

impl IntoPattern for &String {
    fn into_pattern(self) -> Result<Pattern, PatternError> {
        Pattern::parse(self)
    }
}

fn random_origin() -> String {
    format!(
        "bus-{:016x}",
        crate::wire::CommandId::random().as_u128() as u64
    )
}

impl Default for Bus {
    fn default() -> Self {
        Bus::local()
    }
}

impl Bus {
    /// A bus inside this process, with default settings.
    pub fn local() -> Bus {
        Bus::local_with(BusConfig::default())
    }

    /// A bus inside this process.
    pub fn local_with(config: BusConfig) -> Bus {
        Bus::build(config, |_, _, _| None)
    }

    fn build(
        config: BusConfig,
        nats: impl FnOnce(&str, &BusConfig, &Arc<Counters>) -> Option<nats::NatsSide>,
    ) -> Bus {
        let origin = config.origin.clone().unwrap_or_else(random_origin);
        let counters = Arc::new(Counters::default());
        let nats = nats(&origin, &config, &counters);
        let every = config.publish_notices;
        let bus = Bus {
            inner: Arc::new(Inner {
                origin,
                config,
                registry: Arc::new(Subscriptions::default()),
                counters,
                nats,
                notices: every.map(|_| parking_lot::Mutex::new(HashMap::new())),
            }),
        };
        if let (Some(every), Ok(handle)) = (every, tokio::runtime::Handle::try_current()) {
            handle.spawn(notify(Arc::downgrade(&bus.inner), every));
        }
        bus
    }

    /// How this bus names itself (`Aether-Bus-Origin`, system events' `origin`).
    pub fn origin(&self) -> &str {
        &self.inner.origin
    }

    /// Its settings.
    pub fn config(&self) -> &BusConfig {
        &self.inner.config
    }

    /// Whether events also travel between nodes over NATS.
    pub fn is_distributed(&self) -> bool {
        self.inner.nats.is_some()
    }

    /// Whether publishing an event of `namespace` might reach anyone: a local subscription, or
    /// NATS. The runtime skips building envelopes when it would not. Asked before a commit is
    /// stored, so it does not consult the interest probes: someone may subscribe meanwhile.
    pub(crate) fn wants(&self, namespace: &Namespace) -> bool {
        self.inner.nats.is_some() || self.inner.registry.has_live(namespace)
    }

    /// Where an event of `namespace` published now goes: to local subscriptions (when any may
    /// match), and whether to NATS (when some bus may listen there).
    fn reach(&self, namespace: &Namespace) -> Reach {
        Reach {
            local: self.inner.registry.has_live(namespace),
            remote: self
                .inner
                .nats
                .as_ref()
                .is_some_and(|nats| nats.heard(namespace)),
        }
    }

    /// Counts `n` events that reached nobody: not a local subscription, and no bus listened
    /// on NATS. A local bus does not count them at all (it never did); a NATS bus counts them
    /// as published and not sent, and so do its notices, except for notices themselves
    /// (`noticed` false).
    fn unheard(&self, namespace: &Namespace, n: u64, noticed: bool) {
        if self.inner.nats.is_some() {
            let counters = &self.inner.counters;
            Counters::bump(&counters.published, n);
            Counters::bump(&counters.remote_unheard, n);
            if noticed && let Some(notices) = &self.inner.notices {
                notices
                    .lock()
                    .entry(namespace.clone())
                    .or_default()
                    .published += n;
            }
        }
    }

    /// Publishes an actor event to its namespace. `namespace` must be the envelope's (and its
    /// actor's). Never waits: see the [module docs](self#live-delivery-never-blocks).
    pub fn publish(
        &self,
        namespace: &Namespace,
        event: EventEnvelope,
    ) -> Result<PublishReceipt, PublishError> {
        for found in [&event.namespace, &event.actor.namespace] {
            if found != namespace {
                return Err(PublishError::NamespaceMismatch {
                    target: namespace.clone(),
                    event: found.clone(),
                });
            }
        }
        let reach = self.reach(namespace);
        Ok(self.send(Arc::new(BusEvent::actor(event)), reach.remote))
    }

    test_util! {
        /// Publishes a system event on `<ns>.system.<Name>`. Never waits.
        pub fn publish_system(&self, namespace: &Namespace, event: SystemEvent) -> PublishReceipt {
            let reach = self.reach(namespace);
            if !reach.any() {
                let noticed = !matches!(event, SystemEvent::EventsPublished { .. });
                self.unheard(namespace, 1, noticed);
                return PublishReceipt::default();
            }
            self.send(
                Arc::new(BusEvent::system(SystemEnvelope {
                    namespace: namespace.clone(),
                    timestamp_ms: now_ms(),
                    origin: self.inner.origin.clone(),
                    event,
                })),
                reach.remote,
            )
        }
    }

    /// Publishes every event of a stored commit, in version order, then `EventStored`.
    pub(crate) fn publish_commit(&self, record: &CommitRecord) {
        let namespace = &record.actor.namespace;
        let reach = self.reach(namespace);
        if !reach.any() {
            self.unheard(namespace, record.events.len() as u64 + 1, true);
            return;
        }
        for envelope in record.envelopes() {
            self.send(Arc::new(BusEvent::actor(envelope)), reach.remote);
        }
        let stored = SystemEvent::EventStored {
            actor: record.actor.clone(),
            first_version: record.first_version,
            last_version: record.last_version(),
            event_types: record.events.iter().map(|e| e.event_type.clone()).collect(),
        };
        self.send(
            Arc::new(BusEvent::system(SystemEnvelope {
                namespace: namespace.clone(),
                timestamp_ms: now_ms(),
                origin: self.inner.origin.clone(),
                event: stored,
            })),
            reach.remote,
        );
    }

    /// Offers `event` to the local subscriptions, and queues it for NATS when `remote`.
    fn send(&self, event: Arc<BusEvent>, remote: bool) -> PublishReceipt {
        let inner = &self.inner;
        Counters::bump(&inner.counters.published, 1);
        let fanout = inner.registry.fan_out(&event);
        Counters::bump(&inner.counters.delivered, fanout.delivered as u64);
        Counters::bump(&inner.counters.dropped, fanout.dropped as u64);
        let forwarded = match &inner.nats {
            Some(nats) if remote => nats.enqueue(&event),
            Some(_) => {
                Counters::bump(&inner.counters.remote_unheard, 1);
                false
            }
            None => false,
        };
        if let Some(notices) = &inner.notices
            && !matches!(
                event.body(),
                EventBody::System(SystemEnvelope {
                    event: SystemEvent::EventsPublished { .. },
                    ..
                })
            )
        {
            let mut notices = notices.lock();
            let counts = notices.entry(event.namespace().clone()).or_default();
            counts.published += 1;
            counts.delivered += fanout.delivered as u64;
            counts.dropped += fanout.dropped as u64;
            counts.forwarded += u64::from(forwarded);
        }
        tracing::trace!(
            target: "aether::bus",
            event = "EventPublished",
            topic = event.topic(),
            delivered = fanout.delivered,
            dropped = fanout.dropped,
            forwarded,
        );
        PublishReceipt {
            delivered: fanout.delivered,
            dropped: fanout.dropped,
            forwarded,
        }
    }

    /// Subscribes to the live events of one namespace that match `pattern` and `filter`.
    ///
    /// The pattern must name its namespace (`bank.events.>`); a pattern that spans namespaces
    /// fails with [`SubscribeError::CrossNamespace`] — use
    /// [`subscribe_all_namespaces`](Bus::subscribe_all_namespaces) to opt in. On a NATS bus the
    /// subscription is active on the server when this returns.
    pub async fn subscribe(
        &self,
        pattern: impl IntoPattern,
        filter: Filter,
    ) -> Result<Subscription, SubscribeError> {
        self.subscribe_with(pattern, filter, SubscribeOptions::default())
            .await
    }

    /// Like [`subscribe`](Bus::subscribe), accepting patterns that span namespaces (`*` or `>`
    /// as the first token): this subscriber sees other namespaces' events. A security-relevant
    /// choice: see the [module docs](self#namespace-isolation-is-the-default-wildcards-are-an-opt-in).
    pub async fn subscribe_all_namespaces(
        &self,
        pattern: impl IntoPattern,
        filter: Filter,
    ) -> Result<Subscription, SubscribeError> {
        let options = SubscribeOptions {
            all_namespaces: true,
            ..SubscribeOptions::default()
        };
        self.subscribe_with(pattern, filter, options).await
    }

    /// Subscribes with explicit options (buffer size, namespace opt-in).
    pub async fn subscribe_with(
        &self,
        pattern: impl IntoPattern,
        filter: Filter,
        options: SubscribeOptions,
    ) -> Result<Subscription, SubscribeError> {
        let pattern = pattern.into_pattern()?;
        let namespace = match pattern.namespace_name() {
            Some(ns) => Some(Namespace::new(ns).map_err(|e| {
                SubscribeError::Pattern(PatternError {
                    pattern: pattern.to_string(),
                    reason: e.to_string(),
                })
            })?),
            None if options.all_namespaces => None,
            None => {
                return Err(SubscribeError::CrossNamespace {
                    pattern: pattern.to_string(),
                });
            }
        };
        let inner = &self.inner;
        let capacity = options.buffer.unwrap_or(inner.config.buffer);
        let (slot, rx) =
            inner
                .registry
                .live_slot(pattern.clone(), filter.clone(), namespace.clone(), capacity);
        let remote = match &inner.nats {
            Some(nats) => Some(nats.subscribe_remote(&slot).await?),
            None => None,
        };
        // Announce before fanning out to it: a subscription does not see its own creation.
        if let Some(ns) = &namespace {
            self.publish_system(
                ns,
                SystemEvent::SubscriptionCreated {
                    id: slot.id.0,
                    pattern: pattern.to_string(),
                    filter: filter.to_string(),
                },
            );
        }
        inner.registry.insert_live(&slot);
        tracing::info!(
            target: "aether::bus",
            event = "SubscriptionCreated",
            id = %slot.id,
            %pattern,
            %filter,
            all_namespaces = namespace.is_none(),
            "subscription created"
        );
        Ok(Subscription::new(
            rx,
            slot,
            Arc::downgrade(&inner.registry),
            remote,
        ))
    }

    /// A durable subscription: the stored events of one namespace matching `pattern` and
    /// `filter`, from where subscription `name` last acknowledged, in order. Needs the NATS bus
    /// and the namespace's events in JetStream; see [`durable`].
    pub async fn durable(
        &self,
        name: &str,
        pattern: impl IntoPattern,
        filter: Filter,
    ) -> Result<DurableSubscription, DurableError> {
        let pattern = pattern.into_pattern()?;
        let namespace = durable::check_durable(name, &pattern)?;
        let Some(nats) = &self.inner.nats else {
            return Err(DurableError::Unsupported(
                "this bus is local: durable subscriptions need the NATS bus on JetStream \
                 (projections work on every store)"
                    .into(),
            ));
        };
        let source = nats.durable_source(&namespace, name, &pattern).await?;
        let slot = self.inner.registry.tracked_slot(
            SubscriptionKind::Durable(name.to_owned()),
            pattern.clone(),
            filter.clone(),
            Some(namespace),
        );
        let listed = local::Listed::new(slot, Arc::downgrade(&self.inner.registry));
        Ok(DurableSubscription::new(
            name.to_owned(),
            filter,
            Box::new(source),
            listed,
        ))
    }

    /// Deletes durable subscription `name` of `namespace` (its position is forgotten).
    /// `Ok(false)` when there was none.
    pub async fn delete_durable(
        &self,
        namespace: &Namespace,
        name: &str,
    ) -> Result<bool, DurableError> {
        match &self.inner.nats {
            Some(nats) => {
                nats.delete_consumer(namespace, &durable::consumer_name(name))
                    .await
            }
            None => Ok(false),
        }
    }

    /// Every subscription (live, durable, projection) with its counters, oldest first.
    pub fn subscriptions(&self) -> Vec<SubscriptionInfo> {
        self.inner.registry.list()
    }

    /// The bus's counters.
    pub fn stats(&self) -> BusStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BusStats {
            published: get(&c.published),
            delivered: get(&c.delivered),
            dropped: get(&c.dropped),
            subscriptions: self
                .inner
                .registry
                .list()
                .iter()
                .filter(|s| {
                    matches!(
                        s.kind,
                        SubscriptionKind::Live | SubscriptionKind::AllNamespaces
                    )
                })
                .count(),
            remote_sent: get(&c.remote_sent),
            remote_dropped: get(&c.remote_dropped),
            remote_unheard: get(&c.remote_unheard),
            remote_received: get(&c.remote_received),
            echoes_ignored: get(&c.echoes_ignored),
            malformed: get(&c.malformed),
        }
    }

    /// Waits until every event queued for NATS has been handed to the server, at most a few
    /// seconds (no-op on a local bus).
    pub async fn flush(&self) {
        if let Some(nats) = &self.inner.nats {
            nats.flush().await;
        }
    }

    pub(crate) fn registry(&self) -> &Arc<Subscriptions> {
        &self.inner.registry
    }

    pub(crate) fn nats(&self) -> Option<&nats::NatsSide> {
        self.inner.nats.as_ref()
    }
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("origin", &self.inner.origin)
            .field("distributed", &self.is_distributed())
            .finish()
    }
}

/// Publishes an `EventsPublished` notice every `every` for each namespace that published
/// something, until the bus is gone.
async fn notify(bus: std::sync::Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = bus.upgrade() else { return };
        let window = match &inner.notices {
            Some(notices) => std::mem::take(&mut *notices.lock()),
            None => return,
        };
        let bus = Bus { inner };
        for (namespace, counts) in window {
            bus.publish_system(
                &namespace,
                SystemEvent::EventsPublished {
                    interval: every,
                    published: counts.published,
                    delivered: counts.delivered,
                    dropped: counts.dropped,
                    forwarded: counts.forwarded,
                },
            );
        }
    }
}
