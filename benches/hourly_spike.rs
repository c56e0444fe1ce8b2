//! Hourly spike: do callers wait when the token is refreshed?
//!
//! One `provider.token()` call every 1 ms (real time, each call its own task, started from
//! a `tokio::time::interval`) for 12 s on a 2-worker runtime, with 4 s tokens from a 200 ms
//! source, so the stream crosses three refreshes:
//!
//! - `hourly_spike/proactive`: proactive refresh on (default margins, scaled to the short
//!   token: hard margin 0.4 s, proactive 0.8 s, so a background refresh starts 3.2 s after
//!   each token request).
//! - `hourly_spike/lazy_only`: proactive refresh off (`proactive_margin(Duration::ZERO)`:
//!   refresh at the hard margin, 3.6 s, callers wait), for contrast.
//!
//! The refresh window is the 300 ms from each time the source is called; the baseline is the
//! same stream outside the windows: caller p99 in the windows against p99 outside them.
//!
//! ```text
//! cargo bench --bench hourly_spike
//! ```
//!
//! At the end it prints its ratio lines, one per mode: p99 in the windows against outside
//! (goal ≤ 1.1 with proactive refresh), the calls that waited, and the window's figures.
//! It takes 12 s per mode, so `cargo test --benches` skips it.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Bench, Mode, Ratios, TOKEN, fmt_dur, multi_thread_runtime, percentile, verdict};
use token_refresh::{AccessToken, TokenProvider};

const ID_SPIKE_PROACTIVE: &str = "hourly_spike/proactive";
const ID_SPIKE_LAZY: &str = "hourly_spike/lazy_only";
const SPIKE_TOKEN_LIFETIME: Duration = Duration::from_secs(4);
const SPIKE_SOURCE_LATENCY: Duration = Duration::from_millis(200);
const SPIKE_PERIOD: Duration = Duration::from_millis(1);
const SPIKE_RUN: Duration = Duration::from_secs(12);
const SPIKE_WINDOW: Duration = Duration::from_millis(300);
const SPIKE_SLOW: Duration = Duration::from_millis(50);
/// A call slower than this waited on the refresh (a cached read takes microseconds).
const SPIKE_WAITED: Duration = Duration::from_millis(1);

fn main() {
    let bench = Bench::start();
    let (mut proactive_result, mut lazy_result) = (None, None);
    for (id, proactive) in [(ID_SPIKE_PROACTIVE, true), (ID_SPIKE_LAZY, false)] {
        if !bench.args.measures(id) {
            continue;
        }
        if bench.args.mode == Mode::Test {
            println!("{id}: skipped in test mode (it runs for {SPIKE_RUN:?})");
            continue;
        }
        let result = hourly_spike(proactive);
        if proactive {
            proactive_result = Some(result);
        } else {
            lazy_result = Some(result);
        }
    }
    bench.finish(&[ID_SPIKE_PROACTIVE, ID_SPIKE_LAZY], |ratios| {
        print_ratios(ratios, proactive_result.as_ref(), lazy_result.as_ref());
    });
}

struct Spike {
    calls: usize,
    refreshes: usize,
    in_window: usize,
    p50_in: Duration,
    p99_in: Duration,
    max_in: Duration,
    p50_out: Duration,
    p99_out: Duration,
    slow: usize,
    waited: usize,
}

