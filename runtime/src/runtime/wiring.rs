//! Starting a runtime: from the builder's choices to a serving [`Runtime`].
//!
//! [`start`] runs these steps in order; each is a function below, so the order reads at once:
//!
//! 1. **check** every choice ([`check`]): the namespace, the actor kinds, the limits of the
//!    configuration and the cluster's, and that the store choices agree — before any file is
//!    opened or connection made;
//! 2. **backend** by role ([`backend`]): a *cluster node* connects to NATS, opens its
//!    JetStream store and joins the cluster; a *cluster client* connects and opens the store
//!    only; a *single node* opens the store it was given (embedded by default);
//! 3. the **bus** ([`bus_of`]): the one given, or NATS when events live in JetStream, or local;
//! 4. the **host** and its **root** ractor actor, under the user's supervisor if any;
//! 5. a cluster node **serves its shards** ([`serve_shards`]) and returns only once it
//!    answers for them;
//! 6. the **scheduler** of durable effects and reminders, and the forwarder of cluster events
//!    to the bus.
//!
//! A step that fails undoes what the earlier ones started (a node that joined leaves), so a
//! failed start leaves nothing running.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::Runtime;
use super::builder::{Registration, RuntimeBuilder, StoreChoice};
use crate::actor::host::{Host, KindInfo};
use crate::actor::remote::HostDispatch;
use crate::bus::{Bus, BusConfig, SystemEvent};
use crate::cluster::{Cluster, ClusterConfig, ClusterError, ClusterEvent};
use crate::config::{InvalidConfig, RuntimeConfig, defaults};
use crate::connection::NatsConfig;
use crate::errors::StartError;
use crate::names::{Kind, Namespace};
use crate::routing::{Dispatch, Inbound, LocalPlacement, Placement, Transport};
use crate::store::{
    EmbeddedOptions, EmbeddedStore, EventStore, JetStreamOptions, JetStreamStore, MemoryStore,
    SnapshotStore, StoreError,
};
use crate::supervision::Rooted;

/// The builder's choices, checked.
struct Checked {
    namespace: Namespace,
    kinds: Vec<KindInfo>,
    config: RuntimeConfig,
    role: Role,
    bus: Option<Bus>,
    supervisor: Option<ractor::ActorCell>,
}

/// What this runtime is to the cluster, with what that role needs.
enum Role {
    /// A member: hosts actors, owns shards.
    Node(Box<ClusterConfig>),
    /// Hosts nothing; asks go to the owners over NATS.
    Client { nats: NatsConfig },
    /// One machine, all shards.
    Single {
        store: StoreChoice,
        data_dir: Option<PathBuf>,
        embedded: EmbeddedOptions,
    },
}

/// Where events live, and what came with them.
struct Backend {
    events: Arc<dyn EventStore>,
    snapshots: Arc<dyn SnapshotStore>,
    /// Where the events are, for people.
    location: String,
    data_dir: Option<PathBuf>,
    cluster: Option<Cluster>,
    transport: Option<Arc<Transport>>,
    nats: Option<async_nats::Client>,
    placement: Option<Arc<dyn Placement>>,
    events_in_jetstream: bool,
}

impl RuntimeBuilder {
    /// Checks every choice, opens the store and starts the runtime. Must be called inside a
    /// tokio runtime. A bad or contradictory choice is refused before anything is opened,
    /// with a [`StartError`] naming the setting.
    pub async fn start(self) -> Result<Runtime, StartError> {
        start(self).await
    }
}

