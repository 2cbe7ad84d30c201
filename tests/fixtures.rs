//! Golden fixtures: the bytes this version writes for a commit, a snapshot and the frames
//! between nodes are checked in under `tests/fixtures/`, and every test run compares them.
//!
//! - **Encoding**: today's code must write exactly the checked-in bytes. A change to a stored
//!   or sent format fails here, on purpose: data written by the previous version is on disks
//!   and in flight during a rolling upgrade.
//! - **Decoding**: the checked-in bytes must decode to the same values, and old formats kept
//!   here (format-1 commits and frames, format-2 snapshots) must still be read.
//!
//! A format change that is meant: raise the format number, keep the old file (renamed after
//! its format) in the decoding checks, and write the new files with
//! `AETHER_BLESS_FIXTURES=1 cargo test --test fixtures`. `tests/fixtures/README.md` says more.

use std::path::PathBuf;
use std::time::Duration;

use aether::names::{ActorId, ActorKey, Kind, Namespace};
use aether::prelude::*;
use aether::store::Snapshot;
use aether::wire::codec;
use aether::wire::{
    CommitRecord, Control, Delivery, EffectOrigin, EventData, OutboxEntry, RemoteReply,
    RemoteRequest,
};

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Compares `bytes` with the checked-in fixture `name` (or writes it when blessing) and
/// returns the checked-in bytes.
fn golden(name: &str, bytes: &[u8]) -> Vec<u8> {
    compare(name, bytes, true)
}

/// Like [`golden`] for a format this version no longer writes: never rewritten by blessing,
/// so an accidental change cannot replace the proof that old data still reads.
fn frozen(name: &str, bytes: &[u8]) -> Vec<u8> {
    compare(name, bytes, false)
}

fn compare(name: &str, bytes: &[u8], blessable: bool) -> Vec<u8> {
    let path = fixture_path(name);
    if blessable && std::env::var_os("AETHER_BLESS_FIXTURES").is_some() {
        std::fs::write(&path, bytes).expect("write fixture");
        return bytes.to_vec();
    }
    let stored = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "fixture {} cannot be read ({e}); AETHER_BLESS_FIXTURES=1 writes it",
            path.display()
        )
    });
    assert!(
        stored == bytes,
        "the encoding of {name} changed: a format change must raise its format number and keep \
         the old fixture decoding (see tests/fixtures/README.md)\n stored: {}\n now:    {}",
        hex(&stored),
        hex(bytes)
    );
    stored
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn key(kind: &str, id: &str) -> ActorKey {
    ActorKey::new(
        Namespace::new("bank").expect("namespace"),
        Kind::new(kind).expect("kind"),
        ActorId::new(id).expect("id"),
    )
}

fn cid(n: u128) -> CommandId {
    CommandId::from_u128(n)
}

fn enc<T: serde::Serialize>(value: &T) -> Vec<u8> {
    codec::encode("fixture", value).expect("encode")
}

#[derive(Serialize, Deserialize)]
enum AccountEvent {
    Debited { to: String, amount: u64 },
}

