//! Metrics: what a node measures, and how an operator reads it.
//!
//! Everything goes through the [`metrics`] facade, so any exporter plugs in. Two ways to turn
//! it on (both off by default, and then the hot path pays one branch):
//!
//! - `.metrics_addr("127.0.0.1:9464")` on the builder, or `AETHER_METRICS_ADDR`: the runtime
//!   installs the Prometheus recorder of `metrics-exporter-prometheus` (once per process) and
//!   serves `GET /metrics` on that address (see [`endpoint`]);
//! - `.metrics(true)`, or `AETHER_METRICS=1`: the runtime records into whatever recorder the
//!   application installed itself (StatsD, OpenTelemetry, a test recorder).
//!
//! Two kinds of values, measured two ways:
//!
//! - **per call** — asks by path and outcome, ask/turn/append/activation latency, replay
//!   length — are recorded as they happen into per-thread shards, and handed to the recorder
//!   when it is read (see [`sharded`]): no registry lookup, and no cache line shared between
//!   threads on the hot path;
//! - **state and totals** the runtime already keeps as atomics (resident actors, activations,
//!   conflicts, handoffs, the leader's term, bus drops per subscription, outbox backlogs) are
//!   copied into the recorder when it is read: on every scrape of the endpoint, and every few
//!   seconds otherwise ([`Collector`]). The hot path never pays for them twice.
//!
//! Every series carries `namespace` and `node` labels (`node` is the cluster node id, `local`
//! on a single node, `client` on a cluster client), so one process running several runtimes —
//! or one Prometheus scraping many nodes — keeps them apart. `docs/metrics.md` lists every
//! metric with its labels and meaning; a test holds that list and the scrape to each other.

pub(crate) mod endpoint;
mod sharded;

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use metrics::{Histogram, Label};

use self::sharded::{Here, ShardedCounter, ShardedHistogram};
use tokio::task::JoinHandle;

use crate::actor::host::Host;
use crate::cluster::Cluster;
use crate::config::RuntimeConfig;
use crate::errors::{AskError, CallError, StartError};

/// Which way an ask went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Path {
    /// Served by an activation on this node.
    Local = 0,
    /// Sent over NATS to the shard's owner.
    Remote = 1,
}

impl Path {
    fn label(self) -> &'static str {
        match self {
            Path::Local => "local",
            Path::Remote => "remote",
        }
    }
}

/// The label value of a call error: its variant, in snake case.
pub(crate) fn outcome_of(error: &CallError) -> &'static str {
    match error {
        CallError::VersionConflict { .. } => "version_conflict",
        CallError::Timeout { .. } => "timeout",
        CallError::OutcomeUnknown { .. } => "outcome_unknown",
        CallError::Unavailable { .. } => "unavailable",
        CallError::Codec { .. } => "codec",
        CallError::InvalidName(_) => "invalid_name",
        CallError::UnknownKind { .. } => "unknown_kind",
        CallError::WrongNamespace { .. } => "wrong_namespace",
        CallError::HandlerPanicked { .. } => "handler_panicked",
        CallError::ActivationFailed { .. } => "activation_failed",
        CallError::CallCycle { .. } => "call_cycle",
        CallError::Deadlock { .. } => "deadlock",
        CallError::TooLarge { .. } => "too_large",
        CallError::MailboxFull { .. } => "mailbox_full",
        CallError::Unbound { .. } => "unbound",
        CallError::StoreRefused { .. } => "store_refused",
        CallError::Shutdown => "shutdown",
    }
}

/// The recorder handles of one runtime, registered at start.
pub(crate) struct Meters {
    base: Vec<Label>,
    kinds: Vec<KindMeters>,
}

/// The per-call metrics of one actor kind (see [`sharded`]).
pub(crate) struct KindMeters {
    kind: &'static str,
    base: Vec<Label>,
    ok: [ShardedCounter; 2],
    rejected: [ShardedCounter; 2],
    ask_seconds: [ShardedHistogram; 2],
    turn_seconds: ShardedHistogram,
    append_seconds: ShardedHistogram,
    activation_seconds: ShardedHistogram,
    replay_events: ShardedHistogram,
}

