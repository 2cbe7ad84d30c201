//! The store conformance suite against every backend, plus embedded-only durability checks.

mod common;

use std::sync::Arc;

use aether::store::{EmbeddedStore, EventStore, MemoryStore, SnapshotStore};
use common::conformance::Fixture;
use common::{commit_of, key, ns};

mod memory {
    use super::*;

    conformance_suite!(|namespace: &'static str| async move {
        Fixture {
            store: Arc::new(MemoryStore::new(ns(namespace))),
            namespace,
            guard: Box::new(()),
        }
    });
}

mod embedded {
    use super::*;

    conformance_suite!(|namespace: &'static str| async move {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = EmbeddedStore::open(dir.path(), ns(namespace)).expect("store opens");
        Fixture {
            store: Arc::new(store),
            namespace,
            guard: Box::new(dir),
        }
    });
}

#[tokio::test]
async fn embedded_data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let a = key("conf", "counter", "durable");
    {
        let store = EmbeddedStore::open(dir.path(), ns("conf")).unwrap();
        store.append(&a, 0, commit_of(&[1, 2])).await.unwrap();
        store.append(&a, 2, commit_of(&[3])).await.unwrap();
        store
            .save(
                &a,
                aether::store::Snapshot {
                    version: 2,
                    payload: b"s".to_vec(),
                    timestamp_ms: 0,
                },
            )
            .await
            .unwrap();
        store.close().await.unwrap();
    }
    let store = EmbeddedStore::open(dir.path(), ns("conf")).unwrap();
    assert_eq!(store.latest_version(&a).await.unwrap(), 3);
    assert_eq!(store.read(&a, 1).await.unwrap().len(), 3);
    assert_eq!(store.latest(&a).await.unwrap().unwrap().version, 2);
    // The reopened store continues the stream where it was.
    assert_eq!(
        store
            .append(&a, 3, commit_of(&[4]))
            .await
            .unwrap()
            .last_version,
        4
    );
}

#[tokio::test]
async fn embedded_directory_is_locked_to_one_store() {
    let dir = tempfile::tempdir().unwrap();
    let _first = EmbeddedStore::open(dir.path(), ns("conf")).unwrap();
    match EmbeddedStore::open(dir.path(), ns("conf")) {
        Err(e) => assert!(e.to_string().contains("cannot open"), "{e}"),
        Ok(_) => panic!("a second store on the same directory must be refused"),
    }
}

#[tokio::test]
async fn embedded_closed_store_refuses_work() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), ns("conf")).unwrap();
    store.close().await.unwrap();
    let a = key("conf", "counter", "closed");
    assert!(matches!(
        store.append(&a, 0, commit_of(&[1])).await,
        Err(aether::StoreError::Closed)
    ));
    assert!(matches!(
        store.latest_version(&a).await,
        Err(aether::StoreError::Closed)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_group_commit_serves_many_writers() {
    // 64 writers, each with its own stream, 20 commits each: all land, all gapless.
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path(), ns("conf")).unwrap());
    let mut tasks = Vec::new();
    for w in 0..64 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let a = key("conf", "counter", &format!("writer-{w}"));
            for v in 0..20u64 {
                store.append(&a, v, commit_of(&[v])).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for w in 0..64 {
        let a = key("conf", "counter", &format!("writer-{w}"));
        let versions: Vec<u64> = store
            .read(&a, 1)
            .await
            .unwrap()
            .iter()
            .map(|e| e.version)
            .collect();
        assert_eq!(versions, (1..=20).collect::<Vec<_>>());
    }
}
