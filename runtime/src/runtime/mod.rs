//! [`Runtime`]: one node's actor system for one namespace, and its [builder](RuntimeBuilder).
//!
//! ```ignore
//! let rt = Runtime::builder()
//!     .namespace("bank")
//!     .register::<Account>()
//!     .start()                     // embedded durable store in ./aether-data/bank
//!     .await?;
//! let alice = rt.actor::<Account>("alice")?;
//! let balance: u64 = alice.ask(Deposit(100)).await?;   // the reply type `Deposit` declares
//! rt.shutdown().await?;            // passivate (snapshot) everything, sync the store
//! ```
//!
//! A runtime serves exactly one namespace; a process may run several runtimes side by side.

//!
//! The rooms of this module: [`builder`](RuntimeBuilder) records the choices (every setter is
//! infallible), `wiring` checks them all and starts a runtime step by step — per role: a
//! single node, a cluster node or a cluster client — and this file holds the running
//! [`Runtime`]: refs, stats, projections, passivation and shutdown.

mod builder;
mod wiring;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

pub use builder::RuntimeBuilder;

use crate::actor::host::Host;
use crate::actor::{ActorRef, Behavior, RefError, make_ref};
use crate::bus::durable::{CommitSource, LogSource};
use crate::bus::local::Listed;
use crate::bus::{
    Bus, DurableError, Pattern, Projection, ProjectionError, ProjectionOptions, ReadModel,
    SubscriptionKind,
};
use crate::cluster::{Cluster, ClusterConfig};
use crate::config::RuntimeConfig;
use crate::errors::StartError;
use crate::names::{NameKind, Namespace, validate_name};
use crate::routing::Inbound;
use crate::store::{EventStore, SnapshotStore, StoreError};
use crate::supervision::Rooted;

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
    /// Snapshots not used (unreadable, or written at another state version and not
    /// migrated): the actor replayed its full history instead.
    pub snapshot_fallbacks: u64,
    /// Snapshots written at an older state version and migrated by
    /// [`Behavior::migrate_state`].
    pub snapshot_migrations: u64,
    /// Times retention removed history behind a snapshot
    /// ([`RuntimeConfig::retention`](crate::RuntimeConfig::retention)).
    pub history_truncations: u64,
    /// Handler panics.
    pub handler_panics: u64,
    /// Commands skipped because their asker had already given up.
    pub abandoned: u64,
    /// Actors resident right now (hibernating ones included).
    pub resident: u64,
    /// Resident actors hibernating right now: their state is in memory, their ractor actor
    /// stopped ([`RuntimeConfig::hibernate_after`](crate::RuntimeConfig::hibernate_after)).
    pub hibernating: u64,
    /// Times an idle resident actor hibernated.
    pub hibernations: u64,
    /// Asks to other nodes sent again because their shard was between owners (cluster only;
    /// never counts an ask that may have run).
    pub remote_retries: u64,
    /// Asks to other nodes sent again with the same command id after an attempt got no
    /// answer in time (the actor deduplicates them).
    pub remote_resends: u64,
    /// Asks to other nodes whose first attempt went to the owner node in a batch with others
    /// (the rest go one by one to their actor's subject).
    pub remote_batched: u64,
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
    /// Metrics at work (collector, endpoint), when on.
    reporting: Option<crate::metrics::Reporting>,
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
        RuntimeBuilder::default()
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

    /// The address of this runtime's Prometheus endpoint (`GET /metrics`), when one is
    /// served: the port actually bound, also when the configured one was 0.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.reporting.as_ref().and_then(|r| r.addr())
    }

    /// The counters.
    pub fn stats(&self) -> RuntimeStats {
        self.host.stats_snapshot()
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
            // Passivate now rather than from the root's watcher, which needs tokio to run on:
            // a hibernating actor's kit waits in its mailbox, which the registry holds, and a
            // runtime dropped as its tokio runtime ends would otherwise keep them, and the
            // host, alive. Closing the mailboxes hands every kit to a task.
            self.host.shutting_down.store(true, Ordering::Release);
            drop(self.host.evict_all());
            // Nobody restarts an activation from here on. An activation's task dropped by a
            // tokio runtime that ends would otherwise leave its kit with the host as an orphan
            // (as if its handler had panicked): a cycle that kept the host and its store
            // (and the embedded store's lock on its directory) alive for good.
            self.host.close_orphans();
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
