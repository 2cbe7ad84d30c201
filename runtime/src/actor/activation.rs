//! One activation: the ractor actor that brings an actor to life and runs its turns.
//!
//! # Hosting
//!
//! Each activation runs in a ractor actor of its own ([`Hosted`]), linked under the runtime's
//! root actor (see [`supervision`](crate::supervision)). The ractor actor's single message
//! starts the activation's life; passivation ends it and stops the actor. Commands do not
//! travel through ractor's unbounded mailbox but through the activation's own bounded
//! [mailbox](super::mailbox), read by its [inbox](super::inbox): that is what gives
//! backpressure, deadlines and deadlock refusal while a turn waits.
//!
//! What an activation owns besides its state — the mailbox and everything queued, the command
//! in flight, the signal that it stopped — is its [`Kit`]. When a handler panics, the panic
//! unwinds out of the activation and fails its ractor actor; the kit goes to the root, and when
//! ractor reports `ActorFailed`, the root answers the command in flight with
//! [`AskError::HandlerPanicked`] and gives the kit to a fresh activation, which reloads the
//! state from the store and serves what was queued. Nothing queued is lost, and nothing is
//! stored for the panicking command.
//!
//! # Life of an activation
//!
//! 1. **Wait** for a previous activation of the same actor to finish stopping, if any.
//! 2. **Load** (under the replay permit that bounds concurrent replays): the latest snapshot if
//!    it decodes — an unreadable snapshot is logged and ignored, never trusted — then every
//!    commit after it, applied in order. A damaged or undecodable record fails the activation
//!    with [`AskError::ActivationFailed`]; it never yields a state built on a hole. The outbox
//!    (durable effects and reminders, see [`workflow`](crate::workflow)) is rebuilt with the
//!    state, and the delivery pump starts if anything is pending.
//! 3. **Serve** turns one at a time from the bounded [inbox](super::inbox) (see
//!    [`Behavior`](super::Behavior) for what a turn is).
//! 4. **Stop** on passivation: close the mailbox, serve what is already queued, snapshot if
//!    events were stored since the last snapshot, leave the wake-up index right (an entry while
//!    durable work is pending, none when nothing is), and signal completion.
//!
//! # When a turn goes wrong
//!
//! - The handler panics: the caller gets [`AskError::HandlerPanicked`] (or
//!   [`AskError::OutcomeUnknown`] if the turn had asked other actors), nothing is stored, and
//!   a fresh activation, started by the root actor, serves the next command with the state
//!   from the store (see *Hosting*).
//! - The append meets a [`VersionConflict`](crate::store::StoreError::VersionConflict): another
//!   writer got there first, so this activation's state is stale. It discards it, reloads from
//!   the store, and answers [`AskError::VersionConflict`] (safe to retry). It never applies an
//!   event that was not stored.
//! - The append's outcome is unknown: the caller gets [`AskError::OutcomeUnknown`] with the
//!   command id, and the activation reloads before its next turn; a retry with the same id is
//!   answered from the stored commit.
//! - The turn asked other actors before it failed: their part may be applied, so the error
//!   becomes [`AskError::OutcomeUnknown`] — retry only with the same command id.
//!
//! # Idempotency
//!
//! Each commit stores the command id and the encoded reply. The activation keeps the last
//! `dedup_window` of them (rebuilt on replay, carried in snapshots): a command whose id is among
//! them is answered with the stored reply and not handled again. Durable effects are
//! deduplicated by their origin instead, with no window (see [`workflow`](crate::workflow)).

use std::any::Any;
use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::Instrument;

use super::actor_ref::{ActorRef, with_decode_host};
use super::context::{Ctx, CurrentTurn, Turn};
use super::contract::{Answer, Behavior, Effect, Plan};
use super::delivery::OutboxCell;
use super::host::{Done, DoneTx, Host, Stats, wait_done};
use super::inbox::{CallMeta, Envelope, InFlight, Inbox, Msg, Work};
use super::mailbox;
use crate::bus::SystemEvent;
use crate::errors::AskError;
use crate::names::ActorKey;
use crate::store::{NewCommit, Snapshot, StoreError};
use crate::wire::{
    CommandId, CommitRecord, Delivery, EffectOrigin, EventData, OutboxEntry, SYSTEM_EVENT_PREFIX,
    Settle, codec, event_type_name, now_ms,
};
use crate::workflow::outbox::{OutboxImage, Staged};

/// Child ids of a command from this index on name its durable effects (below: its asks).
const EFFECT_ID_BASE: u64 = 1 << 32;

/// The ids a commit is stored with.
#[derive(Clone, Copy)]
struct CommitIds {
    command_id: CommandId,
    correlation_id: CommandId,
    causation_id: Option<CommandId>,
}

impl CommitIds {
    fn of(meta: &CallMeta) -> Self {
        CommitIds {
            command_id: meta.command_id,
            correlation_id: meta.correlation_id,
            causation_id: meta.causation_id,
        }
    }
}

/// A remembered commit: its command id and the encoded reply.
#[derive(Clone, Serialize, Deserialize)]
struct Recent {
    command_id: CommandId,
    #[serde(with = "serde_bytes", default)]
    reply: Option<Vec<u8>>,
}

/// The snapshot format this code writes; it reads every format up to it.
const SNAPSHOT_FORMAT: u16 = 2;

/// The snapshot payload: state plus the dedup window and the outbox, so idempotency and
/// durable effects survive snapshots.
#[derive(Serialize)]
struct SnapshotOut<'a, A> {
    format: u16,
    state: &'a A,
    recent: &'a VecDeque<Recent>,
    outbox: OutboxImage,
}

