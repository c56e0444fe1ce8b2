//! Cached token: what does reading a warm token cost?
//!
//! `provider.token().await` on a warm cache (in-process closure source) against the floor,
//! cloning an `Arc<HeaderValue>` out of a plain `std::sync::RwLock`:
//!
//! - `cached_token_1task` (criterion): on one task of a current-thread runtime.
//!   `tokio::time::Instant::now()` and `std::time::Instant::now()` are measured alone too:
//!   the fast path reads tokio's clock, which tokio's `test-util` feature (on for this
//!   crate's dev-dependencies) makes dearer than in production.
//! - `cached_token_2threads` (criterion): two OS threads, each with its own current-thread
//!   runtime, hammering the same provider (or the same `RwLock`), released together by a
//!   barrier; the figure is the slower thread's time per call.
//! - `cached_token_2threads_interleaved`: the same two-thread comparison in 60 alternating
//!   blocks of 200,000 calls per thread (AB, BA, …), medians.
//!
//! ```text
//! cargo bench --bench cached_token
//! ```
//!
//! Beside them, a keyed provider's `token_for` with 100 warm keys (goal ≤ 1.5× the
//! single-token path).
//!
//! At the end it prints its ratio lines: provider against floor (goal ≤ 1.5, and under 1 µs),
//! one line each for 1 task, 2 threads and 2 threads interleaved; the two clock reads against
//! each other, and the provider's time less its one clock read against the floor.
//! `cargo test --benches` runs it once as a smoke test.

mod common;

use std::hint::black_box;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use common::{
    Args, Bench, Mode, Paired, Ratios, current_thread_runtime, fmt_ns, paired, static_header,
    verdict, warm_keyed, warm_provider,
};
use criterion::Criterion;
use http::HeaderValue;
use token_refresh::TokenProvider;
use tokio::runtime::Runtime;

const G_CACHED_1: &str = "cached_token_1task";
const G_CACHED_2: &str = "cached_token_2threads";
const F_PROVIDER: &str = "provider_token";
const F_KEYED: &str = "keyed_token_100_keys";
const F_FLOOR: &str = "rwlock_floor";
const F_TOKIO_NOW: &str = "tokio_instant_now";
const F_STD_NOW: &str = "std_instant_now";
const ID_CACHED_INTERLEAVED: &str = "cached_token_2threads_interleaved";

fn main() {
    let mut bench = Bench::start();
    bench_cached_1task(&mut bench.criterion);
    let interleaved = bench_cached_2threads(&mut bench.criterion, &bench.args);
    bench.finish(&[ID_CACHED_INTERLEAVED], |ratios| {
        print_ratios(ratios, interleaved.as_ref());
    });
}

fn bench_cached_1task(c: &mut Criterion) {
    let rt = current_thread_runtime();
    let provider = warm_provider(&rt);
    let floor = RwLock::new(Arc::new(static_header()));

    let mut group = c.benchmark_group(G_CACHED_1);
    group.bench_function(F_PROVIDER, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(provider.token().await.expect("a cached token"));
                }
                start.elapsed()
            })
        });
    });
    group.bench_function(F_FLOOR, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(Arc::clone(&floor.read().expect("floor lock poisoned")));
                }
                start.elapsed()
            })
        });
    });
    let (keyed, params) = warm_keyed(&rt, 100);
    group.bench_function(F_KEYED, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(keyed.token_for(&params).await.expect("a cached token"));
                }
                start.elapsed()
            })
        });
    });
    group.bench_function(F_TOKIO_NOW, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(tokio::time::Instant::now());
                }
                start.elapsed()
            })
        });
    });
    group.bench_function(F_STD_NOW, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(Instant::now());
                }
                start.elapsed()
            })
        });
    });
    group.finish();
}

/// Runs `work(runtime, iters)` on two OS threads at once, each with its own current-thread
/// runtime, released together by a barrier; returns the slower thread's own timing, so
/// `result / iters` is the per-call time under contention.
fn on_two_threads<W>(iters: u64, work: W) -> Duration
where
    W: Fn(&Runtime, u64) -> Duration + Sync,
{
    let barrier = std::sync::Barrier::new(2);
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    let rt = current_thread_runtime();
                    barrier.wait();
                    work(&rt, iters)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|thread| thread.join().expect("a benchmark thread panicked"))
            .max()
            .unwrap_or_default()
    })
}

/// `iters` cached-token reads from `provider` on `rt`; their total time.
fn provider_loop(rt: &Runtime, provider: &TokenProvider, iters: u64) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            black_box(provider.token().await.expect("a cached token"));
        }
        start.elapsed()
    })
}

/// `iters` reads of the floor on `rt`; their total time.
fn floor_loop(rt: &Runtime, floor: &RwLock<Arc<HeaderValue>>, iters: u64) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            black_box(Arc::clone(&floor.read().expect("floor lock poisoned")));
        }
        start.elapsed()
    })
}

