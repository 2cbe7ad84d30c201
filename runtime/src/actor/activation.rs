//! One activation: the task that brings an actor to life and runs its turns.
//!
//! # Life of an activation
//!
//! 1. **Wait** for a previous activation of the same actor to finish stopping, if any.
//! 2. **Load** (under the replay permit that bounds concurrent replays): the latest snapshot if
//!    it decodes — an unreadable snapshot is logged and ignored, never trusted — then every
//!    commit after it, applied in order. A damaged or undecodable record fails the activation
//!    with [`AskError::ActivationFailed`]; it never yields a state built on a hole.
//! 3. **Serve** turns one at a time from the bounded mailbox (see
//!    [`Behavior`](super::Behavior) for what a turn is).
//! 4. **Stop** on passivation: close the mailbox, serve what is already queued, snapshot if
//!    events were stored since the last snapshot, and signal completion.
//!
//! # When a turn goes wrong
//!
//! - The handler panics: the caller gets [`AskError::HandlerPanicked`], nothing is stored, and
//!   the activation reloads its state from the store before the next turn.
//! - The append meets a [`VersionConflict`](crate::store::StoreError::VersionConflict): another
//!   writer got there first, so this activation's state is stale. It discards it, reloads from
//!   the store, and answers [`AskError::VersionConflict`] (safe to retry). It never applies an
//!   event that was not stored.
//! - The append's outcome is unknown: the caller gets [`AskError::OutcomeUnknown`] with the
//!   command id, and the activation reloads before its next turn; a retry with the same id is
//!   answered from the stored commit.
//!
//! # Idempotency
//!
//! Each commit stores the command id and the encoded reply. The activation keeps the last
//! `dedup_window` of them (rebuilt on replay, carried in snapshots): a command whose id is among
//! them is answered with the stored reply and not handled again.

use std::any::Any;
use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::Instrument;

use super::actor_ref::{ActorRef, with_decode_host};
use super::context::{Ctx, WaitingOn};
use super::contract::Behavior;
use super::host::{Host, Stats, wait_done};
use crate::bus::SystemEvent;
use crate::errors::AskError;
use crate::names::ActorKey;
use crate::store::{NewCommit, Snapshot, StoreError};
use crate::wire::{CommandId, CommitRecord, EventData, codec, event_type_name, now_ms};

/// What travels through a mailbox.
pub(crate) enum Msg<A: Behavior> {
    /// A command (boxed: keeps mailbox slots small).
    Command(Box<Envelope<A>>),
    /// Stop after the queued commands.
    Passivate,
}

/// The reply channel of an ask.
pub(crate) type ReplyTx<A> = oneshot::Sender<
    Result<
        <A as super::EventSourcedActor>::Reply,
        AskError<<A as super::EventSourcedActor>::Error>,
    >,
>;

/// A command with its metadata and, for an ask, where to reply.
pub(crate) struct Envelope<A: Behavior> {
    pub cmd: A::Command,
    pub meta: CallMeta,
    pub reply: Option<ReplyTx<A>>,
}

/// Metadata of one command.
#[derive(Clone, Debug)]
pub(crate) struct CallMeta {
    pub command_id: CommandId,
    pub correlation_id: CommandId,
    pub causation_id: Option<CommandId>,
    pub deadline: Instant,
    /// The whole time the asker allowed (for error messages).
    pub timeout: std::time::Duration,
    /// The actors waiting on this command, outermost first (for cycle detection).
    pub chain: Vec<ActorKey>,
}

/// The ids a commit is stored with.
#[derive(Clone, Copy)]
struct CommitIds {
    command_id: CommandId,
    correlation_id: CommandId,
    causation_id: Option<CommandId>,
}

/// A remembered commit: its command id and the encoded reply.
#[derive(Clone, Serialize, Deserialize)]
struct Recent {
    command_id: CommandId,
    #[serde(with = "serde_bytes", default)]
    reply: Option<Vec<u8>>,
}

/// The snapshot payload: state plus the dedup window, so idempotency survives snapshots.
#[derive(Serialize)]
struct SnapshotOut<'a, A> {
    format: u16,
    state: &'a A,
    recent: &'a VecDeque<Recent>,
}

