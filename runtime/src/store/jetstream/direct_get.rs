//! Reading one subject of a stream in order: batched direct get, and its fallback.
//!
//! **Batched direct get** (nats-server 2.11+, ADR-31): one request to
//! `$JS.API.DIRECT.GET.<stream>` with `{"seq": S, "next_by_subj": subject, "batch": N}` is
//! answered by up to N messages on the reply inbox, each carrying `Nats-Sequence` and
//! `Nats-Num-Pending` headers, and ends with an empty `204 EOB` status message (`404` when
//! nothing matches). While the last message reports pending messages, the next request starts
//! after it. async-nats has no helper for this; it is a few dozen lines here.
//!
//! Direct gets may be answered by any replica, and a follower can lag behind the leader. The
//! caller therefore first asks the leader for the subject's last sequence and checks that the
//! batch reached it; if a lagging replica stays behind, it falls back.
//!
//! Each request is given to one replica, chosen by the server. A replica on a server that is
//! frozen or cut off but still routed (until the cluster's route pings give up on it) never
//! answers, so a direct get waits a short while for its first answer and then asks again,
//! reaching another replica ([`from_any_replica`], [`REPLICA_ATTEMPT`]).
//!
//! **Fallback**: one message-get request per message, answered by the stream leader (always
//! current). Used when the server answers a batch request without `Nats-Num-Pending` (it
//! ignored `batch`), when replicas keep lagging, or when configured
//! ([`ReplayMode::OneByOne`](super::ReplayMode)).

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::stream::{LastRawMessageError, LastRawMessageErrorKind, Stream};
use bytes::Bytes;
use futures_util::StreamExt;

/// One message read back from the stream.
pub(crate) struct RawMsg {
    pub seq: u64,
    /// The subject the message was stored under.
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

/// Why a read failed.
pub(crate) enum ReadFailure {
    /// The server ignored `batch`: use the fallback.
    BatchUnsupported,
    /// No answer to a request at all within [`REPLICA_ATTEMPT`]: ask again.
    NoAnswer,
    /// The server did not answer, or answered with an error.
    Failed(String),
}

/// How long a read that any replica may answer waits for its first answer before asking again.
pub(crate) const REPLICA_ATTEMPT: Duration = Duration::from_millis(400);

/// Runs `read` — a request any replica may answer, such as a KV get — until it answers, giving
/// each attempt [`REPLICA_ATTEMPT`] (or what is left of `budget`) and all of them `budget`.
/// `None`: no attempt was answered in time.
pub(crate) async fn from_any_replica<T, F, Fut>(budget: Duration, mut read: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let deadline = tokio::time::Instant::now() + budget;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return None;
        }
        if let Ok(answer) = tokio::time::timeout(REPLICA_ATTEMPT.min(left), read()).await {
            return Some(answer);
        }
        tracing::debug!("a replica did not answer a direct get in time; asking again");
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name).and_then(|v| v.as_str().parse().ok())
}

/// Every message on `subject` from sequence `start`, in order, by batched direct get.
pub(crate) async fn batched(
    client: &async_nats::Client,
    stream: &str,
    subject: &str,
    start: u64,
    batch: usize,
    timeout: Duration,
) -> Result<Vec<RawMsg>, ReadFailure> {
    let mut out = Vec::new();
    let mut seq = start.max(1);
    loop {
        let asked = tokio::time::Instant::now();
        let (msgs, pending_after_last) = loop {
            match batch_once(client, stream, subject, seq, batch, timeout).await {
                Err(ReadFailure::NoAnswer) if asked.elapsed() < timeout => {
                    tracing::debug!(%subject, "a replica did not answer a direct get; asking again");
                }
                Err(ReadFailure::NoAnswer) => {
                    return Err(ReadFailure::Failed(format!(
                        "no answer to direct get within {timeout:?}"
                    )));
                }
                answer => break answer?,
            }
        };
        let got = msgs.len();
        if let Some(last) = msgs.last() {
            seq = last.seq + 1;
        }
        out.extend(msgs);
        if pending_after_last == 0 || got == 0 {
            return Ok(out);
        }
    }
}

