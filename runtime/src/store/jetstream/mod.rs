//! [`JetStreamStore`]: events and snapshots in NATS JetStream, for clusters.
//!
//! # Layout
//!
//! | what | where |
//! |---|---|
//! | events | stream `<ns>_events`, subjects `<ns>.events.<kind>.<encoded-id>`, one message per commit |
//! | snapshots | KV bucket `<ns>_snapshots`, key `<kind>.<encoded-id>` |
//! | wake-up index | KV bucket `<ns>_wakeups`, key `<kind>.<encoded-id>`, value: due time in ms (decimal) |
//!
//! Every message carries the commit's versions in headers (`Aether-First-Version`,
//! `Aether-Version` = last version) and `Nats-Msg-Id: <stream token>:<command id>`. The namespace
//! prefixes every stream, subject and bucket name, so two namespaces never share storage.
//!
//! # Optimistic concurrency
//!
//! An append publishes with `Nats-Expected-Last-Subject-Sequence` set to the stream sequence of
//! the actor's current last commit (0 for a new actor), so the server refuses it if anything
//! was appended in between. The store keeps the last known `(version, sequence)` per actor to
//! make that one round trip; when it does not know, it reads the subject's last message first.
//!
//! # Unknown outcomes
//!
//! If an append's acknowledgement is lost and the append is retried, the server (2.15 checks
//! the sequence before the msg-id deduplication) refuses the retry with "wrong last sequence".
//! The store then reads the subject's last message: if its `Nats-Msg-Id` is the retry's, the
//! commit had landed and the append succeeds as deduplicated — never written twice, never
//! reported as a conflict. (JetStream recognises a retry of the actor's *latest* commit; the
//! runtime's own dedup window covers older ones.)
//!
//! # Replay
//!
//! A replay reads one subject from a start sequence by batched direct get (see `direct_get`),
//! falling back to one direct get per message on servers that ignore `batch`. Snapshots record
//! the stream sequence of their last event, so a replay after a snapshot starts there.
//!
//! # The namespace log
//!
//! [`EventStore::read_log`] reads the whole stream in sequence order (batched direct get on
//! `<ns>.events.>`); a commit's log position is its stream sequence.
//!
//! # Availability
//!
//! While the client is disconnected (the server is down, the client reconnecting), every
//! operation fails at once with [`StoreError::Unavailable`] — nothing was sent, so nothing can
//! have been applied — and works again once the connection is back, without a restart.
//!
//! # Retention
//!
//! [`EventStore::truncate_before`] purges the actor's older commits from the stream (a purge
//! filtered on its subject, up to a sequence), so the stream's size shrinks; the runtime calls
//! it after each snapshot when `RuntimeConfig::retention` is set, on single nodes and cluster
//! nodes alike. The actor's latest commit always stays.

pub(crate) mod direct_get;
mod snapshots;
mod wakeups;

use wakeups::wakeup_feed;

use std::collections::HashMap;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::kv;
use async_nats::jetstream::stream;
use async_nats::{HeaderMap, HeaderName, Subject};
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;

use self::direct_get::{RawMsg, ReadFailure};
use super::{
    Appended, CorruptRecord, EventStore, FaultInjection, LogEntry, LogPage, NewCommit, ReadReport,
    ReplayVisitor, Replayed, Replayer, Snapshot, SnapshotStore, StoreError, Truncated, Wakeup,
    WakeupStream, check_horizon, check_namespace, decode_commit, decode_snapshot_at, encode_commit,
    encode_snapshot_at, snapshot_version,
};
use crate::names::{ActorKey, Namespace};
use crate::wire::CommandId;

/// The oldest nats-server the store works with: 2.9 ignores batched direct get and its KV API
/// does not decode with the current client.
pub(crate) const MIN_SERVER_VERSION: (u64, u64, u64) = (2, 11, 0);