#[derive(Deserialize)]
struct SnapshotIn<A> {
    format: u16,
    state: A,
    #[serde(default)]
    recent: VecDeque<Recent>,
    #[serde(default)]
    outbox: OutboxImage,
}

/// A bookkeeping event of the runtime (see [`SYSTEM_EVENT_PREFIX`]).
#[derive(Serialize)]
struct Mark<'a> {
    /// Why the commit was made.
    reason: &'a str,
}

/// What one activation owns besides its state: the mailbox with everything queued in it, the
/// command in flight, and the completion signal. If the activation dies (its handler
/// panicked), its [`Life`] hands all of it to the runtime's root actor, which gives it to a
/// fresh activation: nothing queued is lost, and nothing waiting for the actor to stop is told
/// it has stopped while it still runs.
pub(crate) struct Kit<A: Behavior> {
    host: Arc<Host>,
    key: ActorKey,
    inbox: Inbox<A>,
    /// The mailbox, for the pump's forward requests (weak: never keeps the actor alive).
    tx: mailbox::WeakSender<Msg<A>>,
    cell: Arc<OutboxCell>,
    /// Dropped (firing the stop signal) once the actor has fully stopped.
    #[allow(dead_code)] // held, never read: dropping it is the signal
    done: DoneTx,
    generation: u64,
}

impl<A: Behavior> Kit<A> {
    /// Everything a first activation starts from.
    #[allow(clippy::too_many_arguments)] // the parts of one activation, handed over once
    pub fn new(
        host: Arc<Host>,
        key: ActorKey,
        rx: mailbox::Receiver<Msg<A>>,
        tx: mailbox::WeakSender<Msg<A>>,
        cell: Arc<OutboxCell>,
        done: DoneTx,
        generation: u64,
    ) -> Self {
        let turn = Turn::new(&host, key.clone());
        let inbox = Inbox::new(rx, &host, turn, Arc::clone(&cell));
        Kit {
            host,
            key,
            inbox,
            tx,
            cell,
            done,
            generation,
        }
    }

    /// Runs the activation until it passivates (or fails to load).
    async fn live(&mut self, predecessor: Option<Done>) {
        let Kit {
            host,
            key,
            inbox,
            tx,
            cell,
            generation,
            ..
        } = self;
        if let Some(previous) = predecessor {
            Box::pin(inbox.supervise(wait_done(previous))).await;
        }
        let turn = Arc::clone(inbox.turn());
        let load = async {
            let _permit = host.replays.acquire().await;
            let span = tracing::debug_span!("activate", namespace = %key.namespace, kind = A::KIND, id = %key.id);
            Activation::<A>::load(host, key.clone(), turn, Arc::clone(cell), tx.clone())
                .instrument(span)
                .await
        };
        // Boxed, like every long path below: an idle activation keeps only the loop's state.
        let loaded = match Box::pin(inbox.supervise(load)).await {
            Some(loaded) => loaded,
            None => Err(LoadError::Failed("activation was cancelled".to_owned())),
        };
        let mut act = match loaded {
            Ok(act) => act,
            Err(error) => {
                Stats::bump(&host.stats.activation_failures);
                tracing::warn!(%error, "activation failed");
                host.forget(A::KIND, &key.id, *generation);
                Box::pin(inbox.fail_all(|| error.to_ask(key))).await;
                return;
            }
        };
        Stats::bump(&host.stats.activations);
        Box::pin(act.index_inherited_work()).await;
        act.pump_if_needed();
        while let Some(work) = inbox.next().await {
            match work {
                Work::Wake => act.pump_if_needed(),
                Work::Forward => {
                    if Box::pin(inbox.supervise(act.forward_due())).await.is_none() {
                        act.stale = true;
                    }
                    act.pump_if_needed();
                }
                Work::Command(env, waited) => {
                    // Boxed per turn: the turn's state machine is the largest part of the
                    // activation, and an idle actor should not carry it.
                    let turn = Box::pin(act.serve(inbox, env, waited));
                    turn.await;
                    // Only a turn that stored durable effects (or reloaded) can need the pump.
                    if std::mem::take(&mut act.outbox_changed) {
                        act.pump_if_needed();
                    }
                }
            }
        }
        Box::pin(act.stop()).await;
        host.forget(A::KIND, &key.id, *generation);
    }

    /// Answers the command that was in flight when the handler panicked, and hands the rest
    /// to a fresh activation (see [`Orphan`]).
    fn restart(mut self: Box<Self>, reason: String) {
        let host = Arc::clone(&self.host);
        Stats::bump(&host.stats.handler_panics);
        tracing::error!(actor = %self.key, %reason, "handler panicked; a fresh activation takes over the mailbox and reloads the state from the store");
        let turn = Arc::clone(self.inbox.turn());
        let asked_others = turn.children() > 0;
        turn.end();
        if let Some(InFlight {
            command_id,
            reply,
            ack,
            ..
        }) = self.inbox.current.take()
        {
            if let Some(tx) = reply {
                let error = if asked_others {
                    AskError::OutcomeUnknown {
                        command_id,
                        reason: format!(
                            "the handler panicked ({reason}) after asking other actors; they may have applied their part"
                        ),
                    }
                } else {
                    AskError::HandlerPanicked {
                        actor: self.key.clone(),
                        message: reason.clone(),
                    }
                };
                let _ = tx.send(Err(error));
            }
            if let Some(tx) = ack {
                let _ = tx.send(Settle::Failed {
                    reason: format!("handler panicked: {reason}"),
                });
            }
        }
        if host
            .shutting_down
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return; // dropping the kit answers the queue and signals the stop
        }
        host.spawn_hosted(Life::new(*self), None);
    }
}

