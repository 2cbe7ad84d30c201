//! [`MemoryStore`]: both store contracts in process memory, for tests.
//!
//! Records are kept encoded, exactly as a durable store keeps them, so decoding, damage
//! reporting and size limits behave as they do on disk. Nothing survives the process.

// foldhash (seeded per process), not SipHash: a store for tests and benches, where speed
// matters more than SipHash's stronger guarantees.
use hashbrown::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;

use super::{
    Appended, CorruptRecord, EventStore, FaultInjection, LocalWakeups, LogEntry, LogPage,
    NewCommit, ReadReport, ReplayVisitor, Replayed, Replayer, Snapshot, SnapshotStore, StoreError,
    Truncated, Wakeup, WakeupStream, check_horizon, check_namespace, decode_commit,
    decode_snapshot, encode_commit, encode_snapshot, retry_or_conflict, snapshot_version,
};
use crate::names::{ActorKey, Namespace};
use crate::wire::CommitRecord;

/// The wake-up index of a memory store: `(due ms, revision)` per actor, and the last revision
/// given out.
type WakeupTable = (HashMap<ActorKey, (u64, u64)>, u64);

/// One stream: `(last version, encoded record)` in version order. A read shares the records'
/// bytes (a reference count each) instead of copying them under the lock.
type Stream = Vec<(u64, Bytes)>;

/// An in-memory event and snapshot store. Cheap to clone; clones share the data.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    namespace: Namespace,
    max_commit_bytes: usize,
    streams: Mutex<Streams>,
    snapshots: Mutex<HashMap<ActorKey, Vec<u8>>>,
    /// The wake-up index: due time and revision per actor, and the last revision given out.
    wakeups: Arc<Mutex<WakeupTable>>,
    wakeup_feed: LocalWakeups,
}

/// Every actor's stream, and the namespace log: `(actor, last version)` of each commit in the
/// order they were stored (log position = index + 1). Both change under one lock, so the log
/// order is the commit order.
///
/// The log names actors by number (their place in `actors`), so a commit costs no copy of
/// its actor's key: the key is kept once per actor.
#[derive(Default)]
struct Streams {
    /// Per actor: its number, and its stream.
    by_actor: HashMap<ActorKey, (usize, Stream)>,
    /// Every actor that ever committed, by number.
    actors: Vec<ActorKey>,
    /// `(actor number, last version)` per commit, in commit order.
    log: Vec<(usize, u64)>,
}

impl Streams {
    fn get(&self, actor: &ActorKey) -> Option<&Stream> {
        self.by_actor.get(actor).map(|(_, stream)| stream)
    }

    fn get_mut(&mut self, actor: &ActorKey) -> Option<&mut Stream> {
        self.by_actor.get_mut(actor).map(|(_, stream)| stream)
    }

    /// The stream of `actor`, made (and the actor numbered) if it has none yet.
    fn stream(&mut self, actor: &ActorKey) -> &mut Stream {
        let next = self.actors.len();
        let (number, stream) = self
            .by_actor
            .entry(actor.clone())
            .or_insert_with(|| (next, Stream::default()));
        if *number == next {
            self.actors.push(actor.clone());
        }
        stream
    }
}

impl MemoryStore {
    /// An empty store for `namespace`.
    pub fn new(namespace: Namespace) -> Self {
        MemoryStore::with_limit(namespace, super::DEFAULT_MAX_COMMIT_BYTES)
    }

    /// An empty store that accepts commits up to `max_commit_bytes`.
    pub(crate) fn with_limit(namespace: Namespace, max_commit_bytes: usize) -> Self {
        MemoryStore {
            inner: Arc::new(Inner {
                namespace,
                max_commit_bytes,
                streams: Mutex::new(Streams::default()),
                snapshots: Mutex::new(HashMap::new()),
                wakeups: Arc::new(Mutex::new((HashMap::new(), 0))),
                wakeup_feed: LocalWakeups::new(),
            }),
        }
    }
}

impl MemoryStore {
    /// The stored records holding a version ≥ `from_version`, shared, not copied.
    fn records_from(&self, actor: &ActorKey, from_version: u64) -> Vec<(u64, Bytes)> {
        let streams = self.inner.streams.lock();
        match streams.get(actor) {
            Some(stream) => {
                let at = stream.partition_point(|(v, _)| *v < from_version);
                stream[at..].to_vec()
            }
            None => Vec::new(),
        }
    }
}

