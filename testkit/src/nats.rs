//! A real `nats-server` for tests: one server or a 3-server JetStream cluster on loopback.
//!
//! The binary comes from `AETHER_NATS_SERVER`, else `target/tools/nats-server-*/bin/` (where
//! Aether's `scripts/install-nats-server.sh` puts it; put yours there too, or set the
//! variable), else `PATH`. Each server gets free loopback
//! ports and its own temporary store directory, and is killed by pid when dropped. Servers can
//! be killed (SIGKILL), paused (SIGSTOP), resumed (SIGCONT) and restarted on the same ports and
//! directory.
// The harness signals the child processes it owns (libc `kill`, `prctl`); see the SAFETY notes.
#![allow(unsafe_code)]

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `tools` directories to look in: `target/tools` of the test binary's target directory
/// (where `scripts/install-nats-server.sh` puts servers), and of the current directory.
fn tool_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // target/<profile>/deps/<test binary>: the target directory is an ancestor.
        for dir in exe.ancestors().skip(1).take(4) {
            dirs.push(dir.join("tools"));
        }
    }
    if let Ok(cwd) = std::env::current_dir() {
        dirs.push(cwd.join("target/tools"));
    }
    dirs
}

/// An installed `<target>/tools/nats-server-<prefix>*` binary, newest first.
fn installed(prefix: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = tool_dirs()
        .iter()
        .filter_map(|tools| std::fs::read_dir(tools).ok())
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("nats-server-{prefix}"))
        })
        .map(|e| e.path().join("bin/nats-server"))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop()
}

/// A nats-server older than the supported minimum (2.10.x), if one is installed
/// (`scripts/test.sh` installs 2.10.26 and sets `AETHER_NATS_SERVER_OLD`).
pub fn old_server_binary() -> Option<PathBuf> {
    std::env::var("AETHER_NATS_SERVER_OLD")
        .ok()
        .map(PathBuf::from)
        .or_else(|| installed("2.10"))
}

/// Finds the nats-server binary, or explains how to get one.
pub fn server_binary() -> PathBuf {
    if let Ok(path) = std::env::var("AETHER_NATS_SERVER") {
        return PathBuf::from(path);
    }
    if let Some(path) = installed("2.15").or_else(|| installed("2.1")) {
        return path;
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("nats-server");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "no nats-server binary found: run scripts/install-nats-server.sh (installs the pinned \
         2.15.1 into target/tools), or set AETHER_NATS_SERVER=/path/to/nats-server (2.11+)"
    );
}

/// A free TCP port on 127.0.0.1.
///
/// The kernel may hand a just-released port out again, so the ports given to this process are
/// remembered and never handed out twice (two servers of concurrent tests must not collide).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// One nats-server process: JetStream on, a free loopback port, its own store directory,
/// killed when dropped.
pub struct NatsServer {
    /// The server's name (`-n`).
    pub name: String,
    /// Its client port on 127.0.0.1.
    pub port: u16,
    args: Vec<String>,
    binary: Option<PathBuf>,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// A single JetStream server.
    pub fn start() -> NatsServer {
        NatsServer::spawn("single", free_port(), Vec::new())
    }

    /// A single JetStream server that also reads the configuration `conf` (nats-server's
    /// syntax: `authorization { ... }`, `tls { ... }`, accounts).
    pub fn start_with_config(conf: &str) -> NatsServer {
        let file = tempfile::Builder::new()
            .suffix(".conf")
            .tempfile()
            .expect("config file");
        std::fs::write(file.path(), conf).expect("config written");
        let (_, path) = file.keep().expect("config kept");
        NatsServer::spawn(
            "secured",
            free_port(),
            vec!["-c".into(), path.display().to_string()],
        )
    }

    fn spawn(name: &str, port: u16, extra: Vec<String>) -> NatsServer {
        NatsServer::spawn_with(name, port, extra, None)
    }

