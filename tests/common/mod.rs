//! Shared test support: names, commits, a test actor, and polling with a deadline.
#![allow(dead_code)]

pub mod conformance;
pub mod ledger;
pub mod link;
pub mod map_watch;
pub mod nats;
pub mod process;
pub mod proxy;
pub mod wire;
pub mod workload;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aether::prelude::*;
use aether::store::NewCommit;
use aether::wire::EventData;
use aether::{ActorId, ActorKey, Kind, Namespace};

pub fn ns(name: &str) -> Namespace {
    Namespace::new(name).expect("valid namespace")
}

pub fn key(namespace: &str, kind: &str, id: &str) -> ActorKey {
    ActorKey::new(
        ns(namespace),
        Kind::new(kind).expect("valid kind"),
        ActorId::new(id).expect("valid id"),
    )
}

/// A commit of `values.len()` events whose payloads encode the values (u64).
pub fn commit_of(values: &[u64]) -> NewCommit {
    NewCommit::new(
        CommandId::random(),
        values
            .iter()
            .map(|v| EventData {
                event_type: "Added".into(),
                payload: rmp_serde::to_vec_named(v).expect("encodes"),
                schema_version: 0,
            })
            .collect(),
    )
}

/// An actor event of `kind`/`id` at `version`, its payload the version, for publishing by hand.
pub fn envelope(
    namespace: &str,
    kind: &str,
    id: &str,
    version: u64,
    event_type: &str,
) -> aether::EventEnvelope {
    let actor = key(namespace, kind, id);
    aether::EventEnvelope {
        namespace: actor.namespace.clone(),
        actor,
        version,
        event_type: event_type.into(),
        payload: rmp_serde::to_vec_named(&version).expect("encodes"),
        timestamp_ms: 0,
        command_id: CommandId::random(),
        correlation_id: CommandId::random(),
        causation_id: None,
        schema_version: 0,
    }
}

/// Sends the runtime's `tracing` output to the test's output when `AETHER_TEST_LOG` names a
/// level (`debug`, `info`, ...). Call at the start of a test you want to look into.
pub fn init_test_log() {
    let Ok(level) = std::env::var("AETHER_TEST_LOG") else {
        return;
    };
    let level = level.parse().unwrap_or(tracing::Level::DEBUG);
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_test_writer()
        .try_init();
}

/// Polls `check` every 10 ms until it returns true or `within` passes.
pub async fn poll_until<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// A test actor: a counter that can fail, panic, sleep and call other counters.

/// `Counter::apply` panics on `Added(APPLY_PANICS_ON)` (a bug in a user's `apply`).
pub const APPLY_PANICS_ON: u64 = 666_666;

/// Counts `apply` calls across all counters of the process (to prove replays happen).
pub static APPLIED: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CounterCmd {
    /// Add `n` (one event).
    Add(u64),
    /// Add each value as its own event, in one commit.
    AddMany(Vec<u64>),
    /// Read the total.
    Get,
    /// Rejected with `CounterError::Refused`.
    Refuse,
    /// The handler panics.
    Panic,
    /// The handler sleeps, then adds `n`.
    SlowAdd { n: u64, millis: u64 },
    /// Ask `target` to add `n`, then record `n` here too.
    AddVia { target: ActorRef<Counter>, n: u64 },
    /// Like `AddVia`, after sleeping `millis` (to make two turns overlap).
    AddViaAfter {
        target: ActorRef<Counter>,
        n: u64,
        millis: u64,
    },
    /// Remember a ref to another counter (stored in an event).
    Befriend(ActorRef<Counter>),
    /// Ask the remembered friend for its total.
    AskFriend,
    /// Ask the remembered friend to ask its own friend (builds call chains).
    Relay,
    /// A digest of the whole encoded state (equal digests: identical state).
    Digest,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CounterEvent {
    Added(u64),
    Befriended(ActorRef<Counter>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum CounterError {
    #[error("refused")]
    Refused,
    #[error("no friend")]
    NoFriend,
    #[error("downstream: {0}")]
    Downstream(String),
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize, EventSourcedActor)]
#[actor(kind = "counter", command = CounterCmd, event = CounterEvent, reply = u64,
        error = CounterError)]
pub struct Counter {
    pub total: u64,
    pub events: u64,
    pub friend: Option<ActorRef<Counter>>,
}

