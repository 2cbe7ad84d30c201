//! The wake-up feed of the JetStream store: the `<ns>_wakeups` bucket (one entry per actor
//! with durable work due, the earliest due time) followed as a stream of [`Wakeup`]s — every
//! entry, then every change — and made again when the watch breaks or stays quiet too long.

use super::*;

/// How long a quiet wake-up watch is trusted before it is made again.
const WAKEUP_RESYNC: Duration = Duration::from_secs(30);

/// The wake-up feed of a bucket: every entry, then every change; restarts (after a
/// [`Wakeup::Reset`]) when the watch breaks, for example while the server restarts.
pub(super) fn wakeup_feed(bucket: kv::Store, namespace: Namespace) -> WakeupStream {
    use futures_util::StreamExt;
    enum Phase {
        Start,
        Watching(Box<kv::Watch>),
    }
    let to_change = move |entry: kv::Entry| -> Option<Wakeup> {
        let actor = crate::store::actor_of_token(&format!("{namespace}.{}", entry.key))?;
        Some(match entry.operation {
            kv::Operation::Put => Wakeup::Set {
                actor,
                due_ms: crate::store::decode_due(&entry.value),
                revision: entry.revision,
            },
            kv::Operation::Delete | kv::Operation::Purge => Wakeup::Cleared { actor },
        })
    };
    let stream = futures_util::stream::unfold(
        (Phase::Start, bucket, false),
        move |(phase, bucket, restarted)| {
            let to_change = to_change.clone();
            async move {
                let mut phase = phase;
                let mut restarted = restarted;
                loop {
                    match phase {
                        Phase::Start => match bucket.watch_with_history(">").await {
                            Ok(watch) => {
                                phase = Phase::Watching(Box::new(watch));
                                if restarted {
                                    return Some((vec![Wakeup::Reset], (phase, bucket, false)));
                                }
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "wake-up watch not started; retrying");
                                tokio::time::sleep(Duration::from_millis(500)).await;
                                restarted = true;
                            }
                        },
                        // A watch whose consumer lived on a server that went away can stay
                        // silent without an error: after a quiet spell, read everything again
                        // (cheap: the index holds only actors with pending work).
                        Phase::Watching(mut watch) => {
                            match tokio::time::timeout(WAKEUP_RESYNC, watch.next())
                                .await
                                .unwrap_or(None)
                            {
                                Some(Ok(entry)) => {
                                    let change: Vec<Wakeup> =
                                        to_change(entry).into_iter().collect();
                                    return Some((change, (Phase::Watching(watch), bucket, false)));
                                }
                                Some(Err(e)) => {
                                    tracing::debug!(error = %e, "wake-up watch broke; restarting");
                                    tokio::time::sleep(Duration::from_millis(200)).await;
                                    phase = Phase::Start;
                                    restarted = true;
                                }
                                None => {
                                    tokio::time::sleep(Duration::from_millis(200)).await;
                                    phase = Phase::Start;
                                    restarted = true;
                                }
                            }
                        }
                    }
                }
            }
        },
    )
    .flat_map(futures_util::stream::iter);
    Box::pin(stream)
}