    fn spawn_with(
        name: &str,
        port: u16,
        extra: Vec<String>,
        binary: Option<PathBuf>,
    ) -> NatsServer {
        let dir = tempfile::tempdir().expect("server dir");
        let mut args = vec![
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-js".into(),
            "-sd".into(),
            dir.path().join("js").display().to_string(),
            "-n".into(),
            name.to_owned(),
            "-l".into(),
            dir.path().join("server.log").display().to_string(),
        ];
        args.extend(extra);
        let mut server = NatsServer {
            name: name.to_owned(),
            port,
            args,
            binary,
            child: None,
            _dir: dir,
        };
        server.launch();
        server
    }

    /// A single JetStream server run from `binary` (another version than the default).
    pub fn start_binary(binary: PathBuf) -> NatsServer {
        let mut server = NatsServer::spawn_with("old", free_port(), Vec::new(), Some(binary));
        server.name = "old".into();
        server
    }

    fn launch(&mut self) {
        let binary = self.binary.clone().unwrap_or_else(server_binary);
        let mut command = Command::new(binary);
        command
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: `prctl` is async-signal-safe and touches no memory of the parent. It makes
        // the kernel kill the server if the test process dies without dropping it.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command.spawn().expect("nats-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() >= deadline {
                let log = self.log();
                panic!(
                    "nats-server {} did not listen on port {} within 10 s; its log:\n{log}",
                    self.name, self.port
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        self.args
            .iter()
            .position(|a| a == "-l")
            .and_then(|i| std::fs::read_to_string(&self.args[i + 1]).ok())
            .unwrap_or_default()
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> i32 {
        self.child
            .as_ref()
            .map(|c| c.id() as i32)
            .expect("server is running")
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the process stays, but answers nothing. Returns once the kernel reports it
    /// stopped (a signal is delivered asynchronously: until then it may still answer).
    pub fn pause(&self) {
        // SAFETY: sending a signal to a child process we own; no memory is touched.
        unsafe {
            libc::kill(self.pid(), libc::SIGSTOP);
        }
        let stat = format!("/proc/{}/stat", self.pid());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            // The state is the field after the parenthesised command name: `T` when stopped.
            let stopped = std::fs::read_to_string(&stat).is_ok_and(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
            });
            if stopped {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server {} not stopped 5 s after SIGSTOP",
                self.name
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// SIGCONT after [`NatsServer::pause`].
    pub fn resume(&self) {
        // SAFETY: as in `pause`.
        unsafe {
            libc::kill(self.pid(), libc::SIGCONT);
        }
    }

    /// Starts the server again on the same ports and store directory.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// `false` after [`NatsServer::kill`] until [`NatsServer::restart`].
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_ref() {
            // A paused server must be resumed to die cleanly on some systems.
            // SAFETY: as in `pause`.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGCONT);
            }
        }
        self.kill();
    }
}

/// Three JetStream servers routed into one cluster.
pub struct NatsCluster {
    /// The three servers; kill, pause or restart any of them.
    pub servers: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts three routed servers (wait for [`wait_for_jetstream`] before using JetStream).
    pub fn start() -> NatsCluster {
        // A cluster name of its own: a stray route from another test's cluster (a reused port)
        // can never merge two clusters.
        let cluster_name = format!("aether-test-{:08x}", fastrand::u32(..));
        let client_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let route_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes = route_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let servers = (0..3)
            .map(|i| {
                NatsServer::spawn(
                    &format!("s{}", i + 1),
                    client_ports[i],
                    vec![
                        "--cluster_name".into(),
                        cluster_name.clone(),
                        "--cluster".into(),
                        format!("nats://127.0.0.1:{}", route_ports[i]),
                        "--routes".into(),
                        routes.clone(),
                    ],
                )
            })
            .collect();
        NatsCluster { servers }
    }

    /// Every server's URL, comma-separated (what a client is given).
    pub fn urls(&self) -> String {
        self.servers
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Waits until JetStream answers on `url` (a cluster needs a meta leader first).
pub async fn wait_for_jetstream(url: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let servers: Vec<&str> = url.split(',').collect();
        if let Ok(client) = async_nats::connect(servers.as_slice()).await {
            let js = async_nats::jetstream::new(client);
            // A request made before the meta leader exists may go unanswered: ask again soon.
            let answer = tokio::time::timeout(Duration::from_millis(300), js.query_account()).await;
            if matches!(answer, Ok(Ok(_))) {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "JetStream at {url} not ready within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
