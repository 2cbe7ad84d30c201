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

/// A store with the trait's default `replay` (built on `read_with_errors`), as a store written
/// outside this crate would have: the memory store with every method passed through but that.
mod default_replay {
    use super::*;
    use aether::store::{
        Appended, FaultInjection, LogPage, NewCommit, ReadReport, Snapshot, StoreError, Truncated,
        WakeupStream,
    };
    use aether::{ActorKey, Namespace};
    use async_trait::async_trait;

    struct ReportOnly(MemoryStore);

    #[async_trait]
    impl EventStore for ReportOnly {
        fn namespace(&self) -> &Namespace {
            self.0.namespace()
        }
        async fn append(
            &self,
            actor: &ActorKey,
            expected_version: u64,
            commit: NewCommit,
        ) -> Result<Appended, StoreError> {
            self.0.append(actor, expected_version, commit).await
        }
        async fn latest_version(&self, actor: &ActorKey) -> Result<u64, StoreError> {
            self.0.latest_version(actor).await
        }
        async fn read_with_errors(
            &self,
            actor: &ActorKey,
            from_version: u64,
        ) -> Result<ReadReport, StoreError> {
            self.0.read_with_errors(actor, from_version).await
        }
        async fn truncate_before(
            &self,
            actor: &ActorKey,
            version: u64,
        ) -> Result<Truncated, StoreError> {
            self.0.truncate_before(actor, version).await
        }
        async fn history_start(&self, actor: &ActorKey) -> Result<u64, StoreError> {
            self.0.history_start(actor).await
        }
        async fn read_log(&self, after: u64, max: usize) -> Result<LogPage, StoreError> {
            self.0.read_log(after, max).await
        }
        async fn set_wakeup(&self, actor: &ActorKey, due_ms: u64) -> Result<u64, StoreError> {
            self.0.set_wakeup(actor, due_ms).await
        }
        async fn clear_wakeup(&self, actor: &ActorKey, revision: u64) -> Result<(), StoreError> {
            self.0.clear_wakeup(actor, revision).await
        }
        async fn watch_wakeups(&self) -> Result<WakeupStream, StoreError> {
            self.0.watch_wakeups().await
        }
    }

    #[async_trait]
    impl SnapshotStore for ReportOnly {
        async fn save(&self, actor: &ActorKey, snapshot: Snapshot) -> Result<(), StoreError> {
            self.0.save(actor, snapshot).await
        }
        async fn latest(&self, actor: &ActorKey) -> Result<Option<Snapshot>, StoreError> {
            self.0.latest(actor).await
        }
    }

    #[async_trait]
    impl FaultInjection for ReportOnly {
        async fn inject_raw_commit(
            &self,
            actor: &ActorKey,
            position: u64,
            bytes: Vec<u8>,
        ) -> Result<(), StoreError> {
            self.0.inject_raw_commit(actor, position, bytes).await
        }
        async fn inject_raw_snapshot(
            &self,
            actor: &ActorKey,
            bytes: Vec<u8>,
        ) -> Result<(), StoreError> {
            self.0.inject_raw_snapshot(actor, bytes).await
        }
    }

    conformance_suite!(|namespace: &'static str| async move {
        Fixture {
            store: Arc::new(ReportOnly(MemoryStore::new(ns(namespace)))),
            namespace,
            guard: Box::new(()),
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
    // ... and the namespace log after its last position.
    let log = store.read_log(0, 10).await.unwrap();
    let positions: Vec<u64> = log.entries.iter().map(|e| e.position).collect();
    assert_eq!(positions, vec![1, 2, 3]);
    assert_eq!(log.head, 3);
}

#[tokio::test]
async fn embedded_log_is_built_for_a_directory_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (key("conf", "counter", "a"), key("conf", "counter", "b"));
    {
        let store = EmbeddedStore::open(dir.path(), ns("conf")).unwrap();
        store.append(&b, 0, commit_of(&[1])).await.unwrap();
        store.append(&a, 0, commit_of(&[2, 3])).await.unwrap();
        store.append(&b, 1, commit_of(&[4])).await.unwrap();
        store.close().await.unwrap();
    }
    {
        // What a directory written before the log existed looks like: no log entries.
        let db = fjall::Database::builder(dir.path()).open().unwrap();
        let log = db
            .keyspace("log", fjall::KeyspaceCreateOptions::default)
            .unwrap();
        log.clear().unwrap();
        db.persist(fjall::PersistMode::SyncAll).unwrap();
    }
    let store = EmbeddedStore::open(dir.path(), ns("conf")).unwrap();
    let log = store.read_log(0, 10).await.unwrap();
    let seen: Vec<(String, u64)> = log
        .entries
        .iter()
        .map(|e| (e.commit.actor.id.to_string(), e.commit.last_version()))
        .collect();
    // Stream by stream, each in version order.
    assert_eq!(
        seen,
        vec![("a".into(), 2), ("b".into(), 1), ("b".into(), 2)]
    );
    let next = store.append(&a, 2, commit_of(&[5])).await.unwrap();
    assert_eq!(next.last_version, 3);
    assert_eq!(store.read_log(3, 10).await.unwrap().entries[0].position, 4);
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
    // The log holds all 1 280 commits, positions 1..=1280, each actor's in version order.
    let log = store.read_log(0, 10_000).await.unwrap();
    assert_eq!(log.entries.len(), 64 * 20);
    assert!(
        log.entries
            .iter()
            .enumerate()
            .all(|(i, e)| e.position == i as u64 + 1)
    );
    let mut last = std::collections::HashMap::new();
    for e in &log.entries {
        let prev = last.insert(e.commit.actor.clone(), e.commit.last_version());
        assert_eq!(prev.unwrap_or(0) + 1, e.commit.last_version());
    }
}
