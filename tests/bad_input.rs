//! Bad input gets a typed error with a clear message, and nothing stored is lost.

mod common;

use std::sync::Arc;

use aether::names::NameKind;
use aether::prelude::*;
use aether::store::{EventStore, FaultInjection, MemoryStore, NewCommit};
use aether::wire::{COMMIT_FORMAT, CommitRecord, EventData};
use aether::{ActorId, RefError, StartError};
use common::*;

#[tokio::test]
async fn invalid_namespaces_are_rejected() {
    for bad in [
        "",
        "bank account",
        "bank.eu",
        "bank*",
        "bank>",
        "bänk",
        &"n".repeat(65),
    ] {
        // The setter only records it; `start` refuses it, naming the namespace.
        let started = Runtime::builder()
            .namespace(bad)
            .memory_store()
            .start()
            .await;
        match started {
            Err(aether::StartError::InvalidName(err)) => {
                assert_eq!(err.what, NameKind::Namespace, "{bad:?}");
                assert!(err.to_string().starts_with("invalid namespace"), "{err}");
            }
            Err(other) => panic!("{bad:?}: wrong error {other}"),
            Ok(_) => panic!("{bad:?}: started with an invalid namespace"),
        }
    }
    // No namespace at all is a setup error, not a panic.
    let err = Runtime::builder().memory_store().start().await.unwrap_err();
    assert!(matches!(err, StartError::NoNamespace), "{err:?}");
    assert!(err.to_string().contains("no namespace set"), "{err}");
    // A node and a client at once.
    let err = Runtime::builder()
        .register::<Counter>()
        .cluster(aether::ClusterConfig::new("nats://127.0.0.1:1", "both"))
        .cluster_client("nats://127.0.0.1:1")
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, StartError::NodeAndClient), "{err:?}");
    // A builder namespace that contradicts the cluster's.
    let err = Runtime::builder()
        .namespace("one")
        .register::<Counter>()
        .cluster(aether::ClusterConfig::new("nats://127.0.0.1:1", "two"))
        .start()
        .await
        .unwrap_err();
    match err {
        StartError::NamespaceMismatch { builder, cluster } => {
            assert_eq!((builder.as_str(), cluster.as_str()), ("one", "two"))
        }
        other => panic!("expected NamespaceMismatch, got {other:?}"),
    }
    // A given store that serves another namespace.
    let store = MemoryStore::new(ns("theirs"));
    let err = Runtime::builder()
        .namespace("ours")
        .store(Arc::new(store.clone()), Arc::new(store))
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, StartError::StoreNamespace { .. }), "{err:?}");
}

/// A store choice that contradicts another is refused at start, naming the setting, instead
/// of the last one silently winning.
#[tokio::test]
async fn contradictory_store_choices_are_refused_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let refused = |field: &'static str, result: Result<Runtime, aether::StartError>| match result {
        Err(aether::StartError::InvalidConfig(e)) => {
            assert_eq!(e.field, field, "{e}");
            e.to_string()
        }
        Err(other) => panic!("{field}: wrong error {other}"),
        Ok(_) => panic!("{field}: started with contradictory choices"),
    };
    // Two stores.
    let both = Runtime::builder()
        .namespace("stores")
        .memory_store()
        .jetstream("nats://127.0.0.1:1")
        .start()
        .await;
    let message = refused("store", both);
    assert!(message.contains("memory_store and jetstream"), "{message}");
    // A data directory for a store that has none.
    let memory_dir = Runtime::builder()
        .namespace("stores")
        .data_dir(dir.path())
        .memory_store()
        .start()
        .await;
    refused("data_dir", memory_dir);
    // Embedded options for a store that takes none.
    let memory_options = Runtime::builder()
        .namespace("stores")
        .memory_store()
        .embedded_options(aether::store::EmbeddedOptions::default())
        .start()
        .await;
    refused("embedded_options", memory_options);
    // A cluster node keeps its events in JetStream: a store choice is refused before any
    // connection is made (nothing listens on that port).
    let node = Runtime::builder()
        .memory_store()
        .register::<Counter>()
        .cluster(aether::ClusterConfig::new("nats://127.0.0.1:1", "stores"))
        .start()
        .await;
    refused("store", node);
    // `data_dir` and `embedded_options` keep each other, in either order.
    let options = aether::store::EmbeddedOptions::default();
    let rt = Runtime::builder()
        .namespace("stores")
        .embedded_options(options)
        .data_dir(dir.path())
        .register::<Counter>()
        .start()
        .await
        .expect("embedded store with both settings");
    assert_eq!(rt.data_dir(), Some(dir.path().join("stores").as_path()));
    rt.shutdown().await.expect("shutdown");
}

