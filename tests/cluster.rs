//! The cluster with several runtimes in one process, on a real NATS server or cluster:
//! leader, shard map, routing across nodes, handles across nodes, bad frames on the wire.

mod common;

use std::time::Duration;

use aether::prelude::*;
use aether::{ClusterConfig, ClusterEvent, Runtime};
use common::nats::{NatsCluster, NatsServer, wait_for_jetstream};
use common::wire::{put_varint, varint};
use common::*;
use serde::{Deserialize, Serialize};

const WAIT: Duration = Duration::from_secs(20);

fn fast(urls: &str, ns: &str, node: &str, replicas: usize) -> ClusterConfig {
    ClusterConfig::new(urls, ns)
        .node_id(node)
        .heartbeat(Duration::from_millis(200))
        .failure_timeout(Duration::from_millis(1000))
        .lease(Duration::from_millis(1000))
        .replicas(replicas)
}

async fn node(urls: &str, ns: &str, node_id: &str, replicas: usize) -> Runtime {
    Runtime::join_cluster(
        fast(urls, ns, node_id, replicas),
        Runtime::builder().register::<Counter>().register::<Tally>(),
    )
    .await
    .unwrap_or_else(|e| panic!("{node_id} joins: {e}"))
}

/// Waits until every runtime sees the same leader and a map with exactly `nodes`.
async fn converged(rts: &[&Runtime], nodes: &[&str]) -> (String, u64, u64) {
    let want: Vec<String> = nodes.iter().map(|s| s.to_string()).collect();
    let mut result = None;
    poll_until(WAIT, "one leader and one map everywhere", || {
        let views: Vec<_> = rts
            .iter()
            .map(|rt| {
                let c = rt.cluster().unwrap();
                (c.leader(), c.shard_map())
            })
            .collect();
        let ok = views.iter().all(|(l, m)| {
            l.is_some()
                && l == &views[0].0
                && m.as_ref().is_some_and(|m| {
                    m.nodes == want && Some(m.epoch) == views[0].1.as_ref().map(|x| x.epoch)
                })
        });
        if ok {
            let (l, m) = &views[0];
            let (l, m) = (l.clone().unwrap(), m.clone().unwrap());
            result = Some((l.node, l.term, m.epoch));
        }
        async move { ok }
    })
    .await;
    result.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_agree_and_route_asks_to_owners() {
    let servers = NatsCluster::start();
    let url = servers.urls();
    wait_for_jetstream(&url).await;
    let a = node(&url, "trio", "node-1", 3).await;
    let b = node(&url, "trio", "node-2", 3).await;
    let c = node(&url, "trio", "node-3", 3).await;
    let (leader, term, _) = converged(&[&a, &b, &c], &["node-1", "node-2", "node-3"]).await;
    assert!(["node-1", "node-2", "node-3"].contains(&leader.as_str()));
    assert!(term > 0);
    let map = a.cluster().unwrap().shard_map().unwrap();
    assert_eq!(map.owners.len(), 1024);
    for (n, count) in map.counts() {
        let fair = 1024.0 / 3.0;
        assert!(
            (count as f64 - fair).abs() <= fair * 0.15,
            "{n} owns {count}"
        );
    }
    // Asks from every node reach the owner; state is the same from everywhere.
    for i in 0..30u64 {
        let from = [&a, &b, &c][(i % 3) as usize];
        let id = format!("acct-{}", i % 10);
        from.actor::<Counter>(&id)
            .unwrap()
            .ask(CounterCmd::Add(1))
            .await
            .unwrap();
    }
    for rt in [&a, &b, &c] {
        for i in 0..10 {
            let id = format!("acct-{i}");
            assert_eq!(
                rt.actor::<Counter>(&id)
                    .unwrap()
                    .ask(CounterCmd::Get)
                    .await
                    .unwrap(),
                3
            );
        }
    }
    // Each actor is resident only on its owner.
    for i in 0..10 {
        let id = format!("acct-{i}");
        let owner = a.cluster().unwrap().locate::<Counter>(&id).owner.unwrap();
        for rt in [&a, &b, &c] {
            let here = rt.is_resident(&rt.actor::<Counter>(&id).unwrap());
            assert_eq!(
                here,
                rt.cluster().unwrap().node_id() == owner,
                "{id} on {}",
                rt.cluster().unwrap().node_id()
            );
        }
    }
    for rt in [a, b, c] {
        rt.shutdown().await.unwrap();
    }
}

/// An id of kind `kind` whose shard `rt`'s cluster assigns to `owner`.
fn id_owned_by(rt: &Runtime, kind: &str, owner: &str, prefix: &str) -> String {
    let cluster = rt.cluster().unwrap();
    (0..10_000)
        .map(|i| format!("{prefix}-{i}"))
        .find(|id| cluster.locate_kind(kind, id).owner.as_deref() == Some(owner))
        .expect("some id lands on every node")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_move_minimally_when_a_node_joins_and_leaves() {
    let server = NatsServer::start();
    let url = server.url();
    let a = node(&url, "moves", "node-1", 1).await;
    let b = node(&url, "moves", "node-2", 1).await;
    let c = node(&url, "moves", "node-3", 1).await;
    converged(&[&a, &b, &c], &["node-1", "node-2", "node-3"]).await;
    let three = a.cluster().unwrap().shard_map().unwrap();

    let d = node(&url, "moves", "node-4", 1).await;
    converged(&[&a, &b, &c, &d], &["node-1", "node-2", "node-3", "node-4"]).await;
    let four = a.cluster().unwrap().shard_map().unwrap();
    assert!(four.epoch > three.epoch);
    let moved: Vec<u32> = (0..1024)
        .filter(|&s| three.owner(s) != four.owner(s))
        .collect();
    println!(
        "3 -> 4 nodes moved {} shards (limit {})",
        moved.len(),
        1.2 * 1024.0 / 4.0
    );
    assert!(moved.len() as f64 <= 1.2 * 1024.0 / 4.0);
    assert!(
        moved.iter().all(|&s| four.owner(s) == Some("node-4")),
        "only to the new node"
    );

    d.shutdown().await.unwrap();
    converged(&[&a, &b, &c], &["node-1", "node-2", "node-3"]).await;
    let back = a.cluster().unwrap().shard_map().unwrap();
    for s in 0..1024 {
        if four.owner(s) != Some("node-4") {
            assert_eq!(
                back.owner(s),
                four.owner(s),
                "shard {s} of a remaining node moved"
            );
        }
    }
    assert_eq!(
        back.owners, three.owners,
        "the same nodes give the same map"
    );
    for rt in [a, b, c] {
        rt.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ref_sent_to_node_2_is_used_there_to_call_node_3() {
    let server = NatsServer::start();
    let url = server.url();
    let n1 = node(&url, "refs", "node-1", 1).await;
    let n2 = node(&url, "refs", "node-2", 1).await;
    let n3 = node(&url, "refs", "node-3", 1).await;
    converged(&[&n1, &n2, &n3], &["node-1", "node-2", "node-3"]).await;
    let via = id_owned_by(&n1, "counter", "node-2", "via");
    let target = id_owned_by(&n1, "counter", "node-3", "target");
    // Node 1 makes both refs and sends the target's ref to the actor on node 2, which uses it
    // there to ask the actor on node 3.
    let cmd = CounterCmd::AddVia {
        target: n1.actor::<Counter>(&target).unwrap(),
        n: 7,
    };
    assert_eq!(
        n1.actor::<Counter>(&via).unwrap().ask(cmd).await.unwrap(),
        7
    );
    assert_eq!(
        n1.actor::<Counter>(&target)
            .unwrap()
            .ask(CounterCmd::Get)
            .await
            .unwrap(),
        7
    );
    assert!(n2.is_resident(&n2.actor::<Counter>(&via).unwrap()));
    assert!(n3.is_resident(&n3.actor::<Counter>(&target).unwrap()));
    assert!(!n1.is_resident(&n1.actor::<Counter>(&target).unwrap()));
    // A ref stored in node 2's actor (an event), used later from there.
    n1.actor::<Counter>(&via)
        .unwrap()
        .ask(CounterCmd::Befriend(n1.actor::<Counter>(&target).unwrap()))
        .await
        .unwrap();
    assert_eq!(
        n3.actor::<Counter>(&via)
            .unwrap()
            .ask(CounterCmd::AskFriend)
            .await
            .unwrap(),
        7
    );
    // Call cycles are caught across nodes too: target befriends via, via relays to target,
    // which asks via again.
    n1.actor::<Counter>(&target)
        .unwrap()
        .ask(CounterCmd::Befriend(n1.actor::<Counter>(&via).unwrap()))
        .await
        .unwrap();
    match n1
        .actor::<Counter>(&via)
        .unwrap()
        .ask(CounterCmd::Relay)
        .await
    {
        Err(AskError::Rejected(CounterError::Downstream(msg))) => {
            assert!(msg.contains("call cycle"), "{msg}")
        }
        other => panic!("expected a call cycle, got {other:?}"),
    }
    for rt in [n1, n2, n3] {
        rt.shutdown().await.unwrap();
    }
}

/// The request frame exactly as docs/wire.md describes it, with no Aether type.
#[derive(Serialize)]
struct RawRequest<'a> {
    format: u16,
    namespace: &'a str,
    kind: &'a str,
    id: &'a str,
    #[serde(with = "serde_bytes")]
    command_id: [u8; 16],
    #[serde(with = "serde_bytes")]
    correlation_id: [u8; 16],
    causation_id: Option<()>,
    timeout_ms: u64,
    chain: Vec<()>,
    expects_reply: bool,
    #[serde(with = "serde_bytes")]
    command: Vec<u8>,
}

#[derive(Deserialize, Debug)]
#[allow(dead_code)] // failures are read through Debug only
enum RawReply {
    Ok {
        #[serde(with = "serde_bytes")]
        reply: Vec<u8>,
    },
    Rejected {
        #[serde(with = "serde_bytes")]
        error: Vec<u8>,
    },
    Err(rmpv_like::Value),
}

/// A minimal "any value" so the test can print errors without Aether types.
mod rmpv_like {
    #[derive(serde::Deserialize, Debug)]
    #[serde(untagged)]
    #[allow(dead_code)] // read through Debug only
    pub enum Value {
        Text(String),
        Map(std::collections::BTreeMap<String, Value>),
        Int(u64),
        Bytes(#[serde(with = "serde_bytes")] Vec<u8>),
    }
}

#[derive(Serialize)]
enum RawCmd {
    Add(u64),
    Get,
}

/// The shard hash of docs/wire.md, written from the document.
fn wire_shard(namespace: &str, kind: &str, id: &str, shards: u64) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in namespace
        .bytes()
        .chain([0])
        .chain(kind.bytes())
        .chain([0])
        .chain(id.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51afd7ed558ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ceb9fe1a85ec53);
    h ^= h >> 33;
    h % shards
}

/// The id encoding of docs/wire.md.
fn wire_encode(id: &str) -> String {
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
                (b as char).to_string()
            } else {
                format!("={b:02X}")
            }
        })
        .collect()
}

