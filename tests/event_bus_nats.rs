//! The event bus across nodes, on a real nats-server: live delivery between runtimes,
//! namespace isolation over NATS, no self-redelivery, durable subscriptions that resume in
//! order, projections that crash mid-batch and still apply each event once, cluster events,
//! bursts that cross in batches.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use aether::bus::{
    Bus, BusConfig, BusEvent, DurableError, DurableSubscription, EventBody, Filter,
    ProjectionOptions, ProjectionState, StoredEvent, SubscriptionKind, SystemEnvelope, SystemEvent,
};
use aether::prelude::*;
use aether::{ClusterConfig, EventEnvelope, Runtime};
use common::ledger::{Crash, Ledger, LedgerDb, assert_exactly_once};
use common::nats::NatsServer;
use common::*;
use parking_lot::Mutex;

const WAIT: Duration = Duration::from_secs(20);

async fn js_runtime(url: &str, namespace: &str) -> Runtime {
    Runtime::builder()
        .namespace(namespace)
        .register::<Counter>()
        .jetstream(url)
        .start()
        .await
        .unwrap_or_else(|e| panic!("runtime on {url}: {e}"))
}

fn drain(sub: &mut aether::bus::Subscription) -> Vec<Arc<BusEvent>> {
    let mut out = Vec::new();
    while let Some(e) = sub.try_recv() {
        out.push(e);
    }
    out
}

/// Receives until `n` events arrived (or fails after the deadline).
async fn receive(sub: &mut aether::bus::Subscription, n: usize) -> Vec<Arc<BusEvent>> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while got.len() < n {
        match tokio::time::timeout_at(deadline, sub.recv()).await {
            Ok(Some(e)) => got.push(e),
            Ok(None) => panic!("subscription closed after {} of {n}", got.len()),
            Err(_) => panic!("only {} of {n} events arrived within {WAIT:?}", got.len()),
        }
    }
    got
}

