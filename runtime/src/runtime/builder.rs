//! [`RuntimeBuilder`]: what a runtime is made of — its namespace, actor types, configuration,
//! store and cluster role.
//!
//! Every setter is infallible and only records the choice; [`RuntimeBuilder::start`] (in
//! `wiring.rs`) checks them all at once and answers a bad or contradictory choice
//! with a typed [`StartError`] naming the setting: an invalid namespace, two different stores,
//! a data directory for a store that has none, a limit out of range.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::actor::Behavior;
use crate::actor::remote::{KindRemote, RemoteKind};
use crate::bus::Bus;
use crate::cluster::ClusterConfig;
use crate::config::RuntimeConfig;
use crate::connection::NatsConfig;
use crate::errors::StartError;
use crate::store::{EmbeddedOptions, EventStore, JetStreamOptions, SnapshotStore};

/// Where the events live, as chosen on the builder.
pub(super) enum StoreChoice {
    /// The embedded store (the default), in [`RuntimeBuilder::data_dir`].
    Embedded,
    Memory,
    JetStream {
        nats: Box<NatsConfig>,
        options: JetStreamOptions,
    },
    Custom(Arc<dyn EventStore>, Arc<dyn SnapshotStore>),
}

/// Registration of one actor type.
pub(super) struct Registration {
    pub kind: &'static str,
    pub snapshot_every: Option<u64>,
    pub remote: Arc<dyn RemoteKind>,
}

/// Builds a [`Runtime`](crate::Runtime). Start from [`Runtime::builder`](crate::Runtime::builder).
#[must_use = "a builder does nothing until `start` is awaited"]
#[derive(Default)]
pub struct RuntimeBuilder {
    pub(super) namespace: Option<String>,
    pub(super) registrations: Vec<Registration>,
    pub(super) config: RuntimeConfig,
    /// The store, with the setter (or variable) that chose it; `None`: the embedded default.
    pub(super) store: Option<(&'static str, StoreChoice)>,
    /// Two different store choices, refused at start.
    pub(super) store_conflict: Option<String>,
    pub(super) data_dir: Option<PathBuf>,
    pub(super) embedded_options: Option<EmbeddedOptions>,
    pub(super) cluster: Option<ClusterConfig>,
    pub(super) client_of: Option<NatsConfig>,
    pub(super) bus: Option<Bus>,
    pub(super) supervisor: Option<ractor::ActorCell>,
}

impl RuntimeBuilder {
    /// Starts the runtime's root ractor actor linked under `supervisor` (see
    /// [`supervision`](crate::supervision)): the supervisor is told `ActorStarted` when the
    /// runtime is up and `ActorTerminated` after
    /// [`Runtime::shutdown`](crate::Runtime::shutdown); when the supervisor
    /// stops, the runtime stops serving (actors passivated, later asks fail with `Shutdown`).
    pub fn supervised_by(mut self, supervisor: ractor::ActorCell) -> Self {
        self.supervisor = Some(supervisor);
        self
    }

