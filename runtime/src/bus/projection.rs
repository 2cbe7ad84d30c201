//! Projections: read models built from stored events, with exactly-once effects.
//!
//! A projection reads a namespace's stored events in log order and hands each one to a
//! [`ReadModel`] — a balance table, a search index, a leaderboard — that updates itself. Start
//! one with `Runtime::projection`; it runs in the background until stopped.
//!
//! # The offset lives in the read model
//!
//! Each event comes with its [`Offset`] (the commit's log position and the event's index). The
//! read model must store the offset of the last event it applied **in the same write** as the
//! change the event makes, and return it from [`ReadModel::offset`]. That single rule gives
//! exactly-once effects:
//!
//! 1. On start, the projection asks the read model for its offset and positions its source
//!    there (a JetStream consumer recreated at that sequence, or the store's log).
//! 2. Each event at or before the read model's offset is skipped; every later one is applied.
//! 3. Acknowledgements to the source only happen *after* the read model applied the events, so
//!    the source never runs ahead of the read model.
//!
//! Delivery itself is at least once: after a crash between "applied" and "acknowledged", the
//! same events arrive again. Step 2 turns that into exactly once *for the read model*. If the
//! offset were kept anywhere else (a separate key-value entry, the consumer's acknowledgement
//! floor), a crash between the two writes would apply an event twice or lose it — so the
//! managed part is everything except that one write, which only the read model can make atomic.
//!
//! # Failure, restart, rebuild
//!
//! When [`ReadModel::apply`] fails, the projection stops where it is, acknowledging nothing more
//! ([`ProjectionState::Failed`]); [`Projection::stop`] gives the read model back, and starting a
//! projection with it again resumes from its offset. [`Projection::rebuild`] clears the read
//! model ([`ReadModel::clear`], which must reset the offset too) and replays the log from the
//! start. A source that is briefly unreachable (NATS restarting) is retried, not failed.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::durable::{CommitSource, Offset, StoredEvent};
use super::errors::{DurableError, ProjectionError};
use super::filter::Filter;
use super::local::Listed;
use super::pattern::Pattern;

/// The error a read model returns: any error type, boxed.
pub type ReadModelError = Box<dyn std::error::Error + Send + Sync>;

/// A read model a projection keeps up to date. See the [module docs](self) for the one rule:
/// store each event's offset with its effect, atomically.
pub trait ReadModel: Send + 'static {
    /// The offset of the last event applied, as stored with the read model; `None` when it
    /// holds nothing.
    fn offset(&mut self) -> impl Future<Output = Result<Option<Offset>, ReadModelError>> + Send;

    /// Applies one event and records `event.offset`, in one write.
    fn apply(
        &mut self,
        event: &StoredEvent,
    ) -> impl Future<Output = Result<(), ReadModelError>> + Send;

    /// Empties the read model, offset included (the first step of a rebuild).
    fn clear(&mut self) -> impl Future<Output = Result<(), ReadModelError>> + Send;
}

/// Settings of a projection.
#[derive(Debug, Clone)]
pub struct ProjectionOptions {
    /// The events it reads; `<ns>.events.>` (every actor of the runtime's namespace) when
    /// `None`. Must name the runtime's namespace.
    pub pattern: Option<Pattern>,
    /// Which of them it applies.
    pub filter: Filter,
    /// Acknowledge the source after this many commits...
    pub ack_every: usize,
    /// ... or after this long without new commits.
    pub ack_idle: Duration,
    /// Longest pause between polls of the store's log when idle (store-log source only).
    pub poll_interval: Duration,
    /// Commits read per request from the store's log.
    pub page: usize,
}

impl Default for ProjectionOptions {
    fn default() -> Self {
        ProjectionOptions {
            pattern: None,
            filter: Filter::all(),
            ack_every: 64,
            ack_idle: Duration::from_millis(50),
            poll_interval: Duration::from_millis(25),
            page: 256,
        }
    }
}

impl ProjectionOptions {
    /// Reads only events matching `pattern`.
    pub fn pattern(mut self, pattern: Pattern) -> Self {
        self.pattern = Some(pattern);
        self
    }

    /// Applies only events passing `filter`.
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filter = filter;
        self
    }
}

/// What a projection is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProjectionState {
    /// Reading the read model's offset and positioning the source.
    Starting,
    /// Applying events as they come.
    Running,
    /// Clearing the read model and rewinding.
    Rebuilding,
    /// Stopped on request.
    Stopped,
    /// Stopped because of this error; nothing after the failed event was acknowledged.
    Failed(String),
}

/// A projection's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionStatus {
    /// Its name.
    pub name: String,
    /// What it is doing.
    pub state: ProjectionState,
    /// The read model's offset: the last event applied.
    pub offset: Option<Offset>,
    /// Events applied in this run.
    pub applied: u64,
    /// Events skipped because the read model already held them (redeliveries).
    pub skipped: u64,
    /// Rebuilds in this run.
    pub rebuilds: u64,
}

