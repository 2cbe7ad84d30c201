//! The embedded store's single writer thread: it takes every append that is waiting, checks
//! each against its stream's latest version, writes the accepted ones as **one** batch with
//! their namespace-log entries, syncs once, then answers all of them (group commit).

use super::*;

/// Most commits one truncation removes (see [`Writer::stage_truncation`]).
const MAX_TRUNCATED_COMMITS: usize = 10_000;

/// Longest wait for the rest of a batch (see [`Writer::run`]); well under one sync (~200 µs).
const LINGER: std::time::Duration = std::time::Duration::from_micros(100);

/// The single writer: validates, batches, syncs, answers.
pub(super) struct Writer {
    pub(super) db: Database,
    pub(super) events: Keyspace,
    pub(super) snapshots: Keyspace,
    pub(super) log: Keyspace,
    pub(super) wakeups: Keyspace,
    /// The log position of the next accepted commit.
    pub(super) next_log: u64,
    /// The last revision given to a wake-up entry.
    pub(super) last_revision: u64,
    /// Where wake-up changes are announced once durable.
    pub(super) feed: LocalWakeups,
    /// Set when a synced write failed: after a failed `fsync` the state of the file on disk is
    /// unknown (the kernel may have dropped the dirty pages), so every later write is refused
    /// until the store is reopened and recovers from its journal.
    pub(super) failed: Option<String>,
    /// Latest version per stream prefix, as of the last successful batch.
    pub(super) heads: HashMap<Vec<u8>, u64>,
    pub(super) max_batch: usize,
    pub(super) head_cache_entries: usize,
    /// Bytes of history removed by retention since the last compaction started.
    pub(super) removed_bytes: u64,
    /// Compact once that many bytes were removed (see [`EmbeddedOptions`]).
    pub(super) compact_after: u64,
    /// Runs compactions off the writer thread.
    pub(super) compactor: Compactor,
}

/// An answer to send once the batch is durable.
enum Pending {
    Append(oneshot::Sender<Result<Landed, StoreError>>, Appended),
    Unit(oneshot::Sender<Result<(), StoreError>>),
    Revision(oneshot::Sender<Result<u64, StoreError>>, u64),
    Truncated(oneshot::Sender<Result<Truncated, StoreError>>, Truncated),
}

