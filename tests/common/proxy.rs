//! A TCP proxy on loopback that can cut one process off from NATS the way networks fail: it
//! forwards, or it **black-holes** (stops forwarding in both directions but keeps both sockets
//! open — a cut cable or a frozen VM, until keepalives notice), or it **delays** every chunk,
//! or it **resets** every connection. Put it between a node and its nats-server by giving the
//! node the proxy's URL.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward everything.
    Forward,
    /// Forward nothing, in either direction; keep the sockets open.
    BlackHole,
    /// Forward every chunk after this delay.
    Delay(Duration),
}

/// One proxy: listens on a free loopback port, forwards to `target`.
pub struct Proxy {
    pub port: u16,
    mode: watch::Sender<Mode>,
    /// Bumped to reset every open connection.
    resets: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts forwarding `127.0.0.1:<free port>` to `target` (`host:port`).
    pub async fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let (mode, mode_rx) = watch::channel(Mode::Forward);
        let (resets, resets_rx) = watch::channel(0u64);
        let target = target.to_owned();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let target = target.clone();
                let (mode, resets) = (mode_rx.clone(), resets_rx.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let up = pump(cr, sw, mode.clone());
                    let down = pump(sr, cw, mode);
                    let mut resets = resets;
                    resets.borrow_and_update();
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                        _ = resets.changed() => {}
                    }
                    // Dropping both halves closes both sockets.
                });
            }
        });
        Proxy {
            port,
            mode,
            resets,
            task,
        }
    }

    /// The proxy's URL, for a NATS client.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Changes what the proxy does from now on.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Closes every open connection (new ones are accepted).
    pub fn reset(&self) {
        self.resets.send_modify(|n| *n += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, obeying `mode` for every chunk. A black hole stops reading, so the
/// bytes wait in the kernel's buffers (as on a frozen link) and flow again when it ends.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        loop {
            let now = *mode.borrow_and_update();
            if now != Mode::BlackHole {
                break;
            }
            if mode.changed().await.is_err() {
                return;
            }
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Read, then check again: bytes read just as the hole opened are held back too.
        loop {
            let now = *mode.borrow_and_update();
            match now {
                Mode::BlackHole => {
                    if mode.changed().await.is_err() {
                        return;
                    }
                }
                Mode::Delay(d) => {
                    tokio::time::sleep(d).await;
                    break;
                }
                Mode::Forward => break,
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Shares a proxy between tasks.
pub type SharedProxy = Arc<Proxy>;