enum Control {
    Rebuild(oneshot::Sender<Result<(), ProjectionError>>),
    CaughtUp(oneshot::Sender<Result<bool, ProjectionError>>),
    Stop,
}

/// A running projection. Dropping it stops the projection abruptly (like a crash: safe, the
/// read model's offset decides where the next run starts); [`stop`](Projection::stop) stops it
/// gracefully and gives the read model back.
#[must_use = "dropping a projection stops it"]
pub struct Projection<M: ReadModel> {
    name: String,
    control: mpsc::Sender<Control>,
    status: watch::Receiver<ProjectionStatus>,
    task: Option<JoinHandle<M>>,
}

impl<M: ReadModel> Projection<M> {
    /// Starts the runner on `source`.
    pub(crate) fn start(
        name: String,
        model: M,
        source: Box<dyn CommitSource>,
        options: ProjectionOptions,
        listed: Listed,
    ) -> Projection<M> {
        let (control_tx, control_rx) = mpsc::channel(8);
        let (status_tx, status_rx) = watch::channel(ProjectionStatus {
            name: name.clone(),
            state: ProjectionState::Starting,
            offset: None,
            applied: 0,
            skipped: 0,
            rebuilds: 0,
        });
        let runner = Runner {
            model,
            source,
            options,
            control: control_rx,
            status: status_tx,
            listed,
            since_ack: 0,
            scanned: None,
        };
        Projection {
            name,
            control: control_tx,
            status: status_rx,
            task: Some(tokio::spawn(runner.run())),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its progress now.
    pub fn status(&self) -> ProjectionStatus {
        let mut status = self.status.borrow().clone();
        let ended = self.task.as_ref().is_none_or(JoinHandle::is_finished);
        if ended
            && matches!(
                status.state,
                ProjectionState::Running | ProjectionState::Starting | ProjectionState::Rebuilding
            )
        {
            status.state = ProjectionState::Failed("the projection task ended (panicked)".into());
        }
        status
    }

    fn not_running(&self) -> ProjectionError {
        match self.status().state {
            ProjectionState::Failed(reason) => ProjectionError::ReadModel(reason),
            _ => ProjectionError::NotRunning(self.name.clone()),
        }
    }

    /// Waits until every matching event stored so far has been applied and acknowledged, or
    /// `within` passes. Fails at once if the projection has stopped or failed.
    pub async fn caught_up(&self, within: Duration) -> Result<(), ProjectionError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (tx, rx) = oneshot::channel();
            if self.control.send(Control::CaughtUp(tx)).await.is_err() {
                return Err(self.not_running());
            }
            match rx.await {
                Ok(Ok(true)) => return Ok(()),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(self.not_running()),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ProjectionError::Timeout(within));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Clears the read model and replays every stored event from the start. Returns once the
    /// rewind is done (the replay goes on in the background; [`caught_up`](Self::caught_up)
    /// waits for it).
    pub async fn rebuild(&self) -> Result<(), ProjectionError> {
        let (tx, rx) = oneshot::channel();
        if self.control.send(Control::Rebuild(tx)).await.is_err() {
            return Err(self.not_running());
        }
        rx.await.unwrap_or_else(|_| Err(self.not_running()))
    }

    /// Stops the projection (acknowledging what was applied) and gives the read model back —
    /// also after a failure, so it can be inspected or started again.
    pub async fn stop(mut self) -> Result<M, ProjectionError> {
        let _ = self.control.send(Control::Stop).await;
        let Some(task) = self.task.take() else {
            return Err(ProjectionError::NotRunning(self.name.clone()));
        };
        task.await.map_err(|e| {
            ProjectionError::ReadModel(format!("the projection task ended abnormally: {e}"))
        })
    }
}

impl<M: ReadModel> Drop for Projection<M> {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl<M: ReadModel> std::fmt::Debug for Projection<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projection")
            .field("status", &self.status())
            .finish()
    }
}

/// What woke the runner up. Lives for one loop turn: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Step {
    Control(Option<Control>),
    Commit(Result<(u64, crate::wire::CommitRecord), DurableError>),
    Idle,
}

struct Runner<M: ReadModel> {
    model: M,
    source: Box<dyn CommitSource>,
    options: ProjectionOptions,
    control: mpsc::Receiver<Control>,
    status: watch::Sender<ProjectionStatus>,
    listed: Listed,
    /// Commits processed since the last acknowledgement.
    since_ack: usize,
    /// The last commit processed.
    scanned: Option<u64>,
}

impl<M: ReadModel> Runner<M> {
    fn set(&self, change: impl FnOnce(&mut ProjectionStatus)) {
        self.status.send_modify(change);
    }

    fn fail(&self, reason: String) {
        tracing::warn!(target: "aether::bus", projection = %self.status.borrow().name, %reason, "projection failed");
        self.set(|s| s.state = ProjectionState::Failed(reason));
    }

