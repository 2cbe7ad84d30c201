//! B15: workflows across actors on three node processes.
//!
//! The bench starts a nats-server and re-executes itself as three node processes
//! (`AETHER_BENCH_NODE=<id>`); a cluster client in the bench process transfers money between
//! 64 accounts from 32 concurrent callers, each transfer with a fresh command id, retried with
//! the same id until acknowledged. Three workloads, interleaved and repeated (median of 3):
//!
//! - **effects, random pairs**: the payer stores its debit and the credit as a durable effect in
//!   one commit (cycles A→B→C→A form all the time; nothing waits, nothing deadlocks);
//! - **effects, ordered pairs**: the same, money flowing from lower to higher accounts only;
//! - **asks, ordered pairs**: the payer's turn asks the payee to credit (`ctx.ask`) and then
//!   stores its debit — the saga pattern that random pairs would deadlock.
//!
//! A run counts transfers per second from its start until every transfer is acknowledged
//! **and** every credit has landed (money conserved again), so asynchronous credits get no
//! head start. Figures: random ÷ ordered (effects) ≥ 0.8, and effects ÷ asks (ordered) ≥ 0.8.

#[path = "../tests/common/nats.rs"]
#[allow(dead_code)]
mod nats;
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aether::prelude::*;
use aether::{ClusterView, Runtime};
use support::nodes::{Node, wait_map};
use support::{Figure, measure_time, median, report};

const ACCOUNTS: usize = 64;
const CALLERS: usize = 32;
const OPENING: u64 = 1_000_000_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Cmd {
    Open,
    /// Debit here, credit `to` by durable effect.
    Send {
        to: ActorRef<Wallet>,
        amount: u64,
    },
    /// Credit `to` by ask, then debit here.
    SendByAsk {
        to: ActorRef<Wallet>,
        amount: u64,
    },
    Credit(u64),
    Balance,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Event {
    Opened(u64),
    Debited(u64),
    Credited(u64),
}

#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
enum WalletError {
    #[error("insufficient funds")]
    Insufficient,
    #[error("credit failed: {0}")]
    CreditFailed(String),
}

#[derive(Debug, Default, Serialize, Deserialize, EventSourcedActor)]
#[actor(kind = "wallet", command = Cmd, event = Event, reply = u64, error = WalletError,
        snapshot_every = 1000)]
struct Wallet {
    balance: u64,
}

impl Handle<Cmd> for Wallet {
    async fn handle(&self, cmd: Cmd, ctx: &mut Ctx<Self>) -> Result<Effect<Self>, WalletError> {
        match cmd {
            Cmd::Open if self.balance == 0 => {
                Ok(Effect::persist(Event::Opened(OPENING)).reply(OPENING))
            }
            Cmd::Open | Cmd::Balance => Ok(Effect::reply(self.balance)),
            Cmd::Send { to, amount } => {
                let left = self
                    .balance
                    .checked_sub(amount)
                    .ok_or(WalletError::Insufficient)?;
                Ok(Effect::persist(Event::Debited(amount))
                    .send(&to, Cmd::Credit(amount))
                    .reply(left))
            }
            Cmd::SendByAsk { to, amount } => {
                let left = self
                    .balance
                    .checked_sub(amount)
                    .ok_or(WalletError::Insufficient)?;
                ctx.ask(&to, Cmd::Credit(amount))
                    .await
                    .map_err(|e| WalletError::CreditFailed(e.to_string()))?;
                Ok(Effect::persist(Event::Debited(amount)).reply(left))
            }
            Cmd::Credit(amount) => {
                Ok(Effect::persist(Event::Credited(amount)).reply(self.balance + amount))
            }
        }
    }
}

impl Behavior for Wallet {
    fn apply(&mut self, event: &Event) {
        match event {
            Event::Opened(n) | Event::Credited(n) => self.balance += n,
            Event::Debited(n) => self.balance -= n,
        }
    }
}

fn main() -> anyhow::Result<()> {
    support::nodes::main_or_node(|| Runtime::builder().register::<Wallet>(), bench_main())
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    EffectsRandom,
    EffectsOrdered,
    AsksOrdered,
}