/// The activation's kit while it runs. Dropped with the kit still inside — the handler
/// panicked, or ractor killed the actor — it hands the kit to the root actor, which restarts
/// the activation when ractor reports the failure (or drops the kit if the runtime stops).
pub(crate) struct Life<A: Behavior> {
    kit: Option<Box<Kit<A>>>,
    /// The ractor actor running it.
    id: Option<ractor::ActorId>,
}

impl<A: Behavior> Life<A> {
    pub fn new(kit: Kit<A>) -> Self {
        Life {
            kit: Some(Box::new(kit)),
            id: None,
        }
    }
}

impl<A: Behavior> Drop for Life<A> {
    fn drop(&mut self) {
        if let (Some(kit), Some(id)) = (self.kit.take(), self.id) {
            let host = Arc::clone(&kit.host);
            host.orphan(id, kit);
        }
    }
}

/// A dead activation's kit, waiting for ractor's report of the failure.
pub(crate) trait Orphan: Send {
    /// Answers the command in flight with `reason` and starts a fresh activation.
    fn restart(self: Box<Self>, reason: String);
}

impl<A: Behavior> Orphan for Kit<A> {
    fn restart(self: Box<Self>, reason: String) {
        Kit::restart(self, reason)
    }
}

/// The ractor actor an activation runs in: one per activation, linked under the runtime's
/// root actor. Its single message starts the activation's life; the actor stops when the
/// activation passivates. A handler panic fails the actor, and ractor reports it to the root
/// (see [`supervision`](crate::supervision)).
pub(crate) struct Hosted<A>(std::marker::PhantomData<fn() -> A>);

impl<A> Hosted<A> {
    pub fn new() -> Self {
        Hosted(std::marker::PhantomData)
    }
}

/// The message that starts an activation's life.
pub(crate) struct Live;

/// What a hosted activation starts from: its life, and the activation it must wait for.
pub(crate) type Start<A> = Box<(Life<A>, Option<Done>)>;

impl<A: Behavior> ractor::Actor for Hosted<A> {
    type Msg = Live;
    type State = Option<Start<A>>;
    type Arguments = Start<A>;

    async fn pre_start(
        &self,
        _myself: ractor::ActorRef<Live>,
        start: Start<A>,
    ) -> Result<Self::State, ractor::ActorProcessingErr> {
        Ok(Some(start))
    }

    async fn handle(
        &self,
        myself: ractor::ActorRef<Live>,
        _: Live,
        state: &mut Self::State,
    ) -> Result<(), ractor::ActorProcessingErr> {
        if let Some(start) = state.take() {
            let (mut life, predecessor) = *start;
            life.id = Some(myself.get_id());
            if let Some(kit) = life.kit.as_mut() {
                // Boxed: the live future would otherwise sit inline in ractor's loop future.
                // Boxed: the live future would otherwise sit inline in ractor's loop future.
                Box::pin(kit.live(predecessor)).await;
            }
            // A clean end: dropping the kit signals that the actor has stopped.
            life.id = None;
            drop(life);
        }
        myself.stop(Some("passivated".into()));
        Ok(())
    }
}

/// Why an actor could not be loaded.
#[derive(Debug, Clone)]
enum LoadError {
    /// The store could not be reached: transient, reported as `Unavailable`.
    Unavailable(String),
    /// The history is damaged or does not decode: reported as `ActivationFailed`.
    Failed(String),
}

impl LoadError {
    fn from_store(what: &str, e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) | StoreError::OutcomeUnknown(_) | StoreError::Closed => {
                LoadError::Unavailable(format!("{what}: {e}"))
            }
            other => LoadError::Failed(format!("{what}: {other}")),
        }
    }

    fn to_ask<E>(&self, actor: &ActorKey) -> AskError<E> {
        match self {
            LoadError::Unavailable(reason) => AskError::Unavailable(reason.clone()),
            LoadError::Failed(reason) => AskError::ActivationFailed {
                actor: actor.clone(),
                reason: reason.clone(),
            },
        }
    }
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Unavailable(r) | LoadError::Failed(r) => f.write_str(r),
        }
    }
}

/// How a handler's run ended, short of an effect.
enum Failure<A: Behavior> {
    Rejected(A::Error),
    /// An effect that cannot be stored as decided (a command that does not encode, a target
    /// in another namespace). Boxed: keeps the common outcomes small.
    Invalid(Box<AskError<A::Error>>),
}

/// What a successful append did.
enum Stored {
    /// Written now.
    Now,
    /// The store already held this command (a retry): nothing was written.
    Before,
}

struct Activation<A: Behavior> {
    host: Arc<Host>,
    /// The handler's context, reused turn after turn (no clones on the hot path).
    ctx: Ctx<A>,
    state: A,
    version: u64,
    snapshot_version: u64,
    recent: VecDeque<Recent>,
    /// The in-memory state may be behind the store: reload before the next turn.
    stale: bool,
    cell: Arc<OutboxCell>,
    /// The mailbox, for the pump's forward requests (weak: never keeps the actor alive).
    mailbox: mailbox::WeakSender<Msg<A>>,
    /// The outbox got new entries (or was rebuilt) since the pump was last looked at.
    outbox_changed: bool,
}

impl<A: Behavior> Activation<A> {
    fn key(&self) -> &ActorKey {
        self.ctx.myself().key()
    }

