//! The frames of remote delivery: a command sent to a shard's owner, and its answer.
//!
//! Both are MessagePack maps with field names ([`codec`](super::codec)); enums are externally
//! tagged (`{"Ok": {...}}`, `{"Err": {"Timeout": {...}}}`); a failure is the caller's own
//! [`CallError`], so nothing translates it on the way. `docs/wire.md` documents
//! them for clients in other languages.

use serde::{Deserialize, Serialize};

use super::codec::{self, CodecError};
use super::command_id::CommandId;
use crate::errors::CallError;
use crate::names::ActorKey;

/// The newest frame format number; a receiver refuses frames from a newer format.
///
/// | format | adds |
/// |---|---|
/// | 1 | asks and tells |
/// | 2 | durable effects (`effect`) and deadlock detection (`control`); only frames that carry one of them are format 2, so a node that predates them refuses them (a `Codec` error) instead of running an effect as a plain ask |
pub const FRAME_FORMAT: u16 = 2;

/// The format of a frame without durable-effect or deadlock-detection fields (what raw clients
/// send).
pub const BASE_FRAME_FORMAT: u16 = 1;

/// A command for one actor, sent on `aether.<ns>.shard.<n>.<kind>.<encoded-id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteRequest {
    /// [`BASE_FRAME_FORMAT`], or [`FRAME_FORMAT`] when `effect` or `control` is set.
    pub format: u16,
    /// The namespace (must match the receiver's).
    pub namespace: String,
    /// The actor kind.
    pub kind: String,
    /// The actor id, not encoded.
    pub id: String,
    /// The command id (idempotency key); retries reuse it.
    pub command_id: CommandId,
    /// The root of the call chain.
    pub correlation_id: CommandId,
    /// The command whose handler sent this one, if any.
    pub causation_id: Option<CommandId>,
    /// Milliseconds the sender still waits; the receiver's deadline is its receipt time plus
    /// this (so clocks need not agree).
    pub timeout_ms: u64,
    /// Actors waiting on this command, outermost first (cycle detection across nodes).
    #[serde(default)]
    pub chain: Vec<ActorKey>,
    /// `true` for an ask (an answer is expected), `false` for a tell.
    pub expects_reply: bool,
    /// The command, encoded with the codec.
    #[serde(with = "serde_bytes")]
    pub command: Vec<u8>,
    /// Set when the command is a durable effect: who sent it and which outbox entry it is. The
    /// answer is then [`RemoteReply::Ok`] holding an encoded [`Settle`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<EffectOrigin>,
    /// Set on deadlock-detection frames (no command): see [`Control`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<Control>,
    /// The sender's sampling decision for the workflow (whether its calls get spans). A traced
    /// call also carries a W3C `traceparent` header; an untraced one carries only this flag,
    /// which costs the sender, the server and the receiver far less than a header. `None`
    /// (raw clients, older nodes): the receiver decides from the header, or else with its own
    /// sampling rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traced: Option<bool>,
}

/// Where a durable effect comes from, as it travels to its receiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectOrigin {
    /// The sending actor.
    pub from: ActorKey,
    /// The entry's position in the sender's outbox.
    pub seq: u64,
    /// The sender's compensation command, delivered back to it if the receiver rejects.
    #[serde(with = "serde_bytes", default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<Vec<u8>>,
}

/// How a receiver settled a durable effect. Every variant but `Failed` means the sender may
/// forget the effect: the receiver has durably recorded its outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Settle {
    /// Applied now.
    Applied,
    /// Rejected by the receiver's handler; the rejection (and the compensation, if any) is
    /// stored in the receiver's history.
    Rejected {
        /// The rejection, as text.
        reason: String,
    },
    /// Applied before (a redelivery): nothing done.
    Duplicate,
    /// Not settled (unavailable, panicked, moving): the sender delivers it again later.
    Failed {
        /// Why.
        reason: String,
    },
}

