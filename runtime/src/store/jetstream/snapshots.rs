//! Snapshots on JetStream: one entry per actor in the `<ns>_snapshots` key-value bucket,
//! replaced on every save.

use super::*;

#[async_trait]
impl SnapshotStore for JetStreamStore {
    async fn save(&self, actor: &ActorKey, snapshot: Snapshot) -> Result<(), StoreError> {
        check_namespace(&self.namespace, actor)?;
        self.ensure_connected()?;
        let subject = self.subject(actor);
        let version = snapshot.version;
        let position = self
            .heads
            .lock()
            .get(&subject)
            .filter(|p| p.version == version)
            .map(|p| p.seq);
        let bytes = Bytes::from(encode_snapshot_at(actor, snapshot, position)?);
        let key = Self::snapshot_key(actor);
        // Compare-and-set: never replace a newer snapshot (several writers may race).
        for _ in 0..5 {
            let entry = self.read_snapshot_entry(&key).await?;
            let live = entry.filter(|e| e.operation == kv::Operation::Put);
            let written = match &live {
                Some(e) if snapshot_version(&e.value).is_some_and(|v| v >= version) => {
                    return Ok(());
                }
                Some(e) => self
                    .snapshots
                    .update(key.clone(), bytes.clone(), e.revision)
                    .await
                    .is_ok(),
                // Lost a race if this fails: the next round sees the other writer's entry.
                None => self
                    .snapshots
                    .create(key.clone(), bytes.clone())
                    .await
                    .is_ok(),
            };
            if written {
                if let Some(seq) = position {
                    remember(
                        &self.snapshot_positions,
                        &subject,
                        Position { version, seq },
                    );
                }
                return Ok(());
            }
        }
        Err(StoreError::Unavailable(format!(
            "snapshot of {actor} kept losing a race with other writers"
        )))
    }

    async fn latest(&self, actor: &ActorKey) -> Result<Option<Snapshot>, StoreError> {
        check_namespace(&self.namespace, actor)?;
        self.ensure_connected()?;
        let entry = self.read_snapshot_entry(&Self::snapshot_key(actor)).await?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Ok(None);
        };
        let (snapshot, position) = decode_snapshot_at(actor, &entry.value)?;
        if let Some(seq) = position {
            remember(
                &self.snapshot_positions,
                &self.subject(actor),
                Position {
                    version: snapshot.version,
                    seq,
                },
            );
        }
        Ok(Some(snapshot))
    }
}
