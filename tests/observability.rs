//! Seeing inside a cluster: the Prometheus endpoint against a workload whose counts are known,
//! and one trace across two nodes (spans captured on both, the `traceparent` header on the
//! wire).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aether::prelude::*;
use aether::wire::TraceParent;
use aether::{ClusterConfig, Runtime, StartError};
use common::nats::NatsServer;
use common::*;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::span;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

const WAIT: Duration = Duration::from_secs(20);

fn config(url: &str, ns: &str, node: &str) -> ClusterConfig {
    ClusterConfig::new(url, ns)
        .node_id(node)
        .heartbeat(Duration::from_millis(200))
        .failure_timeout(Duration::from_millis(1000))
        .lease(Duration::from_millis(1000))
        .replicas(1)
}

async fn node(url: &str, ns: &str, id: &str) -> Runtime {
    node_tracing(url, ns, id, 1).await
}

/// A node that traces one workflow in `one_in`.
async fn node_tracing(url: &str, ns: &str, id: &str, one_in: u32) -> Runtime {
    Runtime::join_cluster(
        config(url, ns, id),
        Runtime::builder()
            .register::<Counter>()
            .metrics_addr(([127, 0, 0, 1], 0))
            .trace_one_in(one_in),
    )
    .await
    .unwrap_or_else(|e| panic!("{id} joins: {e}"))
}

/// Both nodes see one map with both of them and serve exactly their shards (the handoff is
/// over: a shard node-a gave away is no longer served, and so asked, locally).
async fn settled(a: &Runtime, b: &Runtime) {
    for rt in [a, b] {
        rt.cluster()
            .expect("a cluster node")
            .settled_with(2, WAIT)
            .await
            .expect("the cluster settles");
    }
}

/// An id whose shard `rt`'s cluster assigns to `owner`.
fn id_owned_by(rt: &Runtime, owner: &str, prefix: &str) -> String {
    let cluster = rt.cluster().unwrap();
    (0..10_000)
        .map(|i| format!("{prefix}-{i}"))
        .find(|id| cluster.locate_kind("counter", id).owner.as_deref() == Some(owner))
        .expect("some id lands on every node")
}

/// A plain subscriber on namespace `ns`'s shard subjects: it gets a copy of every request,
/// headers too. Returns once the subscription is active (with its connection, to keep).
async fn request_copies(url: &str, ns: &str) -> (async_nats::Client, async_nats::Subscriber) {
    let raw = async_nats::connect(url).await.unwrap();
    let mut copies = raw.subscribe(format!("aether.{ns}.shard.>")).await.unwrap();
    // `flush` only writes the SUB out; the server may still take another connection's request
    // first. A probe of our own coming back proves the subscription is active (no node serves
    // `shard.probe`: shard subscriptions need a number and a kind after `shard`).
    let probe_subject = format!("aether.{ns}.shard.probe");
    raw.publish(probe_subject.clone(), "probe".into())
        .await
        .unwrap();
    let probe = tokio::time::timeout(WAIT, copies.next())
        .await
        .expect("the probe comes back")
        .unwrap();
    assert_eq!(probe.subject.as_str(), probe_subject);
    (raw, copies)
}

/// `GET path` over plain HTTP/1.1; the status and the body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a header block");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    (status, body.to_owned())
}

/// One sample of the Prometheus text format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("name and value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("a value: {line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let rest = rest.strip_suffix('}').expect("labels end with }");
                let mut labels = BTreeMap::new();
                let mut chars = rest.chars().peekable();
                while chars.peek().is_some() {
                    let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
                    assert_eq!(chars.next(), Some('"'), "{line}");
                    let mut value = String::new();
                    while let Some(c) = chars.next() {
                        match c {
                            '\\' => value.push(chars.next().unwrap()),
                            '"' => break,
                            c => value.push(c),
                        }
                    }
                    if chars.peek() == Some(&',') {
                        chars.next();
                    }
                    labels.insert(key.trim().to_owned(), value);
                }
                (name.to_owned(), labels)
            }
        };
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    samples
}

/// The sum of the samples named `name` whose labels include `want`.
fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// The metric names `docs/metrics.md` documents.
fn documented() -> BTreeSet<String> {
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md"))
        .expect("docs/metrics.md");
    docs.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| n.starts_with("aether_"))
        .map(str::to_owned)
        .collect()
}

