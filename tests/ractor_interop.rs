//! Aether inside ractor applications: a user's ractor actor calls Aether actors from its
//! handler, and a runtime started under a user's ractor supervisor reports to it and stops
//! serving when that supervisor stops.

use std::time::Duration;

use aether::prelude::*;
use aether::ractor::{self, Actor, ActorProcessingErr, RpcReplyPort, SupervisionEvent};
use aether::{ActorId, Namespace};
use tokio::sync::mpsc;

#[path = "../examples/shared/account.rs"]
mod account;

use account::{Account, AccountError, Balance, Deposit, Open, Withdraw};

/// A user's ractor actor whose handler asks Aether accounts.
struct Teller;

enum TellerMsg {
    Deposit(String, u64, RpcReplyPort<Result<u64, String>>),
    Withdraw(String, u64, RpcReplyPort<Result<u64, String>>),
}

impl Actor for Teller {
    type Msg = TellerMsg;
    type State = Namespace;
    type Arguments = Namespace;

    async fn pre_start(
        &self,
        _: ractor::ActorRef<TellerMsg>,
        ns: Namespace,
    ) -> Result<Namespace, ActorProcessingErr> {
        Ok(ns)
    }

    async fn handle(
        &self,
        _: ractor::ActorRef<TellerMsg>,
        msg: TellerMsg,
        ns: &mut Namespace,
    ) -> Result<(), ActorProcessingErr> {
        let account = |id: &str| {
            ActorRef::<Account>::new(ns.clone(), ActorId::new(id).expect("id")).expect("ref")
        };
        match msg {
            TellerMsg::Deposit(id, amount, reply) => {
                let answer = account(&id).ask(Deposit(amount)).await;
                let _ = reply.send(answer.map_err(|e| e.to_string()));
            }
            TellerMsg::Withdraw(id, amount, reply) => {
                let answer = account(&id).ask(Withdraw(amount)).await;
                let answer = match answer {
                    Err(AskError::Rejected(AccountError::InsufficientFunds { .. })) => {
                        Err("insufficient funds".to_owned())
                    }
                    other => other.map_err(|e| e.to_string()),
                };
                let _ = reply.send(answer);
            }
        }
        Ok(())
    }
}

/// A user's supervisor that reports what it is told.
struct Watcher;

impl Actor for Watcher {
    type Msg = ();
    type State = mpsc::UnboundedSender<SupervisionEvent>;
    type Arguments = mpsc::UnboundedSender<SupervisionEvent>;

    async fn pre_start(
        &self,
        _: ractor::ActorRef<()>,
        events: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(events)
    }

    async fn handle_supervisor_evt(
        &self,
        _: ractor::ActorRef<()>,
        event: SupervisionEvent,
        events: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _ = events.send(event);
        Ok(())
    }
}

