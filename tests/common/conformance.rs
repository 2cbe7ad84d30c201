//! The store conformance suite: the same test functions for every store backend.
//!
//! A backend joins the suite with
//! `conformance_suite!(|namespace: &'static str| async move { Fixture { .. } });` inside a module
//! of its test file; every case below becomes one `#[tokio::test]` there.

use std::any::Any;
use std::sync::Arc;

use aether::store::{
    EventStore, FaultInjection, NewCommit, Replayed, Snapshot, SnapshotStore, StoreError,
};
use aether::wire::{CommitRecord, EventData};
use aether::{ActorKey, CommandId};

use super::{commit_of, key};

/// Everything a backend must be for the suite.
pub trait TestStore: EventStore + SnapshotStore + FaultInjection {}
impl<T: EventStore + SnapshotStore + FaultInjection> TestStore for T {}

/// A store under test, plus whatever must live as long as it (a temp dir, a server).
pub struct Fixture<S: TestStore> {
    pub store: Arc<S>,
    /// The store's namespace: every case addresses its actors in it.
    pub namespace: &'static str,
    pub guard: Box<dyn Any + Send>,
}

/// Runs `body` for each case.
#[macro_export]
macro_rules! conformance_suite {
    ($make:expr) => {
        $crate::conformance_case!($make, latest_version_is_zero_for_unknown_actor);
        $crate::conformance_case!($make, versions_are_monotonic_and_gapless);
        $crate::conformance_case!($make, history_is_append_only);
        $crate::conformance_case!($make, concurrent_appends_one_wins);
        $crate::conformance_case!($make, read_from_a_version);
        $crate::conformance_case!($make, multi_event_commit_is_atomic);
        $crate::conformance_case!($make, read_with_errors_keeps_clean_data);
        $crate::conformance_case!($make, retried_commit_is_deduplicated);
        $crate::conformance_case!($make, snapshots_keep_the_latest);
        $crate::conformance_case!($make, corrupt_snapshot_is_reported);
        $crate::conformance_case!($make, snapshot_plus_tail_equals_full_replay);
        $crate::conformance_case!($make, bad_commits_are_rejected);
        $crate::conformance_case!($make, streams_are_isolated);
        $crate::conformance_case!($make, commit_log_is_in_commit_order);
        $crate::conformance_case!($make, truncation_removes_only_old_history);
        $crate::conformance_case!($make, replay_hands_over_what_a_read_finds);
    };
}

#[macro_export]
macro_rules! conformance_case {
    ($make:expr, $case:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let make = $make;
            $crate::common::conformance::$case(make(stringify!($case)).await).await;
        }
    };
}

fn values_of(events: &[aether::EventEnvelope]) -> Vec<u64> {
    events
        .iter()
        .map(|e| rmp_serde::from_slice::<u64>(&e.payload).expect("test payload decodes"))
        .collect()
}

fn actor<S: TestStore>(f: &Fixture<S>, id: &str) -> ActorKey {
    key(f.namespace, "counter", id)
}

pub async fn latest_version_is_zero_for_unknown_actor<S: TestStore>(f: Fixture<S>) {
    let s = &f.store;
    assert_eq!(s.latest_version(&actor(&f, "nobody")).await.unwrap(), 0);
    assert!(s.read(&actor(&f, "nobody"), 1).await.unwrap().is_empty());
    assert!(s.latest(&actor(&f, "nobody")).await.unwrap().is_none());
}

pub async fn versions_are_monotonic_and_gapless<S: TestStore>(f: Fixture<S>) {
    let s = &f.store;
    let a = actor(&f, "gapless");
    let mut expected = 0;
    for (i, n) in [1usize, 3, 1, 2, 5].into_iter().enumerate() {
        let values: Vec<u64> = (0..n as u64).map(|j| (i as u64) * 100 + j).collect();
        let appended = s.append(&a, expected, commit_of(&values)).await.unwrap();
        assert_eq!(appended.first_version, expected + 1);
        assert_eq!(appended.last_version, expected + n as u64);
        assert!(!appended.deduplicated);
        expected = appended.last_version;
        assert_eq!(s.latest_version(&a).await.unwrap(), expected);
    }
    let events = s.read(&a, 1).await.unwrap();
    let versions: Vec<u64> = events.iter().map(|e| e.version).collect();
    assert_eq!(versions, (1..=12).collect::<Vec<_>>());
    assert!(events.iter().all(|e| e.actor == a));
}

