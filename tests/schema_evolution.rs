//! State that outlives its code: a snapshot written by one version of an actor's state is read
//! by the next only through its declared state version — ignored (full replay) or migrated,
//! never trusted as is.
//!
//! Three versions of one kind, `wallet`, share one data directory, each started in its own
//! runtime in turn, as a deployment would:
//! - v0 (no `state_version`): `{ balance }`, in whole units;
//! - v2: `{ cents, deposits }` — a new shape with no migration: the v0 snapshot is ignored and
//!   the history replayed;
//! - v3: `{ cents, count }` — `deposits` renamed, with a migration from v2.

use aether::prelude::*;
use aether::{OldState, Runtime};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deposit(pub u64);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Show;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WalletEvent {
    Deposited(u64),
}

#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
#[error("never")]
pub struct Never;

mod v0 {
    use super::*;

    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, EventSourcedActor)]
    #[actor(kind = "wallet", event = WalletEvent, error = Never,
            commands(Deposit -> u64, Show -> Wallet), snapshot_every = 4)]
    pub struct Wallet {
        pub balance: u64,
    }

    impl Handle<Deposit> for Wallet {
        async fn handle(
            &self,
            cmd: Deposit,
            _: &mut Ctx<Self>,
        ) -> Result<Effect<Self, u64>, Never> {
            Ok(Effect::persist(WalletEvent::Deposited(cmd.0)).reply_with(|s: &Self| s.balance))
        }
    }

    impl Handle<Show> for Wallet {
        async fn handle(&self, _: Show, _: &mut Ctx<Self>) -> Result<Effect<Self, Wallet>, Never> {
            Ok(Effect::reply(self.clone()))
        }
    }

    impl Behavior for Wallet {
        fn apply(&mut self, event: &WalletEvent) {
            let WalletEvent::Deposited(n) = event;
            self.balance += n;
        }
    }
}

mod v2 {
    use super::*;

    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, EventSourcedActor)]
    #[actor(kind = "wallet", event = WalletEvent, error = Never,
            commands(Deposit -> u64, Show -> Wallet), snapshot_every = 4, state_version = 2)]
    pub struct Wallet {
        pub cents: u64,
        pub deposits: u64,
    }

    impl Handle<Deposit> for Wallet {
        async fn handle(
            &self,
            cmd: Deposit,
            _: &mut Ctx<Self>,
        ) -> Result<Effect<Self, u64>, Never> {
            Ok(Effect::persist(WalletEvent::Deposited(cmd.0)).reply_with(|s: &Self| s.cents))
        }
    }

    impl Handle<Show> for Wallet {
        async fn handle(&self, _: Show, _: &mut Ctx<Self>) -> Result<Effect<Self, Wallet>, Never> {
            Ok(Effect::reply(self.clone()))
        }
    }

    impl Behavior for Wallet {
        fn apply(&mut self, event: &WalletEvent) {
            let WalletEvent::Deposited(n) = event;
            self.cents += n * 100;
            self.deposits += 1;
        }
        // No migrate_state: a snapshot of another version is ignored.
    }
}

mod v3 {
    use super::*;

    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, EventSourcedActor)]
    #[actor(kind = "wallet", event = WalletEvent, error = Never,
            commands(Deposit -> u64, Show -> Wallet), snapshot_every = 4, state_version = 3)]
    pub struct Wallet {
        pub cents: u64,
        pub count: u64,
    }

    impl Handle<Deposit> for Wallet {
        async fn handle(
            &self,
            cmd: Deposit,
            _: &mut Ctx<Self>,
        ) -> Result<Effect<Self, u64>, Never> {
            Ok(Effect::persist(WalletEvent::Deposited(cmd.0)).reply_with(|s: &Self| s.cents))
        }
    }

    impl Handle<Show> for Wallet {
        async fn handle(&self, _: Show, _: &mut Ctx<Self>) -> Result<Effect<Self, Wallet>, Never> {
            Ok(Effect::reply(self.clone()))
        }
    }

    impl Behavior for Wallet {
        fn apply(&mut self, event: &WalletEvent) {
            let WalletEvent::Deposited(n) = event;
            self.cents += n * 100;
            self.count += 1;
        }

        fn migrate_state(old: OldState<'_>) -> Option<Self> {
            match old.version() {
                2 => old.decode::<super::v2::Wallet>().ok().map(|v2| Wallet {
                    cents: v2.cents,
                    count: v2.deposits,
                }),
                _ => None,
            }
        }
    }
}

