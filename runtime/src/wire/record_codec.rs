//! The commit record's own MessagePack codec: the hot path of every append and every replay.
//!
//! A [`CommitRecord`] is stored as named MessagePack (see [`codec`](super::codec)): a map from
//! field name to value. `rmp_serde` reads that map through serde's generic machinery — a field
//! name is matched, every string allocated, every name validated — and spends about 0.6 µs on a
//! one-event record, most of a replay's time per event. This module writes and reads the same
//! bytes directly:
//!
//! - [`encode`] writes exactly the bytes `rmp_serde::to_vec_named` writes (smallest integer
//!   forms, `bin` for byte fields, fields in declaration order, the optional workflow fields
//!   only when present). The tests compare the two byte for byte on random records, so a
//!   record written here is read by any older node as before. It writes from a
//!   [`RecordRef`], the record's fields borrowed: an append encodes its commit without building
//!   a [`CommitRecord`], so it never clones the actor's key. (A key is three shared strings;
//!   cloning one per command cost the 64-actor persisted path a quarter of its throughput in
//!   reference-count traffic between the worker threads.)
//! - [`decode`] reads the common shape — the base fields and events, as this runtime and every
//!   earlier one writes them — straight from the buffer. A stream's reader passes the actor it
//!   expects: when the stored key matches, its names are not decoded or validated again, the
//!   expected key is shared instead. Anything else (the workflow fields, positional encoding,
//!   an unknown or repeated field, an unusual integer or string form, damage) is handed to
//!   `rmp_serde`, so the result and every error message are serde's, byte for byte. The tests
//!   check that on random records and on random damage.

use super::codec::{self, CodecError};
use super::command_id::CommandId;
use super::envelope::{CommitRecord, Delivery, EventData, OutboxEntry};
use crate::names::{ActorId, ActorKey, Kind, Namespace};

const WHAT: &str = "commit record";

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

/// A commit record's fields, borrowed: what [`encode`] writes. A commit on its way into a
/// store is encoded from its parts, with the actor's key borrowed from the caller, so an
/// append builds no [`CommitRecord`] (and touches none of the key's shared counters).
pub(crate) struct RecordRef<'a> {
    pub(crate) format: u16,
    pub(crate) actor: &'a ActorKey,
    pub(crate) first_version: u64,
    pub(crate) command_id: CommandId,
    pub(crate) correlation_id: CommandId,
    pub(crate) causation_id: Option<CommandId>,
    pub(crate) timestamp_ms: u64,
    pub(crate) events: &'a [EventData],
    pub(crate) reply: Option<&'a [u8]>,
    pub(crate) outbox: &'a [OutboxEntry],
    pub(crate) settled: &'a [u64],
    pub(crate) delivery: Option<&'a Delivery>,
}

impl<'a> From<&'a CommitRecord> for RecordRef<'a> {
    fn from(record: &'a CommitRecord) -> Self {
        RecordRef {
            format: record.format,
            actor: &record.actor,
            first_version: record.first_version,
            command_id: record.command_id,
            correlation_id: record.correlation_id,
            causation_id: record.causation_id,
            timestamp_ms: record.timestamp_ms,
            events: &record.events,
            reply: record.reply.as_deref(),
            outbox: &record.outbox,
            settled: &record.settled,
            delivery: record.delivery.as_ref(),
        }
    }
}