/// A start time for the latencies above: a raw reading of `quanta`'s clock (the TSC where the
/// machine has a reliable one, as the exporter uses), scaled to nanoseconds only when the
/// latency is taken. Read through a clock of our own: `quanta::Instant::now` looks up a
/// thread-local override and scales every reading, which a turn timed twice per ask felt.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Started(u64);

impl Started {
    /// The time since this start.
    pub(crate) fn elapsed(self) -> Duration {
        let clock = clock();
        clock.delta(self.0, clock.raw())
    }
}

/// The process's latency clock (calibrated once, on first use).
fn clock() -> &'static quanta::Clock {
    static CLOCK: std::sync::OnceLock<quanta::Clock> = std::sync::OnceLock::new();
    CLOCK.get_or_init(quanta::Clock::new)
}

/// Now, for [`KindMeters`]' latencies.
pub(crate) fn now() -> Started {
    Started(clock().raw())
}

/// Nanoseconds per second: latencies are recorded in nanoseconds.
const NANOS: f64 = 1e9;

/// `d` in nanoseconds (saturating: past 584 years, who is counting).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Meters {
    /// Registers the metrics of `kinds` for the runtime of `namespace` on `node`, with the
    /// recorder installed now (install a recorder before: handles of none record nothing).
    pub(crate) fn new(namespace: &str, node: &str, kinds: &[&'static str]) -> Meters {
        let base = vec![
            Label::new("namespace", namespace.to_owned()),
            Label::new("node", node.to_owned()),
        ];
        describe();
        Meters {
            kinds: kinds.iter().map(|k| KindMeters::new(&base, k)).collect(),
            base,
        }
    }

    /// The metrics of `kind`.
    #[inline]
    pub(crate) fn kind(&self, kind: &'static str) -> Option<&KindMeters> {
        self.kinds
            .iter()
            .find(|k| std::ptr::eq(k.kind, kind) || k.kind == kind)
    }

    /// Hands what the hot path recorded to the recorder.
    fn export(&self) {
        for k in &self.kinds {
            k.export();
        }
    }
}

impl KindMeters {
    fn new(base: &[Label], kind: &'static str) -> KindMeters {
        let mut labels = base.to_vec();
        labels.push(Label::new("kind", kind));
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut l = labels.clone();
            l.extend(extra.iter().map(|(k, v)| Label::new(*k, *v)));
            l
        };
        let asks = |path: Path, outcome: &'static str| {
            ShardedCounter::new(metrics::counter!(
                "aether_asks_total",
                with(&[("path", path.label()), ("outcome", outcome)])
            ))
        };
        let seconds = |h: Histogram| ShardedHistogram::new(h, endpoint::SECONDS_BUCKETS, NANOS);
        let ask_seconds = |path: Path| {
            seconds(metrics::histogram!(
                "aether_ask_duration_seconds",
                with(&[("path", path.label())])
            ))
        };
        KindMeters {
            kind,
            ok: [asks(Path::Local, "ok"), asks(Path::Remote, "ok")],
            rejected: [
                asks(Path::Local, "rejected"),
                asks(Path::Remote, "rejected"),
            ],
            ask_seconds: [ask_seconds(Path::Local), ask_seconds(Path::Remote)],
            turn_seconds: seconds(metrics::histogram!(
                "aether_turn_duration_seconds",
                labels.clone()
            )),
            append_seconds: seconds(metrics::histogram!(
                "aether_store_append_duration_seconds",
                labels.clone()
            )),
            activation_seconds: seconds(metrics::histogram!(
                "aether_activation_duration_seconds",
                labels.clone()
            )),
            replay_events: ShardedHistogram::new(
                metrics::histogram!("aether_replay_events", labels.clone()),
                endpoint::EVENT_BUCKETS,
                1.0,
            ),
            base: labels,
        }
    }

    /// The latency of a remote ask that started at `started` and just ended.
    pub(crate) fn remote_latency(&self, started: Started) {
        self.ask_seconds[Path::Remote as usize].record(nanos(started.elapsed()));
    }

    /// One turn of a local ask: the turn took `took`, and the ask waited `waited` in all
    /// (measured by the actor: its queue wait and its turn), when known.
    pub(crate) fn local_turn(&self, took: Duration, waited: Option<Duration>) {
        let here = Here::now();
        self.turn_seconds.record_in(here, nanos(took));
        if let Some(waited) = waited {
            self.ask_seconds[Path::Local as usize].record_in(here, nanos(waited));
        }
    }

    /// One ask that went `path` and ended with `result` (its latency is recorded apart).
    pub(crate) fn asked<T, E>(&self, path: Path, result: &Result<T, AskError<E>>) {
        let i = path as usize;
        match result {
            Ok(_) => self.ok[i].add(1),
            Err(AskError::Rejected(_)) => self.rejected[i].add(1),
            // Failures are rare: the registry lookup is fine here.
            Err(AskError::Failed(e)) => {
                let mut labels = self.base.clone();
                labels.push(Label::new("path", path.label()));
                labels.push(Label::new("outcome", outcome_of(e)));
                metrics::counter!("aether_asks_total", labels).increment(1);
            }
        }
    }

    /// One append to the event store that took `took`.
    pub(crate) fn append(&self, took: Duration) {
        self.append_seconds.record(nanos(took));
    }

    /// One activation that took `took` and replayed `events` events.
    pub(crate) fn activated(&self, took: Duration, events: u64) {
        self.activation_seconds.record(nanos(took));
        self.replay_events.record(events);
    }

    fn export(&self) {
        for c in self.ok.iter().chain(&self.rejected) {
            c.export();
        }
        for h in self.ask_seconds.iter().chain([
            &self.turn_seconds,
            &self.append_seconds,
            &self.activation_seconds,
            &self.replay_events,
        ]) {
            h.export();
        }
    }
}

