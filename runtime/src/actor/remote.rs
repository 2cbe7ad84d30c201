//! Commands that cross nodes: encoding them for the wire on the way out, and running the ones
//! that arrive on the way in.
//!
//! Outbound, an ask whose shard another node owns becomes a [`RemoteRequest`] sent by the
//! routing [`Transport`](crate::routing::Transport); the [`RemoteReply`] is turned back into the
//! caller's `Result<A::Reply, AskError<A::Error>>`. Inbound, [`HostDispatch`] checks a frame —
//! it decodes, names this namespace, a registered kind and a valid id, its shard matches its
//! subject, and this node owns that shard — then queues it for the local actor as a local ask
//! is queued, with a [`RemoteAnswer`]: the activation answers the caller's reply subject
//! itself as the turn ends (no task of the owner's waits for it). Refs inside the command are
//! decoded bound to this node's runtime, so a handle that travelled in a message is usable at
//! once.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::actor_ref::{LocalAsk, ask_local, stopped_before_replying, with_decode_host};
use super::contract::Behavior;
use super::host::{Host, Undelivered, wait_done};
use super::inbox::{AskResult, CallMeta, Envelope, Msg, ReplyTx};
use crate::errors::{AskError, CallError};
use crate::names::{ActorId, ActorKey};
use crate::routing::{Answer, Dispatch, Pending, SendError, ShardDrain, remote::actor_subject};
use crate::wire::{
    BASE_FRAME_FORMAT, CommandId, Control, RemoteReply, RequestOut, RequestView, Settle, SpanId,
    TraceId, TraceParent, codec,
};
use tracing::Instrument;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

fn request<A: Behavior>(
    key: &ActorKey,
    cmd: &A::Command,
    meta: &CallMeta,
    expects_reply: bool,
) -> Result<Vec<u8>, codec::CodecError> {
    let mut command = Vec::with_capacity(64);
    codec::encode_into("command", &mut command, cmd)?;
    RequestOut {
        format: BASE_FRAME_FORMAT,
        namespace: key.namespace.as_str(),
        kind: A::KIND,
        id: key.id.as_str(),
        command_id: meta.command_id,
        correlation_id: meta.correlation_id,
        causation_id: meta.causation_id,
        timeout_ms: meta
            .deadline
            .saturating_duration_since(Instant::now())
            .as_millis() as u64,
        chain: &meta.chain,
        expects_reply,
        command: &command,
        effect: None,
        control: None,
        traced: Some(meta.traced),
    }
    .encode()
}

/// Asks actor `key` in `shard`, owned by another node, over NATS.
pub(crate) async fn ask<A: Behavior>(
    host: &Arc<Host>,
    key: &ActorKey,
    shard: u32,
    cmd: A::Command,
    meta: CallMeta,
) -> Result<A::Reply, AskError<A::Error>> {
    let Some(transport) = host.transport.as_ref() else {
        return Err(CallError::unavailable(format!(
            "shard {shard} is not served here and this runtime has no cluster transport"
        ))
        .into());
    };
    let frame = request::<A>(key, &cmd, &meta, true)?;
    let subject = actor_subject(&key.namespace, shard, A::KIND, &key.id);
    // Only a traced call carries the `traceparent` header: the frame says the decision either
    // way, and a header costs the sender, the server and the receiver on every request.
    let trace = meta
        .traced
        .then(|| crate::wire::TraceParent::of(meta.correlation_id, meta.command_id, true));
    let route = host
        .placement
        .route(shard)
        .map(|node| crate::routing::Route { node, shard });
    match transport
        .request(subject, frame, trace, meta.deadline, route)
        .await
    {
        Ok(RemoteReply::Ok { reply }) => {
            Ok(with_decode_host(host, || codec::decode("reply", &reply))?)
        }
        Ok(RemoteReply::Rejected { error }) => Err(
            match with_decode_host(host, || codec::decode("actor error", &error)) {
                Ok(error) => AskError::Rejected(error),
                Err(e) => e.into(),
            },
        ),
        Ok(RemoteReply::Err(e)) => Err(e.into()),
        // The transport retries `NotOwner` until the deadline: seeing it means time ran out.
        Ok(RemoteReply::NotOwner { .. }) | Err(SendError::Unreachable(_)) => {
            Err(CallError::Timeout {
                after: meta.timeout,
            }
            .into())
        }
        Err(SendError::NoReply(reason)) => Err(CallError::OutcomeUnknown {
            command_id: meta.command_id,
            reason,
        }
        .into()),
        Err(SendError::Unavailable(reason)) => Err(CallError::Unavailable { reason }.into()),
        Err(SendError::TooLarge { size, limit }) => Err(CallError::TooLarge { size, limit }.into()),
    }
}

