//! `aether dashboard` in a real headless browser (Chromium, driven over the DevTools protocol):
//! the page shows a running 3-node cluster, and — without being reloaded — shows a node's
//! failure and the new owners of its shards.
//!
//! Chromium comes from Debian's `chromium-headless-shell` package; `scripts/test.sh` installs
//! it (`scripts/install-chromium.sh`) and passes its path in `AETHER_CHROMIUM`.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::nats::{NatsServer, free_port};
use common::process::{FAST, NodeProcess, aether_binary, node_binary};
use serde_json::{Value, json};

const NS: &str = "dash";

/// The Chromium binary itself. Debian's `/usr/bin/chromium-headless-shell` is a shell script
/// that runs it without `exec`: killing the script would leave the browser running, so the
/// script's target is preferred.
fn chromium_binary() -> PathBuf {
    const REAL: &str = "/usr/lib/chromium/chromium-headless-shell";
    let path = std::env::var_os("AETHER_CHROMIUM")
        .map(PathBuf::from)
        .filter(|p| !is_script(p))
        .or_else(|| Some(PathBuf::from(REAL)).filter(|p| p.is_file()))
        .or_else(|| {
            ["chromium-headless-shell", "chromium"]
                .iter()
                .find_map(|name| {
                    std::env::var_os("PATH").and_then(|paths| {
                        std::env::split_paths(&paths)
                            .map(|p| p.join(name))
                            .find(|p| p.is_file())
                    })
                })
        });
    path.unwrap_or_else(|| {
        panic!("no headless Chromium: run scripts/install-chromium.sh (scripts/test.sh does)")
    })
}

/// Whether `path` is a script (`#!`) rather than the browser.
fn is_script(path: &std::path::Path) -> bool {
    let mut head = [0u8; 2];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| &head == b"#!")
}

/// A child process killed when the test ends, however it ends — with every process it
/// started (Chromium's renderers and helpers): it leads its own process group.
struct Killed(Child);

impl Killed {
    fn spawn(command: &mut Command) -> Killed {
        use std::os::unix::process::CommandExt;
        Killed(
            command
                .process_group(0)
                .spawn()
                .expect("the process starts"),
        )
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        // The group's id is the leader's pid; `kill(1)` reaches the whole group with `-pid`.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET path` on 127.0.0.1:`port`; the body, if the answer is a 200. Reads by
/// `Content-Length`: Chromium's DevTools server keeps the connection open.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).ok()?;
    let mut length = None;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse::<usize>().ok();
        }
    }
    let mut body = vec![0; length?];
    reader.read_exact(&mut body).ok()?;
    status
        .starts_with("HTTP/1.1 200")
        .then(|| String::from_utf8_lossy(&body).into_owned())
}

/// A page in headless Chromium, driven over the DevTools protocol.
struct Browser {
    _process: Killed,
    _profile: tempfile::TempDir,
    socket: tungstenite::WebSocket<TcpStream>,
    next_id: u64,
}

impl Browser {
    fn start() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let port = free_port();
        let process = Killed::spawn(
            Command::new(chromium_binary())
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--window-size=1280,1000",
                    &format!("--remote-debugging-port={port}"),
                    &format!("--user-data-dir={}", profile.path().display()),
                    "about:blank",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let ws_url = loop {
            if let Some(list) = http_get(port, "/json/list")
                && let Ok(targets) = serde_json::from_str::<Vec<Value>>(&list)
                && let Some(url) = targets
                    .iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            {
                break url.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "chromium's DevTools never answered"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let (socket, _) = tungstenite::client(ws_url.as_str(), stream).expect("DevTools socket");
        Browser {
            _process: process,
            _profile: profile,
            socket,
            next_id: 1,
        }
    }

    /// Calls a DevTools method and returns its result (events in between are skipped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({"id": id, "method": method, "params": params});
        self.socket
            .send(tungstenite::Message::text(request.to_string()))
            .expect("send to DevTools");
        loop {
            let message = self.socket.read().expect("read from DevTools");
            let Ok(text) = message.to_text() else {
                continue;
            };
            let Ok(value) = serde_json::from_str::<Value>(text) else {
                continue;
            };
            if value["id"] == id {
                assert!(value["error"].is_null(), "{method} failed: {value}");
                return value["result"].clone();
            }
        }
    }

    /// Evaluates `expression` in the page; its value as JSON.
    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        result["result"]["value"].clone()
    }

    fn screenshot(&mut self, path: &std::path::Path) {
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("image data"))
            .expect("base64");
        std::fs::write(path, png).expect("write the screenshot");
    }
}