/// One metric: name, type and help text. `docs/metrics.md` documents the same list.
struct Described {
    name: &'static str,
    kind: MetricType,
    help: &'static str,
}

#[derive(Clone, Copy)]
enum MetricType {
    Counter,
    Gauge,
    Histogram,
}

macro_rules! catalog {
    ($($name:literal $kind:ident $help:literal;)*) => {
        const CATALOG: &[Described] = &[$(Described {
            name: $name,
            kind: MetricType::$kind,
            help: $help,
        }),*];
    };
}

catalog! {
    "aether_asks_total" Counter "Asks that ended, by kind, path (local, remote) and outcome (ok, rejected, or the call error)";
    "aether_ask_duration_seconds" Histogram "Time from ask to answer, by kind and path (local asks: the queue wait, to a few milliseconds, plus the turn)";
    "aether_turn_duration_seconds" Histogram "Time of one turn on the actor (handler, append, apply), by kind";
    "aether_store_append_duration_seconds" Histogram "Time of one append to the event store, by kind";
    "aether_activation_duration_seconds" Histogram "Time to activate an actor (snapshot and replay), by kind";
    "aether_replay_events" Histogram "Events replayed per activation, by kind";
    "aether_actors_resident" Gauge "Actors resident on this node";
    "aether_actors_activating" Gauge "Activations loading from the store now";
    "aether_actors_hibernating" Gauge "Resident actors hibernating now (state in memory, no ractor actor)";
    "aether_hibernations_total" Counter "Times an idle resident actor hibernated";
    "aether_activations_total" Counter "Actors activated (including reactivations)";
    "aether_activation_failures_total" Counter "Activations that failed to load";
    "aether_passivations_total" Counter "Actors passivated (idle, evicted, moved, shut down)";
    "aether_replayed_events_total" Counter "Events applied during replays";
    "aether_commits_total" Counter "Commits written by turns";
    "aether_conflicts_total" Counter "Appends refused with a version conflict (a stale activation)";
    "aether_deduplicated_total" Counter "Commands answered from a stored reply instead of applied again";
    "aether_snapshots_saved_total" Counter "Snapshots written";
    "aether_snapshot_fallbacks_total" Counter "Snapshots not used: unreadable, or at another state version and not migrated (full replay instead)";
    "aether_snapshot_migrations_total" Counter "Snapshots at an older state version migrated by migrate_state";
    "aether_history_truncations_total" Counter "Times retention removed history behind a snapshot";
    "aether_handler_panics_total" Counter "Handler panics (the activation restarted from the store)";
    "aether_abandoned_total" Counter "Commands skipped because their asker had given up";
    "aether_deadlocks_refused_total" Counter "Asks refused with Deadlock";
    "aether_remote_retries_total" Counter "Cross-node asks sent again because their shard was between owners";
    "aether_remote_resends_total" Counter "Cross-node asks sent again with the same command id after no answer";
    "aether_remote_batched_total" Counter "Cross-node asks whose first attempt went to the owner node in a batch";
    "aether_effects_applied_total" Counter "Durable effects applied by actors of this node";
    "aether_effects_rejected_total" Counter "Durable effects rejected (and recorded) by actors of this node";
    "aether_effects_duplicates_total" Counter "Durable effects delivered again after they were applied";
    "aether_effects_settled_total" Counter "Durable effects sent by actors of this node and settled by their receivers";
    "aether_effects_retries_total" Counter "Deliveries of durable effects that failed and were retried later";
    "aether_effects_pending" Gauge "Durable effects not yet settled, in the outboxes of resident actors";
    "aether_reminders_pending" Gauge "Reminders scheduled, in the outboxes of resident actors";
    "aether_cluster_leader_term" Gauge "The term of the leader this node follows (0: none known)";
    "aether_cluster_is_leader" Gauge "1 on the node that holds the leader lease";
    "aether_cluster_map_epoch" Gauge "The epoch of the shard map this node serves";
    "aether_cluster_shards_owned" Gauge "Shards this node owns in the current map";
    "aether_cluster_nodes" Gauge "Nodes alive in this node's view of the cluster";
    "aether_handoff_shards_gained_total" Counter "Shards this node started serving after a handoff";
    "aether_handoff_shards_released_total" Counter "Shards this node stopped serving and released";
    "aether_handoff_forced_total" Counter "Gained shards served before every previous owner released them";
    "aether_handoff_actors_drained_total" Counter "Actors passivated because their shard moved away";
    "aether_handoff_drain_timeouts_total" Counter "Drains that took longer than the handoff timeout";
    "aether_handoff_last_seconds" Gauge "The last handoff into this node, from adopting the map to serving";
    "aether_handoff_last_drain_seconds" Gauge "The last drain of shards this node lost";
    "aether_bus_published_total" Counter "Events published on the bus (actor and system)";
    "aether_bus_delivered_total" Counter "Deliveries into local subscription buffers";
    "aether_bus_dropped_total" Counter "Deliveries dropped because a subscriber's buffer was full";
    "aether_bus_remote_sent_total" Counter "Events sent to other nodes over NATS";
    "aether_bus_remote_dropped_total" Counter "Events not sent to NATS (queue full or send failed)";
    "aether_bus_remote_unheard_total" Counter "Events not sent to NATS because no bus listened in their namespace";
    "aether_bus_remote_received_total" Counter "Events received from other nodes";
    "aether_bus_malformed_total" Counter "Bus messages from NATS that did not decode";
    "aether_bus_subscriptions" Gauge "Live bus subscriptions";
    "aether_bus_subscription_delivered_total" Counter "Events delivered to one subscription, by subscription and pattern";
    "aether_bus_subscription_dropped_total" Counter "Events dropped for one subscription (its buffer was full)";
    "aether_bus_subscription_pending" Gauge "Events waiting in one subscription's buffer";
}

