//! The leader: the lease and the leader's duties.
//!
//! Every node runs the election ([`Inner::elect`]): it watches the lease and, when none is
//! held, tries to `create` it; the revision of that create is the *term*. The leader renews
//! the lease every heartbeat and acts only while its last renewal is less than two thirds of a
//! lease old (`acting_term`), so it stops before the server can expire the lease and elect
//! another. While acting it leads ([`Inner::lead`]): it declares silent nodes failed and, when
//! the set of alive nodes differs from the current map's, publishes a new map by
//! compare-and-set under its term. A lost renewal, a resignation or a newer term ends it. A
//! renewal refused on the revision is not lost by itself: a renewal of ours whose round timed
//! out may have landed since, so the leader reads the key and goes on when it still holds its
//! own record under its own term ([`Inner::renew`]).
//!
//! A leader whose NATS connection drops stops acting (`suspended`) until a renewal succeeds
//! on a connection made since. Followers check a leader silent for two beats the way the
//! leader checks nodes (`cluster/liveness.rs`): when its server says its connection is gone,
//! one deletes that revision of the lease ([`Inner::end_a_dead_lease`]) and a live node takes
//! the lead at once instead of when the lease expires.

use super::*;

impl Inner {
    /// The term this node may act under right now, if it is leader.
    pub(super) fn acting_term(&self) -> Option<u64> {
        if self.suspended.load(Ordering::Acquire) {
            return None;
        }
        let lease = (*self.lease.lock())?;
        let valid_for = self.config.lease * 2 / 3;
        (Instant::now() < lease.renewed_at + valid_for).then_some(lease.term)
    }

