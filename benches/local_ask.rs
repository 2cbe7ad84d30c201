//! B1: local ask throughput ÷ raw ractor `call` throughput, same concurrency, same run.
//!
//! Both sides serve a read (no event persisted) from an actor holding a `u64`, at 1 caller
//! (one actor) and at 64 callers (64 actors, one each). Paired rounds (see `support::pairs`),
//! the order within a pair alternating; the figure is the median of the per-round ratios (see
//! `support::report_paired`).

mod support;

use aether::prelude::*;
use support::{
    Figure, Probe, ProbeCmd, RawCounter, RawMsg, measure_time, median, pairs, report_paired,
    throughput,
};

async fn raw(concurrency: usize, round: std::time::Duration) -> f64 {
    let mut refs = Vec::new();
    let mut handles = Vec::new();
    for _ in 0..concurrency {
        let (r, h) = ractor::Actor::spawn(None, RawCounter, ())
            .await
            .expect("spawn");
        refs.push(r);
        handles.push(h);
    }
    let refs = std::sync::Arc::new(refs);
    let ops = throughput(concurrency, round, {
        let refs = refs.clone();
        move |w| {
            let refs = refs.clone();
            async move {
                let v = ractor::call!(refs[w], RawMsg::Get).expect("call");
                std::hint::black_box(v);
            }
        }
    })
    .await;
    for r in refs.iter() {
        r.stop(None);
    }
    for h in handles {
        h.await.expect("raw actor stopped");
    }
    ops
}

async fn ours(rt: &Runtime, concurrency: usize, round: std::time::Duration) -> f64 {
    let refs: Vec<ActorRef<Probe>> = (0..concurrency)
        .map(|i| rt.actor::<Probe>(format!("p{i}")).expect("ref"))
        .collect();
    for r in &refs {
        r.ask(ProbeCmd::Get).await.expect("activate");
    }
    let refs = std::sync::Arc::new(refs);
    throughput(concurrency, round, move |w| {
        let refs = refs.clone();
        async move {
            let v = refs[w].ask(ProbeCmd::Get).await.expect("ask");
            std::hint::black_box(v);
        }
    })
    .await
}

fn main() -> anyhow::Result<()> {
    // `B1_WORKERS=1` runs both sides on one worker thread: CPU per ask without the cost of
    // waking the other worker (for a profiler).
    let workers = std::env::var("B1_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(2);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let mut builder = Runtime::builder()
        .namespace("bench-ask")
        .register::<Probe>()
        .memory_store();
    // `B1_METRICS=1`: with the Prometheus endpoint on (for profiling the metrics' cost).
    if std::env::var("B1_METRICS").is_ok() {
        builder = builder.metrics_addr(([127, 0, 0, 1], 0));
    }
    let rt = builder.start().await?;
    // For a profiler: `B1_PROFILE=ours` (or `raw`) runs only that side, at `B1_CONCURRENCY`
    // (default 1), for `B1_ROUNDS` rounds (default 10), printing each round's rate.
    if let Ok(side) = std::env::var("B1_PROFILE") {
        let concurrency = std::env::var("B1_CONCURRENCY")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(1);
        let rounds: usize = std::env::var("B1_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(10);
        for _ in 0..rounds {
            let ops = match side.as_str() {
                "raw" => raw(concurrency, measure_time() / 2).await,
                _ => ours(&rt, concurrency, measure_time() / 2).await,
            };
            eprintln!("{side} at {concurrency}: {ops:.0} ops/s");
        }
        rt.shutdown().await?;
        return Ok(());
    }
    for concurrency in [1usize, 64] {
        let (mut r, mut o) = (Vec::new(), Vec::new());
        let (rounds, length) = pairs();
        for round in 0..rounds {
            if round % 2 == 0 {
                r.push(raw(concurrency, length).await);
                o.push(ours(&rt, concurrency, length).await);
            } else {
                o.push(ours(&rt, concurrency, length).await);
                r.push(raw(concurrency, length).await);
            }
        }
        report_paired(
            Figure {
                id: "B1",
                measure: &format!("local ask / raw ractor call, {concurrency} in flight"),
                ours: median(o.clone()),
                baseline: median(r.clone()),
                unit: "ops/s",
                target: (">=", 0.8),
            },
            &o,
            &r,
        );
    }
    rt.shutdown().await?;
    Ok(())
}
