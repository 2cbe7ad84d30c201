//! [`Ctx`]: what a handler can see and do besides reading its state, and the turn state behind
//! it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::time::Instant;

use super::actor_ref::{ActorRef, ask_on, tell_on, typed_reply};
use super::actor_ref::{RefError, make_ref};
use super::contract::{Behavior, Command};
use super::host::Host;
use super::inbox::{CallMeta, Envelope};
use crate::errors::{AskError, CallError};
use crate::names::{ActorId, ActorKey};
use crate::wire::CommandId;

thread_local! {
    /// The turn whose handler this thread is polling right now (null: none): an `ActorRef`
    /// used inside a handler asks as a child of the turn (derived ids, call chain, deadline),
    /// exactly like [`Ctx::ask`]. Set for the length of each poll of a handler's future (a
    /// plain pointer, not a task-local: this is on the path of every turn).
    static CURRENT_TURN: std::cell::Cell<*const Turn> = const { std::cell::Cell::new(std::ptr::null()) };
}

/// Publishes a turn as the current one of this thread until dropped (then restores the one
/// before: polls do not nest across turns, but a guard costs nothing to get right).
pub(crate) struct CurrentTurn {
    previous: *const Turn,
}

impl CurrentTurn {
    /// `turn` must stay alive until the guard is dropped.
    pub(crate) fn enter(turn: *const Turn) -> Self {
        CurrentTurn {
            previous: CURRENT_TURN.with(|c| c.replace(turn)),
        }
    }

    /// The turn whose handler this thread is polling, if any.
    pub(crate) fn get() -> Option<Arc<Turn>> {
        let turn = CURRENT_TURN.with(|c| c.get());
        if turn.is_null() {
            return None;
        }
        // SAFETY: a non-null pointer was published by `enter` for the length of a poll of a
        // handler's future, and points into the `Arc<Turn>` its activation holds for longer
        // than that (see `InTurn`). We are inside that poll, so the allocation is alive:
        // taking one more strong count and wrapping it yields an `Arc` of our own.
        #[allow(unsafe_code)]
        unsafe {
            Arc::increment_strong_count(turn);
            Some(Arc::from_raw(turn))
        }
    }
}

impl Drop for CurrentTurn {
    fn drop(&mut self) {
        CURRENT_TURN.with(|c| c.set(self.previous));
    }
}

/// The context of one turn: who the actor is, which command it handles, and how to reach other
/// actors.
///
/// Asks made through the context — or through any [`ActorRef`] inside the handler — are
/// *children* of the current command:
///
/// - their command ids are derived deterministically from it ([`CommandId::derive`]), so when
///   the current command is retried after a failure, its children carry the same ids and are
///   deduplicated by their actors;
/// - they inherit the current deadline and correlation id;
/// - they carry the chain of waiting actors, so an ask that would wait on an actor already
///   waiting on this chain fails at once with [`CallError::CallCycle`] instead of deadlocking.
///
/// To change another actor as part of this command, prefer a durable effect
/// ([`Effect::send`](crate::Effect::send)): it is stored with the commit and never waits.
pub struct Ctx<A: Behavior> {
    me: ActorRef<A>,
    version: u64,
    turn: Arc<Turn>,
}

/// The state of an activation's turns, shared by its [`Ctx`], the task-local [`TURN`] and its
/// inbox (which refuses and probes for deadlocks while a turn waits).
pub(crate) struct Turn {
    pub host: Arc<Host>,
    pub me: ActorKey,
    /// The running command's metadata (the last command's between turns).
    meta: Mutex<CallMeta>,
    /// Whether a turn runs: a flag, so ending a turn takes no lock.
    running: AtomicBool,
    children: AtomicU64,
    /// The actors the running turn waits on (its asks in flight).
    pub targets: Mutex<Vec<ActorKey>>,
    /// Signalled when the turn starts waiting on another actor.
    pub started: tokio::sync::Notify,
}

/// Marks `target` as waited on for as long as it lives (an ask in flight; also when the ask's
/// future is dropped midway).
struct Waiting<'a> {
    turn: &'a Turn,
    target: ActorKey,
}

impl<'a> Waiting<'a> {
    fn enter(turn: &'a Turn, target: &ActorKey) -> Self {
        turn.targets.lock().push(target.clone());
        turn.started.notify_one();
        Waiting {
            turn,
            target: target.clone(),
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut on = self.turn.targets.lock();
        if let Some(i) = on.iter().position(|k| k == &self.target) {
            on.swap_remove(i);
        }
    }
}

impl Turn {
    pub(crate) fn new(host: &Arc<Host>, me: ActorKey) -> Arc<Self> {
        Arc::new(Turn {
            host: Arc::clone(host),
            me,
            meta: Mutex::new(CallMeta::detached(
                CommandId::from_u128(0),
                std::time::Duration::ZERO,
            )),
            running: AtomicBool::new(false),
            children: AtomicU64::new(0),
            targets: Mutex::new(Vec::new()),
            started: tokio::sync::Notify::new(),
        })
    }

    /// Starts a turn for the command of `meta`, which receives the previous command's
    /// metadata in exchange (the caller drops it, after the lock is released).
    pub(crate) fn begin(&self, meta: &mut CallMeta) {
        std::mem::swap(&mut *self.meta.lock(), meta);
        self.children.store(0, Ordering::Relaxed);
        self.running.store(true, Ordering::Release);
    }

    /// Ends the running turn.
    pub(crate) fn end(&self) {
        self.running.store(false, Ordering::Release);
    }

    /// The command id of the running turn; `None` between turns.
    pub(crate) fn current(&self) -> Option<CommandId> {
        if !self.running.load(Ordering::Acquire) {
            return None;
        }
        Some(self.meta.lock().command_id)
    }

