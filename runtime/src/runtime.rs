//! [`Runtime`]: one node's actor system for one namespace, and its [builder](RuntimeBuilder).
//!
//! ```ignore
//! let rt = Runtime::builder()
//!     .namespace("bank")?
//!     .register::<Account>()
//!     .start()                     // embedded durable store in ./aether-data/bank
//!     .await?;
//! let alice = rt.actor::<Account>("alice")?;
//! alice.ask(AccountCmd::Deposit(100)).await?;
//! rt.shutdown().await?;            // passivate (snapshot) everything, sync the store
//! ```
//!
//! A runtime serves exactly one namespace; a process may run several runtimes side by side.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::actor::host::{Host, KindInfo};
use crate::actor::remote::{HostDispatch, KindRemote, RemoteKind};
use crate::actor::{ActorRef, Behavior};
use crate::bus::durable::{CommitSource, LogSource};
use crate::bus::local::Listed;
use crate::bus::{
    Bus, BusConfig, DurableError, Pattern, Projection, ProjectionError, ProjectionOptions,
    ReadModel, SubscriptionKind, SystemEvent,
};
use crate::cluster::{Cluster, ClusterConfig, ClusterEvent};
use crate::config::{RuntimeConfig, defaults};
use crate::errors::StartError;
use crate::names::{ActorId, ActorKey, Kind, NameError, NameKind, Namespace, validate_name};
use crate::routing::{ClientPlacement, LocalPlacement, Placement};
use crate::routing::{Dispatch, Inbound, Transport};
use crate::store::{
    EmbeddedOptions, EmbeddedStore, EventStore, JetStreamOptions, JetStreamStore, MemoryStore,
    SnapshotStore, StoreError,
};
use crate::supervision::Rooted;

/// Why a ref could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    /// The id is invalid (empty, or longer than the limit).
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// The actor type is not registered with this runtime.
    #[error("actor kind {kind:?} is not registered in this runtime")]
    UnknownKind {
        /// The kind.
        kind: String,
    },
}

pub(crate) fn make_ref<A: Behavior>(host: &Arc<Host>, id: &str) -> Result<ActorRef<A>, RefError> {
    let kind = host.kind_of::<A>().ok_or_else(|| RefError::UnknownKind {
        kind: A::KIND.to_owned(),
    })?;
    let key = ActorKey::new(host.namespace.clone(), kind.clone(), ActorId::new(id)?);
    Ok(ActorRef::bound(key, Arc::clone(host)))
}

/// A point-in-time copy of a runtime's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuntimeStats {
    /// Actors brought to life (including reactivations).
    pub activations: u64,
    /// Activations that failed to load (damaged history, store unavailable).
    pub activation_failures: u64,
    /// Actors passivated (idle, evicted, or at shutdown).
    pub passivations: u64,
    /// Events applied during replays.
    pub replayed_events: u64,
    /// Commits written by turns.
    pub commits: u64,
    /// Appends refused with a version conflict (a stale activation).
    pub conflicts: u64,
    /// Commands answered from a stored reply instead of being applied again.
    pub deduplicated: u64,
    /// Snapshots written.
    pub snapshots_saved: u64,
    /// Snapshots that could not be read (full replay instead).
    pub snapshot_fallbacks: u64,
    /// Handler panics.
    pub handler_panics: u64,
    /// Commands skipped because their asker had already given up.
    pub abandoned: u64,
    /// Actors resident right now.
    pub resident: u64,
    /// Asks to other nodes sent again because their shard was between owners (cluster only;
    /// never counts an ask that may have run).
    pub remote_retries: u64,
    /// Asks to other nodes sent again with the same command id after an attempt got no
    /// answer in time (the actor deduplicates them).
    pub remote_resends: u64,
    /// Durable effects applied by actors of this node.
    pub effects_applied: u64,
    /// Durable effects rejected (and recorded) by actors of this node.
    pub effects_rejected: u64,
    /// Durable effects delivered again to actors of this node that had applied them already.
    pub effects_duplicates: u64,
    /// Durable effects sent by actors of this node and settled by their receivers.
    pub effects_settled: u64,
    /// Deliveries of durable effects that failed and were retried later.
    pub effects_retries: u64,
    /// Asks refused with `Deadlock` by actors of this node.
    pub deadlocks_refused: u64,
}

