//! Workflows across actors on one node: durable effects applied exactly once (also after a
//! crash and far outside the dedup window), compensations, reminders (fire once, cancel, fire
//! after being due while the node was down), and deadlock cycles of any length refused quickly
//! with no false positive on acyclic traffic.
//!
//! A "crash" here is the end of the tokio runtime that ran a node: every task of it (actors,
//! pumps, the scheduler) stops at once, nothing is snapshotted or flushed; the memory store,
//! shared with the next node, keeps exactly what was committed.

mod common;

#[path = "../examples/shared/account.rs"]
mod account;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use account::{
    Account, AccountError, Balance, CancelPayment, Deposit, Open, SchedulePayment, Transfer,
};
use aether::prelude::*;
use aether::store::{EventStore, MemoryStore};
use aether::wire::CommitRecord;
use aether::{ActorKey, RetrySafety, Runtime};
use common::link::{Link, LinkCmd, assert_cycle_refused};
use common::*;

/// A tokio runtime standing for one node (dropped: the node crashed).
fn node_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn bank_on(store: &MemoryStore, namespace: &str, window: usize) -> Runtime {
    Runtime::builder()
        .namespace(namespace)
        .register::<Account>()
        .register::<Counter>()
        .dedup_window(window)
        .store(Arc::new(store.clone()), Arc::new(store.clone()))
        .start()
        .await
        .expect("runtime")
}

async fn open(rt: &Runtime, id: &str, funds: u64) -> ActorRef<Account> {
    let a = rt.actor::<Account>(id).expect("id");
    a.ask(Open { owner: id.into() }).await.expect("open");
    if funds > 0 {
        a.ask(Deposit(funds)).await.expect("deposit");
    }
    a
}

async fn history(store: &MemoryStore, actor: &ActorKey) -> Vec<CommitRecord> {
    let report = store.read_with_errors(actor, 1).await.expect("history");
    assert!(report.corrupt.is_empty());
    report.commits
}

fn types(commits: &[CommitRecord]) -> Vec<String> {
    commits
        .iter()
        .flat_map(|c| c.events.iter().map(|e| e.event_type.clone()))
        .collect()
}

fn count(commits: &[CommitRecord], event_type: &str) -> usize {
    types(commits).iter().filter(|t| *t == event_type).count()
}

async fn balance(a: &ActorRef<Account>) -> u64 {
    a.ask(Balance).await.expect("balance")
}

#[tokio::test]
async fn a_transfer_is_a_debit_and_a_durable_credit_traced_by_causation() {
    let store = MemoryStore::new(ns("wf-transfer"));
    let rt = bank_on(&store, "wf-transfer", 64).await;
    let a = open(&rt, "a", 100).await;
    let b = open(&rt, "b", 0).await;
    let debit = CommandId::random();
    let after = a
        .ask_with(
            Transfer {
                to: b.clone(),
                amount: 40,
            },
            AskOptions::default().command_id(debit),
        )
        .await
        .expect("transfer");
    assert_eq!(after, 60);
    assert!(rt.drain_effects(Duration::from_secs(5)).await);
    assert_eq!(balance(&b).await, 40);
    // The credit names the debit as its cause; the debit's commit holds the effect.
    let payer = history(&store, a.key()).await;
    let out = payer
        .iter()
        .find(|c| c.command_id == debit)
        .expect("the debit");
    assert_eq!(out.outbox.len(), 1);
    assert_eq!(&out.outbox[0].target, b.key());
    assert_eq!(
        out.format, 2,
        "durable effects, no versioned event: format 2"
    );
    let payee = history(&store, b.key()).await;
    let credits: Vec<&CommitRecord> = payee
        .iter()
        .filter(|c| c.causation_id == Some(debit))
        .collect();
    assert_eq!(credits.len(), 1, "exactly one credit for the debit");
    assert_eq!(credits[0].events[0].event_type, "TransferredIn");
    let delivery = credits[0].delivery.as_ref().expect("delivery recorded");
    assert_eq!(&delivery.from, a.key());
    assert_eq!(delivery.seq, out.outbox[0].seq);
    // The next commit of the payer records the settlement.
    a.ask(Deposit(1)).await.expect("deposit");
    let payer = history(&store, a.key()).await;
    assert_eq!(
        payer.last().expect("commit").settled,
        vec![out.outbox[0].seq]
    );
    assert_eq!(rt.stats().effects_applied, 1);
    assert_eq!(rt.stats().effects_settled, 1);
}

