//! The event bus inside one process: namespace isolation, exact filters, a stalled subscriber,
//! the subscription listing, actor events in version order, system events, projections on the
//! store's log (crash mid-batch, rebuild), and bad input.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aether::bus::{
    Bus, BusConfig, BusEvent, DurableError, Filter, IdPattern, Offset, ProjectionError,
    ProjectionOptions, ProjectionState, PublishError, SubscribeError, SubscribeOptions,
    SubscriptionKind, SystemEvent,
};
use aether::store::MemoryStore;
use aether::{ActorKey, EventEnvelope, Runtime};
use common::ledger::{Crash, Ledger, LedgerDb, assert_exactly_once};
use common::*;
use parking_lot::Mutex;

const WAIT: Duration = Duration::from_secs(10);

/// A short, unique label for a received event: topic, type and version.
fn label(event: &BusEvent) -> String {
    let version = event.envelope().map_or(0, |e| e.version);
    format!("{} {} v{version}", event.topic(), event.event_type())
}

fn drain(sub: &mut aether::bus::Subscription) -> Vec<Arc<BusEvent>> {
    let mut out = Vec::new();
    while let Some(e) = sub.try_recv() {
        out.push(e);
    }
    out
}

/// Publishes the fixed set of events the filter table is about; returns their labels.
fn publish_fixture(bus: &Bus) -> Vec<String> {
    let bank = ns("bank");
    let shop = ns("shop");
    let actor_events = [
        ("bank", "account", "alice", 1, "Deposited"),     // 0
        ("bank", "account", "alice", 2, "Withdrew"),      // 1
        ("bank", "account", "bob", 1, "Deposited"),       // 2
        ("bank", "order", "o.1", 1, "Placed"),            // 3
        ("shop", "account", "alice", 1, "Deposited"),     // 4
        ("bank", "account", "vip-carol", 1, "Deposited"), // 5
    ];
    let mut labels = Vec::new();
    for (n, k, id, v, t) in actor_events {
        let e = envelope(n, k, id, v, t);
        labels.push(label(&BusEvent::actor(e.clone())));
        bus.publish(&e.namespace.clone(), e).unwrap();
    }
    // 6: a system event about alice; 7: one about no actor.
    bus.publish_system(
        &bank,
        SystemEvent::EventStored {
            actor: key("bank", "account", "alice"),
            first_version: 1,
            last_version: 2,
            event_types: vec!["Deposited".into(), "Withdrew".into()],
        },
    );
    labels.push("bank.system.EventStored EventStored v0".into());
    bus.publish_system(&bank, SystemEvent::NodeJoined { node: "n1".into() });
    labels.push("bank.system.NodeJoined NodeJoined v0".into());
    let _ = shop;
    labels
}

