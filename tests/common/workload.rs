//! A write workload for cluster tests, and the exactly-once check of its outcome.
//!
//! Workers add 1 to random counters through a runtime (usually a cluster client), each add
//! with a fresh command id, retried **with the same id** on every error but a rejection until
//! it succeeds or its budget runs out. Afterwards [`verify`] reads every counter's history
//! from the store and checks: versions gapless, no command id twice, every acknowledged add
//! exactly once, and each counter's total equal to its acknowledged adds.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aether::prelude::*;
use aether::{ActorId, ActorKey, Kind, Runtime};
use parking_lot::Mutex;

use super::{Counter, CounterCmd};

/// What the workload did.
#[derive(Default)]
pub struct Outcome {
    /// Attempts (first sends and retries).
    pub requests: AtomicU64,
    /// Adds acknowledged.
    pub successes: AtomicU64,
    /// Adds that ran out of budget without an acknowledgement.
    pub lost: AtomicU64,
    /// Failed attempts, by error kind.
    pub errors: Mutex<BTreeMap<&'static str, u64>>,
    /// (counter, command id) of every acknowledged add.
    pub acked: Mutex<Vec<(String, CommandId)>>,
    /// Every command id ever sent, per counter.
    pub issued: Mutex<HashMap<String, HashSet<CommandId>>>,
    /// When each add was acknowledged (for throughput windows).
    pub acked_at: Mutex<Vec<Instant>>,
    /// The first few error messages of each kind.
    pub samples: Mutex<BTreeMap<&'static str, Vec<String>>>,
}

impl Outcome {
    /// A one-line summary.
    pub fn summary(&self) -> String {
        format!(
            "requests {}, successes {}, lost {}, errors {:?}, samples {:?}",
            self.requests.load(Ordering::Relaxed),
            self.successes.load(Ordering::Relaxed),
            self.lost.load(Ordering::Relaxed),
            self.errors.lock(),
            self.samples.lock()
        )
    }

    /// Acknowledged adds in `[from, to)`.
    pub fn acked_between(&self, from: Instant, to: Instant) -> usize {
        self.acked_at
            .lock()
            .iter()
            .filter(|t| **t >= from && **t < to)
            .count()
    }
}

/// The name of an error's variant.
pub fn error_kind<E>(e: &AskError<E>) -> &'static str {
    match e {
        AskError::Rejected(_) => "rejected",
        AskError::Failed(CallError::VersionConflict { .. }) => "version_conflict",
        AskError::Failed(CallError::Timeout { .. }) => "timeout",
        AskError::Failed(CallError::OutcomeUnknown { .. }) => "outcome_unknown",
        AskError::Failed(CallError::Unavailable { .. }) => "unavailable",
        AskError::Failed(CallError::Codec { .. }) => "codec",
        AskError::Failed(CallError::InvalidName(_)) => "invalid_name",
        AskError::Failed(CallError::UnknownKind { .. }) => "unknown_kind",
        AskError::Failed(CallError::WrongNamespace { .. }) => "wrong_namespace",
        AskError::Failed(CallError::MailboxFull { .. }) => "mailbox_full",
        AskError::Failed(CallError::HandlerPanicked { .. }) => "handler_panicked",
        AskError::Failed(CallError::ActivationFailed { .. }) => "activation_failed",
        AskError::Failed(CallError::CallCycle { .. }) => "call_cycle",
        AskError::Failed(CallError::Deadlock { .. }) => "deadlock",
        AskError::Failed(CallError::TooLarge { .. }) => "too_large",
        AskError::Failed(CallError::Unbound { .. }) => "unbound",
        AskError::Failed(CallError::StoreRefused { .. }) => "store_refused",
        AskError::Failed(CallError::Shutdown) => "shutdown",
    }
}

