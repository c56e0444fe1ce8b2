//! Token stores: does a store cost the cached path anything, and how fast does a cold
//! process get a token that the fleet already has?
//!
//! - `store_cached_path` (interleaved A/B blocks, medians): `provider.token()` on a warm
//!   provider built with a `FileStore` against the same without a store, on one
//!   current-thread runtime. The store is only consulted by refreshes, so the goal is a
//!   throughput ratio of about 1 (≥ 0.95).
//! - `store_cold_start` (feature `redis`; a `redis-server` started on a free port, or
//!   `TOKEN_REFRESH_TEST_REDIS_URL`): a cold process's first token, as a new provider
//!   (new Redis client and connection) that finds the token in Redis, against a new provider
//!   without a store that asks the emulator's token endpoint (JWT signing, an HTTP request
//!   on loopback), side by side in alternating rounds, with a bare `GET` on a new Redis
//!   connection as the floor ("about one Redis round trip").
//!
//! ```text
//! cargo bench --bench store --all-features
//! ```

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use common::{Bench, Mode, current_thread_runtime, fmt_ns, paired, verdict, warm_provider};
use token_refresh::store::FileStore;
use token_refresh::{AccessToken, TokenProvider};

const ID_CACHED: &str = "store_cached_path";
const ID_COLD: &str = "store_cold_start";

fn main() {
    let bench = Bench::start();
    let cached = cached_path(&bench.args);
    let cold = cold_start(&bench.args);
    bench.finish(&[ID_CACHED, ID_COLD], |ratios| {
        if let Some(pair) = cached {
            ratios.line(format!(
                "store, cached path: provider.token() with a FileStore {} vs without a store {} \
                 → throughput ratio {:.3} (goal ≥ 0.95: {})",
                fmt_ns(pair.variant_ns),
                fmt_ns(pair.base_ns),
                pair.ratio,
                verdict(pair.ratio >= 0.95)
            ));
        }
        match cold {
            Some(Ok(line)) => ratios.line(line),
            Some(Err(why)) => ratios.line(format!("store, cold start: not measured ({why})")),
            None => {}
        }
    });
}

fn cached_path(args: &common::Args) -> Option<common::Paired> {
    if !args.measures(ID_CACHED) {
        return None;
    }
    let rt = current_thread_runtime();
    let plain = warm_provider(&rt);
    let dir = std::env::temp_dir().join(format!("token-refresh-bench-{}", std::process::id()));
    let stored = TokenProvider::builder(|| async {
        AccessToken::new("bench-token", Duration::from_secs(3600))
    })
    .store(FileStore::new(&dir).encryption_key([3; 32]))
    .store_key("bench")
    .try_build()
    .expect("a sealed store with a key");
    rt.block_on(stored.token()).expect("a token");
    let (blocks, per_block) = match args.mode {
        Mode::Test => (2, 1_000),
        _ => (60, 200_000),
    };
    let pair = paired(blocks, per_block, |with_store, n| {
        let provider = if with_store { &stored } else { &plain };
        rt.block_on(async {
            let start = Instant::now();
            for _ in 0..n {
                black_box(provider.token().await.expect("a cached token"));
            }
            start.elapsed()
        })
    });
    let _ = std::fs::remove_dir_all(&dir);
    Some(pair)
}

#[cfg(not(feature = "redis"))]
fn cold_start(args: &common::Args) -> Option<Result<String, String>> {
    args.measures(ID_COLD)
        .then(|| Err("build with --features redis,emulator (or --all-features)".to_owned()))
}

#[cfg(feature = "redis")]
#[path = "../tests/common/redis_server.rs"]
mod redis_server;

#[cfg(feature = "redis")]
fn cold_start(args: &common::Args) -> Option<Result<String, String>> {
    use token_refresh::JwtBearer;
    use token_refresh::store::RedisStore;
    use token_refresh_emulator::Emulator;

    if !args.measures(ID_COLD) {
        return None;
    }
    let rounds = match args.mode {
        Mode::Test => 3,
        _ => 200,
    };
    let redis = redis_server::RedisServer::start();
    let rt = current_thread_runtime();
    let emulator = rt.block_on(Emulator::start()).expect("the emulator starts");
    let source = || JwtBearer::new(emulator.account()).token_url(emulator.token_url());
    let store = || {
        RedisStore::new(&redis.url)
            .expect("a Redis URL")
            .key_prefix("bench:")
            .encryption_key([5; 32])
    };
    let from_store = || {
        TokenProvider::builder(source())
            .store(store())
            .try_build()
            .expect("a sealed store")
    };
    // One process of the fleet fetched the token; the cold ones find it.
    rt.block_on(from_store().token()).expect("the first token");
    let mut times = [Vec::new(), Vec::new(), Vec::new()];
    for round in 0..rounds {
        for side in [round % 3, (round + 1) % 3, (round + 2) % 3] {
            let took = rt.block_on(async {
                let start = Instant::now();
                match side {
                    0 => {
                        let client = redis::Client::open(redis.url.as_str()).expect("a URL");
                        let mut connection = client
                            .get_multiplexed_async_connection()
                            .await
                            .expect("Redis answers");
                        let value: Option<Vec<u8>> = redis::cmd("GET")
                            .arg("bench:floor")
                            .query_async(&mut connection)
                            .await
                            .expect("GET works");
                        black_box(value);
                    }
                    1 => {
                        let provider = from_store();
                        black_box(provider.token().await.expect("a stored token"));
                        assert_eq!(provider.health().token_requests, 0, "taken from Redis");
                    }
                    _ => {
                        let provider = TokenProvider::new(source());
                        black_box(provider.token().await.expect("a fetched token"));
                    }
                }
                start.elapsed()
            });
            times[side].push(took);
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1e9
    };
    let [floor, stored, fetched] = times.each_mut().map(median);
    Some(Ok(format!(
        "store, cold start ({rounds} rounds, medians): token from Redis {} vs token request {} \
         → {:.1}× faster; a bare GET on a new Redis connection {} → the stored token costs \
         {:.2}× that round trip",
        fmt_ns(stored),
        fmt_ns(fetched),
        fetched / stored,
        fmt_ns(floor),
        stored / floor
    )))
}