/// Gives every metric of the catalog its help text (once per process is enough; repeating is
/// harmless).
fn describe() {
    for d in CATALOG {
        match d.kind {
            MetricType::Counter => metrics::describe_counter!(d.name, d.help),
            MetricType::Gauge => metrics::describe_gauge!(d.name, d.help),
            MetricType::Histogram => metrics::describe_histogram!(d.name, d.help),
        }
    }
}

/// Copies one runtime's state and totals into the recorder (see the [module docs](self)).
pub(crate) struct Collector {
    host: Weak<Host>,
    cluster: Option<Cluster>,
    base: Vec<Label>,
}

impl Collector {
    pub(crate) fn new(host: &Arc<Host>, cluster: Option<Cluster>, meters: &Meters) -> Collector {
        Collector {
            host: Arc::downgrade(host),
            cluster,
            base: meters.base.clone(),
        }
    }

    /// Records the current values (and hands what the hot path recorded over).
    pub(crate) fn collect(&self) {
        let Some(host) = self.host.upgrade() else {
            return;
        };
        if let Some(meters) = host.all_meters() {
            meters.export();
        }
        let base = &self.base;
        let counter = |name: &'static str, value: u64| {
            metrics::counter!(name, base.clone()).absolute(value);
        };
        let gauge = |name: &'static str, value: f64| {
            metrics::gauge!(name, base.clone()).set(value);
        };
        let s = host.stats_snapshot();
        gauge("aether_actors_resident", s.resident as f64);
        gauge("aether_actors_activating", host.activating() as f64);
        gauge("aether_actors_hibernating", s.hibernating as f64);
        counter("aether_hibernations_total", s.hibernations);
        counter("aether_activations_total", s.activations);
        counter("aether_activation_failures_total", s.activation_failures);
        counter("aether_passivations_total", s.passivations);
        counter("aether_replayed_events_total", s.replayed_events);
        counter("aether_commits_total", s.commits);
        counter("aether_conflicts_total", s.conflicts);
        counter("aether_deduplicated_total", s.deduplicated);
        counter("aether_snapshots_saved_total", s.snapshots_saved);
        counter("aether_snapshot_fallbacks_total", s.snapshot_fallbacks);
        counter("aether_snapshot_migrations_total", s.snapshot_migrations);
        counter("aether_history_truncations_total", s.history_truncations);
        counter("aether_handler_panics_total", s.handler_panics);
        counter("aether_abandoned_total", s.abandoned);
        counter("aether_deadlocks_refused_total", s.deadlocks_refused);
        counter("aether_remote_retries_total", s.remote_retries);
        counter("aether_remote_resends_total", s.remote_resends);
        counter("aether_remote_batched_total", s.remote_batched);
        counter("aether_effects_applied_total", s.effects_applied);
        counter("aether_effects_rejected_total", s.effects_rejected);
        counter("aether_effects_duplicates_total", s.effects_duplicates);
        counter("aether_effects_settled_total", s.effects_settled);
        counter("aether_effects_retries_total", s.effects_retries);
        let (effects, reminders) = host.outbox_backlog();
        gauge("aether_effects_pending", effects as f64);
        gauge("aether_reminders_pending", reminders as f64);
        if let Some(cluster) = &self.cluster {
            let leader = cluster.leader();
            gauge(
                "aether_cluster_leader_term",
                leader.as_ref().map_or(0.0, |l| l.term as f64),
            );
            gauge(
                "aether_cluster_is_leader",
                if cluster.is_leader() { 1.0 } else { 0.0 },
            );
            let map = cluster.shard_map();
            let owned = map
                .as_ref()
                .map_or(0, |m| m.shards_of(cluster.node_id()).len());
            gauge("aether_cluster_shards_owned", owned as f64);
            gauge(
                "aether_cluster_nodes",
                cluster
                    .topology()
                    .iter()
                    .filter(|n| n.record.status == crate::cluster::NodeStatus::Alive)
                    .count() as f64,
            );
            let h = cluster.handoff_stats();
            gauge("aether_cluster_map_epoch", h.serving_epoch as f64);
            counter("aether_handoff_shards_gained_total", h.shards_gained);
            counter("aether_handoff_shards_released_total", h.shards_released);
            counter("aether_handoff_forced_total", h.forced);
            counter("aether_handoff_actors_drained_total", h.actors_drained);
            counter("aether_handoff_drain_timeouts_total", h.drain_timeouts);
            gauge(
                "aether_handoff_last_seconds",
                h.last_handoff_ms as f64 / 1e3,
            );
            gauge(
                "aether_handoff_last_drain_seconds",
                h.last_drain_ms as f64 / 1e3,
            );
        }
        let b = host.bus.stats();
        counter("aether_bus_published_total", b.published);
        counter("aether_bus_delivered_total", b.delivered);
        counter("aether_bus_dropped_total", b.dropped);
        counter("aether_bus_remote_sent_total", b.remote_sent);
        counter("aether_bus_remote_dropped_total", b.remote_dropped);
        counter("aether_bus_remote_unheard_total", b.remote_unheard);
        counter("aether_bus_remote_received_total", b.remote_received);
        counter("aether_bus_malformed_total", b.malformed);
        gauge("aether_bus_subscriptions", b.subscriptions as f64);
        for sub in host.bus.subscriptions() {
            let mut labels = base.clone();
            labels.push(Label::new("subscription", sub.id.to_string()));
            labels.push(Label::new("pattern", sub.pattern.to_string()));
            metrics::counter!("aether_bus_subscription_delivered_total", labels.clone())
                .absolute(sub.delivered);
            metrics::counter!("aether_bus_subscription_dropped_total", labels.clone())
                .absolute(sub.dropped);
            metrics::gauge!("aether_bus_subscription_pending", labels).set(sub.pending as f64);
        }
    }
}