impl Writer {
    pub(super) fn run(mut self, rx: mpsc::Receiver<WriteOp>) {
        // Writers that were answered together tend to come back together. When fewer ops are
        // waiting than the last batch held, linger briefly for the rest, so batches do not
        // alternate between a few early arrivals and everyone else. A lone writer (last batch
        // of 1) never lingers.
        let mut last_batch = 1usize;
        while let Ok(first) = rx.recv() {
            let mut ops = vec![first];
            let linger_until = std::time::Instant::now() + LINGER;
            while ops.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(mpsc::TryRecvError::Disconnected) => break,
                    Err(mpsc::TryRecvError::Empty) => {
                        let now = std::time::Instant::now();
                        if ops.len() >= last_batch || now >= linger_until {
                            break;
                        }
                        match rx.recv_timeout(linger_until - now) {
                            Ok(op) => ops.push(op),
                            Err(_) => break,
                        }
                    }
                }
            }
            last_batch = ops.len();
            self.write_batch(ops);
        }
        if let Err(e) = self.db.persist(PersistMode::SyncAll) {
            tracing::error!(error = %e, "embedded store: final sync failed");
        }
    }

    pub(super) fn head(&mut self, prefix: &[u8]) -> Result<u64, StoreError> {
        if let Some(v) = self.heads.get(prefix) {
            return Ok(*v);
        }
        let v = latest_in(&self.events, prefix)?;
        if self.heads.len() >= self.head_cache_entries {
            self.heads.clear();
        }
        self.heads.insert(prefix.to_vec(), v);
        Ok(v)
    }

    /// The stored commit right after `expected` on the stream `prefix` (its position and
    /// bytes), for the caller to tell a retry of its own commit from a conflict.
    fn next_commit(&self, prefix: &[u8], expected: u64) -> Option<(u64, fjall::Slice)> {
        let start = event_key(prefix, expected + 1);
        let end = event_key(prefix, u64::MAX);
        let (key, value) = self.events.range(start..=end).next()?.into_inner().ok()?;
        Some((key_version(&key)?, value))
    }

    /// Stages the removal of `actor`'s commits that end before `before`, never its latest:
    /// returns where its history will start with the commits removed, and the bytes removed.
    fn stage_truncation(
        &mut self,
        batch: &mut fjall::OwnedWriteBatch,
        actor: &ActorKey,
        prefix: &[u8],
        before: u64,
    ) -> Result<(Truncated, u64), StoreError> {
        let head = self.head(prefix)?;
        let end = before.min(head);
        // Read first, stage after: a failed read stages nothing. At most
        // `MAX_TRUNCATED_COMMITS` per call, so the first truncation of a long history does not
        // hold every other writer up; the next snapshot's truncation goes on from there.
        let mut doomed = Vec::new();
        let mut removed = 0u64;
        if end > 0 {
            let range = event_key(prefix, 0)..event_key(prefix, end);
            for guard in self.events.range(range).take(MAX_TRUNCATED_COMMITS) {
                let (key, value) = guard.into_inner().map_err(engine_error)?;
                removed += (key.len() + value.len()) as u64;
                doomed.push(key);
            }
        }
        let start = match doomed.last().and_then(|k| key_version(k)) {
            Some(v) => v + 1,
            None => start_in(&self.events, actor, prefix)?,
        };
        let count = doomed.len() as u64;
        for key in doomed {
            batch.remove(&self.events, key.to_vec());
        }
        Ok((
            Truncated {
                starts_at: start,
                removed: count,
            },
            removed,
        ))
    }

    /// Answers every op with the failure that poisoned the store.
    pub(super) fn refuse_all(ops: Vec<WriteOp>, reason: &str) {
        let refused = || {
            StoreError::Failed(format!(
                "embedded store refuses writes after a failed sync ({reason}); reopen it"
            ))
        };
        for op in ops {
            match op {
                WriteOp::Append { reply, .. } => {
                    let _ = reply.send(Err(refused()));
                }
                WriteOp::Snapshot { reply, .. }
                | WriteOp::Raw { reply, .. }
                | WriteOp::ClearWakeup { reply, .. } => {
                    let _ = reply.send(Err(refused()));
                }
                WriteOp::SetWakeup { reply, .. } => {
                    let _ = reply.send(Err(refused()));
                }
                WriteOp::Truncate { reply, .. } => {
                    let _ = reply.send(Err(refused()));
                }
                #[cfg(test)]
                WriteOp::Poison(_, done) => {
                    let _ = done.send(());
                }
            }
        }
    }

    pub(super) fn write_batch(&mut self, ops: Vec<WriteOp>) {
        if let Some(reason) = &self.failed {
            Self::refuse_all(ops, reason);
            return;
        }
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        // Wake-up changes announced once the batch is durable.
        let mut announce: Vec<Wakeup> = Vec::new();
        let mut staged_wakeups: HashMap<Vec<u8>, Option<u64>> = HashMap::new();
        let mut pending = Vec::with_capacity(ops.len());
        // Heads and snapshot versions as they will be once this batch lands.
        let mut staged_heads: HashMap<Vec<u8>, u64> = HashMap::new();
        let mut staged_snapshots: HashMap<Vec<u8>, u64> = HashMap::new();
        let mut next_log = self.next_log;
        let mut removed_bytes = 0u64;
        for op in ops {
            match op {
                WriteOp::Append {
                    key,
                    expected,
                    last_version,
                    bytes,
                    reply,
                } => {
                    debug_assert!(key.len() > 8, "an event key ends in its 8-byte version");
                    let prefix = &key[..key.len() - 8];
                    let actual = match staged_heads.get(prefix).copied() {
                        Some(v) => Ok(v),
                        None => self.head(prefix),
                    };
                    match actual {
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                        Ok(actual) if actual != expected => {
                            // Read from what is on disk even when a commit of this stream is
                            // staged in this batch: the commit after `expected` may be this
                            // command's, stored by an earlier attempt (a straggler's retry).
                            let next = self.next_commit(prefix, expected);
                            let _ = reply.send(Ok(Landed::Stale { actual, next }));
                        }
                        Ok(_) => {
                            // The engine copies keys and values: pass slices, keep nothing.
                            batch.insert(&self.log, &next_log.to_be_bytes()[..], key.as_slice());
                            next_log += 1;
                            batch.insert(&self.events, key.as_slice(), bytes.as_slice());
                            staged_heads.insert(prefix.to_vec(), last_version);
                            pending.push(Pending::Append(
                                reply,
                                Appended {
                                    first_version: expected + 1,
                                    last_version,
                                    deduplicated: false,
                                },
                            ));
                        }
                    }
                }
                WriteOp::Snapshot {
                    key,
                    version,
                    bytes,
                    reply,
                } => {
                    let stored = match staged_snapshots.get(&key) {
                        Some(v) => Some(*v),
                        None => self
                            .snapshots
                            .get(&key)
                            .ok()
                            .flatten()
                            .and_then(|b| snapshot_version(&b)),
                    };
                    if stored.is_some_and(|s| s >= version) {
                        let _ = reply.send(Ok(()));
                    } else {
                        batch.insert(&self.snapshots, key.clone(), bytes);
                        staged_snapshots.insert(key, version);
                        pending.push(Pending::Unit(reply));
                    }
                }
                WriteOp::Raw {
                    target,
                    key,
                    bytes,
                    reply,
                } => {
                    let keyspace = match target {
                        Target::Events => {
                            // The head may move: forget what we knew about every stream.
                            self.heads.clear();
                            &self.events
                        }
                        Target::Snapshots => &self.snapshots,
                    };
                    batch.insert(keyspace, key, bytes);
                    pending.push(Pending::Unit(reply));
                }
                WriteOp::SetWakeup {
                    actor,
                    due_ms,
                    reply,
                } => {
                    self.last_revision += 1;
                    let revision = self.last_revision;
                    let key = actor.stream_token().into_bytes();
                    batch.insert(&self.wakeups, key.clone(), encode_wakeup(due_ms, revision));
                    staged_wakeups.insert(key, Some(revision));
                    announce.push(Wakeup::Set {
                        actor,
                        due_ms,
                        revision,
                    });
                    pending.push(Pending::Revision(reply, revision));
                }
                WriteOp::Truncate {
                    prefix,
                    actor,
                    before,
                    reply,
                } => match self.stage_truncation(&mut batch, &actor, &prefix, before) {
                    Ok((truncated, bytes)) => {
                        removed_bytes += bytes;
                        pending.push(Pending::Truncated(reply, truncated));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                },
                #[cfg(test)]
                WriteOp::Poison(reason, done) => {
                    self.failed = Some(reason);
                    let _ = done.send(());
                }
                WriteOp::ClearWakeup {
                    actor,
                    revision,
                    reply,
                } => {
                    let key = actor.stream_token().into_bytes();
                    let current = match staged_wakeups.get(&key) {
                        Some(staged) => *staged,
                        None => self
                            .wakeups
                            .get(&key)
                            .ok()
                            .flatten()
                            .and_then(|v| decode_wakeup(&v))
                            .map(|(_, r)| r),
                    };
                    if current == Some(revision) {
                        batch.remove(&self.wakeups, key.clone());
                        staged_wakeups.insert(key, None);
                        announce.push(Wakeup::Cleared { actor });
                        pending.push(Pending::Unit(reply));
                    } else {
                        let _ = reply.send(Ok(()));
                    }
                }
            }
        }
        if pending.is_empty() {
            return;
        }
        match batch.commit() {
            Ok(()) => {
                self.next_log = next_log;
                for (prefix, v) in staged_heads {
                    if self.heads.len() >= self.head_cache_entries {
                        self.heads.clear();
                    }
                    self.heads.insert(prefix, v);
                }
                for p in pending {
                    match p {
                        Pending::Append(reply, appended) => {
                            let _ = reply.send(Ok(Landed::Stored(appended)));
                        }
                        Pending::Unit(reply) => {
                            let _ = reply.send(Ok(()));
                        }
                        Pending::Revision(reply, revision) => {
                            let _ = reply.send(Ok(revision));
                        }
                        Pending::Truncated(reply, truncated) => {
                            let _ = reply.send(Ok(truncated));
                        }
                    }
                }
                for change in announce {
                    self.feed.publish(change);
                }
                self.removed_bytes += removed_bytes;
                if removed_bytes > 0
                    && self.removed_bytes >= self.compact_after
                    && self.compactor.start()
                {
                    self.removed_bytes = 0;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "embedded store: batch commit failed; refusing writes until reopened");
                self.heads.clear();
                self.failed = Some(e.to_string());
                let reason = format!("embedded store commit failed: {e}");
                for p in pending {
                    match p {
                        Pending::Append(reply, _) => {
                            let _ = reply.send(Err(StoreError::OutcomeUnknown(reason.clone())));
                        }
                        Pending::Unit(reply) => {
                            let _ = reply.send(Err(StoreError::OutcomeUnknown(reason.clone())));
                        }
                        Pending::Revision(reply, _) => {
                            let _ = reply.send(Err(StoreError::OutcomeUnknown(reason.clone())));
                        }
                        Pending::Truncated(reply, _) => {
                            let _ = reply.send(Err(StoreError::OutcomeUnknown(reason.clone())));
                        }
                    }
                }
            }
        }
    }
}