    /// The election loop.
    ///
    /// - The leader renews its lease every heartbeat (at least three times per lease); its
    ///   duties run apart, in [`Inner::leading`].
    /// - A follower tries to acquire the lease when the key is deleted (a resignation) or
    ///   expires (the server's `Purge` marker), and otherwise only once per lease length (in
    ///   case a watch event was missed): a failed `create` is not free on a replicated bucket.
    ///   Puts by the leader only refresh who the leader is, with no KV call.
    pub(super) async fn elect(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let check_every = (self.config.heartbeat / 4).max(Duration::from_millis(10));
        let mut tick = tokio::time::interval(check_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Making a watch needs the JetStream meta leader, which may be re-electing: bounded, so
        // the lease is renewed meanwhile (the follower's periodic attempts cover the gap).
        let watch_bound = (self.config.lease / 3).max(Duration::from_millis(10));
        let mut changes = bounded_watch(
            "the lease",
            watch_bound,
            self.buckets.leader.watch(LEADER_KEY),
        )
        .await;
        let mut last_renewal: Option<Instant> = None;
        let mut last_attempt: Option<Instant> = None;
        let mut last_watch_attempt = Instant::now();
        // Renew at least three times per lease, whatever the heartbeat.
        let renew_every = self.config.heartbeat.min(self.config.lease / 3);
        loop {
            // A lost watch (its stream ended, or it could not be made) is made again.
            if changes.is_none() && last_watch_attempt.elapsed() >= self.config.heartbeat {
                last_watch_attempt = Instant::now();
                changes = bounded_watch(
                    "the lease",
                    watch_bound,
                    self.buckets.leader.watch(LEADER_KEY),
                )
                .await;
            }
            let vacated = tokio::select! {
                _ = tick.tick() => false,
                entry = async {
                    match changes.as_mut() {
                        Some(w) => w.next().await,
                        None => std::future::pending().await,
                    }
                } => match entry {
                    Some(Ok(entry)) if entry.operation == kv::Operation::Put => {
                        self.observe_leader(&entry);
                        // Someone holds the lease: the next attempt can wait a lease length.
                        last_attempt = Some(Instant::now());
                        false
                    }
                    Some(Ok(_)) => {
                        *self.observed_lease.lock() = None;
                        true
                    }
                    Some(Err(_)) | None => {
                        changes = None;
                        false
                    }
                },
                _ = stop.changed() => return,
            };
            let leader = self.lease.lock().is_some();
            // Each round is bounded by a third of a lease: while the lease bucket's raft group
            // re-elects, a request waits for nothing, and the next round (on a group that
            // has its leader again) should not wait behind it.
            let bound = self.config.lease / 3;
            if leader {
                // A leader whose connection was lost renews at once once it is back: it acts
                // again only after a renewal on the new connection.
                let suspended = self.suspended.load(Ordering::Acquire);
                // Not while disconnected: renewals queued then would land late, all but one
                // failing on the revision and losing the lease.
                let connected = self.link.state().up_since.is_some();
                if connected
                    && (suspended || last_renewal.is_none_or(|at| at.elapsed() >= renew_every))
                {
                    last_renewal = Some(Instant::now());
                    let _ = tokio::time::timeout(bound, self.step()).await;
                }
            } else if vacated || last_attempt.is_none_or(|at| at.elapsed() >= self.config.lease) {
                last_attempt = Some(Instant::now());
                last_renewal = Some(Instant::now());
                let _ = tokio::time::timeout(bound, self.step()).await;
            } else {
                let _ = tokio::time::timeout(bound, self.end_a_dead_lease()).await;
            }
        }
    }

    /// Notes the leader named by a put on the lease key (no KV call).
    pub(super) fn observe_leader(&self, entry: &kv::Entry) {
        let Ok(record) = codec::decode::<LeaderRecord>("leader record", &entry.value) else {
            return;
        };
        if record.term == 0 || record.node == self.config.node_id {
            // A lease being recorded (term follows in the next put), or our own renewal.
            return;
        }
        *self.observed_lease.lock() = Some((record.node.clone(), entry.revision));
        // Another node holds the lease under a newer term: whatever this node thought, it
        // lost the lead (its renewals hung, e.g. on a cut link, and will fail when they land).
        if let Some(ours) = self.lease.lock().map(|l| l.term)
            && record.term > ours
        {
            self.lose(ours);
        }
        let info = LeaderInfo {
            node: record.node,
            term: record.term,
        };
        let changed = self.leader.read().as_ref() != Some(&info);
        if changed {
            *self.leader.write() = Some(info.clone());
            self.emit(ClusterEvent::LeaderElected {
                node: info.node,
                term: info.term,
            });
        }
    }

    /// One round of the election: renew or acquire the lease.
    pub(super) async fn step(&self) {
        let lease = *self.lease.lock();
        match lease {
            Some(lease) => self.renew(lease).await,
            // A node on its way out does not take the lead.
            None if self.leaving.load(Ordering::Acquire) => {}
            None => self.acquire().await,
        }
    }

    /// The leader's duties, four times per heartbeat while this node acts as leader — on a
    /// task of their own: a map or registry write stuck behind a raft election must not hold
    /// back the lease renewals of [`Inner::elect`] (the lease is what lets it grant beats).
    pub(super) async fn leading(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let check_every = (self.config.heartbeat / 4).max(Duration::from_millis(10));
        let mut tick = tokio::time::interval(check_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            if self.acting_term().is_some() && !self.leaving.load(Ordering::Acquire) {
                self.lead().await;
            }
        }
    }

    pub(super) fn leader_bytes(&self, term: u64) -> Bytes {
        Bytes::from(
            codec::encode(
                "leader record",
                &LeaderRecord {
                    node: self.config.node_id.clone(),
                    term,
                },
            )
            .unwrap_or_default(),
        )
    }

    pub(super) async fn acquire(&self) {
        let sent = Instant::now();
        let losses = self.link.state().losses;
        match self
            .buckets
            .leader
            .create(LEADER_KEY, self.leader_bytes(0))
            .await
        {
            Ok(term) => {
                // Record the term in the value, so readers see it.
                match self
                    .buckets
                    .leader
                    .update(LEADER_KEY, self.leader_bytes(term), term)
                    .await
                {
                    Ok(revision) => {
                        *self.lease.lock() = Some(Lease {
                            term,
                            revision,
                            renewed_at: sent,
                            acquired_at: Instant::now(),
                        });
                        self.resume_if_connected_since(losses);
                        *self.leader.write() = Some(LeaderInfo {
                            node: self.config.node_id.clone(),
                            term,
                        });
                        self.emit(ClusterEvent::LeaderElected {
                            node: self.config.node_id.clone(),
                            term,
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "won the lease but could not record the term")
                    }
                }
            }
            Err(_) => {
                if let Ok(Some(entry)) = read_entry(&self.buckets.leader, LEADER_KEY).await
                    && entry.operation == kv::Operation::Put
                    && let Ok(record) = codec::decode::<LeaderRecord>("leader record", &entry.value)
                {
                    if record.term != 0 && record.node != self.config.node_id {
                        *self.observed_lease.lock() = Some((record.node.clone(), entry.revision));
                    }
                    let info = LeaderInfo {
                        term: if record.term == 0 {
                            entry.revision
                        } else {
                            record.term
                        },
                        node: record.node,
                    };
                    let changed = self.leader.read().as_ref() != Some(&info);
                    if changed {
                        *self.leader.write() = Some(info.clone());
                        self.emit(ClusterEvent::LeaderElected {
                            node: info.node,
                            term: info.term,
                        });
                    }
                }
            }
        }
    }

    /// Renews the lease under its last known revision.
    ///
    /// A renewal whose round timed out may still land later (it is a compare-and-set that
    /// reached the server): the next one then fails on the revision although the lease is
    /// still ours. So a revision mismatch reads the key first, and when it names this node
    /// under the same term — only this node writes that term, and a deletion or a new
    /// acquisition would have replaced it — the lease carries on from the stored revision,
    /// its validity still counted from the last renewal this node saw succeed.
    pub(super) async fn renew(&self, lease: Lease) {
        let mut lease = lease;
        // Once with the known revision, once more with the one our late renewal left.
        for attempt in 0..2 {
            tracing::trace!(node = %self.config.node_id, revision = lease.revision, "renewing the lease");
            let sent = Instant::now();
            let losses = self.link.state().losses;
            match self
                .buckets
                .leader
                .update(LEADER_KEY, self.leader_bytes(lease.term), lease.revision)
                .await
            {
                Ok(revision) => {
                    let kept = {
                        let mut held = self.lease.lock();
                        // Resigned (or lost) while the renewal was out: it stays given up.
                        let kept = held.is_some_and(|l| l.term == lease.term);
                        if kept {
                            *held = Some(Lease {
                                revision,
                                renewed_at: sent,
                                ..lease
                            });
                        }
                        kept
                    };
                    if kept {
                        self.resume_if_connected_since(losses);
                    } else {
                        // A resignation's delete may have missed this revision: delete it
                        // here, so the others take the lead at once, not a lease later.
                        let _ = self
                            .buckets
                            .leader
                            .delete_expect_revision(LEADER_KEY, Some(revision))
                            .await;
                    }
                    return;
                }
                Err(e) if matches!(e.kind(), kv::UpdateErrorKind::WrongLastRevision) => {
                    match self.own_later_revision(&lease).await {
                        Some(revision) if attempt == 0 => {
                            tracing::debug!(
                                node = %self.config.node_id,
                                term = lease.term,
                                from = lease.revision,
                                to = revision,
                                "an earlier lease renewal landed late; renewing from its revision"
                            );
                            lease.revision = revision;
                            let mut held = self.lease.lock();
                            if !held.is_some_and(|l| l.term == lease.term) {
                                // Resigned or lost while we read: not renewed again.
                                return;
                            }
                            *held = Some(lease);
                        }
                        _ => {
                            self.lose(lease.term);
                            return;
                        }
                    }
                }
                Err(e) => {
                    if sent.duration_since(lease.renewed_at) >= self.config.lease * 2 / 3 {
                        self.lose(lease.term);
                    } else {
                        tracing::warn!(error = %e, "lease renewal failed; retrying");
                    }
                    return;
                }
            }
        }
    }

    /// The revision of the lease key when it still names this node under `lease`'s term (a
    /// renewal of ours landed after we stopped waiting for it), newer than the one we know.
    async fn own_later_revision(&self, lease: &Lease) -> Option<u64> {
        let entry = read_entry(&self.buckets.leader, LEADER_KEY).await.ok()??;
        if entry.operation != kv::Operation::Put || entry.revision <= lease.revision {
            return None;
        }
        let record = codec::decode::<LeaderRecord>("leader record", &entry.value).ok()?;
        (record.node == self.config.node_id && record.term == lease.term).then_some(entry.revision)
    }

    /// After a renewal (or acquisition) that succeeded: acts again, unless the connection
    /// was lost since the request went out (`losses` then) or is down — the success may
    /// predate the loss, and a follower may have ended the lease after it.
    fn resume_if_connected_since(&self, losses: u64) {
        let link = self.link.state();
        if link.losses == losses && link.up_since.is_some() {
            self.suspended.store(false, Ordering::Release);
        }
    }

    /// As a follower: when the leader has been silent for two beats and its NATS server says
    /// its connection is gone ([`Inner::connection_gone`]), deletes the lease it holds (only
    /// that revision), so that a live node takes the lead now rather than when the lease
    /// expires. Safe for the same reasons as declaring a node failed on that word: the old
    /// leader cannot renew or publish without a connection, and once back it acts again only
    /// after a renewal, which fails on the deleted revision.
    async fn end_a_dead_lease(&self) {
        let Some((leader, revision)) = self.observed_lease.lock().clone() else {
            return;
        };
        let server = {
            let registry = self.registry.lock();
            if registry.heard_within(&leader, Instant::now(), self.suspect_after()) {
                return;
            }
            match registry.nodes.get(&leader).and_then(|s| s.server.clone()) {
                Some(server) => server,
                None => return,
            }
        };
        if !self.connection_gone(&leader, &server).await {
            return;
        }
        tracing::warn!(%leader, %server, "the leader's NATS connection is gone: ending its lease");
        if self
            .buckets
            .leader
            .delete_expect_revision(LEADER_KEY, Some(revision))
            .await
            .is_ok()
        {
            *self.observed_lease.lock() = None;
        }
    }

    pub(super) fn lose(&self, term: u64) {
        if self.lease.lock().take().is_some() {
            self.emit(ClusterEvent::LeadershipLost {
                node: self.config.node_id.clone(),
                term,
            });
        }
    }

    pub(super) async fn resign(&self) {
        let lease = self.lease.lock().take();
        if let Some(lease) = lease {
            let _ = self
                .buckets
                .leader
                .delete_expect_revision(LEADER_KEY, Some(lease.revision))
                .await;
            self.emit(ClusterEvent::LeadershipLost {
                node: self.config.node_id.clone(),
                term: lease.term,
            });
        }
    }

    /// The leader's duties for one tick: declare silent nodes failed, publish a new map when
    /// the alive set changed.
    pub(super) async fn lead(&self) {
        let Some(term) = self.acting_term() else {
            return;
        };
        let now = Instant::now();
        let timeout = self.config.failure_timeout;
        let (silent, mut alive, suspects) = {
            let registry = self.registry.lock();
            // This node's own beats and records come back the same ways as everyone's. If
            // neither does, what is silent is its own view, not the other nodes: declare
            // nobody failed and publish nothing until it recovers — and then give every node
            // a full failure timeout from the recovery, since nobody could be heard meanwhile.
            let mut sight = self.sight.lock();
            let Some(acquired_at) = self.lease.lock().map(|l| l.acquired_at) else {
                return;
            };
            if !registry.heard_within(&self.config.node_id, now, timeout) {
                if !sight.blind {
                    tracing::warn!(
                        "own heartbeats not seen in the registry; not judging other nodes"
                    );
                    sight.blind = true;
                }
                return;
            }
            if sight.blind {
                sight.blind = false;
                sight.recovered = Some(now);
                tracing::info!("own heartbeats seen again; judging other nodes from now on");
            }
            // A new leader's grace (see `cluster/liveness.rs`): the previous leader granted beats until
            // a third of a lease before this one could acquire, maybe some this one never
            // heard; count every node's silence from then at the earliest.
            // Its lease may have been ended early by a follower that found the previous
            // leader's connection gone (`end_a_dead_lease`), so the previous leader may have
            // granted beats until just before: count from the acquisition.
            let from = sight.recovered.max(Some(acquired_at));
            let silent = registry.silent(now, timeout, from);
            // Nodes silent for two beats, counted from when each was last heard (a check's
            // safety needs no grace), get their connection checked (`cluster/liveness.rs`).
            let mut suspects = registry.suspects(now, self.suspect_after(), None);
            suspects.retain(|(r, ..)| !silent.iter().any(|(s, _)| s.node == r.node));
            (silent, registry.alive(now, timeout, from), suspects)
        };
        let gone = self.check_suspects(suspects).await;
        alive.retain(|n| !gone.iter().any(|(record, _)| &record.node == n));
        let mut silent = silent;
        silent.extend(gone);
        // Declared only by a leader still acting, and only over the very record found silent:
        // a record written meanwhile wins (compare-and-set on its revision). Bounded, all at
        // once: the registry's bucket may be stalled (a raft election), and the map below does
        // not wait for these — it leaves silent nodes out either way.
        let me = &self.config.node_id;
        let declarations = silent
            .into_iter()
            .filter(|(record, _)| &record.node != me)
            .map(|(mut record, revision)| async move {
                if self.acting_term() != Some(term) {
                    return;
                }
                record.status = NodeStatus::Failed;
                if let Ok(bytes) = codec::encode("node record", &record) {
                    let _ = self
                        .buckets
                        .nodes
                        .update(&record.node, Bytes::from(bytes), revision)
                        .await;
                }
            });
        let _ = tokio::time::timeout(
            self.config.heartbeat,
            futures_util::future::join_all(declarations),
        )
        .await;
        if self.leaving.load(Ordering::Acquire) {
            alive.retain(|n| n != me);
        } else if !alive.contains(me) {
            alive.push(me.clone());
        }
        alive.sort();
        if alive.is_empty() {
            return;
        }
        // Drained nodes stay up but own nothing (see `cluster/drain.rs`); never all of them.
        let drained = self.drained().await;
        if !drained.is_empty() {
            if alive.iter().all(|n| drained.contains(n)) {
                tracing::warn!(
                    ?drained,
                    "every alive node is drained; ignoring the drain set"
                );
            } else {
                alive.retain(|n| !drained.contains(n));
            }
        }
        // A new leader publishes once even when nothing changed: its map, written by
        // compare-and-set under its term, is the fence that makes any write a deposed leader
        // still has in flight fail (its revision is stale) or be superseded at once.
        let current = self.map.read().clone();
        if current.as_ref().is_some_and(|m| {
            m.nodes == alive && m.shard_count() == self.shard_count && m.term >= term
        }) {
            return;
        }
        // Bounded too: a map write stuck behind a raft election must not hold back the lease
        // renewals of this loop. (It may still land later: it is a compare-and-set.)
        match tokio::time::timeout(self.config.lease, self.publish(term, &alive)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "shard map not published"),
            Err(_) => tracing::warn!("shard map not published in time; trying again"),
        }
    }

    /// Checks the connections of nodes silent for two beats (see
    /// [`Inner::connection_gone`]) and returns those whose connection is gone, to be declared
    /// failed now rather than after the failure timeout. Their beats are not granted from the
    /// check on, until the map leaves them out.
    async fn check_suspects(
        &self,
        suspects: Vec<(NodeRecord, u64, String)>,
    ) -> Vec<(NodeRecord, u64)> {
        let Some(term) = self.acting_term() else {
            return Vec::new();
        };
        self.prune_condemned(term);
        let me = &self.config.node_id;
        let checks = suspects
            .into_iter()
            .filter(|(record, ..)| &record.node != me)
            .map(|(record, revision, server)| async move {
                let started = Instant::now();
                let declared = {
                    let mut condemned = self.condemned.lock();
                    let entry = condemned.entry(record.node.clone()).or_insert(Condemned {
                        since: started,
                        declared: false,
                        term,
                    });
                    entry.since = entry.since.max(started);
                    entry.declared
                };
                if declared {
                    // Found gone before; the map without it is on its way: keep it out.
                    return Some((record, revision));
                }
                let gone = self.connection_gone(&record.node, &server).await;
                // Heard from meanwhile: back, whatever the server said a moment ago.
                let back = {
                    let now = Instant::now();
                    self.registry.lock().heard_within(
                        &record.node,
                        now,
                        now.duration_since(started),
                    )
                };
                let mut condemned = self.condemned.lock();
                if gone && !back {
                    tracing::warn!(
                        node = %record.node,
                        %server,
                        "the node's NATS connection is gone: declaring it failed"
                    );
                    if let Some(entry) = condemned.get_mut(&record.node) {
                        entry.declared = true;
                    }
                    Some((record, revision))
                } else {
                    if condemned.get(&record.node).is_some_and(|c| !c.declared) {
                        condemned.remove(&record.node);
                    }
                    None
                }
            });
        // Each check is bounded (a request with a timeout, or two through relays).
        futures_util::future::join_all(checks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Forgets condemned nodes whose beats may be granted again: declared ones once the map
    /// this leader adopted leaves them out (a grant then carries a map without them), checks
    /// abandoned long ago, and everything from an earlier term.
    fn prune_condemned(&self, term: u64) {
        let map = self.map.read().clone();
        let bound = self.config.heartbeat;
        self.condemned.lock().retain(|node, c| {
            c.term == term
                && c.holds(bound)
                && (!c.declared
                    || map
                        .as_ref()
                        .is_some_and(|m| m.nodes.iter().any(|n| n == node)))
        });
    }

    /// Writes a new map, fenced: the lease must still be valid and still ours, and the map is
    /// replaced by compare-and-set only if its term is not higher than ours.
    pub(super) async fn publish(&self, term: u64, alive: &[String]) -> Result<(), String> {
        if self.acting_term() != Some(term) {
            return Err("lease no longer valid".into());
        }
        let holder = read_entry(&self.buckets.leader, LEADER_KEY)
            .await?
            .filter(|e| e.operation == kv::Operation::Put)
            .and_then(|e| codec::decode::<LeaderRecord>("leader record", &e.value).ok());
        if !holder.is_some_and(|h| h.node == self.config.node_id && h.term == term) {
            self.lose(term);
            return Err("the lease belongs to someone else".into());
        }
        let entry = read_entry(&self.buckets.shards, MAP_KEY)
            .await?
            .filter(|e| e.operation == kv::Operation::Put);
        let (epoch, revision) = match &entry {
            Some(e) => {
                let current = ShardMap::decode(&e.value).map_err(|e| e.to_string())?;
                if current.term > term {
                    self.lose(term);
                    return Err(format!(
                        "the map was written by a newer term {} (ours {term})",
                        current.term
                    ));
                }
                if current.term == term
                    && current.nodes == alive
                    && current.shard_count() == self.shard_count
                {
                    // Already out (this node's watch has not caught up yet): nothing to do.
                    return Ok(());
                }
                (current.epoch + 1, Some(e.revision))
            }
            None => (1, None),
        };
        let map = ShardMap::compute(alive, self.shard_count, epoch, term);
        let bytes = Bytes::from(map.encode().map_err(|e| e.to_string())?);
        let written = match revision {
            Some(r) => self
                .buckets
                .shards
                .update(MAP_KEY, bytes, r)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            None => self
                .buckets
                .shards
                .create(MAP_KEY, bytes)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        written?;
        self.published_epoch.fetch_max(epoch, Ordering::AcqRel);
        tracing::info!(epoch, term, nodes = ?alive, "published shard map");
        Ok(())
    }
}
