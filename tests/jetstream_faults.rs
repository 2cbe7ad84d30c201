//! The JetStream store and the runtime on it under server faults: restarts, a lost cluster
//! member, a server that is down. Each test asserts that no acknowledged commit is lost.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aether::prelude::*;
use aether::store::{EventStore, JetStreamOptions, JetStreamStore, StoreError};
use aether::{ActorKey, Runtime};
use common::nats::{NatsCluster, NatsServer, wait_for_jetstream};
use common::*;
use parking_lot::Mutex;

/// Acknowledged commits: (stream index, last version) → command id.
type Acked = Arc<Mutex<HashMap<(usize, u64), CommandId>>>;

/// `writers` tasks append to their own streams until `stop`; every acknowledged commit is
/// recorded with the time it was acknowledged.
fn start_writers(
    store: Arc<JetStreamStore>,
    namespace: &'static str,
    writers: usize,
    stop: Arc<AtomicBool>,
    acked: Acked,
    ack_times: Arc<Mutex<Vec<Instant>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..writers)
        .map(|w| {
            let (store, stop, acked, ack_times) = (
                Arc::clone(&store),
                Arc::clone(&stop),
                Arc::clone(&acked),
                Arc::clone(&ack_times),
            );
            tokio::spawn(async move {
                let actor = key(namespace, "account", &format!("writer-{w}"));
                let mut version = None;
                while !stop.load(Ordering::Relaxed) {
                    let v = match version {
                        Some(v) => v,
                        None => match store.latest_version(&actor).await {
                            Ok(v) => v,
                            Err(_) => {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                continue;
                            }
                        },
                    };
                    let commit = commit_of(&[v + 1]);
                    let id = commit.command_id;
                    match store.append(&actor, v, commit).await {
                        Ok(a) => {
                            acked.lock().insert((w, a.last_version), id);
                            ack_times.lock().push(Instant::now());
                            version = Some(a.last_version);
                        }
                        Err(_) => {
                            // Unknown or refused: learn the truth from the store again.
                            version = None;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            })
        })
        .collect()
}

async fn verify_acked(store: &JetStreamStore, namespace: &str, acked: &Acked) -> usize {
    let acked = acked.lock().clone();
    let mut by_stream: HashMap<usize, Vec<(u64, CommandId)>> = HashMap::new();
    for ((w, v), id) in &acked {
        by_stream.entry(*w).or_default().push((*v, *id));
    }
    for (w, commits) in by_stream {
        let actor: ActorKey = key(namespace, "account", &format!("writer-{w}"));
        let report = store.read_with_errors(&actor, 1).await.expect("read back");
        assert!(report.corrupt.is_empty());
        let stored: HashMap<u64, CommandId> = report
            .commits
            .iter()
            .map(|c| (c.last_version(), c.command_id))
            .collect();
        let versions: Vec<u64> = report.commits.iter().map(|c| c.last_version()).collect();
        assert_eq!(
            versions,
            (1..=versions.len() as u64).collect::<Vec<_>>(),
            "writer {w}: gapless"
        );
        for (v, id) in commits {
            assert_eq!(
                stored.get(&v),
                Some(&id),
                "writer {w}: acknowledged v{v} lost"
            );
        }
    }
    acked.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_server_under_load_loses_no_acknowledged_commit() {
    let mut server = NatsServer::start();
    let options = JetStreamOptions {
        request_timeout: Duration::from_millis(800),
        ..Default::default()
    };
    let store = Arc::new(
        JetStreamStore::connect(&server.url(), "restart", options.clone())
            .await
            .unwrap(),
    );
    let (stop, acked, times) = (
        Arc::new(AtomicBool::new(false)),
        Acked::default(),
        Arc::new(Mutex::new(Vec::new())),
    );
    let tasks = start_writers(
        Arc::clone(&store),
        "restart",
        8,
        Arc::clone(&stop),
        Arc::clone(&acked),
        Arc::clone(&times),
    );
    poll_until(
        Duration::from_secs(10),
        "commits before the restart",
        || async { acked.lock().len() >= 200 },
    )
    .await;
    tokio::task::block_in_place(|| server.restart());
    let restarted = Instant::now();
    poll_until(
        Duration::from_secs(20),
        "commits after the restart",
        || async { times.lock().iter().filter(|t| **t > restarted).count() >= 200 },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let fresh = JetStreamStore::connect(&server.url(), "restart", options)
        .await
        .unwrap();
    let n = verify_acked(&fresh, "restart", &acked).await;
    println!("{n} acknowledged commits, all present after the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_stream_leader_of_a_cluster_keeps_commits_flowing() {
    let mut cluster = NatsCluster::start();
    wait_for_jetstream(&cluster.urls()).await;
    let options = JetStreamOptions {
        replicas: 3,
        request_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let store = Arc::new(
        JetStreamStore::connect(&cluster.urls(), "r3load", options.clone())
            .await
            .unwrap(),
    );
    let (stop, acked, times) = (
        Arc::new(AtomicBool::new(false)),
        Acked::default(),
        Arc::new(Mutex::new(Vec::new())),
    );
    let tasks = start_writers(
        Arc::clone(&store),
        "r3load",
        8,
        Arc::clone(&stop),
        Arc::clone(&acked),
        Arc::clone(&times),
    );
    poll_until(
        Duration::from_secs(10),
        "commits before the kill",
        || async { acked.lock().len() >= 200 },
    )
    .await;
    // Kill the server that leads the stream, so the leader has to move.
    let client = async_nats::connect(cluster.servers[0].url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let info = js
        .get_stream("r3load_events")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    let leader = info
        .cluster
        .and_then(|c| c.leader)
        .expect("a clustered stream has a leader");
    let victim = cluster
        .servers
        .iter()
        .position(|s| s.name == leader)
        .expect("leader is one of ours");
    cluster.servers[victim].kill();
    let killed = Instant::now();
    poll_until(
        Duration::from_secs(30),
        "commits after the leader died",
        || async { times.lock().iter().filter(|t| **t > killed).count() >= 200 },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let survivors: String = cluster
        .servers
        .iter()
        .filter(|s| s.is_running())
        .map(|s| s.url())
        .collect::<Vec<_>>()
        .join(",");
    let fresh = JetStreamStore::connect(&survivors, "r3load", options)
        .await
        .unwrap();
    let n = verify_acked(&fresh, "r3load", &acked).await;
    println!("{n} acknowledged commits, all present after losing stream leader {leader}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asks_fail_fast_while_the_server_is_down_and_recover_after() {
    let mut server = NatsServer::start();
    let rt = Runtime::builder()
        .namespace("outage")
        .register::<Counter>()
        .jetstream_with(
            server.url(),
            JetStreamOptions {
                request_timeout: Duration::from_millis(500),
                ..Default::default()
            },
        )
        .ask_timeout(Duration::from_secs(2))
        .start()
        .await
        .unwrap();
    let active = rt.actor::<Counter>("active").unwrap();
    assert_eq!(active.ask(CounterCmd::Add(5)).await.unwrap(), 5);

    tokio::task::block_in_place(|| server.kill());
    // Once the client has noticed, asks fail at once with Unavailable. (Add(0) stores an event
    // but leaves the total alone: an ask caught mid-flight by the kill may or may not land.)
    poll_until(Duration::from_secs(10), "an Unavailable answer", || async {
        matches!(
            active.ask(CounterCmd::Add(0)).await,
            Err(AskError::Failed(CallError::Unavailable { .. }))
        )
    })
    .await;
    let deadline = rt.config().ask_timeout();
    for (name, cmd) in [("active", CounterCmd::Add(0)), ("new", CounterCmd::Get)] {
        let actor = rt.actor::<Counter>(name).unwrap();
        let started = Instant::now();
        let result = actor.ask(cmd).await;
        assert!(
            matches!(result, Err(AskError::Failed(CallError::Unavailable { .. }))),
            "{name}: {result:?}"
        );
        assert!(
            started.elapsed() < deadline,
            "{name}: answered within the deadline"
        );
    }

    tokio::task::block_in_place(|| server.restart());
    poll_until(
        Duration::from_secs(20),
        "writes to succeed again",
        || async { active.ask(CounterCmd::Add(0)).await.is_ok() },
    )
    .await;
    // The state from before the outage is intact, and new commits land.
    assert_eq!(active.ask(CounterCmd::Get).await.unwrap(), 5);
    assert_eq!(active.ask(CounterCmd::Add(1)).await.unwrap(), 6);
    let fresh = rt.actor::<Counter>("new").unwrap();
    assert_eq!(fresh.ask(CounterCmd::Add(2)).await.unwrap(), 2);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_runtime_runs_on_jetstream() {
    let server = NatsServer::start();
    let build = || {
        Runtime::builder()
            .namespace("rt-js")
            .register::<Counter>()
            .register::<Tally>()
            .jetstream(server.url())
            .start()
    };
    let rt = build().await.unwrap();
    assert!(rt.store_location().contains("rt-js_events"));
    let a = rt.actor::<Counter>("a").unwrap();
    let b = rt.actor::<Counter>("b").unwrap();
    a.ask(CounterCmd::AddVia {
        target: b.clone(),
        n: 7,
    })
    .await
    .unwrap();
    let t = rt.actor::<Tally>("t").unwrap();
    for n in 1..=25 {
        t.ask(CounterCmd::Add(n)).await.unwrap();
    }
    let digest = a.ask(CounterCmd::Digest).await.unwrap();
    rt.shutdown().await.unwrap();

    let rt = build().await.unwrap();
    let a = rt.actor::<Counter>("a").unwrap();
    assert_eq!(a.ask(CounterCmd::Digest).await.unwrap(), digest);
    assert_eq!(
        rt.actor::<Counter>("b")
            .unwrap()
            .ask(CounterCmd::Get)
            .await
            .unwrap(),
        7
    );
    assert_eq!(
        rt.actor::<Tally>("t")
            .unwrap()
            .ask(CounterCmd::Get)
            .await
            .unwrap(),
        325
    );
    assert_eq!(
        rt.stats().replayed_events,
        0,
        "all restored from their passivation snapshots"
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn appends_to_a_stopped_server_are_unavailable_not_hung() {
    let mut server = NatsServer::start();
    let store = JetStreamStore::connect(
        &server.url(),
        "down",
        JetStreamOptions {
            request_timeout: Duration::from_millis(300),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let a = key("down", "account", "a");
    store.append(&a, 0, commit_of(&[1])).await.unwrap();
    server.kill();
    poll_until(
        Duration::from_secs(5),
        "the client to see the outage",
        || async {
            matches!(
                store.append(&a, 1, commit_of(&[2])).await,
                Err(StoreError::Unavailable(_))
            )
        },
    )
    .await;
    let err = store.append(&a, 1, commit_of(&[2])).await.unwrap_err();
    assert!(err.nothing_written(), "{err}");
}

#[tokio::test]
async fn a_paused_server_gives_bounded_unknown_outcomes_then_recovers() {
    let server = NatsServer::start();
    let store = JetStreamStore::connect(
        &server.url(),
        "paused",
        JetStreamOptions {
            request_timeout: Duration::from_millis(300),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let a = key("paused", "account", "a");
    store.append(&a, 0, commit_of(&[1])).await.unwrap();
    server.pause();
    // The connection is still up, so the commit is sent; no ack comes back in time.
    let commit = commit_of(&[2]);
    let started = Instant::now();
    let err = store.append(&a, 1, commit.clone()).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded by the request timeout"
    );
    assert!(matches!(err, StoreError::OutcomeUnknown(_)), "{err:?}");
    assert!(!err.nothing_written());
    server.resume();
    // Retrying the same commit resolves the unknown outcome either way, exactly once.
    let retried = poll_retry(&store, &a, commit).await;
    assert_eq!(retried.last_version, 2);
    assert_eq!(store.read(&a, 1).await.unwrap().len(), 2);
}

async fn poll_retry(
    store: &JetStreamStore,
    a: &ActorKey,
    commit: aether::store::NewCommit,
) -> aether::store::Appended {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.append(a, 1, commit.clone()).await {
            Ok(appended) => return appended,
            Err(e)
                if Instant::now() < deadline
                    && !matches!(e, StoreError::VersionConflict { .. }) =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("retry after resume failed: {e}"),
        }
    }
}
