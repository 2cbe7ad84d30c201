//! Hostile bytes: every decoder of bytes from the network or the disk
//! (`aether::decoders::all()`) meets arbitrary bytes, mutations of a valid encoding and length
//! fields that claim gigabytes. Each answer must be a value or a typed error: no panic, and no
//! allocation beyond a small bound (this binary counts every allocation of the decoding
//! thread). Over NATS, a running node gets thousands of hostile frames and keeps serving.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use aether::decoders::{self, Decoder};
use proptest::prelude::*;

/// Counts the bytes the current thread has allocated and not freed, and the peak.
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator unchanged; the bookkeeping touches only
// thread-local cells with constant initialisers, which never allocate.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        track(-(layout.size() as isize));
        // SAFETY: `ptr` was allocated by `System` with `layout` (see `alloc`).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        track(new_size as isize - layout.size() as isize);
        // SAFETY: as for `alloc` and `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn track(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

/// The most one decode of a small input may allocate beyond what was live before it.
const ALLOCATION_BOUND: isize = 4 << 20;

/// Decodes `bytes` with `decoder`, and fails if it allocated more than the bound.
fn decode_bounded(decoder: &Decoder, bytes: &[u8]) -> Result<(), String> {
    let before = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(before));
    let result = (decoder.decode)(bytes);
    let peak = PEAK.with(Cell::get) - before;
    assert!(
        peak <= ALLOCATION_BOUND,
        "{} allocated {peak} bytes for {} input bytes",
        decoder.name,
        bytes.len()
    );
    if let Err(message) = &result {
        assert!(!message.is_empty(), "{}: an error says why", decoder.name);
    }
    result
}

#[test]
fn every_sample_decodes() {
    let all = decoders::all();
    assert!(all.len() >= 14, "the list of decoders shrank");
    for decoder in &all {
        assert_eq!(
            decode_bounded(decoder, &decoder.sample),
            Ok(()),
            "{}",
            decoder.name
        );
    }
}

/// MessagePack headers of a bin, string, array and map that claim 4 GiB (or 4 billion
/// entries) follow; the input ends long before.
const HUGE_CLAIMS: [&[u8]; 5] = [
    &[0xc6, 0xff, 0xff, 0xff, 0xff],
    &[0xdb, 0xff, 0xff, 0xff, 0xff],
    &[0xdd, 0xff, 0xff, 0xff, 0xff],
    &[0xdf, 0xff, 0xff, 0xff, 0xff],
    &[0xc7, 0xff, 0x01],
];

#[test]
fn length_fields_that_claim_gigabytes_allocate_nothing_like_it() {
    for decoder in decoders::all() {
        for claim in HUGE_CLAIMS {
            // The claim alone, and at every position of a valid encoding (replacing what
            // is there and inserted before it).
            let _ = decode_bounded(&decoder, claim);
            for at in 0..decoder.sample.len() {
                let mut inserted = decoder.sample.clone();
                inserted.splice(at..at, claim.iter().copied());
                let _ = decode_bounded(&decoder, &inserted);
                let mut replaced = decoder.sample.clone();
                let end = (at + claim.len()).min(replaced.len());
                replaced.splice(at..end, claim.iter().copied());
                let _ = decode_bounded(&decoder, &replaced);
            }
        }
    }
}

#[test]
fn every_truncation_of_a_valid_encoding_is_a_typed_error_or_a_value() {
    for decoder in decoders::all() {
        for len in 0..decoder.sample.len() {
            let _ = decode_bounded(&decoder, &decoder.sample[..len]);
        }
    }
}

/// A mutation of a valid encoding.
#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, mask: u8 },
    Set { at: usize, byte: u8 },
    Insert { at: usize, bytes: Vec<u8> },
    Remove { at: usize, len: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), 1..8usize).prop_map(|(at, len)| Mutation::Remove { at, len }),
    ]
}

