//! B1: local ask throughput ÷ raw ractor `call` throughput, same concurrency, same run.
//!
//! Both sides serve a read (no event persisted) from an actor holding a `u64`, at 1 caller
//! (one actor) and at 64 callers (64 actors, one each). Seven paired rounds of one second
//! (`AETHER_BENCH_SECS` × 0.5), the order within a pair alternating; the figure is the median
//! of the per-round ratios (see `support::report_paired`).

mod support;

use aether::prelude::*;
use support::{
    Figure, Probe, ProbeCmd, RawCounter, RawMsg, measure_time, median, report_paired, throughput,
};

const ROUNDS: usize = 7;

async fn raw(concurrency: usize) -> f64 {
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
    let ops = throughput(concurrency, measure_time() / 2, {
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

async fn ours(rt: &Runtime, concurrency: usize) -> f64 {
    let refs: Vec<ActorRef<Probe>> = (0..concurrency)
        .map(|i| rt.actor::<Probe>(format!("p{i}")).expect("ref"))
        .collect();
    for r in &refs {
        r.ask(ProbeCmd::Get).await.expect("activate");
    }
    let refs = std::sync::Arc::new(refs);
    throughput(concurrency, measure_time() / 2, move |w| {
        let refs = refs.clone();
        async move {
            let v = refs[w].ask(ProbeCmd::Get).await.expect("ask");
            std::hint::black_box(v);
        }
    })
    .await
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let rt = Runtime::builder()
        .namespace("bench-ask")
        .register::<Probe>()
        .memory_store()
        .start()
        .await?;
    for concurrency in [1usize, 64] {
        let (mut r, mut o) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            if round % 2 == 0 {
                r.push(raw(concurrency).await);
                o.push(ours(&rt, concurrency).await);
            } else {
                o.push(ours(&rt, concurrency).await);
                r.push(raw(concurrency).await);
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
