//! The contract between a user's actor and the runtime.

use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::context::Ctx;

/// An event-sourced actor type: its state, and the types of its commands, events and replies.
///
/// Implemented by `#[derive(EventSourcedActor)]` from the `#[actor(...)]` attribute; the
/// behaviour itself lives in [`Behavior`]. The state is the struct the derive sits on: it starts
/// as [`Default`] and changes only by [`Behavior::apply`]ing stored events.
pub trait EventSourcedActor:
    Default + Serialize + DeserializeOwned + Send + Sync + Sized + 'static
{
    /// The kind name (`[A-Za-z0-9_-]`, 1–64 characters), unique within a namespace.
    const KIND: &'static str;
    /// Take a snapshot every this many events (`None`: only on passivation).
    const SNAPSHOT_EVERY: Option<u64> = None;
    /// Commands the actor accepts.
    type Command: Serialize + DeserializeOwned + Send + 'static;
    /// Events the actor persists.
    type Event: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// Replies to commands.
    type Reply: Serialize + DeserializeOwned + Send + 'static;
    /// The actor's own rejection of a command (insufficient funds, not open, ...).
    type Error: std::error::Error + Serialize + DeserializeOwned + Send + Sync + 'static;
}

/// What an actor does: decide on commands, fold events.
///
/// # Turns
///
/// The runtime runs one command at a time per actor (a *turn*):
///
/// 1. [`handle`](Behavior::handle) decides. It reads the state (`&self`), may ask other actors
///    through the [`Ctx`], and returns an [`Effect`]: the events to persist and the reply — or
///    the actor's own error, which persists nothing.
/// 2. The events are appended to the store as one atomic commit, at the version the actor is at.
/// 3. Only once the commit is durable does the runtime [`apply`](Behavior::apply) each event to
///    the state; then the reply is sent.
///
/// `apply` must be pure, infallible and deterministic: it runs again, on the same events, every
/// time the actor is activated (replay), and replaying the same events must give the same state.
///
/// # Asking other actors
///
/// A handler may `ctx.ask(...)` another actor and await it: the transfer of a bank example does.
/// While it waits, this actor starts no other turn. A cycle of asks (A asks B, B asks A) would
/// wait forever; the runtime detects such a cycle on the call chain and fails the inner ask with
/// [`AskError::CallCycle`](crate::AskError::CallCycle). Two independent turns that ask each
/// other's actors (A's turn waits on B while B's turn asks A) would wait on each other: an
/// actor whose turn waits on B refuses, at once, an ask whose chain of waiting callers includes
/// B, with [`AskError::Deadlock`](crate::AskError::Deadlock) (nothing applied, safe to retry).
/// Longer cycles through queues rather than call chains (A waits on B, whose queue holds A's
/// request behind a turn waiting on C, whose turn asks A) end at the ask deadline.
pub trait Behavior: EventSourcedActor {
    /// Decides what a command does. Must not change state: only returned events do.
    fn handle(
        &self,
        cmd: Self::Command,
        ctx: &mut Ctx<Self>,
    ) -> impl Future<Output = Result<Effect<Self>, Self::Error>> + Send;

    /// Folds one stored event into the state. Pure, infallible, deterministic.
    fn apply(&mut self, event: &Self::Event);
}

/// The outcome of a handled command: events to persist (possibly none) and the reply.
///
/// ```ignore
/// Effect::reply(Reply::Balance(self.balance))                     // a query: nothing stored
/// Effect::persist(Event::Deposited(n)).reply(Reply::Ok)           // one event
/// Effect::persist_all([Event::Withdrew(n), Event::Fee(1)]).reply(Reply::Ok)
/// ```
///
/// The reply is decided with the events and stored with them, so a retried command gets the
/// very same reply back. When it depends on the new state, compute it in the handler (for
/// example `self.balance + n`).
#[must_use = "an Effect does nothing unless returned from `handle`"]
pub struct Effect<A: EventSourcedActor> {
    pub(crate) events: Vec<A::Event>,
    pub(crate) reply: A::Reply,
}

impl<A: EventSourcedActor> Effect<A> {
    /// Reply without persisting anything.
    pub fn reply(reply: A::Reply) -> Self {
        Effect {
            events: Vec::new(),
            reply,
        }
    }

    /// Persist one event; finish with [`Persist::reply`].
    pub fn persist(event: A::Event) -> Persist<A> {
        Persist {
            events: vec![event],
        }
    }

    /// Persist several events as one atomic commit; finish with [`Persist::reply`].
    pub fn persist_all(events: impl IntoIterator<Item = A::Event>) -> Persist<A> {
        Persist {
            events: events.into_iter().collect(),
        }
    }

    /// The events this effect will persist.
    pub fn events(&self) -> &[A::Event] {
        &self.events
    }
}

/// Events waiting for their reply: the half-built [`Effect`] of [`Effect::persist`].
#[must_use = "finish with `.reply(...)` to get an Effect"]
pub struct Persist<A: EventSourcedActor> {
    events: Vec<A::Event>,
}

impl<A: EventSourcedActor> Persist<A> {
    /// Adds one more event to the same commit.
    pub fn and(mut self, event: A::Event) -> Self {
        self.events.push(event);
        self
    }

    /// Completes the effect with its reply.
    pub fn reply(self, reply: A::Reply) -> Effect<A> {
        Effect {
            events: self.events,
            reply,
        }
    }
}
