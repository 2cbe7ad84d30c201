//! B4 and B5 on a real nats-server (JetStream, file storage, R1), started by the bench.
//!
//! - B4: persisted commands per second through the runtime (64 actors in flight) ÷ raw
//!   JetStream publish-with-ack of the same headers at the same concurrency.
//! - B4c: the same asked from another cluster node (every ask crosses NATS to the owner, which
//!   stores its event in JetStream) ÷ the same raw publish-with-ack, measured right after.
//! - B5a: activation of an actor with a snapshot ÷ activation replaying 10 000 events.
//! - B5b: activation replaying 10 000 events ÷ a raw batched direct get of the same messages.

#[path = "../tests/common/nats.rs"]
#[allow(dead_code)]
mod nats;
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aether::prelude::*;
use aether::store::{JetStreamStore, NewCommit, Snapshot, SnapshotStore};
use aether::wire::{EventData, codec};
use aether::{ActorId, ActorKey, Kind, Namespace};
use bytes::Bytes;
use futures_util::StreamExt;
use support::{Figure, Probe, ProbeCmd, ProbeEvent, measure_time, median, report, throughput};

const IN_FLIGHT: usize = 64;
const EVENTS: u64 = 10_000;

/// Raw baseline of B4: each task publishes to its own subject (under `round`, so every round
/// starts its subjects afresh), awaiting every ack, with the headers an Aether commit carries.
async fn raw_publish(js: async_nats::jetstream::Context, round: &'static str) -> f64 {
    let seqs: Arc<Vec<AtomicU64>> = Arc::new((0..IN_FLIGHT).map(|_| AtomicU64::new(0)).collect());
    let payload = Bytes::from(vec![7u8; 120]);
    throughput(IN_FLIGHT, measure_time(), move |w| {
        let (js, seqs, payload) = (js.clone(), seqs.clone(), payload.clone());
        async move {
            let last = seqs[w].load(Ordering::Relaxed);
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", CommandId::random().to_string().as_str());
            headers.insert(
                "Nats-Expected-Last-Subject-Sequence",
                last.to_string().as_str(),
            );
            headers.insert("Aether-Version", "1");
            headers.insert("Aether-First-Version", "1");
            let ack = js
                .publish_with_headers(format!("rawbench.events.{round}.p{w}"), headers, payload)
                .await
                .expect("publish")
                .await
                .expect("ack");
            seqs[w].store(ack.sequence, Ordering::Relaxed);
        }
    })
    .await
}

async fn runtime_commands(url: &str) -> anyhow::Result<f64> {
    let rt = Runtime::builder()
        .namespace("b4")
        .register::<Probe>()
        .jetstream(url)
        .start()
        .await?;
    let refs = (0..IN_FLIGHT)
        .map(|i| rt.actor::<Probe>(format!("p{i}")))
        .collect::<Result<_, _>>()?;
    let ops = persisted_asks(refs).await?;
    rt.shutdown().await?;
    Ok(ops)
}

/// Activates every actor of `refs`, then asks each, one caller per actor, to persist an event,
/// for the measuring time: asks per second.
async fn persisted_asks(refs: Vec<ActorRef<Probe>>) -> anyhow::Result<f64> {
    for r in &refs {
        r.ask(ProbeCmd::Get).await?;
    }
    let refs = Arc::new(refs);
    Ok(throughput(refs.len(), measure_time(), move |w| {
        let refs = refs.clone();
        async move {
            refs[w].ask(ProbeCmd::Add(1)).await.expect("persisted ask");
        }
    })
    .await)
}

