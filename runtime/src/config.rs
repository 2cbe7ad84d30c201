//! Configuration: every timeout and bound, with its default, in one place.
//!
//! There is one way to set each: a method of `Runtime::builder()` with the setting's name (and
//! for a cluster node, a method of `ClusterConfig`), or, for binaries, the environment variable
//! read by [`RuntimeConfig::from_env`] (`ClusterConfig::from_env` for the cluster's). The
//! builder's `.config(...)` hands over a whole [`RuntimeConfig`] read that way.
//!
//! | setting | default | environment (binaries) |
//! |---|---|---|
//! | [`ask_timeout`](RuntimeConfig::ask_timeout) | 5 s | `AETHER_ASK_TIMEOUT_MS` |
//! | [`idle_passivation`](RuntimeConfig::idle_passivation) | 10 min | `AETHER_IDLE_PASSIVATION_MS` (0 = never) |
//! | [`hibernate_after`](RuntimeConfig::hibernate_after) | 30 s | `AETHER_HIBERNATE_AFTER_MS` (0 = never) |
//! | [`max_resident`](RuntimeConfig::max_resident) | 100 000 actors | `AETHER_MAX_RESIDENT` |
//! | [`mailbox_capacity`](RuntimeConfig::mailbox_capacity) | 1 024 commands | `AETHER_MAILBOX_CAPACITY` |
//! | [`dedup_window`](RuntimeConfig::dedup_window) | 64 commands per actor | `AETHER_DEDUP_WINDOW` |
//! | [`max_concurrent_replays`](RuntimeConfig::max_concurrent_replays) | 32 | `AETHER_MAX_CONCURRENT_REPLAYS` |
//! | [`shard_count`](RuntimeConfig::shard_count) | 1 024 | `AETHER_SHARD_COUNT` |
//! | [`max_commit_bytes`](RuntimeConfig::max_commit_bytes) | 1 MiB | `AETHER_MAX_COMMIT_BYTES` |
//! | [`snapshot_on_passivation`](RuntimeConfig::snapshot_on_passivation) | on | `AETHER_SNAPSHOT_ON_PASSIVATION` (0/1) |
//! | [`retention`](RuntimeConfig::retention) | off (all history kept) | `AETHER_RETENTION_KEEP_EVENTS` (events kept behind each snapshot) |
//! | [`shutdown_timeout`](RuntimeConfig::shutdown_timeout) | 10 s | `AETHER_SHUTDOWN_TIMEOUT_MS` |
//! | [`remote_attempt_timeout`](RuntimeConfig::remote_attempt_timeout) | 1 s (doubling per resend) | `AETHER_REMOTE_ATTEMPT_TIMEOUT_MS` |
//! | [`effect_retry_max`](RuntimeConfig::effect_retry_max) | 10 s (from 100 ms, doubling) | `AETHER_EFFECT_RETRY_MAX_MS` |
//! | [`bus_buffer`](RuntimeConfig::bus_buffer) | 1 024 events per subscription | `AETHER_BUS_BUFFER` |
//! | [`bus_outbound_buffer`](RuntimeConfig::bus_outbound_buffer) | 16 384 events | `AETHER_BUS_OUTBOUND_BUFFER` |
//! | [`bus_publish_notices`](RuntimeConfig::bus_publish_notices) | off | `AETHER_BUS_PUBLISH_NOTICES_MS` (0 = off) |
//! | [`bus_forward_unheard`](RuntimeConfig::bus_forward_unheard) | off (events go to NATS only while a bus listens) | `AETHER_BUS_FORWARD_UNHEARD` (0/1) |
//! | [`metrics_addr`](RuntimeConfig::metrics_addr) | none | `AETHER_METRICS_ADDR` (e.g. `127.0.0.1:9464`) |
//! | [`metrics`](RuntimeConfig::metrics) | off (on with an address) | `AETHER_METRICS` (0/1) |
//! | [`trace_one_in`](RuntimeConfig::trace_one_in) | 1 000 (one workflow in 1 000 traced) | `AETHER_TRACE_ONE_IN` (1 = all, 0 = none) |
//! | data directory of the embedded store | `./aether-data/<namespace>` | `AETHER_DATA_DIR` |
//!
//! Every value is checked when the runtime starts ([`RuntimeConfig::validate`]): a zero
//! capacity, a zero or absurdly long duration (over [`MAX_DURATION`]) or a commit limit too
//! small for a commit's framing stops `start()` with [`InvalidConfig`] naming the field,
//! instead of a panic or a silent clamp later. Cluster timing is checked the same way
//! (`ClusterConfig::validate`: a lease or failure timeout shorter than two heartbeats is
//! refused).
//!
//! Resident actors cost memory that the allocator does not hand back to the operating system,
//! so residency is bounded: past [`max_resident`](RuntimeConfig::max_resident) the least
//! recently used actors are passivated first.

