//! What every node does to follow the cluster: write its own registry record (the
//! heartbeat), watch the registry (who is there, when each record last changed) and watch the
//! shard map, adopting each newer map — the map says which shards this node owns.
//!
//! While no watch can be made (the JetStream meta leader re-electing), the registry and the
//! map are read directly instead, so a node never stops following for long.

use super::*;

impl Inner {
    pub(super) async fn heartbeat(&self) -> Result<(), String> {
        let status = if self.leaving.load(Ordering::Acquire) {
            NodeStatus::Leaving
        } else {
            NodeStatus::Alive
        };
        let bytes =
            codec::encode("node record", &self.record(status)).map_err(|e| e.to_string())?;
        self.buckets
            .nodes
            .put(&self.config.node_id, Bytes::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    pub(super) async fn watch_registry(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        // Every node (this one included) rewrites its record each heartbeat, so a watch that
        // delivers nothing for a failure timeout is stuck — typically its consumer lived on a
        // server that went away. Make it again rather than trust its silence.
        let quiet = self.config.failure_timeout.max(self.config.heartbeat * 2);
        loop {
            // Making a watch needs the JetStream meta leader, which may be re-electing (4-9 s
            // when its server is cut off): meanwhile, read the known records directly.
            let watch = tokio::select! {
                w = bounded_watch("the node registry", quiet, self.buckets.nodes.watch_with_history(">")) => w,
                _ = stop.changed() => return,
            };
            let Some(mut entries) = watch else {
                tokio::select! {
                    () = self.poll_registry() => continue,
                    _ = stop.changed() => return,
                }
            };
            self.registry_synced.store(false, Ordering::Release);
            loop {
                let entry = tokio::select! {
                    e = tokio::time::timeout(quiet, entries.next()) => match e {
                        Ok(e) => e,
                        Err(_) => {
                            tracing::warn!(?quiet, "the node registry watch went quiet; watching again");
                            None
                        }
                    },
                    _ = stop.changed() => return,
                };
                let Some(Ok(entry)) = entry else {
                    self.registry_synced.store(false, Ordering::Release);
                    break;
                };
                self.registry_entry(&entry);
                if entry.delta == 0 {
                    self.registry_synced.store(true, Ordering::Release);
                }
            }
        }
    }

    /// Applies one registry entry (from the watch or a direct read).
    pub(super) fn registry_entry(&self, entry: &kv::Entry) {
        let change = match entry.operation {
            kv::Operation::Put => match codec::decode::<NodeRecord>("node record", &entry.value) {
                Ok(record) => self
                    .registry
                    .lock()
                    .put(record, entry.revision, Instant::now()),
                Err(e) => {
                    tracing::warn!(key = %entry.key, error = %e, "undecodable node record ignored");
                    None
                }
            },
            kv::Operation::Delete | kv::Operation::Purge => self.registry.lock().remove(&entry.key),
        };
        self.registry_rev.send_modify(|rev| *rev += 1);
        match change {
            Some(Change::Joined(node)) => self.emit(ClusterEvent::NodeJoined { node }),
            Some(Change::Left(node)) => self.emit(ClusterEvent::NodeLeft { node }),
            Some(Change::Failed(node)) => self.emit(ClusterEvent::NodeFailed { node }),
            None => {}
        }
    }

    /// One round of reading every known node's record directly (any replica answers), for
    /// while no watch can be made; then a pause of a heartbeat. Known: in the registry or in
    /// the adopted map. An unchanged record is no news (see [`Members::put`]). A round that
    /// read every record leaves the view as current as a synced watch would.
    pub(super) async fn poll_registry(&self) {
        let mut known: Vec<String> = self.registry.lock().nodes.keys().cloned().collect();
        if let Some(map) = self.map.read().as_ref() {
            known.extend(map.nodes.iter().cloned());
        }
        known.sort();
        known.dedup();
        let mut complete = true;
        for node in known {
            match read_entry(&self.buckets.nodes, &node).await {
                Ok(Some(entry)) => self.registry_entry(&entry),
                Ok(None) => {}
                Err(_) => complete = false,
            }
        }
        self.registry_synced.store(complete, Ordering::Release);
        if complete {
            self.registry_rev.send_modify(|rev| *rev += 1);
        }
        tokio::time::sleep(self.config.heartbeat).await;
    }

    pub(super) async fn watch_map(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        loop {
            // Maps change rarely, so silence proves nothing: every few heartbeats, check the
            // bucket directly and watch again if it holds a map this watch never delivered.
            let check_every = self.config.failure_timeout.max(self.config.heartbeat * 2);
            // As for the registry: while no watch can be made, read the map directly.
            let watch = tokio::select! {
                w = bounded_watch("the shard map", check_every, self.buckets.shards.watch_with_history(MAP_KEY)) => w,
                _ = stop.changed() => return,
            };
            let Some(mut entries) = watch else {
                tokio::select! {
                    () = async {
                        self.adopt_stored_map().await;
                        tokio::time::sleep(self.config.heartbeat).await;
                    } => continue,
                    _ = stop.changed() => return,
                }
            };
            loop {
                let entry = tokio::select! {
                    e = tokio::time::timeout(check_every, entries.next()) => match e {
                        Ok(e) => e,
                        Err(_) => {
                            if self.adopt_stored_map().await {
                                tracing::warn!("the shard map watch missed a map; watching again");
                                break;
                            }
                            continue;
                        }
                    },
                    _ = stop.changed() => return,
                };
                let Some(Ok(entry)) = entry else { break };
                if entry.operation != kv::Operation::Put {
                    continue;
                }
                match ShardMap::decode(&entry.value) {
                    Ok(map) => self.adopt(map),
                    Err(e) => tracing::error!(error = %e, "undecodable shard map ignored"),
                }
            }
        }
    }

    /// Adopts the bucket's map if it is newer than the one adopted (a watch missed it, or none
    /// can be made); returns whether it was.
    pub(super) async fn adopt_stored_map(&self) -> bool {
        let Ok(Some(entry)) = read_entry(&self.buckets.shards, MAP_KEY).await else {
            return false;
        };
        if entry.operation != kv::Operation::Put {
            return false;
        }
        let Ok(stored) = ShardMap::decode(&entry.value) else {
            return false;
        };
        let adopted = self.map.read().as_ref().map_or(0, |m| m.epoch);
        let newer = stored.epoch > adopted;
        if newer {
            self.adopt(stored);
        }
        newer
    }

    /// Takes a newly published map: newer epochs only, never a lower term.
    pub(super) fn adopt(&self, map: ShardMap) {
        let previous = self.map.read().clone();
        if let Some(prev) = &previous
            && (map.epoch <= prev.epoch || map.term < prev.term)
        {
            return;
        }
        let map = Arc::new(map);
        *self.map.write() = Some(Arc::clone(&map));
        for shard in 0..map.shard_count() {
            let new = map.owner(shard);
            let old = previous.as_ref().and_then(|p| p.owner(shard));
            if let Some(node) = new
                && old != new
            {
                let _ = self.events.send(ClusterEvent::ShardAssigned {
                    shard,
                    node: node.to_owned(),
                    epoch: map.epoch,
                });
            }
        }
        tracing::info!(epoch = map.epoch, term = map.term, nodes = ?map.nodes, "shard map adopted");
        let mine: std::collections::BTreeSet<u32> =
            map.shards_of(&self.config.node_id).into_iter().collect();
        // Ownership is continuous only through maps this node saw: after a gap in epochs (a
        // map it missed may have given its shards to others), every shard starts afresh.
        let gap = previous.as_ref().is_some_and(|p| map.epoch > p.epoch + 1);
        let before = self.owned.borrow().clone();
        let owned_since = mine
            .iter()
            .map(|&s| {
                let since = match before.owned_since.get(&s) {
                    Some(&since) if !gap && before.shards.contains(&s) => since,
                    _ => map.epoch,
                };
                (s, since)
            })
            .collect();
        // send_replace: the value must be stored even while nobody listens yet.
        self.owned.send_replace(Arc::new(OwnedShards {
            epoch: map.epoch,
            shards: mine,
            owned_since,
        }));
    }
}
