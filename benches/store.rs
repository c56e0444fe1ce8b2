//! Token stores: does a store cost the cached path anything, how fast does a cold process
//! get a token that the fleet already has, and how soon after a token is stored do the
//! processes waiting for it have it?
//!
//! - `store_cached_path` (interleaved A/B blocks, medians): `provider.token()` on a warm
//!   provider built with a `FileStore` against the same without a store, on one
//!   current-thread runtime. The store is only consulted by refreshes, so the goal is a
//!   throughput ratio of about 1 (≥ 0.95).
//! - `store_cold_start` (feature `redis`; a `redis-server` started on a free port): a cold
//!   process's first token, as a new provider (new Redis client and connection) that finds
//!   the token in Redis, against a new provider without a store that asks the emulator's
//!   token endpoint (JWT signing, an HTTP request on loopback), side by side in alternating
//!   rounds, with a bare `GET` on a new Redis connection as the floor ("about one Redis
//!   round trip").
//! - `store_wakeup` (feature `redis`; a `redis-server` started on a free port): a cold fleet
//!   of 8 "processes" (8 providers, each with its own `RedisStore`, connection and
//!   current-thread runtime on a thread of its own) asks for a token at once; one takes the
//!   lease and fetches (30 ms), the 7 others wait. Measured: how long after the holder's
//!   `put` returned each waiter has its token, with notifications (pub/sub) and with polling
//!   (`RedisStore::notifications(false)`), in alternating rounds of the same run. Goal: p99
//!   ≤ 5 ms with notifications.
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
const ID_WAKEUP: &str = "store_wakeup";

