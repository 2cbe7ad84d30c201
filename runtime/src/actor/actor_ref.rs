//! [`ActorRef`]: a typed, serializable handle to an actor.

use std::cell::RefCell;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::sync::oneshot;

use super::context::CurrentTurn;
use super::contract::{Behavior, Command};
use super::host::{Host, MailboxCache, Undelivered};
use super::inbox::{CallMeta, Envelope, Msg, ReplyTx};
use super::residents::key_hash;
use crate::errors::{AskError, CallError};
use crate::metrics::Path;
use crate::names::{ActorId, ActorKey, Kind, NameError, Namespace};
use crate::wire::{CodecError, CommandId, SpanId, TraceId, span_id};
use tracing::Instrument;

/// A handle to the actor `A` with a given id: namespace, kind and id, nothing node-specific.
///
/// Cheap to clone, `Send + Sync`, and serializable: put it inside a command or an event, and the
/// receiving side can call the actor with it. A ref made by a runtime ([`Runtime::actor`], or
/// [`Ctx::actor`](super::Ctx::actor) in a handler) is *bound* to that runtime. A ref decoded by
/// the runtime (from a stored event, a snapshot) is bound to it as well. A ref decoded anywhere
/// else binds on first use to the one runtime of the process serving its namespace, or can be
/// bound explicitly with [`Runtime::bind`].
///
/// [`Runtime::actor`]: crate::Runtime::actor
/// [`Runtime::bind`]: crate::Runtime::bind
pub struct ActorRef<A: Behavior> {
    key: ActorKey,
    host: Option<Arc<Host>>,
    /// The registry's hash of the actor's kind and id (`residents::key_hash`), computed once
    /// per ref rather than once per ask.
    reg_hash: u64,
    /// The actor's mailbox, once an ask delivered to it here: the next asks go straight into
    /// it while it is open (see [`Host::deliver_cached`]). Copied by clones, not serialized.
    mailbox: MailboxCache<A>,
    _actor: PhantomData<fn() -> A>,
}

/// Options of one ask: command id, timeout, correlation.
#[derive(Debug, Clone, Default)]
pub struct AskOptions {
    /// The command id; a fresh random id when `None`. Reuse the id of a failed ask to retry it
    /// without risk of applying it twice.
    pub command_id: Option<CommandId>,
    /// The deadline of this ask; the runtime's `ask_timeout` when `None`.
    pub timeout: Option<Duration>,
    /// The correlation id; the command id when `None`.
    pub correlation_id: Option<CommandId>,
}

impl AskOptions {
    /// Ask with this command id (for retries).
    pub fn command_id(mut self, id: CommandId) -> Self {
        self.command_id = Some(id);
        self
    }

    /// Ask with this timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Ask with this correlation id.
    pub fn correlation_id(mut self, id: CommandId) -> Self {
        self.correlation_id = Some(id);
        self
    }
}

impl<A: Behavior> ActorRef<A> {
    pub(crate) fn bound(key: ActorKey, host: Arc<Host>) -> Self {
        ActorRef::made(key, Some(host))
    }

    fn made(key: ActorKey, host: Option<Arc<Host>>) -> Self {
        ActorRef {
            reg_hash: key_hash(A::KIND, key.id.as_str()),
            mailbox: MailboxCache::new(),
            key,
            host,
            _actor: PhantomData,
        }
    }

    /// An unbound ref (binds on first use; see the type docs).
    pub fn new(namespace: Namespace, id: ActorId) -> Result<Self, crate::names::NameError> {
        Ok(ActorRef::made(
            ActorKey::new(namespace, Kind::new(A::KIND)?, id),
            None,
        ))
    }

    /// The actor's full key.
    pub fn key(&self) -> &ActorKey {
        &self.key
    }

    /// The actor's id.
    pub fn id(&self) -> &ActorId {
        &self.key.id
    }

