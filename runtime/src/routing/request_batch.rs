//! Requests to one owner node in one message: the asking side's queue, the owner's reading,
//! and the frame between them.
//!
//! A remote ask can go two ways. The robust way is the actor's own subject
//! (`aether.<ns>.shard.<n>.<kind>.<id>`), where NATS finds whoever serves the shard: it needs
//! no map, and while a shard moves its requests simply find the new owner. It costs a
//! message per request through the server, its own wake-up on both sides, and that is most of
//! what a remote ask costs under load.
//!
//! So when a node asks many actors another node owns at once, the first attempt of each goes
//! the short way instead: the caller's shard map names the owner, and every request bound for
//! that node in one round of the sending task travels in one message on the node's own
//! subject, `aether.<ns>.node.<node>.asks` ([`node_subject`]). The owner reads the batch and
//! hands each request on exactly as if it had come on its actor's subject: the same checks
//! (the frame's actor is in the shard the item names, this node serves that shard now), the
//! same answer, to the caller's reply inbox, where answers are batched too. Nothing about a
//! command's fate depends on which way it came: the owner's check is the one that decides.
//!
//! A map is only a hint, so every way a batch can miss falls back to the actor's subject:
//!
//! - **The node no longer serves the shard** (the caller's map is older than the owner's, or
//!   the shard is still being handed over): it answers `NotOwner`, as an old owner does on
//!   the shard's subject, and the caller retries on the actor's subject after its usual
//!   back-off.
//! - **Nobody listens on the node's subject** (it died and its connection is gone, or it runs
//!   a version without batches): the server answers the batch's reply subject with "no
//!   responders"; the inbox hands that to every request of the batch, which is sent again on
//!   its actor's subject at once. A node refused that way is not batched to for a second.
//! - **No answer in time** (the node is paused, or its connection is dead while the server
//!   still keeps it): the attempt times out, as any attempt can, and is sent again, with the
//!   same command id, on the actor's subject.
//!
//! Only the first attempt of a request is ever batched, and only while other requests of the
//! same transport are in flight: a lone request would wait for the sending task for nothing,
//! so it goes straight to its actor's subject as before.
//!
//! # The frame
//!
//! A format byte (1), then per request: its token in the caller's inbox, its shard, its trace
//! context (a byte 0, or 1 and the 16-byte trace id, the 8-byte span id and a sampled byte),
//! and its request frame, length-prefixed. Numbers are LEB128 varints. The batch is published
//! with the reply subject `aether.<ns>.reply.<unique>.g<n>`: the owner answers request `t` on
//! `aether.<ns>.reply.<unique>.t`, and the server's "no responders" for the whole batch comes
//! back on `g<n>`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::Subject;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::remote::push_decimal;
use super::reply_inbox::{Arrived, BatchError, Slots, get_varint, put_varint, take_frame};
use crate::names::Namespace;
use crate::wire::TraceParent;

/// The first byte of a request batch: its format.
const FORMAT: u8 = 1;
/// The bytes of a trace context in a batch, after its presence byte.
const TRACE_LEN: usize = 16 + 8 + 1;
/// The prefix of a batch's group token in its reply subject (tokens of requests are decimal,
/// answer batches are `b`).
pub(crate) const GROUP: char = 'g';
/// How long a batch's requests are remembered for the server's "no responders": it comes back
/// within a round trip, so this only bounds memory.
const GROUP_MEMORY: Duration = Duration::from_secs(2);

/// The subject node `node` of `namespace` takes batched requests on:
/// `aether.<ns>.node.<node>.asks`, the node's id encoded as actor ids are (so any id is one
/// subject token).
pub(crate) fn node_subject(namespace: &Namespace, node: &str) -> Subject {
    let mut subject = String::with_capacity(16 + namespace.as_str().len() + node.len() + 5);
    subject.push_str("aether.");
    subject.push_str(namespace.as_str());
    subject.push_str(".node.");
    crate::names::encode_into(node, &mut subject);
    subject.push_str(".asks");
    Subject::from(subject)
}

/// One request of a batch, as the owner reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Item {
    /// Its token in the caller's inbox: its answer goes to `<inbox>.<token>`.
    pub token: u64,
    /// The shard the caller's map put it in (the owner checks it against the frame).
    pub shard: u32,
    /// Its trace context, as a `traceparent` header would carry it.
    pub trace: Option<TraceParent>,
    /// The request frame, sharing the batch's buffer.
    pub frame: Bytes,
}

/// The bytes one request adds to a batch, at most.
pub(crate) fn item_bound(frame: &[u8]) -> usize {
    item_bound_of(frame.len())
}

