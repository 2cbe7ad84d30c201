//! Delivery of durable effects (the outbox pump) and of deadlock-detection frames.
//!
//! Each activation with pending effects runs one **pump**: a task beside the actor's turns that
//! delivers what the outbox says is due — at most one effect per receiver at a time, lowest
//! position first, so each receiver applies one sender's effects in order — and records each
//! settlement in the outbox (the next commit stores it). A failed delivery is retried after a
//! pause that grows from 100 ms to 10 s. Reminders wait for their time on the pump's timer;
//! delayed effects for other actors are handed back to the actor (a `Kick`) to be forwarded by a
//! turn of its own. The pump never holds a turn, and stops with its activation.
//!
//! Deliveries go where the receiver lives: into a local mailbox, or over NATS to the node that
//! serves its shard, as a request frame marked with the effect's origin; the receiver answers
//! with a [`Settle`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::host::Host;
use super::inbox::CallMeta;
use crate::names::ActorKey;
use crate::routing::{SendError, remote::actor_subject};
use crate::wire::{
    Control, EffectOrigin, FRAME_FORMAT, OutboxEntry, RemoteReply, RemoteRequest, Settle, codec,
    now_ms,
};
use crate::workflow::outbox::{Due, IndexState, Outbox};

/// Pause before retrying a receiver after a failed delivery, doubling up to
/// `RuntimeConfig::effect_retry_max`.
const FIRST_RETRY: Duration = crate::config::MIN_EFFECT_RETRY;
/// How long a forward request waits for the actor's turn before it is asked again.
const FORWARD_AGAIN: Duration = Duration::from_secs(1);

/// The outbox of an activation, shared by its turns, its inbox and its pump.
#[derive(Default)]
pub(crate) struct OutboxCell {
    pub outbox: Mutex<Outbox>,
    /// Wakes the pump: new entries, a wake-up, the end of a forward.
    pub kick: Notify,
    pump: Mutex<Option<JoinHandle<()>>>,
}

impl OutboxCell {
    /// The scheduler woke this actor for its index entry.
    pub fn woken(&self, revision: u64, due_ms: u64) {
        let mut outbox = self.outbox.lock();
        // Revisions only grow: an entry this activation wrote itself may be newer than the one
        // the scheduler saw (its watch can lag); never go back to the older one.
        if outbox.index.revision.is_none_or(|r| r < revision) {
            outbox.index.revision = Some(revision);
            outbox.index.due_ms = due_ms;
        }
        outbox.index.woken = true;
        drop(outbox);
        self.kick.notify_one();
    }

    /// Starts the pump if it is not running.
    pub fn ensure_pump(
        self: &Arc<Self>,
        host: &Arc<Host>,
        me: &ActorKey,
        forward: Box<dyn Fn() + Send + Sync>,
    ) {
        let mut pump = self.pump.lock();
        if pump.is_none() {
            *pump = Some(host.tokio.spawn(run_pump(
                Arc::clone(host),
                me.clone(),
                Arc::clone(self),
                forward,
            )));
        } else {
            self.kick.notify_one();
        }
    }

    /// Stops the pump (deliveries in flight are dropped; they are delivered again later and
    /// recognised as duplicates if they had landed).
    pub fn stop_pump(&self) {
        if let Some(pump) = self.pump.lock().take() {
            pump.abort();
        }
    }
}

type Delivering =
    std::pin::Pin<Box<dyn std::future::Future<Output = (ActorKey, u64, Settle)> + Send>>;

