//! `aether actor locate|events|snapshot`: one actor, read where the cluster keeps it.

use aether_runtime::names::{ActorId, ActorKey, Kind};
use aether_runtime::routing::shard_of;
use aether_runtime::store::{EventStore, SnapshotStore};
use anyhow::Context as _;
use serde_json::json;

use super::state::ClusterState;
use crate::context::{Ctx, Usage};
use crate::{msgpack, output};

/// The actor's key, its kind and id checked like the runtime checks them.
fn key(ctx: &Ctx, kind: &str, id: &str) -> anyhow::Result<ActorKey> {
    let namespace = ctx.namespace()?;
    let kind = Kind::new(kind).map_err(|e| Usage(format!("kind {kind:?}: {e}")))?;
    let id = ActorId::new(id).map_err(|e| Usage(format!("id {id:?}: {e}")))?;
    Ok(ActorKey::new(namespace, kind, id))
}

pub async fn locate(ctx: &Ctx, kind: &str, id: &str) -> anyhow::Result<()> {
    let key = key(ctx, kind, id)?;
    let view = ctx.view().await?;
    let state = ClusterState::read(&view, key.namespace.as_str()).await?;
    let Some(map) = &state.map else {
        anyhow::bail!(
            "namespace {} has no shard map yet (no leader has published one)",
            key.namespace
        );
    };
    let shard = shard_of(key.namespace.as_str(), kind, id, map.shard_count());
    let owner = map.owner(shard).unwrap_or("").to_owned();
    let row = state.shard_rows().into_iter().nth(shard as usize);
    let moving = row.as_ref().is_some_and(|r| r.moving);
    let store = ctx.store().await?;
    let version = store
        .latest_version(&key)
        .await
        .context("cannot read the actor's version")?;
    let snapshot = store
        .latest(&key)
        .await
        .context("cannot read the actor's snapshot")?
        .map(|s| s.version);
    let leader = state
        .leader
        .as_ref()
        .map_or("no leader right now".to_owned(), |l| {
            format!("leader {} (term {})", l.node, l.term)
        });
    let why = format!(
        "{kind}/{id} hashes to shard {shard} of {} (FNV-1a of namespace, kind and id); the map \
         of epoch {} — written in term {}, {leader} now — places shard {shard} on {owner}: on \
         the hash ring of nodes [{}], the first virtual node at or after the shard's position \
         is {owner}'s{}",
        map.shard_count(),
        map.epoch,
        map.term,
        map.nodes.join(", "),
        if moving {
            format!(
                ". The shard is moving: {}",
                match row.as_ref().map(|r| r.draining_on.as_slice()) {
                    Some(on) if !on.is_empty() => format!("{} still drains it", on.join(", ")),
                    _ => format!("{owner} does not serve it yet"),
                }
            )
        } else {
            String::new()
        }
    );
    if ctx.json {
        output::json(&json!({
            "namespace": key.namespace.as_str(),
            "kind": kind,
            "id": id,
            "shard": shard,
            "owner": owner,
            "epoch": map.epoch,
            "moving": moving,
            "version": version,
            "snapshot_version": snapshot,
            "why": why,
        }));
        return Ok(());
    }
    print!(
        "{}",
        output::fields(&[
            ("actor", format!("{}/{kind}/{id}", key.namespace)),
            ("shard", shard.to_string()),
            (
                "owner",
                if moving {
                    format!("{owner} (moving)")
                } else {
                    owner.clone()
                }
            ),
            ("epoch", map.epoch.to_string()),
            ("version", version.to_string()),
            (
                "snapshot",
                snapshot.map_or("none".into(), |v| format!("at version {v}"))
            ),
            ("why", why),
        ])
    );
    Ok(())
}

