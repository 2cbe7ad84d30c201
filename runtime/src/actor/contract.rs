//! The contract between a user's actor and the runtime.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::actor_ref::ActorRef;
use super::context::Ctx;
use crate::names::ActorKey;
use crate::wire::{CodecError, codec};

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
/// A handler may `ctx.ask(...)` another actor and await it, for reads and short synchronous
/// steps. While it waits, this actor starts no other turn. To *change* another actor as part of
/// this command, prefer a durable effect ([`Effect::send`]): it never waits, cannot deadlock,
/// and survives crashes. A cycle of asks on one call chain (A asks B, B asks A) fails at once
/// with [`AskError::CallCycle`](crate::AskError::CallCycle). Independent turns that wait on each
/// other in a cycle (of up to 32 actors), on one node or across nodes (A's turn waits on B, B's on C,
/// C's asks A) are found by edge chasing and one ask of the cycle is refused with
/// [`AskError::Deadlock`](crate::AskError::Deadlock) — before it ran, so nothing was applied —
/// well before the deadline (about 50–100 ms).
///
/// An ask-based saga retried with the same command id re-runs the handler on the *current*
/// state: its child asks are deduplicated, but the handler may now decide differently (a funds
/// check that passed the first time may fail). Durable effects have no such gap.
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

/// The outcome of a handled command: events to persist (possibly none), the reply, and durable
/// effects.
///
/// ```ignore
/// Effect::reply(Reply::Balance(self.balance))                     // a query: nothing stored
/// Effect::persist(Event::Deposited(n)).reply(Reply::Ok)           // one event
/// Effect::persist_all([Event::Withdrew(n), Event::Fee(1)]).reply(Reply::Ok)
/// // a debit, and the credit as a durable effect, refunded if the payee refuses it:
/// Effect::persist(Event::Debited { to, amount })
///     .send_with_compensation(&payee, Cmd::Credit(amount), Cmd::Refund(amount))
///     .reply(Reply::Ok)
/// // a reminder to this actor in 30 s, cancellable by name:
/// Effect::persist(Event::Held(n)).remind_after("expire-hold", secs(30), Cmd::Expire).reply(Reply::Ok)
/// ```
///
/// The reply is decided with the events and stored with them, so a retried command gets the
/// very same reply back. When it depends on the new state, compute it in the handler (for
/// example `self.balance + n`).
///
/// # Durable effects
///
/// [`send`](Effect::send) and its siblings add commands for other actors (or this one) to the
/// same commit as the events: they are stored atomically with them, delivered only once the
/// commit is durable, redelivered after any crash, failover or move until the receiver has
/// applied them, and applied by the receiver exactly once, in the order they were sent from
/// this actor to that receiver. The turn does not wait for them, so nothing can deadlock. See
/// the [`workflow`](crate::workflow) module for the guarantees and their limits.
#[must_use = "an Effect does nothing unless returned from `handle`"]
pub struct Effect<A: EventSourcedActor> {
    pub(crate) events: Vec<A::Event>,
    pub(crate) reply: A::Reply,
    /// Durable effects; `None` (no allocation, a small `Effect`) for the many turns that
    /// decide none.
    pub(crate) plan: Option<Box<Plan>>,
}

/// Durable effects decided by a turn, not yet stored.
#[derive(Default)]
pub(crate) struct Plan {
    /// Commands to send (now or later).
    pub sends: Vec<Outgoing>,
    /// Names of reminders to cancel.
    pub cancels: Vec<String>,
    /// The first command that did not encode; the turn fails with it.
    pub error: Option<CodecError>,
}

impl Plan {
    /// Whether the turn decided any durable effect.
    pub fn is_empty(&self) -> bool {
        self.sends.is_empty() && self.cancels.is_empty()
    }
}

/// One command to send as a durable effect.
pub(crate) struct Outgoing {
    /// The receiver; `None`: this actor.
    pub target: Option<ActorKey>,
    /// The encoded command.
    pub command: Vec<u8>,
    /// When to deliver; `None`: at once.
    pub due: Option<Due>,
    /// The reminder's name, if named.
    pub reminder: Option<String>,
    /// The encoded compensation (a command of the sender), if any.
    pub compensation: Option<Vec<u8>>,
}

/// When a scheduled effect is due.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Due {
    /// This long after the commit.
    After(Duration),
    /// At this wall-clock time.
    At(SystemTime),
}

impl Due {
    /// The due time in milliseconds since the Unix epoch, given the commit time.
    pub fn to_ms(self, now_ms: u64) -> u64 {
        match self {
            Due::After(d) => now_ms.saturating_add(d.as_millis().min(u128::from(u64::MAX)) as u64),
            Due::At(t) => t
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis().min(u128::from(u64::MAX)) as u64)
                .unwrap_or(0),
        }
    }
}