enum StoreChoice {
    Embedded {
        base: Option<PathBuf>,
        options: EmbeddedOptions,
    },
    Memory,
    JetStream {
        urls: String,
        options: JetStreamOptions,
    },
    Custom(Arc<dyn EventStore>, Arc<dyn SnapshotStore>),
}

/// Registration of one actor type.
struct Registration {
    kind: &'static str,
    snapshot_every: Option<u64>,
    remote: Arc<dyn RemoteKind>,
}

/// Builds a [`Runtime`]. Start from [`Runtime::builder`].
#[must_use = "a builder does nothing until `start` is awaited"]
pub struct RuntimeBuilder {
    namespace: Option<Namespace>,
    registrations: Vec<Registration>,
    config: RuntimeConfig,
    store: StoreChoice,
    placement: Arc<dyn Placement>,
    cluster: Option<ClusterConfig>,
    client_of: Option<String>,
    bus: Option<Bus>,
    supervisor: Option<ractor::ActorCell>,
}

impl RuntimeBuilder {
    /// Starts the runtime's root ractor actor linked under `supervisor` (see
    /// [`supervision`](crate::supervision)): the supervisor is told `ActorStarted` when the
    /// runtime is up and `ActorTerminated` after [`Runtime::shutdown`]; when the supervisor
    /// stops, the runtime stops serving (actors passivated, later asks fail with `Shutdown`).
    pub fn supervised_by(mut self, supervisor: ractor::ActorCell) -> Self {
        self.supervisor = Some(supervisor);
        self
    }

    /// Sets the namespace (`[A-Za-z0-9_-]`, 1–64 characters). Required.
    pub fn namespace(mut self, namespace: impl AsRef<str>) -> Result<Self, NameError> {
        self.namespace = Some(Namespace::new(namespace)?);
        Ok(self)
    }

    /// Registers an actor type. Its snapshot policy comes from `#[actor(snapshot_every = N)]`.
    pub fn register<A: Behavior>(mut self) -> Self {
        self.registrations.push(Registration {
            kind: A::KIND,
            snapshot_every: A::SNAPSHOT_EVERY,
            remote: Arc::new(KindRemote::<A>::new()),
        });
        self
    }

    /// Registers an actor type with its own snapshot interval (overrides the attribute).
    pub fn register_with_snapshots<A: Behavior>(mut self, every: Option<u64>) -> Self {
        self.registrations.push(Registration {
            kind: A::KIND,
            snapshot_every: every,
            remote: Arc::new(KindRemote::<A>::new()),
        });
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: RuntimeConfig) -> Self {
        self.config = config;
        self
    }

    /// Applies the `AETHER_*` environment variables (see [`crate::config`]). With
    /// `AETHER_NATS_URL` set, the runtime stores events in JetStream there instead of on disk.
    pub fn config_from_env(mut self) -> Result<Self, StartError> {
        self.config = self
            .config
            .with_overrides(|name| std::env::var(name).ok())?;
        if let Ok(urls) = std::env::var("AETHER_NATS_URL")
            && !urls.trim().is_empty()
        {
            self.store = StoreChoice::JetStream {
                urls,
                options: JetStreamOptions::default(),
            };
        }
        if let StoreChoice::Embedded { base, .. } = &mut self.store
            && base.is_none()
            && let Ok(dir) = std::env::var("AETHER_DATA_DIR")
        {
            *base = Some(PathBuf::from(dir));
        }
        Ok(self)
    }

    /// How long an ask waits for its reply.
    pub fn ask_timeout(mut self, timeout: Duration) -> Self {
        self.config.ask_timeout = timeout;
        self
    }

    /// Passivate actors idle this long (`None`: never for idleness).
    pub fn idle_passivation(mut self, idle: Option<Duration>) -> Self {
        self.config.idle_passivation = idle;
        self
    }

    /// Most resident actors; the least recently used are passivated beyond it.
    pub fn max_resident(mut self, max: usize) -> Self {
        self.config.max_resident = max;
        self
    }

    /// Most commands queued per actor.
    pub fn mailbox_capacity(mut self, capacity: usize) -> Self {
        self.config.mailbox_capacity = capacity;
        self
    }

