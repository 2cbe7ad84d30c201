//! Cluster nodes for benches: the bench binary re-executed as node processes
//! (`AETHER_BENCH_NODE=<id>`), started, waited for, killed and stopped.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use aether::{ClusterConfig, ClusterView, Runtime, RuntimeBuilder};

/// The `main` of a bench that runs nodes: as a node process (`AETHER_BENCH_NODE=<id>`) it
/// joins with the default timing and the actors of `builder`, says `ready <id>` and serves
/// until stdin closes; otherwise it runs `bench`.
pub fn main_or_node(
    builder: impl FnOnce() -> RuntimeBuilder,
    bench: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match std::env::var("AETHER_BENCH_NODE") {
        Ok(id) => rt.block_on(node_main(id, builder())),
        Err(_) => rt.block_on(bench),
    }
}

async fn node_main(id: String, builder: RuntimeBuilder) -> anyhow::Result<()> {
    let url = std::env::var("AETHER_NATS_URL")?;
    let ns = std::env::var("AETHER_NAMESPACE")?;
    let rt = Runtime::join_cluster(ClusterConfig::new(url, ns).node_id(&id), builder).await?;
    println!("ready {id}");
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(tokio::io::stdin()));
    while lines.next_line().await?.is_some() {}
    rt.shutdown().await?;
    Ok(())
}

/// One node process.
pub struct Node {
    pub id: String,
    pub child: Child,
    stdin: Option<ChildStdin>,
    ready: std::sync::mpsc::Receiver<Instant>,
}

impl Node {
    pub fn start(url: &str, ns: &str, id: &str) -> Node {
        let mut child = Command::new(std::env::current_exe().expect("bench binary"))
            .env("AETHER_BENCH_NODE", id)
            .env("AETHER_NATS_URL", url)
            .env("AETHER_NAMESPACE", ns)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node process");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, ready) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) if l.starts_with("ready") => {
                        let _ = tx.send(Instant::now());
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        Node {
            id: id.to_owned(),
            stdin: child.stdin.take(),
            child,
            ready,
        }
    }

    pub fn wait_ready(&self) -> Instant {
        self.ready
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("{} did not start", self.id))
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Graceful leave: close stdin, wait for the process to end.
    pub fn leave(mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the published shard map has `nodes` nodes.
pub async fn wait_map(view: &ClusterView, nodes: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if view
            .shard_map()
            .await
            .ok()
            .flatten()
            .is_some_and(|m| m.nodes.len() == nodes)
        {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "no map of {nodes} nodes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
