//! Actors: the contract users implement, the handles they call through, and the machinery that
//! activates, runs and passivates them.
//!
//! - The contract: [`EventSourcedActor`] (state, and the command/event/reply types), a
//!   [`Command`] type per command with its reply type, one [`Handle`] impl per command type
//!   (the deciding `handle`), and [`Behavior`] (the pure fold, `apply`).
//!   `#[derive(EventSourcedActor)]` writes the first two from
//!   `#[actor(..., commands(Deposit -> u64, ...))]`.
//! - [`Effect`]: what a handler returns — events to persist, durable effects, and the reply
//!   (given, or read from the folded state with [`Persist::reply_with`]).
//! - [`ActorRef`]: a typed, serializable handle; `ask` waits for a reply, `tell` does not.
//! - [`Ctx`]: the handler's view of its turn, and how it asks other actors.
//!
//! Actors are *virtual*: they always exist, conceptually. The first message to an actor
//! activates it by replaying its snapshot and events; idle actors are passivated and come back
//! on the next message with identical state. Calls between actors of one node never touch the
//! network. This module never talks to NATS or the cluster; it asks
//! [`routing`](crate::routing) who owns a shard.

mod activation;
mod actor_ref;
mod clock;
mod context;
mod contract;
mod delivery;
pub(crate) mod host;
mod inbox;
mod mailbox;
pub(crate) mod remote;
mod residents;

pub(crate) use actor_ref::make_ref;
pub use actor_ref::{ActorRef, AskOptions, RefError};
pub use context::Ctx;
pub(crate) use contract::decode_event;
pub use contract::{
    Behavior, Command, Effect, EventSourcedActor, Handle, OldEvent, OldState, Persist,
};
