//! Crash test of the embedded store: a child process commits continuously and is killed with
//! SIGKILL at random moments; after every kill the store is reopened and checked against what
//! the child reported as acknowledged.
//!
//! The child is this same test binary, re-run with `AETHER_CRASH_CHILD_DIR` set: it appends
//! 3-event commits to 8 streams from 8 tasks and prints `ack <stream> <last version> <command
//! id>` after each acknowledged append.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aether::CommandId;
use aether::store::{EmbeddedStore, EventStore, NewCommit};
use aether::wire::EventData;
use common::{key, ns};

const CHILD_ENV: &str = "AETHER_CRASH_CHILD_DIR";
const STREAMS: usize = 8;
const EVENTS_PER_COMMIT: u64 = 3;
const KILLS: usize = 24;

fn stream(i: usize) -> aether::ActorKey {
    key("crash", "account", &format!("stream-{i}"))
}

/// Payload of event `version` in stream `i`: checkable after the crash.
fn payload(i: usize, version: u64) -> Vec<u8> {
    rmp_serde::to_vec(&(i as u64, version)).expect("encodes")
}

fn child(dir: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let store = Arc::new(EmbeddedStore::open(dir, ns("crash")).expect("store opens"));
        let out = Arc::new(Mutex::new(std::io::stdout()));
        let mut tasks = Vec::new();
        for i in 0..STREAMS {
            let (store, out) = (Arc::clone(&store), Arc::clone(&out));
            tasks.push(tokio::spawn(async move {
                let s = stream(i);
                let mut version = store.latest_version(&s).await.expect("latest");
                loop {
                    let events = (1..=EVENTS_PER_COMMIT)
                        .map(|k| EventData {
                            event_type: "Tick".into(),
                            payload: payload(i, version + k),
                            schema_version: 0,
                        })
                        .collect();
                    let id = CommandId::random();
                    let appended = store
                        .append(&s, version, NewCommit::new(id, events))
                        .await
                        .expect("append");
                    version = appended.last_version;
                    let mut out = out.lock().expect("stdout lock");
                    writeln!(out, "ack {i} {version} {}", id.as_u128()).expect("stdout");
                    out.flush().expect("flush");
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

/// Checks the reopened store against the acknowledged commits.
async fn verify(dir: &std::path::Path, acked: &HashMap<(usize, u64), u128>) -> (u64, usize) {
    let store = EmbeddedStore::open(dir, ns("crash")).expect("store reopens after SIGKILL");
    let mut total_commits = 0;
    for i in 0..STREAMS {
        let report = store.read_with_errors(&stream(i), 1).await.expect("read");
        assert!(
            report.corrupt.is_empty(),
            "stream {i}: damaged records after a crash: {:?}",
            report.corrupt
        );
        let mut expected_first = 1;
        let mut present = HashMap::new();
        for commit in &report.commits {
            assert_eq!(commit.first_version, expected_first, "stream {i}: gap");
            assert_eq!(
                commit.events.len() as u64,
                EVENTS_PER_COMMIT,
                "stream {i}: torn commit at {}",
                commit.first_version
            );
            for (k, e) in commit.events.iter().enumerate() {
                assert_eq!(e.payload, payload(i, commit.first_version + k as u64));
            }
            present.insert(commit.last_version(), commit.command_id.as_u128());
            expected_first = commit.last_version() + 1;
            total_commits += 1;
        }
        for ((s, version), id) in acked.iter().filter(|((s, _), _)| *s == i) {
            assert_eq!(
                present.get(version),
                Some(id),
                "stream {s}: acknowledged commit at version {version} is missing"
            );
        }
    }
    store.close().await.expect("close");
    (total_commits, acked.len())
}

#[test]
fn embedded_store_keeps_every_acknowledged_commit_across_sigkill() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(&dir);
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let exe = std::env::current_exe().expect("test binary path");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut acked: HashMap<(usize, u64), u128> = HashMap::new();
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    for round in 0..KILLS {
        let mut child = Command::new(&exe)
            .args([
                "embedded_store_keeps_every_acknowledged_commit_across_sigkill",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("child starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => sink.lock().expect("lines").push(l),
                    Err(_) => break,
                }
            }
        });
        // Let it commit for a while, then kill it at a random moment.
        let deadline = Instant::now() + Duration::from_secs(20);
        while lines.lock().expect("lines").len() < 5 {
            assert!(
                Instant::now() < deadline,
                "round {round}: child made no progress"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(rng.u64(0..150)));
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        reader.join().expect("reader");
        // Only complete lines count: a line cut by the kill was never acknowledged to us.
        let new_acks = {
            let lines = lines.lock().expect("lines");
            let mut n = 0;
            for line in lines.iter() {
                let parts: Vec<&str> = line.split(' ').collect();
                if let ["ack", s, v, id] = parts[..]
                    && let (Ok(s), Ok(v), Ok(id)) = (s.parse(), v.parse(), id.parse())
                {
                    acked.insert((s, v), id);
                    n += 1;
                }
            }
            n
        };
        assert!(new_acks > 0, "round {round}: no acknowledged commit parsed");
        let (commits, acks) = rt.block_on(verify(dir.path(), &acked));
        assert!(commits as usize >= acks);
    }
    println!(
        "{KILLS} SIGKILLs survived; {} acknowledged commits all present",
        acked.len()
    );
}
