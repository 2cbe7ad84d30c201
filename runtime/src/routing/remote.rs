//! Remote delivery over NATS: one subject per actor, one subscription per owned shard.
//!
//! A command for actor `id` of kind `kind` in shard `n` is a NATS request on
//! `aether.<ns>.shard.<n>.<kind>.<encoded-id>`. The node that serves shard `n` subscribes to
//! `aether.<ns>.shard.<n>.>`, so NATS routes the request to the owner and a sender needs no map
//! at all. The subscription is a plain one, not a queue group: a node cut off from NATS whose
//! connection the server still keeps (its old subscriptions with it) gets a copy of each
//! request it will never answer, and the new owner gets it too and answers. While a shard moves, nobody (or the old owner,
//! answering `NotOwner`) may answer: the sender backs off and retries, with the same command id,
//! until its deadline.
//!
//! This module only moves frames; decoding them and running the command is the actor layer's
//! job, behind [`Dispatch`].

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::Subject;
use async_nats::connection::State;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::reply_inbox::{self, Arrived, ReplyInbox};
use super::request_batch;
use crate::errors::RetrySafety;
use crate::names::{ActorId, Namespace};
use crate::wire::{RemoteReply, TRACEPARENT_HEADER, TraceId, TraceParent};
use tracing::Instrument;

/// The subject of one actor.
pub fn actor_subject(namespace: &Namespace, shard: u32, kind: &str, id: &ActorId) -> String {
    // Built by hand, not with `format!`: every remote call builds one.
    let (ns, raw_id) = (namespace.as_str(), id.as_str());
    let mut subject = String::with_capacity(20 + ns.len() + 10 + kind.len() + raw_id.len() + 8);
    subject.push_str("aether.");
    subject.push_str(ns);
    subject.push_str(".shard.");
    push_decimal(&mut subject, shard);
    subject.push('.');
    subject.push_str(kind);
    subject.push('.');
    crate::names::encode_into(raw_id, &mut subject);
    subject
}

/// Appends `n` in decimal.
pub(super) fn push_decimal(out: &mut String, n: impl Into<u64>) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n: u64 = n.into();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        out.push(char::from(d));
    }
}

/// The subscription subject of one shard.
pub fn shard_subject(namespace: &Namespace, shard: u32) -> String {
    format!("aether.{namespace}.shard.{shard}.>")
}

/// Why a request got no answer from an owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// No owner took the request before the deadline (nobody subscribed, or only nodes that
    /// no longer own the shard): it was never handled.
    Unreachable(String),
    /// The request went out and no answer came back in time: it may have been handled.
    NoReply(String),
    /// Not connected to NATS: nothing was sent.
    Unavailable(String),
    /// The frame is larger than the server's maximum payload: nothing was sent.
    TooLarge {
        /// The frame's size.
        size: usize,
        /// The server's `max_payload`.
        limit: usize,
    },
}

/// Where a request may go first: the node the caller's shard map says owns its shard (see
/// [`request_batch`](super::request_batch)).
#[derive(Debug, Clone)]
pub struct Route {
    /// The owner's subject for batched requests.
    pub node: Subject,
    /// The request's shard.
    pub shard: u32,
}

/// How long a node that took no batch (nobody on its subject) is not batched to.
const REFUSED_FOR: Duration = Duration::from_secs(1);

/// Sends frames to shard owners.
pub struct Transport {
    client: async_nats::Client,
    namespace: Namespace,
    /// Where answers arrive: opened by the first request, and again should its reader end
    /// (see [`ReplyInbox`]).
    inbox: parking_lot::RwLock<Option<Arc<ReplyInbox>>>,
    /// The runtime the inbox's reader runs on: the node's, not whichever runtime a caller
    /// asks from (a short-lived one would take the reader with it).
    tokio: tokio::runtime::Handle,
    first_attempt: Duration,
    retries: std::sync::atomic::AtomicU64,
    resends: std::sync::atomic::AtomicU64,
    batched: std::sync::atomic::AtomicU64,
    /// Requests waiting for an answer now: a request goes in a batch only beside others.
    in_flight: AtomicUsize,
    /// Nodes whose subject for batched requests nobody listened on, and when.
    refused: parking_lot::Mutex<Vec<(Subject, Instant)>>,
}

impl Transport {
    /// A transport on `client` for `namespace` (where its reply inbox is) whose first attempt
    /// waits `first_attempt` for an answer. Its reply inbox's reader runs on `tokio`.
    pub fn new(
        client: async_nats::Client,
        namespace: Namespace,
        first_attempt: Duration,
        tokio: tokio::runtime::Handle,
    ) -> Self {
        Transport {
            client,
            namespace,
            inbox: parking_lot::RwLock::new(None),
            tokio,
            first_attempt: first_attempt.max(Duration::from_millis(1)),
            retries: std::sync::atomic::AtomicU64::new(0),
            resends: std::sync::atomic::AtomicU64::new(0),
            batched: std::sync::atomic::AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            refused: parking_lot::Mutex::new(Vec::new()),
        }
    }

