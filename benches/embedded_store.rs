//! Persisted-command throughput on the embedded store, against raw baselines of the same run.
//!
//! - raw fsync: `write(200 bytes) + fdatasync` in a loop on the same disk;
//! - raw engine: fjall batches of 64 records, each batch synced (the engine's best case at 64
//!   in flight, with no runtime and no validation);
//! - store: `EmbeddedStore::append` from 64 concurrent writers (group commit);
//! - runtime: 64 actors in flight, each ask persisting one event.
//!
//! Reports runtime ÷ raw engine, runtime ÷ store, and B11 = runtime commits/s ÷ raw fsyncs/s.

mod support;

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use aether::prelude::*;
use aether::store::{EmbeddedStore, EventStore, NewCommit};
use aether::wire::EventData;
use aether::{ActorId, ActorKey, Kind, Namespace};
use support::{Figure, Probe, ProbeCmd, measure_time, report, throughput};

const IN_FLIGHT: usize = 64;

fn raw_fsync(dir: &std::path::Path) -> f64 {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("raw.log"))
        .expect("open");
    let record = [7u8; 200];
    let (start, d) = (Instant::now(), measure_time());
    let mut n = 0u64;
    while start.elapsed() < d {
        f.write_all(&record).expect("write");
        f.sync_data().expect("fdatasync");
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn raw_engine(dir: &std::path::Path) -> f64 {
    let db = fjall::Database::builder(dir.join("raw-fjall"))
        .open()
        .expect("fjall");
    let ks = db
        .keyspace("events", fjall::KeyspaceCreateOptions::default)
        .expect("keyspace");
    let (start, d) = (Instant::now(), measure_time());
    let mut n = 0u64;
    while start.elapsed() < d {
        let mut batch = db.batch().durability(Some(fjall::PersistMode::SyncData));
        for i in 0..IN_FLIGHT {
            let mut key = format!("bench.probe.p{i}\0").into_bytes();
            key.extend_from_slice(&n.to_be_bytes());
            batch.insert(&ks, key, vec![7u8; 200]);
        }
        batch.commit().expect("commit");
        n += 1;
    }
    (n * IN_FLIGHT as u64) as f64 / start.elapsed().as_secs_f64()
}

async fn store_direct(dir: &std::path::Path) -> f64 {
    let ns = Namespace::new("bench-store").expect("ns");
    let store = Arc::new(EmbeddedStore::open(dir.join("store"), ns.clone()).expect("store"));
    let keys: Arc<Vec<ActorKey>> = Arc::new(
        (0..IN_FLIGHT)
            .map(|i| {
                ActorKey::new(
                    ns.clone(),
                    Kind::new("probe").expect("kind"),
                    ActorId::new(format!("p{i}")).expect("id"),
                )
            })
            .collect(),
    );
    let versions: Arc<Vec<std::sync::atomic::AtomicU64>> =
        Arc::new((0..IN_FLIGHT).map(|_| Default::default()).collect());
    let s = Arc::clone(&store);
    let ops = throughput(IN_FLIGHT, measure_time(), move |w| {
        let (store, keys, versions) = (s.clone(), keys.clone(), versions.clone());
        async move {
            let v = versions[w].load(std::sync::atomic::Ordering::Relaxed);
            let commit = NewCommit::new(
                CommandId::random(),
                vec![EventData {
                    event_type: "Added".into(),
                    payload: vec![7u8; 8],
                    schema_version: 0,
                }],
            );
            let a = store.append(&keys[w], v, commit).await.expect("append");
            versions[w].store(a.last_version, std::sync::atomic::Ordering::Relaxed);
        }
    })
    .await;
    store.close().await.expect("close");
    ops
}

async fn runtime(dir: &std::path::Path) -> anyhow::Result<f64> {
    let rt = Runtime::builder()
        .namespace("bench-runtime")
        .register::<Probe>()
        .data_dir(dir.join("runtime"))
        .start()
        .await?;
    let refs: Arc<Vec<ActorRef<Probe>>> = Arc::new(
        (0..IN_FLIGHT)
            .map(|i| rt.actor::<Probe>(format!("p{i}")))
            .collect::<Result<_, _>>()?,
    );
    for r in refs.iter() {
        r.ask(ProbeCmd::Get).await?;
    }
    let ops = throughput(IN_FLIGHT, measure_time(), move |w| {
        let refs = refs.clone();
        async move {
            refs[w].ask(ProbeCmd::Add(1)).await.expect("persisted ask");
        }
    })
    .await;
    rt.shutdown().await?;
    Ok(ops)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    // On the project's disk (target/), not a RAM-backed /tmp.
    std::fs::create_dir_all("target/bench-data")?;
    let dir = tempfile::tempdir_in("target/bench-data")?;
    let fsyncs = raw_fsync(dir.path());
    let engine = raw_engine(dir.path());
    let store = store_direct(dir.path()).await;
    let ours = runtime(dir.path()).await?;
    println!(
        "raw fsync {fsyncs:.0}/s, raw fjall {engine:.0} records/s, store {store:.0} commits/s, runtime {ours:.0} commits/s"
    );
    report(Figure {
        id: "B11",
        measure: "embedded durable commits/s (64 in flight) / raw fsyncs/s",
        ours,
        baseline: fsyncs,
        unit: "ops/s",
        target: (">=", 5.0),
    });
    report(Figure {
        id: "E1",
        measure: "runtime persisted commands / raw fjall synced batches of 64",
        ours,
        baseline: engine,
        unit: "ops/s",
        target: (">=", 0.5),
    });
    report(Figure {
        id: "E2",
        measure: "runtime persisted commands / EmbeddedStore::append direct",
        ours,
        baseline: store,
        unit: "ops/s",
        target: (">=", 0.8),
    });
    Ok(())
}
