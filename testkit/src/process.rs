//! Cluster nodes as real processes: spawn, talk to over stdin/stdout, signal (SIGKILL,
//! SIGSTOP, SIGCONT), shut down gracefully.
//!
//! A node binary is yours: a `main` that joins the cluster with
//! `Runtime::join_cluster(ClusterConfig::from_env()?, builder)` and then speaks a small line
//! protocol:
//!
//! - once it serves, it prints `ready <node id>` on stdout ([`announce_ready`] does);
//! - every line on stdin is a command it answers with exactly one line on stdout (the commands
//!   are yours: [`NodeProcess::command`] sends one and returns the answer);
//! - stdin closing means: shut down gracefully and exit.
//!
//! The harness passes the cluster settings as the environment variables `ClusterConfig::from_env`
//! reads (`AETHER_NATS_URL`, `AETHER_NAMESPACE`, `AETHER_NODE_ID`, timing), plus any you add.
// The harness signals the child processes it owns (libc `kill`, `prctl`); see the SAFETY notes.
#![allow(unsafe_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Cluster timing handed to node processes.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// `AETHER_HEARTBEAT_MS`.
    pub heartbeat_ms: u64,
    /// `AETHER_FAILURE_TIMEOUT_MS`.
    pub failure_ms: u64,
    /// `AETHER_LEASE_MS`.
    pub lease_ms: u64,
}

/// Fast timing for tests: failures are detected within about a second.
pub const FAST: Timing = Timing {
    heartbeat_ms: 250,
    failure_ms: 1000,
    lease_ms: 1000,
};

/// What a node binary prints once it serves (see the [module docs](self)).
pub fn announce_ready(node_id: &str) {
    println!("ready {node_id}");
}

/// One node process, killed when dropped.
pub struct NodeProcess {
    /// The node's id.
    pub id: String,
    /// The process.
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// Waited for: the pid is no longer ours to signal.
    reaped: bool,
    /// How it was started, for [`NodeProcess::restart`].
    launch: Launch,
}

/// The arguments of a start.
#[derive(Clone)]
struct Launch {
    binary: PathBuf,
    urls: String,
    namespace: String,
    timing: Timing,
    env: Vec<(String, String)>,
}

impl NodeProcess {
    /// Spawns `binary` as node `id` with [`FAST`] timing and waits until it serves.
    pub fn spawn(binary: &Path, urls: &str, namespace: &str, id: &str) -> NodeProcess {
        NodeProcess::spawn_with(binary, urls, namespace, id, FAST, &[])
    }

    /// Spawns a node with `timing` and extra environment variables, and waits until it
    /// serves its shards.
    pub fn spawn_with(
        binary: &Path,
        urls: &str,
        namespace: &str,
        id: &str,
        timing: Timing,
        env: &[(&str, &str)],
    ) -> NodeProcess {
        let mut node = NodeProcess::start(binary, urls, namespace, id, timing, env);
        node.wait_ready();
        node
    }

    /// Waits (up to 30 s) for a node started with [`NodeProcess::start`] to serve.
    pub fn wait_ready(&mut self) {
        let ready = self.next_line(Duration::from_secs(30));
        assert_eq!(
            ready,
            format!("ready {}", self.id),
            "{} did not start",
            self.id
        );
    }

    /// Starts a node that logs at debug level into the file `log`, without waiting for it
    /// (then [`NodeProcess::wait_ready`]).
    pub fn start_logged(
        binary: &Path,
        urls: &str,
        namespace: &str,
        id: &str,
        timing: Timing,
        env: &[(String, String)],
        log: &Path,
    ) -> NodeProcess {
        let file = std::fs::File::create(log).expect("log file");
        let mut env: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        env.push(("AETHER_LOG", "debug"));
        NodeProcess::start_to(binary, urls, namespace, id, timing, &env, Stdio::from(file))
    }