    /// The actor's namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.key.namespace
    }

    /// Whether the ref is bound to a runtime already.
    pub fn is_bound(&self) -> bool {
        self.host.is_some()
    }

    pub(crate) fn with_host(&self, host: Arc<Host>) -> Self {
        ActorRef::bound(self.key.clone(), host)
    }

    /// Runs `f` with this ref's runtime (bound, or found by namespace) without cloning it.
    fn on_host<T>(&self, f: impl FnOnce(&Arc<Host>) -> T) -> Result<T, String> {
        match &self.host {
            Some(h) => Ok(f(h)),
            None => Host::find(&self.key.namespace).map(|h| f(&h)),
        }
    }

    /// Sends `cmd` and waits for the reply, with a fresh command id and the default timeout.
    /// The reply has the type `cmd` declares (`commands(Deposit -> u64, ...)`).
    ///
    /// Inside a handler, the ask is a child of the running turn, exactly like
    /// [`Ctx::ask`](super::Ctx::ask): its command id is derived from the turn's, it carries the
    /// call chain (cycle detection) and the turn's deadline.
    pub async fn ask<C: Command<A>>(&self, cmd: C) -> Result<C::Reply, AskError<A::Error>> {
        self.ask_with(cmd, AskOptions::default()).await
    }

    /// Sends `cmd` with `options` (command id for retries, timeout) and waits for the reply.
    pub async fn ask_with<C: Command<A>>(
        &self,
        cmd: C,
        options: AskOptions,
    ) -> Result<C::Reply, AskError<A::Error>> {
        let reply = match self.ask_fast(cmd.into_command(), options) {
            Fast::Waiting(reply, command_id, meters) => {
                let result = match reply.await {
                    Ok(result) => result,
                    Err(_) => Err(stopped_before_replying(command_id)),
                };
                if let Some(meters) = meters {
                    meters.asked(Path::Local, &result);
                }
                result
            }
            // Boxed: the general path's future is large, and the common ask should not carry
            // it (it is created and moved on every call).
            Fast::Start(cmd, options) => Box::pin(self.ask_wire(cmd, options)).await,
            Fast::Refused(host, env) => Box::pin(ask_on::<A>(&host, &self.key, env)).await,
            Fast::Remote(host, shard, cmd, meta) => {
                let meters = host.meters(A::KIND);
                let asked = ask_remote::<A>(host, &self.key, shard, cmd, meta, meters.is_some());
                let result = Box::pin(asked).await;
                if let Some(meters) = meters {
                    meters.asked(Path::Remote, &result);
                }
                result
            }
        }?;
        typed_reply::<A, C>(reply)
    }

    /// The common ask without layers: a bound ref, outside a handler, to an actor served
    /// here, untraced, whose mailbox has room (metered or not: the actor times it, and the
    /// outcome is counted in `ask_with`, as on the general path). Queues the command and hands
    /// back the reply channel, so the ask's future is one `await` on it instead of five
    /// nested state machines that each move the reply on the way up (about a quarter of a
    /// local ask's CPU on the caller's side, by the B1 profile). The same ask to an actor
    /// another node serves goes straight to the remote path ([`Fast::Remote`]). Anything else
    /// goes the general way, which decides and reports exactly as before (`ask_wire`,
    /// `ask_on`).
    fn ask_fast(&self, cmd: A::Command, options: AskOptions) -> Fast<'_, A> {
        let Some(host) = &self.host else {
            return Fast::Start(cmd, options);
        };
        let general = options.correlation_id.is_some()
            || CurrentTurn::get().is_some()
            || host.kind_of::<A>().is_none()
            || self.key.namespace != host.namespace
            || crate::opentelemetry::current_trace_id().is_some();
        if general {
            return Fast::Start(cmd, options);
        }
        let command_id = options.command_id.unwrap_or_else(CommandId::random);
        if host.traced(command_id) {
            let options = AskOptions {
                command_id: Some(command_id),
                ..options
            };
            return Fast::Start(cmd, options);
        }
        let timeout = options.timeout.unwrap_or(host.config.ask_timeout);
        if let Some(shard) = host.remote_shard(A::KIND, &self.key.id) {
            return Fast::Remote(host, shard, cmd, CallMeta::detached(command_id, timeout));
        }
        let (reply_tx, reply_rx) = oneshot::channel();
        let meters = host.meters(A::KIND);
        // Built in one piece, so it can be written straight into its box.
        // The actor records the ask's latency: its queue wait and its turn (see `route`).
        let env = Box::new(Envelope::asked(
            cmd,
            CallMeta::asked(command_id, timeout, meters.is_some()),
            ReplyTx::Local(reply_tx),
        ));
        match host.deliver_cached::<A>(
            &self.key.id,
            self.reg_hash,
            Msg::Command(env),
            &self.mailbox,
        ) {
            Ok(()) => Fast::Waiting(reply_rx, command_id, meters),
            // A full mailbox, a shard moving away, a refusal: the general path tries again
            // with the same envelope and waits, follows the shard or reports.
            Err((_, Msg::Command(mut env))) => {
                env.reply = None;
                Fast::Refused(Arc::clone(host), env)
            }
            Err((refusal, _)) => {
                Fast::Waiting(refused_now::<A>(refusal.to_ask()), command_id, meters)
            }
        }
    }

    /// The untyped ask: the actor's wire command in, its wire reply out.
    async fn ask_wire(
        &self,
        cmd: A::Command,
        options: AskOptions,
    ) -> Result<A::Reply, AskError<A::Error>> {
        let found;
        let host = match &self.host {
            Some(h) => h,
            None => {
                found = Host::find(&self.key.namespace).map_err(|reason| {
                    AskError::Failed(CallError::Unbound {
                        actor: self.key.clone(),
                        reason,
                    })
                })?;
                &found
            }
        };
        if let Some(turn) = CurrentTurn::get() {
            // Boxed: keeps the common (outside a handler) ask's future small.
            return Box::pin(turn.ask::<A>(host, &self.key, cmd, options.command_id)).await;
        }
        let timeout = options.timeout.unwrap_or(host.config.ask_timeout);
        let command_id = options.command_id.unwrap_or_else(CommandId::random);
        let mut meta = CallMeta::detached(command_id, timeout);
        if let Some(correlation) = options.correlation_id {
            meta.correlation_id = correlation;
            meta.traced = host.traced(correlation);
        } else if let Some(trace) = crate::opentelemetry::current_trace_id() {
            // Asked from inside an OpenTelemetry trace: the workflow joins it, traced.
            meta.correlation_id = CommandId::from_u128(trace);
            meta.traced = true;
        } else {
            meta.traced = host.traced(command_id);
        }
        ask_on::<A>(host, &self.key, Box::new(Envelope::new(cmd, meta))).await
    }

    /// Queues `cmd` without waiting for it to run: fire-and-forget, at most once. Fails only
    /// when it cannot be queued (full mailbox, unknown kind, shutdown). Inside a handler, the
    /// tell is a child of the running turn (like [`Ctx::tell`](super::Ctx::tell)).
    pub fn tell(&self, cmd: impl Command<A>) -> Result<(), CallError> {
        let cmd = cmd.into_command();
        if let Some(turn) = CurrentTurn::get() {
            return self
                .on_host(|host| turn.tell::<A>(host, &self.key, cmd))
                .map_err(|reason| CallError::Unbound {
                    actor: self.key.clone(),
                    reason,
                })?;
        }
        self.on_host(|host| tell_on::<A>(host, &self.key, cmd, None))
            .map_err(|reason| CallError::Unbound {
                actor: self.key.clone(),
                reason,
            })?
    }
}

