//! The inbox of an activation: its bounded mailbox, the commands taken out of it early while a
//! turn runs, every deadline, and the refusal of asks that would deadlock.
//!
//! # Deadlines without a timer per ask
//!
//! An asker does not arm a timer of its own. Instead the activation guarantees an answer by
//! each command's deadline: a command taken from the mailbox after its deadline is answered
//! [`CallError::Timeout`] (never started); while a turn (or the load) is in progress, the
//! activation keeps receiving into a bounded local queue and arms **one** timer for the earliest
//! deadline — queued commands that expire get `Timeout`, and a turn still running at its own
//! deadline is cancelled and answered [`CallError::OutcomeUnknown`]. A turn that completes
//! without waiting (a query, an append to a ready store) never touches a timer at all.
//!
//! Commands in that local queue still wait, so they still take their room in the mailbox
//! (taken out with `recv_held`, given back by [`Inbox::sync_held`]): the mailbox capacity
//! bounds every waiting command, wherever it waits.
//!
//! # Deadlocks
//!
//! While the running turn waits on other actors (`ctx.ask`), asks from other turns pile up
//! here. Two checks keep them from waiting out their deadlines in a cycle:
//!
//! - at once: an ask whose chain of waiting callers includes an actor this turn waits on can
//!   never be served (two turns asked each other's actors) and is refused with
//!   [`CallError::Deadlock`];
//! - by edge chasing, for cycles of up to 32 actors and across nodes: an ask from another turn that
//!   has waited [`PROBE_AFTER`] sends a [`Control::Probe`] to every actor this turn waits on.
//!   Waiting actors pass it along their own wait-for edges; when it reaches the asker while the
//!   asker's turn is still the one waiting here, the asker answers with a [`Control::Break`] and
//!   the ask is refused with `Deadlock` — it never ran. Probes repeat every [`PROBE_EVERY`]
//!   while the ask stays blocked, so a lost probe (a full mailbox, a moving shard) only delays
//!   detection.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::context::Turn;
use super::contract::Behavior;
use super::delivery::{OutboxCell, send_control};
use super::host::Host;
use super::mailbox;
use crate::errors::{AskError, CallError};
use crate::names::ActorKey;
use crate::wire::{CommandId, Control, EffectOrigin, Settle};

/// How long an ask from another turn waits behind a waiting turn before it probes for a cycle.
pub(crate) const PROBE_AFTER: Duration = Duration::from_millis(50);
/// How often a still-blocked ask probes again.
pub(crate) const PROBE_EVERY: Duration = Duration::from_millis(100);
/// The longest path a probe travels (cycles longer than this are left to the deadline).
const MAX_PROBE_PATH: usize = 32;

/// What travels through a mailbox.
pub(crate) enum Msg<A: Behavior> {
    /// A command (boxed: keeps mailbox slots small).
    Command(Box<Envelope<A>>),
    /// Stop after the queued commands.
    Passivate,
    /// From the wake-up scheduler: the actor has durable work due; its index entry.
    Wake {
        /// The entry's revision.
        revision: u64,
        /// The entry's due time.
        due_ms: u64,
    },
    /// From the delivery pump: delayed effects for other actors came due; forward them.
    Kick,
    /// Deadlock detection between turns.
    Control(Box<Control>),
    /// From the host's sweeper: the actor has been idle for `hibernate_after`; hibernate if
    /// nothing else is waiting.
    Hibernate,
}

/// What an ask's turn ends with.
pub(crate) type AskResult<A> = Result<
    <A as super::EventSourcedActor>::Reply,
    AskError<<A as super::EventSourcedActor>::Error>,
>;

/// Where an ask's outcome goes.
pub(crate) enum ReplyTx<A: Behavior> {
    /// An asker on this node waits on the channel.
    Local(oneshot::Sender<AskResult<A>>),
    /// An asker on another node waits on its NATS reply subject: the activation encodes the
    /// outcome and publishes it from its own task (see [`RemoteAnswer`]).
    Remote(super::remote::RemoteAnswer),
}

impl<A: Behavior> ReplyTx<A> {
    /// Answers the asker.
    pub fn send(self, result: AskResult<A>) {
        match self {
            ReplyTx::Local(tx) => {
                let _ = tx.send(result);
            }
            ReplyTx::Remote(to) => to.send::<A>(result),
        }
    }

    /// Whether the asker has stopped waiting (known only for a local asker).
    pub fn is_closed(&self) -> bool {
        match self {
            ReplyTx::Local(tx) => tx.is_closed(),
            ReplyTx::Remote(_) => false,
        }
    }
}

