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
//! [`CallError::HandlerPanicked`] and gives the kit to a fresh activation, which reloads the
//! state from the store and serves what was queued. Nothing queued is lost, and nothing is
//! stored for the panicking command.
//!
//! # Life of an activation
//!
//! 1. **Wait** for a previous activation of the same actor to finish stopping, if any.
//! 2. **Load** (under the replay permit that bounds concurrent replays): the latest snapshot if
//!    it decodes — an unreadable snapshot is logged and ignored, never trusted — then every
//!    commit after it, applied in order. A damaged or undecodable record fails the activation
//!    with [`CallError::ActivationFailed`]; it never yields a state built on a hole. The outbox
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
//! - The handler panics: the caller gets [`CallError::HandlerPanicked`] (or
//!   [`CallError::OutcomeUnknown`] if the turn had asked other actors), nothing is stored, and
//!   a fresh activation, started by the root actor, serves the next command with the state
//!   from the store (see *Hosting*).
//! - The append meets a [`VersionConflict`](crate::store::StoreError::VersionConflict): another
//!   writer got there first, so this activation's state is stale. It discards it, reloads from
//!   the store, and answers [`CallError::VersionConflict`] (safe to retry). It never applies an
//!   event that was not stored.
//! - The append's outcome is unknown: the caller gets [`CallError::OutcomeUnknown`] with the
//!   command id, and the activation reloads before its next turn; a retry with the same id is
//!   answered from the stored commit.
//! - The turn asked other actors before it failed: their part may be applied, so the error
//!   becomes [`CallError::OutcomeUnknown`] — retry only with the same command id.
//!
//! # Idempotency
//!
//! Each commit stores the command id and the encoded reply. The activation keeps the last
//! `dedup_window` of them (rebuilt on replay, carried in snapshots): a command whose id is among
//! them is answered with the stored reply and not handled again. Durable effects are
//! deduplicated by their origin instead, with no window (see [`workflow`](crate::workflow)).

mod commit;
mod snapshot;
mod turn;

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
use crate::errors::{AskError, CallError};
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
///
/// - 1, 2: the state inline; written before state versions: used while the code's state
///   version is 0, ignored (full replay) once it declares one.
/// - 3: the state encoded on its own, with the state schema's version beside it, so that an
///   older state can be handed to [`Behavior::migrate_state`] as the bytes it was written as.
const SNAPSHOT_FORMAT: u16 = 3;

/// The snapshot payload: state plus the dedup window and the outbox, so idempotency and
/// durable effects survive snapshots.
#[derive(Serialize)]
struct SnapshotOut<'a> {
    format: u16,
    state_version: u32,
    #[serde(with = "serde_bytes")]
    state: &'a [u8],
    recent: &'a VecDeque<Recent>,
    outbox: OutboxImage,
}

/// Only the format of a snapshot, read first to choose how to read the rest.
#[derive(Deserialize)]
struct SnapshotHead {
    format: u16,
}

/// Formats 1 and 2.
#[derive(Deserialize)]
struct SnapshotInline<A> {
    state: A,
    #[serde(default)]
    recent: VecDeque<Recent>,
    #[serde(default)]
    outbox: OutboxImage,
}

/// Format 3.
#[derive(Deserialize)]
struct SnapshotIn {
    state_version: u32,
    #[serde(with = "serde_bytes")]
    state: Vec<u8>,
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
    /// The loaded activation, while it hibernates (see *Hibernation*).
    parked: Option<Box<Activation<A>>>,
}

