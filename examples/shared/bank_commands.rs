//! The bank's text commands, shared by the cluster examples: one line in, one line out.
#![allow(dead_code)]

use aether::prelude::*;

use super::account::{
    Account, AccountError, Balance, CancelPayment, Deposit, Open, SchedulePayment, Transfer,
};

/// The namespace of the bank examples, unless `AETHER_NAMESPACE` says otherwise.
pub fn namespace() -> String {
    std::env::var("AETHER_NAMESPACE")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "bank".into())
}

/// Runs one command line against `rt` and returns the answer line:
///
/// - `open <id>` → `ok <id> <balance>` (an account that is already open is fine)
/// - `deposit <id> <amount>` → `ok <id> <balance>`
/// - `balance <id>` → `ok <id> <balance>`
/// - `transfer <from> <to> <amount>` → `ok <from> <balance>` (the payer's balance; the credit
///   follows as a durable effect)
/// - `schedule <from> <to> <amount> <delay_ms> <name>` → `ok <from> <balance>` (a reminder)
/// - `cancel <from> <name>` → `ok <from> <balance>`
/// - `locate <id>` → `owner <id> <node> <shard>` (cluster nodes only)
/// - `leader` → `leader <node> <term>` (cluster nodes only)
pub async fn run(rt: &Runtime, line: &str) -> anyhow::Result<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let account = |id: &str| rt.actor::<Account>(id);
    Ok(match words.as_slice() {
        ["open", id] => {
            let a = account(id)?;
            match a
                .ask(Open {
                    owner: id.to_string(),
                })
                .await
            {
                Ok(_) | Err(AskError::Rejected(AccountError::AlreadyOpen)) => {}
                Err(e) => return Err(e.into()),
            }
            format!("ok {id} {}", a.ask(Balance).await?)
        }
        ["deposit", id, amount] => {
            let balance = account(id)?.ask(Deposit(amount.parse()?)).await?;
            format!("ok {id} {balance}")
        }
        ["balance", id] => format!("ok {id} {}", account(id)?.ask(Balance).await?),
        ["transfer", from, to, amount] => {
            let cmd = Transfer {
                to: account(to)?,
                amount: amount.parse()?,
            };
            format!("ok {from} {}", account(from)?.ask(cmd).await?)
        }
        ["schedule", from, to, amount, delay_ms, name] => {
            let cmd = SchedulePayment {
                name: name.to_string(),
                to: account(to)?,
                amount: amount.parse()?,
                delay_ms: delay_ms.parse()?,
            };
            let payer = account(from)?;
            payer.ask(cmd).await?;
            format!("ok {from} {}", payer.ask(Balance).await?)
        }
        ["cancel", from, name] => {
            let cmd = CancelPayment {
                name: name.to_string(),
            };
            let payer = account(from)?;
            payer.ask(cmd).await?;
            format!("ok {from} {}", payer.ask(Balance).await?)
        }
        ["locate", id] => {
            let cluster = rt
                .cluster()
                .ok_or_else(|| anyhow::anyhow!("not a cluster node"))?;
            let location = cluster.locate::<Account>(id);
            format!(
                "owner {id} {} {}",
                location.owner.unwrap_or_else(|| "-".into()),
                location.shard
            )
        }
        ["leader"] => {
            let leader = rt.cluster().and_then(|c| c.leader());
            match leader {
                Some(l) => format!("leader {} {}", l.node, l.term),
                None => "leader - 0".into(),
            }
        }
        _ => anyhow::bail!("unknown command: {line}"),
    })
}
