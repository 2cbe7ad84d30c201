//! The chaos workload, FoundationDB style: transfers between **random** pairs of accounts
//! (cycles allowed: A pays B while B pays C while C pays A) on a cluster of node processes,
//! while nodes are paused past the failure timeout and resumed, SIGKILLed and restarted under the
//! same id, leave gracefully and join, the leader dies mid-rebalance, and NATS itself restarts
//! (a single file-store server) or loses a server (an R3 cluster). Each transfer is the payer's
//! debit plus the credit as a durable effect in the same commit; clients retry every non-final
//! answer with the same command id, as `docs/retry-patterns.md` says.
//!
//! Afterwards, one invariant check over the whole stored history:
//!
//! - total money is conserved (once every effect has landed);
//! - every credit has its debit: each `TransferredIn` names, as causation id, a commit of the
//!   payer holding the matching `TransferredOut`, and each debit has exactly one credit;
//! - no command id is stored twice on any actor, and every stored command was sent by a client
//!   (or is the credit of one);
//! - every actor's versions are gapless;
//! - every acknowledged transfer is stored exactly once;
//! - no transfer is left without a definite answer after its retries (none lost, none hung).
//!
//! `AETHER_CHAOS_SEED=<n>` replays a run's choice of pairs (each run prints its seed).

mod common;

#[path = "../examples/shared/account.rs"]
mod account;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use account::{Account, AccountEvent, Balance, Deposit, Open, Transfer};
use aether::prelude::*;
use aether::wire::CommitRecord;
use aether::{ActorId, ActorKey, ClusterView, Kind, Namespace, Runtime};
use common::map_watch::MapWatch;
use common::nats::{NatsCluster, NatsServer, wait_for_jetstream};
use common::process::{FAST, NodeProcess, node_binary, poll};
use common::workload::error_kind;
use parking_lot::Mutex;

const ACCOUNTS: usize = 24;
const WORKERS: usize = 12;
const OPENING_BALANCE: u64 = 1_000_000;
/// One attempt's deadline, and the most a transfer may take end to end, retries included.
const ATTEMPT: Duration = Duration::from_secs(5);
const BUDGET: Duration = Duration::from_secs(90);

#[derive(Default)]
struct Ledger {
    requests: AtomicU64,
    successes: AtomicU64,
    lost: AtomicU64,
    hung: AtomicU64,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    samples: Mutex<BTreeMap<&'static str, Vec<String>>>,
    /// (payer, payee, command id) of every acknowledged transfer.
    acked: Mutex<Vec<(String, String, CommandId)>>,
    /// Every command id a client sent, per account.
    issued: Mutex<HashMap<String, HashSet<CommandId>>>,
    /// Command ids of every transfer sent (acknowledged or not).
    transfers: Mutex<HashSet<CommandId>>,
}

fn name(i: usize) -> String {
    format!("acct-{i:02}")
}

fn refs(client: &Runtime) -> Vec<ActorRef<Account>> {
    (0..ACCOUNTS)
        .map(|i| client.actor::<Account>(name(i)).expect("valid id"))
        .collect()
}