    /// Recent command ids remembered per actor for deduplication.
    pub fn dedup_window(mut self, window: usize) -> Self {
        self.config.dedup_window = window;
        self
    }

    /// Snapshot on passivation when events were stored since the last snapshot.
    pub fn snapshot_on_passivation(mut self, on: bool) -> Self {
        self.config.snapshot_on_passivation = on;
        self
    }

    /// Keeps the embedded store under `base/<namespace>` instead of `./aether-data/<namespace>`.
    pub fn data_dir(mut self, base: impl Into<PathBuf>) -> Self {
        self.store = StoreChoice::Embedded {
            base: Some(base.into()),
            options: EmbeddedOptions::default(),
        };
        self
    }

    /// Sets options of the embedded store.
    pub fn embedded_options(mut self, options: EmbeddedOptions) -> Self {
        if let StoreChoice::Embedded { options: o, .. } = &mut self.store {
            *o = options;
        } else {
            self.store = StoreChoice::Embedded {
                base: None,
                options,
            };
        }
        self
    }

    /// Stores events and snapshots in NATS JetStream at `urls` (comma-separated), in stream
    /// `<namespace>_events` and bucket `<namespace>_snapshots`. Needs nats-server 2.11+.
    pub fn jetstream(self, urls: impl Into<String>) -> Self {
        self.jetstream_with(urls, JetStreamOptions::default())
    }

    /// Like [`RuntimeBuilder::jetstream`], with options (replicas, retention, ...).
    pub fn jetstream_with(mut self, urls: impl Into<String>, options: JetStreamOptions) -> Self {
        self.store = StoreChoice::JetStream {
            urls: urls.into(),
            options,
        };
        self
    }

    /// Keeps everything in memory: nothing survives the process. For tests and demos.
    pub fn memory_store(mut self) -> Self {
        self.store = StoreChoice::Memory;
        self
    }

    /// Uses the given stores (they must serve the runtime's namespace).
    pub fn store(mut self, events: Arc<dyn EventStore>, snapshots: Arc<dyn SnapshotStore>) -> Self {
        self.store = StoreChoice::Custom(events, snapshots);
        self
    }

    /// Sets who owns which shard (the cluster supplies one; single nodes own all).
    pub fn placement(mut self, placement: Arc<dyn Placement>) -> Self {
        self.placement = placement;
        self
    }

    /// Publishes this runtime's events on `bus` instead of a bus of its own: several runtimes of
    /// one process (one per namespace) can share one bus, and one subscriber can follow them
    /// all. Without it, the runtime makes a local bus, or a NATS bus when it runs on JetStream
    /// or in a cluster.
    pub fn bus(mut self, bus: Bus) -> Self {
        self.bus = Some(bus);
        self
    }

    /// Makes this runtime a node of a cluster (see [`Runtime::join_cluster`]). Events go to
    /// JetStream on the cluster's NATS servers; the namespace comes from `config` when not set.
    pub fn cluster(mut self, config: ClusterConfig) -> Self {
        self.cluster = Some(config);
        self
    }

    /// Makes this runtime a **client** of the cluster at `urls` (comma-separated NATS URLs):
    /// it hosts no actor and owns no shard, and every ask goes over NATS to the node that
    /// serves the actor's shard — retried with the same command id while the shard moves.
    /// For services that call actors without hosting them, and for tools and tests. Needs the
    /// namespace (`.namespace(...)`) and the actor types it calls (`.register::<A>()`).
    /// `rt.event_store()` reads the namespace's JetStream history.
    pub fn cluster_client(mut self, urls: impl Into<String>) -> Self {
        self.client_of = Some(urls.into());
        self
    }

