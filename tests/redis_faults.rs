//! `RedisStore` under faults, against a real `redis-server`: is a store that fails ever worse
//! than no store? Redis killed and restarted, a lease holder SIGKILLed, a store used from a
//! second Tokio runtime, and what `Health` tells an operator meanwhile.
#![cfg(feature = "redis")]

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use common::*;
use token_refresh::store::RedisStore;
use token_refresh::{AccessToken, Error, JwtBearer, TokenProvider};
use token_refresh_emulator::{Emulator, Fault};

fn store(redis: &RedisServer, prefix: &str) -> RedisStore {
    RedisStore::new(&redis.url)
        .unwrap()
        .key_prefix(prefix)
        .encryption_key([7; 32])
}

fn jwt(emulator: &Emulator) -> JwtBearer {
    JwtBearer::new(emulator.account()).token_url(emulator.token_url())
}

/// Four providers, each with its own store and connection as four processes have, call
/// through token lifetimes of 3 s while Redis is killed (mid-lifetime) and restarted. The
/// lifetime that starts during the outage costs one request per provider; the first one
/// after the restart must cost the fleet one again, and `store_ok` must be true again within
/// 5 s of Redis answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_restarts_the_first_token_lifetime_costs_the_fleet_one_request() {
    let mut redis = RedisServer::start();
    let emulator = Emulator::builder()
        .token_ttl(Duration::from_secs(3))
        .start()
        .await
        .unwrap();
    let providers: Vec<TokenProvider> = (0..4)
        .map(|_| {
            TokenProvider::builder(jwt(&emulator))
                .store(store(&redis, "restart:"))
                .try_build()
                .unwrap()
        })
        .collect();
    let requests = || emulator.stats().token_successes;
    let failed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for provider in &providers {
        let (provider, failed, stop) = (provider.clone(), failed.clone(), stop.clone());
        callers.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                if let Err(error) = provider.token().await {
                    eprintln!("call failed: {error}");
                    failed.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    // Lifetime 1 (from 0 s, refreshed at 2.4 s): Redis dies at 1 s.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cold = requests();
    redis.stop();
    // Lifetime 2 starts during the outage, at 2.4 s: each provider fetches its own.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = requests() - cold;
    redis.restart();
    let answering = Instant::now();
    let at_restart = requests();
    let mut store_ok_after = None;
    // Lifetime 3 starts at about 4.8 s: the first after the restart. Lifetime 4 at 7.2 s.
    while answering.elapsed() < Duration::from_millis(3_300) {
        if store_ok_after.is_none() && providers.iter().all(|p| p.health().store_ok == Some(true)) {
            store_ok_after = Some(answering.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = requests() - at_restart;
    stop.store(true, Ordering::SeqCst);
    for caller in callers {
        caller.await.unwrap();
    }
    println!(
        "token requests: cold {cold}, lifetime during the outage {during}, first lifetime \
         after the restart {after}; store_ok again {store_ok_after:?} after Redis answered; \
         failed calls {}",
        failed.load(Ordering::SeqCst)
    );
    assert_eq!(failed.load(Ordering::SeqCst), 0, "failed calls");
    assert_eq!(cold, 1);
    assert_eq!(after, 1, "the first lifetime after the restart");
    let store_ok_after = store_ok_after.expect("store_ok true again");
    assert!(
        store_ok_after < Duration::from_secs(5),
        "{store_ok_after:?}"
    );
}

/// With hour-long tokens nothing refreshes after Redis comes back: `store_ok` must turn
/// true all the same, within 5 s of Redis answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_ok_is_true_within_five_seconds_of_redis_answering_without_a_refresh() {
    let mut redis = RedisServer::start();
    let emulator = Emulator::start().await.unwrap();
    let provider = TokenProvider::builder(jwt(&emulator))
        .store(store(&redis, "probe:"))
        .try_build()
        .unwrap();
    let token = provider.token().await.unwrap();
    redis.stop();
    provider.invalidate(&token);
    provider.token().await.unwrap();
    assert_eq!(provider.health().store_ok, Some(false));
    redis.restart();
    let answering = Instant::now();
    while provider.health().store_ok != Some(true) {
        assert!(
            answering.elapsed() < Duration::from_secs(5),
            "store_ok still false 5 s after Redis answered: {:?}",
            provider.health()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "store_ok true {:?} after Redis answered again",
        answering.elapsed()
    );
    assert_eq!(emulator.stats().token_successes, 2);
}

/// During an outage `Health` names the store's error (with no secret in it) and when it
/// happened; in its JSON too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_shows_the_store_error_and_when_it_happened() {
    let mut redis = RedisServer::start();
    let emulator = Emulator::start().await.unwrap();
    let url = redis.url.replace("redis://", "redis://:hunter2-password@");
    let provider = TokenProvider::builder(jwt(&emulator))
        .store(
            RedisStore::new(&url)
                .unwrap()
                .key_prefix("health:")
                .encryption_key([7; 32]),
        )
        .try_build()
        .unwrap();
    redis.stop();
    let before = std::time::SystemTime::now() - Duration::from_secs(1);
    provider.token().await.unwrap();
    let json = serde_json::to_value(provider.health()).unwrap();
    println!("health during the outage: {json}");
    assert_eq!(json["store_ok"], false);
    let error = json["store_error"]
        .as_str()
        .expect("store_error in the JSON");
    assert!(!error.is_empty());
    assert!(!error.contains("hunter2"), "{error}");
    let at = json["store_error_unix_seconds"]
        .as_f64()
        .expect("store_error_unix_seconds in the JSON");
    let since_epoch = before
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(at >= since_epoch.floor(), "{at} vs {since_epoch}");
    let health = provider.health();
    assert!(!format!("{health:?}").contains("hunter2"));
}

/// Under `build()` a store the provider cannot use makes every call fail: `Health` says why.
#[tokio::test]
async fn health_shows_why_build_made_a_provider_without_a_usable_store() {
    let source = || async { AccessToken::new("t", Duration::from_secs(3600)) };
    let provider = TokenProvider::builder(source)
        .store(RedisStore::new("redis://127.0.0.1:1/").unwrap())
        .store_key("keyless")
        .build();
    let error = provider.token().await.unwrap_err();
    let health = provider.health();
    let shown = health
        .last_error
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    assert!(shown.contains("allow_plaintext"), "{health:?} / {error}");
    assert_eq!(health.store_ok, Some(false));
}

/// The store's connection belongs to no runtime: a refresh on a second runtime, after the
/// first shut down, goes through the store, so another process finds the new token (not the
/// invalidated one) and the fleet makes no extra request.
#[test]
fn a_store_used_from_a_second_runtime_after_the_first_shut_down_costs_no_extra_request() {
    let redis = RedisServer::start();
    // The token endpoint lives on a runtime of its own, which outlives both.
    let server_runtime = tokio::runtime::Runtime::new().unwrap();
    let emulator = server_runtime.block_on(Emulator::start()).unwrap();
    let provider = TokenProvider::builder(jwt(&emulator))
        .store(store(&redis, "runtimes:"))
        .try_build()
        .unwrap();
    let first_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let first = first_runtime.block_on(provider.token()).unwrap();
    drop(first_runtime);
    let second_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    second_runtime.block_on(async {
        provider.invalidate(&first);
        let second = provider.token().await.unwrap();
        assert_ne!(second.expose_secret(), first.expose_secret());
        // Another process of the fleet.
        let other = TokenProvider::builder(jwt(&emulator))
            .store(store(&redis, "runtimes:"))
            .try_build()
            .unwrap();
        let found = other.token().await.unwrap();
        assert_eq!(
            found.expose_secret(),
            second.expose_secret(),
            "the other process got the invalidated token, or fetched its own"
        );
        assert_eq!(provider.health().store_ok, Some(true));
    });
    let requests = emulator.stats().token_successes;
    println!("a store used from a second runtime: {requests} token requests (2 expected)");
    assert_eq!(requests, 2);
}

/// The lease holder is SIGKILLed while it waits on a token endpoint that takes 1.5 s; the
/// next process runs with the default timeouts. Its callers must get a token within the
/// fetch time plus 2 s, never a `WaitTimeout`.
#[test]
fn a_lease_holder_sigkilled_with_default_timeouts_delays_the_fleet_by_at_most_two_seconds() {
    const FETCH: Duration = Duration::from_millis(1_500);
    let redis = RedisServer::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let emulator = runtime.block_on(Emulator::start()).unwrap();
    // Every token request is answered 1.5 s late (an async delay: the endpoint serves the
    // second request while the first one's answer is still pending).
    emulator.inject_fault(Fault::Delay(FETCH), 2);
    let account = emulator.account();
    let worker = || {
        let mut command = example("fleet");
        command
            .args(["--worker", "--redis", &redis.url, "--callers", "4"])
            .args(["--token-url", &emulator.token_url()])
            .args(["--prefix", "sigkill:"])
            .env("DT_SERVICE_ACCOUNT_KEY_ID", account.key_id())
            .env("DT_SERVICE_ACCOUNT_EMAIL", account.email())
            .env("DT_SERVICE_ACCOUNT_SECRET", account.expose_secret())
            .env("TOKEN_REFRESH_STORE_KEY", "33".repeat(32))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    };
    let mut holder = worker().spawn().unwrap();
    // Once it is waiting on the slow endpoint it holds the lease: SIGKILL it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while emulator.stats().token_requests == 0 {
        assert!(Instant::now() < deadline, "the first worker never asked");
        std::thread::sleep(Duration::from_millis(5));
    }
    holder.kill().unwrap();
    holder.wait().unwrap();
    let started = Instant::now();
    let (ok, text) = finished(&mut worker());
    let took = started.elapsed();
    assert!(ok, "{text}");
    let waited = Duration::from_millis(
        text.lines()
            .find_map(|l| l.strip_prefix("first token after: "))
            .and_then(|ms| ms.trim_end_matches(" ms").parse().ok())
            .unwrap_or_else(|| panic!("no first-token time in {text}")),
    );
    println!(
        "lease holder SIGKILLed, default timeouts: the next process's callers had a token \
         after {waited:?} (the process ran {took:?}; the token endpoint takes {FETCH:?})"
    );
    assert!(waited < FETCH + Duration::from_secs(2), "{waited:?}");
    assert_eq!(emulator.stats().token_requests, 2);
    drop(runtime);
}

/// A caller whose own deadline passes while another process holds the lease is told so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_timeout_on_another_process_lease_says_so() {
    let redis = RedisServer::start();
    let emulator = Emulator::start().await.unwrap();
    // The token request is answered 1.5 s late (an async delay: a sleeping handler would
    // hold a worker thread, and the waiter's task with it).
    emulator.inject_fault(Fault::Delay(Duration::from_millis(1_500)), 1);
    let source = || JwtBearer::new(emulator.account()).token_url(emulator.token_url());
    let holder = TokenProvider::builder(source())
        .store(store(&redis, "lease-wait:"))
        .try_build()
        .unwrap();
    let holding = tokio::spawn(async move { holder.token().await });
    // Once the holder is asking the slow endpoint, it holds the lease.
    eventually(|| emulator.stats().token_requests == 1).await;
    let waiter = TokenProvider::builder(source())
        .store(store(&redis, "lease-wait:"))
        .try_build()
        .unwrap();
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(token_refresh::AuthMiddleware::new(waiter))
        .build();
    let error = client
        .get(closed_port_url())
        .timeout(Duration::from_millis(300))
        .send()
        .await
        .unwrap_err();
    let error = Error::find(&error).unwrap_or_else(|| panic!("not a token error: {error:?}"));
    println!("{error}");
    assert!(matches!(error, Error::WaitTimeout { .. }), "{error:?}");
    assert!(error.to_string().contains("another process"), "{error}");
    holding.await.unwrap().unwrap();
}