    /// Acknowledges everything processed so far.
    async fn ack(&mut self) -> Result<(), DurableError> {
        if let (Some(position), true) = (self.scanned, self.since_ack > 0) {
            self.source.ack(position).await?;
            self.since_ack = 0;
        }
        Ok(())
    }

    /// Reads the read model's offset and positions the source after it.
    async fn position(&mut self) -> Result<(), ProjectionError> {
        let offset = self
            .model
            .offset()
            .await
            .map_err(|e| ProjectionError::ReadModel(e.to_string()))?;
        self.source.rewind(offset.map(|o| o.commit)).await?;
        self.scanned = None;
        self.since_ack = 0;
        self.set(|s| s.offset = offset);
        Ok(())
    }

    async fn run(mut self) -> M {
        if let Err(e) = self.position().await {
            self.fail(e.to_string());
            return self.model;
        }
        self.set(|s| s.state = ProjectionState::Running);
        let mut backoff = Duration::from_millis(50);
        loop {
            let idle = self.options.ack_idle;
            let pending = self.since_ack > 0;
            let step = tokio::select! {
                biased;
                c = self.control.recv() => Step::Control(c),
                r = self.source.next() => Step::Commit(r),
                () = tokio::time::sleep(idle), if pending => Step::Idle,
            };
            match step {
                Step::Control(None | Some(Control::Stop)) => {
                    if let Err(e) = self.ack().await {
                        tracing::warn!(target: "aether::bus", error = %e, "projection: final acknowledgement failed");
                    }
                    self.set(|s| s.state = ProjectionState::Stopped);
                    return self.model;
                }
                Step::Control(Some(Control::CaughtUp(reply))) => {
                    let answer = match self.ack().await {
                        Ok(()) => self.source.caught_up().await.map_err(Into::into),
                        Err(e) => Err(e.into()),
                    };
                    let _ = reply.send(answer);
                }
                Step::Control(Some(Control::Rebuild(reply))) => {
                    self.set(|s| s.state = ProjectionState::Rebuilding);
                    let result = match self.model.clear().await {
                        Ok(()) => self.position().await,
                        Err(e) => Err(ProjectionError::ReadModel(e.to_string())),
                    };
                    match &result {
                        Ok(()) => self.set(|s| {
                            s.state = ProjectionState::Running;
                            s.rebuilds += 1;
                        }),
                        Err(e) => self.fail(e.to_string()),
                    }
                    let failed = result.is_err();
                    let _ = reply.send(result);
                    if failed {
                        return self.model;
                    }
                }
                Step::Idle => {
                    if let Err(e) = self.ack().await {
                        tracing::warn!(target: "aether::bus", error = %e, "projection: acknowledgement failed; will retry");
                    }
                }
                Step::Commit(Err(DurableError::Unavailable(reason))) => {
                    tracing::warn!(target: "aether::bus", %reason, "projection source unavailable; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Step::Commit(Err(e)) => {
                    self.fail(e.to_string());
                    return self.model;
                }
                Step::Commit(Ok((position, commit))) => {
                    backoff = Duration::from_millis(50);
                    if let Err(reason) = self.apply_commit(position, commit).await {
                        self.fail(reason);
                        return self.model;
                    }
                    if self.since_ack >= self.options.ack_every.max(1)
                        && let Err(e) = self.ack().await
                    {
                        tracing::warn!(target: "aether::bus", error = %e, "projection: acknowledgement failed; will retry");
                    }
                }
            }
        }
    }

    /// Applies the new events of one commit; `Err` with the reason when the read model fails.
    async fn apply_commit(
        &mut self,
        position: u64,
        commit: crate::wire::CommitRecord,
    ) -> Result<(), String> {
        let mut offset = self.status.borrow().offset;
        let (mut applied, mut skipped) = (0u64, 0u64);
        let mut result = Ok(());
        for (i, envelope) in commit.envelopes().enumerate() {
            let event = StoredEvent {
                offset: Offset {
                    commit: position,
                    index: i as u32,
                },
                envelope,
            };
            if offset.is_some_and(|o| event.offset <= o) {
                skipped += 1;
                continue;
            }
            let wanted = self.options.filter.matches_parts(
                &event.envelope.event_type,
                Some(event.envelope.actor.id.as_str()),
            );
            if !wanted {
                continue;
            }
            if let Err(e) = self.model.apply(&event).await {
                result = Err(format!("read model failed at {}: {e}", event.offset));
                break;
            }
            offset = Some(event.offset);
            applied += 1;
        }
        self.listed
            .slot
            .delivered
            .fetch_add(applied, Ordering::Relaxed);
        self.set(|s| {
            s.offset = offset;
            s.applied += applied;
            s.skipped += skipped;
        });
        if result.is_ok() {
            self.scanned = Some(position);
            self.since_ack += 1;
        }
        result
    }
}