    /// Opens the store and starts the runtime. Must be called inside a tokio runtime.
    pub async fn start(self) -> Result<Runtime, StartError> {
        let namespace = match (&self.namespace, &self.cluster) {
            (Some(ns), Some(cc)) if ns.as_str() != cc.namespace => {
                return Err(StartError::Setup(format!(
                    "the builder's namespace {ns} differs from the cluster's {}",
                    cc.namespace
                )));
            }
            (Some(ns), _) => ns.clone(),
            (None, Some(cc)) => Namespace::new(&cc.namespace)?,
            (None, None) => {
                return Err(StartError::Setup(
                    "no namespace set: call .namespace(...)".into(),
                ));
            }
        };
        let mut kinds: Vec<KindInfo> = Vec::new();
        for reg in self.registrations {
            let kind = Kind::new(reg.kind)?;
            if kinds.iter().any(|k| k.name == reg.kind) {
                return Err(StartError::Setup(format!(
                    "kind {:?} is registered twice",
                    reg.kind
                )));
            }
            kinds.push(KindInfo {
                name: reg.kind,
                kind,
                snapshot_every: reg.snapshot_every,
                remote: reg.remote,
            });
        }
        self.config.validate()?;
        if let Some(cc) = &self.cluster {
            cc.validate()?;
        }
        let config = self.config;
        let mut data_dir = None;
        let mut location = String::from("memory");
        let mut cluster = None;
        let mut transport = None;
        let mut nats_client = None;
        let mut events_in_jetstream = false;
        let mut placement = self.placement;
        let hosts_actors = self.client_of.is_none();
        let store = match (self.cluster, self.client_of) {
            (Some(_), Some(_)) => {
                return Err(StartError::Setup(
                    "a runtime is either a cluster node or a cluster client, not both".into(),
                ));
            }
            (None, Some(urls)) => {
                // A client fails fast: its caller decides whether to wait for the cluster.
                let client = crate::cluster::connect(
                    &urls,
                    &format!("aether-client-{namespace}"),
                    Duration::from_secs(5),
                    Duration::ZERO,
                )
                .await
                .map_err(StartError::Cluster)?;
                let options = JetStreamOptions {
                    max_commit_bytes: config.max_commit_bytes,
                    ..JetStreamOptions::default()
                };
                let store = Arc::new(
                    JetStreamStore::with_client(client.clone(), namespace.clone(), options).await?,
                );
                location = format!("cluster client of {urls} (hosts no actors)");
                placement = Arc::new(ClientPlacement);
                nats_client = Some(client.clone());
                events_in_jetstream = true;
                transport = Some(Arc::new(Transport::new(
                    client,
                    config.remote_attempt_timeout,
                )));
                StoreChoice::Custom(store.clone(), store)
            }
            (Some(cc), None) => {
                // A node may start before its NATS servers accept connections.
                let client = crate::cluster::connect(
                    &cc.urls,
                    &format!("aether-{}", cc.node_id),
                    Duration::from_secs(5),
                    cc.join_timeout,
                )
                .await
                .map_err(StartError::Cluster)?;
                let options = JetStreamOptions {
                    replicas: cc.replicas,
                    max_commit_bytes: config.max_commit_bytes,
                    ..JetStreamOptions::default()
                };
                // A node may start alongside a fresh NATS cluster still electing its
                // JetStream leader: keep trying until the join timeout.
                let deadline = tokio::time::Instant::now() + cc.join_timeout;
                let store = loop {
                    match JetStreamStore::with_client(
                        client.clone(),
                        namespace.clone(),
                        options.clone(),
                    )
                    .await
                    {
                        Ok(store) => break Arc::new(store),
                        Err(StoreError::Unavailable(reason))
                            if tokio::time::Instant::now() < deadline =>
                        {
                            tracing::debug!(%reason, "JetStream not ready; retrying");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(e) => return Err(e.into()),
                    }
                };
                location = format!(
                    "JetStream at {}, stream {} (cluster node {})",
                    cc.urls,
                    store.stream_name(),
                    cc.node_id
                );
                let joined = Cluster::join(cc, client.clone(), config.shard_count)
                    .await
                    .map_err(StartError::Cluster)?;
                placement = joined.placement();
                nats_client = Some(client.clone());
                events_in_jetstream = true;
                transport = Some(Arc::new(Transport::new(
                    client,
                    config.remote_attempt_timeout,
                )));
                cluster = Some(joined);
                StoreChoice::Custom(store.clone(), store)
            }
            (None, None) => self.store,
        };
        let (events, snapshots): (Arc<dyn EventStore>, Arc<dyn SnapshotStore>) = match store {
            StoreChoice::Memory => {
                let store = MemoryStore::with_limit(namespace.clone(), config.max_commit_bytes);
                (Arc::new(store.clone()), Arc::new(store))
            }
            StoreChoice::JetStream { urls, mut options } => {
                options.max_commit_bytes = config.max_commit_bytes;
                let store =
                    Arc::new(JetStreamStore::connect(&urls, namespace.as_str(), options).await?);
                location = format!("JetStream at {urls}, stream {}", store.stream_name());
                nats_client = Some(store.client().clone());
                events_in_jetstream = true;
                (store.clone(), store)
            }
            StoreChoice::Custom(events, snapshots) => {
                if cluster.is_none() && transport.is_none() {
                    location = "custom store".into();
                }
                if events.namespace() != &namespace {
                    return Err(StartError::Setup(format!(
                        "the event store serves namespace {}, the runtime {namespace}",
                        events.namespace()
                    )));
                }
                (events, snapshots)
            }
            StoreChoice::Embedded { base, mut options } => {
                let dir = base
                    .unwrap_or_else(|| PathBuf::from(defaults::DATA_DIR))
                    .join(namespace.as_str());
                options.max_commit_bytes = config.max_commit_bytes;
                let ns = namespace.clone();
                let open_dir = dir.clone();
                let store = tokio::task::spawn_blocking(move || {
                    EmbeddedStore::open_with(open_dir, ns, options)
                })
                .await
                .map_err(|e| StoreError::Unavailable(format!("open task failed: {e}")))??;
                location = format!("embedded store in {}", dir.display());
                data_dir = Some(dir);
                let store = Arc::new(store);
                (store.clone(), store)
            }
        };
        let bus = match (self.bus, nats_client) {
            (Some(bus), _) => bus,
            (None, client) => {
                let bus_config = BusConfig {
                    buffer: config.bus_buffer,
                    outbound_buffer: config.bus_outbound_buffer,
                    origin: cluster.as_ref().map(|c| c.node_id().to_owned()),
                };
                match client {
                    Some(client) => Bus::with_nats(client, bus_config),
                    None => Bus::local_with(bus_config),
                }
            }
        };
        let host = Host::new(
            namespace,
            config,
            events,
            snapshots,
            kinds,
            placement,
            transport,
            bus,
            tokio::runtime::Handle::current(),
        );
        // The root first: every activation's actor is linked under it, and remote asks and
        // wake-ups may activate actors as soon as the node serves.
        let root = match Rooted::spawn(
            host.namespace.as_str(),
            self.supervisor,
            &host,
            cluster.clone(),
        )
        .await
        {
            Ok(root) => root,
            Err(e) => {
                if let Some(cluster) = &cluster {
                    cluster.stop();
                }
                return Err(StartError::Setup(e));
            }
        };
        let mut inbound = None;
        if let Some(c) = &cluster {
            let epoch = c.owned_shards().borrow().epoch;
            let dispatch: Arc<dyn Dispatch> = Arc::new(HostDispatch(Arc::downgrade(&host)));
            c.start_handoff(Arc::clone(&dispatch));
            let serving = crate::routing::remote::serve(
                c.client().clone(),
                host.namespace.clone(),
                c.serving_shards(),
                dispatch,
            );
            let mut served = serving.served();
            inbound = Some(serving);
            // Return only once this node answers for its shards (their previous owners may
            // take up to the handoff timeout to release them).
            let within = c.config().handoff_timeout + Duration::from_secs(20);
            let ready = tokio::time::timeout(within, served.wait_for(|e| *e >= epoch));
            if !matches!(ready.await, Ok(Ok(_))) {
                // Leave no half-started member behind: it would heartbeat and hold shards.
                c.stop();
                host.shutting_down
                    .store(true, std::sync::atomic::Ordering::Release);
                root.stop().await;
                return Err(StartError::Cluster(
                    "could not serve the owned shards in time".into(),
                ));
            }
        }
        // Durable effects and reminders of actors that are not resident: the scheduler wakes
        // them (a store without a wake-up index simply has none).
        let scheduler = if hosts_actors {
            match host.events.watch_wakeups().await {
                Ok(feed) => Some(tokio::spawn(crate::workflow::scheduler::run(
                    Arc::downgrade(&host),
                    feed,
                ))),
                Err(StoreError::Unsupported(_)) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "no wake-up scheduler: durable work of passivated actors waits for their next command");
                    None
                }
            }
        } else {
            None
        };
        let bus_forwarder = cluster.as_ref().map(|c| {
            tokio::spawn(forward_cluster_events(
                c.events(),
                host.bus.clone(),
                host.namespace.clone(),
            ))
        });
        tracing::info!(namespace = %host.namespace, store = %location, "runtime started");
        Ok(Runtime {
            root_cell: root.cell.clone(),
            root: Some(root),
            host,
            data_dir,
            location,
            cluster,
            inbound,
            bus_forwarder,
            scheduler,
            events_in_jetstream,
        })
    }
}

