//! Durable reminders on a cluster of node processes: a scheduled payment (a reminder of the
//! payer, see `examples/shared/account.rs`) fires exactly once after its node is SIGKILLed,
//! after its shard moves to a joining node, and after the whole cluster was down when it came
//! due; a cancelled one never fires, whatever happens in between.

mod common;

#[path = "../examples/shared/account.rs"]
mod account;

use std::time::Duration;

use account::{Account, Balance, CancelPayment, Deposit, Open, SchedulePayment};
use aether::prelude::*;
use aether::{ActorKey, ClusterView, Runtime};
use common::nats::{NatsServer, wait_for_jetstream};
use common::process::{FAST, NodeProcess, node_binary, poll};

const AMOUNT: u64 = 7;

fn spawn(url: &str, ns: &str, id: &str) -> NodeProcess {
    let (url, ns, id) = (url.to_owned(), ns.to_owned(), id.to_owned());
    tokio::task::block_in_place(move || {
        NodeProcess::spawn_with(
            &node_binary(),
            &url,
            &ns,
            &id,
            FAST,
            &[("AETHER_REPLICAS", "1")],
        )
    })
}

async fn client(url: &str, ns: &str) -> Runtime {
    Runtime::builder()
        .namespace(ns)
        .register::<Account>()
        .cluster_client(url)
        .start()
        .await
        .expect("client")
}

async fn map_of(view: &ClusterView, n: usize) {
    poll(Duration::from_secs(60), "a map", async || {
        view.shard_map()
            .await
            .ok()
            .flatten()
            .filter(|m| m.nodes.len() == n)
    })
    .await;
}

async fn ask<C: Command<Account> + Clone + Sync>(account: &ActorRef<Account>, cmd: C) -> C::Reply {
    let cmd = &cmd;
    poll(Duration::from_secs(30), "an answer", async || {
        account
            .ask_with(
                cmd.clone(),
                AskOptions::default().timeout(Duration::from_secs(5)),
            )
            .await
            .ok()
    })
    .await
}

async fn open(rt: &Runtime, id: &str, funds: u64) -> ActorRef<Account> {
    let a = rt.actor::<Account>(id).expect("id");
    let opened = a.ask(Open { owner: id.into() }).await.is_ok();
    assert!(opened, "{id} opens");
    if funds > 0 {
        ask(&a, Deposit(funds)).await;
    }
    a
}

async fn count(rt: &Runtime, actor: &ActorKey, event_type: &str) -> usize {
    rt.event_store()
        .read(actor, 1)
        .await
        .expect("history")
        .iter()
        .filter(|e| e.event_type == event_type)
        .count()
}

fn schedule(name: &str, to: &ActorRef<Account>, delay_ms: u64) -> SchedulePayment {
    SchedulePayment {
        name: name.into(),
        to: to.clone(),
        amount: AMOUNT,
        delay_ms,
    }
}

/// The node that owns `id` now (asked of any running node).
fn owner(nodes: &mut [NodeProcess], id: &str) -> String {
    let answer = tokio::task::block_in_place(|| nodes[0].command(&format!("locate {id}")));
    answer
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("locate answered {answer:?}"))
        .to_owned()
}

