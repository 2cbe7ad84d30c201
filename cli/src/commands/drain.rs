//! `aether drain|undrain|rebalance`: ask the leader to move shards off a node (or back), and
//! follow the move until it is done.

use std::time::Duration;

use aether_runtime::ClusterView;
use aether_runtime::cluster::NodeStatus;
use serde_json::json;

use super::state::ClusterState;
use crate::context::{Ctx, Usage};
use crate::output;

/// How long to follow the move.
#[derive(clap::Args, Debug)]
pub struct WaitArgs {
    /// Return once the request is recorded, without following the move.
    #[arg(long)]
    no_wait: bool,
    /// Give up following after this many seconds (exit status 1).
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    wait: u64,
}

/// A node, and how long to follow.
#[derive(clap::Args, Debug)]
pub struct DrainArgs {
    /// The node id.
    node: String,
    #[command(flatten)]
    wait: WaitArgs,
}

pub async fn drain(ctx: &Ctx, args: DrainArgs, drained: bool) -> anyhow::Result<()> {
    let ns = ctx.namespace()?;
    let view = ctx.view().await?;
    let before = ClusterState::read(&view, ns.as_str()).await?;
    let known = before.nodes.iter().any(|n| n.record.node == args.node);
    if drained && !known {
        let nodes: Vec<&str> = before
            .nodes
            .iter()
            .map(|n| n.record.node.as_str())
            .collect();
        return Err(Usage(format!(
            "no node {:?} in namespace {ns} (nodes: {})",
            args.node,
            nodes.join(", ")
        ))
        .into());
    }
    let set = view
        .set_drained(&args.node, drained)
        .await
        .map_err(|e| anyhow::anyhow!("cannot record the request: {e}"))?;
    let verb = if drained { "drain" } else { "undrain" };
    if !ctx.json {
        eprintln!(
            "{verb} of {} recorded (drained now: {})",
            args.node,
            if set.is_empty() {
                "none".to_owned()
            } else {
                set.iter().cloned().collect::<Vec<_>>().join(", ")
            }
        );
    }
    let node = args.node.clone();
    let done = |s: &ClusterState| -> (bool, String) {
        let Some(map) = &s.map else {
            return (false, "no map yet".into());
        };
        let record = s.nodes.iter().find(|n| n.record.node == node);
        let held = record.map_or(0, |r| r.record.held.len());
        let owned = map.shards_of(&node).len();
        if drained {
            (
                owned == 0 && held == 0,
                format!("{node}: {owned} shard(s) in the map, {held} still held"),
            )
        } else {
            let alive = record.is_some_and(|r| r.record.status == NodeStatus::Alive);
            (
                !alive || (owned > 0 && s.shard_rows().iter().all(|r| !r.moving)),
                format!("{node}: {owned} shard(s) in the map, {held} served"),
            )
        }
    };
    follow(ctx, &view, ns.as_str(), &args.wait, verb, &node, done).await
}

pub async fn rebalance(ctx: &Ctx, args: WaitArgs) -> anyhow::Result<()> {
    let ns = ctx.namespace()?;
    let view = ctx.view().await?;
    view.clear_drained()
        .await
        .map_err(|e| anyhow::anyhow!("cannot record the request: {e}"))?;
    if !ctx.json {
        eprintln!("every node undrained; waiting for the map to cover every alive node");
    }
    let done = |s: &ClusterState| -> (bool, String) {
        let alive: Vec<&str> = s
            .nodes
            .iter()
            .filter(|n| n.record.status == NodeStatus::Alive)
            .map(|n| n.record.node.as_str())
            .collect();
        let Some(map) = &s.map else {
            return (false, "no map yet".into());
        };
        let moving = s.shard_rows().iter().filter(|r| r.moving).count();
        (
            alive.iter().all(|n| map.nodes.iter().any(|m| m == n)) && moving == 0,
            format!(
                "map over {} of {} alive node(s), {moving} shard(s) moving",
                map.nodes.len(),
                alive.len()
            ),
        )
    };
    follow(ctx, &view, ns.as_str(), &args, "rebalance", "", done).await
}

/// Polls the cluster until `done` says so, printing progress when it changes.
async fn follow(
    ctx: &Ctx,
    view: &ClusterView,
    ns: &str,
    wait: &WaitArgs,
    verb: &str,
    node: &str,
    done: impl Fn(&ClusterState) -> (bool, String),
) -> anyhow::Result<()> {
    let report = |finished: bool, state: &ClusterState| {
        if ctx.json {
            output::json(&json!({
                "request": verb,
                "node": (!node.is_empty()).then_some(node),
                "done": finished,
                "state": state.to_json(),
            }));
        }
    };
    if wait.no_wait {
        let state = ClusterState::read(view, ns).await?;
        report(false, &state);
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait.wait);
    let mut last = String::new();
    loop {
        let state = ClusterState::read(view, ns).await?;
        let (finished, progress) = done(&state);
        if !ctx.json && progress != last {
            eprintln!("  {progress}");
            last = progress;
        }
        if finished {
            report(true, &state);
            if !ctx.json {
                println!("{verb} done");
            }
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            report(false, &state);
            anyhow::bail!(
                "{verb} not finished after {} s (the request stays recorded; run `aether shards` to see what is moving)",
                wait.wait
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