/// A commit of today's format: events, reply, two durable effects (one with a compensation,
/// one a reminder), settled entries, and the effect it applies.
fn commit_v2() -> CommitRecord {
    CommitRecord {
        format: 2,
        actor: key("account", "alice"),
        first_version: 7,
        command_id: cid(0x0101_0101_0101_4101_8101_0101_0101_0101),
        correlation_id: cid(0x0202_0202_0202_4202_8202_0202_0202_0202),
        causation_id: Some(cid(0x0303_0303_0303_4303_8303_0303_0303_0303)),
        timestamp_ms: 1_795_000_000_000,
        events: vec![EventData {
            event_type: "Debited".into(),
            payload: enc(&AccountEvent::Debited {
                to: "bob".into(),
                amount: 5,
            }),
            schema_version: 0,
        }],
        reply: Some(enc(&95u64)),
        outbox: vec![
            OutboxEntry {
                seq: 3,
                target: key("account", "bob"),
                command_id: cid(0x0404_0404_0404_4404_8404_0404_0404_0404),
                causation_id: cid(0x0101_0101_0101_4101_8101_0101_0101_0101),
                correlation_id: cid(0x0202_0202_0202_4202_8202_0202_0202_0202),
                command: enc(&("Credit", 5u64)),
                due_ms: None,
                reminder: None,
                compensation: Some(enc(&("Refund", 5u64))),
            },
            OutboxEntry {
                seq: 4,
                target: key("account", "alice"),
                command_id: cid(0x0505_0505_0505_4505_8505_0505_0505_0505),
                causation_id: cid(0x0101_0101_0101_4101_8101_0101_0101_0101),
                correlation_id: cid(0x0202_0202_0202_4202_8202_0202_0202_0202),
                command: enc(&"Expire"),
                due_ms: Some(1_795_000_030_000),
                reminder: Some("expire-hold".into()),
                compensation: None,
            },
        ],
        settled: vec![1, 2],
        delivery: Some(Delivery {
            from: key("account", "carol"),
            seq: 9,
        }),
    }
}

/// A commit whose event carries an event schema version (format 3).
fn commit_v3() -> CommitRecord {
    let mut commit = commit_v2();
    commit.format = 3;
    commit.events[0].schema_version = 2;
    commit
}

/// A commit of the first format: no outbox fields.
fn commit_v1() -> CommitRecord {
    CommitRecord {
        format: 1,
        outbox: Vec::new(),
        settled: Vec::new(),
        delivery: None,
        ..commit_v2()
    }
}

#[test]
fn commits_encode_and_decode_as_checked_in() {
    // Format 2 and 1 are still written (a commit uses the lowest format its content needs).
    for (name, commit) in [
        ("commit-format-3.msgpack", commit_v3()),
        ("commit-format-2.msgpack", commit_v2()),
        ("commit-format-1.msgpack", commit_v1()),
    ] {
        let stored = golden(name, &commit.encode().expect("encode"));
        let decoded = CommitRecord::decode(&stored).expect("decodes, format accepted");
        assert_eq!(decoded, commit, "{name}");
    }
    // A format newer than this reader is refused, not misread.
    let mut future = commit_v3();
    future.format = 4;
    let refused = CommitRecord::decode(&future.encode().expect("encode"));
    assert!(
        refused.is_err_and(|e| e.to_string().contains("newer than this reader")),
        "a format-4 commit must be refused"
    );
}

fn request(format: u16) -> RemoteRequest {
    RemoteRequest {
        format,
        namespace: "bank".into(),
        kind: "account".into(),
        id: "bob".into(),
        command_id: cid(0x0404_0404_0404_4404_8404_0404_0404_0404),
        correlation_id: cid(0x0202_0202_0202_4202_8202_0202_0202_0202),
        causation_id: Some(cid(0x0101_0101_0101_4101_8101_0101_0101_0101)),
        timeout_ms: 4_500,
        chain: vec![key("account", "alice")],
        expects_reply: true,
        command: enc(&("Credit", 5u64)),
        effect: None,
        control: None,
        traced: None,
    }
}