async fn open(rt: &Runtime, id: &str) {
    rt.actor::<Account>(id)
        .expect("ref")
        .ask(Open { owner: id.into() })
        .await
        .expect("opened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ractor_actor_calls_aether_actors_from_its_handler() {
    let rt = Runtime::builder()
        .namespace("interop-calls")
        .register::<Account>()
        .memory_store()
        .start()
        .await
        .expect("runtime");
    for id in ["alice", "bob"] {
        open(&rt, id).await;
    }
    let (teller, _) = Actor::spawn(None, Teller, rt.namespace().clone())
        .await
        .expect("teller");
    // Calls from several tasks at once; the teller serves them one at a time, each awaiting an
    // Aether ask inside its handler.
    let calls: Vec<_> = (0..20u64)
        .map(|i| {
            let teller = teller.clone();
            tokio::spawn(async move {
                let id = if i % 2 == 0 { "alice" } else { "bob" };
                ractor::call!(teller, TellerMsg::Deposit, id.to_owned(), i + 1)
                    .expect("call")
                    .expect("deposit")
            })
        })
        .collect();
    for call in calls {
        call.await.expect("task");
    }
    let alice: u64 = (0..20u64).filter(|i| i % 2 == 0).map(|i| i + 1).sum();
    let bob: u64 = (0..20u64).filter(|i| i % 2 == 1).map(|i| i + 1).sum();
    let balance = |id: &str| rt.actor::<Account>(id).expect("ref");
    assert_eq!(balance("alice").ask(Balance).await.ok(), Some(alice));
    assert_eq!(balance("bob").ask(Balance).await.ok(), Some(bob));
    // A rejection comes back through the ractor reply as the handler chose to map it.
    let refused =
        ractor::call!(teller, TellerMsg::Withdraw, "bob".to_owned(), bob + 1).expect("call");
    assert_eq!(refused, Err("insufficient funds".to_owned()));
    let left = ractor::call!(teller, TellerMsg::Withdraw, "bob".to_owned(), bob).expect("call");
    assert_eq!(left, Ok(0));
    teller.stop(None);
    rt.shutdown().await.expect("shutdown");
}

/// The next supervision event, within a deadline.
async fn next(events: &mut mpsc::UnboundedReceiver<SupervisionEvent>) -> SupervisionEvent {
    tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("a supervision event within 10 s")
        .expect("the watcher is alive")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_under_a_user_supervisor_reports_its_start_and_its_shutdown() {
    let (tx, mut events) = mpsc::unbounded_channel();
    let (watcher, _) = Actor::spawn(None, Watcher, tx).await.expect("watcher");
    let rt = Runtime::builder()
        .namespace("interop-report")
        .register::<Account>()
        .memory_store()
        .supervised_by(watcher.get_cell())
        .start()
        .await
        .expect("runtime");
    let root = rt.root().get_id();
    match next(&mut events).await {
        SupervisionEvent::ActorStarted(child) => assert_eq!(child.get_id(), root),
        other => panic!("expected ActorStarted, got {other}"),
    }
    assert!(
        watcher.get_children().iter().any(|c| c.get_id() == root),
        "the runtime's root is a child of the user's supervisor"
    );
    // A user actor linked under the runtime's root stops with the runtime.
    let (linked, linked_done) =
        Actor::spawn_linked(None, Teller, rt.namespace().clone(), rt.root().clone())
            .await
            .expect("linked");
    open(&rt, "carol").await;
    rt.shutdown().await.expect("shutdown");
    match next(&mut events).await {
        SupervisionEvent::ActorTerminated(child, _, reason) => {
            assert_eq!(child.get_id(), root);
            assert_eq!(reason.as_deref(), Some("runtime shut down"));
        }
        other => panic!("expected ActorTerminated, got {other}"),
    }
    tokio::time::timeout(Duration::from_secs(5), linked_done)
        .await
        .expect("the linked actor stops with the runtime")
        .expect("join");
    assert_eq!(linked.get_status(), ractor::ActorStatus::Stopped);
    watcher.stop(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_user_supervisor_stops_the_runtime_stops_serving_and_keeps_its_data() {
    let dir = tempfile::tempdir().expect("dir");
    let (tx, _events) = mpsc::unbounded_channel();
    let (watcher, watcher_done) = Actor::spawn(None, Watcher, tx).await.expect("watcher");
    let rt = Runtime::builder()
        .namespace("interop-stop")
        .register::<Account>()
        .data_dir(dir.path())
        .supervised_by(watcher.get_cell())
        .start()
        .await
        .expect("runtime");
    open(&rt, "dave").await;
    let dave = rt.actor::<Account>("dave").expect("ref");
    assert_eq!(dave.ask(Deposit(42)).await.ok(), Some(42));
    assert_eq!(rt.resident_count(), 1);

    // The supervisor stops; ractor stops its children, the runtime's root among them.
    watcher.stop(None);
    watcher_done.await.expect("watcher stopped");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match dave.ask(Balance).await {
            Err(AskError::Failed(CallError::Shutdown)) => break,
            other => assert!(
                tokio::time::Instant::now() < deadline,
                "still serving 10 s after the supervisor stopped: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while rt.resident_count() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "actors still resident 10 s after the supervisor stopped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rt.shutdown()
        .await
        .expect("shutdown after the root stopped");

    // Nothing was lost: a new runtime on the same data finds the balance.
    let rt = Runtime::builder()
        .namespace("interop-stop")
        .register::<Account>()
        .data_dir(dir.path())
        .start()
        .await
        .expect("runtime again");
    let dave = rt.actor::<Account>("dave").expect("ref");
    assert_eq!(dave.ask(Balance).await.ok(), Some(42));
    rt.shutdown().await.expect("shutdown");
}