#[tokio::test]
async fn filters_by_pattern_type_and_actor_are_exact() {
    // (pattern, event types, id globs, all namespaces, expected fixture indices)
    type Case = (
        &'static str,
        &'static [&'static str],
        &'static [&'static str],
        bool,
        &'static [usize],
    );
    let cases: &[Case] = &[
        ("bank.events.>", &[], &[], false, &[0, 1, 2, 3, 5]),
        ("bank.events.account.*", &[], &[], false, &[0, 1, 2, 5]),
        ("bank.events.account.alice", &[], &[], false, &[0, 1]),
        ("bank.events.order.o=2E1", &[], &[], false, &[3]),
        ("bank.events.*.*", &["Deposited"], &[], false, &[0, 2, 5]),
        (
            "bank.events.>",
            &["Deposited", "Placed"],
            &[],
            false,
            &[0, 2, 3, 5],
        ),
        ("bank.events.>", &[], &["alice"], false, &[0, 1]),
        ("bank.events.>", &[], &["vip-*"], false, &[5]),
        ("bank.events.>", &[], &["*o*"], false, &[2, 3, 5]),
        ("bank.events.>", &[], &["o.1"], false, &[3]),
        ("bank.events.>", &[], &["o=2E1"], false, &[]),
        ("bank.events.>", &[], &["ali"], false, &[]),
        ("bank.events.>", &[], &["alice", "bob"], false, &[0, 1, 2]),
        ("bank.events.>", &["Deposited"], &["alice"], false, &[0]),
        ("bank.events.>", &["Nope"], &[], false, &[]),
        ("bank.events.account.*", &["deposited"], &[], false, &[]),
        ("bank.>", &[], &[], false, &[0, 1, 2, 3, 5, 6, 7]),
        ("bank.system.*", &[], &[], false, &[6, 7]),
        ("bank.system.EventStored", &[], &[], false, &[6]),
        ("bank.>", &[], &["alice"], false, &[0, 1, 6]),
        ("bank.>", &["NodeJoined"], &[], false, &[7]),
        ("bank.*.account.*", &[], &[], false, &[0, 1, 2, 5]),
        ("shop.>", &[], &[], false, &[4]),
        ("*.events.account.alice", &[], &[], true, &[0, 1, 4]),
        (">", &["Deposited"], &[], true, &[0, 2, 4, 5]),
        ("*.system.>", &[], &[], true, &[6, 7]),
    ];
    for (pattern, types, ids, all, expected) in cases {
        let bus = Bus::local();
        let filter = Filter::all()
            .event_types(types.iter().copied())
            .actor_id_globs(ids.iter())
            .unwrap();
        let options = SubscribeOptions {
            all_namespaces: *all,
            ..Default::default()
        };
        let mut sub = bus.subscribe_with(*pattern, filter, options).await.unwrap();
        let labels = publish_fixture(&bus);
        let got: BTreeSet<String> = drain(&mut sub).iter().map(|e| label(e)).collect();
        let want: BTreeSet<String> = expected.iter().map(|i| labels[*i].clone()).collect();
        assert_eq!(
            got, want,
            "pattern {pattern:?}, types {types:?}, ids {ids:?}"
        );
    }
}

#[tokio::test]
async fn exact_subscriptions_never_see_another_namespace() {
    let bus = Bus::local();
    let mut bank = bus.subscribe("bank.>", Filter::all()).await.unwrap();
    let mut shop = bus.subscribe("shop.>", Filter::all()).await.unwrap();
    // A namespace that is a prefix of another must not leak either.
    let mut ban = bus.subscribe("ban.>", Filter::all()).await.unwrap();
    for (n, id) in [("bank", "a"), ("shop", "a"), ("bank", "b"), ("bank2", "a")] {
        let e = envelope(n, "account", id, 1, "Deposited");
        bus.publish(&ns(n), e).unwrap();
    }
    bus.publish_system(&ns("shop"), SystemEvent::NodeJoined { node: "n".into() });
    let namespaces = |sub: &mut aether::bus::Subscription| -> Vec<String> {
        drain(sub)
            .iter()
            .map(|e| e.namespace().to_string())
            .collect()
    };
    assert_eq!(namespaces(&mut bank), vec!["bank", "bank"]);
    assert_eq!(namespaces(&mut shop), vec!["shop", "shop"]);
    assert!(namespaces(&mut ban).is_empty());
}

#[tokio::test]
async fn wildcard_namespaces_need_the_explicit_opt_in() {
    let bus = Bus::local();
    for pattern in ["*.events.>", ">", "*.system.NodeJoined"] {
        match bus.subscribe(pattern, Filter::all()).await {
            Err(e @ SubscribeError::CrossNamespace { .. }) => {
                assert!(e.to_string().contains("subscribe_all_namespaces"), "{e}")
            }
            other => panic!("{pattern}: expected CrossNamespace, got {other:?}"),
        }
    }
    assert!(bus.subscriptions().is_empty(), "nothing was subscribed");
    let mut everything = bus
        .subscribe_all_namespaces("*.events.>", Filter::all())
        .await
        .unwrap();
    bus.publish(&ns("a"), envelope("a", "k", "x", 1, "T"))
        .unwrap();
    bus.publish(&ns("b"), envelope("b", "k", "x", 1, "T"))
        .unwrap();
    assert_eq!(drain(&mut everything).len(), 2);
    let listed = bus.subscriptions();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].kind, SubscriptionKind::AllNamespaces);
    assert_eq!(listed[0].namespace, None);
}

