//! What travels on the bus: actor events with their envelopes, and system events.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::pattern::{events_topic, system_topic};
use crate::actor::Behavior;
use crate::names::{ActorKey, Namespace};
use crate::wire::{CodecError, EventEnvelope};

/// One message on the bus: its topic and what it carries. Subscribers receive it as
/// `Arc<BusEvent>`, shared by every subscriber it is delivered to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusEvent {
    topic: String,
    body: EventBody,
}

/// What a [`BusEvent`] carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventBody {
    /// An event stored by an actor, with its full envelope (version, type, payload, ids).
    Actor(EventEnvelope),
    /// Something the store, the runtime or the cluster did.
    System(SystemEnvelope),
}

/// A system event with where and when it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemEnvelope {
    /// The namespace it concerns.
    pub namespace: Namespace,
    /// When it was published, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Who published it: the node id in a cluster, else the bus instance id.
    pub origin: String,
    /// What happened.
    pub event: SystemEvent,
}

/// Store, runtime and cluster happenings, published on `<ns>.system.<Name>`
/// ([`SystemEvent::name`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum SystemEvent {
    /// A commit was stored: its events follow on the actor's topic.
    EventStored {
        /// The actor.
        actor: ActorKey,
        /// Version of the commit's first event.
        first_version: u64,
        /// Version of its last event.
        last_version: u64,
        /// The event type names, in order.
        event_types: Vec<String>,
    },
    /// An append lost an optimistic-concurrency race (a stale activation, which reloads).
    VersionConflict {
        /// The actor.
        actor: ActorKey,
        /// The version the activation expected.
        expected: u64,
        /// The version in the store.
        actual: u64,
    },
    /// A snapshot of an actor's state was saved.
    SnapshotCreated {
        /// The actor.
        actor: ActorKey,
        /// The version of the last event in the snapshot.
        version: u64,
    },
    /// A live subscription was created on this bus.
    SubscriptionCreated {
        /// The subscription's id (unique per bus).
        id: u64,
        /// Its pattern.
        pattern: String,
        /// Its filter, as text.
        filter: String,
    },
    /// A node joined the cluster.
    NodeJoined {
        /// The node.
        node: String,
    },
    /// A node left the cluster gracefully.
    NodeLeft {
        /// The node.
        node: String,
    },
    /// The leader declared a node failed.
    NodeFailed {
        /// The node.
        node: String,
    },
    /// A node became leader.
    LeaderElected {
        /// The leader.
        node: String,
        /// Its term.
        term: u64,
    },
    /// A node stopped being leader.
    LeadershipLost {
        /// The node.
        node: String,
        /// The term it held.
        term: u64,
    },
    /// A shard got an owner in a published map.
    ShardAssigned {
        /// The shard.
        shard: u32,
        /// Its owner.
        node: String,
        /// The map's epoch.
        epoch: u64,
    },
    /// A shard moved to this node (published by the new owner once it serves the shard).
    ShardMigrated {
        /// The shard.
        shard: u32,
        /// The previous owner, if any.
        from: Option<String>,
        /// The new owner.
        to: String,
        /// The map's epoch.
        epoch: u64,
        /// From adopting the map to serving the shard (the old owner's drain included).
        after: Duration,
        /// The old owner did not release in time and the shard was taken anyway.
        forced: bool,
    },
    /// What this bus published in the last interval for the namespace: opt in with
    /// `Runtime::builder().bus_publish_notices(every)` (or [`BusConfig::publish_notices`](super::BusConfig::publish_notices)).
    /// One notice per interval aggregates every publish (actor and system events, not the
    /// notices themselves), so following publications costs one counter update per event.
    EventsPublished {
        /// The interval the counts cover.
        interval: Duration,
        /// Events published.
        published: u64,
        /// Deliveries to local subscribers.
        delivered: u64,
        /// Deliveries dropped because a local subscriber's buffer was full.
        dropped: u64,
        /// Events queued for other nodes over NATS.
        forwarded: u64,
    },
    /// A node stopped the activations of shards it lost and released them.
    ShardsReleased {
        /// The shards.
        shards: Vec<u32>,
        /// The map's epoch.
        epoch: u64,
        /// Actors passivated.
        actors: usize,
        /// How long the drain took.
        after: Duration,
    },
}

impl SystemEvent {
    /// The event's name, which is also the last token of its topic and its type name for
    /// [filters](super::Filter): `EventStored`, `VersionConflict`, ...
    pub fn name(&self) -> &'static str {
        match self {
            SystemEvent::EventStored { .. } => "EventStored",
            SystemEvent::VersionConflict { .. } => "VersionConflict",
            SystemEvent::SnapshotCreated { .. } => "SnapshotCreated",
            SystemEvent::SubscriptionCreated { .. } => "SubscriptionCreated",
            SystemEvent::NodeJoined { .. } => "NodeJoined",
            SystemEvent::NodeLeft { .. } => "NodeLeft",
            SystemEvent::NodeFailed { .. } => "NodeFailed",
            SystemEvent::LeaderElected { .. } => "LeaderElected",
            SystemEvent::LeadershipLost { .. } => "LeadershipLost",
            SystemEvent::ShardAssigned { .. } => "ShardAssigned",
            SystemEvent::ShardMigrated { .. } => "ShardMigrated",
            SystemEvent::ShardsReleased { .. } => "ShardsReleased",
            SystemEvent::EventsPublished { .. } => "EventsPublished",
        }
    }

    /// The actor the event concerns, if any.
    pub fn actor(&self) -> Option<&ActorKey> {
        match self {
            SystemEvent::EventStored { actor, .. }
            | SystemEvent::VersionConflict { actor, .. }
            | SystemEvent::SnapshotCreated { actor, .. } => Some(actor),
            _ => None,
        }
    }
}

