//! B6: heap bytes per idle, activated actor ÷ a raw ractor actor holding the same state; and
//! M1: a million resident actors on one node.
//!
//! A counting global allocator measures live heap bytes before and after bringing N actors to
//! life (each has handled one message and sits idle). Both sides hold a `u64` counter.
//!
//! B6 compares awake actors (hibernation off): an activation against the bare ractor actor it
//! runs in.
//!
//! M1 activates 1 000 000 such actors (`AETHER_BENCH_ACTORS` to change it) in one runtime whose
//! resident cap is exactly that many, waits until every one has hibernated (idle for
//! `hibernate_after`, the default 30 s: still resident, state in memory, ractor actor stopped), and
//! reports heap bytes per idle actor (target ≤ 4 KiB) beside the figure while they were awake,
//! and activations per second, against raw ractor actors spawned and called once each, as many,
//! kept alive, in a process of their own (the bench runs itself again for it). Then it checks
//! that the cap and the LRU order are exact: a thousand more actors passivate exactly the
//! thousand least recently used (hibernating) ones.
// A counting global allocator has to implement `GlobalAlloc`, an unsafe trait.
#![allow(unsafe_code)]

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use std::time::Instant;

use aether::prelude::*;
use support::{Figure, Probe, ProbeCmd, RawCounter, RawMsg, report, report_value};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    // SAFETY: forwards to the system allocator unchanged; only counts sizes.
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    // SAFETY: as above.
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    // SAFETY: as above.
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const N: usize = 20_000;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// Set (to a count) when this bench runs again as M1b's baseline process.
const RAW_ONLY: &str = "AETHER_M1B_RAW_ACTORS";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    if let Ok(n) = std::env::var(RAW_ONLY) {
        let rate = raw_spawn_rate(n.parse()?).await?;
        println!("{RAW_ONLY} {rate}");
        // A million live actors need no teardown: the process ends here.
        std::process::exit(0);
    }
    // Raw ractor: N actors, each called once.
    let mut raw_refs = Vec::with_capacity(N);
    let mut raw_handles = Vec::with_capacity(N);
    let before = live();
    for _ in 0..N {
        let (r, h) = ractor::Actor::spawn(None, RawCounter, ()).await?;
        let _ = ractor::call!(r, RawMsg::Get)?;
        raw_refs.push(r);
        raw_handles.push(h);
    }
    let raw = (live() - before) as f64 / N as f64;

    // Aether: N activated actors. The refs (the caller's handles) are made before measuring.
    let rt = Runtime::builder()
        .namespace("bench-memory")
        .register::<Probe>()
        .memory_store()
        .idle_passivation(None)
        .hibernate_after(None)
        .start()
        .await?;
    let refs: Vec<ActorRef<Probe>> = (0..N)
        .map(|i| rt.actor::<Probe>(format!("actor-{i:06}")))
        .collect::<Result<_, _>>()?;
    let before = live();
    for r in &refs {
        r.ask(ProbeCmd::Get).await?;
    }
    let ours = (live() - before) as f64 / N as f64;
    assert_eq!(rt.resident_count(), N);

    report(Figure {
        id: "B6",
        measure: "heap bytes per idle resident actor / raw ractor actor",
        ours,
        baseline: raw,
        unit: "bytes",
        target: ("<=", 1.3),
    });
    rt.shutdown().await?;
    for r in raw_refs {
        r.stop(None);
    }
    drop(raw_handles);
    million().await
}

