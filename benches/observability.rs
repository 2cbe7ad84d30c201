//! The cost of seeing inside: the ask paths of B1 (local) and B2 (cross-node) with metrics and
//! tracing on ÷ the same paths with both off, in the same run.
//!
//! - **on**: the runtime serves its Prometheus endpoint (the recorder installed, every ask,
//!   turn and append recorded; nobody scrapes), and the spans of the traced workflows (the
//!   default sampling) go to an OpenTelemetry exporter with no collector behind it: the set-up
//!   of `docs/operations.md` (a `tracing-opentelemetry` layer over a batch span processor)
//!   whose exporter fails every batch, as an OTLP exporter does while its collector is down;
//! - **off**: a runtime without metrics, and the subscriber's filter switched off.
//!
//! The two runtimes (two pairs of cluster nodes for B2) live side by side in one process; the
//! rounds alternate on and off, and the figure is the median of the per-round ratios. Target
//! ≥ 0.9 for each.
//!
//! To take the cost apart: `OBS_TRACING=0` (metrics only), `OBS_AA=1` (no metrics on either
//! side), `OBS_EXPORTER=fmt` (spans formatted by `tracing-subscriber`'s fmt layer instead, as
//! a node logging them would), `OBS_ONE_IN=n` (trace one workflow in `n` on both sides),
//! `OBS_B1_ONLY=1` (skip B2).

#[path = "../tests/common/nats.rs"]
#[allow(dead_code)]
mod nats;
mod support;

use std::sync::Arc;
use std::time::Duration;

use aether::prelude::*;
use aether::{ClusterConfig, Runtime};
use support::{Figure, Probe, ProbeCmd, median, pairs, report_paired, throughput};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;

/// An OpenTelemetry exporter with no collector behind it: every batch fails to send, as an
/// OTLP exporter's would with the collector down, and is dropped.
#[derive(Debug)]
struct NoCollector;

impl opentelemetry_sdk::trace::SpanExporter for NoCollector {
    async fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        std::hint::black_box(batch);
        Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(
            "no collector".into(),
        ))
    }
}

type Switch = reload::Handle<Targets, tracing_subscriber::Registry>;

/// The exporter of the docs (`docs/operations.md`, "Exporting to OpenTelemetry"): a
/// `tracing-opentelemetry` layer over a batch span processor, whose exporter finds no
/// collector. `OBS_EXPORTER=fmt` formats every span with `tracing-subscriber`'s fmt layer
/// instead (into a sink), as a node that logs its spans would.
fn install_tracing() -> Switch {
    use opentelemetry::trace::TracerProvider as _;
    let (filter, switch) = reload::Layer::new(Targets::new().with_default(LevelFilter::OFF));
    let fmt = std::env::var("OBS_EXPORTER").as_deref() == Ok("fmt");
    let otel = (!fmt).then(|| {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(NoCollector)
            .build();
        tracing_opentelemetry::layer().with_tracer(provider.tracer("observability-bench"))
    });
    let fmt = fmt.then(|| {
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(std::io::sink)
    });
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(otel)
        .with(fmt);
    tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
    switch
}

fn tracing_on(switch: &Switch, on: bool) {
    let on = on && std::env::var("OBS_TRACING").as_deref() != Ok("0");
    let targets = if on {
        Targets::new().with_target("aether_runtime", LevelFilter::DEBUG)
    } else {
        Targets::new().with_default(LevelFilter::OFF)
    };
    switch.reload(targets).expect("reload the filter");
}

async fn asks(refs: Arc<Vec<ActorRef<Probe>>>, concurrency: usize, round: Duration) -> f64 {
    throughput(concurrency, round, move |w| {
        let refs = refs.clone();
        async move {
            let v = refs[w].ask(ProbeCmd::Get).await.expect("ask");
            std::hint::black_box(v);
        }
    })
    .await
}

async fn warm(rt: &Runtime, ids: &[String]) -> Arc<Vec<ActorRef<Probe>>> {
    let refs: Vec<ActorRef<Probe>> = ids
        .iter()
        .map(|id| rt.actor::<Probe>(id).expect("ref"))
        .collect();
    for r in &refs {
        r.ask(ProbeCmd::Get).await.expect("activate");
    }
    Arc::new(refs)
}