/// Deadlock detection between turns (edge chasing): frames that travel along the wait-for graph.
///
/// When an ask from actor W has waited in the queue of actor X while X's turn waits on other
/// actors, X sends a `Probe` to each actor its turn waits on. An actor whose turn is waiting
/// forwards the probe to the actors it waits on; when the probe reaches W while W's turn is
/// still the one that asked X, every actor on the path waits on the next one and W waits on X:
/// a cycle. W answers X with a `Break`, and X refuses the queued ask with `Deadlock`, before it
/// ever ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// Looking for `seek`, along wait-for edges.
    Probe {
        /// The actor holding the blocked ask in its queue.
        origin: ActorKey,
        /// The command id of `origin`'s running turn.
        origin_turn: CommandId,
        /// The command id of the blocked ask.
        blocked: CommandId,
        /// The actor waiting on the blocked ask.
        seek: ActorKey,
        /// The command id of `seek`'s turn that asked.
        seek_turn: CommandId,
        /// The actors the probe went through, `origin` first.
        path: Vec<ActorKey>,
    },
    /// A cycle was found: refuse the blocked ask.
    Break {
        /// The command id of the holder's running turn when it probed.
        origin_turn: CommandId,
        /// The blocked ask to refuse.
        blocked: CommandId,
        /// The cycle, for the error message.
        cycle: String,
    },
}

/// The answer to a [`RemoteRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoteReply {
    /// The actor's reply, encoded with the codec.
    Ok {
        /// The encoded reply.
        #[serde(with = "serde_bytes")]
        reply: Vec<u8>,
    },
    /// The actor rejected the command; its own error, encoded with the codec. Nothing stored.
    Rejected {
        /// The encoded error.
        #[serde(with = "serde_bytes")]
        error: Vec<u8>,
    },
    /// The call failed on the receiving node: the caller's [`CallError`], as is.
    Err(CallError),
    /// The receiver does not own the shard (any more): the sender retries with the same
    /// command id. Never reaches a caller.
    NotOwner {
        /// The shard.
        shard: u32,
    },
}

impl RemoteRequest {
    /// Encodes the frame.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        RequestOut {
            format: self.format,
            namespace: &self.namespace,
            kind: &self.kind,
            id: &self.id,
            command_id: self.command_id,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            timeout_ms: self.timeout_ms,
            chain: &self.chain,
            expects_reply: self.expects_reply,
            command: &self.command,
            effect: self.effect.as_ref(),
            control: self.control.as_ref(),
            traced: self.traced,
        }
        .encode()
    }

    /// Decodes a frame and checks its format.
    pub fn decode(bytes: &[u8]) -> Result<RemoteRequest, CodecError> {
        RequestView::decode(bytes).map(RequestView::into_owned)
    }
}

/// A [`RemoteRequest`] to encode, borrowing its strings and command: a node's sending path
/// (no copies into owned fields first). [`RemoteRequest::encode`] goes through it, so the two
/// cannot differ.
#[derive(Serialize)]
pub(crate) struct RequestOut<'a> {
    pub format: u16,
    pub namespace: &'a str,
    pub kind: &'a str,
    pub id: &'a str,
    pub command_id: CommandId,
    pub correlation_id: CommandId,
    pub causation_id: Option<CommandId>,
    pub timeout_ms: u64,
    pub chain: &'a [ActorKey],
    pub expects_reply: bool,
    #[serde(with = "serde_bytes")]
    pub command: &'a [u8],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effect: Option<&'a EffectOrigin>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control: Option<&'a Control>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traced: Option<bool>,
}

impl RequestOut<'_> {
    /// Encodes the frame into a buffer sized for it up front.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        // The field names and fixed-size values take about 160 bytes.
        let mut out = Vec::with_capacity(
            192 + self.namespace.len() + self.kind.len() + self.id.len() + self.command.len(),
        );
        codec::encode_into("request frame", &mut out, self)?;
        Ok(out)
    }
}

/// A received [`RemoteRequest`], borrowing its strings and command from the frame's bytes: a
/// node's receiving path (no copies of what it only compares or decodes further).
/// [`RemoteRequest::decode`] goes through it, so the two cannot differ.
#[derive(Deserialize)]
pub(crate) struct RequestView<'a> {
    pub format: u16,
    #[serde(borrow)]
    pub namespace: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub kind: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub id: std::borrow::Cow<'a, str>,
    pub command_id: CommandId,
    pub correlation_id: CommandId,
    pub causation_id: Option<CommandId>,
    pub timeout_ms: u64,
    #[serde(default)]
    pub chain: Vec<ActorKey>,
    pub expects_reply: bool,
    #[serde(borrow, with = "serde_bytes")]
    pub command: std::borrow::Cow<'a, [u8]>,
    #[serde(default)]
    pub effect: Option<EffectOrigin>,
    #[serde(default)]
    pub control: Option<Control>,
    #[serde(default)]
    pub traced: Option<bool>,
}

