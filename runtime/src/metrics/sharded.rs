//! Counters and histograms the hot path can afford.
//!
//! A recorder's counter or histogram is one shared object per series: every ask of a kind
//! would touch the same cache lines from every worker thread, and moving those lines between
//! cores cost a local ask a quarter of its throughput (B1). So the hot path records into
//! **shards**, summed and handed to the recorder through the `metrics` facade when it is read
//! ([`ShardedCounter::export`], [`ShardedHistogram::export`]: before every scrape, and every
//! few seconds for recorders nobody scrapes).
//!
//! The first [`OWNED`] threads that record (the runtime's workers, in practice) each *own* a
//! shard for as long as they live: only they write it, so an add is a plain load and store
//! (no locked instruction; the exporter's relaxed loads see each value whole). Threads beyond
//! them share one last shard with atomic adds. A thread's shard goes back to a free list when
//! the thread exits (its stores happen before the next owner's, through the list's lock).
//!
//! A histogram shard counts samples per bucket — the same buckets the Prometheus exporter is
//! given — and sums them per bucket. An export hands each bucket's new samples to the facade
//! as `record_many(mean, count)`: the mean of values that fell in a bucket lies in that
//! bucket, so every bucket count and the total sum come out exactly as if each sample had
//! been recorded one by one.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use metrics::{Counter, Histogram};
use parking_lot::Mutex;

/// Shards owned by one thread each.
const OWNED: usize = 16;
/// Shards per metric: the owned ones, and the one the other threads share.
const SHARDS: usize = OWNED + 1;

/// One shard, alone on its cache lines.
#[repr(align(128))]
struct Padded<T>(T);

/// Owned shards given back by threads that exited.
static FREE: Mutex<Vec<usize>> = Mutex::new(Vec::new());
/// Owned shards never given out yet start here.
static FRESH: AtomicUsize = AtomicUsize::new(0);

/// A thread's shard: owned (below [`OWNED`]) or the shared one.
struct Claim(usize);

impl Claim {
    fn take() -> Claim {
        if let Some(index) = FREE.lock().pop() {
            return Claim(index);
        }
        Claim(FRESH.fetch_add(1, Relaxed).min(OWNED))
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.0 < OWNED {
            FREE.lock().push(self.0);
        }
    }
}

thread_local! {
    /// This thread's shard.
    static SHARD: Claim = Claim::take();
}

/// This thread's shard, and whether it owns it (the shared one while its thread-locals are
/// being destroyed).
fn shard() -> (usize, bool) {
    SHARD
        .try_with(|c| (c.0, c.0 < OWNED))
        .unwrap_or((OWNED, false))
}

/// Adds `n` to `cell`: a plain load and store in an owned shard, an atomic add in the shared
/// one.
#[inline]
fn add(cell: &AtomicU64, n: u64, owned: bool) {
    if owned {
        cell.store(cell.load(Relaxed).wrapping_add(n), Relaxed);
    } else {
        cell.fetch_add(n, Relaxed);
    }
}

/// A counter added to per thread, exported as its total.
pub(crate) struct ShardedCounter {
    shards: Box<[Padded<AtomicU64>]>,
    handle: Counter,
}

impl ShardedCounter {
    pub(crate) fn new(handle: Counter) -> ShardedCounter {
        ShardedCounter {
            shards: (0..SHARDS).map(|_| Padded(AtomicU64::new(0))).collect(),
            handle,
        }
    }

    pub(crate) fn add(&self, n: u64) {
        let (i, owned) = shard();
        add(&self.shards[i].0, n, owned);
    }

    /// Sets the recorder's counter to the total.
    pub(crate) fn export(&self) {
        self.handle
            .absolute(self.shards.iter().map(|s| s.0.load(Relaxed)).sum());
    }
}

/// One shard of a histogram: per bucket, the samples and their sum (in `1 / scale` units),
/// side by side so a record touches one cache line.
struct Cells {
    buckets: Box<[Bucket]>,
}

#[derive(Default)]
struct Bucket {
    count: AtomicU64,
    sum: AtomicU64,
}

/// A histogram with fixed buckets, recorded per thread, exported into the facade's.
pub(crate) struct ShardedHistogram {
    /// Upper bounds of the buckets (a last, unbounded bucket follows).
    bounds: &'static [f64],
    /// The same bounds in recorded units: the largest value each bucket holds. Values are
    /// recorded as integers of `1 / scale` (nanoseconds for seconds), so finding a bucket is a
    /// few integer compares from the first — nearly every ask lands in the first one — rather
    /// than a binary search over floats, whose mispredicted branches were most of what
    /// metrics cost a local ask (B1-obs).
    limits: Box<[u64]>,
    /// Units per bound unit (1e9 for seconds recorded in nanoseconds).
    scale: f64,
    shards: Box<[Padded<Cells>]>,
    /// Per bucket, the count and sum already handed to the recorder.
    exported: Mutex<Vec<(u64, u64)>>,
    handle: Histogram,
}

/// The shard of the thread recording now (see [`ShardedHistogram::record_in`]).
#[derive(Clone, Copy)]
pub(crate) struct Here {
    index: usize,
    owned: bool,
}

impl Here {
    /// This thread's shard.
    pub(crate) fn now() -> Here {
        let (index, owned) = shard();
        Here { index, owned }
    }
}

