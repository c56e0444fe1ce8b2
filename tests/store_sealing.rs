//! How a store's entries are named and sealed, against a real `redis-server`: can anyone who
//! lists the keys test a guessed secret against them, does an entry copied under another key
//! prefix open, and does a fleet roll from one encryption key to the next without a failed
//! call?
#![cfg(feature = "redis")]

mod common;

use common::redis_server::RedisServer;
use token_refresh::store::RedisStore;
use token_refresh::{JwtBearer, TokenProvider, TokenSource};
use token_refresh_emulator::Emulator;

fn jwt(emulator: &Emulator) -> JwtBearer {
    JwtBearer::new(emulator.account()).token_url(emulator.token_url())
}

/// Every key in Redis under `prefix`, sorted.
fn keys(redis: &RedisServer, prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query(&mut redis.connection())
        .unwrap();
    keys.sort();
    keys
}

/// A key is a keyed hash: the unkeyed hash of the credentials (what anyone who guesses the
/// secret can compute) is nowhere in it, and another encryption key names the same token
/// differently.
#[tokio::test]
async fn store_keys_are_keyed_by_the_encryption_key_not_a_bare_hash_of_the_credentials() {
    let redis = RedisServer::start();
    let emulator = Emulator::start().await.unwrap();
    let unkeyed = jwt(&emulator).store_key().unwrap();
    let hash = unkeyed.rsplit('-').next().unwrap().to_owned();
    let mut names = Vec::new();
    for (prefix, key) in [("one:", [1; 32]), ("two:", [2; 32])] {
        let provider = TokenProvider::builder(jwt(&emulator))
            .store(
                RedisStore::new(&redis.url)
                    .unwrap()
                    .key_prefix(prefix)
                    .encryption_key(key),
            )
            .try_build()
            .unwrap();
        provider.token().await.unwrap();
        let stored = keys(&redis, prefix);
        println!("{prefix} {stored:?} (unkeyed hash {hash})");
        assert_eq!(stored.len(), 1, "{stored:?}");
        assert!(!stored[0].contains(&hash), "{stored:?} holds {hash}");
        names.push(stored[0].trim_start_matches(prefix).to_owned());
    }
    assert_ne!(
        names[0], names[1],
        "the same name under two encryption keys"
    );
}

/// The key prefix is part of what an entry is sealed with: an entry copied under another
/// prefix does not open there.
#[tokio::test]
async fn an_entry_copied_under_another_key_prefix_does_not_open() {
    let redis = RedisServer::start();
    let emulator = Emulator::start().await.unwrap();
    let store = |prefix: &str| {
        RedisStore::new(&redis.url)
            .unwrap()
            .key_prefix(prefix)
            .encryption_key([5; 32])
    };
    let first = TokenProvider::builder(jwt(&emulator))
        .store(store("tenant-a:"))
        .try_build()
        .unwrap();
    let token = first.token().await.unwrap();
    let mut conn = redis.connection();
    for key in keys(&redis, "tenant-a:") {
        let entry: Vec<u8> = redis::cmd("GET").arg(&key).query(&mut conn).unwrap();
        let copy = key.replacen("tenant-a:", "tenant-b:", 1);
        let () = redis::cmd("SET")
            .arg(&copy)
            .arg(entry)
            .query(&mut conn)
            .unwrap();
    }
    let second = TokenProvider::builder(jwt(&emulator))
        .store(store("tenant-b:"))
        .try_build()
        .unwrap();
    let own = second.token().await.unwrap();
    assert_ne!(
        own.expose_secret(),
        token.expose_secret(),
        "the copy opened"
    );
    assert_eq!(second.health().token_requests, 1);
    assert_eq!(emulator.stats().token_successes, 2);
}
