//! Two real minutes against the emulator with 10 s tokens, a request every 250 ms through
//! `AuthMiddleware`: no failure, no 401, each request sent once, and the token requests
//! within the bound the margins give. It takes two minutes by design, so `cargo test` leaves
//! it out (`test = false` in Cargo.toml); run it with
//!
//! ```text
//! cargo test --all-features --test soak
//! ```
//!
//! CI runs it as a step of its own. Its paused-time twin (24 simulated hours) is in
//! `tests/reliability_soak.rs`, which the README's test command runs.
#![cfg(feature = "reqwest")]

use std::time::Duration;

use reqwest_middleware::ClientBuilder;
use token_refresh::{AuthMiddleware, JwtBearer, TokenProvider};
use token_refresh_emulator::Emulator;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_two_real_minutes() {
    const RUN: Duration = Duration::from_secs(120);
    const TTL: Duration = Duration::from_secs(10);
    const EVERY: Duration = Duration::from_millis(250);

    let emu = Emulator::builder().token_ttl(TTL).start().await.unwrap();
    let provider = TokenProvider::new(JwtBearer::new(emu.account()));
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(AuthMiddleware::new(provider))
        .build();
    let url = format!("{}/projects", emu.api_url());

    let started = std::time::Instant::now();
    let mut ticks = tokio::time::interval(EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut sent, mut failures) = (0u64, Vec::new());
    while started.elapsed() < RUN {
        ticks.tick().await;
        sent += 1;
        let outcome = tokio::time::timeout(Duration::from_secs(30), client.get(&url).send())
            .await
            .map_err(|_| "request hung".to_owned())
            .and_then(|r| r.map_err(|e| format!("{e:?}")))
            .map(|r| r.status());
        match outcome {
            Ok(status) if status == 200 => {}
            Ok(status) => failures.push(format!("HTTP {status}")),
            Err(error) => failures.push(error),
        }
    }
    let elapsed = started.elapsed();
    let stats = emu.stats();

    assert!(sent >= 400, "only {sent} requests in {elapsed:?}");
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed, e.g. {:?}",
        failures.len(),
        failures.first()
    );
    assert_eq!(stats.api_unauthorized, 0, "401s at the emulator: {stats:?}");
    assert_eq!(
        stats.api_requests, sent,
        "each request sent once: {stats:?}"
    );
    assert_eq!(stats.token_failures, 0, "{stats:?}");

    // The bound. TTL 10 s: proactive margin min(300, 10/5) = 2 s, hard margin
    // min(60, 10/10) = 1 s, so a token is replaced 8 s after its request was sent (at
    // the first request after that point, ≤ 250 ms later) and never used past 9 s.
    // - Upper: consecutive token requests are at least 8 s apart, so over the run at
    //   most floor(elapsed / 8 s) + 1 — 16 for 120 s (the run ends a moment after 120 s,
    //   so the elapsed time is what counts).
    // - Lower: about 120 / 8.25 ≈ 15 is expected; any count well below 120 / 9 ≈ 14
    //   would mean tokens used past their hard margin, which the zero 401s above
    //   already rule out. 10 leaves room for a stalled CI machine (a long stall means
    //   fewer requests, so fewer tokens needed).
    let upper = elapsed.as_secs() / 8 + 1;
    assert!(
        (10..=upper).contains(&stats.token_requests),
        "{} token requests in {elapsed:?} of 10 s tokens (bound 10..={upper})",
        stats.token_requests
    );
}