async fn start<A: Behavior>(dir: &std::path::Path) -> Runtime {
    Runtime::builder()
        .namespace("evolution")
        .register::<A>()
        .data_dir(dir)
        .start()
        .await
        .expect("runtime")
}

#[tokio::test]
async fn a_snapshot_of_another_state_version_is_ignored_or_migrated_never_trusted() {
    let dir = tempfile::tempdir().expect("dir");
    let deposits: Vec<u64> = (1..=10).collect();
    let total: u64 = deposits.iter().sum();

    // v0 writes history and snapshots (every 4 events, and at shutdown).
    let rt = start::<v0::Wallet>(dir.path()).await;
    let w = rt.actor::<v0::Wallet>("w").expect("ref");
    for n in &deposits {
        w.ask(Deposit(*n)).await.expect("deposit");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while rt.stats().snapshots_saved < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "v0 wrote no snapshots"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    rt.shutdown().await.expect("shutdown");

    // v2 reshaped the state and offers no migration: the v0 snapshot is ignored and the
    // state is the full replay by v2's apply.
    let rt = start::<v2::Wallet>(dir.path()).await;
    let w = rt.actor::<v2::Wallet>("w").expect("ref");
    let state = w.ask(Show).await.expect("show");
    assert_eq!(
        state,
        v2::Wallet {
            cents: total * 100,
            deposits: deposits.len() as u64
        }
    );
    let stats = rt.stats();
    assert_eq!(stats.snapshot_fallbacks, 1, "the v0 snapshot was refused");
    assert_eq!(stats.snapshot_migrations, 0);
    assert_eq!(
        stats.replayed_events,
        deposits.len() as u64,
        "the whole history was replayed"
    );
    // Two more deposits, then shutdown: v2 snapshots at its own version.
    w.ask(Deposit(100)).await.expect("deposit");
    w.ask(Deposit(200)).await.expect("deposit");
    rt.shutdown().await.expect("shutdown");
    let total = total + 300;
    let count = deposits.len() as u64 + 2;

    // v2 again: its own snapshot is trusted, nothing is replayed.
    let rt = start::<v2::Wallet>(dir.path()).await;
    let w = rt.actor::<v2::Wallet>("w").expect("ref");
    assert_eq!(
        w.ask(Show).await.expect("show"),
        v2::Wallet {
            cents: total * 100,
            deposits: count
        }
    );
    assert_eq!(rt.stats().snapshot_fallbacks, 0);
    assert_eq!(rt.stats().replayed_events, 0, "read from the snapshot");
    rt.shutdown().await.expect("shutdown");

    // v3 renamed a field and migrates v2 snapshots: the migrated state equals the fold of
    // the whole history by v3's apply, and no event was replayed to get it.
    let rt = start::<v3::Wallet>(dir.path()).await;
    let w = rt.actor::<v3::Wallet>("w").expect("ref");
    let migrated = w.ask(Show).await.expect("show");
    let stats = rt.stats();
    assert_eq!(stats.snapshot_migrations, 1, "the v2 snapshot was migrated");
    assert_eq!(stats.snapshot_fallbacks, 0);
    assert_eq!(stats.replayed_events, 0);
    let mut replayed = v3::Wallet::default();
    for n in deposits.iter().chain(&[100, 200]) {
        replayed.apply(&WalletEvent::Deposited(*n));
    }
    assert_eq!(migrated, replayed);
    rt.shutdown().await.expect("shutdown");

    // Once v3 has stored events and snapshotted, its own snapshot is trusted as is.
    let rt = start::<v3::Wallet>(dir.path()).await;
    let w = rt.actor::<v3::Wallet>("w").expect("ref");
    w.ask(Deposit(7)).await.expect("deposit");
    rt.shutdown().await.expect("shutdown");
    let rt = start::<v3::Wallet>(dir.path()).await;
    let w = rt.actor::<v3::Wallet>("w").expect("ref");
    replayed.apply(&WalletEvent::Deposited(7));
    assert_eq!(w.ask(Show).await.expect("show"), replayed);
    assert_eq!(rt.stats().snapshot_migrations, 0, "already at v3");
    assert_eq!(rt.stats().replayed_events, 0);
    rt.shutdown().await.expect("shutdown");
    let total = total + 7;
    let count = count + 1;

    // Back to v2 (a rollback): the v3 snapshot is from a newer version and is ignored; v2
    // replays the history and gets its own state right.
    let rt = start::<v2::Wallet>(dir.path()).await;
    let w = rt.actor::<v2::Wallet>("w").expect("ref");
    assert_eq!(
        w.ask(Show).await.expect("show"),
        v2::Wallet {
            cents: total * 100,
            deposits: count
        }
    );
    assert_eq!(
        rt.stats().snapshot_fallbacks,
        1,
        "a newer snapshot is not trusted"
    );
    assert_eq!(rt.stats().replayed_events, count);
    rt.shutdown().await.expect("shutdown");
}

// ---------------------------------------------------------------------------------------------
// Events: a renamed variant and a split field, read through an upcaster everywhere.

/// v0 of the ledger's events: `Deposited`, and `Moved` with its route in one field ("a->b").
mod ledger_v0 {
    use super::*;

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub enum LedgerEvent {
        Deposited { amount: u64 },
        Moved { route: String, amount: u64 },
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Move(pub String, pub u64);

    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, EventSourcedActor)]
    #[actor(kind = "ledger", event = LedgerEvent, error = Never,
            commands(Deposit -> (), Move -> (), Show -> Ledger))]
    pub struct Ledger {
        pub total: u64,
        pub moves: Vec<(String, String, u64)>,
    }

    impl Handle<Deposit> for Ledger {
        async fn handle(&self, c: Deposit, _: &mut Ctx<Self>) -> Result<Effect<Self, ()>, Never> {
            Ok(Effect::persist(LedgerEvent::Deposited { amount: c.0 }).reply(()))
        }
    }

    impl Handle<Move> for Ledger {
        async fn handle(&self, c: Move, _: &mut Ctx<Self>) -> Result<Effect<Self, ()>, Never> {
            Ok(Effect::persist(LedgerEvent::Moved {
                route: c.0,
                amount: c.1,
            })
            .reply(()))
        }
    }

    impl Handle<Show> for Ledger {
        async fn handle(&self, _: Show, _: &mut Ctx<Self>) -> Result<Effect<Self, Ledger>, Never> {
            Ok(Effect::reply(self.clone()))
        }
    }

    impl Behavior for Ledger {
        fn apply(&mut self, event: &LedgerEvent) {
            match event {
                LedgerEvent::Deposited { amount } => self.total += amount,
                LedgerEvent::Moved { route, amount } => {
                    let (from, to) = route.split_once("->").unwrap_or((route, ""));
                    self.moves.push((from.into(), to.into(), *amount));
                }
            }
        }
    }
}

