//! Remote delivery over NATS: one subject per actor, one queue subscription per owned shard.
//!
//! A command for actor `id` of kind `kind` in shard `n` is a NATS request on
//! `aether.<ns>.shard.<n>.<kind>.<encoded-id>`. The node that owns shard `n` holds a queue
//! subscription (group `aether`) on `aether.<ns>.shard.<n>.>`, so NATS routes the request to
//! the owner and a sender needs no map at all. While a shard moves, nobody (or the old owner,
//! answering `NotOwner`) may answer: the sender backs off and retries, with the same command id,
//! until its deadline.
//!
//! This module only moves frames; decoding them and running the command is the actor layer's
//! job, behind [`Dispatch`].

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::{RequestErrorKind, Subject};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::names::{ActorId, Namespace};
use crate::wire::{RemoteError, RemoteReply};

/// The queue group every owner subscribes in.
pub const QUEUE_GROUP: &str = "aether";

/// The subject of one actor.
pub fn actor_subject(namespace: &Namespace, shard: u32, kind: &str, id: &ActorId) -> String {
    format!("aether.{namespace}.shard.{shard}.{kind}.{}", id.encoded())
}

/// The subscription subject of one shard.
pub fn shard_subject(namespace: &Namespace, shard: u32) -> String {
    format!("aether.{namespace}.shard.{shard}.>")
}

/// Why a request got no answer from an owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// No owner took the request before the deadline (nobody subscribed, or only nodes that
    /// no longer own the shard): it was never handled.
    Unreachable(String),
    /// The request went out and no answer came back in time: it may have been handled.
    NoReply(String),
    /// Not connected to NATS: nothing was sent.
    Unavailable(String),
}

/// Sends frames to shard owners.
pub struct Transport {
    client: async_nats::Client,
    retries: std::sync::atomic::AtomicU64,
}

