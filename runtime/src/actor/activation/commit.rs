//! Storing a turn: one atomic commit of its events, its reply and its outbox changes, at the
//! version the actor is at; then folding it in, publishing it on the bus, and keeping the
//! wake-up index of durable work ahead of the work itself.
//!
//! A version conflict means a stale activation: it reloads, and the command fails fast
//! (unless the winner was this very command, whose stored reply then stands).

use super::*;

impl<A: Behavior> Activation<A> {
    /// Stores the outcome of a turn: `events`, the durable effects of `plan`, and `delivery`
    /// (the effect it applies), as one commit. `mark` names the bookkeeping event used when
    /// there is no user event; `folded`: the state has the events applied already.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn persist(
        &mut self,
        events: Vec<A::Event>,
        plan: Plan,
        reply: Option<Vec<u8>>,
        ids: CommitIds,
        delivery: Option<Delivery>,
        mark: &str,
        folded: bool,
    ) -> Result<Stored, AskError<A::Error>> {
        let now = now_ms();
        let me = self.key();
        let mut entries = Vec::with_capacity(plan.sends.len());
        for (i, out) in plan.sends.into_iter().enumerate() {
            let target = out.target.unwrap_or_else(|| me.clone());
            if target.namespace != me.namespace {
                return Err(AskError::Failed(CallError::Unbound {
                    actor: target,
                    reason: "durable effects stay within one namespace".into(),
                }));
            }
            entries.push(OutboxEntry {
                seq: 0,
                target,
                command_id: ids.command_id.derive(EFFECT_ID_BASE + i as u64),
                causation_id: ids.command_id,
                correlation_id: ids.correlation_id,
                command: out.command,
                due_ms: out.due.map(|d| d.to_ms(now)),
                reminder: out.reminder,
                compensation: out.compensation,
            });
        }
        let staged = self
            .cell
            .outbox
            .lock()
            .stage(me, entries, &plan.cancels, delivery);
        self.append_staged(events, staged, reply, ids, mark, folded)
            .await
    }

    /// Appends one commit of `events` and the `staged` outbox changes, then folds both (the
    /// events only if not `folded` already).
    pub(super) async fn append_staged(
        &mut self,
        events: Vec<A::Event>,
        staged: Staged,
        reply: Option<Vec<u8>>,
        ids: CommitIds,
        mark: &str,
        folded: bool,
    ) -> Result<Stored, AskError<A::Error>> {
        if events.is_empty() && staged.is_empty() {
            // Nothing to store (a cancel of a reminder that is not pending, say).
            self.cell.outbox.lock().aborted(staged);
            return Ok(Stored::Now);
        }
        let mut data = Vec::with_capacity(events.len().max(1));
        for event in &events {
            match codec::encode("event", event) {
                Ok(payload) => data.push(EventData {
                    event_type: event_type_name(event).to_owned(),
                    payload,
                    schema_version: A::EVENT_VERSION,
                }),
                Err(e) => {
                    self.cell.outbox.lock().aborted(staged);
                    return Err(e.into());
                }
            }
        }
        if data.is_empty() {
            // A commit needs an event: a bookkeeping one, which `apply` never sees.
            data.push(EventData {
                event_type: format!("{SYSTEM_EVENT_PREFIX}{mark}"),
                payload: codec::encode("bookkeeping event", &Mark { reason: mark })?,
                schema_version: 0,
            });
        }
        if let Err(e) = self.index_before(&staged).await {
            self.cell.outbox.lock().aborted(staged);
            return Err(AskError::Failed(CallError::from_store(e, ids.command_id)));
        }
        let commit = NewCommit {
            command_id: ids.command_id,
            correlation_id: ids.correlation_id,
            causation_id: ids.causation_id,
            timestamp_ms: now_ms(),
            events: data,
            reply: reply.clone(),
            outbox: staged.entries.clone(),
            settled: staged.settled.clone(),
            delivery: staged.delivery.clone(),
        };
        // What the bus publishes once the commit is stored; kept only when anyone listens.
        let for_bus = self
            .host
            .bus
            .wants(&self.host.namespace)
            .then(|| NewCommit {
                command_id: commit.command_id,
                correlation_id: commit.correlation_id,
                causation_id: commit.causation_id,
                timestamp_ms: commit.timestamp_ms,
                events: commit.events.clone(),
                reply: None,
                outbox: Vec::new(),
                settled: Vec::new(),
                delivery: None,
            });
        let appended = {
            let span = if self.traced {
                tracing::debug_span!("append", version = self.version, events = events.len())
            } else {
                tracing::Span::none()
            };
            let started = self.host.meters(A::KIND).map(|_| crate::metrics::now());
            let appended = self
                .host
                .events
                .append(self.key(), self.version, commit)
                .instrument(span)
                .await;
            if let Some(started) = started
                && let Some(meters) = self.host.meters(A::KIND)
            {
                meters.append(started.elapsed());
            }
            appended
        };
        match appended {
            Ok(a) if a.deduplicated => {
                self.cell.outbox.lock().aborted(staged);
                Stats::bump(&self.host.stats.deduplicated);
                self.reload().await.map_err(|e| e.to_ask(self.key()))?;
                Ok(Stored::Before)
            }
            Ok(a) => {
                Stats::bump(&self.host.stats.commits);
                if let Some(stored) = for_bus {
                    // Never waits: full subscriber buffers drop (and count) instead.
                    let record = stored.into_record(self.key(), a.first_version - 1);
                    self.host.bus.publish_commit(&record);
                }
                let state = &mut self.state;
                let applied = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    if !folded {
                        for event in &events {
                            state.apply(event);
                        }
                    }
                }));
                let new_work = !staged.entries.is_empty();
                self.cell.outbox.lock().committed(self.key(), staged);
                if new_work {
                    self.outbox_changed = true;
                    self.cell.kick.notify_one();
                }
                if let Err(panic) = applied {
                    // Stored but not folded: the state is unusable until reloaded.
                    tracing::error!(actor = %self.key(), message = %panic_text(&*panic), "apply panicked after commit");
                    self.stale = true;
                    return Ok(Stored::Now);
                }
                self.version = a.last_version;
                self.remember(ids.command_id, reply);
                self.maybe_snapshot();
                Ok(Stored::Now)
            }
            Err(err @ StoreError::VersionConflict { .. }) => {
                self.cell.outbox.lock().aborted(staged);
                Stats::bump(&self.host.stats.conflicts);
                if let StoreError::VersionConflict {
                    actor,
                    expected,
                    actual,
                } = &err
                {
                    self.host.bus.publish_system(
                        &self.host.namespace,
                        SystemEvent::VersionConflict {
                            actor: actor.clone(),
                            expected: *expected,
                            actual: *actual,
                        },
                    );
                }
                tracing::warn!(actor = %self.key(), error = %err, "stale activation; reloading from the store");
                self.stale = true;
                let _ = self.reload().await;
                // The winner may have been this very command, run by another activation (a
                // straggler during a forced handoff): then it was applied, and its reply stands.
                if self.recent.iter().any(|r| r.command_id == ids.command_id) {
                    Stats::bump(&self.host.stats.deduplicated);
                    return Ok(Stored::Before);
                }
                Err(AskError::Failed(CallError::from_store(err, ids.command_id)))
            }
            Err(err) => {
                self.cell.outbox.lock().aborted(staged);
                if !err.nothing_written() {
                    self.stale = true;
                }
                Err(AskError::Failed(CallError::from_store(err, ids.command_id)))
            }
        }
    }

    /// Before a commit that adds durable work: make sure the wake-up index has an entry due no
    /// later than that work, so a crash right after the commit cannot strand it.
    pub(super) async fn index_before(&self, staged: &Staged) -> Result<(), StoreError> {
        let Some(due) = staged.earliest_due() else {
            return Ok(());
        };
        let index = self.cell.outbox.lock().index;
        if index.revision.is_some() && index.due_ms <= due {
            return Ok(());
        }
        let revision = self.host.events.set_wakeup(self.key(), due).await?;
        let mut outbox = self.cell.outbox.lock();
        outbox.index.revision = Some(revision);
        outbox.index.due_ms = due;
        Ok(())
    }

    /// After a load that found pending durable work: make sure the wake-up index has an entry
    /// for it. The activation that stored the work wrote one, but may have removed it since (it
    /// had settled everything in memory, without recording it before it stopped).
    pub(super) async fn index_inherited_work(&self) {
        let (index, earliest) = {
            let outbox = self.cell.outbox.lock();
            (outbox.index, outbox.earliest_due())
        };
        let (Some(due), None) = (earliest, index.revision) else {
            return;
        };
        match self.host.events.set_wakeup(self.key(), due).await {
            Ok(revision) => {
                let mut outbox = self.cell.outbox.lock();
                if outbox.index.revision.is_none() {
                    outbox.index.revision = Some(revision);
                    outbox.index.due_ms = due;
                }
            }
            Err(e) => {
                tracing::debug!(actor = %self.key(), error = %e, "wake-up entry not written at activation")
            }
        }
    }

    /// On stop: leave one index entry due at the earliest pending work, or none.
    pub(super) async fn settle_index(&self) {
        let (index, earliest) = {
            let outbox = self.cell.outbox.lock();
            (outbox.index, outbox.earliest_due())
        };
        let events = &self.host.events;
        let result = match (earliest, index.revision) {
            (None, Some(revision)) => events.clear_wakeup(self.key(), revision).await,
            (Some(due), Some(_)) if index.due_ms == due => Ok(()),
            (Some(due), _) => events.set_wakeup(self.key(), due).await.map(|_| ()),
            (None, None) => Ok(()),
        };
        if let Err(e) = result {
            tracing::debug!(actor = %self.key(), error = %e, "wake-up index not updated on stop");
        }
    }
}