/// v1: `Deposited` renamed `Credited`, `Moved`'s route split into `from` and `to`.
mod ledger_v1 {
    use super::*;
    use aether::{CodecError, OldEvent};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub enum LedgerEvent {
        Credited {
            amount: u64,
        },
        Moved {
            from: String,
            to: String,
            amount: u64,
        },
    }

    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, EventSourcedActor)]
    #[actor(kind = "ledger", event = LedgerEvent, error = Never,
            commands(Deposit -> (), Show -> Ledger), event_version = 1, state_version = 1)]
    pub struct Ledger {
        pub total: u64,
        pub moves: Vec<(String, String, u64)>,
    }

    impl Handle<Deposit> for Ledger {
        async fn handle(&self, c: Deposit, _: &mut Ctx<Self>) -> Result<Effect<Self, ()>, Never> {
            Ok(Effect::persist(LedgerEvent::Credited { amount: c.0 }).reply(()))
        }
    }

    impl Handle<Show> for Ledger {
        async fn handle(&self, _: Show, _: &mut Ctx<Self>) -> Result<Effect<Self, Ledger>, Never> {
            Ok(Effect::reply(self.clone()))
        }
    }

    impl Behavior for Ledger {
        fn apply(&mut self, event: &LedgerEvent) {
            match event {
                LedgerEvent::Credited { amount } => self.total += amount,
                LedgerEvent::Moved { from, to, amount } => {
                    self.moves.push((from.clone(), to.clone(), *amount))
                }
            }
        }

        fn upcast_event(old: OldEvent<'_>) -> Result<LedgerEvent, CodecError> {
            match old.version() {
                0 => Ok(match old.decode::<ledger_v0::LedgerEvent>()? {
                    ledger_v0::LedgerEvent::Deposited { amount } => {
                        LedgerEvent::Credited { amount }
                    }
                    ledger_v0::LedgerEvent::Moved { route, amount } => {
                        let (from, to) = route.split_once("->").unwrap_or((&route, ""));
                        LedgerEvent::Moved {
                            from: from.into(),
                            to: to.into(),
                            amount,
                        }
                    }
                }),
                _ => old.decode_current(),
            }
        }
    }

    /// A read model: every event seen, as v1 events.
    #[derive(Default, Clone)]
    pub struct Seen(pub std::sync::Arc<parking_lot::Mutex<(Vec<LedgerEvent>, Option<Offset>)>>);

    impl ReadModel for Seen {
        async fn offset(&mut self) -> Result<Option<Offset>, ReadModelError> {
            Ok(self.0.lock().1)
        }

        async fn apply(&mut self, event: &StoredEvent) -> Result<(), ReadModelError> {
            let decoded = event.decode::<Ledger>()?;
            let mut seen = self.0.lock();
            seen.0.extend(decoded);
            seen.1 = Some(event.offset);
            Ok(())
        }

        async fn clear(&mut self) -> Result<(), ReadModelError> {
            *self.0.lock() = Default::default();
            Ok(())
        }
    }
}

