//! Retention: with `retention` set, history behind each snapshot is removed from the store —
//! the embedded store deletes and compacts, JetStream purges (on cluster nodes, R1 and R3) — so
//! the space comes back, actors load with the same state from their snapshots, and a read from
//! before the horizon gets a typed answer saying where history starts.
//!
//! Each test writes history with retention off first, measures the space it takes, then runs
//! the same data with retention on and polls until the space has shrunk.

mod common;

use std::path::Path;
use std::time::Duration;

use aether::prelude::*;
use aether::store::{EmbeddedOptions, EmbeddedStore, EventStore, JetStreamOptions, JetStreamStore};
use aether::{ActorKey, AskError, CallError, ClusterConfig, Runtime, StoreError};
use aether_testkit::nats::{NatsCluster, NatsServer};
use common::{key, ns};

const WAIT: Duration = Duration::from_secs(60);
const ACTORS: usize = 4;
/// Writes per actor before retention is turned on, and after.
const BEFORE: u64 = 200;
const AFTER: u64 = 30;
/// Bytes of text per write: the history is big enough to see on disk.
const TEXT: usize = 2_000;
const KEEP: u64 = 10;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Write(pub String);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Totals;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum JournalEvent {
    Written(String),
}

#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
#[error("never")]
pub struct Never;

/// An actor with big events and a small state: `(writes, bytes written)`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, EventSourcedActor)]
#[actor(kind = "journal", event = JournalEvent, error = Never,
        commands(Write -> u64, Totals -> (u64, u64)), snapshot_every = 25)]
pub struct Journal {
    pub writes: u64,
    pub bytes: u64,
}

impl Handle<Write> for Journal {
    async fn handle(&self, cmd: Write, _: &mut Ctx<Self>) -> Result<Effect<Self, u64>, Never> {
        Ok(Effect::persist(JournalEvent::Written(cmd.0)).reply_with(|s: &Self| s.writes))
    }
}

impl Handle<Totals> for Journal {
    async fn handle(
        &self,
        _: Totals,
        _: &mut Ctx<Self>,
    ) -> Result<Effect<Self, (u64, u64)>, Never> {
        Ok(Effect::reply((self.writes, self.bytes)))
    }
}

impl Behavior for Journal {
    fn apply(&mut self, event: &JournalEvent) {
        let JournalEvent::Written(text) = event;
        self.writes += 1;
        self.bytes += text.len() as u64;
    }
}

/// The same kind at another state version, with no migration: it cannot use `Journal`'s
/// snapshots, and with history removed it cannot replay either.
mod reshaped {
    use super::*;

    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, EventSourcedActor)]
    #[actor(kind = "journal", event = JournalEvent, error = Never,
            commands(Totals -> (u64, u64)), state_version = 1)]
    pub struct Journal {
        pub writes: u64,
        pub bytes: u64,
    }

    impl Handle<Totals> for Journal {
        async fn handle(
            &self,
            _: Totals,
            _: &mut Ctx<Self>,
        ) -> Result<Effect<Self, (u64, u64)>, Never> {
            Ok(Effect::reply((self.writes, self.bytes)))
        }
    }

    impl Behavior for Journal {
        fn apply(&mut self, event: &JournalEvent) {
            let JournalEvent::Written(text) = event;
            self.writes += 1;
            self.bytes += text.len() as u64;
        }
    }
}

fn id(i: usize) -> String {
    format!("j-{i}")
}

