//! Envelopes: the stored form of a commit and the per-event view of it.
//!
//! One command's events form one [`CommitRecord`]: stored atomically, all or none, as one value
//! in the embedded store and (later) one JetStream message. Every field is written by name (see
//! [`codec`](super::codec)), so the record can grow fields without breaking old readers.

use serde::{Deserialize, Serialize};

use super::codec::{self, CodecError};
use super::command_id::CommandId;
use crate::names::{ActorKey, Namespace};

/// The newest format number of a [`CommitRecord`]. Readers reject records from a newer format
/// with a clear error instead of misreading them.
///
/// | format | adds |
/// |---|---|
/// | 1 | the commit: events, ids, reply |
/// | 2 | durable effects: `outbox`, `settled`, `delivery` (written only when one is present, so a commit without them stays format 1 and readable by older nodes) |
/// | 3 | event schema versions: an event's `schema_version` (written only when not 0, so an actor that never declared `event_version` keeps writing formats 1 and 2; a reader that predates versions refuses format 3 instead of misreading a reshaped event) |
pub const COMMIT_FORMAT: u16 = 3;

/// The format of a commit that carries no durable-effect field.
pub const BASE_COMMIT_FORMAT: u16 = 1;

/// The format of a commit with durable-effect fields and no versioned event.
pub(crate) const WORKFLOW_COMMIT_FORMAT: u16 = 2;

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The prefix of the runtime's own bookkeeping events (`aether.Received`, ...). Stored in the
/// actor's stream like any event (they take a version), never passed to `apply`, and left out of
/// [`CommitRecord::envelopes`] (so projections and the bus do not see them).
pub const SYSTEM_EVENT_PREFIX: &str = "aether.";

/// One event inside a commit: its type name and its encoded payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventData {
    /// The event's type name (the enum variant name, or the type name of a struct event).
    pub event_type: String,
    /// The event, MessagePack with field names (`rmp_serde::to_vec_named`).
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// The version of the actor's event schema it was written at (`event_version` on the
    /// derive; 0, and not written, when not declared). Older versions are upcast when read:
    /// see `Behavior::upcast_event`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub schema_version: u32,
}

/// The stored form of one commit: every event of one command, with the metadata shared by all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRecord {
    /// [`COMMIT_FORMAT`] at the time of writing.
    pub format: u16,
    /// The actor whose stream this commit extends.
    pub actor: ActorKey,
    /// Version of the first event; the commit covers `first_version ..= last_version()`.
    pub first_version: u64,
    /// The command that produced these events (the idempotency key).
    pub command_id: CommandId,
    /// The command at the root of the chain of asks this command belongs to.
    pub correlation_id: CommandId,
    /// The command whose handler sent this command, if any.
    pub causation_id: Option<CommandId>,
    /// Wall-clock time of the commit, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The events, in order. Never empty.
    pub events: Vec<EventData>,
    /// The encoded reply given to the command, kept so a retry gets the same answer.
    #[serde(with = "serde_bytes", default)]
    pub reply: Option<Vec<u8>>,
    /// Durable effects this commit adds to the actor's outbox (format 2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbox: Vec<OutboxEntry>,
    /// Outbox entries (by [`OutboxEntry::seq`]) this commit settles: delivered and applied by
    /// their receiver, or reminders cancelled or replaced (format 2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settled: Vec<u64>,
    /// The durable effect this commit applies, when the command was one (format 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
}

/// A durable effect: a command for an actor, stored in the commit of the turn that decided it
/// and delivered once that commit is durable — again and again until its receiver has applied
/// it, exactly once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// Position in the sender's outbox: 1, 2, 3, ... per sending actor, never reused. A
    /// receiver applies the effects of one sender in this order and remembers the highest it
    /// applied, which is how a redelivery is recognised however long ago the first one was.
    pub seq: u64,
    /// The receiver.
    pub target: ActorKey,
    /// The command id the receiver stores with the commit that applies the effect.
    pub command_id: CommandId,
    /// The command id of the sender's commit that stored this effect: the receiver's commit
    /// names it as its causation id, so every effect can be traced to the commit that sent it.
    pub causation_id: CommandId,
    /// The correlation id of the sender's commit (the root of the workflow).
    pub correlation_id: CommandId,
    /// The command, MessagePack with field names (`rmp_serde::to_vec_named`).
    #[serde(with = "serde_bytes")]
    pub command: Vec<u8>,
    /// Deliver no earlier than this (milliseconds since the Unix epoch); `None`: at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_ms: Option<u64>,
    /// The reminder's name, for effects scheduled with a name (cancellable; a newer reminder of
    /// the same name replaces a pending one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reminder: Option<String>,
    /// A command for the *sender*, delivered as a durable effect of the receiver if the
    /// receiver rejects this one (a compensation: refund the debit of a failed credit).
    #[serde(with = "serde_bytes", default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<Vec<u8>>,
}