impl Plan {
    fn push<T: serde::Serialize>(
        &mut self,
        target: Option<ActorKey>,
        command: &T,
        due: Option<Due>,
        reminder: Option<String>,
        compensation: Option<Result<Vec<u8>, CodecError>>,
    ) {
        let encoded = codec::encode("durable effect", command);
        let compensation = match compensation.transpose() {
            Ok(c) => c,
            Err(e) => {
                self.error.get_or_insert(e);
                return;
            }
        };
        match encoded {
            Ok(command) => self.sends.push(Outgoing {
                target,
                command,
                due,
                reminder,
                compensation,
            }),
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
    }
}

/// The durable-effect methods, shared by [`Effect`] and [`Persist`].
macro_rules! durable_effects {
    () => {
        fn plan(&mut self) -> &mut Plan {
            self.plan.get_or_insert_with(Default::default)
        }

        /// Sends `cmd` to `to` as a durable effect: stored with this commit, delivered after
        /// it, applied by `to` exactly once (see [`Effect`]). If `to` rejects it, the rejection
        /// is recorded in `to`'s history and nothing else happens; use
        /// [`send_with_compensation`](Self::send_with_compensation) to undo this turn's part.
        pub fn send<B: Behavior>(mut self, to: &ActorRef<B>, cmd: B::Command) -> Self {
            self.plan()
                .push(Some(to.key().clone()), &cmd, None, None, None);
            self
        }

        /// Like [`send`](Self::send); if `to` rejects `cmd`, `compensation` is delivered back to
        /// this actor as a durable effect (exactly once), so the workflow is undone rather than
        /// left half done — a refund for a credit the payee refused.
        pub fn send_with_compensation<B: Behavior>(
            mut self,
            to: &ActorRef<B>,
            cmd: B::Command,
            compensation: A::Command,
        ) -> Self {
            let compensation = codec::encode("compensation", &compensation);
            self.plan()
                .push(Some(to.key().clone()), &cmd, None, None, Some(compensation));
            self
        }

        /// Sends `cmd` to `to` as a durable effect `delay` after this commit (see
        /// [`send`](Self::send)). It is stored now and delivered once due, also across
        /// restarts, failovers and moves of this actor.
        pub fn send_after<B: Behavior>(
            mut self,
            to: &ActorRef<B>,
            delay: Duration,
            cmd: B::Command,
        ) -> Self {
            let due = Some(Due::After(delay));
            self.plan()
                .push(Some(to.key().clone()), &cmd, due, None, None);
            self
        }

        /// Schedules `cmd` to this actor `delay` after this commit: a durable reminder named
        /// `name`. It fires once (activating the actor if it is not resident), after restarts,
        /// failovers and shard moves too. A newer reminder with the same name replaces it;
        /// [`cancel_reminder`](Self::cancel_reminder) cancels it.
        pub fn remind_after(
            mut self,
            name: impl Into<String>,
            delay: Duration,
            cmd: A::Command,
        ) -> Self {
            let due = Some(Due::After(delay));
            self.plan().push(None, &cmd, due, Some(name.into()), None);
            self
        }

        /// Like [`remind_after`](Self::remind_after), due at wall-clock time `at` (a time in the
        /// past fires at once).
        pub fn remind_at(
            mut self,
            name: impl Into<String>,
            at: SystemTime,
            cmd: A::Command,
        ) -> Self {
            self.plan()
                .push(None, &cmd, Some(Due::At(at)), Some(name.into()), None);
            self
        }

        /// Cancels this actor's pending reminder `name`, if any: it will never fire. Stored
        /// with this commit, like everything else the turn decides.
        pub fn cancel_reminder(mut self, name: impl Into<String>) -> Self {
            self.plan().cancels.push(name.into());
            self
        }
    };
}

impl<A: Behavior> Effect<A> {
    /// Reply without persisting anything.
    pub fn reply(reply: A::Reply) -> Self {
        Effect {
            events: Vec::new(),
            reply,
            plan: None,
        }
    }

    /// Persist one event; finish with [`Persist::reply`].
    pub fn persist(event: A::Event) -> Persist<A> {
        Persist {
            events: vec![event],
            plan: None,
        }
    }

    /// Persist several events as one atomic commit; finish with [`Persist::reply`].
    pub fn persist_all(events: impl IntoIterator<Item = A::Event>) -> Persist<A> {
        Persist {
            events: events.into_iter().collect(),
            plan: None,
        }
    }

    /// The events this effect will persist.
    pub fn events(&self) -> &[A::Event] {
        &self.events
    }

    durable_effects!();
}

/// Events waiting for their reply: the half-built [`Effect`] of [`Effect::persist`].
#[must_use = "finish with `.reply(...)` to get an Effect"]
pub struct Persist<A: EventSourcedActor> {
    events: Vec<A::Event>,
    plan: Option<Box<Plan>>,
}

impl<A: Behavior> Persist<A> {
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
            plan: self.plan,
        }
    }

    durable_effects!();
}
