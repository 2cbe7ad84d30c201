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
//! Four times per heartbeat the leader declares `Failed` the nodes silent for the failure
//! timeout, and those silent for two beats whose connection the NATS server says is gone (a
//! dead process; a paused one keeps its connection). When the set of alive nodes differs
//! from the current map's, it publishes a new map (epoch + 1, its term) computed by
//! `cluster/assignment.rs` — every shard assigned, each to an alive node. Nodes watch the map; the shards it gives this node tell routing which shards to serve.
//!
//! Nothing here waits on a stalled raft group longer than it must: lease rounds, the leader's
//! duties, record writes and the handoff run apart and bounded, reads any replica may answer
//! are asked again after 400 ms, and while no watch can be made the registry and the map are
//! read directly.

mod assignment;
mod client_map;
mod config;
mod drain;
mod errors;
mod events;
mod follow;
mod handoff;
mod leader;
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
pub(crate) use liveness::{Beat, Check, Grant, Verdict};
pub use membership::{NodeRecord, NodeStatus, ShardSet};
pub use settle::NotSettled;
pub use shard_map::ShardMap;
pub use view::{ClusterView, LeaderInfo, NodeEntry, RegistryChange};

use self::membership::{Change, Members};
use self::view::read_entry;
use crate::names::{NameKind, Namespace, validate_name};
use crate::routing::{Dispatch, OwnedShards, Placement, shard_of};

use crate::wire::codec;
pub(crate) use client_map::ClientMap;

const LEADER_KEY: &str = "leader";
const MAP_KEY: &str = "map";

/// The lease record stored under [`LEADER_KEY`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LeaderRecord {
    pub node: String,
    pub term: u64,
}

/// A node whose connection the leader is checking, or found gone (see `Inner::condemned`).
#[derive(Debug, Clone, Copy)]
struct Condemned {
    /// When the check began.
    since: Instant,
    /// Declared failed on the check: held until the leader's adopted map leaves it out.
    declared: bool,
    /// The leader's term: a later term starts afresh.
    term: u64,
}

impl Condemned {
    /// Whether the node's beats must not be granted now: declared, or under a check that
    /// began less than `bound` ago (a check takes a few hundred milliseconds at most; an
    /// older one was abandoned).
    fn holds(&self, bound: Duration) -> bool {
        self.declared || self.since.elapsed() < bound
    }
}

/// See `Inner::fence_state`.
#[derive(Debug, Default, Clone, Copy)]
struct FenceState {
    since_ms: u64,
    generation: u64,
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
    /// When the current fence began (milliseconds since `clock`: only a beat sent after it can
    /// lift it, as a grant of an older beat may answer a connection since lost) and how many
    /// fences there were (an unfence waiting on a read gives up if another began meanwhile).
    /// Fencing and unfencing take this lock, so neither overtakes the other.
    fence_state: Mutex<FenceState>,
    /// This node's NATS connection: every loss fences the node (see [`liveness`]).
    link: crate::connection::Link,
    /// As leader: nodes whose connection is being checked or that were declared failed on
    /// its loss, with when; their beats are not granted until the map leaves them out (see
    /// [`liveness`]).
    condemned: Mutex<std::collections::BTreeMap<String, Condemned>>,
    /// As leader: the epoch of the last map it published (grants carry at least this one, so
    /// a node rejoining after a fence reads a map its own watch may not have shown it yet).
    published_epoch: AtomicU64,
    /// This node answered a request on its own check subject: beats say which server it is
    /// on, so the leader may check its connection (see [`liveness`]).
    checkable: AtomicBool,
    /// The lease another node holds, as last seen on the lease key: its holder and the key's
    /// revision (a follower ends it early when the holder's connection is gone).
    observed_lease: Mutex<Option<(String, u64)>>,
    /// As leader: the connection was lost, so this node does not act until a renewal succeeds
    /// on a connection made since (another node may have ended the lease meanwhile).
    suspended: AtomicBool,
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
    /// Where this node's advertised load comes from (see [`NodeLoad`]).
    load: std::sync::OnceLock<LoadSource>,
    /// The drained nodes, as the leader last read them (see [`drain`]).
    drains: Mutex<std::collections::BTreeSet<String>>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// This node's membership in the cluster. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
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
        link: crate::connection::Link,
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
                fence_state: Mutex::new(FenceState::default()),
                link,
                condemned: Mutex::new(std::collections::BTreeMap::new()),
                published_epoch: AtomicU64::new(0),
                checkable: AtomicBool::new(false),
                observed_lease: Mutex::new(None),
                suspended: AtomicBool::new(false),
                sight: Mutex::new(Sight::default()),
                last_beat_ms: AtomicU64::new(0),
                rejoining: tokio::sync::Mutex::new(()),
                write_record: tokio::sync::Notify::new(),
                clock: Instant::now(),
                handoff: handoff::Counters::default(),
                drains: Mutex::new(std::collections::BTreeSet::new()),
                load: std::sync::OnceLock::new(),
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
            tokio::spawn(Arc::clone(&cluster.inner).answer_checks()),
            tokio::spawn(Arc::clone(&cluster.inner).watch_link()),
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
                // A drained node (restarted during maintenance) joins with no shards: the
                // leader keeps it out of every map until it is undrained.
                if map.nodes.contains(&me) || cluster.inner.drained().await.contains(&me) {
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

    /// Sets where the load this node advertises in its record comes from (once).
    pub(crate) fn set_load_source(&self, source: LoadSource) {
        let _ = self.inner.load.set(source);
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
            routes: RwLock::new(client_map::Routes::default()),
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
    /// The subjects of the latest map's nodes, built once per map.
    routes: RwLock<client_map::Routes>,
}

impl Placement for ClusterPlacement {
    /// Served here once the handoff serves it, and only while this node is not cut off (fenced,
    /// or its beat lease expired: another node may own every shard by now). The lease is
    /// checked here too, not only by the fencing task: a process resumed after a pause may run
    /// a request before that task. A shard the map gives this node but whose handoff is not
    /// done is not served yet.
    fn is_local(&self, shard: u32) -> bool {
        !*self.inner.fenced.borrow()
            && !self.inner.beat_lease_expired()
            && self.inner.serving.borrow().shards.contains(&shard)
    }

    /// The map's owner of `shard`, when it is another node.
    fn route(&self, shard: u32) -> Option<async_nats::Subject> {
        let map = self.inner.map.read().clone()?;
        client_map::route(
            &map,
            &self.routes,
            &self.inner.namespace,
            Some(self.inner.config.node_id.as_str()),
            shard,
        )
    }
}

impl Inner {
    fn emit(&self, event: ClusterEvent) {
        tracing::info!(node = %self.config.node_id, ?event, "cluster event");
        let _ = self.events.send(event);
    }

    fn record(&self, status: membership::NodeStatus) -> NodeRecord {
        let load = self.load.get().map(|f| f()).unwrap_or_default();
        NodeRecord {
            node: self.config.node_id.clone(),
            started_ms: self.started_ms,
            capacity: 1,
            status,
            beat: self.beat.fetch_add(1, Ordering::Relaxed),
            handoff_epoch: self.handoff_epoch.load(Ordering::Acquire),
            held: self.held.lock().clone(),
            resident: load.resident,
            commits: load.commits,
        }
    }
}

/// What a node advertises of its load in its record.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct NodeLoad {
    /// Actors resident now.
    pub resident: u64,
    /// Commits written since start.
    pub commits: u64,
}

/// Where a node's load comes from (the actor host, set once it exists).
pub(crate) type LoadSource = Box<dyn Fn() -> NodeLoad + Send + Sync>;