/// How [`Kit::live`] ended.
enum Ended {
    /// Passivated (or failed to load): the activation is over.
    Stopped,
    /// Asked to hibernate, and nothing was waiting: the activation is in the kit.
    Hibernating,
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
            parked: None,
        }
    }

    /// Runs the activation until it passivates (or fails to load) or hibernates.
    async fn live(&mut self, predecessor: Option<Done>) -> Ended {
        let Kit {
            host,
            key,
            inbox,
            tx,
            cell,
            generation,
            parked,
            ..
        } = self;
        let act = match parked.take() {
            Some(act) => act,
            None => match Box::pin(Self::activate(
                host,
                key,
                inbox,
                tx,
                cell,
                *generation,
                predecessor,
            ))
            .await
            {
                Some(act) => act,
                None => return Ended::Stopped,
            },
        };
        host.note_awake(Box::new(tx.clone()));
        Self::serve_all(host, key, inbox, tx, *generation, parked, act).await
    }

    /// Loads the activation (after its predecessor stopped); `None` if it failed, every
    /// queued command answered.
    async fn activate(
        host: &Arc<Host>,
        key: &ActorKey,
        inbox: &mut Inbox<A>,
        tx: &mailbox::WeakSender<Msg<A>>,
        cell: &Arc<OutboxCell>,
        generation: u64,
        predecessor: Option<Done>,
    ) -> Option<Box<Activation<A>>> {
        if let Some(previous) = predecessor {
            Box::pin(inbox.supervise(wait_done(previous))).await;
        }
        let turn = Arc::clone(inbox.turn());
        let started = crate::metrics::now();
        let load = async {
            let _loading = Loading::new(&host.stats.activating);
            let _permit = host.replays.acquire().await;
            let span = tracing::debug_span!(
                "activate",
                namespace = %key.namespace,
                kind = A::KIND,
                id = %key.id,
                shard = host.shard_of(A::KIND, &key.id),
                node = %host.node,
                version = tracing::field::Empty,
            );
            let loaded =
                Activation::<A>::load(host, key.clone(), turn, Arc::clone(cell), tx.clone())
                    .instrument(span.clone())
                    .await;
            if let Ok(act) = &loaded {
                span.record("version", act.version);
            }
            loaded
        };
        // Boxed, like every long path below: an idle activation keeps only the loop's state.
        let loaded = match Box::pin(inbox.supervise(load)).await {
            Some(loaded) => loaded,
            None => Err(LoadError::Failed("activation was cancelled".to_owned())),
        };
        let act = match loaded {
            Ok(act) => act,
            Err(error) => {
                Stats::bump(&host.stats.activation_failures);
                tracing::warn!(%error, "activation failed");
                host.forget(A::KIND, &key.id, generation);
                Box::pin(inbox.fail_all(|| error.to_ask(key))).await;
                return None;
            }
        };
        Stats::bump(&host.stats.activations);
        if let Some(meters) = host.meters(A::KIND) {
            meters.activated(started.elapsed(), act.version - act.snapshot_version);
        }
        Box::pin(act.index_inherited_work()).await;
        act.pump_if_needed();
        Some(Box::new(act))
    }

    /// Serves the inbox until the activation passivates or hibernates.
    async fn serve_all(
        host: &Arc<Host>,
        key: &ActorKey,
        inbox: &mut Inbox<A>,
        tx: &mailbox::WeakSender<Msg<A>>,
        generation: u64,
        parked: &mut Option<Box<Activation<A>>>,
        mut act: Box<Activation<A>>,
    ) -> Ended {
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
                Work::Hibernate if act.may_hibernate() => {
                    act.cell.stop_pump();
                    *parked = Some(act);
                    return Ended::Hibernating;
                }
                // Durable work pending: awake for now, asked again later.
                Work::Hibernate => host.note_awake(Box::new(tx.clone())),
            }
        }
        Box::pin(act.stop()).await;
        host.forget(A::KIND, &key.id, generation);
        Ended::Stopped
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
                    AskError::Failed(CallError::OutcomeUnknown {
                        command_id,
                        reason: format!(
                            "the handler panicked ({reason}) after asking other actors; they may have applied their part"
                        ),
                    })
                } else {
                    AskError::Failed(CallError::HandlerPanicked {
                        actor: self.key.clone(),
                        message: reason.clone(),
                    })
                };
                tx.send(Err(error));
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
            let (mut life, mut predecessor) = *start;
            life.id = Some(myself.get_id());
            while let Some(kit) = life.kit.as_mut() {
                // Boxed: the live future would otherwise sit inline in ractor's loop future.
                match Box::pin(kit.live(predecessor.take())).await {
                    Ended::Stopped => break,
                    Ended::Hibernating => {
                        // Parked: the kit waits on its mailbox, and this ractor actor stops.
                        // Something arrived meanwhile: serve it here.
                        if let Some(kit) = life.kit.take() {
                            life.kit = Dormant::park(kit);
                        }
                    }
                }
            }
            // A clean end: dropping the kit (if still here) signals that the actor stopped.
            life.id = None;
            drop(life);
        }
        myself.stop(Some("passivated".into()));
        Ok(())
    }
}