/// What a runtime with metrics on sets up before anything else starts: the endpoint's socket
/// (bound first, so a taken port refuses the start before a store is opened) and the recorder.
pub(crate) struct Setup {
    listener: Option<(SocketAddr, std::net::TcpListener)>,
    prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

impl Setup {
    /// `None` when metrics are off.
    pub(crate) fn prepare(config: &RuntimeConfig) -> Result<Option<Setup>, StartError> {
        if !config.metrics() {
            return Ok(None);
        }
        let Some(addr) = config.metrics_addr() else {
            return Ok(Some(Setup {
                listener: None,
                prometheus: None,
            }));
        };
        let refused = |reason: String| StartError::Metrics { addr, reason };
        let listener = std::net::TcpListener::bind(addr).map_err(|e| refused(e.to_string()))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| refused(e.to_string()))?;
        let prometheus = endpoint::prometheus().map_err(|e| {
            refused(format!(
                "{e} (another recorder was installed first: use .metrics(true) to record into it)"
            ))
        })?;
        Ok(Some(Setup {
            listener: Some((addr, listener)),
            prometheus: Some(prometheus),
        }))
    }
}

/// A runtime's metrics at work: its collector, its endpoint, and the upkeep task. Stops when
/// dropped.
pub(crate) struct Reporting {
    _collector: Arc<Collector>,
    endpoint: Option<endpoint::Endpoint>,
    upkeep: JoinHandle<()>,
}