impl Transport {
    /// A transport on `client`.
    pub fn new(client: async_nats::Client) -> Self {
        Transport {
            client,
            retries: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Requests sent again because no node served their shard yet, or its old owner refused
    /// them (a shard moving between nodes). Never counts a request that may have been handled.
    pub fn retries(&self) -> u64 {
        self.retries.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn connected(&self) -> Result<(), SendError> {
        match self.client.connection_state() {
            State::Connected => Ok(()),
            state => Err(SendError::Unavailable(format!(
                "not connected to NATS ({state:?})"
            ))),
        }
    }

    /// Sends `payload` to `subject` and waits for the owner's answer, retrying while nobody
    /// owns the shard, until `deadline`.
    pub async fn request(
        &self,
        subject: String,
        payload: Vec<u8>,
        deadline: Instant,
    ) -> Result<RemoteReply, SendError> {
        let payload = Bytes::from(payload);
        let mut backoff = Duration::from_millis(5);
        let mut last_refusal = String::from("no owner answered");
        loop {
            self.connected()?;
            let now = Instant::now();
            if now >= deadline {
                return Err(SendError::Unreachable(last_refusal));
            }
            let request = async_nats::Request::new()
                .payload(payload.clone())
                .timeout(Some(deadline - now));
            match self.client.send_request(subject.clone(), request).await {
                Ok(msg) => match RemoteReply::decode(&msg.payload) {
                    Ok(RemoteReply::Err(RemoteError::NotOwner { shard })) => {
                        last_refusal = format!("shard {shard} is moving: its old owner refused");
                    }
                    Ok(reply) => return Ok(reply),
                    Err(e) => {
                        return Ok(RemoteReply::Err(RemoteError::Codec {
                            reason: e.to_string(),
                        }));
                    }
                },
                Err(e) => match e.kind() {
                    RequestErrorKind::NoResponders => {
                        last_refusal = "no node serves the shard right now".into();
                    }
                    RequestErrorKind::TimedOut => {
                        return Err(SendError::NoReply(format!("no answer from {subject}")));
                    }
                    _ => return Err(SendError::Unavailable(e.to_string())),
                },
            }
            self.retries
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let pause = backoff.min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(Duration::from_millis(50));
        }
    }

    /// Publishes `payload` to `subject` without waiting (a tell).
    pub async fn publish(&self, subject: String, payload: Vec<u8>) -> Result<(), SendError> {
        self.connected()?;
        self.client
            .publish(subject, Bytes::from(payload))
            .await
            .map_err(|e| SendError::Unavailable(e.to_string()))
    }
}

/// The shards this node owns, as decided by the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnedShards {
    /// The map epoch this set comes from.
    pub epoch: u64,
    /// The shards.
    pub shards: BTreeSet<u32>,
}

/// What the actor layer does with inbound frames.
pub trait Dispatch: Send + Sync + 'static {
    /// Handles one frame for `shard`; returns the encoded answer (`None` for a tell).
    fn handle(
        &self,
        shard: u32,
        payload: Bytes,
    ) -> Pin<Box<dyn Future<Output = Option<Vec<u8>>> + Send>>;

    /// Stops every activation of `shards`, which this node no longer serves: running turns
    /// finish, queued commands are served, state is snapshotted. Resolves with the number of
    /// actors stopped once all of them have. Called by the cluster's handoff after it stopped
    /// routing these shards here, so no new activation of them can start meanwhile.
    fn drain(&self, shards: Vec<u32>) -> Pin<Box<dyn Future<Output = usize> + Send>>;
}

/// Keeps one queue subscription per served shard, following `owned` (the shards the cluster's
/// handoff says to serve now), and hands every frame to `dispatch`. Ends when `owned`'s sender
/// is dropped; then every subscription is dropped.
///
/// The returned receiver holds the epoch whose shards are all subscribed (and flushed to the
/// server): once it reaches an epoch, requests for those shards find this node.
pub fn serve(
    client: async_nats::Client,
    namespace: Namespace,
    mut owned: watch::Receiver<Arc<OwnedShards>>,
    dispatch: Arc<dyn Dispatch>,
) -> (JoinHandle<()>, watch::Receiver<u64>) {
    let (served_tx, served) = watch::channel(0u64);
    let task = tokio::spawn(async move {
        let mut serving: HashMap<u32, JoinHandle<()>> = HashMap::new();
        loop {
            let wanted = Arc::clone(&owned.borrow_and_update());
            let lost: Vec<u32> = serving
                .keys()
                .copied()
                .filter(|s| !wanted.shards.contains(s))
                .collect();
            for shard in &lost {
                if let Some(task) = serving.remove(shard) {
                    task.abort();
                }
            }
            if !lost.is_empty() {
                tracing::debug!(
                    shards = lost.len(),
                    epoch = wanted.epoch,
                    "stopped serving shards"
                );
            }
            for &shard in &wanted.shards {
                if serving.contains_key(&shard) {
                    continue;
                }
                let subject = shard_subject(&namespace, shard);
                match client
                    .queue_subscribe(subject.clone(), QUEUE_GROUP.into())
                    .await
                {
                    Ok(sub) => {
                        serving.insert(
                            shard,
                            tokio::spawn(serve_shard(
                                client.clone(),
                                shard,
                                sub,
                                Arc::clone(&dispatch),
                            )),
                        );
                    }
                    Err(e) => tracing::warn!(%subject, error = %e, "cannot subscribe; will retry"),
                }
            }
            let retry = serving.len() < wanted.shards.len();
            if !retry && client.flush().await.is_ok() {
                let _ = served_tx.send(wanted.epoch);
            }
            let changed = if retry {
                tokio::select! {
                    r = owned.changed() => r,
                    () = tokio::time::sleep(Duration::from_millis(200)) => Ok(()),
                }
            } else {
                owned.changed().await
            };
            if changed.is_err() {
                break;
            }
        }
        for (_, task) in serving {
            task.abort();
        }
    });
    (task, served)
}

async fn serve_shard(
    client: async_nats::Client,
    shard: u32,
    mut sub: async_nats::Subscriber,
    dispatch: Arc<dyn Dispatch>,
) {
    while let Some(msg) = sub.next().await {
        let reply_to: Option<Subject> = msg.reply.clone();
        let handling = dispatch.handle(shard, msg.payload);
        let client = client.clone();
        tokio::spawn(async move {
            if let Some(answer) = handling.await
                && let Some(reply_to) = reply_to
                && let Err(e) = client.publish(reply_to, Bytes::from(answer)).await
            {
                tracing::warn!(error = %e, "cannot send a reply");
            }
        });
    }
}
