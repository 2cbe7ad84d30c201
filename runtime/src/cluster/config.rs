//! Cluster settings.

use std::time::Duration;

use crate::config::{ConfigError, InvalidConfig, duration};
use crate::connection::NatsConfig;

/// How a node joins a cluster: build with [`ClusterConfig::new`] and the setters (one per
/// setting), or read it from the environment with [`ClusterConfig::from_env`].
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// How to reach NATS: servers, credentials, TLS, connection timeout.
    pub(crate) nats: NatsConfig,
    /// The namespace (one cluster of runtimes per namespace).
    pub(crate) namespace: String,
    /// This node's id: unique in the cluster, `[A-Za-z0-9_-]{1,64}`. Default: `node-<random>`.
    pub(crate) node_id: String,
    /// How often a node heartbeats (default 1 s): it writes its record once and beats four
    /// times per heartbeat, and the leader acts four times per heartbeat.
    pub(crate) heartbeat: Duration,
    /// A node silent for this long is declared failed (default 3 s).
    pub(crate) failure_timeout: Duration,
    /// Leader lease length (default 3 s). The leader renews every third of it and stops acting
    /// when a renewal is overdue by more than two thirds.
    pub(crate) lease: Duration,
    /// Replicas of the cluster's streams and buckets (1; 3 on a 3-server NATS cluster).
    pub(crate) replicas: usize,
    /// How long `join_cluster` waits for the first shard map that includes this node.
    pub(crate) join_timeout: Duration,
    /// The hard deadline of a handoff (default 10 s). The old owner of a moving shard gets this
    /// long to finish its running turns and stop its activations; the new owner waits this long
    /// for the old owner's release before it serves the shard anyway (the store's version
    /// check still fences a straggler). Failed nodes are never waited for.
    pub(crate) handoff_timeout: Duration,
}