/// How often state is copied into a recorder nobody scrapes, and the exporter kept tidy.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

impl Reporting {
    /// Starts reporting `host`'s (and `cluster`'s) metrics, as `setup` prepared.
    pub(crate) fn start(
        setup: Setup,
        host: &Arc<Host>,
        cluster: Option<Cluster>,
    ) -> Result<Reporting, StartError> {
        let Some(meters) = host.all_meters() else {
            return Err(StartError::Supervision(
                "metrics were set up but the host has no meters".into(),
            ));
        };
        let collector = Arc::new(Collector::new(host, cluster, meters));
        endpoint::register(&collector);
        let endpoint = match setup.listener {
            Some((addr, listener)) => {
                let handle = setup
                    .prometheus
                    .clone()
                    .ok_or_else(|| StartError::Metrics {
                        addr,
                        reason: "no Prometheus recorder".into(),
                    })?;
                Some(
                    endpoint::serve(listener, handle).map_err(|e| StartError::Metrics {
                        addr,
                        reason: e.to_string(),
                    })?,
                )
            }
            None => None,
        };
        let scraped = endpoint.is_some();
        let weak = Arc::downgrade(&collector);
        let upkeep = tokio::spawn(async move {
            let mut tick = tokio::time::interval(UPKEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(collector) = weak.upgrade() else {
                    return;
                };
                // A scraped endpoint collects on every scrape; another recorder needs pushing.
                if !scraped {
                    collector.collect();
                }
                if let Some(handle) = endpoint::prometheus_installed() {
                    handle.run_upkeep();
                }
            }
        });
        Ok(Reporting {
            _collector: collector,
            endpoint,
            upkeep,
        })
    }

    /// The endpoint's address, when one is served.
    pub(crate) fn addr(&self) -> Option<SocketAddr> {
        self.endpoint.as_ref().map(endpoint::Endpoint::addr)
    }
}

impl Drop for Reporting {
    fn drop(&mut self) {
        self.upkeep.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `docs/metrics.md` documents exactly the catalog, each name once.
    #[test]
    fn the_docs_list_every_metric_of_the_catalog() {
        let docs = include_str!("../../../docs/metrics.md");
        let documented: std::collections::BTreeSet<&str> = docs
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .filter(|n| n.starts_with("aether_"))
            .collect();
        let catalog: std::collections::BTreeSet<&str> = CATALOG.iter().map(|d| d.name).collect();
        assert_eq!(documented, catalog);
        assert_eq!(catalog.len(), CATALOG.len(), "a name appears twice");
    }
}