/// The metric a sample belongs to (a histogram's `_bucket`, `_sum` and `_count` are one).
fn family(name: &str, documented: &BTreeSet<String>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && documented.contains(base)
        {
            return base.to_owned();
        }
    }
    name.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_reports_every_documented_metric_with_the_workloads_counts() {
    let server = NatsServer::start();
    let url = server.url();
    let a = node(&url, "obs", "node-a").await;
    let b = node(&url, "obs", "node-b").await;
    settled(&a, &b).await;
    let addr = a.metrics_addr().expect("node-a serves metrics");
    assert_ne!(addr.port(), 0, "the port actually bound is reported");

    let mut events = a
        .bus()
        .subscribe("obs.events.counter.*", aether::Filter::all())
        .await
        .unwrap();

    // The workload: 5 local actors × 4 adds, 3 refusals, 6 adds to an actor node-b owns.
    let mut local_ids = Vec::new();
    for i in 0..5 {
        let id = id_owned_by(&a, "node-a", &format!("local{i}"));
        let actor = a.actor::<Counter>(&id).unwrap();
        for n in 1..=4 {
            actor.ask(CounterCmd::Add(n)).await.unwrap();
        }
        local_ids.push(id);
    }
    let refuser = a
        .actor::<Counter>(id_owned_by(&a, "node-a", "refuser"))
        .unwrap();
    for _ in 0..3 {
        let refused = refuser.ask(CounterCmd::Refuse).await;
        assert!(matches!(refused, Err(AskError::Rejected(_))));
    }
    let far = a
        .actor::<Counter>(id_owned_by(&a, "node-b", "far"))
        .unwrap();
    for n in 1..=6 {
        far.ask(CounterCmd::Add(n)).await.unwrap();
    }
    // Every event reaches the subscriber on node-a (node-b's over NATS).
    let mut seen = 0;
    while seen < 26 {
        tokio::time::timeout(WAIT, events.next())
            .await
            .expect("the events of the workload arrive")
            .expect("the subscription stays open");
        seen += 1;
    }

    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    let samples = parse(&body);
    let docs = documented();
    let scraped: BTreeSet<String> = samples
        .iter()
        .filter(|s| s.name.starts_with("aether_"))
        .map(|s| family(&s.name, &docs))
        .collect();
    let missing: Vec<_> = docs.difference(&scraped).collect();
    assert!(
        missing.is_empty(),
        "documented but not reported: {missing:?}"
    );
    let undocumented: Vec<_> = scraped.difference(&docs).collect();
    assert!(
        undocumented.is_empty(),
        "reported but not documented: {undocumented:?}"
    );

    let on_a = |extra: &[(&'static str, &'static str)]| {
        let mut l = vec![("namespace", "obs"), ("node", "node-a")];
        l.extend_from_slice(extra);
        l
    };
    let on_b = |extra: &[(&'static str, &'static str)]| {
        let mut l = vec![("namespace", "obs"), ("node", "node-b")];
        l.extend_from_slice(extra);
        l
    };
    let asks = |labels: &[(&str, &str)]| value(&samples, "aether_asks_total", labels);
    assert_eq!(
        asks(&on_a(&[
            ("kind", "counter"),
            ("path", "local"),
            ("outcome", "ok")
        ])),
        20.0
    );
    assert_eq!(
        asks(&on_a(&[("path", "local"), ("outcome", "rejected")])),
        3.0
    );
    assert_eq!(asks(&on_a(&[("path", "remote"), ("outcome", "ok")])), 6.0);
    assert_eq!(
        value(
            &samples,
            "aether_ask_duration_seconds_count",
            &on_a(&[("path", "local")])
        ),
        23.0
    );
    assert!(
        value(
            &samples,
            "aether_ask_duration_seconds_sum",
            &on_a(&[("path", "remote")])
        ) > 0.0
    );
    // Turns and appends happen where the actor lives.
    assert_eq!(
        value(&samples, "aether_turn_duration_seconds_count", &on_a(&[])),
        23.0
    );
    assert_eq!(
        value(&samples, "aether_turn_duration_seconds_count", &on_b(&[])),
        6.0
    );
    assert_eq!(
        value(
            &samples,
            "aether_store_append_duration_seconds_count",
            &on_a(&[])
        ),
        20.0
    );
    assert_eq!(value(&samples, "aether_commits_total", &on_a(&[])), 20.0);
    assert_eq!(value(&samples, "aether_commits_total", &on_b(&[])), 6.0);
    assert_eq!(value(&samples, "aether_actors_resident", &on_a(&[])), 6.0);
    assert_eq!(value(&samples, "aether_actors_resident", &on_b(&[])), 1.0);
    assert_eq!(value(&samples, "aether_activations_total", &on_a(&[])), 6.0);
    assert_eq!(
        value(
            &samples,
            "aether_activation_duration_seconds_count",
            &on_b(&[])
        ),
        1.0
    );
    assert_eq!(
        value(&samples, "aether_replay_events_count", &on_a(&[])),
        6.0
    );
    assert_eq!(value(&samples, "aether_actors_activating", &on_a(&[])), 0.0);
    // The cluster: one leader, every shard owned once, both nodes alive in both views.
    let obs = [("namespace", "obs")];
    assert_eq!(value(&samples, "aether_cluster_is_leader", &obs), 1.0);
    assert_eq!(value(&samples, "aether_cluster_shards_owned", &obs), 1024.0);
    assert_eq!(value(&samples, "aether_cluster_nodes", &on_a(&[])), 2.0);
    assert!(value(&samples, "aether_cluster_leader_term", &on_a(&[])) >= 1.0);
    // The bus: 26 events delivered to the one subscription, none dropped.
    assert_eq!(
        value(
            &samples,
            "aether_bus_subscription_delivered_total",
            &on_a(&[("pattern", "obs.events.counter.*")])
        ),
        26.0
    );
    assert_eq!(value(&samples, "aether_bus_dropped_total", &on_a(&[])), 0.0);
    assert_eq!(value(&samples, "aether_effects_pending", &on_a(&[])), 0.0);

    // Other paths and methods get clear refusals.
    assert_eq!(http_get(addr, "/nope").await.0, 404);
    assert_eq!(http_get(addr, "/").await.0, 200);

    for rt in [a, b] {
        rt.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_taken_metrics_port_refuses_the_start_before_anything_opens() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = Runtime::builder()
        .namespace("obsport")
        .register::<Counter>()
        .memory_store()
        .metrics_addr(addr)
        .start()
        .await
        .expect_err("the port is taken");
    assert!(
        matches!(&err, StartError::Metrics { addr: a, .. } if *a == addr),
        "{err}"
    );
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

// ---------------------------------------------------------------------------------------------
// One trace across nodes.

/// A span as captured: its name, fields, and its parent (spans are numbered in the order they
/// start: tracing reuses the ids of closed spans, these numbers are never reused).
#[derive(Debug, Clone)]
struct Captured {
    uid: usize,
    name: &'static str,
    fields: HashMap<String, String>,
    parent: Option<usize>,
}

/// Captures every span of the runtime, process-wide (the runtime's tasks run on any thread).
#[derive(Default)]
struct Spans(Mutex<Vec<Captured>>);

/// A span's number, kept in its extensions.
struct Uid(usize);

struct Visitor<'a>(&'a mut HashMap<String, String>);

impl tracing::field::Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

struct Layer(Arc<Spans>);

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Layer {
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let mut fields = HashMap::new();
        attrs.record(&mut Visitor(&mut fields));
        let parent = ctx
            .span(id)
            .and_then(|s| s.parent())
            .and_then(|p| p.extensions().get::<Uid>().map(|u| u.0));
        let mut all = self.0.0.lock();
        let uid = all.len();
        all.push(Captured {
            uid,
            name: attrs.metadata().name(),
            fields,
            parent,
        });
        drop(all);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Uid(uid));
        }
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        let Some(uid) = ctx
            .span(id)
            .and_then(|s| s.extensions().get::<Uid>().map(|u| u.0))
        else {
            return;
        };
        if let Some(span) = self.0.0.lock().get_mut(uid) {
            values.record(&mut Visitor(&mut span.fields));
        }
    }
}

