//! Where requests may go first: the shard map's owners as subjects for batched requests, for
//! nodes and for cluster clients.
//!
//! A client hosts no actor, so it needs no map to be correct: every ask can go to its actor's
//! subject, where whoever serves the shard answers. It follows the map anyway, read-only, so
//! that the first attempts of its concurrent asks go in batches to the node the map names, as a
//! node's do (see `routing/request_batch.rs`). The map is only a hint there: the owner checks
//! every request, and a stale map costs a retry on the actor's subject, never a wrong answer.
//!
//! The client reads the `<ns>_shards` bucket's `map` key and watches it. Until a node has made
//! the bucket, and whenever a watch cannot be made or ends, it looks again every second;
//! a watch that stays quiet is checked against a direct read every few seconds, as a node's
//! is (a watch whose consumer lived on a server that went away delivers nothing).

use std::sync::Arc;
use std::time::Duration;

use async_nats::Subject;
use async_nats::jetstream::kv;
use futures_util::StreamExt;
use parking_lot::RwLock;
use tokio::task::JoinHandle;

use super::view::read_entry;
use super::{MAP_KEY, ShardMap, bounded_watch};
use crate::names::Namespace;
use crate::routing::{Placement, node_subject};

/// How long a client waits before it looks for the bucket or a watch again.
const RETRY: Duration = Duration::from_secs(1);
/// How long a quiet watch is trusted before the map is read directly.
const RECHECK: Duration = Duration::from_secs(5);

/// Per node of one map (by its index), its subject for batched requests; `None` for the node
/// that asks.
#[derive(Default)]
pub(super) struct Routes {
    epoch: u64,
    nodes: Vec<Option<Subject>>,
}

/// The subject for batched requests of `shard`'s owner in `map`, unless that is `me`; built
/// once per map in `routes`.
pub(super) fn route(
    map: &ShardMap,
    routes: &RwLock<Routes>,
    namespace: &Namespace,
    me: Option<&str>,
    shard: u32,
) -> Option<Subject> {
    let owner = usize::from(*map.owners.get(shard as usize)?);
    {
        let routes = routes.read();
        if routes.epoch == map.epoch && routes.nodes.len() == map.nodes.len() {
            return routes.nodes.get(owner).cloned().flatten();
        }
    }
    let nodes: Vec<_> = map
        .nodes
        .iter()
        .map(|n| (Some(n.as_str()) != me).then(|| node_subject(namespace, n)))
        .collect();
    let route = nodes.get(owner).cloned().flatten();
    *routes.write() = Routes {
        epoch: map.epoch,
        nodes,
    };
    route
}

/// The map a cluster client follows, and the task that follows it (stopped when this is
/// dropped).
pub(crate) struct ClientMap {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

struct Shared {
    namespace: Namespace,
    map: RwLock<Option<Arc<ShardMap>>>,
    routes: RwLock<Routes>,
}

impl Shared {
    /// Takes `map` if it is newer (a higher epoch, never a lower term).
    fn adopt(&self, map: ShardMap) -> bool {
        let mut current = self.map.write();
        if let Some(known) = current.as_ref()
            && (map.epoch <= known.epoch || map.term < known.term)
        {
            return false;
        }
        *current = Some(Arc::new(map));
        true
    }

    /// Adopts the map of a bucket entry, if it holds a newer one.
    fn adopt_entry(&self, entry: &kv::Entry) -> bool {
        if entry.operation != kv::Operation::Put {
            return false;
        }
        match ShardMap::decode(&entry.value) {
            Ok(map) => self.adopt(map),
            Err(e) => {
                tracing::warn!(error = %e, "undecodable shard map ignored");
                false
            }
        }
    }
}

impl ClientMap {
    /// Starts following the shard map of `namespace` over `client`.
    pub(crate) fn follow(client: async_nats::Client, namespace: Namespace) -> Arc<ClientMap> {
        let shared = Arc::new(Shared {
            namespace,
            map: RwLock::new(None),
            routes: RwLock::new(Routes::default()),
        });
        let task = tokio::spawn(follow(client, Arc::clone(&shared)));
        Arc::new(ClientMap { shared, task })
    }