/// The channel on which a durable effect's receiver settles it.
pub(crate) type AckTx = oneshot::Sender<Settle>;

/// A command with its metadata and, for an ask, where to reply.
pub(crate) struct Envelope<A: Behavior> {
    pub cmd: A::Command,
    pub meta: CallMeta,
    /// An ask's reply channel.
    pub reply: Option<ReplyTx<A>>,
    /// A durable effect's settlement channel.
    pub ack: Option<AckTx>,
    /// When it was queued behind a busy turn (only asks from other turns: for probes).
    pub queued_at: Option<Instant>,
    /// When it last probed for a cycle.
    pub probed_at: Option<Instant>,
}

impl<A: Behavior> Envelope<A> {
    /// A command with nobody waiting for its outcome yet.
    pub fn new(cmd: A::Command, meta: CallMeta) -> Self {
        Envelope {
            cmd,
            meta,
            reply: None,
            ack: None,
            queued_at: None,
            probed_at: None,
        }
    }

    /// An ask's command, answered on `reply`.
    pub fn asked(cmd: A::Command, meta: CallMeta, reply: ReplyTx<A>) -> Self {
        Envelope {
            reply: Some(reply),
            ..Envelope::new(cmd, meta)
        }
    }

    /// Whether someone waits for the outcome.
    fn awaited(&self) -> bool {
        self.reply.is_some() || self.ack.is_some()
    }

    /// Answers the waiting side: the ask with `err`; a durable effect is left unsettled (its
    /// sender delivers it again).
    pub fn fail(&mut self, err: impl FnOnce() -> AskError<A::Error>) {
        if let Some(tx) = self.reply.take() {
            tx.send(Err(err()));
        }
        self.ack = None;
    }
}

/// Metadata of one command.
#[derive(Clone, Debug)]
pub(crate) struct CallMeta {
    pub command_id: CommandId,
    pub correlation_id: CommandId,
    pub causation_id: Option<CommandId>,
    pub deadline: Instant,
    /// The whole time the asker allowed (for error messages).
    pub timeout: Duration,
    /// The actors waiting on this command, outermost first (for cycle detection).
    pub chain: Vec<ActorKey>,
    /// Set when the command is a durable effect (boxed: keeps every other command's
    /// metadata small).
    pub origin: Option<Box<EffectOrigin>>,
    /// The workflow is traced: this call gets spans (see `wire::TraceParent`).
    pub traced: bool,
    /// When a local ask was queued (coarse clock), if its latency is measured: the actor
    /// records it as the queue wait plus its turn (see `metrics`).
    pub asked_at: Option<Instant>,
}

impl CallMeta {
    /// The metadata of a command that starts a chain of its own, due `timeout` from now (see
    /// [`clock`](super::clock) for how little that reading costs).
    pub fn detached(command_id: CommandId, timeout: Duration) -> Self {
        Self::asked(command_id, timeout, false)
    }

    /// [`detached`](Self::detached), and `measured`: note when it was asked (`asked_at`, from
    /// the same clock read as the deadline) for the actor to record its latency.
    pub fn asked(command_id: CommandId, timeout: Duration, measured: bool) -> Self {
        let (now, deadline) = super::clock::now_and_deadline(timeout);
        CallMeta {
            command_id,
            correlation_id: command_id,
            causation_id: None,
            deadline,
            timeout,
            chain: Vec::new(),
            origin: None,
            traced: false,
            asked_at: measured.then_some(now),
        }
    }
}

/// The command being handled, as the watchdog sees it. The inbox owns it while the turn runs,
/// so that if the handler panics, the activation that takes over the mailbox answers its asker
/// (see [`activation`](super::activation)).
pub(crate) struct InFlight<A: Behavior> {
    pub deadline: Instant,
    pub command_id: CommandId,
    pub reply: Option<ReplyTx<A>>,
    pub ack: Option<AckTx>,
}

/// What the activation should do next.
pub(crate) enum Work<A: Behavior> {
    /// Handle a command; `true` when it may have waited (its deadline must be checked).
    Command(Box<Envelope<A>>, bool),
    /// Delayed effects for other actors came due: forward them.
    Forward,
    /// The scheduler woke the actor: make sure its delivery pump runs.
    Wake,
    /// Nothing is queued and the sweeper found the actor idle: hibernate, if the activation
    /// has no durable work either.
    Hibernate,
}

