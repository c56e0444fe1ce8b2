//! `RedisStore` against a real `redis-server`: separate worker processes (the `fleet`
//! example) share one token, one refresh per token lifetime fleet-wide; a Redis that stops
//! mid-run fails no call; garbage in Redis is never handed out. (Faults in depth:
//! `redis_faults.rs`.)
#![cfg(feature = "redis")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use common::*;
use token_refresh::store::RedisStore;
use token_refresh::{AccessToken, TokenProvider};

/// The `fleet` example on `redis`.
fn fleet(redis: &RedisServer) -> std::process::Command {
    let mut command = example("fleet");
    command.args(["--redis", &redis.url]);
    command
}

/// Runs the `fleet` example: whether it succeeded, its output (the workers' stderr too).
fn fleet_output(redis: &RedisServer, args: &[&str]) -> (bool, String) {
    finished(fleet(redis).args(args))
}

/// Runs the `fleet` example and returns the token requests it printed.
fn run_fleet(redis: &RedisServer, args: &[&str]) -> u64 {
    let (ok, text) = fleet_output(redis, args);
    assert!(ok, "fleet failed: {text}");
    printed(&text, "token requests: ")
}

#[test]
fn eight_processes_sharing_a_refresh_token_series_rotate_it_twenty_times_without_a_reuse() {
    let redis = RedisServer::start();
    assert_fleet_rotates_a_series_without_a_reuse(&mut fleet(&redis));
}

#[test]
fn without_a_store_the_same_fleet_kills_its_series_and_says_so() {
    let redis = RedisServer::start();
    let (ok, text) = fleet_output(
        &redis,
        &[
            "--grant",
            "refresh",
            "--no-store",
            "--workers",
            "8",
            "--callers",
            "10",
            "--ttl",
            "1",
            "--seconds",
            "4",
        ],
    );
    println!("{text}");
    assert!(!ok, "every worker kept going: {text}");
    assert!(printed(&text, "reuse detections: ") >= 1, "{text}");
    assert!(text.contains("authorize again"), "{text}");
}

#[test]
fn eight_processes_times_a_hundred_callers_on_a_cold_fleet_make_one_token_request() {
    let redis = RedisServer::start();
    let requests = run_fleet(&redis, &["--workers", "8", "--callers", "100"]);
    println!("8 processes x 100 callers, cold fleet: {requests} token requests");
    assert_eq!(requests, 1);
}

#[test]
fn across_two_token_lifetimes_the_fleet_makes_one_request_per_lifetime() {
    let redis = RedisServer::start();
    // 4 s tokens are refreshed at 3.2 s (the proactive margin, a fifth of the lifetime):
    // six seconds of calls span two tokens.
    let requests = run_fleet(
        &redis,
        &[
            "--workers",
            "4",
            "--callers",
            "10",
            "--ttl",
            "4",
            "--seconds",
            "5",
        ],
    );
    println!("4 processes over two 4 s token lifetimes: {requests} token requests");
    assert_eq!(requests, 2);
}

