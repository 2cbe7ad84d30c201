//! Liveness on core NATS: beats, grants and the fence.
//!
//! Whether a node is alive is decided without JetStream in the path. JetStream stores are
//! replicated by raft, and a raft group whose leader is cut off stops accepting writes until
//! its followers elect another leader, which nats-server does only after 4 to 9 s of silence.
//! A liveness signal written to a KV bucket would stop for *every* node while the registry's
//! raft group re-elects, and every node would fence itself at once.
//!
//! # The protocol
//!
//! - **Beats.** Every heartbeat, each node sends a core NATS request on
//!   `aether.<ns>.cluster.beat` carrying its id ([`Beat`]). Every node subscribes to that
//!   subject (a plain subscription, so each gets a copy) and notes, by its own clock, when it
//!   last heard each node. These notes feed the same registry as the KV records, so a follower
//!   that becomes leader already knows who was alive.
//! - **Grants.** Only the node *acting* as leader (its lease renewed less than two thirds of a
//!   lease ago) answers a beat, with a [`Grant`]: its id, its term and the epoch of its current
//!   map. A grant means: "I heard you when I sent this; I will not declare you failed before a
//!   failure timeout has passed since then."
//! - **The fence.** A node measures its standing from the *send* time of the last beat that was
//!   granted. When that is 9/10 of a failure timeout old, it fences itself: placement answers
//!   `Unassigned` for every shard (local callers included), and the handoff drains its actors.
//!   Since a grant is only given after the beat arrived, the leader cannot declare the node
//!   failed before the node has fenced (the tenth is the allowance for clock rates).
//! - **A new leader's grace.** Grants come from one leader at a time, but the next leader may
//!   not have heard a beat the previous one granted (a route between two servers can break
//!   alone). A grant is given only while the granting lease is valid, which ends a third of a
//!   lease before the server can expire it and let the next leader in. So the next leader
//!   counts every node's silence from a third of a lease before it acquired the lease, at the
//!   earliest: no node it declares failed can still be serving on an older grant.
//! - **Rejoining.** A fenced node whose beat is granted again adopts a map at least as new as
//!   the grant's epoch (the one it already watched, or the bucket's), then unfences; the handoff
//!   serves exactly what that map gives it.
//!
//! The KV record each node writes every heartbeat stays, for what it describes rather than for
//! liveness: the node's status (alive, leaving), its handoff epoch and the shards it may hold.
//! The leader still counts a record change as hearing from the node: a late record only makes
//! it wait longer, never declare sooner.
//!
//! # What it costs
//!
//! One request and one reply per node per heartbeat, and one small message per node per
//! heartbeat to every other node. When the *lease* bucket's raft group is the one cut off, the
//! leader cannot renew, stops granting after two thirds of a lease, and every node fences until
//! JetStream elects the group's new leader and a node takes the lease: a cluster cannot have a
//! leader that no store agrees on.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{Inner, MAP_KEY, ShardMap};
use crate::wire::codec;

/// The subject every node beats on and listens to.
pub(crate) fn beat_subject(namespace: &crate::names::Namespace) -> String {
    format!("aether.{namespace}.cluster.beat")
}

/// A node saying it is alive.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Beat {
    /// The beating node.
    pub node: String,
}

/// The acting leader's answer to a [`Beat`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Grant {
    /// The leader that heard the beat.
    pub leader: String,
    /// Its term.
    pub term: u64,
    /// The epoch of the newest map it knows: a node rejoining after a fence must adopt a map at
    /// least this new before it serves anything.
    pub epoch: u64,
}

impl Inner {
    /// How long after the send of the last granted beat this node fences itself: a little less
    /// than the failure timeout, so it stops serving before the leader can declare it failed.
    pub(super) fn fence_after(&self) -> Duration {
        self.config
            .failure_timeout
            .saturating_sub(self.config.failure_timeout / 10)
    }

    /// Whether the last granted beat is older than [`Inner::fence_after`].
    pub(super) fn beat_lease_expired(&self) -> bool {
        let last = self.last_beat_ms.load(Ordering::Acquire);
        Duration::from_millis(self.since_clock().saturating_sub(last)) >= self.fence_after()
    }