use std::time::Duration;

/// The defaults, named so code and docs can point at them.
pub(crate) mod defaults {
    use std::time::Duration;

    /// How long an ask waits for its reply.
    pub const ASK_TIMEOUT: Duration = Duration::from_secs(5);
    /// How long an actor may sit idle before it is passivated.
    pub const IDLE_PASSIVATION: Duration = Duration::from_secs(600);
    /// How long a resident actor may sit idle before it hibernates.
    pub const HIBERNATE_AFTER: Duration = Duration::from_secs(30);
    /// Most actors resident on one node.
    pub const MAX_RESIDENT: usize = 100_000;
    /// Most commands queued for one actor.
    pub const MAILBOX_CAPACITY: usize = 1024;
    /// Recent command ids (with replies) remembered per actor for deduplication.
    pub const DEDUP_WINDOW: usize = 64;
    /// Most activations replaying from the store at once.
    pub const MAX_CONCURRENT_REPLAYS: usize = 32;
    /// Shards per namespace. Fixed for the life of a namespace.
    pub const SHARD_COUNT: u32 = 1024;
    /// Largest encoded commit.
    pub const MAX_COMMIT_BYTES: usize = crate::store::DEFAULT_MAX_COMMIT_BYTES;
    /// How long a graceful shutdown waits for actors to passivate.
    pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
    /// How long the first attempt of a cross-node ask waits for an answer before it is sent
    /// again with the same command id (each resend waits twice as long).
    pub const REMOTE_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
    /// [`RuntimeConfig::effect_retry_max`](super::RuntimeConfig::effect_retry_max).
    pub const EFFECT_RETRY_MAX: Duration = Duration::from_secs(10);
    /// Events buffered per live bus subscription; past it, new events are dropped for that
    /// subscriber and counted (the publisher never waits).
    pub const BUS_BUFFER: usize = 1024;
    /// Events queued for NATS by a distributed bus; past it, new ones are dropped and counted.
    pub const BUS_OUTBOUND_BUFFER: usize = 16_384;
    /// [`RuntimeConfig::trace_one_in`](super::RuntimeConfig::trace_one_in). A traced local
    /// ask costs 5–10 µs with an exporter installed, an untraced one under 1 µs: one in 1 000
    /// keeps tracing under about 1 % of the fastest path, and still traces a thousand
    /// workflows a second on a node serving a million asks.
    pub const TRACE_ONE_IN: u32 = 1000;
    /// Directory under which the embedded store keeps one folder per namespace.
    pub const DATA_DIR: &str = "aether-data";
}