#[derive(Deserialize)]
struct SnapshotIn<A> {
    format: u16,
    state: A,
    #[serde(default)]
    recent: VecDeque<Recent>,
}

/// Runs one activation to completion.
pub(crate) async fn run<A: Behavior>(
    host: Arc<Host>,
    key: ActorKey,
    rx: mpsc::Receiver<Msg<A>>,
    done: watch::Sender<()>,
    predecessor: Option<watch::Receiver<()>>,
    generation: u64,
) {
    {
        let waiting = WaitingOn::default();
        let mut inbox = Inbox::new(
            rx,
            host.config.mailbox_capacity,
            key.clone(),
            Arc::clone(&waiting),
        );
        if let Some(previous) = predecessor {
            inbox.supervise(wait_done(previous), None).await;
        }
        let load = async {
            let _permit = host.replays.acquire().await;
            let span = tracing::debug_span!("activate", namespace = %key.namespace, kind = A::KIND, id = %key.id);
            Activation::<A>::load(&host, key.clone(), waiting)
                .instrument(span)
                .await
        };
        let loaded = match inbox.supervise(load, None).await {
            Some(loaded) => loaded,
            None => Err(LoadError::Failed("activation was cancelled".to_owned())),
        };
        let mut act = match loaded {
            Ok(act) => act,
            Err(error) => {
                Stats::bump(&host.stats.activation_failures);
                tracing::warn!(%error, "activation failed");
                host.forget(A::KIND, &key.id, generation);
                inbox.fail_all(|| error.to_ask(&key)).await;
                drop(done);
                return;
            }
        };
        Stats::bump(&host.stats.activations);
        while let Some((env, waited)) = inbox.next().await {
            let Envelope {
                cmd,
                meta,
                mut reply,
            } = *env;
            if let Some(tx) = &reply {
                if tx.is_closed() {
                    // The asker is gone: skip, so an overloaded actor sheds stale work.
                    Stats::bump(&host.stats.abandoned);
                    continue;
                }
                if waited && Instant::now() >= meta.deadline {
                    Stats::bump(&host.stats.abandoned);
                    if let Some(tx) = reply.take() {
                        let _ = tx.send(Err(AskError::Timeout {
                            after: meta.timeout,
                        }));
                    }
                    continue;
                }
            }
            let current = Current {
                deadline: meta.deadline,
                command_id: meta.command_id,
                reply: &mut reply,
            };
            match inbox.supervise(act.decide(cmd, meta), Some(current)).await {
                Some(result) => {
                    if let Some(tx) = reply.take() {
                        let _ = tx.send(result);
                    }
                }
                None => {
                    // Cancelled at its deadline, possibly in the middle of an append.
                    Stats::bump(&host.stats.abandoned);
                    act.stale = true;
                }
            }
        }
        if host.config.snapshot_on_passivation && act.version > act.snapshot_version {
            act.save_snapshot_now().await;
        }
        Stats::bump(&host.stats.passivations);
        host.forget(A::KIND, &key.id, generation);
        drop(done);
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

/// The command being handled, as the watchdog sees it.
struct Current<'a, A: Behavior> {
    deadline: Instant,
    command_id: CommandId,
    reply: &'a mut Option<ReplyTx<A>>,
}

/// The mailbox plus commands taken out of it early, while the actor was busy.
///
/// # Deadlines without a timer per ask
///
/// An asker does not arm a timer of its own. Instead the activation guarantees an answer by
/// each command's deadline: a command taken from the mailbox after its deadline is answered
/// [`AskError::Timeout`] (never started); while a turn (or the load) is in progress, the
/// activation keeps receiving into a bounded local queue and arms **one** timer for the earliest
/// deadline — queued commands that expire get `Timeout`, and a turn still running at its own
/// deadline is cancelled and answered [`AskError::OutcomeUnknown`]. A turn that completes
/// without waiting (a query, an append to a ready store) never touches a timer at all.
struct Inbox<A: Behavior> {
    rx: mpsc::Receiver<Msg<A>>,
    queue: VecDeque<Box<Envelope<A>>>,
    capacity: usize,
    /// Passivation was asked for: the mailbox is closed, queued commands are still served.
    closing: bool,
    /// The channel is closed and empty.
    drained: bool,
    /// This actor.
    me: ActorKey,
    /// What the running turn waits on (see [`Inbox::accept`]).
    waiting: WaitingOn,
}

impl<A: Behavior> Inbox<A> {
    fn new(rx: mpsc::Receiver<Msg<A>>, capacity: usize, me: ActorKey, waiting: WaitingOn) -> Self {
        Inbox {
            rx,
            queue: VecDeque::new(),
            capacity,
            closing: false,
            drained: false,
            me,
            waiting,
        }
    }

    /// Takes in one message from the channel.
    ///
    /// An ask that arrives while the running turn waits on an actor that is among the ask's
    /// own waiting callers can never be served — that caller waits on this ask, and this
    /// actor's turn waits on that caller — so it is answered [`AskError::Deadlock`] at once.
    fn accept(&mut self, msg: Option<Msg<A>>) {
        match msg {
            Some(Msg::Command(mut env)) => {
                if self.refuse_if_deadlocked(&mut env) {
                    return;
                }
                // A resend of a queued command (same command id) joins it: the newest asker
                // gets the answer, and the command runs once.
                if let Some(queued) = self
                    .queue
                    .iter_mut()
                    .find(|q| q.meta.command_id == env.meta.command_id)
                {
                    if env.reply.is_some() {
                        queued.reply = env.reply.take();
                    }
                    return;
                }
                self.queue.push_back(env)
            }
            Some(Msg::Passivate) => {
                self.closing = true;
                self.rx.close();
            }
            None => self.drained = true,
        }
    }

    /// The next command to handle, and whether it may have waited (so its deadline must be
    /// checked); `None` once passivation has served everything. A command that arrives while
    /// the actor is idle has not waited, which spares a clock read on the fast path.
    async fn next(&mut self) -> Option<(Box<Envelope<A>>, bool)> {
        loop {
            if let Some(env) = self.queue.pop_front() {
                return Some((env, true));
            }
            if self.drained {
                return None;
            }
            match self.rx.try_recv() {
                Ok(msg) => self.accept(Some(msg)),
                Err(mpsc::error::TryRecvError::Disconnected) => self.accept(None),
                Err(mpsc::error::TryRecvError::Empty) => {
                    let msg = self.rx.recv().await;
                    if let Some(Msg::Command(env)) = msg {
                        return Some((env, false));
                    }
                    self.accept(msg);
                }
            }
        }
    }

    /// Runs `work` while keeping every deadline (see the type docs). `None` when `work` was
    /// cancelled because `current`'s deadline passed.
    async fn supervise<T>(
        &mut self,
        work: impl Future<Output = T>,
        mut current: Option<Current<'_, A>>,
    ) -> Option<T> {
        let mut work = std::pin::pin!(work);
        // Fast path: most turns finish without waiting, and need no timer.
        if let Poll::Ready(v) = std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await
        {
            return Some(v);
        }
        let sleep = tokio::time::sleep_until(Instant::now() + std::time::Duration::from_secs(3600));
        let mut sleep = std::pin::pin!(sleep);
        loop {
            let earliest = self
                .queue
                .iter()
                .filter(|e| e.reply.is_some())
                .map(|e| e.meta.deadline)
                .chain(current.as_ref().map(|c| c.deadline))
                .min();
            if let Some(at) = earliest
                && sleep.deadline() != at
            {
                sleep.as_mut().reset(at);
            }
            let room = !self.drained && self.queue.len() < self.capacity;
            tokio::select! {
                biased;
                v = work.as_mut() => return Some(v),
                msg = self.rx.recv(), if room => match (msg, current.as_mut()) {
                    // A resend of the command being handled (same command id): its asker gave
                    // up on the first attempt and listens here now. Answer it, not twice.
                    (Some(Msg::Command(mut env)), Some(c)) if env.meta.command_id == c.command_id => {
                        if let Some(tx) = env.reply.take() {
                            *c.reply = Some(tx);
                        }
                    }
                    (msg, _) => self.accept(msg),
                },
                () = self.waiting.started.notified() => self.refuse_deadlocked_queue(),
                () = sleep.as_mut(), if earliest.is_some() => {
                    let now = Instant::now();
                    self.expire_queued(now);
                    if let Some(c) = current.as_mut()
                        && c.deadline <= now
                    {
                        if let Some(tx) = c.reply.take() {
                            let _ = tx.send(Err(AskError::OutcomeUnknown {
                                command_id: c.command_id,
                                reason: "the deadline passed while the command was being handled"
                                    .into(),
                            }));
                        }
                        return None;
                    }
                }
            }
        }
    }

    /// Answers `env` with [`AskError::Deadlock`] if the running turn waits on one of its
    /// waiting callers. Returns whether it did.
    fn refuse_if_deadlocked(&self, env: &mut Envelope<A>) -> bool {
        if env.meta.chain.is_empty() || env.reply.is_none() {
            return false;
        }
        let blocked_on = {
            let waiting = self.waiting.targets.lock();
            if waiting.is_empty() {
                return false;
            }
            env.meta
                .chain
                .iter()
                .find(|caller| waiting.contains(caller))
                .cloned()
        };
        let Some(blocked_on) = blocked_on else {
            return false;
        };
        let mut names: Vec<String> = env.meta.chain.iter().map(|k| k.to_string()).collect();
        names.push(format!("{} (waiting on {blocked_on})", self.me));
        if let Some(tx) = env.reply.take() {
            let _ = tx.send(Err(AskError::Deadlock {
                chain: names.join(" -> "),
            }));
        }
        true
    }

    /// The running turn started waiting on another actor: refuse queued asks that now
    /// deadlock (they arrived before it asked).
    fn refuse_deadlocked_queue(&mut self) {
        let mut queue = std::mem::take(&mut self.queue);
        queue.retain_mut(|env| !self.refuse_if_deadlocked(env));
        self.queue = queue;
    }

    /// Answers `Timeout` to queued asks whose deadline has passed.
    fn expire_queued(&mut self, now: Instant) {
        self.queue.retain_mut(|env| {
            if env.reply.is_none() || env.meta.deadline > now {
                return true;
            }
            if let Some(tx) = env.reply.take() {
                let _ = tx.send(Err(AskError::Timeout {
                    after: env.meta.timeout,
                }));
            }
            false
        });
    }

    /// Closes the mailbox and answers every waiting ask with `err()`.
    async fn fail_all(&mut self, err: impl Fn() -> AskError<A::Error>) {
        self.rx.close();
        while let Some((env, _)) = self.next().await {
            if let Some(tx) = env.reply {
                let _ = tx.send(Err(err()));
            }
        }
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
}

impl<A: Behavior> Activation<A> {
    fn key(&self) -> &ActorKey {
        self.ctx.myself().key()
    }

    async fn load(host: &Arc<Host>, key: ActorKey, waiting: WaitingOn) -> Result<Self, LoadError> {
        let mut act = Activation {
            host: Arc::clone(host),
            ctx: Ctx::new(ActorRef::bound(key, Arc::clone(host)), host, waiting),
            state: A::default(),
            version: 0,
            snapshot_version: 0,
            recent: VecDeque::new(),
            stale: false,
        };
        act.reload().await?;
        Ok(act)
    }

    /// Rebuilds state from the store: snapshot (if readable) plus the tail of events.
    async fn reload(&mut self) -> Result<(), LoadError> {
        let key = self.key().clone();
        let host = Arc::clone(&self.host);
        self.state = A::default();
        self.version = 0;
        self.snapshot_version = 0;
        self.recent.clear();
        match host.snapshots.latest(&key).await {
            Ok(Some(snapshot)) => {
                let decoded = with_decode_host(&host, || {
                    codec::decode::<SnapshotIn<A>>("snapshot", &snapshot.payload)
                });
                match decoded {
                    Ok(s) if s.format <= 1 => {
                        self.state = s.state;
                        self.recent = s.recent;
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
        Ok(())
    }

    fn snapshot_unusable(&mut self, reason: &str) {
        Stats::bump(&self.host.stats.snapshot_fallbacks);
        tracing::warn!(actor = %self.key(), %reason, "snapshot unreadable; replaying the full history");
        self.state = A::default();
        self.recent.clear();
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

    async fn decide(
        &mut self,
        cmd: A::Command,
        meta: CallMeta,
    ) -> Result<A::Reply, AskError<A::Error>> {
        let ids = CommitIds {
            command_id: meta.command_id,
            correlation_id: meta.correlation_id,
            causation_id: meta.causation_id,
        };
        if self.stale {
            self.reload().await.map_err(|e| e.to_ask(self.key()))?;
        }
        if let Some(reply) = self.remembered_reply(ids.command_id) {
            Stats::bump(&self.host.stats.deduplicated);
            return reply;
        }
        self.ctx.begin(self.version, meta);
        let outcome = {
            let fut = Box::pin(A::handle(&self.state, cmd, &mut self.ctx));
            CatchUnwind(fut).await
        };
        let effect = match outcome {
            Err(panic) => {
                Stats::bump(&self.host.stats.handler_panics);
                let message = panic_text(&*panic);
                tracing::error!(actor = %self.key(), %message, "handler panicked; reloading state from the store");
                self.stale = true;
                let _ = self.reload().await;
                return Err(AskError::HandlerPanicked {
                    actor: self.key().clone(),
                    message,
                });
            }
            Ok(Err(rejection)) => return Err(AskError::Rejected(rejection)),
            Ok(Ok(effect)) => effect,
        };
        if effect.events.is_empty() {
            return Ok(effect.reply);
        }
        self.persist(effect.events, effect.reply, ids).await
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

    async fn persist(
        &mut self,
        events: Vec<A::Event>,
        reply: A::Reply,
        meta: CommitIds,
    ) -> Result<A::Reply, AskError<A::Error>> {
        let mut data = Vec::with_capacity(events.len());
        for event in &events {
            data.push(EventData {
                event_type: event_type_name(event).to_owned(),
                payload: codec::encode("event", event)?,
            });
        }
        let reply_bytes = codec::encode("reply", &reply)?;
        let commit = NewCommit {
            command_id: meta.command_id,
            correlation_id: meta.correlation_id,
            causation_id: meta.causation_id,
            timestamp_ms: now_ms(),
            events: data,
            reply: Some(reply_bytes.clone()),
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
                // The store already holds this command: our state was behind. Reload and answer
                // with the reply stored then.
                Stats::bump(&self.host.stats.deduplicated);
                self.reload().await.map_err(|e| e.to_ask(self.key()))?;
                self.remembered_reply(meta.command_id)
                    .unwrap_or_else(|| Ok(reply))
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
                    for event in &events {
                        state.apply(event);
                    }
                }));
                if let Err(panic) = applied {
                    // Stored but not folded: the state is unusable until reloaded.
                    tracing::error!(actor = %self.key(), message = %panic_text(&*panic), "apply panicked after commit");
                    self.stale = true;
                    return Ok(reply);
                }
                self.version = a.last_version;
                self.remember(meta.command_id, Some(reply_bytes));
                self.maybe_snapshot();
                Ok(reply)
            }
            Err(err @ StoreError::VersionConflict { .. }) => {
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
                if let Some(reply) = self.remembered_reply(meta.command_id) {
                    Stats::bump(&self.host.stats.deduplicated);
                    return reply;
                }
                Err(AskError::from_store(err, meta.command_id))
            }
            Err(err) => {
                if !err.nothing_written() {
                    self.stale = true;
                }
                Err(AskError::from_store(err, meta.command_id))
            }
        }
    }

    fn encode_snapshot(&self) -> Option<Snapshot> {
        let out = SnapshotOut {
            format: 1,
            state: &self.state,
            recent: &self.recent,
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

/// Polls a future, turning a panic into an `Err` with the panic payload.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
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