#[test]
fn frames_encode_and_decode_as_checked_in() {
    let effect = RemoteRequest {
        expects_reply: true,
        effect: Some(EffectOrigin {
            from: key("account", "alice"),
            seq: 3,
            compensation: Some(enc(&("Refund", 5u64))),
        }),
        ..request(2)
    };
    let probe = RemoteRequest {
        command: Vec::new(),
        control: Some(Control::Probe {
            origin: key("account", "alice"),
            origin_turn: cid(1),
            blocked: cid(2),
            seek: key("account", "carol"),
            seek_turn: cid(3),
            path: vec![key("account", "bob")],
        }),
        ..request(2)
    };
    for (name, frame) in [
        ("request-format-1.msgpack", request(1)),
        ("request-effect-format-2.msgpack", effect),
        ("request-probe-format-2.msgpack", probe),
    ] {
        let stored = golden(name, &frame.encode().expect("encode"));
        assert_eq!(
            RemoteRequest::decode(&stored).expect("decodes"),
            frame,
            "{name}"
        );
    }
    for (name, reply) in [
        ("reply-ok.msgpack", RemoteReply::Ok { reply: enc(&95u64) }),
        (
            "reply-rejected.msgpack",
            RemoteReply::Rejected {
                error: enc(&"insufficient funds"),
            },
        ),
        (
            "reply-err.msgpack",
            RemoteReply::Err(CallError::Timeout {
                after: Duration::from_millis(4_500),
            }),
        ),
        (
            "reply-not-owner.msgpack",
            RemoteReply::NotOwner { shard: 17 },
        ),
    ] {
        let stored = golden(name, &enc(&reply));
        let decoded: RemoteReply = codec::decode("reply frame", &stored).expect("decodes");
        assert_eq!(decoded, reply, "{name}");
    }
}

// ---------------------------------------------------------------------------------------------
// Snapshots: written and read by a real runtime.

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deposit(pub u64);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Show;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PiggyEvent {
    Deposited(u64),
}

#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
#[error("never")]
pub struct Never;

/// The piggy bank, defined by its `#[actor(...)]` attribute: the same actor at two state
/// versions.
macro_rules! piggy {
    ($(#[$attr:meta])*) => {
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, EventSourcedActor)]
        $(#[$attr])*
        pub struct Piggy {
            pub total: u64,
            pub deposits: Vec<u64>,
        }

        impl Handle<Deposit> for Piggy {
            async fn handle(&self, c: Deposit, _: &mut Ctx<Self>) -> Result<Effect<Self, u64>, Never> {
                Ok(Effect::persist(PiggyEvent::Deposited(c.0)).reply_with(|s: &Self| s.total))
            }
        }

        impl Handle<Show> for Piggy {
            async fn handle(&self, _: Show, _: &mut Ctx<Self>) -> Result<Effect<Self, Piggy>, Never> {
                Ok(Effect::reply(self.clone()))
            }
        }

        impl Behavior for Piggy {
            fn apply(&mut self, event: &PiggyEvent) {
                let PiggyEvent::Deposited(n) = event;
                self.total += n;
                self.deposits.push(*n);
            }
        }
    };
}

piggy!(#[actor(kind = "piggy", event = PiggyEvent, error = Never,
               commands(Deposit -> u64, Show -> Piggy), state_version = 1)]);

/// The same actor before it declared a state version (0): what wrote format-2 snapshots.
mod unversioned {
    use super::*;

    piggy!(#[actor(kind = "piggy", event = PiggyEvent, error = Never,
                   commands(Deposit -> u64, Show -> Piggy))]);
}

fn piggy_after_three() -> Piggy {
    Piggy {
        total: 60,
        deposits: vec![10, 20, 30],
    }
}

async fn runtime(ns: &str) -> Runtime {
    Runtime::builder()
        .namespace(ns)
        .register::<Piggy>()
        .memory_store()
        .start()
        .await
        .expect("runtime")
}

/// The format-2 snapshot (state inline, no state version), rebuilt from the previous release's
/// snapshot structs (same fields, same order).
fn snapshot_format_2() -> Vec<u8> {
    #[derive(Serialize)]
    struct Recent {
        command_id: CommandId,
        #[serde(with = "serde_bytes")]
        reply: Option<Vec<u8>>,
    }
    #[derive(Serialize)]
    struct Outbox {
        pending: Vec<OutboxEntry>,
        next_seq: u64,
        inbound: Vec<(ActorKey, u64)>,
    }
    #[derive(Serialize)]
    struct SnapshotV2 {
        format: u16,
        state: Piggy,
        recent: Vec<Recent>,
        outbox: Outbox,
    }
    enc(&SnapshotV2 {
        format: 2,
        state: piggy_after_three(),
        recent: (1..=3u128)
            .map(|n| Recent {
                command_id: cid(n),
                reply: Some(enc(&PiggyReply::Deposit([10u64, 30, 60][n as usize - 1]))),
            })
            .collect(),
        outbox: Outbox {
            pending: Vec::new(),
            next_seq: 1,
            inbound: Vec::new(),
        },
    })
}