/// Tells actor `key` in `shard`, owned by another node: published, not awaited.
pub(crate) fn tell<A: Behavior>(
    host: &Arc<Host>,
    key: &ActorKey,
    shard: u32,
    cmd: A::Command,
    meta: Option<CallMeta>,
) -> Result<(), CallError> {
    let Some(transport) = host.transport.clone() else {
        return Err(CallError::Unbound {
            actor: key.clone(),
            reason: format!("shard {shard} is not served here and there is no cluster transport"),
        });
    };
    let meta = meta.unwrap_or_else(|| {
        let mut meta =
            CallMeta::detached(crate::wire::CommandId::random(), host.config.ask_timeout);
        meta.traced = host.traced(meta.correlation_id);
        meta
    });
    let frame = request::<A>(key, &cmd, &meta, false)?;
    let limit = transport.max_payload();
    if limit > 0 && frame.len() > limit {
        return Err(CallError::TooLarge {
            size: frame.len(),
            limit,
        });
    }
    let subject = actor_subject(&key.namespace, shard, A::KIND, &key.id);
    host.tokio.spawn(async move {
        if let Err(e) = transport.publish(subject, frame).await {
            tracing::debug!(error = ?e, "tell not sent");
        }
    });
    Ok(())
}

/// The answer a receiving node sends for a local ask's result. The actor's rejection is encoded
/// with the codec; a call error travels as is, except that this node's own shutdown is, for the
/// caller, an unavailable owner (the shard moves on and a retry finds it).
fn answer<E: serde::Serialize>(result: Result<Vec<u8>, AskError<E>>) -> RemoteReply {
    match result {
        Ok(reply) => RemoteReply::Ok { reply },
        Err(AskError::Rejected(error)) => match codec::encode("actor error", &error) {
            Ok(error) => RemoteReply::Rejected { error },
            Err(e) => RemoteReply::Err(e.into()),
        },
        Err(AskError::Failed(CallError::Shutdown)) => RemoteReply::Err(node_stopping()),
        Err(AskError::Failed(e)) => RemoteReply::Err(e),
    }
}

/// A typed ask outcome as the answer frame a remote asker decodes.
fn encode_answer<A: Behavior>(result: AskResult<A>) -> RemoteReply {
    answer(result.and_then(|reply| Ok(codec::encode("reply", &reply)?)))
}

/// Sends `frame` on `to`, if the sender waits for an answer.
fn reply(to: Option<Answer>, frame: RemoteReply) {
    if let Some(to) = to {
        send_fitted(to, frame, None);
    }
}

/// Sends `frame` on `to`. An answer larger than the server's max payload cannot cross NATS:
/// the sender hears that the outcome is unknown (`command_id`: the command ran; its answer is
/// what is lost), or, for an answer to a command that never ran, why.
fn send_fitted(to: Answer, frame: RemoteReply, command_id: Option<CommandId>) {
    let bytes = frame.encode();
    let limit = to.max_payload();
    if limit == 0 || bytes.len() <= limit {
        return to.send(bytes);
    }
    let reason = format!(
        "the answer ({} bytes) exceeds the server's max payload ({limit} bytes)",
        bytes.len()
    );
    let error = match command_id {
        Some(command_id) => CallError::OutcomeUnknown {
            command_id,
            reason: format!("{reason}; the command may have been applied"),
        },
        None => CallError::unavailable(reason),
    };
    to.send(RemoteReply::Err(error).encode());
}

/// The answer to an ask from another node, held with the command by the activation that
/// serves it: the turn's outcome is encoded and published from the activation's own task, so
/// the owner spends no task of its own on a remote ask. Dropped unanswered (the activation
/// stopped, or cancelled the turn at its deadline), it tells the asker the outcome is unknown,
/// as a local asker hears when its reply channel closes.
pub(crate) struct RemoteAnswer {
    to: Option<Answer>,
    command_id: CommandId,
}

impl RemoteAnswer {
    fn new(to: Answer, command_id: CommandId) -> Self {
        RemoteAnswer {
            to: Some(to),
            command_id,
        }
    }

    /// Answers with the turn's outcome.
    pub fn send<A: Behavior>(self, result: AskResult<A>) {
        self.send_frame(encode_answer::<A>(result));
    }