fn mutate(sample: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut bytes = sample.to_vec();
    for m in mutations {
        let n = bytes.len().max(1);
        match m {
            Mutation::Flip { at, mask } => {
                if let Some(b) = bytes.get_mut(at % n) {
                    *b ^= mask;
                }
            }
            Mutation::Set { at, byte } => {
                if let Some(b) = bytes.get_mut(at % n) {
                    *b = *byte;
                }
            }
            Mutation::Insert { at, bytes: new } => {
                let at = at % (bytes.len() + 1);
                bytes.splice(at..at, new.iter().copied());
            }
            Mutation::Remove { at, len } => {
                let at = at % n;
                let end = (at + len).min(bytes.len());
                if at < end {
                    bytes.drain(at..end);
                }
            }
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    /// Arbitrary bytes, for every decoder.
    #[test]
    fn arbitrary_bytes_are_refused_or_decoded(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        for decoder in decoders::all() {
            let _ = decode_bounded(&decoder, &bytes);
        }
    }

    /// One to four mutations of a valid encoding, for every decoder.
    #[test]
    fn mutated_encodings_are_refused_or_decoded(mutations in proptest::collection::vec(mutation(), 1..5)) {
        for decoder in decoders::all() {
            let bytes = mutate(&decoder.sample, &mutations);
            let _ = decode_bounded(&decoder, &bytes);
        }
    }
}

/// Thousands of hostile frames (arbitrary, mutated, truncated, huge claims) on the subject of
/// a running node's shard, asked and told, and hostile batches on the node's own subject: the
/// node answers what it can and keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_fed_hostile_frames_keeps_serving() {
    use aether::prelude::*;
    use aether::{ClusterConfig, Runtime};
    use common::nats::NatsServer;
    use common::{Counter, CounterCmd};

    let server = NatsServer::start();
    let rt = Runtime::join_cluster(
        ClusterConfig::new(server.url(), "hostile").node_id("node-1"),
        Runtime::builder().register::<Counter>(),
    )
    .await
    .expect("joins");
    let counter = rt.actor::<Counter>("x").unwrap();
    assert_eq!(counter.ask(CounterCmd::Add(1)).await.unwrap(), 1);
    let shard = rt.cluster().unwrap().locate::<Counter>("x").shard;
    let subject = format!("aether.hostile.shard.{shard}.counter.x");
    let client = async_nats::ConnectOptions::new()
        .request_timeout(Some(Duration::from_secs(5)))
        .connect(server.url())
        .await
        .unwrap();
    // A valid frame for this node (a `Get`), to mutate.
    let request = aether::wire::RemoteRequest {
        format: aether::wire::BASE_FRAME_FORMAT,
        namespace: "hostile".into(),
        kind: "counter".into(),
        id: "x".into(),
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
    .unwrap();
    let mut rng = fastrand::Rng::with_seed(7);
    let mut answered = 0;
    for i in 0..2000 {
        let frame: Vec<u8> = match i % 4 {
            0 => (0..rng.usize(0..300)).map(|_| rng.u8(..)).collect(),
            1 => {
                let mut f = request.clone();
                for _ in 0..rng.usize(1..4) {
                    let at = rng.usize(..f.len());
                    f[at] = rng.u8(..);
                }
                f
            }
            2 => request[..rng.usize(..request.len())].to_vec(),
            _ => {
                let mut f = request.clone();
                let at = rng.usize(..f.len());
                f.splice(at..at, HUGE_CLAIMS[i % HUGE_CLAIMS.len()].iter().copied());
                f
            }
        };
        if i % 2 == 0 {
            client.publish(subject.clone(), frame.into()).await.unwrap();
        } else if let Ok(reply) = client.request(subject.clone(), frame.into()).await {
            // Whatever the frame, the answer is a reply frame.
            aether::wire::RemoteReply::decode(&reply.payload).expect("a reply frame");
            answered += 1;
        }
    }
    assert!(answered > 900, "only {answered} of 1000 asks were answered");
    // The same on the node's subject for batched requests: mutations of a valid batch.
    let batches = decoders::all()
        .into_iter()
        .find(|d| d.name == "request batch")
        .expect("the request batch decoder");
    let varint = common::wire::put_varint;
    // docs/wire.md: the format, then token, shard, no trace context, the frame's length.
    let mut batch = batches.sample[..1].to_vec();
    varint(&mut batch, 1);
    varint(&mut batch, u64::from(shard));
    batch.push(0);
    varint(&mut batch, request.len() as u64);
    batch.extend_from_slice(&request);
    assert_eq!(decode_bounded(&batches, &batch), Ok(()));
    let mut last = client
        .subscribe("aether.hostile.reply.last.*")
        .await
        .unwrap();
    for i in 0..1000u32 {
        let mut b = batch.clone();
        match i % 3 {
            0 => {
                for _ in 0..rng.usize(1..4) {
                    let at = rng.usize(..b.len());
                    b[at] = rng.u8(..);
                }
            }
            1 => b.truncate(rng.usize(..b.len())),
            _ => {
                let at = rng.usize(1..b.len());
                b.splice(
                    at..at,
                    HUGE_CLAIMS[i as usize % HUGE_CLAIMS.len()].iter().copied(),
                );
            }
        }
        client
            .publish_with_reply(
                "aether.hostile.node.node-1.asks",
                format!("aether.hostile.reply.h.g{i}"),
                b.into(),
            )
            .await
            .unwrap();
    }
    // Then a valid batch: its answer comes, so the node still reads its batches.
    client
        .publish_with_reply(
            "aether.hostile.node.node-1.asks",
            "aether.hostile.reply.last.g0",
            batch.clone().into(),
        )
        .await
        .unwrap();
    let answer = tokio::time::timeout(
        Duration::from_secs(20),
        futures_util::StreamExt::next(&mut last),
    )
    .await
    .expect("the valid batch is answered")
    .expect("the subscription");
    assert_eq!(answer.subject.as_str(), "aether.hostile.reply.last.1");
    match aether::wire::RemoteReply::decode(&answer.payload).expect("a reply frame") {
        aether::wire::RemoteReply::Ok { reply } => {
            assert_eq!(rmp_serde::from_slice::<u64>(&reply).unwrap(), 1)
        }
        other => panic!("expected the counter, got {other:?}"),
    }
    // The node still serves, and no hostile frame changed the counter (a mutated frame may
    // carry a valid command for another actor, never a second `Add` for this one).
    assert_eq!(counter.ask(CounterCmd::Get).await.unwrap(), 1);
    assert_eq!(counter.ask(CounterCmd::Add(1)).await.unwrap(), 2);
    rt.shutdown().await.unwrap();
}

/// Numbers at their limits: a commit whose versions would run past `u64::MAX` is refused by
/// the decoder, not left to overflow in whoever reads it.
#[test]
fn a_commit_whose_versions_overflow_is_refused() {
    let commit = decoders::all()
        .into_iter()
        .find(|d| d.name == "commit record")
        .expect("the commit decoder");
    let mut record = aether::wire::CommitRecord::decode(&commit.sample).expect("the sample");
    record.first_version = u64::MAX;
    let bytes = record.encode().expect("encodes");
    let refused = aether::wire::CommitRecord::decode(&bytes).expect_err("refused");
    assert!(refused.to_string().contains("largest version"), "{refused}");
    assert!(decode_bounded(&commit, &bytes).is_err());
}

/// A command larger than the NATS server's maximum payload, for an actor on another node, is
/// refused with `TooLarge` (nothing sent, nothing applied), and both nodes keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_servers_max_payload_is_too_large() {
    use aether::prelude::*;
    use aether::{ClusterConfig, Runtime};
    use common::nats::NatsServer;
    use common::{Counter, CounterCmd};

    let server = NatsServer::start();
    let node = |id: &'static str| {
        let url = server.url();
        async move {
            Runtime::join_cluster(
                ClusterConfig::new(url, "payload")
                    .node_id(id)
                    .heartbeat(Duration::from_millis(200))
                    .failure_timeout(Duration::from_secs(1))
                    .lease(Duration::from_secs(1)),
                Runtime::builder()
                    .register::<Counter>()
                    .max_commit_bytes(8 << 20),
            )
            .await
            .expect("joins")
        }
    };
    let a = node("node-1").await;
    let b = node("node-2").await;
    common::poll_until(Duration::from_secs(20), "both nodes in the map", || {
        let map = a.cluster().unwrap().shard_map();
        async move { map.is_some_and(|m| m.nodes.len() == 2) }
    })
    .await;
    // An actor that node-2 owns, asked from node-1.
    let id = (0..1000)
        .map(|i| format!("far-{i}"))
        .find(|id| a.cluster().unwrap().locate::<Counter>(id).owner.as_deref() == Some("node-2"))
        .expect("an actor on node-2");
    let far = a.actor::<Counter>(id.as_str()).unwrap();
    // About 1.8 MB encoded; the server's default max payload is 1 MiB.
    let huge = CounterCmd::AddMany(vec![1 << 40; 200_000]);
    match far.ask(huge).await {
        Err(AskError::Failed(CallError::TooLarge { size, limit })) => {
            assert!(size > limit, "{size} > {limit}");
            assert_eq!(limit, 1 << 20);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(matches!(
        far.tell(CounterCmd::AddMany(vec![1 << 40; 200_000])),
        Err(CallError::TooLarge { .. })
    ));
    // Nothing was applied, and both nodes serve.
    assert_eq!(far.ask(CounterCmd::Get).await.unwrap(), 0);
    assert_eq!(far.ask(CounterCmd::Add(2)).await.unwrap(), 2);
    assert_eq!(
        b.actor::<Counter>(id.as_str())
            .unwrap()
            .ask(CounterCmd::Get)
            .await
            .unwrap(),
        2
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
