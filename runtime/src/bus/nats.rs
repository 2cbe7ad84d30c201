//! The NATS side of the bus: live delivery between nodes on core NATS, and durable sources on
//! the namespace's JetStream event stream. The only place of the bus that knows async-nats.
//!
//! # Live subjects
//!
//! An event on topic `<ns>.<rest>` travels on `aether.<ns>.bus.<rest>`: actor events on
//! `aether.<ns>.bus.events.<kind>.<encoded-id>`, system events on `aether.<ns>.bus.system.<Name>`.
//! The payload is the [`EventBody`] in named MessagePack; the header `Aether-Bus-Origin` names the
//! publishing bus. A subscription with pattern `P` subscribes to `P` with its namespace token
//! `ns` replaced by `aether.ns.bus` (so `*.events.>` becomes `aether.*.bus.events.>`).
//!
//! Publishing goes through a bounded queue and one task per bus: the publisher never waits on
//! the network, and a full queue drops (counted in `remote_dropped`). Events already queued
//! behind one another on the same topic leave in one message, a **batch**: their bodies one
//! after the other, and the header `Aether-Bus-Batch` saying how many. The task never waits
//! to fill a batch; a burst simply costs one publish instead of hundreds. In a batch each body
//! is preceded by its length (four bytes, big-endian), so a body that does not decode costs
//! only itself. A message without that header holds one event, unframed, as it always did. Receiving runs one task per
//! subscription, which drops the bus's own echoes and any message whose body does not belong to
//! the subject it came on (a body naming another namespace is never delivered).
//!
//! # Durable sources
//!
//! A durable subscription or projection is a durable pull consumer on `<ns>_events` with
//! `AckPolicy::All` (acknowledging a commit acknowledges every earlier one) and the pattern as
//! filter subject. When a session starts with deliveries of a previous session unacknowledged,
//! and whenever its message stream must be reopened, the consumer is reset to its
//! acknowledgement floor with the server's consumer-reset API (nats-server 2.14+); the reader
//! skips what it has already seen. Without that, messages delivered to a session that died would
//! only come back after the acknowledgement timeout, *after* newer ones — out of order. On older
//! servers the consumer is deleted and recreated after its floor (a crash in between forgets the
//! floor of a durable subscription; projections do not care, their read model holds their
//! position).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::connection::State;
use async_nats::jetstream;
use async_nats::jetstream::consumer::pull::{self, MessagesErrorKind};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::message::Acker;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::durable::{CommitSource, consumer_name};
use super::errors::{DurableError, SubscribeError};
use super::event::{BusEvent, EventBody};
use super::interest::{self, Gates};
use super::local::{Offer, Slot};
use super::pattern::{Pattern, events_topic};
use super::{Bus, BusConfig, Counters};
use crate::names::Namespace;
use crate::wire::{CommitRecord, codec};

/// The header naming the bus that published a live message.
pub const ORIGIN_HEADER: &str = "Aether-Bus-Origin";

/// The header of a message that holds a batch of events: how many (2 to [`BATCH_EVENTS`]).
pub const BATCH_HEADER: &str = "Aether-Bus-Batch";

/// Most events in one batch.
pub const BATCH_EVENTS: usize = 256;

/// Most bytes in one batch (less when the server's `max_payload` is smaller): an event that
/// would make a batch larger leaves in a message of its own.
const BATCH_BYTES: usize = 64 * 1024;

/// Room kept under the server's `max_payload` for a batch's headers.
const HEADERS_ROOM: usize = 1024;

/// Live subjects already built, by topic (cleared when it grows past this many).
const SUBJECTS_KEPT: usize = 4096;

/// Longest wait for the server to confirm a subscription or take a flush.
const SERVER_WAIT: Duration = Duration::from_secs(5);

/// The live subject of a topic: `aether.<ns>.bus.<rest>`.
pub fn live_subject(topic: &str) -> String {
    match topic.split_once('.') {
        Some((ns, rest)) => format!("aether.{ns}.bus.{rest}"),
        None => format!("aether.{topic}.bus"),
    }
}

/// The live subject pattern of a bus pattern.
pub fn live_pattern(pattern: &Pattern) -> String {
    pattern.map_namespace(|ns| format!("aether.{ns}.bus"))
}

enum Outbound {
    Event(Arc<BusEvent>),
    Flush(oneshot::Sender<()>),
}