use aether::bus::{Filter, Offset, ProjectionOptions, ReadModel, ReadModelError, StoredEvent};

#[tokio::test]
async fn old_events_are_upcast_in_replay_on_the_bus_and_in_projections() {
    let dir = tempfile::tempdir().expect("dir");
    let rt = start::<ledger_v0::Ledger>(dir.path()).await;
    let l = rt.actor::<ledger_v0::Ledger>("l").expect("ref");
    l.ask(Deposit(50)).await.expect("deposit");
    l.ask(ledger_v0::Move("alice->bob".into(), 20))
        .await
        .expect("move");
    l.ask(Deposit(5)).await.expect("deposit");
    let before = l.ask(Show).await.expect("show");
    let v0_events = rt.event_store().read(l.key(), 1).await.expect("read");
    let v0_commits = rt
        .event_store()
        .read_with_errors(l.key(), 1)
        .await
        .expect("read")
        .commits;
    rt.shutdown().await.expect("shutdown");
    assert_eq!(v0_events.len(), 3);
    assert!(v0_events.iter().all(|e| e.schema_version == 0));
    assert!(
        v0_commits.iter().all(|c| c.format == 1),
        "unversioned events keep the first commit format"
    );

    let rt = start::<ledger_v1::Ledger>(dir.path()).await;
    let l = rt.actor::<ledger_v1::Ledger>("l").expect("ref");
    // Replay: the v0 snapshot is of another state version, so the three v0 events are
    // replayed through the upcaster, to the same state.
    let after = l.ask(Show).await.expect("show");
    assert_eq!(
        (after.total, after.moves.clone()),
        (before.total, before.moves)
    );
    assert_eq!(rt.stats().replayed_events, 3);

    // The bus: a v0 event published by a node still on the old code reaches a v1 subscriber
    // upcast.
    let mut sub = rt
        .bus()
        .subscribe("evolution.events.>", Filter::all())
        .await
        .expect("subscribe");
    let published = v0_events[1].clone();
    rt.bus()
        .publish(&published.namespace.clone(), published)
        .expect("publish");
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), sub.recv())
        .await
        .expect("delivered")
        .expect("open");
    assert_eq!(
        got.decode::<ledger_v1::Ledger>().expect("decodes"),
        Some(ledger_v1::LedgerEvent::Moved {
            from: "alice".into(),
            to: "bob".into(),
            amount: 20
        })
    );

    // New events are written at version 1 (a format-3 commit) and read as they are, on the
    // bus too.
    l.ask(Deposit(7)).await.expect("deposit");
    let stored = rt.event_store().read(l.key(), 4).await.expect("read");
    assert_eq!(stored[0].schema_version, 1);
    let commits = rt
        .event_store()
        .read_with_errors(l.key(), 4)
        .await
        .expect("read")
        .commits;
    assert_eq!(
        commits[0].format, 3,
        "a versioned event makes a format-3 commit"
    );
    let live = tokio::time::timeout(std::time::Duration::from_secs(5), sub.recv())
        .await
        .expect("delivered")
        .expect("open");
    assert_eq!(live.envelope().expect("actor event").schema_version, 1);
    assert_eq!(
        live.decode::<ledger_v1::Ledger>().expect("decodes"),
        Some(ledger_v1::LedgerEvent::Credited { amount: 7 })
    );

    // A projection from the start of the log sees old and new events as v1 events.
    let seen = ledger_v1::Seen::default();
    let projection = rt
        .projection("ledger-view", seen.clone(), ProjectionOptions::default())
        .await
        .expect("projection");
    projection
        .caught_up(std::time::Duration::from_secs(10))
        .await
        .expect("caught up");
    projection.stop().await.expect("stop");
    assert_eq!(
        seen.0.lock().0,
        vec![
            ledger_v1::LedgerEvent::Credited { amount: 50 },
            ledger_v1::LedgerEvent::Moved {
                from: "alice".into(),
                to: "bob".into(),
                amount: 20
            },
            ledger_v1::LedgerEvent::Credited { amount: 5 },
            ledger_v1::LedgerEvent::Credited { amount: 7 },
        ]
    );
    rt.shutdown().await.expect("shutdown");

    // Rolled back to v0: an event of a newer version is refused with a typed error, never
    // read as something else; nothing stored is touched.
    let rt = start::<ledger_v0::Ledger>(dir.path()).await;
    let l = rt.actor::<ledger_v0::Ledger>("l").expect("ref");
    match l.ask(Show).await {
        Err(AskError::Failed(CallError::ActivationFailed { reason, .. })) => {
            assert!(reason.contains("newer than this code"), "{reason}")
        }
        other => panic!("a newer event must not be read by older code: {other:?}"),
    }
    assert_eq!(
        rt.event_store().read(l.key(), 1).await.expect("read").len(),
        4
    );
    rt.shutdown().await.expect("shutdown");
}