/// Runtime settings, read-only: set them with the methods of `Runtime::builder()` (one per
/// setting, same name), or read them from the environment with [`RuntimeConfig::from_env`]
/// and hand them over with `.config(...)`. A running runtime shows its settings through
/// `Runtime::config()`, with one getter per setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// How long an ask waits for its reply, end to end.
    pub(crate) ask_timeout: Duration,
    /// Passivate actors idle for this long; `None` keeps them until evicted or shut down.
    pub(crate) idle_passivation: Option<Duration>,
    /// Hibernate resident actors idle for this long; `None`: never. See
    /// [`RuntimeConfig::hibernate_after`].
    pub(crate) hibernate_after: Option<Duration>,
    /// Most resident actors; beyond it the least recently used are passivated.
    pub(crate) max_resident: usize,
    /// Most commands waiting per actor; senders wait (ask) or fail (tell) when full. Commands
    /// the activation moved into its own queue while a turn waits still count (see
    /// [`RuntimeBuilder::mailbox_capacity`](crate::RuntimeBuilder::mailbox_capacity)).
    pub(crate) mailbox_capacity: usize,
    /// Recent command ids remembered per actor: a retry within this window is answered with the
    /// original reply instead of being applied again.
    pub(crate) dedup_window: usize,
    /// Most activations loading from the store at once (protects the store during failover).
    pub(crate) max_concurrent_replays: usize,
    /// Shards per namespace.
    pub(crate) shard_count: u32,
    /// Largest encoded commit accepted.
    pub(crate) max_commit_bytes: usize,
    /// Snapshot an actor on passivation when it stored events since its last snapshot.
    pub(crate) snapshot_on_passivation: bool,
    /// After each snapshot, remove the actor's events older than this many events before it
    /// (`None`: keep all history). See [`RuntimeConfig::retention`].
    pub(crate) retention: Option<u64>,
    /// How long shutdown waits for actors to finish and passivate.
    pub(crate) shutdown_timeout: Duration,
    /// How long the first attempt of a cross-node ask waits before it is sent again with the
    /// same command id; each resend waits twice as long, all within the ask's deadline. NATS
    /// delivers a request at most once — a request can be lost when its shard's owner crashes
    /// or unsubscribes at that instant — so a resend (deduplicated by the actor) bounds what
    /// such a loss costs the caller.
    pub(crate) remote_attempt_timeout: Duration,
    /// The longest pause before a durable effect is delivered again to a receiver that could
    /// not take it (unreachable, its shard moving): pauses start at 100 ms and double up to
    /// this. Lower it to deliver sooner after an outage, raise it to spare a receiver that is
    /// down for long.
    pub(crate) effect_retry_max: Duration,
    /// Events buffered per live bus subscription before new ones are dropped for it.
    pub(crate) bus_buffer: usize,
    /// Events queued for NATS (distributed bus) before new ones are dropped.
    pub(crate) bus_outbound_buffer: usize,
    /// Publish an `EventsPublished` notice per namespace this often; `None`: no notices.
    pub(crate) bus_publish_notices: Option<Duration>,
    /// Send every bus event to NATS even while no bus listens in its namespace.
    pub(crate) bus_forward_unheard: bool,
    /// Serve Prometheus metrics (`GET /metrics`) on this address; `None`: no endpoint.
    pub(crate) metrics_addr: Option<std::net::SocketAddr>,
    /// Record metrics into the process's `metrics` recorder (implied by `metrics_addr`).
    pub(crate) metrics: bool,
    /// Trace one workflow in this many (1: all, 0: none); see `wire::TraceParent`.
    pub(crate) trace_one_in: u32,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            ask_timeout: defaults::ASK_TIMEOUT,
            idle_passivation: Some(defaults::IDLE_PASSIVATION),
            hibernate_after: Some(defaults::HIBERNATE_AFTER),
            max_resident: defaults::MAX_RESIDENT,
            mailbox_capacity: defaults::MAILBOX_CAPACITY,
            dedup_window: defaults::DEDUP_WINDOW,
            max_concurrent_replays: defaults::MAX_CONCURRENT_REPLAYS,
            shard_count: defaults::SHARD_COUNT,
            max_commit_bytes: defaults::MAX_COMMIT_BYTES,
            snapshot_on_passivation: true,
            retention: None,
            shutdown_timeout: defaults::SHUTDOWN_TIMEOUT,
            remote_attempt_timeout: defaults::REMOTE_ATTEMPT_TIMEOUT,
            effect_retry_max: defaults::EFFECT_RETRY_MAX,
            bus_buffer: defaults::BUS_BUFFER,
            bus_outbound_buffer: defaults::BUS_OUTBOUND_BUFFER,
            bus_publish_notices: None,
            bus_forward_unheard: false,
            metrics_addr: None,
            metrics: false,
            trace_one_in: defaults::TRACE_ONE_IN,
        }
    }
}

/// One getter per setting.
impl RuntimeConfig {
    /// How long an ask waits for its reply, end to end.
    pub fn ask_timeout(&self) -> Duration {
        self.ask_timeout
    }

    /// Passivate actors idle for this long; `None` keeps them until evicted or shut down.
    pub fn idle_passivation(&self) -> Option<Duration> {
        self.idle_passivation
    }

