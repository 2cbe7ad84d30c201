//! The wire: how commits, events and ids are encoded, in storage and (later) between nodes.
//!
//! Everything that leaves a process is MessagePack with field names (`rmp_serde::to_vec_named`): one
//! [`CommitRecord`] per command, holding its events as [`EventData`] (type name + payload), the
//! [`CommandId`] that makes retries idempotent, and the reply given to the command. This module
//! is a leaf: it depends on the [name types](crate::names) and nothing else of the runtime.

test_util! {
    pub mod codec;
}
mod command_id;
mod envelope;
mod event_type;
pub(crate) mod record_codec;
mod remote;
mod trace;

pub use codec::CodecError;
pub use command_id::CommandId;
pub(crate) use envelope::{
    BASE_COMMIT_FORMAT, SYSTEM_EVENT_PREFIX, WORKFLOW_COMMIT_FORMAT, now_ms,
};
pub use envelope::{COMMIT_FORMAT, CommitRecord, Delivery, EventData, EventEnvelope, OutboxEntry};
pub(crate) use event_type::event_type_name;
pub(crate) use remote::{FRAME_FORMAT, RequestOut, RequestView, Settle};
pub(crate) use trace::{Sampler, SpanId, TraceId, span_id};
pub use trace::{TRACEPARENT_HEADER, TraceParent};
test_util! {
    pub use remote::{
        BASE_FRAME_FORMAT, Control, EffectOrigin, RemoteReply, RemoteRequest,
    };
}
