//! The cluster: membership, the leader lease, the shard map — who owns which shard.
//!
//! A node joins by connecting to NATS, writing its [`NodeRecord`] to the registry and
//! heartbeating. All coordination state lives in three KV buckets of the namespace:
//!
//! | bucket | key | written by | holds |
//! |---|---|---|---|
//! | `<ns>_nodes` | node id | each node, every heartbeat | [`NodeRecord`] |
//! | `<ns>_leader` | `leader` | the leader, every heartbeat | the lease: node and term |
//! | `<ns>_shards` | `map` | the leader, by compare-and-set | the [`ShardMap`] |
//!
//! # Leader lease
//!
//! The leader bucket's `max_age` is the lease length, with limit markers, so a lease that is not
//! renewed expires on the server and watchers see a `Purge`. Nodes acquire the lease with
//! `create` (which fails while it exists) and the leader renews it with `update` on the last
//! revision. The revision of the successful `create` is the **term**: it only grows, and the
//! leader writes it into everything it publishes. A leader acts only while its last successful
//! renewal is less than two thirds of a lease old, so it stops acting before the server can
//! expire its lease and elect another; a leader that was paused (SIGSTOP) past its lease finds,
//! when resumed, that it must not act — and if it tried, the map's compare-and-set and its term
//! check would refuse it.
//!
//! # Failure detection and the shard map
//!
//! Liveness runs on core NATS, not on the registry bucket (see `cluster/liveness.rs`): every node hears
//! every node's beats, the acting leader grants them, and a node whose beats go ungranted
//! fences itself. Every node also watches the registry and notes when each record last
//! changed, by its own clock; a beat or a record change both count as hearing from a node.
//! Four times per heartbeat the leader declares nodes silent for the failure timeout `Failed`,
//! and when the set of alive nodes differs from the current map's, publishes a new map
//! (epoch + 1, its term) computed by `cluster/assignment.rs` — every shard assigned, each to an alive
//! node. Nodes watch the map; the shards it gives this node tell routing which shards to serve.
//!
//! Nothing here waits on a stalled raft group longer than it must: lease rounds, the leader's
//! duties, record writes and the handoff run apart and bounded, reads any replica may answer
//! are asked again after 400 ms, and while no watch can be made the registry and the map are
//! read directly.

mod assignment;
mod config;
mod errors;
mod events;
mod handoff;
mod liveness;
mod membership;
mod settle;
mod shard_map;
mod view;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use config::ClusterConfig;
pub use errors::ClusterError;
pub use events::ClusterEvent;
pub use handoff::HandoffStats;
pub use membership::{NodeRecord, NodeStatus, ShardSet};
pub use settle::NotSettled;
pub use shard_map::ShardMap;
pub use view::{ClusterView, LeaderInfo, RegistryChange};

use self::membership::{Change, Members};
use self::view::read_entry;
use crate::names::{NameKind, Namespace, validate_name};
use crate::routing::{Dispatch, OwnedShards, Owner, Placement, shard_of};
use crate::wire::codec;

const LEADER_KEY: &str = "leader";
const MAP_KEY: &str = "map";

/// The lease record stored under [`LEADER_KEY`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LeaderRecord {
    pub node: String,
    pub term: u64,
}

/// This node's lease while it is leader.
#[derive(Debug, Clone, Copy)]
struct Lease {
    term: u64,
    revision: u64,
    renewed_at: Instant,
    /// When this node learnt it holds the lease (after the `create` returned).
    acquired_at: Instant,
}

/// Where an actor lives, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The actor's shard: `shard_of(namespace, kind, id)`.
    pub shard: u32,
    /// The shard's owner in the current map (`None` before the first map).
    pub owner: Option<String>,
    /// The epoch of that map.
    pub epoch: u64,
    /// A sentence saying why.
    pub reason: String,
}

/// A node as seen in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// The node's record.
    pub record: NodeRecord,
    /// How long ago this node last heard from it.
    pub last_heard: Duration,
}

/// What a leader can tell about its own view of the registry (see `Inner::lead`).
#[derive(Default)]
struct Sight {
    /// Its own heartbeats are not coming back through the watch.
    blind: bool,
    /// When they came back after the last blind spell.
    recovered: Option<Instant>,
}

struct Buckets {
    nodes: kv::Store,
    leader: kv::Store,
    shards: kv::Store,
}