/// One node's actor system for one namespace. See the [module docs](self).
pub struct Runtime {
    /// The runtime's root ractor actor (see [`supervision`](crate::supervision)), and its
    /// watcher (taken by the shutdown).
    root: Option<Rooted>,
    root_cell: ractor::ActorCell,
    host: Arc<Host>,
    data_dir: Option<PathBuf>,
    location: String,
    cluster: Option<Cluster>,
    inbound: Option<Inbound>,
    /// Republishes cluster events on the bus (cluster nodes only).
    bus_forwarder: Option<tokio::task::JoinHandle<()>>,
    /// Wakes actors with due durable effects and reminders.
    scheduler: Option<tokio::task::JoinHandle<()>>,
    /// Whether the events live in JetStream (projections then read through a consumer).
    events_in_jetstream: bool,
}

impl Runtime {
    /// Starts a runtime that is a node of a cluster: connects to NATS, registers the node,
    /// takes part in the leader election, serves the shards the leader assigns it, and sends
    /// commands for other shards to their owners. `builder` carries the actor types (and any
    /// settings); the namespace comes from `config`.
    ///
    /// ```ignore
    /// let rt = Runtime::join_cluster(
    ///     ClusterConfig::new("nats://127.0.0.1:4222", "bank").node_id("node-1"),
    ///     Runtime::builder().register::<Account>(),
    /// ).await?;
    /// ```
    pub async fn join_cluster(
        config: ClusterConfig,
        builder: RuntimeBuilder,
    ) -> Result<Runtime, StartError> {
        builder.cluster(config).start().await
    }

