//! An in-process cluster: N runtimes in one test process, each a full cluster node with its own
//! connection to NATS, so routing, handoff and failover run for real.
//!
//! ```no_run
//! # async fn demo() {
//! use aether_testkit::{cluster::TestCluster, nats::NatsServer};
//! let server = NatsServer::start();
//! let cluster = TestCluster::start(&server.url(), "shop", 3, |builder| builder)
//!     .await
//!     .expect("three nodes join");
//! cluster.settled().await.expect("every node serves its shards");
//! # }
//! ```
//!
//! `configure` receives each node's `Runtime::builder()` to register your actor kinds and
//! settings; the cluster timing is fast (failures found within about a second). Stop a node
//! with [`TestCluster::stop`] (graceful: its shards are handed off). A crash needs a process
//! of its own: see [`crate::process`].

use std::time::Duration;

use aether_runtime::cluster::NotSettled;
use aether_runtime::{ClusterConfig, Runtime, RuntimeBuilder, StartError};

/// How long [`TestCluster::settled`] waits.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Cluster timing for tests: heartbeats every 200 ms, a node is failed after 1 s.
pub fn fast_config(urls: &str, namespace: &str, node_id: &str, replicas: usize) -> ClusterConfig {
    ClusterConfig::new(urls, namespace)
        .node_id(node_id)
        .heartbeat(Duration::from_millis(200))
        .failure_timeout(Duration::from_millis(1000))
        .lease(Duration::from_millis(1000))
        .replicas(replicas)
}

/// N cluster nodes in this process, named `node-1` … `node-N`.
pub struct TestCluster {
    urls: String,
    namespace: String,
    replicas: usize,
    nodes: Vec<Option<Runtime>>,
}

impl TestCluster {
    /// Starts `n` nodes on the NATS servers at `urls` (comma-separated), one after the other.
    /// Streams get one replica per server given, up to 3.
    pub async fn start(
        urls: &str,
        namespace: &str,
        n: usize,
        configure: impl Fn(RuntimeBuilder) -> RuntimeBuilder,
    ) -> Result<TestCluster, StartError> {
        let replicas = urls.split(',').count().clamp(1, 3);
        let mut cluster = TestCluster {
            urls: urls.to_owned(),
            namespace: namespace.to_owned(),
            replicas,
            nodes: Vec::with_capacity(n),
        };
        for i in 1..=n {
            let config = fast_config(urls, namespace, &format!("node-{i}"), replicas);
            let node = Runtime::join_cluster(config, configure(Runtime::builder())).await?;
            cluster.nodes.push(Some(node));
        }
        Ok(cluster)
    }

    /// Node `i` (0-based), if it still runs.
    pub fn node(&self, i: usize) -> Option<&Runtime> {
        self.nodes.get(i).and_then(Option::as_ref)
    }

    /// The nodes that still run.
    pub fn running(&self) -> impl Iterator<Item = &Runtime> {
        self.nodes.iter().flatten()
    }

    /// The NATS URLs the nodes use.
    pub fn urls(&self) -> &str {
        &self.urls
    }

    /// Waits until every running node sees a shard map of exactly the running nodes and
    /// serves its part of it (handoffs finished).
    pub async fn settled(&self) -> Result<u64, NotSettled> {
        let alive = self.running().count();
        let mut epoch = 0;
        for node in self.running() {
            if let Some(cluster) = node.cluster() {
                epoch = cluster.settled_with(alive, SETTLE_TIMEOUT).await?;
            }
        }
        Ok(epoch)
    }

    /// Adds a node (`node-<N+1>`) configured by `configure`.
    pub async fn add(
        &mut self,
        configure: impl Fn(RuntimeBuilder) -> RuntimeBuilder,
    ) -> Result<&Runtime, StartError> {
        let id = format!("node-{}", self.nodes.len() + 1);
        let config = fast_config(&self.urls, &self.namespace, &id, self.replicas);
        let node = Runtime::join_cluster(config, configure(Runtime::builder())).await?;
        self.nodes.push(Some(node));
        Ok(self
            .nodes
            .last()
            .and_then(Option::as_ref)
            .expect("just added"))
    }

    /// Shuts node `i` down gracefully: it hands its shards off before it leaves.
    pub async fn stop(&mut self, i: usize) {
        if let Some(node) = self.nodes.get_mut(i).and_then(Option::take)
            && let Err(e) = node.shutdown().await
        {
            eprintln!("node-{} shut down with an error: {e}", i + 1);
        }
    }

    /// Shuts every running node down.
    pub async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i).await;
        }
    }
}
