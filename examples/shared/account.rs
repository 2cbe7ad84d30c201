//! The account actor shared by the examples: open, deposit, withdraw, transfer (a debit here and
//! the credit as a durable effect there), scheduled payments (a reminder), balance.
#![allow(dead_code)]

use std::time::Duration;

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
    /// Move money to another account: the debit is stored here, and the credit is sent to `to`
    /// as a durable effect in the same commit (refunded if `to` refuses it).
    Transfer { to: ActorRef<Account>, amount: u64 },
    /// The credit half of a transfer, sent by the payer as a durable effect.
    Credit { from: String, amount: u64 },
    /// The compensation of a transfer whose credit was refused: the money comes back.
    Refund { to: String, amount: u64 },
    /// Pay `amount` to `to` after `delay_ms`, unless cancelled: a durable reminder named `name`.
    SchedulePayment {
        name: String,
        to: ActorRef<Account>,
        amount: u64,
        delay_ms: u64,
    },
    /// Cancel the scheduled payment `name`.
    CancelPayment { name: String },
    /// The reminder of a scheduled payment, fired: make the payment now.
    PayScheduled {
        name: String,
        to: ActorRef<Account>,
        amount: u64,
    },
    /// Read the balance.
    Balance,
}

/// What happened to an account.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AccountEvent {
    Opened {
        owner: String,
    },
    Deposited(u64),
    Withdrew(u64),
    TransferredOut {
        to: String,
        amount: u64,
    },
    TransferredIn {
        from: String,
        amount: u64,
    },
    Refunded {
        to: String,
        amount: u64,
    },
    PaymentScheduled {
        name: String,
        to: String,
        amount: u64,
    },
    PaymentCancelled {
        name: String,
    },
    PaymentMade {
        name: String,
    },
    PaymentFailed {
        name: String,
        reason: String,
    },
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
    #[error("no scheduled payment named {0}")]
    NoSuchPayment(String),
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
    /// Scheduled payments not yet made or cancelled.
    scheduled: Vec<String>,
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
                // The debit and the credit are decided together and stored in one commit: the
                // credit is delivered after it, exactly once, however often this node or the
                // payee's crashes meanwhile. The turn never waits on the payee.
                let me = ctx.id().to_string();
                let event = AccountEvent::TransferredOut {
                    to: to.id().to_string(),
                    amount,
                };
                let credit = AccountCmd::Credit { from: me, amount };
                let refund = AccountCmd::Refund {
                    to: to.id().to_string(),
                    amount,
                };
                Ok(Effect::persist(event)
                    .send_with_compensation(&to, credit, refund)
                    .reply(self.balance - amount))
            }
            AccountCmd::Credit { from, amount } => {
                // A closed payee refuses: the payer gets a Refund back (its compensation).
                self.open()?;
                let event = AccountEvent::TransferredIn { from, amount };
                Ok(Effect::persist(event).reply(self.balance + amount))
            }
            AccountCmd::Refund { to, amount } => {
                let event = AccountEvent::Refunded { to, amount };
                Ok(Effect::persist(event).reply(self.balance + amount))
            }
            AccountCmd::SchedulePayment {
                name,
                to,
                amount,
                delay_ms,
            } => {
                self.open()?;
                let event = AccountEvent::PaymentScheduled {
                    name: name.clone(),
                    to: to.id().to_string(),
                    amount,
                };
                // The reminder is stored with this commit and fires once, after restarts and
                // moves too; the funds are checked when it fires.
                let payment = AccountCmd::PayScheduled {
                    name: name.clone(),
                    to,
                    amount,
                };
                Ok(Effect::persist(event)
                    .remind_after(name, Duration::from_millis(delay_ms), payment)
                    .reply(self.balance))
            }
            AccountCmd::PayScheduled { name, to, amount } => {
                if let Err(e) = self.open().and_then(|()| self.funds(amount)) {
                    let failed = AccountEvent::PaymentFailed {
                        name,
                        reason: e.to_string(),
                    };
                    return Ok(Effect::persist(failed).reply(self.balance));
                }
                let debit = AccountEvent::TransferredOut {
                    to: to.id().to_string(),
                    amount,
                };
                let credit = AccountCmd::Credit {
                    from: ctx.id().to_string(),
                    amount,
                };
                let refund = AccountCmd::Refund {
                    to: to.id().to_string(),
                    amount,
                };
                Ok(Effect::persist(debit)
                    .and(AccountEvent::PaymentMade { name })
                    .send_with_compensation(&to, credit, refund)
                    .reply(self.balance - amount))
            }
            AccountCmd::CancelPayment { name } => {
                if !self.scheduled.contains(&name) {
                    return Err(AccountError::NoSuchPayment(name));
                }
                Ok(
                    Effect::persist(AccountEvent::PaymentCancelled { name: name.clone() })
                        .cancel_reminder(name)
                        .reply(self.balance),
                )
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
            AccountEvent::Deposited(n)
            | AccountEvent::TransferredIn { amount: n, .. }
            | AccountEvent::Refunded { amount: n, .. } => self.balance += n,
            AccountEvent::Withdrew(n) | AccountEvent::TransferredOut { amount: n, .. } => {
                self.balance -= n
            }
            AccountEvent::PaymentScheduled { name, .. } => self.scheduled.push(name.clone()),
            AccountEvent::PaymentCancelled { name }
            | AccountEvent::PaymentMade { name }
            | AccountEvent::PaymentFailed { name, .. } => self.scheduled.retain(|n| n != name),
        }
    }
}