impl BusEvent {
    test_util! {
        /// An actor event, on `<ns>.events.<kind>.<encoded-id>`.
        pub fn actor(envelope: EventEnvelope) -> BusEvent {
            BusEvent {
                topic: events_topic(&envelope.actor),
                body: EventBody::Actor(envelope),
            }
        }
    }

    /// A system event, on `<ns>.system.<Name>`.
    pub(crate) fn system(envelope: SystemEnvelope) -> BusEvent {
        BusEvent {
            topic: system_topic(&envelope.namespace, envelope.event.name()),
            body: EventBody::System(envelope),
        }
    }

    /// Rebuilds an event from its body (as received over the wire). Fails when the body is
    /// inconsistent: an envelope whose namespace is not its actor's.
    pub(crate) fn from_body(body: EventBody) -> Result<BusEvent, String> {
        match body {
            EventBody::Actor(envelope) => {
                if envelope.namespace != envelope.actor.namespace {
                    return Err(format!(
                        "envelope of namespace {} names actor {}",
                        envelope.namespace, envelope.actor
                    ));
                }
                Ok(BusEvent::actor(envelope))
            }
            EventBody::System(envelope) => {
                if let Some(actor) = envelope.event.actor()
                    && actor.namespace != envelope.namespace
                {
                    return Err(format!(
                        "system event of namespace {} names actor {actor}",
                        envelope.namespace
                    ));
                }
                Ok(BusEvent::system(envelope))
            }
        }
    }

    /// The topic the event was published on.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// What the event carries.
    pub fn body(&self) -> &EventBody {
        &self.body
    }

    /// The namespace the event belongs to.
    pub fn namespace(&self) -> &Namespace {
        match &self.body {
            EventBody::Actor(e) => &e.namespace,
            EventBody::System(s) => &s.namespace,
        }
    }

    /// The event's type name: the actor event's type (`Deposited`) or the system event's name.
    pub fn event_type(&self) -> &str {
        match &self.body {
            EventBody::Actor(e) => &e.event_type,
            EventBody::System(s) => s.event.name(),
        }
    }

    /// The actor the event comes from or concerns, if any.
    pub fn actor_key(&self) -> Option<&ActorKey> {
        match &self.body {
            EventBody::Actor(e) => Some(&e.actor),
            EventBody::System(s) => s.event.actor(),
        }
    }

    /// The envelope of an actor event.
    pub fn envelope(&self) -> Option<&EventEnvelope> {
        match &self.body {
            EventBody::Actor(e) => Some(e),
            EventBody::System(_) => None,
        }
    }

    /// The system event, if this is one.
    pub fn system_event(&self) -> Option<&SystemEvent> {
        match &self.body {
            EventBody::Actor(_) => None,
            EventBody::System(s) => Some(&s.event),
        }
    }

    /// The event decoded as one of actor type `A`'s events: `Ok(None)` when it is a system
    /// event or comes from another kind, an error when it comes from `A`'s kind and its
    /// payload does not decode (written by other code, or corrupt).
    ///
    /// ```
    /// # use aether_runtime::{Behavior, BusEvent};
    /// fn on_event<A: Behavior>(event: &BusEvent) -> Result<(), aether_runtime::wire::CodecError>
    /// where
    ///     A::Event: std::fmt::Debug,
    /// {
    ///     if let Some(decoded) = event.decode::<A>()? {
    ///         println!("{decoded:?}");
    ///     }
    ///     Ok(())
    /// }
    /// ```
    pub fn decode<A: Behavior>(&self) -> Result<Option<A::Event>, CodecError> {
        match &self.body {
            EventBody::Actor(e) => decode_envelope::<A>(e),
            _ => Ok(None),
        }
    }
}

/// `envelope`'s event as one of actor type `A`'s, upcast from an older event version (see
/// [`Behavior::upcast_event`]); `Ok(None)` when it comes from another kind.
pub(crate) fn decode_envelope<A: Behavior>(
    envelope: &EventEnvelope,
) -> Result<Option<A::Event>, CodecError> {
    if envelope.actor.kind.as_str() != A::KIND {
        return Ok(None);
    }
    crate::actor::decode_event::<A>(
        &envelope.event_type,
        envelope.schema_version,
        &envelope.payload,
    )
    .map(Some)
}
