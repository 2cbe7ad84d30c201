//! The account actor shared by the examples: open, deposit, withdraw, transfer (a debit here and
//! the credit as a durable effect there), scheduled payments (a reminder), balance.
#![allow(dead_code)]

use std::time::Duration;

use aether::prelude::*;

/// Open the account for `owner`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Open {
    pub owner: String,
}

/// Put money in; the reply is the new balance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deposit(pub u64);

/// Take money out; the reply is the new balance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Withdraw(pub u64);

/// Move money to another account: the debit is stored here, and the credit is sent to `to` as
/// a durable effect in the same commit (refunded if `to` refuses it). The reply is the payer's
/// new balance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Transfer {
    pub to: ActorRef<Account>,
    pub amount: u64,
}

/// The credit half of a transfer, sent by the payer as a durable effect.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credit {
    pub from: String,
    pub amount: u64,
}

/// The compensation of a transfer whose credit was refused: the money comes back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Refund {
    pub to: String,
    pub amount: u64,
}

/// Pay `amount` to `to` after `delay_ms`, unless cancelled: a durable reminder named `name`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SchedulePayment {
    pub name: String,
    pub to: ActorRef<Account>,
    pub amount: u64,
    pub delay_ms: u64,
}

/// Cancel the scheduled payment `name`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CancelPayment {
    pub name: String,
}

/// The reminder of a scheduled payment, fired: make the payment now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PayScheduled {
    pub name: String,
    pub to: ActorRef<Account>,
    pub amount: u64,
}

/// Read the balance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Balance;

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

/// The state of an account. Each command declares its reply: the money-moving ones answer with
/// the balance after them, read from the folded state.
#[derive(Debug, Default, Clone, Serialize, Deserialize, EventSourcedActor)]
#[actor(kind = "account", event = AccountEvent, error = AccountError, snapshot_every = 100,
        commands(Open -> (), Deposit -> u64, Withdraw -> u64, Transfer -> u64, Credit -> u64,
                 Refund -> u64, SchedulePayment -> (), CancelPayment -> (), PayScheduled -> (),
                 Balance -> u64))]
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

/// A payment of `amount` to `to`: the debit here and the credit there are decided together
/// and stored in one commit. The credit is delivered after it, exactly once, however often
/// this node or the payee's crashes meanwhile, and refunded if the payee refuses it; the turn
/// never waits on the payee.
fn pay(to: &ActorRef<Account>, amount: u64, ctx: &Ctx<Account>) -> Persist<Account> {
    let debit = AccountEvent::TransferredOut {
        to: to.id().to_string(),
        amount,
    };
    let credit = Credit {
        from: ctx.id().to_string(),
        amount,
    };
    let refund = Refund {
        to: to.id().to_string(),
        amount,
    };
    Effect::persist(debit).send_with_compensation(to, credit, refund)
}

/// The new balance, read from the state once the turn's events are folded.
fn balance(account: &Account) -> u64 {
    account.balance
}

impl Handle<Open> for Account {
    async fn handle(
        &self,
        Open { owner }: Open,
        _: &mut Ctx<Self>,
    ) -> Result<Effect<Self, ()>, AccountError> {
        if self.owner.is_some() {
            return Err(AccountError::AlreadyOpen);
        }
        Ok(Effect::persist(AccountEvent::Opened { owner }).reply(()))
    }
}

impl Handle<Deposit> for Account {
    async fn handle(
        &self,
        Deposit(amount): Deposit,
        _: &mut Ctx<Self>,
    ) -> Result<Effect<Self, u64>, AccountError> {
        self.open()?;
        Ok(Effect::persist(AccountEvent::Deposited(amount)).reply_with(balance))
    }
}

impl Handle<Withdraw> for Account {
    async fn handle(
        &self,
        Withdraw(amount): Withdraw,
        _: &mut Ctx<Self>,
    ) -> Result<Effect<Self, u64>, AccountError> {
        self.open()?;
        self.funds(amount)?;
        Ok(Effect::persist(AccountEvent::Withdrew(amount)).reply_with(balance))
    }
}

impl Handle<Transfer> for Account {
    async fn handle(
        &self,
        Transfer { to, amount }: Transfer,
        ctx: &mut Ctx<Self>,
    ) -> Result<Effect<Self, u64>, AccountError> {
        self.open()?;
        self.funds(amount)?;
        Ok(pay(&to, amount, ctx).reply_with(balance))
    }
}

impl Handle<Credit> for Account {
    async fn handle(
        &self,
        Credit { from, amount }: Credit,
        _: &mut Ctx<Self>,
    ) -> Result<Effect<Self, u64>, AccountError> {
        // A closed payee refuses: the payer gets a Refund back (its compensation).
        self.open()?;
        Ok(Effect::persist(AccountEvent::TransferredIn { from, amount }).reply_with(balance))
    }
}

impl Handle<Refund> for Account {
    async fn handle(
        &self,
        Refund { to, amount }: Refund,
        _: &mut Ctx<Self>,
    ) -> Result<Effect<Self, u64>, AccountError> {
        Ok(Effect::persist(AccountEvent::Refunded { to, amount }).reply_with(balance))
    }
}

impl Handle<SchedulePayment> for Account {
    async fn handle(
        &self,
        cmd: SchedulePayment,
        _: &mut Ctx<Self>,
    ) -> Result<Effect<Self, ()>, AccountError> {
        self.open()?;
        let SchedulePayment {
            name,
            to,
            amount,
            delay_ms,
        } = cmd;
        let event = AccountEvent::PaymentScheduled {
            name: name.clone(),
            to: to.id().to_string(),
            amount,
        };
        // The reminder is stored with this commit and fires once, after restarts and moves
        // too; the funds are checked when it fires.
        let payment = PayScheduled {
            name: name.clone(),
            to,
            amount,
        };
        Ok(Effect::persist(event)
            .remind_after(name, Duration::from_millis(delay_ms), payment)
            .reply(()))
    }
}

impl Handle<PayScheduled> for Account {
    async fn handle(
        &self,
        cmd: PayScheduled,
        ctx: &mut Ctx<Self>,
    ) -> Result<Effect<Self, ()>, AccountError> {
        let PayScheduled { name, to, amount } = cmd;
        if let Err(e) = self.open().and_then(|()| self.funds(amount)) {
            let failed = AccountEvent::PaymentFailed {
                name,
                reason: e.to_string(),
            };
            return Ok(Effect::persist(failed).reply(()));
        }
        Ok(pay(&to, amount, ctx)
            .and(AccountEvent::PaymentMade { name })
            .reply(()))
    }
}

impl Handle<CancelPayment> for Account {
    async fn handle(
        &self,
        CancelPayment { name }: CancelPayment,
        _: &mut Ctx<Self>,
    ) -> Result<Effect<Self, ()>, AccountError> {
        if !self.scheduled.contains(&name) {
            return Err(AccountError::NoSuchPayment(name));
        }
        Ok(
            Effect::persist(AccountEvent::PaymentCancelled { name: name.clone() })
                .cancel_reminder(name)
                .reply(()),
        )
    }
}

impl Handle<Balance> for Account {
    async fn handle(
        &self,
        _: Balance,
        _: &mut Ctx<Self>,
    ) -> Result<Effect<Self, u64>, AccountError> {
        self.open()?;
        Ok(Effect::reply(self.balance))
    }
}

impl Behavior for Account {
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