struct Inner {
    config: ClusterConfig,
    namespace: Namespace,
    shard_count: u32,
    client: async_nats::Client,
    buckets: Buckets,
    started_ms: u64,
    beat: AtomicU64,
    leaving: AtomicBool,
    registry: Mutex<Members>,
    map: RwLock<Option<Arc<ShardMap>>>,
    leader: RwLock<Option<LeaderInfo>>,
    lease: Mutex<Option<Lease>>,
    events: broadcast::Sender<ClusterEvent>,
    /// The shards the latest adopted map gives this node.
    owned: watch::Sender<Arc<OwnedShards>>,
    /// The shards this node serves right now: `owned` minus those still being handed over to
    /// it (see [`handoff`]). Routing subscribes to exactly these; placement says `Local` for
    /// exactly these.
    serving: watch::Sender<Arc<OwnedShards>>,
    /// The map epoch this node's handoff works under, and the shards that may have live
    /// activations here (serving or draining): advertised in its [`NodeRecord`].
    handoff_epoch: AtomicU64,
    held: Mutex<ShardSet>,
    /// Bumped on every registry change, to wake handoffs waiting for releases.
    registry_rev: watch::Sender<u64>,
    /// The registry view is current: the watch delivered everything the bucket held (no
    /// backlog), or a direct read of every known record succeeded.
    registry_synced: AtomicBool,
    /// No beat of this node was granted for (nearly) a failure timeout: the leader may declare
    /// it failed and give its shards away at any moment, so it serves nothing — local callers
    /// included — until a beat is granted again. See [`liveness`].
    fenced: watch::Sender<bool>,
    /// Whether this node (as leader) hears itself (its beats or records), and since when
    /// again after it did not.
    sight: Mutex<Sight>,
    /// When the last beat that the leader granted was sent, in milliseconds since `clock`
    /// (see `cluster/liveness.rs`).
    last_beat_ms: AtomicU64,
    /// Asks the record writer to write this node's record now (see `liveness`).
    write_record: tokio::sync::Notify,
    /// Held while a fenced node rejoins.
    rejoining: tokio::sync::Mutex<()>,
    /// The node's monotonic clock origin.
    clock: Instant,
    handoff: handoff::Counters,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// This node's membership in the cluster. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

/// Connects to the NATS servers at `urls` (comma-separated), trying again until `patience`
/// has passed while none accepts connections (a node may start before its servers do, as in a
/// Compose file whose `depends_on` does not wait for readiness).
pub(crate) async fn connect(
    urls: &str,
    name: &str,
    timeout: Duration,
    patience: Duration,
) -> Result<async_nats::Client, ClusterError> {
    let servers: Vec<&str> = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    let deadline = Instant::now() + patience;
    loop {
        let attempt = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(timeout)
            .request_timeout(Some(timeout))
            .connect(servers.as_slice())
            .await;
        match attempt {
            Ok(client) => return Ok(client),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(%urls, error = %e, "NATS not reachable yet; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => {
                return Err(ClusterError::Unreachable {
                    urls: urls.to_owned(),
                    reason: e.to_string(),
                });
            }
        }
    }
}

/// Opens a bucket, creating it if needed; retries until `deadline` (a fresh NATS cluster may
/// still be electing its JetStream meta leader).
async fn bucket(
    js: &async_nats::jetstream::Context,
    config: kv::Config,
    deadline: Instant,
) -> Result<kv::Store, ClusterError> {
    loop {
        let attempt =
            match js.get_key_value(config.bucket.clone()).await {
                Ok(store) => Ok(store),
                Err(_) => js.create_key_value(config.clone()).await.map_err(|e| {
                    ClusterError::Coordination {
                        bucket: config.bucket.clone(),
                        reason: format!("cannot open: {e}"),
                    }
                }),
            };
        match attempt {
            Ok(store) => return Ok(store),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Makes a watch within `bound` — making one needs the JetStream meta leader, which may be
/// re-electing — and says why when it could not (the caller then reads `what` directly).
async fn bounded_watch<W, E: std::fmt::Display>(
    what: &str,
    bound: Duration,
    make: impl std::future::Future<Output = Result<W, E>>,
) -> Option<W> {
    match tokio::time::timeout(bound, make).await {
        Ok(Ok(watch)) => Some(watch),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot watch {what}; reading it directly");
            None
        }
        Err(_) => {
            tracing::warn!("cannot watch {what} in time; reading it directly");
            None
        }
    }
}

impl Cluster {
    /// Joins the cluster: opens the coordination buckets, registers this node, starts
    /// heartbeats, the leader election and the map watch, and waits (up to the join timeout)
    /// for a shard map that includes this node.
    pub(crate) async fn join(
        config: ClusterConfig,
        client: async_nats::Client,
        shard_count: u32,
    ) -> Result<Cluster, ClusterError> {
        let namespace = Namespace::new(&config.namespace)?;
        validate_name(NameKind::NodeId, &config.node_id)?;
        crate::store::check_server_version(&client.server_info().version)?;
        let deadline = Instant::now() + config.join_timeout;
        let js = async_nats::jetstream::new(client.clone());
        let replicas = config.replicas.max(1);
        let nodes = bucket(
            &js,
            kv::Config {
                bucket: format!("{namespace}_nodes"),
                history: 1,
                max_age: config.failure_timeout * 10,
                num_replicas: replicas,
                ..Default::default()
            },
            deadline,
        )
        .await?;
        let leader = bucket(
            &js,
            kv::Config {
                bucket: format!("{namespace}_leader"),
                history: 1,
                max_age: config.lease,
                limit_markers: Some(config.lease),
                num_replicas: replicas,
                ..Default::default()
            },
            deadline,
        )
        .await?;
        let shards = bucket(
            &js,
            kv::Config {
                bucket: format!("{namespace}_shards"),
                history: 1,
                num_replicas: replicas,
                ..Default::default()
            },
            deadline,
        )
        .await?;
        let (owned, _) = watch::channel(Arc::new(OwnedShards::default()));
        let (serving, _) = watch::channel(Arc::new(OwnedShards::default()));
        let (registry_rev, _) = watch::channel(0u64);
        let (stop, _) = watch::channel(false);
        let cluster = Cluster {
            inner: Arc::new(Inner {
                namespace,
                shard_count,
                client,
                buckets: Buckets {
                    nodes,
                    leader,
                    shards,
                },
                started_ms: crate::wire::now_ms(),
                beat: AtomicU64::new(0),
                leaving: AtomicBool::new(false),
                registry: Mutex::new(Members::default()),
                map: RwLock::new(None),
                leader: RwLock::new(None),
                lease: Mutex::new(None),
                events: broadcast::channel(4096).0,
                owned,
                serving,
                handoff_epoch: AtomicU64::new(0),
                held: Mutex::new(ShardSet::default()),
                registry_rev,
                registry_synced: AtomicBool::new(false),
                fenced: watch::channel(false).0,
                sight: Mutex::new(Sight::default()),
                last_beat_ms: AtomicU64::new(0),
                rejoining: tokio::sync::Mutex::new(()),
                write_record: tokio::sync::Notify::new(),
                clock: Instant::now(),
                handoff: handoff::Counters::default(),
                stop,
                tasks: Mutex::new(Vec::new()),
                config,
            }),
        };
        cluster
            .inner
            .heartbeat()
            .await
            .map_err(|reason| ClusterError::Coordination {
                bucket: format!("{}_nodes", cluster.inner.namespace),
                reason: format!("cannot register this node: {reason}"),
            })?;
        let tasks = vec![
            tokio::spawn(Arc::clone(&cluster.inner).listen_beats()),
            tokio::spawn(Arc::clone(&cluster.inner).heartbeats()),
            tokio::spawn(Arc::clone(&cluster.inner).watch_registry()),
            tokio::spawn(Arc::clone(&cluster.inner).watch_map()),
            tokio::spawn(Arc::clone(&cluster.inner).elect()),
            tokio::spawn(Arc::clone(&cluster.inner).leading()),
        ];
        cluster.inner.tasks.lock().extend(tasks);
        let me = cluster.inner.config.node_id.clone();
        let mut owned = cluster.inner.owned.subscribe();
        loop {
            if let Some(map) = cluster.shard_map() {
                if map.shard_count() != shard_count {
                    cluster.stop();
                    return Err(ClusterError::ShardCountMismatch {
                        cluster: map.shard_count(),
                        node: shard_count,
                    });
                }
                if map.nodes.contains(&me) {
                    break;
                }
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                cluster.stop();
                return Err(ClusterError::NotAssigned {
                    node: me,
                    waited: cluster.inner.config.join_timeout,
                });
            }
            let _ =
                tokio::time::timeout(remaining.min(Duration::from_millis(100)), owned.changed())
                    .await;
        }
        tracing::info!(node = %me, namespace = %cluster.inner.namespace, "joined the cluster");
        Ok(cluster)
    }

    /// The settings this node joined with.
    pub fn config(&self) -> &ClusterConfig {
        &self.inner.config
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.config.node_id
    }

    /// The namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.inner.namespace
    }

    /// The current leader as this node knows it.
    pub fn leader(&self) -> Option<LeaderInfo> {
        self.inner.leader.read().clone()
    }

    /// Whether this node holds the lease and may act as leader right now.
    pub fn is_leader(&self) -> bool {
        self.inner.acting_term().is_some()
    }

    /// The nodes in the registry, as this node sees them.
    pub fn topology(&self) -> Vec<NodeView> {
        let now = Instant::now();
        self.inner
            .registry
            .lock()
            .nodes
            .values()
            .map(|s| NodeView {
                record: s.record.clone(),
                last_heard: now.duration_since(s.at),
            })
            .collect()
    }

    /// The latest shard map this node has seen.
    pub fn shard_map(&self) -> Option<Arc<ShardMap>> {
        self.inner.map.read().clone()
    }

    /// Where actor `id` of type `A` lives, and why.
    pub fn locate<A: crate::actor::EventSourcedActor>(&self, id: &str) -> Location {
        self.locate_kind(A::KIND, id)
    }

    /// Where actor `id` of the kind named `kind` lives, and why (for tools that know kinds
    /// by name; code that has the actor's type uses [`locate`](Self::locate)).
    pub fn locate_kind(&self, kind: &str, id: &str) -> Location {
        let shard = shard_of(
            self.inner.namespace.as_str(),
            kind,
            id,
            self.inner.shard_count,
        );
        let map = self.shard_map();
        let owner = map.as_ref().and_then(|m| m.owner(shard)).map(str::to_owned);
        let epoch = map.as_ref().map_or(0, |m| m.epoch);
        let reason = match &owner {
            Some(node) => format!(
                "{kind}/{id} hashes to shard {shard} of {}; the map of epoch {epoch} (term {}) \
                 assigns shard {shard} to {node}: on the hash ring of the alive nodes, its \
                 virtual node is the first at or after the shard's position",
                self.inner.shard_count,
                map.as_ref().map_or(0, |m| m.term)
            ),
            None => format!("{kind}/{id} hashes to shard {shard}; no shard map is published yet"),
        };
        Location {
            shard,
            owner,
            epoch,
            reason,
        }
    }

    /// Subscribes to cluster events from now on.
    pub fn events(&self) -> broadcast::Receiver<ClusterEvent> {
        self.inner.events.subscribe()
    }

    test_util! {
        /// The shards the latest map gives this node, updated with every map.
        pub fn owned_shards(&self) -> watch::Receiver<Arc<OwnedShards>> {
            self.inner.owned.subscribe()
        }
    }

    test_util! {
        /// The shards this node serves now (what routing subscribes to): the owned shards
        /// minus those whose handoff to this node is still in progress. Its epoch is the latest
        /// map whose shards are all served.
        pub fn serving_shards(&self) -> watch::Receiver<Arc<OwnedShards>> {
            self.inner.serving.subscribe()
        }
    }

    /// Starts the handoff task, which follows the shard map: it drains the shards this node
    /// loses through `dispatch`, records the release, and serves gained shards once their
    /// previous owners have released them. The runtime calls this once, after its actor host
    /// exists; until then the node serves nothing.
    pub(crate) fn start_handoff(&self, dispatch: Arc<dyn Dispatch>) {
        let task = tokio::spawn(handoff::run(Arc::clone(&self.inner), dispatch));
        self.inner.tasks.lock().push(task);
    }

    /// Handoff counters of this node.
    pub fn handoff_stats(&self) -> HandoffStats {
        self.inner.handoff.snapshot(&self.inner)
    }

    /// The placement view routing asks "who owns this shard".
    pub(crate) fn placement(&self) -> Arc<dyn Placement> {
        Arc::new(ClusterPlacement {
            inner: Arc::clone(&self.inner),
        })
    }

    /// The NATS connection.
    pub(crate) fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// Leaves gracefully: marks this node `Leaving`, lets the leader (or itself, when leader)
    /// publish a map without it, hands every shard off (running turns finish, actors are
    /// snapshotted and stopped, the release is recorded so the new owners serve at once),
    /// resigns the lease, and stops. Waits at most `timeout` for all of that.
    pub(crate) async fn leave(&self, timeout: Duration) {
        let inner = &self.inner;
        inner.leaving.store(true, Ordering::Release);
        let _ = inner.heartbeat().await;
        let me = inner.config.node_id.clone();
        let deadline = Instant::now() + timeout;
        loop {
            if inner.acting_term().is_some() {
                inner.lead().await;
            }
            // Done when a map without this node is out and this node has drained every shard
            // under it, or when no one else could take over.
            let gone = match self.shard_map() {
                None => true,
                Some(m) if m.nodes.len() == 1 && m.nodes.contains(&me) => true,
                Some(m) => {
                    !m.nodes.contains(&me)
                        && inner.handoff_epoch.load(Ordering::Acquire) >= m.epoch
                        && inner.held.lock().is_empty()
                }
            };
            if gone || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        inner.resign().await;
        self.stop();
        if inner.held.lock().is_empty() {
            let _ = inner.buckets.nodes.delete(&me).await;
            tracing::info!(node = %me, "left the cluster");
        } else {
            // Shards still draining: keep the record (now silent) so others wait for it to
            // time out instead of taking the shards while turns may still run here.
            tracing::warn!(node = %me, "left the cluster before every shard was drained");
        }
    }

    /// Stops every background task at once: heartbeats, watches, election, handoff. To the
    /// others this looks like a crash (a lease still held expires after its length).
    pub(crate) fn stop(&self) {
        let _ = self.inner.stop.send(true);
        for task in self.inner.tasks.lock().drain(..) {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.inner.config.node_id)
            .field("namespace", &self.inner.namespace)
            .finish()
    }
}

struct ClusterPlacement {
    inner: Arc<Inner>,
}

impl Placement for ClusterPlacement {
    fn owner(&self, shard: u32) -> Owner {
        if *self.inner.fenced.borrow() || self.inner.beat_lease_expired() {
            // Cut off: another node may own every shard by now; serve none of them here. (The
            // lease is checked here too, not only by the fencing task: a process resumed after
            // a pause may run a request before that task.)
            return Owner::Unassigned;
        }
        if self.inner.serving.borrow().shards.contains(&shard) {
            return Owner::Local;
        }
        let map = self.inner.map.read();
        match map.as_ref().and_then(|m| m.owner(shard)) {
            // Ours in the map, but its handoff is not done: nobody serves it yet.
            Some(node) if node == self.inner.config.node_id => Owner::Unassigned,
            Some(node) => Owner::Remote(node.to_owned()),
            None => Owner::Unassigned,
        }
    }
}

impl Inner {
    fn emit(&self, event: ClusterEvent) {
        tracing::info!(node = %self.config.node_id, ?event, "cluster event");
        let _ = self.events.send(event);
    }

    fn record(&self, status: membership::NodeStatus) -> NodeRecord {
        NodeRecord {
            node: self.config.node_id.clone(),
            started_ms: self.started_ms,
            capacity: self.config.capacity,
            status,
            beat: self.beat.fetch_add(1, Ordering::Relaxed),
            handoff_epoch: self.handoff_epoch.load(Ordering::Acquire),
            held: self.held.lock().clone(),
        }
    }

    async fn heartbeat(&self) -> Result<(), String> {
        let status = if self.leaving.load(Ordering::Acquire) {
            NodeStatus::Leaving
        } else {
            NodeStatus::Alive
        };
        let bytes =
            codec::encode("node record", &self.record(status)).map_err(|e| e.to_string())?;
        self.buckets
            .nodes
            .put(&self.config.node_id, Bytes::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn watch_registry(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        // Every node (this one included) rewrites its record each heartbeat, so a watch that
        // delivers nothing for a failure timeout is stuck — typically its consumer lived on a
        // server that went away. Make it again rather than trust its silence.
        let quiet = self.config.failure_timeout.max(self.config.heartbeat * 2);
        loop {
            // Making a watch needs the JetStream meta leader, which may be re-electing (4-9 s
            // when its server is cut off): meanwhile, read the known records directly.
            let watch = tokio::select! {
                w = bounded_watch("the node registry", quiet, self.buckets.nodes.watch_with_history(">")) => w,
                _ = stop.changed() => return,
            };
            let Some(mut entries) = watch else {
                tokio::select! {
                    () = self.poll_registry() => continue,
                    _ = stop.changed() => return,
                }
            };
            self.registry_synced.store(false, Ordering::Release);
            loop {
                let entry = tokio::select! {
                    e = tokio::time::timeout(quiet, entries.next()) => match e {
                        Ok(e) => e,
                        Err(_) => {
                            tracing::warn!(?quiet, "the node registry watch went quiet; watching again");
                            None
                        }
                    },
                    _ = stop.changed() => return,
                };
                let Some(Ok(entry)) = entry else {
                    self.registry_synced.store(false, Ordering::Release);
                    break;
                };
                self.registry_entry(&entry);
                if entry.delta == 0 {
                    self.registry_synced.store(true, Ordering::Release);
                }
            }
        }
    }

    /// Applies one registry entry (from the watch or a direct read).
    fn registry_entry(&self, entry: &kv::Entry) {
        let change = match entry.operation {
            kv::Operation::Put => match codec::decode::<NodeRecord>("node record", &entry.value) {
                Ok(record) => self
                    .registry
                    .lock()
                    .put(record, entry.revision, Instant::now()),
                Err(e) => {
                    tracing::warn!(key = %entry.key, error = %e, "undecodable node record ignored");
                    None
                }
            },
            kv::Operation::Delete | kv::Operation::Purge => self.registry.lock().remove(&entry.key),
        };
        self.registry_rev.send_modify(|rev| *rev += 1);
        match change {
            Some(Change::Joined(node)) => self.emit(ClusterEvent::NodeJoined { node }),
            Some(Change::Left(node)) => self.emit(ClusterEvent::NodeLeft { node }),
            Some(Change::Failed(node)) => self.emit(ClusterEvent::NodeFailed { node }),
            None => {}
        }
    }

    /// One round of reading every known node's record directly (any replica answers), for
    /// while no watch can be made; then a pause of a heartbeat. Known: in the registry or in
    /// the adopted map. An unchanged record is no news (see [`Members::put`]). A round that
    /// read every record leaves the view as current as a synced watch would.
    async fn poll_registry(&self) {
        let mut known: Vec<String> = self.registry.lock().nodes.keys().cloned().collect();
        if let Some(map) = self.map.read().as_ref() {
            known.extend(map.nodes.iter().cloned());
        }
        known.sort();
        known.dedup();
        let mut complete = true;
        for node in known {
            match read_entry(&self.buckets.nodes, &node).await {
                Ok(Some(entry)) => self.registry_entry(&entry),
                Ok(None) => {}
                Err(_) => complete = false,
            }
        }
        self.registry_synced.store(complete, Ordering::Release);
        if complete {
            self.registry_rev.send_modify(|rev| *rev += 1);
        }
        tokio::time::sleep(self.config.heartbeat).await;
    }

    async fn watch_map(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        loop {
            // Maps change rarely, so silence proves nothing: every few heartbeats, check the
            // bucket directly and watch again if it holds a map this watch never delivered.
            let check_every = self.config.failure_timeout.max(self.config.heartbeat * 2);
            // As for the registry: while no watch can be made, read the map directly.
            let watch = tokio::select! {
                w = bounded_watch("the shard map", check_every, self.buckets.shards.watch_with_history(MAP_KEY)) => w,
                _ = stop.changed() => return,
            };
            let Some(mut entries) = watch else {
                tokio::select! {
                    () = async {
                        self.adopt_stored_map().await;
                        tokio::time::sleep(self.config.heartbeat).await;
                    } => continue,
                    _ = stop.changed() => return,
                }
            };
            loop {
                let entry = tokio::select! {
                    e = tokio::time::timeout(check_every, entries.next()) => match e {
                        Ok(e) => e,
                        Err(_) => {
                            if self.adopt_stored_map().await {
                                tracing::warn!("the shard map watch missed a map; watching again");
                                break;
                            }
                            continue;
                        }
                    },
                    _ = stop.changed() => return,
                };
                let Some(Ok(entry)) = entry else { break };
                if entry.operation != kv::Operation::Put {
                    continue;
                }
                match ShardMap::decode(&entry.value) {
                    Ok(map) => self.adopt(map),
                    Err(e) => tracing::error!(error = %e, "undecodable shard map ignored"),
                }
            }
        }
    }

    /// Adopts the bucket's map if it is newer than the one adopted (a watch missed it, or none
    /// can be made); returns whether it was.
    async fn adopt_stored_map(&self) -> bool {
        let Ok(Some(entry)) = read_entry(&self.buckets.shards, MAP_KEY).await else {
            return false;
        };
        if entry.operation != kv::Operation::Put {
            return false;
        }
        let Ok(stored) = ShardMap::decode(&entry.value) else {
            return false;
        };
        let adopted = self.map.read().as_ref().map_or(0, |m| m.epoch);
        let newer = stored.epoch > adopted;
        if newer {
            self.adopt(stored);
        }
        newer
    }

    /// Takes a newly published map: newer epochs only, never a lower term.
    fn adopt(&self, map: ShardMap) {
        let previous = self.map.read().clone();
        if let Some(prev) = &previous
            && (map.epoch <= prev.epoch || map.term < prev.term)
        {
            return;
        }
        let map = Arc::new(map);
        *self.map.write() = Some(Arc::clone(&map));
        for shard in 0..map.shard_count() {
            let new = map.owner(shard);
            let old = previous.as_ref().and_then(|p| p.owner(shard));
            if let Some(node) = new
                && old != new
            {
                let _ = self.events.send(ClusterEvent::ShardAssigned {
                    shard,
                    node: node.to_owned(),
                    epoch: map.epoch,
                });
            }
        }
        tracing::info!(epoch = map.epoch, term = map.term, nodes = ?map.nodes, "shard map adopted");
        let mine: std::collections::BTreeSet<u32> =
            map.shards_of(&self.config.node_id).into_iter().collect();
        // Ownership is continuous only through maps this node saw: after a gap in epochs (a
        // map it missed may have given its shards to others), every shard starts afresh.
        let gap = previous.as_ref().is_some_and(|p| map.epoch > p.epoch + 1);
        let before = self.owned.borrow().clone();
        let owned_since = mine
            .iter()
            .map(|&s| {
                let since = match before.owned_since.get(&s) {
                    Some(&since) if !gap && before.shards.contains(&s) => since,
                    _ => map.epoch,
                };
                (s, since)
            })
            .collect();
        // send_replace: the value must be stored even while nobody listens yet.
        self.owned.send_replace(Arc::new(OwnedShards {
            epoch: map.epoch,
            shards: mine,
            owned_since,
        }));
    }

    /// The term this node may act under right now, if it is leader.
    fn acting_term(&self) -> Option<u64> {
        let lease = (*self.lease.lock())?;
        let valid_for = self.config.lease * 2 / 3;
        (Instant::now() < lease.renewed_at + valid_for).then_some(lease.term)
    }

    /// The election loop.
    ///
    /// - The leader renews its lease every heartbeat (at least three times per lease); its
    ///   duties run apart, in [`Inner::leading`].
    /// - A follower tries to acquire the lease when the key is deleted (a resignation) or
    ///   expires (the server's `Purge` marker), and otherwise only once per lease length (in
    ///   case a watch event was missed): a failed `create` is not free on a replicated bucket.
    ///   Puts by the leader only refresh who the leader is, with no KV call.
    async fn elect(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let check_every = (self.config.heartbeat / 4).max(Duration::from_millis(10));
        let mut tick = tokio::time::interval(check_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Making a watch needs the JetStream meta leader, which may be re-electing: bounded, so
        // the lease is renewed meanwhile (the follower's periodic attempts cover the gap).
        let watch_bound = (self.config.lease / 3).max(Duration::from_millis(10));
        let mut changes = bounded_watch(
            "the lease",
            watch_bound,
            self.buckets.leader.watch(LEADER_KEY),
        )
        .await;
        let mut last_renewal: Option<Instant> = None;
        let mut last_attempt: Option<Instant> = None;
        let mut last_watch_attempt = Instant::now();
        // Renew at least three times per lease, whatever the heartbeat.
        let renew_every = self.config.heartbeat.min(self.config.lease / 3);
        loop {
            // A lost watch (its stream ended, or it could not be made) is made again.
            if changes.is_none() && last_watch_attempt.elapsed() >= self.config.heartbeat {
                last_watch_attempt = Instant::now();
                changes = bounded_watch(
                    "the lease",
                    watch_bound,
                    self.buckets.leader.watch(LEADER_KEY),
                )
                .await;
            }
            let vacated = tokio::select! {
                _ = tick.tick() => false,
                entry = async {
                    match changes.as_mut() {
                        Some(w) => w.next().await,
                        None => std::future::pending().await,
                    }
                } => match entry {
                    Some(Ok(entry)) if entry.operation == kv::Operation::Put => {
                        self.observe_leader(&entry);
                        // Someone holds the lease: the next attempt can wait a lease length.
                        last_attempt = Some(Instant::now());
                        false
                    }
                    Some(Ok(_)) => true,
                    Some(Err(_)) | None => {
                        changes = None;
                        false
                    }
                },
                _ = stop.changed() => return,
            };
            let leader = self.lease.lock().is_some();
            // Each round is bounded by a third of a lease: while the lease bucket's raft group
            // re-elects, a request waits for nothing, and the next round (on a group that
            // has its leader again) should not wait behind it.
            let bound = self.config.lease / 3;
            if leader {
                if last_renewal.is_none_or(|at| at.elapsed() >= renew_every) {
                    last_renewal = Some(Instant::now());
                    let _ = tokio::time::timeout(bound, self.step()).await;
                }
            } else if vacated || last_attempt.is_none_or(|at| at.elapsed() >= self.config.lease) {
                last_attempt = Some(Instant::now());
                last_renewal = Some(Instant::now());
                let _ = tokio::time::timeout(bound, self.step()).await;
            }
        }
    }

    /// Notes the leader named by a put on the lease key (no KV call).
    fn observe_leader(&self, entry: &kv::Entry) {
        let Ok(record) = codec::decode::<LeaderRecord>("leader record", &entry.value) else {
            return;
        };
        if record.term == 0 || record.node == self.config.node_id {
            // A lease being recorded (term follows in the next put), or our own renewal.
            return;
        }
        let info = LeaderInfo {
            node: record.node,
            term: record.term,
        };
        let changed = self.leader.read().as_ref() != Some(&info);
        if changed {
            *self.leader.write() = Some(info.clone());
            self.emit(ClusterEvent::LeaderElected {
                node: info.node,
                term: info.term,
            });
        }
    }

    /// One round of the election: renew or acquire the lease.
    async fn step(&self) {
        let lease = *self.lease.lock();
        match lease {
            Some(lease) => self.renew(lease).await,
            // A node on its way out does not take the lead.
            None if self.leaving.load(Ordering::Acquire) => {}
            None => self.acquire().await,
        }
    }

    /// The leader's duties, four times per heartbeat while this node acts as leader — on a
    /// task of their own: a map or registry write stuck behind a raft election must not hold
    /// back the lease renewals of [`Inner::elect`] (the lease is what lets it grant beats).
    async fn leading(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let check_every = (self.config.heartbeat / 4).max(Duration::from_millis(10));
        let mut tick = tokio::time::interval(check_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            if self.acting_term().is_some() && !self.leaving.load(Ordering::Acquire) {
                self.lead().await;
            }
        }
    }

    fn leader_bytes(&self, term: u64) -> Bytes {
        Bytes::from(
            codec::encode(
                "leader record",
                &LeaderRecord {
                    node: self.config.node_id.clone(),
                    term,
                },
            )
            .unwrap_or_default(),
        )
    }

    async fn acquire(&self) {
        let sent = Instant::now();
        match self
            .buckets
            .leader
            .create(LEADER_KEY, self.leader_bytes(0))
            .await
        {
            Ok(term) => {
                // Record the term in the value, so readers see it.
                match self
                    .buckets
                    .leader
                    .update(LEADER_KEY, self.leader_bytes(term), term)
                    .await
                {
                    Ok(revision) => {
                        *self.lease.lock() = Some(Lease {
                            term,
                            revision,
                            renewed_at: sent,
                            acquired_at: Instant::now(),
                        });
                        *self.leader.write() = Some(LeaderInfo {
                            node: self.config.node_id.clone(),
                            term,
                        });
                        self.emit(ClusterEvent::LeaderElected {
                            node: self.config.node_id.clone(),
                            term,
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "won the lease but could not record the term")
                    }
                }
            }
            Err(_) => {
                if let Ok(Some(entry)) = read_entry(&self.buckets.leader, LEADER_KEY).await
                    && entry.operation == kv::Operation::Put
                    && let Ok(record) = codec::decode::<LeaderRecord>("leader record", &entry.value)
                {
                    let info = LeaderInfo {
                        term: if record.term == 0 {
                            entry.revision
                        } else {
                            record.term
                        },
                        node: record.node,
                    };
                    let changed = self.leader.read().as_ref() != Some(&info);
                    if changed {
                        *self.leader.write() = Some(info.clone());
                        self.emit(ClusterEvent::LeaderElected {
                            node: info.node,
                            term: info.term,
                        });
                    }
                }
            }
        }
    }

    async fn renew(&self, lease: Lease) {
        tracing::trace!(node = %self.config.node_id, revision = lease.revision, "renewing the lease");
        let sent = Instant::now();
        match self
            .buckets
            .leader
            .update(LEADER_KEY, self.leader_bytes(lease.term), lease.revision)
            .await
        {
            Ok(revision) => {
                *self.lease.lock() = Some(Lease {
                    revision,
                    renewed_at: sent,
                    ..lease
                });
            }
            Err(e) => {
                let lost = matches!(e.kind(), kv::UpdateErrorKind::WrongLastRevision)
                    || sent.duration_since(lease.renewed_at) >= self.config.lease * 2 / 3;
                if lost {
                    self.lose(lease.term);
                } else {
                    tracing::warn!(error = %e, "lease renewal failed; retrying");
                }
            }
        }
    }

    fn lose(&self, term: u64) {
        if self.lease.lock().take().is_some() {
            self.emit(ClusterEvent::LeadershipLost {
                node: self.config.node_id.clone(),
                term,
            });
        }
    }

    async fn resign(&self) {
        let lease = self.lease.lock().take();
        if let Some(lease) = lease {
            let _ = self
                .buckets
                .leader
                .delete_expect_revision(LEADER_KEY, Some(lease.revision))
                .await;
            self.emit(ClusterEvent::LeadershipLost {
                node: self.config.node_id.clone(),
                term: lease.term,
            });
        }
    }

    /// The leader's duties for one tick: declare silent nodes failed, publish a new map when
    /// the alive set changed.
    async fn lead(&self) {
        let Some(term) = self.acting_term() else {
            return;
        };
        let now = Instant::now();
        let timeout = self.config.failure_timeout;
        let (silent, mut alive) = {
            let registry = self.registry.lock();
            // This node's own beats and records come back the same ways as everyone's. If
            // neither does, what is silent is its own view, not the other nodes: declare
            // nobody failed and publish nothing until it recovers — and then give every node
            // a full failure timeout from the recovery, since nobody could be heard meanwhile.
            let mut sight = self.sight.lock();
            let Some(acquired_at) = self.lease.lock().map(|l| l.acquired_at) else {
                return;
            };
            if !registry.heard_within(&self.config.node_id, now, timeout) {
                if !sight.blind {
                    tracing::warn!(
                        "own heartbeats not seen in the registry; not judging other nodes"
                    );
                    sight.blind = true;
                }
                return;
            }
            if sight.blind {
                sight.blind = false;
                sight.recovered = Some(now);
                tracing::info!("own heartbeats seen again; judging other nodes from now on");
            }
            // A new leader's grace (see `cluster/liveness.rs`): the previous leader granted beats until
            // a third of a lease before this one could acquire, maybe some this one never
            // heard; count every node's silence from then at the earliest.
            let granted_until =
                acquired_at.checked_sub(self.config.lease - self.config.lease * 2 / 3);
            let from = sight.recovered.max(granted_until);
            (
                registry.silent(now, timeout, from),
                registry.alive(now, timeout, from),
            )
        };
        // Declared only by a leader still acting, and only over the very record found silent:
        // a record written meanwhile wins (compare-and-set on its revision). Bounded, all at
        // once: the registry's bucket may be stalled (a raft election), and the map below does
        // not wait for these — it leaves silent nodes out either way.
        let me = &self.config.node_id;
        let declarations = silent
            .into_iter()
            .filter(|(record, _)| &record.node != me)
            .map(|(mut record, revision)| async move {
                if self.acting_term() != Some(term) {
                    return;
                }
                record.status = NodeStatus::Failed;
                if let Ok(bytes) = codec::encode("node record", &record) {
                    let _ = self
                        .buckets
                        .nodes
                        .update(&record.node, Bytes::from(bytes), revision)
                        .await;
                }
            });
        let _ = tokio::time::timeout(
            self.config.heartbeat,
            futures_util::future::join_all(declarations),
        )
        .await;
        if self.leaving.load(Ordering::Acquire) {
            alive.retain(|n| n != me);
        } else if !alive.contains(me) {
            alive.push(me.clone());
        }
        alive.sort();
        if alive.is_empty() {
            return;
        }
        // A new leader publishes once even when nothing changed: its map, written by
        // compare-and-set under its term, is the fence that makes any write a deposed leader
        // still has in flight fail (its revision is stale) or be superseded at once.
        let current = self.map.read().clone();
        if current.as_ref().is_some_and(|m| {
            m.nodes == alive && m.shard_count() == self.shard_count && m.term >= term
        }) {
            return;
        }
        // Bounded too: a map write stuck behind a raft election must not hold back the lease
        // renewals of this loop. (It may still land later: it is a compare-and-set.)
        match tokio::time::timeout(self.config.lease, self.publish(term, &alive)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "shard map not published"),
            Err(_) => tracing::warn!("shard map not published in time; trying again"),
        }
    }

    /// Writes a new map, fenced: the lease must still be valid and still ours, and the map is
    /// replaced by compare-and-set only if its term is not higher than ours.
    async fn publish(&self, term: u64, alive: &[String]) -> Result<(), String> {
        if self.acting_term() != Some(term) {
            return Err("lease no longer valid".into());
        }
        let holder = read_entry(&self.buckets.leader, LEADER_KEY)
            .await?
            .filter(|e| e.operation == kv::Operation::Put)
            .and_then(|e| codec::decode::<LeaderRecord>("leader record", &e.value).ok());
        if !holder.is_some_and(|h| h.node == self.config.node_id && h.term == term) {
            self.lose(term);
            return Err("the lease belongs to someone else".into());
        }
        let entry = read_entry(&self.buckets.shards, MAP_KEY)
            .await?
            .filter(|e| e.operation == kv::Operation::Put);
        let (epoch, revision) = match &entry {
            Some(e) => {
                let current = ShardMap::decode(&e.value).map_err(|e| e.to_string())?;
                if current.term > term {
                    self.lose(term);
                    return Err(format!(
                        "the map was written by a newer term {} (ours {term})",
                        current.term
                    ));
                }
                if current.term == term
                    && current.nodes == alive
                    && current.shard_count() == self.shard_count
                {
                    // Already out (this node's watch has not caught up yet): nothing to do.
                    return Ok(());
                }
                (current.epoch + 1, Some(e.revision))
            }
            None => (1, None),
        };
        let map = ShardMap::compute(alive, self.shard_count, epoch, term);
        let bytes = Bytes::from(map.encode().map_err(|e| e.to_string())?);
        let written = match revision {
            Some(r) => self
                .buckets
                .shards
                .update(MAP_KEY, bytes, r)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            None => self
                .buckets
                .shards
                .create(MAP_KEY, bytes)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        written?;
        tracing::info!(epoch, term, nodes = ?alive, "published shard map");
        Ok(())
    }
}