/// Raw ractor actors spawned and called once each, by 64 callers, all kept alive: per second.
async fn raw_spawn_rate(n: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let spawners: Vec<_> = (0..64)
        .map(|c| {
            tokio::spawn(async move {
                let mut mine = Vec::new();
                for _ in (c..n).step_by(64) {
                    let (r, h) = ractor::Actor::spawn(None, RawCounter, ()).await?;
                    let _ = ractor::call!(r, RawMsg::Get)?;
                    mine.push((r, h));
                }
                Ok::<_, anyhow::Error>(mine)
            })
        })
        .collect();
    let mut actors = Vec::with_capacity(n);
    for s in spawners {
        actors.extend(s.await??);
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    std::hint::black_box(&actors);
    Ok(rate)
}

/// [`raw_spawn_rate`] in a process of its own: this bench, run again with [`RAW_ONLY`].
fn raw_in_own_process(n: usize) -> anyhow::Result<f64> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .env(RAW_ONLY, n.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "the baseline process failed: {}",
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let rate = stdout
        .lines()
        .find_map(|l| l.strip_prefix(RAW_ONLY)?.trim().parse::<f64>().ok())
        .ok_or_else(|| anyhow::anyhow!("the baseline process printed no rate: {stdout}"))?;
    Ok(rate)
}

/// M1: a million idle resident actors; the cap and the LRU order stay exact.
async fn million() -> anyhow::Result<()> {
    let n: usize = std::env::var("AETHER_BENCH_ACTORS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    // The baseline: raw ractor actors spawned and called once each by 64 callers, as many as
    // ours and kept alive like ours, in a process of their own (this bench, run again), so
    // neither side reuses a heap the other grew or pays for the other's live actors. Measured
    // after ours, it reused the memory our hibernated actors had freed and ran six times
    // faster; beside a million awake actors, six times slower; at a tenth as many actors in a
    // fresh heap, it skipped the cost that grows with the heap, which ours pays.
    let raw_rate = raw_in_own_process(n)?;
    let rt = Runtime::builder()
        .namespace("bench-million")
        .register::<Probe>()
        .memory_store()
        .idle_passivation(None)
        .max_resident(n)
        .start()
        .await?;
    let refs: Vec<ActorRef<Probe>> = (0..n + 1000)
        .map(|i| rt.actor::<Probe>(format!("m-{i:07}")))
        .collect::<Result<_, _>>()?;
    let before = live();
    let started = Instant::now();
    // The first thousand one by one (the least recently used from here on), the rest by 64
    // callers at once.
    for r in &refs[..1000] {
        r.ask(ProbeCmd::Get).await?;
    }
    let refs = std::sync::Arc::new(refs);
    let callers: Vec<_> = (0..64)
        .map(|c| {
            let refs = std::sync::Arc::clone(&refs);
            tokio::spawn(async move {
                for r in refs[1000..n].iter().skip(c).step_by(64) {
                    r.ask(ProbeCmd::Get).await?;
                }
                Ok::<_, anyhow::Error>(())
            })
        })
        .collect();
    for caller in callers {
        caller.await??;
    }
    let took = started.elapsed();
    let awake = (live() - before) as f64 / n as f64;
    assert_eq!(rt.resident_count(), n, "every actor resident");
    // Idle: every actor hibernates (the first ones may have already).
    let deadline = Instant::now() + std::time::Duration::from_secs(600);
    while rt.stats().hibernating < n as u64 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {n} actors hibernated",
            rt.stats().hibernating
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The stopped ractor actors are freed once the root has read their last reports: measure
    // when the heap has settled (two readings half a second apart within 1 %).
    let mut per_actor = (live() - before) as f64 / n as f64;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let now = (live() - before) as f64 / n as f64;
        let settled = (per_actor - now).abs() <= per_actor * 0.01;
        per_actor = now;
        if settled {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the heap did not settle");
    }
    assert_eq!(rt.resident_count(), n, "every actor still resident");
    println!(
        "M1a  awake, right after the activations: {awake:.0} B per actor; hibernated: {per_actor:.0} B"
    );
    report_value(
        "M1a",
        &format!("heap bytes per idle (hibernated) resident actor, {n} actors"),
        per_actor,
        "B",
        ("<=", 4096.0),
    );
    report(Figure {
        id: "M1b",
        measure: &format!(
            "activations per second ({n} actors, 64 callers) / raw ractor spawn + call"
        ),
        ours: n as f64 / took.as_secs_f64(),
        baseline: raw_rate,
        unit: "/s",
        target: (">=", 0.5),
    });

    // The cap is exact: a thousand more activations passivate a thousand actors...
    let activations = rt.stats().activations;
    for r in &refs[n..] {
        r.ask(ProbeCmd::Get).await?;
    }
    assert_eq!(rt.resident_count(), n, "the cap holds");
    assert_eq!(rt.stats().activations - activations, 1000);
    // ...and exactly the least recently used ones: the first thousand.
    let resident =
        |range: std::ops::Range<usize>| refs[range].iter().filter(|r| rt.is_resident(r)).count();
    assert_eq!(
        resident(0..1000),
        0,
        "the least recently used were passivated"
    );
    assert_eq!(resident(1000..n + 1000), n, "every other actor is resident");
    println!(
        "M1   cap and LRU exact: {n} resident after 1000 more; the 1000 least recently used passivated"
    );
    rt.shutdown().await?;
    Ok(())
}