impl ClusterConfig {
    /// A node of namespace `namespace` on NATS: a URL (comma-separated URLs), or a
    /// [`NatsConfig`] with credentials and TLS. A node keeps attempting to connect until the
    /// join timeout, each attempt bounded by [`NatsConfig::connect_timeout`].
    pub fn new(nats: impl Into<NatsConfig>, namespace: impl Into<String>) -> Self {
        ClusterConfig {
            nats: nats.into(),
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

    /// Sets how long `join_cluster` waits for the first shard map that includes this node.
    pub fn join_timeout(mut self, timeout: Duration) -> Self {
        self.join_timeout = timeout;
        self
    }

    /// How this node reaches NATS.
    pub fn nats(&self) -> &NatsConfig {
        &self.nats
    }

    /// The namespace this node serves.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        &self.node_id
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
        self.nats.validate()?;
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

    /// A node configured from the environment: `AETHER_NATS_URL` and `AETHER_NAMESPACE` are
    /// required (there is no default namespace: a node that guessed one would join a cluster
    /// nobody else is in); the rest as in [`env_overrides`](Self::env_overrides).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Applies the `AETHER_*` cluster variables that are set to this configuration:
    /// `AETHER_NATS_URL`, `AETHER_NAMESPACE`, `AETHER_NODE_ID`, `AETHER_HEARTBEAT_MS`,
    /// `AETHER_FAILURE_TIMEOUT_MS`, `AETHER_LEASE_MS`, `AETHER_HANDOFF_TIMEOUT_MS`,
    /// `AETHER_JOIN_TIMEOUT_MS` and `AETHER_REPLICAS`, and the connection's variables
    /// (credentials, TLS, `AETHER_CONNECT_TIMEOUT_MS`: see [`NatsConfig::from_env`]). A value
    /// that does not parse is an error naming the variable; limits are checked at start, like
    /// those set in code.
    pub fn env_overrides(self) -> Result<Self, ConfigError> {
        self.overridden_by(|name| std::env::var(name).ok())
    }

    pub(crate) fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let set = |name: &'static str, expected: &'static str| {
            get(name)
                .filter(|v| !v.trim().is_empty())
                .ok_or(ConfigError {
                    name,
                    value: String::new(),
                    expected,
                })
        };
        let urls = set("AETHER_NATS_URL", "NATS URL (the variable is required)")?;
        let namespace = set("AETHER_NAMESPACE", "namespace (the variable is required)")?;
        ClusterConfig::new(urls, namespace).overridden_by(get)
    }

    pub(crate) fn overridden_by(
        mut self,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let get = |n: &str| get(n).filter(|v| !v.trim().is_empty());
        self.nats = self.nats.overridden_by(get)?;
        if let Some(namespace) = get("AETHER_NAMESPACE") {
            self.namespace = namespace;
        }
        if let Some(id) = get("AETHER_NODE_ID") {
            self.node_id = id;
        }
        let ms = |name: &'static str| -> Result<Option<Duration>, ConfigError> {
            get(name)
                .map(|value| {
                    value
                        .trim()
                        .parse::<u64>()
                        .map(Duration::from_millis)
                        .map_err(|_| ConfigError {
                            name,
                            value,
                            expected: "number of milliseconds",
                        })
                })
                .transpose()
        };
        for (name, slot) in [
            ("AETHER_HEARTBEAT_MS", &mut self.heartbeat),
            ("AETHER_FAILURE_TIMEOUT_MS", &mut self.failure_timeout),
            ("AETHER_LEASE_MS", &mut self.lease),
            ("AETHER_HANDOFF_TIMEOUT_MS", &mut self.handoff_timeout),
            ("AETHER_JOIN_TIMEOUT_MS", &mut self.join_timeout),
        ] {
            if let Some(d) = ms(name)? {
                *slot = d;
            }
        }
        if let Some(value) = get("AETHER_REPLICAS") {
            self.replicas = value.trim().parse().map_err(|_| ConfigError {
                name: "AETHER_REPLICAS",
                value,
                expected: "number of replicas",
            })?;
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn the_environment_names_the_cluster_and_no_namespace_is_guessed() {
        let config = ClusterConfig::from_vars(vars(&[
            ("AETHER_NATS_URL", "nats://127.0.0.1:4222"),
            ("AETHER_NAMESPACE", "bank"),
            ("AETHER_NODE_ID", "node-7"),
            ("AETHER_HEARTBEAT_MS", "250"),
            ("AETHER_JOIN_TIMEOUT_MS", "9000"),
            ("AETHER_REPLICAS", "3"),
        ]))
        .expect("parses");
        assert_eq!(config.namespace, "bank");
        assert_eq!(config.node_id, "node-7");
        assert_eq!(config.heartbeat, Duration::from_millis(250));
        assert_eq!(config.join_timeout, Duration::from_secs(9));
        assert_eq!(config.replicas, 3);
        // No namespace: an error naming the variable, not a node of namespace "default".
        let missing = ClusterConfig::from_vars(vars(&[("AETHER_NATS_URL", "nats://x:1")]))
            .expect_err("a namespace is required");
        assert_eq!(missing.name, "AETHER_NAMESPACE");
        let missing = ClusterConfig::from_vars(vars(&[("AETHER_NAMESPACE", "bank")]))
            .expect_err("a URL is required");
        assert_eq!(missing.name, "AETHER_NATS_URL");
        // A value that does not parse names its variable and value.
        let bad = ClusterConfig::new("nats://x:1", "bank")
            .overridden_by(vars(&[("AETHER_LEASE_MS", "3s")]))
            .expect_err("not milliseconds");
        assert_eq!((bad.name, bad.value.as_str()), ("AETHER_LEASE_MS", "3s"));
        // Overrides leave what is not set alone.
        let kept = ClusterConfig::new("nats://x:1", "bank")
            .overridden_by(vars(&[]))
            .expect("nothing to apply");
        assert_eq!(kept.namespace, "bank");
    }

    #[test]
    fn the_defaults_are_valid_and_every_bad_limit_is_named() {
        let ok = ClusterConfig::new("nats://127.0.0.1:4222", "ns");
        assert_eq!(ok.validate(), Ok(()));
        type Set = fn(ClusterConfig) -> ClusterConfig;
        let cases: [(&str, Set); 10] = [
            ("urls", |c| ClusterConfig {
                nats: " , ".into(),
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
            ("connect_timeout", |c| ClusterConfig {
                nats: NatsConfig::new("nats://h:1").connect_timeout(Duration::ZERO),
                ..c
            }),
            ("replicas", |c| c.replicas(0)),
            ("replicas", |c| c.replicas(7)),
        ];
        for (field, set) in cases {
            let err = set(ok.clone()).validate().expect_err(field);
            assert_eq!(err.field, field, "{err}");
        }
    }
}
