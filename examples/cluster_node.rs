//! One node of a bank cluster, configured from the environment.
//!
//! ```text
//! AETHER_NATS_URL=nats://127.0.0.1:4222 AETHER_NODE_ID=node-1 cargo run --example cluster_node
//! ```
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `AETHER_NATS_URL` | NATS servers, comma-separated | required |
//! | `AETHER_NAMESPACE` | the namespace | `bank` |
//! | `AETHER_SERVE_ONLY` | `1`: read no commands, serve until SIGTERM / Ctrl-C (containers, scripts) | unset |
//! | `AETHER_LOG` | `info`, `debug`, ...: the runtime's log on stderr | unset |
//! | `AETHER_NODE_ID` | this node's id | `node-<random>` |
//! | `AETHER_REPLICAS` | replicas of streams and buckets | `1` |
//! | `AETHER_HEARTBEAT_MS`, `AETHER_FAILURE_TIMEOUT_MS`, `AETHER_LEASE_MS` | cluster timing | 1000, 3000, 3000 |
//! | `AETHER_ASK_TIMEOUT_MS` and the other runtime variables | see `aether::config` | |
//!
//! The node prints `ready <node-id>` once it serves its shards, then reads commands from
//! stdin, one per line, and answers each with one line:
//!
//! - `open <id>` → `ok <id> <balance>` (an account that is already open is fine)
//! - `deposit <id> <amount>` → `ok <id> <balance>`
//! - `balance <id>` → `ok <id> <balance>`
//! - `transfer <from> <to> <amount>` → `ok <from> <balance>` (the credit follows as a durable
//!   effect)
//! - `schedule <from> <to> <amount> <delay_ms> <name>` → `ok <from> <balance>` (a scheduled
//!   payment: a durable reminder)
//! - `cancel <from> <name>` → `ok <from> <balance>`
//! - `locate <id>` → `owner <id> <node> <shard>`
//! - `leader` → `leader <node> <term>`
//! - anything failing → `err <message>`
//!
//! End of input (or SIGTERM / Ctrl-C) shuts the node down gracefully: it hands its shards to
//! the others before it exits. `examples/bank_client.rs` sends the same commands from outside
//! the cluster.

#[path = "shared/account.rs"]
mod account;
#[path = "shared/bank_commands.rs"]
mod bank_commands;

use account::Account;
use aether::prelude::*;
use aether::{ClusterConfig, RuntimeConfig};
use bank_commands::run;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // AETHER_LOG=info (or debug, trace) prints the runtime's log on stderr.
    if let Ok(level) = std::env::var("AETHER_LOG") {
        tracing_subscriber::fmt()
            .with_max_level(level.parse().unwrap_or(tracing::Level::INFO))
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .init();
    }
    let urls = std::env::var("AETHER_NATS_URL")
        .map_err(|_| anyhow::anyhow!("set AETHER_NATS_URL to the cluster's NATS servers"))?;
    // The bank's namespace unless AETHER_NAMESPACE says otherwise; the other AETHER_* cluster
    // variables (node id, heartbeat, lease, ...) override the defaults.
    let config = ClusterConfig::new(urls, bank_commands::namespace()).env_overrides()?;
    let serve_only = std::env::var("AETHER_SERVE_ONLY").is_ok_and(|v| v == "1");
    let node_id = config.id().to_owned();
    let runtime_config = RuntimeConfig::from_env()?;
    let rt = Runtime::join_cluster(
        config,
        Runtime::builder()
            .config(runtime_config)
            .register::<Account>(),
    )
    .await?;
    println!("ready {node_id}");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            line = lines.next_line(), if !serve_only => match line? {
                Some(line) if line.trim().is_empty() => continue,
                Some(line) => {
                    let answer = match run(&rt, line.trim()).await {
                        Ok(answer) => answer,
                        Err(e) => format!("err {e}"),
                    };
                    println!("{answer}");
                }
                None => break,
            },
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
    }
    rt.shutdown().await?;
    println!("stopped {node_id}");
    Ok(())
}
