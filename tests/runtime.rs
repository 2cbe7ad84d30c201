//! The runtime on one node: activation, passivation, residency, snapshots, failures,
//! idempotency, actor-to-actor calls, fencing.

mod common;

use std::sync::Arc;
use std::time::Duration;

use aether::prelude::*;
use aether::store::{EventStore, FaultInjection, MemoryStore, SnapshotStore};
use aether::{RetrySafety, Runtime};
use common::*;

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn first_message_activates_by_replaying_history() {
    let store = MemoryStore::new(ns("activation"));
    let rt1 = Runtime::builder()
        .namespace("activation")
        .register::<Counter>()
        .store(Arc::new(store.clone()), Arc::new(store.clone()))
        .snapshot_on_passivation(false)
        .start()
        .await
        .unwrap();
    let c = rt1.actor::<Counter>("c").unwrap();
    for n in 1..=10 {
        c.ask(CounterCmd::Add(n)).await.unwrap();
    }
    rt1.shutdown().await.unwrap();

    // A new runtime on the same store knows nothing until the first message, then replays.
    let rt2 = Runtime::builder()
        .namespace("activation")
        .register::<Counter>()
        .store(Arc::new(store.clone()), Arc::new(store))
        .start()
        .await
        .unwrap();
    let c = rt2.actor::<Counter>("c").unwrap();
    assert!(!rt2.is_resident(&c));
    assert_eq!(c.ask(CounterCmd::Get).await.unwrap(), 55);
    assert!(rt2.is_resident(&c));
    let stats = rt2.stats();
    assert_eq!(stats.activations, 1);
    assert_eq!(stats.replayed_events, 10);
    rt2.shutdown().await.unwrap();
}