impl ShardedHistogram {
    pub(crate) fn new(handle: Histogram, bounds: &'static [f64], scale: f64) -> Self {
        let buckets = bounds.len() + 1;
        ShardedHistogram {
            bounds,
            limits: bounds.iter().map(|b| (b * scale).floor() as u64).collect(),
            scale,
            shards: (0..SHARDS)
                .map(|_| {
                    Padded(Cells {
                        buckets: (0..buckets).map(|_| Bucket::default()).collect(),
                    })
                })
                .collect(),
            exported: Mutex::new(vec![(0, 0); buckets]),
            handle,
        }
    }

    /// Records `units` (in `1 / scale` of the bounds' unit: nanoseconds for seconds).
    pub(crate) fn record(&self, units: u64) {
        self.record_in(Here::now(), units);
    }

    /// [`record`](Self::record) into a shard the caller looked up already (one thread-local
    /// read for several histograms).
    #[inline]
    pub(crate) fn record_in(&self, here: Here, units: u64) {
        let bucket = self
            .limits
            .iter()
            .position(|limit| units <= *limit)
            .unwrap_or(self.limits.len());
        let cell = &self.shards[here.index].0.buckets[bucket];
        // The sum first (an export that sees the count mostly sees the sum too; `export`
        // keeps a mean that is ahead of its sum inside the bucket).
        add(&cell.sum, units, here.owned);
        add(&cell.count, 1, here.owned);
    }

    /// Hands the samples recorded since the last export to the facade's histogram.
    pub(crate) fn export(&self) {
        let mut exported = self.exported.lock();
        for (bucket, done) in exported.iter_mut().enumerate() {
            let count: u64 = self
                .shards
                .iter()
                .map(|s| s.0.buckets[bucket].count.load(Relaxed))
                .sum();
            let sum: u64 = self
                .shards
                .iter()
                .map(|s| s.0.buckets[bucket].sum.load(Relaxed))
                .sum();
            let new = count.saturating_sub(done.0);
            if new == 0 {
                continue;
            }
            let mean = sum.saturating_sub(done.1) as f64 / self.scale / new as f64;
            // A sample recorded between the two reads above may be in the sum and not yet in
            // the count: keep the mean inside its bucket (the next export evens the sum out).
            let lower = if bucket == 0 {
                f64::MIN
            } else {
                self.bounds[bucket - 1]
            };
            let upper = self.bounds.get(bucket).copied().unwrap_or(f64::MAX);
            let mean = if mean <= lower {
                lower + (upper - lower).min(1.0) * 1e-9
            } else {
                mean.min(upper)
            };
            self.handle.record_many(mean, new as usize);
            *done = (count, sum);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_and_shared_shards_lose_no_add_whatever_the_threads() {
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let c = std::sync::Arc::new(ShardedCounter::new(metrics::counter!("adds")));
            // More threads at once than there are owned shards: some share the last one.
            let together: Vec<_> = (0..OWNED + 8)
                .map(|_| {
                    let c = std::sync::Arc::clone(&c);
                    std::thread::spawn(move || {
                        for _ in 0..10_000 {
                            c.add(1);
                        }
                    })
                })
                .collect();
            for t in together {
                t.join().expect("thread");
            }
            // Then threads one after another, each taking a shard an exited one gave back.
            for _ in 0..2 * OWNED {
                let c = std::sync::Arc::clone(&c);
                std::thread::spawn(move || c.add(5)).join().expect("thread");
            }
            c.export();
        });
        let total = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .find_map(|(key, _, _, value)| match value {
                metrics_util::debugging::DebugValue::Counter(n) if key.key().name() == "adds" => {
                    Some(n)
                }
                _ => None,
            });
        assert_eq!(total, Some(((OWNED + 8) * 10_000 + 2 * OWNED * 5) as u64));
    }

    #[test]
    fn a_histogram_exports_exact_bucket_counts_and_sums() {
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            static BOUNDS: &[f64] = &[0.001, 0.01, 0.1];
            let h = ShardedHistogram::new(metrics::histogram!("h"), BOUNDS, 1e9);
            let values = [0.0005, 0.002, 0.003, 0.05, 0.5, 2.0, 0.01];
            for v in values {
                h.record((v * 1e9) as u64);
            }
            h.export();
            h.export(); // nothing new: nothing recorded twice
            let c = ShardedCounter::new(metrics::counter!("c"));
            c.add(3);
            c.add(4);
            c.export();
        });
        let snapshot = snapshotter.snapshot().into_vec();
        let samples: Vec<f64> = snapshot
            .iter()
            .find_map(|(key, _, _, value)| match value {
                metrics_util::debugging::DebugValue::Histogram(v) if key.key().name() == "h" => {
                    Some(v.iter().map(|x| x.into_inner()).collect())
                }
                _ => None,
            })
            .unwrap();
        assert_eq!(samples.len(), 7);
        let in_bucket = |lo: f64, hi: f64| samples.iter().filter(|v| **v > lo && **v <= hi).count();
        assert_eq!(in_bucket(f64::MIN, 0.001), 1);
        assert_eq!(in_bucket(0.001, 0.01), 3);
        assert_eq!(in_bucket(0.01, 0.1), 1);
        assert_eq!(in_bucket(0.1, f64::MAX), 2);
        let sum: f64 = samples.iter().sum();
        assert!((sum - 2.5655).abs() < 1e-6, "{sum}");
        let counter = snapshot
            .iter()
            .find_map(|(key, _, _, value)| match value {
                metrics_util::debugging::DebugValue::Counter(n) if key.key().name() == "c" => {
                    Some(*n)
                }
                _ => None,
            })
            .unwrap();
        assert_eq!(counter, 7);
    }
}
