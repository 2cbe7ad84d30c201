//! Stores: where events and snapshots live.
//!
//! Two contracts, each a trait the runtime uses and every backend implements:
//!
//! - [`EventStore`]: an append-only stream of commits per actor. [`EventStore::append`] takes the
//!   version the caller believes is current and fails fast with
//!   [`StoreError::VersionConflict`] when it is not — optimistic concurrency, no locks held
//!   between reads and writes. Versions are 1, 2, 3, … per actor with no gap and no repeat; one
//!   command's events form one commit, stored atomically.
//! - [`SnapshotStore`]: the latest snapshot of an actor's state, an optional shortcut for replay.
//!
//! # Backends
//!
//! | backend | durable | use |
//! |---|---|---|
//! | [`MemoryStore`] | no | tests, examples that need no disk |
//! | [`EmbeddedStore`] | yes, fsync'd, group-committed | the default of `Runtime::builder().start()` |
//!
//! All backends pass one conformance suite (`tests/store_conformance.rs`).
//!
//! # Reading damaged history
//!
//! [`EventStore::read_with_errors`] returns every record that decodes and, separately, the
//! position and reason of every record that does not: clean data is never dropped because a
//! neighbour is damaged. [`EventStore::read`] is the strict form that fails on any damage.
//!
//! # The namespace log
//!
//! Besides one stream per actor, every store keeps the order in which commits were stored across
//! the whole namespace: [`EventStore::read_log`] pages through it by **log position**, a number
//! that grows with every commit (contiguous on the memory and embedded stores, the stream
//! sequence on JetStream). Per actor, log order is version order. Projections read the log to
//! build read models from every actor's events, and resume from the position they stored.
//!
//! # The wake-up index
//!
//! Durable effects and reminders live in the sending actor's history, but something must bring
//! that actor back to life when it is not resident — after a crash, a shard move, or when a
//! reminder comes due. Each store keeps a small index for that: one entry per actor with
//! pending durable work and the earliest time it is due ([`EventStore::set_wakeup`]). An actor
//! writes its entry *before* the commit that gives it pending work, so no committed effect is
//! ever without one; an entry without pending work only wakes an actor that finds nothing to
//! do and removes it. Each node watches the index ([`EventStore::watch_wakeups`]) and wakes the
//! actors of the shards it serves.
//!
//! # Retention
//!
//! History grows forever unless something removes it. With a snapshot stored at version `v`,
//! the commits before it are no longer needed to load the actor, and
//! [`EventStore::truncate_before`] removes them (the latest commit always stays: it carries
//! the actor's current version). The runtime does so after each snapshot it saves when
//! [`RuntimeConfig::retention`](crate::RuntimeConfig::retention) is set, keeping that many
//! events behind the snapshot. Afterwards [`EventStore::history_start`] says where the
//! history starts, and a read from before it fails with [`StoreError::HistoryTruncated`]
//! instead of returning a history with a hole. The namespace log skips removed commits.
//!
//! # Idempotent appends
//!
//! A commit carries the [`CommandId`] of its command. When an append finds the stream already
//! past `expected_version` and the commit right after `expected_version` has the same command id,
//! the append is a retry of a commit that landed: it succeeds with
//! [`Appended::deduplicated`] set and writes nothing. This resolves the "unknown outcome" of a
//! lost acknowledgement without ever writing a command twice.

use async_trait::async_trait;

use crate::names::{ActorKey, Namespace};
use crate::wire::{
    CodecError, CommandId, CommitRecord, Delivery, EventData, EventEnvelope, OutboxEntry,
};

mod embedded;
pub(crate) mod jetstream;
mod memory;

pub(crate) use embedded::decode_wakeup;
pub use embedded::{EmbeddedOptions, EmbeddedStore};
pub(crate) use jetstream::check_server_version;
pub use jetstream::{JetStreamOptions, JetStreamStore, ReplayMode};
pub use memory::MemoryStore;

/// Default upper bound of one encoded commit, in bytes (1 MiB, the default NATS max payload).
pub(crate) const DEFAULT_MAX_COMMIT_BYTES: usize = 1024 * 1024;