/// A hibernating activation: its kit, parked on its mailbox until the next message, close
/// or last sender's drop wakes it (see *Hibernation* in the module docs). It is the waker the
/// mailbox holds; waking it spawns a ractor actor that serves the kit again.
struct Dormant<A: Behavior> {
    slot: parking_lot::Mutex<Slot<A>>,
}

enum Slot<A: Behavior> {
    /// Registered with the mailbox; the kit is on its way in.
    Parking,
    /// Woken: the kit went (or goes) back to work.
    Woken,
    Parked(Box<Kit<A>>),
}

impl<A: Behavior> Dormant<A> {
    /// Parks `kit` on its mailbox; hands it back when there is something to serve already.
    fn park(kit: Box<Kit<A>>) -> Option<Box<Kit<A>>> {
        let dormant = Arc::new(Dormant {
            slot: parking_lot::Mutex::new(Slot::Parking),
        });
        let waker = std::task::Waker::from(Arc::clone(&dormant));
        if !kit.inbox.park(&waker) {
            return Some(kit);
        }
        let mut slot = dormant.slot.lock();
        if matches!(*slot, Slot::Woken) {
            // Woken between the registration and now: serve it in place.
            return Some(kit);
        }
        let stats = &kit.host.stats;
        Stats::bump(&stats.hibernations);
        Stats::bump(&stats.hibernating);
        *slot = Slot::Parked(kit);
        None
    }
}

impl<A: Behavior> std::task::Wake for Dormant<A> {
    fn wake(self: Arc<Self>) {
        let parked = std::mem::replace(&mut *self.slot.lock(), Slot::Woken);
        if let Slot::Parked(kit) = parked {
            let host = Arc::clone(&kit.host);
            host.stats
                .hibernating
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            host.spawn_hosted(
                Life {
                    kit: Some(kit),
                    id: None,
                },
                None,
            );
        }
    }
}

/// Why an actor could not be loaded.
#[derive(Debug, Clone)]
enum LoadError {
    /// The store could not be reached: transient, reported as `Unavailable`.
    Unavailable(String),
    /// The history is damaged or does not decode: reported as `ActivationFailed`.
    Failed(String),
    /// The events read started before the history's start (retention): retried by
    /// `reload`, then reported as one of the others.
    Truncated(String),
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
            LoadError::Unavailable(reason) => AskError::Failed(CallError::Unavailable {
                reason: reason.clone(),
            }),
            LoadError::Failed(reason) | LoadError::Truncated(reason) => {
                AskError::Failed(CallError::ActivationFailed {
                    actor: actor.clone(),
                    reason: reason.clone(),
                })
            }
        }
    }
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Unavailable(r) | LoadError::Failed(r) | LoadError::Truncated(r) => {
                f.write_str(r)
            }
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

/// Counts an activation as loading while it lives.
struct Loading<'a>(&'a std::sync::atomic::AtomicU64);

impl<'a> Loading<'a> {
    fn new(gauge: &'a std::sync::atomic::AtomicU64) -> Self {
        gauge.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Loading(gauge)
    }
}