impl Handle<CounterCmd> for Counter {
    async fn handle(
        &self,
        cmd: CounterCmd,
        ctx: &mut Ctx<Self>,
    ) -> Result<Effect<Self>, CounterError> {
        match cmd {
            CounterCmd::Add(n) => Ok(Effect::persist(CounterEvent::Added(n)).reply(self.total + n)),
            CounterCmd::AddMany(values) => {
                let sum: u64 = values.iter().sum();
                Ok(
                    Effect::persist_all(values.into_iter().map(CounterEvent::Added))
                        .reply(self.total + sum),
                )
            }
            CounterCmd::Get => Ok(Effect::reply(self.total)),
            CounterCmd::Refuse => Err(CounterError::Refused),
            CounterCmd::Panic => panic!("counter handler panicked on purpose"),
            CounterCmd::SlowAdd { n, millis } => {
                tokio::time::sleep(Duration::from_millis(millis)).await;
                Ok(Effect::persist(CounterEvent::Added(n)).reply(self.total + n))
            }
            CounterCmd::AddViaAfter { target, n, millis } => {
                tokio::time::sleep(Duration::from_millis(millis)).await;
                ctx.ask(&target, CounterCmd::Add(n))
                    .await
                    .map_err(|e| CounterError::Downstream(e.to_string()))?;
                Ok(Effect::persist(CounterEvent::Added(n)).reply(self.total + n))
            }
            CounterCmd::AddVia { target, n } => {
                ctx.ask(&target, CounterCmd::Add(n))
                    .await
                    .map_err(|e| CounterError::Downstream(e.to_string()))?;
                Ok(Effect::persist(CounterEvent::Added(n)).reply(self.total + n))
            }
            CounterCmd::Befriend(friend) => {
                Ok(Effect::persist(CounterEvent::Befriended(friend)).reply(self.total))
            }
            CounterCmd::AskFriend | CounterCmd::Relay => {
                let friend = self.friend.clone().ok_or(CounterError::NoFriend)?;
                let inner = match cmd {
                    CounterCmd::Relay => CounterCmd::AskFriend,
                    _ => CounterCmd::Get,
                };
                ctx.ask(&friend, inner)
                    .await
                    .map(Effect::reply)
                    .map_err(|e| CounterError::Downstream(e.to_string()))
            }
            CounterCmd::Digest => Ok(Effect::reply(digest(self))),
        }
    }
}

impl Behavior for Counter {
    fn apply(&mut self, event: &CounterEvent) {
        APPLIED.fetch_add(1, Ordering::Relaxed);
        self.events += 1;
        match event {
            CounterEvent::Added(n) if *n == APPLY_PANICS_ON => {
                panic!("apply panicked on purpose")
            }
            CounterEvent::Added(n) => self.total += n,
            CounterEvent::Befriended(friend) => self.friend = Some(friend.clone()),
        }
    }
}

/// FNV-1a over the named encoding of `value`.
pub fn digest<T: Serialize>(value: &T) -> u64 {
    let bytes = rmp_serde::to_vec_named(value).expect("state encodes");
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// A snapshotting variant of the counter (every 10 events).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize, EventSourcedActor)]
#[actor(kind = "tally", command = CounterCmd, event = CounterEvent, reply = u64,
        error = CounterError, snapshot_every = 10)]
pub struct Tally {
    pub total: u64,
    pub events: u64,
}

impl Handle<CounterCmd> for Tally {
    async fn handle(
        &self,
        cmd: CounterCmd,
        _ctx: &mut Ctx<Self>,
    ) -> Result<Effect<Self>, CounterError> {
        match cmd {
            CounterCmd::Add(n) => Ok(Effect::persist(CounterEvent::Added(n)).reply(self.total + n)),
            CounterCmd::Get => Ok(Effect::reply(self.total)),
            CounterCmd::Digest => Ok(Effect::reply(digest(self))),
            _ => Err(CounterError::Refused),
        }
    }
}

impl Behavior for Tally {
    fn apply(&mut self, event: &CounterEvent) {
        self.events += 1;
        if let CounterEvent::Added(n) = event {
            self.total += n;
        }
    }
}

/// A runtime on a fresh in-memory store with both test actors registered.
pub async fn memory_runtime(namespace: &str) -> Runtime {
    Runtime::builder()
        .namespace(namespace)
        .register::<Counter>()
        .register::<Tally>()
        .memory_store()
        .start()
        .await
        .expect("runtime starts")
}

/// The versions of every event stored for `actor`, in order (gapless history: `1..=n`).
pub async fn versions(rt: &Runtime, actor: &ActorRef<Counter>) -> Vec<u64> {
    rt.event_store()
        .read(actor.key(), 1)
        .await
        .expect("history reads")
        .iter()
        .map(|e| e.version)
        .collect()
}

/// Keeps an `Arc` alive for the duration of a test (for fixtures that own a temp dir).
pub struct Keep(pub Vec<Arc<dyn std::any::Any + Send + Sync>>);