    /// This node's cluster membership (queries, events), when it is a cluster node.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_ref()
    }

    /// Starts building a runtime.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder {
            namespace: None,
            registrations: Vec::new(),
            config: RuntimeConfig::default(),
            store: StoreChoice::Embedded {
                base: None,
                options: EmbeddedOptions::default(),
            },
            placement: Arc::new(LocalPlacement),
            cluster: None,
            client_of: None,
            bus: None,
            supervisor: None,
        }
    }

    /// The namespace this runtime serves.
    pub fn namespace(&self) -> &Namespace {
        &self.host.namespace
    }

    /// The configuration in effect.
    pub fn config(&self) -> &RuntimeConfig {
        &self.host.config
    }

    /// Where events are stored, for people: `embedded store in ...`, `JetStream at ...`.
    pub fn store_location(&self) -> &str {
        &self.location
    }

    /// The embedded store's directory, when the runtime uses one.
    pub fn data_dir(&self) -> Option<&Path> {
        self.data_dir.as_deref()
    }

    /// A handle to actor `id` of type `A`. Fails for an invalid id or an unregistered type.
    pub fn actor<A: Behavior>(&self, id: impl AsRef<str>) -> Result<ActorRef<A>, RefError> {
        make_ref(&self.host, id.as_ref())
    }

    /// Binds a ref (for example one decoded outside the runtime) to this runtime.
    pub fn bind<A: Behavior>(&self, actor: &ActorRef<A>) -> ActorRef<A> {
        actor.with_host(Arc::clone(&self.host))
    }

    /// The event store (to read an actor's history, for example).
    pub fn event_store(&self) -> Arc<dyn EventStore> {
        Arc::clone(&self.host.events)
    }

    /// The event bus: every event this runtime stores is published there, with system events
    /// (see [`crate::bus`]).
    pub fn bus(&self) -> &Bus {
        &self.host.bus
    }

    /// Starts projection `name`: `model` is brought up to date with this namespace's stored
    /// events and kept there, in the background (see [`crate::bus::projection`]).
    ///
    /// On JetStream the projection reads through a durable consumer
    /// (`aether_projection_<name>` on `<ns>_events`) when the bus is a NATS bus; otherwise (the
    /// embedded and memory stores) it reads the store's namespace log.
    pub async fn projection<M: ReadModel>(
        &self,
        name: &str,
        model: M,
        options: ProjectionOptions,
    ) -> Result<Projection<M>, ProjectionError> {
        validate_name(NameKind::Subscription, name)?;
        let namespace = &self.host.namespace;
        let pattern = match &options.pattern {
            Some(p) => p.clone(),
            None => Pattern::events(namespace),
        };
        if pattern.namespace_name() != Some(namespace.as_str()) || !pattern.can_match_events() {
            return Err(ProjectionError::Source(DurableError::NotDurable {
                pattern: pattern.to_string(),
                reason: format!(
                    "a projection of this runtime reads events of namespace {namespace}"
                ),
            }));
        }
        let bus = &self.host.bus;
        let source: Box<dyn CommitSource> = match bus.nats() {
            Some(nats) if self.events_in_jetstream => {
                Box::new(nats.projection_source(namespace, name, &pattern).await?)
            }
            _ => Box::new(LogSource::new(
                Arc::clone(&self.host.events),
                pattern.clone(),
                options.page,
                options.poll_interval,
            )),
        };
        let slot = bus.registry().tracked_slot(
            SubscriptionKind::Projection(name.to_owned()),
            pattern,
            options.filter.clone(),
            Some(namespace.clone()),
        );
        let listed = Listed::new(slot, Arc::downgrade(bus.registry()));
        Ok(Projection::start(
            name.to_owned(),
            model,
            source,
            options,
            listed,
        ))
    }

    /// The snapshot store.
    pub fn snapshot_store(&self) -> Arc<dyn SnapshotStore> {
        Arc::clone(&self.host.snapshots)
    }

    /// The counters.
    pub fn stats(&self) -> RuntimeStats {
        let s = &self.host.stats;
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        RuntimeStats {
            activations: get(&s.activations),
            activation_failures: get(&s.activation_failures),
            passivations: get(&s.passivations),
            replayed_events: get(&s.replayed_events),
            commits: get(&s.commits),
            conflicts: get(&s.conflicts),
            deduplicated: get(&s.deduplicated),
            snapshots_saved: get(&s.snapshots_saved),
            snapshot_fallbacks: get(&s.snapshot_fallbacks),
            handler_panics: get(&s.handler_panics),
            abandoned: get(&s.abandoned),
            resident: self.host.resident() as u64,
            remote_retries: self.host.transport.as_ref().map_or(0, |t| t.retries()),
            remote_resends: self.host.transport.as_ref().map_or(0, |t| t.resends()),
            effects_applied: get(&s.effects_applied),
            effects_rejected: get(&s.effects_rejected),
            effects_duplicates: get(&s.effects_duplicates),
            effects_settled: get(&s.effects_settled),
            effects_retries: get(&s.effects_retries),
            deadlocks_refused: get(&s.deadlocks_refused),
        }
    }

    /// Number of resident (activated) actors.
    pub fn resident_count(&self) -> usize {
        self.host.resident()
    }

    /// Whether the actor is resident right now.
    pub fn is_resident<A: Behavior>(&self, actor: &ActorRef<A>) -> bool {
        self.host.is_resident(A::KIND, actor.id())
    }

    /// Passivates one actor now and waits until it has stopped (snapshot included). Returns
    /// `false` if it was not resident.
    pub async fn passivate<A: Behavior>(&self, actor: &ActorRef<A>) -> bool {
        self.host.passivate(A::KIND, actor.id()).await
    }

    /// Waits (up to `within`) until the resident actors of this node have no durable effect due
    /// now that their receivers have not settled yet — every send of the turns so far has been
    /// applied (or rejected) by its receiver. Returns whether that point was reached. Reminders
    /// that are not due yet do not count. Shutdown does this first (with half its timeout).
    pub async fn drain_effects(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.host.effects_due() == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Passivates every resident actor and waits for them (up to the shutdown timeout).
    pub async fn passivate_all(&self) -> bool {
        self.host
            .passivate_all(self.host.config.shutdown_timeout)
            .await
    }

    /// Stops accepting commands, passivates every actor (serving what is queued, snapshotting),
    /// and closes the store. Asks after this fail with `Shutdown`.
    pub async fn shutdown(mut self) -> Result<(), StoreError> {
        // Let durable effects in flight land while every node still serves (what does not is
        // delivered later: the sender's history keeps it and the wake-up index finds it).
        if !self
            .drain_effects(self.host.config.shutdown_timeout / 2)
            .await
        {
            tracing::info!(
                "shutting down with durable effects still undelivered; they resume on restart"
            );
        }
        if let Some(cluster) = &self.cluster {
            // Hand the shards over first: others take them while this node still answers.
            cluster.leave(self.host.config.shutdown_timeout).await;
        }
        if let Some(forwarder) = &self.bus_forwarder {
            forwarder.abort();
        }
        if let Some(scheduler) = &self.scheduler {
            scheduler.abort();
        }
        if let Some(inbound) = self.inbound.take() {
            // Every shard is handed off by now: answer what was routed here meanwhile.
            inbound.close(self.host.config.shutdown_timeout).await;
        }
        self.host.shutting_down.store(true, Ordering::Release);
        let drained = self
            .host
            .passivate_all(self.host.config.shutdown_timeout)
            .await;
        if !drained {
            tracing::warn!("shutdown timed out waiting for actors to passivate");
        }
        self.host.unregister();
        self.host.bus.flush().await;
        let closed = self.host.events.close().await;
        if let Some(root) = self.root.take() {
            root.stop().await;
        }
        closed
    }

    /// The runtime's root ractor actor: link your own ractor actors under it (they stop when
    /// the runtime shuts down), or monitor it. See [`supervision`](crate::supervision).
    pub fn root(&self) -> &ractor::ActorCell {
        &self.root_cell
    }
}