/// `writes` more writes to every actor, the actors in parallel.
async fn write_all(rt: &Runtime, writes: u64) {
    let tasks: Vec<_> = (0..ACTORS)
        .map(|i| {
            let journal = rt.actor::<Journal>(id(i)).unwrap();
            tokio::spawn(async move {
                for _ in 0..writes {
                    journal.ask(Write("x".repeat(TEXT))).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

/// Every actor holds `writes` writes of `TEXT` bytes.
async fn assert_totals(rt: &Runtime, writes: u64) {
    for i in 0..ACTORS {
        let totals = rt
            .actor::<Journal>(id(i))
            .unwrap()
            .ask(Totals)
            .await
            .unwrap();
        assert_eq!(totals, (writes, writes * TEXT as u64), "{}", id(i));
    }
}

/// Polls `what` until it holds or the deadline passes.
async fn poll_until<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Bytes of the files under `dir`.
fn disk_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            total += if meta.is_dir() {
                disk_bytes(&entry.path())
            } else {
                meta.len()
            };
        }
    }
    total
}

/// A read from version 1 of every actor says where its history now starts (past the first
/// snapshot), and `history_start` agrees.
async fn assert_horizon(store: &dyn EventStore, namespace: &str) {
    for i in 0..ACTORS {
        let actor: ActorKey = key(namespace, "journal", &id(i));
        let start = store.history_start(&actor).await.unwrap();
        assert!(start > BEFORE, "{actor}: history starts at {start}");
        match store.read(&actor, 1).await {
            Err(StoreError::HistoryTruncated {
                requested,
                starts_at,
                ..
            }) => assert_eq!((requested, starts_at), (1, start)),
            other => panic!("{actor}: a read from 1 must be refused, got {other:?}"),
        }
        let kept = store.read(&actor, start).await.unwrap();
        assert!(
            kept.len() as u64 <= KEEP + 25,
            "{actor}: {} events kept",
            kept.len()
        );
    }
}

fn embedded(dir: &Path, retention: Option<u64>) -> aether::RuntimeBuilder {
    Runtime::builder()
        .namespace("ret")
        .data_dir(dir)
        .embedded_options(EmbeddedOptions {
            compact_after_removed_bytes: 256 * 1024,
            ..EmbeddedOptions::default()
        })
        .retention(retention)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_gives_the_space_of_old_history_back() {
    let dir = tempfile::tempdir().unwrap();
    let rt = embedded(dir.path(), None)
        .register::<Journal>()
        .start()
        .await
        .unwrap();
    write_all(&rt, BEFORE).await;
    rt.shutdown().await.unwrap();
    let full = disk_bytes(dir.path());
    let history = ACTORS as u64 * BEFORE * TEXT as u64;
    assert!(
        full > history,
        "{full} bytes on disk for {history} bytes of events"
    );

    // Retention on: the next snapshots remove what lies behind them, and compaction gives the
    // space back.
    let rt = embedded(dir.path(), Some(KEEP))
        .register::<Journal>()
        .start()
        .await
        .unwrap();
    assert_totals(&rt, BEFORE).await;
    write_all(&rt, AFTER).await;
    poll_until("one truncation per actor", || {
        let n = rt.stats().history_truncations;
        async move { n >= ACTORS as u64 }
    })
    .await;
    poll_until("the data directory to shrink to under half", || {
        let now = disk_bytes(dir.path());
        async move { now < full / 2 }
    })
    .await;
    eprintln!(
        "embedded: {full} bytes before retention, {} after",
        disk_bytes(dir.path())
    );
    assert_totals(&rt, BEFORE + AFTER).await;
    rt.shutdown().await.unwrap();

    // Loaded again from the snapshots: the same state.
    let rt = embedded(dir.path(), Some(KEEP))
        .register::<Journal>()
        .start()
        .await
        .unwrap();
    assert_totals(&rt, BEFORE + AFTER).await;
    rt.shutdown().await.unwrap();

    // Code that cannot use those snapshots cannot replay either: it is told why.
    let rt = embedded(dir.path(), Some(KEEP))
        .register::<reshaped::Journal>()
        .start()
        .await
        .unwrap();
    match rt
        .actor::<reshaped::Journal>(id(0))
        .unwrap()
        .ask(Totals)
        .await
    {
        Err(AskError::Failed(CallError::ActivationFailed { reason, .. })) => {
            assert!(reason.contains("removed by retention"), "{reason}");
        }
        other => panic!("expected ActivationFailed, got {other:?}"),
    }
    rt.shutdown().await.unwrap();

    // A reader of the store is told where history starts.
    let store = EmbeddedStore::open(dir.path().join("ret"), ns("ret")).unwrap();
    assert_horizon(&store, "ret").await;
    store.close().await.unwrap();
}

async fn cluster_node(urls: &str, node: &str, replicas: usize, retention: Option<u64>) -> Runtime {
    let config = ClusterConfig::new(urls, "jret")
        .node_id(node)
        .heartbeat(Duration::from_millis(200))
        .failure_timeout(Duration::from_millis(1000))
        .lease(Duration::from_millis(1000))
        .replicas(replicas);
    let rt = Runtime::join_cluster(
        config,
        Runtime::builder()
            .register::<Journal>()
            .retention(retention),
    )
    .await
    .unwrap();
    rt.cluster()
        .unwrap()
        .settled_with(1, WAIT)
        .await
        .expect("the node settles");
    rt
}

/// The bytes the namespace's event stream holds on the server.
async fn stream_bytes(urls: &str) -> u64 {
    let first = urls.split(',').next().unwrap_or(urls);
    let client = async_nats::connect(first).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("jret_events").await.unwrap();
    stream.info().await.unwrap().state.bytes
}

async fn jetstream_retention(urls: &str, replicas: usize) {
    let node = cluster_node(urls, "node-1", replicas, None).await;
    write_all(&node, BEFORE).await;
    node.shutdown().await.unwrap();
    let full = stream_bytes(urls).await;
    let history = ACTORS as u64 * BEFORE * TEXT as u64;
    assert!(
        full > history,
        "{full} bytes in the stream for {history} bytes of events"
    );

    // The node restarts with retention on (set like any other setting of a cluster node).
    let node = cluster_node(urls, "node-1", replicas, Some(KEEP)).await;
    assert_totals(&node, BEFORE).await;
    write_all(&node, AFTER).await;
    poll_until("the stream to shrink to under half", || async {
        stream_bytes(urls).await < full / 2
    })
    .await;
    eprintln!(
        "JetStream R{replicas}: {full} bytes before retention, {} after",
        stream_bytes(urls).await
    );
    assert!(node.stats().history_truncations >= ACTORS as u64);
    assert_totals(&node, BEFORE + AFTER).await;
    node.shutdown().await.unwrap();

    let node = cluster_node(urls, "node-2", replicas, Some(KEEP)).await;
    assert_totals(&node, BEFORE + AFTER).await;
    node.shutdown().await.unwrap();

    let store = JetStreamStore::connect(
        urls,
        "jret",
        JetStreamOptions {
            replicas,
            ..JetStreamOptions::default()
        },
    )
    .await
    .unwrap();
    assert_horizon(&store, "jret").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_purges_jetstream_behind_its_snapshots_r1() {
    let server = NatsServer::start();
    jetstream_retention(&server.url(), 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_purges_jetstream_behind_its_snapshots_r3() {
    let cluster = NatsCluster::start();
    aether_testkit::nats::wait_for_jetstream(&cluster.urls()).await;
    jetstream_retention(&cluster.urls(), 3).await;
}