/// The process's span capture, installed once for this test binary.
fn capture() -> Arc<Spans> {
    static SPANS: OnceLock<Arc<Spans>> = OnceLock::new();
    SPANS
        .get_or_init(|| {
            let spans = Arc::new(Spans::default());
            let filter = tracing_subscriber::filter::filter_fn(|m| {
                m.target().starts_with("aether_runtime") && m.is_span()
            });
            let subscriber = tracing_subscriber::registry().with(
                tracing_subscriber::Layer::with_filter(Layer(Arc::clone(&spans)), filter),
            );
            tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
            spans
        })
        .clone()
}

impl Spans {
    fn find(&self, what: impl Fn(&Captured) -> bool) -> Vec<Captured> {
        self.0.lock().iter().filter(|s| what(s)).cloned().collect()
    }
}

fn field<'a>(span: &'a Captured, name: &str) -> Option<&'a str> {
    span.fields.get(name).map(String::as_str)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_node_ask_is_one_trace_with_its_context_in_the_nats_headers() {
    let spans = capture();
    let server = NatsServer::start();
    let url = server.url();
    let a = node(&url, "trace", "node-a").await;
    let b = node(&url, "trace", "node-b").await;
    settled(&a, &b).await;

    let (_raw, mut copies) = request_copies(&url, "trace").await;

    let far_id = id_owned_by(&a, "node-b", "far");
    let far = a.actor::<Counter>(&far_id).unwrap();
    let command_id = aether::CommandId::random();
    far.ask_with(
        CounterCmd::Add(5),
        aether::AskOptions::default().command_id(command_id),
    )
    .await
    .unwrap();

    let trace_id = format!("{:032x}", command_id.as_u128());
    let span_id = format!("{:016x}", (command_id.as_u128() as u64).max(1));

    // The header on the wire.
    let copy = tokio::time::timeout(WAIT, copies.next())
        .await
        .expect("the request is seen")
        .unwrap();
    let header = copy
        .headers
        .as_ref()
        .and_then(|h| h.get("traceparent"))
        .map(|v| v.as_str().to_owned())
        .expect("a traceparent header");
    assert_eq!(header, format!("00-{trace_id}-{span_id}-01"));
    let parsed = TraceParent::parse(&header).unwrap();
    assert_eq!(parsed.trace_id, command_id.as_u128());

    // The caller's span on node-a.
    let asks = spans.find(|s| s.name == "ask" && field(s, "trace_id") == Some(&trace_id));
    assert_eq!(asks.len(), 1, "one ask span: {asks:?}");
    let ask = &asks[0];
    assert_eq!(field(ask, "node"), Some("node-a"));
    assert_eq!(field(ask, "path"), Some("remote"));
    assert_eq!(field(ask, "span_id"), Some(span_id.as_str()));
    assert_eq!(field(ask, "namespace"), Some("trace"));
    assert_eq!(field(ask, "kind"), Some("counter"));
    assert_eq!(field(ask, "id"), Some(far_id.as_str()));
    assert!(field(ask, "shard").is_some());

    // The owner's spans on node-b: serve → (the activation) → handle → append, and the reply.
    let serves = spans.find(|s| s.name == "serve" && field(s, "trace_id") == Some(&trace_id));
    assert_eq!(serves.len(), 1, "one serve span: {serves:?}");
    let serve = &serves[0];
    assert_eq!(field(serve, "node"), Some("node-b"));
    assert_eq!(field(serve, "parent_span_id"), Some(span_id.as_str()));
    assert_eq!(field(serve, "id"), Some(far_id.as_str()));
    assert_eq!(field(serve, "shard"), field(ask, "shard"));

    let handles = spans.find(|s| s.name == "handle" && field(s, "trace_id") == Some(&trace_id));
    assert_eq!(handles.len(), 1, "one handle span: {handles:?}");
    let handle = &handles[0];
    assert_eq!(field(handle, "node"), Some("node-b"));
    assert_eq!(field(handle, "version"), Some("0"));
    assert_eq!(field(handle, "parent_span_id"), Some(span_id.as_str()));
    let appends = spans.find(|s| s.name == "append" && s.parent == Some(handle.uid));
    assert_eq!(appends.len(), 1, "the append is a child of the handle span");
    assert_eq!(field(&appends[0], "events"), Some("1"));
    let activations = spans.find(|s| {
        s.name == "activate"
            && field(s, "namespace") == Some("trace")
            && field(s, "id") == Some(far_id.as_str())
    });
    assert_eq!(activations.len(), 1);
    assert_eq!(field(&activations[0], "node"), Some("node-b"));
    assert_eq!(field(&activations[0], "version"), Some("0"));
    let replays = spans.find(|s| s.name == "replay" && s.parent == Some(activations[0].uid));
    assert_eq!(replays.len(), 1, "the replay is a child of the activation");
    assert_eq!(field(&replays[0], "events"), Some("0"));
    poll_until(WAIT, "the reply span", || {
        let found = !spans
            .find(|s| s.name == "reply" && field(s, "trace_id") == Some(&trace_id))
            .is_empty();
        async move { found }
    })
    .await;

    // A workflow is one trace: a handler on node-a asks the actor on node-b; the inner ask
    // carries the outer command's trace, and names the outer command as its parent.
    let near = a
        .actor::<Counter>(id_owned_by(&a, "node-a", "near"))
        .unwrap();
    let outer = aether::CommandId::random();
    near.ask_with(
        CounterCmd::AddVia {
            target: far.clone(),
            n: 1,
        },
        aether::AskOptions::default().command_id(outer),
    )
    .await
    .unwrap();
    let outer_trace = format!("{:032x}", outer.as_u128());
    let outer_span = format!("{:016x}", (outer.as_u128() as u64).max(1));
    let inner = spans.find(|s| {
        s.name == "ask"
            && field(s, "trace_id") == Some(&outer_trace)
            && field(s, "path") == Some("remote")
    });
    assert_eq!(inner.len(), 1, "the handler's ask: {inner:?}");
    assert_eq!(
        field(&inner[0], "parent_span_id"),
        Some(outer_span.as_str())
    );
    let remote_serves = spans.find(|s| {
        s.name == "serve"
            && field(s, "trace_id") == Some(&outer_trace)
            && field(s, "node") == Some("node-b")
    });
    assert_eq!(remote_serves.len(), 1, "served on node-b in the same trace");

    for rt in [a, b] {
        rt.shutdown().await.unwrap();
    }
}

