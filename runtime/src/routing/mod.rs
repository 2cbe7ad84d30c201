//! Routing: which shard an actor is in, and who serves that shard.
//!
//! Every actor belongs to one of `S` shards of its namespace ([`shard_of`]); the shard, not the
//! actor, is the unit of placement. The actor layer asks one question of this module — *does
//! this node serve this shard now?* (`Placement::is_local`, in `placement.rs`) — and delivers
//! locally when it does. On a single node every shard is local; the cluster supplies a
//! placement that follows the shards its handoff serves, and remote delivery over NATS (`remote.rs`)
//! moves commands whose shard lives elsewhere: on the actor's own subject, where whoever serves
//! the shard answers, or, for the first attempt of many asks at once, in one message to the
//! node the map names (`request_batch.rs`); answers come back to one inbox per connection
//! (`reply_inbox.rs`). Only [`shard_of`] is public: the rest is the runtime's own plumbing.

mod placement;
pub(crate) mod remote;
mod reply_inbox;
mod request_batch;
mod shard;

pub(crate) use placement::{LocalPlacement, Placement};
pub(crate) use remote::{Answer, Dispatch, Inbound, Pending, ShardDrain};
pub(crate) use request_batch::node_subject;

/// The batch frames, for the list of decoders (`crate::decoders`).
#[cfg_attr(not(feature = "test-util"), allow(dead_code))]
pub(crate) mod batches {
    pub(crate) use super::reply_inbox::{
        decode_batch as decode_answers, push_batch_item as push_answer,
        start_batch as start_answers,
    };
    pub(crate) use super::request_batch::{
        decode as decode_requests, push as push_request, start as start_requests,
    };
}
test_util! {
    pub use remote::OwnedShards;
}
test_util! {
    /// The sending side of remote asks, for tests of its retries and batches.
    pub use remote::{Route, SendError, Transport};
}
pub use shard::shard_of;