    /// Requests whose first attempt went to their owner node in a batch (see
    /// [`request_batch`](super::request_batch)).
    pub fn batched(&self) -> u64 {
        self.batched.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether a request of `size` bytes may go in a batch to `node`: it fits a batch, and
    /// the node did not refuse one in the last [`REFUSED_FOR`].
    fn batches_to(&self, node: &Subject, size: usize) -> bool {
        let limit = self.max_payload();
        if limit > 0 && 1 + super::request_batch::item_bound_of(size) > limit {
            return false;
        }
        let mut refused = self.refused.lock();
        if refused.is_empty() {
            return true;
        }
        let now = Instant::now();
        refused.retain(|(_, at)| now.duration_since(*at) < REFUSED_FOR);
        !refused.iter().any(|(n, _)| n == node)
    }

    /// Remembers that nobody took a batch on `node`'s subject.
    fn refuse(&self, node: Subject) {
        let now = Instant::now();
        let mut refused = self.refused.lock();
        match refused.iter_mut().find(|(n, _)| *n == node) {
            Some((_, at)) => *at = now,
            None => {
                tracing::debug!(%node, "nobody takes batched requests there; sending them one by one");
                refused.push((node, now));
            }
        }
    }

    /// Requests sent again because no node served their shard yet, or its old owner refused
    /// them (a shard moving between nodes). Never counts a request that may have been handled.
    pub fn retries(&self) -> u64 {
        self.retries.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Requests sent again, with the same command id, because an attempt got no answer in
    /// time (lost in a crash or an unsubscribe race, or just slow): the actor deduplicates.
    pub fn resends(&self) -> u64 {
        self.resends.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The largest payload the server accepts (`max_payload` of its INFO).
    pub fn max_payload(&self) -> usize {
        self.client.max_payload()
    }

    fn fits(&self, payload: &[u8]) -> Result<(), SendError> {
        let limit = self.max_payload();
        if limit > 0 && payload.len() > limit {
            return Err(SendError::TooLarge {
                size: payload.len(),
                limit,
            });
        }
        Ok(())
    }

    fn connected(&self) -> Result<(), SendError> {
        match self.client.connection_state() {
            State::Connected => Ok(()),
            state => Err(SendError::Unavailable(format!(
                "not connected to NATS ({state:?})"
            ))),
        }
    }

    /// Sends `payload` to `subject` and waits for the owner's answer until `deadline`.
    ///
    /// - Nobody serves the shard (no responders), or its old owner answers `NotOwner`: back
    ///   off (5 ms doubling to 50 ms) and send again. The command never ran.
    /// - No answer within the attempt's timeout (the first waits the configured attempt
    ///   timeout, each further one twice as long): send again at once. The frame carries the
    ///   command id, so an attempt that did run is answered from the actor's stored reply.
    /// - The deadline passes: [`SendError::Unreachable`] if no attempt can have run,
    ///   [`SendError::NoReply`] if one might have.
    ///
    /// `trace`, when given, travels as the request's `traceparent` header.
    ///
    /// `route`, when given, names the owner node the caller's map knows: while other requests
    /// are in flight, the first attempt goes there in a batch (see
    /// [`request_batch`](super::request_batch)); every other attempt goes to `subject`.
    pub async fn request(
        &self,
        subject: String,
        payload: Vec<u8>,
        trace: Option<TraceParent>,
        deadline: Instant,
        route: Option<Route>,
    ) -> Result<RemoteReply, SendError> {
        use std::sync::atomic::Ordering::Relaxed;
        self.fits(&payload)?;
        self.connected()?;
        let flight = InFlight::enter(&self.in_flight);
        let mut first =
            route.filter(|r| flight.beside_others && self.batches_to(&r.node, payload.len()));
        let inbox = self.inbox().await?;
        let payload = Bytes::from(payload);
        // Shared, not copied, by every attempt.
        let subject = Subject::from(subject);
        let headers = trace.map(|t| {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(TRACEPARENT_HEADER, t.header().as_str());
            headers
        });
        let mut backoff = Duration::from_millis(5);
        let mut attempt_timeout = self.first_attempt;
        let mut last_refusal = String::from("no owner answered");
        let mut maybe_ran = false;
        // Once an attempt may have run, an error that would say "not applied" is only true of
        // the latest attempt: the caller must hear "outcome unknown" instead.
        let unknown = |reason: String| SendError::NoReply(reason);
        loop {
            if let Err(e) = self.connected() {
                return Err(if maybe_ran {
                    unknown(format!("{e:?}"))
                } else {
                    e
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(if maybe_ran {
                    SendError::NoReply(format!("no answer from {subject}"))
                } else {
                    SendError::Unreachable(last_refusal)
                });
            }
            let wait = attempt_timeout.min(deadline - now);
            // The first attempt may go in a batch to the node the map names; every other one
            // goes to the actor's subject.
            let batched_to = first.take();
            let mut expected = match &batched_to {
                Some(route) => {
                    self.batched.fetch_add(1, Relaxed);
                    inbox.expect_batched(route.node.clone(), route.shard, trace, payload.clone())
                }
                None => {
                    let (expected, reply_to) = inbox.expect();
                    let sent = match &headers {
                        Some(headers) => {
                            self.client
                                .publish_with_reply_and_headers(
                                    subject.clone(),
                                    reply_to,
                                    headers.clone(),
                                    payload.clone(),
                                )
                                .await
                        }
                        None => {
                            self.client
                                .publish_with_reply(subject.clone(), reply_to, payload.clone())
                                .await
                        }
                    };
                    if let Err(e) = sent {
                        return Err(if maybe_ran {
                            unknown(e.to_string())
                        } else {
                            SendError::Unavailable(e.to_string())
                        });
                    }
                    expected
                }
            };
            match tokio::time::timeout(wait, expected.arrival()).await {
                Ok(Some(Arrived::Frame(frame))) => match RemoteReply::decode(&frame) {
                    Ok(RemoteReply::NotOwner { shard }) => {
                        last_refusal = format!("shard {shard} is moving: its old owner refused");
                    }
                    Ok(RemoteReply::Err(e))
                        if maybe_ran && e.retry_safety() == RetrySafety::Safe =>
                    {
                        return Err(unknown(format!(
                            "an earlier attempt got no answer, the last one: {e:?}"
                        )));
                    }
                    Ok(reply) => return Ok(reply),
                    // The command may have run: an answer that does not decode says nothing
                    // about whether it was applied.
                    Err(e) => {
                        return Err(SendError::NoReply(format!(
                            "the owner's answer does not decode: {e}"
                        )));
                    }
                },
                // Nobody took the batch (or it never went out): never run. Sent again at once
                // on the actor's subject.
                Ok(Some(Arrived::NoResponders)) if batched_to.is_some() => {
                    if let Some(route) = batched_to {
                        self.refuse(route.node);
                    }
                    continue;
                }
                Ok(Some(Arrived::NoResponders)) => {
                    last_refusal = "no node serves the shard right now".into();
                }
                // The reply subscription ended with its connection, after the request was
                // handed to it (or queued for its batch): it may have reached the owner and
                // run.
                Ok(None) => {
                    return Err(unknown("the connection to NATS closed".into()));
                }
                Err(_elapsed) => {
                    maybe_ran = true;
                    if Instant::now() < deadline {
                        tracing::debug!(%subject, ?wait, "no answer in time; sending again");
                        self.resends.fetch_add(1, Relaxed);
                        attempt_timeout = attempt_timeout.saturating_mul(2);
                    }
                    continue;
                }
            }
            self.retries.fetch_add(1, Relaxed);
            let pause = backoff.min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(Duration::from_millis(50));
        }
    }

    /// This connection's reply inbox: subscribed by the first request, and again if its
    /// reader ended (it ends only with its runtime or its connection).
    async fn inbox(&self) -> Result<Arc<ReplyInbox>, SendError> {
        if let Some(inbox) = self.inbox.read().as_ref()
            && inbox.open_still()
        {
            return Ok(Arc::clone(inbox));
        }
        let opened = ReplyInbox::open(&self.client, &self.namespace, &self.tokio)
            .await
            .map_err(|e| {
                SendError::Unavailable(format!("cannot subscribe to a reply inbox: {e}"))
            })?;
        let mut slot = self.inbox.write();
        // Another request may have opened one meanwhile: the first stays, this one closes.
        match slot.as_ref() {
            Some(inbox) if inbox.open_still() => Ok(Arc::clone(inbox)),
            _ => Ok(Arc::clone(slot.insert(Arc::new(opened)))),
        }
    }

    /// Publishes `payload` to `subject` without waiting (a tell).
    pub async fn publish(&self, subject: String, payload: Vec<u8>) -> Result<(), SendError> {
        self.fits(&payload)?;
        self.connected()?;
        self.client
            .publish(subject, Bytes::from(payload))
            .await
            .map_err(|e| SendError::Unavailable(e.to_string()))
    }
}

/// Counts a request in flight for as long as it lives.
struct InFlight<'a> {
    count: &'a AtomicUsize,
    /// Other requests were in flight when this one began.
    beside_others: bool,
}

impl InFlight<'_> {
    fn enter(count: &AtomicUsize) -> InFlight<'_> {
        let before = count.fetch_add(1, Ordering::Relaxed);
        InFlight {
            count,
            beside_others: before > 0,
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The shards this node owns, as decided by the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnedShards {
    /// The map epoch this set comes from.
    pub epoch: u64,
    /// The shards.
    pub shards: BTreeSet<u32>,
    /// Per shard, the epoch since which this node has owned it without interruption, as far
    /// as the maps it saw tell (a map it never saw counts as an interruption). Empty when
    /// nothing needs it (the serving set routing follows).
    pub owned_since: std::collections::BTreeMap<u32, u64>,
}

impl OwnedShards {
    /// The epoch since which `shard` has been owned without interruption (0: unknown).
    pub fn owned_since(&self, shard: u32) -> u64 {
        self.owned_since.get(&shard).copied().unwrap_or(0)
    }
}

/// The answers of this node's inbound requests on their way to the connection, shared by the
/// node's reader task and the [`Answer`]s it hands out.
///
/// Answers are not published where they are sent (an activation's task, as its turn ends) but
/// queued here for one task that publishes them. That task lets every other ready task run
/// before it takes the queue (a tokio yield defers it until its worker runs out of work), so
/// the answers of many activations reach the connection together, and the connection writes
/// them in one system call. Published one by one, each answer woke the connection's task,
/// which then ran before the next activation and wrote that answer alone: under load, about
/// one `writev` per request on each side of NATS instead of one per batch.
struct Replies {
    client: async_nats::Client,
    /// Where askers' inboxes are in this namespace ([`reply_inbox::inbox_root`]).
    inbox_root: String,
    queue: parking_lot::Mutex<Vec<Queued>>,
    ready: tokio::sync::Notify,
    /// Answers handed out and not yet published or dropped.
    outstanding: AtomicUsize,
    idle: tokio::sync::Notify,
}

/// One answer waiting in [`Replies`]: its subject, its frame, and its `reply` span.
type Queued = (Subject, Bytes, tracing::Span);

impl Replies {
    fn new(client: async_nats::Client, namespace: &Namespace) -> Arc<Replies> {
        Arc::new(Replies {
            client,
            inbox_root: reply_inbox::inbox_root(namespace),
            queue: parking_lot::Mutex::new(Vec::new()),
            ready: tokio::sync::Notify::new(),
            outstanding: AtomicUsize::new(0),
            idle: tokio::sync::Notify::new(),
        })
    }

    /// One answer fewer to wait for.
    fn done(&self, answers: usize) {
        if answers > 0 && self.outstanding.fetch_sub(answers, Ordering::AcqRel) == answers {
            self.idle.notify_one();
        }
    }

    /// Waits until every answer handed out has been published or dropped.
    async fn answered(&self) {
        while self.outstanding.load(Ordering::Acquire) > 0 {
            self.idle.notified().await;
        }
    }

    /// Publishes queued answers, in batches, for as long as it runs (see the type's docs).
    async fn publish(self: Arc<Replies>) {
        let mut queued = Vec::new();
        let mut inboxes = Inboxes::default();
        loop {
            self.ready.notified().await;
            // Every task that is ready runs first: the answers they send join this batch.
            tokio::task::yield_now().await;
            std::mem::swap(&mut queued, &mut *self.queue.lock());
            let answers = queued.len();
            for (reply_to, payload, span) in queued.drain(..) {
                match reply_inbox::batchable(&reply_to, &self.inbox_root) {
                    Some((inbox, token)) => {
                        inboxes.add(inbox, token, reply_to.clone(), payload, span)
                    }
                    None => self.send(reply_to, payload, span).await,
                }
            }
            inboxes.send(&self).await;
            self.done(answers);
        }
    }

    /// Publishes one answer on its own reply subject.
    async fn send(&self, reply_to: Subject, payload: Bytes, span: tracing::Span) {
        if let Err(e) = self
            .client
            .publish(reply_to, payload)
            .instrument(span)
            .await
        {
            tracing::warn!(error = %e, "cannot send a reply");
        }
    }
}

/// One answer bound for a batch: its token, its reply subject (should it go alone), its frame
/// and its `reply` span.
type Batched = (u64, Subject, Bytes, tracing::Span);

/// The answers of one round of [`Replies::publish`] whose askers accept batches, by inbox
/// (see [`reply_inbox`]): each inbox gets them in as few messages as its size limit allows.
#[derive(Default)]
struct Inboxes {
    /// Per inbox: its name and its answers.
    inboxes: Vec<(String, Vec<Batched>)>,
    frame: Vec<u8>,
}

impl Inboxes {
    fn add(
        &mut self,
        inbox: &str,
        token: u64,
        reply_to: Subject,
        payload: Bytes,
        span: tracing::Span,
    ) {
        let answer = (token, reply_to, payload, span);
        // A node's answers go to few inboxes (one per asking node): a scan beats a map.
        match self.inboxes.iter_mut().find(|(name, _)| name == inbox) {
            Some((_, answers)) => answers.push(answer),
            None => self.inboxes.push((inbox.to_owned(), vec![answer])),
        }
    }

    /// Publishes every inbox's answers: one alone on its own subject, more as batches.
    async fn send(&mut self, replies: &Replies) {
        let limit = match replies.client.max_payload() {
            0 => usize::MAX,
            limit => limit,
        };
        for (inbox, answers) in &mut self.inboxes {
            if answers.len() == 1 {
                if let Some((_, reply_to, payload, span)) = answers.pop() {
                    replies.send(reply_to, payload, span).await;
                }
                continue;
            }
            let subject = reply_inbox::batch_subject(inbox);
            reply_inbox::start_batch(&mut self.frame);
            let mut spans = Vec::with_capacity(answers.len());
            for (token, reply_to, payload, span) in answers.drain(..) {
                let bound = reply_inbox::batch_item_bound(&payload);
                if 1 + bound > limit {
                    // Only fits alone (the actor layer sized it for its own message).
                    replies.send(reply_to, payload, span).await;
                    continue;
                }
                if self.frame.len() + bound > limit {
                    publish_batch(replies, &subject, &mut self.frame, &mut spans).await;
                }
                reply_inbox::push_batch_item(&mut self.frame, token, &payload);
                spans.push(span);
            }
            if !spans.is_empty() {
                publish_batch(replies, &subject, &mut self.frame, &mut spans).await;
            }
        }
        self.inboxes.clear();
    }
}

/// Publishes the batch in `frame` (and starts the next one), then closes its answers' spans.
async fn publish_batch(
    replies: &Replies,
    subject: &Subject,
    frame: &mut Vec<u8>,
    spans: &mut Vec<tracing::Span>,
) {
    let batch = Bytes::from(std::mem::take(frame));
    if let Err(e) = replies.client.publish(subject.clone(), batch).await {
        tracing::warn!(error = %e, "cannot send a batch of replies");
    }
    spans.clear();
    reply_inbox::start_batch(frame);
}

/// Where the answer to one inbound request goes: its reply subject, on this node's connection.
///
/// The actor layer hands it to whoever answers — for an ask, the actor's activation, which
/// sends the encoded answer as the turn ends. So a remote ask costs the owner no task of its
/// own: the node's reader task hands the command to the mailbox, and the activation answers
/// the caller. Dropping an `Answer` unsent sends nothing; the actor layer wraps it to say why
/// instead (see `actor::remote`).
pub struct Answer {
    replies: Arc<Replies>,
    shard: u32,
    reply_to: Subject,
    /// The request's trace context, when it is sampled (for the `reply` span).
    trace: Option<TraceParent>,
    /// Sent: the publishing task counts it done.
    queued: bool,
}

impl Answer {
    fn new(
        replies: &Arc<Replies>,
        shard: u32,
        reply_to: Subject,
        trace: Option<TraceParent>,
    ) -> Answer {
        replies.outstanding.fetch_add(1, Ordering::AcqRel);
        Answer {
            replies: Arc::clone(replies),
            shard,
            reply_to,
            trace: trace.filter(|t| t.sampled),
            queued: false,
        }
    }

    /// The largest answer the server accepts (`max_payload` of its INFO).
    pub fn max_payload(&self) -> usize {
        self.replies.client.max_payload()
    }

    /// Queues `frame` for the reply subject; it does not wait (see [`Replies`] for when it
    /// leaves).
    pub fn send(mut self, frame: Vec<u8>) {
        let span = match self.trace {
            Some(t) => {
                let span = tracing::debug_span!(
                    "reply",
                    shard = self.shard,
                    bytes = frame.len(),
                    trace_id = %TraceId(t.trace_id),
                );
                crate::opentelemetry::adopt(&span, t.trace_id, t.span_id);
                span
            }
            None => tracing::Span::none(),
        };
        let reply_to = std::mem::replace(&mut self.reply_to, Subject::from_static(""));
        // Still outstanding: the publishing task counts it done once it is published.
        self.queued = true;
        self.replies
            .queue
            .lock()
            .push((reply_to, Bytes::from(frame), span));
        self.replies.ready.notify_one();
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if !self.queued {
            self.replies.done(1);
        }
    }
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("shard", &self.shard)
            .field("reply_to", &self.reply_to)
            .finish()
    }
}

/// Resolves with the number of actors stopped once a shard's activations all have.
pub type ShardDrain = Pin<Box<dyn Future<Output = usize> + Send>>;

/// Work a [`Dispatch`] could not finish at once (a full mailbox, a durable effect): the reader
/// runs it as a task of its own, beside the subscriptions.
pub type Pending = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What the actor layer does with inbound frames.
pub trait Dispatch: Send + Sync + 'static {
    /// Handles one frame for `shard`, sent with the trace context `trace` (its `traceparent`
    /// header). `answer` is where its answer goes (`None`: the sender expects none); whoever
    /// ends up holding it (the actor's activation, for an ask) sends the answer there.
    ///
    /// Called on the node's reader task, which hands on every shard's frames, so it must not
    /// wait: it returns the work that has to (`None` when the frame was handed on or answered
    /// at once).
    fn handle(
        &self,
        shard: u32,
        payload: Bytes,
        trace: Option<TraceParent>,
        answer: Option<Answer>,
    ) -> Option<Pending>;

    /// Stops every activation of `shards`, which this node no longer serves: running turns
    /// finish, queued commands are served, state is snapshotted. Returns, per shard, a future
    /// that resolves with the number of actors stopped once all of the shard's activations
    /// have. Called by the cluster's handoff after it stopped routing these shards here, so
    /// no new activation of them can start meanwhile.
    fn drain(&self, shards: Vec<u32>) -> Vec<(u32, ShardDrain)>;
}

/// The inbound side of a node: one subscription per served shard. See [`serve`].
pub struct Inbound {
    task: JoinHandle<()>,
    served: watch::Receiver<u64>,
    stop: watch::Sender<bool>,
}

impl Inbound {
    /// The epoch whose shards are all subscribed, and the shards it no longer has all
    /// unsubscribed, at the server: once it reaches an epoch, requests for those shards find
    /// this node, and requests for the others no longer do.
    pub fn served(&self) -> watch::Receiver<u64> {
        self.served.clone()
    }

    /// Stops serving: drains every subscription, answers every request already routed here,
    /// and waits (at most `timeout`) until those answers are handed to the connection and
    /// flushed — so a node that shuts down leaves no sender waiting out its deadline.
    pub async fn close(self, timeout: Duration) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(timeout, self.task).await.is_err() {
            tracing::warn!("inbound requests still running after {timeout:?}; leaving them");
        }
    }
}

/// Keeps one subscription per served shard, following `owned` (the shards the cluster's
/// handoff says to serve now), and hands every frame to `dispatch`, until [`Inbound::close`]
/// (or until `owned`'s sender or the [`Inbound`] is dropped). A shard that stops being served
/// has its subscription drained, not dropped: see [`read`] in this file.
///
/// Two tasks share the work. This one follows the map: it subscribes, tells the reader, and
/// flushes before it reports an epoch [`served`](Inbound::served). One reader task polls every
/// shard's subscription at once and hands each frame on. One task for all shards, not one per
/// shard, because a request's cost is mostly its task wakes: the connection's task delivers a
/// whole read from the socket, requests for many shards, and with a task per shard it woke one
/// task per request; now it wakes the reader once per read.
///
/// Besides the shards, it subscribes to the node's own subject for batched requests,
/// `requests` (see [`request_batch`](super::request_batch)), for as long as it serves: the
/// reader checks nothing about a batch itself, it hands each request on with the shard the
/// caller's map put it in, and the dispatch decides as for a request on the shard's subject.
pub fn serve(
    client: async_nats::Client,
    namespace: Namespace,
    requests: Subject,
    mut owned: watch::Receiver<Arc<OwnedShards>>,
    dispatch: Arc<dyn Dispatch>,
) -> Inbound {
    let (served_tx, served) = watch::channel(0u64);
    let (stop_tx, mut stop) = watch::channel(false);
    let replies = Replies::new(client.clone(), &namespace);
    let task = tokio::spawn(async move {
        let publisher = tokio::spawn(Arc::clone(&replies).publish());
        let (ended_tx, mut ended) = mpsc::unbounded_channel();
        let start_reader = || {
            let (tx, rx) = mpsc::unbounded_channel();
            let reader = tokio::spawn(read(
                Arc::clone(&replies),
                rx,
                ended_tx.clone(),
                Arc::clone(&dispatch),
            ));
            (tx, reader)
        };
        let (mut to_reader, mut reader) = start_reader();
        // Per served shard, the serial number of its subscription (see `ShardSub`).
        let mut serving: HashMap<u32, u64> = HashMap::new();
        let mut serial = 0u64;
        loop {
            if reader.is_finished() {
                // Only a bug ends it early (a panic): it took every subscription with it.
                tracing::error!("the inbound reader stopped; subscribing every shard again");
                (to_reader, reader) = start_reader();
                serving.clear();
            }
            // A subscription that ended by itself (its stream closed) is made again.
            while let Ok((shard, serial)) = ended.try_recv() {
                forget_ended(&mut serving, shard, serial);
            }
            let wanted = Arc::clone(&owned.borrow_and_update());
            let lost: Vec<u32> = serving
                .keys()
                .copied()
                .filter(|s| *s != NODE_REQUESTS && !wanted.shards.contains(s))
                .collect();
            let lost_subs: HashSet<u64> = lost.iter().filter_map(|s| serving.remove(s)).collect();
            if !lost_subs.is_empty() {
                // Waits until the reader has asked the connection to unsubscribe them: the flush
                // below then covers those unsubscriptions too, so once an epoch is reported
                // served, its lost shards' requests go to their new owners only.
                let (done, drained) = oneshot::channel();
                if to_reader.send(Control::Drain(lost_subs, done)).is_ok() {
                    let _ = drained.await;
                }
            }
            if !lost.is_empty() {
                tracing::debug!(
                    shards = lost.len(),
                    epoch = wanted.epoch,
                    "stopped serving shards"
                );
            }
            for shard in wanted.shards.iter().copied().chain([NODE_REQUESTS]) {
                if serving.contains_key(&shard) {
                    continue;
                }
                let subject = match shard {
                    NODE_REQUESTS => requests.to_string(),
                    shard => shard_subject(&namespace, shard),
                };
                // A plain subscription, not a queue group: every node holding the subject gets
                // a copy. Normally that is one node. A node that was declared failed but whose
                // connection the server has not dropped yet (cut off, paused) still holds its
                // old subscriptions; with a shared queue group the server would hand it about
                // half of its shards' requests, which it never answers. This way the new owner
                // gets every request too, and the sender takes the first answer.
                match client.subscribe(subject.clone()).await {
                    Ok(sub) => {
                        serial += 1;
                        let sub = ShardSub {
                            shard,
                            serial,
                            sub: Some(sub),
                        };
                        if to_reader.send(Control::Serve(sub)).is_ok() {
                            serving.insert(shard, serial);
                        }
                    }
                    Err(e) => tracing::warn!(%subject, error = %e, "cannot subscribe; will retry"),
                }
            }
            let retry = serving.len() < wanted.shards.len() + 1;
            if !retry && client.flush().await.is_ok() {
                let _ = served_tx.send(wanted.epoch);
            }
            const RETRY: Duration = Duration::from_millis(200);
            let pause = if retry {
                RETRY
            } else {
                Duration::from_secs(3600)
            };
            let sleep = tokio::time::sleep(pause);
            tokio::pin!(sleep);
            let go_on = loop {
                tokio::select! {
                    r = owned.changed() => break r.is_ok(),
                    r = stop.changed() => break r.is_ok() && !*stop.borrow(),
                    Some((shard, serial)) = ended.recv() => {
                        if forget_ended(&mut serving, shard, serial) {
                            // Made again after the retry pause, not at once: subscriptions end
                            // by themselves together (their connection gone), and a burst of
                            // ends then costs one pass, not one per shard.
                            let soon = Instant::now() + RETRY;
                            if sleep.deadline() > soon {
                                sleep.as_mut().reset(soon);
                            }
                        }
                    }
                    _ = &mut reader => break true,
                    () = &mut sleep => break true,
                }
            };
            if !go_on {
                break;
            }
        }
        // The reader drains every subscription, hands on what they still deliver, and waits
        // for the work that started.
        drop(to_reader);
        if !reader.is_finished() {
            let _ = reader.await;
        }
        // Every answer to what the subscriptions delivered is published before the flush
        // (unless the publishing task itself died: then nothing more will be).
        let mut publisher = publisher;
        tokio::select! {
            () = replies.answered() => {}
            _ = &mut publisher => tracing::warn!("the reply publisher stopped early"),
        }
        publisher.abort();
        let _ = client.flush().await;
    });
    Inbound {
        task,
        served,
        stop: stop_tx,
    }
}

/// The key of the node's own subscription for batched requests among the shards' (no shard
/// number reaches it: see `MAX_SHARD_COUNT`).
const NODE_REQUESTS: u32 = u32::MAX;

/// Forgets `shard`'s subscription `serial` if it is the one serving the shard (it ended by
/// itself), so that [`serve`] makes it again; `false` for a stale report.
fn forget_ended(serving: &mut HashMap<u32, u64>, shard: u32, serial: u64) -> bool {
    if serving.get(&shard) != Some(&serial) {
        return false;
    }
    tracing::warn!(shard, "a shard's subscription ended; subscribing again");
    serving.remove(&shard);
    true
}

/// What [`serve`] tells the reader.
enum Control {
    /// Read this new subscription too.
    Serve(ShardSub),
    /// Drain the subscriptions with these serial numbers (their shards are no longer served
    /// here), then say so.
    Drain(HashSet<u64>, oneshot::Sender<()>),
}

/// One shard's subscription, as the reader polls it: a stream of `(shard, frame)` that ends
/// with one `(shard, None)` when the subscription does (drained, or closed under it).
///
/// The serial number tells subscriptions of the same shard apart: a shard lost and won back
/// quickly has a new one while the old one still drains.
struct ShardSub {
    shard: u32,
    serial: u64,
    sub: Option<async_nats::Subscriber>,
}

impl futures_util::Stream for ShardSub {
    type Item = (u32, u64, Option<async_nats::Message>);

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let (shard, serial) = (self.shard, self.serial);
        let Some(sub) = self.sub.as_mut() else {
            return std::task::Poll::Ready(None);
        };
        match futures_util::ready!(sub.poll_next_unpin(cx)) {
            Some(msg) => std::task::Poll::Ready(Some((shard, serial, Some(msg)))),
            None => {
                self.sub = None;
                std::task::Poll::Ready(Some((shard, serial, None)))
            }
        }
    }
}

/// Reads every served shard's subscription and hands each frame to `dispatch`, until `control`
/// closes; then **drains** them all and returns once the work they started is done.
///
/// A shard that stops being served has its subscription drained: unsubscribed, with every
/// request the server routed here before the unsubscribe took effect still handled (they are
/// answered, typically `NotOwner`, so their senders retry at the new owner at once instead of
/// waiting out their deadline on a request nobody would ever see). A subscription that ends
/// without being drained is reported on `ended`, so [`serve`] makes it again.
///
/// The subscriptions are polled as one `SelectAll`: a wake polls only the subscriptions that
/// have frames, so the cost per wake does not grow with the number of shards served.
async fn read(
    replies: Arc<Replies>,
    mut control: mpsc::UnboundedReceiver<Control>,
    ended: mpsc::UnboundedSender<(u32, u64)>,
    dispatch: Arc<dyn Dispatch>,
) {
    let mut subs = futures_util::stream::SelectAll::new();
    // Serial numbers of the subscriptions being drained.
    let mut draining: HashSet<u64> = HashSet::new();
    let mut closing = false;
    let mut pending = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            c = control.recv(), if !closing => match c {
                Some(Control::Serve(sub)) => subs.push(sub),
                Some(Control::Drain(serials, done)) => {
                    drain(&mut subs, &mut draining, |s| serials.contains(&s)).await;
                    let _ = done.send(());
                }
                None => {
                    closing = true;
                    drain(&mut subs, &mut draining, |_| true).await;
                }
            },
            Some((shard, serial, msg)) = subs.next(), if !subs.is_empty() => match msg {
                Some(msg) => hand_on(&replies, &*dispatch, &mut pending, shard, msg),
                None => {
                    if !draining.remove(&serial) && !closing {
                        let _ = ended.send((shard, serial));
                    }
                }
            },
        }
        if closing && draining.is_empty() {
            break;
        }
        // Reap finished work so the set stays as small as the work in flight.
        while pending.try_join_next().is_some() {}
    }
    // Every subscription is drained: wait for the work it started (its answers are waited for
    // when the node stops serving: see `serve`).
    while pending.join_next().await.is_some() {}
}

