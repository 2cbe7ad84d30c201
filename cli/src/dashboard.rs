//! `aether dashboard`: placeholder replaced below.
use std::net::SocketAddr;

use crate::context::Ctx;

pub async fn run(_ctx: &Ctx, _listen: SocketAddr) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
