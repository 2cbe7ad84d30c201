//! `aether`: the admin tool of an Aether cluster.
//!
//! It connects to NATS as any client does — the same `AETHER_NATS_*` variables give it
//! credentials and TLS — and reads the cluster's state where the nodes keep it: the node
//! registry, the leader lease and the shard map in the namespace's KV buckets, the actors'
//! events and snapshots in JetStream, live events on the bus. The one thing it writes is an
//! operator's request: the drain set (see `drain`).
//!
//! Every command prints a table for people and, with `--json`, one JSON document for scripts.
//! Exit status: 0 done, 1 the command failed, 2 bad arguments, 3 NATS unreachable or refusing
//! the credentials.

mod commands;
mod context;
mod dashboard;
mod msgpack;
mod output;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::context::{Ctx, Unreachable, Usage};

/// The admin tool of an Aether cluster.
#[derive(Parser, Debug)]
#[command(
    name = "aether",
    version,
    about = "The admin tool of an Aether cluster: status, shards, actors, live events, draining, a live dashboard",
    after_help = "Credentials and TLS come from AETHER_NATS_USER/PASSWORD, AETHER_NATS_TOKEN, \
AETHER_NATS_NKEY_SEED_FILE, AETHER_NATS_CREDS, AETHER_NATS_TLS_REQUIRED/TLS_CA/TLS_CERT/TLS_KEY.\n\
Exit status: 0 done, 1 the command failed, 2 bad arguments, 3 NATS unreachable or refusing the credentials."
)]
struct Cli {
    /// NATS server URL(s), comma-separated.
    #[arg(
        long,
        short = 's',
        env = "AETHER_NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        global = true
    )]
    server: String,
    /// The namespace (the cluster) to look at.
    #[arg(long, short = 'n', env = "AETHER_NAMESPACE", global = true)]
    namespace: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// How long to wait for NATS when connecting, in seconds.
    #[arg(long, default_value_t = 5, value_name = "SECONDS", global = true)]
    connect_timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The cluster: its state, node by node.
    Cluster {
        #[command(subcommand)]
        what: ClusterCommand,
    },
    /// The shard map: owners per node, and the shards moving between nodes.
    Shards {
        /// List every shard, not only the moving ones.
        #[arg(long)]
        all: bool,
    },
    /// One actor: where it lives, its history, its snapshot.
    Actor {
        #[command(subcommand)]
        what: ActorCommand,
    },
    /// Follows the namespace's events live, as nodes store them.
    Tail(commands::tail::TailArgs),
    /// Moves every shard off a node that stays up (before maintenance), and waits until it
    /// holds none.
    Drain(commands::drain::DrainArgs),
    /// Gives a drained node shards again.
    Undrain(commands::drain::DrainArgs),
    /// Undrains every node: shards spread over all alive nodes again.
    Rebalance(commands::drain::WaitArgs),
    /// Serves a live web page of the cluster: nodes, leader, the shard grid, moves, events.
    Dashboard {
        /// Where to serve it.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// Nodes and their health, the leader and its term, the map's epoch, shards per node.
    Status,
}

#[derive(Subcommand, Debug)]
enum ActorCommand {
    /// The actor's shard, its owner and why, the map's epoch, the actor's version.
    Locate {
        /// The actor kind.
        kind: String,
        /// The actor id.
        id: String,
    },
    /// The actor's stored events, oldest first (payloads decoded from MessagePack to JSON).
    Events {
        /// The actor kind.
        kind: String,
        /// The actor id.
        id: String,
        /// The first version to show.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Show at most this many events.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// The actor's latest snapshot, decoded.
    Snapshot {
        /// The actor kind.
        kind: String,
        /// The actor id.
        id: String,
    },
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with status 0; mistakes to stderr with 2.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aether: {e:#}");
            ExitCode::from(if e.downcast_ref::<Unreachable>().is_some() {
                3
            } else if e.downcast_ref::<Usage>().is_some() {
                2
            } else {
                1
            })
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let ctx = Ctx::new(
        &cli.server,
        cli.namespace,
        cli.json,
        Duration::from_secs(cli.connect_timeout.max(1)),
    )?;
    match cli.command {
        Command::Cluster {
            what: ClusterCommand::Status,
        } => commands::status::run(&ctx).await,
        Command::Shards { all } => commands::shards::run(&ctx, all).await,
        Command::Actor { what } => match what {
            ActorCommand::Locate { kind, id } => commands::actor::locate(&ctx, &kind, &id).await,
            ActorCommand::Events {
                kind,
                id,
                from,
                limit,
            } => commands::actor::events(&ctx, &kind, &id, from, limit).await,
            ActorCommand::Snapshot { kind, id } => {
                commands::actor::snapshot(&ctx, &kind, &id).await
            }
        },
        Command::Tail(args) => commands::tail::run(&ctx, args).await,
        Command::Drain(args) => commands::drain::drain(&ctx, args, true).await,
        Command::Undrain(args) => commands::drain::drain(&ctx, args, false).await,
        Command::Rebalance(args) => commands::drain::rebalance(&ctx, args).await,
        Command::Dashboard { listen } => dashboard::run(&ctx, listen).await,
    }
}