/// The events of one command, ready to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCommit {
    /// The command's id: the idempotency key of the append.
    pub command_id: CommandId,
    /// The root command of the chain this command belongs to.
    pub correlation_id: CommandId,
    /// The command that caused this one, if any.
    pub causation_id: Option<CommandId>,
    /// Commit time, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The events, in order. Must not be empty.
    pub events: Vec<EventData>,
    /// The encoded reply to keep with the commit (returned again to a retried command).
    pub reply: Option<Vec<u8>>,
    /// Durable effects stored with the commit (see [`CommitRecord::outbox`]).
    pub outbox: Vec<OutboxEntry>,
    /// Outbox entries the commit settles (see [`CommitRecord::settled`]).
    pub settled: Vec<u64>,
    /// The durable effect the commit applies (see [`CommitRecord::delivery`]).
    pub delivery: Option<Delivery>,
}

impl NewCommit {
    /// A commit of `events` for command `command_id`, correlated with itself, stamped now.
    pub fn new(command_id: CommandId, events: Vec<EventData>) -> Self {
        NewCommit {
            command_id,
            correlation_id: command_id,
            causation_id: None,
            timestamp_ms: crate::wire::now_ms(),
            events,
            reply: None,
            outbox: Vec::new(),
            settled: Vec::new(),
            delivery: None,
        }
    }

    /// Builds the stored record for `actor` at `expected_version + 1`.
    pub fn into_record(self, actor: &ActorKey, expected_version: u64) -> CommitRecord {
        CommitRecord {
            format: self.format(),
            actor: actor.clone(),
            first_version: expected_version + 1,
            command_id: self.command_id,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            timestamp_ms: self.timestamp_ms,
            events: self.events,
            reply: self.reply,
            outbox: self.outbox,
            settled: self.settled,
            delivery: self.delivery,
        }
    }

    /// The record format this commit is stored in: the oldest that holds all of its fields, so
    /// older nodes read what they can.
    fn format(&self) -> u16 {
        let workflow =
            !self.outbox.is_empty() || !self.settled.is_empty() || self.delivery.is_some();
        if self.events.iter().any(|e| e.schema_version != 0) {
            crate::wire::COMMIT_FORMAT
        } else if workflow {
            crate::wire::WORKFLOW_COMMIT_FORMAT
        } else {
            crate::wire::BASE_COMMIT_FORMAT
        }
    }

    /// The bytes of the record [`NewCommit::into_record`] would build, written from the
    /// commit's parts: the actor's key is borrowed, not cloned into a record.
    pub(crate) fn encode_for(
        &self,
        actor: &ActorKey,
        expected_version: u64,
    ) -> Result<Vec<u8>, CodecError> {
        crate::wire::record_codec::encode(&crate::wire::record_codec::RecordRef {
            format: self.format(),
            actor,
            first_version: expected_version + 1,
            command_id: self.command_id,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            timestamp_ms: self.timestamp_ms,
            events: &self.events,
            reply: self.reply.as_deref(),
            outbox: &self.outbox,
            settled: &self.settled,
            delivery: self.delivery.as_ref(),
        })
    }
}

/// A successful append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Version of the commit's first event.
    pub first_version: u64,
    /// Version of the commit's last event: the stream's new latest version.
    pub last_version: u64,
    /// `true` when this was a retry of a commit that had already landed (nothing was written).
    pub deduplicated: bool,
}

/// What [`EventStore::truncate_before`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncated {
    /// The first version of the actor still stored.
    pub starts_at: u64,
    /// Commits removed by this call (0: there was nothing before the version to remove).
    pub removed: u64,
}

/// What [`EventStore::replay`] found besides the commits it handed over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Every commit that decoded, whether handed over or (after damage) only counted.
    pub commits: usize,
    /// Every record that did not decode, in stream order. From the first one on, no commit is
    /// handed over: what follows a damaged record cannot be applied in order.
    pub corrupt: Vec<CorruptRecord>,
}

/// The consumer of [`EventStore::replay`]: takes each commit in order, and returns `false` to
/// stop the replay (it keeps its own reason).
///
/// The record is lent: a store may decode the next commit into the same record, reusing its
/// buffers, so take out (`std::mem::take`) what must outlive the call.
pub type ReplayVisitor<'a> = dyn FnMut(&mut CommitRecord) -> bool + Send + 'a;

