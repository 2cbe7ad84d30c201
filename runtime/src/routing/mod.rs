//! Routing: which shard an actor is in, and who serves that shard.
//!
//! Every actor belongs to one of `S` shards of its namespace ([`shard_of`]); the shard, not the
//! actor, is the unit of placement. The actor layer asks one question of this module —
//! [`Placement::owner`] — and delivers locally when the answer is [`Owner::Local`]. On a single
//! node every shard is local ([`LocalPlacement`]); the cluster supplies a placement read from
//! the leader's shard map, and [`remote`] delivery over NATS moves commands whose shard lives
//! elsewhere.

mod placement;
pub mod remote;
mod shard;

pub use placement::{ClientPlacement, LocalPlacement, Owner, Placement};
pub use remote::{Dispatch, Inbound, OwnedShards, SendError, ShardDrain, Transport};
pub use shard::shard_of;
