//! The JetStream store against a real nats-server: the conformance suite on one server (R1)
//! and on a 3-server cluster (R3), the layout, replay modes, retention and version checks.

mod common;

use std::sync::Arc;
use std::time::Duration;

use aether::store::{
    EventStore, JetStreamOptions, JetStreamStore, ReplayMode, SnapshotStore, StoreError,
};
use common::conformance::Fixture;
use common::nats::{NatsCluster, NatsServer, wait_for_jetstream};
use common::{commit_of, key};

async fn store_on(url: &str, namespace: &str, options: JetStreamOptions) -> JetStreamStore {
    JetStreamStore::connect(url, namespace, options)
        .await
        .expect("store connects")
}

mod r1 {
    use super::*;

    conformance_suite!(|namespace: &'static str| async move {
        let server = NatsServer::start();
        let store = store_on(&server.url(), namespace, JetStreamOptions::default()).await;
        Fixture {
            store: Arc::new(store),
            namespace,
            guard: Box::new(server),
        }
    });
}

mod r1_one_by_one {
    use super::*;

    conformance_suite!(|namespace: &'static str| async move {
        let server = NatsServer::start();
        let options = JetStreamOptions {
            replay: ReplayMode::OneByOne,
            ..Default::default()
        };
        let store = store_on(&server.url(), namespace, options).await;
        Fixture {
            store: Arc::new(store),
            namespace,
            guard: Box::new(server),
        }
    });
}

mod r3 {
    use super::*;

    conformance_suite!(|namespace: &'static str| async move {
        let cluster = NatsCluster::start();
        wait_for_jetstream(&cluster.urls()).await;
        let options = JetStreamOptions {
            replicas: 3,
            ..Default::default()
        };
        let store = store_on(&cluster.urls(), namespace, options).await;
        Fixture {
            store: Arc::new(store),
            namespace,
            guard: Box::new(cluster),
        }
    });
}

#[tokio::test]
async fn layout_follows_the_namespace() {
    let server = NatsServer::start();
    let store = store_on(&server.url(), "bank", JetStreamOptions::default()).await;
    assert_eq!(store.stream_name(), "bank_events");
    assert_eq!(store.snapshot_bucket(), "bank_snapshots");
    let a = key("bank", "account", "order.42 é");
    assert_eq!(store.subject(&a), "bank.events.account.order=2E42=20=C3=A9");
    store.append(&a, 0, commit_of(&[1])).await.unwrap();
    // A raw client sees the commit on the documented subject, with the version header.
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream("bank_events").await.unwrap();
    let msg = stream
        .direct_get_last_for_subject("bank.events.account.order=2E42=20=C3=A9")
        .await
        .unwrap();
    assert_eq!(msg.headers.get("Aether-Version").unwrap().as_str(), "1");
    assert!(
        msg.headers
            .get("Nats-Msg-Id")
            .unwrap()
            .as_str()
            .starts_with("bank.account.order=2E42=20=C3=A9:")
    );
}

#[tokio::test]
async fn lost_ack_retry_is_recognised_not_duplicated() {
    let server = NatsServer::start();
    let store = store_on(&server.url(), "retry", JetStreamOptions::default()).await;
    let a = key("retry", "account", "a");
    store.append(&a, 0, commit_of(&[1])).await.unwrap();
    let commit = commit_of(&[2, 3]);
    // The commit lands, but (as if its ack were lost) the caller only knows it sent it ...
    let first = store.append(&a, 1, commit.clone()).await.unwrap();
    assert!(!first.deduplicated);
    // ... and sends it again: the server refuses on the sequence check, the store recognises
    // its own message id, and reports success without a second write.
    let again = store.append(&a, 1, commit).await.unwrap();
    assert!(again.deduplicated);
    assert_eq!((again.first_version, again.last_version), (2, 3));
    let events = store.read(&a, 1).await.unwrap();
    assert_eq!(events.len(), 3, "one stored commit, not two");
    // A fresh store (empty caches) recognises it too.
    let fresh = store_on(&server.url(), "retry", JetStreamOptions::default()).await;
    let commit = commit_of(&[4]);
    fresh.append(&a, 3, commit.clone()).await.unwrap();
    assert!(fresh.append(&a, 3, commit).await.unwrap().deduplicated);
    assert_eq!(fresh.latest_version(&a).await.unwrap(), 4);
}