/// Feeds decoded commits to a [`ReplayVisitor`] one at a time, with the checks of
/// [`EventStore::read_with_errors`]: a history that starts after the requested version is
/// [`StoreError::HistoryTruncated`], and damage stops the handing over. Every stored record is
/// decoded into one record, whose buffers are reused.
pub(crate) struct Replayer<'v, 'a> {
    feed: Feed<'v, 'a>,
    /// The record each stored record is decoded into.
    scratch: CommitRecord,
}

/// The part of a [`Replayer`] that sees the decoded commits.
struct Feed<'v, 'a> {
    actor: &'v ActorKey,
    requested: u64,
    each: &'v mut ReplayVisitor<'a>,
    found: Replayed,
    stopped: bool,
    /// The first version after the last commit handed over.
    next: Option<u64>,
}

impl<'v, 'a> Replayer<'v, 'a> {
    pub(crate) fn new(
        actor: &'v ActorKey,
        from_version: u64,
        each: &'v mut ReplayVisitor<'a>,
    ) -> Self {
        Replayer {
            feed: Feed {
                actor,
                requested: from_version.max(1),
                each,
                found: Replayed::default(),
                stopped: false,
                next: None,
            },
            scratch: CommitRecord::blank(actor.clone()),
        }
    }

    /// One stored record, at `position` (its last version). `Ok(true)`: it decoded.
    pub(crate) fn record(&mut self, position: u64, bytes: &[u8]) -> Result<bool, StoreError> {
        match decode_commit_over(&mut self.scratch, self.feed.actor, position, bytes) {
            Ok(()) => self.feed.commit(&mut self.scratch).map(|()| true),
            Err(reason) => {
                self.damaged(position, reason);
                Ok(false)
            }
        }
    }

    /// One decoded commit (for a store that decodes them itself).
    pub(crate) fn commit(&mut self, commit: &mut CommitRecord) -> Result<(), StoreError> {
        self.feed.commit(commit)
    }

    /// A record that did not decode.
    pub(crate) fn damaged(&mut self, position: u64, reason: String) {
        self.feed
            .found
            .corrupt
            .push(CorruptRecord { position, reason });
    }

    /// What was found.
    pub(crate) fn finish(self) -> Replayed {
        self.feed.found
    }
}

impl Feed<'_, '_> {
    /// After damage, or once the visitor stopped, a commit is only counted: the rest of the
    /// stream is still read, so that every damaged record is reported (damage explains a
    /// failure better than what the visitor ran into).
    fn commit(&mut self, commit: &mut CommitRecord) -> Result<(), StoreError> {
        self.found.commits += 1;
        if self.found.commits == 1
            && commit.first_version > self.requested
            // A damaged record before the first clean commit may be where the history goes
            // on: then it is damage, not a start of history.
            && self.found.corrupt.is_empty()
        {
            return Err(StoreError::HistoryTruncated {
                actor: self.actor.clone(),
                requested: self.requested,
                starts_at: commit.first_version,
            });
        }
        if self.stopped || !self.found.corrupt.is_empty() {
            return Ok(());
        }
        // A store that reads in pages lets go of the stream between them: retention may have
        // removed what came next meanwhile. History has no gaps otherwise.
        if let Some(next) = self.next
            && commit.first_version > next
        {
            return Err(StoreError::HistoryTruncated {
                actor: self.actor.clone(),
                requested: next,
                starts_at: commit.first_version,
            });
        }
        self.next = commit.last_version().checked_add(1);
        self.stopped = !(self.each)(commit);
        Ok(())
    }
}

/// A record that could not be decoded, and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptRecord {
    /// The record's position in the stream: the last version it was stored under.
    pub position: u64,
    /// Why it could not be read.
    pub reason: String,
}

/// What [`EventStore::read_with_errors`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadReport {
    /// Every commit that decoded, in version order. The first may start before the requested
    /// version when the requested version falls inside it.
    pub commits: Vec<CommitRecord>,
    /// Every record that did not decode, in stream order.
    pub corrupt: Vec<CorruptRecord>,
    /// The version the read started from.
    pub from_version: u64,
}

impl ReadReport {
    /// The clean events at or after `from_version`, flattened out of their commits.
    pub fn events(&self) -> Vec<EventEnvelope> {
        self.commits
            .iter()
            .flat_map(|c| c.envelopes())
            .filter(|e| e.version >= self.from_version)
            .collect()
    }