/// What the page shows, read from its DOM.
const READ_PAGE: &str = r#"JSON.stringify({
  origin: performance.timeOrigin,
  nodes: [...document.querySelectorAll('#nodes .node')].map(n => ({
    node: n.dataset.node, health: n.dataset.health, leader: n.dataset.leader === 'true',
    shards: Number(n.querySelector('.shards').textContent),
    resident: Number(n.querySelector('.resident').textContent)})),
  owners: [...document.querySelectorAll('#grid .cell')].map(c => c.dataset.owner),
  moving: [...document.querySelectorAll('#grid .cell')].filter(c => c.dataset.moving === 'true').length,
  events: [...document.querySelectorAll('#events li')].map(l => l.textContent),
  leader: document.getElementById('leader').textContent,
  error: document.getElementById('error').hidden ? null : document.getElementById('error').textContent,
})"#;

fn read_page(browser: &mut Browser) -> Value {
    let text = browser.eval(READ_PAGE);
    serde_json::from_str(text.as_str().unwrap_or("null")).unwrap_or(Value::Null)
}

fn page_until(browser: &mut Browser, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let page = read_page(browser);
        if ok(&page) {
            return page;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed {what}: {page:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn owners(page: &Value) -> BTreeSet<String> {
    page["owners"]
        .as_array()
        .map(|o| {
            o.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_dashboard_shows_a_failure_and_the_new_owners_live() {
    let server = NatsServer::start();
    let url = server.url();
    let one = [("AETHER_REPLICAS", "1")];
    let mut n1 = NodeProcess::spawn_with(&node_binary(), &url, NS, "node-1", FAST, &one);
    let _n2 = NodeProcess::spawn_with(&node_binary(), &url, NS, "node-2", FAST, &one);
    let mut n3 = NodeProcess::spawn_with(&node_binary(), &url, NS, "node-3", FAST, &one);
    for i in 0..9 {
        assert!(n1.command(&format!("open acct{i}")).starts_with("ok "));
    }

    let port = free_port();
    let mut dashboard = Killed::spawn(
        Command::new(aether_binary())
            .args(["--server", &url, "--namespace", NS, "dashboard"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let mut banner = String::new();
    BufReader::new(dashboard.0.stderr.take().unwrap())
        .read_line(&mut banner)
        .unwrap();
    assert!(
        banner.contains(&format!("http://127.0.0.1:{port}/")),
        "{banner}"
    );

    let mut browser = Browser::start();
    browser.call("Page.enable", json!({}));
    browser.call(
        "Page.navigate",
        json!({"url": format!("http://127.0.0.1:{port}/")}),
    );
    let three: BTreeSet<String> = ["node-1", "node-2", "node-3"].map(String::from).into();
    let before = page_until(&mut browser, "three healthy nodes and a full grid", |p| {
        p["nodes"]
            .as_array()
            .is_some_and(|n| n.len() == 3 && n.iter().all(|n| n["health"] == "ok"))
            && p["owners"].as_array().is_some_and(|o| o.len() == 1024)
            && owners(p) == three
            && p["moving"] == 0
            && p["nodes"].as_array().is_some_and(|n| {
                n.iter()
                    .map(|n| n["resident"].as_u64().unwrap_or(0))
                    .sum::<u64>()
                    == 9
            })
    });
    let nodes = before["nodes"].as_array().unwrap();
    let leaders: Vec<&Value> = nodes.iter().filter(|n| n["leader"] == true).collect();
    assert_eq!(leaders.len(), 1, "one leader marked: {before:#}");
    assert_eq!(leaders[0]["node"], before["leader"]);
    assert_eq!(
        nodes
            .iter()
            .map(|n| n["shards"].as_u64().unwrap())
            .sum::<u64>(),
        1024
    );
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
    browser.screenshot(&target.join("dashboard-before.png"));

    // node-3 dies; the same page (never reloaded) shows it and who owns its shards now.
    n3.kill();
    let after = page_until(
        &mut browser,
        "node-3's failure and its shards' new owners",
        |p| {
            let failed = p["nodes"].as_array().is_some_and(|n| {
                n.iter()
                    .filter(|n| n["node"] == "node-3")
                    .all(|n| n["health"] == "failed" || n["health"] == "silent")
            });
            let told = p["events"].as_array().is_some_and(|e| {
                e.iter()
                    .any(|e| e.as_str().is_some_and(|t| t.contains("node-3 failed")))
            });
            let moved = p["events"].as_array().is_some_and(|e| {
                e.iter()
                    .any(|e| e.as_str().is_some_and(|t| t.contains("node-3→")))
            });
            failed
                && told
                && moved
                && owners(p) == ["node-1", "node-2"].map(String::from).into()
                && p["moving"] == 0
        },
    );
    assert_eq!(
        after["origin"], before["origin"],
        "the page updated itself: it was never reloaded"
    );
    assert_eq!(after["owners"].as_array().unwrap().len(), 1024);
    assert!(after["error"].is_null(), "{after:#}");
    browser.screenshot(&target.join("dashboard-after.png"));
    if let Some(path) = std::env::var_os("AETHER_DASHBOARD_SCREENSHOT") {
        browser.screenshot(std::path::Path::new(&path));
    }
}