impl Drop for Runtime {
    /// A runtime dropped without [`Runtime::shutdown`] stops its cluster membership at once
    /// (to the others it looks like a crash): it must not keep heartbeating while nothing
    /// serves its shards.
    fn drop(&mut self) {
        if let Some(cluster) = &self.cluster {
            cluster.stop();
        }
        if self.root.is_some() {
            self.root_cell.stop(Some("runtime dropped".into()));
        }
        if let Some(scheduler) = &self.scheduler {
            scheduler.abort();
        }
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("namespace", &self.host.namespace)
            .field("data_dir", &self.data_dir)
            .finish()
    }
}

/// Republishes this node's cluster events as system events on the bus, until the cluster's
/// channel closes. Events the channel dropped because this task fell behind are logged.
async fn forward_cluster_events(
    mut events: tokio::sync::broadcast::Receiver<ClusterEvent>,
    bus: Bus,
    namespace: Namespace,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match events.recv().await {
            Ok(event) => {
                bus.publish_system(&namespace, system_event_of(event));
            }
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "bus: cluster events were missed (the forwarder fell behind)"
                );
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// The bus's form of a cluster event.
fn system_event_of(event: ClusterEvent) -> SystemEvent {
    match event {
        ClusterEvent::NodeJoined { node } => SystemEvent::NodeJoined { node },
        ClusterEvent::NodeLeft { node } => SystemEvent::NodeLeft { node },
        ClusterEvent::NodeFailed { node } => SystemEvent::NodeFailed { node },
        ClusterEvent::LeaderElected { node, term } => SystemEvent::LeaderElected { node, term },
        ClusterEvent::LeadershipLost { node, term } => SystemEvent::LeadershipLost { node, term },
        ClusterEvent::ShardAssigned { shard, node, epoch } => {
            SystemEvent::ShardAssigned { shard, node, epoch }
        }
        ClusterEvent::ShardMigrated {
            shard,
            from,
            to,
            epoch,
            after,
            forced,
        } => SystemEvent::ShardMigrated {
            shard,
            from,
            to,
            epoch,
            after,
            forced,
        },
        ClusterEvent::ShardsReleased {
            shards,
            epoch,
            actors,
            after,
        } => SystemEvent::ShardsReleased {
            shards,
            epoch,
            actors,
            after,
        },
    }
}
