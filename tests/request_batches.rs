//! The first attempt of a remote ask may go to the owner node the caller's map names, in one
//! batch with the other requests bound there; every way that can miss falls back to the
//! actor's own subject. Here against a real nats-server, with stand-ins for the owners: a
//! node nobody listens for, a node that answers `NotOwner`, a node that never answers. Each
//! request is answered once, by the stand-in owner on its actor's subject.

mod common;

use std::sync::Arc;
use std::time::Duration;

use aether::Namespace;
use aether::routing::{Route, Transport};
use aether::wire::{RemoteReply, TraceParent};
use async_nats::Subject;
use common::nats::NatsServer;
use common::poll_until;
use common::wire::varint;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(20);

/// Where the stand-in owner serves: every actor of shards 0 to 9 of namespace `tb`.
const SHARDS: &str = "aether.tb.shard.>";

/// A stand-in owner on the actors' subjects: answers every request with its own frame
/// (`RemoteReply::Ok`), except the actor `blocker`, answered only once `release` says `true`.
/// Returns the frames it took, in order.
async fn owner(
    client: &async_nats::Client,
    release: watch::Receiver<bool>,
) -> Arc<Mutex<Vec<Vec<u8>>>> {
    let seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let mut sub = client.subscribe(SHARDS).await.unwrap();
    let (answering, log) = (client.clone(), Arc::clone(&seen));
    tokio::spawn(async move {
        let client = answering;
        while let Some(msg) = sub.next().await {
            let reply = msg.reply.expect("a request");
            let frame = RemoteReply::Ok {
                reply: msg.payload.to_vec(),
            }
            .encode();
            log.lock().push(msg.payload.to_vec());
            if msg.subject.ends_with(".blocker") {
                let (client, mut release) = (client.clone(), release.clone());
                tokio::spawn(async move {
                    release.wait_for(|go| *go).await.unwrap();
                    client.publish(reply, frame.into()).await.unwrap();
                });
            } else {
                client.publish(reply, frame.into()).await.unwrap();
            }
        }
    });
    client.flush().await.unwrap();
    seen
}

/// One request of a batch: its token, its shard, its trace context's bytes, its frame.
type Item = (u64, u64, Option<Vec<u8>>, Vec<u8>);

/// A request batch as docs/wire.md describes it.
fn decode_batch(payload: &[u8]) -> Vec<Item> {
    assert_eq!(payload[0], 1, "batch format");
    let (mut at, mut items) = (1, Vec::new());
    while at < payload.len() {
        let token = varint(payload, &mut at);
        let shard = varint(payload, &mut at);
        let trace = match payload[at] {
            0 => {
                at += 1;
                None
            }
            1 => {
                at += 1 + 25;
                Some(payload[at - 25..at].to_vec())
            }
            other => panic!("trace marker {other}"),
        };
        let len = varint(payload, &mut at) as usize;
        items.push((token, shard, trace, payload[at..at + len].to_vec()));
        at += len;
    }
    items
}

/// A transport whose first attempt waits `attempt` for an answer, with one request in flight
/// (to the actor `blocker`, held by the owner until `release`): a request sent beside it may
/// go in a batch.
async fn transport_beside_a_request(
    client: &async_nats::Client,
    attempt: Duration,
    seen: &Arc<Mutex<Vec<Vec<u8>>>>,
) -> (Arc<Transport>, tokio::task::JoinHandle<RemoteReply>) {
    let transport = Arc::new(Transport::new(
        client.clone(),
        Namespace::new("tb").unwrap(),
        attempt,
        tokio::runtime::Handle::current(),
    ));
    let t = Arc::clone(&transport);
    let blocker = tokio::spawn(async move {
        t.request(
            "aether.tb.shard.1.k.blocker".into(),
            b"blocker".to_vec(),
            None,
            Instant::now() + WAIT,
            None,
        )
        .await
        .expect("the blocker is answered")
    });
    poll_until(WAIT, "the owner holds the blocker", || {
        let held = seen.lock().iter().any(|f| f == b"blocker");
        async move { held }
    })
    .await;
    (transport, blocker)
}