#[tokio::test]
async fn replay_starts_after_the_snapshot_position() {
    let server = NatsServer::start();
    let store = store_on(&server.url(), "hint", JetStreamOptions::default()).await;
    let a = key("hint", "account", "long");
    let mut v = 0;
    for i in 0..300u64 {
        v = store
            .append(&a, v, commit_of(&[i]))
            .await
            .unwrap()
            .last_version;
    }
    store
        .save(
            &a,
            aether::store::Snapshot {
                version: 250,
                payload: b"s".to_vec(),
                timestamp_ms: 0,
            },
        )
        .await
        .unwrap();
    // A new store (as after a restart) learns the position from the snapshot record.
    let fresh = store_on(&server.url(), "hint", JetStreamOptions::default()).await;
    let snapshot = fresh.latest(&a).await.unwrap().unwrap();
    assert_eq!(snapshot.version, 250);
    let tail = fresh.read(&a, 251).await.unwrap();
    assert_eq!(tail.len(), 50);
    assert_eq!(tail[0].version, 251);
    assert_eq!(fresh.read(&a, 1).await.unwrap().len(), 300);
}

#[tokio::test]
async fn truncation_purges_only_the_commits_before_the_horizon() {
    let server = NatsServer::start();
    let store = store_on(&server.url(), "keep", JetStreamOptions::default()).await;
    let a = key("keep", "account", "a");
    let b = key("keep", "account", "b");
    let mut v = 0;
    for i in 0..20u64 {
        v = store
            .append(&a, v, commit_of(&[i]))
            .await
            .unwrap()
            .last_version;
        store.append(&b, i, commit_of(&[i])).await.unwrap();
    }
    assert_eq!(store.history_start(&a).await.unwrap(), 1);
    let truncated = store.truncate_before(&a, 11).await.unwrap();
    assert_eq!((truncated.starts_at, truncated.removed), (11, 10));
    assert_eq!(store.history_start(&a).await.unwrap(), 11);
    let left: Vec<u64> = store
        .read(&a, 11)
        .await
        .unwrap()
        .iter()
        .map(|e| e.version)
        .collect();
    assert_eq!(left, (11..=20).collect::<Vec<_>>());
    // Reading before the horizon says so, with where history starts.
    match store.read(&a, 1).await {
        Err(StoreError::HistoryTruncated {
            requested,
            starts_at,
            ..
        }) => assert_eq!((requested, starts_at), (1, 11)),
        other => panic!("expected HistoryTruncated, got {other:?}"),
    }
    assert_eq!(store.latest_version(&a).await.unwrap(), 20);
    assert_eq!(
        store.read(&b, 1).await.unwrap().len(),
        20,
        "other actors untouched"
    );
    // Past the head, the latest commit stays: it carries the version appends check against.
    let truncated = store.truncate_before(&a, 1_000).await.unwrap();
    assert_eq!((truncated.starts_at, truncated.removed), (20, 9));
    assert_eq!(store.latest_version(&a).await.unwrap(), 20);
    // Appends continue on top.
    assert_eq!(
        store
            .append(&a, 20, commit_of(&[9]))
            .await
            .unwrap()
            .last_version,
        21
    );
    assert_eq!(store.read(&a, 20).await.unwrap().len(), 2);
}

#[tokio::test]
async fn invalid_namespace_is_rejected_before_connecting() {
    // Nothing listens on this port: a name error proves nothing was contacted.
    let err = JetStreamStore::connect(
        "nats://127.0.0.1:1",
        "tenant a",
        JetStreamOptions::default(),
    )
    .await
    .err()
    .expect("rejected");
    match err {
        StoreError::InvalidName(e) => assert!(e.to_string().contains("invalid namespace")),
        other => panic!("expected InvalidName, got {other:?}"),
    }
}

