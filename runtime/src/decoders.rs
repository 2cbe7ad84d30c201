//! Every decoder that meets bytes from the network or the disk, in one list: request and
//! reply frames, commit and snapshot records, the cluster's records (shard map, node registry,
//! leader lease, heartbeats), bus events, durable-effect settlements, embedded wake-up entries
//! and encoded actor ids.
//!
//! The hostile-input tests (`tests/hostile_bytes.rs`) feed each one arbitrary bytes and
//! mutations of a valid sample: a decoder must answer with a typed error, never panic, hang or
//! allocate what a length field claims. A new decoder is covered once it is added here.

use crate::bus::EventBody;
use crate::cluster::{LeaderRecord, NodeRecord, NodeStatus, ShardMap};
use crate::errors::CallError;
use crate::names::{ActorId, ActorKey, Kind, Namespace};
use crate::routing::batches;
use crate::wire::{
    CommandId, CommitRecord, Delivery, EventData, EventEnvelope, FRAME_FORMAT, OutboxEntry,
    RemoteReply, RemoteRequest, Settle, codec,
};

/// One decoder, with a valid encoding to mutate.
pub struct Decoder {
    /// What it decodes.
    pub name: &'static str,
    /// A valid encoding.
    pub sample: Vec<u8>,
    /// Decodes `bytes`: `Ok` if they are valid, else the typed error's message.
    pub decode: fn(&[u8]) -> Result<(), String>,
}

fn key() -> ActorKey {
    let name = |s: &str| Namespace::new(s).unwrap_or_else(|_| unreachable!("a valid name"));
    ActorKey::new(
        name("bank"),
        Kind::new("account").unwrap_or_else(|_| unreachable!("a valid kind")),
        ActorId::new("alice/1").unwrap_or_else(|_| unreachable!("a valid id")),
    )
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    codec::encode("sample", value).unwrap_or_else(|e| unreachable!("a sample encodes: {e}"))
}

fn sample_commit() -> CommitRecord {
    CommitRecord {
        format: 2,
        actor: key(),
        first_version: 7,
        command_id: CommandId::from_u128(1),
        correlation_id: CommandId::from_u128(2),
        causation_id: Some(CommandId::from_u128(3)),
        timestamp_ms: 1_700_000_000_000,
        events: vec![
            EventData {
                event_type: "Deposited".into(),
                payload: encode(&("amount", 5u64)),
                schema_version: 0,
            },
            EventData {
                event_type: "aether.Received".into(),
                payload: vec![0x90],
                schema_version: 0,
            },
        ],
        reply: Some(encode(&12u64)),
        outbox: vec![OutboxEntry {
            seq: 1,
            target: key(),
            command_id: CommandId::from_u128(4),
            causation_id: CommandId::from_u128(1),
            correlation_id: CommandId::from_u128(2),
            command: encode(&("Credit", 5u64)),
            due_ms: Some(1_700_000_001_000),
            reminder: Some("expire".into()),
            compensation: Some(encode(&("Refund", 5u64))),
        }],
        settled: vec![1, 2],
        delivery: Some(Delivery { from: key(), seq: 3 }),
    }
}

