//! Cluster settings.

use std::time::Duration;

use crate::config::{InvalidConfig, duration};

/// How a node joins a cluster. Build with [`ClusterConfig::new`].
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// NATS server URLs, comma-separated.
    pub urls: String,
    /// The namespace (one cluster of runtimes per namespace).
    pub namespace: String,
    /// This node's id: unique in the cluster, `[A-Za-z0-9_-]{1,64}`. Default: `node-<random>`.
    pub node_id: String,
    /// How often a node heartbeats (default 1 s). The leader ticks at the same rate.
    pub heartbeat: Duration,
    /// A node silent for this long is declared failed (default 3 s).
    pub failure_timeout: Duration,
    /// Leader lease length (default 3 s). The leader renews every third of it and stops acting
    /// when a renewal is overdue by more than two thirds.
    pub lease: Duration,
    /// Replicas of the cluster's streams and buckets (1; 3 on a 3-server NATS cluster).
    pub replicas: usize,
    /// How long `join_cluster` waits for the first shard map that includes this node.
    pub join_timeout: Duration,
    /// Capacity advertised in the node registry (relative weight; informational for now).
    pub capacity: u32,
    /// The hard deadline of a handoff (default 10 s). The old owner of a moving shard gets this
    /// long to finish its running turns and stop its activations; the new owner waits this long
    /// for the old owner's release before it serves the shard anyway (the store's version
    /// check still fences a straggler). Failed nodes are never waited for.
    pub handoff_timeout: Duration,
}

impl ClusterConfig {
    /// A node of namespace `namespace` on the NATS servers at `urls`.
    pub fn new(urls: impl Into<String>, namespace: impl Into<String>) -> Self {
        ClusterConfig {
            urls: urls.into(),
            namespace: namespace.into(),
            node_id: format!(
                "node-{:08x}",
                crate::wire::CommandId::random().as_u128() as u32
            ),
            heartbeat: Duration::from_secs(1),
            failure_timeout: Duration::from_secs(3),
            lease: Duration::from_secs(3),
            replicas: 1,
            join_timeout: Duration::from_secs(30),
            capacity: 1,
            handoff_timeout: Duration::from_secs(10),
        }
    }

    /// Sets the node id.
    pub fn node_id(mut self, id: impl Into<String>) -> Self {
        self.node_id = id.into();
        self
    }

    /// Sets the heartbeat interval.
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }

    /// Sets the failure timeout.
    pub fn failure_timeout(mut self, timeout: Duration) -> Self {
        self.failure_timeout = timeout;
        self
    }

    /// Sets the leader lease length.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Sets the hard deadline of a handoff.
    pub fn handoff_timeout(mut self, timeout: Duration) -> Self {
        self.handoff_timeout = timeout;
        self
    }

    /// Sets the replicas of the cluster's streams and buckets.
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// Checks every limit (`start` and `join_cluster` call it): durations above zero and at
    /// most a year; a failure timeout and a lease of at least two heartbeats each (a node that
    /// misses one beat is not failed, a leader that misses one renewal keeps its lease);
    /// 1 to 5 replicas (JetStream's range); at least one NATS URL.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if self.urls.split(',').all(|u| u.trim().is_empty()) {
            return Err(InvalidConfig::new(
                "urls",
                &self.urls,
                "at least one NATS URL",
            ));
        }
        duration("heartbeat", self.heartbeat)?;
        duration("failure_timeout", self.failure_timeout)?;
        duration("lease", self.lease)?;
        duration("join_timeout", self.join_timeout)?;
        duration("handoff_timeout", self.handoff_timeout)?;
        if self.failure_timeout < self.heartbeat * 2 {
            return Err(InvalidConfig::new(
                "failure_timeout",
                self.failure_timeout,
                "must be at least two heartbeats",
            ));
        }
        if self.lease < self.heartbeat * 2 {
            return Err(InvalidConfig::new(
                "lease",
                self.lease,
                "must be at least two heartbeats",
            ));
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(InvalidConfig::new("replicas", self.replicas, "1 to 5"));
        }
        Ok(())
    }

    /// Reads `AETHER_NATS_URL`, `AETHER_NAMESPACE`, `AETHER_NODE_ID`, `AETHER_REPLICAS`,
    /// `AETHER_HEARTBEAT_MS`, `AETHER_FAILURE_TIMEOUT_MS`, `AETHER_LEASE_MS`,
    /// `AETHER_HANDOFF_TIMEOUT_MS` (for binaries).
    pub fn from_env() -> Result<Self, String> {
        let get = |n: &str| std::env::var(n).ok().filter(|v| !v.trim().is_empty());
        let urls = get("AETHER_NATS_URL").ok_or("AETHER_NATS_URL is not set")?;
        let namespace = get("AETHER_NAMESPACE").unwrap_or_else(|| "default".into());
        let mut config = ClusterConfig::new(urls, namespace);
        if let Some(id) = get("AETHER_NODE_ID") {
            config.node_id = id;
        }
        let ms = |n: &str| -> Result<Option<Duration>, String> {
            get(n)
                .map(|v| {
                    v.parse::<u64>()
                        .map(Duration::from_millis)
                        .map_err(|_| format!("{n}={v:?} is not a number of milliseconds"))
                })
                .transpose()
        };
        if let Some(d) = ms("AETHER_HEARTBEAT_MS")? {
            config.heartbeat = d;
        }
        if let Some(d) = ms("AETHER_FAILURE_TIMEOUT_MS")? {
            config.failure_timeout = d;
        }
        if let Some(d) = ms("AETHER_LEASE_MS")? {
            config.lease = d;
        }
        if let Some(d) = ms("AETHER_HANDOFF_TIMEOUT_MS")? {
            config.handoff_timeout = d;
        }
        if let Some(r) = get("AETHER_REPLICAS") {
            config.replicas = r
                .parse()
                .map_err(|_| format!("AETHER_REPLICAS={r:?} is not a number"))?;
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_every_bad_limit_is_named() {
        let ok = ClusterConfig::new("nats://127.0.0.1:4222", "ns");
        assert_eq!(ok.validate(), Ok(()));
        type Set = fn(ClusterConfig) -> ClusterConfig;
        let cases: [(&str, Set); 9] = [
            ("urls", |c| ClusterConfig {
                urls: " , ".into(),
                ..c
            }),
            ("heartbeat", |c| c.heartbeat(Duration::ZERO)),
            ("heartbeat", |c| c.heartbeat(Duration::MAX)),
            ("failure_timeout", |c| {
                c.failure_timeout(Duration::from_millis(1500))
            }),
            ("lease", |c| c.lease(Duration::from_millis(1999))),
            ("lease", |c| c.lease(Duration::ZERO)),
            ("handoff_timeout", |c| c.handoff_timeout(Duration::ZERO)),
            ("replicas", |c| c.replicas(0)),
            ("replicas", |c| c.replicas(7)),
        ];
        for (field, set) in cases {
            let err = set(ok.clone()).validate().expect_err(field);
            assert_eq!(err.field, field, "{err}");
        }
    }
}