/// B4c: persisted commands per second asked from one cluster node of 64 actors that another
/// node owns (every ask crosses NATS, then its event is stored in JetStream on the owner).
async fn cross_node_commands(url: &str) -> anyhow::Result<f64> {
    let node = |id: &'static str| {
        Runtime::join_cluster(
            aether::ClusterConfig::new(url, "b4c").node_id(id),
            Runtime::builder().register::<Probe>(),
        )
    };
    let (caller, owner) = (node("node-1").await?, node("node-2").await?);
    for rt in [&caller, &owner] {
        let cluster = rt.cluster().expect("a cluster node");
        cluster.settled_with(2, Duration::from_secs(20)).await?;
    }
    let cluster = caller.cluster().expect("a cluster node");
    let refs = (0..)
        .map(|i| format!("x{i}"))
        .filter(|id| cluster.locate::<Probe>(id).owner.as_deref() == Some("node-2"))
        .take(IN_FLIGHT)
        .map(|id| caller.actor::<Probe>(id))
        .collect::<Result<_, _>>()?;
    let ops = persisted_asks(refs).await?;
    let stats = caller.stats();
    eprintln!(
        "B4c: {} first attempts went in batches to the owner node ({} retried, {} resent)",
        stats.remote_batched, stats.remote_retries, stats.remote_resends
    );
    caller.shutdown().await?;
    owner.shutdown().await?;
    Ok(ops)
}

/// Writes `EVENTS` one-event commits for `id` (pipelined: acks awaited in batches).
async fn fill(js: &async_nats::jetstream::Context, ns: &Namespace, id: &str) -> anyhow::Result<()> {
    let actor = ActorKey::new(ns.clone(), Kind::new("probe")?, ActorId::new(id)?);
    let subject = format!("{ns}.events.probe.{}", actor.id.encoded());
    let mut pending = Vec::new();
    for v in 1..=EVENTS {
        let commit = NewCommit::new(
            CommandId::random(),
            vec![EventData {
                event_type: "Added".into(),
                payload: codec::encode("event", &ProbeEvent::Added(1))?,
                schema_version: 0,
            }],
        );
        let bytes = commit.into_record(&actor, v - 1).encode()?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Aether-Version", v.to_string().as_str());
        headers.insert("Aether-First-Version", v.to_string().as_str());
        pending.push(
            js.publish_with_headers(subject.clone(), headers, Bytes::from(bytes))
                .await?,
        );
        if pending.len() >= 512 {
            for ack in pending.drain(..) {
                ack.await?;
            }
        }
    }
    for ack in pending {
        ack.await?;
    }
    Ok(())
}

/// Time of the first ask to `id` on a fresh runtime (activation = load + one turn).
async fn activation(url: &str, id: &str) -> anyhow::Result<Duration> {
    let rt = Runtime::builder()
        .namespace("b5")
        .register::<Probe>()
        .jetstream(url)
        .snapshot_on_passivation(false)
        .start()
        .await?;
    let r = rt.actor::<Probe>(id)?;
    let started = Instant::now();
    let total = r.ask(ProbeCmd::Get).await?;
    let took = started.elapsed();
    assert_eq!(total, EVENTS, "the whole history was folded");
    rt.shutdown().await?;
    Ok(took)
}