pub async fn events(
    ctx: &Ctx,
    kind: &str,
    id: &str,
    from: u64,
    limit: Option<usize>,
) -> anyhow::Result<()> {
    let key = key(ctx, kind, id)?;
    if from == 0 {
        return Err(Usage("--from counts from 1 (the first event)".into()).into());
    }
    let store = ctx.store().await?;
    // Retention may have removed the start of the history: show what is left, and say so.
    let starts_at = store
        .history_start(&key)
        .await
        .context("cannot read where the actor's history starts")?;
    let report = store
        .read_with_errors(&key, from.max(starts_at))
        .await
        .context("cannot read the actor's events")?;
    let mut events = report.events();
    let total = events.len();
    if let Some(limit) = limit {
        events.truncate(limit);
    }
    if ctx.json {
        let list: Vec<_> = events
            .iter()
            .map(|e| {
                json!({
                    "version": e.version,
                    "type": e.event_type,
                    "schema_version": e.schema_version,
                    "timestamp_ms": e.timestamp_ms,
                    "command_id": e.command_id.to_string(),
                    "correlation_id": e.correlation_id.to_string(),
                    "payload": msgpack::to_json(&e.payload),
                })
            })
            .collect();
        let corrupt: Vec<_> = report
            .corrupt
            .iter()
            .map(|c| json!({"position": c.position, "reason": c.reason}))
            .collect();
        output::json(&json!({
            "actor": {"namespace": key.namespace.as_str(), "kind": kind, "id": id},
            "from": from,
            "history_starts_at": starts_at,
            "events": list,
            "more": total > events.len(),
            "corrupt": corrupt,
        }));
        return Ok(());
    }
    if from < starts_at {
        println!(
            "{kind}/{id}: history starts at version {starts_at} (earlier events were removed by \
             retention; the actor loads from its snapshot)"
        );
    }
    if events.is_empty() {
        println!(
            "{kind}/{id} has no events from version {}",
            from.max(starts_at)
        );
    } else {
        let rows: Vec<Vec<String>> = events
            .iter()
            .map(|e| {
                vec![
                    e.version.to_string(),
                    e.event_type.clone(),
                    output::time(e.timestamp_ms),
                    e.command_id.to_string(),
                    output::clip(&msgpack::to_json(&e.payload).to_string(), 80),
                ]
            })
            .collect();
        print!(
            "{}",
            output::table(&["VERSION", "TYPE", "TIME", "COMMAND", "PAYLOAD"], &rows)
        );
        if total > events.len() {
            println!(
                "({} more; raise --limit or move --from)",
                total - events.len()
            );
        }
    }
    for c in &report.corrupt {
        eprintln!("damaged record at position {}: {}", c.position, c.reason);
    }
    Ok(())
}

pub async fn snapshot(ctx: &Ctx, kind: &str, id: &str) -> anyhow::Result<()> {
    let key = key(ctx, kind, id)?;
    let store = ctx.store().await?;
    let snapshot = store
        .latest(&key)
        .await
        .context("cannot read the actor's snapshot")?;
    let Some(snapshot) = snapshot else {
        if ctx.json {
            output::json(&serde_json::Value::Null);
            return Ok(());
        }
        anyhow::bail!("{kind}/{id} has no snapshot");
    };
    let state = msgpack::snapshot_to_json(&snapshot.payload);
    if ctx.json {
        output::json(&json!({
            "actor": {"namespace": key.namespace.as_str(), "kind": kind, "id": id},
            "version": snapshot.version,
            "timestamp_ms": snapshot.timestamp_ms,
            "bytes": snapshot.payload.len(),
            "state": state,
        }));
        return Ok(());
    }
    print!(
        "{}",
        output::fields(&[
            ("actor", format!("{}/{kind}/{id}", key.namespace)),
            ("version", snapshot.version.to_string()),
            ("taken", output::time(snapshot.timestamp_ms)),
            ("bytes", snapshot.payload.len().to_string()),
        ])
    );
    println!(
        "{}",
        serde_json::to_string_pretty(&state).unwrap_or_default()
    );
    Ok(())
}