    /// Answers with `frame`.
    fn send_frame(mut self, frame: RemoteReply) {
        if let Some(to) = self.to.take() {
            send_fitted(to, frame, Some(self.command_id));
        }
    }
}

impl Drop for RemoteAnswer {
    fn drop(&mut self) {
        if let Some(to) = self.to.take() {
            let stopped: AskError<()> = stopped_before_replying(self.command_id);
            send_fitted(to, answer(Err(stopped)), Some(self.command_id));
        }
    }
}

fn node_stopping() -> CallError {
    CallError::unavailable("the owning node is shutting down")
}

/// What a local effect delivery could not do: the shard is not served here (it moved); the
/// command and metadata come back, to be sent to the new owner.
pub(crate) type NotHere = (u32, Vec<u8>, CallMeta);

/// The kind-erased operations on actors of one kind: inbound commands, durable effects, wake-ups
/// and deadlock probes, for code that knows an actor only by its key.
pub(crate) trait RemoteKind: Send + Sync {
    /// Runs `request` on the local actor (`traced`: the caller's sampling decision), answering
    /// on `answer` when the sender waits for one. Hands an ask to the actor's mailbox with the
    /// answer, for the activation to send; returns the work that has to wait (a full mailbox,
    /// a durable effect's settlement).
    fn run(
        &self,
        host: Arc<Host>,
        key: ActorKey,
        request: RequestView<'_>,
        traced: bool,
        answer: Option<Answer>,
    ) -> Option<Pending>;

    /// Delivers a durable effect (`meta.origin` set) to the local actor `key` and waits until
    /// it is settled or the deadline passes.
    fn effect(
        &self,
        host: Arc<Host>,
        key: ActorKey,
        command: Vec<u8>,
        meta: CallMeta,
    ) -> BoxFuture<Result<Settle, NotHere>>;

    /// Hands a deadlock-detection frame to actor `id` if it is resident.
    fn control(&self, host: &Arc<Host>, id: &ActorId, control: Control);

    /// Activates actor `id` (if needed) for its wake-up index entry.
    fn wake(&self, host: &Arc<Host>, id: &ActorId, revision: u64, due_ms: u64);
}

/// The [`RemoteKind`] of actor type `A`.
pub(crate) struct KindRemote<A>(PhantomData<fn() -> A>);

impl<A> KindRemote<A> {
    pub fn new() -> Self {
        KindRemote(PhantomData)
    }
}

