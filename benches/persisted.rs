//! The local persisted path, on the memory store (issue: "fastest in its field").
//!
//! - P1a / P1b: persisted asks (the handler persists one event and replies with the new
//!   total) ÷ plain asks (a read, nothing persisted), 1 actor with one caller and 64 actors
//!   with one caller each. Each round runs on a fresh runtime and store, so the store's size
//!   is the same for every round.
//! - P1c: recovery of an actor with 20 000 events, snapshots off — a runtime started on the
//!   store, then the time to the first answer (activation, replay, the ask) ÷ a raw loop that
//!   reads the same stored records and decodes and applies their events. Also per event.
//!
//! Paired rounds (see `support::pairs`), the order within a pair alternating. `P1_ONLY=c`
//! measures only the recovery; `P1_ROUNDS=1` prints each round of it.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use aether::prelude::*;
use aether::store::{EventStore, MemoryStore, SnapshotStore};
use aether::{ActorId, ActorKey, Kind, Namespace};
use support::{
    Figure, Probe, ProbeCmd, ProbeEvent, median, pairs, report_paired, report_value, throughput,
};

const NS: &str = "bench-persist";
const HISTORY: u64 = 20_000;

fn memory() -> (
    Arc<MemoryStore>,
    Arc<dyn EventStore>,
    Arc<dyn SnapshotStore>,
) {
    let store = Arc::new(MemoryStore::new(Namespace::new(NS).expect("namespace")));
    (store.clone(), store.clone(), store)
}

async fn runtime(events: Arc<dyn EventStore>, snapshots: Arc<dyn SnapshotStore>) -> Runtime {
    Runtime::builder()
        .namespace(NS)
        .register::<Probe>()
        .store(events, snapshots)
        .snapshot_on_passivation(false)
        .start()
        .await
        .expect("runtime")
}

/// Asks per second from `concurrency` callers, one actor each, on a fresh runtime and store:
/// `Add(1)` (persisted) or `Get` (plain).
async fn asks(concurrency: usize, round: Duration, persisted: bool) -> f64 {
    let (_, events, snapshots) = memory();
    let rt = runtime(events, snapshots).await;
    let refs: Vec<ActorRef<Probe>> = (0..concurrency)
        .map(|i| rt.actor::<Probe>(format!("p{i}")).expect("ref"))
        .collect();
    for r in &refs {
        r.ask(ProbeCmd::Get).await.expect("activate");
    }
    let refs = Arc::new(refs);
    let ops = throughput(concurrency, round, move |w| {
        let refs = refs.clone();
        async move {
            let cmd = if persisted {
                ProbeCmd::Add(1)
            } else {
                ProbeCmd::Get
            };
            let v = refs[w].ask(cmd).await.expect("ask");
            std::hint::black_box(v);
        }
    })
    .await;
    rt.shutdown().await.expect("shutdown");
    ops
}

/// Milliseconds from a cold start of the actor to its first answer (the runtime is already up).
async fn recover(events: &Arc<dyn EventStore>, snapshots: &Arc<dyn SnapshotStore>) -> f64 {
    let rt = runtime(events.clone(), snapshots.clone()).await;
    let probe = rt.actor::<Probe>("big").expect("ref");
    let started = Instant::now();
    let total = probe.ask(ProbeCmd::Get).await.expect("recovered");
    let ms = started.elapsed().as_secs_f64() * 1e3;
    assert_eq!(total, HISTORY, "the whole history was replayed");
    rt.shutdown().await.expect("shutdown");
    ms
}

/// Milliseconds for a raw loop over the same stored records: read, decode, apply.
async fn raw_replay(store: &MemoryStore, key: &ActorKey) -> f64 {
    let started = Instant::now();
    let report = store.read_with_errors(key, 1).await.expect("read");
    let mut total = 0u64;
    for commit in &report.commits {
        for event in &commit.events {
            let ProbeEvent::Added(n) = rmp_serde::from_slice(&event.payload).expect("decodes");
            total += n;
        }
    }
    let ms = started.elapsed().as_secs_f64() * 1e3;
    assert_eq!(std::hint::black_box(total), HISTORY);
    ms
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let (rounds, length) = pairs();
    // `P1_ONLY=c` (for a profiler) measures only the recovery; `P1_ONLY=P1b` only P1b.
    let only_recovery = std::env::var("P1_ONLY").is_ok_and(|v| v == "c");
    for (id, concurrency) in [("P1a", 1usize), ("P1b", 64)] {
        if only_recovery || std::env::var("P1_ONLY").is_ok_and(|v| v != id) {
            continue;
        }
        let (mut persisted, mut plain) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            if round % 2 == 0 {
                plain.push(asks(concurrency, length, false).await);
                persisted.push(asks(concurrency, length, true).await);
            } else {
                persisted.push(asks(concurrency, length, true).await);
                plain.push(asks(concurrency, length, false).await);
            }
        }
        report_paired(
            Figure {
                id,
                measure: &format!(
                    "persisted ask (memory store) / plain ask, {concurrency} actor(s)"
                ),
                ours: median(persisted.clone()),
                baseline: median(plain.clone()),
                unit: "ops/s",
                target: (">=", 0.25),
            },
            &persisted,
            &plain,
        );
    }

    if std::env::var("P1_ONLY").is_ok_and(|v| v != "c") {
        return Ok(());
    }
    // P1c: one history of 20 000 events, written through the runtime.
    let (store, events, snapshots) = memory();
    {
        let rt = runtime(events.clone(), snapshots.clone()).await;
        let big = rt.actor::<Probe>("big").expect("ref");
        for _ in 0..HISTORY {
            big.ask(ProbeCmd::Add(1)).await.expect("write");
        }
        rt.shutdown().await.expect("shutdown");
    }
    let key = ActorKey::new(
        Namespace::new(NS).expect("namespace"),
        Kind::new("probe").expect("kind"),
        ActorId::new("big").expect("id"),
    );
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    for round in 0..rounds.max(5) {
        if round % 2 == 0 {
            raw.push(raw_replay(&store, &key).await);
            ours.push(recover(&events, &snapshots).await);
        } else {
            ours.push(recover(&events, &snapshots).await);
            raw.push(raw_replay(&store, &key).await);
        }
    }
    // `P1_ROUNDS=1` prints every round's time: the rounds of one run can differ by 2x when
    // the machine's other core is busy.
    if std::env::var("P1_ROUNDS").is_ok() {
        eprintln!("P1c rounds, ours (ms): {ours:.2?}\nP1c rounds, raw (ms): {raw:.2?}");
    }
    let ours_ms = median(ours.clone());
    report_paired(
        Figure {
            id: "P1c",
            measure: "recovery of 20 000 events (first answer) / raw read+decode+apply",
            ours: ours_ms,
            baseline: median(raw.clone()),
            unit: "ms",
            target: ("<=", 1.5),
        },
        &ours,
        &raw,
    );
    report_value(
        "P1c",
        "recovery time per event replayed",
        ours_ms * 1e3 / HISTORY as f64,
        "µs",
        ("<=", 0.3),
    );
    Ok(())
}
