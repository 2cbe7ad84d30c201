//! Shared bench support: timing loops and reporting ratios (printed and as JSON lines).
#![allow(dead_code)]

pub mod nodes;

use std::io::Write;
use std::time::{Duration, Instant};

/// How long each measurement runs; `AETHER_BENCH_SECS` overrides (default 2).
pub fn measure_time() -> Duration {
    let secs = std::env::var("AETHER_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(secs)
}

/// Runs `op` from `concurrency` tasks for `duration`; returns operations per second.
pub async fn throughput<F, Fut>(concurrency: usize, duration: Duration, op: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(concurrency);
    for worker in 0..concurrency {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                op(worker).await;
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("bench task");
    }
    total as f64 / start.elapsed().as_secs_f64()
}

/// The median of `values`.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// One reported figure: ours ÷ baseline, against a target.
pub struct Figure<'a> {
    pub id: &'a str,
    pub measure: &'a str,
    pub ours: f64,
    pub baseline: f64,
    pub unit: &'a str,
    /// `(">=", 0.8)` or `("<=", 1.3)`.
    pub target: (&'a str, f64),
}

/// Prints the figure and appends it to `target/bench-results.jsonl`.
pub fn report(f: Figure<'_>) {
    let ratio = f.ours / f.baseline;
    report_ratio(f, ratio);
}

/// Reports rounds measured in pairs (baseline and ours back to back, each round's order
/// alternating): the figure is the median of the per-round ratios, which cancels drift in the
/// machine's speed between rounds (on a shared two-core machine it is the largest error).
/// The throughputs shown are the medians of each side; the spread printed after the ratio is
/// the interquartile range of the per-round ratios.
pub fn report_paired(f: Figure<'_>, ours: &[f64], baseline: &[f64]) {
    let mut ratios: Vec<f64> = ours.iter().zip(baseline).map(|(o, b)| o / b).collect();
    ratios.sort_by(|a, b| a.total_cmp(b));
    let quartile = |q: usize| ratios[(ratios.len() - 1) * q / 4];
    let spread = (quartile(1), quartile(3));
    report_ratio(f, median(ratios.clone()));
    println!(
        "     {} pairs, ratios' interquartile range {:.3}..{:.3}",
        ratios.len(),
        spread.0,
        spread.1
    );
}

/// How many paired rounds a ratio bench runs, and how long each side of a pair measures: many
/// short pairs (`AETHER_BENCH_PAIRS`, default 21, a fifth of `AETHER_BENCH_SECS` each) rather
/// than a few long ones, so both sides of a pair see the same machine — the CPU a shared VM
/// loses to its neighbours comes and goes within seconds.
pub fn pairs() -> (usize, Duration) {
    let pairs = std::env::var("AETHER_BENCH_PAIRS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(21)
        .max(1);
    (pairs, measure_time() / 5)
}

/// Whether `value` meets `target` (`(">=", x)` or `("<=", x)`).
fn meets(value: f64, target: (&str, f64)) -> bool {
    match target.0 {
        ">=" => value >= target.1,
        _ => value <= target.1,
    }
}

/// Appends one JSON line to `target/bench-results.jsonl`.
fn append_result(line: &str) {
    let dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(format!("{dir}/bench-results.jsonl"))
    {
        let _ = file.write_all(line.as_bytes());
    }
}

/// Prints an absolute figure against an absolute target (the seeds state their figures so)
/// and appends it to `target/bench-results.jsonl`.
pub fn report_value(id: &str, measure: &str, value: f64, unit: &str, target: (&str, f64)) {
    let met = meets(value, target);
    println!(
        "{id:<4} {measure:<84} {value:>9.3} {unit:<3} (target {} {}) {}",
        target.0,
        target.1,
        if met { "MET" } else { "NOT MET" },
    );
    let line = format!(
        "{{\"id\":\"{id}\",\"measure\":\"{measure}\",\"value\":{value:.4},\"unit\":\"{unit}\",\"target\":\"{} {}\",\"met\":{met}}}\n",
        target.0, target.1
    );
    append_result(&line);
}

fn report_ratio(f: Figure<'_>, ratio: f64) {
    let met = meets(ratio, f.target);
    println!(
        "{:<4} {:<58} ours {:>12.1} {unit:<8} baseline {:>12.1} {unit:<8} ratio {:>6.3} (target {} {}) {}",
        f.id,
        f.measure,
        f.ours,
        f.baseline,
        ratio,
        f.target.0,
        f.target.1,
        if met { "MET" } else { "NOT MET" },
        unit = f.unit,
    );
    let line = format!(
        "{{\"id\":\"{}\",\"measure\":\"{}\",\"ours\":{:.3},\"baseline\":{:.3},\"unit\":\"{}\",\"ratio\":{:.4},\"target\":\"{} {}\",\"met\":{}}}\n",
        f.id, f.measure, f.ours, f.baseline, f.unit, ratio, f.target.0, f.target.1, met
    );
    append_result(&line);
}

// ---------------------------------------------------------------------------------------------
// The actor the benches drive: a counter.

use aether::prelude::*;

#[derive(Debug, Serialize, Deserialize)]
pub enum ProbeCmd {
    Get,
    Add(u64),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ProbeEvent {
    Added(u64),
}

#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
#[error("never")]
pub struct Never;

#[derive(Debug, Default, Serialize, Deserialize, EventSourcedActor)]
#[actor(kind = "probe", command = ProbeCmd, event = ProbeEvent, reply = u64, error = Never)]
pub struct Probe {
    pub total: u64,
}

impl Handle<ProbeCmd> for Probe {
    async fn handle(&self, cmd: ProbeCmd, _ctx: &mut Ctx<Self>) -> Result<Effect<Self>, Never> {
        Ok(match cmd {
            ProbeCmd::Get => Effect::reply(self.total),
            ProbeCmd::Add(n) => Effect::persist(ProbeEvent::Added(n)).reply(self.total + n),
        })
    }
}

impl Behavior for Probe {
    fn apply(&mut self, event: &ProbeEvent) {
        match event {
            ProbeEvent::Added(n) => self.total += n,
        }
    }
}

/// The raw ractor actor holding the same state.
pub struct RawCounter;

pub enum RawMsg {
    Get(ractor::RpcReplyPort<u64>),
}

impl ractor::Actor for RawCounter {
    type Msg = RawMsg;
    type State = u64;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ractor::ActorRef<RawMsg>,
        _args: (),
    ) -> Result<u64, ractor::ActorProcessingErr> {
        Ok(0)
    }

    async fn handle(
        &self,
        _myself: ractor::ActorRef<RawMsg>,
        msg: RawMsg,
        state: &mut u64,
    ) -> Result<(), ractor::ActorProcessingErr> {
        match msg {
            RawMsg::Get(reply) => {
                let _ = reply.send(*state);
            }
        }
        Ok(())
    }
}
