//! The runtime in a ractor supervision tree.
//!
//! Every [`Runtime`](crate::Runtime) has a root [`ractor`] actor, started with it and stopped
//! by [`Runtime::shutdown`](crate::Runtime::shutdown). Every activation runs in a ractor actor
//! linked under the root ([`Runtime::root`](crate::Runtime::root)`.get_children()` lists the
//! resident actors). The root is their supervisor: when a handler panics, ractor reports
//! `ActorFailed` to it, and it answers the panicking command with
//! [`CallError::HandlerPanicked`](crate::CallError::HandlerPanicked) and starts a fresh
//! activation on the same mailbox, with the state reloaded from the store. A passivated
//! activation's actor stops normally (`ActorTerminated`), which the root takes in its stride.
//!
//! Applications built on ractor use the root two ways:
//!
//! - **Start the runtime under their own supervisor** with
//!   [`RuntimeBuilder::supervised_by`](crate::RuntimeBuilder::supervised_by): the supervisor
//!   is told `ActorStarted` when the runtime is up and `ActorTerminated` when it has shut down.
//!   When the supervisor stops — and ractor stops its children with it, the root and the
//!   activations under it — the runtime stops serving: commands still queued are answered with
//!   errors (what was stored stays stored; the actors come back from the store wherever they
//!   are next activated), a cluster node leaves its cluster as if it crashed, and every later
//!   ask fails with [`CallError::Shutdown`](crate::CallError::Shutdown). A graceful
//!   [`Runtime::shutdown`](crate::Runtime::shutdown) passivates every actor first.
//! - **Link their own actors under the runtime** through [`Runtime::root`](crate::Runtime::root):
//!   they stop when the runtime shuts down.
//!
//! Their actors call Aether actors from their handlers like any async code: an
//! [`ActorRef`](crate::ActorRef) is `Clone + Send + Sync`, and `ask` is a future.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::task::JoinHandle;

use crate::actor::host::Host;
use crate::cluster::Cluster;

/// The root actor of one runtime: the supervisor of every activation's actor. It takes no
/// messages; it restarts an activation whose handler panicked and ignores its children's other
/// comings and goings (passivation stops an activation's actor as a matter of course).
pub(crate) struct Root;

impl Actor for Root {
    type Msg = ();
    type State = Weak<Host>;
    type Arguments = Weak<Host>;

    async fn pre_start(
        &self,
        _myself: ActorRef<()>,
        host: Weak<Host>,
    ) -> Result<Weak<Host>, ActorProcessingErr> {
        Ok(host)
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<()>,
        event: SupervisionEvent,
        host: &mut Weak<Host>,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(child, reason) = event
            && let Some(host) = host.upgrade()
        {
            host.restart(child.get_id(), reason.to_string());
        }
        Ok(())
    }
}

/// The root actor of a started runtime, and the task that stops the runtime when the root
/// stops for any other reason than a shutdown.
pub(crate) struct Rooted {
    pub cell: ActorCell,
    watcher: JoinHandle<()>,
}

impl Rooted {
    /// Spawns the root, linked under `supervisor` if given.
    pub async fn spawn(
        namespace: &str,
        supervisor: Option<ActorCell>,
        host: &Arc<Host>,
        cluster: Option<Cluster>,
    ) -> Result<Rooted, String> {
        let weak = Arc::downgrade(host);
        let spawned = match supervisor {
            Some(parent) => Actor::spawn_linked(None, Root, weak.clone(), parent).await,
            None => Actor::spawn(None, Root, weak.clone()).await,
        };
        let (root, handle) =
            spawned.map_err(|e| format!("cannot start the root actor of {namespace}: {e}"))?;
        host.adopt_root(root.get_cell());
        let watcher = tokio::spawn(async move {
            let _ = handle.await;
            let Some(host) = weak.upgrade() else { return };
            host.close_orphans();
            if host.shutting_down.swap(true, Ordering::AcqRel) {
                return; // a shutdown stopped it
            }
            tracing::warn!(
                namespace = %host.namespace,
                "the runtime's root actor stopped (its supervisor stopped it): the runtime stops serving"
            );
            if let Some(cluster) = cluster {
                cluster.stop();
            }
            if !host.passivate_all(host.config.shutdown_timeout).await {
                tracing::warn!("actors did not all passivate in time after the root stopped");
            }
        });
        Ok(Rooted {
            cell: root.get_cell(),
            watcher,
        })
    }

    /// Stops the root at the end of a shutdown, and waits until it has stopped (its supervisor
    /// is told `ActorTerminated`).
    pub async fn stop(self) {
        self.cell.stop(Some("runtime shut down".into()));
        let _ = self.watcher.await;
    }
}