/// Drains the subscriptions `which` picks (by serial number), noting them in `draining`.
async fn drain(
    subs: &mut futures_util::stream::SelectAll<ShardSub>,
    draining: &mut HashSet<u64>,
    which: impl Fn(u64) -> bool,
) {
    for s in subs.iter_mut() {
        let Some(sub) = s.sub.as_mut() else { continue };
        if !which(s.serial) || !draining.insert(s.serial) {
            continue;
        }
        // An error means the connection is gone: its subscriptions end with it, so this one
        // still reports its end.
        if let Err(e) = sub.drain().await {
            tracing::debug!(shard = s.shard, error = %e, "cannot drain a shard subscription");
        }
    }
}

/// Hands one inbound message of `shard`'s subscription to `dispatch`, with where its answer
/// goes: a request, or a batch of them on the node's own subject.
fn hand_on(
    replies: &Arc<Replies>,
    dispatch: &dyn Dispatch,
    pending: &mut tokio::task::JoinSet<()>,
    shard: u32,
    msg: async_nats::Message,
) {
    if shard == NODE_REQUESTS {
        return hand_on_batch(replies, dispatch, pending, msg);
    }
    let trace = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(TRACEPARENT_HEADER))
        .and_then(|v| TraceParent::parse(v.as_str()));
    let answer = msg
        .reply
        .map(|reply_to| Answer::new(replies, shard, reply_to, trace));
    run(dispatch, pending, shard, msg.payload, trace, answer);
}