    /// `true` when no record was damaged.
    pub fn is_clean(&self) -> bool {
        self.corrupt.is_empty()
    }
}

/// One commit of the namespace log, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// The commit's log position (see the [module docs](self#the-namespace-log)).
    pub position: u64,
    /// The commit.
    pub commit: CommitRecord,
}

/// One page of the namespace log, from [`EventStore::read_log`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogPage {
    /// Commits after the requested position, in log order.
    pub entries: Vec<LogEntry>,
    /// The position of the latest commit in the log when it was read (0 when empty).
    pub head: u64,
}

/// A saved snapshot of an actor's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The version of the last event folded into the state.
    pub version: u64,
    /// The encoded state (opaque to the store).
    pub payload: Vec<u8>,
    /// When it was taken, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
}

/// Errors of store operations. Each variant says whether anything was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The stream is not at `expected`: someone else appended first. Nothing was written.
    #[error("version conflict on {actor}: expected version {expected}, actual {actual}")]
    VersionConflict {
        /// The actor whose stream was appended to.
        actor: ActorKey,
        /// The version the caller expected.
        expected: u64,
        /// The stream's actual latest version.
        actual: u64,
    },
    /// The store cannot be reached or refused the operation. Nothing was written.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The JetStream store could not connect to NATS (unreachable, refused credentials, TLS).
    #[error(transparent)]
    Connect(#[from] crate::connection::ConnectError),
    /// The write was sent but its result is unknown: it may or may not be stored. Retrying
    /// with the same command id is safe.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// A record could not be decoded.
    #[error("corrupt record in {actor} at position {position}: {reason}")]
    Corrupt {
        /// The actor whose stream holds the record.
        actor: ActorKey,
        /// The record's position (see [`CorruptRecord::position`]).
        position: u64,
        /// Why it could not be read.
        reason: String,
    },
    /// The commit is larger than the store accepts. Nothing was written.
    #[error("commit of {size} bytes is larger than the limit of {limit} bytes")]
    TooLarge {
        /// Encoded size of the commit.
        size: usize,
        /// The store's limit.
        limit: usize,
    },
    /// The actor belongs to another namespace than the store. Nothing was read or written.
    #[error("actor {actor} is not in this store's namespace {store}")]
    WrongNamespace {
        /// The namespace the store serves.
        store: Namespace,
        /// The actor that was asked for.
        actor: ActorKey,
    },
    /// The commit is malformed (for example it holds no events). Nothing was written.
    #[error("invalid commit: {0}")]
    InvalidCommit(String),
    /// Something could not be encoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The store was closed.
    #[error("store closed")]
    Closed,
    /// The versions asked for were removed by retention (see
    /// [`EventStore::truncate_before`]): the actor's history now starts at `starts_at`.
    /// Nothing was changed.
    #[error(
        "history of {actor} before version {starts_at} was removed by retention \
         (asked from version {requested}): the actor loads only from a snapshot"
    )]
    HistoryTruncated {
        /// The actor.
        actor: ActorKey,
        /// The first version asked for.
        requested: u64,
        /// The first version still stored.
        starts_at: u64,
    },
    /// A name given to the store is invalid. Nothing was contacted.
    #[error(transparent)]
    InvalidName(#[from] crate::names::NameError),
    /// The store does not offer this operation (a custom store without a namespace log, for
    /// example). Nothing was read or written.
    #[error("not supported by this store: {0}")]
    Unsupported(String),
    /// The store failed in a way only reopening it repairs (a synced write failed, so what is
    /// on disk is unknown): it refuses every write until then. Nothing was written.
    #[error("store refuses writes: {0}")]
    Failed(String),
    /// The server is older than the store supports.
    #[error("nats-server {found} is too old: Aether needs {required} or newer")]
    ServerTooOld {
        /// The version the server reported.
        found: String,
        /// The minimum version.
        required: String,
    },
}

impl StoreError {
    /// `true` when the error guarantees nothing was written.
    pub fn nothing_written(&self) -> bool {
        !matches!(self, StoreError::OutcomeUnknown(_))
    }
}