    async fn load(
        host: &Arc<Host>,
        key: ActorKey,
        turn: Arc<Turn>,
        cell: Arc<OutboxCell>,
        mailbox: mailbox::WeakSender<Msg<A>>,
    ) -> Result<Self, LoadError> {
        let mut act = Activation {
            host: Arc::clone(host),
            ctx: Ctx::new(ActorRef::bound(key, Arc::clone(host)), turn),
            state: A::default(),
            version: 0,
            snapshot_version: 0,
            recent: VecDeque::new(),
            stale: false,
            cell,
            mailbox,
            outbox_changed: false,
        };
        act.reload().await?;
        Ok(act)
    }

    /// Starts the delivery pump when the outbox has pending work, or the scheduler woke us.
    fn pump_if_needed(&self) {
        let needed = {
            let outbox = self.cell.outbox.lock();
            !outbox.is_idle() || outbox.index.woken
        };
        if needed {
            let mailbox = self.mailbox.clone();
            let forward = Box::new(move || {
                if let Some(tx) = mailbox.upgrade() {
                    let _ = tx.try_send(Msg::Kick);
                }
            });
            self.cell.ensure_pump(&self.host, self.key(), forward);
        }
    }

    /// Rebuilds state from the store: snapshot (if readable) plus the tail of events.
    async fn reload(&mut self) -> Result<(), LoadError> {
        let key = self.key().clone();
        let host = Arc::clone(&self.host);
        self.state = A::default();
        self.version = 0;
        self.snapshot_version = 0;
        self.recent.clear();
        self.cell.outbox.lock().reset();
        match host.snapshots.latest(&key).await {
            Ok(Some(snapshot)) => {
                let decoded = with_decode_host(&host, || {
                    codec::decode::<SnapshotIn<A>>("snapshot", &snapshot.payload)
                });
                match decoded {
                    Ok(s) if s.format <= SNAPSHOT_FORMAT => {
                        self.state = s.state;
                        self.recent = s.recent;
                        self.cell.outbox.lock().restore(s.outbox);
                        self.version = snapshot.version;
                        self.snapshot_version = snapshot.version;
                    }
                    Ok(s) => self.snapshot_unusable(&format!("unknown format {}", s.format)),
                    Err(e) => self.snapshot_unusable(&e.to_string()),
                }
            }
            Ok(None) => {}
            Err(StoreError::Corrupt { reason, .. }) => self.snapshot_unusable(&reason),
            Err(e) => return Err(LoadError::from_store("cannot read snapshot", e)),
        }
        let report = host
            .events
            .read_with_errors(&key, self.version + 1)
            .await
            .map_err(|e| LoadError::from_store("cannot read events", e))?;
        if !report.corrupt.is_empty() {
            let positions: Vec<String> = report
                .corrupt
                .iter()
                .map(|c| format!("{} ({})", c.position, c.reason))
                .collect();
            return Err(LoadError::Failed(format!(
                "{} damaged record(s) at position(s) {}; {} clean commit(s) kept in the store",
                report.corrupt.len(),
                positions.join(", "),
                report.commits.len()
            )));
        }
        for commit in report.commits {
            self.replay_commit(commit).map_err(LoadError::Failed)?;
        }
        self.stale = false;
        self.outbox_changed = true;
        Ok(())
    }

    fn snapshot_unusable(&mut self, reason: &str) {
        Stats::bump(&self.host.stats.snapshot_fallbacks);
        tracing::warn!(actor = %self.key(), %reason, "snapshot unreadable; replaying the full history");
        self.state = A::default();
        self.recent.clear();
        self.cell.outbox.lock().reset();
        self.version = 0;
        self.snapshot_version = 0;
    }

    fn replay_commit(&mut self, commit: CommitRecord) -> Result<(), String> {
        if commit.last_version() <= self.version {
            return Ok(());
        }
        if commit.first_version != self.version + 1 {
            return Err(format!(
                "gap in history: expected version {}, found a commit starting at {}",
                self.version + 1,
                commit.first_version
            ));
        }
        let host = Arc::clone(&self.host);
        for (i, data) in commit.events.iter().enumerate() {
            if data.is_system() {
                continue;
            }
            let version = commit.first_version + i as u64;
            let event: A::Event =
                with_decode_host(&host, || codec::decode("event payload", &data.payload)).map_err(
                    |e| format!("event {version} ({}) does not decode: {e}", data.event_type),
                )?;
            let state = &mut self.state;
            std::panic::catch_unwind(AssertUnwindSafe(|| state.apply(&event)))
                .map_err(|p| format!("apply panicked on event {version}: {}", panic_text(&*p)))?;
            Stats::bump(&host.stats.replayed_events);
        }
        self.version = commit.last_version();
        self.cell.outbox.lock().apply_commit(&commit);
        self.remember(commit.command_id, commit.reply);
        Ok(())
    }

    fn remember(&mut self, command_id: CommandId, reply: Option<Vec<u8>>) {
        let window = self.host.config.dedup_window;
        if window == 0 {
            return;
        }
        while self.recent.len() >= window {
            self.recent.pop_front();
        }
        self.recent.push_back(Recent { command_id, reply });
    }