    /// The latest map this client has seen.
    #[cfg(test)]
    fn map(&self) -> Option<Arc<ShardMap>> {
        self.shared.map.read().clone()
    }
}

impl Drop for ClientMap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Placement for ClientMap {
    /// A client serves nothing.
    fn is_local(&self, _shard: u32) -> bool {
        false
    }

    fn route(&self, shard: u32) -> Option<Subject> {
        let map = self.shared.map.read().clone()?;
        route(
            &map,
            &self.shared.routes,
            &self.shared.namespace,
            None,
            shard,
        )
    }
}

/// Follows the map until aborted (see the module docs).
async fn follow(client: async_nats::Client, shared: Arc<Shared>) {
    let js = async_nats::jetstream::new(client);
    let bucket_name = format!("{}_shards", shared.namespace);
    loop {
        let Ok(bucket) = js.get_key_value(bucket_name.as_str()).await else {
            tokio::time::sleep(RETRY).await;
            continue;
        };
        if let Ok(Some(entry)) = read_entry(&bucket, MAP_KEY).await {
            shared.adopt_entry(&entry);
        }
        let Some(mut entries) =
            bounded_watch("the shard map", RECHECK, bucket.watch_with_history(MAP_KEY)).await
        else {
            tokio::time::sleep(RETRY).await;
            continue;
        };
        loop {
            match tokio::time::timeout(RECHECK, entries.next()).await {
                Ok(Some(Ok(entry))) => {
                    shared.adopt_entry(&entry);
                }
                // The watch ended (its connection, its consumer): make another.
                Ok(_) => break,
                // Quiet: maps change rarely, but a watch that missed one is made again.
                Err(_) => {
                    let missed = matches!(
                        read_entry(&bucket, MAP_KEY).await,
                        Ok(Some(entry)) if shared.adopt_entry(&entry)
                    );
                    if missed {
                        tracing::debug!(
                            "the client's shard map watch missed a map; watching again"
                        );
                        break;
                    }
                }
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(epoch: u64, term: u64, nodes: &[&str], owners: Vec<u16>) -> ShardMap {
        ShardMap {
            epoch,
            term,
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            owners,
        }
    }

    #[tokio::test]
    async fn a_client_takes_newer_maps_only_and_routes_to_each_shards_owner()
    -> Result<(), crate::names::NameError> {
        let ns = Namespace::new("bank")?;
        let shared = Shared {
            namespace: ns.clone(),
            map: RwLock::new(None),
            routes: RwLock::new(Routes::default()),
        };
        assert!(shared.adopt(map(2, 1, &["a", "b"], vec![0, 1, 1])));
        assert!(
            !shared.adopt(map(2, 1, &["c"], vec![0, 0, 0])),
            "same epoch"
        );
        assert!(
            !shared.adopt(map(3, 0, &["c"], vec![0, 0, 0])),
            "lower term"
        );
        let current = shared.map.read().clone().expect("a map");
        let at = |shard| route(&current, &shared.routes, &ns, None, shard);
        assert_eq!(at(0).as_deref(), Some("aether.bank.node.a.asks"));
        assert_eq!(at(2).as_deref(), Some("aether.bank.node.b.asks"));
        assert_eq!(at(3), None, "no such shard");
        // A node never routes to itself (each placement keeps its own routes).
        let own = RwLock::new(Routes::default());
        assert_eq!(
            route(&current, &own, &ns, Some("b"), 1),
            None,
            "its own shard"
        );
        assert_eq!(
            route(&current, &own, &ns, Some("b"), 0).as_deref(),
            Some("aether.bank.node.a.asks")
        );
        assert!(shared.adopt(map(4, 2, &["c", "d"], vec![1, 0, 0])));
        let newer = shared.map.read().clone().expect("a map");
        assert_eq!(
            route(&newer, &shared.routes, &ns, None, 0).as_deref(),
            Some("aether.bank.node.d.asks"),
            "routes follow the newer map"
        );
        let follower = ClientMap {
            shared: Arc::new(shared),
            task: tokio::spawn(async {}),
        };
        assert_eq!(follower.map().map(|m| m.epoch), Some(4));
        assert!(!follower.is_local(0));
        assert_eq!(
            follower.route(1).as_deref(),
            Some("aether.bank.node.c.asks")
        );
        Ok(())
    }
}