#[tokio::test]
async fn unreachable_server_is_unavailable() {
    let port = common::nats::free_port();
    let options = JetStreamOptions {
        request_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let err = JetStreamStore::connect(&format!("nats://127.0.0.1:{port}"), "ns", options)
        .await
        .err()
        .expect("no server");
    assert!(
        matches!(
            err,
            StoreError::Connect(aether::ConnectError::Unreachable { .. })
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn namespaces_are_isolated_in_storage() {
    let server = NatsServer::start();
    let a = store_on(&server.url(), "tenant-a", JetStreamOptions::default()).await;
    let b = store_on(&server.url(), "tenant-b", JetStreamOptions::default()).await;
    assert_eq!(a.stream_name(), "tenant-a_events");
    assert_eq!(b.stream_name(), "tenant-b_events");
    // The same kind and id in both namespaces are two different actors.
    let in_a = key("tenant-a", "account", "alice");
    let in_b = key("tenant-b", "account", "alice");
    for i in 0..3u64 {
        a.append(&in_a, i, commit_of(&[i])).await.unwrap();
    }
    b.append(&in_b, 0, commit_of(&[100])).await.unwrap();
    assert_eq!(a.latest_version(&in_a).await.unwrap(), 3);
    assert_eq!(b.latest_version(&in_b).await.unwrap(), 1);
    assert_eq!(b.read(&in_b, 1).await.unwrap().len(), 1);
    // A store refuses actors of another namespace outright.
    assert!(matches!(
        a.read(&in_b, 1).await,
        Err(StoreError::WrongNamespace { .. })
    ));
    assert!(matches!(
        b.append(&in_a, 3, commit_of(&[1])).await,
        Err(StoreError::WrongNamespace { .. })
    ));
    assert!(matches!(
        b.latest(&in_a).await,
        Err(StoreError::WrongNamespace { .. })
    ));
    // Snapshots and retention purges stay in their namespace.
    let snap = |version| aether::store::Snapshot {
        version,
        payload: b"a".to_vec(),
        timestamp_ms: 0,
    };
    a.save(&in_a, snap(3)).await.unwrap();
    assert_eq!(a.truncate_before(&in_a, 4).await.unwrap().starts_at, 3);
    assert!(b.latest(&in_b).await.unwrap().is_none());
    assert_eq!(
        a.read(&in_a, 3).await.unwrap().len(),
        1,
        "a purged up to its snapshot"
    );
    assert_eq!(b.read(&in_b, 1).await.unwrap().len(), 1, "b untouched");
    // On the server: two streams, each bound to its own subjects.
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    for ns in ["tenant-a", "tenant-b"] {
        let mut stream = js.get_stream(format!("{ns}_events")).await.unwrap();
        let info = stream.info().await.unwrap();
        assert_eq!(info.config.subjects, vec![format!("{ns}.events.>")]);
    }
}

#[tokio::test]
async fn servers_older_than_2_11_are_refused_clearly() {
    let Some(binary) = common::nats::old_server_binary() else {
        eprintln!(
            "skipped: no nats-server 2.10 installed (scripts/test.sh installs 2.10.26 for this test)"
        );
        return;
    };
    let server = NatsServer::start_binary(binary);
    match JetStreamStore::connect(&server.url(), "old", JetStreamOptions::default()).await {
        Err(e @ StoreError::ServerTooOld { .. }) => {
            let text = e.to_string();
            assert!(text.contains("nats-server 2.10"), "{text}");
            assert!(text.contains("needs 2.11.0 or newer"), "{text}");
        }
        Err(other) => panic!("expected ServerTooOld, got {other}"),
        Ok(_) => panic!("a 2.10 server must be refused"),
    }
}