#[tokio::test]
async fn runtimes_sharing_a_bus_stay_isolated() {
    let bus = Bus::local();
    let start = |namespace: &'static str| {
        Runtime::builder()
            .namespace(namespace)
            .register::<Counter>()
            .memory_store()
            .bus(bus.clone())
            .start()
    };
    let (a, b) = (
        start("tenant-a").await.unwrap(),
        start("tenant-b").await.unwrap(),
    );
    let mut seen_a = bus
        .subscribe("tenant-a.events.>", Filter::all())
        .await
        .unwrap();
    let mut seen_all = bus
        .subscribe_all_namespaces("*.events.counter.*", Filter::all())
        .await
        .unwrap();
    a.actor::<Counter>("x")
        .unwrap()
        .ask(CounterCmd::Add(1))
        .await
        .unwrap();
    b.actor::<Counter>("x")
        .unwrap()
        .ask(CounterCmd::Add(2))
        .await
        .unwrap();
    b.actor::<Counter>("y")
        .unwrap()
        .ask(CounterCmd::Add(3))
        .await
        .unwrap();
    let from_a: Vec<String> = drain(&mut seen_a)
        .iter()
        .map(|e| e.topic().to_owned())
        .collect();
    assert_eq!(from_a, vec!["tenant-a.events.counter.x"]);
    assert_eq!(drain(&mut seen_all).len(), 3);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_never_blocks_the_publisher_and_its_drops_are_counted() {
    const N: u64 = 20_000;
    let bus = Bus::local();
    let stalled = bus
        .subscribe_with(
            "bank.events.>",
            Filter::all(),
            SubscribeOptions {
                buffer: Some(8),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut active = bus
        .subscribe_with(
            "bank.events.>",
            Filter::all(),
            SubscribeOptions {
                buffer: Some(N as usize),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let started = Instant::now();
    let mut dropped_for_someone = 0;
    for v in 1..=N {
        let receipt = bus
            .publish(
                &ns("bank"),
                envelope("bank", "account", "a", v, "Deposited"),
            )
            .unwrap();
        dropped_for_someone += receipt.dropped;
    }
    let elapsed = started.elapsed();
    // Nobody reads `stalled`; publishing 20 000 events still takes no time at all.
    assert!(
        elapsed < Duration::from_secs(5),
        "publishing took {elapsed:?}"
    );
    let info = stalled.info();
    assert_eq!(info.delivered, 8, "the buffer filled");
    assert_eq!(
        info.dropped,
        N - 8,
        "every later event was dropped and counted"
    );
    assert_eq!(info.pending, 8);
    assert_eq!(dropped_for_someone as u64, N - 8);
    // The active subscriber got everything, in order.
    let versions: Vec<u64> = drain(&mut active)
        .iter()
        .map(|e| e.envelope().unwrap().version)
        .collect();
    assert_eq!(versions, (1..=N).collect::<Vec<_>>());
    let stats = bus.stats();
    assert_eq!(
        stats.published,
        N + 1,
        "and the second subscription's SubscriptionCreated"
    );
    assert_eq!(stats.dropped, N - 8);
    assert_eq!(stats.delivered, N + 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actor_turns_go_on_while_a_subscriber_is_stalled() {
    let rt = Runtime::builder()
        .namespace("stall")
        .register::<Counter>()
        .memory_store()
        .start()
        .await
        .unwrap();
    let stalled = rt
        .bus()
        .subscribe_with(
            "stall.>",
            Filter::all(),
            SubscribeOptions {
                buffer: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let c = rt.actor::<Counter>("c").unwrap();
    let asks = async {
        for n in 0..500u64 {
            c.ask(CounterCmd::Add(1)).await.unwrap();
            let _ = n;
        }
    };
    tokio::time::timeout(WAIT, asks)
        .await
        .expect("asks complete although nobody reads the subscription");
    // 500 events and 500 EventStored: one fitted, the rest were dropped and counted.
    let info = stalled.info();
    assert_eq!(info.delivered, 1);
    assert_eq!(info.dropped, 999);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn subscription_listing_shows_counters() {
    let bus = Bus::local_with(BusConfig {
        buffer: 4,
        ..Default::default()
    });
    let mut deposits = bus
        .subscribe(
            "bank.events.account.*",
            Filter::all().event_types(["Deposited"]),
        )
        .await
        .unwrap();
    let _everything = bus.subscribe("bank.>", Filter::all()).await.unwrap();
    for v in 1..=6 {
        let t = if v % 2 == 0 { "Deposited" } else { "Withdrew" };
        bus.publish(&ns("bank"), envelope("bank", "account", "a", v, t))
            .unwrap();
    }
    let listed = bus.subscriptions();
    assert_eq!(listed.len(), 2);
    let (first, second) = (&listed[0], &listed[1]);
    assert_eq!(first.id, deposits.id());
    assert_eq!(first.pattern.as_str(), "bank.events.account.*");
    assert_eq!(first.filter.to_string(), "types [Deposited]");
    assert_eq!(first.namespace, Some(ns("bank")));
    assert_eq!(first.kind, SubscriptionKind::Live);
    assert_eq!((first.delivered, first.dropped, first.pending), (3, 0, 3));
    assert_eq!(first.capacity, 4);
    assert!(first.created_at_ms > 0);
    assert_eq!(
        (second.delivered, second.dropped, second.pending),
        (4, 2, 4)
    );
    assert_eq!(drain(&mut deposits).len(), 3);
    assert_eq!(bus.subscriptions()[0].pending, 0);
    // Dropping a subscription removes it from the listing.
    drop(deposits);
    assert_eq!(bus.subscriptions().len(), 1);
    assert_eq!(bus.stats().subscriptions, 1);
}

#[tokio::test]
async fn subscription_creation_is_observable() {
    let bus = Bus::local();
    let mut system = bus
        .subscribe("bank.system.SubscriptionCreated", Filter::all())
        .await
        .unwrap();
    let other = bus
        .subscribe(
            "bank.events.account.*",
            Filter::all().event_types(["Deposited"]),
        )
        .await
        .unwrap();
    let got = drain(&mut system);
    assert_eq!(
        got.len(),
        1,
        "its own creation is not delivered to a subscription"
    );
    match got[0].system_event() {
        Some(SystemEvent::SubscriptionCreated {
            id,
            pattern,
            filter,
        }) => {
            assert_eq!(*id, other.id().0);
            assert_eq!(pattern, "bank.events.account.*");
            assert_eq!(filter, "types [Deposited]");
        }
        other => panic!("expected SubscriptionCreated, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actor_events_arrive_in_version_order_per_actor() {
    let rt = memory_runtime("order").await;
    let mut sub = rt
        .bus()
        .subscribe_with(
            "order.events.counter.*",
            Filter::all(),
            SubscribeOptions {
                buffer: Some(100_000),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let ids = ["a", "b", "c", "d.e"];
    let mut tasks = Vec::new();
    for id in ids {
        for _ in 0..4 {
            let c = rt.actor::<Counter>(id).unwrap();
            tasks.push(tokio::spawn(async move {
                for i in 0..25u64 {
                    if i % 3 == 0 {
                        c.ask(CounterCmd::AddMany(vec![1, 2, 3])).await.unwrap();
                    } else {
                        c.ask(CounterCmd::Add(1)).await.unwrap();
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut versions: HashMap<ActorKey, Vec<u64>> = HashMap::new();
    for event in drain(&mut sub) {
        let e = event.envelope().expect("actor events only");
        assert_eq!(
            event.topic(),
            format!("order.events.counter.{}", e.actor.id.encoded())
        );
        versions.entry(e.actor.clone()).or_default().push(e.version);
    }
    assert_eq!(versions.len(), ids.len());
    for (actor, seen) in versions {
        let last = rt.event_store().latest_version(&actor).await.unwrap();
        assert_eq!(last, 4 * (9 * 3 + 16), "{actor}");
        assert_eq!(
            seen,
            (1..=last).collect::<Vec<_>>(),
            "{actor}: every version once, in order"
        );
    }
    assert_eq!(sub.info().dropped, 0);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn envelopes_on_the_bus_match_the_store() {
    let rt = memory_runtime("same").await;
    let mut sub = rt
        .bus()
        .subscribe("same.events.>", Filter::all())
        .await
        .unwrap();
    let c = rt.actor::<Counter>("c").unwrap();
    c.ask(CounterCmd::AddMany(vec![5, 6])).await.unwrap();
    let published: Vec<EventEnvelope> = drain(&mut sub)
        .iter()
        .map(|e| e.envelope().unwrap().clone())
        .collect();
    let stored = rt.event_store().read(c.key(), 1).await.unwrap();
    assert_eq!(published, stored);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn bus_events_decode_as_their_actors_events() {
    let rt = memory_runtime("typed").await;
    let mut sub = rt
        .bus()
        .subscribe("typed.events.>", Filter::all())
        .await
        .unwrap();
    let c = rt.actor::<Counter>("c").unwrap();
    c.ask(CounterCmd::AddMany(vec![5, 6])).await.unwrap();
    let mut events = Vec::new();
    poll_until(WAIT, "both events on the bus", || {
        events.extend(drain(&mut sub));
        let done = events.len() >= 2;
        async move { done }
    })
    .await;
    let decoded: Vec<u64> = events
        .iter()
        .map(|e| match e.decode::<Counter>() {
            Ok(Some(CounterEvent::Added(n))) => n,
            other => panic!("not an Added event: {other:?}"),
        })
        .collect();
    assert_eq!(decoded, vec![5, 6]);
    // Another kind (with the same event type) does not claim them.
    assert!(matches!(events[0].decode::<Tally>(), Ok(None)));
    // A counter event whose payload is not a counter event: a typed error, never a default.
    let mut bad = envelope("typed", "counter", "c", 3, "Added");
    bad.payload = vec![0xc1]; // a byte MessagePack never uses
    let err = BusEvent::actor(bad).decode::<Counter>().unwrap_err();
    assert_eq!(err.what, "event payload", "{err}");
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn store_happenings_are_system_events() {
    // Two runtimes on one store and one bus: the second one's stale activation conflicts.
    let store = MemoryStore::new(ns("sys"));
    let bus = Bus::local();
    let build = || {
        Runtime::builder()
            .namespace("sys")
            .register::<Counter>()
            .register::<Tally>()
            .store(Arc::new(store.clone()), Arc::new(store.clone()))
            .bus(bus.clone())
            .start()
    };
    let (rt1, rt2) = (build().await.unwrap(), build().await.unwrap());
    let mut system = bus.subscribe("sys.system.*", Filter::all()).await.unwrap();
    let (c1, c2) = (
        rt1.actor::<Counter>("x").unwrap(),
        rt2.actor::<Counter>("x").unwrap(),
    );
    c2.ask(CounterCmd::Get).await.unwrap();
    c1.ask(CounterCmd::AddMany(vec![1, 2])).await.unwrap();
    assert!(
        c2.ask(CounterCmd::Add(10)).await.is_err(),
        "stale activation loses"
    );
    // Tally snapshots every 10 events (in the background).
    let t = rt1.actor::<Tally>("t").unwrap();
    for _ in 0..10 {
        t.ask(CounterCmd::Add(1)).await.unwrap();
    }
    let mut seen: Vec<SystemEvent> = Vec::new();
    poll_until(WAIT, "a SnapshotCreated event", || {
        seen.extend(
            drain(&mut system)
                .iter()
                .filter_map(|e| e.system_event().cloned()),
        );
        let done = seen
            .iter()
            .any(|e| matches!(e, SystemEvent::SnapshotCreated { .. }));
        async move { done }
    })
    .await;
    let x = key("sys", "counter", "x");
    assert!(seen.contains(&SystemEvent::EventStored {
        actor: x.clone(),
        first_version: 1,
        last_version: 2,
        event_types: vec!["Added".into(), "Added".into()],
    }));
    assert!(seen.contains(&SystemEvent::VersionConflict {
        actor: x,
        expected: 0,
        actual: 2,
    }));
    assert!(seen.contains(&SystemEvent::SnapshotCreated {
        actor: key("sys", "tally", "t"),
        version: 10,
    }));
    let stored = seen
        .iter()
        .filter(|e| matches!(e, SystemEvent::EventStored { .. }))
        .count();
    assert_eq!(stored, 11, "one EventStored per commit");
    rt1.shutdown().await.unwrap();
    rt2.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_input_gets_typed_errors() {
    let bus = Bus::local();
    for (pattern, why) in [
        ("bank..x", "token 2 is empty"),
        ("bank.events.acc*", "mixes a wildcard"),
        ("bank.nope.>", "unknown topic family"),
        ("ba nk.>", "whitespace"),
        ("", "must not be empty"),
    ] {
        match bus.subscribe(pattern, Filter::all()).await {
            Err(e @ SubscribeError::Pattern(_)) => assert!(e.to_string().contains(why), "{e}"),
            other => panic!("{pattern:?}: expected a pattern error, got {other:?}"),
        }
    }
    assert!(matches!(
        Filter::all().actor_id_globs(["ok", "bad\\"]),
        Err(e) if e.to_string().contains("lone")
    ));
    // An envelope published to another namespace than its own is refused, not delivered.
    let mut sub = bus.subscribe("bank.>", Filter::all()).await.unwrap();
    match bus.publish(&ns("bank"), envelope("shop", "k", "x", 1, "T")) {
        Err(e @ PublishError::NamespaceMismatch { .. }) => assert_eq!(
            e.to_string(),
            "event of namespace shop published to namespace bank"
        ),
        other => panic!("expected NamespaceMismatch, got {other:?}"),
    }
    assert!(drain(&mut sub).is_empty());
    // Durable subscriptions need a place to keep their position.
    match bus.durable("sub", "bank.events.>", Filter::all()).await {
        Err(e @ DurableError::Unsupported(_)) => {
            assert!(e.to_string().contains("projections"), "{e}")
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
    for (name, pattern, why) in [
        ("bad name", "bank.events.>", "invalid subscription name"),
        ("ok", "*.events.>", "must name one namespace"),
        ("ok", "bank.system.>", "system events are live only"),
    ] {
        match bus.durable(name, pattern, Filter::all()).await {
            Err(e) => assert!(e.to_string().contains(why), "{e}"),
            Ok(_) => panic!("{name}/{pattern} must be refused"),
        }
    }
    assert!(IdPattern::glob("").is_err());
}

// ---------------------------------------------------------------------------------------------
// Projections on the store's log (memory and embedded stores).

async fn counters_with_history(
    namespace: &str,
    actors: &[&str],
    commits: u64,
) -> (Runtime, HashMap<String, u64>) {
    let rt = memory_runtime(namespace).await;
    let mut expected = HashMap::new();
    for id in actors {
        let c = rt.actor::<Counter>(*id).unwrap();
        for i in 0..commits {
            if i % 2 == 0 {
                c.ask(CounterCmd::AddMany(vec![1, 2, 3])).await.unwrap();
            } else {
                c.ask(CounterCmd::Add(10)).await.unwrap();
            }
        }
        expected.insert(
            id.to_string(),
            rt.event_store().latest_version(c.key()).await.unwrap(),
        );
    }
    (rt, expected)
}

async fn totals_of(rt: &Runtime, ids: &[&str]) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    for id in ids {
        let total = rt
            .actor::<Counter>(*id)
            .unwrap()
            .ask(CounterCmd::Get)
            .await
            .unwrap();
        out.insert(id.to_string(), total);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projection_crashing_mid_batch_applies_every_event_exactly_once() {
    let ids = ["a", "b", "c.d", "e"];
    let (rt, expected) = counters_with_history("proj", &ids, 20).await;
    let total_events: u64 = expected.values().sum();
    for crash in [Crash::BeforeWrite(37), Crash::AfterWrite(58)] {
        let db = Arc::new(Mutex::new(LedgerDb::default()));
        let options = || ProjectionOptions {
            ack_every: 16,
            ..Default::default()
        };
        let first = rt
            .projection("ledger", Ledger::new(db.clone(), crash), options())
            .await
            .unwrap();
        poll_until(WAIT, "the read model to crash", || {
            let failed = matches!(first.status().state, ProjectionState::Failed(_));
            async move { failed }
        })
        .await;
        let status = first.status();
        assert!(
            matches!(&status.state, ProjectionState::Failed(r) if r.contains("crashed on purpose")),
            "{status:?}"
        );
        let crashed_at = db.lock().applied.len();
        assert!(crashed_at > 0 && (crashed_at as u64) < total_events);
        first.stop().await.unwrap();
        // Restart on the same read model: it resumes from its own offset.
        let second = rt
            .projection("ledger", Ledger::new(db.clone(), Crash::Never), options())
            .await
            .unwrap();
        second.caught_up(WAIT).await.unwrap();
        let status = second.status();
        if matches!(crash, Crash::AfterWrite(_)) {
            assert!(
                status.skipped >= 1,
                "the applied-but-unacknowledged event came back: {status:?}"
            );
        }
        let totals = totals_of(&rt, &ids).await;
        {
            let db = db.lock();
            assert_exactly_once(&db, &expected);
            assert_eq!(db.totals, totals);
            // Per actor, versions were applied in order.
            let mut last: HashMap<&str, u64> = HashMap::new();
            for (id, v) in &db.order {
                let prev = last.insert(id.as_str(), *v).unwrap_or(0);
                assert_eq!(prev + 1, *v, "{id} out of order");
            }
        }
        second.stop().await.unwrap();
    }
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projection_follows_new_events_and_rebuilds_from_zero() {
    let ids = ["x", "y"];
    let (rt, mut expected) = counters_with_history("rebuild", &ids, 4).await;
    let db = Arc::new(Mutex::new(LedgerDb::default()));
    let projection = rt
        .projection(
            "ledger",
            Ledger::new(db.clone(), Crash::Never),
            ProjectionOptions::default(),
        )
        .await
        .unwrap();
    projection.caught_up(WAIT).await.unwrap();
    // New events are followed.
    rt.actor::<Counter>("x")
        .unwrap()
        .ask(CounterCmd::Add(100))
        .await
        .unwrap();
    *expected.get_mut("x").unwrap() += 1;
    projection.caught_up(WAIT).await.unwrap();
    assert_exactly_once(&db.lock(), &expected);
    // Someone damages the read model; a rebuild starts over from nothing.
    db.lock().totals.insert("x".into(), 999_999);
    projection.rebuild().await.unwrap();
    projection.caught_up(WAIT).await.unwrap();
    let status = projection.status();
    assert_eq!(status.rebuilds, 1);
    assert_eq!(status.state, ProjectionState::Running);
    let totals = totals_of(&rt, &ids).await;
    {
        let db = db.lock();
        assert_exactly_once(&db, &expected);
        assert_eq!(db.totals, totals);
    }
    // The projection is listed with the subscriptions.
    let listed = rt.bus().subscriptions();
    assert!(
        listed
            .iter()
            .any(|s| s.kind == SubscriptionKind::Projection("ledger".into()) && s.delivered > 0)
    );
    let model = projection.stop().await.unwrap();
    assert!(model.db.lock().offset.is_some());
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projection_reads_the_embedded_store_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        Runtime::builder()
            .namespace("emb")
            .register::<Counter>()
            .data_dir(dir.path())
            .start()
    };
    let db = Arc::new(Mutex::new(LedgerDb::default()));
    let mut expected = HashMap::new();
    {
        let rt = start().await.unwrap();
        rt.actor::<Counter>("a")
            .unwrap()
            .ask(CounterCmd::AddMany(vec![1, 2]))
            .await
            .unwrap();
        let p = rt
            .projection(
                "ledger",
                Ledger::new(db.clone(), Crash::Never),
                ProjectionOptions::default(),
            )
            .await
            .unwrap();
        p.caught_up(WAIT).await.unwrap();
        p.stop().await.unwrap();
        rt.shutdown().await.unwrap();
    }
    expected.insert("a".to_string(), 3);
    {
        // Events stored while the projection was down are picked up from its offset.
        let rt = start().await.unwrap();
        rt.actor::<Counter>("a")
            .unwrap()
            .ask(CounterCmd::Add(3))
            .await
            .unwrap();
        let p = rt
            .projection(
                "ledger",
                Ledger::new(db.clone(), Crash::Never),
                ProjectionOptions::default(),
            )
            .await
            .unwrap();
        p.caught_up(WAIT).await.unwrap();
        // It resumed at the commit of its offset (which could have been half applied): the two
        // events of that commit were skipped, nothing before it was read.
        assert_eq!(p.status().skipped, 2);
        assert_eq!(p.status().applied, 1);
        assert_exactly_once(&db.lock(), &expected);
        assert_eq!(db.lock().totals["a"], 6);
        p.stop().await.unwrap();
        rt.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn projection_options_are_checked() {
    let rt = memory_runtime("popts").await;
    let model = || Ledger::new(Arc::new(Mutex::new(LedgerDb::default())), Crash::Never);
    let bad_pattern = ProjectionOptions::default().pattern("other.events.>".parse().unwrap());
    match rt.projection("p", model(), bad_pattern).await {
        Err(e @ ProjectionError::Source(DurableError::NotDurable { .. })) => {
            assert!(e.to_string().contains("namespace popts"), "{e}")
        }
        other => panic!("expected NotDurable, got {:?}", other.map(|_| ())),
    }
    assert!(matches!(
        rt.projection("no spaces", model(), ProjectionOptions::default())
            .await,
        Err(ProjectionError::Source(DurableError::InvalidName(_)))
    ));
    // A filtered projection only applies what passes.
    let c = rt.actor::<Counter>("keep-1").unwrap();
    c.ask(CounterCmd::Add(1)).await.unwrap();
    rt.actor::<Counter>("skip")
        .unwrap()
        .ask(CounterCmd::Add(1))
        .await
        .unwrap();
    let db = Arc::new(Mutex::new(LedgerDb::default()));
    let options = ProjectionOptions::default()
        .filter(Filter::all().actor_id(IdPattern::glob("keep-*").unwrap()));
    let p = rt
        .projection("filtered", Ledger::new(db.clone(), Crash::Never), options)
        .await
        .unwrap();
    p.caught_up(WAIT).await.unwrap();
    assert_eq!(db.lock().applied.len(), 1);
    assert_eq!(db.lock().offset.map(|o: Offset| o.index), Some(0));
    p.stop().await.unwrap();
    rt.shutdown().await.unwrap();
}

/// Publishing is observable (opt in): every interval, a bus with notices on publishes an
/// `EventsPublished` system event per namespace with what it published, delivered locally,
/// dropped and forwarded; subscribers filter on it like any system event. A bus without
/// notices publishes none.
#[tokio::test]
async fn published_events_are_noticed_per_interval_when_opted_in() {
    use futures_util::StreamExt;
    let rt = Runtime::builder()
        .namespace("noticed")
        .register::<Counter>()
        .memory_store()
        .bus_publish_notices(Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    let mut notices = rt
        .bus()
        .subscribe("noticed.system.EventsPublished", Filter::all())
        .await
        .unwrap();
    let mut events = rt
        .bus()
        .subscribe("noticed.events.counter.*", Filter::all())
        .await
        .unwrap();
    let c = rt.actor::<Counter>("c").unwrap();
    c.ask(CounterCmd::AddMany(vec![1, 2])).await.unwrap();
    c.ask(CounterCmd::Add(3)).await.unwrap();
    // Three actor events and two EventStored notices were published (and the subscriptions'
    // SubscriptionCreated notices); the actor events were delivered to `events`. The notices
    // add up to every publish the bus counted but themselves.
    let (mut published, mut delivered, mut notices_seen) = (0u64, 0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(5);
    while published < 5 || published + notices_seen != rt.bus().stats().published {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(left, notices.next())
            .await
            .expect("notices within 5 s that add up to every publish")
            .expect("a notice");
        notices_seen += 1;
        match event.body() {
            aether::bus::EventBody::System(system) => match &system.event {
                SystemEvent::EventsPublished {
                    interval,
                    published: p,
                    delivered: d,
                    forwarded,
                    ..
                } => {
                    assert_eq!(*interval, Duration::from_millis(50));
                    assert_eq!(*forwarded, 0, "a local bus forwards nothing");
                    assert!(*p > 0, "no notice for an interval without publishes");
                    published += p;
                    delivered += d;
                }
                other => panic!("expected EventsPublished, got {other:?}"),
            },
            other => panic!("expected a system event, got {other:?}"),
        }
    }
    assert_eq!(delivered, 3, "the three actor events reached `events`");
    assert_eq!(drain(&mut events).len(), 3);
    rt.shutdown().await.unwrap();

    // Off by default.
    assert_eq!(aether::bus::BusConfig::default().publish_notices, None);
    assert_eq!(aether::RuntimeConfig::default().bus_publish_notices(), None);
}
