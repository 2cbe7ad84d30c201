//! What every command needs: the connection settings, the namespace, the output format, and
//! the errors that choose the exit status.

use std::time::Duration;

use aether_runtime::bus::BusConfig;
use aether_runtime::cluster::ClusterError;
use aether_runtime::store::{JetStreamOptions, JetStreamStore, StoreError};
use aether_runtime::{Bus, ClusterView, Namespace, NatsConfig};
use anyhow::Context as _;

/// NATS could not be reached, or refused the credentials (exit status 3).
#[derive(Debug)]
pub struct Unreachable(pub String);

/// The arguments are wrong in a way only the command can tell (exit status 2).
#[derive(Debug)]
pub struct Usage(pub String);

impl std::error::Error for Unreachable {}
impl std::error::Error for Usage {}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The settings of one invocation.
pub struct Ctx {
    pub nats: NatsConfig,
    namespace: Option<String>,
    pub json: bool,
    timeout: Duration,
}

impl Ctx {
    pub fn new(
        server: &str,
        namespace: Option<String>,
        json: bool,
        connect_timeout: Duration,
    ) -> anyhow::Result<Ctx> {
        let nats = NatsConfig::new(server)
            .connect_timeout(connect_timeout)
            .with_env_settings()
            .map_err(|e| Usage(e.to_string()))?;
        Ok(Ctx {
            nats,
            namespace,
            json,
            timeout: connect_timeout,
        })
    }

    /// The namespace, checked.
    pub fn namespace(&self) -> anyhow::Result<Namespace> {
        let ns = self.namespace.as_deref().ok_or_else(|| {
            Usage("which namespace? give --namespace NAME (or set AETHER_NAMESPACE)".into())
        })?;
        Namespace::new(ns).map_err(|e| Usage(format!("--namespace {ns:?}: {e}")).into())
    }

    /// The cluster's KV buckets.
    pub async fn view(&self) -> anyhow::Result<ClusterView> {
        let ns = self.namespace()?;
        match ClusterView::connect(self.nats.clone(), ns.as_str()).await {
            Ok(view) => Ok(view),
            Err(ClusterError::Connect(e)) => Err(Unreachable(format!(
                "cannot connect to NATS at {}: {e}",
                self.nats.servers()
            ))
            .into()),
            Err(ClusterError::Coordination { bucket, reason }) => Err(anyhow::anyhow!(
                "namespace {ns} has no cluster here (no node has joined it?): bucket {bucket}: {reason}"
            )),
            Err(e) => Err(e).context("cannot read the cluster"),
        }
    }

    /// The namespace's event and snapshot store on JetStream. Opens the cluster view first,
    /// so a namespace nobody runs is reported, not created.
    pub async fn store(&self) -> anyhow::Result<JetStreamStore> {
        let ns = self.namespace()?;
        self.view().await?;
        let options = JetStreamOptions {
            request_timeout: self.timeout,
            ..JetStreamOptions::default()
        };
        match JetStreamStore::connect(self.nats.clone(), ns.as_str(), options).await {
            Ok(store) => Ok(store),
            Err(StoreError::Connect(e)) => Err(Unreachable(format!(
                "cannot connect to NATS at {}: {e}",
                self.nats.servers()
            ))
            .into()),
            Err(e) => Err(e).context("cannot open the namespace's event store"),
        }
    }

    /// A bus on NATS, for following live events.
    pub async fn bus(&self) -> anyhow::Result<Bus> {
        match Bus::connect(self.nats.clone(), BusConfig::default()).await {
            Ok(bus) => Ok(bus),
            Err(aether_runtime::bus::SubscribeError::Connect(e)) => Err(Unreachable(format!(
                "cannot connect to NATS at {}: {e}",
                self.nats.servers()
            ))
            .into()),
            Err(e) => Err(e).context("cannot follow the bus"),
        }
    }
}