#[tokio::test]
async fn passivation_and_reactivation_give_identical_state() {
    let rt = memory_runtime("reactivate").await;
    let a = rt.actor::<Counter>("a").unwrap();
    let b = rt.actor::<Counter>("b").unwrap();
    a.ask(CounterCmd::AddMany(vec![3, 4, 5])).await.unwrap();
    a.ask(CounterCmd::Befriend(b.clone())).await.unwrap();
    a.ask(CounterCmd::Add(7)).await.unwrap();
    let before = a.ask(CounterCmd::Digest).await.unwrap();

    assert!(rt.passivate(&a).await);
    assert!(!rt.is_resident(&a));
    assert_eq!(
        a.ask(CounterCmd::Digest).await.unwrap(),
        before,
        "after snapshot restore"
    );

    let events = rt.event_store().read(a.key(), 1).await.unwrap();
    assert_eq!(events.len(), 5);
    assert_eq!(rt.stats().activations, 2);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn full_replay_and_snapshot_restore_agree() {
    let store = MemoryStore::new(ns("agree"));
    let build = |snapshots: bool| {
        Runtime::builder()
            .namespace("agree")
            .register::<Counter>()
            .store(Arc::new(store.clone()), Arc::new(store.clone()))
            .snapshot_on_passivation(snapshots)
            .start()
    };
    let rt = build(true).await.unwrap();
    let a = rt.actor::<Counter>("a").unwrap();
    for n in 0..20 {
        a.ask(CounterCmd::AddMany(vec![n, n * 2])).await.unwrap();
    }
    let live = a.ask(CounterCmd::Digest).await.unwrap();
    rt.shutdown().await.unwrap(); // writes a snapshot at version 40
    assert_eq!(
        store.latest(a.key()).await.unwrap().map(|s| s.version),
        Some(40)
    );

    let rt = build(false).await.unwrap();
    let a = rt.actor::<Counter>("a").unwrap();
    assert_eq!(
        a.ask(CounterCmd::Digest).await.unwrap(),
        live,
        "snapshot restore"
    );
    assert_eq!(rt.stats().replayed_events, 0);
    rt.shutdown().await.unwrap();

    // Damage the snapshot: the runtime falls back to a full replay, loudly, with equal state.
    store
        .inject_raw_snapshot(a.key(), b"not a snapshot".to_vec())
        .await
        .unwrap();
    let rt = build(false).await.unwrap();
    let a = rt.actor::<Counter>("a").unwrap();
    assert_eq!(
        a.ask(CounterCmd::Digest).await.unwrap(),
        live,
        "full replay"
    );
    let stats = rt.stats();
    assert_eq!(stats.snapshot_fallbacks, 1);
    assert_eq!(stats.replayed_events, 40);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn resident_cap_passivates_least_recently_used() {
    let rt = Runtime::builder()
        .namespace("lru")
        .register::<Counter>()
        .memory_store()
        .max_resident(3)
        .start()
        .await
        .unwrap();
    let refs: Vec<_> = ["a", "b", "c", "d"]
        .iter()
        .map(|id| rt.actor::<Counter>(*id).unwrap())
        .collect();
    for (i, r) in refs[..3].iter().enumerate() {
        r.ask(CounterCmd::Add(i as u64 + 1)).await.unwrap();
    }
    refs[0].ask(CounterCmd::Get).await.unwrap(); // a is now the most recently used
    refs[3].ask(CounterCmd::Add(4)).await.unwrap(); // d comes in: b must go
    assert!(rt.is_resident(&refs[0]));
    assert!(!rt.is_resident(&refs[1]), "b was least recently used");
    assert!(rt.is_resident(&refs[2]));
    assert!(rt.is_resident(&refs[3]));
    assert_eq!(rt.resident_count(), 3);
    poll_until(WAIT, "b to finish passivating", || async {
        rt.stats().passivations == 1
    })
    .await;
    // b comes back with its state.
    assert_eq!(refs[1].ask(CounterCmd::Get).await.unwrap(), 2);
    assert_eq!(rt.resident_count(), 3);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_ref_whose_actor_passivated_keeps_asking_and_the_order_of_uses_holds() {
    // A ref keeps its actor's mailbox after the first ask and queues into it directly; once
    // the actor passivates, that mailbox is closed and the ref must go through the registry
    // again, with its uses still counted in the cap's order.
    let rt = Runtime::builder()
        .namespace("kept-mailbox")
        .register::<Counter>()
        .memory_store()
        .max_resident(2)
        .start()
        .await
        .unwrap();
    let a = rt.actor::<Counter>("a").unwrap();
    let b = rt.actor::<Counter>("b").unwrap();
    let c = rt.actor::<Counter>("c").unwrap();
    a.ask(CounterCmd::Add(1)).await.unwrap();
    a.ask(CounterCmd::Add(1)).await.unwrap(); // through the kept mailbox
    assert!(rt.passivate(&a).await, "a was resident");
    b.ask(CounterCmd::Add(5)).await.unwrap();
    // a comes back through the registry (its kept mailbox is closed), then is used again.
    assert_eq!(a.ask(CounterCmd::Get).await.unwrap(), 2);
    assert_eq!(a.ask(CounterCmd::Get).await.unwrap(), 2);
    // c comes in: b is the least recently used.
    c.ask(CounterCmd::Add(7)).await.unwrap();
    assert!(rt.is_resident(&a));
    assert!(!rt.is_resident(&b), "b was least recently used");
    assert!(rt.is_resident(&c));
    // A clone asks as well as the original, and b comes back with its state.
    assert_eq!(a.clone().ask(CounterCmd::Get).await.unwrap(), 2);
    assert_eq!(b.ask(CounterCmd::Get).await.unwrap(), 5);
    assert_eq!(rt.resident_count(), 2);
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asks_through_kept_mailboxes_racing_passivations_are_applied_exactly_once() {
    // The hard case of a ref that keeps its actor's mailbox: the actor passivates (asked to,
    // and pushed out by the cap) while asks keep arriving through the kept mailbox. Every
    // ask must be answered and applied once, by one activation at a time.
    const ACTORS: usize = 5;
    const ASKERS: usize = 6;
    const ASKS: usize = 300;
    let rt = Arc::new(
        Runtime::builder()
            .namespace("kept-race")
            .register::<Counter>()
            .memory_store()
            .max_resident(3)
            .start()
            .await
            .unwrap(),
    );
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let passivator = {
        let (rt, done) = (Arc::clone(&rt), Arc::clone(&done));
        tokio::spawn(async move {
            let refs: Vec<_> = (0..ACTORS)
                .map(|i| rt.actor::<Counter>(format!("a{i}")).unwrap())
                .collect();
            let mut i = 0;
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                rt.passivate(&refs[i % ACTORS]).await;
                i += 1;
                tokio::task::yield_now().await;
            }
        })
    };
    let askers: Vec<_> = (0..ASKERS)
        .map(|seed| {
            let rt = Arc::clone(&rt);
            tokio::spawn(async move {
                // One ref per actor, kept for the whole run: asks go through kept mailboxes.
                let refs: Vec<_> = (0..ACTORS)
                    .map(|i| rt.actor::<Counter>(format!("a{i}")).unwrap())
                    .collect();
                let mut rng = fastrand::Rng::with_seed(seed as u64);
                let mut added = [0u64; ACTORS];
                for _ in 0..ASKS {
                    let (i, n) = (rng.usize(..ACTORS), rng.u64(1..10));
                    refs[i].ask(CounterCmd::Add(n)).await.unwrap();
                    added[i] += n;
                }
                added
            })
        })
        .collect();
    let mut expected = [0u64; ACTORS];
    for asker in askers {
        for (e, a) in expected.iter_mut().zip(asker.await.unwrap()) {
            *e += a;
        }
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    passivator.await.unwrap();
    assert!(
        rt.stats().passivations > 10,
        "the asks raced passivations: {:?}",
        rt.stats()
    );
    for (i, e) in expected.iter().enumerate() {
        let r = rt.actor::<Counter>(format!("a{i}")).unwrap();
        assert_eq!(r.ask(CounterCmd::Get).await.unwrap(), *e, "actor a{i}");
    }
    assert!(rt.resident_count() <= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_resident_cap_is_exact_and_passivates_the_least_recently_used() {
    // Past 4 096 the registry is split into shards; the cap and the order stay global.
    const CAP: usize = 5000;
    let rt = Runtime::builder()
        .namespace("lru-large")
        .register::<Counter>()
        .memory_store()
        .max_resident(CAP)
        .idle_passivation(None)
        .start()
        .await
        .unwrap();
    let refs: Vec<_> = (0..CAP + 200)
        .map(|i| rt.actor::<Counter>(format!("c-{i}")).unwrap())
        .collect();
    // Activated by many callers at once: the cap is reached but never passed.
    let first: Vec<_> = refs[..CAP].to_vec();
    let callers: Vec<_> = first
        .chunks(CAP / 8)
        .map(|chunk| {
            let chunk = chunk.to_vec();
            tokio::spawn(async move {
                for r in chunk {
                    r.ask(CounterCmd::Add(1)).await.unwrap();
                }
            })
        })
        .collect();
    for c in callers {
        c.await.unwrap();
    }
    assert_eq!(
        rt.resident_count(),
        CAP,
        "every actor resident, none passivated"
    );
    assert_eq!(rt.stats().passivations, 0);
    // Used again in an order of our choosing, the even ones first: the odd ones are the most
    // recently used, whatever registry shard each is in.
    for r in refs[..CAP]
        .iter()
        .step_by(2)
        .chain(refs[1..CAP].iter().step_by(2))
    {
        r.ask(CounterCmd::Get).await.unwrap();
    }
    // 200 more: exactly the 200 least recently used go — the first 200 even ones.
    for r in &refs[CAP..] {
        r.ask(CounterCmd::Add(1)).await.unwrap();
    }
    assert_eq!(rt.resident_count(), CAP, "the cap holds exactly");
    let gone: Vec<usize> = (0..CAP).filter(|&i| !rt.is_resident(&refs[i])).collect();
    let expected: Vec<usize> = (0..CAP).step_by(2).take(200).collect();
    assert_eq!(gone, expected, "the least recently used were passivated");
    assert!(refs[CAP..].iter().all(|r| rt.is_resident(r)));
    // A passivated one comes back with its state.
    assert_eq!(refs[0].ask(CounterCmd::Get).await.unwrap(), 1);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn idle_actors_are_passivated() {
    let rt = Runtime::builder()
        .namespace("idle")
        .register::<Counter>()
        .memory_store()
        .idle_passivation(Some(Duration::from_millis(100)))
        .start()
        .await
        .unwrap();
    let c = rt.actor::<Counter>("sleepy").unwrap();
    c.ask(CounterCmd::Add(9)).await.unwrap();
    assert!(rt.is_resident(&c));
    poll_until(WAIT, "idle passivation", || async {
        rt.resident_count() == 0 && rt.stats().passivations == 1
    })
    .await;
    assert_eq!(c.ask(CounterCmd::Get).await.unwrap(), 9);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn snapshot_policy_writes_every_n_events() {
    let rt = memory_runtime("policy").await;
    let t = rt.actor::<Tally>("t").unwrap();
    for n in 1..=25 {
        t.ask(CounterCmd::Add(n)).await.unwrap();
    }
    let snapshots = rt.snapshot_store();
    poll_until(WAIT, "the snapshot at version 20", || async {
        snapshots
            .latest(t.key())
            .await
            .unwrap()
            .is_some_and(|s| s.version == 20)
    })
    .await;
    assert_eq!(rt.stats().snapshots_saved, 2); // versions 10 and 20
    // Passivation snapshots the 5 events since.
    rt.passivate(&t).await;
    assert_eq!(
        snapshots.latest(t.key()).await.unwrap().unwrap().version,
        25
    );
    let replayed = rt.stats().replayed_events;
    assert_eq!(t.ask(CounterCmd::Get).await.unwrap(), 325);
    assert_eq!(
        rt.stats().replayed_events,
        replayed,
        "restored from snapshot alone"
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn handler_panic_does_not_corrupt_state() {
    let rt = memory_runtime("panic").await;
    let c = rt.actor::<Counter>("p").unwrap();
    c.ask(CounterCmd::Add(5)).await.unwrap();
    let before = c.ask(CounterCmd::Digest).await.unwrap();
    match c.ask(CounterCmd::Panic).await {
        Err(AskError::Failed(CallError::HandlerPanicked { message, .. })) => {
            assert!(message.contains("panicked on purpose"), "{message}")
        }
        other => panic!("expected HandlerPanicked, got {other:?}"),
    }
    assert_eq!(c.ask(CounterCmd::Digest).await.unwrap(), before);
    assert_eq!(c.ask(CounterCmd::Add(1)).await.unwrap(), 6);
    let stats = rt.stats();
    assert_eq!(stats.handler_panics, 1);
    assert_eq!(
        stats.activations, 2,
        "a fresh activation took over, with the state from the store"
    );
    assert_eq!(rt.event_store().latest_version(c.key()).await.unwrap(), 2);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_apply_panic_after_commit_never_serves_a_half_applied_state() {
    let rt = memory_runtime("apply-panic").await;
    let c = rt.actor::<Counter>("p").unwrap();
    c.ask(CounterCmd::Add(5)).await.unwrap();
    // The commit is durable before apply runs; apply panics on it.
    let _ = c.ask(CounterCmd::Add(APPLY_PANICS_ON)).await;
    assert_eq!(rt.event_store().latest_version(c.key()).await.unwrap(), 2);
    // The in-memory state is not trusted any more: the next command reloads, the replay meets
    // the same panic, and the actor reports it instead of serving a state built on a hole.
    match c.ask(CounterCmd::Get).await {
        Err(AskError::Failed(CallError::ActivationFailed { reason, .. })) => {
            assert!(reason.contains("apply panicked on event 2"), "{reason}")
        }
        other => panic!("expected ActivationFailed, got {other:?}"),
    }
    // Nothing stored was lost.
    let history = rt.event_store().read(c.key(), 1).await.unwrap();
    assert_eq!(history.len(), 2);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn rejection_stores_nothing() {
    let rt = memory_runtime("reject").await;
    let c = rt.actor::<Counter>("r").unwrap();
    let err = c.ask(CounterCmd::Refuse).await.unwrap_err();
    assert_eq!(err.rejection(), Some(&CounterError::Refused));
    assert_eq!(err.retry_safety(), RetrySafety::Pointless);
    assert_eq!(rt.event_store().latest_version(c.key()).await.unwrap(), 0);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn retried_command_id_is_applied_once() {
    let rt = memory_runtime("dedup").await;
    let c = rt.actor::<Counter>("d").unwrap();
    let id = CommandId::random();
    let opts = AskOptions::default().command_id(id);
    assert_eq!(
        c.ask_with(CounterCmd::Add(5), opts.clone()).await.unwrap(),
        5
    );
    c.ask(CounterCmd::Add(1)).await.unwrap();
    // Same id again: the original reply (5), not a second application.
    assert_eq!(
        c.ask_with(CounterCmd::Add(5), opts.clone()).await.unwrap(),
        5
    );
    assert_eq!(c.ask(CounterCmd::Get).await.unwrap(), 6);
    // Still recognised after passivation (snapshot carries the window) ...
    rt.passivate(&c).await;
    assert_eq!(
        c.ask_with(CounterCmd::Add(5), opts.clone()).await.unwrap(),
        5
    );
    assert_eq!(c.ask(CounterCmd::Get).await.unwrap(), 6);
    assert_eq!(rt.event_store().latest_version(c.key()).await.unwrap(), 2);
    assert_eq!(rt.stats().deduplicated, 2);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn dedup_window_is_rebuilt_by_replay_without_snapshot() {
    let store = MemoryStore::new(ns("dedup-replay"));
    let build = || {
        Runtime::builder()
            .namespace("dedup-replay")
            .register::<Counter>()
            .store(Arc::new(store.clone()), Arc::new(store.clone()))
            .snapshot_on_passivation(false)
            .start()
    };
    let id = CommandId::random();
    let rt = build().await.unwrap();
    let c = rt.actor::<Counter>("d").unwrap();
    let opts = AskOptions::default().command_id(id);
    c.ask_with(CounterCmd::Add(3), opts.clone()).await.unwrap();
    rt.shutdown().await.unwrap();
    let rt = build().await.unwrap();
    let c = rt.actor::<Counter>("d").unwrap();
    assert_eq!(c.ask_with(CounterCmd::Add(3), opts).await.unwrap(), 3);
    assert_eq!(store.latest_version(c.key()).await.unwrap(), 1);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn unknown_outcome_is_resolved_by_retrying_the_same_id() {
    let rt = memory_runtime("unknown").await;
    let c = rt.actor::<Counter>("u").unwrap();
    let slow = CounterCmd::SlowAdd { n: 4, millis: 300 };
    let err = c
        .ask_with(
            slow.clone(),
            AskOptions::default().timeout(Duration::from_millis(50)),
        )
        .await
        .unwrap_err();
    let AskError::Failed(CallError::OutcomeUnknown { command_id, .. }) = err else {
        panic!("expected OutcomeUnknown, got {err:?}");
    };
    assert_eq!(
        AskError::<CounterError>::Failed(CallError::OutcomeUnknown {
            command_id,
            reason: String::new()
        })
        .retry_safety(),
        RetrySafety::SameCommandId
    );
    // Retry with the same id (waiting long enough this time): applied once in total.
    let reply = c
        .ask_with(slow, AskOptions::default().command_id(command_id))
        .await;
    // The first delivery was skipped (its asker had gone) or applied; either way exactly once.
    assert_eq!(reply.unwrap(), 4);
    assert_eq!(c.ask(CounterCmd::Get).await.unwrap(), 4);
    assert_eq!(rt.event_store().latest_version(c.key()).await.unwrap(), 1);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_actor_asks_another_in_memory() {
    let rt = memory_runtime("saga").await;
    let a = rt.actor::<Counter>("a").unwrap();
    let b = rt.actor::<Counter>("b").unwrap();
    let via = CounterCmd::AddVia {
        target: b.clone(),
        n: 10,
    };
    assert_eq!(a.ask(via).await.unwrap(), 10);
    assert_eq!(b.ask(CounterCmd::Get).await.unwrap(), 10);
    // The child command is recorded as caused by the parent.
    let parent = rt.event_store().read(a.key(), 1).await.unwrap();
    let child = rt.event_store().read(b.key(), 1).await.unwrap();
    assert_eq!(child[0].causation_id, Some(parent[0].command_id));
    assert_eq!(child[0].correlation_id, parent[0].correlation_id);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn call_cycles_fail_fast_instead_of_deadlocking() {
    let rt = memory_runtime("cycle").await;
    let a = rt.actor::<Counter>("a").unwrap();
    let b = rt.actor::<Counter>("b").unwrap();
    // Self-cycle.
    a.ask(CounterCmd::Befriend(a.clone())).await.unwrap();
    let started = std::time::Instant::now();
    match a.ask(CounterCmd::AskFriend).await {
        Err(AskError::Rejected(CounterError::Downstream(msg))) => {
            assert!(msg.contains("call cycle"), "{msg}")
        }
        other => panic!("expected a call-cycle error, got {other:?}"),
    }
    // Two-actor cycle: a -> b -> a.
    a.ask(CounterCmd::Befriend(b.clone())).await.unwrap();
    b.ask(CounterCmd::Befriend(a.clone())).await.unwrap();
    match a.ask(CounterCmd::Relay).await {
        Err(AskError::Rejected(CounterError::Downstream(msg))) => {
            assert!(msg.contains("call cycle"), "{msg}");
            assert!(
                msg.contains("cycle/counter/a -> cycle/counter/b -> cycle/counter/a"),
                "{msg}"
            );
        }
        other => panic!("expected a call-cycle error, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2), "failed fast");
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_turns_asking_each_other_are_refused_at_once_not_deadlocked() {
    let rt = Runtime::builder()
        .namespace("deadlock")
        .register::<Counter>()
        .memory_store()
        .ask_timeout(Duration::from_secs(30))
        .start()
        .await
        .unwrap();
    let a = rt.actor::<Counter>("a").unwrap();
    let b = rt.actor::<Counter>("b").unwrap();
    let started = std::time::Instant::now();
    // Both turns start, sleep, then ask the other actor, whose turn is waiting on them.
    let (ra, rb) = tokio::join!(
        a.ask(CounterCmd::AddViaAfter {
            target: b.clone(),
            n: 1,
            millis: 200
        }),
        b.ask(CounterCmd::AddViaAfter {
            target: a.clone(),
            n: 10,
            millis: 200
        }),
    );
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "refused at once, not at the deadline: {took:?}"
    );
    let refused: Vec<String> = [&ra, &rb]
        .iter()
        .filter_map(|r| match r {
            Err(AskError::Rejected(CounterError::Downstream(msg))) => Some(msg.clone()),
            _ => None,
        })
        .collect();
    assert!(!refused.is_empty(), "a deadlock was refused: {ra:?} {rb:?}");
    for msg in &refused {
        assert!(msg.contains("deadlock refused"), "{msg}");
    }
    // Nothing half-applied: each side's total is its own adds plus the other's credited adds.
    let (ta, tb) = (
        a.ask(CounterCmd::Get).await.unwrap(),
        b.ask(CounterCmd::Get).await.unwrap(),
    );
    let expected_a = if ra.is_ok() { 1 } else { 0 } + if rb.is_ok() { 10 } else { 0 };
    let expected_b = if rb.is_ok() { 10 } else { 0 } + if ra.is_ok() { 1 } else { 0 };
    assert_eq!((ta, tb), (expected_a, expected_b));
    // A retry, now that the other turn is done, goes through.
    if ra.is_err() {
        a.ask(CounterCmd::AddVia {
            target: b.clone(),
            n: 1,
        })
        .await
        .unwrap();
    }
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn refs_round_trip_through_serde_and_events() {
    let rt = memory_runtime("refs").await;
    let a = rt.actor::<Counter>("a").unwrap();
    let b = rt.actor::<Counter>("b.with spaces/é").unwrap();
    b.ask(CounterCmd::Add(42)).await.unwrap();

    let bytes = rmp_serde::to_vec_named(&b).unwrap();
    let decoded: ActorRef<Counter> = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!(decoded, b);
    assert!(!decoded.is_bound());
    // Unbound, it finds the one runtime of the process serving its namespace.
    assert_eq!(decoded.ask(CounterCmd::Get).await.unwrap(), 42);

    // A ref stored in an event comes back bound after a replay.
    a.ask(CounterCmd::Befriend(b.clone())).await.unwrap();
    rt.passivate(&a).await;
    assert_eq!(a.ask(CounterCmd::AskFriend).await.unwrap(), 42);

    // A ref of another kind does not decode as a Counter ref.
    let tally = rt.actor::<Tally>("t").unwrap();
    let err = rmp_serde::from_slice::<ActorRef<Counter>>(&rmp_serde::to_vec_named(&tally).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("kind"), "{err}");
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn stale_activation_loses_the_race_and_reloads() {
    // Two runtimes over one store: both activate the same actor. The store write is the fence.
    let store = MemoryStore::new(ns("fence"));
    let build = || {
        Runtime::builder()
            .namespace("fence")
            .register::<Counter>()
            .store(Arc::new(store.clone()), Arc::new(store.clone()))
            .start()
    };
    let (rt1, rt2) = (build().await.unwrap(), build().await.unwrap());
    let c1 = rt1.actor::<Counter>("x").unwrap();
    let c2 = rt2.actor::<Counter>("x").unwrap();
    assert_eq!(c1.ask(CounterCmd::Get).await.unwrap(), 0);
    assert_eq!(c2.ask(CounterCmd::Get).await.unwrap(), 0);
    assert_eq!(c1.ask(CounterCmd::Add(1)).await.unwrap(), 1);
    // rt2's activation is at version 0 and loses.
    let err = c2.ask(CounterCmd::Add(10)).await.unwrap_err();
    match &err {
        AskError::Failed(CallError::VersionConflict {
            expected, actual, ..
        }) => assert_eq!((*expected, *actual), (0, 1)),
        other => panic!("expected VersionConflict, got {other:?}"),
    }
    assert_eq!(err.retry_safety(), RetrySafety::Safe);
    assert_eq!(rt2.stats().conflicts, 1);
    // It reloaded: the retry applies on top of the winner's event.
    assert_eq!(c2.ask(CounterCmd::Add(10)).await.unwrap(), 11);
    let versions: Vec<u64> = store
        .read(c1.key(), 1)
        .await
        .unwrap()
        .iter()
        .map(|e| e.version)
        .collect();
    assert_eq!(versions, vec![1, 2]);
    rt1.shutdown().await.unwrap();
    rt2.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_ask_at_a_full_mailbox_waits_for_room_or_times_out() {
    let rt = Runtime::builder()
        .namespace("backpressure")
        .register::<Counter>()
        .memory_store()
        .mailbox_capacity(1)
        .start()
        .await
        .unwrap();
    let c = rt.actor::<Counter>("b").unwrap();
    c.ask(CounterCmd::Get).await.unwrap();
    // A slow turn runs (queued first, so it is the mailbox's one message until its turn
    // starts); then one told command fills the mailbox of 1.
    c.tell(CounterCmd::SlowAdd { n: 1, millis: 1500 }).unwrap();
    poll_until(
        WAIT,
        "the slow turn to start and the mailbox to fill",
        || async { c.tell(CounterCmd::Add(10)).is_ok() },
    )
    .await;
    assert!(
        matches!(
            c.tell(CounterCmd::Add(0)),
            Err(aether::CallError::MailboxFull { .. })
        ),
        "the mailbox is full"
    );
    // An ask with too little time fails with a timeout while it waits for room...
    let hurried = c
        .ask_with(
            CounterCmd::Add(100),
            AskOptions::default().timeout(Duration::from_millis(50)),
        )
        .await;
    assert!(
        matches!(
            &hurried,
            Err(AskError::Failed(aether::CallError::Timeout { .. }))
        ),
        "{hurried:?}"
    );
    // ... and a patient one waits for room and is served after the queue.
    let patient = c
        .ask_with(CounterCmd::Add(5), AskOptions::default().timeout(WAIT))
        .await
        .unwrap();
    assert_eq!(
        patient, 16,
        "slow 1 + told 10 + 5; the timed-out 100 never ran"
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn tell_is_fire_and_forget_and_bounded() {
    let rt = Runtime::builder()
        .namespace("tell")
        .register::<Counter>()
        .memory_store()
        .mailbox_capacity(2)
        .start()
        .await
        .unwrap();
    let c = rt.actor::<Counter>("t").unwrap();
    c.tell(CounterCmd::Add(3)).unwrap();
    poll_until(WAIT, "the told command to apply", || async {
        c.ask(CounterCmd::Get).await.unwrap() == 3
    })
    .await;
    // Keep the actor busy, then overfill its mailbox of 2.
    let busy = c.clone();
    let slow =
        tokio::spawn(async move { busy.ask(CounterCmd::SlowAdd { n: 0, millis: 300 }).await });
    poll_until(WAIT, "the slow command to start", || async {
        // The mailbox drains the slow command once the turn starts.
        c.tell(CounterCmd::Add(0)).is_ok()
    })
    .await;
    let results: Vec<_> = (0..5).map(|_| c.tell(CounterCmd::Add(1))).collect();
    assert!(
        results
            .iter()
            .any(|r| matches!(r, Err(aether::CallError::MailboxFull { .. }))),
        "{results:?}"
    );
    slow.await.unwrap().unwrap();
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_refuses_new_work() {
    let rt = memory_runtime("shutdown").await;
    let c = rt.actor::<Counter>("s").unwrap();
    c.ask(CounterCmd::Add(1)).await.unwrap();
    rt.shutdown().await.unwrap();
    assert!(matches!(
        c.ask(CounterCmd::Get).await,
        Err(AskError::Failed(CallError::Shutdown))
    ));
    assert!(matches!(
        c.tell(CounterCmd::Get),
        Err(aether::CallError::Shutdown)
    ));
}

#[tokio::test]
async fn embedded_runtime_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let build = || {
        Runtime::builder()
            .namespace("restart")
            .register::<Counter>()
            .data_dir(dir.path())
            .start()
    };
    let rt = build().await.unwrap();
    assert_eq!(rt.data_dir(), Some(dir.path().join("restart").as_path()));
    let c = rt.actor::<Counter>("c").unwrap();
    for n in 1..=5 {
        c.ask(CounterCmd::Add(n)).await.unwrap();
    }
    let digest = c.ask(CounterCmd::Digest).await.unwrap();
    rt.shutdown().await.unwrap();
    let rt = build().await.unwrap();
    let c = rt.actor::<Counter>("c").unwrap();
    assert_eq!(c.ask(CounterCmd::Digest).await.unwrap(), digest);
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_asks_keep_versions_gapless() {
    let rt = memory_runtime("concurrent").await;
    let mut tasks = Vec::new();
    for w in 0..32u64 {
        let c = rt.actor::<Counter>(format!("acct-{}", w % 4)).unwrap();
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                c.ask(CounterCmd::Add(1)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for i in 0..4 {
        let c = rt.actor::<Counter>(format!("acct-{i}")).unwrap();
        assert_eq!(c.ask(CounterCmd::Get).await.unwrap(), 200);
        let stored = versions(&rt, &c).await;
        assert_eq!(stored, (1..=200).collect::<Vec<_>>());
    }
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn queued_ask_times_out_by_its_deadline_without_running() {
    let rt = memory_runtime("deadline-queue").await;
    let c = rt.actor::<Counter>("q").unwrap();
    let busy = c.clone();
    let slow =
        tokio::spawn(async move { busy.ask(CounterCmd::SlowAdd { n: 1, millis: 600 }).await });
    // Resident means the slow command is in the mailbox (queued under the same lock): the next
    // command is behind it.
    poll_until(WAIT, "the slow command to be queued", || async {
        rt.is_resident(&c)
    })
    .await;
    let started = std::time::Instant::now();
    let err = c
        .ask_with(
            CounterCmd::Add(2),
            AskOptions::default().timeout(Duration::from_millis(100)),
        )
        .await
        .unwrap_err();
    let waited = started.elapsed();
    match err {
        AskError::Failed(CallError::Timeout { after }) => {
            assert_eq!(after, Duration::from_millis(100))
        }
        other => panic!("a command that never started must time out cleanly, got {other:?}"),
    }
    assert!(
        waited < Duration::from_millis(450),
        "answered at its deadline, waited {waited:?}"
    );
    assert_eq!(slow.await.unwrap().unwrap(), 1);
    assert_eq!(
        c.ask(CounterCmd::Get).await.unwrap(),
        1,
        "the timed-out command never ran"
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn running_turn_is_cancelled_at_its_deadline() {
    let rt = memory_runtime("deadline-turn").await;
    let c = rt.actor::<Counter>("t").unwrap();
    let started = std::time::Instant::now();
    let err = c
        .ask_with(
            CounterCmd::SlowAdd {
                n: 5,
                millis: 5_000,
            },
            AskOptions::default().timeout(Duration::from_millis(100)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, AskError::Failed(CallError::OutcomeUnknown { .. })),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // The actor is free again at once, and the cancelled command stored nothing.
    assert_eq!(c.ask(CounterCmd::Get).await.unwrap(), 0);
    assert_eq!(rt.event_store().latest_version(c.key()).await.unwrap(), 0);
    rt.shutdown().await.unwrap();
}

/// An event store that counts how many replays read at once (each read takes 20 ms).
struct CountingReads {
    inner: MemoryStore,
    now: std::sync::atomic::AtomicUsize,
    max: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl EventStore for CountingReads {
    fn namespace(&self) -> &aether::Namespace {
        self.inner.namespace()
    }
    async fn append(
        &self,
        actor: &aether::ActorKey,
        expected_version: u64,
        commit: aether::store::NewCommit,
    ) -> Result<aether::store::Appended, aether::StoreError> {
        self.inner.append(actor, expected_version, commit).await
    }
    async fn latest_version(&self, actor: &aether::ActorKey) -> Result<u64, aether::StoreError> {
        self.inner.latest_version(actor).await
    }
    async fn read_with_errors(
        &self,
        actor: &aether::ActorKey,
        from_version: u64,
    ) -> Result<aether::store::ReadReport, aether::StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.now.fetch_add(1, SeqCst) + 1;
        self.max.fetch_max(now, SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.now.fetch_sub(1, SeqCst);
        self.inner.read_with_errors(actor, from_version).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_replays_are_bounded_so_a_failover_does_not_stampede_the_store() {
    let memory = MemoryStore::new(ns("replays"));
    let events = Arc::new(CountingReads {
        inner: memory.clone(),
        now: Default::default(),
        max: Default::default(),
    });
    let rt = Runtime::builder()
        .namespace("replays")
        .register::<Counter>()
        .max_concurrent_replays(3)
        .store(events.clone(), Arc::new(memory))
        .start()
        .await
        .unwrap();
    // 40 actors activated at once, as on a node taking over a failed node's shards.
    let asks = (0..40).map(|i| {
        let r = rt.actor::<Counter>(format!("c{i}")).unwrap();
        async move { r.ask(CounterCmd::Add(1)).await }
    });
    for result in futures_util::future::join_all(asks).await {
        assert_eq!(result.unwrap(), 1);
    }
    let max = events.max.load(std::sync::atomic::Ordering::SeqCst);
    assert!(max <= 3, "at most 3 replays at once, saw {max}");
    assert!(
        max >= 2,
        "replays did run concurrently up to the bound, saw {max}"
    );
    rt.shutdown().await.unwrap();
}

/// The ids of the ractor actors linked under the runtime's root: one per activation.
fn hosted_actors(rt: &Runtime) -> Vec<aether::ractor::ActorId> {
    let mut ids: Vec<_> = rt
        .root()
        .get_children()
        .iter()
        .map(|c| c.get_id())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn every_activation_is_a_ractor_actor_under_the_root() {
    let rt = memory_runtime("hosted").await;
    let counters: Vec<_> = (0..5)
        .map(|i| rt.actor::<Counter>(format!("c{i}")).unwrap())
        .collect();
    for c in &counters {
        c.ask(CounterCmd::Add(1)).await.unwrap();
    }
    poll_until(WAIT, "five activations linked under the root", || async {
        hosted_actors(&rt).len() == 5
    })
    .await;
    for child in rt.root().get_children() {
        assert_eq!(child.get_status(), aether::ractor::ActorStatus::Running);
    }
    // Passivation stops the actor.
    for c in &counters[..3] {
        rt.passivate(c).await;
    }
    poll_until(WAIT, "passivated actors unlinked", || async {
        hosted_actors(&rt).len() == 2
    })
    .await;
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_handler_panic_fails_the_ractor_actor_and_a_fresh_one_serves_from_the_store() {
    let rt = memory_runtime("hosted-panic").await;
    let c = rt.actor::<Counter>("p").unwrap();
    for _ in 0..3 {
        c.ask(CounterCmd::Add(2)).await.unwrap();
    }
    let before = hosted_actors(&rt);
    assert_eq!(before.len(), 1);
    let replayed = rt.stats().replayed_events;
    assert!(matches!(
        c.ask(CounterCmd::Panic).await,
        Err(AskError::Failed(CallError::HandlerPanicked { .. }))
    ));
    // The root heard of the failure from ractor and started another actor, which replayed the
    // three stored events.
    assert_eq!(c.ask(CounterCmd::Get).await.unwrap(), 6);
    let after = hosted_actors(&rt);
    assert_eq!(after.len(), 1);
    assert_ne!(before, after, "the failed ractor actor was replaced");
    let stats = rt.stats();
    assert_eq!(stats.handler_panics, 1);
    assert_eq!(
        stats.replayed_events - replayed,
        3,
        "state came from the store"
    );
    // Commands queued behind the panicking one are served by the fresh activation.
    let queued: Vec<_> = (0..10)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.ask(CounterCmd::Add(1)).await })
        })
        .collect();
    let panicking = c.ask(CounterCmd::Panic);
    let (panicked, _) = tokio::join!(panicking, async {
        for q in queued {
            q.await.unwrap().unwrap();
        }
    });
    assert!(matches!(
        panicked,
        Err(AskError::Failed(CallError::HandlerPanicked { .. }))
    ));
    assert_eq!(c.ask(CounterCmd::Get).await.unwrap(), 16);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_bad_limit_refuses_to_start_and_names_the_field() {
    let base = || {
        Runtime::builder()
            .namespace("limits")
            .register::<Counter>()
            .memory_store()
    };
    let huge = Duration::from_secs(366 * 24 * 3600);
    // Every limit of the runtime, each with the values it refuses.
    let cases = [
        ("ask_timeout", base().ask_timeout(Duration::ZERO)),
        ("ask_timeout", base().ask_timeout(Duration::MAX)),
        (
            "idle_passivation",
            base().idle_passivation(Some(Duration::ZERO)),
        ),
        ("idle_passivation", base().idle_passivation(Some(huge))),
        ("max_resident", base().max_resident(0)),
        ("mailbox_capacity", base().mailbox_capacity(0)),
        ("dedup_window", base().dedup_window(0)),
        ("max_concurrent_replays", base().max_concurrent_replays(0)),
        ("shard_count", base().shard_count(0)),
        ("shard_count", base().shard_count(65_537)),
        ("max_commit_bytes", base().max_commit_bytes(100)),
        ("shutdown_timeout", base().shutdown_timeout(Duration::ZERO)),
        ("shutdown_timeout", base().shutdown_timeout(huge)),
        (
            "remote_attempt_timeout",
            base().remote_attempt_timeout(Duration::ZERO),
        ),
        (
            "effect_retry_max",
            base().effect_retry_max(Duration::from_millis(10)),
        ),
        ("effect_retry_max", base().effect_retry_max(huge)),
        ("bus_buffer", base().bus_buffer(0)),
        ("bus_outbound_buffer", base().bus_outbound_buffer(0)),
    ];
    for (field, builder) in cases {
        match builder.start().await {
            Err(aether::StartError::InvalidConfig(e)) => {
                assert_eq!(e.field, field, "{e}");
                assert!(e.to_string().contains(field));
            }
            Err(other) => panic!("{field}: wrong error {other}"),
            Ok(_) => panic!("{field}: started with a bad value"),
        }
    }
    // Every limit of a cluster node, refused before any connection is made (nothing listens
    // on that port): zero or huge durations, a failure timeout or lease shorter than two
    // heartbeats, replicas outside JetStream's 1 to 5, no URL.
    let node = || {
        aether::ClusterConfig::new("nats://127.0.0.1:1", "limits").heartbeat(Duration::from_secs(1))
    };
    let cluster_cases = [
        ("urls", aether::ClusterConfig::new(" , ", "limits")),
        ("heartbeat", node().heartbeat(Duration::ZERO)),
        ("heartbeat", node().heartbeat(huge)),
        (
            "failure_timeout",
            node().failure_timeout(Duration::from_millis(1500)),
        ),
        ("lease", node().lease(Duration::from_millis(1500))),
        ("replicas", node().replicas(0)),
        ("replicas", node().replicas(6)),
        ("join_timeout", node().join_timeout(Duration::ZERO)),
        ("handoff_timeout", node().handoff_timeout(Duration::ZERO)),
        (
            "connect_timeout",
            aether::ClusterConfig::new(
                aether::NatsConfig::new("nats://127.0.0.1:1").connect_timeout(Duration::ZERO),
                "limits",
            ),
        ),
    ];
    for (field, config) in cluster_cases {
        let refused = Runtime::builder()
            .register::<Counter>()
            .cluster(config)
            .start()
            .await;
        match refused {
            Err(aether::StartError::InvalidConfig(e)) => assert_eq!(e.field, field, "{e}"),
            Err(other) => panic!("{field}: wrong error {other}"),
            Ok(_) => panic!("{field}: a node started with a bad value"),
        }
    }
}