/// The first version a stream still holds: one past the end of the commit before its first.
fn stream_start(stream: &Stream) -> u64 {
    match stream.first() {
        Some((last, bytes)) => CommitRecord::decode(bytes)
            .map(|c| c.first_version)
            // A damaged first record: where it starts is unknown; the history is readable
            // from after its last version at the earliest.
            .unwrap_or(*last),
        None => 1,
    }
}

fn head(stream: Option<&Stream>) -> u64 {
    stream.and_then(|s| s.last()).map_or(0, |(v, _)| *v)
}

#[async_trait]
impl EventStore for MemoryStore {
    fn namespace(&self) -> &Namespace {
        &self.inner.namespace
    }

    async fn append(
        &self,
        actor: &ActorKey,
        expected_version: u64,
        commit: NewCommit,
    ) -> Result<Appended, StoreError> {
        let command_id = commit.command_id;
        let encoded = encode_commit(
            &self.inner.namespace,
            actor,
            expected_version,
            &commit,
            self.inner.max_commit_bytes,
        )?;
        let mut streams = self.inner.streams.lock();
        let streams = &mut *streams;
        let found = streams.by_actor.get_mut(actor);
        let actual = head(found.as_deref().map(|(_, stream)| stream));
        if actual != expected_version {
            let next = found.as_deref().and_then(|(_, stream)| {
                let at = stream.partition_point(|(v, _)| *v <= expected_version);
                stream.get(at).map(|(last, stored)| (*last, &stored[..]))
            });
            return retry_or_conflict(actor, expected_version, actual, command_id, next);
        }
        let last_version = encoded.last_version;
        // Kept for good: trimmed to its length first (the encoder's buffer is sized by an
        // estimate; shrinking in place is cheap, and `Bytes` of an exact buffer needs no
        // header allocation of its own).
        let entry = (last_version, Bytes::from(encoded.bytes.into_boxed_slice()));
        let number = match found {
            Some((number, stream)) => {
                stream.push(entry);
                *number
            }
            None => {
                let number = streams.actors.len();
                streams.actors.push(actor.clone());
                streams
                    .by_actor
                    .insert(actor.clone(), (number, vec![entry]));
                number
            }
        };
        streams.log.push((number, last_version));
        Ok(Appended {
            first_version: encoded.first_version,
            last_version,
            deduplicated: false,
        })
    }

    async fn latest_version(&self, actor: &ActorKey) -> Result<u64, StoreError> {
        check_namespace(&self.inner.namespace, actor)?;
        Ok(head(self.inner.streams.lock().get(actor)))
    }

    async fn read_with_errors(
        &self,
        actor: &ActorKey,
        from_version: u64,
    ) -> Result<ReadReport, StoreError> {
        check_namespace(&self.inner.namespace, actor)?;
        let records = self.records_from(actor, from_version);
        let mut report = ReadReport {
            from_version,
            ..ReadReport::default()
        };
        for (position, bytes) in records {
            match decode_commit(actor, position, &bytes) {
                Ok(record) => report.commits.push(record),
                Err(reason) => report.corrupt.push(CorruptRecord { position, reason }),
            }
        }
        check_horizon(actor, &report)?;
        Ok(report)
    }

    async fn replay(
        &self,
        actor: &ActorKey,
        from_version: u64,
        each: &mut ReplayVisitor<'_>,
    ) -> Result<Replayed, StoreError> {
        check_namespace(&self.inner.namespace, actor)?;
        // A page of records at a time, copied out under the lock into one reused buffer: a
        // long history is never listed whole, and a replay writes nothing the store shares.
        // (Cloning each record's `Bytes` would: its reference count, a cache line that moves
        // between cores on every read when the last reader ran on another one.)
        const PAGE: usize = 256;
        let mut replayer = Replayer::new(actor, from_version, each);
        let mut bytes: Vec<u8> = Vec::new();
        // Sized by what there is to read: an actor with no history (most activations of a
        // new actor) allocates nothing.
        let mut page: Vec<(u64, std::ops::Range<usize>)> = Vec::new();
        let mut from = from_version;
        loop {
            bytes.clear();
            page.clear();
            {
                let streams = self.inner.streams.lock();
                if let Some(stream) = streams.get(actor) {
                    let at = stream.partition_point(|(v, _)| *v < from);
                    page.reserve(stream.len().saturating_sub(at).min(PAGE));
                    for (position, record) in stream[at..].iter().take(PAGE) {
                        let start = bytes.len();
                        bytes.extend_from_slice(record);
                        page.push((*position, start..bytes.len()));
                    }
                }
            }
            for (position, range) in &page {
                replayer.record(*position, &bytes[range.clone()])?;
            }
            match page.last().and_then(|(last, _)| last.checked_add(1)) {
                Some(next) if page.len() == PAGE => from = next,
                _ => return Ok(replayer.finish()),
            }
        }
    }