/// Starts the runtime `builder` describes (the steps are in the [module docs](self)).
async fn start(builder: RuntimeBuilder) -> Result<Runtime, StartError> {
    let Checked {
        namespace,
        kinds,
        config,
        role,
        bus,
        supervisor,
    } = check(builder)?;
    let hosts_actors = !matches!(role, Role::Client { .. });
    let node = match &role {
        Role::Node(cc) => cc.node_id.clone(),
        Role::Client { .. } => "client".to_owned(),
        Role::Single { .. } => "local".to_owned(),
    };
    // Before anything opens: a taken metrics port refuses the start at once.
    let metrics = crate::metrics::Setup::prepare(&config)?;
    let meters = metrics.as_ref().map(|_| {
        let kinds: Vec<&'static str> = kinds.iter().map(|k| k.name).collect();
        crate::metrics::Meters::new(namespace.as_str(), &node, &kinds)
    });
    let backend = backend(role, &namespace, &config).await?;
    let bus = bus_of(bus, backend.nats.clone(), &config, backend.cluster.as_ref());
    let host = Host::new(
        namespace,
        config,
        backend.events,
        backend.snapshots,
        kinds,
        backend
            .placement
            .unwrap_or_else(|| Arc::new(LocalPlacement)),
        backend.transport,
        bus,
        tokio::runtime::Handle::current(),
        node,
        meters,
    );
    let cluster = backend.cluster;
    if let Some(c) = &cluster {
        let weak = Arc::downgrade(&host);
        c.set_load_source(Box::new(move || {
            weak.upgrade()
                .map(|h| crate::cluster::NodeLoad {
                    resident: h.resident() as u64,
                    commits: h.stats.commits.load(std::sync::atomic::Ordering::Relaxed),
                })
                .unwrap_or_default()
        }));
    }
    // The root first: every activation's actor is linked under it, and remote asks and
    // wake-ups may activate actors as soon as the node serves.
    let root =
        match Rooted::spawn(host.namespace.as_str(), supervisor, &host, cluster.clone()).await {
            Ok(root) => root,
            Err(e) => {
                if let Some(cluster) = &cluster {
                    cluster.stop();
                }
                return Err(StartError::Supervision(e));
            }
        };
    let inbound = match &cluster {
        Some(c) => match serve_shards(c, &host).await {
            Ok(inbound) => Some(inbound),
            Err(e) => {
                root.stop().await;
                return Err(e);
            }
        },
        None => None,
    };
    let scheduler = if hosts_actors {
        scheduler(&host).await
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
    let reporting = match metrics {
        Some(setup) => match crate::metrics::Reporting::start(setup, &host, cluster.clone()) {
            Ok(reporting) => Some(reporting),
            Err(e) => {
                if let Some(task) = &bus_forwarder {
                    task.abort();
                }
                if let Some(task) = &scheduler {
                    task.abort();
                }
                if let Some(inbound) = inbound {
                    inbound.close(Duration::from_secs(1)).await;
                }
                root.stop().await;
                return Err(e);
            }
        },
        None => None,
    };
    tracing::info!(namespace = %host.namespace, store = %backend.location, "runtime started");
    Ok(Runtime {
        reporting,
        root_cell: root.cell.clone(),
        root: Some(root),
        host,
        data_dir: backend.data_dir,
        location: backend.location,
        cluster,
        inbound,
        bus_forwarder,
        scheduler,
        events_in_jetstream: backend.events_in_jetstream,
    })
}

/// Step 1: every choice of the builder checked, before anything is opened.
fn check(builder: RuntimeBuilder) -> Result<Checked, StartError> {
    let RuntimeBuilder {
        namespace,
        registrations,
        config,
        store,
        store_conflict,
        data_dir,
        embedded_options,
        cluster,
        client_of,
        bus,
        supervisor,
    } = builder;
    let namespace = match (namespace, &cluster) {
        (Some(ns), Some(cc)) if ns != cc.namespace => {
            return Err(StartError::NamespaceMismatch {
                builder: ns,
                cluster: cc.namespace.clone(),
            });
        }
        (Some(ns), _) => Namespace::new(ns)?,
        (None, Some(cc)) => Namespace::new(&cc.namespace)?,
        (None, None) => {
            return Err(StartError::NoNamespace);
        }
    };
    let kinds = kinds_of(registrations)?;
    config.validate()?;
    if let Some(cc) = &cluster {
        cc.validate()?;
    }
    if let Some(both) = store_conflict {
        return Err(InvalidConfig::new(
            "store",
            both,
            "one store per runtime: the builder (or AETHER_NATS_URL) chose two",
        )
        .into());
    }
    let role = match (cluster, client_of) {
        (Some(_), Some(_)) => {
            return Err(StartError::NodeAndClient);
        }
        (Some(cc), None) => {
            no_store_choice(store.as_ref())?;
            only_embedded(&data_dir, &embedded_options)?;
            Role::Node(Box::new(cc))
        }
        (None, Some(nats)) => {
            nats.validate()?;
            no_store_choice(store.as_ref())?;
            only_embedded(&data_dir, &embedded_options)?;
            Role::Client { nats }
        }
        (None, None) => {
            let store = store.map_or(StoreChoice::Embedded, |(_, choice)| choice);
            if !matches!(store, StoreChoice::Embedded) {
                only_embedded(&data_dir, &embedded_options)?;
            }
            Role::Single {
                store,
                data_dir,
                embedded: embedded_options.unwrap_or_default(),
            }
        }
    };
    Ok(Checked {
        namespace,
        kinds,
        config,
        role,
        bus,
        supervisor,
    })
}

/// Refuses a store choice for a cluster node or client: their events live in JetStream on
/// the cluster's servers.
fn no_store_choice(store: Option<&(&'static str, StoreChoice)>) -> Result<(), InvalidConfig> {
    match store {
        Some((by, _)) => Err(InvalidConfig::new(
            "store",
            by,
            "a cluster node or client keeps its events in JetStream on the cluster's servers: choose no store",
        )),
        None => Ok(()),
    }
}

/// Refuses the embedded store's settings for a runtime that does not use it.
fn only_embedded(
    data_dir: &Option<PathBuf>,
    options: &Option<EmbeddedOptions>,
) -> Result<(), InvalidConfig> {
    if let Some(dir) = data_dir {
        return Err(InvalidConfig::new(
            "data_dir",
            dir,
            "only the embedded store keeps a data directory, and this runtime uses another",
        ));
    }
    if options.is_some() {
        return Err(InvalidConfig::new(
            "embedded_options",
            "set",
            "only the embedded store takes these options, and this runtime uses another",
        ));
    }
    Ok(())
}

/// The registered actor kinds, each a valid name, none twice.
fn kinds_of(registrations: Vec<Registration>) -> Result<Vec<KindInfo>, StartError> {
    let mut kinds: Vec<KindInfo> = Vec::with_capacity(registrations.len());
    for reg in registrations {
        let kind = Kind::new(reg.kind)?;
        if kinds.iter().any(|k| k.name == reg.kind) {
            return Err(StartError::DuplicateKind {
                kind: reg.kind.to_owned(),
            });
        }
        kinds.push(KindInfo {
            name: reg.kind,
            kind,
            snapshot_every: reg.snapshot_every,
            remote: reg.remote,
        });
    }
    Ok(kinds)
}

/// Step 2: the store and, in a cluster, the connection and membership.
async fn backend(
    role: Role,
    namespace: &Namespace,
    config: &RuntimeConfig,
) -> Result<Backend, StartError> {
    match role {
        Role::Client { nats } => client_backend(&nats, namespace, config).await,
        Role::Node(cc) => node_backend(*cc, namespace, config).await,
        Role::Single {
            store,
            data_dir,
            embedded,
        } => single_backend(store, data_dir, embedded, namespace, config).await,
    }
}

/// A cluster client: a connection and the namespace's JetStream store. It fails fast: its
/// caller decides whether to wait for the cluster.
async fn client_backend(
    nats: &NatsConfig,
    namespace: &Namespace,
    config: &RuntimeConfig,
) -> Result<Backend, StartError> {
    let client = nats
        .connect_once(&format!("aether-client-{namespace}"), nats.connect_timeout)
        .await
        .map_err(|e| StartError::Cluster(e.into()))?;
    let options = JetStreamOptions {
        max_commit_bytes: config.max_commit_bytes,
        ..JetStreamOptions::default()
    };
    let store =
        Arc::new(JetStreamStore::with_client(client.clone(), namespace.clone(), options).await?);
    Ok(Backend {
        events: store.clone(),
        snapshots: store,
        location: format!("cluster client of {} (hosts no actors)", nats.servers()),
        data_dir: None,
        cluster: None,
        transport: Some(Arc::new(Transport::new(
            client.clone(),
            namespace.clone(),
            config.remote_attempt_timeout,
            tokio::runtime::Handle::current(),
        ))),
        // The map is only followed to send concurrent asks in batches (`cluster/client_map.rs`).
        placement: Some(crate::cluster::ClientMap::follow(
            client.clone(),
            namespace.clone(),
        )),
        nats: Some(client),
        events_in_jetstream: true,
    })
}

/// A cluster node: a connection (waiting for the servers up to the join timeout), its
/// JetStream store, and membership in the cluster.
async fn node_backend(
    cc: ClusterConfig,
    namespace: &Namespace,
    config: &RuntimeConfig,
) -> Result<Backend, StartError> {
    // A node may start before its NATS servers accept connections.
    let link = crate::connection::Link::new();
    let client = cc
        .nats
        .connect(
            &format!("aether-{}", cc.node_id),
            cc.nats.connect_timeout,
            cc.join_timeout,
            &link,
        )
        .await
        .map_err(|e| StartError::Cluster(e.into()))?;
    let options = JetStreamOptions {
        replicas: cc.replicas,
        max_commit_bytes: config.max_commit_bytes,
        ..JetStreamOptions::default()
    };
    // A node may start alongside a fresh NATS cluster still electing its JetStream leader:
    // keep trying until the join timeout.
    let deadline = tokio::time::Instant::now() + cc.join_timeout;
    let store = loop {
        match JetStreamStore::with_client(client.clone(), namespace.clone(), options.clone()).await
        {
            Ok(store) => break Arc::new(store),
            Err(StoreError::Unavailable(reason)) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(%reason, "JetStream not ready; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let location = format!(
        "JetStream at {}, stream {} (cluster node {})",
        cc.nats.servers(),
        store.stream_name(),
        cc.node_id
    );
    let joined = Cluster::join(cc, client.clone(), link, config.shard_count)
        .await
        .map_err(StartError::Cluster)?;
    Ok(Backend {
        events: store.clone(),
        snapshots: store,
        location,
        data_dir: None,
        placement: Some(joined.placement()),
        cluster: Some(joined),
        transport: Some(Arc::new(Transport::new(
            client.clone(),
            namespace.clone(),
            config.remote_attempt_timeout,
            tokio::runtime::Handle::current(),
        ))),
        nats: Some(client),
        events_in_jetstream: true,
    })
}

/// A single node: the store it was given, the embedded one by default.
async fn single_backend(
    store: StoreChoice,
    data_dir: Option<PathBuf>,
    mut embedded: EmbeddedOptions,
    namespace: &Namespace,
    config: &RuntimeConfig,
) -> Result<Backend, StartError> {
    let local = |events: Arc<dyn EventStore>, snapshots, location: String| Backend {
        events,
        snapshots,
        location,
        data_dir: None,
        cluster: None,
        transport: None,
        nats: None,
        placement: None,
        events_in_jetstream: false,
    };
    Ok(match store {
        StoreChoice::Memory => {
            let store = MemoryStore::with_limit(namespace.clone(), config.max_commit_bytes);
            local(Arc::new(store.clone()), Arc::new(store), "memory".into())
        }
        StoreChoice::JetStream { nats, mut options } => {
            options.max_commit_bytes = config.max_commit_bytes;
            let location = nats.servers();
            let store =
                Arc::new(JetStreamStore::connect(*nats, namespace.as_str(), options).await?);
            Backend {
                location: format!("JetStream at {location}, stream {}", store.stream_name()),
                nats: Some(store.client().clone()),
                events_in_jetstream: true,
                ..local(store.clone(), store, String::new())
            }
        }
        StoreChoice::Custom(events, snapshots) => {
            if events.namespace() != namespace {
                return Err(StartError::StoreNamespace {
                    store: events.namespace().clone(),
                    runtime: namespace.clone(),
                });
            }
            local(events, snapshots, "custom store".into())
        }
        StoreChoice::Embedded => {
            let dir = data_dir
                .unwrap_or_else(|| PathBuf::from(defaults::DATA_DIR))
                .join(namespace.as_str());
            embedded.max_commit_bytes = config.max_commit_bytes;
            let ns = namespace.clone();
            let open_dir = dir.clone();
            let store = tokio::task::spawn_blocking(move || {
                EmbeddedStore::open_with(open_dir, ns, embedded)
            })
            .await
            .map_err(|e| StoreError::Unavailable(format!("open task failed: {e}")))??;
            let store = Arc::new(store);
            Backend {
                data_dir: Some(dir.clone()),
                ..local(
                    store.clone(),
                    store,
                    format!("embedded store in {}", dir.display()),
                )
            }
        }
    })
}

/// Step 3: the bus — the one given, NATS when events live in JetStream, or local.
fn bus_of(
    given: Option<Bus>,
    nats: Option<async_nats::Client>,
    config: &RuntimeConfig,
    cluster: Option<&Cluster>,
) -> Bus {
    if let Some(bus) = given {
        return bus;
    }
    let bus_config = BusConfig {
        buffer: config.bus_buffer,
        outbound_buffer: config.bus_outbound_buffer,
        origin: cluster.map(|c| c.node_id().to_owned()),
        publish_notices: config.bus_publish_notices,
        forward_unheard: config.bus_forward_unheard,
    };
    match nats {
        Some(client) => Bus::with_nats(client, bus_config),
        None => Bus::local_with(bus_config),
    }
}

/// Step 5: a cluster node answers for its shards. Returns once it does (their previous owners
/// may take up to the handoff timeout to release them); on failure leaves the cluster (and
/// the caller stops the root), so no half-started member heartbeats and holds shards.
async fn serve_shards(c: &Cluster, host: &Arc<Host>) -> Result<Inbound, StartError> {
    let epoch = c.owned_shards().borrow().epoch;
    let dispatch: Arc<dyn Dispatch> = Arc::new(HostDispatch(Arc::downgrade(host)));
    c.start_handoff(Arc::clone(&dispatch));
    let serving = crate::routing::remote::serve(
        c.client().clone(),
        host.namespace.clone(),
        crate::routing::node_subject(&host.namespace, c.node_id()),
        c.serving_shards(),
        dispatch,
    );
    let mut served = serving.served();
    let within = c.config().handoff_timeout + Duration::from_secs(20);
    let ready = tokio::time::timeout(within, served.wait_for(|e| *e >= epoch));
    if !matches!(ready.await, Ok(Ok(_))) {
        c.stop();
        host.shutting_down
            .store(true, std::sync::atomic::Ordering::Release);
        return Err(StartError::Cluster(ClusterError::NotServing {
            waited: within,
        }));
    }
    Ok(serving)
}

/// Step 6: the scheduler that wakes actors with due durable effects and reminders (a store
/// without a wake-up index simply has none).
async fn scheduler(host: &Arc<Host>) -> Option<tokio::task::JoinHandle<()>> {
    match host.events.watch_wakeups().await {
        Ok(feed) => Some(tokio::spawn(crate::workflow::scheduler::run(
            Arc::downgrade(host),
            feed,
        ))),
        Err(StoreError::Unsupported(_)) => None,
        Err(e) => {
            tracing::warn!(error = %e, "no wake-up scheduler: durable work of passivated actors waits for their next command");
            None
        }
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