/// Where [`ActorRef::ask_fast`] left an ask.
enum Fast<'a, A: Behavior> {
    /// Queued: the reply comes on this channel; the outcome is counted on the meters.
    Waiting(
        ReplyRx<A>,
        CommandId,
        Option<&'a crate::metrics::KindMeters>,
    ),
    /// Not for the fast path: the general ask, from the start.
    Start(A::Command, AskOptions),
    /// Built but not queued: the general ask, from the routing on.
    Refused(Arc<Host>, Box<Envelope<A>>),
    /// For the shard's owner on another node: sent from there, with one boxed future (the
    /// general path boxes two, of about 2 KiB each).
    Remote(&'a Arc<Host>, u32, A::Command, CallMeta),
}

type ReplyRx<A> = oneshot::Receiver<
    Result<
        <A as super::EventSourcedActor>::Reply,
        AskError<<A as super::EventSourcedActor>::Error>,
    >,
>;

/// A reply channel that already holds `error`.
fn refused_now<A: Behavior>(error: AskError<A::Error>) -> ReplyRx<A> {
    let (tx, rx) = oneshot::channel();
    let _ = tx.send(Err(error));
    rx
}

/// The answer of an ask whose activation dropped its reply channel.
pub(crate) fn stopped_before_replying<E>(command_id: CommandId) -> AskError<E> {
    AskError::Failed(CallError::OutcomeUnknown {
        command_id,
        reason: "the actor stopped before replying".into(),
    })
}