    async fn truncate_before(
        &self,
        actor: &ActorKey,
        version: u64,
    ) -> Result<Truncated, StoreError> {
        check_namespace(&self.inner.namespace, actor)?;
        let mut streams = self.inner.streams.lock();
        let Some(stream) = streams.get_mut(actor) else {
            return Ok(Truncated {
                starts_at: 1,
                removed: 0,
            });
        };
        // Every commit ending before `version`, but never the latest.
        let cut = stream
            .partition_point(|(v, _)| *v < version)
            .min(stream.len().saturating_sub(1));
        stream.drain(..cut);
        Ok(Truncated {
            starts_at: stream_start(stream),
            removed: cut as u64,
        })
    }

    async fn history_start(&self, actor: &ActorKey) -> Result<u64, StoreError> {
        check_namespace(&self.inner.namespace, actor)?;
        Ok(self.inner.streams.lock().get(actor).map_or(1, stream_start))
    }

    async fn read_log(&self, after: u64, max: usize) -> Result<LogPage, StoreError> {
        let (head, records) = {
            let streams = self.inner.streams.lock();
            let start = usize::try_from(after)
                .unwrap_or(usize::MAX)
                .min(streams.log.len());
            // Commits removed by retention (the stream now starts after them) are skipped and
            // do not count toward `max`: a page is empty only at the log's end.
            let records: Vec<(u64, ActorKey, u64, Option<Bytes>)> = streams.log[start..]
                .iter()
                .enumerate()
                .filter_map(|(i, (number, version))| {
                    let actor = streams.actors.get(*number)?;
                    let stream = streams.get(actor);
                    let bytes = stream.and_then(|s| {
                        s.binary_search_by_key(version, |(v, _)| *v)
                            .ok()
                            .map(|at| s[at].1.clone())
                    });
                    let removed = bytes.is_none()
                        && stream
                            .and_then(|s| s.first())
                            .is_some_and(|(first_last, _)| version < first_last);
                    (!removed).then(|| ((start + i + 1) as u64, actor.clone(), *version, bytes))
                })
                .take(max)
                .collect();
            (streams.log.len() as u64, records)
        };
        let mut page = LogPage {
            entries: Vec::with_capacity(records.len()),
            head,
        };
        for (position, actor, version, bytes) in records {
            let decoded = bytes
                .ok_or_else(|| "the commit is missing from its stream".to_owned())
                .and_then(|b| decode_commit(&actor, version, &b));
            match decoded {
                Ok(commit) => page.entries.push(LogEntry { position, commit }),
                Err(reason) => {
                    return Err(StoreError::Corrupt {
                        actor,
                        position: version,
                        reason,
                    });
                }
            }
        }
        Ok(page)
    }

    async fn set_wakeup(&self, actor: &ActorKey, due_ms: u64) -> Result<u64, StoreError> {
        check_namespace(&self.inner.namespace, actor)?;
        let revision = {
            let mut table = self.inner.wakeups.lock();
            table.1 += 1;
            let revision = table.1;
            table.0.insert(actor.clone(), (due_ms, revision));
            revision
        };
        self.inner.wakeup_feed.publish(Wakeup::Set {
            actor: actor.clone(),
            due_ms,
            revision,
        });
        Ok(revision)
    }

    async fn clear_wakeup(&self, actor: &ActorKey, revision: u64) -> Result<(), StoreError> {
        check_namespace(&self.inner.namespace, actor)?;
        let removed = {
            let mut table = self.inner.wakeups.lock();
            let current = table.0.get(actor).is_some_and(|(_, r)| *r == revision);
            current && table.0.remove(actor).is_some()
        };
        if removed {
            self.inner.wakeup_feed.publish(Wakeup::Cleared {
                actor: actor.clone(),
            });
        }
        Ok(())
    }