    /// Serves one command from the inbox: skips it if nobody waits any more or its deadline
    /// passed in the queue, runs it under the deadline watchdog, and answers.
    ///
    /// The envelope stays boxed down to the handler call: every layer of this path is an
    /// `async fn` whose state holds its arguments, so passing the command and its metadata by
    /// value would copy them into each layer (and into the boxed turn) once more.
    async fn serve(&mut self, inbox: &mut Inbox<A>, mut env: Box<Envelope<A>>, waited: bool) {
        if env.reply.is_some() || env.ack.is_some() {
            let abandoned = env.reply.as_ref().is_some_and(|tx| tx.is_closed())
                || (env.reply.is_none() && env.ack.as_ref().is_some_and(|tx| tx.is_closed()));
            if abandoned {
                // The asker is gone: skip, so an overloaded actor sheds stale work.
                Stats::bump(&self.host.stats.abandoned);
                return;
            }
            if waited && Instant::now() >= env.meta.deadline {
                Stats::bump(&self.host.stats.abandoned);
                if let Some(tx) = env.reply.take() {
                    let _ = tx.send(Err(AskError::Timeout {
                        after: env.meta.timeout,
                    }));
                }
                return;
            }
        }
        inbox.current = Some(InFlight {
            deadline: env.meta.deadline,
            command_id: env.meta.command_id,
            reply: env.reply.take(),
            ack: env.ack.take(),
        });
        let finished = match env.meta.origin.clone() {
            Some(origin) => {
                let effect = Box::pin(self.apply_effect(env, *origin));
                inbox.supervise(effect).await.map(Err)
            }
            None => inbox.supervise(self.decide(env)).await.map(Ok),
        };
        self.ctx.turn().end();
        let Some(InFlight {
            mut reply, mut ack, ..
        }) = inbox.current.take()
        else {
            return;
        };
        match finished {
            Some(Ok(result)) => {
                if let Some(tx) = reply.take() {
                    let _ = tx.send(result);
                }
            }
            Some(Err(settle)) => {
                if let Some(tx) = ack.take() {
                    let _ = tx.send(settle);
                }
            }
            None => {
                // Cancelled at its deadline, possibly in the middle of an append.
                Stats::bump(&self.host.stats.abandoned);
                self.stale = true;
            }
        }
    }

    /// Runs the handler on `cmd` (the turn's context set up from `meta`). A panic is not caught
    /// here: it fails the activation's ractor actor, and the root actor starts a fresh one (see
    /// [`Kit::restart`]).
    async fn run_handler(&mut self, env: Box<Envelope<A>>) -> Result<Effect<A>, Failure<A>> {
        let turn = Arc::as_ptr(self.ctx.turn());
        // In a block: the command and its metadata move on (into the handler's future and
        // the turn) and keep no slot in this future's state.
        let fut = {
            let Envelope { cmd, meta, .. } = *env;
            self.ctx.begin(self.version, meta);
            A::dispatch(&self.state, cmd, &mut self.ctx)
        };
        let outcome = InTurn { turn, fut }.await;
        match outcome {
            Err(rejection) => Err(Failure::Rejected(rejection)),
            Ok(effect) => match effect.plan.as_ref().and_then(|p| p.error.clone()) {
                Some(e) => Err(Failure::Invalid(Box::new(AskError::Codec(e)))),
                None => Ok(effect),
            },
        }
    }

    /// A command from an ask or a tell: handle, persist, reply.
    async fn decide(&mut self, env: Box<Envelope<A>>) -> Result<A::Reply, AskError<A::Error>> {
        let ids = CommitIds::of(&env.meta);
        if self.stale {
            Box::pin(self.reload())
                .await
                .map_err(|e| e.to_ask(self.key()))?;
        }
        if let Some(reply) = self.remembered_reply(ids.command_id) {
            Stats::bump(&self.host.stats.deduplicated);
            return reply;
        }
        let result = self.decide_inner(env, ids).await;
        // A turn that asked or told other actors changed them already: whatever went wrong
        // after, the command may be partly applied. Only a retry with the same id is safe.
        match result {
            Err(e) if !matches!(e, AskError::Rejected(_)) && self.ctx.turn().children() > 0 => {
                Err(AskError::OutcomeUnknown {
                    command_id: ids.command_id,
                    reason: format!(
                        "the turn asked other actors before it failed ({e}); they may have applied their part"
                    ),
                })
            }
            other => other,
        }
    }

    async fn decide_inner(
        &mut self,
        env: Box<Envelope<A>>,
        ids: CommitIds,
    ) -> Result<A::Reply, AskError<A::Error>> {
        let effect = match self.run_handler(env).await {
            Ok(effect) => effect,
            Err(Failure::Rejected(e)) => return Err(AskError::Rejected(e)),
            Err(Failure::Invalid(e)) => return Err(*e),
        };
        let Effect {
            events,
            reply,
            plan,
        } = effect;
        if events.is_empty() && plan.as_ref().is_none_or(|p| p.is_empty()) {
            return Ok(match reply {
                Answer::Now(reply) => reply,
                Answer::FromState(read) => read(&self.state),
            });
        }
        // A reply read from the new state needs the events folded before the commit (it is
        // stored with it). Should the commit fail, the state is ahead of the store: reloaded.
        let (reply, folded) = match reply {
            Answer::Now(reply) => (reply, false),
            Answer::FromState(read) => {
                for event in &events {
                    self.state.apply(event);
                }
                (read(&self.state), true)
            }
        };
        let encoded = codec::encode("reply", &reply);
        // Boxed: the append path is large, and a query never takes it — keeping it out of
        // this future keeps the hot path's state machine (moved on every turn) small.
        let stored = match encoded {
            Ok(bytes) => {
                Box::pin(self.persist(
                    events,
                    plan.map(|p| *p).unwrap_or_default(),
                    Some(bytes),
                    ids,
                    None,
                    "Scheduled",
                    folded,
                ))
                .await
            }
            Err(e) => Err(e.into()),
        };
        if folded && stored.is_err() {
            self.stale = true;
        }
        match stored? {
            Stored::Now => Ok(reply),
            // The store already held this command: our state was behind. Answer with the
            // reply stored then.
            Stored::Before => self.remembered_reply(ids.command_id).unwrap_or(Ok(reply)),
        }
    }

