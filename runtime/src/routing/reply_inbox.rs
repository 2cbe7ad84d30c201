//! The asking side of request-reply: one reply subscription per connection, the requests that
//! wait on it, and answers that arrive in batches.
//!
//! A remote ask is a NATS request: a message whose reply subject names where its answer goes.
//! async-nats can do that for us (`Client::send_request`), but then every answer is a message of
//! its own, and the future that waits for one holds async-nats' whole request machinery (over a
//! KiB, allocated per ask). Here the transport keeps its own inbox instead:
//!
//! - [`ReplyInbox::open`] subscribes once to `aether.<ns>.reply.<unique>.*`.
//! - Each attempt of a request takes a token ([`ReplyInbox::expect`]) and is published with the
//!   reply subject `aether.<ns>.reply.<unique>.<token>`; its answer completes the token's slot.
//! - The owner, seeing a reply subject of that form in its own namespace, may put the answers
//!   of many requests from this inbox into one message on `aether.<ns>.reply.<unique>.b`
//!   ([`push_batch_item`]), which the inbox splits again ([`decode_batch`]). Under load, the
//!   answers of a whole read from the socket then cost the server, the owner's connection and
//!   ours one message, not one each.
//! - Requests go out in batches too, when the caller knows the owner node
//!   ([`ReplyInbox::expect_batched`], see [`request_batch`]): a batch's reply subject is
//!   `aether.<ns>.reply.<unique>.g<n>`, where only the server's "no responders" ever comes,
//!   which the inbox hands to every request of batch `n`.
//!
//! The inbox is in the namespace's own subjects, not under `_INBOX`, for permissions: a node
//! limited as docs/security.md shows may publish on `aether.<ns>.>` but, in `_INBOX`, only the
//! one answer to each request it received (`allow_responses`), which a batch is not.
//!
//! An answer nobody waits for any more (its attempt timed out, or another node answered
//! first) finds no slot and is dropped, as async-nats drops it. Owners of an older version
//! answer every request on its own reply subject, which the same subscription receives:
//! batching is only ever an owner's choice, so mixed versions interoperate.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::{StatusCode, Subject, Subscriber};
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::remote::push_decimal;
use super::request_batch::{self, Outgoing};
use crate::names::Namespace;
use crate::wire::TraceParent;

/// The last token of a batch's subject (tokens of single answers are decimal).
const BATCH: &str = "b";
/// The first byte of a batch frame: its format.
const BATCH_FORMAT: u8 = 1;

/// What arrived for one request.
#[derive(Debug)]
pub(crate) enum Arrived {
    /// The owner's answer frame.
    Frame(Bytes),
    /// The server says nobody subscribes to the request's subject.
    NoResponders,
}

/// The requests waiting for an answer, by token.
pub(crate) type Slots = Mutex<HashMap<u64, oneshot::Sender<Arrived>>>;

/// One connection's reply subscription, the requests waiting on it, and the task that sends
/// requests in batches (see [`request_batch`]). See the module docs.
pub(crate) struct ReplyInbox {
    /// `aether.<ns>.reply.<unique>.`: a reply subject is this and a token.
    prefix: String,
    next: AtomicU64,
    slots: Arc<Slots>,
    outgoing: Arc<Outgoing>,
    reader: JoinHandle<()>,
    sender: JoinHandle<()>,
}

