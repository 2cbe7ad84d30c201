//! The Prometheus scrape endpoint: `GET /metrics` on the address the runtime was given.
//!
//! The Prometheus recorder is process-wide (the `metrics` facade has one global recorder), so
//! it is installed once, by the first runtime that asks for an endpoint; later runtimes of the
//! same process reuse it, and every endpoint renders every runtime's series (their `node` and
//! `namespace` labels tell them apart). An application that installed another recorder first
//! cannot have an endpoint: `start()` says so, and `.metrics(true)` records into theirs.
//!
//! Before rendering, a scrape asks every live runtime's [`Collector`] to copy its current
//! state in, so a scrape never shows values older than itself.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use parking_lot::Mutex;
use tokio::task::JoinHandle;

use super::Collector;

/// Latency buckets, in seconds: 50 µs to 10 s.
pub(crate) const SECONDS_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// Replay length buckets, in events.
pub(crate) const EVENT_BUCKETS: &[f64] = &[
    0.0,
    1.0,
    10.0,
    100.0,
    1_000.0,
    10_000.0,
    100_000.0,
    1_000_000.0,
];

static PROMETHEUS: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
static COLLECTORS: Mutex<Vec<Weak<Collector>>> = Mutex::new(Vec::new());

/// The process's Prometheus recorder, installed on first use.
pub(crate) fn prometheus() -> Result<PrometheusHandle, String> {
    PROMETHEUS
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("aether_replay_events".into()),
                        EVENT_BUCKETS,
                    )
                })
                .and_then(|b| b.install_recorder())
                .map_err(|e| format!("cannot install the Prometheus recorder: {e}"))
        })
        .clone()
}

/// Whether this process's Prometheus recorder is installed (and upkeep is needed).
pub(crate) fn prometheus_installed() -> Option<PrometheusHandle> {
    PROMETHEUS.get().and_then(|r| r.as_ref().ok().cloned())
}

/// Registers a runtime's collector with every endpoint of the process.
pub(crate) fn register(collector: &Arc<Collector>) {
    let mut all = COLLECTORS.lock();
    all.retain(|c| c.strong_count() > 0);
    all.push(Arc::downgrade(collector));
}

/// Copies every live runtime's state into the recorder.
fn collect_all() {
    let live: Vec<Arc<Collector>> = COLLECTORS.lock().iter().filter_map(Weak::upgrade).collect();
    for c in live {
        c.collect();
    }
}

/// A serving endpoint; stops when dropped.
pub(crate) struct Endpoint {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Endpoint {
    /// The address it listens on (the port chosen, when it was given as 0).
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `GET /metrics` with `handle`'s rendering on `listener` (bound, non-blocking).
pub(crate) fn serve(
    listener: std::net::TcpListener,
    handle: PrometheusHandle,
) -> std::io::Result<Endpoint> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let handle = handle.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let handle = handle.clone();
                    async move { Ok::<_, Infallible>(answer(&req, &handle).await) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await
                {
                    tracing::debug!(error = %e, "metrics endpoint: connection ended");
                }
            });
        }
    });
    tracing::info!(%addr, "serving metrics at /metrics");
    Ok(Endpoint { addr, task })
}

async fn answer(req: &Request<Incoming>, handle: &PrometheusHandle) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            // The collectors read locks and atomics only, but a node with a million
            // resident actors walks them all: off the reactor.
            let handle = handle.clone();
            let body = tokio::task::spawn_blocking(move || {
                collect_all();
                handle.run_upkeep();
                handle.render()
            })
            .await;
            match body {
                Ok(body) => {
                    let mut r = text(StatusCode::OK, body);
                    r.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static(
                            "text/plain; version=0.0.4; charset=utf-8",
                        ),
                    );
                    r
                }
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot render the metrics: {e}\n"),
                ),
            }
        }
        (&Method::GET, "/") => text(
            StatusCode::OK,
            "Aether node: metrics at /metrics (Prometheus text format)\n".into(),
        ),
        (_, "/metrics") => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is served here\n".into(),
        ),
        _ => text(StatusCode::NOT_FOUND, "not found: try /metrics\n".into()),
    }
}
