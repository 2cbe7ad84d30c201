//! A client of a bank cluster: calls the accounts without hosting any.
//!
//! ```text
//! AETHER_NATS_URL=nats://127.0.0.1:4222 cargo run --example bank_client -- open alice
//! AETHER_NATS_URL=nats://127.0.0.1:4222 cargo run --example bank_client -- deposit alice 10
//! AETHER_NATS_URL=nats://127.0.0.1:4222 cargo run --example bank_client     # one command a line
//! ```
//!
//! It joins no cluster: `Runtime::builder().cluster_client(urls)` makes a runtime that sends
//! every ask over NATS to whichever node serves the account's shard (retrying, with the same
//! command id, while a shard moves between nodes). Commands are those of
//! `examples/cluster_node.rs` (`open`, `deposit`, `balance`, `transfer`); `AETHER_NAMESPACE`
//! defaults to `bank`. Each answer is one line on stdout.

#[path = "shared/account.rs"]
mod account;
#[path = "shared/bank_commands.rs"]
mod bank_commands;

use account::Account;
use aether::{NatsConfig, Runtime};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // AETHER_NATS_URL, and the credentials and TLS settings of a secured NATS
    // (AETHER_NATS_USER/PASSWORD, AETHER_NATS_CREDS, AETHER_NATS_TLS_*: see docs/security.md).
    let nats = NatsConfig::from_env()?;
    let rt = Runtime::builder()
        .namespace(bank_commands::namespace())
        .register::<Account>()
        .cluster_client(nats)
        .start()
        .await?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let answer = |result: anyhow::Result<String>| match result {
        Ok(answer) => answer,
        Err(e) => format!("err {e}"),
    };
    if args.is_empty() {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Some(line) = lines.next_line().await? {
            if !line.trim().is_empty() {
                println!("{}", answer(bank_commands::run(&rt, line.trim()).await));
            }
        }
    } else {
        let line = answer(bank_commands::run(&rt, &args.join(" ")).await);
        println!("{line}");
        if line.starts_with("err") {
            rt.shutdown().await?;
            std::process::exit(1);
        }
    }
    rt.shutdown().await?;
    Ok(())
}