/// The NATS half of a [`Bus`].
pub(crate) struct NatsSide {
    client: async_nats::Client,
    js: jetstream::Context,
    outbound: mpsc::Sender<Outbound>,
    origin: String,
    counters: Arc<Counters>,
    /// Which namespaces some bus listens in (see [`interest`]).
    gates: Arc<Gates>,
}

impl Drop for NatsSide {
    fn drop(&mut self) {
        self.gates.close();
    }
}

impl Bus {
    /// A bus that also carries events between nodes over NATS on `client` (see the
    /// [module docs](super#across-nodes)), and offers durable subscriptions on JetStream. Must
    /// be called inside a tokio runtime.
    pub fn with_nats(client: async_nats::Client, config: BusConfig) -> Bus {
        Bus::build(config, |origin, config, counters| {
            Some(NatsSide::start(client, origin, config, counters))
        })
    }

    /// Connects to NATS (a URL, or a [`NatsConfig`](crate::NatsConfig) with credentials and
    /// TLS) and makes a NATS bus there: for a process that follows events without running
    /// actors.
    pub async fn connect(
        nats: impl Into<crate::NatsConfig>,
        config: BusConfig,
    ) -> Result<Bus, SubscribeError> {
        let nats = nats.into();
        let client = nats
            .connect_once("aether-bus", nats.connect_timeout)
            .await?;
        Ok(Bus::with_nats(client, config))
    }
}

impl NatsSide {
    fn start(
        client: async_nats::Client,
        origin: &str,
        config: &BusConfig,
        counters: &Arc<Counters>,
    ) -> NatsSide {
        let (tx, rx) = mpsc::channel(config.outbound_buffer.max(1));
        tokio::spawn(pump(
            client.clone(),
            rx,
            origin.to_owned(),
            Arc::clone(counters),
        ));
        let gates = Gates::new(config.forward_unheard);
        if !config.forward_unheard {
            tokio::spawn(interest::prober(Arc::downgrade(&gates), client.clone()));
        }
        NatsSide {
            js: jetstream::new(client.clone()),
            client,
            outbound: tx,
            origin: origin.to_owned(),
            counters: Arc::clone(counters),
            gates,
        }
    }

    /// Whether an event of `namespace` published now must go to NATS: some bus may listen
    /// there (see [`interest`]).
    pub fn heard(&self, namespace: &Namespace) -> bool {
        self.gates.open(namespace)
    }

    /// Queues `event` for NATS; never waits. `false` when it was dropped (queue full). The
    /// caller has asked [`heard`](NatsSide::heard) first.
    pub fn enqueue(&self, event: &Arc<BusEvent>) -> bool {
        match self.outbound.try_send(Outbound::Event(Arc::clone(event))) {
            Ok(()) => true,
            Err(_) => {
                Counters::bump(&self.counters.remote_dropped, 1);
                false
            }
        }
    }

    /// Waits until everything queued so far is handed to the server, at most [`SERVER_WAIT`].
    pub async fn flush(&self) {
        let wait = async {
            let (tx, rx) = oneshot::channel();
            if self.outbound.send(Outbound::Flush(tx)).await.is_ok() {
                let _ = rx.await;
            }
        };
        if tokio::time::timeout(SERVER_WAIT, wait).await.is_err() {
            tracing::warn!(target: "aether::bus", "bus flush gave up: NATS did not take the queued events in time");
        }
    }