/// The mailbox plus commands taken out of it early, while the actor was busy. See the
/// [module docs](self).
pub(crate) struct Inbox<A: Behavior> {
    rx: mailbox::Receiver<Msg<A>>,
    queue: VecDeque<Box<Envelope<A>>>,
    /// How many of `queue` the mailbox counts as held (see [`Inbox::sync_held`]).
    held: u32,
    /// The mailbox's capacity (`u32`s: an awake actor's size counts, see B6).
    capacity: u32,
    /// Passivation was asked for: the mailbox is closed, queued commands are still served.
    closing: bool,
    /// The channel is closed and empty.
    drained: bool,
    /// A forward was asked for and not yet handed out.
    kicked: bool,
    /// A wake came in and was not yet handed out.
    woken: bool,
    /// The sweeper asked the actor to hibernate, and it has not answered yet.
    drowsy: bool,
    host: Arc<Host>,
    /// The running turn: what it waits on, which command it is.
    turn: Arc<Turn>,
    outbox: Arc<OutboxCell>,
    /// The command being handled, while a turn runs.
    pub current: Option<InFlight<A>>,
}

impl<A: Behavior> Inbox<A> {
    pub fn new(
        rx: mailbox::Receiver<Msg<A>>,
        host: &Arc<Host>,
        turn: Arc<Turn>,
        outbox: Arc<OutboxCell>,
    ) -> Self {
        Inbox {
            rx,
            queue: VecDeque::new(),
            held: 0,
            capacity: u32::try_from(host.config.mailbox_capacity).unwrap_or(u32::MAX),
            closing: false,
            drained: false,
            kicked: false,
            woken: false,
            drowsy: false,
            host: Arc::clone(host),
            turn,
            outbox,
            current: None,
        }
    }

    /// Parks the mailbox's wait on `waker` (see [`mailbox::Receiver::park`]): `false` when
    /// something is already there to receive.
    pub fn park(&self, waker: &std::task::Waker) -> bool {
        self.queue.is_empty() && !self.closing && !self.drained && self.rx.park(waker)
    }

    /// The running turn of this mailbox's activation.
    pub fn turn(&self) -> &Arc<Turn> {
        &self.turn
    }

    fn me(&self) -> &ActorKey {
        &self.turn.me
    }

    /// Tells the mailbox how many commands wait in `queue`, when that changed since it was
    /// last told: they still take room there, so `capacity` bounds every command that waits.
    fn sync_held(&mut self) {
        if self.held as usize != self.queue.len() {
            // At most `capacity`, itself a `u32`.
            self.held = u32::try_from(self.queue.len()).unwrap_or(u32::MAX);
            self.rx.hold(self.queue.len());
        }
    }