#[tokio::test]
async fn a_refused_credit_is_recorded_and_compensated() {
    let store = MemoryStore::new(ns("wf-refund"));
    let rt = bank_on(&store, "wf-refund", 64).await;
    let a = open(&rt, "a", 100).await;
    let closed = rt.actor::<Account>("closed").expect("id");
    a.ask(Transfer {
        to: closed.clone(),
        amount: 30,
    })
    .await
    .expect("the debit is decided");
    poll_until(Duration::from_secs(5), "the refund", || {
        let a = a.clone();
        async move { balance(&a).await == 100 }
    })
    .await;
    let payee = history(&store, closed.key()).await;
    assert_eq!(
        types(&payee),
        vec!["aether.Rejected"],
        "the rejection is stored"
    );
    assert_eq!(
        payee[0].outbox.len(),
        1,
        "with the compensation for the payer"
    );
    let payer = history(&store, a.key()).await;
    assert_eq!(count(&payer, "TransferredOut"), 1);
    assert_eq!(count(&payer, "Refunded"), 1);
    // Bookkeeping events never reach `apply` nor projections' envelopes.
    assert_eq!(
        store.read(closed.key(), 1).await.expect("events").len(),
        0,
        "no user event"
    );
    assert_eq!(rt.stats().effects_rejected, 1);
}

#[test]
fn an_effect_redelivered_after_more_than_the_dedup_window_applies_once() {
    let store = MemoryStore::new(ns("wf-once"));
    const WINDOW: usize = 8;
    // Node 1 transfers, the credit is applied, and the node crashes before the payer's next
    // commit records the settlement: the effect is still pending in the payer's history.
    let node1 = node_runtime();
    node1.block_on(async {
        let rt = bank_on(&store, "wf-once", WINDOW).await;
        let a = open(&rt, "a", 100).await;
        let b = open(&rt, "b", 0).await;
        a.ask(Transfer {
            to: b.clone(),
            amount: 10,
        })
        .await
        .expect("transfer");
        assert!(rt.drain_effects(Duration::from_secs(5)).await);
        assert_eq!(balance(&b).await, 10);
        std::mem::forget(rt);
    });
    node1.shutdown_background();
    // Node 2: the payee handles many more commands than its dedup window remembers, then the
    // payer is woken by the scheduler and delivers the credit again.
    let node2 = node_runtime();
    node2.block_on(async {
        let rt = bank_on(&store, "wf-once", WINDOW).await;
        let b = rt.actor::<Account>("b").expect("id");
        for _ in 0..(WINDOW * 3) {
            b.ask(Deposit(1)).await.expect("deposit");
        }
        poll_until(Duration::from_secs(10), "the redelivery", || {
            let duplicates = rt.stats().effects_duplicates;
            async move { duplicates >= 1 }
        })
        .await;
        assert_eq!(balance(&b).await, 10 + (WINDOW * 3) as u64, "credited once");
        let payee = history(&store, b.key()).await;
        assert_eq!(count(&payee, "TransferredIn"), 1);
        assert_eq!(
            rt.stats().effects_applied,
            0,
            "nothing applied a second time"
        );
        rt.shutdown().await.expect("shutdown");
    });
}

#[test]
fn a_sender_crashed_right_after_its_commit_delivers_after_reactivation() {
    let store = MemoryStore::new(ns("wf-crash"));
    let debit = CommandId::random();
    // Node 1 cannot deliver: it does not host the receiver's kind (the delivery fails and is
    // retried), so the node crashes with the effect committed and undelivered.
    let node1 = node_runtime();
    node1.block_on(async {
        let rt = Runtime::builder()
            .namespace("wf-crash")
            .register::<Payer>()
            .store(Arc::new(store.clone()), Arc::new(store.clone()))
            .start()
            .await
            .expect("runtime");
        let payer = rt.actor::<Payer>("p").expect("id");
        let to: ActorRef<Counter> =
            ActorRef::new(ns("wf-crash"), aether::ActorId::new("c").expect("id")).expect("ref");
        payer
            .ask_with(
                PayerCmd::Pay { to, n: 7 },
                AskOptions::default().command_id(debit),
            )
            .await
            .expect("committed");
        poll_until(Duration::from_secs(5), "a failed delivery", || {
            let retries = rt.stats().effects_retries;
            async move { retries >= 1 }
        })
        .await;
        std::mem::forget(rt);
    });
    node1.shutdown_background();
    let node2 = node_runtime();
    node2.block_on(async {
        let rt = Runtime::builder()
            .namespace("wf-crash")
            .register::<Payer>()
            .register::<Counter>()
            .store(Arc::new(store.clone()), Arc::new(store.clone()))
            .start()
            .await
            .expect("runtime");
        let counter = rt.actor::<Counter>("c").expect("id");
        // Nobody asks the payer: the wake-up scheduler brings it back to deliver.
        poll_until(
            Duration::from_secs(10),
            "the delivery after the crash",
            || {
                let counter = counter.clone();
                async move { counter.ask(CounterCmd::Get).await.expect("get") == 7 }
            },
        )
        .await;
        let commits = history(&store, counter.key()).await;
        assert_eq!(commits.len(), 1);
        assert_eq!(commits[0].causation_id, Some(debit));
        rt.shutdown().await.expect("shutdown");
    });
}