    /// A durable effect from `origin`: apply it exactly once and settle it.
    async fn apply_effect(&mut self, env: Box<Envelope<A>>, origin: EffectOrigin) -> Settle {
        let ids = CommitIds::of(&env.meta);
        if self.stale
            && let Err(e) = self.reload().await
        {
            return Settle::Failed {
                reason: e.to_string(),
            };
        }
        if self.cell.outbox.lock().already_applied(self.key(), &origin) {
            Stats::bump(&self.host.stats.effects_duplicates);
            return Settle::Duplicate;
        }
        let delivery = Some(Delivery {
            from: origin.from.clone(),
            seq: origin.seq,
        });
        let (events, plan, mark, rejected) = match self.run_handler(env).await {
            Ok(effect) => (
                effect.events,
                effect.plan.map(|p| *p).unwrap_or_default(),
                "Received",
                None,
            ),
            Err(Failure::Rejected(e)) => {
                // Recorded, so it is never retried (and never applied later by surprise); the
                // sender's compensation, if any, goes back to it as an effect of ours.
                let mut plan = Plan::default();
                if let Some(compensation) = origin.compensation.clone() {
                    plan.sends.push(super::contract::Outgoing {
                        target: Some(origin.from.clone()),
                        command: compensation,
                        due: None,
                        reminder: None,
                        compensation: None,
                    });
                }
                (Vec::new(), plan, "Rejected", Some(e.to_string()))
            }
            Err(Failure::Invalid(e)) => {
                return Settle::Failed {
                    reason: (*e).to_string(),
                };
            }
        };
        match Box::pin(self.persist(events, plan, None, ids, delivery, mark, false)).await {
            Ok(Stored::Before) => {
                Stats::bump(&self.host.stats.effects_duplicates);
                Settle::Duplicate
            }
            Ok(Stored::Now) => match rejected {
                Some(reason) => {
                    Stats::bump(&self.host.stats.effects_rejected);
                    Settle::Rejected { reason }
                }
                None => {
                    Stats::bump(&self.host.stats.effects_applied);
                    Settle::Applied
                }
            },
            Err(e) => {
                if self.cell.outbox.lock().already_applied(self.key(), &origin) {
                    Settle::Duplicate
                } else {
                    Settle::Failed {
                        reason: e.to_string(),
                    }
                }
            }
        }
    }

    /// Forwards the delayed effects for other actors that came due: one commit settles them
    /// and stores them again as immediate effects (new positions keep each receiver's order).
    async fn forward_due(&mut self) {
        if self.stale && self.reload().await.is_err() {
            return;
        }
        let now = now_ms();
        let due: Vec<OutboxEntry> = {
            let outbox = self.cell.outbox.lock();
            let me = self.key();
            let (items, _) = outbox.due(me, now, &|_, _| false);
            items
                .into_iter()
                .filter_map(|d| match d {
                    crate::workflow::outbox::Due::Forward(seq) => outbox.get(seq).cloned(),
                    crate::workflow::outbox::Due::Deliver(_) => None,
                })
                .collect()
        };
        if due.is_empty() {
            return;
        }
        let command_id = CommandId::random();
        let ids = CommitIds {
            command_id,
            correlation_id: command_id,
            causation_id: None,
        };
        let settled: Vec<u64> = due.iter().map(|e| e.seq).collect();
        let entries: Vec<OutboxEntry> = due
            .into_iter()
            .map(|e| OutboxEntry { due_ms: None, ..e })
            .collect();
        let staged = {
            let mut outbox = self.cell.outbox.lock();
            let mut staged = outbox.stage(self.key(), entries, &[], None);
            staged.settled.extend(settled);
            staged.settled.sort_unstable();
            staged.settled.dedup();
            staged
        };
        if let Err(e) = self
            .append_staged(Vec::new(), staged, None, ids, "Forwarded", false)
            .await
        {
            tracing::debug!(actor = %self.key(), error = %e, "delayed effects not forwarded yet");
        }
    }

    fn remembered_reply(&self, id: CommandId) -> Option<Result<A::Reply, AskError<A::Error>>> {
        let recent = self.recent.iter().rev().find(|r| r.command_id == id)?;
        Some(match &recent.reply {
            Some(bytes) => with_decode_host(&self.host, || codec::decode("reply", bytes))
                .map_err(AskError::Codec),
            None => Err(AskError::Codec(codec::CodecError {
                what: "reply",
                reason: "the original reply was not stored".into(),
            })),
        })
    }

    /// Stores the outcome of a turn: `events`, the durable effects of `plan`, and `delivery`
    /// (the effect it applies), as one commit. `mark` names the bookkeeping event used when
    /// there is no user event; `folded`: the state has the events applied already.
    #[allow(clippy::too_many_arguments)]
    async fn persist(
        &mut self,
        events: Vec<A::Event>,
        plan: Plan,
        reply: Option<Vec<u8>>,
        ids: CommitIds,
        delivery: Option<Delivery>,
        mark: &str,
        folded: bool,
    ) -> Result<Stored, AskError<A::Error>> {
        let now = now_ms();
        let me = self.key().clone();
        let mut entries = Vec::with_capacity(plan.sends.len());
        for (i, out) in plan.sends.into_iter().enumerate() {
            let target = out.target.unwrap_or_else(|| me.clone());
            if target.namespace != me.namespace {
                return Err(AskError::Unbound {
                    actor: target,
                    reason: "durable effects stay within one namespace".into(),
                });
            }
            entries.push(OutboxEntry {
                seq: 0,
                target,
                command_id: ids.command_id.derive(EFFECT_ID_BASE + i as u64),
                causation_id: ids.command_id,
                correlation_id: ids.correlation_id,
                command: out.command,
                due_ms: out.due.map(|d| d.to_ms(now)),
                reminder: out.reminder,
                compensation: out.compensation,
            });
        }
        let staged = self
            .cell
            .outbox
            .lock()
            .stage(&me, entries, &plan.cancels, delivery);
        self.append_staged(events, staged, reply, ids, mark, folded)
            .await
    }

