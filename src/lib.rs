//! # Aether
//!
//! Virtual, event-sourced actors in Rust: on one machine with an embedded durable store, and
//! (in progress) on a cluster coordinated through NATS JetStream.
//!
//! You write a state type, a command handler that decides events, and a pure `apply` that folds
//! them. The runtime activates an actor on its first message by replaying its snapshot and
//! events, runs one command at a time, stores every state change as an event with optimistic
//! concurrency, and passivates the actor when it goes idle.
//!
//! ```no_run
//! use aether::prelude::*;
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! pub enum CounterCmd { Add(u64), Get }
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! pub enum CounterEvent { Added(u64) }
//!
//! #[derive(Debug, Serialize, Deserialize, thiserror::Error)]
//! pub enum CounterError { #[error("overflow")] Overflow }
//!
//! #[derive(Debug, Default, Serialize, Deserialize, EventSourcedActor)]
//! #[actor(kind = "counter", command = CounterCmd, event = CounterEvent,
//!         reply = u64, error = CounterError)]
//! pub struct Counter { total: u64 }
//!
//! impl Behavior for Counter {
//!     async fn handle(&self, cmd: CounterCmd, _ctx: &mut Ctx<Self>)
//!         -> Result<Effect<Self>, CounterError> {
//!         match cmd {
//!             CounterCmd::Add(n) => {
//!                 let total = self.total.checked_add(n).ok_or(CounterError::Overflow)?;
//!                 Ok(Effect::persist(CounterEvent::Added(n)).reply(total))
//!             }
//!             CounterCmd::Get => Ok(Effect::reply(self.total)),
//!         }
//!     }
//!     fn apply(&mut self, event: &CounterEvent) {
//!         match event { CounterEvent::Added(n) => self.total += n }
//!     }
//! }
//!
//! # async fn run() -> anyhow::Result<()> {
//! let rt = Runtime::builder().namespace("demo")?.register::<Counter>().start().await?;
//! let counter = rt.actor::<Counter>("clicks")?;
//! assert_eq!(counter.ask(CounterCmd::Add(2)).await?, 2);
//! rt.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! This crate re-exports `aether-runtime` (see its modules for the details) and the derive
//! macro. Start with [`prelude`].

pub use aether_macros::EventSourcedActor;
pub use aether_runtime::*;

/// Everything an actor author needs: `use aether::prelude::*;`.
pub mod prelude {
    pub use crate::EventSourcedActor;
    pub use aether_runtime::{
        ActorRef, AskError, AskOptions, Behavior, ClusterConfig, Command, CommandId, Ctx, Effect,
        Handle, Runtime, TellError,
    };
    pub use serde::{Deserialize, Serialize};
}

/// Re-export of `serde`, for the prelude's derive macros.
pub use serde;
