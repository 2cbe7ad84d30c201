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
//! - **Beats.** Four times per heartbeat, each node sends a core NATS request on
//!   `aether.<ns>.cluster.beat` carrying its id ([`Beat`]). Every node subscribes to that
//!   subject (a plain subscription, so each gets a copy) and notes, by its own clock, when it
//!   last heard each node. These notes feed the same registry as the KV records, so a follower
//!   that becomes leader already knows who was alive.
//! - **Grants.** Only the node *acting* as leader (its lease renewed less than two thirds of a
//!   lease ago) answers a beat, with a [`Grant`]: its id, its term and the epoch of its current
//!   map. A grant means: "I heard you when I sent this; I will not declare you failed before a
//!   failure timeout has passed since then — unless your NATS server tells me your connection
//!   is gone" (see below: a node fences itself on a lost connection at once).
//! - **The fence.** A node measures its standing from the *send* time of the last beat that was
//!   granted. When that is 9/10 of a failure timeout old, it fences itself: placement answers
//!   `Unassigned` for every shard (local callers included), and the handoff drains its actors.
//!   Since a grant is only given after the beat arrived, the leader cannot declare the node
//!   failed on the timeout before the node has fenced (the tenth is the allowance for clock
//!   rates).
//! - **A new leader's grace.** Grants come from one leader at a time, but the next leader may
//!   not have heard a beat the previous one granted (a route between two servers can break
//!   alone). A grant is given only while the granting lease is valid and the granting node
//!   connected, and the next leader gets the lease only once it expired (a third of a lease
//!   after the last grant) or once a follower found the holder's connection gone and ended it
//!   (see below). So the next leader counts every node's silence from when it acquired the
//!   lease, at the earliest: no node it declares failed can still be serving on an older
//!   grant.
//! - **Rejoining.** A fenced node whose beat is granted again adopts a map at least as new as
//!   the grant's epoch (the one it already watched, or the bucket's), then unfences; the handoff
//!   serves exactly what that map gives it.
//!
//! # A dead node, told from a slow one
//!
//! Waiting a failure timeout is the only way to tell a *paused* node from a dead one, but not
//! the only way to tell a *dead* one: when a process dies, the kernel closes its socket and
//! the NATS server drops its connection and subscriptions at once. So:
//!
//! - Every node subscribes to its own **check subject**, `aether.<ns>.cluster.check.<node>`,
//!   and says in every beat which server (`server_id`) it is connected to.
//! - The leader checks the connection of every node **silent for two beats** (half a
//!   heartbeat): a request on the node's check subject over a connection to the node's own
//!   server. "No responders" means the server holds no connection of that node: the leader
//!   declares it failed at once, without waiting for the failure timeout. A node that is
//!   merely slow, paused or starved keeps its connection; its check gets an answer or a
//!   timeout, and only the failure timeout can declare it.
//! - When the node was on another server than the leader, the leader asks a live node on
//!   that server to check ([`Check`], [`Verdict`]): through a route, "no responders" could
//!   also mean a broken route between two servers, and the node may be serving behind it.
//!   When no live node shares the server, the failure timeout decides.
//!
//! Why the server's word is enough to give a node's shards away before the node has fenced
//! on its own:
//!
//! - a node whose connection is gone gets nothing through until it reconnects, and what it
//!   queued meanwhile (async-nats sends it after the reconnection) still carries the store's
//!   version check: an append that lands after the new owner wrote is refused;
//! - a node **fences itself on every lost connection**, when its client reports it, and it is
//!   unfenced only by a grant of a beat **sent after** the fence began (a grant of an older
//!   beat may answer a connection since lost);
//! - the leader grants no beat of a node from the moment it checks it (`condemned`) until
//!   its adopted map leaves the node out, so the grant that lifts the fence carries a map in
//!   which the node owns nothing it lost;
//! - a check is trusted only over a connection to the node's server on which the checking
//!   node has heard the node since it came up, before and after asking: right after a server
//!   restart, a node not heard since may still be reconnecting, and is left to the timeout;
//! - a new leader needs no grace for checks (unlike for the timeout): its predecessor stopped
//!   granting before it took the lease, so no grant it did not hear can lift a fence begun on
//!   a loss it finds.
//!
//! One case is weaker than the fence: a node whose connection the server closed but which has
//! not noticed yet (the server's close is lost on the way) may still answer its *local*
//! callers from memory until it notices or its fence strikes. Its writes are refused by the
//! version check once the new owner wrote, so no decision made there is stored twice; a read
//! there may miss a write made on the node that took over.
//!
//! A node says which server it is on only once it has answered a request on its own check
//! subject: where its account may not subscribe to it, nobody checks it (a missing
//! subscription would look like a gone connection) and the failure timeout alone decides.
//!
//! The leader is checked the same way by every follower: when it has been silent for two beats
//! and its server says its connection is gone, a follower deletes the lease it holds (that
//! revision only) and a live node takes the lead at once, instead of when the lease expires.
//! A leader that loses its connection stops acting (no grants, no maps) until a renewal
//! succeeds on its new connection — which fails if its lease was ended meanwhile.
//!
//! With the defaults (heartbeat 1 s, failure timeout 3 s) a killed node is declared failed
//! about half a second after its death, instead of 2 to 3 s (B7, `tests/failure_detection.rs`).
//!
//! The KV record each node writes every heartbeat stays, for what it describes rather than for
//! liveness: the node's status (alive, leaving), its handoff epoch and the shards it may hold.
//! The leader still counts a record change as hearing from the node: a late record only makes
//! it wait longer, never declare sooner.
//!
//! # What it costs
//!
//! Four requests and replies per node per heartbeat, four small messages per node per
//! heartbeat to every other node, and a check (one request) per silent node per leader tick. When the *lease* bucket's raft group is the one cut off, the
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

