//! A bank on one machine: accounts are event-sourced actors on the embedded durable store.
//!
//! ```text
//! cargo run --example bank
//! ```
//!
//! Opens two accounts, deposits, transfers between them (one actor asking another), shows a
//! rejected overdraft and prints balances. The data lives in `./aether-data/bank` (or under
//! `$AETHER_DATA_DIR`): run the example again and it continues from the balances of the last
//! run. Delete the directory to start over.
//!
//! With `AETHER_NATS_URL=nats://127.0.0.1:4222` the same program keeps its events in JetStream
//! on that server (stream `bank_events`) instead.

use aether::prelude::*;

/// What an account can be asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AccountCmd {
    /// Open the account for `owner`.
    Open { owner: String },
    /// Put money in.
    Deposit(u64),
    /// Take money out.
    Withdraw(u64),
    /// Move money to another account.
    Transfer { to: ActorRef<Account>, amount: u64 },
    /// Read the balance.
    Balance,
}

/// What happened to an account.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AccountEvent {
    Opened { owner: String },
    Deposited(u64),
    Withdrew(u64),
    TransferredOut { to: String, amount: u64 },
}

/// Why an account said no.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum AccountError {
    #[error("account is not open")]
    NotOpen,
    #[error("account is already open")]
    AlreadyOpen,
    #[error("insufficient funds: balance {balance}, needed {needed}")]
    InsufficientFunds { balance: u64, needed: u64 },
    #[error("transfer failed: {0}")]
    TransferFailed(String),
}

/// The state of an account. The reply to every command is the balance after it.
#[derive(Debug, Default, Clone, Serialize, Deserialize, EventSourcedActor)]
#[actor(kind = "account", command = AccountCmd, event = AccountEvent,
        reply = u64, error = AccountError, snapshot_every = 100)]
pub struct Account {
    owner: Option<String>,
    balance: u64,
}

impl Account {
    fn open(&self) -> Result<(), AccountError> {
        self.owner.as_ref().map(|_| ()).ok_or(AccountError::NotOpen)
    }

    fn funds(&self, amount: u64) -> Result<(), AccountError> {
        if self.balance < amount {
            return Err(AccountError::InsufficientFunds {
                balance: self.balance,
                needed: amount,
            });
        }
        Ok(())
    }
}

impl Behavior for Account {
    async fn handle(
        &self,
        cmd: AccountCmd,
        ctx: &mut Ctx<Self>,
    ) -> Result<Effect<Self>, AccountError> {
        match cmd {
            AccountCmd::Open { owner } => {
                if self.owner.is_some() {
                    return Err(AccountError::AlreadyOpen);
                }
                Ok(Effect::persist(AccountEvent::Opened { owner }).reply(0))
            }
            AccountCmd::Deposit(amount) => {
                self.open()?;
                Ok(Effect::persist(AccountEvent::Deposited(amount)).reply(self.balance + amount))
            }
            AccountCmd::Withdraw(amount) => {
                self.open()?;
                self.funds(amount)?;
                Ok(Effect::persist(AccountEvent::Withdrew(amount)).reply(self.balance - amount))
            }
            AccountCmd::Transfer { to, amount } => {
                self.open()?;
                self.funds(amount)?;
                // Credit first, then record the debit. The credit's command id is derived from
                // this command's id, so if this transfer is retried with the same id the credit
                // is recognised and not applied twice.
                ctx.ask(&to, AccountCmd::Deposit(amount))
                    .await
                    .map_err(|e| AccountError::TransferFailed(e.to_string()))?;
                let event = AccountEvent::TransferredOut {
                    to: to.id().to_string(),
                    amount,
                };
                Ok(Effect::persist(event).reply(self.balance - amount))
            }
            AccountCmd::Balance => {
                self.open()?;
                Ok(Effect::reply(self.balance))
            }
        }
    }

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened { owner } => self.owner = Some(owner.clone()),
            AccountEvent::Deposited(n) => self.balance += n,
            AccountEvent::Withdrew(n) | AccountEvent::TransferredOut { amount: n, .. } => {
                self.balance -= n
            }
        }
    }
}

async fn balance(account: &ActorRef<Account>) -> anyhow::Result<String> {
    Ok(match account.ask(AccountCmd::Balance).await {
        Ok(b) => b.to_string(),
        Err(AskError::Rejected(AccountError::NotOpen)) => "not open".into(),
        Err(e) => return Err(e.into()),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rt = Runtime::builder()
        .namespace("bank")?
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
            .ask(AccountCmd::Open {
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

    println!(
        "alice deposits 100 -> {}",
        alice.ask(AccountCmd::Deposit(100)).await?
    );
    println!(
        "bob deposits 50    -> {}",
        bob.ask(AccountCmd::Deposit(50)).await?
    );
    let transfer = AccountCmd::Transfer {
        to: bob.clone(),
        amount: 30,
    };
    println!("alice sends bob 30 -> alice {}", alice.ask(transfer).await?);
    match bob.ask(AccountCmd::Withdraw(1_000_000)).await {
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