fn main() {
    let bench = Bench::start();
    let cached = cached_path(&bench.args);
    let cold = cold_start(&bench.args);
    let wakeup = wakeup(&bench.args);
    bench.finish(&[ID_CACHED, ID_COLD, ID_WAKEUP], |ratios| {
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
        match wakeup {
            Some(Ok(line)) => ratios.line(line),
            Some(Err(why)) => ratios.line(format!("store, wake-up: not measured ({why})")),
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

#[cfg(not(feature = "redis"))]
fn wakeup(args: &common::Args) -> Option<Result<String, String>> {
    args.measures(ID_WAKEUP)
        .then(|| Err("build with --features redis (or --all-features)".to_owned()))
}

#[cfg(feature = "redis")]
#[path = "../tests/common/redis_server.rs"]
mod redis_server;

/// A `RedisStore` that notes when a `put` returned, and which store made it.
#[cfg(feature = "redis")]
#[derive(Debug)]
struct Recorded {
    inner: token_refresh::store::RedisStore,
    index: usize,
    stored: std::sync::Arc<std::sync::Mutex<Option<(usize, Instant)>>>,
}

#[cfg(feature = "redis")]
#[async_trait::async_trait]
impl token_refresh::store::TokenStore for Recorded {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, token_refresh::store::StoreError> {
        self.inner.get(key).await
    }
    async fn put(
        &self,
        key: &str,
        entry: &[u8],
        ttl: Duration,
    ) -> Result<(), token_refresh::store::StoreError> {
        self.inner.put(key, entry, ttl).await?;
        *self.stored.lock().unwrap() = Some((self.index, Instant::now()));
        Ok(())
    }
    async fn delete_if(
        &self,
        key: &str,
        expected: &[u8],
    ) -> Result<bool, token_refresh::store::StoreError> {
        self.inner.delete_if(key, expected).await
    }
    async fn replace_if(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        entry: &[u8],
        ttl: Duration,
    ) -> Result<bool, token_refresh::store::StoreError> {
        self.inner.replace_if(key, expected, entry, ttl).await
    }
    fn swaps(&self) -> bool {
        true
    }
    async fn try_lease(
        &self,
        key: &str,
        fence: &str,
        ttl: Duration,
    ) -> Result<bool, token_refresh::store::StoreError> {
        self.inner.try_lease(key, fence, ttl).await
    }
    async fn release(
        &self,
        key: &str,
        fence: &str,
    ) -> Result<(), token_refresh::store::StoreError> {
        self.inner.release(key, fence).await
    }
    async fn renew(
        &self,
        key: &str,
        fence: &str,
        ttl: Duration,
    ) -> Result<bool, token_refresh::store::StoreError> {
        self.inner.renew(key, fence, ttl).await
    }
    async fn changed(&self, key: &str, max: Duration) {
        self.inner.changed(key, max).await
    }
    async fn watch(&self, key: &str) -> Option<u64> {
        self.inner.watch(key).await
    }
    async fn changed_since(&self, key: &str, seen: u64, max: Duration) {
        self.inner.changed_since(key, seen, max).await
    }
    fn sealing(&self) -> token_refresh::store::StoreConfig {
        self.inner.sealing()
    }
}

/// Waiters of a cold fleet of 8: how long after the holder stored the token each had it,
/// with notifications and with polling.
#[cfg(feature = "redis")]
fn wakeup(args: &common::Args) -> Option<Result<String, String>> {
    use std::sync::{Arc, Barrier, Mutex};
    use token_refresh::store::RedisStore;

    const FLEET: usize = 8;
    const FETCH: Duration = Duration::from_millis(30);
    if !args.measures(ID_WAKEUP) {
        return None;
    }
    let rounds = match args.mode {
        Mode::Test => 2,
        _ => 60,
    };
    let redis = redis_server::RedisServer::start();
    let mut delays = [Vec::new(), Vec::new()];
    let mut requests = [0, 0];
    for round in 0..rounds * 2 {
        let notified = round % 2 == 0;
        let stored = Arc::new(Mutex::new(None));
        let fetched = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let barrier = Arc::new(Barrier::new(FLEET));
        let threads: Vec<_> = (0..FLEET)
            .map(|index| {
                let store = Recorded {
                    inner: RedisStore::new(&redis.url)
                        .expect("a Redis URL")
                        .key_prefix("bench-wakeup:")
                        .encryption_key([6; 32])
                        .notifications(notified),
                    index,
                    stored: stored.clone(),
                };
                let (barrier, fetched) = (barrier.clone(), fetched.clone());
                std::thread::spawn(move || {
                    let rt = current_thread_runtime();
                    let provider = TokenProvider::builder(move || {
                        fetched.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        async {
                            tokio::time::sleep(FETCH).await;
                            AccessToken::new("bench-token", Duration::from_secs(3600))
                        }
                    })
                    .store(store)
                    .store_key(format!("round-{round}"))
                    .try_build()
                    .expect("a sealed store");
                    barrier.wait();
                    rt.block_on(provider.token()).expect("a token");
                    (index, Instant::now())
                })
            })
            .collect();
        let done: Vec<(usize, Instant)> = threads
            .into_iter()
            .map(|t| t.join().expect("a fleet thread"))
            .collect();
        let Some((holder, stored_at)) = *stored.lock().unwrap() else {
            return Some(Err("no process stored the token".into()));
        };
        let side = usize::from(!notified);
        requests[side] += fetched.load(std::sync::atomic::Ordering::SeqCst);
        for (index, at) in done {
            if index != holder {
                delays[side].push(at.saturating_duration_since(stored_at));
            }
        }
    }
    let stats = |v: &mut Vec<Duration>| {
        v.sort();
        (
            common::percentile(v, 0.5),
            common::percentile(v, 0.99),
            v.last().copied().unwrap_or_default(),
        )
    };
    let [notified, polled] = delays.each_mut().map(stats);
    Some(Ok(format!(
        "store, wake-up of a cold fleet of {FLEET} ({rounds} rounds each, {} waiters' first \
         tokens, after the holder stored it): notifications p50 {} p99 {} max {} vs polling \
         p50 {} p99 {} max {} (goal p99 ≤ 5 ms: {}); token requests {} and {} ({} expected)",
        delays[0].len(),
        common::fmt_dur(notified.0),
        common::fmt_dur(notified.1),
        common::fmt_dur(notified.2),
        common::fmt_dur(polled.0),
        common::fmt_dur(polled.1),
        common::fmt_dur(polled.2),
        verdict(notified.1 <= Duration::from_millis(5)),
        requests[0],
        requests[1],
        rounds
    )))
}

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