/// One batched direct get: up to `batch` messages on `subject` from sequence `start`, and how
/// many more the server reported pending after the last of them. [`ReadFailure::NoAnswer`]
/// when nothing came back within [`REPLICA_ATTEMPT`] (the request may have gone to a replica
/// that cannot answer: ask again); later messages of the batch get `timeout` each.
pub(crate) async fn batch_once(
    client: &async_nats::Client,
    stream: &str,
    subject: &str,
    start: u64,
    batch: usize,
    timeout: Duration,
) -> Result<(Vec<RawMsg>, u64), ReadFailure> {
    let api = format!("$JS.API.DIRECT.GET.{stream}");
    let mut out = Vec::new();
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| ReadFailure::Failed(format!("subscribe: {e}")))?;
    let request =
        serde_json::json!({ "seq": start.max(1), "next_by_subj": subject, "batch": batch });
    client
        .publish_with_reply(api, inbox, Bytes::from(request.to_string()))
        .await
        .map_err(|e| ReadFailure::Failed(format!("request: {e}")))?;
    let mut pending_after_last = 0u64;
    let mut first = true;
    loop {
        let wait = if first {
            REPLICA_ATTEMPT.min(timeout)
        } else {
            timeout
        };
        let msg = match tokio::time::timeout(wait, sub.next()).await {
            Ok(Some(msg)) => msg,
            Ok(None) => return Err(ReadFailure::Failed("subscription closed".into())),
            Err(_) if first => {
                let _ = sub.unsubscribe().await;
                return Err(ReadFailure::NoAnswer);
            }
            Err(_) => {
                return Err(ReadFailure::Failed(format!(
                    "no answer to direct get within {timeout:?}"
                )));
            }
        };
        first = false;
        if let Some(status) = msg.status {
            match status.as_u16() {
                204 => break,
                404 => {
                    pending_after_last = 0;
                    break;
                }
                503 => return Err(ReadFailure::Failed("no responders".into())),
                code => {
                    return Err(ReadFailure::Failed(format!(
                        "direct get answered {code} {}",
                        msg.description.unwrap_or_default()
                    )));
                }
            }
        }
        let headers = msg.headers.unwrap_or_default();
        let Some(pending) = header_u64(&headers, "Nats-Num-Pending") else {
            return Err(ReadFailure::BatchUnsupported);
        };
        let msg_seq = header_u64(&headers, "Nats-Sequence")
            .ok_or_else(|| ReadFailure::Failed("direct get answer without Nats-Sequence".into()))?;
        pending_after_last = pending;
        let subject = headers
            .get("Nats-Subject")
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        out.push(RawMsg {
            seq: msg_seq,
            subject,
            headers,
            payload: msg.payload,
        });
    }
    let _ = sub.unsubscribe().await;
    Ok((out, pending_after_last))
}

/// Every message on `subject` from sequence `start` up to `until`, one request each to the
/// stream leader (the fallback: slow, but always up to date).
pub(crate) async fn one_by_one(
    stream: &Stream,
    subject: &str,
    start: u64,
    until: u64,
) -> Result<Vec<RawMsg>, ReadFailure> {
    one_by_one_upto(stream, subject, start, until, usize::MAX).await
}

/// Like [`one_by_one`], stopping after `max` messages.
pub(crate) async fn one_by_one_upto(
    stream: &Stream,
    subject: &str,
    start: u64,
    until: u64,
    max: usize,
) -> Result<Vec<RawMsg>, ReadFailure> {
    let mut out = Vec::new();
    let mut seq = start.max(1);
    while seq <= until && out.len() < max {
        let got = stream
            .raw_message_builder()
            .sequence(seq)
            .next_by_subject(subject.to_owned())
            .send()
            .await;
        match got {
            Ok(msg) => {
                seq = msg.sequence + 1;
                out.push(RawMsg {
                    seq: msg.sequence,
                    subject: msg.subject.to_string(),
                    headers: msg.headers,
                    payload: msg.payload,
                });
            }
            Err(e) if is_no_message(&e) => return Ok(out),
            Err(e) => return Err(ReadFailure::Failed(format!("message get: {e}"))),
        }
    }
    Ok(out)
}

/// Whether a message-get error means "there is no such message".
pub(crate) fn is_no_message(e: &LastRawMessageError) -> bool {
    matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound)
        || e.to_string().contains("no message found")
}
