//! One turn: run the command's handler, then store its outcome and answer.
//!
//! An ask or a tell goes through [`decide`](Activation::decide): a command id the actor has
//! seen answers with its stored reply; otherwise the handler decides, and the events, the
//! reply and any durable effects are stored as one commit (see `commit.rs`). A durable effect
//! from another actor goes through [`apply_effect`](Activation::apply_effect): applied exactly
//! once, its rejection recorded (and its compensation sent back) instead of returned.

use super::*;

impl<A: Behavior> Activation<A> {
    /// Runs the handler on `cmd` (the turn's context set up from `meta`). A panic is not caught
    /// here: it fails the activation's ractor actor, and the root actor starts a fresh one (see
    /// [`Kit::restart`]).
    pub(super) async fn run_handler(
        &mut self,
        env: Box<Envelope<A>>,
    ) -> Result<Effect<A>, Failure<A>> {
        let outcome = self.handler_turn(env).await;
        match outcome {
            Err(rejection) => Err(Failure::Rejected(rejection)),
            Ok(effect) => match effect.plan.as_ref().and_then(|p| p.error.clone()) {
                Some(e) => Err(Failure::Invalid(Box::new(AskError::from(e)))),
                None => Ok(effect),
            },
        }
    }

    /// Starts the turn for `env` and returns the handler's future, to be awaited in place
    /// (it polls inside the turn, see [`InTurn`]). Not an `async fn`: the caller's state
    /// machine holds the handler's future directly, one layer less on every turn. The
    /// command moves on into the future; its metadata trades places with the previous
    /// command's in the turn, without leaving the envelope's box (which then drops the old).
    // The box is the point: the caller's envelope is boxed, and taking it by value would copy
    // all of it out.
    #[allow(clippy::boxed_local)]
    fn handler_turn(
        &mut self,
        mut env: Box<Envelope<A>>,
    ) -> InTurn<impl Future<Output = Result<Effect<A>, A::Error>> + Send + '_> {
        let turn = Arc::as_ptr(self.ctx.turn());
        self.ctx.begin(self.version, &mut env.meta);
        let cmd = env.cmd;
        InTurn {
            turn,
            fut: A::dispatch(&self.state, cmd, &mut self.ctx),
        }
    }

    /// A command from an ask or a tell: handle, persist, reply.
    ///
    /// One state machine down to the handler (its future inline), and the store path boxed:
    /// a query — most turns — resumes and moves its reply through as few layers as possible.
    pub(super) async fn decide(
        &mut self,
        env: Box<Envelope<A>>,
    ) -> Result<A::Reply, AskError<A::Error>> {
        let ids = CommitIds::of(&env.meta);
        if self.stale {
            Box::pin(self.reload())
                .await
                .map_err(|e| e.to_ask(self.key()))?;
        }
        if let Some(reply) = self.remembered_reply(ids.command_id) {
            Stats::bump(&self.host.stats.deduplicated);
            return reply;
        }
        let outcome = self.handler_turn(env).await;
        let result = match outcome {
            Err(rejection) => return Err(AskError::Rejected(rejection)),
            Ok(Effect {
                events,
                reply,
                plan: None,
            }) if events.is_empty() => {
                return Ok(match reply {
                    Answer::Now(reply) => reply,
                    Answer::FromState(read) => read(&self.state),
                });
            }
            // Boxed: the append path is large, and a query never takes it — keeping it out of
            // this future keeps the hot path's state machine (moved on every turn) small.
            Ok(effect) => Box::pin(self.store_effect(effect, ids)).await,
        };
        // A turn that asked or told other actors changed them already: whatever went wrong
        // after, the command may be partly applied. Only a retry with the same id is safe.
        match result {
            Err(e) if !matches!(e, AskError::Rejected(_)) && self.ctx.turn().children() > 0 => {
                Err(AskError::Failed(CallError::OutcomeUnknown {
                    command_id: ids.command_id,
                    reason: format!(
                        "the turn asked other actors before it failed ({e}); they may have applied their part"
                    ),
                }))
            }
            other => other,
        }
    }

    /// The outcome of a handler that decided events or durable effects: fold a reply read
    /// from the new state, store everything as one commit, answer.
    async fn store_effect(
        &mut self,
        effect: Effect<A>,
        ids: CommitIds,
    ) -> Result<A::Reply, AskError<A::Error>> {
        let Effect {
            events,
            reply,
            plan,
        } = effect;
        if let Some(e) = plan.as_ref().and_then(|p| p.error.clone()) {
            return Err(AskError::from(e));
        }
        if events.is_empty() && plan.as_ref().is_none_or(|p| p.is_empty()) {
            return Ok(match reply {
                Answer::Now(reply) => reply,
                Answer::FromState(read) => read(&self.state),
            });
        }
        // A reply read from the new state needs the events folded before the commit (it is
        // stored with it). Should the commit fail, the state is ahead of the store: reloaded.
        let (reply, folded) = match reply {
            Answer::Now(reply) => (reply, false),
            Answer::FromState(read) => {
                for event in &events {
                    self.state.apply(event);
                }
                (read(&self.state), true)
            }
        };
        let stored = match codec::encode("reply", &reply) {
            Ok(bytes) => {
                self.persist(
                    events,
                    plan.map(|p| *p).unwrap_or_default(),
                    Some(bytes),
                    ids,
                    None,
                    "Scheduled",
                    folded,
                )
                .await
            }
            Err(e) => Err(e.into()),
        };
        if folded && stored.is_err() {
            self.stale = true;
        }
        match stored? {
            Stored::Now => Ok(reply),
            // The store already held this command: our state was behind. Answer with the
            // reply stored then.
            Stored::Before => self.remembered_reply(ids.command_id).unwrap_or(Ok(reply)),
        }
    }

    /// A durable effect from `origin`: apply it exactly once and settle it.
    pub(super) async fn apply_effect(
        &mut self,
        env: Box<Envelope<A>>,
        origin: EffectOrigin,
    ) -> Settle {
        let ids = CommitIds::of(&env.meta);
        if self.stale
            && let Err(e) = self.reload().await
        {
            return Settle::Failed {
                reason: e.to_string(),
            };
        }
        if self.cell.outbox.lock().already_applied(self.key(), &origin) {
            Stats::bump(&self.host.stats.effects_duplicates);
            return Settle::Duplicate;
        }
        let delivery = Some(Delivery {
            from: origin.from.clone(),
            seq: origin.seq,
        });
        let (events, plan, mark, rejected) = match self.run_handler(env).await {
            Ok(effect) => (
                effect.events,
                effect.plan.map(|p| *p).unwrap_or_default(),
                "Received",
                None,
            ),
            Err(Failure::Rejected(e)) => {
                // Recorded, so it is never retried (and never applied later by surprise); the
                // sender's compensation, if any, goes back to it as an effect of ours.
                let mut plan = Plan::default();
                if let Some(compensation) = origin.compensation.clone() {
                    plan.sends.push(crate::actor::contract::Outgoing {
                        target: Some(origin.from.clone()),
                        command: compensation,
                        due: None,
                        reminder: None,
                        compensation: None,
                    });
                }
                (Vec::new(), plan, "Rejected", Some(e.to_string()))
            }
            Err(Failure::Invalid(e)) => {
                return Settle::Failed {
                    reason: (*e).to_string(),
                };
            }
        };
        match Box::pin(self.persist(events, plan, None, ids, delivery, mark, false)).await {
            Ok(Stored::Before) => {
                Stats::bump(&self.host.stats.effects_duplicates);
                Settle::Duplicate
            }
            Ok(Stored::Now) => match rejected {
                Some(reason) => {
                    Stats::bump(&self.host.stats.effects_rejected);
                    Settle::Rejected { reason }
                }
                None => {
                    Stats::bump(&self.host.stats.effects_applied);
                    Settle::Applied
                }
            },
            Err(e) => {
                if self.cell.outbox.lock().already_applied(self.key(), &origin) {
                    Settle::Duplicate
                } else {
                    Settle::Failed {
                        reason: e.to_string(),
                    }
                }
            }
        }
    }

    /// Forwards the delayed effects for other actors that came due: one commit settles them
    /// and stores them again as immediate effects (new positions keep each receiver's order).
    pub(super) async fn forward_due(&mut self) {
        if self.stale && self.reload().await.is_err() {
            return;
        }
        let now = now_ms();
        let due: Vec<OutboxEntry> = {
            let outbox = self.cell.outbox.lock();
            let me = self.key();
            let (items, _) = outbox.due(me, now, &|_, _| false);
            items
                .into_iter()
                .filter_map(|d| match d {
                    crate::workflow::outbox::Due::Forward(seq) => outbox.get(seq).cloned(),
                    crate::workflow::outbox::Due::Deliver(_) => None,
                })
                .collect()
        };
        if due.is_empty() {
            return;
        }
        let command_id = CommandId::random();
        let ids = CommitIds {
            command_id,
            correlation_id: command_id,
            causation_id: None,
        };
        let settled: Vec<u64> = due.iter().map(|e| e.seq).collect();
        let entries: Vec<OutboxEntry> = due
            .into_iter()
            .map(|e| OutboxEntry { due_ms: None, ..e })
            .collect();
        let staged = {
            let mut outbox = self.cell.outbox.lock();
            let mut staged = outbox.stage(self.key(), entries, &[], None);
            staged.settled.extend(settled);
            staged.settled.sort_unstable();
            staged.settled.dedup();
            staged
        };
        if let Err(e) = self
            .append_staged(Vec::new(), staged, None, ids, "Forwarded", false)
            .await
        {
            tracing::debug!(actor = %self.key(), error = %e, "delayed effects not forwarded yet");
        }
    }

    pub(super) fn remembered_reply(
        &self,
        id: CommandId,
    ) -> Option<Result<A::Reply, AskError<A::Error>>> {
        let recent = self.recent.iter().rev().find(|r| r.command_id == id)?;
        Some(match &recent.reply {
            Some(bytes) => with_decode_host(&self.host, || codec::decode("reply", bytes))
                .map_err(AskError::from),
            None => Err(AskError::from(codec::CodecError {
                what: "reply",
                reason: "the original reply was not stored".into(),
            })),
        })
    }

    pub(super) fn remember(&mut self, command_id: CommandId, reply: Option<Vec<u8>>) {
        let window = self.host.config.dedup_window;
        if window == 0 {
            return;
        }
        while self.recent.len() >= window {
            self.recent.pop_front();
        }
        self.recent.push_back(Recent { command_id, reply });
    }
}
