//! B2 and B10: asks across nodes, against raw NATS request/reply in the same run.
//!
//! Two cluster nodes run in this process on one nats-server (started by the bench); node-1
//! asks actors whose shards node-2 owns, so every ask crosses NATS.
//!
//! - B2: cross-node ask throughput ÷ raw async-nats request/reply to a trivial responder, at 1
//!   and 64 in flight, in paired rounds (the median of the pairs' ratios, with its spread).
//! - B10: first ask to a never-activated remote actor (activation from JetStream included) ÷ a
//!   warm remote ask, medians.

#[path = "../tests/common/nats.rs"]
#[allow(dead_code)]
mod nats;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use aether::prelude::*;
use aether::{ClusterConfig, Runtime};
use futures_util::StreamExt;
use support::{Figure, Probe, ProbeCmd, median, pairs, report, report_paired, throughput};

async fn raw(
    client: async_nats::Client,
    responder_client: async_nats::Client,
    concurrency: usize,
    duration: Duration,
) -> f64 {
    // A subject of its own per round: no round's requests are answered by the last round's
    // responder while it stops.
    static ROUND: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let round = ROUND.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let subject: &'static str = format!("rawbench.echo.{round}").leak();
    let mut sub = responder_client
        .subscribe(subject)
        .await
        .expect("subscribe");
    responder_client.flush().await.expect("flush");
    let responder = tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            if let Some(reply) = msg.reply {
                let _ = responder_client.publish(reply, msg.payload).await;
            }
        }
    });
    let payload = bytes::Bytes::from(vec![1u8; 160]);
    // `flush` only writes the SUB out: the server may still take the other connection's first
    // request before it. Ask until the responder answers.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.request(subject, payload.clone()).await {
            Ok(_) => break,
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                assert!(
                    Instant::now() < deadline,
                    "the raw responder never subscribed"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(e) => panic!("request: {e}"),
        }
    }
    let ops = throughput(concurrency, duration, move |_| {
        let (client, payload) = (client.clone(), payload.clone());
        async move {
            let answer = client.request(subject, payload).await.expect("request");
            std::hint::black_box(answer);
        }
    })
    .await;
    responder.abort();
    ops
}

async fn node(url: &str, id: &str) -> anyhow::Result<Runtime> {
    Ok(Runtime::join_cluster(
        ClusterConfig::new(url, "bench").node_id(id),
        Runtime::builder().register::<Probe>(),
    )
    .await?)
}

fn remote_ids(rt: &Runtime, owner: &str, prefix: &str, n: usize) -> Vec<String> {
    let cluster = rt.cluster().expect("cluster node");
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|id| cluster.locate::<Probe>(id).owner.as_deref() == Some(owner))
        .take(n)
        .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let server = nats::NatsServer::start();
    let url = server.url();
    let n1 = node(&url, "node-1").await?;
    let n2 = node(&url, "node-2").await?;
    // Both nodes in the map, each serving its shards.
    for n in [&n1, &n2] {
        let cluster = n.cluster().expect("a cluster node");
        cluster.settled_with(2, Duration::from_secs(20)).await?;
    }

    // B2
    let client = async_nats::connect(&url).await?;
    let responder = if std::env::var("B2_ONE_CONN").is_ok() {
        client.clone()
    } else {
        async_nats::connect(&url).await?
    };
    // Knobs for profiling one side: `B2_IN_FLIGHT=64` measures only that level, `B2_SIDE=ours`
    // or `raw` only that side (its figure then compares against 0).
    let levels: Vec<usize> = match std::env::var("B2_IN_FLIGHT") {
        Ok(n) => vec![n.parse()?],
        Err(_) => vec![1, 64],
    };
    let side = std::env::var("B2_SIDE").unwrap_or_default();
    for concurrency in levels {
        let ids = remote_ids(&n1, "node-2", &format!("warm{concurrency}"), concurrency);
        let refs: Arc<Vec<ActorRef<Probe>>> = Arc::new(
            ids.iter()
                .map(|id| n1.actor::<Probe>(id))
                .collect::<Result<_, _>>()?,
        );
        for r in refs.iter() {
            r.ask(ProbeCmd::Get).await?;
        }
        // Paired rounds, the side that goes first alternating, so drift on this shared machine
        // (the server's and the nodes' caches, neighbours) lands on both sides of each ratio.
        let (rounds, round) = pairs();
        let (mut r, mut o) = (Vec::new(), Vec::new());
        for i in 0..rounds {
            for ours_now in [i % 2 == 0, i % 2 == 1] {
                if !ours_now {
                    if side != "ours" {
                        r.push(raw(client.clone(), responder.clone(), concurrency, round).await);
                    }
                    continue;
                }
                if side == "raw" {
                    continue;
                }
                let refs = refs.clone();
                o.push(
                    throughput(concurrency, round, move |w| {
                        let refs = refs.clone();
                        async move {
                            refs[w].ask(ProbeCmd::Get).await.expect("remote ask");
                        }
                    })
                    .await,
                );
            }
        }
        if !side.is_empty() {
            println!("B2 {concurrency} in flight, {side} only: ours {o:?} raw {r:?} ops/s");
            continue;
        }
        report_paired(
            Figure {
                id: "B2",
                measure: &format!(
                    "cross-node ask / raw NATS request-reply, {concurrency} in flight"
                ),
                ours: median(o.clone()),
                baseline: median(r.clone()),
                unit: "ops/s",
                target: (">=", 0.7),
            },
            &o,
            &r,
        );
    }

    if !side.is_empty() {
        return Ok(());
    }
    // B10
    let cold_ids = remote_ids(&n1, "node-2", "cold", 200);
    let mut cold = Vec::new();
    for id in &cold_ids {
        let r = n1.actor::<Probe>(id)?;
        let t = Instant::now();
        r.ask(ProbeCmd::Get).await?;
        cold.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut warm = Vec::new();
    for id in &cold_ids {
        let r = n1.actor::<Probe>(id)?;
        let t = Instant::now();
        r.ask(ProbeCmd::Get).await?;
        warm.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (cold, warm) = (median(cold), median(warm));
    report(Figure {
        id: "B10",
        measure: "first ask to a never-activated remote actor / warm remote ask (p50)",
        ours: cold,
        baseline: warm,
        unit: "ms",
        target: ("<=", 3.0),
    });
    n1.shutdown().await?;
    n2.shutdown().await?;
    Ok(())
}