/// Raw baseline of B5b: one batched direct get of the subject, no decoding.
async fn raw_read(client: &async_nats::Client, subject: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut seq = 1u64;
    let mut count = 0u64;
    loop {
        let inbox = client.new_inbox();
        let mut sub = client.subscribe(inbox.clone()).await?;
        let request =
            serde_json::json!({ "seq": seq, "next_by_subj": subject, "batch": 1000 }).to_string();
        client
            .publish_with_reply("$JS.API.DIRECT.GET.b5_events", inbox, request.into())
            .await?;
        let mut pending = 0;
        while let Some(msg) = sub.next().await {
            if msg.status.is_some() {
                break;
            }
            let headers = msg.headers.unwrap_or_default();
            let get = |n: &str| -> u64 {
                headers
                    .get(n)
                    .and_then(|v| v.as_str().parse().ok())
                    .unwrap_or(0)
            };
            pending = get("Nats-Num-Pending");
            seq = get("Nats-Sequence") + 1;
            count += 1;
            std::hint::black_box(&msg.payload);
        }
        if pending == 0 {
            break;
        }
    }
    assert_eq!(count, EVENTS);
    Ok(started.elapsed())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let server = nats::NatsServer::start();
    let url = server.url();
    let client = async_nats::connect(&url).await?;
    let js = async_nats::jetstream::new(client.clone());
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: "rawbench".into(),
        subjects: vec!["rawbench.events.>".into()],
        allow_direct: true,
        ..Default::default()
    })
    .await?;

    // A knob for profiling one side of B4c: `B4C_SIDE=ours` or `raw` measures only that.
    match std::env::var("B4C_SIDE").as_deref() {
        Ok("ours") => {
            println!(
                "B4c ours only: {:.0} ops/s",
                cross_node_commands(&url).await?
            );
            return Ok(());
        }
        Ok(_) => {
            println!(
                "B4c raw only: {:.0} ops/s",
                raw_publish(js.clone(), "b4c").await
            );
            return Ok(());
        }
        Err(_) => {}
    }
    // B4, and B4c across nodes; each beside a raw round of its own.
    let raw = raw_publish(js.clone(), "b4").await;
    let ours = runtime_commands(&url).await?;
    report(Figure {
        id: "B4",
        measure: "persisted commands (JetStream R1, 64 actors) / raw publish-with-ack",
        ours,
        baseline: raw,
        unit: "ops/s",
        target: (">=", 0.5),
    });
    let ours = cross_node_commands(&url).await?;
    let raw = raw_publish(js.clone(), "b4c").await;
    report(Figure {
        id: "B4c",
        measure: "persisted cross-node asks (JetStream R1, 64 in flight) / raw publish-with-ack",
        ours,
        baseline: raw,
        unit: "ops/s",
        target: (">=", 0.6),
    });

    // B5: two actors with 10k events; one also has a snapshot at its last version.
    let store = JetStreamStore::connect(&url, "b5", Default::default()).await?;
    let ns = Namespace::new("b5")?;
    fill(&js, &ns, "replayed").await?;
    fill(&js, &ns, "snapshotted").await?;
    let snapshotted = ActorKey::new(
        ns.clone(),
        Kind::new("probe")?,
        ActorId::new("snapshotted")?,
    );
    let state = Probe { total: EVENTS };
    #[derive(serde::Serialize)]
    struct Payload<'a> {
        format: u16,
        state: &'a Probe,
        recent: Vec<()>,
    }
    store
        .save(
            &snapshotted,
            Snapshot {
                version: EVENTS,
                payload: codec::encode(
                    "snapshot",
                    &Payload {
                        format: 1,
                        state: &state,
                        recent: Vec::new(),
                    },
                )?,
                timestamp_ms: 0,
            },
        )
        .await?;
    let (mut replay, mut snap, mut raw) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        replay.push(activation(&url, "replayed").await?.as_secs_f64());
        snap.push(activation(&url, "snapshotted").await?.as_secs_f64());
        raw.push(
            raw_read(&client, "b5.events.probe.replayed")
                .await?
                .as_secs_f64(),
        );
    }
    let (replay, snap, raw) = (median(replay), median(snap), median(raw));
    println!(
        "activation replaying {EVENTS} events {:.1} ms, with snapshot {:.2} ms, raw batched read {:.1} ms",
        replay * 1e3,
        snap * 1e3,
        raw * 1e3
    );
    report(Figure {
        id: "B5a",
        measure: "activation with snapshot / activation replaying 10k events",
        ours: snap * 1e3,
        baseline: replay * 1e3,
        unit: "ms",
        target: ("<=", 0.05),
    });
    report(Figure {
        id: "B5b",
        measure: "activation replaying 10k events / raw batched read of them",
        ours: replay * 1e3,
        baseline: raw * 1e3,
        unit: "ms",
        target: ("<=", 1.5),
    });
    drop(server);
    Ok(())
}