/// Hands every request of a batch to `dispatch`, each with its own answer (see
/// [`request_batch`](super::request_batch)). A batch that does not decode is handed on up
/// to the bad request: the rest get no answer, so their callers send them again, one by one.
fn hand_on_batch(
    replies: &Arc<Replies>,
    dispatch: &dyn Dispatch,
    pending: &mut tokio::task::JoinSet<()>,
    msg: async_nats::Message,
) {
    // Its requests are answered on `<inbox>.<token>`, the reply subject being `<inbox>.g<n>`.
    let Some(reply) = msg
        .reply
        .filter(|r| request_batch::answer_subject(r, 0).is_some())
    else {
        tracing::debug!("a batch of requests without a reply subject of its form; dropped");
        return;
    };
    let decoded = request_batch::decode(&msg.payload, |item| {
        let Some(reply_to) = request_batch::answer_subject(&reply, item.token) else {
            return;
        };
        let answer = Answer::new(replies, item.shard, reply_to, item.trace);
        run(
            dispatch,
            pending,
            item.shard,
            item.frame,
            item.trace,
            Some(answer),
        );
    });
    if let Err(e) = decoded {
        tracing::warn!(error = %e, "a batch of requests does not decode past one of them");
    }
}

/// Runs `dispatch` on one request, keeping the work it could not finish at once.
fn run(
    dispatch: &dyn Dispatch,
    pending: &mut tokio::task::JoinSet<()>,
    shard: u32,
    payload: Bytes,
    trace: Option<TraceParent>,
    answer: Option<Answer>,
) {
    // Whatever a frame does, it must not end the reader.
    let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        dispatch.handle(shard, payload, trace, answer)
    }));
    match handled {
        Ok(Some(work)) => {
            pending.spawn(work);
        }
        Ok(None) => {}
        Err(_) => tracing::error!(shard, "handling an inbound frame panicked; dropped it"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_actor_subject_is_the_shard_kind_and_encoded_id() -> Result<(), crate::names::NameError> {
        let namespace = Namespace::new("bank")?;
        for shard in [0, 7, 10, 1023, 65_536, u32::MAX] {
            for id in ["alice", "a.b c*>", "ünï/cödé=1"] {
                let id = ActorId::new(id)?;
                assert_eq!(
                    actor_subject(&namespace, shard, "account", &id),
                    format!("aether.bank.shard.{shard}.account.{}", id.encoded())
                );
            }
        }
        Ok(())
    }
}