/// An upcaster with a bug: it panics on old events.
mod ledger_panicky {
    use super::*;
    use aether::{CodecError, OldEvent};

    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, EventSourcedActor)]
    #[actor(kind = "ledger", event = ledger_v1::LedgerEvent, error = Never,
            commands(Show -> Ledger), event_version = 1, state_version = 1)]
    pub struct Ledger {
        pub total: u64,
    }

    impl Handle<Show> for Ledger {
        async fn handle(&self, _: Show, _: &mut Ctx<Self>) -> Result<Effect<Self, Ledger>, Never> {
            Ok(Effect::reply(self.clone()))
        }
    }

    impl Behavior for Ledger {
        fn apply(&mut self, _: &ledger_v1::LedgerEvent) {
            self.total += 1;
        }

        fn upcast_event(_: OldEvent<'_>) -> Result<ledger_v1::LedgerEvent, CodecError> {
            panic!("upcaster bug")
        }
    }
}

#[tokio::test]
async fn a_panicking_upcaster_fails_the_activation_with_a_typed_error_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let rt = start::<ledger_v0::Ledger>(dir.path()).await;
    let l = rt.actor::<ledger_v0::Ledger>("l").expect("ref");
    l.ask(Deposit(1)).await.expect("deposit");
    rt.shutdown().await.expect("shutdown");

    let rt = start::<ledger_panicky::Ledger>(dir.path()).await;
    let l = rt.actor::<ledger_panicky::Ledger>("l").expect("ref");
    for _ in 0..2 {
        match l.ask(Show).await {
            Err(AskError::Failed(CallError::ActivationFailed { reason, .. })) => {
                assert!(reason.contains("upcast_event panicked"), "{reason}")
            }
            other => panic!("expected ActivationFailed, got {other:?}"),
        }
    }
    assert_eq!(
        rt.stats().handler_panics,
        0,
        "not taken for a handler panic"
    );
    rt.shutdown().await.expect("shutdown");

    // The history is intact: the old code still reads it.
    let rt = start::<ledger_v0::Ledger>(dir.path()).await;
    let l = rt.actor::<ledger_v0::Ledger>("l").expect("ref");
    assert_eq!(l.ask(Show).await.expect("show").total, 1);
    rt.shutdown().await.expect("shutdown");
}