impl ReplyInbox {
    /// Subscribes to a fresh inbox of `client` in `namespace` and starts the task that hands
    /// out its answers, on `tokio`.
    pub(crate) async fn open(
        client: &async_nats::Client,
        namespace: &Namespace,
        tokio: &tokio::runtime::Handle,
    ) -> Result<ReplyInbox, async_nats::SubscribeError> {
        // The unique part of a client inbox (a NUID: letters and digits).
        let inbox = client.new_inbox();
        let unique = inbox.rsplit('.').next().unwrap_or_default();
        let prefix = format!("{}{unique}.", inbox_root(namespace));
        let subscriber = client.subscribe(format!("{prefix}*")).await?;
        let slots: Arc<Slots> = Arc::default();
        let outgoing: Arc<Outgoing> = Arc::default();
        let reader = tokio.spawn(read(subscriber, Arc::clone(&slots), Arc::clone(&outgoing)));
        let sender = tokio.spawn(request_batch::send(
            client.clone(),
            prefix.clone(),
            Arc::clone(&outgoing),
            Arc::clone(&slots),
        ));
        Ok(ReplyInbox {
            prefix,
            next: AtomicU64::new(1),
            slots,
            outgoing,
            reader,
            sender,
        })
    }

    /// Whether its reader still hands out answers (it ends with its runtime or connection).
    pub(crate) fn open_still(&self) -> bool {
        !self.reader.is_finished() && !self.sender.is_finished()
    }

    /// A slot for one answer, its request queued for the next batch to `node` (see
    /// [`request_batch`]): the request `frame` for `shard`, with its trace context.
    pub(crate) fn expect_batched(
        &self,
        node: Subject,
        shard: u32,
        trace: Option<TraceParent>,
        frame: Bytes,
    ) -> Expected<'_> {
        let (expected, token) = self.slot();
        self.outgoing.queue(node, token, shard, trace, frame);
        expected
    }

    fn slot(&self) -> (Expected<'_>, u64) {
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.slots.lock().insert(token, tx);
        (
            Expected {
                slots: &self.slots,
                token,
                rx,
            },
            token,
        )
    }

    /// A slot for one answer, and the reply subject that fills it. Take it before publishing
    /// the request, so that an answer cannot arrive before its slot.
    pub(crate) fn expect(&self) -> (Expected<'_>, Subject) {
        let (expected, token) = self.slot();
        let mut subject = String::with_capacity(self.prefix.len() + 20);
        subject.push_str(&self.prefix);
        push_decimal(&mut subject, token);
        (expected, Subject::from(subject))
    }
}

impl Drop for ReplyInbox {
    fn drop(&mut self) {
        self.reader.abort();
        self.sender.abort();
    }
}

/// One request's slot in its [`ReplyInbox`]; dropping it frees the slot.
pub(crate) struct Expected<'a> {
    slots: &'a Slots,
    token: u64,
    rx: oneshot::Receiver<Arrived>,
}

impl Expected<'_> {
    /// Waits for the answer; `None` when it can no longer come (the subscription ended with
    /// its connection).
    pub(crate) async fn arrival(&mut self) -> Option<Arrived> {
        (&mut self.rx).await.ok()
    }
}

impl Drop for Expected<'_> {
    fn drop(&mut self) {
        self.slots.lock().remove(&self.token);
    }
}

/// Hands every answer the subscription delivers to its slot, until the subscription ends;
/// then drops every slot, so that their requests learn at once that no answer will come.
async fn read(mut subscriber: Subscriber, slots: Arc<Slots>, outgoing: Arc<Outgoing>) {
    let mut answers: Vec<(oneshot::Sender<Arrived>, Bytes)> = Vec::new();
    while let Some(msg) = subscriber.next().await {
        let last = msg.subject.rsplit('.').next().unwrap_or_default();
        if last.starts_with(request_batch::GROUP) {
            // A batch of requests nobody took: each is sent again the robust way.
            if msg.status == Some(StatusCode::NO_RESPONDERS) {
                for token in outgoing.refused(last) {
                    if let Some(tx) = slots.lock().remove(&token) {
                        let _ = tx.send(Arrived::NoResponders);
                    }
                }
            }
            continue;
        }
        if last == BATCH {
            {
                let mut slots = slots.lock();
                let decoded = decode_batch(&msg.payload, |token, frame| {
                    if let Some(tx) = slots.remove(&token) {
                        answers.push((tx, frame));
                    }
                });
                if let Err(e) = decoded {
                    // Its requests time out and are sent again: the owner answers a resend
                    // from the actor's stored reply.
                    tracing::warn!(error = %e, "dropped an undecodable batch of answers");
                }
            }
            for (tx, frame) in answers.drain(..) {
                let _ = tx.send(Arrived::Frame(frame));
            }
            continue;
        }
        let Ok(token) = last.parse::<u64>() else {
            tracing::debug!(subject = %msg.subject, "an answer on an unknown subject; dropped");
            continue;
        };
        let arrived = if msg.status == Some(StatusCode::NO_RESPONDERS) {
            Arrived::NoResponders
        } else {
            Arrived::Frame(msg.payload)
        };
        let tx = slots.lock().remove(&token);
        if let Some(tx) = tx {
            let _ = tx.send(arrived);
        }
    }
    slots.lock().clear();
}