/// The subject node `node` answers connection checks on (see [`Check`]).
pub(crate) fn check_subject(namespace: &crate::names::Namespace, node: &str) -> String {
    format!("aether.{namespace}.cluster.check.{node}")
}

/// A node saying it is alive.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Beat {
    /// The beating node.
    pub node: String,
    /// The `server_id` of the NATS server the beat is sent through (empty from older nodes,
    /// which are then never declared failed on a lost connection, only on the timeout).
    #[serde(default)]
    pub server: String,
}

/// The leader asking a node on the same server as a silent node whether that node's
/// connection to the server is gone. An empty request on a node's check subject only asks
/// whether the node itself is connected.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Check {
    /// The silent node.
    pub node: String,
    /// The server it last beat through.
    pub server: String,
}

/// The answer to a [`Check`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Verdict {
    /// The server answered "no responders" for the silent node's check subject, asked over a
    /// connection to that very server on which the silent node had been heard since it came
    /// up.
    pub gone: bool,
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
                        self.fence("its beats were not granted", Some(silent));
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

    /// Sends a beat four times per heartbeat; each waits for its grant on a task of its own, so
    /// a beat that is never answered delays neither the next one nor the fence.
    async fn beats(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.beat_every());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let subject = beat_subject(&self.namespace);
        // A grant that arrives later than this is of no use: the fence has struck by then.
        let wait = self.fence_after().max(Duration::from_millis(10));
        loop {
            tick.tick().await;
            if self.link.state().up_since.is_none() {
                // Queued now, it would reach the leader late and name the server left behind.
                continue;
            }
            let sent = self.since_clock();
            let beat = Beat {
                node: self.config.node_id.clone(),
                server: if self.checkable.load(Ordering::Acquire) {
                    self.client.server_info().server_id
                } else {
                    String::new()
                },
            };
            let payload = match codec::encode("beat", &beat) {
                Ok(bytes) => Bytes::from(bytes),
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode a beat; fencing for good");
                    return;
                }
            };
            let inner = Arc::clone(&self);
            let subject = subject.clone();
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
            // Only a beat sent after the fence began lifts it: one sent before a lost connection
            // may be granted after the reconnection, by a leader that has since found this node's
            // connection gone and given its shards away.
            let fence = *self.fence_state.lock();
            if *self.fenced.borrow() && sent > fence.since_ms && !self.beat_lease_expired() {
                self.unfence(grant.epoch, fence.generation).await;
            }
        }
    }

    /// How often a node beats: four times per heartbeat, so that two missed beats — the
    /// suspicion that makes the leader check the node's connection — take half a heartbeat.
    pub(super) fn beat_every(&self) -> Duration {
        (self.config.heartbeat / 4).max(Duration::from_millis(5))
    }

    /// How long a node may be silent before the leader checks its connection: two beats.
    pub(super) fn suspect_after(&self) -> Duration {
        self.beat_every() * 2
    }

    /// Fences this node on every loss of its NATS connection, at once: while it cannot be
    /// heard the leader may find the connection gone and give its shards away (see
    /// [`Inner::connection_gone`]); it serves again only once a beat sent on a connection
    /// made since is granted.
    pub(super) async fn watch_link(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let mut link = self.link.subscribe();
        // From zero: a loss while joining counts too.
        let mut losses = 0;
        loop {
            let now = link.borrow_and_update().losses;
            if now > losses {
                losses = now;
                // As leader (or about to be), it stops acting until a renewal succeeds on a new
                // connection: a follower may find this connection gone and end the lease
                // meanwhile.
                self.suspended.store(true, Ordering::Release);
                self.fence("its NATS connection was lost", None);
            }
            tokio::select! {
                changed = link.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = stop.changed() => return,
            }
        }
    }

    /// Answers checks on this node's own subject: an empty request only proves this node is
    /// connected (the server would answer "no responders" otherwise); a [`Check`] asks it to
    /// look at another node's connection to the server this node is connected to.
    pub(super) async fn answer_checks(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let subject = check_subject(&self.namespace, &self.config.node_id);
        loop {
            let mut checks = match self.client.subscribe(subject.clone()).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot answer connection checks; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(500)) => continue,
                        _ = stop.changed() => return,
                    }
                }
            };
            tokio::spawn(Arc::clone(&self).prove_checkable(subject.clone()));
            loop {
                let message = tokio::select! {
                    m = checks.next() => m,
                    _ = stop.changed() => return,
                };
                let Some(message) = message else { break };
                let Some(reply) = message.reply else { continue };
                if message.payload.is_empty() {
                    let _ = self.client.publish(reply, Bytes::new()).await;
                    continue;
                }
                let check = match codec::decode::<Check>("connection check", &message.payload) {
                    Ok(check) => check,
                    Err(e) => {
                        tracing::debug!(error = %e, "undecodable connection check ignored");
                        continue;
                    }
                };
                let inner = Arc::clone(&self);
                tokio::spawn(async move {
                    let gone = inner.check_directly(&check.node, &check.server).await;
                    if let Ok(bytes) = codec::encode("verdict", &Verdict { gone }) {
                        let _ = inner.client.publish(reply, Bytes::from(bytes)).await;
                    }
                });
            }
        }
    }

    /// Asks this node's own check subject until it answers, then lets the beats say which
    /// server this node is on. Until then (or for good, when the account may not subscribe
    /// to the subject) nobody checks this node's connection: a leader would take the silence
    /// of a missing subscription for a gone connection. Its failures are then found by the
    /// failure timeout alone.
    async fn prove_checkable(self: Arc<Self>, subject: String) {
        let mut stop = self.stop.subscribe();
        for attempt in 0u32.. {
            let request = async_nats::Request::new().timeout(Some(Duration::from_secs(1)));
            if self
                .client
                .send_request(subject.clone(), request)
                .await
                .is_ok()
            {
                self.checkable.store(true, Ordering::Release);
                return;
            }
            if attempt == 10 {
                tracing::warn!(
                    %subject,
                    "this node does not answer on its check subject (may it subscribe to it?): \
                     its failure will be detected by the failure timeout only"
                );
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Whether `node`'s connection to NATS server `server` is gone, as that server says: the
    /// leader asks it directly when it is connected to the same server, and otherwise asks a
    /// live node connected to it. `false` when nobody can tell (no such node, a timeout, a
    /// route between servers in the way): then only the failure timeout declares the node.
    ///
    /// Why the server's word is enough to give the node's shards away before the failure
    /// timeout: a node whose connection is gone cannot write (every write goes through it),
    /// it fenced itself when it saw the loss (`watch_link`), and it serves again only once a
    /// beat sent on a new connection is granted — which the leader refuses while it checks and
    /// until its map leaves the node out (`condemned`). A check is trusted only over a
    /// connection to the node's own server (through a route, "no responders" could mean a
    /// broken route) on which the node was heard since it came up (see
    /// [`Inner::check_directly`]).
    pub(super) async fn connection_gone(&self, node: &str, server: &str) -> bool {
        if self.client.server_info().server_id == server {
            return self.check_directly(node, server).await;
        }
        let relays = self.registry.lock().on_server(
            server,
            Instant::now(),
            self.suspect_after(),
            &[node, &self.config.node_id],
        );
        let Ok(check) = codec::encode(
            "connection check",
            &Check {
                node: node.to_owned(),
                server: server.to_owned(),
            },
        ) else {
            return false;
        };
        let check = Bytes::from(check);
        for relay in relays.iter().take(2) {
            let request = async_nats::Request::new()
                .payload(check.clone())
                .timeout(Some(self.check_timeout() * 2));
            let answer = self
                .client
                .send_request(check_subject(&self.namespace, relay), request)
                .await;
            if let Ok(answer) = answer
                && let Ok(verdict) = codec::decode::<Verdict>("verdict", &answer.payload)
            {
                return verdict.gone;
            }
        }
        false
    }

    /// Asks this node's own server whether `node` is subscribed to its check subject: "no
    /// responders" means its connection is gone. Trusted only if this node is connected to
    /// `server`, and heard `node` after its own connection came up (so `node` had connected
    /// since: after a server restart, a node not heard since may still be reconnecting), both
    /// before and after asking.
    async fn check_directly(&self, node: &str, server: &str) -> bool {
        let settled = |inner: &Self| {
            let link = inner.link.state();
            inner.client.server_info().server_id == server
                && link.up_since.is_some_and(|up| {
                    inner
                        .registry
                        .lock()
                        .nodes
                        .get(node)
                        .is_some_and(|seen| seen.at > up)
                })
        };
        if !settled(self) {
            return false;
        }
        let losses = self.link.state().losses;
        let request = async_nats::Request::new().timeout(Some(self.check_timeout()));
        let answer = self
            .client
            .send_request(check_subject(&self.namespace, node), request)
            .await;
        matches!(answer, Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders)
            && settled(self)
            && self.link.state().losses == losses
    }

    /// How long a connection check waits for the node's answer (a node that is connected but
    /// slow to answer is not gone).
    fn check_timeout(&self) -> Duration {
        (self.config.heartbeat / 10).max(Duration::from_millis(20))
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
                let server = (!beat.server.is_empty()).then_some(beat.server.as_str());
                self.registry
                    .lock()
                    .heard(&beat.node, Instant::now(), server);
                let (Some(term), Some(reply)) = (self.acting_term(), message.reply) else {
                    continue;
                };
                if self
                    .condemned
                    .lock()
                    .get(&beat.node)
                    .is_some_and(|c| c.term == term && c.holds(self.config.heartbeat))
                {
                    // Its connection is being checked, or was found gone: a grant now could
                    // carry a map that still gives it shards (see `connection_gone`).
                    continue;
                }
                // The newest map this leader knows of: its own last one may not have come
                // back through its watch yet.
                let adopted = self.map.read().as_ref().map_or(0, |m| m.epoch);
                let grant = Grant {
                    leader: self.config.node_id.clone(),
                    term,
                    epoch: adopted.max(self.published_epoch.load(Ordering::Acquire)),
                };
                if let Ok(bytes) = codec::encode("grant", &grant) {
                    let _ = self.client.publish(reply, Bytes::from(bytes)).await;
                }
            }
        }
    }

    /// Stops serving everything: no beat of this node has been granted for almost a failure
    /// timeout (it is cut off from NATS or from the leader, paused, or starved), or its NATS
    /// connection was lost (the leader may find it gone at any moment). Its actors are
    /// drained by the handoff; placement routes even local callers away, so nothing is read or
    /// decided from state another node may have moved on from.
    fn fence(&self, why: &str, silent: Option<Duration>) {
        tracing::warn!(
            node = %self.config.node_id,
            ?silent,
            "{why}: fencing this node (it serves nothing until a beat is granted again)"
        );
        let mut fence = self.fence_state.lock();
        fence.since_ms = self.since_clock();
        fence.generation += 1;
        self.fenced.send_replace(true);
    }

    /// A beat was granted again after a fence: catch up with a map at least as new as the
    /// grant's before the handoff serves anything (the map this node holds may be long
    /// superseded, and a replica it reads from may still be catching up).
    async fn unfence(&self, epoch: u64, generation: u64) {
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
        // The read above may have taken a while: a fence that began meanwhile (a lost
        // connection), or a grant grown too old, keeps this one.
        let fence = self.fence_state.lock();
        if fence.generation != generation || self.beat_lease_expired() {
            return;
        }
        tracing::info!(node = %self.config.node_id, epoch = adopted, "beats granted again: rejoining");
        self.fenced.send_replace(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A beat from a node of an earlier version, which did not say which server it is on.
    #[derive(Serialize)]
    struct OldBeat {
        node: String,
    }

    #[test]
    fn a_beat_from_an_older_node_decodes_without_a_server() {
        let bytes = codec::encode(
            "beat",
            &OldBeat {
                node: "node-1".into(),
            },
        )
        .expect("encodes");
        let beat: Beat = codec::decode("beat", &bytes).expect("an old beat decodes");
        assert_eq!(beat.node, "node-1");
        assert!(
            beat.server.is_empty(),
            "no server: the node is never checked"
        );
    }

    #[test]
    fn a_registry_forgets_the_server_when_a_beat_no_longer_names_it() {
        let mut members = super::super::Members::default();
        let record = super::super::NodeRecord {
            node: "node-1".into(),
            started_ms: 0,
            capacity: 1,
            status: super::super::NodeStatus::Alive,
            beat: 0,
            handoff_epoch: 0,
            held: Default::default(),
            resident: 0,
            commits: 0,
        };
        let now = Instant::now();
        members.put(record, 1, now);
        members.heard("node-1", now, Some("S1"));
        assert_eq!(members.nodes["node-1"].server.as_deref(), Some("S1"));
        // A rollback to a build that does not say: nobody may check it any more.
        members.heard("node-1", now + Duration::from_millis(250), None);
        assert_eq!(members.nodes["node-1"].server, None);
    }
}