fn hourly_spike(proactive: bool) -> Spike {
    let id = if proactive {
        ID_SPIKE_PROACTIVE
    } else {
        ID_SPIKE_LAZY
    };
    println!(
        "{id}: one call every {SPIKE_PERIOD:?} for {SPIKE_RUN:?}, {SPIKE_TOKEN_LIFETIME:?} \
         tokens, {SPIKE_SOURCE_LATENCY:?} source"
    );
    let rt = multi_thread_runtime();
    let fetch_starts = Arc::new(Mutex::new(Vec::new()));
    let source_starts = Arc::clone(&fetch_starts);
    let source = move || {
        let starts = Arc::clone(&source_starts);
        async move {
            starts
                .lock()
                .expect("fetch log poisoned")
                .push(Instant::now());
            // The lifetime counts from when the request was sent.
            let sent = tokio::time::Instant::now();
            tokio::time::sleep(SPIKE_SOURCE_LATENCY).await;
            AccessToken::issued_at(TOKEN, sent, SPIKE_TOKEN_LIFETIME)
        }
    };
    let builder = TokenProvider::builder(source);
    let provider = if proactive {
        builder.build()
    } else {
        builder.proactive_margin(Duration::ZERO).build()
    };

    let calls = rt.block_on(async {
        provider.token().await.expect("the first token");
        let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
        let mut interval = tokio::time::interval(SPIKE_PERIOD);
        let start = Instant::now();
        while start.elapsed() < SPIKE_RUN {
            interval.tick().await;
            let provider = provider.clone();
            let sender = sender.clone();
            tokio::spawn(async move {
                let issued = Instant::now();
                provider.token().await.expect("a token in the stream");
                let _ = sender.send((issued, issued.elapsed()));
            });
        }
        drop(sender);
        let mut calls = Vec::new();
        while let Some(call) = receiver.recv().await {
            calls.push(call);
        }
        calls
    });

    // The first fetch filled the cache before the stream; the later ones are refreshes.
    let refreshes: Vec<Instant> = fetch_starts
        .lock()
        .expect("fetch log poisoned")
        .iter()
        .skip(1)
        .copied()
        .collect();
    let in_window = |at: Instant| {
        refreshes
            .iter()
            .any(|&start| at >= start && at <= start + SPIKE_WINDOW)
    };
    let (mut inside, mut outside) = (Vec::new(), Vec::new());
    for &(issued, took) in &calls {
        if in_window(issued) {
            inside.push(took);
        } else {
            outside.push(took);
        }
    }
    inside.sort_unstable();
    outside.sort_unstable();
    let spike = Spike {
        calls: calls.len(),
        refreshes: refreshes.len(),
        in_window: inside.len(),
        p50_in: percentile(&inside, 0.50),
        p99_in: percentile(&inside, 0.99),
        max_in: inside.last().copied().unwrap_or_default(),
        p50_out: percentile(&outside, 0.50),
        p99_out: percentile(&outside, 0.99),
        slow: calls.iter().filter(|(_, took)| *took > SPIKE_SLOW).count(),
        waited: calls
            .iter()
            .filter(|(_, took)| *took > SPIKE_WAITED)
            .count(),
    };
    println!(
        "{id}: {} calls, {} refresh(es), {} calls in the window; p99 in {} vs out {}; \
         {} calls > {SPIKE_SLOW:?}",
        spike.calls,
        spike.refreshes,
        spike.in_window,
        fmt_dur(spike.p99_in),
        fmt_dur(spike.p99_out),
        spike.slow
    );
    spike
}

fn print_ratios(ratios: &mut Ratios, proactive: Option<&Spike>, lazy: Option<&Spike>) {
    for (label, spike, has_goal) in [
        (
            "hourly spike, proactive refresh (4 s tokens, background refresh at 3.2 s)",
            proactive,
            true,
        ),
        (
            "hourly spike, lazy-only (proactive_margin 0, callers wait at 3.6 s)",
            lazy,
            false,
        ),
    ] {
        let Some(s) = spike else { continue };
        let ratio = s.p99_in.as_secs_f64() / s.p99_out.as_secs_f64();
        let goal = if has_goal {
            format!(" (goal ≤ 1.1: {})", verdict(ratio <= 1.1))
        } else {
            String::new()
        };
        ratios.line(format_args!(
            "{label}: p99 in refresh window {} vs outside {} → ratio {ratio:.2}{goal}; \
             calls > 50 ms: {} of {} (> 1 ms: {}; per refresh: {:.0}); refreshes {}; in window: \
             {} calls, p50 {}, max {}; p50 outside {}",
            fmt_dur(s.p99_in),
            fmt_dur(s.p99_out),
            s.slow,
            s.calls,
            s.waited,
            s.waited as f64 / s.refreshes.max(1) as f64,
            s.refreshes,
            s.in_window,
            fmt_dur(s.p50_in),
            fmt_dur(s.max_in),
            fmt_dur(s.p50_out)
        ));
    }
}
