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
