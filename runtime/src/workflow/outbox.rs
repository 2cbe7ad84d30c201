//! The outbox of one actor: its pending durable effects and reminders, and what it has
//! received from others.
//!
//! Everything here is derived from the actor's history (and carried in its snapshots), so it is
//! rebuilt exactly on every activation:
//!
//! - **pending**: the [`OutboxEntry`]s stored by the actor's commits and not yet settled by a
//!   later commit. An entry is settled when its receiver answered that it applied (or rejected,
//!   or had already applied) it, when a reminder is cancelled or replaced, or when a delayed
//!   effect for another actor was forwarded.
//! - **inbound**: per sending actor, the highest outbox position applied here. Senders deliver
//!   their effects for one receiver one at a time in position order, so "already applied" is
//!   "at or below the mark": exactly once, with no window to fall out of.
//! - **acked**: entries the receiver settled that no commit has recorded yet. The next commit
//!   records them; if the actor stops first they are delivered again and answered
//!   [`Settle::Duplicate`](crate::wire::Settle::Duplicate).
//!
//! Effects an actor sends to itself (reminders, and sends to itself) are recognised by
//! membership in `pending` instead of the mark, because reminders come due out of order.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::names::ActorKey;
use crate::wire::{CommitRecord, Delivery, EffectOrigin, OutboxEntry};

/// The outbox state of one activation. See the [module docs](self).
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    pending: BTreeMap<u64, OutboxEntry>,
    /// The position the next entry gets.
    next_seq: u64,
    /// (A B-tree: 24 bytes in every activation's outbox where a hash map takes 48, and
    /// most actors never receive a durable effect.)
    inbound: BTreeMap<ActorKey, u64>,
    /// Settled by receivers, not yet recorded by a commit.
    acked: Vec<u64>,
    /// What this activation knows of its entry in the store's wake-up index.
    pub index: IndexState,
}

/// This actor's entry in the wake-up index, as far as this activation knows.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IndexState {
    /// The entry's revision; `None` when unknown (there may be an older entry).
    pub revision: Option<u64>,
    /// The due time it holds (0: now).
    pub due_ms: u64,
    /// The activation was started by the scheduler for this entry.
    pub woken: bool,
}

/// The outbox as carried in a snapshot.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct OutboxImage {
    #[serde(default)]
    pub pending: Vec<OutboxEntry>,
    #[serde(default)]
    pub next_seq: u64,
    #[serde(default)]
    pub inbound: Vec<(ActorKey, u64)>,
}

/// What one commit will change in the outbox, prepared before the append.
#[derive(Debug, Default)]
pub(crate) struct Staged {
    /// New entries, with their positions.
    pub entries: Vec<OutboxEntry>,
    /// Entries the commit settles.
    pub settled: Vec<u64>,
    /// The receivers' acknowledgements taken into `settled` (given back if the append fails).
    pub acked: Vec<u64>,
    /// The effect the commit applies.
    pub delivery: Option<Delivery>,
}

impl Staged {
    /// Whether the commit would change nothing in the outbox.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.settled.is_empty() && self.delivery.is_none()
    }

    /// The earliest due time among the new entries (0: one is due now), if any.
    pub fn earliest_due(&self) -> Option<u64> {
        self.entries.iter().map(|e| e.due_ms.unwrap_or(0)).min()
    }
}

/// An entry the delivery pump should act on now.
#[derive(Debug, Clone)]
pub(crate) enum Due {
    /// Deliver this entry to its target.
    Deliver(OutboxEntry),
    /// A delayed effect for another actor came due: a turn of this actor forwards it (settles
    /// it and stores it again as an immediate effect with a fresh position).
    Forward(u64),
}

impl Outbox {
    /// Folds one stored commit (replay or after an append).
    pub fn apply_commit(&mut self, commit: &CommitRecord) {
        self.apply_parts(
            &commit.actor,
            &commit.outbox,
            &commit.settled,
            commit.delivery.as_ref(),
        );
    }

    fn apply_parts(
        &mut self,
        me: &ActorKey,
        entries: &[OutboxEntry],
        settled: &[u64],
        delivery: Option<&Delivery>,
    ) {
        for entry in entries {
            self.next_seq = self.next_seq.max(entry.seq + 1);
            self.pending.insert(entry.seq, entry.clone());
        }
        for seq in settled {
            self.pending.remove(seq);
            self.acked.retain(|s| s != seq);
        }
        if let Some(d) = delivery
            && &d.from != me
        {
            let mark = self.inbound.entry(d.from.clone()).or_insert(0);
            *mark = (*mark).max(d.seq);
        }
    }

    /// Whether the effect `origin` was applied here already.
    pub fn already_applied(&self, me: &ActorKey, origin: &EffectOrigin) -> bool {
        if &origin.from == me {
            !self.pending.contains_key(&origin.seq)
        } else {
            self.inbound
                .get(&origin.from)
                .is_some_and(|m| *m >= origin.seq)
        }
    }

    /// The pending reminder named `name`, if any.
    pub fn reminder(&self, name: &str) -> Option<&OutboxEntry> {
        self.pending
            .values()
            .find(|e| e.reminder.as_deref() == Some(name))
    }

