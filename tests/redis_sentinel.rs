//! `RedisStore::sentinel` against a real Redis Sentinel: a master, its replica and a sentinel
//! that this test starts. Providers with their own stores (as processes of a fleet have)
//! share one token through the master the sentinel names, and keep sharing after the
//! sentinel fails the master over.
#![cfg(feature = "redis")]

mod common;

use std::time::Duration;

use common::redis_server::{RedisSentinel, SENTINEL_MASTER};
use token_refresh::store::RedisStore;
use token_refresh::{JwtBearer, TokenProvider};
use token_refresh_emulator::Emulator;

fn store(sentinel: &RedisSentinel) -> RedisStore {
    RedisStore::sentinel(
        [sentinel.sentinel_url.as_str()],
        &format!("redis://{SENTINEL_MASTER}"),
    )
    .unwrap()
    .key_prefix("sentinel:")
    .encryption_key([5; 32])
}

/// The keys under the test's prefix on the server at `port`.
fn keys_on(port: u16) -> Vec<String> {
    let mut conn = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .unwrap()
        .get_connection()
        .unwrap();
    redis::cmd("KEYS")
        .arg("sentinel:*")
        .query(&mut conn)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_through_sentinel_share_one_token_and_keep_sharing_after_a_failover() {
    let sentinel = RedisSentinel::start();
    let emulator = Emulator::start().await.unwrap();
    let providers: Vec<TokenProvider> = (0..4)
        .map(|_| {
            TokenProvider::builder(
                JwtBearer::new(emulator.account()).token_url(emulator.token_url()),
            )
            .store(store(&sentinel))
            .try_build()
            .unwrap()
        })
        .collect();

    // Cold: the first provider fetches and stores, the others take its token.
    let mut first = Vec::new();
    for provider in &providers {
        first.push(provider.token().await.unwrap());
    }
    assert_eq!(emulator.stats().token_requests, 1);
    let master = sentinel.master_port();
    assert!(!keys_on(master).is_empty(), "the entry is on the master");

    let (old, new) = sentinel.failover();
    println!("Sentinel failed the master over from {old} to {new}");

    // Every provider's connection reaches the old master, now a replica that refuses
    // writes. The first provider's refresh must find the new master through the sentinel
    // and store its token there; the other three must find that token there.
    for (provider, token) in providers.iter().zip(&first) {
        provider.invalidate(token);
        let fresh = provider.token().await.unwrap();
        assert_ne!(fresh.expose_secret(), token.expose_secret());
    }
    assert_eq!(
        emulator.stats().token_requests,
        2,
        "after the failover the fleet shares one new token"
    );
    assert!(
        keys_on(new)
            .iter()
            .any(|k| !k.ends_with(":lease") && !k.contains(".refresh-token")),
        "the new token is on the new master: {:?}",
        keys_on(new)
    );
    for provider in &providers {
        let health = provider.health();
        assert_eq!(health.store_ok, Some(true), "{health:?}");
    }
}

/// A sentinel that does not answer: the store fails, the provider fetches for itself (never
/// worse than no store) and `Health` says why.
#[tokio::test]
async fn with_no_sentinel_answering_the_provider_fetches_for_itself_and_says_why() {
    let emulator = Emulator::start().await.unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://127.0.0.1:{}/", closed.local_addr().unwrap().port());
    drop(closed);
    let provider =
        TokenProvider::builder(JwtBearer::new(emulator.account()).token_url(emulator.token_url()))
            .store(
                RedisStore::sentinel([url.as_str()], "redis://:hunter2@mymaster")
                    .unwrap()
                    .encryption_key([5; 32]),
            )
            .try_build()
            .unwrap();
    let started = std::time::Instant::now();
    provider.token().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(emulator.stats().token_requests, 1);
    let health = provider.health();
    assert_eq!(health.store_ok, Some(false), "{health:?}");
    let error = health
        .store_error
        .clone()
        .expect("the store's error is shown");
    println!("store error: {error}");
    let shown = format!("{health:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
}