/// The event store contract. See the [module docs](self).
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// The namespace this store serves; every actor passed in must belong to it.
    fn namespace(&self) -> &Namespace;

    /// Appends one commit at `expected_version + 1`.
    ///
    /// Fails with [`StoreError::VersionConflict`] when the stream's latest version is not
    /// `expected_version`, unless the commit is a retry of the one stored right after
    /// `expected_version` (same command id): then it succeeds with `deduplicated` set.
    async fn append(
        &self,
        actor: &ActorKey,
        expected_version: u64,
        commit: NewCommit,
    ) -> Result<Appended, StoreError>;

    /// The actor's latest version; 0 for an actor with no events.
    async fn latest_version(&self, actor: &ActorKey) -> Result<u64, StoreError>;

    /// Every commit holding a version ≥ `from_version`, in order, plus every damaged record.
    async fn read_with_errors(
        &self,
        actor: &ActorKey,
        from_version: u64,
    ) -> Result<ReadReport, StoreError>;

    /// Hands every commit holding a version ≥ `from_version` to `each`, in order, as
    /// [`EventStore::read_with_errors`] reads them, without holding the whole history decoded
    /// at once: how an activation replays. From the first damaged record on, or once
    /// `each` returned `false`, commits are only counted (so every damaged record is still
    /// reported). Fails as `read_with_errors` does: [`StoreError::HistoryTruncated`] when
    /// retention removed the history from `from_version` on — or, for a store that reads in
    /// pages, removed the next page's start while the replay ran (the caller reads again from
    /// a newer snapshot). Damage is told from truncation in stream order: a damaged record
    /// before the first clean commit is damage.
    ///
    /// The default reads the whole report first; the built-in stores decode one record at a
    /// time (the memory store also copies its records out a page at a time; the embedded and
    /// JetStream stores read the raw records first, shared slices and messages).
    async fn replay(
        &self,
        actor: &ActorKey,
        from_version: u64,
        each: &mut ReplayVisitor<'_>,
    ) -> Result<Replayed, StoreError> {
        let report = self.read_with_errors(actor, from_version).await?;
        let mut replayer = Replayer::new(actor, from_version, each);
        // The report lists damage apart from the commits: put both back in stream order.
        let mut corrupt = report.corrupt.into_iter().peekable();
        for mut commit in report.commits {
            while let Some(bad) = corrupt.next_if(|c| c.position < commit.last_version()) {
                replayer.damaged(bad.position, bad.reason);
            }
            replayer.commit(&mut commit)?;
        }
        for bad in corrupt {
            replayer.damaged(bad.position, bad.reason);
        }
        Ok(replayer.finish())
    }

    /// The events from `from_version` on, in order. Fails on the first damaged record.
    async fn read(
        &self,
        actor: &ActorKey,
        from_version: u64,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        let report = self.read_with_errors(actor, from_version).await?;
        if let Some(bad) = report.corrupt.first() {
            return Err(StoreError::Corrupt {
                actor: actor.clone(),
                position: bad.position,
                reason: bad.reason.clone(),
            });
        }
        Ok(report.events())
    }

    /// Removes the actor's commits that end before `version` — never its latest commit, which
    /// holds its current version — and says where its history now starts (the first version
    /// still stored: 1 when nothing was ever removed, or for an actor without events) and how
    /// many commits went.
    /// See the [module docs](self#retention).
    ///
    /// Only call it behind a snapshot the running code can load: an actor whose early history
    /// is gone can no longer be rebuilt by a full replay. The runtime calls it after saving a
    /// snapshot when [`RuntimeConfig::retention`](crate::RuntimeConfig::retention) is set.
    ///
    /// The default fails with [`StoreError::Unsupported`], and nothing is removed.
    async fn truncate_before(
        &self,
        actor: &ActorKey,
        version: u64,
    ) -> Result<Truncated, StoreError> {
        let _ = (actor, version);
        Err(StoreError::Unsupported(
            "this store cannot remove history (truncate_before)".into(),
        ))
    }

    /// The first version of the actor still stored: 1 unless
    /// [`EventStore::truncate_before`] removed history.
    async fn history_start(&self, actor: &ActorKey) -> Result<u64, StoreError> {
        let _ = actor;
        Ok(1)
    }

    /// Up to `max` commits of the whole namespace stored after log position `after` (0: from the
    /// start), in the order they were stored, plus the log's head. See the
    /// [module docs](self#the-namespace-log).
    ///
    /// The default fails with [`StoreError::Unsupported`]: a store written outside this crate
    /// may not keep a namespace log, and then projections cannot read from it.
    async fn read_log(&self, after: u64, max: usize) -> Result<LogPage, StoreError> {
        let _ = (after, max);
        Err(StoreError::Unsupported(
            "this store keeps no namespace log (read_log)".into(),
        ))
    }

    /// Records that `actor` has durable work (effects to deliver, reminders) due at `due_ms`
    /// (milliseconds since the Unix epoch; 0: now), replacing its previous entry. Returns the
    /// entry's revision, for [`EventStore::clear_wakeup`]. See the
    /// [module docs](self#the-wake-up-index).
    ///
    /// The default fails with [`StoreError::Unsupported`]: durable effects and reminders then
    /// fail with that error, and nothing else changes.
    async fn set_wakeup(&self, actor: &ActorKey, due_ms: u64) -> Result<u64, StoreError> {
        let _ = (actor, due_ms);
        Err(StoreError::Unsupported(
            "this store keeps no wake-up index (durable effects and reminders)".into(),
        ))
    }

    /// Removes `actor`'s wake-up entry if it is still at `revision` (written by
    /// [`EventStore::set_wakeup`]); a newer entry stays.
    async fn clear_wakeup(&self, actor: &ActorKey, revision: u64) -> Result<(), StoreError> {
        let _ = (actor, revision);
        Ok(())
    }

    /// Every wake-up entry, then every change as it happens (including changes written by
    /// other processes sharing the store), until the stream is dropped.
    async fn watch_wakeups(&self) -> Result<WakeupStream, StoreError> {
        Err(StoreError::Unsupported(
            "this store keeps no wake-up index (durable effects and reminders)".into(),
        ))
    }

    /// Flushes and releases the store. Later calls fail with [`StoreError::Closed`].
    async fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// One change of the wake-up index (see [`EventStore::watch_wakeups`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wakeup {
    /// `actor` has durable work due at `due_ms` (0: now); `revision` identifies the entry.
    Set {
        /// The actor.
        actor: ActorKey,
        /// When (milliseconds since the Unix epoch).
        due_ms: u64,
        /// The entry's revision.
        revision: u64,
    },
    /// `actor`'s entry was removed.
    Cleared {
        /// The actor.
        actor: ActorKey,
    },
    /// The feed restarted (a lost connection): every entry follows again.
    Reset,
}