/// The reply of command `C` out of `A`'s wire reply, or a typed error when it answers another
/// command.
pub(crate) fn typed_reply<A: Behavior, C: Command<A>>(
    reply: A::Reply,
) -> Result<C::Reply, AskError<A::Error>> {
    C::from_reply(reply).ok_or_else(|| {
        AskError::from(CodecError {
            what: "reply",
            reason: format!(
                "the reply answers another command than {} (a command id reused for a different command?)",
                std::any::type_name::<C>()
            ),
        })
    })
}

/// The ask path shared by refs and handlers. The command travels boxed in its envelope from
/// here to the handler: every `async fn` on the way keeps its arguments in its state, so a
/// pointer is all each layer copies.
pub(crate) async fn ask_on<A: Behavior>(
    host: &Arc<Host>,
    key: &ActorKey,
    env: Box<Envelope<A>>,
) -> Result<A::Reply, AskError<A::Error>> {
    check_target::<A>(host, key)?;
    let span = if !env.meta.traced {
        tracing::Span::none()
    } else {
        tracing::debug_span!(
            "ask",
            trace_id = %TraceId(env.meta.correlation_id.as_u128()),
            span_id = %SpanId(span_id(env.meta.command_id)),
            parent_span_id = env.meta.causation_id.map(|c| tracing::field::display(SpanId(span_id(c)))),
            namespace = %key.namespace,
            kind = A::KIND,
            id = %key.id,
            node = %host.node,
            path = tracing::field::Empty,
            shard = tracing::field::Empty,
        )
    };
    let trace_id = env.meta.correlation_id.as_u128();
    match env.meta.causation_id {
        Some(cause) => crate::opentelemetry::adopt(&span, trace_id, span_id(cause)),
        // Asked inside a span of this very trace (see `ask_wire`): that span is the parent.
        None if crate::opentelemetry::current_trace_id() == Some(trace_id) => {}
        None => crate::opentelemetry::adopt(&span, trace_id, span_id(env.meta.command_id)),
    }
    let meters = host.meters(A::KIND);
    let routed = route::<A>(host, key, env, &span, meters.is_some());
    // An untraced ask (nearly all of them) skips the span's enter and exit on every poll.
    let (result, path) = if span.is_none() {
        routed.await
    } else {
        routed.instrument(span.clone()).await
    };
    if let Some(meters) = meters {
        meters.asked(path, &result);
    }
    result
}

/// Delivers an ask to the local activation, or to the shard's owner over NATS; says which.
/// `measured`: record the ask's latency (metrics are on).
async fn route<A: Behavior>(
    host: &Arc<Host>,
    key: &ActorKey,
    mut env: Box<Envelope<A>>,
    span: &tracing::Span,
    measured: bool,
) -> (Result<A::Reply, AskError<A::Error>>, Path) {
    let (shard, env) = match host.remote_shard(A::KIND, &key.id) {
        Some(shard) => (shard, env),
        None => {
            // The actor times a local ask (its queue wait and its turn): two precise clock
            // reads fewer on the hot path than timing it here.
            if measured {
                env.meta.asked_at = Some(super::clock::coarse_now());
            }
            match ask_local::<A>(host, key, env).await {
                LocalAsk::Answered(result) => {
                    span.record("path", "local");
                    return (result, Path::Local);
                }
                // The shard moved away between the routing decision and delivery: follow it.
                LocalAsk::NotOwner { shard, env } => (shard, env),
            }
        }
    };
    span.record("path", "remote");
    span.record("shard", shard);
    let Envelope { cmd, mut meta, .. } = *env;
    meta.asked_at = None;
    // Boxed: the remote path's future is large, and a local ask should not carry it.
    let result = Box::pin(ask_remote::<A>(host, key, shard, cmd, meta, measured)).await;
    (result, Path::Remote)
}