    /// Subscribes `slot` to its live subject and starts forwarding what other nodes publish;
    /// subscribes it to its namespace's interest subject too, and answers probes there. Returns
    /// once the server is known to hold both (a check message of its own came back through
    /// the interest subscription) and the publishers' leases have run out since, so nothing
    /// published after it returns is missed (see [`interest`]).
    pub async fn subscribe_remote(
        &self,
        slot: &Arc<Slot>,
    ) -> Result<JoinHandle<()>, SubscribeError> {
        let subject = live_pattern(&slot.pattern);
        let unavailable = |e: &dyn std::fmt::Display| {
            SubscribeError::Unavailable(format!("cannot subscribe to {subject}: {e}"))
        };
        let state = self.client.connection_state();
        if state != State::Connected {
            return Err(unavailable(&format!("not connected to NATS ({state:?})")));
        }
        let sub = self
            .client
            .subscribe(subject.clone())
            .await
            .map_err(|e| unavailable(&e))?;
        let namespace = slot.pattern.namespace_name();
        let interest_subject = interest::interest_subject(namespace.unwrap_or("*"));
        let probes = self
            .client
            .subscribe(interest_subject.clone())
            .await
            .map_err(|e| unavailable(&e))?;
        let token = Bytes::from(format!(
            "check-{:032x}",
            crate::wire::CommandId::random().as_u128()
        ));
        let (seen_tx, seen) = oneshot::channel();
        let forwarding = tokio::spawn(forward(
            self.client.clone(),
            sub,
            probes,
            Some((token.clone(), seen_tx)),
            Arc::clone(slot),
            self.origin.clone(),
            Arc::clone(&self.counters),
        ));
        // Should the caller give up from here on, the guard stops the forwarding task and
        // with it both subscriptions.
        let guard = AbortOnDrop(Some(forwarding.abort_handle()));
        // A flush only hands the subscriptions to the socket. A message published after them
        // on the same connection, seen coming back through the interest subscription, proves
        // that the server holds both (it handles a connection's operations in order), and
        // that this user may subscribe there.
        let check = interest::interest_subject(namespace.unwrap_or(interest::CHECK_NAMESPACE));
        self.client
            .publish(check, token)
            .await
            .map_err(|e| unavailable(&e))?;
        if !matches!(tokio::time::timeout(SERVER_WAIT, seen).await, Ok(Ok(()))) {
            return Err(unavailable(&format!(
                "the server did not confirm the subscription to {interest_subject} in time \
                 (a live subscriber needs to subscribe and publish there: see docs/security.md)"
            )));
        }
        // A publisher that found no listener before the server knew this one stays quiet
        // until its lease ends: wait it out, by the clock the leases use.
        let until = std::time::Instant::now() + interest::LEASE + interest::MARGIN;
        while let Some(left) = until.checked_duration_since(std::time::Instant::now())
            && !left.is_zero()
        {
            tokio::time::sleep(left).await;
        }
        guard.disarm();
        Ok(forwarding)
    }

    async fn event_stream(
        &self,
        namespace: &Namespace,
    ) -> Result<jetstream::stream::Stream, DurableError> {
        let name = format!("{namespace}_events");
        self.js.get_stream(&name).await.map_err(|e| {
            if e.to_string().contains("not found") {
                DurableError::NoEventStream {
                    namespace: namespace.to_string(),
                }
            } else {
                DurableError::Unavailable(format!("cannot open stream {name}: {e}"))
            }
        })
    }

    /// The source of durable subscription `name`, positioned where it last acknowledged.
    pub async fn durable_source(
        &self,
        namespace: &Namespace,
        name: &str,
        pattern: &Pattern,
    ) -> Result<JsSource, DurableError> {
        let stream = self.event_stream(namespace).await?;
        let mut source = JsSource::new(
            self.client.clone(),
            stream,
            consumer_name(name),
            pattern.to_string(),
        );
        source.attach().await?;
        Ok(source)
    }

    /// The source of projection `name`; positioned by the projection (`rewind`) before use.
    pub async fn projection_source(
        &self,
        namespace: &Namespace,
        name: &str,
        pattern: &Pattern,
    ) -> Result<JsSource, DurableError> {
        let stream = self.event_stream(namespace).await?;
        Ok(JsSource::new(
            self.client.clone(),
            stream,
            format!("aether_projection_{name}"),
            pattern.to_string(),
        ))
    }

    /// Deletes consumer `consumer` of the namespace's event stream.
    pub async fn delete_consumer(
        &self,
        namespace: &Namespace,
        consumer: &str,
    ) -> Result<bool, DurableError> {
        let stream = self.event_stream(namespace).await?;
        match stream.delete_consumer(consumer).await {
            Ok(status) => Ok(status.success),
            Err(e) if e.to_string().contains("not found") => Ok(false),
            Err(e) => Err(DurableError::Unavailable(format!(
                "cannot delete consumer {consumer}: {e}"
            ))),
        }
    }
}

/// Aborts a task when dropped, unless [`disarm`](AbortOnDrop::disarm)ed first.
struct AbortOnDrop(Option<tokio::task::AbortHandle>);

impl AbortOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// Events on one topic that leave in one message: each body behind its length (see the
/// [module docs](self)).
struct Batch {
    topic: Arc<BusEvent>,
    count: usize,
    payload: Vec<u8>,
}

/// The length in front of each body of a batch.
const FRAME: usize = 4;

