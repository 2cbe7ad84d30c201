//! B7, B7L, B8 and B9: failover and rebalancing under load, with cluster nodes as real processes.
//!
//! The bench starts a nats-server and re-executes itself as node processes (environment
//! `AETHER_BENCH_NODE=<id>`), which run with the **default** cluster timing (heartbeat 1 s,
//! failure timeout 3 s, lease 3 s). A cluster client in the bench process drives the load.
//!
//! - B7: SIGKILL a node that has ≥ 1 000 active actors; time until every one of them has
//!   answered again on the survivors (target 1.5 s), with its parts: detection (until the
//!   leader marks the node failed: its connection check, `cluster/liveness.rs`), reassignment (until the map without it is published) and activation (the
//!   rest: handoff, subscription, replay on first ask). B7L: the same with the leader killed
//!   (a follower finds its connection gone and ends its lease; the new leader declares it).
//! - B8: under a steady write load (every command with a fresh id, retried with the same id
//!   until acknowledged), a node joins, then a node leaves gracefully: lost commands (must be
//!   0), commands applied twice (must be 0, read back from the event log), and the throughput
//!   of the 3 s after each change ÷ the steady throughput.
//! - B9: convergence after the join: from the new node's registration to its serving its
//!   shards, in leader ticks and seconds.

#[path = "../tests/common/nats.rs"]
#[allow(dead_code)]
mod nats;
mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aether::cluster::{NodeStatus, RegistryChange};
use aether::prelude::*;
use aether::routing::shard_of;
use aether::{ActorId, ActorKey, ClusterView, Kind, Namespace, Runtime};
use futures_util::StreamExt;
use parking_lot::Mutex;
use support::nodes::{Node, wait_map};
use support::{Figure, Probe, ProbeCmd, report};

const HEARTBEAT: Duration = Duration::from_secs(1);

fn main() -> anyhow::Result<()> {
    support::nodes::main_or_node(|| Runtime::builder().register::<Probe>(), bench_main())
}

async fn client(url: &str, ns: &str) -> anyhow::Result<Runtime> {
    Ok(Runtime::builder()
        .namespace(ns)
        .register::<Probe>()
        .cluster_client(url)
        .start()
        .await?)
}

async fn bench_main() -> anyhow::Result<()> {
    let server = nats::NatsServer::start();
    let url = server.url();
    b7(&url, "failover", false).await?;
    b7(&url, "failover-leader", true).await?;
    b8_b9(&url).await?;
    Ok(())
}

