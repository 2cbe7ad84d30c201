//! Aether inside a ractor application.
//!
//! ```text
//! cargo run --example ractor_interop
//! ```
//!
//! A ractor supervisor (`Branch`) starts an Aether runtime under itself, so the runtime's root
//! actor is its child, and spawns a plain ractor actor (`Cashier`) whose handler calls Aether
//! account actors with `ask`. The branch prints the supervision events it gets: the runtime
//! starting, and terminating when it is shut down. Events are kept in memory.

use std::time::Duration;

use aether::prelude::*;
use aether::ractor::{self, Actor, ActorProcessingErr, RpcReplyPort, SupervisionEvent};

#[path = "shared/account.rs"]
mod account;

use account::{Account, Balance, Deposit, Open};

/// A plain ractor actor that serves deposits by asking Aether accounts.
struct Cashier;

enum CashierMsg {
    /// Deposit `amount` into `account`; reply with the new balance.
    Deposit {
        account: String,
        amount: u64,
        reply: RpcReplyPort<Result<u64, String>>,
    },
}

impl Actor for Cashier {
    type Msg = CashierMsg;
    /// The namespace of the accounts: a ref made from it finds the runtime serving it.
    type State = aether::Namespace;
    type Arguments = aether::Namespace;

    async fn pre_start(
        &self,
        _myself: ractor::ActorRef<CashierMsg>,
        namespace: aether::Namespace,
    ) -> Result<aether::Namespace, ActorProcessingErr> {
        Ok(namespace)
    }

    async fn handle(
        &self,
        _myself: ractor::ActorRef<CashierMsg>,
        msg: CashierMsg,
        namespace: &mut aether::Namespace,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            CashierMsg::Deposit {
                account,
                amount,
                reply,
            } => {
                let answer = async {
                    let account = ActorRef::<Account>::new(
                        namespace.clone(),
                        aether::ActorId::new(account)?,
                    )?;
                    // The first deposit opens the account.
                    if account.ask(Balance).await.is_err() {
                        account
                            .ask(Open {
                                owner: account.id().to_string(),
                            })
                            .await?;
                    }
                    Ok::<u64, anyhow::Error>(account.ask(Deposit(amount)).await?)
                }
                .await
                .map_err(|e| e.to_string());
                let _ = reply.send(answer);
            }
        }
        Ok(())
    }
}

/// A ractor supervisor that runs the Aether runtime as its child.
struct Branch;

enum BranchMsg {}

impl Actor for Branch {
    type Msg = BranchMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ractor::ActorRef<BranchMsg>,
        _: (),
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ractor::ActorRef<BranchMsg>,
        event: SupervisionEvent,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorStarted(child) => {
                println!("branch: child {} started", child.get_id())
            }
            SupervisionEvent::ActorTerminated(child, _, reason) => println!(
                "branch: child {} terminated ({})",
                child.get_id(),
                reason.unwrap_or_default()
            ),
            SupervisionEvent::ActorFailed(child, error) => {
                println!("branch: child {} failed: {error}", child.get_id())
            }
            _ => {}
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (branch, branch_done) = Actor::spawn(None, Branch, ()).await?;
    let rt = Runtime::builder()
        .namespace("branch")
        .register::<Account>()
        .memory_store()
        .supervised_by(branch.get_cell())
        .start()
        .await?;
    println!(
        "runtime root {} is a child of the branch",
        rt.root().get_id()
    );

    let (cashier, cashier_done) =
        Actor::spawn_linked(None, Cashier, rt.namespace().clone(), rt.root().clone()).await?;
    for (who, amount) in [("alice", 30), ("bob", 12), ("alice", 5)] {
        let balance = ractor::call!(cashier, |reply| CashierMsg::Deposit {
            account: who.into(),
            amount,
            reply,
        })?
        .map_err(anyhow::Error::msg)?;
        println!("cashier: {who} +{amount} -> balance {balance}");
    }

    // Shutting the runtime down stops its root, and with it the cashier linked under it.
    rt.shutdown().await?;
    tokio::time::timeout(Duration::from_secs(5), cashier_done).await??;
    println!("cashier after shutdown: {:?}", cashier.get_status());
    branch.stop(None);
    branch_done.await?;
    Ok(())
}