/// Alternates rounds of `on` and `off` and reports their ratio.
async fn compare(
    id: &str,
    measure: &str,
    switch: &Switch,
    on: Arc<Vec<ActorRef<Probe>>>,
    off: Arc<Vec<ActorRef<Probe>>>,
    concurrency: usize,
) {
    let (mut o, mut b) = (Vec::new(), Vec::new());
    let (rounds, length) = pairs();
    for round in 0..rounds {
        for first in [round % 2 == 0, round % 2 != 0] {
            tracing_on(switch, first);
            let refs = if first { on.clone() } else { off.clone() };
            let ops = asks(refs, concurrency, length).await;
            if first { o.push(ops) } else { b.push(ops) }
        }
    }
    tracing_on(switch, false);
    report_paired(
        Figure {
            id,
            measure,
            ours: median(o.clone()),
            baseline: median(b.clone()),
            unit: "ops/s",
            target: (">=", 0.9),
        },
        &o,
        &b,
    );
}

/// The runtime's default sampling, or one in `OBS_ONE_IN`.
fn sampling(builder: aether::RuntimeBuilder) -> anyhow::Result<aether::RuntimeBuilder> {
    Ok(match std::env::var("OBS_ONE_IN") {
        Ok(n) => builder.trace_one_in(n.parse()?),
        Err(_) => builder,
    })
}

async fn node(url: &str, ns: &str, id: &str, metrics: bool) -> anyhow::Result<Runtime> {
    let mut builder = sampling(Runtime::builder().register::<Probe>())?;
    if metrics {
        builder = builder.metrics_addr(([127, 0, 0, 1], 0));
    }
    Ok(Runtime::join_cluster(ClusterConfig::new(url, ns).node_id(id), builder).await?)
}

fn owned_by(rt: &Runtime, owner: &str, n: usize) -> Vec<String> {
    let cluster = rt.cluster().expect("cluster node");
    (0..)
        .map(|i| format!("p-{i}"))
        .filter(|id| cluster.locate::<Probe>(id).owner.as_deref() == Some(owner))
        .take(n)
        .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let switch = install_tracing();

    // B1's path: one node, memory store, a read per ask.
    let mut on = Runtime::builder()
        .namespace("obs-on")
        .register::<Probe>()
        .memory_store();
    // OBS_AA=1: both sides without metrics (an A/A run: how far apart two equal runtimes
    // measure on this machine).
    if std::env::var("OBS_AA").is_err() {
        on = on.metrics_addr(([127, 0, 0, 1], 0));
    }
    let on = sampling(on)?.start().await?;
    let off = Runtime::builder()
        .namespace("obs-off")
        .register::<Probe>()
        .memory_store();
    let off = sampling(off)?.start().await?;
    for concurrency in [1usize, 64] {
        let ids: Vec<String> = (0..concurrency).map(|i| format!("p{i}")).collect();
        compare(
            "B1-obs",
            &format!("local ask, metrics and tracing on / off, {concurrency} in flight"),
            &switch,
            warm(&on, &ids).await,
            warm(&off, &ids).await,
            concurrency,
        )
        .await;
    }
    on.shutdown().await?;
    off.shutdown().await?;

    if std::env::var("OBS_B1_ONLY").is_ok() {
        return Ok(());
    }
    // B2's path: two nodes per side on one nats-server; node-1 asks actors node-2 owns.
    let server = nats::NatsServer::start();
    let url = server.url();
    let on1 = node(&url, "obson", "node-1", true).await?;
    let on2 = node(&url, "obson", "node-2", true).await?;
    let off1 = node(&url, "obsoff", "node-1", false).await?;
    let off2 = node(&url, "obsoff", "node-2", false).await?;
    for n in [&on1, &on2, &off1, &off2] {
        n.cluster()
            .expect("a cluster node")
            .settled_with(2, Duration::from_secs(20))
            .await?;
    }
    for concurrency in [1usize, 64] {
        let on_refs = warm(&on1, &owned_by(&on1, "node-2", concurrency)).await;
        let off_refs = warm(&off1, &owned_by(&off1, "node-2", concurrency)).await;
        compare(
            "B2-obs",
            &format!("cross-node ask, metrics and tracing on / off, {concurrency} in flight"),
            &switch,
            on_refs,
            off_refs,
            concurrency,
        )
        .await;
    }
    for n in [on1, on2, off1, off2] {
        n.shutdown().await?;
    }
    Ok(())
}
