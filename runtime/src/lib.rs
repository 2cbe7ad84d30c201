//! The Aether runtime: virtual, event-sourced actors.
//!
//! Users normally depend on the facade crate `aether`, which re-exports this crate together
//! with `#[derive(EventSourcedActor)]`. The rooms of this crate:
//!
//! | module | what lives there |
//! |---|---|
//! | [`actor`] | the actor contract ([`Handle`] per [`Command`], [`Behavior`], [`Effect`]), handles ([`ActorRef`]), turns, activation and passivation |
//! | [`store`] | the [`EventStore`](store::EventStore) / [`SnapshotStore`](store::SnapshotStore) contracts and their backends |
//! | [`cluster`] | membership, leader lease, shard map: who owns which shard |
//! | [`routing`] | shard hashing, "who owns this shard", remote delivery over NATS |
//! | [`bus`] | the event bus: live subscriptions, durable subscriptions, projections |
//! | [`wire`] | envelopes and the codec: what is stored and sent |
//! | [`workflow`] | durable effects (an outbox), reminders, deadlock detection |
//! | [`names`] | namespaces, kinds, actor ids and their encoding |
//! | [`config`] | every timeout and bound, with defaults |
//! | [`errors`] | errors of ask, tell and start |
//! | `metrics` | what a node measures: the facade's handles and the Prometheus endpoint (`docs/metrics.md`) |
//! | [`runtime`](mod@runtime) | [`Runtime`] and its builder |
//!
//! # The path of a command
//!
//! `ActorRef::ask` → the shard owner (this node, on a single node) → the actor's mailbox,
//! activating it on first use by loading its snapshot and replaying its events → the command's
//! `Handle::handle` decides events and a reply → the events are appended as one commit at the
//! actor's version (a conflict means a stale activation, which reloads) → `apply` folds them →
//! the reply.

#![deny(missing_docs)]
// No `unwrap` in library code: a panic there is a bug the user cannot catch. Tests may.
#![deny(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

/// An item public under the `test-util` feature (this workspace's tests and benches use it)
/// and crate-private otherwise: `test_util! { pub fn ... }`, `test_util! { pub use ...; }`.
macro_rules! test_util {
    ($(#[$meta:meta])* pub $($item:tt)*) => {
        #[cfg(feature = "test-util")]
        $(#[$meta])*
        pub $($item)*
        #[cfg(not(feature = "test-util"))]
        $(#[$meta])*
        #[allow(dead_code, unused_imports)]
        pub(crate) $($item)*
    };
}

pub mod actor;
pub mod bus;
pub mod cluster;
pub mod config;
pub mod connection;
test_util! {
    pub mod decoders;
}
pub mod errors;
pub(crate) mod metrics;
pub mod names;
pub(crate) mod opentelemetry;
pub mod routing;
pub mod runtime;
pub mod store;
pub mod supervision;
pub mod wire;
pub mod workflow;

pub use actor::RefError;
pub use actor::{
    ActorRef, AskOptions, Behavior, Command, Ctx, Effect, EventSourcedActor, Handle, OldEvent,
    OldState, Persist,
};
pub use bus::{Bus, BusEvent, Filter, IdPattern, Pattern, Projection, ReadModel, SystemEvent};
pub use cluster::{Cluster, ClusterConfig, ClusterEvent, ClusterView};
pub use config::RuntimeConfig;
pub use connection::{ConnectError, NatsConfig};
pub use errors::{AskError, CallError, RetrySafety, StartError};
pub use names::{ActorId, ActorKey, Kind, NameError, Namespace};
/// The ractor this runtime is built on (the same version), for [`supervision`].
pub use ractor;
pub use runtime::{Runtime, RuntimeBuilder, RuntimeStats};
pub use store::StoreError;
pub use wire::{CodecError, CommandId, EventEnvelope};
