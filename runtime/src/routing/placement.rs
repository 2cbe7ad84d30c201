//! Placement: who serves a shard.

/// Where a shard is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// This node: deliver in memory, never through the network.
    Local,
    /// Another node, by id.
    Remote(String),
    /// Nobody right now (a shard moving between nodes): retry until the deadline.
    Unassigned,
}

/// Answers "who owns this shard". The single seam between routing and the actor layer.
pub trait Placement: Send + Sync + 'static {
    /// The owner of `shard`.
    fn owner(&self, shard: u32) -> Owner;

    /// Whether this node serves `shard` now: `owner(shard) == Owner::Local`, which every call
    /// asks, so implementations answer it without naming the owner.
    fn is_local(&self, shard: u32) -> bool {
        self.owner(shard) == Owner::Local
    }

    /// `true` when every shard is always local (lets delivery skip the shard hash).
    fn single_node(&self) -> bool {
        false
    }
}

/// The placement of a single node: every shard is local.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalPlacement;

impl Placement for LocalPlacement {
    fn owner(&self, _shard: u32) -> Owner {
        Owner::Local
    }

    fn single_node(&self) -> bool {
        true
    }
}

/// The placement of a cluster *client*: a runtime that calls actors but hosts none. Every
/// shard is served elsewhere, so every ask goes to the shard's owner over NATS.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientPlacement;

impl Placement for ClientPlacement {
    fn owner(&self, _shard: u32) -> Owner {
        Owner::Unassigned
    }
}