    /// Waits up to `within` for the process to exit, and returns how it did.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("child status") {
                self.reaped = true;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} still runs after {within:?}",
                self.id
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a node process without waiting for it to join.
    pub fn start(
        binary: &Path,
        urls: &str,
        namespace: &str,
        id: &str,
        timing: Timing,
        env: &[(&str, &str)],
    ) -> NodeProcess {
        // AETHER_TEST_NODE_STDERR=1 shows the nodes' own output (panics, logs).
        let stderr = if std::env::var_os("AETHER_TEST_NODE_STDERR").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        };
        NodeProcess::start_to(binary, urls, namespace, id, timing, env, stderr)
    }

    fn start_to(
        binary: &Path,
        urls: &str,
        namespace: &str,
        id: &str,
        timing: Timing,
        env: &[(&str, &str)],
        stderr: Stdio,
    ) -> NodeProcess {
        let mut command = Command::new(binary);
        command
            .env("AETHER_NATS_URL", urls)
            .env("AETHER_NAMESPACE", namespace)
            .env("AETHER_NODE_ID", id)
            .env("AETHER_REPLICAS", "3")
            .env("AETHER_HEARTBEAT_MS", timing.heartbeat_ms.to_string())
            .env("AETHER_FAILURE_TIMEOUT_MS", timing.failure_ms.to_string())
            .env("AETHER_LEASE_MS", timing.lease_ms.to_string())
            .env("AETHER_ASK_TIMEOUT_MS", "5000")
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr);
        // SAFETY: `prctl` is async-signal-safe; the node dies with the test process.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command.spawn().expect("node process starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        NodeProcess {
            id: id.to_owned(),
            stdin: child.stdin.take(),
            child,
            lines,
            reaped: false,
            launch: Launch {
                binary: binary.to_path_buf(),
                urls: urls.to_owned(),
                namespace: namespace.to_owned(),
                timing,
                env: env
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            },
        }
    }

    /// Kills the process if it runs, starts it again with the same binary, id, settings and
    /// environment, and waits until it serves (a node restarted after a crash). Its stderr
    /// goes where [`NodeProcess::start`] sends it, also for a node started logged.
    pub fn restart(&mut self) {
        self.signal(libc::SIGCONT);
        self.kill();
        let Launch {
            binary,
            urls,
            namespace,
            timing,
            env,
        } = self.launch.clone();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        *self = NodeProcess::start(&binary, &urls, &namespace, &self.id.clone(), timing, &env);
        self.wait_ready();
    }

    /// The next line the node prints, waiting up to `within`.
    pub fn next_line(&mut self, within: Duration) -> String {
        self.lines
            .recv_timeout(within)
            .unwrap_or_else(|_| panic!("{} said nothing within {within:?}", self.id))
    }

    /// Sends one command line and returns the node's one-line answer (15 s at most).
    pub fn command(&mut self, line: &str) -> String {
        let stdin = self.stdin.as_mut().expect("node is running");
        writeln!(stdin, "{line}").expect("write to node");
        stdin.flush().expect("flush");
        self.next_line(Duration::from_secs(15))
    }

    /// Sends `signal` (e.g. `libc::SIGSTOP`) to the process.
    /// Nothing happens once the process has been reaped (its pid may belong to another by
    /// then).
    pub fn signal(&self, signal: i32) {
        if self.reaped {
            return;
        }
        // SAFETY: signalling a child process we own that has not been reaped: its pid is
        // still ours (an exited child stays a zombie until we wait for it).
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// SIGKILL: a crash. Returns once the process is gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reaped = true;
    }

    /// SIGSTOP: the node stays but does nothing (a long GC pause, a frozen VM).
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after [`NodeProcess::pause`].
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Closes stdin (the graceful shutdown of the protocol) and waits up to 20 s for the exit.
    pub fn shutdown(mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                self.reaped = true;
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{} did not shut down", self.id);
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 20 ms until it gives a value, failing the test after `within`.
pub async fn poll<T>(within: Duration, what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