/// A request for the test `Counter` `id` in namespace `wire`, as docs/wire.md describes it:
/// its subject and its frame.
fn raw_request(id: &str, cmd: RawCmd, command_id: [u8; 16]) -> (String, Vec<u8>) {
    let request = RawRequest {
        format: 1,
        namespace: "wire",
        kind: "counter",
        id,
        command_id,
        correlation_id: command_id,
        causation_id: None,
        timeout_ms: 5000,
        chain: Vec::new(),
        expects_reply: true,
        command: rmp_serde::to_vec_named(&cmd).unwrap(),
    };
    let subject = format!(
        "aether.wire.shard.{}.counter.{}",
        wire_shard("wire", "counter", id, 1024),
        wire_encode(id)
    );
    (subject, rmp_serde::to_vec_named(&request).unwrap())
}

async fn raw_call(client: &async_nats::Client, id: &str, cmd: RawCmd, seed: u8) -> RawReply {
    let (subject, frame) = raw_request(id, cmd, [seed; 16]);
    let answer = client
        .request(subject, frame.into())
        .await
        .expect("an answer");
    rmp_serde::from_slice(&answer.payload).expect("a reply frame")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_nats_client_calls_an_actor_with_only_the_wire_doc() {
    let server = NatsServer::start();
    let a = node(&server.url(), "wire", "node-1", 1).await;
    let b = node(&server.url(), "wire", "node-2", 1).await;
    converged(&[&a, &b], &["node-1", "node-2"]).await;
    let client = async_nats::connect(server.url()).await.unwrap();
    let id = "order.42 é";
    for (seed, expected) in [(1u8, 5u64), (2, 10)] {
        match raw_call(&client, id, RawCmd::Add(5), seed).await {
            RawReply::Ok { reply } => {
                assert_eq!(rmp_serde::from_slice::<u64>(&reply).unwrap(), expected)
            }
            other => panic!("error reply: {other:?}"),
        }
    }
    // The same command id again is answered from the stored reply, not applied twice.
    match raw_call(&client, id, RawCmd::Add(5), 2).await {
        RawReply::Ok { reply } => assert_eq!(rmp_serde::from_slice::<u64>(&reply).unwrap(), 10),
        other => panic!("error reply: {other:?}"),
    }
    match raw_call(&client, id, RawCmd::Get, 3).await {
        RawReply::Ok { reply } => assert_eq!(rmp_serde::from_slice::<u64>(&reply).unwrap(), 10),
        other => panic!("error reply: {other:?}"),
    }
    // And the runtime agrees.
    assert_eq!(
        a.actor::<Counter>(id)
            .unwrap()
            .ask(CounterCmd::Get)
            .await
            .unwrap(),
        10
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// A batch of answers as docs/wire.md describes it: `(token, answer frame)` pairs.
fn wire_batch(payload: &[u8]) -> Vec<(u64, Vec<u8>)> {
    assert_eq!(payload[0], 1, "batch format");
    let (mut at, mut items) = (1, Vec::new());
    while at < payload.len() {
        let token = varint(payload, &mut at);
        let len = varint(payload, &mut at) as usize;
        items.push((token, payload[at..at + len].to_vec()));
        at += len;
    }
    items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_client_that_asks_for_batched_answers_gets_them_as_the_wire_doc_says() {
    use futures_util::StreamExt;
    let server = NatsServer::start();
    let a = node(&server.url(), "wire", "node-1", 1).await;
    let b = node(&server.url(), "wire", "node-2", 1).await;
    converged(&[&a, &b], &["node-1", "node-2"]).await;
    let client = async_nats::connect(server.url()).await.unwrap();
    // An inbox under the namespace's `reply` subjects, as docs/wire.md says.
    let inbox = "aether.wire.reply.rawclient";
    let mut answers = client.subscribe(format!("{inbox}.*")).await.unwrap();
    const ASKS: u64 = 64;
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut batches = 0;
    let mut round = 0u64;
    // Rounds of 64 requests sent together, until the owners have batched some answers (the
    // answers of one round reach the owner's publishing task together unless the machine
    // interleaves them one by one).
    while batches == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no batch in {round} rounds"
        );
        round += 1;
        for token in 0..ASKS {
            let id = format!("batched-{token}");
            let mut command_id = [7u8; 16];
            command_id[..2].copy_from_slice(&[round as u8, token as u8]);
            let (subject, frame) = raw_request(&id, RawCmd::Add(token), command_id);
            client
                .publish_with_reply(subject, format!("{inbox}.{token}"), frame.into())
                .await
                .unwrap();
        }
        let mut answered = std::collections::BTreeMap::new();
        while (answered.len() as u64) < ASKS {
            let msg = tokio::time::timeout_at(deadline, answers.next())
                .await
                .expect("every answer before the deadline")
                .expect("the inbox subscription");
            let items = match msg.subject.as_str().rsplit('.').next() {
                Some("b") => {
                    batches += 1;
                    wire_batch(&msg.payload)
                }
                Some(token) => vec![(token.parse().unwrap(), msg.payload.to_vec())],
                None => unreachable!(),
            };
            for (token, frame) in items {
                let RawReply::Ok { reply } = rmp_serde::from_slice(&frame).expect("a reply frame")
                else {
                    panic!("an error answer for token {token}");
                };
                let balance: u64 = rmp_serde::from_slice(&reply).unwrap();
                assert!(
                    answered.insert(token, balance).is_none(),
                    "token {token} answered twice"
                );
            }
        }
        // Actor `batched-t` got `Add(t)` once per round: each answer is its own balance.
        for (token, balance) in answered {
            assert_eq!(balance, token * round, "actor batched-{token}");
        }
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// A batch of requests as docs/wire.md describes it: `(token, shard, request frame)` triples,
/// no trace context.
fn wire_request_batch(items: &[(u64, u64, Vec<u8>)]) -> Vec<u8> {
    let mut out = vec![1u8];
    for (token, shard, frame) in items {
        put_varint(&mut out, *token);
        put_varint(&mut out, *shard);
        out.push(0);
        put_varint(&mut out, frame.len() as u64);
        out.extend_from_slice(frame);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_client_that_batches_requests_to_a_node_gets_each_checked_and_answered() {
    use aether::wire::RemoteReply;
    use futures_util::StreamExt;
    let server = NatsServer::start();
    let a = node(&server.url(), "wire", "node-1", 1).await;
    let b = node(&server.url(), "wire", "node-2", 1).await;
    converged(&[&a, &b], &["node-1", "node-2"]).await;
    for rt in [&a, &b] {
        rt.cluster().unwrap().settled_with(2, WAIT).await.unwrap();
    }
    let owned_by = |owner: &'static str, prefix: &'static str| {
        let cluster = b.cluster().unwrap();
        (0..)
            .map(move |i| format!("{prefix}{i}"))
            .filter(move |id| cluster.locate::<Counter>(id).owner.as_deref() == Some(owner))
    };
    let client = async_nats::connect(server.url()).await.unwrap();
    let inbox = "aether.wire.reply.rawbatch";
    let mut answers = client.subscribe(format!("{inbox}.*")).await.unwrap();
    // Tokens 1 to 8: actors node-2 owns, each asked to add its token.
    let mut items: Vec<(u64, u64, Vec<u8>)> = owned_by("node-2", "mine")
        .take(8)
        .zip(1u64..)
        .map(|(id, token)| {
            let (_, frame) = raw_request(&id, RawCmd::Add(token), [token as u8; 16]);
            (token, wire_shard("wire", "counter", &id, 1024), frame)
        })
        .collect();
    // Token 9: an actor node-1 owns, sent to node-2 as a stale map would.
    let theirs = owned_by("node-1", "theirs").next().unwrap();
    let theirs_shard = wire_shard("wire", "counter", &theirs, 1024);
    let (_, frame) = raw_request(&theirs, RawCmd::Add(1), [9; 16]);
    items.push((9, theirs_shard, frame));
    // Token 10: an actor of node-2 under a shard it is not in.
    let mine = owned_by("node-2", "lying").next().unwrap();
    let (_, frame) = raw_request(&mine, RawCmd::Add(1), [10; 16]);
    let wrong = (wire_shard("wire", "counter", &mine, 1024) + 1) % 1024;
    items.push((10, wrong, frame));
    // Then a request cut off in the middle: the ten before it are still served.
    let mut batch = wire_request_batch(&items);
    batch.extend_from_slice(&[11, 3, 0, 200, 1, 0x82]);
    client
        .publish_with_reply(
            "aether.wire.node.node-2.asks",
            format!("{inbox}.g1"),
            batch.into(),
        )
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut answered = std::collections::BTreeMap::new();
    while answered.len() < 10 {
        let msg = tokio::time::timeout_at(deadline, answers.next())
            .await
            .expect("every answer before the deadline")
            .expect("the inbox subscription");
        let items = match msg.subject.as_str().rsplit('.').next() {
            Some("b") => wire_batch(&msg.payload),
            Some(token) => vec![(token.parse().unwrap(), msg.payload.to_vec())],
            None => unreachable!(),
        };
        for (token, frame) in items {
            let reply = RemoteReply::decode(&frame).expect("a reply frame");
            assert!(
                answered.insert(token, reply).is_none(),
                "token {token} answered twice"
            );
        }
    }
    for token in 1..=8u64 {
        match &answered[&token] {
            RemoteReply::Ok { reply } => {
                assert_eq!(rmp_serde::from_slice::<u64>(reply).unwrap(), token)
            }
            other => panic!("token {token}: {other:?}"),
        }
    }
    assert_eq!(
        answered[&9],
        RemoteReply::NotOwner {
            shard: theirs_shard as u32
        }
    );
    match &answered[&10] {
        RemoteReply::Err(CallError::Codec { reason, .. }) => {
            assert!(
                reason.contains("arrived on the subject of shard"),
                "{reason}"
            )
        }
        other => panic!("token 10: {other:?}"),
    }
    // Token 9 was not applied anywhere, and the node still serves.
    assert_eq!(
        a.actor::<Counter>(&theirs)
            .unwrap()
            .ask(CounterCmd::Get)
            .await
            .unwrap(),
        0
    );
    // A batch for a node nobody listens for: the server says so on the batch's reply subject.
    client
        .publish_with_reply(
            "aether.wire.node.node-3.asks",
            format!("{inbox}.g2"),
            wire_request_batch(&items[..1]).into(),
        )
        .await
        .unwrap();
    let refused = tokio::time::timeout_at(deadline, answers.next())
        .await
        .expect("the server's answer")
        .expect("the inbox subscription");
    assert_eq!(refused.subject.as_str(), format!("{inbox}.g2"));
    assert_eq!(refused.status, Some(async_nats::StatusCode::NO_RESPONDERS));
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_asks_to_another_node_go_in_batches_and_each_applies_once() {
    let server = NatsServer::start();
    let a = node(&server.url(), "batched", "node-1", 1).await;
    let b = node(&server.url(), "batched", "node-2", 1).await;
    converged(&[&a, &b], &["node-1", "node-2"]).await;
    for rt in [&a, &b] {
        rt.cluster().unwrap().settled_with(2, WAIT).await.unwrap();
    }
    const ACTORS: usize = 48;
    const ROUNDS: u64 = 20;
    let ids: Vec<String> = (0..)
        .map(|i| format!("c{i}"))
        .filter(|id| a.cluster().unwrap().locate::<Counter>(id).owner.as_deref() == Some("node-2"))
        .take(ACTORS)
        .collect();
    let mut callers = tokio::task::JoinSet::new();
    for id in &ids {
        let r = a.actor::<Counter>(id).unwrap();
        callers.spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..ROUNDS {
                seen.push(r.ask(CounterCmd::Add(1)).await.expect("a remote ask"));
            }
            seen
        });
    }
    while let Some(seen) = callers.join_next().await {
        assert_eq!(seen.unwrap(), (1..=ROUNDS).collect::<Vec<_>>());
    }
    for id in &ids {
        let total = b.actor::<Counter>(id).unwrap().ask(CounterCmd::Get).await;
        assert_eq!(total.unwrap(), ROUNDS, "{id} applied each command once");
    }
    let stats = a.stats();
    assert!(
        stats.remote_batched > 0,
        "no ask went in a batch: {stats:?}"
    );
    assert_eq!(stats.remote_resends, 0, "{stats:?}");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_error_replies_and_the_node_keeps_serving() {
    use aether::wire::RemoteReply;
    let server = NatsServer::start();
    let rt = node(&server.url(), "frames", "node-1", 1).await;
    let client = async_nats::connect(server.url()).await.unwrap();
    let shard = rt.cluster().unwrap().locate::<Counter>("x").shard;
    let subject = format!("aether.frames.shard.{shard}.counter.x");
    let ask = |payload: Vec<u8>, subject: String| {
        let client = client.clone();
        async move {
            let answer = client
                .request(subject, payload.into())
                .await
                .expect("an answer");
            RemoteReply::decode(&answer.payload).expect("a reply frame")
        }
    };
    // 1. Garbage.
    match ask(b"\xc1 not a frame".to_vec(), subject.clone()).await {
        RemoteReply::Err(CallError::Codec { what, .. }) => assert_eq!(what, "request frame"),
        other => panic!("expected a request frame codec error, got {other:?}"),
    }
    let frame = |namespace: &str, kind: &str, id: &str| {
        aether::wire::RemoteRequest {
            format: 1,
            namespace: namespace.into(),
            kind: kind.into(),
            id: id.into(),
            command_id: CommandId::random(),
            correlation_id: CommandId::random(),
            causation_id: None,
            timeout_ms: 2000,
            chain: Vec::new(),
            expects_reply: true,
            command: rmp_serde::to_vec_named(&CounterCmd::Get).unwrap(),
            effect: None,
            control: None,
            traced: None,
        }
        .encode()
        .unwrap()
    };
    // 2. An unknown kind.
    match ask(frame("frames", "ghost", "x"), subject.clone()).await {
        RemoteReply::Err(CallError::UnknownKind { kind }) => assert_eq!(kind, "ghost"),
        other => panic!("expected UnknownKind, got {other:?}"),
    }
    // 3. Another namespace on this namespace's subject.
    match ask(frame("elsewhere", "counter", "x"), subject.clone()).await {
        RemoteReply::Err(CallError::WrongNamespace { expected, found }) => {
            assert_eq!((expected.as_str(), found.as_str()), ("frames", "elsewhere"))
        }
        other => panic!("expected WrongNamespace, got {other:?}"),
    }
    // 4. A frame whose actor belongs to another shard than its subject.
    let other = (0..1000)
        .map(|i| format!("y{i}"))
        .find(|id| rt.cluster().unwrap().locate::<Counter>(id).shard != shard)
        .unwrap();
    match ask(frame("frames", "counter", &other), subject.clone()).await {
        RemoteReply::Err(CallError::Codec { what, reason }) => {
            assert_eq!(what, "request frame");
            assert!(
                reason.contains("arrived on the subject of shard"),
                "{reason}"
            )
        }
        other => panic!("expected a request frame codec error, got {other:?}"),
    }
    // 5. A command that does not decode as a CounterCmd.
    let mut bad = aether::wire::RemoteRequest::decode(&frame("frames", "counter", "x")).unwrap();
    bad.command = rmp_serde::to_vec_named(&("not", "a", "command")).unwrap();
    match ask(bad.encode().unwrap(), subject.clone()).await {
        RemoteReply::Err(CallError::Codec { .. }) => {}
        other => panic!("expected Codec, got {other:?}"),
    }
    // The node still serves.
    match ask(frame("frames", "counter", "x"), subject).await {
        RemoteReply::Ok { reply } => assert_eq!(rmp_serde::from_slice::<u64>(&reply).unwrap(), 0),
        other => panic!("expected a reply, got {other:?}"),
    }
    assert_eq!(
        rt.actor::<Counter>("x")
            .unwrap()
            .ask(CounterCmd::Add(1))
            .await
            .unwrap(),
        1
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_events_and_queries() {
    init_test_log();
    let server = NatsServer::start();
    let a = node(&server.url(), "events", "node-1", 1).await;
    let mut events = a.cluster().unwrap().events();
    let leader = a.cluster().unwrap().leader().expect("a leader");
    assert_eq!(leader.node, "node-1");
    assert!(a.cluster().unwrap().is_leader());
    let b = node(&server.url(), "events", "node-2", 1).await;
    converged(&[&a, &b], &["node-1", "node-2"]).await;
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        seen.push(event);
    }
    assert!(
        seen.contains(&ClusterEvent::NodeJoined {
            node: "node-2".into()
        }),
        "{seen:?}"
    );
    let moved = seen
        .iter()
        .filter(|e| matches!(e, ClusterEvent::ShardAssigned { node, .. } if node == "node-2"))
        .count();
    let owned = a
        .cluster()
        .unwrap()
        .shard_map()
        .unwrap()
        .shards_of("node-2")
        .len();
    assert_eq!(
        moved, owned,
        "one ShardAssigned per shard that moved to node-2"
    );
    // Queries.
    let topology = a.cluster().unwrap().topology();
    let names: Vec<&str> = topology.iter().map(|n| n.record.node.as_str()).collect();
    assert_eq!(names, vec!["node-1", "node-2"]);
    let location = b.cluster().unwrap().locate::<Counter>("alice");
    assert_eq!(
        location.owner.as_deref(),
        a.cluster()
            .unwrap()
            .shard_map()
            .unwrap()
            .owner(location.shard)
    );
    assert!(
        location
            .reason
            .contains(&format!("shard {}", location.shard))
    );
    // The leader leaves: its lease goes (LeadershipLost), node-2 takes over (LeaderElected).
    let mut b_events = b.cluster().unwrap().events();
    let mut a_events = a.cluster().unwrap().events();
    let lease = a.cluster().unwrap().leader().expect("a leader");
    assert_eq!(lease.node, "node-1", "the first node leads");
    a.shutdown().await.unwrap();
    // It said so itself, with the term it resigned: the channel keeps what was sent before
    // the node stopped.
    let mut resigned = Vec::new();
    while let Ok(e) = a_events.try_recv() {
        resigned.push(e);
    }
    assert!(
        resigned.contains(&ClusterEvent::LeadershipLost {
            node: "node-1".into(),
            term: lease.term,
        }),
        "{resigned:?}"
    );
    let mut got = Vec::new();
    poll_until(WAIT, "node-2 elected and node-1 gone", || {
        while let Ok(e) = b_events.try_recv() {
            got.push(e);
        }
        let elected = got
            .iter()
            .any(|e| matches!(e, ClusterEvent::LeaderElected { node, .. } if node == "node-2"));
        let left = got.contains(&ClusterEvent::NodeLeft {
            node: "node-1".into(),
        });
        async move { elected && left }
    })
    .await;
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settled_waits_until_every_node_serves_its_shards() {
    let server = NatsServer::start();
    let url = server.url();
    let a = node(&url, "settle", "node-1", 1).await;
    let b = node(&url, "settle", "node-2", 1).await;
    for rt in [&a, &b] {
        let cluster = rt.cluster().unwrap();
        let epoch = cluster.settled_with(2, WAIT).await.unwrap();
        let map = cluster.shard_map().unwrap();
        assert_eq!(map.nodes.len(), 2);
        assert_eq!(
            map.epoch, epoch,
            "a settled two-node cluster publishes no new map"
        );
        let serving = cluster.serving_shards().borrow().clone();
        let owned = cluster.owned_shards().borrow().clone();
        assert_eq!(serving.epoch, epoch);
        assert_eq!(serving.shards, owned.shards, "serves every shard it owns");
        assert!(!serving.shards.is_empty());
    }
    // A size the cluster never reaches: a typed error after the timeout, saying what it saw.
    let err = a
        .cluster()
        .unwrap()
        .settled_with(3, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(err.waited >= Duration::from_millis(300), "{err}");
    assert!(err.last_seen.contains("2 node(s)"), "{err}");
    for rt in [a, b] {
        rt.shutdown().await.unwrap();
    }
}

/// A leader cut off from NATS past its lease (its link black-holed: renewals hang, no error
/// comes back) stops acting, the others elect a successor with a higher term, and once the
/// cut node hears again (its renewal refused, the successor's lease seen) it says so itself:
/// its own bus carries `LeadershipLost` with its node and term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_past_its_lease_reports_leadership_lost() {
    use aether::bus::{EventBody, Filter, SystemEvent};
    use common::proxy::{Mode, Proxy};
    use futures_util::StreamExt;

    let server = NatsServer::start();
    let proxy = Proxy::start(&format!("127.0.0.1:{}", server.port)).await;
    let a = node(&proxy.url(), "lost", "node-1", 1).await;
    let (leader, term, _) = converged(&[&a], &["node-1"]).await;
    assert_eq!(leader, "node-1");
    let mut lost = a
        .bus()
        .subscribe("lost.system.LeadershipLost", Filter::all())
        .await
        .unwrap();
    let b = node(&server.url(), "lost", "node-2", 1).await;
    converged(&[&a, &b], &["node-1", "node-2"]).await;
    proxy.set(Mode::BlackHole);
    // node-2 takes the lease once node-1's expires...
    let successor = {
        let mut found = None;
        poll_until(WAIT, "node-2 elected with a higher term", || {
            found = b
                .cluster()
                .unwrap()
                .leader()
                .filter(|l| l.node == "node-2" && l.term > term);
            let done = found.is_some();
            async move { done }
        })
        .await;
        found.unwrap()
    };
    // ...and node-1, once its link is back, reports that it lost the lead.
    proxy.set(Mode::Forward);
    let event = tokio::time::timeout(WAIT, lost.next())
        .await
        .expect("LeadershipLost within the deadline")
        .expect("an event");
    match event.body() {
        EventBody::System(system) => match &system.event {
            SystemEvent::LeadershipLost {
                node,
                term: lost_term,
            } => {
                assert_eq!(node, "node-1");
                assert_eq!(*lost_term, term);
                assert!(successor.term > *lost_term);
            }
            other => panic!("expected LeadershipLost, got {other:?}"),
        },
        other => panic!("expected a system event, got {other:?}"),
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// A renewal that landed after the leader stopped waiting for it (its round timed out on a
/// slow link) moves the lease's revision on: the next renewal fails on the revision although
/// the lease is still this node's. The leader reads the key, sees its own record under its
/// own term, and carries on from that revision instead of giving the lead up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_landing_renewal_of_its_own_does_not_cost_the_leader_its_lease() {
    use aether::bus::Filter;
    use futures_util::StreamExt;

    let server = NatsServer::start();
    let a = node(&server.url(), "late", "node-1", 1).await;
    let (leader, term, _) = converged(&[&a], &["node-1"]).await;
    assert_eq!(leader, "node-1");
    let mut lost = a
        .bus()
        .subscribe("late.system.LeadershipLost", Filter::all())
        .await
        .unwrap();
    let client = async_nats::connect(server.url()).await.unwrap();
    let kv = async_nats::jetstream::new(client)
        .get_key_value("late_leader")
        .await
        .unwrap();
    // The late renewal: the leader's own record, written again under the current revision.
    let landed = loop {
        let entry = kv
            .entry("leader")
            .await
            .unwrap()
            .expect("the lease is held");
        if let Ok(revision) = kv.update("leader", entry.value, entry.revision).await {
            break revision;
        }
        // A real renewal went in between: take the new revision.
    };
    // Two renewals after it: the leader went on from the revision it did not write knowingly.
    poll_until(WAIT, "two renewals past the late one", || {
        let kv = kv.clone();
        async move {
            kv.entry("leader")
                .await
                .ok()
                .flatten()
                .is_some_and(|e| e.revision >= landed + 2)
        }
    })
    .await;
    let held = a.cluster().unwrap().leader().expect("a leader");
    assert_eq!(
        (held.node.as_str(), held.term),
        ("node-1", term),
        "the same lease"
    );
    assert!(a.cluster().unwrap().is_leader());
    let lost_meanwhile = tokio::time::timeout(Duration::from_millis(50), lost.next()).await;
    assert!(lost_meanwhile.is_err(), "no LeadershipLost");
    a.shutdown().await.unwrap();
}

/// The test kit's in-process cluster: three nodes settle into one map, every node routes to
/// every owner, and after a graceful stop the two left serve everything with the state kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_testkit_cluster_settles_routes_and_survives_a_stop() {
    use aether_testkit::cluster::TestCluster;
    let server = NatsServer::start();
    let mut cluster = TestCluster::start(&server.url(), "kit", 3, |b| b.register::<Counter>())
        .await
        .expect("three nodes join");
    cluster.settled().await.expect("three nodes settle");
    let ids: Vec<String> = (0..24).map(|i| format!("k-{i}")).collect();
    let owners: std::collections::BTreeSet<String> = ids
        .iter()
        .filter_map(|id| {
            let node = cluster.node(0).unwrap();
            node.cluster().unwrap().locate_kind("counter", id).owner
        })
        .collect();
    assert_eq!(
        owners.len(),
        3,
        "24 ids spread over the three nodes: {owners:?}"
    );
    for (i, id) in ids.iter().enumerate() {
        let via = cluster.node(i % 3).unwrap();
        let total = via
            .actor::<Counter>(id)
            .unwrap()
            .ask(CounterCmd::Add(1))
            .await;
        assert_eq!(total.unwrap(), 1, "{id}");
    }
    cluster.stop(1).await;
    cluster.settled().await.expect("two nodes settle");
    assert_eq!(cluster.running().count(), 2);
    for id in &ids {
        let via = cluster.node(2).unwrap();
        let total = via
            .actor::<Counter>(id)
            .unwrap()
            .ask(CounterCmd::Add(1))
            .await;
        assert_eq!(total.unwrap(), 2, "{id}");
    }
    cluster.shutdown().await;
}

/// A remote ask that finds its actor's mailbox full waits on the owner for room, until its
/// deadline: one with too little time fails and never runs; a patient one is served after the
/// queue. (An ask that finds room is answered by the activation itself; this is the other
/// path.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_ask_at_a_full_mailbox_waits_for_room_or_fails_unapplied() {
    let server = NatsServer::start();
    let url = server.url();
    let n1 = node(&url, "fullbox", "node-1", 1).await;
    let n2 = Runtime::join_cluster(
        fast(&url, "fullbox", "node-2", 1),
        Runtime::builder()
            .register::<Counter>()
            .register::<Tally>()
            .mailbox_capacity(1),
    )
    .await
    .unwrap();
    converged(&[&n1, &n2], &["node-1", "node-2"]).await;
    for rt in [&n1, &n2] {
        rt.cluster()
            .unwrap()
            .settled_with(2, WAIT)
            .await
            .expect("both nodes serve their shards");
    }
    let id = id_owned_by(&n1, "counter", "node-2", "full");
    let far = n1.actor::<Counter>(&id).unwrap();
    assert_eq!(far.ask(CounterCmd::Get).await.unwrap(), 0);
    // On the owner: a slow turn runs, and one told command fills the mailbox of 1. While a
    // turn waits, the activation moves queued commands into its own queue (to answer them by
    // their deadlines), and they still take their room: the capacity is exact, so the
    // mailbox stays full until the slow turn ends.
    let near = n2.actor::<Counter>(&id).unwrap();
    near.tell(CounterCmd::SlowAdd { n: 1, millis: 1500 })
        .unwrap();
    let told = std::sync::atomic::AtomicU64::new(0);
    poll_until(
        WAIT,
        "the slow turn to start and the mailbox to fill",
        || async {
            if near.tell(CounterCmd::Add(10)).is_ok() {
                told.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            told.load(std::sync::atomic::Ordering::Relaxed) == 1
        },
    )
    .await;
    // Full at once, and still full while the watchdog holds the told command in its queue.
    for _ in 0..20 {
        assert!(
            matches!(
                near.tell(CounterCmd::Add(0)),
                Err(aether::CallError::MailboxFull { .. })
            ),
            "the mailbox of 1 is full with one command waiting"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let hurried = far
        .ask_with(
            CounterCmd::Add(100),
            AskOptions::default().timeout(Duration::from_millis(300)),
        )
        .await;
    assert!(
        matches!(
            &hurried,
            Err(AskError::Failed(
                aether::CallError::Timeout { .. } | aether::CallError::OutcomeUnknown { .. }
            ))
        ),
        "{hurried:?}"
    );
    let patient = far
        .ask_with(CounterCmd::Add(5), AskOptions::default().timeout(WAIT))
        .await
        .unwrap();
    assert_eq!(
        patient, 16,
        "slow 1 + told 10 + 5; the hurried 100 never ran"
    );
    n1.shutdown().await.unwrap();
    n2.shutdown().await.unwrap();
}

/// A command whose decoder panics on the word "boom" (a user's `Deserialize` with an
/// `unwrap`, say).
#[derive(Debug, Clone, Serialize)]
enum TouchyCmd {
    Ping,
    Boom,
}

impl<'de> Deserialize<'de> for TouchyCmd {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "Ping" => Ok(TouchyCmd::Ping),
            other => panic!("the decoder of {other:?} panics"),
        }
    }
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, EventSourcedActor)]
#[actor(kind = "touchy", command = TouchyCmd, event = CounterEvent, reply = u64,
        error = CounterError)]
struct Touchy {
    pings: u64,
}

impl Handle<TouchyCmd> for Touchy {
    async fn handle(
        &self,
        _cmd: TouchyCmd,
        _ctx: &mut Ctx<Self>,
    ) -> Result<Effect<Self>, CounterError> {
        Ok(Effect::persist(CounterEvent::Added(1)).reply(self.pings + 1))
    }
}

impl Behavior for Touchy {
    fn apply(&mut self, _event: &CounterEvent) {
        self.pings += 1;
    }
}

/// The owner decodes a remote command on its reader task (every shard's): a decoder that panics
/// costs that one request (its caller hears a codec error at once), never the node's
/// subscriptions — the next request to the same actor is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_command_decoder_costs_one_request_not_the_shard() {
    let server = NatsServer::start();
    let url = server.url();
    let join = |id: &'static str| {
        let url = url.clone();
        async move {
            Runtime::join_cluster(
                fast(&url, "touchy", id, 1),
                Runtime::builder().register::<Touchy>(),
            )
            .await
            .unwrap()
        }
    };
    let (n1, n2) = (join("node-1").await, join("node-2").await);
    converged(&[&n1, &n2], &["node-1", "node-2"]).await;
    for rt in [&n1, &n2] {
        rt.cluster().unwrap().settled_with(2, WAIT).await.unwrap();
    }
    let id = id_owned_by(&n1, "touchy", "node-2", "t");
    let far = n1.actor::<Touchy>(&id).unwrap();
    assert_eq!(far.ask(TouchyCmd::Ping).await.unwrap(), 1);
    let started = std::time::Instant::now();
    let boom = far
        .ask_with(TouchyCmd::Boom, AskOptions::default().timeout(WAIT))
        .await;
    assert!(
        matches!(
            &boom,
            Err(AskError::Failed(aether::CallError::Codec { .. }))
        ),
        "{boom:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered at once, not at the deadline: {:?}",
        started.elapsed()
    );
    // The shard still serves: the same actor answers the next request.
    assert_eq!(far.ask(TouchyCmd::Ping).await.unwrap(), 2);
    n1.shutdown().await.unwrap();
    n2.shutdown().await.unwrap();
}

/// A remote ask whose turn outlasts several attempt timeouts gets the turn's real answer: the
/// resends join the running command on the owner, which answers the newest attempt once, and
/// nothing said about the abandoned attempts (their answer handles are dropped on the owner)
/// reaches the asker as its outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_slower_than_the_attempt_timeout_answers_the_resent_ask_once() {
    let server = NatsServer::start();
    let url = server.url();
    let asker = Runtime::join_cluster(
        fast(&url, "slowturn", "node-1", 1),
        Runtime::builder()
            .register::<Counter>()
            .register::<Tally>()
            .remote_attempt_timeout(Duration::from_millis(100)),
    )
    .await
    .unwrap();
    let owner = node(&url, "slowturn", "node-2", 1).await;
    converged(&[&asker, &owner], &["node-1", "node-2"]).await;
    for rt in [&asker, &owner] {
        rt.cluster()
            .unwrap()
            .settled_with(2, WAIT)
            .await
            .expect("both nodes serve their shards");
    }
    let id = id_owned_by(&asker, "counter", "node-2", "slow");
    let far = asker.actor::<Counter>(&id).unwrap();
    // 100 ms, then 200 and 400: the turn outlasts two attempts and ends inside the third.
    let total = far
        .ask(CounterCmd::SlowAdd { n: 3, millis: 500 })
        .await
        .expect("the turn's own answer, not an outcome-unknown for an abandoned attempt");
    assert_eq!(total, 3);
    assert_eq!(far.ask(CounterCmd::Get).await.unwrap(), 3, "applied once");
    assert!(
        asker.stats().remote_resends >= 2,
        "the ask was resent while the turn ran: {:?}",
        asker.stats()
    );
    asker.shutdown().await.unwrap();
    owner.shutdown().await.unwrap();
}