/// The stream of [`EventStore::watch_wakeups`].
pub type WakeupStream = std::pin::Pin<Box<dyn futures_util::Stream<Item = Wakeup> + Send>>;

/// Encodes a wake-up time as stored (decimal milliseconds: readable with the `nats` CLI).
fn encode_due(due_ms: u64) -> Vec<u8> {
    due_ms.to_string().into_bytes()
}

/// Decodes a stored wake-up time; an unreadable one means "now" (waking early is harmless).
fn decode_due(bytes: &[u8]) -> u64 {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// The snapshot store contract: the latest snapshot per actor.
#[async_trait]
pub trait SnapshotStore: Send + Sync + 'static {
    /// Saves `snapshot` unless a snapshot at the same or a later version is already stored.
    async fn save(&self, actor: &ActorKey, snapshot: Snapshot) -> Result<(), StoreError>;

    /// The latest snapshot, if any. A snapshot that cannot be read is
    /// [`StoreError::Corrupt`]; callers fall back to a full replay.
    async fn latest(&self, actor: &ActorKey) -> Result<Option<Snapshot>, StoreError>;
}

/// A wake-up feed for the stores of one process (memory, embedded): the entries at the start,
/// then the changes this process makes, in order.
#[derive(Clone)]
struct LocalWakeups {
    changes: tokio::sync::broadcast::Sender<Wakeup>,
}

impl LocalWakeups {
    fn new() -> Self {
        LocalWakeups {
            changes: tokio::sync::broadcast::channel(4096).0,
        }
    }

    fn publish(&self, change: Wakeup) {
        let _ = self.changes.send(change);
    }