impl Batch {
    fn new(topic: Arc<BusEvent>) -> Batch {
        Batch {
            topic,
            count: 0,
            payload: Vec::new(),
        }
    }

    /// Appends `event`'s body, framed.
    fn push(&mut self, event: &BusEvent) -> Result<(), codec::CodecError> {
        let mark = self.payload.len();
        self.payload.extend_from_slice(&[0; FRAME]);
        if let Err(e) = codec::encode_into("bus event", &mut self.payload, event.body()) {
            self.payload.truncate(mark);
            return Err(e);
        }
        let len = u32::try_from(self.payload.len() - mark - FRAME).unwrap_or(u32::MAX);
        self.payload[mark..mark + FRAME].copy_from_slice(&len.to_be_bytes());
        self.count += 1;
        Ok(())
    }

    /// Takes the last event out into a batch of its own (it made this one too large).
    fn split_last(&mut self, mark: usize) -> Batch {
        self.count -= 1;
        Batch {
            topic: Arc::clone(&self.topic),
            count: 1,
            payload: self.payload.split_off(mark),
        }
    }
}

/// The publishing task of a bus: sends what `enqueue` queued, batching what is already queued
/// on the same topic (see the [module docs](self)).
async fn pump(
    client: async_nats::Client,
    mut rx: mpsc::Receiver<Outbound>,
    origin: String,
    counters: Arc<Counters>,
) {
    let mut subjects: hashbrown::HashMap<String, async_nats::Subject> = hashbrown::HashMap::new();
    let mut batch: Option<Batch> = None;
    loop {
        // With a batch open, take only what is queued already: never wait to fill it.
        let item = if batch.is_some() {
            rx.try_recv().ok()
        } else {
            match rx.recv().await {
                Some(item) => Some(item),
                None => return,
            }
        };
        let event = match item {
            None => {
                if let Some(full) = batch.take() {
                    send(&client, &mut subjects, &origin, &counters, full).await;
                }
                continue;
            }
            Some(Outbound::Flush(done)) => {
                if let Some(full) = batch.take() {
                    send(&client, &mut subjects, &origin, &counters, full).await;
                }
                if let Err(e) = client.flush().await {
                    tracing::debug!(target: "aether::bus", error = %e, "bus flush failed");
                }
                let _ = done.send(());
                continue;
            }
            Some(Outbound::Event(event)) => event,
        };
        // A batch never grows past what the server takes: a refused message would lose every
        // event in it, where alone each would have gone through.
        let limit = match client.max_payload() {
            0 => BATCH_BYTES,
            max => BATCH_BYTES.min(max.saturating_sub(HEADERS_ROOM)),
        };
        if let Some(open) = &batch
            && (open.topic.topic() != event.topic()
                || open.count == BATCH_EVENTS
                || open.payload.len() >= limit)
            && let Some(full) = batch.take()
        {
            send(&client, &mut subjects, &origin, &counters, full).await;
        }
        let open = batch.get_or_insert_with(|| Batch::new(Arc::clone(&event)));
        let mark = open.payload.len();
        if let Err(e) = open.push(&event) {
            tracing::warn!(target: "aether::bus", error = %e, "bus event not sent");
            Counters::bump(&counters.remote_dropped, 1);
            if open.count == 0 {
                batch = None;
            }
            continue;
        }
        if open.count > 1 && open.payload.len() > limit {
            let alone = open.split_last(mark);
            if let Some(full) = batch.replace(alone) {
                send(&client, &mut subjects, &origin, &counters, full).await;
            }
        }
    }
}

/// Publishes one batch (one event, or several on one topic) on its topic's live subject.
async fn send(
    client: &async_nats::Client,
    subjects: &mut hashbrown::HashMap<String, async_nats::Subject>,
    origin: &str,
    counters: &Counters,
    batch: Batch,
) {
    let topic = batch.topic.topic();
    let subject = match subjects.get(topic) {
        Some(subject) => subject.clone(),
        None => {
            if subjects.len() >= SUBJECTS_KEPT {
                subjects.clear();
            }
            let subject = async_nats::Subject::from(live_subject(topic));
            subjects.insert(topic.to_owned(), subject.clone());
            subject
        }
    };
    let mut headers = HeaderMap::new();
    headers.insert(ORIGIN_HEADER, origin);
    let payload = Bytes::from(batch.payload);
    let payload = if batch.count > 1 {
        headers.insert(BATCH_HEADER, batch.count.to_string().as_str());
        payload
    } else {
        // One event travels unframed, as before batches.
        payload.slice(FRAME..)
    };
    let n = batch.count as u64;
    match client.publish_with_headers(subject, headers, payload).await {
        Ok(()) => Counters::bump(&counters.remote_sent, n),
        Err(e) => {
            tracing::debug!(target: "aether::bus", error = %e, "bus event not sent");
            Counters::bump(&counters.remote_dropped, n);
        }
    }
}