fn seed() -> u64 {
    std::env::var("AETHER_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..))
}

async fn transfer_until_done(
    ledger: &Ledger,
    from: &ActorRef<Account>,
    to: &ActorRef<Account>,
    command_id: CommandId,
) {
    let started = Instant::now();
    loop {
        ledger.requests.fetch_add(1, Ordering::Relaxed);
        let cmd = Transfer {
            to: to.clone(),
            amount: 1,
        };
        let options = AskOptions::default()
            .command_id(command_id)
            .timeout(ATTEMPT);
        let answer = tokio::time::timeout(
            ATTEMPT + Duration::from_secs(5),
            from.ask_with(cmd, options),
        )
        .await;
        let error = match answer {
            Ok(Ok(_)) => {
                ledger.successes.fetch_add(1, Ordering::Relaxed);
                ledger
                    .acked
                    .lock()
                    .push((from.id().to_string(), to.id().to_string(), command_id));
                return;
            }
            Ok(Err(e)) => {
                {
                    let mut samples = ledger.samples.lock();
                    let kind = samples.entry(error_kind(&e)).or_default();
                    if kind.len() < 4 {
                        kind.push(format!("{} -> {}: {e}", from.id(), to.id()));
                    }
                }
                // Funds never run out here (amount 1, large balances) and a transfer waits on
                // nobody: a rejection is a bug, a definite answer that must not happen.
                if let AskError::Rejected(r) = &e {
                    panic!("unexpected rejection: {r}");
                }
                error_kind(&e)
            }
            Err(_) => {
                ledger.hung.fetch_add(1, Ordering::Relaxed);
                "hung"
            }
        };
        *ledger.errors.lock().entry(error).or_default() += 1;
        if started.elapsed() > BUDGET {
            eprintln!("lost: {} -> {} ({command_id})", from.id(), to.id());
            ledger.lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Jittered backoff, as any client should.
        tokio::time::sleep(Duration::from_millis(10 + fastrand::u64(..90))).await;
    }
}

fn start_workers(
    client: &Runtime,
    ledger: &Arc<Ledger>,
    stop: &Arc<AtomicBool>,
    seed: u64,
) -> Vec<tokio::task::JoinHandle<()>> {
    let accounts = Arc::new(refs(client));
    (0..WORKERS)
        .map(|w| {
            let (ledger, stop, accounts) =
                (Arc::clone(ledger), Arc::clone(stop), Arc::clone(&accounts));
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(seed.wrapping_add(w as u64 * 7919));
                while !stop.load(Ordering::Relaxed) {
                    // Random pairs, both directions: cycles of any length form all the time.
                    let a = rng.usize(..ACCOUNTS);
                    let b = (a + 1 + rng.usize(..ACCOUNTS - 1)) % ACCOUNTS;
                    let command_id = CommandId::random();
                    ledger
                        .issued
                        .lock()
                        .entry(name(a))
                        .or_default()
                        .insert(command_id);
                    ledger.transfers.lock().insert(command_id);
                    transfer_until_done(&ledger, &accounts[a], &accounts[b], command_id).await;
                }
            })
        })
        .collect()
}

async fn progress(ledger: &Ledger, more: u64, phase: &str) {
    let target = ledger.successes.load(Ordering::Relaxed) + more;
    poll(Duration::from_secs(120), phase, async || {
        (ledger.successes.load(Ordering::Relaxed) >= target).then_some(())
    })
    .await;
    println!(
        "{phase}: {} transfers acknowledged",
        ledger.successes.load(Ordering::Relaxed)
    );
}

/// The current leader (asked again while NATS itself recovers from a lost server).
async fn leader_of(view: &ClusterView) -> aether::cluster::LeaderInfo {
    poll(Duration::from_secs(60), "a leader", async || {
        view.leader().await.ok().flatten()
    })
    .await
}

/// The current shard map's epoch.
async fn epoch_of(view: &ClusterView) -> u64 {
    poll(Duration::from_secs(60), "a map", async || {
        view.shard_map().await.ok().flatten().map(|m| m.epoch)
    })
    .await
}

async fn map_of(view: &ClusterView, nodes: &[&str], what: &str) {
    let mut want: Vec<String> = nodes.iter().map(|s| s.to_string()).collect();
    want.sort();
    poll(Duration::from_secs(60), what, async || {
        view.shard_map()
            .await
            .ok()
            .flatten()
            .filter(|m| m.nodes == want)
    })
    .await;
}

/// SIGSTOPs a node that does not lead until the map drops it, lets the load go on without it,
/// then resumes it.
async fn pause_a_follower(view: &ClusterView, nodes: &[NodeProcess], ledger: &Ledger) {
    let leader = leader_of(view).await;
    let paused = nodes
        .iter()
        .find(|n| n.id != leader.node)
        .expect("a follower");
    paused.signal(libc::SIGSTOP);
    let others: Vec<&str> = nodes
        .iter()
        .filter(|n| n.id != paused.id)
        .map(|n| n.id.as_str())
        .collect();
    map_of(view, &others, "the paused node out of the map").await;
    progress(ledger, 200, "while a node is paused").await;
    paused.signal(libc::SIGCONT);
    println!("resumed {}", paused.id);
    progress(ledger, 200, "after the resume").await;
}

/// Opens and funds every account through `client`, recording the command ids.
async fn setup(client: &Runtime, ledger: &Ledger) {
    for account in refs(client) {
        let open = CommandId::random();
        let fund = CommandId::random();
        ledger
            .issued
            .lock()
            .entry(account.id().to_string())
            .or_default()
            .extend([open, fund]);
        let opts = |id| AskOptions::default().command_id(id).timeout(ATTEMPT);
        let owner = account.id().to_string();
        poll(Duration::from_secs(30), "open", async || {
            account
                .ask_with(
                    Open {
                        owner: owner.clone(),
                    },
                    opts(open),
                )
                .await
                .ok()
        })
        .await;
        poll(Duration::from_secs(30), "fund", async || {
            account
                .ask_with(Deposit(OPENING_BALANCE), opts(fund))
                .await
                .ok()
        })
        .await;
    }
}