impl<A: Behavior> RemoteKind for KindRemote<A> {
    fn run(
        &self,
        host: Arc<Host>,
        key: ActorKey,
        request: RequestView<'_>,
        traced: bool,
        answer: Option<Answer>,
    ) -> Option<Pending> {
        // This runs on the node's reader task: a user's `Deserialize` that panics must cost
        // this request only, not the node's subscriptions.
        let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            with_decode_host(&host, || codec::decode("command", &request.command))
        }))
        .unwrap_or_else(|_| {
            Err(codec::CodecError {
                what: "command",
                reason: "its decoder panicked".into(),
            })
        });
        let cmd: A::Command = match decoded {
            Ok(cmd) => cmd,
            Err(e) => {
                if request.expects_reply {
                    reply(answer, RemoteReply::Err(e.into()));
                }
                return None;
            }
        };
        let timeout = Duration::from_millis(request.timeout_ms);
        let command_id = request.command_id;
        let meta = CallMeta {
            command_id,
            correlation_id: request.correlation_id,
            causation_id: request.causation_id,
            deadline: Instant::now() + timeout,
            timeout,
            chain: request.chain,
            origin: request.effect.map(Box::new),
            traced,
            asked_at: None,
        };
        if meta.origin.is_some() {
            return Some(Box::pin(async move {
                let settled = match effect_local::<A>(&host, &key, cmd, meta).await {
                    Ok(settle) => match codec::encode("settlement", &settle) {
                        Ok(reply) => RemoteReply::Ok { reply },
                        Err(e) => RemoteReply::Err(e.into()),
                    },
                    Err((shard, _)) => RemoteReply::NotOwner { shard },
                };
                if let Some(to) = answer {
                    // The effect ran: an answer too large to cross leaves its outcome unknown.
                    send_fitted(to, settled, Some(command_id));
                }
            }));
        }
        let mut env = Box::new(Envelope::new(cmd, meta));
        let to = match answer {
            Some(to) if request.expects_reply => to,
            // A tell (or an ask sent without a reply subject, which nobody can answer).
            _ => {
                if let Err((refusal, _)) = host.deliver_now::<A>(&key.id, Msg::Command(env)) {
                    // Tells are at most once: one that finds its shard moving is not resent.
                    tracing::debug!(?refusal, actor = %key, "remote tell dropped");
                }
                return None;
            }
        };
        // The activation answers: it encodes the outcome and publishes it as its turn ends.
        env.reply = Some(ReplyTx::Remote(RemoteAnswer::new(to, command_id)));
        let (refusal, mut env) = match host.deliver_now::<A>(&key.id, Msg::Command(env)) {
            Ok(()) => return None,
            Err((refusal, Msg::Command(env))) => (refusal, env),
            // Not the command that went in: cannot happen. Dropping it (and its answer, with
            // it) tells the sender the outcome is unknown.
            Err(_) => return None,
        };
        let Some(ReplyTx::Remote(to)) = env.reply.take() else {
            return None;
        };
        match refusal {
            // A full mailbox: wait for room (until the deadline) on a task of its own.
            Undelivered::Full => Some(Box::pin(async move {
                to.send_frame(match ask_local::<A>(&host, &key, env).await {
                    LocalAsk::Answered(result) => encode_answer::<A>(result),
                    // Not queued: the sender retries with the same command id at the new owner.
                    LocalAsk::NotOwner { shard, .. } => RemoteReply::NotOwner { shard },
                });
            })),
            Undelivered::NotOwner(shard) => {
                to.send_frame(RemoteReply::NotOwner { shard });
                None
            }
            refusal => {
                to.send::<A>(Err(refusal.to_ask()));
                None
            }
        }
    }

    fn effect(
        &self,
        host: Arc<Host>,
        key: ActorKey,
        command: Vec<u8>,
        meta: CallMeta,
    ) -> BoxFuture<Result<Settle, NotHere>> {
        Box::pin(async move {
            let cmd: A::Command =
                match with_decode_host(&host, || codec::decode("durable effect", &command)) {
                    Ok(cmd) => cmd,
                    Err(e) => {
                        return Ok(Settle::Failed {
                            reason: e.to_string(),
                        });
                    }
                };
            effect_local::<A>(&host, &key, cmd, meta)
                .await
                .map_err(|(shard, meta)| (shard, command, meta))
        })
    }

    fn control(&self, host: &Arc<Host>, id: &ActorId, control: Control) {
        host.deliver_if_resident::<A>(id, Msg::Control(Box::new(control)));
    }

    fn wake(&self, host: &Arc<Host>, id: &ActorId, revision: u64, due_ms: u64) {
        if let Err((refusal, _)) = host.deliver_now::<A>(id, Msg::Wake { revision, due_ms }) {
            tracing::debug!(?refusal, %id, "wake-up not delivered");
        }
    }
}

/// Queues a durable effect for the local actor `key` and waits for its settlement.
async fn effect_local<A: Behavior>(
    host: &Arc<Host>,
    key: &ActorKey,
    cmd: A::Command,
    meta: CallMeta,
) -> Result<Settle, (u32, CallMeta)> {
    let deadline = meta.deadline;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut env = Envelope::new(cmd, meta);
    env.ack = Some(tx);
    let delivered = tokio::time::timeout_at(
        deadline,
        host.deliver::<A>(&key.id, Msg::Command(Box::new(env))),
    )
    .await;
    match delivered {
        Err(_) => {
            return Ok(Settle::Failed {
                reason: "the receiver's mailbox stayed full".into(),
            });
        }
        Ok(Ok(())) => {}
        Ok(Err((Undelivered::NotOwner(shard), Msg::Command(env)))) => {
            return Err((shard, env.meta));
        }
        Ok(Err((refusal, _))) => {
            return Ok(Settle::Failed {
                reason: format!("{refusal:?}"),
            });
        }
    }
    // The activation settles or drops the channel by the deadline (see the inbox).
    Ok(rx.await.unwrap_or_else(|_| Settle::Failed {
        reason: "the receiver stopped before it settled the effect".into(),
    }))
}

/// The inbound side, handed to routing's shard subscriptions.
pub(crate) struct HostDispatch(pub Weak<Host>);