/// The bodies of a message: the whole payload for one event, each framed body for a batch of
/// `count`. A frame longer than what is left ends the walk with an error; [`Bodies::rest`]
/// is what is left after the last body.
struct Bodies<'a> {
    rest: &'a [u8],
    left: usize,
    framed: bool,
}

fn bodies(payload: &[u8], count: usize) -> Bodies<'_> {
    Bodies {
        rest: payload,
        left: count,
        framed: count > 1,
    }
}

impl Bodies<'_> {
    /// Bytes after the last body (none in a well-formed message).
    fn rest(&self) -> usize {
        self.rest.len()
    }
}

impl<'a> Iterator for Bodies<'a> {
    type Item = Result<&'a [u8], ()>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        if !self.framed {
            return Some(Ok(std::mem::take(&mut self.rest)));
        }
        let framed = self
            .rest
            .split_first_chunk::<FRAME>()
            .and_then(|(len, after)| {
                let len = u32::from_be_bytes(*len) as usize;
                (len <= after.len()).then(|| after.split_at(len))
            });
        match framed {
            Some((body, after)) => {
                self.rest = after;
                Some(Ok(body))
            }
            None => {
                // Nothing past a broken frame can be found: the walk ends here.
                self.left = 0;
                Some(Err(()))
            }
        }
    }
}

/// Whether `subject` is the live subject of `topic` (what [`live_subject`] builds), without
/// building it.
fn is_live_subject(topic: &str, subject: &str) -> bool {
    let (ns, rest) = match topic.split_once('.') {
        Some((ns, rest)) => (ns, Some(rest)),
        None => (topic, None),
    };
    let Some(after) = subject
        .strip_prefix("aether.")
        .and_then(|s| s.strip_prefix(ns))
        .and_then(|s| s.strip_prefix(".bus"))
    else {
        return false;
    };
    match rest {
        Some(rest) => after.strip_prefix('.') == Some(rest),
        None => after.is_empty(),
    }
}

