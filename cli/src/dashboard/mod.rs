//! `aether dashboard`: a live web page of the cluster.
//!
//! One process reads the cluster's state from NATS every second (the same read as `aether
//! cluster status`), keeps the latest as JSON, and derives what changed since the previous
//! read as events: a node joined, failed, left or was drained; a new leader; a new map and
//! which shards it moved where. It serves two things over HTTP/1 (hyper):
//!
//! - `/` — one self-contained page (`page.html`: HTML, CSS and JavaScript, no build step,
//!   nothing fetched from elsewhere) that polls the state and draws the nodes, the leader,
//!   the shard grid coloured by owner with moving shards marked, per-node resident actors
//!   and commits per second, and the recent events;
//! - `/api/state` — that JSON, for the page and for scripts.
//!
//! A failed read keeps the last good state on the page, marked with the error.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::commands::state::ClusterState;
use crate::context::{Ctx, Usage};

/// The page, embedded in the binary.
const PAGE: &str = include_str!("page.html");

/// How often the state is read.
const REFRESH: Duration = Duration::from_secs(1);

/// Events kept for the page.
const EVENTS_KEPT: usize = 100;

/// Commit rates are measured over this window.
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// What the poller learned, served as `/api/state`.
#[derive(Default)]
struct Shared {
    state: Value,
    events: VecDeque<Value>,
    error: Option<String>,
}

pub async fn run(ctx: &Ctx, listen: SocketAddr) -> anyhow::Result<()> {
    let ns = ctx.namespace()?;
    let view = ctx.view().await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Usage(format!("cannot listen on {listen}: {e}")))?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Mutex::new(Shared::default()));
    let poller = {
        let shared = Arc::clone(&shared);
        let ns = ns.to_string();
        tokio::spawn(async move {
            let mut tracker = Tracker::default();
            loop {
                match ClusterState::read(&view, &ns).await {
                    Ok(state) => {
                        let events = tracker.observe(&state);
                        let json = tracker.render(&state);
                        let mut s = shared.lock();
                        for e in events {
                            s.events.push_front(e);
                        }
                        s.events.truncate(EVENTS_KEPT);
                        s.state = json;
                        s.error = None;
                    }
                    Err(e) => shared.lock().error = Some(format!("{e:#}")),
                }
                tokio::time::sleep(REFRESH).await;
            }
        })
    };
    eprintln!("dashboard of namespace {ns} at http://{addr}/ (Ctrl-C to stop)");
    let serve = async {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let shared = Arc::clone(&shared);
                    async move { Ok::<_, Infallible>(answer(&req, &shared)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    };
    tokio::select! {
        () = serve => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    poller.abort();
    Ok(())
}

fn answer<B>(req: &Request<B>, shared: &Mutex<Shared>) -> Response<Full<Bytes>> {
    let respond = |status: StatusCode, kind: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(kind),
        );
        r.headers_mut().insert(
            hyper::header::CACHE_CONTROL,
            hyper::header::HeaderValue::from_static("no-store"),
        );
        r
    };
    if req.method() != Method::GET {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET is served here\n".into(),
        );
    }
    match req.uri().path() {
        "/" | "/index.html" => respond(StatusCode::OK, "text/html; charset=utf-8", PAGE.into()),
        "/api/state" => {
            let s = shared.lock();
            let mut state = s.state.clone();
            if let Value::Object(map) = &mut state {
                map.insert(
                    "events".into(),
                    Value::Array(s.events.iter().cloned().collect()),
                );
                map.insert("error".into(), json!(s.error));
            } else {
                state = json!({"events": s.events, "error": s.error, "loading": true});
            }
            respond(StatusCode::OK, "application/json", state.to_string())
        }
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: the dashboard is at / and its data at /api/state\n".into(),
        ),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Remembers the previous read, to tell what changed and how fast nodes write.
#[derive(Default)]
struct Tracker {
    /// Per node: its health at the previous read.
    health: BTreeMap<String, &'static str>,
    leader: Option<(String, u64)>,
    /// The previous map: epoch and owner per shard.
    map: Option<(u64, Vec<String>)>,
    /// Per node: recent (when, commits) samples.
    samples: HashMap<String, VecDeque<(Instant, u64)>>,
    first: bool,
}