const VERSION_HEADER: &str = "Aether-Version";
const FIRST_VERSION_HEADER: &str = "Aether-First-Version";
const MSG_ID_HEADER: &str = "Nats-Msg-Id";
const EXPECTED_SEQ_HEADER: &str = "Nats-Expected-Last-Subject-Sequence";
// The same names, made once: a name given as `&str` is checked and copied on every insert.
const VERSION_NAME: HeaderName = HeaderName::from_static(VERSION_HEADER);
const FIRST_VERSION_NAME: HeaderName = HeaderName::from_static(FIRST_VERSION_HEADER);
const MSG_ID_NAME: HeaderName = HeaderName::from_static(MSG_ID_HEADER);
const EXPECTED_SEQ_NAME: HeaderName = HeaderName::from_static(EXPECTED_SEQ_HEADER);

/// How replays read a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplayMode {
    /// Batched direct get, falling back to one-by-one when the server ignores `batch`.
    #[default]
    Batched,
    /// One direct get per message (slow; for servers without batched get, and for tests).
    OneByOne,
}

/// Settings of a [`JetStreamStore`].
#[derive(Debug, Clone)]
pub struct JetStreamOptions {
    /// Replicas of the stream and the KV bucket (1 for one server, 3 for a 3-server cluster).
    pub replicas: usize,
    /// Largest encoded commit accepted.
    pub max_commit_bytes: usize,
    /// Timeout of each request to the server.
    pub request_timeout: Duration,
    /// How long the server remembers message ids for deduplication.
    pub duplicate_window: Duration,
    /// How replays read.
    pub replay: ReplayMode,
    /// Messages per batched direct get request.
    pub batch_size: usize,
}

impl Default for JetStreamOptions {
    fn default() -> Self {
        JetStreamOptions {
            replicas: 1,
            max_commit_bytes: super::DEFAULT_MAX_COMMIT_BYTES,
            request_timeout: Duration::from_secs(3),
            duplicate_window: Duration::from_secs(120),
            replay: ReplayMode::Batched,
            batch_size: 1000,
        }
    }
}

/// What the store knows about an actor's position in the stream.
#[derive(Debug, Clone, Copy)]
struct Position {
    version: u64,
    seq: u64,
}

/// Events and snapshots in JetStream (streams, subjects and limits are described in
/// `runtime/src/store/jetstream/mod.rs`).
pub struct JetStreamStore {
    namespace: Namespace,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    stream: stream::Stream,
    stream_name: String,
    snapshots: kv::Store,
    wakeups: kv::Store,
    options: JetStreamOptions,
    /// Last known commit per subject (the head), for the expected-sequence check.
    heads: Mutex<HashMap<String, Position>>,
    /// Positions of snapshots per subject, for starting replays after them.
    snapshot_positions: Mutex<HashMap<String, Position>>,
}

const POSITION_CACHE_ENTRIES: usize = 100_000;

/// Opens (creating if needed) a KV bucket of one value per key.
async fn open_bucket(
    js: &async_nats::jetstream::Context,
    bucket: String,
    options: &JetStreamOptions,
) -> Result<kv::Store, StoreError> {
    match js.get_key_value(bucket.clone()).await {
        Ok(kv) => Ok(kv),
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: bucket.clone(),
                history: 1,
                storage: stream::StorageType::File,
                num_replicas: options.replicas.max(1),
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(&format!("cannot open bucket {bucket}"), e)),
    }
}

fn remember(map: &Mutex<HashMap<String, Position>>, subject: &str, position: Position) {
    let mut map = map.lock();
    // An actor's next append updates its entry in place: no key is built for it.
    if let Some(known) = map.get_mut(subject) {
        *known = position;
        return;
    }
    if map.len() >= POSITION_CACHE_ENTRIES {
        map.clear();
    }
    map.insert(subject.to_owned(), position);
}

