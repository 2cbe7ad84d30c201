//! Snapshots: the state, its version and the recent command ids, saved every
//! `snapshot_every` events and on passivation; a snapshot that cannot be read is dropped and
//! the full history replayed.

use super::*;

impl<A: Behavior> Activation<A> {
    pub(super) fn snapshot_unusable(&mut self, reason: &str) {
        Stats::bump(&self.host.stats.snapshot_fallbacks);
        tracing::warn!(actor = %self.key(), %reason, "snapshot unreadable; replaying the full history");
        self.state = A::default();
        self.recent.clear();
        self.cell.outbox.lock().reset();
        self.version = 0;
        self.snapshot_version = 0;
    }

    pub(super) fn encode_snapshot(&self) -> Option<Snapshot> {
        if self.stale {
            // The state is not the fold of the stored history at `version` (a turn folded
            // events whose commit then failed or was cancelled, or an `apply` panicked): a
            // snapshot of it would outlive this activation and be trusted by the next one.
            tracing::debug!(actor = %self.key(), "no snapshot of a stale state");
            return None;
        }
        let out = SnapshotOut {
            format: SNAPSHOT_FORMAT,
            state: &self.state,
            recent: &self.recent,
            outbox: self.cell.outbox.lock().image(),
        };
        match codec::encode("snapshot", &out) {
            Ok(payload) => Some(Snapshot {
                version: self.version,
                payload,
                timestamp_ms: now_ms(),
            }),
            Err(e) => {
                tracing::warn!(actor = %self.key(), error = %e, "cannot encode snapshot");
                None
            }
        }
    }

    /// Snapshot policy: every `snapshot_every` events, written in the background.
    pub(super) fn maybe_snapshot(&mut self) {
        let Some(every) = self.host.kind_info(A::KIND).and_then(|k| k.snapshot_every) else {
            return;
        };
        if every == 0 || self.version - self.snapshot_version < every {
            return;
        }
        let Some(snapshot) = self.encode_snapshot() else {
            return;
        };
        self.snapshot_version = self.version;
        let host = Arc::clone(&self.host);
        let key = self.key().clone();
        tokio::spawn(async move {
            save_snapshot(&host, &key, snapshot).await;
        });
    }

    pub(super) async fn save_snapshot_now(&mut self) {
        if let Some(snapshot) = self.encode_snapshot() {
            self.snapshot_version = self.version;
            save_snapshot(&self.host, self.ctx.myself().key(), snapshot).await;
        }
    }
}

pub(super) async fn save_snapshot(host: &Host, key: &ActorKey, snapshot: Snapshot) {
    let version = snapshot.version;
    match host.snapshots.save(key, snapshot).await {
        Ok(()) => {
            Stats::bump(&host.stats.snapshots_saved);
            host.bus.publish_system(
                &key.namespace,
                SystemEvent::SnapshotCreated {
                    actor: key.clone(),
                    version,
                },
            );
        }
        Err(e) => tracing::warn!(actor = %key, version, error = %e, "snapshot not saved"),
    }
}
