//! Hibernation: an idle resident actor leaves its ractor actor, keeps its state in memory, and
//! the next message wakes it without a replay. It stays resident: the cap, the LRU order,
//! passivation and shutdown treat it like any other.

mod common;

use std::sync::Arc;
use std::time::Duration;

use aether::Runtime;
use aether::prelude::*;
use aether::store::SnapshotStore;
use common::*;

const WAIT: Duration = Duration::from_secs(10);

async fn hibernating_runtime(namespace: &str, after_ms: u64, max_resident: usize) -> Runtime {
    Runtime::builder()
        .namespace(namespace)
        .register::<Counter>()
        .memory_store()
        .idle_passivation(None)
        .hibernate_after(Some(Duration::from_millis(after_ms)))
        .max_resident(max_resident)
        .start()
        .await
        .unwrap()
}

/// The ractor actors running activations (linked under the runtime's root).
fn running(rt: &Runtime) -> usize {
    rt.root().get_children().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_actors_hibernate_and_wake_with_their_state_without_a_replay() {
    let rt = hibernating_runtime("hibernate-wake", 50, 1000).await;
    let refs: Vec<ActorRef<Counter>> = (0..20)
        .map(|i| rt.actor::<Counter>(format!("c-{i}")).unwrap())
        .collect();
    for (i, r) in refs.iter().enumerate() {
        r.ask(CounterCmd::AddMany(vec![i as u64, 1])).await.unwrap();
    }
    assert_eq!(running(&rt), 20);
    poll_until(WAIT, "every actor hibernating", || async {
        rt.stats().hibernating == 20
    })
    .await;
    let stats = rt.stats();
    assert_eq!(stats.resident, 20, "hibernating actors stay resident");
    assert_eq!(stats.hibernations, 20);
    poll_until(WAIT, "their ractor actors stopped", || async {
        running(&rt) == 0
    })
    .await;
    assert!(refs.iter().all(|r| rt.is_resident(r)));

    // Asks through the same refs (they keep the mailbox) and through fresh ones wake them.
    for (i, r) in refs.iter().enumerate() {
        assert_eq!(r.ask(CounterCmd::Get).await.unwrap(), i as u64 + 1);
        let fresh = rt.actor::<Counter>(format!("c-{i}")).unwrap();
        assert_eq!(fresh.ask(CounterCmd::Add(10)).await.unwrap(), i as u64 + 11);
    }
    let after = rt.stats();
    assert_eq!(after.activations, 20, "woken, not activated again");
    assert_eq!(after.replayed_events, 0, "nothing replayed");
    assert_eq!(after.passivations, 0);
    // Every commit went on at the version the state had: no gap, no double.
    for (i, r) in refs.iter().enumerate() {
        let stored = versions(&rt, r).await;
        assert_eq!(stored, vec![1, 2, 3], "actor {i}");
    }
    // And they hibernate again.
    poll_until(WAIT, "every actor hibernating again", || async {
        let s = rt.stats();
        s.hibernating == 20 && s.hibernations == 40
    })
    .await;
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hibernating_actors_are_evicted_in_lru_order_and_snapshot_on_the_way_out() {
    let rt = hibernating_runtime("hibernate-evict", 30, 4).await;
    let snapshots: Arc<dyn SnapshotStore> = rt.snapshot_store();
    let refs: Vec<ActorRef<Counter>> = (0..6)
        .map(|i| rt.actor::<Counter>(format!("e-{i}")).unwrap())
        .collect();
    for r in &refs[..4] {
        r.ask(CounterCmd::Add(7)).await.unwrap();
    }
    poll_until(WAIT, "four actors hibernating", || async {
        rt.stats().hibernating == 4
    })
    .await;
    // Two more: the two least recently used (hibernating) are passivated, and snapshot.
    for r in &refs[4..] {
        r.ask(CounterCmd::Add(1)).await.unwrap();
    }
    poll_until(WAIT, "two passivations", || async {
        rt.stats().passivations == 2
    })
    .await;
    assert_eq!(rt.resident_count(), 4);
    assert!(!rt.is_resident(&refs[0]) && !rt.is_resident(&refs[1]));
    assert!(refs[2..].iter().all(|r| rt.is_resident(r)));
    for r in &refs[..2] {
        let snapshot = snapshots.latest(r.key()).await.unwrap();
        assert_eq!(snapshot.map(|s| s.version), Some(1), "{}", r.key());
    }
    assert_eq!(rt.stats().hibernating, 2);
    // The evicted come back from their snapshots.
    let replayed = rt.stats().replayed_events;
    assert_eq!(refs[0].ask(CounterCmd::Get).await.unwrap(), 7);
    assert_eq!(rt.stats().replayed_events, replayed);

    // Shutdown passivates the hibernating ones too, each with its snapshot.
    poll_until(WAIT, "the resident ones hibernating", || async {
        rt.stats().hibernating == 4
    })
    .await;
    rt.shutdown().await.unwrap();
    for r in &refs[1..] {
        assert!(
            snapshots.latest(r.key()).await.unwrap().is_some(),
            "{} snapshot at shutdown",
            r.key()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asks_racing_hibernation_are_applied_exactly_once() {
    // Hibernation every few milliseconds, while 24 callers ask 6 actors at random moments:
    // messages land while an actor decides to hibernate, parks, and wakes.
    let rt = hibernating_runtime("hibernate-race", 1, 1000).await;
    let mut callers = Vec::new();
    for c in 0..24u64 {
        let rt = rt.actor::<Counter>(format!("r-{}", c % 6)).unwrap();
        callers.push(tokio::spawn(async move {
            let mut seed = c.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            for _ in 0..60 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                if seed % 3 == 0 {
                    tokio::time::sleep(Duration::from_millis(seed % 12)).await;
                }
                rt.ask(CounterCmd::Add(1)).await.unwrap();
            }
        }));
    }
    for caller in callers {
        caller.await.unwrap();
    }
    for i in 0..6 {
        let c = rt.actor::<Counter>(format!("r-{i}")).unwrap();
        assert_eq!(c.ask(CounterCmd::Get).await.unwrap(), 240);
        let stored = versions(&rt, &c).await;
        assert_eq!(stored, (1..=240).collect::<Vec<_>>());
    }
    let stats = rt.stats();
    assert!(stats.hibernations > 0, "the race was run: {stats:?}");
    assert_eq!(stats.activations, 6, "woken, never reloaded");
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_between_random_pairs_with_cycles_while_actors_hibernate() {
    // Each transfer asks another actor from inside a turn (`AddVia`: the target adds `n`,
    // then the caller records `n`), between random pairs, so cycles form (a→b while b→a),
    // and every actor hibernates between its turns: asks from turns and deadlock probes must
    // wake it, and a refused cycle must leave nothing half done.
    let rt = hibernating_runtime("hibernate-pairs", 1, 1000).await;
    const ACCOUNTS: u64 = 8;
    let mut callers = Vec::new();
    for c in 0..16u64 {
        let refs: Vec<ActorRef<Counter>> = (0..ACCOUNTS)
            .map(|i| rt.actor::<Counter>(format!("p-{i}")).unwrap())
            .collect();
        callers.push(tokio::spawn(async move {
            let mut seed = (c + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut next = move || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            let mut moved = 0u64;
            let mut refused = 0u64;
            for _ in 0..40 {
                let from = (next() % ACCOUNTS) as usize;
                let to = (from + 1 + (next() % (ACCOUNTS - 1)) as usize) % ACCOUNTS as usize;
                let n = 1 + next() % 5;
                if next() % 4 == 0 {
                    tokio::time::sleep(Duration::from_millis(next() % 8)).await;
                }
                let target = refs[to].clone();
                match refs[from].ask(CounterCmd::AddVia { target, n }).await {
                    Ok(_) => moved += n,
                    Err(AskError::Rejected(CounterError::Downstream(why)))
                        if why.contains("eadlock") =>
                    {
                        refused += 1
                    }
                    Err(other) => panic!("transfer {from} -> {to}: {other:?}"),
                }
            }
            (moved, refused)
        }));
    }
    let (mut moved, mut refused) = (0, 0);
    for caller in callers {
        let (m, r) = caller.await.unwrap();
        moved += m;
        refused += r;
    }
    // Every completed transfer counted twice (target and caller), a refused one not at all;
    // every history gapless.
    let mut total = 0;
    for i in 0..ACCOUNTS {
        let c = rt.actor::<Counter>(format!("p-{i}")).unwrap();
        total += c.ask(CounterCmd::Get).await.unwrap();
        let stored = versions(&rt, &c).await;
        assert_eq!(stored, (1..=stored.len() as u64).collect::<Vec<_>>());
    }
    assert_eq!(total, 2 * moved, "{refused} transfers refused as cycles");
    let stats = rt.stats();
    assert!(
        stats.hibernations > 0,
        "actors hibernated meanwhile: {stats:?}"
    );
    assert_eq!(stats.activations, ACCOUNTS, "woken, never reloaded");
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_panic_after_waking_restarts_from_the_store() {
    let rt = hibernating_runtime("hibernate-panic", 20, 1000).await;
    let c = rt.actor::<Counter>("p").unwrap();
    c.ask(CounterCmd::Add(5)).await.unwrap();
    poll_until(WAIT, "hibernating", || async {
        rt.stats().hibernating == 1
    })
    .await;
    match c.ask(CounterCmd::Panic).await {
        Err(AskError::Failed(CallError::HandlerPanicked { .. })) => {}
        other => panic!("expected HandlerPanicked, got {other:?}"),
    }
    assert_eq!(c.ask(CounterCmd::Add(1)).await.unwrap(), 6);
    let stats = rt.stats();
    assert_eq!(stats.handler_panics, 1);
    assert_eq!(stats.activations, 2, "the fresh activation reloaded");
    poll_until(WAIT, "hibernating again", || async {
        rt.stats().hibernating == 1
    })
    .await;
    // The activation that died left its place in the sweep's queue behind: asking a
    // hibernating actor to hibernate must not wake it (it would wake and hibernate again every
    // period). Ten periods later, with no message sent, it has not woken.
    let parked = rt.stats().hibernations;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = rt.stats();
    assert_eq!(stats.hibernations, parked, "{stats:?}");
    assert_eq!(stats.hibernating, 1);
    rt.shutdown().await.unwrap();
}

#[test]
fn a_runtime_dropped_with_hibernating_actors_releases_its_store() {
    let dir = tempfile::tempdir().unwrap();
    let build = |after: Option<Duration>| {
        Runtime::builder()
            .namespace("hibernate-drop")
            .register::<Counter>()
            .data_dir(dir.path())
            .hibernate_after(after)
            .start()
    };
    let tokio = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    };
    // Dropped without `shutdown`, as its tokio runtime ends, with one actor hibernating and
    // one awake: neither kit may keep the runtime (and the embedded store's lock on its
    // directory) alive.
    tokio().block_on(async {
        let rt = build(Some(Duration::from_millis(10))).await.unwrap();
        let c = rt.actor::<Counter>("c").unwrap();
        c.ask(CounterCmd::Add(4)).await.unwrap();
        poll_until(WAIT, "hibernating", || async {
            rt.stats().hibernating == 1
        })
        .await;
        let awake = rt.actor::<Counter>("awake").unwrap();
        awake.ask(CounterCmd::Add(1)).await.unwrap();
        drop(rt);
    });
    tokio().block_on(async {
        // Dropped like a crash: the store's lock goes once its last owner is gone, which may
        // take a moment (the store's own threads), never forever.
        let deadline = tokio::time::Instant::now() + WAIT;
        let rt = loop {
            match build(None).await {
                Ok(rt) => break rt,
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("the directory is still locked after {WAIT:?}: {e}"),
            }
        };
        let c = rt.actor::<Counter>("c").unwrap();
        assert_eq!(c.ask(CounterCmd::Get).await.unwrap(), 4);
        rt.shutdown().await.unwrap();
    });
}

#[tokio::test]
async fn hibernation_can_be_turned_off() {
    let rt = Runtime::builder()
        .namespace("hibernate-off")
        .register::<Counter>()
        .memory_store()
        .hibernate_after(None)
        .start()
        .await
        .unwrap();
    assert_eq!(rt.config().hibernate_after(), None);
    let c = rt.actor::<Counter>("awake").unwrap();
    c.ask(CounterCmd::Add(1)).await.unwrap();
    assert_eq!(rt.stats().hibernations, 0);
    assert_eq!(running(&rt), 1);
    rt.shutdown().await.unwrap();
    let defaults = Runtime::builder()
        .namespace("hibernate-default")
        .register::<Counter>()
        .memory_store()
        .start()
        .await
        .unwrap();
    assert_eq!(
        defaults.config().hibernate_after(),
        Some(Duration::from_secs(30))
    );
    defaults.shutdown().await.unwrap();
}