    /// Hibernate resident actors idle for this long; `None`: never.
    ///
    /// A hibernating actor stays resident — its state, its dedup window and its outbox stay
    /// in memory, and it counts toward [`max_resident`](RuntimeConfig::max_resident) — but
    /// its ractor actor stops, and with it the actor's task and channels: about three quarters
    /// of what an idle resident actor costs. The next message spawns a ractor actor again
    /// (no replay: the state is at hand). Actors with durable work pending (effects,
    /// reminders) stay awake.
    pub fn hibernate_after(&self) -> Option<Duration> {
        self.hibernate_after
    }

    /// Most resident actors; beyond it the least recently used are passivated.
    pub fn max_resident(&self) -> usize {
        self.max_resident
    }

    /// Most commands queued per actor; senders wait (ask) or fail (tell) when full.
    pub fn mailbox_capacity(&self) -> usize {
        self.mailbox_capacity
    }

    /// Recent command ids remembered per actor: a retry within this window is answered with the
    /// original reply instead of being applied again.
    pub fn dedup_window(&self) -> usize {
        self.dedup_window
    }

    /// Most activations loading from the store at once (protects the store during failover).
    pub fn max_concurrent_replays(&self) -> usize {
        self.max_concurrent_replays
    }

    /// Shards per namespace.
    pub fn shard_count(&self) -> u32 {
        self.shard_count
    }

    /// Largest encoded commit accepted.
    pub fn max_commit_bytes(&self) -> usize {
        self.max_commit_bytes
    }

    /// Snapshot an actor on passivation when it stored events since its last snapshot.
    pub fn snapshot_on_passivation(&self) -> bool {
        self.snapshot_on_passivation
    }

    /// Retention: after saving a snapshot at version `v`, the runtime removes the actor's
    /// commits that end before `v + 1 - keep` (see
    /// [`EventStore::truncate_before`](crate::store::EventStore::truncate_before)); `None`
    /// keeps all history. The space comes back on every store: JetStream purges, the embedded
    /// store deletes and compacts.
    ///
    /// With history removed, an actor loads only from its snapshot: a version of the code that
    /// cannot use that snapshot (a newer `state_version` written it, or it declines to migrate
    /// it) fails to activate with [`StoreError::HistoryTruncated`](crate::store::StoreError)
    /// instead of replaying — roll back across a state-version change only with retention off.
    /// Projections reading the namespace log from the start see only what is left.
    pub fn retention(&self) -> Option<u64> {
        self.retention
    }

    /// How long shutdown waits for actors to finish and passivate.
    pub fn shutdown_timeout(&self) -> Duration {
        self.shutdown_timeout
    }

    /// How long the first attempt of a cross-node ask waits before it is sent again with the
    /// same command id; each resend waits twice as long, all within the ask's deadline. NATS
    /// delivers a request at most once — a request can be lost when its shard's owner crashes
    /// or unsubscribes at that instant — so a resend (deduplicated by the actor) bounds what
    /// such a loss costs the caller.
    pub fn remote_attempt_timeout(&self) -> Duration {
        self.remote_attempt_timeout
    }

    /// The longest pause before a durable effect is delivered again to a receiver that could
    /// not take it (unreachable, its shard moving): pauses start at 100 ms and double up to
    /// this. Lower it to deliver sooner after an outage, raise it to spare a receiver that is
    /// down for long.
    pub fn effect_retry_max(&self) -> Duration {
        self.effect_retry_max
    }

    /// Events buffered per live bus subscription before new ones are dropped for it.
    pub fn bus_buffer(&self) -> usize {
        self.bus_buffer
    }

    /// Events queued for NATS (distributed bus) before new ones are dropped.
    pub fn bus_outbound_buffer(&self) -> usize {
        self.bus_outbound_buffer
    }

    /// Publish an `EventsPublished` notice per namespace this often; `None`: no notices.
    pub fn bus_publish_notices(&self) -> Option<Duration> {
        self.bus_publish_notices
    }

    /// Whether every bus event goes to NATS even while no bus listens in its namespace (see
    /// `aether::bus::interest`).
    pub fn bus_forward_unheard(&self) -> bool {
        self.bus_forward_unheard
    }