/// The pump of one activation. See the [module docs](self).
async fn run_pump(
    host: Arc<Host>,
    me: ActorKey,
    cell: Arc<OutboxCell>,
    forward: Box<dyn Fn() + Send + Sync>,
) {
    let mut inflight: FuturesUnordered<Delivering> = FuturesUnordered::new();
    let mut busy: HashMap<ActorKey, u64> = HashMap::new();
    let mut retry: HashMap<ActorKey, (Instant, Duration)> = HashMap::new();
    let mut forwarded_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let wall = now_ms();
        let (due, next_ms, clear) = {
            let mut outbox = cell.outbox.lock();
            let (due, next_ms) = outbox.due(&me, wall, &|target, _| {
                busy.contains_key(target) || retry.get(target).is_some_and(|(at, _)| *at > now)
            });
            // Woken for an entry, and nothing is pending: the entry is stale; remove it.
            let index = outbox.index;
            let clear = match index.revision {
                Some(revision) if index.woken && outbox.is_idle() => {
                    outbox.index = IndexState::default();
                    Some(revision)
                }
                _ => None,
            };
            (due, next_ms, clear)
        };
        if let Some(revision) = clear {
            let (events, me) = (Arc::clone(&host.events), me.clone());
            host.tokio.spawn(async move {
                if let Err(e) = events.clear_wakeup(&me, revision).await {
                    tracing::debug!(actor = %me, error = %e, "wake-up entry not cleared");
                }
            });
        }
        let mut wants_forward = false;
        for item in due {
            match item {
                Due::Deliver(entry) => {
                    busy.insert(entry.target.clone(), entry.seq);
                    inflight.push(Box::pin(deliver(Arc::clone(&host), me.clone(), entry)));
                }
                Due::Forward(_) => wants_forward = true,
            }
        }
        if wants_forward && forwarded_at.is_none_or(|t| now >= t + FORWARD_AGAIN) {
            forwarded_at = Some(now);
            forward();
        }
        if !wants_forward {
            forwarded_at = None;
        }
        // Sleep until something comes due: a reminder, a retry, a forward asked again.
        let mut wake_at = now + Duration::from_secs(3600);
        if let Some(at) = next_ms {
            wake_at = wake_at.min(now + Duration::from_millis(at.saturating_sub(wall)));
        }
        for (at, _) in retry.values() {
            if *at > now {
                wake_at = wake_at.min(*at);
            }
        }
        if let Some(t) = forwarded_at {
            wake_at = wake_at.min(t + FORWARD_AGAIN);
        }
        tokio::select! {
            Some((target, seq, settle)) = inflight.next(), if !inflight.is_empty() => {
                busy.remove(&target);
                match settle {
                    Settle::Failed { reason } => {
                        super::host::Stats::bump(&host.stats.effects_retries);
                        let pause = retry.get(&target).map_or(FIRST_RETRY, |(_, p)| (*p * 2).min(host.config.effect_retry_max));
                        tracing::debug!(actor = %me, %target, seq, %reason, ?pause, "durable effect not delivered; retrying");
                        retry.insert(target, (Instant::now() + pause, pause));
                    }
                    settled => {
                        if let Settle::Rejected { reason } = &settled {
                            tracing::debug!(actor = %me, %target, seq, %reason, "durable effect rejected by its receiver");
                        }
                        retry.remove(&target);
                        super::host::Stats::bump(&host.stats.effects_settled);
                        cell.outbox.lock().settle(seq);
                    }
                }
            }
            () = cell.kick.notified() => {}
            () = tokio::time::sleep_until(wake_at) => {}
        }
    }
}

/// Delivers one outbox entry of `me` and waits for its settlement (bounded by the ask timeout).
async fn deliver(host: Arc<Host>, me: ActorKey, entry: OutboxEntry) -> (ActorKey, u64, Settle) {
    let timeout = host.config.ask_timeout;
    let meta = CallMeta {
        command_id: entry.command_id,
        correlation_id: entry.correlation_id,
        causation_id: Some(entry.causation_id),
        deadline: Instant::now() + timeout,
        timeout,
        chain: Vec::new(),
        origin: Some(Box::new(EffectOrigin {
            from: me,
            seq: entry.seq,
            compensation: entry.compensation,
        })),
        traced: host.traced(entry.correlation_id),
        asked_at: None,
    };
    let settle = deliver_effect(&host, &entry.target, entry.command, meta).await;
    (entry.target, entry.seq, settle)
}

/// Delivers a durable effect to `target`, wherever it lives.
pub(crate) async fn deliver_effect(
    host: &Arc<Host>,
    target: &ActorKey,
    command: Vec<u8>,
    meta: CallMeta,
) -> Settle {
    if target.namespace != host.namespace {
        return Settle::Failed {
            reason: format!("{target} is in another namespace than {}", host.namespace),
        };
    }
    let Some(info) = host.kind_named(target.kind.as_str()) else {
        return Settle::Failed {
            reason: format!("kind {} is not registered here", target.kind),
        };
    };
    if let Some(shard) = host.remote_shard(info.name, &target.id) {
        return deliver_remote(host, target, shard, command, meta).await;
    }
    let remote = Arc::clone(&info.remote);
    match remote
        .effect(Arc::clone(host), target.clone(), command, meta)
        .await
    {
        Ok(settle) => settle,
        // The shard moved away between the routing decision and delivery: follow it.
        Err((shard, command, meta)) => deliver_remote(host, target, shard, command, meta).await,
    }
}