/// The criterion group, then the interleaved comparison (if it runs).
fn bench_cached_2threads(c: &mut Criterion, args: &Args) -> Option<Paired> {
    let rt = current_thread_runtime();
    let provider = warm_provider(&rt);
    let floor = RwLock::new(Arc::new(static_header()));

    let mut group = c.benchmark_group(G_CACHED_2);
    group.bench_function(F_PROVIDER, |b| {
        b.iter_custom(|iters| {
            on_two_threads(iters, |rt, iters| provider_loop(rt, &provider, iters))
        });
    });
    group.bench_function(F_FLOOR, |b| {
        b.iter_custom(|iters| on_two_threads(iters, |rt, iters| floor_loop(rt, &floor, iters)));
    });
    group.finish();

    if !args.measures(ID_CACHED_INTERLEAVED) {
        return None;
    }
    let (blocks, per_block) = match args.mode {
        Mode::Test => (2, 1_000),
        _ => (60, 200_000),
    };
    println!(
        "{ID_CACHED_INTERLEAVED}: {blocks} block pairs × {per_block} calls per thread, \
         alternating order"
    );
    let pair = paired(blocks, per_block, |is_provider, n| {
        on_two_threads(n, |rt, n| {
            if is_provider {
                provider_loop(rt, &provider, n)
            } else {
                floor_loop(rt, &floor, n)
            }
        })
    });
    println!(
        "{ID_CACHED_INTERLEAVED}: provider.token() {} vs RwLock floor {}, ratio {:.2}",
        fmt_ns(pair.variant_ns),
        fmt_ns(pair.base_ns),
        1.0 / pair.ratio
    );
    Some(pair)
}

fn print_ratios(ratios: &mut Ratios, interleaved: Option<&Paired>) {
    for (label, group) in [("1 task", G_CACHED_1), ("2 threads", G_CACHED_2)] {
        match (
            ratios.estimate(group, F_PROVIDER),
            ratios.estimate(group, F_FLOOR),
        ) {
            (Some(provider), Some(floor)) => {
                let ratio = provider / floor;
                ratios.line(format_args!(
                    "cached token, {label}: provider.token() {} vs RwLock floor {} → ratio {ratio:.2} \
                     (goal ≤ 1.5: {}; goal < 1 µs: {})",
                    fmt_ns(provider),
                    fmt_ns(floor),
                    verdict(ratio <= 1.5),
                    verdict(provider < 1e3)
                ));
            }
            _ => ratios.missing(group),
        }
    }
    if let Some(pair) = interleaved {
        let ratio = 1.0 / pair.ratio;
        ratios.line(format_args!(
            "cached token, 2 threads, interleaved ({} block pairs × {} calls per thread, \
             medians): provider.token() {} vs RwLock floor {} → ratio {ratio:.2} (goal ≤ 1.5: {}; \
             goal < 1 µs: {})",
            pair.blocks,
            pair.per_block,
            fmt_ns(pair.variant_ns),
            fmt_ns(pair.base_ns),
            verdict(ratio <= 1.5),
            verdict(pair.variant_ns < 1e3)
        ));
    }
    if let (Some(keyed), Some(provider)) = (
        ratios.estimate(G_CACHED_1, F_KEYED),
        ratios.estimate(G_CACHED_1, F_PROVIDER),
    ) {
        let ratio = keyed / provider;
        ratios.line(format_args!(
            "cached token, 1 task: keyed provider (100 keys) token_for {} vs provider.token() {} \
             → ratio {ratio:.2} (goal ≤ 1.5: {})",
            fmt_ns(keyed),
            fmt_ns(provider),
            verdict(ratio <= 1.5)
        ));
    }
    match (
        ratios.estimate(G_CACHED_1, F_TOKIO_NOW),
        ratios.estimate(G_CACHED_1, F_STD_NOW),
        ratios.estimate(G_CACHED_1, F_PROVIDER),
        ratios.estimate(G_CACHED_1, F_FLOOR),
    ) {
        (Some(tokio_now), Some(std_now), provider, floor) => {
            ratios.line(format_args!(
                "clock read, 1 task: tokio::time::Instant::now() {} vs std::time::Instant::now() {} \
                 → ratio {:.2} (tokio test-util build)",
                fmt_ns(tokio_now),
                fmt_ns(std_now),
                tokio_now / std_now
            ));
            if let (Some(provider), Some(floor)) = (provider, floor) {
                let without_clock = provider - tokio_now;
                ratios.line(format_args!(
                    "  provider.token() minus its one clock read ≈ {} → ratio {:.2} to the floor \
                     (the rest of the fast path: a lock-free load, compare, Arc clone)",
                    fmt_ns(without_clock),
                    without_clock / floor
                ));
            }
        }
        _ => ratios.missing("clock reads"),
    }
}