impl<'a> RequestView<'a> {
    /// Decodes a frame and checks its format.
    pub fn decode(bytes: &'a [u8]) -> Result<RequestView<'a>, CodecError> {
        let request: RequestView<'a> = rmp_serde::from_slice(bytes).map_err(|e| CodecError {
            what: "request frame",
            reason: format!("cannot decode: {e}"),
        })?;
        if request.format > FRAME_FORMAT {
            return Err(CodecError {
                what: "request frame",
                reason: format!(
                    "format {} is newer than this node ({FRAME_FORMAT})",
                    request.format
                ),
            });
        }
        Ok(request)
    }

    /// The frame with owned fields.
    pub fn into_owned(self) -> RemoteRequest {
        RemoteRequest {
            format: self.format,
            namespace: self.namespace.into_owned(),
            kind: self.kind.into_owned(),
            id: self.id.into_owned(),
            command_id: self.command_id,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            timeout_ms: self.timeout_ms,
            chain: self.chain,
            expects_reply: self.expects_reply,
            command: self.command.into_owned(),
            effect: self.effect,
            control: self.control,
            traced: self.traced,
        }
    }
}

impl RemoteReply {
    /// Encodes the answer.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode("reply frame", self).unwrap_or_else(|e| {
            // A reply of owned bytes and strings always encodes; keep a valid frame regardless.
            let fallback = RemoteReply::Err(e.into());
            rmp_serde::to_vec_named(&fallback).unwrap_or_default()
        })
    }

    /// Decodes an answer.
    pub fn decode(bytes: &[u8]) -> Result<RemoteReply, CodecError> {
        codec::decode("reply frame", bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_with_field_names() {
        let request = RemoteRequest {
            format: FRAME_FORMAT,
            namespace: "bank".into(),
            kind: "account".into(),
            id: "alice".into(),
            command_id: CommandId::from_u128(7),
            correlation_id: CommandId::from_u128(7),
            causation_id: None,
            timeout_ms: 5000,
            chain: Vec::new(),
            expects_reply: true,
            command: vec![1, 2, 3],
            effect: None,
            control: None,
            traced: None,
        };
        let bytes = request.encode().unwrap();
        assert!(bytes.windows(9).any(|w| w == b"namespace"), "named fields");
        assert_eq!(RemoteRequest::decode(&bytes).unwrap(), request);
        let reply = RemoteReply::NotOwner { shard: 3 };
        assert_eq!(RemoteReply::decode(&reply.encode()).unwrap(), reply);
        assert!(RemoteRequest::decode(b"\x01\x02").is_err());
    }

    fn key(id: &str) -> ActorKey {
        use crate::names::{ActorId, Kind, Namespace};
        ActorKey::new(
            Namespace::new("bank").unwrap(),
            Kind::new("account").unwrap(),
            ActorId::new(id).unwrap(),
        )
    }

    /// The borrowed views a node sends and reads with agree with the serde derives of the
    /// public frame (what a raw Rust client would use), both ways, with every optional field
    /// present or absent, and in positional form too.
    #[test]
    fn the_borrowed_views_agree_with_the_public_frame() {
        let full = RemoteRequest {
            format: FRAME_FORMAT,
            namespace: "bank".into(),
            kind: "account".into(),
            id: "alice/1".into(),
            command_id: CommandId::from_u128(7),
            correlation_id: CommandId::from_u128(8),
            causation_id: Some(CommandId::from_u128(9)),
            timeout_ms: 5000,
            chain: vec![key("bob")],
            expects_reply: true,
            command: vec![1, 2, 3],
            effect: Some(EffectOrigin {
                from: key("carol"),
                seq: 4,
                compensation: Some(vec![5]),
            }),
            control: Some(Control::Break {
                origin_turn: CommandId::from_u128(10),
                blocked: CommandId::from_u128(11),
                cycle: "a -> b -> a".into(),
            }),
            traced: Some(false),
        };
        let bare = RemoteRequest {
            causation_id: None,
            chain: Vec::new(),
            effect: None,
            control: None,
            traced: None,
            ..full.clone()
        };
        for request in [full, bare] {
            let derived = rmp_serde::to_vec_named(&request).unwrap();
            assert_eq!(request.encode().unwrap(), derived, "the same bytes");
            assert_eq!(RemoteRequest::decode(&derived).unwrap(), request);
            let positional = rmp_serde::to_vec(&request).unwrap();
            assert_eq!(RemoteRequest::decode(&positional).unwrap(), request);
            let view = RequestView::decode(&derived).unwrap();
            assert!(
                matches!(view.command, std::borrow::Cow::Borrowed(_)),
                "the command is borrowed from the frame"
            );
            assert!(matches!(view.id, std::borrow::Cow::Borrowed(_)));
        }
    }
}