    /// The address of the Prometheus endpoint, if one is served (as configured: with port 0,
    /// `Runtime::metrics_addr` tells the port chosen).
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr
    }

    /// Whether metrics are recorded (see the `metrics` module).
    pub fn metrics(&self) -> bool {
        self.metrics || self.metrics_addr.is_some()
    }

    /// One workflow in this many is traced: its calls get spans on every node (1: all, 0:
    /// none). The choice is made once per workflow, from its trace id (the correlation id),
    /// and travels with every call (in the request frame, and in the `traceparent` header of a
    /// traced call), so a workflow is traced on every node or on none. An ask made inside an
    /// OpenTelemetry trace is always traced (with the `opentelemetry` feature). Default 1 000.
    pub fn trace_one_in(&self) -> u32 {
        self.trace_one_in
    }
}

/// An environment variable held a value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("environment variable {name}={value:?} is not a valid {expected}")]
pub struct ConfigError {
    /// The variable.
    pub name: &'static str,
    /// Its value.
    pub value: String,
    /// What was expected.
    pub expected: &'static str,
}

impl RuntimeConfig {
    /// The defaults, overridden by the `AETHER_*` variables of the [module table](self).
    pub fn from_env() -> Result<Self, ConfigError> {
        RuntimeConfig::default().with_overrides(|name| std::env::var(name).ok())
    }

    /// Applies overrides read through `lookup` (an environment, a map in tests).
    pub(crate) fn with_overrides(
        mut self,
        lookup: impl Fn(&'static str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        fn num<T: std::str::FromStr>(
            lookup: &impl Fn(&'static str) -> Option<String>,
            name: &'static str,
        ) -> Result<Option<T>, ConfigError> {
            match lookup(name) {
                None => Ok(None),
                Some(value) => value.trim().parse().map(Some).map_err(|_| ConfigError {
                    name,
                    value,
                    expected: "non-negative integer",
                }),
            }
        }
        let ms = |v: u64| Duration::from_millis(v);
        if let Some(v) = num::<u64>(&lookup, "AETHER_ASK_TIMEOUT_MS")? {
            self.ask_timeout = ms(v);
        }
        if let Some(v) = num::<u64>(&lookup, "AETHER_IDLE_PASSIVATION_MS")? {
            self.idle_passivation = (v > 0).then(|| ms(v));
        }
        if let Some(v) = num::<u64>(&lookup, "AETHER_HIBERNATE_AFTER_MS")? {
            self.hibernate_after = (v > 0).then(|| ms(v));
        }
        if let Some(v) = num(&lookup, "AETHER_MAX_RESIDENT")? {
            self.max_resident = v;
        }
        if let Some(v) = num(&lookup, "AETHER_MAILBOX_CAPACITY")? {
            self.mailbox_capacity = v;
        }
        if let Some(v) = num(&lookup, "AETHER_DEDUP_WINDOW")? {
            self.dedup_window = v;
        }
        if let Some(v) = num(&lookup, "AETHER_MAX_CONCURRENT_REPLAYS")? {
            self.max_concurrent_replays = v;
        }
        if let Some(v) = num(&lookup, "AETHER_SHARD_COUNT")? {
            self.shard_count = v;
        }
        if let Some(v) = num(&lookup, "AETHER_MAX_COMMIT_BYTES")? {
            self.max_commit_bytes = v;
        }
        if let Some(v) = num::<u8>(&lookup, "AETHER_SNAPSHOT_ON_PASSIVATION")? {
            self.snapshot_on_passivation = v != 0;
        }
        if let Some(v) = num::<u64>(&lookup, "AETHER_RETENTION_KEEP_EVENTS")? {
            self.retention = Some(v);
        }
        if let Some(v) = num::<u64>(&lookup, "AETHER_SHUTDOWN_TIMEOUT_MS")? {
            self.shutdown_timeout = ms(v);
        }
        if let Some(v) = num::<u64>(&lookup, "AETHER_REMOTE_ATTEMPT_TIMEOUT_MS")? {
            self.remote_attempt_timeout = ms(v.max(1));
        }
        if let Some(v) = num::<u64>(&lookup, "AETHER_EFFECT_RETRY_MAX_MS")? {
            self.effect_retry_max = ms(v);
        }
        if let Some(v) = num(&lookup, "AETHER_BUS_BUFFER")? {
            self.bus_buffer = v;
        }
        if let Some(v) = num(&lookup, "AETHER_BUS_OUTBOUND_BUFFER")? {
            self.bus_outbound_buffer = v;
        }
        if let Some(v) = num::<u64>(&lookup, "AETHER_BUS_PUBLISH_NOTICES_MS")? {
            self.bus_publish_notices = (v > 0).then(|| ms(v));
        }
        if let Some(v) = num::<u8>(&lookup, "AETHER_BUS_FORWARD_UNHEARD")? {
            self.bus_forward_unheard = v != 0;
        }
        if let Some(value) = lookup("AETHER_METRICS_ADDR") {
            let value = value.trim().to_owned();
            if !value.is_empty() {
                self.metrics_addr = Some(value.parse().map_err(|_| ConfigError {
                    name: "AETHER_METRICS_ADDR",
                    value,
                    expected: "socket address (such as 127.0.0.1:9464)",
                })?);
            }
        }
        if let Some(v) = num::<u8>(&lookup, "AETHER_METRICS")? {
            self.metrics = v != 0;
        }
        if let Some(v) = num(&lookup, "AETHER_TRACE_ONE_IN")? {
            self.trace_one_in = v;
        }
        Ok(self)
    }

    /// Checks every limit; `Runtime::builder()...start()` calls it and refuses to start on
    /// the first bad value, naming the field. Counts and capacities must be at least 1;
    /// durations must be above zero and at most [`MAX_DURATION`] (a larger one is a unit
    /// mistake, and it would overflow the clock's arithmetic); the largest commit must leave
    /// room for a commit's framing.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        duration("ask_timeout", self.ask_timeout)?;
        if let Some(idle) = self.idle_passivation {
            duration("idle_passivation", idle)?;
        }
        if let Some(after) = self.hibernate_after {
            duration("hibernate_after", after)?;
        }
        at_least_one("max_resident", self.max_resident)?;
        at_least_one("mailbox_capacity", self.mailbox_capacity)?;
        // Zero would turn off deduplication, on which retries and cross-node resends rely.
        at_least_one("dedup_window", self.dedup_window)?;
        at_least_one("max_concurrent_replays", self.max_concurrent_replays)?;
        at_least_one("shard_count", self.shard_count as usize)?;
        if self.shard_count > MAX_SHARD_COUNT {
            return Err(InvalidConfig::new(
                "shard_count",
                self.shard_count,
                "at most 65 536 shards per namespace",
            ));
        }
        if self.max_commit_bytes < MIN_COMMIT_BYTES {
            return Err(InvalidConfig::new(
                "max_commit_bytes",
                self.max_commit_bytes,
                "at least 4 096 bytes (a commit's framing alone takes some)",
            ));
        }
        duration("shutdown_timeout", self.shutdown_timeout)?;
        duration("remote_attempt_timeout", self.remote_attempt_timeout)?;
        duration("effect_retry_max", self.effect_retry_max)?;
        if self.effect_retry_max < MIN_EFFECT_RETRY {
            return Err(InvalidConfig::new(
                "effect_retry_max",
                self.effect_retry_max,
                "at least 100 ms (the first pause)",
            ));
        }
        at_least_one("bus_buffer", self.bus_buffer)?;
        at_least_one("bus_outbound_buffer", self.bus_outbound_buffer)?;
        if let Some(every) = self.bus_publish_notices {
            duration("bus_publish_notices", every)?;
        }
        Ok(())
    }
}