/// Asks the owner of `shard`, on another node; `measured`: record the ask's latency.
async fn ask_remote<A: Behavior>(
    host: &Arc<Host>,
    key: &ActorKey,
    shard: u32,
    cmd: A::Command,
    meta: CallMeta,
    measured: bool,
) -> Result<A::Reply, AskError<A::Error>> {
    let started = measured.then(crate::metrics::now);
    let result = super::remote::ask::<A>(host, key, shard, cmd, meta).await;
    if let Some(started) = started
        && let Some(meters) = host.meters(A::KIND)
    {
        meters.remote_latency(started);
    }
    result
}

/// The outcome of a local ask.
pub(crate) enum LocalAsk<A: Behavior> {
    /// The local activation answered (or the ask failed here).
    Answered(Result<A::Reply, AskError<A::Error>>),
    /// The actor is not resident and this node does not serve its shard (it is moving): the
    /// command was not queued and comes back, to be sent to the shard's owner.
    NotOwner {
        /// The actor's shard.
        shard: u32,
        /// The command and its metadata, untouched (same command id: a retry elsewhere is
        /// deduplicated).
        env: Box<Envelope<A>>,
    },
}

/// Delivers an ask to the local activation and waits for its answer.
pub(crate) async fn ask_local<A: Behavior>(
    host: &Arc<Host>,
    key: &ActorKey,
    mut env: Box<Envelope<A>>,
) -> LocalAsk<A> {
    let command_id = env.meta.command_id;
    let (deadline, timeout) = (env.meta.deadline, env.meta.timeout);
    let (reply_tx, reply_rx) = oneshot::channel();
    env.reply = Some(ReplyTx::Local(reply_tx));
    let delivered = match host.deliver_now::<A>(&key.id, Msg::Command(env)) {
        // Only a full mailbox waits (and needs a timer): boxed, so the common ask's future —
        // created and moved on every call — stays small.
        Err((Undelivered::Full, msg)) => {
            match Box::pin(tokio::time::timeout_at(
                deadline,
                host.deliver::<A>(&key.id, msg),
            ))
            .await
            {
                Err(_) => {
                    return LocalAsk::Answered(Err(AskError::Failed(CallError::Timeout {
                        after: timeout,
                    })));
                }
                Ok(result) => result,
            }
        }
        other => other,
    };
    match delivered {
        Ok(()) => {}
        Err((Undelivered::NotOwner(shard), Msg::Command(mut env))) => {
            env.reply = None;
            return LocalAsk::NotOwner { shard, env };
        }
        Err((refusal, _)) => return LocalAsk::Answered(Err(refusal.to_ask())),
    }
    // No timer here: the activation answers every queued command by its deadline (see the
    // activation module), and a stopped activation drops the sender, which ends this wait.
    LocalAsk::Answered(match reply_rx.await {
        Ok(result) => result,
        Err(_) => Err(stopped_before_replying(command_id)),
    })
}

/// The tell path shared by refs and handlers.
pub(crate) fn tell_on<A: Behavior>(
    host: &Arc<Host>,
    key: &ActorKey,
    cmd: A::Command,
    meta: Option<CallMeta>,
) -> Result<(), CallError> {
    check_target::<A>(host, key)?;
    if let Some(shard) = host.remote_shard(A::KIND, &key.id) {
        return super::remote::tell::<A>(host, key, shard, cmd, meta);
    }
    let meta = meta.unwrap_or_else(|| {
        let mut meta = CallMeta::detached(CommandId::random(), host.config.ask_timeout);
        meta.traced = host.traced(meta.correlation_id);
        meta
    });
    let msg = Msg::Command(Box::new(Envelope::new(cmd, meta)));
    match host.deliver_now::<A>(&key.id, msg) {
        Ok(()) => Ok(()),
        Err((Undelivered::NotOwner(shard), Msg::Command(env))) => {
            let Envelope { cmd, meta, .. } = *env;
            super::remote::tell::<A>(host, key, shard, cmd, Some(meta))
        }
        Err((Undelivered::Full, _)) => Err(CallError::MailboxFull { actor: key.clone() }),
        Err((refusal, _)) => Err(refusal.to_call()),
    }
}