/// The bytes a request of `size` bytes adds to a batch, at most.
pub(crate) fn item_bound_of(size: usize) -> usize {
    size + 3 * 10 + 1 + TRACE_LEN
}

/// Starts a batch in `out` (cleared first).
pub(crate) fn start(out: &mut Vec<u8>) {
    out.clear();
    out.push(FORMAT);
}

/// Appends one request to a batch started by [`start`].
pub(crate) fn push(
    out: &mut Vec<u8>,
    token: u64,
    shard: u32,
    trace: Option<TraceParent>,
    frame: &[u8],
) {
    put_varint(out, token);
    put_varint(out, u64::from(shard));
    match trace {
        None => out.push(0),
        Some(t) => {
            out.push(1);
            out.extend_from_slice(&t.trace_id.to_be_bytes());
            out.extend_from_slice(&t.span_id.to_be_bytes());
            out.push(u8::from(t.sampled));
        }
    }
    put_varint(out, frame.len() as u64);
    out.extend_from_slice(frame);
}

/// Calls `each` with every request of a batch, in order. Requests before a malformed one are
/// still handed on; the rest time out at their callers and are sent again.
pub(crate) fn decode(batch: &Bytes, mut each: impl FnMut(Item)) -> Result<(), BatchError> {
    match batch.first() {
        Some(&FORMAT) => {}
        other => return Err(BatchError::Format(other.copied())),
    }
    let mut at = 1;
    while at < batch.len() {
        let start = at;
        let truncated = BatchError::Truncated(start);
        let token = get_varint(batch, &mut at).ok_or(truncated.clone())?;
        let shard = get_varint(batch, &mut at)
            .and_then(|s| u32::try_from(s).ok())
            .ok_or(truncated.clone())?;
        let trace = match batch.get(at) {
            Some(0) => {
                at += 1;
                None
            }
            Some(1) => {
                let raw = batch
                    .get(at + 1..at + 1 + TRACE_LEN)
                    .ok_or(truncated.clone())?;
                at += 1 + TRACE_LEN;
                let mut trace_id = [0u8; 16];
                trace_id.copy_from_slice(&raw[..16]);
                let mut span_id = [0u8; 8];
                span_id.copy_from_slice(&raw[16..24]);
                Some(TraceParent {
                    trace_id: u128::from_be_bytes(trace_id),
                    span_id: u64::from_be_bytes(span_id),
                    sampled: raw[24] != 0,
                })
            }
            _ => return Err(truncated),
        };
        let frame = take_frame(batch, &mut at).ok_or(truncated)?;
        each(Item {
            token,
            shard,
            trace,
            frame,
        });
    }
    Ok(())
}

/// The reply subject a request of a batch is answered on: the batch's reply subject
/// (`<inbox>.g<n>`) with the request's token in place of the group; `None` when the batch's
/// reply subject has no such form.
pub(crate) fn answer_subject(batch_reply: &str, token: u64) -> Option<Subject> {
    let (inbox, group) = batch_reply.rsplit_once('.')?;
    if inbox.is_empty() || !group.starts_with(GROUP) {
        return None;
    }
    let mut subject = String::with_capacity(inbox.len() + 21);
    subject.push_str(inbox);
    subject.push('.');
    push_decimal(&mut subject, token);
    Some(Subject::from(subject))
}

/// One request waiting for the sending task.
struct Queued {
    node: Subject,
    token: u64,
    shard: u32,
    trace: Option<TraceParent>,
    frame: Bytes,
}

/// The tokens of one batch that went out, kept for the server's "no responders".
struct Group {
    id: u64,
    at: Instant,
    tokens: Vec<u64>,
}

/// The asking side: requests waiting to go out in batches, and the batches recently sent.
/// Owned by a [`ReplyInbox`](super::reply_inbox::ReplyInbox), whose tokens the requests carry.
#[derive(Default)]
pub(crate) struct Outgoing {
    queue: Mutex<Vec<Queued>>,
    ready: tokio::sync::Notify,
    groups: Mutex<VecDeque<Group>>,
    next_group: AtomicU64,
}

impl Outgoing {
    /// Queues request `token` (its slot already taken) for `node`.
    pub(crate) fn queue(
        &self,
        node: Subject,
        token: u64,
        shard: u32,
        trace: Option<TraceParent>,
        frame: Bytes,
    ) {
        self.queue.lock().push(Queued {
            node,
            token,
            shard,
            trace,
            frame,
        });
        self.ready.notify_one();
    }