fn sealed_store(redis: &RedisServer, prefix: &str) -> RedisStore {
    RedisStore::new(&redis.url)
        .unwrap()
        .key_prefix(prefix)
        .encryption_key([9; 32])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_run_and_restarted_fails_no_call() {
    let mut redis = RedisServer::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let providers: Vec<TokenProvider> = (0..4)
        .map(|_| {
            let counter = calls.clone();
            TokenProvider::builder(move || {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                async move { AccessToken::new(format!("t{n}"), Duration::from_secs(3600)) }
            })
            .store(sealed_store(&redis, "outage:"))
            .store_key("outage")
            .store_timeouts(Duration::from_secs(2), Duration::from_millis(200))
            .try_build()
            .unwrap()
        })
        .collect();
    let (mut ok, mut failed, mut saw_outage) = (0, 0, false);
    let started = Instant::now();
    let mut stopped = false;
    let mut restarted = false;
    while started.elapsed() < Duration::from_secs(3) {
        if !stopped && started.elapsed() > Duration::from_secs(1) {
            redis.stop();
            stopped = true;
        }
        if stopped && !restarted && started.elapsed() > Duration::from_secs(2) {
            redis.restart();
            restarted = true;
        }
        for provider in &providers {
            match provider.token().await {
                Ok(token) => {
                    ok += 1;
                    // Force the next call to refresh, through the store.
                    provider.invalidate(&token);
                }
                Err(error) => {
                    failed += 1;
                    eprintln!("{error}");
                }
            }
            saw_outage |= provider.health().store_ok == Some(false);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("Redis stopped for 1 s mid-run: {ok} calls succeeded, {failed} failed");
    assert_eq!(failed, 0);
    assert!(ok > 50, "{ok}");
    assert!(saw_outage, "health showed the outage");
    // After the restart the store is used again.
    for provider in &providers {
        let token = provider.token().await.unwrap();
        provider.invalidate(&token);
        provider.token().await.unwrap();
    }
    assert!(providers.iter().all(|p| p.health().store_ok == Some(true)));
}

#[tokio::test]
async fn garbage_or_a_planted_plaintext_entry_in_redis_is_never_handed_out() {
    let redis = RedisServer::start();
    let source = || async { AccessToken::new("own", Duration::from_secs(3600)) };
    // An application-named key shows as it is, in braces (the Redis Cluster hash tag).
    let key = "{named-planted}";
    let mut conn = redis.connection();
    for planted in [
        b"garbage".to_vec(),
        b"P{\"v\":1,\"token\":\"planted\",\"issued_at_ms\":0,\"lifetime_ms\":99999999999999}"
            .to_vec(),
    ] {
        let () = redis::cmd("SET")
            .arg(format!("planted:{key}"))
            .arg(&planted)
            .query(&mut conn)
            .unwrap();
        let provider = TokenProvider::builder(source)
            .store(sealed_store(&redis, "planted:"))
            .store_key("planted")
            .try_build()
            .unwrap();
        assert_eq!(provider.token().await.unwrap().expose_secret(), "own");
        assert_eq!(provider.health().token_requests, 1);
    }
}

#[test]
fn a_redis_store_without_an_encryption_key_is_refused_unless_plaintext_is_allowed() {
    let source = || async { AccessToken::new("t", Duration::from_secs(3600)) };
    let error = TokenProvider::builder(source)
        .store(RedisStore::new("redis://127.0.0.1:1/").unwrap())
        .store_key("k")
        .try_build()
        .unwrap_err();
    assert!(error.to_string().contains("allow_plaintext"), "{error}");
    assert!(
        TokenProvider::builder(source)
            .store(
                RedisStore::new("redis://127.0.0.1:1/")
                    .unwrap()
                    .allow_plaintext(true)
            )
            .store_key("k")
            .try_build()
            .is_ok()
    );
    // A URL with a password never shows it.
    let store = RedisStore::new("redis://:hunter2@127.0.0.1:1/").unwrap();
    assert!(!format!("{store:?}").contains("hunter2"));
    assert!(RedisStore::new("not a url").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_processes_calling_an_always_401_api_make_a_handful_of_token_requests() {
    use httpmock::prelude::*;
    let redis = RedisServer::start();
    let server = MockServer::start_async().await;
    let replies = (1..=50)
        .map(|n| Reply::token(&format!("tok-{n}")))
        .collect();
    let tokens = scripted_token_server(&server, replies).await;
    let api = server
        .mock_async(|when, then| {
            when.method(GET).path("/v2/projects");
            then.status(401);
        })
        .await;
    // Twenty providers, each with its own cache and storm guard as a process has, sharing
    // one Redis.
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let provider = TokenProvider::builder(source(&server).jti(true))
                .store(sealed_store(&redis, "storm:"))
                .try_build()
                .unwrap();
            reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
                .with(token_refresh::AuthMiddleware::new(provider))
                .build()
        })
        .collect();
    for _ in 0..50 {
        for client in &clients {
            let response = client.get(server.url("/v2/projects")).send().await.unwrap();
            assert_eq!(response.status(), 401);
        }
    }
    let token_requests = total_calls(&tokens).await;
    println!(
        "20 providers sharing Redis, 1,000 calls to an always-401 API: {token_requests} token \
         requests, {} sends",
        api.calls_async().await
    );
    assert!(token_requests <= 5, "{token_requests} token requests");
}

/// Waiting processes are woken by the store (pub/sub) when the holder stores the token, not
/// by their next poll: with a 400 ms fetch, polling waiters sit in waits of 125–250 ms by
/// then. Four waiters, each with its own store and connection, must all have the token
/// within 50 ms of the holder's; without notifications they are printed for comparison.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_processes_are_woken_by_the_store_not_by_their_next_poll() {
    let redis = RedisServer::start();
    let mut report = Vec::new();
    for notified in [true, false] {
        let fetches = Arc::new(AtomicUsize::new(0));
        let providers: Vec<TokenProvider> = (0..5)
            .map(|_| {
                let fetches = fetches.clone();
                TokenProvider::builder(move || {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    async {
                        tokio::time::sleep(Duration::from_millis(400)).await;
                        AccessToken::new("woken", Duration::from_secs(3600))
                    }
                })
                .store(sealed_store(&redis, "woken:").notifications(notified))
                .store_key(format!("woken-{notified}"))
                .try_build()
                .unwrap()
            })
            .collect();
        let started = Instant::now();
        let done: Vec<Duration> = join_all(providers.iter().map(|provider| async move {
            provider.token().await.unwrap();
            started.elapsed()
        }))
        .await;
        assert_eq!(fetches.load(Ordering::SeqCst), 1, "one fetch fleet-wide");
        let first = *done.iter().min().unwrap();
        let last_after_first = done.iter().max().unwrap().saturating_sub(first);
        report.push(format!(
            "notifications {notified}: the last waiter had the token {last_after_first:?} after \
             the first process"
        ));
        if notified {
            assert!(
                last_after_first < Duration::from_millis(50),
                "{last_after_first:?}"
            );
        }
    }
    println!("{}", report.join("; "));
}

/// A server without RESP3 (before Redis 6, or `HELLO` renamed away as here): the store
/// connects over RESP2 without notifications, and waiting processes poll. The fleet still
/// makes one token request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_resp3_still_shares_one_token_and_waiters_poll() {
    let redis = RedisServer::start_with(&["--rename-command", "HELLO", ""]);
    {
        // The server refuses the RESP3 handshake.
        let mut conn = redis.connection();
        let hello: redis::RedisResult<redis::Value> = redis::cmd("HELLO").arg(3).query(&mut conn);
        assert!(hello.is_err(), "HELLO answered: {hello:?}");
    }
    let fetches = Arc::new(AtomicUsize::new(0));
    let providers: Vec<TokenProvider> = (0..5)
        .map(|_| {
            let fetches = fetches.clone();
            TokenProvider::builder(move || {
                let n = fetches.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    AccessToken::new(format!("resp2-{n}"), Duration::from_secs(3600))
                }
            })
            .store(sealed_store(&redis, "resp2:"))
            .store_key("resp2")
            .try_build()
            .unwrap()
        })
        .collect();
    let tokens = join_all(providers.iter().map(|provider| provider.token())).await;
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "one fetch fleet-wide");
    for token in tokens {
        assert_eq!(token.unwrap().expose_secret(), "resp2-1");
    }
    assert!(providers.iter().all(|p| p.health().store_ok == Some(true)));
}
