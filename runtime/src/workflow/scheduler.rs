//! The wake-up scheduler: brings actors with due durable work back to life.
//!
//! One per runtime that hosts actors. It follows the store's wake-up index
//! ([`EventStore::watch_wakeups`](crate::store::EventStore::watch_wakeups)) — every entry, and
//! every change, including those written by other nodes — and when an entry is due, for an actor
//! of a shard this node serves that is not resident, it wakes the actor: activation replays the
//! outbox, and the actor's delivery pump does the rest. A resident actor runs its own timers, so
//! the scheduler leaves it alone.
//!
//! Waking is idempotent and cheap to repeat, so the scheduler simply tries again (with a growing
//! pause, 1 s to 30 s) while an entry stays due: after a failed activation, while a shard is
//! between owners, or when the woken actor was passivated again before it finished.

use std::collections::HashMap;
use std::sync::Weak;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use crate::names::ActorKey;
use crate::store::{Wakeup, WakeupStream};
use crate::wire::now_ms;

/// What the scheduler needs from the runtime it serves.
pub(crate) trait Wakeable: Send + Sync + Sized + 'static {
    /// Whether this node serves `actor`'s shard now.
    fn serves(&self, actor: &ActorKey) -> bool;
    /// Whether `actor` is resident on this node.
    fn is_resident(&self, actor: &ActorKey) -> bool;
    /// Activates `actor` (if it is not resident) and tells it about its index entry.
    fn wake(self: &std::sync::Arc<Self>, actor: &ActorKey, revision: u64, due_ms: u64);
    /// Whether the runtime is stopping.
    fn stopping(&self) -> bool;
}

/// Longest sleep between two looks at the entries (ownership may change meanwhile).
const TICK: Duration = Duration::from_secs(1);
const FIRST_RETRY: Duration = Duration::from_secs(1);
const LAST_RETRY: Duration = Duration::from_secs(30);

struct Entry {
    due_ms: u64,
    revision: u64,
    /// Not before this instant (after a wake, or while resident).
    not_before: Option<Instant>,
    retry: Duration,
}

/// Runs until the runtime is gone or stopping.
pub(crate) async fn run<W: Wakeable>(runtime: Weak<W>, mut feed: WakeupStream) {
    let mut entries: HashMap<ActorKey, Entry> = HashMap::new();
    loop {
        let wait = next_wait(&entries);
        tokio::select! {
            change = feed.next() => match change {
                Some(change) => apply(&mut entries, change),
                None => return,
            },
            () = tokio::time::sleep(wait) => {
                let Some(rt) = runtime.upgrade() else { return };
                if rt.stopping() {
                    return;
                }
                scan(&rt, &mut entries);
            }
        }
    }
}

fn apply(entries: &mut HashMap<ActorKey, Entry>, change: Wakeup) {
    match change {
        Wakeup::Set {
            actor,
            due_ms,
            revision,
        } => {
            entries.insert(
                actor,
                Entry {
                    due_ms,
                    revision,
                    not_before: None,
                    retry: FIRST_RETRY,
                },
            );
        }
        Wakeup::Cleared { actor } => {
            entries.remove(&actor);
        }
        Wakeup::Reset => entries.clear(),
    }
}

/// How long until the next entry may need a wake (at most [`TICK`]).
fn next_wait(entries: &HashMap<ActorKey, Entry>) -> Duration {
    let now_wall = now_ms();
    let now = Instant::now();
    let mut wait = TICK;
    for e in entries.values() {
        let by_time = Duration::from_millis(e.due_ms.saturating_sub(now_wall));
        let by_retry = e
            .not_before
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
        wait = wait.min(by_time.max(by_retry));
    }
    // Never spin: a due entry that cannot be woken yet is looked at again shortly.
    wait.max(Duration::from_millis(5))
}

fn scan<W: Wakeable>(rt: &std::sync::Arc<W>, entries: &mut HashMap<ActorKey, Entry>) {
    let now_wall = now_ms();
    let now = Instant::now();
    for (actor, e) in entries.iter_mut() {
        if e.due_ms > now_wall || e.not_before.is_some_and(|t| t > now) {
            continue;
        }
        if !rt.serves(actor) {
            e.not_before = Some(now + TICK);
            continue;
        }
        if rt.is_resident(actor) {
            // Its own pump handles it; look again later in case it stops with work left.
            e.not_before = Some(now + FIRST_RETRY);
            e.retry = FIRST_RETRY;
            continue;
        }
        tracing::debug!(%actor, due_ms = e.due_ms, "waking an actor with due durable work");
        rt.wake(actor, e.revision, e.due_ms);
        e.not_before = Some(now + e.retry);
        e.retry = (e.retry * 2).min(LAST_RETRY);
    }
}