    /// How many asks and tells the running turn made.
    pub(crate) fn children(&self) -> u64 {
        self.children.load(Ordering::Relaxed)
    }

    /// The metadata of the running command.
    pub(crate) fn with_meta<T>(&self, f: impl FnOnce(&CallMeta) -> T) -> T {
        f(&self.meta.lock())
    }

    /// The metadata of a child ask to `target`, or the cycle it would close.
    fn child_meta(&self, target: &ActorKey) -> Result<CallMeta, String> {
        let meta = self.meta.lock();
        if target == &self.me || meta.chain.contains(target) {
            let mut names: Vec<String> = meta.chain.iter().map(|k| k.to_string()).collect();
            names.push(self.me.to_string());
            names.push(target.to_string());
            return Err(names.join(" -> "));
        }
        let n = self.children.fetch_add(1, Ordering::Relaxed);
        let mut chain = meta.chain.clone();
        chain.push(self.me.clone());
        Ok(CallMeta {
            command_id: meta.command_id.derive(n),
            correlation_id: meta.correlation_id,
            causation_id: Some(meta.command_id),
            deadline: meta.deadline,
            timeout: meta.timeout,
            chain,
            origin: None,
            traced: meta.traced,
            asked_at: None,
        })
    }

    /// Asks `target` as a child of the running command, through `host` (the target's runtime).
    pub(crate) async fn ask<B: Behavior>(
        &self,
        host: &Arc<Host>,
        target: &ActorKey,
        cmd: B::Command,
        command_id: Option<CommandId>,
    ) -> Result<B::Reply, AskError<B::Error>> {
        let mut meta = self
            .child_meta(target)
            .map_err(|chain| AskError::Failed(CallError::CallCycle { chain }))?;
        if let Some(id) = command_id {
            meta.command_id = id;
        }
        let _waiting = Waiting::enter(self, target);
        ask_on::<B>(host, target, Box::new(Envelope::new(cmd, meta))).await
    }

    /// Tells `target` as a child of the running command (fire-and-forget, at most once).
    pub(crate) fn tell<B: Behavior>(
        &self,
        host: &Arc<Host>,
        target: &ActorKey,
        cmd: B::Command,
    ) -> Result<(), CallError> {
        // A tell does not wait, so it cannot deadlock: no chain, and its own deadline.
        let n = self.children.fetch_add(1, Ordering::Relaxed);
        let (command_id, correlation_id, traced) =
            self.with_meta(|meta| (meta.command_id, meta.correlation_id, meta.traced));
        let meta = CallMeta {
            command_id: command_id.derive(n),
            correlation_id,
            causation_id: Some(command_id),
            deadline: Instant::now() + host.config.ask_timeout,
            timeout: host.config.ask_timeout,
            chain: Vec::new(),
            origin: None,
            traced,
            asked_at: None,
        };
        tell_on::<B>(host, target, cmd, Some(meta))
    }
}

impl<A: Behavior> Ctx<A> {
    pub(crate) fn new(me: ActorRef<A>, turn: Arc<Turn>) -> Self {
        Ctx {
            me,
            version: 0,
            turn,
        }
    }

    /// Prepares the context for the next turn.
    pub(crate) fn begin(&mut self, version: u64, meta: &mut CallMeta) {
        self.version = version;
        self.turn.begin(meta);
    }

    /// The shared turn state.
    pub(crate) fn turn(&self) -> &Arc<Turn> {
        &self.turn
    }

    /// A ref to this actor.
    pub fn myself(&self) -> &ActorRef<A> {
        &self.me
    }

    /// This actor's id.
    pub fn id(&self) -> &ActorId {
        self.me.id()
    }

    /// The version the actor's state is at (the number of events stored, the runtime's
    /// bookkeeping events included).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The id of the command being handled.
    pub fn command_id(&self) -> CommandId {
        self.turn.with_meta(|m| m.command_id)
    }

    /// The correlation id of the chain this command belongs to.
    pub fn correlation_id(&self) -> CommandId {
        self.turn.with_meta(|m| m.correlation_id)
    }

    /// When the caller stops waiting.
    pub fn deadline(&self) -> Instant {
        self.turn.with_meta(|m| m.deadline)
    }

    /// The actor whose durable effect this command is, if it is one (`None` for asks and
    /// tells). A reminder's sender is the actor itself.
    pub fn sender(&self) -> Option<ActorKey> {
        self.turn
            .with_meta(|m| m.origin.as_ref().map(|o| o.from.clone()))
    }

    /// A ref to actor `id` of kind `B`, bound to this runtime.
    pub fn actor<B: Behavior>(&self, id: impl AsRef<str>) -> Result<ActorRef<B>, RefError> {
        make_ref(&self.turn.host, id.as_ref())
    }

    /// Asks another actor and waits for its reply (see the type docs for ids and cycles).
    /// The reply has the type `cmd` declares.
    pub async fn ask<B: Behavior, C: Command<B>>(
        &mut self,
        target: &ActorRef<B>,
        cmd: C,
    ) -> Result<C::Reply, AskError<B::Error>> {
        let host = Arc::clone(&self.turn.host);
        let reply = self
            .turn
            .ask::<B>(&host, target.key(), cmd.into_command(), None)
            .await?;
        typed_reply::<B, C>(reply)
    }

    /// Tells another actor (fire-and-forget, at most once), as a child of this command.
    pub fn tell<B: Behavior>(
        &mut self,
        target: &ActorRef<B>,
        cmd: impl Command<B>,
    ) -> Result<(), CallError> {
        let host = Arc::clone(&self.turn.host);
        self.turn.tell::<B>(&host, target.key(), cmd.into_command())
    }
}
