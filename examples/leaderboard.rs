//! A read model built by a projection: a leaderboard of account balances.
//!
//! ```text
//! cargo run --example leaderboard
//! ```
//!
//! Runs on the embedded store (no server): accounts deposit, withdraw and transfer; a
//! projection folds every stored account event into a leaderboard, a live subscription prints
//! large deposits as they happen, and at the end the leaderboard is rebuilt from zero and comes
//! out the same. Data lives in `./aether-data/leaderboard` (or under `$AETHER_DATA_DIR`); run it
//! again and the balances — and the leaderboard, rebuilt from the stored history — carry on.
//!
//! The read model here lives in memory, so every run starts it from offset zero and the
//! projection replays the whole history into it. A read model in a database would store the
//! offset in the same transaction as the balances, and a restart would resume from there.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aether::bus::{Filter, Offset, ProjectionOptions, ReadModel, ReadModelError, StoredEvent};
use aether::prelude::*;
use parking_lot::Mutex;

#[path = "shared/account.rs"]
mod account;

use account::{Account, AccountError, AccountEvent, Deposit, Open, Transfer, Withdraw};

/// The leaderboard: balance and owner per account, and the offset of the last event folded in.
#[derive(Debug, Default)]
struct Board {
    balances: BTreeMap<String, u64>,
    owners: BTreeMap<String, String>,
    offset: Option<Offset>,
}

impl Board {
    /// Accounts by balance, highest first.
    fn top(&self, n: usize) -> Vec<(String, String, u64)> {
        let mut rows: Vec<(String, String, u64)> = self
            .balances
            .iter()
            .map(|(id, b)| {
                let owner = self.owners.get(id).cloned().unwrap_or_default();
                (id.clone(), owner, *b)
            })
            .collect();
        rows.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
        rows.truncate(n);
        rows
    }
}

/// The projection's read model: a handle to the shared board.
#[derive(Clone, Default)]
struct Leaderboard(Arc<Mutex<Board>>);

impl ReadModel for Leaderboard {
    async fn offset(&mut self) -> Result<Option<Offset>, ReadModelError> {
        Ok(self.0.lock().offset)
    }

    async fn apply(&mut self, event: &StoredEvent) -> Result<(), ReadModelError> {
        // Typed and upcast from older event versions; `None` for another kind's event.
        let Some(account) = event.decode::<Account>()? else {
            self.0.lock().offset = Some(event.offset);
            return Ok(());
        };
        let id = event.envelope.actor.id.to_string();
        // One lock scope: the change and the offset land together.
        let mut guard = self.0.lock();
        let board = &mut *guard;
        let balance = board.balances.entry(id.clone()).or_default();
        match account {
            AccountEvent::Opened { owner } => {
                board.owners.insert(id, owner);
            }
            AccountEvent::Deposited(n)
            | AccountEvent::TransferredIn { amount: n, .. }
            | AccountEvent::Refunded { amount: n, .. } => *balance += n,
            AccountEvent::Withdrew(n) | AccountEvent::TransferredOut { amount: n, .. } => {
                *balance = balance.saturating_sub(n)
            }
            AccountEvent::PaymentScheduled { .. }
            | AccountEvent::PaymentCancelled { .. }
            | AccountEvent::PaymentMade { .. }
            | AccountEvent::PaymentFailed { .. } => {}
        }
        board.offset = Some(event.offset);
        Ok(())
    }

    async fn clear(&mut self) -> Result<(), ReadModelError> {
        *self.0.lock() = Board::default();
        Ok(())
    }
}

fn print_board(title: &str, board: &Board) {
    println!(
        "{title} (offset {})",
        board.offset.map_or("none".into(), |o| o.to_string())
    );
    for (rank, (id, owner, balance)) in board.top(5).iter().enumerate() {
        println!("  {}. {id:<6} {owner:<6} {balance:>6}", rank + 1);
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rt = Runtime::builder()
        .namespace("leaderboard")
        .register::<Account>()
        .config_from_env()?
        .start()
        .await?;
    println!("store: {}", rt.store_location());

    // The read model, kept up to date in the background from the stored account events.
    let board = Leaderboard::default();
    let options = ProjectionOptions::default().pattern("leaderboard.events.account.*".parse()?);
    let projection = rt.projection("leaderboard", board.clone(), options).await?;

    // A live subscriber: prints deposits of 100 or more as they are stored.
    let mut deposits = rt
        .bus()
        .subscribe(
            "leaderboard.events.account.*",
            Filter::all().event_types(["Deposited"]),
        )
        .await?;
    let printer = tokio::spawn(async move {
        while let Some(event) = deposits.recv().await {
            let Some(envelope) = event.envelope() else {
                continue;
            };
            if let Ok(Some(AccountEvent::Deposited(n))) = event.decode::<Account>()
                && n >= 100
            {
                println!(
                    "  live: {} deposited {n} (v{})",
                    envelope.actor.id, envelope.version
                );
            }
        }
    });

    let people = [
        ("alice", "Alice"),
        ("bob", "Bob"),
        ("carol", "Carol"),
        ("dave", "Dave"),
    ];
    for (id, owner) in people {
        match rt
            .actor::<Account>(id)?
            .ask(Open {
                owner: owner.into(),
            })
            .await
        {
            Ok(_) | Err(AskError::Rejected(AccountError::AlreadyOpen)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let alice = rt.actor::<Account>("alice")?;
    let bob = rt.actor::<Account>("bob")?;
    let carol = rt.actor::<Account>("carol")?;
    let dave = rt.actor::<Account>("dave")?;
    alice.ask(Deposit(120)).await?;
    bob.ask(Deposit(80)).await?;
    carol.ask(Deposit(200)).await?;
    dave.ask(Deposit(15)).await?;
    carol.ask(Withdraw(50)).await?;
    alice
        .ask(Transfer {
            to: dave.clone(),
            amount: 60,
        })
        .await?;
    bob.ask(Deposit(100)).await?;
    // Dave's credit is a durable effect of alice's transfer: let it land before reading.
    rt.drain_effects(Duration::from_secs(5)).await;

    projection.caught_up(Duration::from_secs(10)).await?;
    print_board("leaderboard", &board.0.lock());

    // Rebuild from zero: clear the read model and replay every stored event.
    projection.rebuild().await?;
    projection.caught_up(Duration::from_secs(10)).await?;
    print_board("after a rebuild from zero", &board.0.lock());
    let status = projection.status();
    println!(
        "projection: {} events applied in this run, {} rebuild(s)",
        status.applied, status.rebuilds
    );

    projection.stop().await?;
    printer.abort();
    rt.shutdown().await?;
    Ok(())
}