/// The longest duration any setting accepts: a year.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// The most shards a namespace can have.
pub const MAX_SHARD_COUNT: u32 = 65_536;

/// The smallest `max_commit_bytes` accepted.
pub const MIN_COMMIT_BYTES: usize = 4096;

/// The first pause before a durable effect is delivered again; `effect_retry_max` is at least
/// this.
pub(crate) const MIN_EFFECT_RETRY: Duration = Duration::from_millis(100);

/// A setting holds a value the runtime cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {field} = {value}: {reason}")]
pub struct InvalidConfig {
    /// The setting, as named in [`RuntimeConfig`] or `ClusterConfig`.
    pub field: &'static str,
    /// Its value, as text.
    pub value: String,
    /// What it must be.
    pub reason: &'static str,
}

impl InvalidConfig {
    pub(crate) fn new(
        field: &'static str,
        value: impl std::fmt::Debug,
        reason: &'static str,
    ) -> Self {
        InvalidConfig {
            field,
            value: format!("{value:?}"),
            reason,
        }
    }
}

/// `value` must be above zero and at most [`MAX_DURATION`].
pub(crate) fn duration(field: &'static str, value: Duration) -> Result<(), InvalidConfig> {
    if value.is_zero() {
        return Err(InvalidConfig::new(field, value, "must be above zero"));
    }
    if value > MAX_DURATION {
        return Err(InvalidConfig::new(field, value, "must be at most a year"));
    }
    Ok(())
}

