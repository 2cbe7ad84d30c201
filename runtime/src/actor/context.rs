//! [`Ctx`]: what a handler can see and do besides reading its state.

use std::sync::Arc;

use tokio::time::Instant;

use super::activation::CallMeta;
use super::actor_ref::{ActorRef, ask_on, tell_on};
use super::contract::Behavior;
use super::host::Host;
use crate::errors::{AskError, TellError};
use crate::names::{ActorId, ActorKey};
use crate::runtime::RefError;
use crate::wire::CommandId;

/// The context of one turn: who the actor is, which command it handles, and how to reach other
/// actors.
///
/// Asks made through the context are *children* of the current command:
///
/// - their command ids are derived deterministically from it ([`CommandId::derive`]), so when
///   the current command is retried after a failure, its children carry the same ids and are
///   deduplicated by their actors — a saga retried end to end applies each step once;
/// - they inherit the current deadline and correlation id;
/// - they carry the chain of waiting actors, so an ask that would wait on an actor already
///   waiting on this chain fails at once with [`AskError::CallCycle`] instead of deadlocking.
pub struct Ctx<A: Behavior> {
    me: ActorRef<A>,
    version: u64,
    meta: CallMeta,
    host: Arc<Host>,
    children: u64,
    waiting: WaitingOn,
}

/// The actors a turn is waiting on right now (its asks in flight), shared with the
/// activation's inbox, which refuses asks that would deadlock on them.
pub(crate) type WaitingOn = Arc<WaitState>;

/// See [`WaitingOn`].
#[derive(Default)]
pub(crate) struct WaitState {
    /// The actors waited on.
    pub targets: parking_lot::Mutex<Vec<ActorKey>>,
    /// Signalled when the turn starts waiting on another actor.
    pub started: tokio::sync::Notify,
}

/// Marks `target` as waited on for as long as it lives (an ask in flight; also when the ask's
/// future is dropped midway).
struct Waiting<'a> {
    on: &'a WaitingOn,
    target: ActorKey,
}

impl<'a> Waiting<'a> {
    fn enter(on: &'a WaitingOn, target: &ActorKey) -> Self {
        on.targets.lock().push(target.clone());
        on.started.notify_one();
        Waiting {
            on,
            target: target.clone(),
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut on = self.on.targets.lock();
        if let Some(i) = on.iter().position(|k| k == &self.target) {
            on.swap_remove(i);
        }
    }
}

impl<A: Behavior> Ctx<A> {
    pub(crate) fn new(me: ActorRef<A>, host: &Arc<Host>, waiting: WaitingOn) -> Self {
        let command_id = CommandId::from_u128(0);
        Ctx {
            me,
            version: 0,
            meta: CallMeta {
                command_id,
                correlation_id: command_id,
                causation_id: None,
                deadline: Instant::now(),
                timeout: std::time::Duration::ZERO,
                chain: Vec::new(),
            },
            host: Arc::clone(host),
            children: 0,
            waiting,
        }
    }

    /// Prepares the context for the next turn.
    pub(crate) fn begin(&mut self, version: u64, meta: CallMeta) {
        self.version = version;
        self.meta = meta;
        self.children = 0;
    }

    /// A ref to this actor.
    pub fn myself(&self) -> &ActorRef<A> {
        &self.me
    }

    /// This actor's id.
    pub fn id(&self) -> &ActorId {
        self.me.id()
    }

    /// The version the actor's state is at (the number of events applied).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The id of the command being handled.
    pub fn command_id(&self) -> CommandId {
        self.meta.command_id
    }

    /// The correlation id of the chain this command belongs to.
    pub fn correlation_id(&self) -> CommandId {
        self.meta.correlation_id
    }

    /// When the caller stops waiting.
    pub fn deadline(&self) -> Instant {
        self.meta.deadline
    }

    /// A ref to actor `id` of kind `B`, bound to this runtime.
    pub fn actor<B: Behavior>(&self, id: impl AsRef<str>) -> Result<ActorRef<B>, RefError> {
        crate::runtime::make_ref(&self.host, id.as_ref())
    }

    fn child_meta(&mut self, target: &ActorKey) -> Result<CallMeta, String> {
        let me = self.me.key();
        if target == me || self.meta.chain.contains(target) {
            let mut names: Vec<String> = self.meta.chain.iter().map(|k| k.to_string()).collect();
            names.push(me.to_string());
            names.push(target.to_string());
            return Err(names.join(" -> "));
        }
        let n = self.children;
        self.children += 1;
        let mut chain = self.meta.chain.clone();
        chain.push(me.clone());
        Ok(CallMeta {
            command_id: self.meta.command_id.derive(n),
            correlation_id: self.meta.correlation_id,
            causation_id: Some(self.meta.command_id),
            deadline: self.meta.deadline,
            timeout: self.meta.timeout,
            chain,
        })
    }

    /// Asks another actor and waits for its reply (see the type docs for ids and cycles).
    pub async fn ask<B: Behavior>(
        &mut self,
        target: &ActorRef<B>,
        cmd: B::Command,
    ) -> Result<B::Reply, AskError<B::Error>> {
        let meta = self
            .child_meta(target.key())
            .map_err(|chain| AskError::CallCycle { chain })?;
        let _waiting = Waiting::enter(&self.waiting, target.key());
        ask_on::<B>(&self.host, target.key(), cmd, meta).await
    }

    /// Tells another actor (fire-and-forget, at most once), as a child of this command.
    pub fn tell<B: Behavior>(
        &mut self,
        target: &ActorRef<B>,
        cmd: B::Command,
    ) -> Result<(), TellError> {
        // A tell does not wait, so it cannot deadlock: no chain, and its own deadline.
        let n = self.children;
        self.children += 1;
        let meta = CallMeta {
            command_id: self.meta.command_id.derive(n),
            correlation_id: self.meta.correlation_id,
            causation_id: Some(self.meta.command_id),
            deadline: Instant::now() + self.host.config.ask_timeout,
            timeout: self.host.config.ask_timeout,
            chain: Vec::new(),
        };
        tell_on::<B>(&self.host, target.key(), cmd, Some(meta))
    }
}
