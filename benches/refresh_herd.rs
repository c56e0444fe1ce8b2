//! Refresh herd: how many token requests do 10,000 callers on a cold cache make?
//!
//! `refresh_herd`: 10,000 tasks on a 2-worker runtime, released together by a
//! `tokio::sync::Barrier` on a cold cache (no token yet); the source sleeps 100 ms (real
//! time) and counts its calls. Five rounds, each with a new provider. The baseline is the
//! goal itself: exactly one token request per round, however many callers wait. Caller
//! latency is measured from leaving the barrier to holding a token.
//!
//! ```text
//! cargo bench --bench refresh_herd
//! ```
//!
//! At the end it prints its ratio line: token requests per round (goal exactly 1), caller
//! latency p50, p99 and max, and the herd's makespan. `cargo test --benches` runs it once
//! as a smoke test, with 1,000 callers and one round.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Bench, Mode, Ratios, TOKEN, fmt_dur, multi_thread_runtime, percentile, verdict};
use token_refresh::{AccessToken, TokenProvider};

const ID_HERD: &str = "refresh_herd";
const HERD_CALLERS: usize = 10_000;
const HERD_ROUNDS: usize = 5;
const HERD_SOURCE_LATENCY: Duration = Duration::from_millis(100);

fn main() {
    let bench = Bench::start();
    let herd = bench.args.measures(ID_HERD).then(|| {
        let (callers, rounds) = match bench.args.mode {
            Mode::Test => (1_000, 1),
            _ => (HERD_CALLERS, HERD_ROUNDS),
        };
        refresh_herd(callers, rounds)
    });
    bench.finish(&[ID_HERD], |ratios| print_ratios(ratios, herd.as_ref()));
}

struct Herd {
    callers: usize,
    requests: Vec<usize>,
    p50: Duration,
    p99: Duration,
    max: Duration,
    makespan: Duration,
}

fn refresh_herd(callers: usize, rounds: usize) -> Herd {
    println!(
        "{ID_HERD}: {callers} callers × {rounds} rounds, cold cache, {HERD_SOURCE_LATENCY:?} source"
    );
    let rt = multi_thread_runtime();
    let mut requests = Vec::with_capacity(rounds);
    let mut latencies = Vec::with_capacity(callers * rounds);
    let mut makespans = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let calls = Arc::new(AtomicUsize::new(0));
        let source_calls = Arc::clone(&calls);
        let provider = TokenProvider::new(move || {
            let calls = Arc::clone(&source_calls);
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(HERD_SOURCE_LATENCY).await;
                AccessToken::new(TOKEN, Duration::from_secs(3600))
            }
        });
        let barrier = Arc::new(tokio::sync::Barrier::new(callers));
        let (round, makespan) = rt.block_on(async {
            let tasks: Vec<_> = (0..callers)
                .map(|_| {
                    let provider = provider.clone();
                    let barrier = Arc::clone(&barrier);
                    tokio::spawn(async move {
                        barrier.wait().await;
                        let start = Instant::now();
                        provider.token().await.expect("the herd gets a token");
                        (start, start.elapsed())
                    })
                })
                .collect();
            let mut round = Vec::with_capacity(callers);
            for task in tasks {
                round.push(task.await.expect("a herd task panicked"));
            }
            let first = round.iter().map(|(start, _)| *start).min();
            let last = round.iter().map(|(start, took)| *start + *took).max();
            let makespan = match (first, last) {
                (Some(first), Some(last)) => last - first,
                _ => Duration::ZERO,
            };
            (round, makespan)
        });
        latencies.extend(round.into_iter().map(|(_, took)| took));
        requests.push(calls.load(Ordering::SeqCst));
        makespans.push(makespan);
    }
    latencies.sort_unstable();
    let herd = Herd {
        callers,
        requests,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        max: latencies.last().copied().unwrap_or_default(),
        makespan: makespans.into_iter().max().unwrap_or_default(),
    };
    println!(
        "{ID_HERD}: token requests per round {:?}; caller latency p50 {}, p99 {}, max {}",
        herd.requests,
        fmt_dur(herd.p50),
        fmt_dur(herd.p99),
        fmt_dur(herd.max)
    );
    herd
}

fn print_ratios(ratios: &mut Ratios, herd: Option<&Herd>) {
    if let Some(h) = herd {
        let exact = h.requests.iter().all(|&n| n == 1);
        ratios.line(format_args!(
            "refresh herd, {} callers on a cold cache, 100 ms source: token requests per round \
             {:?} (goal exactly 1: {}); caller latency p50 {}, p99 {}, max {}; herd done in {}",
            h.callers,
            h.requests,
            verdict(exact),
            fmt_dur(h.p50),
            fmt_dur(h.p99),
            fmt_dur(h.max),
            fmt_dur(h.makespan)
        ));
    }
}
