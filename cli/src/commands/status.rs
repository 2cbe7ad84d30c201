//! `aether cluster status`: nodes and their health, the leader, the map, shards per node.

use super::state::ClusterState;
use crate::context::Ctx;
use crate::output;

pub async fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let ns = ctx.namespace()?;
    let view = ctx.view().await?;
    let state = ClusterState::read(&view, ns.as_str()).await?;
    if ctx.json {
        output::json(&state.to_json());
        return Ok(());
    }
    let moving = state.shard_rows().iter().filter(|s| s.moving).count();
    print!(
        "{}",
        output::fields(&[
            ("namespace", state.namespace.clone()),
            (
                "leader",
                state
                    .leader
                    .as_ref()
                    .map_or("none".into(), |l| format!("{} (term {})", l.node, l.term))
            ),
            (
                "map",
                state
                    .map
                    .as_ref()
                    .map_or("none published yet".into(), |m| format!(
                        "epoch {}, {} shards over {} node(s), {moving} moving",
                        m.epoch,
                        m.shard_count(),
                        m.nodes.len()
                    ))
            ),
            (
                "drained",
                if state.drained.is_empty() {
                    "none".into()
                } else {
                    state.drained.iter().cloned().collect::<Vec<_>>().join(", ")
                }
            ),
        ])
    );
    println!();
    let rows: Vec<Vec<String>> = state
        .node_rows()
        .into_iter()
        .map(|n| {
            vec![
                if n.leader {
                    format!("{} *", n.node)
                } else {
                    n.node
                },
                n.health.to_owned(),
                output::age(n.age),
                n.shards.to_string(),
                n.held.to_string(),
                n.handoff_epoch.to_string(),
                n.resident.to_string(),
                n.commits.to_string(),
                output::time(n.started_ms),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(
            &[
                "NODE",
                "HEALTH",
                "HEARTBEAT",
                "SHARDS",
                "HELD",
                "EPOCH",
                "RESIDENT",
                "COMMITS",
                "STARTED"
            ],
            &rows
        )
    );
    println!(
        "(* leader; HEARTBEAT: age of the node's registry record; EPOCH: map epoch its handoff works under)"
    );
    Ok(())
}