    fn since_clock(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The node's liveness: beats on core NATS every heartbeat, its KV record every heartbeat
    /// (on its own task: a stalled bucket delays nothing else), and the fence.
    pub(super) async fn heartbeats(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let fence_after = self.fence_after();
        let records = tokio::spawn(Arc::clone(&self).records());
        let beats = tokio::spawn(Arc::clone(&self).beats());
        loop {
            let last = Duration::from_millis(self.last_beat_ms.load(Ordering::Acquire));
            let due = self.clock + last + fence_after;
            tokio::select! {
                () = tokio::time::sleep_until(due) => {
                    let silent = Duration::from_millis(
                        self.since_clock().saturating_sub(self.last_beat_ms.load(Ordering::Acquire)),
                    );
                    if silent >= fence_after && !*self.fenced.borrow() {
                        self.fence(silent);
                    }
                    if *self.fenced.borrow() {
                        // Nothing to do until a beat is granted (the beats task unfences).
                        tokio::time::sleep(self.config.heartbeat).await;
                    }
                }
                _ = stop.changed() => {
                    records.abort();
                    beats.abort();
                    return;
                }
            }
        }
    }

    /// Sends a beat every heartbeat; each waits for its grant on a task of its own, so a beat
    /// that is never answered delays neither the next one nor the fence.
    async fn beats(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let subject = beat_subject(&self.namespace);
        let payload = match codec::encode(
            "beat",
            &Beat {
                node: self.config.node_id.clone(),
            },
        ) {
            Ok(bytes) => Bytes::from(bytes),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a beat; fencing for good");
                return;
            }
        };
        // A grant that arrives later than this is of no use: the fence has struck by then.
        let wait = self.fence_after().max(Duration::from_millis(10));
        loop {
            tick.tick().await;
            let sent = self.since_clock();
            let inner = Arc::clone(&self);
            let (subject, payload) = (subject.clone(), payload.clone());
            tokio::spawn(async move {
                let request = async_nats::Request::new()
                    .payload(payload)
                    .timeout(Some(wait));
                let reply = match inner.client.send_request(subject, request).await {
                    Ok(reply) => reply,
                    Err(e) => {
                        tracing::debug!(error = %e, "beat not granted");
                        return;
                    }
                };
                let grant = match codec::decode::<Grant>("grant", &reply.payload) {
                    Ok(grant) => grant,
                    Err(e) => {
                        tracing::warn!(error = %e, "undecodable grant ignored");
                        return;
                    }
                };
                inner.granted(sent, grant).await;
            });
        }
    }

    /// A beat sent at `sent` (ms on the node's clock) was granted.
    async fn granted(&self, sent: u64, grant: Grant) {
        self.last_beat_ms.fetch_max(sent, Ordering::AcqRel);
        if *self.fenced.borrow() {
            // One rejoin at a time: grants of beats a heartbeat apart can arrive together.
            let _rejoining = self.rejoining.lock().await;
            if *self.fenced.borrow() && !self.beat_lease_expired() {
                self.unfence(grant.epoch).await;
            }
        }
    }

    /// Writes this node's record every heartbeat, and at once when the handoff asks: its
    /// status, handoff epoch and held shards. One writer, so records land in order.
    async fn records(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.write_record.notified() => {}
            }
            // Bounded: a put stuck behind a raft election must not hold back the next record
            // (which carries newer held shards) past a failure timeout.
            match tokio::time::timeout(self.config.failure_timeout, self.heartbeat()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "node record not written"),
                Err(_) => tracing::warn!("node record not written in time"),
            }
        }
    }

    /// Hears every node's beats; the acting leader grants them.
    pub(super) async fn listen_beats(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let subject = beat_subject(&self.namespace);
        loop {
            let mut beats = match self.client.subscribe(subject.clone()).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen to beats; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(500)) => continue,
                        _ = stop.changed() => return,
                    }
                }
            };
            loop {
                let message = tokio::select! {
                    m = beats.next() => m,
                    _ = stop.changed() => return,
                };
                let Some(message) = message else { break };
                let beat = match codec::decode::<Beat>("beat", &message.payload) {
                    Ok(beat) => beat,
                    Err(e) => {
                        tracing::debug!(error = %e, "undecodable beat ignored");
                        continue;
                    }
                };
                self.registry.lock().heard(&beat.node, Instant::now());
                let (Some(term), Some(reply)) = (self.acting_term(), message.reply) else {
                    continue;
                };
                let grant = Grant {
                    leader: self.config.node_id.clone(),
                    term,
                    epoch: self.map.read().as_ref().map_or(0, |m| m.epoch),
                };
                if let Ok(bytes) = codec::encode("grant", &grant) {
                    let _ = self.client.publish(reply, Bytes::from(bytes)).await;
                }
            }
        }
    }

    /// Stops serving everything: no beat of this node has been granted for almost a failure
    /// timeout (it is cut off from NATS or from the leader, paused, or starved). Its actors are
    /// drained by the handoff; placement routes even local callers away, so nothing is read or
    /// decided from state another node may have moved on from.
    fn fence(&self, silent: Duration) {
        tracing::warn!(
            node = %self.config.node_id,
            ?silent,
            "beats not granted: fencing this node (it serves nothing until they are)"
        );
        self.fenced.send_replace(true);
    }

    /// A beat was granted again after a fence: catch up with a map at least as new as the
    /// grant's before the handoff serves anything (the map this node holds may be long
    /// superseded, and a replica it reads from may still be catching up).
    async fn unfence(&self, epoch: u64) {
        let adopted = self.map.read().as_ref().map_or(0, |m| m.epoch);
        if adopted < epoch
            && let Ok(Some(entry)) = super::read_entry(&self.buckets.shards, MAP_KEY).await
            && entry.operation == kv::Operation::Put
            && let Ok(map) = ShardMap::decode(&entry.value)
        {
            self.adopt(map);
        }
        let adopted = self.map.read().as_ref().map_or(0, |m| m.epoch);
        if adopted < epoch {
            tracing::info!(
                adopted,
                granted = epoch,
                "beats granted again, but the map here is older than the leader's; waiting"
            );
            return;
        }
        tracing::info!(node = %self.config.node_id, epoch = adopted, "beats granted again: rejoining");
        self.fenced.send_replace(false);
    }
}
