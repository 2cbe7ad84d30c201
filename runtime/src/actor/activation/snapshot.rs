//! Snapshots: the state, its version and the recent command ids, saved every
//! `snapshot_every` events and on passivation; a snapshot that cannot be read is dropped and
//! the full history replayed.
//!
//! A snapshot also records the version of the state's schema (`state_version` on the derive).
//! One written at another version is never trusted as is: an older one goes through
//! [`Behavior::migrate_state`] (counted in `snapshot_migrations`), and one the migration
//! declines — or one from a newer version of the code — is ignored for a full replay (counted
//! in `snapshot_fallbacks`, and logged). Stores keep a snapshot only when it is newer than the
//! one they hold, so a migrated snapshot is replaced once the actor has stored new events and
//! snapshots again; until then each activation migrates it anew.
//!
//! With retention on (`RuntimeConfig::retention`), each saved snapshot is followed by
//! [`EventStore::truncate_before`](crate::store::EventStore::truncate_before): the history
//! more than `keep` events behind it is removed, and a snapshot that cannot be used can then no
//! longer fall back to a full replay — the activation fails, saying why.

use super::*;
use crate::actor::contract::OldState;

/// What a usable snapshot restores.
pub(super) struct Restored<A> {
    pub state: A,
    pub recent: VecDeque<Recent>,
    pub outbox: OutboxImage,
}

impl<A: Behavior> Activation<A> {
    pub(super) fn snapshot_unusable(&mut self, reason: &str) {
        Stats::bump(&self.host.stats.snapshot_fallbacks);
        tracing::warn!(actor = %self.key(), %reason, "snapshot not used; replaying the full history");
        self.state = A::default();
        self.recent.clear();
        self.cell.outbox.lock().reset();
        self.version = 0;
        self.snapshot_version = 0;
    }

    /// Reads a snapshot's payload at today's state version, migrating an older one; `Err`
    /// says why it cannot be used.
    pub(super) fn read_snapshot(&self, payload: &[u8]) -> Result<Restored<A>, String> {
        let host = &self.host;
        let head: SnapshotHead = codec::decode("snapshot", payload).map_err(|e| e.to_string())?;
        if head.format > SNAPSHOT_FORMAT {
            return Err(format!("unknown format {}", head.format));
        }
        if head.format < 3 {
            if A::STATE_VERSION != 0 {
                return Err(format!(
                    "written at state version 0 (before versions were recorded); the code is at version {}",
                    A::STATE_VERSION
                ));
            }
            let s: SnapshotInline<A> =
                with_decode_host(host, || codec::decode("snapshot", payload))
                    .map_err(|e| e.to_string())?;
            return Ok(Restored {
                state: s.state,
                recent: s.recent,
                outbox: s.outbox,
            });
        }
        let s: SnapshotIn = codec::decode("snapshot", payload).map_err(|e| e.to_string())?;
        let state = match s.state_version.cmp(&A::STATE_VERSION) {
            std::cmp::Ordering::Equal => {
                with_decode_host(host, || codec::decode::<A>("snapshot state", &s.state))
                    .map_err(|e| e.to_string())?
            }
            std::cmp::Ordering::Greater => {
                return Err(format!(
                    "written at state version {}, newer than this code's {}",
                    s.state_version,
                    A::STATE_VERSION
                ));
            }
            std::cmp::Ordering::Less => {
                let old = OldState::new(s.state_version, &s.state);
                let migrated = with_decode_host(host, || {
                    std::panic::catch_unwind(AssertUnwindSafe(|| A::migrate_state(old)))
                });
                match migrated {
                    Ok(Some(state)) => {
                        Stats::bump(&host.stats.snapshot_migrations);
                        tracing::info!(
                            actor = %self.key(),
                            from = s.state_version,
                            to = A::STATE_VERSION,
                            "snapshot migrated to the current state version"
                        );
                        state
                    }
                    Ok(None) => {
                        return Err(format!(
                            "written at state version {}; the code is at {} and migrate_state declined it",
                            s.state_version,
                            A::STATE_VERSION
                        ));
                    }
                    Err(p) => {
                        return Err(format!(
                            "migrate_state panicked on a version {} snapshot: {}",
                            s.state_version,
                            panic_text(&*p)
                        ));
                    }
                }
            }
        };
        Ok(Restored {
            state,
            recent: s.recent,
            outbox: s.outbox,
        })
    }

    pub(super) fn encode_snapshot(&self) -> Option<Snapshot> {
        if self.stale {
            // The state is not the fold of the stored history at `version` (a turn folded
            // events whose commit then failed or was cancelled, or an `apply` panicked): a
            // snapshot of it would outlive this activation and be trusted by the next one.
            tracing::debug!(actor = %self.key(), "no snapshot of a stale state");
            return None;
        }
        let encoded = codec::encode("snapshot state", &self.state).and_then(|state| {
            codec::encode(
                "snapshot",
                &SnapshotOut {
                    format: SNAPSHOT_FORMAT,
                    state_version: A::STATE_VERSION,
                    state: &state,
                    recent: &self.recent,
                    outbox: self.cell.outbox.lock().image(),
                },
            )
        });
        match encoded {
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
            if let Some(keep) = host.config.retention {
                truncate_behind(host, key, version, keep).await;
            }
        }
        Err(e) => tracing::warn!(actor = %key, version, error = %e, "snapshot not saved"),
    }
}

/// Retention: removes the history more than `keep` events behind the snapshot just saved at
/// `version` (or a newer one the store already held: its save keeps the newest). The store
/// keeps the latest commit whatever `keep` says.
async fn truncate_behind(host: &Host, key: &ActorKey, version: u64, keep: u64) {
    let before = (version + 1).saturating_sub(keep);
    if before <= 1 {
        return;
    }
    match host.events.truncate_before(key, before).await {
        Ok(truncated) if truncated.removed > 0 => {
            Stats::bump(&host.stats.history_truncations);
            tracing::debug!(
                actor = %key,
                snapshot = version,
                starts_at = truncated.starts_at,
                removed = truncated.removed,
                "history truncated"
            );
        }
        Ok(_) => {}
        // A store without retention: said once per process, not at every snapshot.
        Err(e @ StoreError::Unsupported(_)) => {
            static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
            if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(error = %e, "retention is set but the store cannot remove history");
            }
        }
        Err(e) => tracing::warn!(actor = %key, version, error = %e, "history not truncated"),
    }
}