impl HostDispatch {
    fn check(
        host: &Arc<Host>,
        shard: u32,
        request: &RequestView<'_>,
    ) -> Result<ActorKey, RemoteReply> {
        let refuse = |e: CallError| Err(RemoteReply::Err(e));
        if host.shutting_down.load(Ordering::Acquire) {
            return refuse(node_stopping());
        }
        if request.namespace != host.namespace.as_str() {
            return refuse(CallError::WrongNamespace {
                expected: host.namespace.to_string(),
                found: request.namespace.to_string(),
            });
        }
        let Some(info) = host.kinds.iter().find(|k| k.name == request.kind) else {
            return refuse(CallError::UnknownKind {
                kind: request.kind.to_string(),
            });
        };
        let id = match ActorId::new(&request.id) {
            Ok(id) => id,
            Err(e) => return refuse(e.into()),
        };
        let expected = host.shard_of(info.name, &id);
        if expected != shard {
            return refuse(CallError::Codec {
                what: "request frame".into(),
                reason: format!(
                    "{}/{} belongs to shard {expected}, but arrived on the subject of shard {shard}",
                    request.kind, request.id
                ),
            });
        }
        if !host.owns(shard) {
            return Err(RemoteReply::NotOwner { shard });
        }
        Ok(ActorKey::new(host.namespace.clone(), info.kind.clone(), id))
    }
}

impl Dispatch for HostDispatch {
    fn handle(
        &self,
        shard: u32,
        payload: Bytes,
        trace: Option<TraceParent>,
        answer: Option<Answer>,
    ) -> Option<Pending> {
        let Some(host) = self.0.upgrade() else {
            reply(answer, RemoteReply::Err(node_stopping()));
            return None;
        };
        let request = match RequestView::decode(&payload) {
            Ok(request) => request,
            Err(e) => {
                // Answer even an undecodable frame: its sender may be waiting.
                reply(answer, RemoteReply::Err(e.into()));
                return None;
            }
        };
        // The sender's sampling decision: its header's, else its frame's; a sender that said
        // neither (a raw client) is traced as this node would trace the workflow.
        let traced = trace
            .map(|t| t.sampled)
            .or(request.traced)
            .unwrap_or_else(|| host.traced(request.correlation_id));
        let span = if traced {
            let span = tracing::debug_span!(
                "serve",
                trace_id = %TraceId(trace.map_or(request.correlation_id.as_u128(), |t| t.trace_id)),
                parent_span_id = trace.map(|t| tracing::field::display(SpanId(t.span_id))),
                node = %host.node,
                shard,
                kind = %request.kind,
                id = %request.id,
                command_id = %request.command_id,
            );
            match trace {
                Some(t) => crate::opentelemetry::adopt(&span, t.trace_id, t.span_id),
                // Traced by the frame's ids alone (a raw client): the same trace all the same.
                None => crate::opentelemetry::adopt(
                    &span,
                    request.correlation_id.as_u128(),
                    crate::wire::span_id(request.command_id),
                ),
            }
            span
        } else {
            tracing::Span::none()
        };
        let _entered = span.enter();
        if let Some(control) = request.control.clone() {
            // Deadlock probes concern running turns only: never an answer, never an error.
            if let Ok(key) = HostDispatch::check(&host, shard, &request)
                && let Some(info) = host.kind_named(key.kind.as_str())
            {
                info.remote.control(&host, &key.id, control);
            }
            return None;
        }
        let key = match HostDispatch::check(&host, shard, &request) {
            Ok(key) => key,
            Err(e) => {
                tracing::debug!(shard, command_id = %request.command_id, refusal = ?e, "inbound command refused");
                if request.expects_reply {
                    reply(answer, e);
                }
                return None;
            }
        };
        let kind = host
            .kinds
            .iter()
            .find(|k| k.name == request.kind)
            .map(|k| Arc::clone(&k.remote))?;
        tracing::trace!(shard, command_id = %request.command_id, actor = %key, "inbound command");
        let pending = kind.run(Arc::clone(&host), key, request, traced, answer)?;
        drop(_entered);
        Some(Box::pin(pending.instrument(span)))
    }

    fn drain(&self, shards: Vec<u32>) -> Vec<(u32, ShardDrain)> {
        let mut running = match self.0.upgrade() {
            Some(host) => host.drain_shards(&shards),
            None => std::collections::HashMap::new(),
        };
        shards
            .into_iter()
            .map(|shard| {
                let (stopped, waits) = running.remove(&shard).unwrap_or_default();
                let done: ShardDrain = Box::pin(async move {
                    for done in waits {
                        wait_done(done).await;
                    }
                    stopped
                });
                (shard, done)
            })
            .collect()
    }
}
