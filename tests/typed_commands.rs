//! Typed commands: each command type declares its reply type, replies can be read from the
//! folded state, and the wire carries both tagged with the command's name.

#[path = "../examples/shared/account.rs"]
mod account;

use account::{Account, AccountError, Balance, Deposit, Open, Withdraw};
use aether::prelude::*;

async fn runtime(namespace: &str) -> Runtime {
    Runtime::builder()
        .namespace(namespace)
        .register::<Account>()
        .memory_store()
        .start()
        .await
        .expect("start")
}

#[tokio::test]
async fn each_command_answers_with_its_own_type_read_from_the_new_state() {
    let rt = runtime("typed-replies").await;
    let alice = rt.actor::<Account>("alice").unwrap();
    // `Open` answers `()`, `Deposit` and `Withdraw` the balance after them (`reply_with`).
    let opened: Result<(), _> = alice
        .ask(Open {
            owner: "Alice".into(),
        })
        .await;
    assert!(opened.is_ok(), "{opened:?}");
    let after_deposit: u64 = alice.ask(Deposit(70)).await.unwrap();
    assert_eq!(after_deposit, 70);
    assert_eq!(alice.ask(Deposit(5)).await.unwrap(), 75);
    assert_eq!(alice.ask(Withdraw(25)).await.unwrap(), 50);
    assert_eq!(alice.ask(Balance).await.unwrap(), 50);
    // A rejection folds nothing: the state read by the next reply is unchanged.
    let refused = alice.ask(Withdraw(1_000)).await.unwrap_err();
    assert!(
        matches!(
            refused.rejection(),
            Some(AccountError::InsufficientFunds {
                balance: 50,
                needed: 1_000
            })
        ),
        "{refused:?}"
    );
    assert_eq!(alice.ask(Balance).await.unwrap(), 50);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_retried_command_gets_the_stored_reply_read_from_the_state_of_its_time() {
    let rt = runtime("typed-retry").await;
    let bob = rt.actor::<Account>("bob").unwrap();
    bob.ask(Open {
        owner: "Bob".into(),
    })
    .await
    .unwrap();
    let id = CommandId::random();
    let first = bob
        .ask_with(Deposit(10), AskOptions::default().command_id(id))
        .await
        .unwrap();
    assert_eq!(first, 10);
    bob.ask(Deposit(5)).await.unwrap();
    // The retry is not applied again, and its reply is the one stored with the commit (10),
    // not one computed from today's state (15).
    let retried = bob
        .ask_with(Deposit(10), AskOptions::default().command_id(id))
        .await
        .unwrap();
    assert_eq!(retried, 10);
    assert_eq!(bob.ask(Balance).await.unwrap(), 15);
    // The same after a restart of the activation (the reply comes from the store).
    assert!(rt.passivate(&bob).await);
    let again = bob
        .ask_with(Deposit(10), AskOptions::default().command_id(id))
        .await
        .unwrap();
    assert_eq!(again, 10);
    assert_eq!(bob.ask(Balance).await.unwrap(), 15);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_command_id_reused_for_another_command_is_a_typed_error() {
    let rt = runtime("typed-reuse").await;
    let carol = rt.actor::<Account>("carol").unwrap();
    carol.ask(Open { owner: "C".into() }).await.unwrap();
    let id = CommandId::random();
    carol
        .ask_with(Deposit(3), AskOptions::default().command_id(id))
        .await
        .unwrap();
    // The id names the deposit: its stored reply answers `Deposit`, not `Open`.
    let err = carol
        .ask_with(
            Open { owner: "C".into() },
            AskOptions::default().command_id(id),
        )
        .await
        .unwrap_err();
    match &err {
        AskError::Failed(CallError::Codec { what, reason }) => {
            assert_eq!(*what, "reply");
            assert!(reason.contains("Open"), "{reason}");
        }
        other => panic!("expected a typed reply error, got {other:?}"),
    }
    // Nothing was applied twice.
    assert_eq!(carol.ask(Balance).await.unwrap(), 3);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn commands_and_replies_travel_tagged_with_the_command_name() {
    use aether::Command;
    // What a raw client sends and gets back (docs/wire.md): `{"Deposit": 5}` and `{"Deposit": 7}`.
    let wire = rmp_serde::to_vec_named(&Command::<Account>::into_command(Deposit(5))).unwrap();
    let expected =
        rmp_serde::to_vec_named(&std::collections::BTreeMap::from([("Deposit", 5u64)])).unwrap();
    assert_eq!(wire, expected);
    let reply =
        rmp_serde::to_vec_named(&std::collections::BTreeMap::from([("Deposit", 7u64)])).unwrap();
    let decoded: account::AccountReply = rmp_serde::from_slice(&reply).unwrap();
    assert_eq!(<Deposit as Command<Account>>::from_reply(decoded), Some(7));
    let decoded: account::AccountReply = rmp_serde::from_slice(&reply).unwrap();
    assert_eq!(<Balance as Command<Account>>::from_reply(decoded), None);
}

#[tokio::test]
async fn a_reply_read_from_the_state_never_leaves_a_failed_commit_folded_in() {
    use aether::store::NewCommit;
    use aether::wire::EventData;
    let rt = runtime("typed-conflict").await;
    let dave = rt.actor::<Account>("dave").unwrap();
    dave.ask(Open { owner: "D".into() }).await.unwrap();
    assert_eq!(dave.ask(Deposit(10)).await.unwrap(), 10);
    // Another writer appends behind the activation's back (a straggler of a handoff, say).
    let store = rt.event_store();
    let version = store.latest_version(dave.key()).await.unwrap();
    let foreign = NewCommit::new(
        CommandId::random(),
        vec![EventData {
            event_type: "Deposited".into(),
            payload: rmp_serde::to_vec_named(&account::AccountEvent::Deposited(100)).unwrap(),
            schema_version: 0,
        }],
    );
    store.append(dave.key(), version, foreign).await.unwrap();
    // This deposit folds its event to read the reply, then loses the race at the store: it
    // fails fast, and the fold it made is thrown away with a reload.
    let err = dave.ask(Deposit(1)).await.unwrap_err();
    assert!(
        matches!(err, AskError::Failed(CallError::VersionConflict { .. })),
        "expected a version conflict, got {err:?}"
    );
    assert_eq!(dave.ask(Balance).await.unwrap(), 110);
    assert_eq!(dave.ask(Deposit(1)).await.unwrap(), 111);
    rt.shutdown().await.unwrap();
}

/// An event store whose next append fails (armed by the test), like a NATS outage mid-turn.
struct FailNextAppend {
    inner: aether::store::MemoryStore,
    armed: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl aether::store::EventStore for FailNextAppend {
    fn namespace(&self) -> &aether::Namespace {
        self.inner.namespace()
    }
    async fn append(
        &self,
        actor: &aether::ActorKey,
        expected_version: u64,
        commit: aether::store::NewCommit,
    ) -> Result<aether::store::Appended, aether::StoreError> {
        if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Err(aether::StoreError::Unavailable("injected outage".into()));
        }
        self.inner.append(actor, expected_version, commit).await
    }
    async fn latest_version(&self, actor: &aether::ActorKey) -> Result<u64, aether::StoreError> {
        self.inner.latest_version(actor).await
    }
    async fn read_with_errors(
        &self,
        actor: &aether::ActorKey,
        from_version: u64,
    ) -> Result<aether::store::ReadReport, aether::StoreError> {
        self.inner.read_with_errors(actor, from_version).await
    }
}

/// A turn that reads its reply from the folded state, then fails to commit, leaves a state
/// that is not the store's: it must be neither served nor snapshotted. (Chaos runs found this:
/// a passivation right after such a turn saved the folded debit in a snapshot, and the money
/// it had not stored was gone from the balance for good.)
#[tokio::test]
async fn a_folded_turn_whose_commit_failed_is_never_served_or_snapshotted() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let memory = aether::store::MemoryStore::new(aether::Namespace::new("typed-outage").unwrap());
    let events = Arc::new(FailNextAppend {
        inner: memory.clone(),
        armed: AtomicBool::new(false),
    });
    let start = || {
        Runtime::builder()
            .namespace("typed-outage")
            .register::<Account>()
            .store(events.clone(), Arc::new(memory.clone()))
            .start()
    };
    let rt = start().await.unwrap();
    let erin = rt.actor::<Account>("erin").unwrap();
    erin.ask(Open { owner: "E".into() }).await.unwrap();
    assert_eq!(erin.ask(Deposit(50)).await.unwrap(), 50);
    // The withdrawal folds its event (to read the new balance), then the store fails it.
    events.armed.store(true, Ordering::SeqCst);
    let err = erin.ask(Withdraw(20)).await.unwrap_err();
    assert!(
        matches!(err, AskError::Failed(CallError::Unavailable { .. })),
        "{err:?}"
    );
    // Passivated right away: no snapshot of the folded state (it would be trusted later).
    assert!(rt.passivate(&erin).await);
    assert_eq!(erin.ask(Balance).await.unwrap(), 50);
    // Served from memory too, without a passivation in between.
    events.armed.store(true, Ordering::SeqCst);
    erin.ask(Withdraw(20)).await.unwrap_err();
    assert_eq!(erin.ask(Balance).await.unwrap(), 50);
    rt.shutdown().await.unwrap();
    // And after a restart, from whatever the store and its snapshots hold.
    let rt = start().await.unwrap();
    let erin = rt.actor::<Account>("erin").unwrap();
    assert_eq!(erin.ask(Balance).await.unwrap(), 50);
    assert_eq!(erin.ask(Withdraw(20)).await.unwrap(), 30);
    rt.shutdown().await.unwrap();
}

/// Durable effects stored by the earlier, single-enum form of the bank account (struct and
/// newtype variants of `AccountCmd`) decode as the typed commands that replaced them: a
/// pending credit written before the upgrade is still delivered after it.
#[test]
fn effects_stored_by_the_single_enum_account_still_decode() {
    #[derive(serde::Serialize)]
    enum OldAccountCmd {
        Deposit(u64),
        Credit { from: String, amount: u64 },
        Refund { to: String, amount: u64 },
    }
    let decode = |old: OldAccountCmd| -> account::AccountCommand {
        let bytes = rmp_serde::to_vec_named(&old).unwrap();
        rmp_serde::from_slice(&bytes).expect("an old command decodes")
    };
    assert!(matches!(
        decode(OldAccountCmd::Credit {
            from: "alice".into(),
            amount: 3
        }),
        account::AccountCommand::Credit(account::Credit { ref from, amount: 3 }) if from == "alice"
    ));
    assert!(matches!(
        decode(OldAccountCmd::Refund {
            to: "bob".into(),
            amount: 4
        }),
        account::AccountCommand::Refund(account::Refund { amount: 4, .. })
    ));
    assert!(matches!(
        decode(OldAccountCmd::Deposit(5)),
        account::AccountCommand::Deposit(Deposit(5))
    ));
}