/// An actor implemented by hand (no derive) with a kind that is not a valid name.
#[derive(Debug, Default, Serialize, Deserialize)]
struct BadKind;

impl aether::EventSourcedActor for BadKind {
    const KIND: &'static str = "bad kind";
    type Command = ();
    type Event = ();
    type Reply = ();
    type Error = CounterError;

    async fn dispatch(&self, _: (), _: &mut Ctx<Self>) -> Result<Effect<Self>, CounterError> {
        Ok(Effect::reply(()))
    }
}

impl Behavior for BadKind {
    fn apply(&mut self, _: &()) {}
}

#[tokio::test]
async fn invalid_kinds_are_rejected_at_start() {
    let err = Runtime::builder()
        .namespace("kinds")
        .register::<BadKind>()
        .memory_store()
        .start()
        .await
        .unwrap_err();
    match err {
        StartError::InvalidName(e) => {
            assert_eq!(e.what, NameKind::Kind);
            assert!(e.to_string().contains("' ' is not allowed"), "{e}");
        }
        other => panic!("expected InvalidName, got {other:?}"),
    }
    let err = Runtime::builder()
        .namespace("kinds")
        .register::<Counter>()
        .register::<Counter>()
        .memory_store()
        .start()
        .await
        .unwrap_err();
    match &err {
        StartError::DuplicateKind { kind } => assert_eq!(kind, "counter"),
        other => panic!("expected DuplicateKind, got {other:?}"),
    }
    assert!(err.to_string().contains("registered twice"), "{err}");
}

#[tokio::test]
async fn empty_and_oversized_ids_are_rejected() {
    let rt = memory_runtime("ids").await;
    match rt.actor::<Counter>("") {
        Err(RefError::InvalidName(e)) => {
            assert_eq!(e.to_string(), "invalid actor id \"\": must not be empty")
        }
        other => panic!("expected InvalidName, got {other:?}"),
    }
    let long = "x".repeat(257);
    match rt.actor::<Counter>(&long) {
        Err(RefError::InvalidName(e)) => {
            assert!(
                e.to_string()
                    .contains("257 bytes is longer than the limit of 256"),
                "{e}"
            )
        }
        other => panic!("expected InvalidName, got {other:?}"),
    }
    assert!(rt.actor::<Counter>("x".repeat(256)).is_ok());
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn ids_with_subject_characters_are_accepted_and_round_tripped() {
    let rt = memory_runtime("odd-ids").await;
    let ids = [
        "order.42",
        "a*b",
        "x>y",
        "with space",
        "tab\there",
        "café ☕",
        "日本語",
        "=3D",
        "a.b.*.>",
    ];
    for (i, id) in ids.iter().enumerate() {
        let c = rt.actor::<Counter>(id).unwrap();
        assert_eq!(
            c.ask(CounterCmd::Add(i as u64 + 1)).await.unwrap(),
            i as u64 + 1
        );
        let token = c.id().encoded();
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'='),
            "{token}"
        );
        assert_eq!(ActorId::decode(&token).unwrap().as_str(), *id);
        let events = rt.event_store().read(c.key(), 1).await.unwrap();
        assert_eq!(
            events[0].actor.id.as_str(),
            *id,
            "stored under the original id"
        );
    }
    // Each id is its own actor: no two share a stream.
    for (i, id) in ids.iter().enumerate() {
        let c = rt.actor::<Counter>(id).unwrap();
        assert_eq!(c.ask(CounterCmd::Get).await.unwrap(), i as u64 + 1);
    }
    rt.shutdown().await.unwrap();
}