fn key(ns: &str, id: &str) -> ActorKey {
    ActorKey::new(
        Namespace::new(ns).expect("ns"),
        Kind::new("account").expect("kind"),
        ActorId::new(id).expect("id"),
    )
}

fn decode(commit: &CommitRecord) -> Vec<AccountEvent> {
    commit
        .events
        .iter()
        .filter(|e| !e.is_system())
        .map(|e| rmp_serde::from_slice(&e.payload).expect("an account event"))
        .collect()
}

/// Stops the workers, waits until every effect has landed, and checks every invariant.
async fn stop_and_verify(
    client: &Runtime,
    ns: &str,
    ledger: &Ledger,
    stop: &AtomicBool,
    workers: Vec<tokio::task::JoinHandle<()>>,
) {
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    let expected = ACCOUNTS as u64 * OPENING_BALANCE;
    // Credits are durable effects: they land after their debits. Wait for all of them.
    let accounts = refs(client);
    let mut total = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        total = 0;
        let mut complete = true;
        for account in &accounts {
            match account
                .ask_with(Balance, AskOptions::default().timeout(ATTEMPT))
                .await
            {
                Ok(b) => total += b,
                Err(_) => complete = false,
            }
        }
        if complete && total == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let store = client.event_store();
    let issued = ledger.issued.lock().clone();
    let transfers = ledger.transfers.lock().clone();
    let mut histories: HashMap<String, Vec<CommitRecord>> = HashMap::new();
    let mut gaps = Vec::new();
    let (mut duplicates, mut unknown, mut commits) = (0usize, 0usize, 0usize);
    for i in 0..ACCOUNTS {
        let id = name(i);
        let report = store
            .read_with_errors(&key(ns, &id), 1)
            .await
            .expect("history");
        assert!(report.corrupt.is_empty(), "{id}: {:?}", report.corrupt);
        let mut next = 1;
        let mut seen = HashSet::new();
        for commit in &report.commits {
            commits += 1;
            if commit.first_version != next {
                gaps.push(format!(
                    "{id}: version {} after {}",
                    commit.first_version,
                    next - 1
                ));
            }
            next = commit.last_version() + 1;
            if !seen.insert(commit.command_id) {
                duplicates += 1;
            }
            let credit = decode(commit)
                .iter()
                .any(|e| matches!(e, AccountEvent::TransferredIn { .. }));
            let sent = if credit {
                commit.causation_id.is_some_and(|c| transfers.contains(&c))
            } else {
                issued
                    .get(&id)
                    .is_some_and(|s| s.contains(&commit.command_id))
            };
            if !sent {
                unknown += 1;
            }
        }
        histories.insert(id, report.commits);
    }
    // Every credit has its debit, every debit its credit (by causation id).
    let mut debits: HashMap<CommandId, (String, String, u64)> = HashMap::new();
    let mut credits: HashMap<CommandId, Vec<(String, String, u64)>> = HashMap::new();
    for (id, commits) in &histories {
        for commit in commits {
            for event in decode(commit) {
                match event {
                    AccountEvent::TransferredOut { to, amount } => {
                        debits.insert(commit.command_id, (id.clone(), to, amount));
                    }
                    AccountEvent::TransferredIn { from, amount } => {
                        let cause = commit.causation_id.expect("a credit names its debit");
                        credits
                            .entry(cause)
                            .or_default()
                            .push((from, id.clone(), amount));
                    }
                    _ => {}
                }
            }
        }
    }
    let mut orphans = Vec::new();
    for (cause, list) in &credits {
        match debits.get(cause) {
            Some(d) if list.len() == 1 && list[0] == *d => {}
            other => orphans.push(format!("credit {cause}: {list:?} for debit {other:?}")),
        }
    }
    let uncredited: Vec<String> = debits
        .iter()
        .filter(|(c, _)| !credits.contains_key(c))
        .map(|(c, d)| format!("debit {c} {d:?} has no credit"))
        .collect();
    let mut missing = 0usize;
    for (from, _, c) in ledger.acked.lock().iter() {
        let stored = histories[from]
            .iter()
            .filter(|commit| commit.command_id == *c)
            .count();
        if stored != 1 {
            missing += 1;
        }
    }
    let acked = ledger.successes.load(Ordering::Relaxed);
    let stats = client.stats();
    println!(
        "requests {}, acknowledged {acked}, errors {:?}, lost {}, hung {}, duplicates {duplicates}, \
         missing {missing}, unknown {unknown}, gaps {}, commits {commits}, debits {}, credits {}, \
         orphans {}, uncredited {}, total money {total} (expected {expected}), client retries {} \
         resends {} batched {}",
        ledger.requests.load(Ordering::Relaxed),
        ledger.errors.lock(),
        ledger.lost.load(Ordering::Relaxed),
        ledger.hung.load(Ordering::Relaxed),
        gaps.len(),
        debits.len(),
        credits.len(),
        orphans.len(),
        uncredited.len(),
        stats.remote_retries,
        stats.remote_resends,
        stats.remote_batched,
    );
    println!("error samples: {:#?}", ledger.samples.lock());
    assert_eq!(total, expected, "money is conserved");
    assert!(
        orphans.is_empty(),
        "credits without their debit: {orphans:?}"
    );
    assert!(
        uncredited.is_empty(),
        "debits without a credit: {uncredited:?}"
    );
    assert_eq!(
        ledger.lost.load(Ordering::Relaxed),
        0,
        "transfers without a definite answer"
    );
    assert_eq!(
        ledger.hung.load(Ordering::Relaxed),
        0,
        "requests without any answer"
    );
    assert_eq!(duplicates, 0, "commands stored twice on one actor");
    assert_eq!(missing, 0, "acknowledged transfers not stored exactly once");
    assert_eq!(unknown, 0, "stored commands nobody sent");
    assert!(gaps.is_empty(), "version gaps: {gaps:?}");
    assert!(
        debits.len() as u64 >= acked,
        "every acknowledged transfer has its debit"
    );
}