fn at_least_one(field: &'static str, value: usize) -> Result<(), InvalidConfig> {
    if value == 0 {
        return Err(InvalidConfig::new(field, value, "must be at least 1"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse_and_reject() {
        let cfg = RuntimeConfig::default()
            .with_overrides(|n| match n {
                "AETHER_ASK_TIMEOUT_MS" => Some("250".into()),
                "AETHER_IDLE_PASSIVATION_MS" => Some("0".into()),
                "AETHER_HIBERNATE_AFTER_MS" => Some("1500".into()),
                _ => None,
            })
            .unwrap();
        assert_eq!(cfg.ask_timeout, Duration::from_millis(250));
        assert_eq!(cfg.idle_passivation, None);
        assert_eq!(cfg.hibernate_after, Some(Duration::from_millis(1500)));
        let bus = RuntimeConfig::default()
            .with_overrides(|n| (n == "AETHER_BUS_BUFFER").then(|| "8".into()))
            .unwrap();
        assert_eq!(bus.bus_buffer, 8);
        assert_eq!(RuntimeConfig::default().bus_buffer, defaults::BUS_BUFFER);
        let err = RuntimeConfig::default()
            .with_overrides(|n| (n == "AETHER_MAX_RESIDENT").then(|| "lots".into()))
            .unwrap_err();
        assert_eq!(err.name, "AETHER_MAX_RESIDENT");
        assert!(err.to_string().contains("not a valid"));
    }

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(RuntimeConfig::default().validate(), Ok(()));
    }

    #[test]
    fn every_bad_limit_is_named() {
        type Set = fn(&mut RuntimeConfig);
        let cases: [(&str, Set); 18] = [
            ("ask_timeout", |c| c.ask_timeout = Duration::ZERO),
            ("ask_timeout", |c| c.ask_timeout = Duration::MAX),
            ("idle_passivation", |c| {
                c.idle_passivation = Some(Duration::ZERO)
            }),
            ("hibernate_after", |c| {
                c.hibernate_after = Some(Duration::ZERO)
            }),
            ("max_resident", |c| c.max_resident = 0),
            ("mailbox_capacity", |c| c.mailbox_capacity = 0),
            ("max_concurrent_replays", |c| c.max_concurrent_replays = 0),
            ("shard_count", |c| c.shard_count = 0),
            ("shard_count", |c| c.shard_count = u32::MAX),
            ("max_commit_bytes", |c| c.max_commit_bytes = 10),
            ("shutdown_timeout", |c| c.shutdown_timeout = Duration::ZERO),
            ("shutdown_timeout", |c| {
                c.shutdown_timeout = MAX_DURATION * 2
            }),
            ("remote_attempt_timeout", |c| {
                c.remote_attempt_timeout = Duration::ZERO
            }),
            ("effect_retry_max", |c| {
                c.effect_retry_max = Duration::from_millis(99)
            }),
            ("effect_retry_max", |c| {
                c.effect_retry_max = MAX_DURATION * 2
            }),
            ("bus_buffer", |c| c.bus_buffer = 0),
            ("bus_outbound_buffer", |c| c.bus_outbound_buffer = 0),
            ("ask_timeout", |c| {
                c.ask_timeout = MAX_DURATION + Duration::from_secs(1)
            }),
        ];
        for (field, set) in cases {
            let mut config = RuntimeConfig::default();
            set(&mut config);
            let err = config.validate().expect_err(field);
            assert_eq!(err.field, field);
            assert!(err.to_string().contains(field), "{err}");
        }
        let never = RuntimeConfig {
            idle_passivation: None,
            ..RuntimeConfig::default()
        };
        assert_eq!(
            never.validate(),
            Ok(()),
            "no idle passivation is meaningful"
        );
        let no_dedup = RuntimeConfig {
            dedup_window: 0,
            ..RuntimeConfig::default()
        };
        assert_eq!(
            no_dedup.validate().map_err(|e| e.field),
            Err("dedup_window"),
            "retries and resends rely on deduplication"
        );
    }
}