    /// The stream: the entries from `reload` (read after subscribing, so no change falls
    /// between), then the changes; a reader that fell behind gets [`Wakeup::Reset`] and the
    /// entries again.
    fn stream<F>(&self, reload: F) -> WakeupStream
    where
        F: Fn() -> Vec<Wakeup> + Send + Sync + 'static,
    {
        use futures_util::StreamExt;
        use tokio::sync::broadcast::error::RecvError;
        let rx = self.changes.subscribe();
        let head = futures_util::stream::iter(reload());
        let tail = futures_util::stream::unfold((rx, reload), |(mut rx, reload)| async move {
            let batch = match rx.recv().await {
                Ok(change) => vec![change],
                Err(RecvError::Lagged(_)) => {
                    let mut all = vec![Wakeup::Reset];
                    all.extend(reload());
                    all
                }
                Err(RecvError::Closed) => return None,
            };
            Some((batch, (rx, reload)))
        })
        .flat_map(futures_util::stream::iter);
        Box::pin(head.chain(tail))
    }
}

test_util! {
    /// Writes raw bytes where a record would be: how tests inject damage into a store.
    ///
    /// Every backend implements it so the conformance suite can check that damaged records are
    /// reported and clean ones kept. Never needed in production code.
    #[async_trait]
    pub trait FaultInjection: Send + Sync {
        /// Stores `bytes` as the commit record at `position` (the last version it would cover).
        async fn inject_raw_commit(
            &self,
            actor: &ActorKey,
            position: u64,
            bytes: Vec<u8>,
        ) -> Result<(), StoreError>;

        /// Stores `bytes` as the actor's snapshot record.
        async fn inject_raw_snapshot(&self, actor: &ActorKey, bytes: Vec<u8>)
        -> Result<(), StoreError>;
    }
}

/// The stored form of a snapshot.
#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotRecord {
    format: u16,
    actor: ActorKey,
    version: u64,
    timestamp_ms: u64,
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
    /// Where the snapshot's last event sits in the backend (a stream sequence), when known:
    /// lets a replay start there instead of at the beginning.
    #[serde(default)]
    position: Option<u64>,
}

/// Fails a read from `from_version` when retention removed that part of the history: the
/// first commit found starts after the version asked for (history has no gaps otherwise).
fn check_horizon(actor: &ActorKey, report: &ReadReport) -> Result<(), StoreError> {
    let requested = report.from_version.max(1);
    // A damaged record before the first clean commit may be where the history goes on: then
    // it is damage (reported with the read), not a start of history.
    let damaged_before = |first: &CommitRecord| {
        report
            .corrupt
            .iter()
            .any(|c| c.position < first.first_version)
    };
    match report.commits.first() {
        Some(first) if first.first_version > requested && !damaged_before(first) => {
            Err(StoreError::HistoryTruncated {
                actor: actor.clone(),
                requested,
                starts_at: first.first_version,
            })
        }
        _ => Ok(()),
    }
}

/// Checks that `actor` belongs to `namespace`.
fn check_namespace(namespace: &Namespace, actor: &ActorKey) -> Result<(), StoreError> {
    if &actor.namespace == namespace {
        Ok(())
    } else {
        Err(StoreError::WrongNamespace {
            store: namespace.clone(),
            actor: actor.clone(),
        })
    }
}

/// Validates and encodes a commit: namespace, non-empty, versions within `u64`, within
/// `max_bytes`.
fn encode_commit(
    namespace: &Namespace,
    actor: &ActorKey,
    expected_version: u64,
    commit: &NewCommit,
    max_bytes: usize,
) -> Result<Encoded, StoreError> {
    check_namespace(namespace, actor)?;
    if commit.events.is_empty() {
        return Err(StoreError::InvalidCommit(
            "a commit must hold at least one event".into(),
        ));
    }
    let Some(last_version) = expected_version.checked_add(commit.events.len() as u64) else {
        return Err(StoreError::InvalidCommit(format!(
            "{} events after version {expected_version} would pass the largest version",
            commit.events.len()
        )));
    };
    let bytes = commit.encode_for(actor, expected_version)?;
    if bytes.len() > max_bytes {
        return Err(StoreError::TooLarge {
            size: bytes.len(),
            limit: max_bytes,
        });
    }
    Ok(Encoded {
        first_version: expected_version + 1,
        last_version,
        bytes,
    })
}