    /// Takes in one message from the channel.
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
                    if env.ack.is_some() {
                        queued.ack = env.ack.take();
                    }
                    return;
                }
                if env.reply.is_some() && !env.meta.chain.is_empty() {
                    env.queued_at = Some(Instant::now());
                }
                self.queue.push_back(env)
            }
            Some(Msg::Passivate) => {
                self.closing = true;
                self.rx.close();
            }
            Some(Msg::Wake { revision, due_ms }) => {
                self.outbox.woken(revision, due_ms);
                self.woken = true;
            }
            Some(Msg::Kick) => self.kicked = true,
            Some(Msg::Hibernate) => self.drowsy = true,
            Some(Msg::Control(control)) => self.control(*control),
            None => self.drained = true,
        }
    }

    /// What to do next; `None` once passivation has served everything. A command that
    /// arrives while the actor is idle has not waited, which spares a clock read on the fast
    /// path.
    pub async fn next(&mut self) -> Option<Work<A>> {
        loop {
            if self.woken {
                self.woken = false;
                return Some(Work::Wake);
            }
            if self.kicked {
                self.kicked = false;
                return Some(Work::Forward);
            }
            if let Some(env) = self.queue.pop_front() {
                self.sync_held();
                return Some(Work::Command(env, true));
            }
            if self.drained {
                return None;
            }
            // Only with nothing queued and no passivation under way.
            if std::mem::take(&mut self.drowsy) && !self.closing {
                return Some(Work::Hibernate);
            }
            // The room of commands served from the queue goes back before waiting (a control
            // frame may have taken one out, too).
            self.sync_held();
            match self.rx.recv_queued().await {
                // It arrived while the actor was idle: served now, it has not waited.
                (Some(Msg::Command(env)), false) => return Some(Work::Command(env, false)),
                (msg, _) => self.accept(msg),
            }
        }
    }

    /// The earliest instant at which a queued ask should probe for a cycle (only while the
    /// running turn waits on other actors).
    fn next_probe(&self) -> Option<Instant> {
        if self.turn.targets.lock().is_empty() {
            return None;
        }
        self.queue
            .iter()
            .filter(|e| e.reply.is_some())
            .filter_map(|e| {
                let queued = e.queued_at?;
                Some(match e.probed_at {
                    Some(p) => p + PROBE_EVERY,
                    None => queued + PROBE_AFTER,
                })
            })
            .min()
    }

    /// Runs `work` while keeping every deadline (see the module docs). `None` when `work` was
    /// cancelled because the deadline of the command in flight ([`Inbox::current`]) passed.
    pub async fn supervise<T>(&mut self, work: impl Future<Output = T>) -> Option<T> {
        let work = std::pin::pin!(work);
        self.supervise_pinned(work).await
    }

    /// [`Inbox::supervise`] of work pinned by the caller. A turn's work lives in the turn's
    /// future once this way: an `async fn` that takes a future by value and pins it keeps
    /// room for both the argument and the pinned copy, which made every turn's boxed future
    /// twice the size of its work.
    pub async fn supervise_pinned<T>(
        &mut self,
        mut work: Pin<&mut impl Future<Output = T>>,
    ) -> Option<T> {
        // Fast path: most turns finish without waiting, and need no timer.
        if let Poll::Ready(v) = std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await
        {
            return Some(v);
        }
        // Boxed: the watchdog's state (a timer, the mailbox, the probes) is needed only by
        // turns that wait, and would otherwise enlarge every turn's future.
        Box::pin(self.watch(work)).await
    }

    /// The slow path of [`Inbox::supervise`]: `work` is waiting.
    async fn watch<T>(&mut self, mut work: Pin<&mut impl Future<Output = T>>) -> Option<T> {
        let sleep = tokio::time::sleep_until(Instant::now() + Duration::from_secs(3600));
        let mut sleep = std::pin::pin!(sleep);
        loop {
            let earliest = self
                .queue
                .iter()
                .filter(|e| e.awaited())
                .map(|e| e.meta.deadline)
                .chain(self.current.as_ref().map(|c| c.deadline))
                .chain(self.next_probe())
                .min();
            if let Some(at) = earliest
                && sleep.deadline() != at
            {
                sleep.as_mut().reset(at);
            }
            let room = !self.drained && self.queue.len() < self.capacity as usize;
            tokio::select! {
                biased;
                v = work.as_mut() => return Some(v),
                // Taken out held: a command moved into the queue still takes its room in the
                // mailbox, so `capacity` bounds every waiting command (the `hold` below gives
                // back the room of what did not stay).
                msg = self.rx.recv_held(), if room => {
                    if msg.is_some() {
                        self.held = self.held.saturating_add(1);
                    }
                    match (msg, self.current.as_mut()) {
                        // A resend of the command being handled (same command id): its asker
                        // gave up on the first attempt and listens here now. Answer it, not
                        // twice.
                        (Some(Msg::Command(mut env)), Some(c))
                            if env.meta.command_id == c.command_id =>
                        {
                            if let Some(tx) = env.reply.take() {
                                c.reply = Some(tx);
                            }
                            if let Some(tx) = env.ack.take() {
                                c.ack = Some(tx);
                            }
                        }
                        (msg, _) => self.accept(msg),
                    }
                    self.sync_held();
                }
                () = self.turn.started.notified() => {
                    self.refuse_deadlocked_queue();
                    self.sync_held();
                }
                () = sleep.as_mut(), if earliest.is_some() => {
                    let now = Instant::now();
                    self.expire_queued(now);
                    self.sync_held();
                    self.probe_blocked(now);
                    if let Some(c) = self.current.as_mut()
                        && c.deadline <= now
                    {
                        if let Some(tx) = c.reply.take() {
                            tx.send(Err(AskError::Failed(CallError::OutcomeUnknown {
                                command_id: c.command_id,
                                reason: "the deadline passed while the command was being handled"
                                    .into(),
                            })));
                        }
                        c.ack = None;
                        return None;
                    }
                }
            }
        }
    }

    /// Answers `env` with [`CallError::Deadlock`] if the running turn waits on one of its
    /// waiting callers. Returns whether it did.
    fn refuse_if_deadlocked(&self, env: &mut Envelope<A>) -> bool {
        if env.meta.chain.is_empty() || env.reply.is_none() {
            return false;
        }
        let blocked_on = {
            let waiting = self.turn.targets.lock();
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
        super::host::Stats::bump(&self.host.stats.deadlocks_refused);
        let mut names: Vec<String> = env.meta.chain.iter().map(|k| k.to_string()).collect();
        names.push(format!("{} (waiting on {blocked_on})", self.me()));
        if let Some(tx) = env.reply.take() {
            tx.send(Err(AskError::Failed(CallError::Deadlock {
                chain: names.join(" -> "),
            })));
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

    /// Sends probes for the asks that have been blocked long enough (see the module docs).
    fn probe_blocked(&mut self, now: Instant) {
        let targets = self.turn.targets.lock().clone();
        let Some(origin_turn) = self.turn.current() else {
            return;
        };
        if targets.is_empty() {
            return;
        }
        let me = self.turn.me.clone();
        for env in self.queue.iter_mut() {
            let (Some(queued), true) = (env.queued_at, env.reply.is_some()) else {
                continue;
            };
            let due = match env.probed_at {
                Some(p) => p + PROBE_EVERY,
                None => queued + PROBE_AFTER,
            };
            if due > now {
                continue;
            }
            env.probed_at = Some(now);
            let (Some(seek), Some(seek_turn)) = (env.meta.chain.last(), env.meta.causation_id)
            else {
                continue;
            };
            for target in &targets {
                let probe = Control::Probe {
                    origin: me.clone(),
                    origin_turn,
                    blocked: env.meta.command_id,
                    seek: seek.clone(),
                    seek_turn,
                    path: vec![me.clone()],
                };
                send_control(&self.host, target, probe);
            }
        }
    }

    /// Handles a deadlock-detection frame (see the module docs).
    fn control(&mut self, control: Control) {
        match control {
            Control::Probe {
                origin,
                origin_turn,
                blocked,
                seek,
                seek_turn,
                mut path,
            } => {
                let current = self.turn.current();
                let targets = self.turn.targets.lock().clone();
                if targets.is_empty() {
                    return;
                }
                if &seek == self.me() {
                    // Every actor of a cycle holds a blocked ask and probes; only the probe of
                    // the smallest one breaks it, so one ask is refused, not one per member.
                    let smallest = path
                        .iter()
                        .chain(std::iter::once(&seek))
                        .map(|k| k.to_string())
                        .min();
                    if current == Some(seek_turn) && smallest == Some(origin.to_string()) {
                        path.push(seek);
                        let cycle: Vec<String> = path.iter().map(|k| k.to_string()).collect();
                        let brk = Control::Break {
                            origin_turn,
                            blocked,
                            cycle: format!("{} -> {}", cycle.join(" -> "), origin),
                        };
                        send_control(&self.host, &origin, brk);
                    }
                    return;
                }
                if path.len() >= MAX_PROBE_PATH || path.contains(self.me()) {
                    return;
                }
                path.push(self.me().clone());
                for target in &targets {
                    let probe = Control::Probe {
                        origin: origin.clone(),
                        origin_turn,
                        blocked,
                        seek: seek.clone(),
                        seek_turn,
                        path: path.clone(),
                    };
                    send_control(&self.host, target, probe);
                }
            }
            Control::Break {
                origin_turn,
                blocked,
                cycle,
            } => {
                if self.turn.current() != Some(origin_turn) {
                    return;
                }
                if let Some(i) = self
                    .queue
                    .iter()
                    .position(|e| e.meta.command_id == blocked && e.reply.is_some())
                    && let Some(mut env) = self.queue.remove(i)
                {
                    tracing::debug!(actor = %self.me(), %cycle, "deadlock cycle refused");
                    super::host::Stats::bump(&self.host.stats.deadlocks_refused);
                    env.fail(|| {
                        AskError::Failed(CallError::Deadlock {
                            chain: format!("wait-for cycle {cycle}"),
                        })
                    });
                }
            }
        }
    }

    /// Answers `Timeout` to queued asks whose deadline has passed (a durable effect is left
    /// unsettled: its sender delivers it again).
    fn expire_queued(&mut self, now: Instant) {
        self.queue.retain_mut(|env| {
            if !env.awaited() || env.meta.deadline > now {
                return true;
            }
            let after = env.meta.timeout;
            env.fail(|| AskError::Failed(CallError::Timeout { after }));
            false
        });
    }

    /// Closes the mailbox and answers every waiting ask with `err()`.
    pub async fn fail_all(&mut self, err: impl Fn() -> AskError<A::Error>) {
        self.rx.close();
        while let Some(work) = self.next().await {
            if let Work::Command(mut env, _) = work {
                env.fail(&err);
            }
        }
    }
}