/// Encodes `record` as `rmp_serde::to_vec_named` would encode the [`CommitRecord`] with the
/// same fields, byte for byte.
pub(crate) fn encode(record: &RecordRef<'_>) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(estimate(record));
    let optional = usize::from(!record.outbox.is_empty())
        + usize::from(!record.settled.is_empty())
        + usize::from(record.delivery.is_some());
    map_len(&mut out, 9 + optional);
    key(&mut out, "format");
    uint(&mut out, u64::from(record.format));
    key(&mut out, "actor");
    map_len(&mut out, 3);
    key(&mut out, "namespace");
    str(&mut out, record.actor.namespace.as_str())?;
    key(&mut out, "kind");
    str(&mut out, record.actor.kind.as_str())?;
    key(&mut out, "id");
    str(&mut out, record.actor.id.as_str())?;
    key(&mut out, "first_version");
    uint(&mut out, record.first_version);
    key(&mut out, "command_id");
    command_id(&mut out, record.command_id);
    key(&mut out, "correlation_id");
    command_id(&mut out, record.correlation_id);
    key(&mut out, "causation_id");
    match record.causation_id {
        Some(id) => command_id(&mut out, id),
        None => out.push(NIL),
    }
    key(&mut out, "timestamp_ms");
    uint(&mut out, record.timestamp_ms);
    key(&mut out, "events");
    array_len(&mut out, record.events.len())?;
    for event in record.events {
        map_len(&mut out, if event.schema_version == 0 { 2 } else { 3 });
        key(&mut out, "event_type");
        str(&mut out, &event.event_type)?;
        key(&mut out, "payload");
        bin(&mut out, &event.payload)?;
        if event.schema_version != 0 {
            key(&mut out, "schema_version");
            uint(&mut out, u64::from(event.schema_version));
        }
    }
    key(&mut out, "reply");
    match record.reply {
        Some(reply) => bin(&mut out, reply)?,
        None => out.push(NIL),
    }
    // The workflow fields are rare and nested: serde writes them, into the same buffer.
    let nested = |out: &mut Vec<u8>, value: &dyn erased::Value| value.write_named(out);
    if !record.outbox.is_empty() {
        key(&mut out, "outbox");
        nested(&mut out, &record.outbox)?;
    }
    if !record.settled.is_empty() {
        key(&mut out, "settled");
        nested(&mut out, &record.settled)?;
    }
    if let Some(delivery) = record.delivery {
        key(&mut out, "delivery");
        nested(&mut out, delivery)?;
    }
    Ok(out)
}

/// The encoded size, give or take the headers: one allocation for the whole record.
fn estimate(record: &RecordRef<'_>) -> usize {
    let names = record.actor.namespace.as_str().len()
        + record.actor.kind.as_str().len()
        + record.actor.id.as_str().len();
    let events: usize = record
        .events
        .iter()
        .map(|e| 40 + e.event_type.len() + e.payload.len())
        .sum();
    192 + names + events + record.reply.map_or(0, <[u8]>::len)
}

/// Serde for the nested workflow fields, behind one object-safe method.
mod erased {
    use super::{CodecError, WHAT};

    pub(super) trait Value {
        fn write_named(&self, out: &mut Vec<u8>) -> Result<(), CodecError>;
    }

    impl<T: serde::Serialize> Value for T {
        fn write_named(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
            rmp_serde::encode::write_named(out, self).map_err(|e| CodecError {
                what: WHAT,
                reason: format!("cannot encode: {e}"),
            })
        }
    }
}

const NIL: u8 = 0xc0;

fn too_long(what: &str, len: usize) -> CodecError {
    CodecError {
        what: WHAT,
        reason: format!("cannot encode: a {what} of {len} bytes is longer than MessagePack allows"),
    }
}