/// What an append that found `actor`'s stream at `actual`, not at `expected`, answers: the
/// commit stored right after `expected` (`next`: its position and bytes, when there is one)
/// is this very command's, stored by an earlier attempt, so the retry is deduplicated; any
/// other is a conflict.
fn retry_or_conflict(
    actor: &ActorKey,
    expected: u64,
    actual: u64,
    command_id: CommandId,
    next: Option<(u64, &[u8])>,
) -> Result<Appended, StoreError> {
    if let Some((position, bytes)) = next
        && let Ok(existing) = decode_commit(actor, position, bytes)
        && existing.first_version == expected + 1
        && existing.command_id == command_id
    {
        return Ok(Appended {
            first_version: existing.first_version,
            last_version: existing.last_version(),
            deduplicated: true,
        });
    }
    Err(StoreError::VersionConflict {
        actor: actor.clone(),
        expected,
        actual,
    })
}

/// A commit encoded for a store (see [`encode_commit`]).
struct Encoded {
    /// Version of the commit's first event.
    first_version: u64,
    /// Version of its last event.
    last_version: u64,
    /// The stored record.
    bytes: Vec<u8>,
}

/// The actor of a stream token (`<namespace>.<kind>.<encoded id>`), if it is one.
fn actor_of_token(token: &str) -> Option<ActorKey> {
    let mut parts = token.splitn(3, '.');
    let namespace = Namespace::new(parts.next()?).ok()?;
    let kind = crate::names::Kind::new(parts.next()?).ok()?;
    let id = crate::names::ActorId::decode(parts.next()?).ok()?;
    Some(ActorKey::new(namespace, kind, id))
}

/// Decodes a stored commit and checks that it belongs to `actor` and ends at `position`.
pub(crate) fn decode_commit(
    actor: &ActorKey,
    position: u64,
    bytes: &[u8],
) -> Result<CommitRecord, String> {
    let mut record = CommitRecord::blank(actor.clone());
    decode_commit_over(&mut record, actor, position, bytes)?;
    Ok(record)
}

/// [`decode_commit`] into `record`, reusing its buffers. On an error, `record` is left a mix of
/// old and new fields.
pub(crate) fn decode_commit_over(
    record: &mut CommitRecord,
    actor: &ActorKey,
    position: u64,
    bytes: &[u8],
) -> Result<(), String> {
    record
        .decode_over(bytes, Some(actor))
        .map_err(|e| e.to_string())?;
    if &record.actor != actor {
        return Err(format!("record belongs to {}, not {actor}", record.actor));
    }
    if record.last_version() != position {
        return Err(format!(
            "record covers versions {}..={} but is stored at {position}",
            record.first_version,
            record.last_version()
        ));
    }
    Ok(())
}

pub(crate) fn encode_snapshot(actor: &ActorKey, snapshot: Snapshot) -> Result<Vec<u8>, StoreError> {
    encode_snapshot_at(actor, snapshot, None)
}

fn encode_snapshot_at(
    actor: &ActorKey,
    snapshot: Snapshot,
    position: Option<u64>,
) -> Result<Vec<u8>, StoreError> {
    Ok(crate::wire::codec::encode(
        "snapshot record",
        &SnapshotRecord {
            format: 1,
            actor: actor.clone(),
            version: snapshot.version,
            timestamp_ms: snapshot.timestamp_ms,
            payload: snapshot.payload,
            position,
        },
    )?)
}

pub(crate) fn decode_snapshot(actor: &ActorKey, bytes: &[u8]) -> Result<Snapshot, StoreError> {
    decode_snapshot_at(actor, bytes).map(|(s, _)| s)
}

fn decode_snapshot_at(
    actor: &ActorKey,
    bytes: &[u8],
) -> Result<(Snapshot, Option<u64>), StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        actor: actor.clone(),
        position: 0,
        reason,
    };
    let record: SnapshotRecord =
        crate::wire::codec::decode("snapshot record", bytes).map_err(|e| corrupt(e.to_string()))?;
    if &record.actor != actor {
        return Err(corrupt(format!("snapshot belongs to {}", record.actor)));
    }
    Ok((
        Snapshot {
            version: record.version,
            payload: record.payload,
            timestamp_ms: record.timestamp_ms,
        },
        record.position,
    ))
}

/// The snapshot version stored in `bytes`, if they decode (used to keep only the latest).
fn snapshot_version(bytes: &[u8]) -> Option<u64> {
    crate::wire::codec::decode::<SnapshotRecord>("snapshot record", bytes)
        .ok()
        .map(|r| r.version)
}
