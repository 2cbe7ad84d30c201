//! A cluster node with one actor kind, `counter`: the binary the test starts three times.
//!
//! It joins the cluster described by the `AETHER_*` environment variables (what
//! `ClusterConfig::from_env` reads), prints `ready <node id>` once it serves, then answers one
//! line per command read on stdin:
//!
//! - `add <id> <n>` → the counter's new value, or `error <reason>`;
//! - `get <id>` → its value, or `error <reason>`;
//! - `owner <id>` → the node that serves it.
//!
//! It shuts down gracefully when stdin closes.

use aether::prelude::*;
use aether::{ClusterConfig, Runtime};
use tokio::io::{AsyncBufReadExt, BufReader};

#[aether::data]
#[derive(Debug, Clone)]
struct Add(u64);

#[aether::data]
#[derive(Debug, Clone)]
struct Get;

#[aether::data]
#[derive(Debug, Clone)]
enum CounterEvent {
    Added(u64),
}

/// Counters never refuse a command.
#[aether::data]
#[derive(Debug)]
enum Never {}

impl std::fmt::Display for Never {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {}
    }
}

impl std::error::Error for Never {}

#[aether::data]
#[derive(Debug, Default, EventSourcedActor)]
#[actor(kind = "counter", event = CounterEvent, error = Never,
        commands(Add -> u64, Get -> u64))]
struct Counter {
    value: u64,
}

impl Handle<Add> for Counter {
    async fn handle(&self, cmd: Add, _: &mut Ctx<Self>) -> Result<Effect<Self, u64>, Never> {
        Ok(Effect::persist(CounterEvent::Added(cmd.0)).reply_with(|s: &Self| s.value))
    }
}

impl Handle<Get> for Counter {
    async fn handle(&self, _: Get, _: &mut Ctx<Self>) -> Result<Effect<Self, u64>, Never> {
        Ok(Effect::reply(self.value))
    }
}

impl Behavior for Counter {
    fn apply(&mut self, event: &CounterEvent) {
        let CounterEvent::Added(n) = event;
        self.value += n;
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = ClusterConfig::from_env()?;
    let node_id = config.id().to_owned();
    let rt = Runtime::join_cluster(config, Runtime::builder().register::<Counter>()).await?;
    println!("ready {node_id}");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["add", id, n] => match (rt.actor::<Counter>(*id), n.parse::<u64>()) {
                (Ok(counter), Ok(n)) => counter
                    .ask(Add(n))
                    .await
                    .map_or_else(|e| format!("error {e}"), |v| v.to_string()),
                _ => "error bad arguments".to_owned(),
            },
            ["get", id] => match rt.actor::<Counter>(*id) {
                Ok(counter) => counter
                    .ask(Get)
                    .await
                    .map_or_else(|e| format!("error {e}"), |v| v.to_string()),
                Err(e) => format!("error {e}"),
            },
            ["owner", id] => rt
                .cluster()
                .and_then(|c| c.locate_kind("counter", id).owner)
                .unwrap_or_else(|| "none".to_owned()),
            _ => format!("error unknown command: {line}"),
        };
        println!("{answer}");
    }
    rt.shutdown().await?;
    Ok(())
}