async fn runtime_on(store: &MemoryStore, namespace: &str) -> Runtime {
    Runtime::builder()
        .namespace(namespace)
        .register::<Counter>()
        .store(Arc::new(store.clone()), Arc::new(store.clone()))
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn undecodable_event_payload_fails_activation_and_keeps_data() {
    let store = MemoryStore::new(ns("payload"));
    let rt = runtime_on(&store, "payload").await;
    let c = rt.actor::<Counter>("broken").unwrap();
    c.ask(CounterCmd::Add(1)).await.unwrap();
    rt.passivate(&c).await;
    // A well-formed record whose event payload is not a CounterEvent.
    let record = CommitRecord {
        format: COMMIT_FORMAT,
        actor: c.key().clone(),
        first_version: 2,
        command_id: CommandId::random(),
        correlation_id: CommandId::random(),
        causation_id: None,
        timestamp_ms: 0,
        events: vec![EventData {
            event_type: "Mystery".into(),
            payload: rmp_serde::to_vec_named(&("not", "an", "event")).unwrap(),
            schema_version: 0,
        }],
        reply: None,
        outbox: Vec::new(),
        settled: Vec::new(),
        delivery: None,
    };
    store
        .inject_raw_commit(c.key(), 2, record.encode().unwrap())
        .await
        .unwrap();
    // Drop the snapshot written at passivation so the bad event must be replayed.
    store
        .inject_raw_snapshot(c.key(), b"stale".to_vec())
        .await
        .unwrap();
    match c.ask(CounterCmd::Get).await {
        Err(AskError::Failed(CallError::ActivationFailed { reason, .. })) => {
            assert!(
                reason.contains("event 2 (Mystery) does not decode"),
                "{reason}"
            )
        }
        other => panic!("expected ActivationFailed, got {other:?}"),
    }
    assert_eq!(rt.stats().activation_failures, 1);
    // Nothing was lost: both records are still there, the clean one readable.
    let report = store.read_with_errors(c.key(), 1).await.unwrap();
    assert_eq!(report.commits.len(), 2);
    assert!(report.is_clean(), "the record itself is well-formed");
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn damaged_record_fails_activation_with_positions() {
    let store = MemoryStore::new(ns("damaged"));
    let c_key = key("damaged", "counter", "d");
    store.append(&c_key, 0, commit_of(&[1])).await.unwrap();
    store
        .inject_raw_commit(&c_key, 2, vec![0xc1, 0xc1])
        .await
        .unwrap();
    let rt = runtime_on(&store, "damaged").await;
    let c = rt.actor::<Counter>("d").unwrap();
    match c.ask(CounterCmd::Get).await {
        Err(AskError::Failed(CallError::ActivationFailed { reason, actor })) => {
            assert_eq!(&actor, c.key());
            assert!(
                reason.contains("1 damaged record(s) at position(s) 2"),
                "{reason}"
            );
            assert!(reason.contains("1 clean commit(s) kept"), "{reason}");
        }
        other => panic!("expected ActivationFailed, got {other:?}"),
    }
    // Not cached as dead: a later ask tries again (and fails the same way, without panicking).
    assert!(matches!(
        c.ask(CounterCmd::Get).await,
        Err(AskError::Failed(CallError::ActivationFailed { .. }))
    ));
    assert_eq!(
        store
            .read_with_errors(&c_key, 1)
            .await
            .unwrap()
            .commits
            .len(),
        1
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn unknown_kinds_are_rejected() {
    let rt = Runtime::builder()
        .namespace("unknown-kind")
        .register::<Counter>()
        .memory_store()
        .start()
        .await
        .unwrap();
    match rt.actor::<Tally>("t") {
        Err(RefError::UnknownKind { kind }) => assert_eq!(kind, "tally"),
        other => panic!("expected UnknownKind, got {other:?}"),
    }
    // A ref of an unregistered kind that arrives from elsewhere is refused when used.
    let foreign: ActorRef<Tally> =
        ActorRef::new(ns("unknown-kind"), ActorId::new("t").unwrap()).unwrap();
    match rt.bind(&foreign).ask(CounterCmd::Get).await {
        Err(e @ AskError::Failed(CallError::UnknownKind { .. })) => {
            assert_eq!(
                e.to_string(),
                "actor kind \"tally\" is not registered in this runtime"
            )
        }
        other => panic!("expected UnknownKind, got {other:?}"),
    }
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn refs_from_another_namespace_are_refused() {
    let rt = memory_runtime("home").await;
    let stranger: ActorRef<Counter> =
        ActorRef::new(ns("elsewhere-ns"), ActorId::new("x").unwrap()).unwrap();
    match rt.bind(&stranger).ask(CounterCmd::Get).await {
        Err(AskError::Failed(CallError::Unbound { reason, .. })) => {
            assert!(
                reason.contains("serves namespace home, not elsewhere-ns"),
                "{reason}"
            )
        }
        other => panic!("expected Unbound, got {other:?}"),
    }
    // Unbound and no runtime serves it in this process.
    match stranger.ask(CounterCmd::Get).await {
        Err(AskError::Failed(CallError::Unbound { reason, .. })) => {
            assert!(
                reason.contains("no runtime serves namespace elsewhere-ns"),
                "{reason}"
            )
        }
        other => panic!("expected Unbound, got {other:?}"),
    }
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn oversized_commits_are_refused_and_nothing_is_stored() {
    let rt = Runtime::builder()
        .namespace("big")
        .register::<Counter>()
        .memory_store()
        .max_commit_bytes(4096)
        .start()
        .await
        .unwrap();
    let c = rt.actor::<Counter>("b").unwrap();
    let err = c
        .ask(CounterCmd::AddMany(vec![1 << 40; 1000]))
        .await
        .unwrap_err();
    match &err {
        AskError::Failed(CallError::TooLarge { size, limit }) => {
            assert_eq!(*limit, 4096);
            assert!(*size > 4096);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(
        err.to_string()
            .contains("more than the limit of 4096 bytes")
    );
    assert_eq!(rt.event_store().latest_version(c.key()).await.unwrap(), 0);
    assert_eq!(
        c.ask(CounterCmd::Add(1)).await.unwrap(),
        1,
        "the actor still works"
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn undecodable_refs_and_names_are_codec_errors() {
    #[derive(Serialize)]
    struct Repr<'a> {
        namespace: &'a str,
        kind: &'a str,
        id: &'a str,
    }
    let bad_ns = rmp_serde::to_vec_named(&Repr {
        namespace: "no spaces allowed",
        kind: "counter",
        id: "x",
    })
    .unwrap();
    let err = rmp_serde::from_slice::<ActorRef<Counter>>(&bad_ns).unwrap_err();
    assert!(err.to_string().contains("invalid namespace"), "{err}");
    let garbage = rmp_serde::from_slice::<ActorRef<Counter>>(b"\x93\x01");
    assert!(garbage.is_err());
    let err = CommitRecord::decode(b"\x00\x01\x02").unwrap_err();
    assert!(
        err.to_string().starts_with("commit record: cannot decode"),
        "{err}"
    );
    // A commit with no events is refused by the store, before anything is written.
    let store = MemoryStore::new(ns("codec"));
    let k = key("codec", "counter", "x");
    assert!(
        store
            .append(&k, 0, NewCommit::new(CommandId::random(), vec![]))
            .await
            .is_err()
    );
}