/// `aether.<ns>.reply.`: where the inboxes of a namespace's askers are.
pub(crate) fn inbox_root(namespace: &Namespace) -> String {
    format!("aether.{namespace}.reply.")
}

/// The inbox (`aether.<ns>.reply.<unique>`) and the token of a reply subject that accepts
/// batched answers, `root` being [`inbox_root`]; `None` for any other reply subject (a plain
/// request's, or another namespace's).
pub(crate) fn batchable<'a>(reply_to: &'a str, root: &str) -> Option<(&'a str, u64)> {
    let rest = reply_to.strip_prefix(root)?;
    let (unique, token) = rest.split_once('.')?;
    if unique.is_empty() || token.is_empty() || !token.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((&reply_to[..root.len() + unique.len()], token.parse().ok()?))
}

/// The subject a batch of answers for `parent` (from [`batchable`]) is published on.
pub(crate) fn batch_subject(parent: &str) -> Subject {
    let mut subject = String::with_capacity(parent.len() + 1 + BATCH.len());
    subject.push_str(parent);
    subject.push('.');
    subject.push_str(BATCH);
    Subject::from(subject)
}

/// The bytes one answer adds to a batch, at most.
pub(crate) fn batch_item_bound(frame: &[u8]) -> usize {
    frame.len() + 2 * 10
}

/// Starts a batch frame in `out` (cleared first).
pub(crate) fn start_batch(out: &mut Vec<u8>) {
    out.clear();
    out.push(BATCH_FORMAT);
}

/// Appends one answer to a batch frame started by [`start_batch`]: its token and its frame,
/// each length-prefixed as a LEB128 varint.
pub(crate) fn push_batch_item(out: &mut Vec<u8>, token: u64, frame: &[u8]) {
    put_varint(out, token);
    put_varint(out, frame.len() as u64);
    out.extend_from_slice(frame);
}

/// Encodes `answers` as one batch frame (see [`push_batch_item`]).
#[cfg(test)]
fn encode_batch<'a>(answers: impl IntoIterator<Item = (u64, &'a [u8])>) -> Vec<u8> {
    let mut out = Vec::new();
    start_batch(&mut out);
    for (token, frame) in answers {
        push_batch_item(&mut out, token, frame);
    }
    out
}

/// Why a batch frame does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BatchError {
    /// The frame is empty or names a format this version does not know.
    #[error("unknown batch format {0:?}")]
    Format(Option<u8>),
    /// The frame ends inside an item.
    #[error("truncated batch: an item at byte {0} runs past its end")]
    Truncated(usize),
}

/// Calls `each` with every `(token, frame)` of a batch frame, in order, the frames sharing
/// `batch`'s buffer. Items before a malformed one are still handed on.
pub(crate) fn decode_batch(
    batch: &Bytes,
    mut each: impl FnMut(u64, Bytes),
) -> Result<(), BatchError> {
    match batch.first() {
        Some(&BATCH_FORMAT) => {}
        other => return Err(BatchError::Format(other.copied())),
    }
    let mut at = 1;
    while at < batch.len() {
        let item = at;
        let token = get_varint(batch, &mut at).ok_or(BatchError::Truncated(item))?;
        let frame = take_frame(batch, &mut at).ok_or(BatchError::Truncated(item))?;
        each(token, frame);
    }
    Ok(())
}