    /// The tokens of the batch `group` (from its reply subject's last token), forgotten:
    /// nobody took it.
    pub(crate) fn refused(&self, group: &str) -> Vec<u64> {
        let Some(id) = group
            .strip_prefix(GROUP)
            .and_then(|id| id.parse::<u64>().ok())
        else {
            return Vec::new();
        };
        let mut groups = self.groups.lock();
        match groups.binary_search_by_key(&id, |g| g.id) {
            Ok(i) => groups.remove(i).map(|g| g.tokens).unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    /// Remembers a batch's tokens under a new group, forgetting those older than
    /// [`GROUP_MEMORY`]; returns the group's reply subject.
    fn remember(&self, prefix: &str, tokens: Vec<u64>) -> Subject {
        let now = Instant::now();
        let id = {
            let mut groups = self.groups.lock();
            // Taken under the lock, so the groups stay sorted by id (`refused` searches them).
            let id = self.next_group.fetch_add(1, Ordering::Relaxed);
            while groups
                .front()
                .is_some_and(|g| now.duration_since(g.at) > GROUP_MEMORY)
            {
                groups.pop_front();
            }
            groups.push_back(Group {
                id,
                at: now,
                tokens,
            });
            id
        };
        let mut subject = String::with_capacity(prefix.len() + 21);
        subject.push_str(prefix);
        subject.push(GROUP);
        push_decimal(&mut subject, id);
        Subject::from(subject)
    }
}

/// The sending task of one inbox (`prefix` is `aether.<ns>.reply.<unique>.`): takes every
/// request queued since its last round, after every ready task has run (so the requests of
/// one burst share a round), and publishes them as one batch per node, split at the server's
/// maximum payload. Runs until its inbox is dropped.
pub(crate) async fn send(
    client: async_nats::Client,
    prefix: String,
    outgoing: Arc<Outgoing>,
    slots: Arc<Slots>,
) {
    let mut queued = Vec::new();
    let mut nodes: Vec<(Subject, Vec<Queued>)> = Vec::new();
    let mut frame = Vec::new();
    loop {
        outgoing.ready.notified().await;
        tokio::task::yield_now().await;
        std::mem::swap(&mut queued, &mut *outgoing.queue.lock());
        // Requests whose asker stopped waiting meanwhile (gave up, or timed out and sent
        // again the robust way) are not sent.
        {
            let waiting = slots.lock();
            queued.retain(|q| waiting.contains_key(&q.token));
        }
        // A node's requests go to few nodes: a scan beats a map.
        for q in queued.drain(..) {
            match nodes.iter_mut().find(|(node, _)| *node == q.node) {
                Some((_, list)) => list.push(q),
                None => nodes.push((q.node.clone(), vec![q])),
            }
        }
        let limit = match client.max_payload() {
            0 => usize::MAX,
            limit => limit,
        };
        for (node, list) in nodes.drain(..) {
            start(&mut frame);
            let mut tokens = Vec::with_capacity(list.len());
            for q in list {
                // The transport only batches requests whose bound fits (see `fits_batch`).
                if frame.len() + item_bound(&q.frame) > limit && !tokens.is_empty() {
                    let batch = std::mem::take(&mut frame);
                    publish(&client, &prefix, &outgoing, &slots, &node, batch, tokens).await;
                    tokens = Vec::new();
                    start(&mut frame);
                }
                push(&mut frame, q.token, q.shard, q.trace, &q.frame);
                tokens.push(q.token);
            }
            if !tokens.is_empty() {
                let batch = std::mem::take(&mut frame);
                publish(&client, &prefix, &outgoing, &slots, &node, batch, tokens).await;
            }
        }
    }
}

/// Publishes one batch to `node`; if it cannot go out, its requests hear so at once (as "no
/// responders": never sent, so never run) and are sent again the robust way.
async fn publish(
    client: &async_nats::Client,
    prefix: &str,
    outgoing: &Outgoing,
    slots: &Slots,
    node: &Subject,
    batch: Vec<u8>,
    tokens: Vec<u64>,
) {
    let reply = outgoing.remember(prefix, tokens);
    if let Err(e) = client
        .publish_with_reply(node.clone(), reply.clone(), Bytes::from(batch))
        .await
    {
        tracing::debug!(%node, error = %e, "a batch of requests did not go out");
        let group = reply.rsplit('.').next().unwrap_or_default();
        for token in outgoing.refused(group) {
            if let Some(tx) = slots.lock().remove(&token) {
                let _ = tx.send(Arrived::NoResponders);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(n: u8) -> TraceParent {
        TraceParent {
            trace_id: u128::from(n) << 100 | 7,
            span_id: u64::from(n) << 40 | 9,
            sampled: n.is_multiple_of(2),
        }
    }

    #[test]
    fn a_request_batch_round_trips_and_shares_its_buffer() {
        let items = vec![
            Item {
                token: 1,
                shard: 0,
                trace: None,
                frame: Bytes::from_static(b"one"),
            },
            Item {
                token: u64::MAX,
                shard: u32::MAX,
                trace: Some(trace(2)),
                frame: Bytes::new(),
            },
            Item {
                token: 300,
                shard: 1023,
                trace: Some(trace(3)),
                frame: Bytes::from(vec![7u8; 300]),
            },
        ];
        let mut out = Vec::new();
        start(&mut out);
        let mut bound = 1;
        for i in &items {
            push(&mut out, i.token, i.shard, i.trace, &i.frame);
            bound += item_bound(&i.frame);
        }
        assert!(out.len() <= bound, "{} > {bound}", out.len());
        let batch = Bytes::from(out);
        let mut seen = Vec::new();
        assert_eq!(decode(&batch, |i| seen.push(i)), Ok(()));
        assert_eq!(seen, items);
        let last = &seen[2].frame;
        assert!(
            batch.as_ptr_range().contains(&last.as_ptr()),
            "a slice, not a copy"
        );
    }

    #[test]
    fn a_malformed_request_batch_is_a_typed_error_after_its_good_items() {
        assert_eq!(decode(&Bytes::new(), |_| {}), Err(BatchError::Format(None)));
        assert_eq!(
            decode(&Bytes::from_static(&[2, 1, 0, 0, 0]), |_| {}),
            Err(BatchError::Format(Some(2)))
        );
        let mut good = Vec::new();
        start(&mut good);
        push(&mut good, 5, 3, Some(trace(1)), b"ok");
        let cut = good.len();
        for bad in [
            // Cut inside the trace context.
            {
                let mut b = good.clone();
                push(&mut b, 6, 3, Some(trace(1)), b"lost");
                b.truncate(cut + 10);
                b
            },
            // A trace marker that is neither 0 nor 1.
            {
                let mut b = good.clone();
                b.extend_from_slice(&[6, 3, 9, 0]);
                b
            },
            // A shard beyond u32.
            {
                let mut b = good.clone();
                put_varint(&mut b, 6);
                put_varint(&mut b, u64::from(u32::MAX) + 1);
                b
            },
            // A frame longer than the batch.
            {
                let mut b = good.clone();
                b.extend_from_slice(&[6, 3, 0, 50, 1]);
                b
            },
        ] {
            let mut seen = Vec::new();
            assert_eq!(
                decode(&Bytes::from(bad), |i| seen.push(i.token)),
                Err(BatchError::Truncated(cut))
            );
            assert_eq!(seen, vec![5]);
        }
    }

    #[test]
    fn a_node_subject_is_one_token_per_node_and_answers_go_to_the_inbox()
    -> Result<(), crate::names::NameError> {
        let ns = Namespace::new("bank")?;
        assert_eq!(
            node_subject(&ns, "node-1").as_str(),
            "aether.bank.node.node-1.asks"
        );
        assert_eq!(
            node_subject(&ns, "a.b *>").as_str().split('.').count(),
            5,
            "dots and wildcards are encoded"
        );
        assert_eq!(
            answer_subject("aether.bank.reply.xyz.g17", 42).as_deref(),
            Some("aether.bank.reply.xyz.42")
        );
        for bad in [
            "aether.bank.reply.xyz.17",
            "g17",
            ".g1",
            "aether.bank.reply.xyz.b",
        ] {
            assert_eq!(answer_subject(bad, 1), None, "{bad}");
        }
        Ok(())
    }

    #[test]
    fn refused_groups_give_their_tokens_once_and_old_ones_are_forgotten() {
        let out = Outgoing::default();
        let a = out.remember("aether.bank.reply.xyz.", vec![1, 2]);
        let b = out.remember("aether.bank.reply.xyz.", vec![3]);
        assert_eq!(a.as_str(), "aether.bank.reply.xyz.g0");
        let group = |s: &Subject| s.rsplit('.').next().unwrap_or_default().to_owned();
        assert_eq!(out.refused(&group(&b)), vec![3]);
        assert_eq!(out.refused(&group(&b)), Vec::<u64>::new());
        assert_eq!(out.refused(&group(&a)), vec![1, 2]);
        assert_eq!(out.refused("g99"), Vec::<u64>::new());
        assert_eq!(out.refused("17"), Vec::<u64>::new());
        let old = Outgoing::default();
        old.groups.lock().push_back(Group {
            id: 0,
            at: Instant::now()
                .checked_sub(GROUP_MEMORY * 2)
                .expect("a clock past two seconds"),
            tokens: vec![9],
        });
        old.next_group.store(1, Ordering::Relaxed);
        let _ = old.remember("p.", vec![10]);
        assert_eq!(old.refused("g0"), Vec::<u64>::new(), "forgotten");
        assert_eq!(old.refused("g1"), vec![10]);
    }
}
