//! B12–B14: the event bus against raw baselines measured in the same run.
//!
//! - B12: events per second from one bus to a subscriber on another bus, across a nats-server
//!   started by the bench (encode, live subject, origin header, decode, pattern and filter,
//!   buffer) ÷ raw async-nats publish → subscribe of the same bytes with the same header.
//! - B13: local publish latency, p50 and p99, of `Bus::publish` to one matching subscriber
//!   (topic, fan-out, pattern and filter check, buffer) ÷ a raw `try_send` of a ready
//!   `Arc` into a tokio channel, each call timed the same way.
//! - B14: local publish throughput to four subscribers ÷ raw `try_send` to four channels.

#[path = "../tests/common/nats.rs"]
#[allow(dead_code)]
mod nats;
mod support;

use std::sync::Arc;
use std::time::Instant;

use aether::bus::{Bus, BusConfig, BusEvent, EventBody, Filter, SubscribeOptions};
use aether::{ActorId, ActorKey, CommandId, EventEnvelope, Kind, Namespace};
use bytes::Bytes;
use futures_util::StreamExt;
use support::{Figure, median, report};

const REMOTE_EVENTS: usize = 100_000;
const LOCAL_EVENTS: usize = 200_000;
/// A remote measurement that sees nothing for this long has lost messages: fail, do not hang.
const STALL: std::time::Duration = std::time::Duration::from_secs(30);

fn envelope(version: u64) -> EventEnvelope {
    let namespace = Namespace::new("bench").expect("valid");
    let actor = ActorKey::new(
        namespace.clone(),
        Kind::new("account").expect("valid"),
        ActorId::new("alice").expect("valid"),
    );
    EventEnvelope {
        namespace,
        actor,
        version,
        event_type: "Deposited".into(),
        payload: rmp_serde::to_vec_named(&version).expect("encodes"),
        timestamp_ms: 1,
        command_id: CommandId::random(),
        correlation_id: CommandId::random(),
        causation_id: None,
        schema_version: 0,
    }
}

async fn client(url: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .subscription_capacity(REMOTE_EVENTS * 2)
        .connect(url)
        .await
        .expect("connects")
}

/// Raw: publish the bytes of an encoded envelope with the same header; count on the other side.
async fn raw_remote(url: &str) -> f64 {
    let (publisher, subscriber) = (client(url).await, client(url).await);
    let subject = "aether.bench.bus.events.account.alice";
    let mut sub = subscriber.subscribe(subject).await.expect("subscribe");
    subscriber.flush().await.expect("flush");
    let payload =
        Bytes::from(rmp_serde::to_vec_named(&EventBody::Actor(envelope(1))).expect("encodes"));
    let counter = tokio::spawn(async move {
        let mut n = 0;
        while n < REMOTE_EVENTS {
            match tokio::time::timeout(STALL, sub.next()).await {
                Ok(m) => std::hint::black_box(m.expect("message")),
                Err(_) => panic!("raw: only {n} of {REMOTE_EVENTS} messages arrived"),
            };
            n += 1;
        }
    });
    let start = Instant::now();
    for _ in 0..REMOTE_EVENTS {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Aether-Bus-Origin", "bus-raw");
        publisher
            .publish_with_headers(subject, headers, payload.clone())
            .await
            .expect("publish");
    }
    counter.await.expect("counter");
    REMOTE_EVENTS as f64 / start.elapsed().as_secs_f64()
}

/// Ours: `Bus::publish` on one bus, a subscription on another.
async fn bus_remote(url: &str) -> f64 {
    let config = BusConfig {
        buffer: REMOTE_EVENTS,
        outbound_buffer: REMOTE_EVENTS,
        ..BusConfig::default()
    };
    let publisher = Bus::with_nats(client(url).await, config.clone());
    let subscriber = Bus::with_nats(client(url).await, config);
    let mut sub = subscriber
        .subscribe(
            "bench.events.account.*",
            Filter::all().event_types(["Deposited"]),
        )
        .await
        .expect("subscribe");
    let events: Vec<EventEnvelope> = (1..=REMOTE_EVENTS as u64).map(envelope).collect();
    let namespace = Namespace::new("bench").expect("valid");
    let start = Instant::now();
    for e in events {
        publisher.publish(&namespace, e).expect("publish");
    }
    for n in 0..REMOTE_EVENTS {
        match tokio::time::timeout(STALL, sub.recv()).await {
            Ok(e) => std::hint::black_box(e.expect("event")),
            Err(_) => panic!(
                "bus: only {n} of {REMOTE_EVENTS} events arrived; publisher {:?}, subscriber {:?}, {:?}",
                publisher.stats(),
                subscriber.stats(),
                sub.info()
            ),
        };
    }
    let rate = REMOTE_EVENTS as f64 / start.elapsed().as_secs_f64();
    assert_eq!(
        publisher.stats().remote_dropped,
        0,
        "nothing dropped on the way"
    );
    rate
}

/// Per-call latencies in nanoseconds, sorted.
fn percentile(sorted: &[u64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p) as usize] as f64
}

/// Raw: `try_send` of a ready `Arc<BusEvent>`, one channel, drained by a task.
async fn raw_local_latency() -> Vec<u64> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Arc<BusEvent>>(LOCAL_EVENTS);
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let events: Vec<Arc<BusEvent>> = (1..=LOCAL_EVENTS as u64)
        .map(|v| Arc::new(BusEvent::actor(envelope(v))))
        .collect();
    let mut times = Vec::with_capacity(LOCAL_EVENTS);
    for e in events {
        let t = Instant::now();
        let _ = std::hint::black_box(tx.try_send(e));
        times.push(t.elapsed().as_nanos() as u64);
    }
    drop(tx);
    drain.await.expect("drain");
    times.sort_unstable();
    times
}

