//! The `aether` admin tool against a running 3-node cluster of real node processes: every
//! subcommand's table and `--json`, `drain` under load with no command lost, and clear
//! refusals (with their exit status) for bad arguments and unreachable servers.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::nats::{NatsServer, free_port};
use common::process::{FAST, NodeProcess, aether_binary, node_binary};
use serde_json::Value;

const NS: &str = "clins";

/// Runs `aether <args>` against `url`.
fn aether(url: &str, args: &[&str]) -> Output {
    Command::new(aether_binary())
        .args(["--server", url])
        .args(args)
        .env_remove("AETHER_NAMESPACE")
        .env_remove("AETHER_NATS_URL")
        .output()
        .expect("aether runs")
}

/// Runs `aether --namespace clins <args> --json`, expects success, and parses the output.
fn aether_json(url: &str, args: &[&str]) -> Value {
    let mut all = vec!["--namespace", NS, "--json"];
    all.extend_from_slice(args);
    let out = aether(url, &all);
    assert!(
        out.status.success(),
        "aether {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "aether {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Runs `aether --namespace clins <args>` (a table), expects success, returns stdout.
fn aether_table(url: &str, args: &[&str]) -> String {
    let mut all = vec!["--namespace", NS];
    all.extend_from_slice(args);
    let out = aether(url, &all);
    assert!(
        out.status.success(),
        "aether {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Polls `aether cluster status --json` until `ok` holds of it.
fn status_until(url: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = aether_json(url, &["cluster", "status"]);
        if ok(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {status:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn settled(status: &Value, nodes: usize) -> bool {
    status["nodes"].as_array().is_some_and(|n| {
        n.len() == nodes
            && n.iter()
                .all(|n| n["health"] == "ok" || n["health"] == "drained")
    }) && status["map"]["nodes"].as_array().is_some()
        && status["moving"].as_array().is_some_and(Vec::is_empty)
}

fn ok_balance(answer: &str) -> u64 {
    let parts: Vec<&str> = answer.split_whitespace().collect();
    assert_eq!(parts.first(), Some(&"ok"), "answer: {answer}");
    parts[2].parse().expect("a balance")
}

#[test]
fn every_subcommand_reports_a_running_cluster_and_drain_loses_nothing() {
    let server = NatsServer::start();
    let url = server.url();
    let one = [("AETHER_REPLICAS", "1")];
    let mut n1 = NodeProcess::spawn_with(&node_binary(), &url, NS, "node-1", FAST, &one);
    let n2 = NodeProcess::spawn_with(&node_binary(), &url, NS, "node-2", FAST, &one);
    let n3 = NodeProcess::spawn_with(&node_binary(), &url, NS, "node-3", FAST, &one);

    // cluster status: three healthy nodes, one leader, every shard placed once.
    let status = status_until(&url, "three settled nodes", |s| settled(s, 3));
    let nodes = status["nodes"].as_array().unwrap();
    let leaders: Vec<&Value> = nodes.iter().filter(|n| n["leader"] == true).collect();
    assert_eq!(leaders.len(), 1);
    assert_eq!(leaders[0]["node"], status["leader"]["node"]);
    assert!(status["leader"]["term"].as_u64().unwrap() >= 1);
    assert_eq!(status["map"]["shard_count"], 1024);
    assert_eq!(
        nodes
            .iter()
            .map(|n| n["shards"].as_u64().unwrap())
            .sum::<u64>(),
        1024
    );
    assert!(
        nodes
            .iter()
            .all(|n| n["heartbeat_age_ms"].as_u64().unwrap() < 5000)
    );
    let table = aether_table(&url, &["cluster", "status"]);
    for want in [
        "NODE",
        "HEALTH",
        "HEARTBEAT",
        "SHARDS",
        "node-1",
        "node-2",
        "node-3",
        "(term ",
    ] {
        assert!(table.contains(want), "{want:?} missing from:\n{table}");
    }
    let leader = status["leader"]["node"].as_str().unwrap();
    assert!(
        table.contains(&format!("{leader} *")),
        "the leader is marked:\n{table}"
    );

    // shards: owners add up, nothing moves.
    let shards = aether_json(&url, &["shards"]);
    let owners = shards["owners"].as_object().unwrap();
    assert_eq!(owners.len(), 3);
    assert_eq!(
        owners.values().map(|v| v.as_u64().unwrap()).sum::<u64>(),
        1024
    );
    assert_eq!(shards["moving"], 0);
    let all = aether_json(&url, &["shards", "--all"]);
    assert_eq!(all["shards"].as_array().unwrap().len(), 1024);
    let table = aether_table(&url, &["shards"]);
    assert!(
        table.contains("OWNER") && table.contains("no shard is moving"),
        "{table}"
    );

    // An actor's life: locate, events, snapshot.
    assert_eq!(n1.command("open alice"), "ok alice 0");
    assert_eq!(ok_balance(&n1.command("deposit alice 50")), 50);
    assert_eq!(ok_balance(&n1.command("deposit alice 25")), 75);
    let located = aether_json(&url, &["actor", "locate", "account", "alice"]);
    let owner_line = n1.command("locate alice");
    let owner: Vec<&str> = owner_line.split_whitespace().collect();
    assert_eq!(located["owner"], owner[2], "{owner_line}");
    assert_eq!(located["shard"].as_u64().unwrap().to_string(), owner[3]);
    assert_eq!(located["version"], 3);
    assert!(located["why"].as_str().unwrap().contains("shard"));
    let table = aether_table(&url, &["actor", "locate", "account", "alice"]);
    assert!(
        table.contains("owner") && table.contains(owner[2]),
        "{table}"
    );

    let events = aether_json(&url, &["actor", "events", "account", "alice"]);
    let list = events["events"].as_array().unwrap();
    let types: Vec<&str> = list.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["Opened", "Deposited", "Deposited"]);
    assert_eq!(list[0]["version"], 1);
    assert!(list[1]["payload"].to_string().contains("50"), "{}", list[1]);
    assert!(list[2]["payload"].to_string().contains("25"), "{}", list[2]);
    let window = aether_json(
        &url,
        &[
            "actor", "events", "account", "alice", "--from", "2", "--limit", "1",
        ],
    );
    let window = window["events"].as_array().unwrap();
    assert_eq!(window.len(), 1);
    assert_eq!(window[0]["version"], 2);
    let table = aether_table(&url, &["actor", "events", "account", "alice"]);
    assert!(
        table.contains("VERSION") && table.contains("Deposited"),
        "{table}"
    );

    // 100 events make a snapshot (the account snapshots every 100).
    assert_eq!(n1.command("open carol"), "ok carol 0");
    for _ in 0..99 {
        assert!(n1.command("deposit carol 1").starts_with("ok carol"));
    }
    let snapshot = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = aether_json(&url, &["actor", "snapshot", "account", "carol"]);
            if !s.is_null() {
                break s;
            }
            assert!(Instant::now() < deadline, "no snapshot of carol");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert_eq!(snapshot["version"], 100);
    assert!(snapshot["state"].to_string().contains("99"), "{snapshot}");
    let table = aether_table(&url, &["actor", "snapshot", "account", "carol"]);
    assert!(
        table.contains("version") && table.contains("100"),
        "{table}"
    );
    assert_eq!(
        aether_json(&url, &["actor", "snapshot", "account", "alice"]),
        Value::Null
    );

    // tail: live events, as JSON lines, until --count.
    let mut tail = Command::new(aether_binary())
        .args(["--server", &url, "--namespace", NS, "--json"])
        .args(["tail", "--kind", "account", "--id", "alice", "--count", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tail starts");
    let mut stderr = BufReader::new(tail.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    assert!(
        first.starts_with("following clins.events.account.*"),
        "{first}"
    );
    assert_eq!(ok_balance(&n1.command("deposit carol 5")), 104);
    assert_eq!(ok_balance(&n1.command("deposit alice 7")), 82);
    assert_eq!(ok_balance(&n1.command("deposit alice 8")), 90);
    let tailed = tail.wait_with_output().expect("tail ends");
    assert!(tailed.status.success());
    let lines: Vec<Value> = String::from_utf8(tailed.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines
            .iter()
            .all(|l| l["id"] == "alice" && l["type"] == "Deposited")
    );
    assert_eq!(lines[0]["version"], 4);
    assert_eq!(lines[1]["version"], 5);

    // drain node-3 under load from node-1: every deposit answered, every one counted once.
    let accounts: Vec<String> = (0..12).map(|i| format!("load{i}")).collect();
    for a in &accounts {
        assert_eq!(n1.command(&format!("open {a}")), format!("ok {a} 0"));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(AtomicU64::new(0));
    let load = {
        let stop = Arc::clone(&stop);
        let acknowledged = Arc::clone(&acknowledged);
        let accounts = accounts.clone();
        std::thread::spawn(move || {
            let mut sent: BTreeMap<String, u64> = BTreeMap::new();
            let mut failures = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) || i < 50 {
                let a = &accounts[i % accounts.len()];
                let answer = n1.command(&format!("deposit {a} 1"));
                if answer.starts_with("ok ") {
                    *sent.entry(a.clone()).or_default() += 1;
                    acknowledged.fetch_add(1, Ordering::Relaxed);
                } else {
                    failures.push(answer);
                }
                i += 1;
            }
            (n1, sent, failures)
        })
    };
    // The load runs before, during and after the drain (polled, not slept on).
    let load_reaches = |n: u64| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while acknowledged.load(Ordering::Relaxed) < n {
            assert!(
                Instant::now() < deadline,
                "the load stalled below {n} deposits"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    load_reaches(20);
    let drained = aether_json(&url, &["drain", "node-3", "--wait", "60"]);
    assert_eq!(drained["done"], true, "{drained:#}");
    let node3 = drained["state"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == "node-3")
        .unwrap()
        .clone();
    assert_eq!(node3["shards"], 0);
    assert_eq!(node3["held"], 0);
    assert_eq!(node3["health"], "drained");
    assert_eq!(drained["state"]["drained"], serde_json::json!(["node-3"]));
    load_reaches(acknowledged.load(Ordering::Relaxed) + 20);
    stop.store(true, Ordering::Relaxed);
    let (mut n1, sent, failures) = load.join().expect("the load thread");
    assert!(
        failures.is_empty(),
        "commands failed during the drain: {failures:?}"
    );
    let total: u64 = sent.values().sum();
    assert!(total >= 50, "the load ran: {total} deposits");
    for (a, n) in &sent {
        let balance = ok_balance(&n1.command(&format!("balance {a}")));
        assert_eq!(
            balance, *n,
            "{a}: {n} deposits acknowledged, balance {balance}"
        );
    }
    let status = aether_json(&url, &["cluster", "status"]);
    assert_eq!(
        status["map"]["nodes"],
        serde_json::json!(["node-1", "node-2"]),
        "node-3 is out of the map"
    );

    // The rolling upgrade: node-3 stops and starts again while drained, and joins with no
    // shards (it would wait forever for a map that includes it otherwise).
    n3.shutdown();
    let n3 = NodeProcess::spawn_with(&node_binary(), &url, NS, "node-3", FAST, &one);
    let status = status_until(&url, "node-3 back, drained", |s| {
        s["nodes"].as_array().is_some_and(|n| {
            n.iter()
                .any(|n| n["node"] == "node-3" && n["health"] == "drained" && n["shards"] == 0)
        })
    });
    assert_eq!(
        status["map"]["nodes"],
        serde_json::json!(["node-1", "node-2"])
    );

    // undrain gives node-3 shards back; rebalance clears every drain.
    let back = aether_json(&url, &["undrain", "node-3", "--wait", "60"]);
    assert_eq!(back["done"], true, "{back:#}");
    let status = status_until(&url, "node-3 back in the map", |s| settled(s, 3));
    assert_eq!(status["drained"], serde_json::json!([]));
    assert_eq!(status["map"]["nodes"].as_array().unwrap().len(), 3);
    let out = aether(&url, &["--namespace", NS, "drain", "node-2", "--no-wait"]);
    assert!(out.status.success());
    let rebalanced = aether_json(&url, &["rebalance", "--wait", "60"]);
    assert_eq!(rebalanced["done"], true);
    assert_eq!(rebalanced["state"]["drained"], serde_json::json!([]));

    // Bad arguments: exit status 2 and a message naming the problem.
    let refusals: &[(&[&str], &str)] = &[
        (
            &["--namespace", NS, "actor", "locate", "account"],
            "required",
        ),
        (
            &[
                "--namespace",
                NS,
                "actor",
                "events",
                "account",
                "alice",
                "--from",
                "0",
            ],
            "--from",
        ),
        (&["--namespace", "bad ns!", "shards"], "namespace"),
        (&["shards"], "--namespace"),
        (
            &["--namespace", NS, "drain", "node-9"],
            "no node \"node-9\"",
        ),
        (&["--namespace", NS, "actor", "locate", "account", ""], "id"),
        (
            &["--namespace", NS, "frobnicate"],
            "unrecognized subcommand",
        ),
    ];
    for (args, says) in refusals {
        let out = aether(&url, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "aether {args:?}: {stderr}");
        assert!(
            stderr.contains(says),
            "aether {args:?} should say {says:?}: {stderr}"
        );
    }
    // A namespace no node runs: exit status 1, and nothing is created for it.
    let out = aether(&url, &["--namespace", "nobody", "cluster", "status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no cluster"));
    // An unreachable server: exit status 3, promptly.
    let started = Instant::now();
    let nowhere = format!("nats://127.0.0.1:{}", free_port());
    let out = aether(
        &nowhere,
        &[
            "--namespace",
            NS,
            "--connect-timeout",
            "2",
            "cluster",
            "status",
        ],
    );
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot connect to NATS"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10));

    drop((n2, n3));
}
