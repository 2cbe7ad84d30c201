//! `aether tail`: the namespace's events, live, as the nodes store them.

use std::sync::Arc;

use aether_runtime::bus::{BusEvent, EventBody, Filter, IdPattern};
use aether_runtime::names::Kind;
use serde_json::json;

use crate::context::{Ctx, Usage};
use crate::{msgpack, output};

/// Which events to follow.
#[derive(clap::Args, Debug)]
pub struct TailArgs {
    /// Only actors of this kind.
    #[arg(long)]
    kind: Option<String>,
    /// Only the actor with this id (a glob with `*` and `?` also works).
    #[arg(long)]
    id: Option<String>,
    /// Only events of these types (repeat the flag for several).
    #[arg(long = "type", value_name = "TYPE")]
    types: Vec<String>,
    /// Also follow system events (stores, conflicts, cluster changes).
    #[arg(long)]
    system: bool,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<u64>,
}

pub async fn run(ctx: &Ctx, args: TailArgs) -> anyhow::Result<()> {
    let ns = ctx.namespace()?;
    let kind = match &args.kind {
        Some(k) => Kind::new(k)
            .map_err(|e| Usage(format!("--kind {k:?}: {e}")))?
            .to_string(),
        None => "*".to_owned(),
    };
    let mut filter = Filter::all();
    if !args.types.is_empty() {
        filter = filter.event_types(args.types.iter().cloned());
    }
    if let Some(id) = &args.id {
        let pattern = if id.contains(['*', '?']) {
            IdPattern::glob(id).map_err(|e| Usage(format!("--id {id:?}: {e}")))?
        } else {
            IdPattern::exact(id.clone())
        };
        filter = filter.actor_id(pattern);
    }
    let bus = ctx.bus().await?;
    let events_pattern = format!("{ns}.events.{kind}.*");
    let mut events = bus
        .subscribe(events_pattern.as_str(), filter.clone())
        .await
        .map_err(|e| Usage(e.to_string()))?;
    let mut system = if args.system {
        Some(
            bus.subscribe(format!("{ns}.system.*").as_str(), Filter::all())
                .await
                .map_err(|e| Usage(e.to_string()))?,
        )
    } else {
        None
    };
    eprintln!(
        "following {events_pattern}{} (Ctrl-C to stop)",
        if args.system {
            format!(" and {ns}.system.*")
        } else {
            String::new()
        }
    );
    let mut shown = 0u64;
    while args.count.is_none_or(|n| shown < n) {
        let next: Option<Arc<BusEvent>> = tokio::select! {
            e = events.recv() => e,
            e = async {
                match system.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            } => e,
            _ = tokio::signal::ctrl_c() => break,
        };
        let Some(event) = next else {
            anyhow::bail!("the bus closed the subscription");
        };
        print_event(ctx.json, &event);
        shown += 1;
    }
    Ok(())
}

fn print_event(as_json: bool, event: &BusEvent) {
    match event.body() {
        EventBody::Actor(e) => {
            if as_json {
                println!(
                    "{}",
                    json!({
                        "topic": event.topic(),
                        "kind": e.actor.kind.as_str(),
                        "id": e.actor.id.to_string(),
                        "version": e.version,
                        "type": e.event_type,
                        "schema_version": e.schema_version,
                        "timestamp_ms": e.timestamp_ms,
                        "command_id": e.command_id.to_string(),
                        "payload": msgpack::to_json(&e.payload),
                    })
                );
            } else {
                println!(
                    "{}  {}/{}  v{}  {}  {}",
                    output::time(e.timestamp_ms),
                    e.actor.kind,
                    e.actor.id,
                    e.version,
                    e.event_type,
                    output::clip(&msgpack::to_json(&e.payload).to_string(), 100)
                );
            }
        }
        EventBody::System(s) => {
            let detail = serde_json::to_value(&s.event).unwrap_or_default();
            if as_json {
                println!(
                    "{}",
                    json!({
                        "topic": event.topic(),
                        "system": s.event.name(),
                        "origin": s.origin,
                        "timestamp_ms": s.timestamp_ms,
                        "event": detail,
                    })
                );
            } else {
                println!(
                    "{}  system  {}  from {}  {}",
                    output::time(s.timestamp_ms),
                    s.event.name(),
                    s.origin,
                    output::clip(&detail.to_string(), 100)
                );
            }
        }
    }
}
