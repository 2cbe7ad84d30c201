//! The account actor shared by the examples: open, deposit, withdraw, transfer, balance.
#![allow(dead_code)]

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