fn check_target<A: Behavior>(host: &Host, key: &ActorKey) -> Result<(), CallError> {
    if host.kind_of::<A>().is_none() {
        return Err(CallError::UnknownKind {
            kind: A::KIND.to_owned(),
        });
    }
    if key.namespace != host.namespace {
        return Err(CallError::Unbound {
            actor: key.clone(),
            reason: format!(
                "this runtime serves namespace {}, not {}",
                host.namespace, key.namespace
            ),
        });
    }
    Ok(())
}

thread_local! {
    /// The runtime decoding right now: refs decoded inside bind to it.
    static DECODE_HOST: RefCell<Option<Arc<Host>>> = const { RefCell::new(None) };
}

/// Runs `f` (a decode) with `host` as the runtime that decoded refs bind to.
pub(crate) fn with_decode_host<T>(host: &Arc<Host>, f: impl FnOnce() -> T) -> T {
    /// Puts the previous host back, also when `f` panics (a user's `Deserialize`).
    struct Restore(Option<Arc<Host>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            DECODE_HOST.with(|h| *h.borrow_mut() = previous);
        }
    }
    let _restore = Restore(DECODE_HOST.with(|h| h.replace(Some(Arc::clone(host)))));
    f()
}

impl<A: Behavior> Clone for ActorRef<A> {
    fn clone(&self) -> Self {
        ActorRef {
            key: self.key.clone(),
            host: self.host.clone(),
            reg_hash: self.reg_hash,
            mailbox: self.mailbox.clone(),
            _actor: PhantomData,
        }
    }
}

impl<A: Behavior> PartialEq for ActorRef<A> {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl<A: Behavior> Eq for ActorRef<A> {}

impl<A: Behavior> Hash for ActorRef<A> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key.hash(state);
    }
}

impl<A: Behavior> fmt::Debug for ActorRef<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ActorRef({})", self.key)
    }
}

impl<A: Behavior> fmt::Display for ActorRef<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.key, f)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename = "ActorRef")]
struct RefRepr {
    namespace: Namespace,
    kind: Kind,
    id: ActorId,
}

impl<A: Behavior> Serialize for ActorRef<A> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        RefRepr {
            namespace: self.key.namespace.clone(),
            kind: self.key.kind.clone(),
            id: self.key.id.clone(),
        }
        .serialize(s)
    }
}

impl<'de, A: Behavior> Deserialize<'de> for ActorRef<A> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let repr = RefRepr::deserialize(d)?;
        if repr.kind.as_str() != A::KIND {
            return Err(serde::de::Error::custom(format!(
                "actor ref of kind {:?} where kind {:?} was expected",
                repr.kind.as_str(),
                A::KIND
            )));
        }
        let host = DECODE_HOST.with(|h| {
            h.borrow()
                .as_ref()
                .filter(|h| h.namespace == repr.namespace)
                .cloned()
        });
        Ok(ActorRef::made(
            ActorKey::new(repr.namespace, repr.kind, repr.id),
            host,
        ))
    }
}

/// Why a ref could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    /// The id is invalid (empty, or longer than the limit).
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// The actor type is not registered with this runtime.
    #[error("actor kind {kind:?} is not registered in this runtime")]
    UnknownKind {
        /// The kind.
        kind: String,
    },
}

pub(crate) fn make_ref<A: Behavior>(host: &Arc<Host>, id: &str) -> Result<ActorRef<A>, RefError> {
    let kind = host.kind_of::<A>().ok_or_else(|| RefError::UnknownKind {
        kind: A::KIND.to_owned(),
    })?;
    let key = ActorKey::new(host.namespace.clone(), kind.clone(), ActorId::new(id)?);
    Ok(ActorRef::bound(key, Arc::clone(host)))
}
