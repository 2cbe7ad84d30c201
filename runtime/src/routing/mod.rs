//! Routing: which shard an actor is in, and who serves that shard.
//!
//! Every actor belongs to one of `S` shards of its namespace ([`shard_of`]); the shard, not the
//! actor, is the unit of placement. The actor layer asks one question of this module — *does
//! this node serve this shard now?* (`Placement::is_local`, in `placement.rs`) — and delivers
//! locally when it does. On a single node every shard is local; the cluster supplies a
//! placement that follows the shards its handoff serves, and remote delivery over NATS (`remote.rs`)
//! moves commands whose shard lives elsewhere. Only [`shard_of`] is public: the rest is the
//! runtime's own plumbing.

mod placement;
pub(crate) mod remote;
mod reply_inbox;
mod shard;

pub(crate) use placement::{ClientPlacement, LocalPlacement, Placement};
pub(crate) use remote::{Answer, Dispatch, Inbound, Pending, SendError, ShardDrain, Transport};
test_util! {
    pub use remote::OwnedShards;
}
pub use shard::shard_of;
