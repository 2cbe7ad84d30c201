//! Envelopes: the stored form of a commit and the per-event view of it.
//!
//! One command's events form one [`CommitRecord`]: stored atomically, all or none, as one value
//! in the embedded store and (later) one JetStream message. Every field is written by name (see
//! [`codec`](super::codec)), so the record can grow fields without breaking old readers.

use serde::{Deserialize, Serialize};

use super::codec::{self, CodecError};
use super::command_id::CommandId;
use crate::names::{ActorKey, Namespace};

/// The format number written into every [`CommitRecord`]. Readers reject records from a newer
/// format with a clear error instead of misreading them.
pub const COMMIT_FORMAT: u16 = 1;

/// One event inside a commit: its type name and its encoded payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventData {
    /// The event's type name (the enum variant name, see [`event_type_name`](super::event_type_name)).
    pub event_type: String,
    /// The event, encoded with the [codec](super::codec).
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
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
}

impl CommitRecord {
    /// Version of the last event in the commit.
    pub fn last_version(&self) -> u64 {
        self.first_version + self.events.len() as u64 - 1
    }

    /// Encodes the record.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        codec::encode("commit record", self)
    }

    /// Decodes a record and checks its shape (known format, at least one event, version ≥ 1).
    pub fn decode(bytes: &[u8]) -> Result<CommitRecord, CodecError> {
        let record: CommitRecord = codec::decode("commit record", bytes)?;
        let invalid = |reason: String| CodecError {
            what: "commit record",
            reason,
        };
        if record.format > COMMIT_FORMAT {
            return Err(invalid(format!(
                "format {} is newer than this reader ({COMMIT_FORMAT})",
                record.format
            )));
        }
        if record.events.is_empty() {
            return Err(invalid("a commit holds no events".into()));
        }
        if record.first_version == 0 {
            return Err(invalid("versions start at 1".into()));
        }
        Ok(record)
    }

    /// The events of this commit as self-contained envelopes.
    pub fn envelopes(&self) -> impl Iterator<Item = EventEnvelope> + '_ {
        self.events
            .iter()
            .enumerate()
            .map(move |(i, e)| EventEnvelope {
                namespace: self.actor.namespace.clone(),
                actor: self.actor.clone(),
                version: self.first_version + i as u64,
                event_type: e.event_type.clone(),
                payload: e.payload.clone(),
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
    /// Commit time, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The command that produced the event.
    pub command_id: CommandId,
    /// The root command of the chain.
    pub correlation_id: CommandId,
    /// The command that caused the command, if any.
    pub causation_id: Option<CommandId>,
}

/// Milliseconds since the Unix epoch, for timestamps.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