async fn next_durable(sub: &mut DurableSubscription) -> StoredEvent {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a durable event within the deadline")
        .expect("durable subscription works")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_on_node_b_receives_what_node_a_stores() {
    let server = NatsServer::start();
    let a = js_runtime(&server.url(), "xnode").await;
    let b = js_runtime(&server.url(), "xnode").await;
    assert!(a.bus().is_distributed() && b.bus().is_distributed());
    assert_ne!(a.bus().origin(), b.bus().origin());
    let mut on_b = b
        .bus()
        .subscribe("xnode.events.counter.*", Filter::all())
        .await
        .unwrap();
    let mut stored_on_b = b
        .bus()
        .subscribe("xnode.system.EventStored", Filter::all())
        .await
        .unwrap();
    let c = a.actor::<Counter>("acct.1").unwrap();
    c.ask(CounterCmd::AddMany(vec![1, 2])).await.unwrap();
    c.ask(CounterCmd::Add(3)).await.unwrap();
    let got = receive(&mut on_b, 3).await;
    let versions: Vec<u64> = got.iter().map(|e| e.envelope().unwrap().version).collect();
    assert_eq!(versions, vec![1, 2, 3]);
    // The envelopes that crossed the wire are the stored ones.
    let stored = a.event_store().read(c.key(), 1).await.unwrap();
    let received: Vec<EventEnvelope> = got.iter().map(|e| e.envelope().unwrap().clone()).collect();
    assert_eq!(received, stored);
    let system = receive(&mut stored_on_b, 2).await;
    match &system[0].body() {
        EventBody::System(SystemEnvelope { origin, event, .. }) => {
            assert_eq!(origin, a.bus().origin());
            assert!(matches!(
                event,
                SystemEvent::EventStored {
                    last_version: 2,
                    ..
                }
            ));
        }
        other => panic!("expected a system event, got {other:?}"),
    }
    assert!(b.bus().stats().remote_received >= 5);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_stay_isolated_over_nats() {
    let server = NatsServer::start();
    let bank = js_runtime(&server.url(), "bank").await;
    let shop = js_runtime(&server.url(), "shop").await;
    // A third node that only follows events.
    let follower = Bus::connect(&server.url(), BusConfig::default())
        .await
        .unwrap();
    let mut bank_only = follower.subscribe("bank.>", Filter::all()).await.unwrap();
    let mut shop_only = follower
        .subscribe("shop.events.>", Filter::all())
        .await
        .unwrap();
    let mut everything = follower
        .subscribe_all_namespaces("*.events.>", Filter::all())
        .await
        .unwrap();
    bank.actor::<Counter>("x")
        .unwrap()
        .ask(CounterCmd::Add(1))
        .await
        .unwrap();
    shop.actor::<Counter>("x")
        .unwrap()
        .ask(CounterCmd::Add(2))
        .await
        .unwrap();
    shop.actor::<Counter>("y")
        .unwrap()
        .ask(CounterCmd::Add(3))
        .await
        .unwrap();
    let all = receive(&mut everything, 3).await;
    assert_eq!(all.len(), 3);
    // Both namespaces' publishers are done and everything crossed; now check what each saw.
    let bank_seen = receive(&mut bank_only, 2).await; // one event + its EventStored
    assert!(bank_seen.iter().all(|e| e.namespace().as_str() == "bank"));
    let shop_seen = receive(&mut shop_only, 2).await;
    assert!(shop_seen.iter().all(|e| e.namespace().as_str() == "shop"));

    // Someone publishes by hand on bank's live subject a body that names shop, then garbage:
    // neither is delivered; both are counted.
    let raw = async_nats::connect(server.url()).await.unwrap();
    let forged = EventBody::Actor(EventEnvelope {
        namespace: ns("shop"),
        actor: key("shop", "counter", "x"),
        version: 99,
        event_type: "Added".into(),
        payload: vec![],
        timestamp_ms: 0,
        command_id: CommandId::random(),
        correlation_id: CommandId::random(),
        causation_id: None,
        schema_version: 0,
    });
    raw.publish(
        "aether.bank.bus.events.counter.x",
        rmp_serde::to_vec_named(&forged).unwrap().into(),
    )
    .await
    .unwrap();
    raw.publish("aether.bank.bus.events.counter.x", "garbage".into())
        .await
        .unwrap();
    raw.flush().await.unwrap();
    // Two subscriptions of the follower listen there, and each refuses both messages.
    poll_until(WAIT, "both forged messages to be refused", || {
        let refused = follower.stats().malformed;
        async move { refused >= 4 }
    })
    .await;
    assert!(drain(&mut bank_only).is_empty());
    assert!(drain(&mut everything).is_empty());
    bank.shutdown().await.unwrap();
    shop.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_does_not_receive_its_own_events_twice() {
    const N: u64 = 50;
    let server = NatsServer::start();
    let a = js_runtime(&server.url(), "echo").await;
    let b = js_runtime(&server.url(), "echo").await;
    let mut local = a
        .bus()
        .subscribe("echo.events.>", Filter::all())
        .await
        .unwrap();
    let mut remote = b
        .bus()
        .subscribe("echo.events.>", Filter::all())
        .await
        .unwrap();
    let c = a.actor::<Counter>("c").unwrap();
    for _ in 0..N {
        c.ask(CounterCmd::Add(1)).await.unwrap();
    }
    a.bus().flush().await;
    // A's own copies come back over NATS on its connection, in order: once all N echoes have
    // been seen and ignored, no late duplicate can still be on its way.
    poll_until(WAIT, "every echo to come back and be ignored", || {
        let echoes = a.bus().stats().echoes_ignored;
        async move { echoes >= N }
    })
    .await;
    let got_local = drain(&mut local);
    assert_eq!(got_local.len() as u64, N, "each local event exactly once");
    let versions: Vec<u64> = got_local
        .iter()
        .map(|e| e.envelope().unwrap().version)
        .collect();
    assert_eq!(versions, (1..=N).collect::<Vec<_>>());
    let got_remote = receive(&mut remote, N as usize).await;
    assert_eq!(got_remote.len() as u64, N);
    assert!(
        drain(&mut remote).is_empty(),
        "and exactly once on the other node"
    );
    assert_eq!(b.bus().stats().echoes_ignored, 0, "B published nothing");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// Stores `commits` commits round-robin over `ids`; returns every (id, version) in store order.
async fn store_commits(rt: &Runtime, ids: &[&str], commits: usize) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for i in 0..commits {
        let id = ids[i % ids.len()];
        let c = rt.actor::<Counter>(id).unwrap();
        let version = c.ask(CounterCmd::Add(1)).await.unwrap();
        out.push((id.to_string(), version));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_subscriber_resumes_after_downtime_in_order() {
    let server = NatsServer::start();
    let rt = js_runtime(&server.url(), "dur").await;
    let reader = Bus::connect(&server.url(), BusConfig::default())
        .await
        .unwrap();
    let ids = ["a", "b", "c.d"];
    let first = store_commits(&rt, &ids, 10).await;

    let mut sub = reader
        .durable("audit", "dur.events.counter.*", Filter::all())
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..10 {
        let e = next_durable(&mut sub).await;
        seen.push((e.envelope.actor.id.to_string(), e.envelope.version));
    }
    assert_eq!(seen, first);
    sub.ack().await.unwrap();
    assert!(
        reader
            .subscriptions()
            .iter()
            .any(|s| s.kind == SubscriptionKind::Durable("audit".into()) && s.delivered == 10)
    );
    drop(sub); // offline

    let second = store_commits(&rt, &ids, 30).await;
    // Back online: exactly the 30 stored meanwhile, in order, none of the first 10 again.
    let mut sub = reader
        .durable("audit", "dur.events.counter.*", Filter::all())
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut last_offset = None;
    for _ in 0..30 {
        let e = next_durable(&mut sub).await;
        assert!(last_offset < Some(e.offset), "offsets grow");
        last_offset = Some(e.offset);
        seen.push((e.envelope.actor.id.to_string(), e.envelope.version));
    }
    assert_eq!(seen, second);
    // Handled but not acknowledged, then the subscriber dies: the next session gets them again,
    // at once and in order (not after the 30 s acknowledgement timeout).
    drop(sub);
    let started = std::time::Instant::now();
    let mut sub = reader
        .durable("audit", "dur.events.counter.*", Filter::all())
        .await
        .unwrap();
    let again = next_durable(&mut sub).await;
    assert_eq!(
        (again.envelope.actor.id.to_string(), again.envelope.version),
        second[0]
    );
    for expected in &second[1..] {
        let e = next_durable(&mut sub).await;
        assert_eq!(
            &(e.envelope.actor.id.to_string(), e.envelope.version),
            expected
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "redelivered without waiting"
    );
    sub.ack().await.unwrap();
    // Nothing left: a short wait for more gives nothing.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub.next())
            .await
            .is_err()
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_subscriptions_filter_and_refuse_conflicting_patterns() {
    let server = NatsServer::start();
    let rt = js_runtime(&server.url(), "durf").await;
    let bus = rt.bus().clone();
    rt.actor::<Counter>("vip-1")
        .unwrap()
        .ask(CounterCmd::Add(1))
        .await
        .unwrap();
    rt.actor::<Counter>("plain")
        .unwrap()
        .ask(CounterCmd::Add(1))
        .await
        .unwrap();
    rt.actor::<Counter>("vip-2")
        .unwrap()
        .ask(CounterCmd::AddMany(vec![1, 2]))
        .await
        .unwrap();
    let filter = Filter::all().actor_id_globs(["vip-*"]).unwrap();
    let mut sub = bus.durable("vips", "durf.events.>", filter).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let e = next_durable(&mut sub).await;
        seen.push((e.envelope.actor.id.to_string(), e.envelope.version));
    }
    assert_eq!(
        seen,
        vec![
            ("vip-1".into(), 1),
            ("vip-2".into(), 1),
            ("vip-2".into(), 2)
        ]
    );
    sub.ack().await.unwrap();
    drop(sub);
    match bus
        .durable("vips", "durf.events.counter.plain", Filter::all())
        .await
    {
        Err(e @ DurableError::Conflict { .. }) => {
            assert!(e.to_string().contains("delete it first"), "{e}")
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert!(bus.delete_durable(&ns("durf"), "vips").await.unwrap());
    assert!(!bus.delete_durable(&ns("durf"), "vips").await.unwrap());
    // Recreated from the start of the stream.
    let mut sub = bus
        .durable("vips", "durf.events.counter.plain", Filter::all())
        .await
        .unwrap();
    assert_eq!(
        next_durable(&mut sub).await.envelope.actor.id.as_str(),
        "plain"
    );
    // No stream for a namespace that never stored anything.
    match bus.durable("x", "nobody.events.>", Filter::all()).await {
        Err(DurableError::NoEventStream { namespace }) => assert_eq!(namespace, "nobody"),
        other => panic!("expected NoEventStream, got {other:?}"),
    }
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_crashing_mid_batch_applies_every_event_exactly_once_on_jetstream() {
    let server = NatsServer::start();
    let rt = js_runtime(&server.url(), "projjs").await;
    let ids = ["a", "b", "c.d"];
    let mut expected: HashMap<String, u64> = HashMap::new();
    for round in 0..15 {
        for id in ids {
            let c = rt.actor::<Counter>(id).unwrap();
            if round % 2 == 0 {
                c.ask(CounterCmd::AddMany(vec![1, 2, 3])).await.unwrap();
            } else {
                c.ask(CounterCmd::Add(5)).await.unwrap();
            }
        }
    }
    for id in ids {
        let c = rt.actor::<Counter>(id).unwrap();
        expected.insert(
            id.into(),
            rt.event_store().latest_version(c.key()).await.unwrap(),
        );
    }
    let total: u64 = expected.values().sum();
    let options = || ProjectionOptions {
        ack_every: 8,
        ..Default::default()
    };
    for (name, crash) in [
        ("before", Crash::BeforeWrite(41)),
        ("after", Crash::AfterWrite(77)),
    ] {
        let db = Arc::new(Mutex::new(LedgerDb::default()));
        let first = rt
            .projection(name, Ledger::new(db.clone(), crash), options())
            .await
            .unwrap();
        poll_until(WAIT, "the read model to crash", || {
            let failed = matches!(first.status().state, ProjectionState::Failed(_));
            async move { failed }
        })
        .await;
        assert!((db.lock().applied.len() as u64) < total);
        first.stop().await.unwrap();
        // The restarted projection gets the unacknowledged tail again and skips what the read
        // model already holds.
        let second = rt
            .projection(name, Ledger::new(db.clone(), Crash::Never), options())
            .await
            .unwrap();
        second.caught_up(WAIT).await.unwrap();
        if matches!(crash, Crash::AfterWrite(_)) {
            assert!(second.status().skipped >= 1, "{:?}", second.status());
        }
        {
            let db = db.lock();
            assert_exactly_once(&db, &expected);
            let mut last: HashMap<&str, u64> = HashMap::new();
            for (id, v) in &db.order {
                let prev = last.insert(id.as_str(), *v).unwrap_or(0);
                assert_eq!(prev + 1, *v, "{id} out of order");
            }
        }
        // New events keep flowing; a rebuild replays from zero into a cleared read model.
        rt.actor::<Counter>("a")
            .unwrap()
            .ask(CounterCmd::Add(1))
            .await
            .unwrap();
        *expected.get_mut("a").unwrap() += 1;
        second.caught_up(WAIT).await.unwrap();
        second.rebuild().await.unwrap();
        second.caught_up(WAIT).await.unwrap();
        assert_exactly_once(&db.lock(), &expected);
        assert_eq!(second.status().rebuilds, 1);
        second.stop().await.unwrap();
    }
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_events_are_system_events_on_the_bus() {
    let server = NatsServer::start();
    let config = |node: &str| {
        ClusterConfig::new(server.url(), "clbus")
            .node_id(node)
            .heartbeat(Duration::from_millis(200))
            .failure_timeout(Duration::from_millis(1000))
            .lease(Duration::from_millis(1000))
    };
    let one = Runtime::join_cluster(config("node-1"), Runtime::builder().register::<Counter>())
        .await
        .unwrap();
    assert_eq!(one.bus().origin(), "node-1");
    let watcher = Bus::connect(&server.url(), BusConfig::default())
        .await
        .unwrap();
    let mut system = watcher
        .subscribe("clbus.system.*", Filter::all())
        .await
        .unwrap();
    let two = Runtime::join_cluster(config("node-2"), Runtime::builder().register::<Counter>())
        .await
        .unwrap();
    let mut seen: Vec<(String, SystemEvent)> = Vec::new();
    poll_until(WAIT, "NodeJoined and ShardAssigned for node-2", || {
        for e in drain(&mut system) {
            if let EventBody::System(s) = e.body() {
                seen.push((s.origin.clone(), s.event.clone()));
            }
        }
        let joined = seen
            .iter()
            .any(|(_, e)| matches!(e, SystemEvent::NodeJoined { node } if node == "node-2"));
        let assigned = seen
            .iter()
            .any(|(_, e)| matches!(e, SystemEvent::ShardAssigned { node, .. } if node == "node-2"));
        async move { joined && assigned }
    })
    .await;
    // Node 1 saw node 2 join and said so on the bus, under its own name.
    assert!(seen.iter().any(|(origin, e)| origin == "node-1"
        && matches!(e, SystemEvent::NodeJoined { node } if node == "node-2")));
    two.shutdown().await.unwrap();
    one.shutdown().await.unwrap();
}

/// Publication notices travel like any system event: a subscriber on node B sees node A's
/// `EventsPublished`, with the events A forwarded over NATS counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publication_notices_reach_other_nodes() {
    let server = NatsServer::start();
    let a = Runtime::builder()
        .namespace("notices")
        .register::<Counter>()
        .jetstream(server.url())
        .bus_publish_notices(Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    let b = js_runtime(&server.url(), "notices").await;
    let mut on_b = b
        .bus()
        .subscribe("notices.system.EventsPublished", Filter::all())
        .await
        .unwrap();
    a.actor::<Counter>("n")
        .unwrap()
        .ask(CounterCmd::Add(1))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let forwarded = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let event = tokio::time::timeout(left, on_b.next())
            .await
            .expect("a notice from node A within 10 s")
            .expect("a notice");
        match event.body() {
            EventBody::System(SystemEnvelope {
                origin,
                event: SystemEvent::EventsPublished { forwarded, .. },
                ..
            }) if origin == a.bus().origin() && *forwarded > 0 => break *forwarded,
            _ => continue,
        }
    };
    assert!(
        forwarded >= 2,
        "the actor event and its EventStored went over NATS"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

// One thread: the whole burst is queued before the publishing task runs, so how it is cut
// into messages depends on the seed alone, not on how fast that task keeps up.
#[tokio::test]
async fn bursts_cross_in_batches_each_event_once_and_in_order() {
    // Bursts on two topics, interleaved at random: what is queued behind one another on one
    // topic leaves in one message, and every event arrives once, in its topic's order.
    const N: usize = 3000;
    let server = NatsServer::start();
    let config = BusConfig {
        buffer: 2 * N,
        outbound_buffer: 2 * N,
        ..BusConfig::default()
    };
    let a = Bus::connect(&server.url(), config.clone()).await.unwrap();
    let b = Bus::connect(&server.url(), config).await.unwrap();
    let mut sub = b.subscribe("burst.events.>", Filter::all()).await.unwrap();
    // A plain NATS subscriber counts the messages the events travel in.
    let raw = async_nats::connect(server.url()).await.unwrap();
    let mut wire = raw.subscribe("aether.burst.bus.>").await.unwrap();
    raw.flush().await.unwrap();
    let namespace = ns("burst");
    let mut next = HashMap::from([("x", 0u64), ("y", 0u64)]);
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..N {
        let actor = if rng.u8(0..10) == 0 { "y" } else { "x" };
        let version = next.get_mut(actor).unwrap();
        *version += 1;
        a.publish(
            &namespace,
            envelope("burst", "counter", actor, *version, "Added"),
        )
        .unwrap();
    }
    a.flush().await;
    let got = receive(&mut sub, N).await;
    let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
    for e in &got {
        let env = e.envelope().unwrap();
        seen.entry(env.actor.id.to_string())
            .or_default()
            .push(env.version);
    }
    for (actor, last) in &next {
        assert_eq!(
            seen.get(*actor).cloned().unwrap_or_default(),
            (1..=*last).collect::<Vec<_>>(),
            "{actor}: every event once, in order"
        );
    }
    let (sent, received) = (a.stats().remote_sent, b.stats().remote_received);
    assert_eq!((sent, received), (N as u64, N as u64));
    assert_eq!(b.stats().malformed, 0);
    let (mut messages, mut events) = (0, 0);
    while events < N {
        let msg = tokio::time::timeout(WAIT, wire.next())
            .await
            .expect("the burst's messages")
            .unwrap();
        if msg.subject.ends_with(".bus.interest") {
            // A publisher asking who listens (see `aether::bus::interest`), not an event.
            continue;
        }
        messages += 1;
        events += msg
            .headers
            .as_ref()
            .and_then(|h| h.get("Aether-Bus-Batch"))
            .map_or(1, |n| n.as_str().parse::<usize>().unwrap());
    }
    assert_eq!(events, N);
    assert!(
        messages < N / 2,
        "{N} events in {messages} messages: batched"
    );

    // Batches made by hand: each body behind its length (four bytes, big-endian). One whose
    // header says more events than it holds delivers those it holds and counts the missing
    // one; a size out of range or unreadable delivers nothing; a body that does not decode
    // costs only itself; a frame longer than the message ends it; bodies past the count are
    // not delivered.
    let subject = "aether.burst.bus.events.counter.z";
    let body = |v| {
        rmp_serde::to_vec_named(&EventBody::Actor(envelope(
            "burst", "counter", "z", v, "Added",
        )))
        .unwrap()
    };
    let framed = |bodies: &[Vec<u8>]| -> Vec<u8> {
        bodies
            .iter()
            .flat_map(|b| (b.len() as u32).to_be_bytes().into_iter().chain(b.clone()))
            .collect()
    };
    let publish = |count: &str, payload: Vec<u8>| {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Aether-Bus-Batch", count);
        raw.publish_with_headers(subject, headers, payload.into())
    };
    publish("3", framed(&[body(1), body(2)])).await.unwrap();
    publish("100000", framed(&[body(3), body(4)]))
        .await
        .unwrap();
    publish("two", framed(&[body(5), body(6)])).await.unwrap();
    publish("3", framed(&[body(7), b"garbage".to_vec(), body(8)]))
        .await
        .unwrap();
    let mut cut = framed(&[body(9)]);
    cut.extend_from_slice(&[0, 0, 1, 0, 1, 2, 3]);
    publish("2", cut).await.unwrap();
    publish("2", framed(&[body(10), body(11), body(12)]))
        .await
        .unwrap();
    raw.flush().await.unwrap();
    let z = receive(&mut sub, 7).await;
    let versions: Vec<u64> = z.iter().map(|e| e.envelope().unwrap().version).collect();
    assert_eq!(versions, [1, 2, 7, 8, 9, 10, 11]);
    poll_until(WAIT, "the bad batches to be counted", || {
        let malformed = b.stats().malformed;
        async move { malformed >= 6 }
    })
    .await;
    // The missing third, the two bad sizes, the garbage, the cut frame, the extra body.
    assert_eq!(b.stats().malformed, 6);
    assert!(drain(&mut sub).is_empty(), "nothing else was delivered");
}

/// A bus publishing events of actor `quiet/counter/x` with versions 1, 2, ... (20 at a time,
/// then a millisecond's pause) until stopped: the publisher of the `bus::interest` tests.
struct Steady {
    bus: Bus,
    /// The last version `publish` returned for.
    published: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Steady {
    async fn start(url: &str) -> Steady {
        use std::sync::atomic::Ordering;
        let bus = Bus::connect(url, BusConfig::default()).await.unwrap();
        let published = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = tokio::spawn({
            let (bus, published, stop) = (bus.clone(), published.clone(), stop.clone());
            async move {
                let namespace = ns("quiet");
                let mut version = 0;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..20 {
                        version += 1;
                        bus.publish(
                            &namespace,
                            envelope("quiet", "counter", "x", version, "Added"),
                        )
                        .unwrap();
                        published.store(version, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        });
        Steady {
            bus,
            published,
            stop,
            task,
        }
    }

    fn last(&self) -> u64 {
        self.published.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until version `version` is published.
    async fn reach(&self, version: u64) {
        poll_until(WAIT, &format!("version {version} to be published"), || {
            let at = self.last();
            async move {
                if at < version {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                at >= version
            }
        })
        .await;
    }

    /// Waits until the bus has gone quiet: of 200 events published, at least 150 not sent.
    async fn quiet(&self) {
        poll_until(WAIT, "the publisher to go quiet", || async {
            let (unheard, at) = (self.bus.stats().remote_unheard, self.last());
            self.reach(at + 200).await;
            self.bus.stats().remote_unheard >= unheard + 150
        })
        .await;
    }

    async fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap();
    }
}

/// A live subscription of `bus` to `pattern` whose buffer holds everything a test publishes
/// (a drop would prove nothing).
async fn roomy_subscription(
    bus: &Bus,
    pattern: &str,
    all_namespaces: bool,
) -> aether::bus::Subscription {
    let options = aether::bus::SubscribeOptions {
        buffer: Some(1 << 20),
        all_namespaces,
    };
    bus.subscribe_with(pattern, Filter::all(), options)
        .await
        .unwrap()
}

/// Receives from `sub` until version `until`, checking that every version after `after`
/// arrives, in order (earlier ones are skipped).
async fn every_version_after(
    sub: &mut aether::bus::Subscription,
    after: u64,
    until: u64,
    what: &str,
) {
    let mut next = after + 1;
    let deadline = tokio::time::Instant::now() + WAIT;
    while next <= until {
        let event = match tokio::time::timeout_at(deadline, sub.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => panic!("{what}: closed before version {next}"),
            Err(_) => panic!("{what}: version {next} (subscribed after {after}) not delivered"),
        };
        let version = event.envelope().unwrap().version;
        if version < next {
            continue;
        }
        assert_eq!(
            version, next,
            "{what}: an event published after subscribe returned was missed"
        );
        next += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_sends_only_while_someone_listens_and_a_new_listener_misses_nothing() {
    // The hard case of `bus::interest`: a publisher that has gone quiet (a probe found no
    // listener) while a listener subscribes at a random moment. Every event published after
    // `subscribe` returns must arrive, round after round.
    let server = NatsServer::start();
    let a = Steady::start(&server.url()).await;
    let b = Bus::connect(&server.url(), BusConfig::default())
        .await
        .unwrap();
    let mut rng = fastrand::Rng::with_seed(11);
    for round in 0..6 {
        // Nobody listens: the publisher goes quiet, and stays quiet while it keeps publishing.
        a.quiet().await;
        let sent_before = a.bus.stats().remote_sent;
        a.reach(a.last() + 2000).await;
        a.bus.flush().await;
        let quietly = a.bus.stats().remote_sent - sent_before;
        assert!(
            quietly < 1000,
            "round {round}: {quietly} of 2000 events sent with nobody listening"
        );

        // A listener subscribes at a random moment, exact or across namespaces.
        tokio::time::sleep(Duration::from_millis(rng.u64(0..150))).await;
        let mut sub = if round % 2 == 0 {
            roomy_subscription(&b, "quiet.events.>", false).await
        } else {
            roomy_subscription(&b, "*.events.counter.*", true).await
        };
        // Event `after` may have been on its way; everything past it was published after
        // `subscribe` returned.
        let after = a.last() + 1;
        a.reach(after + 1000).await;
        every_version_after(&mut sub, after, after + 1000, &format!("round {round}")).await;
    }
    a.stop().await;
    assert_eq!((b.stats().malformed, b.stats().dropped), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_unheard_sends_every_event_to_plain_nats_subscribers() {
    let server = NatsServer::start();
    let config = BusConfig {
        forward_unheard: true,
        ..BusConfig::default()
    };
    let a = Bus::connect(&server.url(), config).await.unwrap();
    let raw = async_nats::connect(server.url()).await.unwrap();
    let mut wire = raw.subscribe("aether.plain.bus.events.>").await.unwrap();
    raw.flush().await.unwrap();
    let namespace = ns("plain");
    for version in 1..=300 {
        a.publish(
            &namespace,
            envelope("plain", "counter", "x", version, "Added"),
        )
        .unwrap();
        if version % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    a.flush().await;
    let mut events = 0;
    while events < 300 {
        let msg = tokio::time::timeout(WAIT, wire.next())
            .await
            .expect("every event reaches the plain subscriber")
            .unwrap();
        events += msg
            .headers
            .as_ref()
            .and_then(|h| h.get("Aether-Bus-Batch"))
            .map_or(1, |n| n.as_str().parse::<usize>().unwrap());
    }
    assert_eq!(a.stats().remote_unheard, 0);
    assert_eq!(a.stats().remote_sent, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_given_up_while_it_waits_leaves_nobody_listening() {
    // `subscribe` waits out the publishers' lease after the server knows it; a caller that
    // gives up meanwhile leaves no subscription behind that answers probes (and keeps every
    // publisher sending) with nobody reading it. (The waiting task is aborted; without that,
    // it would still end at the first event it could not deliver.)
    let server = NatsServer::start();
    let a = Steady::start(&server.url()).await;
    let b = Bus::connect(&server.url(), BusConfig::default())
        .await
        .unwrap();
    let given_up = tokio::time::timeout(
        Duration::from_millis(50),
        b.subscribe("quiet.events.>", Filter::all()),
    )
    .await;
    assert!(given_up.is_err(), "subscribe waits out the lease");
    // Each check spans two leases: a subscription left behind would answer every probe, and
    // the publisher would send.
    poll_until(
        WAIT,
        "the publisher to go quiet after the caller gave up",
        || async {
            let (unheard, sent) = (a.bus.stats().remote_unheard, a.bus.stats().remote_sent);
            tokio::time::sleep(2 * aether::bus::interest::LEASE).await;
            let stats = a.bus.stats();
            stats.remote_unheard > unheard + 100 && stats.remote_sent < sent + 100
        },
    )
    .await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_on_a_slow_link_misses_nothing_published_after_subscribe_returns() {
    // `subscribe` must not count on the server having its subscriptions once they left the
    // socket. The listener's link delays every chunk by 300 ms: its subscriptions reach the
    // server long after they were written, while a quiet publisher on a fast link keeps
    // probing. `subscribe` returns only once its own check message came back through the
    // server, and every later event arrives.
    let server = NatsServer::start();
    let link = common::proxy::Proxy::start(&format!("127.0.0.1:{}", server.port)).await;
    let a = Steady::start(&server.url()).await;
    let b = Bus::connect(&link.url(), BusConfig::default())
        .await
        .unwrap();
    a.quiet().await;
    link.set(common::proxy::Mode::Delay(Duration::from_millis(300)));
    let mut sub = roomy_subscription(&b, "quiet.events.>", false).await;
    let after = a.last() + 1;
    a.reach(after + 2000).await;
    every_version_after(&mut sub, after, after + 2000, "on a slow link").await;
    a.stop().await;
    assert_eq!((b.stats().malformed, b.stats().dropped), (0, 0));
}