/// One run: transfers per second until all are acknowledged and all credits have landed.
async fn run(wallets: &Arc<Vec<ActorRef<Wallet>>>, mode: Mode, window: Duration) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let callers: Vec<_> = (0..CALLERS)
        .map(|c| {
            let (wallets, stop, done) = (Arc::clone(wallets), Arc::clone(&stop), Arc::clone(&done));
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(c as u64 * 31 + mode as u64);
                while !stop.load(Ordering::Relaxed) {
                    let (a, b) = match mode {
                        Mode::EffectsRandom => {
                            let a = rng.usize(..ACCOUNTS);
                            (a, (a + 1 + rng.usize(..ACCOUNTS - 1)) % ACCOUNTS)
                        }
                        Mode::EffectsOrdered | Mode::AsksOrdered => {
                            let a = rng.usize(..ACCOUNTS - 1);
                            (a, a + 1 + rng.usize(..ACCOUNTS - 1 - a))
                        }
                    };
                    let to = wallets[b].clone();
                    let cmd = match mode {
                        Mode::AsksOrdered => Cmd::SendByAsk { to, amount: 1 },
                        _ => Cmd::Send { to, amount: 1 },
                    };
                    let options = AskOptions::default().command_id(CommandId::random());
                    loop {
                        match wallets[a].ask_with(cmd.clone(), options.clone()).await {
                            Ok(_) => break,
                            Err(AskError::Rejected(e)) => panic!("rejected: {e}"),
                            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(window).await;
    stop.store(true, Ordering::Relaxed);
    for c in callers {
        c.await.expect("caller");
    }
    // Until every credit has landed: the money adds up again.
    let expected = ACCOUNTS as u64 * OPENING;
    loop {
        let mut total = 0;
        for w in wallets.iter() {
            total += w.ask(Cmd::Balance).await.unwrap_or(0);
        }
        if total == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

async fn bench_main() -> anyhow::Result<()> {
    let server = nats::NatsServer::start();
    let url = server.url();
    let ns = "b15";
    let nodes: Vec<Node> = ["node-1", "node-2", "node-3"]
        .iter()
        .map(|id| Node::start(&url, ns, id))
        .collect();
    for n in &nodes {
        n.wait_ready();
    }
    let view = ClusterView::connect(&url, ns)
        .await
        .map_err(anyhow::Error::msg)?;
    wait_map(&view, 3).await?;
    let client = Runtime::builder()
        .namespace(ns)
        .register::<Wallet>()
        .cluster_client(&url)
        .start()
        .await?;
    let wallets: Arc<Vec<ActorRef<Wallet>>> = Arc::new(
        (0..ACCOUNTS)
            .map(|i| client.actor::<Wallet>(format!("w-{i}")))
            .collect::<Result<_, _>>()?,
    );
    for w in wallets.iter() {
        w.ask(Cmd::Open).await?;
    }
    let window = measure_time().max(Duration::from_secs(2));
    // Warm up every path once.
    for mode in [Mode::EffectsRandom, Mode::AsksOrdered] {
        run(&wallets, mode, Duration::from_millis(500)).await;
    }
    let (mut random, mut ordered, mut asks) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..3 {
        for mode in [Mode::EffectsRandom, Mode::EffectsOrdered, Mode::AsksOrdered] {
            let rate = run(&wallets, mode, window).await;
            println!("round {round}: {mode:?} {rate:.0} transfers/s");
            match mode {
                Mode::EffectsRandom => random.push(rate),
                Mode::EffectsOrdered => ordered.push(rate),
                Mode::AsksOrdered => asks.push(rate),
            }
        }
    }
    let (random, ordered, asks) = (median(random), median(ordered), median(asks));
    report(Figure {
        id: "B15",
        measure: "durable-effect transfers, random pairs ÷ ordered pairs (3 nodes)",
        ours: random,
        baseline: ordered,
        unit: "xfer/s",
        target: (">=", 0.8),
    });
    report(Figure {
        id: "B15",
        measure: "durable-effect transfers ÷ ask-based transfers, ordered pairs",
        ours: ordered,
        baseline: asks,
        unit: "xfer/s",
        target: (">=", 0.8),
    });
    client.shutdown().await?;
    for n in nodes {
        n.leave();
    }
    drop(server);
    Ok(())
}