#[tokio::test]
async fn a_reminder_fires_once_and_a_cancelled_one_never() {
    let store = MemoryStore::new(ns("wf-remind"));
    let rt = bank_on(&store, "wf-remind", 64).await;
    let a = open(&rt, "a", 100).await;
    let b = open(&rt, "b", 0).await;
    let pay = |name: &str, amount, delay_ms| SchedulePayment {
        name: name.into(),
        to: b.clone(),
        amount,
        delay_ms,
    };
    a.ask(pay("rent", 10, 100)).await.expect("scheduled");
    a.ask(pay("gift", 50, 100)).await.expect("scheduled");
    a.ask(CancelPayment {
        name: "gift".into(),
    })
    .await
    .expect("cancelled");
    // The same name again replaces the pending reminder: "late" fires once, at 150 ms.
    a.ask(pay("late", 1, 5_000)).await.expect("scheduled");
    a.ask(pay("late", 2, 150)).await.expect("replaced");
    poll_until(
        Duration::from_secs(5),
        "the rent and the late payment",
        || {
            let b = b.clone();
            async move { balance(&b).await == 12 }
        },
    )
    .await;
    // Long enough for a wrongly kept reminder to fire too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(rt.drain_effects(Duration::from_secs(5)).await);
    assert_eq!(
        balance(&b).await,
        12,
        "each reminder fired once, the cancelled one never"
    );
    assert_eq!(balance(&a).await, 88);
    let payer = history(&store, a.key()).await;
    assert_eq!(count(&payer, "PaymentMade"), 2);
    let cancelled = a
        .ask(CancelPayment {
            name: "rent".into(),
        })
        .await;
    assert!(
        matches!(
            cancelled,
            Err(AskError::Rejected(AccountError::NoSuchPayment(_)))
        ),
        "a fired reminder is no longer pending: {cancelled:?}"
    );
}

#[test]
fn a_reminder_due_while_the_node_was_down_fires_on_recovery() {
    let store = MemoryStore::new(ns("wf-down"));
    let node1 = node_runtime();
    node1.block_on(async {
        let rt = bank_on(&store, "wf-down", 64).await;
        let a = open(&rt, "a", 100).await;
        let b = open(&rt, "b", 0).await;
        a.ask(SchedulePayment {
            name: "rent".into(),
            to: b.clone(),
            amount: 25,
            delay_ms: 200,
        })
        .await
        .expect("scheduled");
        std::mem::forget(rt);
    });
    node1.shutdown_background();
    // Down past the due time.
    std::thread::sleep(Duration::from_millis(500));
    let node2 = node_runtime();
    node2.block_on(async {
        let rt = bank_on(&store, "wf-down", 64).await;
        let b = rt.actor::<Account>("b").expect("id");
        poll_until(Duration::from_secs(10), "the overdue payment", || {
            let b = b.clone();
            async move { balance(&b).await == 25 }
        })
        .await;
        let a = rt.actor::<Account>("a").expect("id");
        assert_eq!(count(&history(&store, a.key()).await, "PaymentMade"), 1);
        rt.shutdown().await.expect("shutdown");
    });
}

// ---------------------------------------------------------------------------------------------
// A payer that credits a counter by durable effect (for the crash test).