fn answered_with(reply: RemoteReply, frame: &[u8]) {
    assert_eq!(
        reply,
        RemoteReply::Ok {
            reply: frame.to_vec()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_nobody_takes_is_sent_again_on_the_actor_subject_at_once() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let (release, held) = watch::channel(false);
    let seen = owner(&client, held).await;
    let (t, blocker) = transport_beside_a_request(&client, WAIT, &seen).await;
    let ghost = Route {
        node: Subject::from("aether.tb.node.ghost.asks"),
        shard: 3,
    };
    let started = Instant::now();
    let reply = t
        .request(
            "aether.tb.shard.3.k.first".into(),
            b"first".to_vec(),
            None,
            started + WAIT,
            Some(ghost.clone()),
        )
        .await
        .unwrap();
    answered_with(reply, b"first");
    assert_eq!(t.batched(), 1, "the first attempt went in a batch");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "sent again at once, not after the attempt's timeout: {:?}",
        started.elapsed()
    );
    // The node refused: for a while, requests for it go one by one from the start.
    let reply = t
        .request(
            "aether.tb.shard.3.k.second".into(),
            b"second".to_vec(),
            None,
            Instant::now() + WAIT,
            Some(ghost),
        )
        .await
        .unwrap();
    answered_with(reply, b"second");
    assert_eq!(t.batched(), 1, "no batch to a node that refused one");
    assert_eq!((t.retries(), t.resends()), (0, 0));
    release.send(true).unwrap();
    answered_with(blocker.await.unwrap(), b"blocker");
    let frames = seen.lock().clone();
    assert_eq!(
        frames,
        vec![b"blocker".to_vec(), b"first".to_vec(), b"second".to_vec()],
        "each request reached the owner once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answered_not_owner_is_retried_on_the_actor_subject() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let (release, held) = watch::channel(false);
    let seen = owner(&client, held).await;
    // A node whose map is newer than the caller's: it refuses every request of a batch.
    let mut stale = client.subscribe("aether.tb.node.stale.asks").await.unwrap();
    let refuser = client.clone();
    let refused: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    let log = Arc::clone(&refused);
    tokio::spawn(async move {
        while let Some(msg) = stale.next().await {
            let reply = msg.reply.expect("a batch has a reply subject").to_string();
            let (inbox, group) = reply.rsplit_once('.').unwrap();
            assert!(group.starts_with('g'), "{reply}");
            for (token, shard, _, _) in decode_batch(&msg.payload) {
                log.lock().push((token, shard));
                let frame = RemoteReply::NotOwner {
                    shard: shard as u32,
                }
                .encode();
                refuser
                    .publish(format!("{inbox}.{token}"), frame.into())
                    .await
                    .unwrap();
            }
        }
    });
    client.flush().await.unwrap();
    let (t, blocker) = transport_beside_a_request(&client, WAIT, &seen).await;
    let reply = t
        .request(
            "aether.tb.shard.7.k.moved".into(),
            b"moved".to_vec(),
            None,
            Instant::now() + WAIT,
            Some(Route {
                node: Subject::from("aether.tb.node.stale.asks"),
                shard: 7,
            }),
        )
        .await
        .unwrap();
    answered_with(reply, b"moved");
    assert_eq!(refused.lock().len(), 1, "the stale node saw it once");
    assert_eq!(refused.lock()[0].1, 7, "with its shard");
    assert_eq!((t.batched(), t.retries(), t.resends()), (1, 1, 0));
    release.send(true).unwrap();
    answered_with(blocker.await.unwrap(), b"blocker");
    assert_eq!(
        seen.lock()
            .iter()
            .filter(|f| f.as_slice() == b"moved")
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_a_silent_node_swallows_is_resent_on_the_actor_subject_after_its_timeout() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let (release, held) = watch::channel(false);
    let seen = owner(&client, held).await;
    // A node that is paused, or whose dead connection the server still keeps.
    let mut silent = client
        .subscribe("aether.tb.node.silent.asks")
        .await
        .unwrap();
    let swallowed: Arc<Mutex<Vec<Item>>> = Arc::default();
    let log = Arc::clone(&swallowed);
    tokio::spawn(async move {
        while let Some(msg) = silent.next().await {
            log.lock().extend(decode_batch(&msg.payload));
        }
    });
    client.flush().await.unwrap();
    let attempt = Duration::from_secs(1);
    let (t, blocker) = transport_beside_a_request(&client, attempt, &seen).await;
    let trace = TraceParent {
        trace_id: 0x0123_4567_89ab_cdef_0011_2233_4455_6677,
        span_id: 0x8899_aabb_ccdd_eeff,
        sampled: true,
    };
    let started = Instant::now();
    let lost = {
        let t = Arc::clone(&t);
        tokio::spawn(async move {
            t.request(
                "aether.tb.shard.2.k.lost".into(),
                b"lost".to_vec(),
                Some(trace),
                started + WAIT,
                Some(Route {
                    node: Subject::from("aether.tb.node.silent.asks"),
                    shard: 2,
                }),
            )
            .await
            .unwrap()
        })
    };
    poll_until(WAIT, "the silent node took the batch", || {
        let took = !swallowed.lock().is_empty();
        async move { took }
    })
    .await;
    // The blocker is answered now, before its own attempt times out.
    release.send(true).unwrap();
    answered_with(blocker.await.unwrap(), b"blocker");
    answered_with(lost.await.unwrap(), b"lost");
    assert!(started.elapsed() >= attempt, "{:?}", started.elapsed());
    // Resent: `lost` once, and the blocker as often as its attempts timed out while held.
    let blockers = seen
        .lock()
        .iter()
        .filter(|f| f.as_slice() == b"blocker")
        .count() as u64;
    assert_eq!(
        (t.batched(), t.retries(), t.resends()),
        (1, 0, 1 + (blockers - 1))
    );
    // What the silent node got is the request as the wire doc says: its shard, its trace
    // context (trace id, span id, sampled), its frame.
    let got = swallowed.lock().clone();
    assert_eq!(got.len(), 1);
    let (_, shard, ref context, ref frame) = got[0];
    assert_eq!((shard, frame.as_slice()), (2, &b"lost"[..]));
    let mut expected = trace.trace_id.to_be_bytes().to_vec();
    expected.extend_from_slice(&trace.span_id.to_be_bytes());
    expected.push(1);
    assert_eq!(context.as_deref(), Some(expected.as_slice()));
    assert_eq!(
        seen.lock()
            .iter()
            .filter(|f| f.as_slice() == b"lost")
            .count(),
        1,
        "resent once, on the actor's subject"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_request_goes_straight_to_its_actor_subject() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let (_release, held) = watch::channel(false);
    let seen = owner(&client, held).await;
    let t = Transport::new(
        client.clone(),
        Namespace::new("tb").unwrap(),
        WAIT,
        tokio::runtime::Handle::current(),
    );
    // A route to a node nobody listens for: a lone request never tries it.
    for i in 0..3u8 {
        let frame = vec![b'a' + i];
        let reply = t
            .request(
                "aether.tb.shard.4.k.alone".into(),
                frame.clone(),
                None,
                Instant::now() + WAIT,
                Some(Route {
                    node: Subject::from("aether.tb.node.ghost.asks"),
                    shard: 4,
                }),
            )
            .await
            .unwrap();
        answered_with(reply, &frame);
    }
    assert_eq!((t.batched(), t.retries(), t.resends()), (0, 0, 0));
    assert_eq!(seen.lock().len(), 3);
}