/// Parses `major.minor.patch` (ignoring any suffix) and checks it against the minimum.
pub(crate) fn check_server_version(found: &str) -> Result<(), StoreError> {
    let mut parts = found
        .trim_start_matches('v')
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let version = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    if version >= MIN_SERVER_VERSION {
        Ok(())
    } else {
        let (a, b, c) = MIN_SERVER_VERSION;
        Err(StoreError::ServerTooOld {
            found: found.to_owned(),
            required: format!("{a}.{b}.{c}"),
        })
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{what}: {e}"))
}

/// The last message of a subject, as far as the store cares.
struct Last {
    position: Position,
    first_version: Option<u64>,
    msg_id: Option<String>,
}

impl JetStreamStore {
    /// Connects to NATS (a URL, comma-separated URLs, or a [`NatsConfig`](crate::NatsConfig)
    /// with credentials and TLS) and opens (creating if needed) the stream and bucket of
    /// `namespace`. The namespace is validated before anything is contacted.
    pub async fn connect(
        nats: impl Into<crate::NatsConfig>,
        namespace: &str,
        options: JetStreamOptions,
    ) -> Result<Self, StoreError> {
        let namespace = Namespace::new(namespace)?;
        let client = nats
            .into()
            .connect_once(&format!("aether-{namespace}"), options.request_timeout)
            .await?;
        JetStreamStore::with_client(client, namespace, options).await
    }

    /// Opens the store on an existing connection.
    pub(crate) async fn with_client(
        client: async_nats::Client,
        namespace: Namespace,
        options: JetStreamOptions,
    ) -> Result<Self, StoreError> {
        check_server_version(&client.server_info().version)?;
        let js = async_nats::jetstream::ContextBuilder::new()
            .timeout(options.request_timeout)
            .build(client.clone());
        let stream_name = format!("{namespace}_events");
        let config = stream::Config {
            name: stream_name.clone(),
            subjects: vec![format!("{namespace}.events.>")],
            storage: stream::StorageType::File,
            num_replicas: options.replicas.max(1),
            allow_direct: true,
            duplicate_window: options.duplicate_window,
            max_message_size: i32::try_from(options.max_commit_bytes + 4096).unwrap_or(i32::MAX),
            ..Default::default()
        };
        let stream = js
            .get_or_create_stream(config)
            .await
            .map_err(|e| unavailable(&format!("cannot open stream {stream_name}"), e))?;
        let snapshots = open_bucket(&js, format!("{namespace}_snapshots"), &options).await?;
        let wakeups = open_bucket(&js, format!("{namespace}_wakeups"), &options).await?;
        Ok(JetStreamStore {
            namespace,
            client,
            js,
            stream,
            stream_name,
            snapshots,
            wakeups,
            options,
            heads: Mutex::new(HashMap::new()),
            snapshot_positions: Mutex::new(HashMap::new()),
        })
    }

    /// The stream holding this namespace's events (`<ns>_events`).
    pub fn stream_name(&self) -> &str {
        &self.stream_name
    }

    /// The KV bucket holding this namespace's snapshots (`<ns>_snapshots`).
    pub fn snapshot_bucket(&self) -> String {
        format!("{}_snapshots", self.namespace)
    }

    /// The connection (shared with the cluster layer, later).
    pub(crate) fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The subject of an actor's commits.
    pub fn subject(&self, actor: &ActorKey) -> String {
        // Built by hand, not with `format!`: every append builds one.
        let (ns, kind, id) = (
            actor.namespace.as_str(),
            actor.kind.as_str(),
            actor.id.as_str(),
        );
        let mut subject = String::with_capacity(ns.len() + kind.len() + id.len() + 16);
        subject.push_str(ns);
        subject.push_str(".events.");
        subject.push_str(kind);
        subject.push('.');
        crate::names::encode_into(id, &mut subject);
        subject
    }

    fn snapshot_key(actor: &ActorKey) -> String {
        format!("{}.{}", actor.kind, actor.id.encoded())
    }

    fn msg_id(actor: &ActorKey, command_id: CommandId) -> String {
        format!("{}:{command_id}", actor.stream_token())
    }

    fn ensure_connected(&self) -> Result<(), StoreError> {
        match self.client.connection_state() {
            State::Connected => Ok(()),
            state => Err(StoreError::Unavailable(format!(
                "not connected to NATS ({state:?}); nothing was sent"
            ))),
        }
    }

    /// A snapshot bucket entry, from any replica that answers (see
    /// [`direct_get::from_any_replica`]).
    async fn read_snapshot_entry(&self, key: &str) -> Result<Option<kv::Entry>, StoreError> {
        direct_get::from_any_replica(self.options.request_timeout, || self.snapshots.entry(key))
            .await
            .ok_or_else(|| {
                StoreError::Unavailable(format!(
                    "cannot read snapshot: no replica answered within {:?}",
                    self.options.request_timeout
                ))
            })?
            .map_err(|e| unavailable("cannot read snapshot", e))
    }

    /// The subject's last message, read from the stream leader (a replica could lag).
    async fn fetch_last(&self, subject: &str) -> Result<Option<Last>, StoreError> {
        match self.stream.get_last_raw_message_by_subject(subject).await {
            Ok(msg) => {
                let header = |name: &str| msg.headers.get(name).map(|v| v.as_str().to_owned());
                let version = header(VERSION_HEADER)
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| {
                        StoreError::Unavailable(format!(
                            "message {} on {subject} has no {VERSION_HEADER} header",
                            msg.sequence
                        ))
                    })?;
                let position = Position {
                    version,
                    seq: msg.sequence,
                };
                remember(&self.heads, subject, position);
                Ok(Some(Last {
                    position,
                    first_version: header(FIRST_VERSION_HEADER).and_then(|v| v.parse().ok()),
                    msg_id: header(MSG_ID_HEADER),
                }))
            }
            Err(e) if direct_get::is_no_message(&e) => Ok(None),
            Err(e) => Err(unavailable("cannot read the last commit", e)),
        }
    }

    /// The answer when the stream is not at `expected`: a retry of the latest commit is a
    /// success, anything else a conflict.
    fn conflict_or_duplicate(
        actor: &ActorKey,
        expected: u64,
        last: Option<&Last>,
        msg_id: &str,
    ) -> Result<Appended, StoreError> {
        if let Some(last) = last
            && last.msg_id.as_deref() == Some(msg_id)
            && last.first_version == Some(expected + 1)
        {
            return Ok(Appended {
                first_version: expected + 1,
                last_version: last.position.version,
                deduplicated: true,
            });
        }
        Err(StoreError::VersionConflict {
            actor: actor.clone(),
            expected,
            actual: last.map_or(0, |l| l.position.version),
        })
    }

    /// The messages of `subject` that may hold versions ≥ `from_version`, in order, each with
    /// the version its header names (the last of its commit), or why it names none. A message
    /// whose commit ends before `from_version` is left out.
    async fn stored_from(
        &self,
        subject: &str,
        from_version: u64,
    ) -> Result<Vec<(Result<u64, String>, RawMsg)>, StoreError> {
        let Some(head) = self.fetch_last(subject).await? else {
            return Ok(Vec::new());
        };
        // Start after the best known position below `from_version`.
        let hints = [
            self.heads.lock().get(subject).copied(),
            self.snapshot_positions.lock().get(subject).copied(),
        ];
        let start = hints
            .iter()
            .flatten()
            .filter(|p| p.version < from_version)
            .map(|p| p.seq + 1)
            .max()
            .unwrap_or(1);
        let msgs = self.read_subject(subject, start, head.position.seq).await?;
        Ok(msgs
            .into_iter()
            .filter_map(|msg| {
                let position = msg
                    .headers
                    .get(VERSION_HEADER)
                    .and_then(|v| v.as_str().parse::<u64>().ok())
                    .ok_or_else(|| format!("message {} has no {VERSION_HEADER} header", msg.seq));
                match position {
                    Ok(p) if p < from_version => None,
                    position => Some((position, msg)),
                }
            })
            .collect())
    }

    /// Notes where a clean commit read from `subject` sits, so the next read starts there.
    fn remember_read(&self, subject: &str, version: u64, seq: u64) {
        remember(&self.heads, subject, Position { version, seq });
    }

    /// Every message of `subject` from sequence `start` through `until` (the leader's last
    /// sequence for the subject, read just before).
    async fn read_subject(
        &self,
        subject: &str,
        start: u64,
        until: u64,
    ) -> Result<Vec<RawMsg>, StoreError> {
        if start > until {
            return Ok(Vec::new());
        }
        let failed =
            |reason: String| StoreError::Unavailable(format!("replay of {subject}: {reason}"));
        if self.options.replay == ReplayMode::Batched {
            // A replica may lag behind the leader: retry briefly until it has caught up.
            for attempt in 0..10 {
                match direct_get::batched(
                    &self.client,
                    &self.stream_name,
                    subject,
                    start,
                    self.options.batch_size.max(1),
                    self.options.request_timeout,
                )
                .await
                {
                    Ok(msgs) if msgs.last().is_some_and(|m| m.seq >= until) => return Ok(msgs),
                    Ok(_) => tokio::time::sleep(Duration::from_millis(5 << attempt.min(4))).await,
                    Err(ReadFailure::Failed(reason)) => return Err(failed(reason)),
                    Err(ReadFailure::NoAnswer) => return Err(failed("no answer".into())),
                    Err(ReadFailure::BatchUnsupported) => {
                        tracing::warn!(%subject, "server ignores batched direct get; reading one by one");
                        break;
                    }
                }
            }
        }
        direct_get::one_by_one(&self.stream, subject, start, until)
            .await
            .map_err(|f| {
                failed(match f {
                    ReadFailure::Failed(reason) => reason,
                    ReadFailure::BatchUnsupported | ReadFailure::NoAnswer => {
                        "unexpected answer".to_owned()
                    }
                })
            })
    }

    /// Purges the actor's commits that end before `before` — never the latest, which carries
    /// the actor's current version, checked by the next append — and returns the first
    /// version still stored.
    async fn purge_before(&self, subject: &str, before: u64) -> Result<Truncated, StoreError> {
        let nothing = Truncated {
            starts_at: 1,
            removed: 0,
        };
        let Some(head) = self.fetch_last(subject).await? else {
            return Ok(nothing);
        };
        let msgs = self.read_subject(subject, 1, head.position.seq).await?;
        let Some(first_kept) = msgs
            .iter()
            .find(|m| header_u64(m, VERSION_HEADER).is_some_and(|v| v >= before))
            .or(msgs.last())
        else {
            return Ok(nothing);
        };
        let start = first_version_of(first_kept);
        let removed = msgs.iter().take_while(|m| m.seq < first_kept.seq).count() as u64;
        if removed > 0 {
            self.stream
                .purge()
                .filter(subject)
                .sequence(first_kept.seq)
                .await
                .map_err(|e| unavailable("retention purge failed", e))?;
        }
        Ok(Truncated {
            starts_at: start,
            removed,
        })
    }
}