/// Marks a commit as the application of a durable effect: which sender, which outbox entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The sending actor.
    pub from: ActorKey,
    /// The entry's [`OutboxEntry::seq`] in the sender's outbox.
    pub seq: u64,
}

impl EventData {
    /// Whether this is one of the runtime's bookkeeping events (their type starts with `aether.`).
    pub fn is_system(&self) -> bool {
        self.event_type.starts_with(SYSTEM_EVENT_PREFIX)
    }
}

impl CommitRecord {
    /// Version of the last event in the commit.
    pub fn last_version(&self) -> u64 {
        self.first_version + self.events.len() as u64 - 1
    }

    /// Encodes the record: named MessagePack, the bytes `rmp_serde::to_vec_named` writes.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        super::record_codec::encode(&self.into())
    }

    /// Decodes a record and checks its shape (known format, at least one event, version ≥ 1).
    pub fn decode(bytes: &[u8]) -> Result<CommitRecord, CodecError> {
        let record = super::record_codec::decode(bytes, None)?;
        record.check_shape()?;
        Ok(record)
    }

    /// [`CommitRecord::decode`] into `self`, for a record read from `actor`'s stream: a
    /// record of that actor shares its key instead of decoding and validating the names
    /// again, and `self`'s buffers are reused. On an error, `self` is left a mix of old and
    /// new fields.
    pub(crate) fn decode_over(
        &mut self,
        bytes: &[u8],
        actor: Option<&ActorKey>,
    ) -> Result<(), CodecError> {
        super::record_codec::decode_into(bytes, actor, self)?;
        self.check_shape()
    }

    /// A record for [`CommitRecord::decode_over`] to fill.
    pub(crate) fn blank(actor: ActorKey) -> CommitRecord {
        super::record_codec::blank(actor)
    }

    /// The shape every stored record has: a known format, at least one event, versions from 1
    /// that do not overflow.
    fn check_shape(&self) -> Result<(), CodecError> {
        let invalid = |reason: String| CodecError {
            what: "commit record",
            reason,
        };
        if self.format > COMMIT_FORMAT {
            return Err(invalid(format!(
                "format {} is newer than this reader ({COMMIT_FORMAT})",
                self.format
            )));
        }
        if self.events.is_empty() {
            return Err(invalid("a commit holds no events".into()));
        }
        if self.first_version == 0 {
            return Err(invalid("versions start at 1".into()));
        }
        if self
            .first_version
            .checked_add(self.events.len() as u64 - 1)
            .is_none()
        {
            return Err(invalid(format!(
                "{} events from version {} run past the largest version",
                self.events.len(),
                self.first_version
            )));
        }
        Ok(())
    }

    /// The user events of this commit as self-contained envelopes (the runtime's bookkeeping
    /// events, whose type starts with `aether.`, are left out).
    pub fn envelopes(&self) -> impl Iterator<Item = EventEnvelope> + '_ {
        self.events
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.is_system())
            .map(move |(i, e)| EventEnvelope {
                namespace: self.actor.namespace.clone(),
                actor: self.actor.clone(),
                version: self.first_version + i as u64,
                event_type: e.event_type.clone(),
                payload: e.payload.clone(),
                schema_version: e.schema_version,
                timestamp_ms: self.timestamp_ms,
                command_id: self.command_id,
                correlation_id: self.correlation_id,
                causation_id: self.causation_id,
            })
    }
}

/// One stored event with everything needed to understand it on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventEnvelope {
    /// The namespace (also in `actor`; kept first for routing and filtering).
    pub namespace: Namespace,
    /// The actor that emitted the event.
    pub actor: ActorKey,
    /// The event's version in the actor's stream (1, 2, 3, ... without gaps).
    pub version: u64,
    /// The event's type name.
    pub event_type: String,
    /// The encoded event.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// The version of the event schema it was written at (see [`EventData::schema_version`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub schema_version: u32,
    /// Commit time, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The command that produced the event.
    pub command_id: CommandId,
    /// The root command of the chain.
    pub correlation_id: CommandId,
    /// The command that caused the command, if any.
    pub causation_id: Option<CommandId>,
}

impl EventEnvelope {
    /// The payload decoded as `E` (an actor's event type), as it was written: no upcasting
    /// of an older event version. Fails with a typed error when the bytes are not an `E`.
    /// For an actor's events prefer `BusEvent::decode::<A>()` or `StoredEvent::decode::<A>()`,
    /// which upcast (see `Behavior::upcast_event`).
    pub fn decode<E: serde::de::DeserializeOwned>(&self) -> Result<E, CodecError> {
        codec::decode("event payload", &self.payload)
    }
}

/// Milliseconds since the Unix epoch, for timestamps.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