async fn deliver_remote(
    host: &Arc<Host>,
    target: &ActorKey,
    shard: u32,
    command: Vec<u8>,
    meta: CallMeta,
) -> Settle {
    let Some(transport) = host.transport.as_ref() else {
        return Settle::Failed {
            reason: format!("shard {shard} is served elsewhere and there is no cluster transport"),
        };
    };
    let frame = RemoteRequest {
        format: FRAME_FORMAT,
        namespace: target.namespace.to_string(),
        kind: target.kind.to_string(),
        id: target.id.to_string(),
        command_id: meta.command_id,
        correlation_id: meta.correlation_id,
        causation_id: meta.causation_id,
        timeout_ms: meta.timeout.as_millis() as u64,
        chain: Vec::new(),
        expects_reply: true,
        command,
        effect: meta.origin.map(|o| *o),
        control: None,
        traced: Some(meta.traced),
    };
    let frame = match frame.encode() {
        Ok(frame) => frame,
        Err(e) => {
            return Settle::Failed {
                reason: e.to_string(),
            };
        }
    };
    let subject = actor_subject(&target.namespace, shard, target.kind.as_str(), &target.id);
    // Only a traced call carries the header; the frame says the decision either way.
    let trace = meta
        .traced
        .then(|| crate::wire::TraceParent::of(meta.correlation_id, meta.command_id, true));
    let route = host
        .placement
        .route(shard)
        .map(|node| crate::routing::Route { node, shard });
    match transport
        .request(subject, frame, trace, meta.deadline, route)
        .await
    {
        Ok(RemoteReply::Ok { reply }) => {
            codec::decode("settlement", &reply).unwrap_or_else(|e| Settle::Failed {
                reason: e.to_string(),
            })
        }
        Ok(RemoteReply::Err(e)) => Settle::Failed {
            reason: e.to_string(),
        },
        Ok(RemoteReply::Rejected { .. }) => Settle::Failed {
            reason: "the receiver answered a durable effect with a rejection frame".into(),
        },
        Ok(RemoteReply::NotOwner { shard }) => Settle::Failed {
            reason: format!("no node took shard {shard} before the deadline"),
        },
        Err(SendError::Unreachable(r) | SendError::NoReply(r) | SendError::Unavailable(r)) => {
            Settle::Failed { reason: r }
        }
        Err(SendError::TooLarge { size, limit }) => Settle::Failed {
            reason: format!(
                "the effect's frame ({size} bytes) exceeds NATS' max payload ({limit})"
            ),
        },
    }
}

/// Sends a deadlock-detection frame to `target` (never activating it): a local actor's mailbox
/// if it is resident, or the node that serves its shard. Dropped when it cannot go at once.
pub(crate) fn send_control(host: &Arc<Host>, target: &ActorKey, control: Control) {
    if target.namespace != host.namespace {
        return;
    }
    let Some(info) = host.kind_named(target.kind.as_str()) else {
        return;
    };
    let Some(shard) = host.remote_shard(info.name, &target.id) else {
        info.remote.control(host, &target.id, control);
        return;
    };
    let Some(transport) = host.transport.clone() else {
        return;
    };
    let frame = RemoteRequest {
        format: FRAME_FORMAT,
        namespace: target.namespace.to_string(),
        kind: target.kind.to_string(),
        id: target.id.to_string(),
        command_id: crate::wire::CommandId::from_u128(0),
        correlation_id: crate::wire::CommandId::from_u128(0),
        causation_id: None,
        timeout_ms: 0,
        chain: Vec::new(),
        expects_reply: false,
        command: Vec::new(),
        effect: None,
        control: Some(control),
        traced: None,
    };
    let Ok(frame) = frame.encode() else { return };
    let subject = actor_subject(&target.namespace, shard, target.kind.as_str(), &target.id);
    host.tokio.spawn(async move {
        if let Err(e) = transport.publish(subject, frame).await {
            tracing::debug!(error = ?e, "deadlock probe not sent");
        }
    });
}