/// A numeric header of a stored message.
fn header_u64(msg: &RawMsg, name: &str) -> Option<u64> {
    msg.headers
        .get(name)
        .and_then(|v| v.as_str().parse::<u64>().ok())
}

/// The first version a stored commit holds (its own last version when the header is missing).
fn first_version_of(msg: &RawMsg) -> u64 {
    header_u64(msg, FIRST_VERSION_HEADER)
        .or_else(|| header_u64(msg, VERSION_HEADER))
        .unwrap_or(1)
}

#[async_trait]
impl EventStore for JetStreamStore {
    fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    async fn append(
        &self,
        actor: &ActorKey,
        expected_version: u64,
        commit: NewCommit,
    ) -> Result<Appended, StoreError> {
        let command_id = commit.command_id;
        let encoded = encode_commit(
            &self.namespace,
            actor,
            expected_version,
            &commit,
            self.options.max_commit_bytes,
        )?;
        self.ensure_connected()?;
        // Shared, not copied, by the publish and the bookkeeping after it.
        let subject = Subject::from(self.subject(actor));
        let expected_seq = if expected_version == 0 {
            0
        } else {
            let cached = self.heads.lock().get(subject.as_str()).copied();
            match cached {
                Some(p) if p.version == expected_version => p.seq,
                _ => {
                    let last = self.fetch_last(&subject).await?;
                    match &last {
                        Some(l) if l.position.version == expected_version => l.position.seq,
                        _ => {
                            return Self::conflict_or_duplicate(
                                actor,
                                expected_version,
                                last.as_ref(),
                                &Self::msg_id(actor, command_id),
                            );
                        }
                    }
                }
            }
        };
        let last_version = encoded.last_version;
        // Values given as `String`s move in (as `&str`s they would be copied again).
        let mut headers = HeaderMap::new();
        headers.insert(MSG_ID_NAME, Self::msg_id(actor, command_id));
        headers.insert(EXPECTED_SEQ_NAME, expected_seq.to_string());
        headers.insert(VERSION_NAME, last_version.to_string());
        headers.insert(FIRST_VERSION_NAME, encoded.first_version.to_string());
        let size = encoded.bytes.len();
        let sent = self
            .js
            .publish_with_headers(subject.clone(), headers, Bytes::from(encoded.bytes))
            .await;
        let result = match sent {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match result {
            Ok(ack) => {
                remember(
                    &self.heads,
                    &subject,
                    Position {
                        version: last_version,
                        seq: ack.sequence,
                    },
                );
                Ok(Appended {
                    first_version: encoded.first_version,
                    last_version,
                    deduplicated: ack.duplicate,
                })
            }
            Err(e) => match e.kind() {
                // A clustered stream reports the same refusal as error 10164, which the
                // client does not classify; recognise it by its text.
                kind if kind == PublishErrorKind::WrongLastSequence
                    || e.to_string().contains("wrong last sequence") =>
                {
                    self.heads.lock().remove(subject.as_str());
                    // On a clustered stream the refusal can come from a competing write that is
                    // proposed but not yet applied: the leader's last message may still be the
                    // one we expected. Wait briefly for the competitor to show.
                    let mut last = self.fetch_last(&subject).await?;
                    for attempt in 1..=10u32 {
                        // Settled once the last commit is not the one we expected — and, for a
                        // first commit (expected 0), once there is one at all.
                        let settled = match last.as_ref() {
                            Some(l) => l.position.version != expected_version,
                            None => expected_version != 0,
                        };
                        if settled {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt))).await;
                        last = self.fetch_last(&subject).await?;
                    }
                    let msg_id = Self::msg_id(actor, command_id);
                    Self::conflict_or_duplicate(actor, expected_version, last.as_ref(), &msg_id)
                }
                PublishErrorKind::StreamNotFound => Err(unavailable("stream not found", e)),
                PublishErrorKind::MaxPayloadExceeded => Err(StoreError::TooLarge {
                    size,
                    limit: self.client.server_info().max_payload,
                }),
                _ => {
                    // Sent (or maybe sent) without an answer: the commit may have landed.
                    self.heads.lock().remove(subject.as_str());
                    Err(StoreError::OutcomeUnknown(format!(
                        "publish to {subject}: {e}"
                    )))
                }
            },
        }
    }

    async fn set_wakeup(&self, actor: &ActorKey, due_ms: u64) -> Result<u64, StoreError> {
        check_namespace(&self.namespace, actor)?;
        self.ensure_connected()?;
        self.wakeups
            .put(
                Self::snapshot_key(actor),
                Bytes::from(super::encode_due(due_ms)),
            )
            .await
            .map_err(|e| unavailable("cannot write the wake-up index", e))
    }

    async fn clear_wakeup(&self, actor: &ActorKey, revision: u64) -> Result<(), StoreError> {
        check_namespace(&self.namespace, actor)?;
        self.ensure_connected()?;
        // A newer entry (another revision) is not ours to remove: a failed check is fine.
        if let Err(e) = self
            .wakeups
            .delete_expect_revision(Self::snapshot_key(actor), Some(revision))
            .await
        {
            tracing::debug!(actor = %actor, error = %e, "wake-up entry not removed");
        }
        Ok(())
    }

    async fn watch_wakeups(&self) -> Result<WakeupStream, StoreError> {
        Ok(wakeup_feed(self.wakeups.clone(), self.namespace.clone()))
    }

    async fn latest_version(&self, actor: &ActorKey) -> Result<u64, StoreError> {
        check_namespace(&self.namespace, actor)?;
        self.ensure_connected()?;
        Ok(self
            .fetch_last(&self.subject(actor))
            .await?
            .map_or(0, |l| l.position.version))
    }

    async fn read_with_errors(
        &self,
        actor: &ActorKey,
        from_version: u64,
    ) -> Result<ReadReport, StoreError> {
        check_namespace(&self.namespace, actor)?;
        self.ensure_connected()?;
        let mut report = ReadReport {
            from_version,
            ..ReadReport::default()
        };
        let subject = self.subject(actor);
        for (position, msg) in self.stored_from(&subject, from_version).await? {
            let at = *position.as_ref().unwrap_or(&msg.seq);
            match position.and_then(|p| decode_commit(actor, p, &msg.payload)) {
                Ok(record) => {
                    self.remember_read(&subject, record.last_version(), msg.seq);
                    report.commits.push(record);
                }
                Err(reason) => report.corrupt.push(CorruptRecord {
                    position: at,
                    reason,
                }),
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
        check_namespace(&self.namespace, actor)?;
        self.ensure_connected()?;
        let subject = self.subject(actor);
        let stored = self.stored_from(&subject, from_version).await?;
        let mut replayer = Replayer::new(actor, from_version, each);
        for (position, msg) in stored {
            match position {
                Ok(position) => {
                    if replayer.record(position, &msg.payload)? {
                        self.remember_read(&subject, position, msg.seq);
                    }
                }
                Err(reason) => replayer.damaged(msg.seq, reason),
            }
        }
        Ok(replayer.finish())
    }

    async fn truncate_before(
        &self,
        actor: &ActorKey,
        version: u64,
    ) -> Result<Truncated, StoreError> {
        check_namespace(&self.namespace, actor)?;
        self.ensure_connected()?;
        self.purge_before(&self.subject(actor), version).await
    }

    async fn history_start(&self, actor: &ActorKey) -> Result<u64, StoreError> {
        check_namespace(&self.namespace, actor)?;
        self.ensure_connected()?;
        let subject = self.subject(actor);
        // From the stream's leader: a replica may not have applied a purge yet.
        let first = direct_get::one_by_one_upto(&self.stream, &subject, 1, u64::MAX, 1)
            .await
            .map_err(|f| {
                StoreError::Unavailable(format!(
                    "cannot read the start of {subject}: {}",
                    match f {
                        ReadFailure::Failed(reason) => reason,
                        ReadFailure::BatchUnsupported | ReadFailure::NoAnswer => {
                            "unexpected answer".to_owned()
                        }
                    }
                ))
            })?;
        Ok(first.first().map_or(1, first_version_of))
    }

    async fn read_log(&self, after: u64, max: usize) -> Result<LogPage, StoreError> {
        self.ensure_connected()?;
        let info = self
            .stream
            .get_info()
            .await
            .map_err(|e| unavailable("cannot read the stream's state", e))?;
        let head = info.state.last_sequence;
        let mut page = LogPage {
            entries: Vec::new(),
            head,
        };
        if after >= head || max == 0 {
            return Ok(page);
        }
        let subject = format!("{}.events.>", self.namespace);
        let mut msgs = None;
        if self.options.replay == ReplayMode::Batched {
            let batch = max.min(self.options.batch_size.max(1));
            match direct_get::batch_once(
                &self.client,
                &self.stream_name,
                &subject,
                after + 1,
                batch,
                self.options.request_timeout,
            )
            .await
            {
                Ok((got, _)) => msgs = Some(got),
                // No replica answered in time: the leader's message get below.
                Err(ReadFailure::BatchUnsupported | ReadFailure::NoAnswer) => {}
                Err(ReadFailure::Failed(reason)) => {
                    return Err(StoreError::Unavailable(format!("log read: {reason}")));
                }
            }
        }
        let msgs = match msgs {
            Some(msgs) => msgs,
            None => direct_get::one_by_one_upto(&self.stream, &subject, after + 1, head, max)
                .await
                .map_err(|f| {
                    StoreError::Unavailable(match f {
                        ReadFailure::Failed(reason) => format!("log read: {reason}"),
                        ReadFailure::BatchUnsupported | ReadFailure::NoAnswer => {
                            "log read: unexpected answer".into()
                        }
                    })
                })?,
        };
        for msg in msgs.iter().take(max) {
            page.entries.push(self.log_entry(msg)?);
        }
        Ok(page)
    }
}

impl JetStreamStore {
    /// Decodes one message of the stream read as part of the log.
    fn log_entry(&self, msg: &RawMsg) -> Result<LogEntry, StoreError> {
        let version = msg
            .headers
            .get(VERSION_HEADER)
            .and_then(|v| v.as_str().parse::<u64>().ok());
        let actor = msg
            .subject
            .strip_prefix(&format!("{}.events.", self.namespace))
            .and_then(|rest| super::actor_of_token(&format!("{}.{rest}", self.namespace)));
        let corrupt = |actor: ActorKey, position: u64, reason: String| StoreError::Corrupt {
            actor,
            position,
            reason,
        };
        match (actor, version) {
            (Some(actor), Some(version)) => decode_commit(&actor, version, &msg.payload)
                .map(|commit| LogEntry {
                    position: msg.seq,
                    commit,
                })
                .map_err(|reason| corrupt(actor, version, reason)),
            (Some(actor), None) => Err(corrupt(
                actor,
                msg.seq,
                format!("message {} has no {VERSION_HEADER} header", msg.seq),
            )),
            (None, _) => Err(StoreError::Unavailable(format!(
                "message {} of {} is on subject {:?}, which names no actor of {}",
                msg.seq, self.stream_name, msg.subject, self.namespace
            ))),
        }
    }
}

#[async_trait]
impl FaultInjection for JetStreamStore {
    async fn inject_raw_commit(
        &self,
        actor: &ActorKey,
        position: u64,
        bytes: Vec<u8>,
    ) -> Result<(), StoreError> {
        check_namespace(&self.namespace, actor)?;
        let subject = self.subject(actor);
        let mut headers = HeaderMap::new();
        headers.insert(VERSION_HEADER, position.to_string().as_str());
        self.js
            .publish_with_headers(subject.clone(), headers, Bytes::from(bytes))
            .await
            .map_err(|e| unavailable("inject", e))?
            .await
            .map_err(|e| unavailable("inject", e))?;
        self.heads.lock().remove(&subject);
        Ok(())
    }

    async fn inject_raw_snapshot(
        &self,
        actor: &ActorKey,
        bytes: Vec<u8>,
    ) -> Result<(), StoreError> {
        check_namespace(&self.namespace, actor)?;
        self.snapshots
            .put(Self::snapshot_key(actor), Bytes::from(bytes))
            .await
            .map_err(|e| unavailable("inject", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions_are_checked() {
        assert!(check_server_version("2.15.1").is_ok());
        assert!(check_server_version("2.11.0").is_ok());
        assert!(check_server_version("2.12.0-RC.3").is_ok());
        assert!(check_server_version("3.0.0").is_ok());
        match check_server_version("2.9.25") {
            Err(e @ StoreError::ServerTooOld { .. }) => assert_eq!(
                e.to_string(),
                "nats-server 2.9.25 is too old: Aether needs 2.11.0 or newer"
            ),
            other => panic!("2.9 must be refused, got {other:?}"),
        }
        assert!(check_server_version("2.10.25").is_err());
    }
}
