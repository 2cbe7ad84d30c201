//! # Aether
//!
//! Virtual, event-sourced actors in Rust: on one machine with an embedded durable store, and
//! on a cluster coordinated through NATS JetStream.
//!
//! You write a state type, one handler per command type that decides events, and a pure
//! `apply` that folds them. The runtime activates an actor on its first message by replaying
//! its snapshot and events, runs one command at a time, stores every state change as an event
//! with optimistic concurrency, and passivates the actor when it goes idle. Each command type
//! declares its reply type, so `ask(Add(2))` returns a `u64`, checked by the compiler.
//!
//! ```no_run
//! use aether::prelude::*;
//!
//! #[aether::data]
//! pub struct Add(pub u64);
//!
//! #[aether::data]
//! pub enum CounterEvent { Added(u64) }
//!
//! #[aether::data]
//! #[derive(Debug)]
//! pub enum CounterError { Overflow }
//! impl std::fmt::Display for CounterError {
//!     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
//!         f.write_str("overflow")
//!     }
//! }
//! impl std::error::Error for CounterError {}
//!
//! #[aether::data]
//! #[derive(Default, EventSourcedActor)]
//! #[actor(kind = "counter", event = CounterEvent, error = CounterError, commands(Add -> u64))]
//! pub struct Counter { total: u64 }
//!
//! impl Handle<Add> for Counter {
//!     async fn handle(&self, Add(n): Add, _: &mut Ctx<Self>)
//!         -> Result<Effect<Self, u64>, CounterError> {
//!         self.total.checked_add(n).ok_or(CounterError::Overflow)?;
//!         Ok(Effect::persist(CounterEvent::Added(n)).reply_with(|c: &Self| c.total))
//!     }
//! }
//!
//! impl Behavior for Counter {
//!     fn apply(&mut self, event: &CounterEvent) {
//!         match event { CounterEvent::Added(n) => self.total += n }
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let rt = Runtime::builder().namespace("demo").register::<Counter>().start().await?;
//! let counter = rt.actor::<Counter>("clicks")?;
//! assert_eq!(counter.ask(Add(2)).await?, 2);
//! rt.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! This crate re-exports `aether-runtime` (see its modules for the details), the derive macro
//! [`EventSourcedActor`], the [`macro@data`] attribute and `serde`. Start with [`prelude`].

#![deny(missing_docs)]

pub use aether_macros::{EventSourcedActor, data};
pub use aether_runtime::*;

/// Everything an actor author needs: `use aether::prelude::*;`.
///
/// `Serialize` and `Deserialize` are serde's derives; in a crate without a `serde` dependency
/// of its own use [`#[aether::data]`](macro@crate::data) instead.
pub mod prelude {
    pub use crate::EventSourcedActor;
    pub use aether_runtime::{
        ActorRef, AskError, AskOptions, Behavior, CallError, ClusterConfig, CodecError, Command,
        CommandId, Ctx, Effect, Handle, OldEvent, OldState, Persist, Runtime,
    };
    pub use serde::{Deserialize, Serialize};
}

/// Re-export of `serde`, for the prelude's derive macros.
pub use serde;