    /// Appends one commit of `events` and the `staged` outbox changes, then folds both (the
    /// events only if not `folded` already).
    async fn append_staged(
        &mut self,
        events: Vec<A::Event>,
        staged: Staged,
        reply: Option<Vec<u8>>,
        ids: CommitIds,
        mark: &str,
        folded: bool,
    ) -> Result<Stored, AskError<A::Error>> {
        if events.is_empty() && staged.is_empty() {
            // Nothing to store (a cancel of a reminder that is not pending, say).
            self.cell.outbox.lock().aborted(staged);
            return Ok(Stored::Now);
        }
        let mut data = Vec::with_capacity(events.len().max(1));
        for event in &events {
            match codec::encode("event", event) {
                Ok(payload) => data.push(EventData {
                    event_type: event_type_name(event).to_owned(),
                    payload,
                }),
                Err(e) => {
                    self.cell.outbox.lock().aborted(staged);
                    return Err(e.into());
                }
            }
        }
        if data.is_empty() {
            // A commit needs an event: a bookkeeping one, which `apply` never sees.
            data.push(EventData {
                event_type: format!("{SYSTEM_EVENT_PREFIX}{mark}"),
                payload: codec::encode("bookkeeping event", &Mark { reason: mark })?,
            });
        }
        if let Err(e) = self.index_before(&staged).await {
            self.cell.outbox.lock().aborted(staged);
            return Err(AskError::from_store(e, ids.command_id));
        }
        let commit = NewCommit {
            command_id: ids.command_id,
            correlation_id: ids.correlation_id,
            causation_id: ids.causation_id,
            timestamp_ms: now_ms(),
            events: data,
            reply: reply.clone(),
            outbox: staged.entries.clone(),
            settled: staged.settled.clone(),
            delivery: staged.delivery.clone(),
        };
        // What the bus publishes once the commit is stored; kept only when anyone listens.
        let for_bus = self
            .host
            .bus
            .wants(&self.host.namespace)
            .then(|| NewCommit {
                command_id: commit.command_id,
                correlation_id: commit.correlation_id,
                causation_id: commit.causation_id,
                timestamp_ms: commit.timestamp_ms,
                events: commit.events.clone(),
                reply: None,
                outbox: Vec::new(),
                settled: Vec::new(),
                delivery: None,
            });
        let appended = {
            let span =
                tracing::debug_span!("append", version = self.version, events = events.len());
            self.host
                .events
                .append(self.key(), self.version, commit)
                .instrument(span)
                .await
        };
        match appended {
            Ok(a) if a.deduplicated => {
                self.cell.outbox.lock().aborted(staged);
                Stats::bump(&self.host.stats.deduplicated);
                self.reload().await.map_err(|e| e.to_ask(self.key()))?;
                Ok(Stored::Before)
            }
            Ok(a) => {
                Stats::bump(&self.host.stats.commits);
                if let Some(stored) = for_bus {
                    // Never waits: full subscriber buffers drop (and count) instead.
                    let record = stored.into_record(self.key(), a.first_version - 1);
                    self.host.bus.publish_commit(&record);
                }
                let state = &mut self.state;
                let applied = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    if !folded {
                        for event in &events {
                            state.apply(event);
                        }
                    }
                }));
                let me = self.key().clone();
                let new_work = !staged.entries.is_empty();
                self.cell.outbox.lock().committed(&me, staged);
                if new_work {
                    self.outbox_changed = true;
                    self.cell.kick.notify_one();
                }
                if let Err(panic) = applied {
                    // Stored but not folded: the state is unusable until reloaded.
                    tracing::error!(actor = %self.key(), message = %panic_text(&*panic), "apply panicked after commit");
                    self.stale = true;
                    return Ok(Stored::Now);
                }
                self.version = a.last_version;
                self.remember(ids.command_id, reply);
                self.maybe_snapshot();
                Ok(Stored::Now)
            }
            Err(err @ StoreError::VersionConflict { .. }) => {
                self.cell.outbox.lock().aborted(staged);
                Stats::bump(&self.host.stats.conflicts);
                if let StoreError::VersionConflict {
                    actor,
                    expected,
                    actual,
                } = &err
                {
                    self.host.bus.publish_system(
                        &self.host.namespace,
                        SystemEvent::VersionConflict {
                            actor: actor.clone(),
                            expected: *expected,
                            actual: *actual,
                        },
                    );
                }
                tracing::warn!(actor = %self.key(), error = %err, "stale activation; reloading from the store");
                self.stale = true;
                let _ = self.reload().await;
                // The winner may have been this very command, run by another activation (a
                // straggler during a forced handoff): then it was applied, and its reply stands.
                if self.recent.iter().any(|r| r.command_id == ids.command_id) {
                    Stats::bump(&self.host.stats.deduplicated);
                    return Ok(Stored::Before);
                }
                Err(AskError::from_store(err, ids.command_id))
            }
            Err(err) => {
                self.cell.outbox.lock().aborted(staged);
                if !err.nothing_written() {
                    self.stale = true;
                }
                Err(AskError::from_store(err, ids.command_id))
            }
        }
    }

    /// Before a commit that adds durable work: make sure the wake-up index has an entry due no
    /// later than that work, so a crash right after the commit cannot strand it.
    async fn index_before(&self, staged: &Staged) -> Result<(), StoreError> {
        let Some(due) = staged.earliest_due() else {
            return Ok(());
        };
        let index = self.cell.outbox.lock().index;
        if index.revision.is_some() && index.due_ms <= due {
            return Ok(());
        }
        let revision = self.host.events.set_wakeup(self.key(), due).await?;
        let mut outbox = self.cell.outbox.lock();
        outbox.index.revision = Some(revision);
        outbox.index.due_ms = due;
        Ok(())
    }

    /// After a load that found pending durable work: make sure the wake-up index has an entry
    /// for it. The activation that stored the work wrote one, but may have removed it since (it
    /// had settled everything in memory, without recording it before it stopped).
    async fn index_inherited_work(&self) {
        let (index, earliest) = {
            let outbox = self.cell.outbox.lock();
            (outbox.index, outbox.earliest_due())
        };
        let (Some(due), None) = (earliest, index.revision) else {
            return;
        };
        match self.host.events.set_wakeup(self.key(), due).await {
            Ok(revision) => {
                let mut outbox = self.cell.outbox.lock();
                if outbox.index.revision.is_none() {
                    outbox.index.revision = Some(revision);
                    outbox.index.due_ms = due;
                }
            }
            Err(e) => {
                tracing::debug!(actor = %self.key(), error = %e, "wake-up entry not written at activation")
            }
        }
    }

    /// The end of a passivation: stop the delivery pump, snapshot what was stored since the last
    /// snapshot, leave the wake-up index right.
    async fn stop(&mut self) {
        self.cell.stop_pump();
        if self.host.config.snapshot_on_passivation && self.version > self.snapshot_version {
            self.save_snapshot_now().await;
        }
        self.settle_index().await;
        Stats::bump(&self.host.stats.passivations);
    }

    /// On stop: leave one index entry due at the earliest pending work, or none.
    async fn settle_index(&self) {
        let (index, earliest) = {
            let outbox = self.cell.outbox.lock();
            (outbox.index, outbox.earliest_due())
        };
        let events = &self.host.events;
        let result = match (earliest, index.revision) {
            (None, Some(revision)) => events.clear_wakeup(self.key(), revision).await,
            (Some(due), Some(_)) if index.due_ms == due => Ok(()),
            (Some(due), _) => events.set_wakeup(self.key(), due).await.map(|_| ()),
            (None, None) => Ok(()),
        };
        if let Err(e) = result {
            tracing::debug!(actor = %self.key(), error = %e, "wake-up index not updated on stop");
        }
    }

    fn encode_snapshot(&self) -> Option<Snapshot> {
        let out = SnapshotOut {
            format: SNAPSHOT_FORMAT,
            state: &self.state,
            recent: &self.recent,
            outbox: self.cell.outbox.lock().image(),
        };
        match codec::encode("snapshot", &out) {
            Ok(payload) => Some(Snapshot {
                version: self.version,
                payload,
                timestamp_ms: now_ms(),
            }),
            Err(e) => {
                tracing::warn!(actor = %self.key(), error = %e, "cannot encode snapshot");
                None
            }
        }
    }

    /// Snapshot policy: every `snapshot_every` events, written in the background.
    fn maybe_snapshot(&mut self) {
        let Some(every) = self.host.kind_info(A::KIND).and_then(|k| k.snapshot_every) else {
            return;
        };
        if every == 0 || self.version - self.snapshot_version < every {
            return;
        }
        let Some(snapshot) = self.encode_snapshot() else {
            return;
        };
        self.snapshot_version = self.version;
        let host = Arc::clone(&self.host);
        let key = self.key().clone();
        tokio::spawn(async move {
            save_snapshot(&host, &key, snapshot).await;
        });
    }

    async fn save_snapshot_now(&mut self) {
        if let Some(snapshot) = self.encode_snapshot() {
            self.snapshot_version = self.version;
            save_snapshot(&self.host, self.ctx.myself().key(), snapshot).await;
        }
    }
}

