//! `aether shards`: the map, shards per owner, and the shards moving between nodes.

use std::collections::BTreeMap;

use serde_json::json;

use super::state::ClusterState;
use crate::context::Ctx;
use crate::output;

pub async fn run(ctx: &Ctx, all: bool) -> anyhow::Result<()> {
    let ns = ctx.namespace()?;
    let view = ctx.view().await?;
    let state = ClusterState::read(&view, ns.as_str()).await?;
    let Some(map) = &state.map else {
        anyhow::bail!("namespace {ns} has no shard map yet (no leader has published one)");
    };
    let rows = state.shard_rows();
    let mut per_node: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for r in &rows {
        let entry = per_node.entry(r.owner.as_str()).or_default();
        entry.0 += 1;
        if r.moving {
            entry.1 += 1;
        }
    }
    let shown: Vec<_> = rows.iter().filter(|r| all || r.moving).collect();
    if ctx.json {
        let shards: Vec<_> = shown
            .iter()
            .map(|r| {
                json!({
                    "shard": r.shard,
                    "owner": r.owner,
                    "moving": r.moving,
                    "draining_on": r.draining_on,
                })
            })
            .collect();
        output::json(&json!({
            "namespace": state.namespace,
            "epoch": map.epoch,
            "term": map.term,
            "shard_count": map.shard_count(),
            "owners": per_node.iter().map(|(n, (count, _))| (n.to_string(), json!(count))).collect::<serde_json::Map<_, _>>(),
            "moving": rows.iter().filter(|r| r.moving).count(),
            "shards": shards,
        }));
        return Ok(());
    }
    println!(
        "map epoch {} (term {}), {} shards",
        map.epoch,
        map.term,
        map.shard_count()
    );
    println!();
    let owners: Vec<Vec<String>> = per_node
        .iter()
        .map(|(n, (count, moving))| vec![n.to_string(), count.to_string(), moving.to_string()])
        .collect();
    print!("{}", output::table(&["OWNER", "SHARDS", "MOVING"], &owners));
    println!();
    if shown.is_empty() {
        println!("no shard is moving");
        return Ok(());
    }
    let lines: Vec<Vec<String>> = shown
        .iter()
        .map(|r| {
            vec![
                r.shard.to_string(),
                r.owner.clone(),
                if r.moving { "moving" } else { "served" }.to_owned(),
                r.draining_on.join(","),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(&["SHARD", "OWNER", "STATE", "STILL ON"], &lines)
    );
    Ok(())
}