/// Waits until `payee` received `payments` scheduled payments, then checks each fired once.
async fn paid_once(
    rt: &Runtime,
    payers: &[ActorRef<Account>],
    payee: &ActorRef<Account>,
    base: u64,
) {
    let want = base + AMOUNT * payers.len() as u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while ask(payee, Balance).await < want {
        if std::time::Instant::now() > deadline {
            for payer in payers {
                let made = count(rt, payer.key(), "PaymentMade").await;
                let history: Vec<String> = rt
                    .event_store()
                    .read_with_errors(payer.key(), 1)
                    .await
                    .expect("history")
                    .commits
                    .iter()
                    .flat_map(|c| c.events.iter().map(|e| e.event_type.clone()))
                    .collect();
                println!("{payer}: {made} payment(s) made; history {history:?}");
            }
            panic!("the scheduled payments were not all made in 40 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Long enough for a duplicate firing to show.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(ask(payee, Balance).await, want, "each fired once");
    for payer in payers {
        assert_eq!(count(rt, payer.key(), "PaymentMade").await, 1, "{payer}");
    }
    assert_eq!(
        count(rt, payee.key(), "TransferredIn").await,
        payers.len(),
        "one credit per payment"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reminder_fires_once_after_its_node_is_killed() {
    const NS: &str = "remkill";
    let server = NatsServer::start();
    let url = server.url();
    wait_for_jetstream(&url).await;
    let mut nodes: Vec<NodeProcess> = ["node-1", "node-2", "node-3"]
        .iter()
        .map(|id| spawn(&url, NS, id))
        .collect();
    let view = ClusterView::connect(&url, NS).await.expect("view");
    map_of(&view, 3).await;
    let rt = client(&url, NS).await;
    let payee = open(&rt, "payee", 0).await;
    // A payer owned by a node other than the payee's, so killing it leaves the payee up.
    let payee_owner = owner(&mut nodes, "payee");
    let mut id = 0;
    let payer_id = loop {
        let candidate = format!("payer-{id}");
        id += 1;
        if owner(&mut nodes, &candidate) != payee_owner {
            break candidate;
        }
    };
    let payer = open(&rt, &payer_id, 100).await;
    ask(&payer, schedule("rent", &payee, 1500)).await;
    let victim = owner(&mut nodes, &payer_id);
    let position = nodes.iter().position(|n| n.id == victim).expect("owner");
    nodes[position].kill();
    println!("killed {victim}, the payer's node, before the reminder was due");
    paid_once(&rt, &[payer], &payee, 0).await;
    rt.shutdown().await.expect("client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reminders_fire_once_when_their_shards_move() {
    const NS: &str = "remmove";
    let server = NatsServer::start();
    let url = server.url();
    wait_for_jetstream(&url).await;
    let mut nodes: Vec<NodeProcess> = ["node-1", "node-2"]
        .iter()
        .map(|id| spawn(&url, NS, id))
        .collect();
    let view = ClusterView::connect(&url, NS).await.expect("view");
    map_of(&view, 2).await;
    let rt = client(&url, NS).await;
    let payee = open(&rt, "payee", 0).await;
    let mut payers = Vec::new();
    let mut before = Vec::new();
    for i in 0..12 {
        let id = format!("payer-{i}");
        let payer = open(&rt, &id, 100).await;
        ask(&payer, schedule("rent", &payee, 4000)).await;
        before.push(owner(&mut nodes, &id));
        payers.push(payer);
    }
    // Two nodes join: about half of the payers' shards move, with their pending reminders.
    nodes.push(spawn(&url, NS, "node-3"));
    nodes.push(spawn(&url, NS, "node-4"));
    map_of(&view, 4).await;
    let moved = (0..payers.len())
        .filter(|i| owner(&mut nodes, &format!("payer-{i}")) != before[*i])
        .count();
    println!(
        "{moved} of {} payers moved before their reminder was due",
        payers.len()
    );
    assert!(moved >= 1, "some shard moved");
    paid_once(&rt, &payers, &payee, 0).await;
    rt.shutdown().await.expect("client");
    for node in nodes {
        tokio::task::block_in_place(|| node.shutdown());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reminder_due_while_the_cluster_was_down_fires_on_recovery_and_a_cancelled_one_never() {
    const NS: &str = "remdown";
    let server = NatsServer::start();
    let url = server.url();
    wait_for_jetstream(&url).await;
    let ids = ["node-1", "node-2", "node-3"];
    let mut nodes: Vec<NodeProcess> = ids.iter().map(|id| spawn(&url, NS, id)).collect();
    let view = ClusterView::connect(&url, NS).await.expect("view");
    map_of(&view, 3).await;
    let rt = client(&url, NS).await;
    let payee = open(&rt, "payee", 0).await;
    let payer = open(&rt, "payer", 100).await;
    let thrifty = open(&rt, "thrifty", 100).await;
    ask(&payer, schedule("rent", &payee, 1500)).await;
    ask(&thrifty, schedule("gift", &payee, 1500)).await;
    ask(
        &thrifty,
        CancelPayment {
            name: "gift".into(),
        },
    )
    .await;
    // The whole cluster goes down (SIGKILL) and stays down past the due time.
    for node in &mut nodes {
        node.kill();
    }
    println!("all nodes killed");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let nodes: Vec<NodeProcess> = ids.iter().map(|id| spawn(&url, NS, id)).collect();
    paid_once(&rt, &[payer], &payee, 0).await;
    assert_eq!(
        count(&rt, thrifty.key(), "PaymentMade").await,
        0,
        "cancelled"
    );
    assert_eq!(ask(&thrifty, Balance).await, 100);
    rt.shutdown().await.expect("client");
    for node in nodes {
        tokio::task::block_in_place(|| node.shutdown());
    }
}