    /// Gives positions to `entries` (in order), and collects what the commit settles:
    /// cancelled and replaced reminders, a self-delivered effect, the receivers' acks.
    pub fn stage(
        &mut self,
        me: &ActorKey,
        mut entries: Vec<OutboxEntry>,
        cancels: &[String],
        delivery: Option<Delivery>,
    ) -> Staged {
        let mut settled = Vec::new();
        for name in cancels {
            if let Some(e) = self.reminder(name) {
                settled.push(e.seq);
            }
        }
        // Two reminders of one name in one turn: the later replaces the earlier.
        let mut i = 0;
        while i < entries.len() {
            let name = entries[i].reminder.clone();
            let replaced_later =
                name.is_some() && entries[i + 1..].iter().any(|later| later.reminder == name);
            if replaced_later {
                entries.remove(i);
            } else {
                i += 1;
            }
        }
        for (seq, entry) in (self.next_seq.max(1)..).zip(entries.iter_mut()) {
            entry.seq = seq;
            if let Some(name) = &entry.reminder
                && let Some(old) = self.reminder(name)
            {
                settled.push(old.seq);
            }
        }
        if let Some(d) = &delivery
            && &d.from == me
        {
            settled.push(d.seq);
        }
        let acked = std::mem::take(&mut self.acked);
        settled.extend(acked.iter().copied());
        settled.sort_unstable();
        settled.dedup();
        Staged {
            entries,
            settled,
            acked,
            delivery,
        }
    }

    /// The append of `staged` succeeded.
    pub fn committed(&mut self, me: &ActorKey, staged: Staged) {
        self.apply_parts(
            me,
            &staged.entries,
            &staged.settled,
            staged.delivery.as_ref(),
        );
    }

    /// The append of `staged` failed: nothing of it happened.
    pub fn aborted(&mut self, staged: Staged) {
        self.acked.extend(staged.acked);
    }

    /// A receiver settled entry `seq`.
    pub fn settle(&mut self, seq: u64) {
        if self.pending.remove(&seq).is_some() {
            self.acked.push(seq);
        }
    }