/// Delivers what other nodes publish on a subscription's live subject into its buffer, and
/// answers the interest probes of its namespace (see [`interest`]).
///
/// `check` is the token of the subscription's own check message (see
/// [`NatsSide::subscribe_remote`]) and where to say it came back.
async fn forward(
    client: async_nats::Client,
    mut sub: async_nats::Subscriber,
    mut probes: async_nats::Subscriber,
    mut check: Option<(Bytes, oneshot::Sender<()>)>,
    slot: Arc<Slot>,
    origin: String,
    counters: Arc<Counters>,
) {
    loop {
        let msg = tokio::select! {
            msg = sub.next() => match msg {
                Some(msg) => msg,
                None => return,
            },
            Some(probe) = probes.next() => {
                if let Some(reply) = probe.reply {
                    let _ = client.publish(reply, Bytes::new()).await;
                } else if check.as_ref().is_some_and(|(token, _)| probe.payload == *token)
                    && let Some((_, seen)) = check.take()
                {
                    let _ = seen.send(());
                }
                continue;
            }
        };
        if interest::is_interest_subject(msg.subject.as_str()) {
            // A pattern like `bank.>` also covers the probes; they are answered above.
            continue;
        }
        let headers = msg.headers.as_ref();
        let count = match headers.and_then(|h| h.get(BATCH_HEADER)) {
            None => 1,
            Some(n) => match n.as_str().parse::<usize>() {
                Ok(n) if (2..=BATCH_EVENTS).contains(&n) => n,
                _ => {
                    Counters::bump(&counters.malformed, 1);
                    tracing::warn!(target: "aether::bus", subject = %msg.subject, count = n.as_str(), "bus message with an invalid batch size; dropped");
                    continue;
                }
            },
        };
        let own = headers
            .and_then(|h| h.get(ORIGIN_HEADER))
            .is_some_and(|v| v.as_str() == origin);
        if own {
            Counters::bump(&counters.echoes_ignored, count as u64);
            continue;
        }
        let mut seen = 0;
        let mut walk = bodies(&msg.payload, count);
        let mut whole = true;
        for body in walk.by_ref() {
            seen += 1;
            let Ok(body) = body else {
                // A frame longer than the message: the rest cannot be found.
                Counters::bump(&counters.malformed, (count - seen + 1) as u64);
                tracing::warn!(target: "aether::bus", subject = %msg.subject, "bus batch ends inside a body; the rest dropped");
                whole = false;
                break;
            };
            let decoded = codec::decode::<EventBody>("bus event", body)
                .map_err(|e| e.to_string())
                .and_then(BusEvent::from_body);
            let event = match decoded {
                Ok(event) if is_live_subject(event.topic(), msg.subject.as_str()) => event,
                Ok(event) => {
                    Counters::bump(&counters.malformed, 1);
                    tracing::warn!(target: "aether::bus", subject = %msg.subject, topic = event.topic(), "bus message names another topic than its subject; dropped");
                    continue;
                }
                Err(reason) => {
                    Counters::bump(&counters.malformed, 1);
                    tracing::warn!(target: "aether::bus", subject = %msg.subject, %reason, "bus message does not decode; dropped");
                    continue;
                }
            };
            Counters::bump(&counters.remote_received, 1);
            if slot.pattern.matches(event.topic()) && slot.filter.matches(&event) {
                match slot.offer(&Arc::new(event)) {
                    Offer::Delivered => Counters::bump(&counters.delivered, 1),
                    Offer::Dropped => Counters::bump(&counters.dropped, 1),
                    Offer::Closed => return,
                }
            }
        }
        if whole && walk.rest() > 0 {
            // More than the header announced: what it holds is delivered, the rest counted.
            Counters::bump(&counters.malformed, 1);
            tracing::warn!(target: "aether::bus", subject = %msg.subject, bytes = walk.rest(), "bus batch holds more than its header says; the rest ignored");
        }
    }
}