impl Drop for Loading<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
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
    /// The running turn's workflow is traced (its spans are made).
    traced: bool,
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
            traced: false,
        };
        act.reload().await?;
        Ok(act)
    }

    /// Whether the activation may hibernate: no durable work pending, no wake-up entry it
    /// still has to settle. (Its pump, stopped on hibernation, has nothing to do then.)
    fn may_hibernate(&self) -> bool {
        let outbox = self.cell.outbox.lock();
        outbox.is_idle() && !outbox.index.woken && outbox.index.revision.is_none()
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
        // A snapshot saved — and the history truncated behind it (retention) — between reading
        // the snapshot and reading the events makes the event read start before the history's
        // start; so does a lagging replica's older snapshot. Both pass: read both again.
        let mut attempt = 0u32;
        loop {
            match self.reload_once().await {
                Err(LoadError::Truncated(reason)) if attempt < 4 => {
                    attempt += 1;
                    tracing::debug!(actor = %self.key(), %reason, attempt, "reloading after a truncation");
                    tokio::time::sleep(std::time::Duration::from_millis(5 << attempt)).await;
                }
                // Still older than the history with a snapshot in hand: the snapshot read lags.
                Err(LoadError::Truncated(reason)) if self.snapshot_version > 0 => {
                    return Err(LoadError::Unavailable(reason));
                }
                // No snapshot this code can use, and the history before it is gone.
                Err(LoadError::Truncated(reason)) => return Err(LoadError::Failed(reason)),
                other => return other,
            }
        }
    }

    async fn reload_once(&mut self) -> Result<(), LoadError> {
        let key = self.key().clone();
        let host = Arc::clone(&self.host);
        self.state = A::default();
        self.version = 0;
        self.snapshot_version = 0;
        self.recent.clear();
        self.cell.outbox.lock().reset();
        match host.snapshots.latest(&key).await {
            Ok(Some(snapshot)) => match self.read_snapshot(&snapshot.payload) {
                Ok(restored) => {
                    self.state = restored.state;
                    self.recent = restored.recent;
                    self.cell.outbox.lock().restore(restored.outbox);
                    self.version = snapshot.version;
                    self.snapshot_version = snapshot.version;
                }
                Err(reason) => self.snapshot_unusable(&reason),
            },
            Ok(None) => {}
            Err(StoreError::Corrupt { reason, .. }) => self.snapshot_unusable(&reason),
            Err(e) => return Err(LoadError::from_store("cannot read snapshot", e)),
        }
        let replay = tracing::debug_span!(
            "replay",
            from = self.version + 1,
            events = tracing::field::Empty,
        );
        // The store hands the commits over one at a time: a long history is never held
        // decoded whole, and each record is applied while its bytes are still in cache.
        let before = self.version;
        let mut failed = None;
        let found = host
            .events
            .replay(
                &key,
                self.version + 1,
                &mut |commit| match self.replay_commit(commit) {
                    Ok(()) => true,
                    Err(reason) => {
                        failed = Some(reason);
                        false
                    }
                },
            )
            .instrument(replay.clone())
            .await
            .map_err(|e| match e {
                StoreError::HistoryTruncated { .. } => {
                    LoadError::Truncated(format!("cannot read events: {e}"))
                }
                e => LoadError::from_store("cannot read events", e),
            })?;
        if !found.corrupt.is_empty() {
            let positions: Vec<String> = found
                .corrupt
                .iter()
                .map(|c| format!("{} ({})", c.position, c.reason))
                .collect();
            return Err(LoadError::Failed(format!(
                "{} damaged record(s) at position(s) {}; {} clean commit(s) kept in the store",
                found.corrupt.len(),
                positions.join(", "),
                found.commits
            )));
        }
        if let Some(reason) = failed {
            return Err(LoadError::Failed(reason));
        }
        replay.record("events", self.version - before);
        self.stale = false;
        self.outbox_changed = true;
        Ok(())
    }

    /// Applies one stored commit (lent by the store: its reply is taken, the rest left).
    fn replay_commit(&mut self, commit: &mut CommitRecord) -> Result<(), String> {
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
        let host = &self.host;
        let mut applied = 0;
        for (i, data) in commit.events.iter().enumerate() {
            if data.is_system() {
                continue;
            }
            let version = commit.first_version + i as u64;
            // A panicking upcaster (user code) fails the load like a panicking `apply`.
            let decoded = with_decode_host(host, || {
                std::panic::catch_unwind(AssertUnwindSafe(|| {
                    crate::actor::decode_event::<A>(
                        &data.event_type,
                        data.schema_version,
                        &data.payload,
                    )
                }))
            })
            .map_err(|p| {
                format!(
                    "upcast_event panicked on event {version} ({}): {}",
                    data.event_type,
                    panic_text(&*p)
                )
            })?;
            let event: A::Event = decoded.map_err(|e| {
                format!("event {version} ({}) does not decode: {e}", data.event_type)
            })?;
            let state = &mut self.state;
            std::panic::catch_unwind(AssertUnwindSafe(|| state.apply(&event)))
                .map_err(|p| format!("apply panicked on event {version}: {}", panic_text(&*p)))?;
            applied += 1;
        }
        host.stats
            .replayed_events
            .fetch_add(applied, std::sync::atomic::Ordering::Relaxed);
        self.version = commit.last_version();
        if !(commit.outbox.is_empty() && commit.settled.is_empty() && commit.delivery.is_none()) {
            self.cell.outbox.lock().apply_commit(commit);
        }
        self.remember(commit.command_id, commit.reply.take());
        Ok(())
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
                    tx.send(Err(AskError::Failed(CallError::Timeout {
                        after: env.meta.timeout,
                    })));
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
        let started = self.host.meters(A::KIND).map(|_| crate::metrics::now());
        let asked_at = env.meta.asked_at;
        self.traced = env.meta.traced;
        let span = if !self.traced {
            tracing::Span::none()
        } else {
            tracing::debug_span!(
                "handle",
                trace_id = %crate::wire::TraceId(env.meta.correlation_id.as_u128()),
                parent_span_id = %crate::wire::SpanId(crate::wire::span_id(env.meta.command_id)),
                namespace = %self.key().namespace,
                kind = A::KIND,
                id = %self.key().id,
                node = %self.host.node,
                version = self.version,
                command_id = %env.meta.command_id,
            )
        };
        crate::opentelemetry::adopt(
            &span,
            env.meta.correlation_id.as_u128(),
            crate::wire::span_id(env.meta.command_id),
        );
        let finished = match env.meta.origin.clone() {
            Some(origin) => {
                let effect = Box::pin(self.apply_effect(env, *origin));
                inbox.supervise(effect).instrument(span).await.map(Err)
            }
            // An untraced turn skips the span's enter and exit on every poll.
            None if span.is_none() => {
                let work = std::pin::pin!(self.decide(env));
                inbox.supervise_pinned(work).await.map(Ok)
            }
            None => {
                let work = std::pin::pin!(self.decide(env));
                inbox.supervise_pinned(work).instrument(span).await.map(Ok)
            }
        };
        if let Some(started) = started
            && let Some(meters) = self.host.meters(A::KIND)
        {
            let took = started.elapsed();
            // The queue wait at the coarse clock's resolution (it matters when long), the
            // turn to the nanosecond.
            let waited = asked_at.map(|asked_at| {
                let waited = super::clock::coarse_now().saturating_duration_since(asked_at);
                waited.saturating_sub(took) + took
            });
            meters.local_turn(took, waited);
        }
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
                    tx.send(result);
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

    /// The end of a passivation: stop the delivery pump, snapshot what was stored since the last
    /// snapshot, leave the wake-up index right.
    async fn stop(&mut self) {
        self.cell.stop_pump();
        // Not after a reload that failed: the state may be a prefix of the history, applied
        // up to a damaged record.
        if self.host.config.snapshot_on_passivation
            && self.version > self.snapshot_version
            && !self.stale
        {
            self.save_snapshot_now().await;
        }
        self.settle_index().await;
        Stats::bump(&self.host.stats.passivations);
    }
}

pin_project_lite::pin_project! {
    /// Polls a handler's future inside its turn: every poll publishes the turn as the current
    /// one of this thread (`CurrentTurn`), so an `ActorRef` used in the handler asks as a
    /// child of it.
    struct InTurn<F> {
        turn: *const Turn,
        // The handler's future, inline: the turn's own future is boxed already (see
        // `Kit::live`), so a second allocation per command would buy nothing.
        #[pin]
        fut: F,
    }
}

// SAFETY: `turn` points into an `Arc<Turn>` (`Turn: Send + Sync`) that the activation owning
// this future keeps alive for longer than the future; the pointer is only read while the
// future is polled. (A raw pointer rather than an `Arc` clone: no atomic count per turn.)
#[allow(unsafe_code)]
unsafe impl<F: Send> Send for InTurn<F> {}

impl<F: Future> Future for InTurn<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _current = CurrentTurn::enter(*this.turn);
        this.fut.poll(cx)
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