/// Ours: `Bus::publish` of an envelope to one matching subscriber, drained by a task.
async fn bus_local_latency() -> Vec<u64> {
    let bus = Bus::local();
    let mut sub = bus
        .subscribe_with(
            "bench.events.account.*",
            Filter::all().event_types(["Deposited"]),
            SubscribeOptions {
                buffer: Some(LOCAL_EVENTS),
                ..Default::default()
            },
        )
        .await
        .expect("subscribe");
    let drain = tokio::spawn(async move { while sub.recv().await.is_some() {} });
    let events: Vec<EventEnvelope> = (1..=LOCAL_EVENTS as u64).map(envelope).collect();
    let namespace = Namespace::new("bench").expect("valid");
    let mut times = Vec::with_capacity(LOCAL_EVENTS);
    for e in events {
        let t = Instant::now();
        let receipt = bus.publish(&namespace, e).expect("publish");
        times.push(t.elapsed().as_nanos() as u64);
        std::hint::black_box(receipt);
    }
    assert_eq!(bus.stats().dropped, 0);
    drop(bus);
    drain.abort();
    times.sort_unstable();
    times
}

const FANOUT: usize = 4;

async fn raw_local_fanout() -> f64 {
    let mut senders = Vec::new();
    let mut drains = Vec::new();
    for _ in 0..FANOUT {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Arc<BusEvent>>(LOCAL_EVENTS);
        senders.push(tx);
        drains.push(tokio::spawn(
            async move { while rx.recv().await.is_some() {} },
        ));
    }
    let events: Vec<BusEvent> = (1..=LOCAL_EVENTS as u64)
        .map(|v| BusEvent::actor(envelope(v)))
        .collect();
    let start = Instant::now();
    for e in events {
        let e = Arc::new(e);
        for tx in &senders {
            let _ = tx.try_send(Arc::clone(&e));
        }
    }
    let rate = LOCAL_EVENTS as f64 / start.elapsed().as_secs_f64();
    drop(senders);
    for d in drains {
        d.await.expect("drain");
    }
    rate
}

async fn bus_local_fanout() -> f64 {
    let bus = Bus::local();
    let mut drains = Vec::new();
    for _ in 0..FANOUT {
        let mut sub = bus
            .subscribe_with(
                "bench.events.>",
                Filter::all(),
                SubscribeOptions {
                    buffer: Some(LOCAL_EVENTS),
                    ..Default::default()
                },
            )
            .await
            .expect("subscribe");
        drains.push(tokio::spawn(
            async move { while sub.recv().await.is_some() {} },
        ));
    }
    let events: Vec<EventEnvelope> = (1..=LOCAL_EVENTS as u64).map(envelope).collect();
    let namespace = Namespace::new("bench").expect("valid");
    let start = Instant::now();
    for e in events {
        std::hint::black_box(bus.publish(&namespace, e).expect("publish"));
    }
    let rate = LOCAL_EVENTS as f64 / start.elapsed().as_secs_f64();
    assert_eq!(bus.stats().dropped, 0);
    for d in drains {
        d.abort();
    }
    rate
}

fn main() {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    tokio.block_on(async {
        let server = nats::NatsServer::start();
        let url = server.url();
        // Warm up both paths once.
        raw_remote(&url).await;
        bus_remote(&url).await;
        // `BUS_ONLY=ours` (for a profiler): only our side of B12, ten times over.
        if std::env::var("BUS_ONLY").as_deref() == Ok("ours") {
            for _ in 0..10 {
                bus_remote(&url).await;
            }
            return;
        }
        let (mut raw, mut ours) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            raw.push(raw_remote(&url).await);
            ours.push(bus_remote(&url).await);
        }
        report(Figure {
            id: "B12",
            measure: "bus events/s node to node ÷ raw NATS pub/sub, same bytes",
            ours: median(ours),
            baseline: median(raw),
            unit: "ev/s",
            target: (">=", 0.5),
        });

        let (mut raw_p50, mut raw_p99, mut our_p50, mut our_p99) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..3 {
            let raw = raw_local_latency().await;
            let ours = bus_local_latency().await;
            raw_p50.push(percentile(&raw, 0.50));
            raw_p99.push(percentile(&raw, 0.99));
            our_p50.push(percentile(&ours, 0.50));
            our_p99.push(percentile(&ours, 0.99));
        }
        report(Figure {
            id: "B13a",
            measure: "local publish latency p50 ÷ raw mpsc try_send p50",
            ours: median(our_p50),
            baseline: median(raw_p50),
            unit: "ns",
            target: ("<=", 20.0),
        });
        report(Figure {
            id: "B13b",
            measure: "local publish latency p99 ÷ raw mpsc try_send p99",
            ours: median(our_p99),
            baseline: median(raw_p99),
            unit: "ns",
            target: ("<=", 20.0),
        });

        let (mut raw, mut ours) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            raw.push(raw_local_fanout().await);
            ours.push(bus_local_fanout().await);
        }
        report(Figure {
            id: "B14",
            measure: "local publish to 4 subscribers/s ÷ raw try_send to 4 channels",
            ours: median(ours),
            baseline: median(raw),
            unit: "ev/s",
            target: (">=", 0.2),
        });
        // The server lives until here.
        drop(server);
    });
}