/// Reads a length-prefixed frame at `at` (sharing `batch`'s buffer) and moves past it; `None`
/// when it runs past the end.
pub(super) fn take_frame(batch: &Bytes, at: &mut usize) -> Option<Bytes> {
    let len = get_varint(batch, at)?;
    let end = usize::try_from(len)
        .ok()
        .and_then(|len| at.checked_add(len))
        .filter(|&end| end <= batch.len())?;
    let frame = batch.slice(*at..end);
    *at = end;
    Some(frame)
}

/// Appends `n` as a LEB128 varint.
pub(super) fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Reads a LEB128 varint at `at`, moving past it; `None` when it runs past the end or 64 bits.
pub(super) fn get_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        n |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(n);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_round_trips_and_shares_its_buffer() {
        let frames: Vec<(u64, Vec<u8>)> = vec![
            (1, b"one".to_vec()),
            (300, Vec::new()),
            (u64::MAX, vec![7u8; 200]),
        ];
        let batch = Bytes::from(encode_batch(frames.iter().map(|(t, f)| (*t, f.as_slice()))));
        let mut seen = Vec::new();
        assert_eq!(
            decode_batch(&batch, |t, f| seen.push((t, f.to_vec()))),
            Ok(())
        );
        assert_eq!(seen, frames);
        for (_, frame) in &frames {
            assert!(batch_item_bound(frame) >= frame.len() + 2);
        }
    }

    #[test]
    fn a_malformed_batch_is_a_typed_error_after_its_good_items() {
        assert_eq!(
            decode_batch(&Bytes::new(), |_, _| {}),
            Err(BatchError::Format(None))
        );
        assert_eq!(
            decode_batch(&Bytes::from_static(&[9, 1, 0]), |_, _| {}),
            Err(BatchError::Format(Some(9)))
        );
        let mut good = encode_batch([(5, &b"ok"[..])]);
        let cut = good.len();
        push_batch_item(&mut good, 6, b"lost");
        good.truncate(cut + 3);
        let mut seen = Vec::new();
        assert_eq!(
            decode_batch(&Bytes::from(good), |t, _| seen.push(t)),
            Err(BatchError::Truncated(cut))
        );
        assert_eq!(seen, vec![5]);
        // A varint that never ends.
        let endless = Bytes::from(vec![BATCH_FORMAT, 0xff, 0xff, 0xff]);
        assert_eq!(
            decode_batch(&endless, |_, _| {}),
            Err(BatchError::Truncated(1))
        );
    }

    #[test]
    fn only_inbox_subjects_of_the_namespace_with_a_decimal_token_are_batchable()
    -> Result<(), crate::names::NameError> {
        let root = inbox_root(&Namespace::new("bank")?);
        assert_eq!(root, "aether.bank.reply.");
        assert_eq!(
            batchable("aether.bank.reply.abc.42", &root),
            Some(("aether.bank.reply.abc", 42))
        );
        assert_eq!(
            batch_subject("aether.bank.reply.abc").as_str(),
            "aether.bank.reply.abc.b"
        );
        for plain in [
            "_INBOX.abc.42",
            "_INBOX.abc.ab.42",
            "aether.shop.reply.abc.42",
            "aether.bank.reply.abc.b",
            "aether.bank.reply.abc.",
            "aether.bank.reply..42",
            "aether.bank.reply.abc.1.2",
            "aether.bank.reply.42",
            "aether.bank.reply.abc.99999999999999999999999",
        ] {
            assert_eq!(batchable(plain, &root), None, "{plain}");
        }
        Ok(())
    }
}