/// An untraced call carries its sampling decision in the frame and no `traceparent` header
/// (a header on every request is expensive), and a receiver that would trace the workflow
/// itself follows the sender's decision: a workflow is traced on every node or on none, even
/// when the nodes sample at different rates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untraced_call_says_so_in_its_frame_and_the_receiver_follows_it() {
    let spans = capture();
    let server = NatsServer::start();
    let url = server.url();
    // node-a traces every workflow, node-b none.
    let a = node_tracing(&url, "untraced", "node-a", 1).await;
    let b = node_tracing(&url, "untraced", "node-b", 0).await;
    settled(&a, &b).await;
    let (_raw, mut copies) = request_copies(&url, "untraced").await;

    // node-b asks an actor on node-a: untraced by node-b's choice.
    let on_a = id_owned_by(&b, "node-a", "on-a");
    let command_id = aether::CommandId::random();
    b.actor::<Counter>(&on_a)
        .unwrap()
        .ask_with(
            CounterCmd::Add(2),
            aether::AskOptions::default().command_id(command_id),
        )
        .await
        .unwrap();
    let copy = tokio::time::timeout(WAIT, copies.next())
        .await
        .expect("the request is seen")
        .unwrap();
    assert!(
        copy.headers
            .as_ref()
            .and_then(|h| h.get("traceparent"))
            .is_none(),
        "an untraced call sends no traceparent header: {:?}",
        copy.headers
    );
    let frame = aether::wire::RemoteRequest::decode(&copy.payload).unwrap();
    assert_eq!(frame.command_id, command_id);
    assert_eq!(frame.traced, Some(false), "the frame says: not traced");
    let trace_id = format!("{:032x}", command_id.as_u128());
    // node-a answered (the ask returned) without a span for the workflow, though it traces
    // every workflow of its own.
    for name in ["serve", "handle", "append", "reply"] {
        let found = spans.find(|s| s.name == name && field(s, "trace_id") == Some(&trace_id));
        assert!(found.is_empty(), "no {name} span on node-a: {found:?}");
    }

    // node-a asks an actor on node-b: traced by node-a's choice, so node-b traces it too.
    let on_b = id_owned_by(&a, "node-b", "on-b");
    let command_id = aether::CommandId::random();
    a.actor::<Counter>(&on_b)
        .unwrap()
        .ask_with(
            CounterCmd::Add(3),
            aether::AskOptions::default().command_id(command_id),
        )
        .await
        .unwrap();
    let copy = tokio::time::timeout(WAIT, copies.next())
        .await
        .expect("the request is seen")
        .unwrap();
    let header = copy
        .headers
        .as_ref()
        .and_then(|h| h.get("traceparent"))
        .map(|v| v.as_str().to_owned())
        .expect("a traced call sends a traceparent header");
    assert!(header.ends_with("-01"), "sampled: {header}");
    let frame = aether::wire::RemoteRequest::decode(&copy.payload).unwrap();
    assert_eq!(frame.traced, Some(true));
    let trace_id = format!("{:032x}", command_id.as_u128());
    let serves = spans.find(|s| s.name == "serve" && field(s, "trace_id") == Some(&trace_id));
    assert_eq!(serves.len(), 1, "node-b serves it traced: {serves:?}");
    assert_eq!(field(&serves[0], "node"), Some("node-b"));
    poll_until(WAIT, "the reply span on node-b", || {
        let found = !spans
            .find(|s| s.name == "reply" && field(s, "trace_id") == Some(&trace_id))
            .is_empty();
        async move { found }
    })
    .await;

    for rt in [a, b] {
        rt.shutdown().await.unwrap();
    }
}