async fn save_snapshot(host: &Host, key: &ActorKey, snapshot: Snapshot) {
    let version = snapshot.version;
    match host.snapshots.save(key, snapshot).await {
        Ok(()) => {
            Stats::bump(&host.stats.snapshots_saved);
            host.bus.publish_system(
                &key.namespace,
                SystemEvent::SnapshotCreated {
                    actor: key.clone(),
                    version,
                },
            );
        }
        Err(e) => tracing::warn!(actor = %key, version, error = %e, "snapshot not saved"),
    }
}

/// Polls a handler's future inside its turn: every poll publishes the turn as the current one
/// of this thread ([`CurrentTurn`]), so an `ActorRef` used in the handler asks as a child of it.
struct InTurn<F> {
    turn: *const Turn,
    /// The handler's future, inline: the turn's own future is boxed already (see
    /// [`Kit::live`]), so a second allocation per command would buy nothing.
    fut: F,
}

// SAFETY: `turn` points into an `Arc<Turn>` (`Turn: Send + Sync`) that the activation owning
// this future keeps alive for longer than the future; the pointer is only read while the
// future is polled.
unsafe impl<F: Send> Send for InTurn<F> {}

impl<F: Future> Future for InTurn<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: structural pinning: `fut` is never moved out of `self` (no method hands it
        // out, and `InTurn` has no `Drop` impl), so pinning `self` pins `fut`.
        let this = unsafe { self.get_unchecked_mut() };
        let _current = CurrentTurn::enter(this.turn);
        // SAFETY: see above.
        unsafe { Pin::new_unchecked(&mut this.fut) }.poll(cx)
    }
}

fn panic_text(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
