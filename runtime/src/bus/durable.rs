//! Durable subscriptions: stored events from a remembered position, in order, each once.
//!
//! A live subscription sees what is published while it listens. A durable subscription reads
//! the **event store** instead — the namespace's log of commits — from a position that survives
//! the subscriber: it can go away for an hour and, when it comes back under the same name, it
//! receives everything stored meanwhile, in order.
//!
//! On a NATS bus, durable subscription `name` of namespace `ns` is the JetStream durable consumer
//! `aether_sub_<name>` on the namespace's existing event stream `<ns>_events`, with the pattern as
//! its filter subject (topics and stream subjects are the same names), so the data is not copied.
//!
//! # Acknowledgements, order, and "each event once"
//!
//! [`DurableSubscription::next`] returns events one at a time, in log order; per actor that is
//! version order. [`DurableSubscription::ack`] acknowledges *everything returned so far*
//! (cumulative, JetStream `AckPolicy::All`), and waits for the server to confirm. Ack after your
//! handler succeeded: what was not acknowledged is delivered again to the next session.
//!
//! Within a session, each event is returned once, even when the server redelivers (the
//! subscription remembers the last [`Offset`] it returned and skips anything at or before it).
//! When a session resumes, the consumer is reset to its acknowledgement floor, so delivery
//! restarts right after the last acknowledged commit, in order — not after a redelivery timeout.
//!
//! Across a crash, delivery is **at least once**: events handled but not yet acknowledged are
//! delivered again. To apply each event to a read model **exactly once**, store the offset with
//! the read model in the same write and skip what it already holds: that is what a
//! [projection](super::projection) does for you.
//!
//! # Where durable subscriptions work
//!
//! | bus / store | durable subscription | projection |
//! |---|---|---|
//! | NATS bus, events in JetStream | yes | yes (a JetStream consumer) |
//! | local bus, any store | [`DurableError::Unsupported`] | yes (reads the store's log) |
//!
//! A local bus has nowhere to keep a consumer's position; a projection keeps its own, in its
//! read model, so it works everywhere.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::errors::DurableError;
use super::filter::Filter;
use super::local::Listed;
use super::pattern::{Pattern, events_topic};
use crate::names::{NameKind, Namespace, validate_name};
use crate::store::{EventStore, LogEntry};
use crate::wire::{CommitRecord, EventEnvelope};

/// A position in a namespace's log: the log position of a commit and the index of an event in
/// it. Ordered: every event of an earlier commit comes first.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct Offset {
    /// The commit's log position (the stream sequence on JetStream).
    pub commit: u64,
    /// The event's index within the commit, from 0.
    pub index: u32,
}

impl std::fmt::Display for Offset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.commit, self.index)
    }
}

/// A stored event and its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Where it is in the log.
    pub offset: Offset,
    /// The event with its envelope.
    pub envelope: EventEnvelope,
}

impl StoredEvent {
    /// The event decoded as one of actor type `A`'s, upcast from an older event version (see
    /// [`Behavior::upcast_event`](crate::Behavior::upcast_event)): `Ok(None)` when it comes
    /// from another kind, an error when it is `A`'s and does not decode.
    pub fn decode<A: crate::Behavior>(&self) -> Result<Option<A::Event>, crate::wire::CodecError> {
        super::event::decode_envelope::<A>(&self.envelope)
    }
}

/// Where durable readers get commits from: a JetStream consumer, or an event store's log.
///
/// Implementations are cancel-safe: dropping a `next` future loses nothing.
#[async_trait]
pub(crate) trait CommitSource: Send {
    /// The next commit matching the source's pattern, and its log position. Waits for one.
    async fn next(&mut self) -> Result<(u64, CommitRecord), DurableError>;
    /// Marks every commit up to `position` as done (cumulative). Waits for confirmation.
    async fn ack(&mut self, position: u64) -> Result<(), DurableError>;
    /// Delivers again from `from` (inclusive); from the beginning when `None`.
    async fn rewind(&mut self, from: Option<u64>) -> Result<(), DurableError>;
    /// Whether every matching commit stored so far has been returned and acknowledged.
    async fn caught_up(&mut self) -> Result<bool, DurableError>;
}

/// The JetStream consumer name of durable subscription `name`.
pub(crate) fn consumer_name(name: &str) -> String {
    format!("aether_sub_{name}")
}

/// Checks a durable subscription's name and pattern; returns its namespace.
pub(crate) fn check_durable(name: &str, pattern: &Pattern) -> Result<Namespace, DurableError> {
    validate_name(NameKind::Subscription, name)?;
    let not_durable = |reason: &str| DurableError::NotDurable {
        pattern: pattern.to_string(),
        reason: reason.to_owned(),
    };
    let namespace = pattern.namespace_name().ok_or_else(|| {
        not_durable("it must name one namespace (its stored events are one stream)")
    })?;
    if !pattern.can_match_events() {
        return Err(not_durable(
            "it matches no actor events (system events are live only)",
        ));
    }
    Ok(Namespace::new(namespace)?)
}

