//! B1: local ask throughput ÷ raw ractor `call` throughput, same concurrency, same run.
//!
//! Both sides serve a read (no event persisted) from an actor holding a `u64`, at 1 caller
//! (one actor) and at 64 callers (64 actors, one each). Three rounds, median of each.

mod support;

use aether::prelude::*;
use support::{
    Figure, Probe, ProbeCmd, RawCounter, RawMsg, measure_time, median, report, throughput,
};

async fn raw(concurrency: usize) -> f64 {
    let mut refs = Vec::new();
    for _ in 0..concurrency {
        let (r, _h) = ractor::Actor::spawn(None, RawCounter, ())
            .await
            .expect("spawn");
        refs.push(r);
    }
    let refs = std::sync::Arc::new(refs);
    throughput(concurrency, measure_time(), move |w| {
        let refs = refs.clone();
        async move {
            let v = ractor::call!(refs[w], RawMsg::Get).expect("call");
            std::hint::black_box(v);
        }
    })
    .await
}

async fn ours(rt: &Runtime, concurrency: usize) -> f64 {
    let refs: Vec<ActorRef<Probe>> = (0..concurrency)
        .map(|i| rt.actor::<Probe>(format!("p{i}")).expect("ref"))
        .collect();
    for r in &refs {
        r.ask(ProbeCmd::Get).await.expect("activate");
    }
    let refs = std::sync::Arc::new(refs);
    throughput(concurrency, measure_time(), move |w| {
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
        .namespace("bench-ask")?
        .register::<Probe>()
        .memory_store()
        .start()
        .await?;
    for concurrency in [1usize, 64] {
        let (mut r, mut o) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            r.push(raw(concurrency).await);
            o.push(ours(&rt, concurrency).await);
        }
        report(Figure {
            id: "B1",
            measure: &format!("local ask / raw ractor call, {concurrency} in flight"),
            ours: median(o),
            baseline: median(r),
            unit: "ops/s",
            target: (">=", 0.8),
        });
    }
    rt.shutdown().await?;
    Ok(())
}