/// Whether the server offers the consumer-reset API (nats-server 2.14+).
fn server_can_reset(version: &str) -> bool {
    let mut parts = version
        .trim_start_matches('v')
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let v = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    v >= (2, 14, 0)
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> DurableError {
    DurableError::Unavailable(format!("{what}: {e}"))
}

/// A JetStream durable pull consumer on a namespace's event stream, as a [`CommitSource`].
pub(crate) struct JsSource {
    client: async_nats::Client,
    stream: jetstream::stream::Stream,
    consumer_name: String,
    filter_subject: String,
    consumer: Option<PullConsumer>,
    messages: Option<pull::Stream>,
    /// Delivered, not yet acknowledged: stream sequence and how to acknowledge it.
    held: VecDeque<(u64, Acker)>,
    /// A commit that does not decode stops the source for good.
    failed: Option<DurableError>,
    /// The message stream broke: reset the consumer to its floor before reading again.
    needs_reset: bool,
}

impl JsSource {
    fn new(
        client: async_nats::Client,
        stream: jetstream::stream::Stream,
        consumer_name: String,
        filter_subject: String,
    ) -> Self {
        JsSource {
            client,
            stream,
            consumer_name,
            filter_subject,
            consumer: None,
            messages: None,
            held: VecDeque::new(),
            failed: None,
            needs_reset: false,
        }
    }

    fn config(&self, deliver_policy: DeliverPolicy) -> pull::Config {
        pull::Config {
            durable_name: Some(self.consumer_name.clone()),
            description: Some("aether event bus".into()),
            deliver_policy,
            ack_policy: AckPolicy::All,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 10_000,
            filter_subject: self.filter_subject.clone(),
            ..Default::default()
        }
    }

    /// Opens the durable consumer (creating it at the start of the stream), checks its filter,
    /// and puts it back at its acknowledgement floor.
    async fn attach(&mut self) -> Result<(), DurableError> {
        let info = match self.stream.consumer_info(&self.consumer_name).await {
            Ok(info) => Some(info),
            Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => None,
            Err(e) => return Err(unavailable("cannot read the consumer", e)),
        };
        match info {
            None => self.create(DeliverPolicy::All).await,
            Some(info) => {
                if info.config.filter_subject != self.filter_subject {
                    return Err(DurableError::Conflict {
                        name: self
                            .consumer_name
                            .trim_start_matches("aether_sub_")
                            .to_owned(),
                        existing: info.config.filter_subject,
                        requested: self.filter_subject.clone(),
                    });
                }
                let consumer = self
                    .stream
                    .get_consumer::<pull::Config>(&self.consumer_name)
                    .await
                    .map_err(|e| unavailable("cannot open the consumer", e))?;
                self.consumer = Some(consumer);
                if info.num_ack_pending > 0 {
                    // A previous session left deliveries unacknowledged: start again right
                    // after the floor, now, in order.
                    self.reset_to_floor().await?;
                }
                Ok(())
            }
        }
    }

    async fn create(&mut self, deliver_policy: DeliverPolicy) -> Result<(), DurableError> {
        let consumer = self
            .stream
            .create_consumer(self.config(deliver_policy))
            .await
            .map_err(|e| unavailable("cannot create the consumer", e))?;
        self.consumer = Some(consumer);
        self.messages = None;
        self.held.clear();
        Ok(())
    }

    async fn delete(&mut self) -> Result<(), DurableError> {
        match self.stream.delete_consumer(&self.consumer_name).await {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("not found") => Ok(()),
            Err(e) => Err(unavailable("cannot delete the consumer", e)),
        }
    }

    /// Makes the next delivery start right after the acknowledgement floor, dropping whatever
    /// was delivered and not acknowledged (it will be delivered again, in order).
    async fn reset_to_floor(&mut self) -> Result<(), DurableError> {
        self.messages = None;
        self.held.clear();
        if server_can_reset(&self.client.server_info().version) {
            let stream = &self.stream.cached_info().config.name;
            let subject = format!("$JS.API.CONSUMER.RESET.{stream}.{}", self.consumer_name);
            let answer = self
                .client
                .request(subject, Bytes::new())
                .await
                .map_err(|e| unavailable("consumer reset", e))?;
            let value: serde_json::Value = serde_json::from_slice(&answer.payload)
                .map_err(|e| unavailable("consumer reset answer", e))?;
            if let Some(error) = value.get("error") {
                return Err(unavailable("consumer reset refused", error));
            }
            return Ok(());
        }
        let info = self
            .stream
            .consumer_info(&self.consumer_name)
            .await
            .map_err(|e| unavailable("cannot read the consumer", e))?;
        self.delete().await?;
        self.create(DeliverPolicy::ByStartSequence {
            start_sequence: info.ack_floor.stream_sequence + 1,
        })
        .await
    }

    fn decode(
        &self,
        subject: &str,
        seq: u64,
        payload: &[u8],
    ) -> Result<CommitRecord, DurableError> {
        let record = CommitRecord::decode(payload).map_err(|e| DurableError::Corrupt {
            position: seq,
            reason: e.to_string(),
        })?;
        if events_topic(&record.actor) != subject {
            return Err(DurableError::Corrupt {
                position: seq,
                reason: format!("a commit of {} stored on {subject}", record.actor),
            });
        }
        Ok(record)
    }
}

#[async_trait]
impl CommitSource for JsSource {
    async fn next(&mut self) -> Result<(u64, CommitRecord), DurableError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.needs_reset {
            self.reset_to_floor().await?;
            self.needs_reset = false;
        }
        if self.messages.is_none() {
            let consumer = self.consumer.as_ref().ok_or_else(|| {
                DurableError::Unavailable("the consumer is not positioned".into())
            })?;
            let messages = consumer
                .messages()
                .await
                .map_err(|e| unavailable("cannot pull from the consumer", e))?;
            self.messages = Some(messages);
        }
        let Some(messages) = self.messages.as_mut() else {
            return Err(DurableError::Unavailable("no message stream".into()));
        };
        let failure = match messages.next().await {
            Some(Ok(msg)) => {
                let info = msg
                    .info()
                    .map_err(|e| unavailable("message without delivery info", e))?;
                let seq = info.stream_sequence;
                let subject = msg.subject.to_string();
                let record = match self.decode(&subject, seq, &msg.payload) {
                    Ok(record) => record,
                    Err(e) => {
                        self.failed = Some(e.clone());
                        return Err(e);
                    }
                };
                let (_, acker) = msg.split();
                self.held.push_back((seq, acker));
                return Ok((seq, record));
            }
            Some(Err(e)) if e.kind() == MessagesErrorKind::MissingHeartbeat => {
                unavailable("the server stopped answering the consumer", e)
            }
            Some(Err(e)) => unavailable("consumer", e),
            None => DurableError::Unavailable("the consumer's message stream ended".into()),
        };
        // The stream must be reopened; deliveries it held would come back late and out of
        // order, so the consumer goes back to its floor first (the reader skips what it has
        // already seen).
        self.messages = None;
        self.needs_reset = true;
        Err(failure)
    }

    async fn ack(&mut self, position: u64) -> Result<(), DurableError> {
        let Some(at) = self.held.iter().rposition(|(seq, _)| *seq <= position) else {
            return Ok(());
        };
        self.held[at]
            .1
            .double_ack()
            .await
            .map_err(|e| unavailable("acknowledgement not confirmed", e))?;
        self.held.drain(..=at);
        Ok(())
    }

    async fn rewind(&mut self, from: Option<u64>) -> Result<(), DurableError> {
        self.failed = None;
        self.needs_reset = false;
        self.delete().await?;
        let policy = match from {
            Some(seq) if seq > 1 => DeliverPolicy::ByStartSequence {
                start_sequence: seq,
            },
            _ => DeliverPolicy::All,
        };
        self.create(policy).await
    }

    async fn caught_up(&mut self) -> Result<bool, DurableError> {
        let info = self
            .stream
            .consumer_info(&self.consumer_name)
            .await
            .map_err(|e| unavailable("cannot read the consumer", e))?;
        Ok(info.num_pending == 0 && info.num_ack_pending == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(topic_id: &str, bytes: usize) -> Arc<BusEvent> {
        let ns = Namespace::new("t").expect("namespace");
        let envelope = crate::wire::EventEnvelope {
            namespace: ns.clone(),
            actor: crate::names::ActorKey::new(
                ns,
                crate::names::Kind::new("k").expect("kind"),
                crate::names::ActorId::new(topic_id).expect("id"),
            ),
            version: 1,
            event_type: "E".into(),
            payload: vec![7; bytes],
            timestamp_ms: 0,
            command_id: crate::wire::CommandId::random(),
            correlation_id: crate::wire::CommandId::random(),
            causation_id: None,
            schema_version: 0,
        };
        Arc::new(BusEvent::from_body(EventBody::Actor(envelope)).expect("event"))
    }

    #[test]
    fn a_batch_frames_its_bodies_and_gives_a_large_one_back() {
        let small = event("a", 10);
        let mut batch = Batch::new(Arc::clone(&small));
        batch.push(&small).expect("encodes");
        batch.push(&small).expect("encodes");
        let decoded: Vec<EventBody> = bodies(&batch.payload, batch.count)
            .map(|b| codec::decode("bus event", b.expect("framed")).expect("decodes"))
            .collect();
        assert_eq!(decoded, [small.body().clone(), small.body().clone()]);
        // A body too large to share a message is split off, whole.
        let large = event("a", BATCH_BYTES + 1);
        let mark = batch.payload.len();
        batch.push(&large).expect("encodes");
        let alone = batch.split_last(mark);
        assert_eq!((batch.count, alone.count), (2, 1));
        assert_eq!(batch.payload.len(), mark);
        let body = bodies(&alone.payload, 2)
            .next()
            .expect("one")
            .expect("framed");
        assert_eq!(
            codec::decode::<EventBody>("bus event", body).expect("decodes"),
            *large.body()
        );
        // A frame longer than what is left ends the walk.
        let mut cut = alone.payload.clone();
        cut.truncate(cut.len() - 1);
        assert_eq!(bodies(&cut, 2).collect::<Vec<_>>(), [Err(())]);
    }

    #[test]
    fn a_live_subject_is_recognised_without_being_built() {
        for topic in [
            "bank.events.account.alice",
            "bank.system.NodeJoined",
            "bank",
            "b.x",
        ] {
            assert!(is_live_subject(topic, &live_subject(topic)), "{topic}");
        }
        for (topic, subject) in [
            ("bank.events.a", "aether.bank.bus.events.b"),
            ("bank.events.a", "aether.bankx.bus.events.a"),
            ("bank.events.a", "aether.bank.bus.events.a.b"),
            ("bank.events.a", "aether.bank.busevents.a"),
            ("bank", "aether.bank.bus.x"),
            ("bank.x", "aether.bank.bus"),
            ("bank.x", "nats.bank.bus.x"),
        ] {
            assert!(!is_live_subject(topic, subject), "{topic} on {subject}");
        }
    }
}
