//! One module per command; [`state`] reads what several of them show.

pub mod actor;
pub mod drain;
pub mod shards;
pub mod state;
pub mod status;
pub mod tail;
