//! B6: heap bytes per idle, activated actor ÷ a raw ractor actor holding the same state.
//!
//! A counting global allocator measures live heap bytes before and after bringing N actors to
//! life (each has handled one message and sits idle). Both sides hold a `u64` counter.
// A counting global allocator has to implement `GlobalAlloc`, an unsafe trait.
#![allow(unsafe_code)]

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use aether::prelude::*;
use support::{Figure, Probe, ProbeCmd, RawCounter, RawMsg, report};

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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
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
    Ok(())
}