async fn client_of(urls: &str, ns: &str) -> Runtime {
    Runtime::builder()
        .namespace(ns)
        .register::<Account>()
        .cluster_client(urls)
        .start()
        .await
        .expect("client")
}

fn spawn(urls: &str, ns: &str, id: &str, replicas: &str) -> NodeProcess {
    let (urls, ns, id, replicas) = (
        urls.to_owned(),
        ns.to_owned(),
        id.to_owned(),
        replicas.to_owned(),
    );
    tokio::task::block_in_place(move || {
        NodeProcess::spawn_with(
            &node_binary(),
            &urls,
            &ns,
            &id,
            FAST,
            &[("AETHER_REPLICAS", replicas.as_str())],
        )
    })
}

/// A running scenario: three nodes, a map of them, funded accounts and the workers going.
struct Scenario {
    nodes: Vec<NodeProcess>,
    view: ClusterView,
    client: Runtime,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Scenario {
    /// Starts three nodes on `urls` (streams with `replicas`), opens and funds the accounts,
    /// and runs the random-pair workload until it is steady.
    async fn start(urls: &str, ns: &str, replicas: &str) -> Scenario {
        let seed = seed();
        println!("seed {seed} (AETHER_CHAOS_SEED={seed} replays its pairs)");
        wait_for_jetstream(urls).await;
        let nodes: Vec<NodeProcess> = ["node-1", "node-2", "node-3"]
            .iter()
            .map(|id| spawn(urls, ns, id, replicas))
            .collect();
        let view = ClusterView::connect(urls, ns).await.expect("view");
        map_of(&view, &["node-1", "node-2", "node-3"], "a map of three").await;
        let client = client_of(urls, ns).await;
        let ledger = Arc::new(Ledger::default());
        setup(&client, &ledger).await;
        let stop = Arc::new(AtomicBool::new(false));
        let workers = start_workers(&client, &ledger, &stop, seed);
        progress(&ledger, 300, "steady").await;
        Scenario {
            nodes,
            view,
            client,
            ledger,
            stop,
            workers,
        }
    }
}

/// Each scenario runs five processes against the clock; two at once on a small machine would
/// mostly test the machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One nats-server with a file store; node pauses, a kill and restart under the same id, a
/// restart of the nats-server itself, a graceful leave and a join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_transfers_survive_pauses_kills_and_a_nats_restart() {
    let _serial = SERIAL.lock().await;
    const NS: &str = "chaos1";
    let mut server = NatsServer::start();
    let urls = server.url();
    let Scenario {
        mut nodes,
        view,
        client,
        ledger,
        stop,
        workers,
    } = Scenario::start(&urls, NS, "1").await;

    // 1. A follower is paused past the failure timeout, then resumed.
    pause_a_follower(&view, &nodes, &ledger).await;