    /// Sets the namespace (`[A-Za-z0-9_-]`, 1–64 characters). Required, except on a cluster
    /// node (it comes from the [`ClusterConfig`]). An invalid name fails
    /// [`start`](Self::start) with [`StartError::InvalidName`].
    pub fn namespace(mut self, namespace: impl AsRef<str>) -> Self {
        self.namespace = Some(namespace.as_ref().to_owned());
        self
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

    /// Replaces the whole configuration, e.g. with [`RuntimeConfig::from_env`]. The setters
    /// below change one setting each.
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
        if std::env::var("AETHER_NATS_URL").is_ok_and(|urls| !urls.trim().is_empty()) {
            self.choose_store(
                "AETHER_NATS_URL",
                StoreChoice::JetStream {
                    nats: Box::new(NatsConfig::from_env()?),
                    options: JetStreamOptions::default(),
                },
            );
        }
        if self.data_dir.is_none()
            && matches!(self.store, None | Some((_, StoreChoice::Embedded)))
            && let Ok(dir) = std::env::var("AETHER_DATA_DIR")
            && !dir.trim().is_empty()
        {
            self.data_dir = Some(PathBuf::from(dir));
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

    /// Hibernate actors idle this long (`None`: never): they stay resident, with their state in
    /// memory, but their ractor actor stops until the next message (see
    /// [`RuntimeConfig::hibernate_after`](crate::RuntimeConfig::hibernate_after)).
    pub fn hibernate_after(mut self, after: Option<Duration>) -> Self {
        self.config.hibernate_after = after;
        self
    }

    /// Most resident actors; the least recently used are passivated beyond it.
    pub fn max_resident(mut self, max: usize) -> Self {
        self.config.max_resident = max;
        self
    }

    /// Most commands waiting per actor: beyond it, an ask waits for room (until its deadline)
    /// and a tell fails with `MailboxFull`. Exact: while a turn waits, the activation moves
    /// queued commands into its own queue (to answer them by their deadlines and see
    /// resends), and they still count.
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

    /// Retention: after each snapshot, remove the actor's events older than `keep` events
    /// before it (`None`, the default: keep all history). Works on every store, cluster nodes
    /// included; see [`RuntimeConfig::retention`] for what it costs.
    pub fn retention(mut self, keep: Option<u64>) -> Self {
        self.config.retention = keep;
        self
    }

    /// Most activations loading from the store at once (protects the store during failover).
    pub fn max_concurrent_replays(mut self, max: usize) -> Self {
        self.config.max_concurrent_replays = max;
        self
    }

    /// Shards per namespace (fixed for the life of a namespace: every node and client of a
    /// namespace must agree).
    pub fn shard_count(mut self, shards: u32) -> Self {
        self.config.shard_count = shards;
        self
    }

    /// Largest encoded commit accepted.
    pub fn max_commit_bytes(mut self, bytes: usize) -> Self {
        self.config.max_commit_bytes = bytes;
        self
    }

    /// How long shutdown waits for actors to finish and passivate.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.config.shutdown_timeout = timeout;
        self
    }

    /// How long the first attempt of a cross-node ask waits before it is sent again with the
    /// same command id (each resend waits twice as long, all within the ask's deadline).
    pub fn remote_attempt_timeout(mut self, timeout: Duration) -> Self {
        self.config.remote_attempt_timeout = timeout;
        self
    }

    /// The longest pause before a durable effect is delivered again to a receiver that could
    /// not take it (pauses start at 100 ms and double up to this).
    pub fn effect_retry_max(mut self, max: Duration) -> Self {
        self.config.effect_retry_max = max;
        self
    }

    /// Events buffered per live bus subscription before new ones are dropped for it.
    pub fn bus_buffer(mut self, events: usize) -> Self {
        self.config.bus_buffer = events;
        self
    }

    /// Events queued for NATS (distributed bus) before new ones are dropped.
    pub fn bus_outbound_buffer(mut self, events: usize) -> Self {
        self.config.bus_outbound_buffer = events;
        self
    }

    /// Publishes, every `every`, an `EventsPublished` notice on `<ns>.system.EventsPublished`
    /// with what the bus published meanwhile (events, local deliveries and drops, events
    /// queued for other nodes). Off by default.
    pub fn bus_publish_notices(mut self, every: Duration) -> Self {
        self.config.bus_publish_notices = Some(every);
        self
    }

    /// Sends every bus event to NATS, even while no bus listens in its namespace. Off by
    /// default: the bus probes who listens and stays quiet where nobody does (see
    /// `aether::bus::interest`). Turn it on for plain NATS clients that follow the live
    /// subjects without answering the probe.
    pub fn bus_forward_unheard(mut self, on: bool) -> Self {
        self.config.bus_forward_unheard = on;
        self
    }

    /// Serves Prometheus metrics on `addr` (`GET /metrics`; port 0 picks a free port, see
    /// `Runtime::metrics_addr`), and records them. Off by default. See `docs/metrics.md`.
    pub fn metrics_addr(mut self, addr: impl Into<std::net::SocketAddr>) -> Self {
        self.config.metrics_addr = Some(addr.into());
        self
    }

    /// Records metrics into the `metrics` recorder the application installed (StatsD,
    /// OpenTelemetry, its own Prometheus exporter). Off by default; implied by
    /// [`metrics_addr`](Self::metrics_addr).
    pub fn metrics(mut self, on: bool) -> Self {
        self.config.metrics = on;
        self
    }

    /// Traces one workflow in `n` (1: every one, 0: none; default 1 000): their calls get
    /// `tracing` spans on every node, joined into one trace (see `docs/operations.md`).
    pub fn trace_one_in(mut self, n: u32) -> Self {
        self.config.trace_one_in = n;
        self
    }

    /// Keeps the embedded store under `base/<namespace>` instead of `./aether-data/<namespace>`.
    /// Only for the embedded store: with another store, [`start`](Self::start) refuses it.
    pub fn data_dir(mut self, base: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(base.into());
        self
    }

    /// Sets options of the embedded store (kept with [`data_dir`](Self::data_dir), in either
    /// order). Only for the embedded store: with another store, [`start`](Self::start)
    /// refuses it.
    pub fn embedded_options(mut self, options: EmbeddedOptions) -> Self {
        self.embedded_options = Some(options);
        self
    }

    /// Records a store choice; a second, different one is refused at start.
    fn choose_store(&mut self, by: &'static str, choice: StoreChoice) {
        if let Some((earlier, _)) = &self.store
            && *earlier != by
            && self.store_conflict.is_none()
        {
            self.store_conflict = Some(format!("{earlier} and {by}"));
        }
        self.store = Some((by, choice));
    }

    /// Stores events and snapshots in NATS JetStream — at a URL (comma-separated URLs), or
    /// through a [`NatsConfig`] with credentials and TLS — in stream
    /// `<namespace>_events` and bucket `<namespace>_snapshots`. Needs nats-server 2.11+.
    pub fn jetstream(self, nats: impl Into<NatsConfig>) -> Self {
        self.jetstream_with(nats, JetStreamOptions::default())
    }

    /// Like [`RuntimeBuilder::jetstream`], with options (replicas, retention, ...).
    pub fn jetstream_with(
        mut self,
        nats: impl Into<NatsConfig>,
        options: JetStreamOptions,
    ) -> Self {
        self.choose_store(
            "jetstream",
            StoreChoice::JetStream {
                nats: Box::new(nats.into()),
                options,
            },
        );
        self
    }

    /// Keeps everything in memory: nothing survives the process. For tests and demos.
    pub fn memory_store(mut self) -> Self {
        self.choose_store("memory_store", StoreChoice::Memory);
        self
    }

    /// Uses the given stores (they must serve the runtime's namespace).
    pub fn store(mut self, events: Arc<dyn EventStore>, snapshots: Arc<dyn SnapshotStore>) -> Self {
        self.choose_store("store", StoreChoice::Custom(events, snapshots));
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

    /// Makes this runtime a node of a cluster (see
    /// [`Runtime::join_cluster`](crate::Runtime::join_cluster)). Events go to
    /// JetStream on the cluster's NATS servers; the namespace comes from `config` when not set.
    pub fn cluster(mut self, config: ClusterConfig) -> Self {
        self.cluster = Some(config);
        self
    }

    /// Makes this runtime a **client** of the cluster on NATS (a URL, comma-separated URLs,
    /// or a [`NatsConfig`] with credentials and TLS):
    /// it hosts no actor and owns no shard, and every ask goes over NATS to the node that
    /// serves the actor's shard — retried with the same command id while the shard moves.
    /// It follows the shard map read-only, so that asks made at once go to their owner node in
    /// batches (one message per node instead of one per ask); the owner still decides.
    /// For services that call actors without hosting them, and for tools and tests. Needs the
    /// namespace (`.namespace(...)`) and the actor types it calls (`.register::<A>()`).
    /// `rt.event_store()` reads the namespace's JetStream history.
    pub fn cluster_client(mut self, nats: impl Into<NatsConfig>) -> Self {
        self.client_of = Some(nats.into());
        self
    }
}