#[tokio::test]
async fn a_snapshot_is_written_as_checked_in() {
    let rt = runtime("fixtures").await;
    let piggy = rt.actor::<Piggy>("p").expect("ref");
    for (n, amount) in [10u64, 20, 30].into_iter().enumerate() {
        piggy
            .ask_with(
                Deposit(amount),
                AskOptions {
                    command_id: Some(cid(n as u128 + 1)),
                    ..AskOptions::default()
                },
            )
            .await
            .expect("deposit");
    }
    assert!(rt.passivate(&piggy).await, "passivated (and snapshotted)");
    let snapshot = rt
        .snapshot_store()
        .latest(piggy.key())
        .await
        .expect("read")
        .expect("a snapshot at passivation");
    assert_eq!(snapshot.version, 3);
    golden("snapshot-format-3.msgpack", &snapshot.payload);
    // The previous format's fixture is generated here too (the test below reads it).
    frozen("snapshot-format-2.msgpack", &snapshot_format_2());
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn checked_in_snapshots_of_every_format_are_read() {
    for (name, state_version_ok) in [
        ("snapshot-format-3.msgpack", true),
        // Written before state versions: read as version 0, so a kind at version 1 (this one)
        // must not trust it — it replays (here: nothing stored, so the default state).
        ("snapshot-format-2.msgpack", false),
    ] {
        let payload = std::fs::read(fixture_path(name)).expect("fixture");
        let rt = runtime("fixtures").await;
        let piggy = rt.actor::<Piggy>("p").expect("ref");
        rt.snapshot_store()
            .save(
                piggy.key(),
                Snapshot {
                    version: 3,
                    payload,
                    timestamp_ms: 0,
                },
            )
            .await
            .expect("seed the snapshot");
        let state = piggy.ask(Show).await.expect("show");
        let stats = rt.stats();
        if state_version_ok {
            assert_eq!(state, piggy_after_three(), "{name}");
            assert_eq!(stats.snapshot_fallbacks, 0, "{name}");
            // The dedup window came back with it: a retried deposit gets its stored reply.
            let retried = piggy
                .ask_with(
                    Deposit(20),
                    AskOptions {
                        command_id: Some(cid(2)),
                        ..AskOptions::default()
                    },
                )
                .await
                .expect("retry");
            assert_eq!(retried, 30, "{name}: answered from the stored reply");
        } else {
            assert_eq!(state, Piggy::default(), "{name}");
            assert_eq!(stats.snapshot_fallbacks, 1, "{name}");
        }
        rt.shutdown().await.expect("shutdown");
    }
    // The kind as it was when format 2 was written reads it, dedup window included.
    let rt = Runtime::builder()
        .namespace("fixtures")
        .register::<unversioned::Piggy>()
        .memory_store()
        .start()
        .await
        .expect("runtime");
    let piggy = rt.actor::<unversioned::Piggy>("p").expect("ref");
    rt.snapshot_store()
        .save(
            piggy.key(),
            Snapshot {
                version: 3,
                payload: std::fs::read(fixture_path("snapshot-format-2.msgpack")).expect("fixture"),
                timestamp_ms: 0,
            },
        )
        .await
        .expect("seed the snapshot");
    let state = piggy.ask(Show).await.expect("show");
    assert_eq!((state.total, state.deposits), (60, vec![10, 20, 30]));
    assert_eq!(rt.stats().snapshot_fallbacks, 0);
    let retried = piggy
        .ask_with(
            Deposit(30),
            AskOptions {
                command_id: Some(cid(3)),
                ..AskOptions::default()
            },
        )
        .await
        .expect("retry");
    assert_eq!(retried, 60, "answered from the stored reply");
    rt.shutdown().await.expect("shutdown");
}