impl Tracker {
    /// The events between the previous read and `state`.
    fn observe(&mut self, state: &ClusterState) -> Vec<Value> {
        let mut events = Vec::new();
        let at = now_ms();
        let mut event = |kind: &str, text: String| {
            events.push(json!({"at_ms": at, "kind": kind, "text": text}));
        };
        let seen_before = self.first;
        let rows = state.node_rows();
        let mut health = BTreeMap::new();
        for n in &rows {
            health.insert(n.node.clone(), n.health);
            let before = self.health.get(&n.node).copied();
            if before == Some(n.health) {
                continue;
            }
            let text = match (before, n.health) {
                (None, _) if !seen_before => format!("{} is {}", n.node, n.health),
                (None, "ok") => format!("{} joined", n.node),
                (None, h) => format!("{} joined ({h})", n.node),
                (_, "failed") => format!("{} failed", n.node),
                (_, "silent") => format!("{} stopped heartbeating", n.node),
                (_, "leaving") => format!("{} is leaving", n.node),
                (_, "draining") => format!("{} is draining", n.node),
                (_, "drained") => format!("{} is drained", n.node),
                (_, _) => format!("{} is {}", n.node, n.health),
            };
            let kind = match n.health {
                "failed" | "silent" => "failure",
                "ok" => "join",
                _ => "change",
            };
            event(kind, text);
        }
        for (node, was) in &self.health {
            if !health.contains_key(node) {
                if *was == "leaving" {
                    event("change", format!("{node} left"));
                } else {
                    event("failure", format!("{node} failed (its record is gone)"));
                }
            }
        }
        self.health = health;
        let leader = state.leader.as_ref().map(|l| (l.node.clone(), l.term));
        if leader != self.leader {
            match &leader {
                Some((node, term)) => event("leader", format!("{node} leads (term {term})")),
                None => event("failure", "no leader".into()),
            }
            self.leader = leader;
        }
        if let Some(map) = &state.map {
            let owners: Vec<String> = (0..map.shard_count())
                .map(|s| map.owner(s).unwrap_or("").to_owned())
                .collect();
            match &self.map {
                Some((epoch, before)) if *epoch != map.epoch => {
                    let mut moves: BTreeMap<(String, String), usize> = BTreeMap::new();
                    for (old, new) in before.iter().zip(&owners) {
                        if old != new {
                            *moves.entry((old.clone(), new.clone())).or_default() += 1;
                        }
                    }
                    let moved: usize = moves.values().sum();
                    let detail: Vec<String> = moves
                        .iter()
                        .map(|((from, to), n)| format!("{n} {from}→{to}"))
                        .collect();
                    event(
                        "migration",
                        format!(
                            "map epoch {}: {moved} shard(s) moved{}",
                            map.epoch,
                            if detail.is_empty() {
                                String::new()
                            } else {
                                format!(" ({})", detail.join(", "))
                            }
                        ),
                    );
                }
                None if !seen_before => {}
                _ => {}
            }
            self.map = Some((map.epoch, owners));
        }
        self.first = true;
        events
    }

    /// The JSON the page draws.
    fn render(&mut self, state: &ClusterState) -> Value {
        let now = Instant::now();
        let rows = state.node_rows();
        let nodes: Vec<Value> = rows
            .iter()
            .map(|n| {
                let samples = self.samples.entry(n.node.clone()).or_default();
                samples.push_back((now, n.commits));
                while samples.len() > 2
                    && samples
                        .front()
                        .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
                {
                    samples.pop_front();
                }
                // A node that stopped writing its record has no rate to speak of.
                let rate = match (samples.front(), samples.back()) {
                    (Some((t0, c0)), Some((t1, c1)))
                        if t1 > t0 && matches!(n.health, "ok" | "draining" | "drained") =>
                    {
                        c1.saturating_sub(*c0) as f64 / t1.duration_since(*t0).as_secs_f64()
                    }
                    _ => 0.0,
                };
                let mut node = n.to_json();
                node["commits_per_sec"] = json!((rate * 10.0).round() / 10.0);
                node
            })
            .collect();
        self.samples
            .retain(|node, _| rows.iter().any(|r| &r.node == node));
        let shard_rows = state.shard_rows();
        let owners: Vec<&str> = shard_rows.iter().map(|r| r.owner.as_str()).collect();
        let moving: Vec<u32> = shard_rows
            .iter()
            .filter(|r| r.moving)
            .map(|r| r.shard)
            .collect();
        json!({
            "namespace": state.namespace,
            "updated_ms": now_ms(),
            "leader": state.leader.as_ref().map(|l| json!({"node": l.node, "term": l.term})),
            "map": state.map.as_ref().map(|m| json!({
                "epoch": m.epoch,
                "term": m.term,
                "shard_count": m.shard_count(),
                "nodes": m.nodes,
            })),
            "drained": state.drained,
            "nodes": nodes,
            "owners": owners,
            "moving": moving,
        })
    }
}