    // 2. A node is SIGKILLed and restarted under the same id.
    let victim = nodes.len() - 1;
    let id = nodes[victim].id.clone();
    nodes[victim].kill();
    progress(&ledger, 100, &format!("after {id} was killed")).await;
    nodes[victim] = spawn(&urls, NS, &id, "1");
    map_of(
        &view,
        &["node-1", "node-2", "node-3"],
        "the restarted node back",
    )
    .await;
    progress(&ledger, 200, &format!("after {id} restarted")).await;

    // 3. The nats-server stops and starts again (same store directory).
    tokio::task::block_in_place(|| server.kill());
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| server.restart());
    println!("nats-server restarted");
    wait_for_jetstream(&urls).await;
    progress(&ledger, 200, "after the nats-server restart").await;

    // 4. A node joins, another leaves gracefully.
    nodes.push(spawn(&urls, NS, "node-4", "1"));
    progress(&ledger, 100, "after node-4 joined").await;
    let leaving = nodes.remove(1);
    let left = leaving.id.clone();
    tokio::task::block_in_place(|| leaving.shutdown());
    let remaining: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    let names: Vec<&str> = remaining.iter().map(String::as_str).collect();
    map_of(&view, &names, "the leaver out of the map").await;
    progress(&ledger, 200, &format!("after {left} left")).await;

    stop_and_verify(&client, NS, &ledger, &stop, workers).await;
    client.shutdown().await.expect("client");
    for node in nodes {
        tokio::task::block_in_place(|| node.shutdown());
    }
}

/// Three nats-servers (R3): a join, a server killed mid-run, the leader SIGKILLed in the middle
/// of a rebalance, and a node paused past the failure timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_transfers_survive_a_lost_nats_server_and_a_leader_crash() {
    let _serial = SERIAL.lock().await;
    const NS: &str = "chaos3";
    let mut cluster = NatsCluster::start();
    let urls = cluster.urls();
    let Scenario {
        mut nodes,
        view,
        client,
        ledger,
        stop,
        workers,
    } = Scenario::start(&urls, NS, "3").await;
    let watch = MapWatch::start(&urls, NS, 1024).await;

    // 1. A node joins.
    nodes.push(spawn(&urls, NS, "node-4", "3"));
    map_of(
        &view,
        &["node-1", "node-2", "node-3", "node-4"],
        "node-4 in the map",
    )
    .await;
    progress(&ledger, 200, "after node-4 joined").await;

    // 2. One of the three nats-servers is killed for good.
    tokio::task::block_in_place(|| cluster.servers[2].kill());
    println!("killed nats-server {}", cluster.servers[2].name);
    progress(&ledger, 300, "with one nats-server gone").await;

    // 3. The leader is SIGKILLed in the middle of a rebalance: node-5 joins, and as soon as the
    //    map that gives it shards is out, the leader dies.
    let leader = leader_of(&view).await;
    let before = epoch_of(&view).await;
    let urls_alive = format!("{},{}", cluster.servers[0].url(), cluster.servers[1].url());
    let mut joining = {
        let urls = urls_alive.clone();
        tokio::task::block_in_place(move || {
            NodeProcess::start(
                &node_binary(),
                &urls,
                NS,
                "node-5",
                FAST,
                &[("AETHER_REPLICAS", "3")],
            )
        })
    };
    poll(Duration::from_secs(60), "a map with node-5", async || {
        view.shard_map()
            .await
            .ok()
            .flatten()
            .filter(|m| m.epoch > before && m.nodes.iter().any(|n| n == "node-5"))
    })
    .await;
    let position = nodes
        .iter()
        .position(|n| n.id == leader.node)
        .expect("the leader is a node");
    let mut dead_leader = nodes.remove(position);
    dead_leader.kill();
    println!(
        "killed leader {} (term {}) mid-rebalance",
        leader.node, leader.term
    );
    tokio::task::block_in_place(|| joining.wait_ready());
    nodes.push(joining);
    let survivors: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    let names: Vec<&str> = survivors.iter().map(String::as_str).collect();
    map_of(&view, &names, "a map of the survivors").await;
    progress(&ledger, 200, "after the leader was killed").await;

    // 4. A follower is paused past the failure timeout, then resumed.
    pause_a_follower(&view, &nodes, &ledger).await;

    stop_and_verify(&client, NS, &ledger, &stop, workers).await;
    assert!(watch.violations().is_empty(), "{:?}", watch.violations());
    client.shutdown().await.expect("client");
    for node in nodes {
        tokio::task::block_in_place(|| node.shutdown());
    }
    drop(dead_leader);
}
