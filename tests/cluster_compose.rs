//! `cluster-compose/`: the process topology starts with its one documented command, serves
//! the bank example, and stops cleanly; the Docker Compose file parses.
// The harness signals the child processes it owns (libc `kill`, `prctl`); see the SAFETY notes.
#![allow(unsafe_code)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn example(name: &str) -> PathBuf {
    common::process::node_binary()
        .parent()
        .expect("examples dir")
        .join(name)
}

/// A base port such that the 3 client ports and 3 route ports of local.sh are free.
fn free_base() -> u16 {
    for _ in 0..200 {
        let base = 20_000 + fastrand::u16(..20_000);
        let ports = [
            base,
            base + 1,
            base + 2,
            base + 2000,
            base + 2001,
            base + 2002,
        ];
        if ports
            .iter()
            .all(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        {
            return base;
        }
    }
    panic!("no free ports for the compose topology");
}

/// The script's whole process group dies with the test.
struct Topology(Child);

impl Drop for Topology {
    fn drop(&mut self) {
        // SAFETY: signalling the process group we created.
        unsafe {
            libc::kill(-(self.0.id() as i32), libc::SIGKILL);
        }
        let _ = self.0.wait();
    }
}

/// Runs `bank_client args` with the environment `env`; its stdout, or its stderr if it failed.
fn client(env: &[(String, String)], args: &str) -> String {
    let out = Command::new(example("bank_client"))
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .args(args.split_whitespace())
        .output()
        .expect("bank_client runs");
    if out.status.success() {
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    } else {
        String::from_utf8_lossy(&out.stderr).trim().to_owned()
    }
}

/// The `KEY=VALUE` lines of local.sh's `client.env`.
fn client_env(dir: &std::path::Path) -> Vec<(String, String)> {
    std::fs::read_to_string(dir.join("client.env"))
        .expect("local.sh wrote client.env")
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
        .collect()
}

#[test]
fn the_local_topology_starts_serves_the_bank_and_stops() {
    let base = free_base();
    let data = tempfile::tempdir().expect("temp dir");
    let mut command = Command::new("bash");
    command
        .arg(root().join("cluster-compose/local.sh"))
        .env("AETHER_COMPOSE_PORT", base.to_string())
        .env("AETHER_COMPOSE_DIR", data.path())
        .env("AETHER_NODE_BIN", common::process::node_binary())
        .env("AETHER_NATS_SERVER", common::nats::server_binary())
        .env("AETHER_DEV_CERTS_BIN", example("dev_certs"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0);
    let mut child = command.spawn().expect("local.sh starts");
    let stdout = child.stdout.take().expect("stdout");
    let topology = Topology(child);
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("local.sh says the cluster is ready");
        if line.starts_with("cluster ready") {
            break;
        }
    }
    let urls = format!(
        "nats://127.0.0.1:{base},nats://127.0.0.1:{},nats://127.0.0.1:{}",
        base + 1,
        base + 2
    );
    // The topology runs with TLS (client certificates) and a password: the client needs the
    // settings local.sh wrote.
    let env = client_env(data.path());
    assert!(
        env.iter()
            .any(|(k, v)| k == "AETHER_NATS_URL" && *v == urls),
        "{env:?}"
    );
    assert_eq!(client(&env, "open alice"), "ok alice 0");
    assert_eq!(client(&env, "open bob"), "ok bob 0");
    assert_eq!(client(&env, "deposit alice 10"), "ok alice 10");
    assert_eq!(client(&env, "transfer alice bob 3"), "ok alice 7");
    assert_eq!(client(&env, "balance bob"), "ok bob 3");
    // Without the CA and certificate the handshake fails; without the password, NATS refuses.
    let only_url = [("AETHER_NATS_URL".to_owned(), urls.clone())];
    let refused = client(&only_url, "balance bob");
    assert!(refused.contains("NATS at"), "{refused}");
    let no_password: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| {
            !k.starts_with("AETHER_NATS_USER") && !k.starts_with("AETHER_NATS_PASSWORD")
        })
        .cloned()
        .collect();
    let refused = client(&no_password, "balance bob");
    assert!(refused.contains("refused the credentials"), "{refused}");

    // SIGTERM: the nodes leave gracefully, then the servers stop.
    // SAFETY: signalling the child we own.
    unsafe {
        libc::kill(topology.0.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stopped = false;
    while Instant::now() < deadline {
        match lines.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line.starts_with("cluster stopped") => {
                stopped = true;
                break;
            }
            _ => {}
        }
    }
    assert!(stopped, "local.sh stopped the cluster on SIGTERM");
    let nodes_said: String = (1..=3)
        .map(|i| {
            std::fs::read_to_string(data.path().join(format!("node-{i}.out"))).unwrap_or_default()
        })
        .collect();
    for i in 1..=3 {
        assert!(
            nodes_said.contains(&format!("stopped node-{i}")),
            "node-{i} left gracefully: {nodes_said}"
        );
    }
    drop(topology);
}

#[test]
fn the_compose_file_parses() {
    let file = root().join("cluster-compose/docker-compose.yml");
    let compose = Command::new("docker").args(["compose", "version"]).output();
    if compose.is_ok_and(|o| o.status.success()) {
        let out = Command::new("docker")
            .args(["compose", "-f"])
            .arg(&file)
            .env("AETHER_NATS_PASSWORD", "only-for-the-config-check")
            .args(["config", "--quiet"])
            .output()
            .expect("docker compose config runs");
        assert!(
            out.status.success(),
            "docker compose config: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    // No Compose here: check the YAML and its services with Python, if it has PyYAML.
    let check = "import sys, yaml\n\
                 doc = yaml.safe_load(open(sys.argv[1]))\n\
                 want = {'nats-1','nats-2','nats-3','node-1','node-2','node-3'}\n\
                 missing = want - set(doc['services'])\n\
                 assert not missing, missing\n\
                 print('ok')";
    match Command::new("python3")
        .args(["-c", check])
        .arg(&file)
        .output()
    {
        Ok(out) if String::from_utf8_lossy(&out.stderr).contains("No module named 'yaml'") => {
            eprintln!("neither docker compose nor PyYAML here: compose file not checked");
        }
        Ok(out) => assert!(
            out.status.success(),
            "compose file: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => eprintln!("no python3 here: compose file not checked"),
    }
}