/// Runs `workers` workers adding to `counters` counters (`<prefix>-<i>`) on `rt` until `stop`.
pub fn start(
    rt: &Runtime,
    prefix: &str,
    counters: usize,
    workers: usize,
    budget: Duration,
    stop: Arc<AtomicBool>,
) -> (Arc<Outcome>, Vec<tokio::task::JoinHandle<()>>) {
    let outcome = Arc::new(Outcome::default());
    let refs: Arc<Vec<ActorRef<Counter>>> = Arc::new(
        (0..counters)
            .map(|i| {
                rt.actor::<Counter>(format!("{prefix}-{i}"))
                    .expect("valid id")
            })
            .collect(),
    );
    let tasks = (0..workers)
        .map(|w| {
            let (outcome, refs, stop) =
                (Arc::clone(&outcome), Arc::clone(&refs), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(w as u64 + 1);
                while !stop.load(Ordering::Relaxed) {
                    let target = &refs[rng.usize(..refs.len())];
                    let id = target.id().to_string();
                    let command_id = CommandId::random();
                    outcome
                        .issued
                        .lock()
                        .entry(id.clone())
                        .or_default()
                        .insert(command_id);
                    let started = Instant::now();
                    loop {
                        outcome.requests.fetch_add(1, Ordering::Relaxed);
                        let options = AskOptions::default()
                            .command_id(command_id)
                            .timeout(Duration::from_secs(5));
                        match target.ask_with(CounterCmd::Add(1), options).await {
                            Ok(_) => {
                                outcome.successes.fetch_add(1, Ordering::Relaxed);
                                outcome.acked.lock().push((id, command_id));
                                outcome.acked_at.lock().push(Instant::now());
                                break;
                            }
                            Err(e) => {
                                *outcome.errors.lock().entry(error_kind(&e)).or_default() += 1;
                                {
                                    let mut samples = outcome.samples.lock();
                                    let kind = samples.entry(error_kind(&e)).or_default();
                                    if kind.len() < 3 {
                                        kind.push(e.to_string());
                                    }
                                }
                                if matches!(e, AskError::Rejected(_)) || started.elapsed() > budget
                                {
                                    outcome.lost.fetch_add(1, Ordering::Relaxed);
                                    eprintln!("lost {id} {command_id:?}: {e}");
                                    break;
                                }
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    (outcome, tasks)
}

/// What [`verify`] found.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Command ids stored more than once for one counter.
    pub duplicates: usize,
    /// Acknowledged adds missing from the log.
    pub missing: usize,
    /// Counters whose versions have a gap or repeat, or whose history is damaged.
    pub broken: Vec<String>,
    /// Stored commands nobody sent.
    pub unknown: usize,
    /// Commits read.
    pub commits: usize,
}

/// Reads every counter's history from `rt`'s store and checks the workload's outcome.
pub async fn verify(rt: &Runtime, namespace: &str, outcome: &Outcome) -> Verdict {
    let store = rt.event_store();
    let mut verdict = Verdict::default();
    let issued = outcome.issued.lock().clone();
    let mut stored: HashMap<String, HashMap<CommandId, usize>> = HashMap::new();
    for id in issued.keys() {
        let key = ActorKey::new(
            aether::Namespace::new(namespace).expect("namespace"),
            Kind::new("counter").expect("kind"),
            ActorId::new(id).expect("id"),
        );
        let report = store
            .read_with_errors(&key, 1)
            .await
            .expect("history readable");
        if !report.corrupt.is_empty() {
            verdict
                .broken
                .push(format!("{id}: damaged {:?}", report.corrupt));
        }
        let mut next = 1;
        let counts = stored.entry(id.clone()).or_default();
        for commit in &report.commits {
            verdict.commits += 1;
            if commit.first_version != next {
                verdict.broken.push(format!(
                    "{id}: commit at version {} where {next} was expected",
                    commit.first_version
                ));
            }
            next = commit.last_version() + 1;
            *counts.entry(commit.command_id).or_default() += 1;
            if !issued[id].contains(&commit.command_id) {
                verdict.unknown += 1;
            }
        }
    }
    verdict.duplicates = stored
        .values()
        .flat_map(|m| m.values())
        .filter(|n| **n > 1)
        .count();
    for (id, command_id) in outcome.acked.lock().iter() {
        if stored.get(id).and_then(|m| m.get(command_id)).copied() != Some(1) {
            verdict.missing += 1;
        }
    }
    verdict
}