/// B7 (a follower killed) or B7L (the leader killed: a follower ends its lease first).
async fn b7(url: &str, ns: &str, kill_leader: bool) -> anyhow::Result<()> {
    let nodes: Vec<Node> = ["node-1", "node-2", "node-3"]
        .iter()
        .map(|id| Node::start(url, ns, id))
        .collect();
    for n in &nodes {
        n.wait_ready();
    }
    let view = ClusterView::connect(url, ns)
        .await
        .map_err(anyhow::Error::msg)?;
    wait_map(&view, 3).await?;
    let leader = view
        .leader()
        .await
        .map_err(anyhow::Error::msg)?
        .expect("a leader");
    let mut nodes = nodes;
    let victim_at = nodes
        .iter()
        .position(|n| (n.id == leader.node) == kill_leader)
        .expect("a node to kill");
    let victim = nodes[victim_at].id.clone();
    let map = view
        .shard_map()
        .await
        .map_err(anyhow::Error::msg)?
        .expect("a map");

    // ≥ 1 000 actors on the victim, each with a few events to replay.
    let ids: Vec<String> = (0..)
        .map(|i| format!("b7-{i}"))
        .filter(|id| map.owner(shard_of(ns, "probe", id, map.shard_count())) == Some(&victim))
        .take(1000)
        .collect();
    let rt = client(url, ns).await?;
    let refs: Arc<Vec<ActorRef<Probe>>> = Arc::new(
        ids.iter()
            .map(|id| rt.actor::<Probe>(id))
            .collect::<Result<_, _>>()?,
    );
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (refs, next) = (Arc::clone(&refs), Arc::clone(&next));
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(r) = refs.get(i) else { return };
                    for _ in 0..3 {
                        r.ask(ProbeCmd::Add(1)).await.expect("warm-up add");
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await?;
    }

    // Watch the registry and the maps from here on.
    let failed_at = Arc::new(Mutex::new(None::<Instant>));
    let remapped_at = Arc::new(Mutex::new(None::<Instant>));
    let mut registry = view.watch_nodes().await.map_err(anyhow::Error::msg)?;
    let mut maps = view.watch_maps().await.map_err(anyhow::Error::msg)?;
    let watcher = {
        let (failed_at, remapped_at, victim) = (
            Arc::clone(&failed_at),
            Arc::clone(&remapped_at),
            victim.clone(),
        );
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(Ok(RegistryChange::Put(r))) = registry.next() => {
                        if r.node == victim && r.status == NodeStatus::Failed {
                            failed_at.lock().get_or_insert_with(Instant::now);
                        }
                    }
                    Some(Ok(m)) = maps.next() => {
                        if !m.nodes.contains(&victim) {
                            remapped_at.lock().get_or_insert_with(Instant::now);
                        }
                    }
                    else => return,
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    let killed = Instant::now();
    nodes[victim_at].kill();
    let next = Arc::new(AtomicU64::new(0));
    let answered: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (refs, next, answered) =
                (Arc::clone(&refs), Arc::clone(&next), Arc::clone(&answered));
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(r) = refs.get(i) else { return };
                    loop {
                        match r.ask(ProbeCmd::Get).await {
                            Ok(total) => {
                                assert_eq!(total, 3, "state survives the crash");
                                answered.lock().push(Instant::now());
                                break;
                            }
                            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await?;
    }
    let all = answered.lock().iter().max().copied().expect("answers");
    watcher.abort();
    let total = all.duration_since(killed).as_secs_f64();
    let detection = failed_at
        .lock()
        .map(|t| t.duration_since(killed).as_secs_f64());
    let remapped = remapped_at
        .lock()
        .map(|t| t.duration_since(killed).as_secs_f64());
    println!(
        "{} parts: detection {:.2} s (the connection check after two missed beats; failure \
         timeout 3 s, heartbeat 1 s), reassignment {:.2} s, \
         handoff + activation of {} actors {:.2} s",
        if kill_leader { "B7L" } else { "B7" },
        detection.unwrap_or(f64::NAN),
        remapped.zip(detection).map_or(f64::NAN, |(r, d)| r - d),
        refs.len(),
        remapped.map_or(f64::NAN, |r| total - r),
    );
    report(Figure {
        id: if kill_leader { "B7L" } else { "B7" },
        measure: &format!(
            "SIGKILL {} to all {} of its actors answering again",
            if kill_leader {
                "the leader"
            } else {
                "a follower"
            },
            refs.len()
        ),
        ours: total,
        baseline: 1.0,
        unit: "s",
        target: ("<=", 1.5),
    });
    rt.shutdown().await?;
    for n in nodes.drain(..) {
        n.leave();
    }
    Ok(())
}

/// The write load of B8: fresh command ids, retried with the same id until acknowledged.
struct Load {
    acked: Mutex<Vec<(usize, CommandId, Instant)>>,
    lost: AtomicU64,
    errors: AtomicU64,
}

fn start_load(
    rt: &Runtime,
    counters: usize,
    workers: usize,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<(Arc<Load>, Vec<tokio::task::JoinHandle<()>>)> {
    let refs: Arc<Vec<ActorRef<Probe>>> = Arc::new(
        (0..counters)
            .map(|i| rt.actor::<Probe>(format!("b8-{i}")))
            .collect::<Result<_, _>>()?,
    );
    let load = Arc::new(Load {
        acked: Mutex::new(Vec::new()),
        lost: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let tasks = (0..workers)
        .map(|w| {
            let (refs, load, stop) = (Arc::clone(&refs), Arc::clone(&load), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(w as u64 + 11);
                while !stop.load(Ordering::Relaxed) {
                    let i = rng.usize(..refs.len());
                    let id = CommandId::random();
                    let started = Instant::now();
                    loop {
                        let options = AskOptions::default().command_id(id);
                        match refs[i].ask_with(ProbeCmd::Add(1), options).await {
                            Ok(_) => {
                                load.acked.lock().push((i, id, Instant::now()));
                                break;
                            }
                            Err(_) if started.elapsed() < Duration::from_secs(60) => {
                                load.errors.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(10 + fastrand::u64(..40)))
                                    .await;
                            }
                            Err(_) => {
                                load.lost.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    Ok((load, tasks))
}

fn rate(load: &Load, from: Instant, to: Instant) -> f64 {
    let n = load
        .acked
        .lock()
        .iter()
        .filter(|(_, _, t)| *t >= from && *t < to)
        .count();
    n as f64 / to.duration_since(from).as_secs_f64()
}

async fn b8_b9(url: &str) -> anyhow::Result<()> {
    let ns = "rebalance";
    let mut nodes: Vec<Node> = ["node-1", "node-2", "node-3"]
        .iter()
        .map(|id| Node::start(url, ns, id))
        .collect();
    for n in &nodes {
        n.wait_ready();
    }
    let view = ClusterView::connect(url, ns)
        .await
        .map_err(anyhow::Error::msg)?;
    wait_map(&view, 3).await?;
    let rt = client(url, ns).await?;
    let counters = 2000;
    let stop = Arc::new(AtomicBool::new(false));
    let (load, workers) = start_load(&rt, counters, 32, Arc::clone(&stop))?;
    let window = Duration::from_secs(3);
    // Warm up (activations), then the steady window.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let steady_from = Instant::now();
    tokio::time::sleep(window).await;
    let steady = rate(&load, steady_from, Instant::now());

    // Join, timing its registration as the leader sees it.
    let registered = Arc::new(Mutex::new(None::<Instant>));
    let mut registry = view.watch_nodes().await.map_err(anyhow::Error::msg)?;
    let watch = {
        let registered = Arc::clone(&registered);
        tokio::spawn(async move {
            while let Some(change) = registry.next().await {
                if let Ok(RegistryChange::Put(r)) = change
                    && r.node == "node-4"
                {
                    registered.lock().get_or_insert_with(Instant::now);
                }
            }
        })
    };
    let join_at = Instant::now();
    let joining = Node::start(url, ns, "node-4");
    let ready = tokio::task::block_in_place(|| joining.wait_ready());
    nodes.push(joining);
    tokio::time::sleep(window.saturating_sub(join_at.elapsed())).await;
    let join_rate = rate(&load, join_at, join_at + window);
    watch.abort();
    let convergence = registered
        .lock()
        .map_or(f64::NAN, |r| ready.duration_since(r).as_secs_f64());

    // Drain: node-2 leaves gracefully.
    let leave_at = Instant::now();
    let leaving = nodes.remove(1);
    tokio::task::block_in_place(|| leaving.leave());
    tokio::time::sleep(window.saturating_sub(leave_at.elapsed())).await;
    let leave_rate = rate(&load, leave_at, leave_at + window);

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await?;
    }
    // Exactly once, read back from the log.
    let store = rt.event_store();
    let mut per: HashMap<usize, Vec<CommandId>> = HashMap::new();
    for (i, id, _) in load.acked.lock().iter() {
        per.entry(*i).or_default().push(*id);
    }
    let (mut duplicates, mut missing) = (0usize, 0usize);
    for (i, acked) in &per {
        let key = ActorKey::new(
            Namespace::new(ns)?,
            Kind::new("probe")?,
            ActorId::new(format!("b8-{i}"))?,
        );
        let report = store.read_with_errors(&key, 1).await?;
        let mut seen: HashMap<CommandId, usize> = HashMap::new();
        for c in &report.commits {
            *seen.entry(c.command_id).or_default() += 1;
        }
        duplicates += seen.values().filter(|n| **n > 1).count();
        missing += acked.iter().filter(|id| seen.get(id) != Some(&1)).count();
    }
    let lost = load.lost.load(Ordering::Relaxed) as usize + missing;
    println!(
        "B8: {} commands acknowledged, {} retried attempts, lost {lost}, duplicated {duplicates}; \
         steady {steady:.0}/s, join window {join_rate:.0}/s, drain window {leave_rate:.0}/s",
        load.acked.lock().len(),
        load.errors.load(Ordering::Relaxed),
    );
    report(Figure {
        id: "B8",
        measure: "lost + duplicated commands through a join and a drain",
        ours: (lost + duplicates) as f64,
        baseline: 1.0,
        unit: "cmds",
        target: ("<=", 0.0),
    });
    report(Figure {
        id: "B8",
        measure: "throughput in the 3 s after a join / steady",
        ours: join_rate,
        baseline: steady,
        unit: "ops/s",
        target: (">=", 0.8),
    });
    report(Figure {
        id: "B8",
        measure: "throughput in the 3 s after a graceful leave / steady",
        ours: leave_rate,
        baseline: steady,
        unit: "ops/s",
        target: (">=", 0.8),
    });
    report(Figure {
        id: "B9",
        measure: "join convergence: registration to serving (leader ticks = s / 1 s)",
        ours: convergence,
        baseline: HEARTBEAT.as_secs_f64(),
        unit: "s",
        target: ("<=", 2.0),
    });
    rt.shutdown().await?;
    for n in nodes.drain(..) {
        n.leave();
    }
    Ok(())
}
