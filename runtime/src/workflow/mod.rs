//! Workflows across actors: durable effects, reminders, and deadlock detection.
//!
//! Changing two actors for one business action — a transfer debits one account and credits
//! another — is the common case. Aether offers three tools, from the recommended one down.
//!
//! # Durable effects (a transactional outbox)
//!
//! A handler returns, with its events, commands for other actors:
//!
//! ```ignore
//! // in `impl Handle<Transfer> for Account`: `Credit` is a command of the payee, `Refund` (the
//! // compensation, delivered back here if the payee rejects the credit) one of this account
//! let credit = Credit { from: ctx.id().to_string(), amount };
//! let refund = Refund { to: to.id().to_string(), amount };
//! Ok(Effect::persist(AccountEvent::TransferredOut { to: to.id().to_string(), amount })
//!     .send_with_compensation(&to, credit, refund)
//!     .reply_with(|a: &Self| a.balance))
//! ```
//!
//! - The commands are stored **in the same commit** as the events (atomically: both or none).
//! - They are delivered only **after** the commit is durable, by the sending actor's delivery
//!   pump, without holding its turn: the handler never waits, so nothing can deadlock.
//! - They are **redelivered** after a crash, a failover, a passivation or a shard move — the
//!   sender's history says what is pending, and the store's wake-up index brings the sender back
//!   to life wherever its shard went — until the receiver has settled them.
//! - The receiver applies each **exactly once**: its commit records `(sender, position)` and it
//!   keeps, per sender, the highest position applied (rebuilt on replay, kept in snapshots).
//!   This is not bounded by the dedup window: a redelivery a million commands later is still
//!   recognised.
//! - **In order** per sender → receiver pair: a sender delivers to one receiver one effect at a
//!   time, lowest position first.
//! - A receiver that **rejects** an effect records the rejection in its history (a bookkeeping
//!   event `aether.Rejected`, so it is not retried and not applied later by surprise) and, if
//!   the sender gave a compensation, delivers that back to the sender as a durable effect of its
//!   own: every step of the workflow is applied or compensated, never half.
//!
//! Limits: delivery is asynchronous — the caller of the sending command learns that the
//! workflow is *decided and durable*, not that the receiver has applied it (read the receiver,
//! or have it send a durable effect back). A receiver's handler that panics on an effect gets
//! it again later (with a growing pause), forever: fix the handler.
//!
//! # Reminders
//!
//! [`Effect::remind_after`](crate::Effect::remind_after) and
//! [`remind_at`](crate::Effect::remind_at) schedule a command to the actor itself, stored with
//! the commit. It fires once when due — after restarts, failovers, shard moves and a whole
//! cluster down, activating the actor if needed — and is applied exactly once. A newer reminder
//! of the same name replaces a pending one; [`cancel_reminder`](crate::Effect::cancel_reminder)
//! cancels it, and a cancelled reminder never fires (even one already on its way: the actor
//! checks that it is still pending before applying it).
//! [`send_after`](crate::Effect::send_after) schedules an effect for another actor: when due,
//! the sender forwards it as an ordinary durable effect.
//!
//! # Asks inside a turn, and deadlocks
//!
//! `ctx.ask` stays for reads and short synchronous steps. A turn that waits on another actor
//! holds its own actor meanwhile, so turns can wait on each other in a cycle. Cycles on one call
//! chain fail at once ([`CallError::CallCycle`](crate::CallError::CallCycle)); cycles between
//! independent turns, of up to 32 actors and across nodes, are found by **edge chasing**
//! (a `Control` frame, docs/wire.md §7): an ask that has waited about 50 ms in the queue of an
//! actor whose turn waits on others sends a probe along the wait-for edges; if it comes back to
//! the asker, the ask is refused with [`CallError::Deadlock`](crate::CallError::Deadlock) before
//! it ran (nothing applied; retry-safe). And an ask-based saga retried with the same command id
//! re-runs its handler on the current state: the child asks are deduplicated but the decision
//! may differ. Durable effects have neither problem.
//!
//! `docs/workflows.md` is the user guide.

pub(crate) mod outbox;
pub(crate) mod scheduler;
