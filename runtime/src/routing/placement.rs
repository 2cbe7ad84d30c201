//! Placement: whether this node serves a shard.

/// Answers "does this node serve this shard now?". The single seam between routing and the
/// actor layer: a command whose shard is served here is delivered in memory; any other goes to
/// the shard's subject over NATS, where the owner (if any) answers, so the sender needs no
/// owner's name at all.
pub trait Placement: Send + Sync + 'static {
    /// Whether this node serves `shard` now.
    fn is_local(&self, shard: u32) -> bool;

    /// `true` when every shard is always local (lets delivery skip the shard hash).
    fn single_node(&self) -> bool {
        false
    }

    /// The subject for batched requests of the node that should serve `shard`, as far as this
    /// node's map says, when that is another node (see `request_batch.rs`). Only a hint: the
    /// owner checks every request it takes. `None` when there is no such node or no map.
    fn route(&self, _shard: u32) -> Option<async_nats::Subject> {
        None
    }
}

/// The placement of a single node: every shard is local.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalPlacement;

impl Placement for LocalPlacement {
    fn is_local(&self, _shard: u32) -> bool {
        true
    }

    fn single_node(&self) -> bool {
        true
    }
}
