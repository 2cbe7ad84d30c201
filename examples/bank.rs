//! A bank on one machine: accounts are event-sourced actors on the embedded durable store.
//!
//! ```text
//! cargo run --example bank
//! ```
//!
//! Opens two accounts, deposits, transfers between them (the debit and, as a durable effect in
//! the same commit, the credit), schedules a payment (a durable reminder) and cancels another,
//! shows a rejected overdraft and prints balances. The data lives in `./aether-data/bank` (or
//! under `$AETHER_DATA_DIR`): run the example again and it continues from the balances of the
//! last run. Delete the directory to start over.
//!
//! With `AETHER_NATS_URL=nats://127.0.0.1:4222` the same program keeps its events in JetStream
//! on that server (stream `bank_events`) instead.

use std::time::Duration;

use aether::prelude::*;

#[path = "shared/account.rs"]
mod account;

use account::{
    Account, AccountError, Balance, CancelPayment, Deposit, Open, SchedulePayment, Transfer,
    Withdraw,
};

async fn balance(account: &ActorRef<Account>) -> anyhow::Result<String> {
    Ok(match account.ask(Balance).await {
        Ok(b) => b.to_string(),
        Err(AskError::Rejected(AccountError::NotOpen)) => "not open".into(),
        Err(e) => return Err(e.into()),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rt = Runtime::builder()
        .namespace("bank")
        .register::<Account>()
        .config_from_env()?
        .start()
        .await?;
    println!("store: {}", rt.store_location());
    if let Some(dir) = rt.data_dir() {
        println!(
            "data directory: {} (delete it to start over)",
            dir.display()
        );
    }

    let alice = rt.actor::<Account>("alice")?;
    let bob = rt.actor::<Account>("bob")?;
    println!(
        "found at start: alice {}, bob {}",
        balance(&alice).await?,
        balance(&bob).await?
    );

    for (account, owner) in [(&alice, "Alice"), (&bob, "Bob")] {
        match account
            .ask(Open {
                owner: owner.into(),
            })
            .await
        {
            Ok(_) => println!("opened {}", account.id()),
            Err(AskError::Rejected(AccountError::AlreadyOpen)) => {
                println!("{} is already open (from an earlier run)", account.id())
            }
            Err(e) => return Err(e.into()),
        }
    }

    println!("alice deposits 100 -> {}", alice.ask(Deposit(100)).await?);
    println!("bob deposits 50    -> {}", bob.ask(Deposit(50)).await?);
    let transfer = Transfer {
        to: bob.clone(),
        amount: 30,
    };
    println!("alice sends bob 30 -> alice {}", alice.ask(transfer).await?);
    // The credit is on its way (delivered after alice's commit, exactly once); wait for it.
    rt.drain_effects(Duration::from_secs(5)).await;
    let bob_then = bob.ask(Balance).await?;
    println!("bob after the credit -> {bob_then}");

    // A scheduled payment: a reminder stored with alice's commit, fired in 200 ms (after a
    // restart too, if the program stopped before). Another is scheduled and cancelled.
    let schedule = |name: &str, amount| SchedulePayment {
        name: name.into(),
        to: bob.clone(),
        amount,
        delay_ms: 200,
    };
    alice.ask(schedule("rent", 5)).await?;
    alice.ask(schedule("gift", 1_000)).await?;
    alice
        .ask(CancelPayment {
            name: "gift".into(),
        })
        .await?;
    println!("alice schedules rent 5 to bob in 200 ms, and cancels a gift");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while bob.ask(Balance).await? < bob_then + 5 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the rent was not paid"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("the rent was paid -> bob {}", bob.ask(Balance).await?);
    match bob.ask(Withdraw(1_000_000)).await {
        Err(AskError::Rejected(e)) => println!("bob withdraws 1000000: rejected ({e})"),
        other => anyhow::bail!("an overdraft must be rejected, got {other:?}"),
    }

    println!(
        "balances: alice {}, bob {}",
        balance(&alice).await?,
        balance(&bob).await?
    );
    let history = rt.event_store().read(alice.key(), 1).await?;
    println!("alice's history: {} events", history.len());
    for event in history.iter().rev().take(3).rev() {
        println!("  v{} {}", event.version, event.event_type);
    }
    rt.shutdown().await?;
    Ok(())
}
