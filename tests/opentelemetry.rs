//! With the `opentelemetry` feature, the runtime's spans, exported through
//! `tracing-opentelemetry`, form one OpenTelemetry trace per workflow across nodes — and join
//! the caller's own trace when the ask is made inside one.
//!
//! Run by `scripts/test.sh` as `cargo test --features opentelemetry --test opentelemetry`.

mod common;

use std::time::Duration;

use aether::{ClusterConfig, Runtime};
use common::nats::NatsServer;
use common::*;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

const WAIT: Duration = Duration::from_secs(20);

async fn node(url: &str, id: &str) -> Runtime {
    Runtime::join_cluster(
        ClusterConfig::new(url, "otel")
            .node_id(id)
            .heartbeat(Duration::from_millis(200))
            .failure_timeout(Duration::from_millis(1000))
            .lease(Duration::from_millis(1000))
            .replicas(1),
        Runtime::builder().register::<Counter>().trace_one_in(1),
    )
    .await
    .unwrap_or_else(|e| panic!("{id} joins: {e}"))
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_opentelemetry_trace_across_nodes_and_inside_the_callers_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let filter = tracing_subscriber::filter::Targets::new()
        .with_target("aether_runtime", tracing::Level::DEBUG)
        .with_target("opentelemetry", tracing::Level::INFO);
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
        .with(filter);
    tracing::subscriber::set_global_default(subscriber).expect("one subscriber");

    let server = NatsServer::start();
    let url = server.url();
    let a = node(&url, "node-a").await;
    let b = node(&url, "node-b").await;
    // Both in the map, and the handoff over: node-a no longer serves node-b's shards.
    for rt in [&a, &b] {
        rt.cluster()
            .unwrap()
            .settled_with(2, WAIT)
            .await
            .expect("the cluster settles");
    }
    let cluster = a.cluster().unwrap();
    let far_id = (0..10_000)
        .map(|i| format!("far-{i}"))
        .find(|id| cluster.locate_kind("counter", id).owner.as_deref() == Some("node-b"))
        .unwrap();
    let far = a.actor::<Counter>(&far_id).unwrap();

    // A command from outside any trace: its trace id is its command id, on both nodes.
    let command_id = aether::CommandId::random();
    far.ask_with(
        CounterCmd::Add(1),
        aether::AskOptions::default().command_id(command_id),
    )
    .await
    .unwrap();
    let trace = opentelemetry::trace::TraceId::from(command_id.as_u128());
    let spans_of = |trace: opentelemetry::trace::TraceId| {
        let _ = provider.force_flush();
        exporter
            .get_finished_spans()
            .unwrap()
            .into_iter()
            .filter(|s| s.span_context.trace_id() == trace)
            .collect::<Vec<_>>()
    };
    let mut spans = Vec::new();
    poll_until(WAIT, "the owner's spans exported", || {
        spans = spans_of(trace);
        let done = ["ask", "serve", "handle", "append", "reply"]
            .iter()
            .all(|name| spans.iter().any(|s| s.name == *name));
        async move { done }
    })
    .await;
    let on = |name: &str| -> Vec<Option<String>> {
        spans
            .iter()
            .filter(|s| s.name == name)
            .map(|s| attribute(s, "node"))
            .collect()
    };
    assert_eq!(on("ask"), [Some("node-a".to_owned())]);
    assert_eq!(on("serve"), [Some("node-b".to_owned())]);
    assert_eq!(on("handle"), [Some("node-b".to_owned())]);
    // The caller's and the owner's spans hang off the same call (the command's span id).
    let call = opentelemetry::trace::SpanId::from((command_id.as_u128() as u64).max(1));
    for name in ["ask", "serve", "handle"] {
        let span = spans.iter().find(|s| s.name == name).unwrap();
        assert_eq!(span.parent_span_id, call, "{name}'s parent");
    }
    let handle = spans.iter().find(|s| s.name == "handle").unwrap();
    let append = spans.iter().find(|s| s.name == "append").unwrap();
    assert_eq!(append.parent_span_id, handle.span_context.span_id());

    // An ask made inside the application's own trace joins it.
    let request = tracing::info_span!(target: "aether_runtime::test", "http_request");
    let user_trace = request.context().span().span_context().trace_id();
    assert_ne!(user_trace, opentelemetry::trace::TraceId::INVALID);
    {
        use tracing::Instrument;
        far.ask(CounterCmd::Add(2))
            .instrument(request.clone())
            .await
            .unwrap();
    }
    drop(request);
    poll_until(WAIT, "the owner's spans in the caller's trace", || {
        let spans = spans_of(user_trace);
        let joined = spans.iter().any(|s| s.name == "http_request")
            && spans
                .iter()
                .any(|s| s.name == "serve" && attribute(s, "node").as_deref() == Some("node-b"))
            && spans.iter().any(|s| s.name == "handle");
        async move { joined }
    })
    .await;
    let spans = spans_of(user_trace);
    let request = spans.iter().find(|s| s.name == "http_request").unwrap();
    let ask = spans.iter().find(|s| s.name == "ask").unwrap();
    assert_eq!(
        ask.parent_span_id,
        request.span_context.span_id(),
        "the ask is a child of the application's span"
    );

    for rt in [a, b] {
        rt.shutdown().await.unwrap();
    }
    let _ = provider.shutdown();
}