/// A durable subscription. See the [module docs](self).
#[must_use = "a durable subscription does nothing unless read"]
pub struct DurableSubscription {
    name: String,
    filter: Filter,
    source: Box<dyn CommitSource>,
    /// Events of the current commit not yet returned.
    ready: VecDeque<StoredEvent>,
    /// The last event returned (the dedup mark).
    returned: Option<Offset>,
    /// The highest commit whose events have all been returned (or filtered out).
    complete: Option<u64>,
    /// The highest commit acknowledged.
    acked: Option<u64>,
    listed: Listed,
}

impl DurableSubscription {
    pub(crate) fn new(
        name: String,
        filter: Filter,
        source: Box<dyn CommitSource>,
        listed: Listed,
    ) -> Self {
        DurableSubscription {
            name,
            filter,
            source,
            ready: VecDeque::new(),
            returned: None,
            complete: None,
            acked: None,
            listed,
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The offset of the last event returned in this session.
    pub fn position(&self) -> Option<Offset> {
        self.returned
    }

    /// The next stored event that matches, in log order; waits until there is one.
    ///
    /// Cancel-safe: wrapping it in `tokio::time::timeout` and giving up loses nothing.
    pub async fn next(&mut self) -> Result<StoredEvent, DurableError> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                if self.ready.is_empty() {
                    self.complete = self.complete.max(Some(event.offset.commit));
                }
                self.returned = Some(event.offset);
                self.listed
                    .slot
                    .delivered
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(event);
            }
            let (position, commit) = self.source.next().await?;
            let returned = self.returned;
            let filter = &self.filter;
            self.ready = commit
                .envelopes()
                .enumerate()
                .map(|(i, envelope)| StoredEvent {
                    offset: Offset {
                        commit: position,
                        index: i as u32,
                    },
                    envelope,
                })
                .filter(|e| returned.is_none_or(|r| e.offset > r))
                .filter(|e| {
                    filter.matches_parts(&e.envelope.event_type, Some(e.envelope.actor.id.as_str()))
                })
                .collect();
            if self.ready.is_empty() {
                // Nothing for the handler in this commit (filtered out, or a redelivery).
                self.complete = self.complete.max(Some(position));
            }
        }
    }

    /// Acknowledges every event returned so far (every commit fully returned) and waits for
    /// the server to confirm. A commit whose events were only partly returned is acknowledged
    /// together with its last event.
    pub async fn ack(&mut self) -> Result<(), DurableError> {
        if let Some(complete) = self.complete
            && self.acked.is_none_or(|a| a < complete)
        {
            self.source.ack(complete).await?;
            self.acked = Some(complete);
        }
        Ok(())
    }
}

impl std::fmt::Debug for DurableSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableSubscription")
            .field("name", &self.name)
            .field("position", &self.returned)
            .finish()
    }
}

/// Reads an event store's namespace log, polling for new commits.
pub(crate) struct LogSource {
    store: Arc<dyn EventStore>,
    pattern: Pattern,
    /// Every commit at or before this position has been read.
    after: u64,
    buffer: VecDeque<LogEntry>,
    page: usize,
    poll: Duration,
    idle: Duration,
}

impl LogSource {
    pub fn new(store: Arc<dyn EventStore>, pattern: Pattern, page: usize, poll: Duration) -> Self {
        LogSource {
            store,
            pattern,
            after: 0,
            buffer: VecDeque::new(),
            page: page.max(1),
            poll,
            idle: Duration::from_millis(1),
        }
    }
}

#[async_trait]
impl CommitSource for LogSource {
    async fn next(&mut self) -> Result<(u64, CommitRecord), DurableError> {
        loop {
            while let Some(entry) = self.buffer.pop_front() {
                if self.pattern.matches(&events_topic(&entry.commit.actor)) {
                    return Ok((entry.position, entry.commit));
                }
            }
            let page = self.store.read_log(self.after, self.page).await?;
            match page.entries.last() {
                Some(last) => {
                    self.after = last.position;
                    self.buffer.extend(page.entries);
                    self.idle = Duration::from_millis(1);
                }
                None => {
                    tokio::time::sleep(self.idle).await;
                    self.idle = (self.idle * 2).min(self.poll);
                }
            }
        }
    }

    async fn ack(&mut self, _position: u64) -> Result<(), DurableError> {
        // The position lives with the reader (a projection's read model), not here.
        Ok(())
    }

    async fn rewind(&mut self, from: Option<u64>) -> Result<(), DurableError> {
        self.after = from.map_or(0, |p| p.saturating_sub(1));
        self.buffer.clear();
        Ok(())
    }

    async fn caught_up(&mut self) -> Result<bool, DurableError> {
        if !self.buffer.is_empty() {
            return Ok(false);
        }
        let head = self.store.read_log(u64::MAX, 0).await?.head;
        Ok(head <= self.after)
    }
}