    /// Whether anything waits for delivery or for its time.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty()
    }

    /// Number of pending entries.
    #[cfg(test)]
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Pending entries: durable effects, and reminders.
    pub fn backlog(&self) -> (usize, usize) {
        let reminders = self
            .pending
            .values()
            .filter(|e| e.reminder.is_some())
            .count();
        (self.pending.len() - reminders, reminders)
    }

    /// How many pending entries are due at `now_ms` (including ones in flight).
    pub fn due_count(&self, now_ms: u64) -> usize {
        self.pending
            .values()
            .filter(|e| e.due_ms.is_none_or(|d| d <= now_ms))
            .count()
    }

    /// The earliest due time of the pending entries (0: now), if any.
    pub fn earliest_due(&self) -> Option<u64> {
        self.pending.values().map(|e| e.due_ms.unwrap_or(0)).min()
    }

    /// What to do now (at wall-clock `now_ms`): per target, the lowest pending entry that is due
    /// — one per target, so a receiver sees one sender's effects in order — skipping targets in
    /// `busy`. Also returns the next time something comes due.
    pub fn due(
        &self,
        me: &ActorKey,
        now_ms: u64,
        busy: &dyn Fn(&ActorKey, u64) -> bool,
    ) -> (Vec<Due>, Option<u64>) {
        let mut out = Vec::new();
        let mut next: Option<u64> = None;
        let mut seen: Vec<&ActorKey> = Vec::new();
        for entry in self.pending.values() {
            if let Some(at) = entry.due_ms
                && at > now_ms
            {
                next = Some(next.map_or(at, |n| n.min(at)));
                continue;
            }
            let forward = entry.due_ms.is_some() && &entry.target != me;
            if forward {
                if !busy(me, entry.seq) {
                    out.push(Due::Forward(entry.seq));
                }
                continue;
            }
            if seen.contains(&&entry.target) {
                continue;
            }
            seen.push(&entry.target);
            if !busy(&entry.target, entry.seq) {
                out.push(Due::Deliver(entry.clone()));
            }
        }
        (out, next)
    }

    /// The pending entry at `seq`.
    pub fn get(&self, seq: u64) -> Option<&OutboxEntry> {
        self.pending.get(&seq)
    }

    /// The snapshot form.
    pub fn image(&self) -> OutboxImage {
        OutboxImage {
            pending: self.pending.values().cloned().collect(),
            next_seq: self.next_seq,
            inbound: self.inbound.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        }
    }

    /// Restores from a snapshot (the index state is kept: it is about the store, not history).
    pub fn restore(&mut self, image: OutboxImage) {
        self.pending = image.pending.into_iter().map(|e| (e.seq, e)).collect();
        self.next_seq = image.next_seq;
        self.inbound = image.inbound.into_iter().collect();
        self.acked.clear();
    }

    /// Forgets everything derived from history (before a reload).
    pub fn reset(&mut self) {
        let index = self.index;
        *self = Outbox::default();
        self.index = index;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::{ActorId, Kind, Namespace};
    use crate::wire::CommandId;

    fn key(id: &str) -> ActorKey {
        ActorKey::new(
            Namespace::new("t").unwrap(),
            Kind::new("k").unwrap(),
            ActorId::new(id).unwrap(),
        )
    }

    fn entry(target: &str, due: Option<u64>, reminder: Option<&str>) -> OutboxEntry {
        OutboxEntry {
            seq: 0,
            target: key(target),
            command_id: CommandId::random(),
            causation_id: CommandId::random(),
            correlation_id: CommandId::random(),
            command: vec![1],
            due_ms: due,
            reminder: reminder.map(str::to_owned),
            compensation: None,
        }
    }

    #[test]
    fn positions_grow_and_settled_entries_leave() {
        let me = key("a");
        let mut ob = Outbox::default();
        let staged = ob.stage(
            &me,
            vec![entry("b", None, None), entry("c", None, None)],
            &[],
            None,
        );
        assert_eq!(
            staged.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2]
        );
        ob.committed(&me, staged);
        assert_eq!(ob.pending_len(), 2);
        ob.settle(1);
        let staged = ob.stage(&me, vec![entry("b", None, None)], &[], None);
        assert_eq!(staged.entries[0].seq, 3, "positions are never reused");
        assert_eq!(
            staged.settled,
            vec![1],
            "the ack is recorded by the next commit"
        );
        ob.aborted(staged);
        let staged = ob.stage(&me, vec![], &[], None);
        assert_eq!(
            staged.settled,
            vec![1],
            "an aborted commit gives the ack back"
        );
    }

    #[test]
    fn one_entry_per_target_in_order_and_reminders_wait() {
        let me = key("a");
        let mut ob = Outbox::default();
        let staged = ob.stage(
            &me,
            vec![
                entry("b", None, None),
                entry("b", None, None),
                entry("c", None, None),
                entry("a", Some(500), Some("r")),
                entry("d", Some(100), None),
            ],
            &[],
            None,
        );
        ob.committed(&me, staged);
        let (due, next) = ob.due(&me, 50, &|_, _| false);
        let seqs: Vec<String> = due
            .iter()
            .map(|d| match d {
                Due::Deliver(e) => format!("deliver {}", e.seq),
                Due::Forward(s) => format!("forward {s}"),
            })
            .collect();
        assert_eq!(seqs, vec!["deliver 1", "deliver 3"]);
        assert_eq!(next, Some(100));
        let (due, _) = ob.due(&me, 200, &|_, _| false);
        assert!(matches!(due.last(), Some(Due::Forward(5))));
    }

    #[test]
    fn receivers_dedup_by_mark_and_reminders_by_membership() {
        let me = key("r");
        let mut ob = Outbox::default();
        let from = key("s");
        let origin = |seq| EffectOrigin {
            from: from.clone(),
            seq,
            compensation: None,
        };
        assert!(!ob.already_applied(&me, &origin(4)));
        let staged = ob.stage(
            &me,
            vec![],
            &[],
            Some(Delivery {
                from: from.clone(),
                seq: 4,
            }),
        );
        ob.committed(&me, staged);
        assert!(ob.already_applied(&me, &origin(4)));
        assert!(ob.already_applied(&me, &origin(2)));
        assert!(!ob.already_applied(&me, &origin(5)));
        // A reminder to itself: applied iff no longer pending.
        let staged = ob.stage(&me, vec![entry("r", Some(10), Some("x"))], &[], None);
        let seq = staged.entries[0].seq;
        ob.committed(&me, staged);
        let own = EffectOrigin {
            from: me.clone(),
            seq,
            compensation: None,
        };
        assert!(!ob.already_applied(&me, &own));
        let staged = ob.stage(&me, vec![], &["x".to_owned()], None);
        assert_eq!(staged.settled, vec![seq], "cancelled");
        ob.committed(&me, staged);
        assert!(
            ob.already_applied(&me, &own),
            "a cancelled reminder never applies"
        );
    }

    #[test]
    fn two_reminders_of_one_name_in_one_turn_keep_the_later() {
        let me = key("a");
        let mut ob = Outbox::default();
        let staged = ob.stage(
            &me,
            vec![
                entry("a", Some(10), Some("x")),
                entry("a", Some(20), Some("x")),
            ],
            &[],
            None,
        );
        assert_eq!(staged.entries.len(), 1);
        assert_eq!(staged.entries[0].due_ms, Some(20));
    }

    #[test]
    fn a_named_reminder_replaces_the_pending_one() {
        let me = key("a");
        let mut ob = Outbox::default();
        let staged = ob.stage(&me, vec![entry("a", Some(10), Some("x"))], &[], None);
        ob.committed(&me, staged);
        let staged = ob.stage(&me, vec![entry("a", Some(20), Some("x"))], &[], None);
        assert_eq!(staged.settled, vec![1]);
        ob.committed(&me, staged);
        assert_eq!(ob.pending_len(), 1);
        assert_eq!(ob.reminder("x").map(|e| e.due_ms), Some(Some(20)));
    }
}