#[derive(Debug, Clone, Serialize, Deserialize)]
enum PayerCmd {
    Pay { to: ActorRef<Counter>, n: u64 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum PayerEvent {
    Paid(u64),
}

#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
#[error("never")]
struct Never;

#[derive(Debug, Default, Serialize, Deserialize, EventSourcedActor)]
#[actor(kind = "payer", command = PayerCmd, event = PayerEvent, reply = u64, error = Never)]
struct Payer {
    paid: u64,
}

impl Handle<PayerCmd> for Payer {
    async fn handle(&self, cmd: PayerCmd, _ctx: &mut Ctx<Self>) -> Result<Effect<Self>, Never> {
        match cmd {
            PayerCmd::Pay { to, n } => Ok(Effect::persist(PayerEvent::Paid(n))
                .send(&to, CounterCmd::Add(n))
                .reply(self.paid + n)),
        }
    }
}

impl Behavior for Payer {
    fn apply(&mut self, event: &PayerEvent) {
        match event {
            PayerEvent::Paid(n) => self.paid += n,
        }
    }
}

async fn link_runtime(namespace: &str) -> Runtime {
    Runtime::builder()
        .namespace(namespace)
        .register::<Link>()
        .memory_store()
        .start()
        .await
        .expect("runtime")
}

async fn total_pings(rt: &Runtime, prefix: &str, n: usize) -> u64 {
    let store = rt.event_store();
    let mut total = 0;
    for i in 0..n {
        let link = rt.actor::<Link>(format!("{prefix}-{i}")).expect("id");
        total += store.read(link.key(), 1).await.expect("read").len() as u64;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cycles_of_three_and_five_on_one_node_are_refused_quickly() {
    let rt = link_runtime("wf-cycle").await;
    for n in [3usize, 5] {
        let prefix = format!("c{n}");
        let links: Vec<ActorRef<Link>> = (0..n)
            .map(|i| rt.actor::<Link>(format!("{prefix}-{i}")).expect("id"))
            .collect();
        assert_cycle_refused(&links, async || total_pings(&rt, &prefix, n).await).await;
    }
    assert!(rt.stats().deadlocks_refused >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_false_deadlock_in_ten_thousand_acyclic_asks() {
    let rt = link_runtime("wf-acyclic").await;
    const LINKS: usize = 24;
    const ASKS: u64 = 10_000;
    let links: Arc<Vec<ActorRef<Link>>> = Arc::new(
        (0..LINKS)
            .map(|i| rt.actor::<Link>(format!("l-{i}")).expect("id"))
            .collect(),
    );
    let done = Arc::new(AtomicU64::new(0));
    let deadlocks = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..48u64)
        .map(|w| {
            let (links, done, deadlocks) = (
                Arc::clone(&links),
                Arc::clone(&done),
                Arc::clone(&deadlocks),
            );
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(w + 1);
                while done.fetch_add(1, Ordering::Relaxed) < ASKS {
                    // Waits only ever go from a lower to a higher link: no cycle can form, but
                    // queues do (48 callers, 24 links, holds of up to 2 ms), so probes fly.
                    let a = rng.usize(..LINKS - 1);
                    let b = a + 1 + rng.usize(..LINKS - 1 - a);
                    let cmd = LinkCmd::Hold {
                        next: links[b].clone(),
                        wait_ms: rng.u64(0..3),
                    };
                    let answer = links[a]
                        .ask_with(cmd, AskOptions::default().timeout(Duration::from_secs(30)))
                        .await
                        .expect("answered");
                    if answer == "deadlock" {
                        deadlocks.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("worker");
    }
    assert_eq!(deadlocks.load(Ordering::Relaxed), 0, "false deadlocks");
    assert_eq!(rt.stats().deadlocks_refused, 0);
}

// ---------------------------------------------------------------------------------------------
// `ActorRef::ask` inside a handler goes through the turn; a turn that changed others and then
// failed says so.

static PANIC_ONCE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

#[derive(Debug, Clone, Serialize, Deserialize)]
enum FwdCmd {
    /// Asks `target` to add `n` through the plain `ActorRef` (not `ctx`), then records it.
    Via {
        target: ActorRef<Counter>,
        n: u64,
    },
    /// Like `Via`, but the handler panics after the ask the first time it runs.
    ViaThenPanicOnce {
        target: ActorRef<Counter>,
        n: u64,
    },
    /// Asks itself through a plain `ActorRef`.
    AskMyself {
        me: ActorRef<Forwarder>,
    },
    Get,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum FwdEvent {
    Forwarded(u64),
}

#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
enum FwdError {
    #[error("downstream: {0}")]
    Downstream(String),
}

#[derive(Debug, Default, Serialize, Deserialize, EventSourcedActor)]
#[actor(kind = "fwd", command = FwdCmd, event = FwdEvent, reply = u64, error = FwdError)]
struct Forwarder {
    total: u64,
}

impl Handle<FwdCmd> for Forwarder {
    async fn handle(&self, cmd: FwdCmd, _ctx: &mut Ctx<Self>) -> Result<Effect<Self>, FwdError> {
        let down = |e: AskError<CounterError>| FwdError::Downstream(e.to_string());
        match cmd {
            FwdCmd::Via { target, n } => {
                target.ask(CounterCmd::Add(n)).await.map_err(down)?;
                Ok(Effect::persist(FwdEvent::Forwarded(n)).reply(self.total + n))
            }
            FwdCmd::ViaThenPanicOnce { target, n } => {
                target.ask(CounterCmd::Add(n)).await.map_err(down)?;
                if PANIC_ONCE.swap(false, Ordering::SeqCst) {
                    panic!("after the child ask, on purpose");
                }
                Ok(Effect::persist(FwdEvent::Forwarded(n)).reply(self.total + n))
            }
            FwdCmd::AskMyself { me } => match me.ask(FwdCmd::Get).await {
                Err(AskError::Failed(CallError::CallCycle { chain })) => {
                    Err(FwdError::Downstream(chain))
                }
                other => Err(FwdError::Downstream(format!("expected a cycle: {other:?}"))),
            },
            FwdCmd::Get => Ok(Effect::reply(self.total)),
        }
    }
}

impl Behavior for Forwarder {
    fn apply(&mut self, event: &FwdEvent) {
        match event {
            FwdEvent::Forwarded(n) => self.total += n,
        }
    }
}

async fn forwarder_runtime(namespace: &str) -> (Runtime, MemoryStore) {
    let store = MemoryStore::new(ns(namespace));
    let rt = Runtime::builder()
        .namespace(namespace)
        .register::<Forwarder>()
        .register::<Counter>()
        .store(Arc::new(store.clone()), Arc::new(store.clone()))
        .start()
        .await
        .expect("runtime");
    (rt, store)
}

#[tokio::test]
async fn an_actor_ref_asked_inside_a_handler_is_a_child_of_the_turn() {
    let (rt, store) = forwarder_runtime("wf-child").await;
    let fwd = rt.actor::<Forwarder>("f").expect("id");
    let counter = rt.actor::<Counter>("c").expect("id");
    let id = CommandId::random();
    fwd.ask_with(
        FwdCmd::Via {
            target: counter.clone(),
            n: 3,
        },
        AskOptions::default().command_id(id),
    )
    .await
    .expect("forwarded");
    let child = history(&store, counter.key()).await;
    assert_eq!(
        child[0].command_id,
        id.derive(0),
        "a derived id, as ctx.ask"
    );
    assert_eq!(child[0].causation_id, Some(id));
    // The call chain travels too: asking itself is a cycle, refused at once.
    let started = Instant::now();
    let err = fwd
        .ask(FwdCmd::AskMyself { me: fwd.clone() })
        .await
        .expect_err("a cycle");
    assert!(err.to_string().contains("fwd/f -> "), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "not at the deadline"
    );
}

#[tokio::test]
async fn a_turn_that_asked_others_and_failed_reports_an_unknown_outcome() {
    let (rt, store) = forwarder_runtime("wf-partial").await;
    let fwd = rt.actor::<Forwarder>("f").expect("id");
    let counter = rt.actor::<Counter>("c").expect("id");
    let id = CommandId::random();
    let cmd = FwdCmd::ViaThenPanicOnce {
        target: counter.clone(),
        n: 5,
    };
    let options = AskOptions::default().command_id(id);
    let err = fwd
        .ask_with(cmd.clone(), options.clone())
        .await
        .expect_err("the handler panicked after its child ask");
    assert!(
        matches!(err, AskError::Failed(CallError::OutcomeUnknown { command_id, .. }) if command_id == id),
        "{err:?}"
    );
    assert_eq!(err.retry_safety(), RetrySafety::SameCommandId);
    // The child was applied; a retry with the same id finds it and applies the rest.
    assert_eq!(counter.ask(CounterCmd::Get).await.expect("get"), 5);
    assert_eq!(fwd.ask_with(cmd, options).await.expect("retried"), 5);
    assert_eq!(
        counter.ask(CounterCmd::Get).await.expect("get"),
        5,
        "the child once"
    );
    assert_eq!(history(&store, fwd.key()).await.len(), 1);
}
