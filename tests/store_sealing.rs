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

const KEY_A: &str = "0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a";
const KEY_B: &str = "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b";

/// A fleet of four processes (the `fleet` example) rolls from key A to key B as the
/// documented procedure says, one process at a time: `[A]` → `[B, A]` → `[B]`. Each process
/// calls every 50 ms and exits with an error at the first failed call. The token outlives
/// the roll, so the fleet should need its one cold request and no other.
#[test]
fn a_fleet_of_four_rolling_from_key_a_to_key_b_fails_no_call_and_fetches_once() {
    use std::process::{Child, Stdio};
    use std::time::{Duration, Instant};

    let redis = RedisServer::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let emulator = runtime.block_on(Emulator::start()).unwrap();
    let account = emulator.account();
    let worker = |keys: String, seconds: f64| -> Child {
        common::example("fleet")
            .args(["--worker", "--redis", &redis.url, "--callers", "4"])
            .args(["--token-url", &emulator.token_url(), "--prefix", "roll:"])
            .args(["--seconds", &seconds.to_string()])
            .env("DT_SERVICE_ACCOUNT_KEY_ID", account.key_id())
            .env("DT_SERVICE_ACCOUNT_EMAIL", account.email())
            .env("DT_SERVICE_ACCOUNT_SECRET", account.expose_secret())
            .env("TOKEN_REFRESH_STORE_KEY", keys)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Slot i runs [A] until 2 + i s, then [B, A] for 4 s, then [B] for 2 s: every [A] has
    // exited (5 s) before the first [B] starts (6 s).
    let phases = [
        KEY_A.to_owned(),
        format!("{KEY_B},{KEY_A}"),
        KEY_B.to_owned(),
    ];
    let seconds = |slot: usize, phase: usize| match phase {
        0 => 2.0 + slot as f64,
        1 => 4.0,
        _ => 2.0,
    };
    let mut slots: Vec<(usize, Child)> = (0..4)
        .map(|slot| (0, worker(phases[0].clone(), seconds(slot, 0))))
        .collect();
    let (mut runs, mut failed) = (4, Vec::new());
    let deadline = Instant::now() + Duration::from_secs(60);
    while slots.iter().any(|(phase, _)| *phase < phases.len()) {
        assert!(Instant::now() < deadline, "the roll did not finish");
        for (slot, (phase, child)) in slots.iter_mut().enumerate() {
            if *phase >= phases.len() {
                continue;
            }
            let Some(status) = child.try_wait().unwrap() else {
                continue;
            };
            if !status.success() {
                let mut text = String::new();
                use std::io::Read;
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut text)
                    .unwrap();
                failed.push(format!("slot {slot} phase {phase}: {text}"));
            }
            *phase += 1;
            if *phase < phases.len() {
                *child = worker(phases[*phase].clone(), seconds(slot, *phase));
                runs += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let requests = emulator.stats().token_successes;
    println!(
        "4 processes rolled [A] -> [B, A] -> [B] ({runs} process runs): {requests} token \
         requests, {} failed runs",
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(requests, 1, "the roll cost token requests");
    // Everything is under B's names by now.
    assert!(keys(&redis, "roll:").iter().all(|k| !k.ends_with(":lease")));
    drop(runtime);
}

fn keys_store(redis: &RedisServer, keys: &[[u8; 32]]) -> RedisStore {
    RedisStore::new(&redis.url)
        .unwrap()
        .key_prefix("mid-roll:")
        .encryption_keys(keys.iter().copied())
}

/// A token lifetime that ends while the fleet is half on `[A]` and half on `[B, A]`: the
/// two groups take separate leases, so the lifetime may cost the fleet one request more,
/// never more than that, and no process takes the token that was rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lifetime_ending_mid_roll_costs_at_most_one_extra_request() {
    let redis = RedisServer::start();
    let emulator = Emulator::start().await.unwrap();
    let (a, b) = ([0x0a; 32], [0x0b; 32]);
    for order in [[0, 1, 2, 3], [2, 3, 0, 1]] {
        let prefix = format!("mid-roll-{}:", order[0]);
        let providers: Vec<TokenProvider> = [vec![a], vec![a], vec![b, a], vec![b, a]]
            .iter()
            .map(|keys| {
                TokenProvider::builder(jwt(&emulator))
                    .store(keys_store(&redis, keys).key_prefix(prefix.clone()))
                    .try_build()
                    .unwrap()
            })
            .collect();
        let before = emulator.stats().token_successes;
        let mut tokens = Vec::new();
        for provider in &providers {
            tokens.push(provider.token().await.unwrap());
        }
        let cold = emulator.stats().token_successes - before;
        assert!(
            tokens
                .iter()
                .all(|t| t.expose_secret() == tokens[0].expose_secret())
        );
        // The lifetime ends: every process drops the token, then refreshes (in `order`).
        for (provider, token) in providers.iter().zip(&tokens) {
            provider.invalidate(token);
        }
        let mut fresh = Vec::new();
        for &i in &order {
            fresh.push(providers[i].token().await.unwrap());
        }
        let lifetime = emulator.stats().token_successes - before - cold;
        println!("order {order:?}: cold {cold} request(s), the lifetime after {lifetime}");
        assert_eq!(cold, 1);
        assert!((1..=2).contains(&lifetime), "{lifetime} requests");
        assert!(
            fresh
                .iter()
                .all(|t| t.expose_secret() != tokens[0].expose_secret()),
            "a process took the rejected token"
        );
    }
}

/// A refresh-token series shared by a process on `[A]` and one on `[B, A]`, then by the
/// latter and one on `[B]`: every refresh spends the current refresh token, none is spent
/// twice (the emulator would revoke the series).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_token_series_survives_the_roll_with_no_reuse() {
    use token_refresh::{OAuthClient, RefreshToken};
    let redis = RedisServer::start();
    let emulator = Emulator::start().await.unwrap();
    let refresh_token = emulator.issue_refresh_token();
    let (a, b) = ([0x0a; 32], [0x0b; 32]);
    let provider = |keys: &[[u8; 32]]| {
        let client = OAuthClient::new(emulator.client_id(), emulator.client_secret());
        TokenProvider::builder(RefreshToken::new(
            emulator.token_url(),
            client,
            refresh_token.clone(),
        ))
        .store(keys_store(&redis, keys))
        .try_build()
        .unwrap()
    };
    let (old, rolled, new) = (provider(&[a]), provider(&[b, a]), provider(&[b]));
    let mut refreshes = 0;
    for (first, second) in [(&old, &rolled), (&rolled, &new)] {
        for round in 0..6 {
            // Both drop the fleet's token; the process whose turn it is refreshes, which
            // spends the refresh token (the other would take the access token it stores).
            let (turn, other) = if round % 2 == 0 {
                (first, second)
            } else {
                (second, first)
            };
            let (mine, theirs) = (turn.token().await.unwrap(), other.token().await.unwrap());
            turn.invalidate(&mine);
            other.invalidate(&theirs);
            turn.token().await.unwrap();
            refreshes += 1;
        }
    }
    let stats = emulator.stats();
    println!(
        "{refreshes} refreshes across the roll: {} refresh grants, {} reuses, {} invalid_grant",
        stats.refresh_token_grants, stats.refresh_token_reuses, stats.invalid_grants
    );
    assert_eq!(stats.refresh_token_reuses, 0);
    assert_eq!(stats.invalid_grants, 0);
    assert!(
        stats.refresh_token_grants > refreshes,
        "{} grants",
        stats.refresh_token_grants
    );
}