/// Every decoder of bytes that come from the network or the disk.
pub fn all() -> Vec<Decoder> {
    let commit = sample_commit();
    let request = RemoteRequest {
        format: FRAME_FORMAT,
        namespace: "bank".into(),
        kind: "account".into(),
        id: "alice/1".into(),
        command_id: CommandId::from_u128(9),
        correlation_id: CommandId::from_u128(9),
        causation_id: None,
        timeout_ms: 5000,
        chain: vec![key(), key()],
        expects_reply: true,
        command: encode(&("Deposit", 5u64)),
        effect: None,
        control: None,
        traced: None,
    };
    let map = ShardMap {
        epoch: 3,
        term: 2,
        nodes: vec!["node-1".into(), "node-2".into()],
        owners: (0..64u16).map(|i| i % 2).collect(),
    };
    let node = NodeRecord {
        node: "node-1".into(),
        started_ms: 1_700_000_000_000,
        capacity: 1,
        status: NodeStatus::Alive,
        beat: 42,
        handoff_epoch: 3,
        held: (0..64).filter(|s| s % 3 == 0).collect(),
        resident: 12,
        commits: 3_456,
    };
    let envelope = commit
        .envelopes()
        .next()
        .unwrap_or_else(|| unreachable!("the sample has a user event"));
    vec![
        Decoder {
            name: "request frame",
            sample: request
                .encode()
                .unwrap_or_else(|e| unreachable!("encodes: {e}")),
            decode: |b| RemoteRequest::decode(b).map(drop).map_err(|e| e.to_string()),
        },
        Decoder {
            name: "reply frame",
            sample: RemoteReply::Err(CallError::VersionConflict {
                actor: key(),
                expected: 3,
                actual: 4,
            })
            .encode(),
            decode: |b| RemoteReply::decode(b).map(drop).map_err(|e| e.to_string()),
        },
        Decoder {
            name: "commit record",
            sample: commit.encode().unwrap_or_else(|e| unreachable!("encodes: {e}")),
            decode: |b| {
                crate::store::decode_commit(&key(), 8, b)
                    .map(drop)
                    .or_else(|e| {
                        // Another position is a typed refusal too; only the decode matters.
                        CommitRecord::decode(b).map(drop).map_err(|d| format!("{d}; {e}"))
                    })
            },
        },
        Decoder {
            name: "snapshot record",
            sample: crate::store::encode_snapshot(
                &key(),
                crate::store::Snapshot {
                    version: 9,
                    payload: encode(&("balance", 12u64)),
                    timestamp_ms: 1_700_000_000_000,
                },
            )
            .unwrap_or_else(|e| unreachable!("encodes: {e}")),
            decode: |b| {
                crate::store::decode_snapshot(&key(), b)
                    .map(drop)
                    .map_err(|e| e.to_string())
            },
        },
        Decoder {
            name: "shard map",
            sample: map.encode().unwrap_or_else(|e| unreachable!("encodes: {e}")),
            decode: |b| ShardMap::decode(b).map(drop).map_err(|e| e.to_string()),
        },
        Decoder {
            name: "node record",
            sample: encode(&node),
            decode: |b| {
                codec::decode::<NodeRecord>("node record", b)
                    .map(|n| n.held.iter().for_each(drop))
                    .map_err(|e| e.to_string())
            },
        },
        Decoder {
            name: "leader record",
            sample: encode(&LeaderRecord {
                node: "node-2".into(),
                term: 5,
            }),
            decode: |b| {
                codec::decode::<LeaderRecord>("leader record", b)
                    .map(drop)
                    .map_err(|e| e.to_string())
            },
        },
        Decoder {
            name: "heartbeat",
            sample: encode(&crate::cluster::Beat {
                node: "node-1".into(),
                server: "NDZXHBJHZ5TFUVQNG3WYWKS6SPTC7WGAQ5LQGCM5VDDO5NMHVNKFRWQ6".into(),
            }),
            decode: |b| {
                codec::decode::<crate::cluster::Beat>("beat", b)
                    .map(drop)
                    .map_err(|e| e.to_string())
            },
        },
        Decoder {
            name: "connection check",
            sample: encode(&crate::cluster::Check {
                node: "node-2".into(),
                server: "NDZXHBJHZ5TFUVQNG3WYWKS6SPTC7WGAQ5LQGCM5VDDO5NMHVNKFRWQ6".into(),
            }),
            decode: |b| {
                codec::decode::<crate::cluster::Check>("connection check", b)
                    .map(drop)
                    .map_err(|e| e.to_string())
            },
        },
        Decoder {
            name: "connection check verdict",
            sample: encode(&crate::cluster::Verdict { gone: true }),
            decode: |b| {
                codec::decode::<crate::cluster::Verdict>("verdict", b)
                    .map(drop)
                    .map_err(|e| e.to_string())
            },
        },
        Decoder {
            name: "heartbeat grant",
            sample: encode(&crate::cluster::Grant {
                leader: "node-2".into(),
                term: 5,
                epoch: 3,
            }),
            decode: |b| {
                codec::decode::<crate::cluster::Grant>("grant", b)
                    .map(drop)
                    .map_err(|e| e.to_string())
            },
        },
        Decoder {
            name: "bus event",
            sample: encode(&EventBody::Actor(envelope)),
            decode: |b| {
                codec::decode::<EventBody>("bus event", b)
                    .map(drop)
                    .map_err(|e| e.to_string())
            },
        },
        Decoder {
            name: "event envelope",
            sample: encode(&sample_commit().envelopes().collect::<Vec<EventEnvelope>>()),
            decode: |b| {
                codec::decode::<Vec<EventEnvelope>>("event envelopes", b)
                    .map(drop)
                    .map_err(|e| e.to_string())
            },
        },
        Decoder {
            name: "settlement",
            sample: encode(&Settle::Rejected {
                reason: "insufficient funds".into(),
            }),
            decode: |b| {
                codec::decode::<Settle>("settlement", b)
                    .map(drop)
                    .map_err(|e| e.to_string())
            },
        },
        Decoder {
            name: "embedded wake-up entry",
            sample: b"1700000000000 17".to_vec(),
            decode: |b| {
                crate::store::decode_wakeup(b)
                    .map(drop)
                    .ok_or_else(|| "not a wake-up entry".to_owned())
            },
        },
        Decoder {
            name: "answer batch",
            sample: {
                let mut out = Vec::new();
                batches::start_answers(&mut out);
                batches::push_answer(&mut out, 7, b"an answer frame");
                batches::push_answer(&mut out, 300, &[]);
                out
            },
            decode: |b| {
                batches::decode_answers(&bytes::Bytes::copy_from_slice(b), |_, _| {})
                    .map_err(|e| e.to_string())
            },
        },
        Decoder {
            name: "request batch",
            sample: {
                let request = request
                    .encode()
                    .unwrap_or_else(|e| unreachable!("encodes: {e}"));
                let mut out = Vec::new();
                batches::start_requests(&mut out);
                batches::push_request(&mut out, 1, 5, None, &request);
                let trace = crate::wire::TraceParent::of(
                    CommandId::from_u128(9),
                    CommandId::from_u128(10),
                    true,
                );
                batches::push_request(&mut out, 2, 1023, Some(trace), &request);
                out
            },
            decode: |b| {
                batches::decode_requests(&bytes::Bytes::copy_from_slice(b), |_| {})
                    .map_err(|e| e.to_string())
            },
        },
        Decoder {
            name: "encoded actor id",
            sample: key().id.encoded().into_bytes(),
            decode: |b| {
                let token = std::str::from_utf8(b).map_err(|e| e.to_string())?;
                ActorId::decode(token).map(drop).map_err(|e| e.to_string())
            },
        },
    ]
}