pub async fn history_is_append_only<S: TestStore>(f: Fixture<S>) {
    let s = &f.store;
    let a = actor(&f, "append-only");
    s.append(&a, 0, commit_of(&[1])).await.unwrap();
    s.append(&a, 1, commit_of(&[2])).await.unwrap();
    s.append(&a, 2, commit_of(&[3])).await.unwrap();
    let before = s.read(&a, 1).await.unwrap();
    for stale in [0, 1, 2, 7] {
        match s.append(&a, stale, commit_of(&[99])).await {
            Err(StoreError::VersionConflict {
                actor,
                expected,
                actual,
            }) => {
                assert_eq!((actor, expected, actual), (a.clone(), stale, 3));
            }
            other => panic!("append at {stale} over version 3 must conflict, got {other:?}"),
        }
    }
    assert_eq!(s.read(&a, 1).await.unwrap(), before, "history changed");
    assert_eq!(values_of(&before), vec![1, 2, 3]);
}

pub async fn concurrent_appends_one_wins<S: TestStore>(f: Fixture<S>) {
    let a = actor(&f, "race");
    let mut version = 0;
    for round in 0..20u64 {
        let (s1, s2) = (Arc::clone(&f.store), Arc::clone(&f.store));
        let (k1, k2) = (a.clone(), a.clone());
        let t1 = tokio::spawn(async move { s1.append(&k1, version, commit_of(&[round])).await });
        let t2 =
            tokio::spawn(async move { s2.append(&k2, version, commit_of(&[round, round])).await });
        let (r1, r2) = (t1.await.unwrap(), t2.await.unwrap());
        let (won, lost) = match (&r1, &r2) {
            (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
            _ => panic!("exactly one of two racing appends must win: {r1:?} / {r2:?}"),
        };
        match lost {
            StoreError::VersionConflict {
                expected, actual, ..
            } => {
                assert_eq!(*expected, version);
                assert_eq!(*actual, won.last_version);
            }
            other => panic!("the loser must get VersionConflict, got {other:?}"),
        }
        version = won.last_version;
    }
    assert_eq!(f.store.latest_version(&a).await.unwrap(), version);
    let events = f.store.read(&a, 1).await.unwrap();
    assert_eq!(events.len() as u64, version);
}

pub async fn read_from_a_version<S: TestStore>(f: Fixture<S>) {
    let s = &f.store;
    let a = actor(&f, "from");
    s.append(&a, 0, commit_of(&[10, 20])).await.unwrap();
    s.append(&a, 2, commit_of(&[30, 40, 50])).await.unwrap();
    s.append(&a, 5, commit_of(&[60])).await.unwrap();
    for from in 1..=7u64 {
        let events = s.read(&a, from).await.unwrap();
        let versions: Vec<u64> = events.iter().map(|e| e.version).collect();
        assert_eq!(versions, (from..=6).collect::<Vec<_>>(), "from {from}");
        let expected: Vec<u64> = (from..=6).map(|v| v * 10).collect();
        assert_eq!(values_of(&events), expected);
    }
}

pub async fn multi_event_commit_is_atomic<S: TestStore>(f: Fixture<S>) {
    let s = &f.store;
    let a = actor(&f, "atomic");
    let commit = commit_of(&[1, 2, 3]);
    let id = commit.command_id;
    let appended = s.append(&a, 0, commit).await.unwrap();
    assert_eq!((appended.first_version, appended.last_version), (1, 3));
    let report = s.read_with_errors(&a, 2).await.unwrap();
    assert_eq!(report.commits.len(), 1, "one command, one commit");
    let events = report.events();
    assert_eq!(
        events.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert!(events.iter().all(|e| e.command_id == id));
    // A commit that would interleave with it is refused as a whole.
    assert!(matches!(
        s.append(&a, 1, commit_of(&[9, 9])).await,
        Err(StoreError::VersionConflict { actual: 3, .. })
    ));
    assert_eq!(s.latest_version(&a).await.unwrap(), 3);
}

pub async fn read_with_errors_keeps_clean_data<S: TestStore>(f: Fixture<S>) {
    let s = &f.store;
    let a = actor(&f, "damaged");
    s.append(&a, 0, commit_of(&[1])).await.unwrap();
    s.append(&a, 1, commit_of(&[2])).await.unwrap();
    s.inject_raw_commit(&a, 3, b"\xc1 not a record".to_vec())
        .await
        .unwrap();
    // The damaged record still occupies version 3: the next append goes after it.
    assert_eq!(s.latest_version(&a).await.unwrap(), 3);
    s.append(&a, 3, commit_of(&[4, 5])).await.unwrap();

    let report = s.read_with_errors(&a, 1).await.unwrap();
    assert_eq!(
        values_of(&report.events()),
        vec![1, 2, 4, 5],
        "clean data kept"
    );
    assert_eq!(report.corrupt.len(), 1);
    assert_eq!(report.corrupt[0].position, 3);
    assert!(
        report.corrupt[0].reason.contains("commit record"),
        "{:?}",
        report.corrupt[0]
    );
    assert!(!report.is_clean());

    match s.read(&a, 1).await {
        Err(StoreError::Corrupt {
            position, actor, ..
        }) => assert_eq!((position, actor), (3, a.clone())),
        other => panic!("strict read of damaged history must fail, got {other:?}"),
    }
    // Reading past the damage is clean again.
    assert_eq!(values_of(&s.read(&a, 4).await.unwrap()), vec![4, 5]);
}

pub async fn retried_commit_is_deduplicated<S: TestStore>(f: Fixture<S>) {
    let s = &f.store;
    let a = actor(&f, "retry");
    let commit = commit_of(&[7, 8]);
    let first = s.append(&a, 0, commit.clone()).await.unwrap();
    assert!(!first.deduplicated);
    // The same commit again (an ack was lost and the caller retries): success, nothing written.
    let again = s.append(&a, 0, commit.clone()).await.unwrap();
    assert!(again.deduplicated);
    assert_eq!((again.first_version, again.last_version), (1, 2));
    assert_eq!(s.read(&a, 1).await.unwrap().len(), 2);
    // A different command at the same version is a real conflict.
    assert!(matches!(
        s.append(&a, 0, commit_of(&[7, 8])).await,
        Err(StoreError::VersionConflict { .. })
    ));
}

fn snap(version: u64, payload: &[u8]) -> Snapshot {
    Snapshot {
        version,
        payload: payload.to_vec(),
        timestamp_ms: 1,
    }
}

pub async fn snapshots_keep_the_latest<S: TestStore>(f: Fixture<S>) {
    let s = &f.store;
    let a = actor(&f, "snap");
    s.save(&a, snap(5, b"five")).await.unwrap();
    assert_eq!(s.latest(&a).await.unwrap().unwrap().payload, b"five");
    s.save(&a, snap(3, b"three")).await.unwrap();
    let latest = s.latest(&a).await.unwrap().unwrap();
    assert_eq!(
        (latest.version, latest.payload.as_slice()),
        (5, &b"five"[..])
    );
    s.save(&a, snap(9, b"nine")).await.unwrap();
    assert_eq!(s.latest(&a).await.unwrap().unwrap().version, 9);
    assert!(s.latest(&actor(&f, "other")).await.unwrap().is_none());
}

pub async fn corrupt_snapshot_is_reported<S: TestStore>(f: Fixture<S>) {
    let s = &f.store;
    let a = actor(&f, "snap-damaged");
    s.inject_raw_snapshot(&a, b"\x00garbage".to_vec())
        .await
        .unwrap();
    assert!(matches!(
        s.latest(&a).await,
        Err(StoreError::Corrupt { .. })
    ));
    // A good snapshot replaces it.
    s.save(&a, snap(1, b"ok")).await.unwrap();
    assert_eq!(s.latest(&a).await.unwrap().unwrap().payload, b"ok");
}

pub async fn snapshot_plus_tail_equals_full_replay<S: TestStore>(f: Fixture<S>) {
    let s = &f.store;
    let a = actor(&f, "fold");
    // The "state" is (sum, count, weighted sum): order-sensitive, so a wrong tail shows.
    fn fold(state: (u64, u64, u64), values: &[u64]) -> (u64, u64, u64) {
        values
            .iter()
            .fold(state, |(sum, n, w), v| (sum + v, n + 1, w + v * (n + 1)))
    }
    let mut version = 0;
    for i in 0..30u64 {
        let values = vec![i, i * 3 % 7];
        version = s
            .append(&a, version, commit_of(&values))
            .await
            .unwrap()
            .last_version;
        if version == 20 {
            let state = fold((0, 0, 0), &values_of(&s.read(&a, 1).await.unwrap()));
            s.save(&a, snap(version, &rmp_serde::to_vec(&state).unwrap()))
                .await
                .unwrap();
        }
    }
    let full = fold((0, 0, 0), &values_of(&s.read(&a, 1).await.unwrap()));
    let snapshot = s.latest(&a).await.unwrap().unwrap();
    let base: (u64, u64, u64) = rmp_serde::from_slice(&snapshot.payload).unwrap();
    let tail = s.read(&a, snapshot.version + 1).await.unwrap();
    assert_eq!(tail.first().map(|e| e.version), Some(21));
    assert_eq!(fold(base, &values_of(&tail)), full);
}

pub async fn bad_commits_are_rejected<S: TestStore>(f: Fixture<S>) {
    let s = &f.store;
    let a = actor(&f, "bad");
    let empty = NewCommit::new(CommandId::random(), Vec::new());
    assert!(matches!(
        s.append(&a, 0, empty).await,
        Err(StoreError::InvalidCommit(_))
    ));
    // Versions past the largest `u64` are refused, not wrapped.
    match s.append(&a, u64::MAX - 1, commit_of(&[1, 2])).await {
        Err(e @ StoreError::InvalidCommit(_)) => {
            assert!(e.to_string().contains("largest version"), "{e}")
        }
        other => panic!("a commit past the largest version must be refused, got {other:?}"),
    }
    let huge = NewCommit::new(
        CommandId::random(),
        vec![EventData {
            event_type: "Huge".into(),
            payload: vec![0u8; 2 * 1024 * 1024],
            schema_version: 0,
        }],
    );
    match s.append(&a, 0, huge).await {
        Err(e @ StoreError::TooLarge { .. }) => {
            assert!(e.to_string().contains("larger than the limit"), "{e}")
        }
        other => panic!("an oversized commit must be refused, got {other:?}"),
    }
    let foreign = key("elsewhere", "counter", "bad");
    assert!(matches!(
        s.append(&foreign, 0, commit_of(&[1])).await,
        Err(StoreError::WrongNamespace { .. })
    ));
    assert!(matches!(
        s.latest_version(&foreign).await,
        Err(StoreError::WrongNamespace { .. })
    ));
    assert_eq!(
        s.latest_version(&a).await.unwrap(),
        0,
        "nothing was written"
    );
}

pub async fn streams_are_isolated<S: TestStore>(f: Fixture<S>) {
    let s = &f.store;
    // Ids that share prefixes or differ only by characters the encoding escapes.
    let ids = ["a", "ab", "a.b", "a b", "a=2Eb", "é", "a\u{0}b"];
    for (i, id) in ids.iter().enumerate() {
        s.append(&actor(&f, id), 0, commit_of(&[i as u64]))
            .await
            .unwrap();
    }
    let other_kind = key(f.namespace, "other", "a");
    s.append(&other_kind, 0, commit_of(&[100, 101]))
        .await
        .unwrap();
    for (i, id) in ids.iter().enumerate() {
        let events = s.read(&actor(&f, id), 1).await.unwrap();
        assert_eq!(values_of(&events), vec![i as u64], "stream of {id:?}");
        assert_eq!(s.latest_version(&actor(&f, id)).await.unwrap(), 1);
    }
    assert_eq!(s.latest_version(&other_kind).await.unwrap(), 2);
}

pub async fn commit_log_is_in_commit_order<S: TestStore>(f: Fixture<S>) {
    let s = &f.store;
    let empty = s.read_log(0, 100).await.unwrap();
    assert!(empty.entries.is_empty());
    assert_eq!(empty.head, 0);
    // Interleave three actors; remember the order of the commits as they were stored.
    let mut stored = Vec::new();
    for round in 0..4u64 {
        for id in ["x", "y.z", "w"] {
            let a = actor(&f, id);
            let values = [round * 10, round * 10 + 1];
            let n = if id == "w" { 2 } else { 1 };
            let appended = s
                .append(&a, round * n, commit_of(&values[..n as usize]))
                .await;
            let appended = appended.unwrap();
            stored.push((a, appended.last_version));
        }
    }
    // A refused append leaves no trace in the log.
    assert!(s.append(&actor(&f, "x"), 0, commit_of(&[9])).await.is_err());
    let all = s.read_log(0, 1000).await.unwrap();
    let seen: Vec<(ActorKey, u64)> = all
        .entries
        .iter()
        .map(|e| (e.commit.actor.clone(), e.commit.last_version()))
        .collect();
    assert_eq!(
        seen, stored,
        "the log holds every commit once, in commit order"
    );
    assert!(
        all.entries
            .windows(2)
            .all(|w| w[0].position < w[1].position),
        "positions grow"
    );
    assert_eq!(all.head, all.entries.last().unwrap().position);
    // Paging from a position resumes right after it.
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = s.read_log(after, 5).await.unwrap();
        assert!(page.entries.len() <= 5);
        let Some(last) = page.entries.last() else {
            break;
        };
        after = last.position;
        paged.extend(page.entries.into_iter().map(|e| e.position));
    }
    let positions: Vec<u64> = all.entries.iter().map(|e| e.position).collect();
    assert_eq!(paged, positions);
    let tail = s.read_log(all.head, 10).await.unwrap();
    assert!(tail.entries.is_empty());
    assert_eq!(tail.head, all.head);
}

pub async fn truncation_removes_only_old_history<S: TestStore>(f: Fixture<S>) {
    let s = &f.store;
    let a = actor(&f, "old");
    let b = actor(&f, "other");
    // Commits of 1 and 2 events: versions 1, 2-3, 4, 5-6, 7, 8-9.
    let mut v = 0;
    for i in 0..6u64 {
        let values: Vec<u64> = (0..1 + i % 2).map(|j| i * 10 + j).collect();
        v = s
            .append(&a, v, commit_of(&values))
            .await
            .unwrap()
            .last_version;
        s.append(&b, i, commit_of(&[i])).await.unwrap();
    }
    assert_eq!(v, 9);
    assert_eq!(s.history_start(&a).await.unwrap(), 1);
    let truncated = s.truncate_before(&a, 1).await.unwrap();
    assert_eq!(
        (truncated.starts_at, truncated.removed),
        (1, 0),
        "nothing before 1"
    );
    // Version 5 sits in the commit 5-6: that commit stays, the 3 ending before 5 go.
    let truncated = s.truncate_before(&a, 5).await.unwrap();
    assert_eq!((truncated.starts_at, truncated.removed), (5, 3));
    let again = s.truncate_before(&a, 5).await.unwrap();
    assert_eq!(
        (again.starts_at, again.removed),
        (5, 0),
        "nothing more to remove"
    );
    assert_eq!(s.history_start(&a).await.unwrap(), 5);
    let tail = s.read(&a, 5).await.unwrap();
    assert_eq!(
        tail.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![5, 6, 7, 8, 9]
    );
    assert_eq!(values_of(&tail), vec![30, 31, 40, 50, 51]);
    for from in [0, 1, 4] {
        match s.read(&a, from).await {
            Err(StoreError::HistoryTruncated {
                actor, starts_at, ..
            }) => {
                assert_eq!((actor, starts_at), (a.clone(), 5));
            }
            other => panic!("a read from {from} must say history starts at 5: {other:?}"),
        }
    }
    // The latest commit always stays: it holds the version the next append is checked against.
    let truncated = s.truncate_before(&a, 100).await.unwrap();
    assert_eq!((truncated.starts_at, truncated.removed), (8, 2));
    assert_eq!(s.latest_version(&a).await.unwrap(), 9);
    assert_eq!(
        s.append(&a, 9, commit_of(&[99]))
            .await
            .unwrap()
            .last_version,
        10
    );
    assert_eq!(s.read(&a, 8).await.unwrap().len(), 3);
    // Other actors keep all of theirs; the namespace log skips what was removed.
    assert_eq!(s.history_start(&b).await.unwrap(), 1);
    assert_eq!(s.read(&b, 1).await.unwrap().len(), 6);
    let log = s.read_log(0, 1000).await.unwrap();
    let of_a: Vec<u64> = log
        .entries
        .iter()
        .filter(|e| e.commit.actor == a)
        .map(|e| e.commit.last_version())
        .collect();
    assert_eq!(of_a, vec![9, 10]);
    assert_eq!(log.entries.len(), 8);
    // Paging one by one steps over the removed commits: no empty page before the end.
    let mut after = 0;
    let mut paged = Vec::new();
    loop {
        let page = s.read_log(after, 1).await.unwrap();
        let Some(entry) = page.entries.first() else {
            assert_eq!(after, log.head, "an empty page only at the head");
            break;
        };
        after = entry.position;
        paged.push(entry.position);
    }
    let positions: Vec<u64> = log.entries.iter().map(|e| e.position).collect();
    assert_eq!(paged, positions);
    // An actor without history starts at 1, and truncating it changes nothing.
    let none = actor(&f, "none");
    let truncated = s.truncate_before(&none, 10).await.unwrap();
    assert_eq!((truncated.starts_at, truncated.removed), (1, 0));
    assert_eq!(s.latest_version(&none).await.unwrap(), 0);
}

/// Replays `actor` from `from`, keeping the commits handed over; `stop_after`: how many the
/// visitor takes before it stops the replay.
async fn replayed<S: TestStore>(
    s: &S,
    actor: &ActorKey,
    from: u64,
    stop_after: usize,
) -> Result<(Vec<CommitRecord>, Replayed), StoreError> {
    let mut handed = Vec::new();
    let found = s
        .replay(actor, from, &mut |commit| {
            handed.push(commit.clone());
            handed.len() < stop_after
        })
        .await?;
    Ok((handed, found))
}

pub async fn replay_hands_over_what_a_read_finds<S: TestStore>(f: Fixture<S>) {
    let s = &f.store;
    let clean = actor(&f, "clean");
    s.append(&clean, 0, commit_of(&[1])).await.unwrap();
    s.append(&clean, 1, commit_of(&[2, 3])).await.unwrap();
    s.append(&clean, 3, commit_of(&[4])).await.unwrap();
    for from in [0, 1, 2, 3, 4, 5] {
        let (handed, found) = replayed(&**s, &clean, from, usize::MAX).await.unwrap();
        let read = s.read_with_errors(&clean, from).await.unwrap();
        assert_eq!(
            handed, read.commits,
            "from {from}: the commits a read finds, in order"
        );
        assert_eq!(found.commits, read.commits.len());
        assert!(found.corrupt.is_empty());
    }
    // The visitor stops the replay: nothing more is handed over, the rest is still counted.
    let (handed, found) = replayed(&**s, &clean, 1, 1).await.unwrap();
    assert_eq!(handed.len(), 1);
    assert_eq!((found.commits, found.corrupt.len()), (3, 0));

    // A history longer than a store's page of records: every commit, in order, once.
    let long = actor(&f, "long-replay");
    for v in 0..520u64 {
        s.append(&long, v, commit_of(&[v])).await.unwrap();
    }
    for from in [1, 256, 257, 300] {
        let (handed, found) = replayed(&**s, &long, from, usize::MAX).await.unwrap();
        let versions: Vec<u64> = handed.iter().map(CommitRecord::last_version).collect();
        assert_eq!(versions, (from..=520).collect::<Vec<_>>(), "from {from}");
        assert_eq!(found.commits, versions.len());
    }

    // Damage in the middle: the commits before it are handed over, the rest counted.
    let damaged = actor(&f, "damaged-replay");
    s.append(&damaged, 0, commit_of(&[1])).await.unwrap();
    s.append(&damaged, 1, commit_of(&[2, 3])).await.unwrap();
    s.inject_raw_commit(&damaged, 4, b"\xc1 not a record".to_vec())
        .await
        .unwrap();
    s.append(&damaged, 4, commit_of(&[5])).await.unwrap();
    let (handed, found) = replayed(&**s, &damaged, 1, usize::MAX).await.unwrap();
    assert_eq!(
        handed
            .iter()
            .map(CommitRecord::last_version)
            .collect::<Vec<_>>(),
        vec![1, 3],
        "nothing after the damage is applied"
    );
    assert_eq!(found.commits, 3, "every clean commit is counted");
    assert_eq!(found.corrupt.len(), 1);
    assert_eq!(found.corrupt[0].position, 4);
    assert!(
        found.corrupt[0].reason.contains("commit record"),
        "{:?}",
        found.corrupt[0]
    );

    // Retention removed the start: a replay from before it says where history starts now.
    s.truncate_before(&clean, 4).await.unwrap();
    match replayed(&**s, &clean, 1, usize::MAX).await {
        Err(StoreError::HistoryTruncated { starts_at, .. }) => assert_eq!(starts_at, 4),
        other => panic!("a replay from 1 must say history starts at 4: {other:?}"),
    }
    let (handed, _) = replayed(&**s, &clean, 4, usize::MAX).await.unwrap();
    assert_eq!(handed.len(), 1);
}