fn uint(out: &mut Vec<u8>, v: u64) {
    if v < 128 {
        out.push(v as u8);
    } else if let Ok(v) = u8::try_from(v) {
        out.extend_from_slice(&[0xcc, v]);
    } else if let Ok(v) = u16::try_from(v) {
        out.push(0xcd);
        out.extend_from_slice(&v.to_be_bytes());
    } else if let Ok(v) = u32::try_from(v) {
        out.push(0xce);
        out.extend_from_slice(&v.to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// A field name: always short ASCII, a fixstr.
fn key(out: &mut Vec<u8>, name: &'static str) {
    debug_assert!(name.len() < 32);
    out.push(0xa0 | name.len() as u8);
    out.extend_from_slice(name.as_bytes());
}

fn str(out: &mut Vec<u8>, s: &str) -> Result<(), CodecError> {
    let len = s.len();
    if len < 32 {
        out.push(0xa0 | len as u8);
    } else if let Ok(n) = u8::try_from(len) {
        out.extend_from_slice(&[0xd9, n]);
    } else if let Ok(n) = u16::try_from(len) {
        out.push(0xda);
        out.extend_from_slice(&n.to_be_bytes());
    } else if let Ok(n) = u32::try_from(len) {
        out.push(0xdb);
        out.extend_from_slice(&n.to_be_bytes());
    } else {
        return Err(too_long("string", len));
    }
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn bin(out: &mut Vec<u8>, b: &[u8]) -> Result<(), CodecError> {
    let len = b.len();
    if let Ok(n) = u8::try_from(len) {
        out.extend_from_slice(&[0xc4, n]);
    } else if let Ok(n) = u16::try_from(len) {
        out.push(0xc5);
        out.extend_from_slice(&n.to_be_bytes());
    } else if let Ok(n) = u32::try_from(len) {
        out.push(0xc6);
        out.extend_from_slice(&n.to_be_bytes());
    } else {
        return Err(too_long("byte string", len));
    }
    out.extend_from_slice(b);
    Ok(())
}

/// A command id as serde writes a UUID to a binary format: 16 raw bytes.
fn command_id(out: &mut Vec<u8>, id: CommandId) {
    out.extend_from_slice(&[0xc4, 16]);
    out.extend_from_slice(&id.as_u128().to_be_bytes());
}

fn map_len(out: &mut Vec<u8>, len: usize) {
    // Only the record's own maps come here: at most 12 fields.
    debug_assert!(len < 16);
    out.push(0x80 | len as u8);
}

fn array_len(out: &mut Vec<u8>, len: usize) -> Result<(), CodecError> {
    if len < 16 {
        out.push(0x90 | len as u8);
    } else if let Ok(n) = u16::try_from(len) {
        out.push(0xdc);
        out.extend_from_slice(&n.to_be_bytes());
    } else if let Ok(n) = u32::try_from(len) {
        out.push(0xdd);
        out.extend_from_slice(&n.to_be_bytes());
    } else {
        return Err(too_long("list of events", len));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

/// Decodes a commit record into `out`, reusing its buffers (without the shape checks of
/// [`CommitRecord::decode`]). On an error, `out` holds a mix of old and new fields.
///
/// `expected`: the actor whose stream the bytes come from, if known. A record of that actor
/// shares its key; a record of another actor is decoded in full, so the caller can say whose
/// it is.
pub(crate) fn decode_into(
    bytes: &[u8],
    expected: Option<&ActorKey>,
    out: &mut CommitRecord,
) -> Result<(), CodecError> {
    if fast(bytes, expected, out).is_none() {
        *out = codec::decode(WHAT, bytes)?;
    }
    Ok(())
}

/// [`decode_into`] a new record.
pub(crate) fn decode(
    bytes: &[u8],
    expected: Option<&ActorKey>,
) -> Result<CommitRecord, CodecError> {
    let mut out = blank(expected.map_or_else(ActorKey::placeholder, ActorKey::clone));
    decode_into(bytes, expected, &mut out)?;
    Ok(out)
}

/// A record to decode into: every field is overwritten by [`decode_into`].
pub(crate) fn blank(actor: ActorKey) -> CommitRecord {
    CommitRecord {
        format: 0,
        actor,
        first_version: 0,
        command_id: CommandId::from_u128(0),
        correlation_id: CommandId::from_u128(0),
        causation_id: None,
        timestamp_ms: 0,
        events: Vec::new(),
        reply: None,
        outbox: Vec::new(),
        settled: Vec::new(),
        delivery: None,
    }
}

/// The common shape, read in place into `out`; `None` hands the bytes to serde.
fn fast(bytes: &[u8], expected: Option<&ActorKey>, out: &mut CommitRecord) -> Option<()> {
    const FORMAT: u16 = 1;
    const ACTOR: u16 = 1 << 1;
    const FIRST_VERSION: u16 = 1 << 2;
    const COMMAND_ID: u16 = 1 << 3;
    const CORRELATION_ID: u16 = 1 << 4;
    const CAUSATION_ID: u16 = 1 << 5;
    const TIMESTAMP_MS: u16 = 1 << 6;
    const EVENTS: u16 = 1 << 7;
    const REPLY: u16 = 1 << 8;
    const REQUIRED: u16 = REPLY - 1;

    let mut r = Reader { buf: bytes };
    let fields = r.map_len()?;
    let mut seen = 0u16;
    for _ in 0..fields {
        let field = match r.str_bytes()? {
            b"format" => {
                out.format = u16::try_from(r.uint()?).ok()?;
                FORMAT
            }
            b"actor" => {
                r.actor(expected, &mut out.actor)?;
                ACTOR
            }
            b"first_version" => {
                out.first_version = r.uint()?;
                FIRST_VERSION
            }
            b"command_id" => {
                out.command_id = r.command_id()?;
                COMMAND_ID
            }
            b"correlation_id" => {
                out.correlation_id = r.command_id()?;
                CORRELATION_ID
            }
            b"causation_id" => {
                out.causation_id = if r.nil() { None } else { Some(r.command_id()?) };
                CAUSATION_ID
            }
            b"timestamp_ms" => {
                out.timestamp_ms = r.uint()?;
                TIMESTAMP_MS
            }
            b"events" => {
                r.events(&mut out.events)?;
                EVENTS
            }
            b"reply" => {
                if r.nil() {
                    out.reply = None;
                } else {
                    let reply = r.bin()?;
                    let kept = out.reply.get_or_insert_with(Vec::new);
                    kept.clear();
                    kept.extend_from_slice(reply);
                }
                REPLY
            }
            // The workflow fields, a field from a newer writer: serde's job.
            _ => return None,
        };
        // A repeated field is an error for serde: let it say so.
        if seen & field != 0 {
            return None;
        }
        seen |= field;
    }
    if !r.buf.is_empty() || seen & REQUIRED != REQUIRED {
        return None;
    }
    if seen & REPLY == 0 {
        // Absent: serde's default.
        out.reply = None;
    }
    out.outbox.clear();
    out.settled.clear();
    out.delivery = None;
    Some(())
}

/// A cursor over MessagePack, taking only the forms serde reads the same way.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.buf.split_first()?;
        self.buf = rest;
        Some(b)
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }

    fn be<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn nil(&mut self) -> bool {
        if self.buf.first() == Some(&NIL) {
            self.buf = &self.buf[1..];
            true
        } else {
            false
        }
    }

    /// An unsigned integer in any of its unsigned forms.
    fn uint(&mut self) -> Option<u64> {
        match self.byte()? {
            b @ 0x00..=0x7f => Some(u64::from(b)),
            0xcc => Some(u64::from(self.byte()?)),
            0xcd => Some(u64::from(u16::from_be_bytes(self.be()?))),
            0xce => Some(u64::from(u32::from_be_bytes(self.be()?))),
            0xcf => Some(u64::from_be_bytes(self.be()?)),
            _ => None,
        }
    }

    fn map_len(&mut self) -> Option<usize> {
        match self.byte()? {
            b @ 0x80..=0x8f => Some(usize::from(b & 0x0f)),
            0xde => Some(usize::from(u16::from_be_bytes(self.be()?))),
            0xdf => usize::try_from(u32::from_be_bytes(self.be()?)).ok(),
            _ => None,
        }
    }

    fn array_len(&mut self) -> Option<usize> {
        match self.byte()? {
            b @ 0x90..=0x9f => Some(usize::from(b & 0x0f)),
            0xdc => Some(usize::from(u16::from_be_bytes(self.be()?))),
            0xdd => usize::try_from(u32::from_be_bytes(self.be()?)).ok(),
            _ => None,
        }
    }

    /// The bytes of a string in a `str` form, not checked for UTF-8: for comparing with field
    /// names and known-good text, which are.
    fn str_bytes(&mut self) -> Option<&'a [u8]> {
        let len = match self.byte()? {
            b @ 0xa0..=0xbf => usize::from(b & 0x1f),
            0xd9 => usize::from(self.byte()?),
            0xda => usize::from(u16::from_be_bytes(self.be()?)),
            0xdb => usize::try_from(u32::from_be_bytes(self.be()?)).ok()?,
            _ => return None,
        };
        self.take(len)
    }

    /// A string in a `str` form, valid UTF-8.
    fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.str_bytes()?).ok()
    }

    /// Bytes in a `bin` form.
    fn bin(&mut self) -> Option<&'a [u8]> {
        let len = match self.byte()? {
            0xc4 => usize::from(self.byte()?),
            0xc5 => usize::from(u16::from_be_bytes(self.be()?)),
            0xc6 => usize::try_from(u32::from_be_bytes(self.be()?)).ok()?,
            _ => return None,
        };
        self.take(len)
    }

    fn command_id(&mut self) -> Option<CommandId> {
        let bytes: [u8; 16] = self.bin()?.try_into().ok()?;
        Some(CommandId::from_u128(u128::from_be_bytes(bytes)))
    }

    /// The actor key map, into `out`: the expected key when the names match it (shared, and
    /// kept as it is when `out` already is that key), else validated names.
    fn actor(&mut self, expected: Option<&ActorKey>, out: &mut ActorKey) -> Option<()> {
        if self.map_len()? != 3 || self.str_bytes()? != b"namespace" {
            return None;
        }
        let namespace = self.str_bytes()?;
        if self.str_bytes()? != b"kind" {
            return None;
        }
        let kind = self.str_bytes()?;
        if self.str_bytes()? != b"id" {
            return None;
        }
        let id = self.str_bytes()?;
        let is = |key: &ActorKey| {
            key.namespace.as_str().as_bytes() == namespace
                && key.kind.as_str().as_bytes() == kind
                && key.id.as_str().as_bytes() == id
        };
        match expected {
            // Equal to valid names: valid UTF-8 and valid names, nothing to check.
            Some(key) if is(key) => {
                if !is(out) {
                    *out = key.clone();
                }
            }
            _ => {
                let text = |b| std::str::from_utf8(b).ok();
                *out = ActorKey::new(
                    Namespace::new(text(namespace)?).ok()?,
                    Kind::new(text(kind)?).ok()?,
                    ActorId::new(text(id)?).ok()?,
                );
            }
        }
        Some(())
    }

    /// The events, into `out`, reusing its events' buffers.
    fn events(&mut self, out: &mut Vec<EventData>) -> Option<()> {
        let n = self.array_len()?;
        // Each event takes at least a few bytes: a bogus length cannot reserve much.
        // Exactly: a commit mostly holds one event, and `reserve` would round up to four.
        out.reserve_exact(n.min(self.buf.len() / 4).saturating_sub(out.len()));
        for i in 0..n {
            let fields = self.map_len()?;
            let (mut event_type, mut payload, mut schema_version) = (None, None, None);
            for _ in 0..fields {
                match self.str_bytes()? {
                    b"event_type" if event_type.is_none() => event_type = Some(self.str()?),
                    b"payload" if payload.is_none() => payload = Some(self.bin()?),
                    b"schema_version" if schema_version.is_none() => {
                        schema_version = Some(u32::try_from(self.uint()?).ok()?);
                    }
                    _ => return None,
                }
            }
            let (event_type, payload) = (event_type?, payload?);
            let schema_version = schema_version.unwrap_or(0);
            match out.get_mut(i) {
                Some(event) => {
                    event.event_type.clear();
                    event.event_type.push_str(event_type);
                    event.payload.clear();
                    event.payload.extend_from_slice(payload);
                    event.schema_version = schema_version;
                }
                None => out.push(EventData {
                    event_type: event_type.to_owned(),
                    payload: payload.to_vec(),
                    schema_version,
                }),
            }
        }
        out.truncate(n);
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Delivery, OutboxEntry};
    use proptest::prelude::*;

    fn key_strategy() -> impl Strategy<Value = ActorKey> {
        (
            "[a-z][a-z0-9_-]{0,40}",
            "[a-z][a-z0-9_-]{0,40}",
            "\\PC{1,70}",
        )
            .prop_map(|(n, k, i)| {
                ActorKey::new(
                    Namespace::new(n).expect("namespace"),
                    Kind::new(k).expect("kind"),
                    ActorId::new(i).expect("id"),
                )
            })
    }

    fn id_strategy() -> impl Strategy<Value = CommandId> {
        any::<u128>().prop_map(CommandId::from_u128)
    }

    fn event_strategy() -> impl Strategy<Value = EventData> {
        (
            prop_oneof!["[A-Za-z]{1,12}", "aether\\.[A-Za-z]{1,10}", "\\PC{0,40}"],
            prop::collection::vec(any::<u8>(), 0..400),
            prop_oneof![Just(0u32), any::<u32>()],
        )
            .prop_map(|(event_type, payload, schema_version)| EventData {
                event_type,
                payload,
                schema_version,
            })
    }

    fn entry_strategy() -> impl Strategy<Value = OutboxEntry> {
        (
            any::<u64>(),
            key_strategy(),
            id_strategy(),
            prop::option::of(any::<u64>()),
            prop::option::of("[a-z]{1,8}"),
            prop::option::of(prop::collection::vec(any::<u8>(), 0..20)),
        )
            .prop_map(
                |(seq, target, id, due_ms, reminder, compensation)| OutboxEntry {
                    seq,
                    target,
                    command_id: id,
                    causation_id: id,
                    correlation_id: id,
                    command: vec![0x80],
                    due_ms,
                    reminder,
                    compensation,
                },
            )
    }

    prop_compose! {
        fn record_strategy()(
            format in prop_oneof![Just(1u16), Just(2u16), Just(3u16), any::<u16>()],
            actor in key_strategy(),
            first_version in prop_oneof![1u64..200, any::<u64>()],
            ids in (id_strategy(), id_strategy(), prop::option::of(id_strategy())),
            timestamp_ms in any::<u64>(),
            events in prop_oneof![
                prop::collection::vec(event_strategy(), 1..3),
                prop::collection::vec(event_strategy(), 0..20),
            ],
            reply in prop::option::of(prop::collection::vec(any::<u8>(), 0..300)),
            outbox in prop_oneof![3 => Just(Vec::new()), 1 => prop::collection::vec(entry_strategy(), 1..3)],
            settled in prop_oneof![3 => Just(Vec::new()), 1 => prop::collection::vec(any::<u64>(), 1..4)],
            delivery in prop_oneof![3 => Just(None), 1 => (key_strategy(), any::<u64>()).prop_map(|(from, seq)| Some(Delivery { from, seq }))],
        ) -> CommitRecord {
            CommitRecord {
                format,
                actor,
                first_version,
                command_id: ids.0,
                correlation_id: ids.1,
                causation_id: ids.2,
                timestamp_ms,
                events,
                reply,
                outbox,
                settled,
                delivery,
            }
        }
    }

    fn serde_decode(bytes: &[u8]) -> Result<CommitRecord, CodecError> {
        codec::decode(WHAT, bytes)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// Older nodes read what this codec writes: the bytes are serde's.
        #[test]
        fn encodes_the_bytes_serde_writes(record in record_strategy()) {
            let ours = record.encode().expect("encodes");
            let serde = rmp_serde::to_vec_named(&record).expect("serde encodes");
            prop_assert_eq!(ours, serde);
        }

        /// A commit on its way into a store is written from its parts (the key borrowed) as
        /// the record it becomes would be written, format included.
        #[test]
        fn a_new_commit_encodes_as_its_record(record in record_strategy()) {
            // The oldest format that holds the commit's fields, so older nodes read it.
            let format = if record.events.iter().any(|e| e.schema_version != 0) {
                crate::wire::COMMIT_FORMAT
            } else if !record.outbox.is_empty()
                || !record.settled.is_empty()
                || record.delivery.is_some()
            {
                crate::wire::WORKFLOW_COMMIT_FORMAT
            } else {
                crate::wire::BASE_COMMIT_FORMAT
            };
            let commit = crate::store::NewCommit {
                command_id: record.command_id,
                correlation_id: record.correlation_id,
                causation_id: record.causation_id,
                timestamp_ms: record.timestamp_ms,
                events: record.events,
                reply: record.reply,
                outbox: record.outbox,
                settled: record.settled,
                delivery: record.delivery,
            };
            let expected = record.first_version.saturating_sub(1);
            let direct = commit.encode_for(&record.actor, expected).expect("encodes");
            let built = commit.into_record(&record.actor, expected);
            prop_assert_eq!(built.format, format);
            prop_assert_eq!(&direct, &built.encode().expect("encodes"));
            prop_assert_eq!(direct, rmp_serde::to_vec_named(&built).expect("serde encodes"));
        }

        /// Every record reads back whole, with its stream's key or without one.
        #[test]
        fn decodes_what_was_written(record in record_strategy(), other in key_strategy()) {
            let bytes = record.encode().expect("encodes");
            prop_assert_eq!(&decode(&bytes, None).expect("decodes"), &record);
            prop_assert_eq!(&decode(&bytes, Some(&record.actor)).expect("decodes"), &record);
            // A record read from another stream still names its own actor.
            prop_assert_eq!(&decode(&bytes, Some(&other)).expect("decodes").actor, &record.actor);
        }

        /// A record decoded over another (its buffers reused) is the record, whatever the
        /// other held: more or fewer events, a reply or none, workflow fields or none.
        #[test]
        fn decodes_over_any_previous_record(
            first in record_strategy(),
            second in record_strategy(),
            damaged in any::<bool>(),
        ) {
            let mut scratch = decode(&first.encode().expect("encodes"), None).expect("decodes");
            if damaged {
                // A failed decode leaves a mix of fields: the next one must not care.
                let mut bytes = second.encode().expect("encodes");
                bytes.truncate(bytes.len() / 2);
                prop_assert!(decode_into(&bytes, Some(&first.actor), &mut scratch).is_err());
            }
            let bytes = second.encode().expect("encodes");
            decode_into(&bytes, Some(&first.actor), &mut scratch).expect("decodes");
            prop_assert_eq!(&scratch, &second);
        }

        /// Damage of any kind gives what serde gives: the same record, or the same error.
        #[test]
        fn damage_decodes_as_serde_decodes(
            record in record_strategy(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let mut bytes = record.encode().expect("encodes");
            for (at, value) in flips {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            if truncate {
                bytes.truncate(cut.index(bytes.len()));
            }
            prop_assert_eq!(decode(&bytes, None), serde_decode(&bytes));
            let keyed = decode(&bytes, Some(&record.actor));
            prop_assert_eq!(keyed, serde_decode(&bytes));
        }
    }

    #[test]
    fn the_fast_path_reads_a_plain_record_without_serde() {
        let actor = ActorKey::new(
            Namespace::new("bank").expect("namespace"),
            Kind::new("account").expect("kind"),
            ActorId::new("alice").expect("id"),
        );
        let record = CommitRecord {
            format: 1,
            actor: actor.clone(),
            first_version: 7,
            command_id: CommandId::from_u128(1),
            correlation_id: CommandId::from_u128(2),
            causation_id: None,
            timestamp_ms: 1_790_000_000_000,
            events: vec![EventData {
                event_type: "Deposited".into(),
                payload: vec![0x81, 0xa1, b'n', 0x05],
                schema_version: 0,
            }],
            reply: Some(vec![0x05]),
            outbox: Vec::new(),
            settled: Vec::new(),
            delivery: None,
        };
        let bytes = record.encode().expect("encodes");
        let mut read = blank(ActorKey::placeholder());
        fast(&bytes, Some(&actor), &mut read).expect("the common shape takes the fast path");
        assert_eq!(read, record);
        // The stream's key is shared, not decoded again.
        assert_eq!(read.actor.id.as_str().as_ptr(), actor.id.as_str().as_ptr());
        // A workflow field hands the record to serde.
        let mut settled = record.clone();
        settled.settled = vec![3];
        let bytes = settled.encode().expect("encodes");
        assert!(fast(&bytes, None, &mut blank(ActorKey::placeholder())).is_none());
        assert_eq!(decode(&bytes, None).expect("serde decodes"), settled);
    }
}