    async fn watch_wakeups(&self) -> Result<WakeupStream, StoreError> {
        let table = Arc::clone(&self.inner.wakeups);
        Ok(self.inner.wakeup_feed.stream(move || {
            table
                .lock()
                .0
                .iter()
                .map(|(actor, (due_ms, revision))| Wakeup::Set {
                    actor: actor.clone(),
                    due_ms: *due_ms,
                    revision: *revision,
                })
                .collect()
        }))
    }
}

#[async_trait]
impl SnapshotStore for MemoryStore {
    async fn save(&self, actor: &ActorKey, snapshot: Snapshot) -> Result<(), StoreError> {
        check_namespace(&self.inner.namespace, actor)?;
        let version = snapshot.version;
        let bytes = encode_snapshot(actor, snapshot)?;
        let mut snapshots = self.inner.snapshots.lock();
        let newer_stored = snapshots
            .get(actor)
            .and_then(|b| snapshot_version(b))
            .is_some_and(|stored| stored >= version);
        if !newer_stored {
            snapshots.insert(actor.clone(), bytes);
        }
        Ok(())
    }

    async fn latest(&self, actor: &ActorKey) -> Result<Option<Snapshot>, StoreError> {
        check_namespace(&self.inner.namespace, actor)?;
        let bytes = self.inner.snapshots.lock().get(actor).cloned();
        bytes.map(|b| decode_snapshot(actor, &b)).transpose()
    }
}

#[async_trait]
impl FaultInjection for MemoryStore {
    async fn inject_raw_commit(
        &self,
        actor: &ActorKey,
        position: u64,
        bytes: Vec<u8>,
    ) -> Result<(), StoreError> {
        check_namespace(&self.inner.namespace, actor)?;
        let mut streams = self.inner.streams.lock();
        let stream = streams.stream(actor);
        match stream.binary_search_by_key(&position, |(v, _)| *v) {
            Ok(i) => stream[i].1 = Bytes::from(bytes),
            Err(i) => stream.insert(i, (position, Bytes::from(bytes))),
        }
        Ok(())
    }

    async fn inject_raw_snapshot(
        &self,
        actor: &ActorKey,
        bytes: Vec<u8>,
    ) -> Result<(), StoreError> {
        check_namespace(&self.inner.namespace, actor)?;
        self.inner.snapshots.lock().insert(actor.clone(), bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;
    use crate::names::{ActorId, Kind};
    use crate::wire::{CommandId, EventData};

    fn commit(value: u64) -> NewCommit {
        NewCommit::new(
            CommandId::random(),
            vec![EventData {
                event_type: "Added".into(),
                payload: vec![u8::try_from(value % 128).expect("small")],
                schema_version: 0,
            }],
        )
    }

    /// Retention running while a long replay is between two pages: the replay says the history
    /// was truncated (the activation reads again from the newer snapshot), it does not hand
    /// over a history with a hole.
    #[tokio::test]
    async fn a_truncation_between_two_pages_of_a_replay_is_reported_as_truncation() {
        let namespace = Namespace::new("pages").expect("namespace");
        let store = MemoryStore::new(namespace.clone());
        let actor = ActorKey::new(
            namespace,
            Kind::new("counter").expect("kind"),
            ActorId::new("long").expect("id"),
        );
        for v in 0..600 {
            store.append(&actor, v, commit(v)).await.expect("append");
        }
        let mut handed = Vec::new();
        let outcome = store
            .replay(&actor, 1, &mut |c| {
                handed.push(c.last_version());
                if c.last_version() == 10 {
                    // No await inside: the memory store's truncation finishes at once.
                    let truncated = store
                        .truncate_before(&actor, 400)
                        .now_or_never()
                        .expect("finishes at once")
                        .expect("truncates");
                    assert_eq!(truncated.starts_at, 400);
                }
                true
            })
            .await;
        match outcome {
            Err(StoreError::HistoryTruncated {
                requested,
                starts_at,
                ..
            }) => assert_eq!((requested, starts_at), (257, 400)),
            other => panic!("expected HistoryTruncated, got {other:?}"),
        }
        assert_eq!(
            handed,
            (1..=256).collect::<Vec<u64>>(),
            "no commit past the hole"
        );
    }
}
