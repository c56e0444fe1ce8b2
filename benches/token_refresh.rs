//! Does token-refresh slow requests down? Measurements anyone can rerun.
//!
//! Run everything (under two minutes on two cores, plus the build):
//!
//! ```text
//! cargo bench --bench token_refresh
//! ```
//!
//! or a part of it by name, e.g. `cargo bench --bench token_refresh -- cached_token`, `-- overhead`,
//! `-- loopback`, `-- refresh_herd`, `-- hourly_spike`. Criterion treats the filter as a
//! regex; the custom measurements here understand its simple forms (substrings, `a|b`, `^`,
//! `$`). `cargo test --benches` runs each benchmark once as a smoke test (a smaller herd, no
//! spike). `TOKEN_REFRESH_BENCH_SERVER=thread` moves the loopback server to its own thread.
//!
//! Each variant runs side by side with its baseline in the same process, and a ratio table
//! is printed at the end:
//!
//! 1. **Cached token** (criterion groups `cached_token_1task`, `cached_token_2threads`):
//!    `provider.token().await` on a warm cache (in-process closure source) against the floor,
//!    cloning an `Arc<HeaderValue>` out of a plain `std::sync::RwLock`; on one task of a
//!    current-thread runtime, and on two OS threads hammering the same provider (per-call
//!    time of each thread, released together by a barrier). `tokio::time::Instant::now()` and
//!    `std::time::Instant::now()` are measured alone too: the fast path reads tokio's clock,
//!    which tokio's `test-util` feature (on for this crate's dev-dependencies) makes dearer
//!    than in production.
//! 2. **Wrapper overhead in process** (`overhead_reqwest`, `overhead_tower`): the auth
//!    middleware / layer against a static-header middleware / `map_request` in front of an
//!    innermost service that answers at once, so the difference is the wrapper's own cost.
//! 3. **End to end on loopback** (`loopback_reqwest`, `loopback_tower`, then
//!    `loopback_interleaved`): sequential keep-alive HTTP/1.1 requests to an in-process hyper
//!    server answering `200 ok`, through (a) a bare `reqwest::Client` with a static
//!    `Authorization` header, (b) a `reqwest-middleware` client with a static-header
//!    middleware, (c) the same with [`AuthMiddleware`]; (d) a hyper-util client behind
//!    [`AuthLayer`] and (e) behind `map_request` adding a static header. The criterion groups
//!    run the variants one after another; `loopback_interleaved` then compares each pair in
//!    150 alternating blocks of 100 requests (AB, BA, …) and takes the median of the
//!    per-block-pair throughput ratios, with an A-against-A control row. By default the server
//!    shares the client's current-thread runtime (see [`SERVER_ENV`] for why).
//! 4. **Refresh herd** (`refresh_herd`): 10,000 tasks on a 2-worker runtime, released
//!    together by a `tokio::sync::Barrier` on a cold cache (no token yet); the source sleeps
//!    100 ms and counts its calls. Five rounds, each with a new provider. Reports token
//!    requests per round and caller latency (from leaving the barrier to holding a token).
//! 5. **Hourly spike** (`hourly_spike/proactive`, `hourly_spike/lazy_only`): one
//!    `provider.token()` call every 1 ms (real time, each call its own task) for 12 s on a
//!    2-worker runtime, with 4 s tokens from a 200 ms source, so the stream crosses three
//!    refreshes. Proactive refresh on (default margins, scaled to the short token: hard
//!    margin 0.4 s, proactive 0.8 s, so a background refresh starts 3.2 s after each token
//!    request) and off (`proactive_margin(Duration::ZERO)`: refresh at the hard margin,
//!    3.6 s, callers wait). The refresh window is the 300 ms from each refresh's start; the
//!    table compares caller p99 in it with p99 outside it.
//!
//! Criterion's figures in the table are read back from its own estimates
//! (`<target>/criterion/<group>/<function>/new/estimates.json`: the slope, which is the
//! `time:` figure criterion prints, or the mean where there is no slope); only estimates
//! written by this run are used.

use std::convert::Infallible;
use std::env;
use std::hint::black_box;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use criterion::Criterion;
use http::header::AUTHORIZATION;
use http::{Extensions, HeaderValue, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use reqwest_middleware::{ClientWithMiddleware, Middleware, Next};
use token_refresh::{AccessToken, AuthLayer, AuthMiddleware, AuthService, TokenProvider};
use tokio::runtime::Runtime;
use tower::util::MapRequest;
use tower::{Service, ServiceBuilder, ServiceExt};

// Criterion ids: plain `[a-z0-9_]` names, so the estimate paths are exactly these.
const G_CACHED_1: &str = "cached_token_1task";
const G_CACHED_2: &str = "cached_token_2threads";
const G_REQWEST: &str = "loopback_reqwest";
const G_TOWER: &str = "loopback_tower";
const G_OVERHEAD_REQWEST: &str = "overhead_reqwest";
const G_OVERHEAD_TOWER: &str = "overhead_tower";
const F_PROVIDER: &str = "provider_token";
const F_FLOOR: &str = "rwlock_floor";
const F_TOKIO_NOW: &str = "tokio_instant_now";
const F_STD_NOW: &str = "std_instant_now";
const F_BARE: &str = "bare_static_header";
const F_MW_STATIC: &str = "middleware_static_header";
const F_MW_AUTH: &str = "auth_middleware";
const F_TOWER_STATIC: &str = "map_request_static_header";
const F_TOWER_AUTH: &str = "auth_layer";
const ID_INTERLEAVED: &str = "loopback_interleaved";
const ID_CACHED_INTERLEAVED: &str = "cached_token_2threads_interleaved";
const INTERLEAVED_BLOCKS: usize = 150;
const INTERLEAVED_PER_BLOCK: u64 = 100;
const ID_HERD: &str = "refresh_herd";
const ID_SPIKE_PROACTIVE: &str = "hourly_spike/proactive";
const ID_SPIKE_LAZY: &str = "hourly_spike/lazy_only";

/// The token every source hands out, and the static header the baselines send.
const TOKEN: &str = "tok";
const STATIC_BEARER: &str = "Bearer tok";

const HERD_CALLERS: usize = 10_000;
const HERD_ROUNDS: usize = 5;
const HERD_SOURCE_LATENCY: Duration = Duration::from_millis(100);

const SPIKE_TOKEN_LIFETIME: Duration = Duration::from_secs(4);
const SPIKE_SOURCE_LATENCY: Duration = Duration::from_millis(200);
const SPIKE_PERIOD: Duration = Duration::from_millis(1);
const SPIKE_RUN: Duration = Duration::from_secs(12);
const SPIKE_WINDOW: Duration = Duration::from_millis(300);
const SPIKE_SLOW: Duration = Duration::from_millis(50);
/// A call slower than this waited on the refresh (a cached read takes microseconds).
const SPIKE_WAITED: Duration = Duration::from_millis(1);

fn main() {
    let args = Args::parse();
    let started = SystemTime::now();
    let wall = Instant::now();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .configure_from_args();
    let mut report = Report::default();

    bench_cached_1task(&mut c);
    bench_cached_2threads(&mut c, &args, &mut report);
    bench_overhead(&mut c);
    bench_loopback(&mut c, &args, &mut report);
    c.final_summary();

    match args.mode {
        Mode::List => {
            for id in [
                ID_CACHED_INTERLEAVED,
                ID_INTERLEAVED,
                ID_HERD,
                ID_SPIKE_PROACTIVE,
                ID_SPIKE_LAZY,
            ] {
                if args.matches(id) {
                    println!("{id}: benchmark");
                }
            }
            return;
        }
        Mode::Profile => return,
        Mode::Test | Mode::Bench => {}
    }
    if args.matches(ID_HERD) {
        let (callers, rounds) = match args.mode {
            Mode::Test => (1_000, 1),
            _ => (HERD_CALLERS, HERD_ROUNDS),
        };
        report.herd = Some(refresh_herd(callers, rounds));
    }
    for (id, proactive) in [(ID_SPIKE_PROACTIVE, true), (ID_SPIKE_LAZY, false)] {
        if !args.matches(id) {
            continue;
        }
        if args.mode == Mode::Test {
            println!("{id}: skipped in test mode (it runs for {SPIKE_RUN:?})");
            continue;
        }
        let result = hourly_spike(proactive);
        if proactive {
            report.spike_proactive = Some(result);
        } else {
            report.spike_lazy = Some(result);
        }
    }
    if args.mode == Mode::Bench {
        print_table(&report, &criterion_dir(), started);
        println!(
            "\nbench binary wall time: {:.1} s",
            wall.elapsed().as_secs_f64()
        );
    }
}

// ---------------------------------------------------------------------------------------
// Command line: the bits of criterion's arguments the custom measurements need.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Bench,
    Test,
    List,
    Profile,
}

struct Args {
    mode: Mode,
    filter: Option<String>,
    exact: bool,
}

impl Args {
    /// Mirrors criterion's parsing: `cargo bench` passes `--bench` (measure); without it
    /// (`cargo test --benches`) every benchmark runs once; the first positional argument
    /// is the filter.
    fn parse() -> Self {
        // Criterion's options that take a value (the value is not the filter).
        const WITH_VALUE: &[&str] = &[
            "-c",
            "--color",
            "--colour",
            "-s",
            "--save-baseline",
            "-b",
            "--baseline",
            "--baseline-lenient",
            "--format",
            "--profile-time",
            "--load-baseline",
            "--sample-size",
            "--warm-up-time",
            "--measurement-time",
            "--nresamples",
            "--noise-threshold",
            "--confidence-level",
            "--significance-level",
            "--plotting-backend",
            "--output-format",
        ];
        let (mut bench, mut test, mut list, mut profile, mut exact) =
            (false, false, false, false, false);
        let mut filter = None;
        let mut args = env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--bench" => bench = true,
                "--test" => test = true,
                "--list" => list = true,
                "--exact" => exact = true,
                "--profile-time" => {
                    profile = true;
                    args.next();
                }
                a if WITH_VALUE.contains(&a) => {
                    args.next();
                }
                a if a.starts_with("--profile-time=") => profile = true,
                a if a.starts_with('-') => {}
                _ => {
                    if filter.is_none() {
                        filter = Some(arg);
                    }
                }
            }
        }
        let mode = if list {
            Mode::List
        } else if !bench || test {
            Mode::Test
        } else if profile {
            Mode::Profile
        } else {
            Mode::Bench
        };
        Self {
            mode,
            filter,
            exact,
        }
    }

    fn matches(&self, id: &str) -> bool {
        match &self.filter {
            None => true,
            Some(filter) if self.exact => id == filter,
            // Criterion's filter is a regex; this understands its simple forms: substrings,
            // alternatives `a|b`, anchors `^a`, `a$`.
            Some(filter) => filter.split('|').any(|alt| {
                let (start, alt) = alt.strip_prefix('^').map_or((false, alt), |a| (true, a));
                let (end, alt) = alt.strip_suffix('$').map_or((false, alt), |a| (true, a));
                match (start, end) {
                    (true, true) => id == alt,
                    (true, false) => id.starts_with(alt),
                    (false, true) => id.ends_with(alt),
                    (false, false) => id.contains(alt),
                }
            }),
        }
    }
}

// ---------------------------------------------------------------------------------------
// 1. Cached token.

fn current_thread_runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building a current-thread Tokio runtime")
}

fn multi_thread_runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building a 2-worker Tokio runtime")
}

fn static_header() -> HeaderValue {
    let mut value = HeaderValue::from_static(STATIC_BEARER);
    value.set_sensitive(true);
    value
}

/// A provider whose source is an in-process closure, with its cache filled.
fn warm_provider(rt: &Runtime) -> TokenProvider {
    let provider =
        TokenProvider::new(|| async { AccessToken::new(TOKEN, Duration::from_secs(3600)) });
    rt.block_on(provider.token())
        .expect("the in-process source always returns a token");
    provider
}

fn bench_cached_1task(c: &mut Criterion) {
    let rt = current_thread_runtime();
    let provider = warm_provider(&rt);
    let floor = RwLock::new(Arc::new(static_header()));

    let mut group = c.benchmark_group(G_CACHED_1);
    group.bench_function(F_PROVIDER, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(provider.token().await.expect("a cached token"));
                }
                start.elapsed()
            })
        });
    });
    group.bench_function(F_FLOOR, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(Arc::clone(&floor.read().expect("floor lock poisoned")));
                }
                start.elapsed()
            })
        });
    });
    group.bench_function(F_TOKIO_NOW, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(tokio::time::Instant::now());
                }
                start.elapsed()
            })
        });
    });
    group.bench_function(F_STD_NOW, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(Instant::now());
                }
                start.elapsed()
            })
        });
    });
    group.finish();
}

/// Runs `work(runtime, iters)` on two OS threads at once, each with its own current-thread
/// runtime, released together by a barrier; returns the slower thread's own timing, so
/// `result / iters` is the per-call time under contention.
fn on_two_threads<W>(iters: u64, work: W) -> Duration
where
    W: Fn(&Runtime, u64) -> Duration + Sync,
{
    let barrier = std::sync::Barrier::new(2);
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    let rt = current_thread_runtime();
                    barrier.wait();
                    work(&rt, iters)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|thread| thread.join().expect("a benchmark thread panicked"))
            .max()
            .unwrap_or_default()
    })
}

/// `iters` cached-token reads from `provider` on `rt`; their total time.
fn provider_loop(rt: &Runtime, provider: &TokenProvider, iters: u64) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            black_box(provider.token().await.expect("a cached token"));
        }
        start.elapsed()
    })
}

/// `iters` reads of the floor on `rt`; their total time.
fn floor_loop(rt: &Runtime, floor: &RwLock<Arc<HeaderValue>>, iters: u64) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            black_box(Arc::clone(&floor.read().expect("floor lock poisoned")));
        }
        start.elapsed()
    })
}

fn bench_cached_2threads(c: &mut Criterion, args: &Args, report: &mut Report) {
    let rt = current_thread_runtime();
    let provider = warm_provider(&rt);
    let floor = RwLock::new(Arc::new(static_header()));

    let mut group = c.benchmark_group(G_CACHED_2);
    group.bench_function(F_PROVIDER, |b| {
        b.iter_custom(|iters| {
            on_two_threads(iters, |rt, iters| provider_loop(rt, &provider, iters))
        });
    });
    group.bench_function(F_FLOOR, |b| {
        b.iter_custom(|iters| on_two_threads(iters, |rt, iters| floor_loop(rt, &floor, iters)));
    });
    group.finish();

    if args.matches(ID_CACHED_INTERLEAVED) && matches!(args.mode, Mode::Bench | Mode::Test) {
        let (blocks, per_block) = match args.mode {
            Mode::Test => (2, 1_000),
            _ => (60, 200_000),
        };
        println!(
            "{ID_CACHED_INTERLEAVED}: {blocks} block pairs × {per_block} calls per thread, \
             alternating order"
        );
        let pair = paired(blocks, per_block, |is_provider, n| {
            on_two_threads(n, |rt, n| {
                if is_provider {
                    provider_loop(rt, &provider, n)
                } else {
                    floor_loop(rt, &floor, n)
                }
            })
        });
        println!(
            "{ID_CACHED_INTERLEAVED}: provider.token() {} vs RwLock floor {}, ratio {:.2}",
            fmt_ns(pair.variant_ns),
            fmt_ns(pair.base_ns),
            1.0 / pair.ratio
        );
        report.cached_interleaved = Some(pair);
    }
}

// ---------------------------------------------------------------------------------------
// 2a. The wrappers' own cost, without a network: the innermost service answers at once.

/// A terminal `reqwest-middleware` middleware that answers `200 ok` without sending.
struct Canned;

#[async_trait]
impl Middleware for Canned {
    async fn handle(
        &self,
        req: reqwest::Request,
        _extensions: &mut Extensions,
        _next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        black_box(req);
        Ok(reqwest::Response::from(Response::new(reqwest::Body::from(
            "ok",
        ))))
    }
}

/// The in-process URL: https, so the token may go there; never contacted.
const OVERHEAD_URL: &str = "https://api.example.com/v2/projects";

fn bench_overhead(c: &mut Criterion) {
    let rt = current_thread_runtime();
    let provider = warm_provider(&rt);

    let mw_static = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(StaticHeaderMiddleware(static_header()))
        .with(Canned)
        .build();
    let mw_auth = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(AuthMiddleware::new(provider.clone()))
        .with(Canned)
        .build();
    let mut group = c.benchmark_group(G_OVERHEAD_REQWEST);
    for (name, client) in [(F_MW_STATIC, &mw_static), (F_MW_AUTH, &mw_auth)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let response = client.get(OVERHEAD_URL).send().await;
                        black_box(response.expect("the canned response"));
                    }
                    start.elapsed()
                })
            });
        });
    }
    group.finish();

    let instant = tower::service_fn(|_request: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let uri: Uri = OVERHEAD_URL.parse().expect("the overhead URI parses");
    let request = || {
        Request::get(uri.clone())
            .body(Full::new(Bytes::new()))
            .expect("a GET request builds")
    };
    let mut tower_static = ServiceBuilder::new()
        .map_request(add_static_header as MapFn)
        .service(instant);
    let mut tower_auth = ServiceBuilder::new()
        .layer(AuthLayer::new(provider))
        .service(instant);
    let mut group = c.benchmark_group(G_OVERHEAD_TOWER);
    group.bench_function(F_TOWER_STATIC, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let service = tower_static.ready().await.expect("always ready");
                    black_box(service.call(request()).await.expect("infallible"));
                }
                start.elapsed()
            })
        });
    });
    group.bench_function(F_TOWER_AUTH, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let service = tower_auth.ready().await.expect("always ready");
                    black_box(service.call(request()).await.expect("a response"));
                }
                start.elapsed()
            })
        });
    });
    group.finish();
}

// ---------------------------------------------------------------------------------------
// 2. End to end on loopback.

/// Where the loopback server runs (environment variable [`SERVER_ENV`]): `shared` (the
/// default) spawns it on the client's current-thread runtime, so a request costs CPU time
/// only and no cross-core wake-ups (on a small VM those dominate and drift by 2×); `thread`
/// gives it its own thread and runtime, so client and server each get a core.
const SERVER_ENV: &str = "TOKEN_REFRESH_BENCH_SERVER";

/// Starts a keep-alive HTTP/1.1 server answering `200 ok`; see [`SERVER_ENV`].
fn start_server(client: &Runtime) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    listener
        .set_nonblocking(true)
        .expect("making the listener non-blocking");
    let addr = listener.local_addr().expect("the listener's address");
    let own_thread = env::var(SERVER_ENV).is_ok_and(|v| v == "thread");
    println!(
        "loopback server on {addr}: {}",
        if own_thread {
            "own thread and runtime"
        } else {
            "shares the client's current-thread runtime"
        }
    );
    if own_thread {
        std::thread::Builder::new()
            .name("loopback-server".into())
            .spawn(move || current_thread_runtime().block_on(serve(listener)))
            .expect("spawning the server thread");
    } else {
        client.spawn(serve(listener));
    }
    addr
}

async fn serve(listener: std::net::TcpListener) {
    let listener =
        tokio::net::TcpListener::from_std(listener).expect("registering the listener with Tokio");
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                eprintln!("loopback server: accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let ok = service_fn(|_request| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), ok)
                .await
            {
                eprintln!("loopback server: connection error: {error}");
            }
        });
    }
}

/// A `reqwest-middleware` middleware that inserts a static header: the baseline for
/// [`AuthMiddleware`].
struct StaticHeaderMiddleware(HeaderValue);

#[async_trait]
impl Middleware for StaticHeaderMiddleware {
    async fn handle(
        &self,
        mut req: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        req.headers_mut().insert(AUTHORIZATION, self.0.clone());
        next.run(req, extensions).await
    }
}

/// The `map_request` baseline for [`AuthLayer`].
fn add_static_header(mut request: Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    request.headers_mut().insert(AUTHORIZATION, static_header());
    request
}

type Hyper = HyperClient<HttpConnector, Full<Bytes>>;
type MapFn = fn(Request<Full<Bytes>>) -> Request<Full<Bytes>>;

#[derive(Clone, Copy, Debug)]
enum Variant {
    Bare,
    MwStatic,
    MwAuth,
    TowerStatic,
    TowerAuth,
}

impl Variant {
    const ALL: [Variant; 5] = [
        Variant::Bare,
        Variant::MwStatic,
        Variant::MwAuth,
        Variant::TowerStatic,
        Variant::TowerAuth,
    ];
}

/// The clients of the end-to-end comparison, all talking to one loopback server.
struct Loopback {
    url: String,
    uri: Uri,
    header: HeaderValue,
    bare: reqwest::Client,
    mw_static: ClientWithMiddleware,
    mw_auth: ClientWithMiddleware,
    tower_static: MapRequest<Hyper, MapFn>,
    tower_auth: AuthService<Hyper>,
}

impl Loopback {
    fn new(rt: &Runtime) -> Self {
        let addr = start_server(rt);
        let provider = warm_provider(rt);
        let reqwest_client = || {
            reqwest::Client::builder()
                .no_proxy()
                .tcp_nodelay(true)
                .build()
                .expect("building a reqwest client")
        };
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let hyper: Hyper = HyperClient::builder(TokioExecutor::new()).build(connector);
        Self {
            url: format!("http://{addr}/"),
            uri: format!("http://{addr}/")
                .parse()
                .expect("a loopback URI parses"),
            header: static_header(),
            bare: reqwest_client(),
            mw_static: reqwest_middleware::ClientBuilder::new(reqwest_client())
                .with(StaticHeaderMiddleware(static_header()))
                .build(),
            mw_auth: reqwest_middleware::ClientBuilder::new(reqwest_client())
                .with(AuthMiddleware::new(provider.clone()))
                .build(),
            tower_static: ServiceBuilder::new()
                .map_request(add_static_header as MapFn)
                .service(hyper.clone()),
            tower_auth: ServiceBuilder::new()
                .layer(AuthLayer::new(provider))
                .service(hyper),
        }
    }

    /// One request through `variant`, its body read to the end so the connection is reused.
    async fn send(&mut self, variant: Variant) {
        match variant {
            Variant::Bare => {
                let request = self
                    .bare
                    .get(&self.url)
                    .header(AUTHORIZATION, self.header.clone());
                check_reqwest(request.send().await.expect("bare reqwest request")).await;
            }
            Variant::MwStatic => {
                let response = self.mw_static.get(&self.url).send().await;
                check_reqwest(response.expect("static-header middleware request")).await;
            }
            Variant::MwAuth => {
                let response = self.mw_auth.get(&self.url).send().await;
                check_reqwest(response.expect("AuthMiddleware request")).await;
            }
            Variant::TowerStatic => {
                let request = self.request();
                let service = self.tower_static.ready().await.expect("hyper client ready");
                let response = service.call(request).await.expect("map_request request");
                check_hyper(response).await;
            }
            Variant::TowerAuth => {
                let request = self.request();
                let service = self.tower_auth.ready().await.expect("AuthService ready");
                let response = service.call(request).await.expect("AuthLayer request");
                check_hyper(response).await;
            }
        }
    }

    fn request(&self) -> Request<Full<Bytes>> {
        Request::get(self.uri.clone())
            .body(Full::new(Bytes::new()))
            .expect("a GET request builds")
    }

    /// `iters` sequential requests through `variant`; their total time.
    fn run(&mut self, rt: &Runtime, variant: Variant, iters: u64) -> Duration {
        rt.block_on(async {
            let start = Instant::now();
            for _ in 0..iters {
                self.send(variant).await;
            }
            start.elapsed()
        })
    }
}

async fn check_reqwest(response: reqwest::Response) {
    assert!(
        response.status().is_success(),
        "loopback server answered {}",
        response.status()
    );
    black_box(response.bytes().await.expect("reading the response body"));
}

async fn check_hyper(response: Response<hyper::body::Incoming>) {
    assert!(
        response.status().is_success(),
        "loopback server answered {}",
        response.status()
    );
    let body = response.into_body().collect().await;
    black_box(body.expect("reading the response body").to_bytes());
}

fn bench_loopback(c: &mut Criterion, args: &Args, report: &mut Report) {
    let rt = current_thread_runtime();
    let mut lb = Loopback::new(&rt);

    let mut group = c.benchmark_group(G_REQWEST);
    for (name, variant) in [
        (F_BARE, Variant::Bare),
        (F_MW_STATIC, Variant::MwStatic),
        (F_MW_AUTH, Variant::MwAuth),
    ] {
        group.bench_function(name, |b| b.iter_custom(|iters| lb.run(&rt, variant, iters)));
    }
    group.finish();

    let mut group = c.benchmark_group(G_TOWER);
    for (name, variant) in [
        (F_TOWER_STATIC, Variant::TowerStatic),
        (F_TOWER_AUTH, Variant::TowerAuth),
    ] {
        group.bench_function(name, |b| b.iter_custom(|iters| lb.run(&rt, variant, iters)));
    }
    group.finish();

    if args.matches(ID_INTERLEAVED) && matches!(args.mode, Mode::Bench | Mode::Test) {
        let (blocks, per_block) = match args.mode {
            Mode::Test => (2, 5),
            _ => (INTERLEAVED_BLOCKS, INTERLEAVED_PER_BLOCK),
        };
        println!(
            "{ID_INTERLEAVED}: {blocks} block pairs × {per_block} requests, alternating order"
        );
        for variant in Variant::ALL {
            lb.run(&rt, variant, 200); // warm the connections
        }
        for (label, base, variant, has_goal) in [
            (
                "reqwest: AuthMiddleware vs static-header middleware",
                Variant::MwStatic,
                Variant::MwAuth,
                true,
            ),
            (
                "tower: AuthLayer vs map_request static header",
                Variant::TowerStatic,
                Variant::TowerAuth,
                true,
            ),
            (
                "reqwest (context): static-header middleware vs bare reqwest",
                Variant::Bare,
                Variant::MwStatic,
                false,
            ),
            (
                "control: map_request static header vs itself (should be 1.000)",
                Variant::TowerStatic,
                Variant::TowerStatic,
                false,
            ),
        ] {
            let mut pair = paired(blocks, per_block, |is_variant, n| {
                lb.run(&rt, if is_variant { variant } else { base }, n)
            });
            pair.label = label;
            pair.has_goal = has_goal;
            println!(
                "{ID_INTERLEAVED}: {label}: {}/req vs {}/req, throughput ratio {:.3}",
                fmt_ns(pair.variant_ns),
                fmt_ns(pair.base_ns),
                pair.ratio
            );
            report.interleaved.push(pair);
        }
    }
}

/// A variant against its baseline in alternating blocks (AB, BA, AB, …) so drift in the
/// machine's load hits both alike. `run(is_variant, n)` times `n` operations of one side.
/// Per-operation times are the medians over blocks; `ratio` is the median of the
/// per-block-pair ratios `base / variant` (a throughput ratio).
fn paired(blocks: usize, per_block: u64, mut run: impl FnMut(bool, u64) -> Duration) -> Paired {
    let mut base_ns = Vec::with_capacity(blocks);
    let mut variant_ns = Vec::with_capacity(blocks);
    let mut ratios = Vec::with_capacity(blocks);
    let per_op = |took: Duration| took.as_secs_f64() * 1e9 / per_block as f64;
    for block in 0..blocks {
        let (b, v) = if block % 2 == 0 {
            let b = run(false, per_block);
            (b, run(true, per_block))
        } else {
            let v = run(true, per_block);
            (run(false, per_block), v)
        };
        base_ns.push(per_op(b));
        variant_ns.push(per_op(v));
        ratios.push(b.as_secs_f64() / v.as_secs_f64());
    }
    Paired {
        label: "",
        has_goal: false,
        blocks,
        per_block,
        base_ns: median(&mut base_ns),
        variant_ns: median(&mut variant_ns),
        ratio: median(&mut ratios),
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

// ---------------------------------------------------------------------------------------
// 3. Refresh herd.

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

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

// ---------------------------------------------------------------------------------------
// 4. Hourly spike.

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

// ---------------------------------------------------------------------------------------
// The ratio table.

#[derive(Default)]
struct Report {
    cached_interleaved: Option<Paired>,
    interleaved: Vec<Paired>,
    herd: Option<Herd>,
    spike_proactive: Option<Spike>,
    spike_lazy: Option<Spike>,
}

struct Paired {
    label: &'static str,
    has_goal: bool,
    blocks: usize,
    per_block: u64,
    base_ns: f64,
    variant_ns: f64,
    ratio: f64,
}

struct Herd {
    callers: usize,
    requests: Vec<usize>,
    p50: Duration,
    p99: Duration,
    max: Duration,
    makespan: Duration,
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

/// Where criterion writes its estimates, found the way criterion finds it.
fn criterion_dir() -> PathBuf {
    if let Some(home) = env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    if let Some(target) = env::var_os("CARGO_TARGET_DIR") {
        return manifest.join(target).join("criterion");
    }
    if let Some(cargo) = env::var_os("CARGO")
        && let Ok(output) = Command::new(cargo)
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .current_dir(manifest)
            .output()
        && output.status.success()
        && let Ok(metadata) = serde_json::from_slice::<serde_json::Value>(&output.stdout)
        && let Some(target) = metadata["target_directory"].as_str()
    {
        return PathBuf::from(target).join("criterion");
    }
    manifest.join("target").join("criterion")
}

/// Criterion's estimate in ns for `group/function`, if this run wrote it: the slope (what
/// criterion prints as `time:` when it samples linearly, as it does here) or else the mean.
fn estimate_ns(dir: &Path, group: &str, function: &str, since: SystemTime) -> Option<f64> {
    let path = dir.join(group).join(function).join("new/estimates.json");
    let modified = std::fs::metadata(&path).ok()?.modified().ok()?;
    // A little slack for coarse file-system timestamps.
    if modified + Duration::from_secs(1) < since {
        return None;
    }
    let estimates: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    estimates["slope"]["point_estimate"]
        .as_f64()
        .or_else(|| estimates["mean"]["point_estimate"].as_f64())
}

fn fmt_ns(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.1} ns")
    } else if ns < 1e6 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{:.1} ms", ns / 1e6)
    }
}

fn fmt_dur(d: Duration) -> String {
    fmt_ns(d.as_secs_f64() * 1e9)
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

fn print_table(report: &Report, dir: &Path, since: SystemTime) {
    let est = |group: &str, function: &str| estimate_ns(dir, group, function, since);
    println!("\n=== token-refresh: ratio table ===");
    let mut missing = Vec::new();

    for (label, group) in [("1 task", G_CACHED_1), ("2 threads", G_CACHED_2)] {
        match (est(group, F_PROVIDER), est(group, F_FLOOR)) {
            (Some(provider), Some(floor)) => {
                let ratio = provider / floor;
                println!(
                    "cached token, {label}: provider.token() {} vs RwLock floor {} → ratio {ratio:.2} \
                     (goal ≤ 2.0: {}; goal < 1 µs: {})",
                    fmt_ns(provider),
                    fmt_ns(floor),
                    verdict(ratio <= 2.0),
                    verdict(provider < 1e3)
                );
            }
            _ => missing.push(group),
        }
    }
    if let Some(pair) = &report.cached_interleaved {
        let ratio = 1.0 / pair.ratio;
        println!(
            "cached token, 2 threads, interleaved ({} block pairs × {} calls per thread, \
             medians): provider.token() {} vs RwLock floor {} → ratio {ratio:.2} (goal ≤ 2.0: {}; \
             goal < 1 µs: {})",
            pair.blocks,
            pair.per_block,
            fmt_ns(pair.variant_ns),
            fmt_ns(pair.base_ns),
            verdict(ratio <= 2.0),
            verdict(pair.variant_ns < 1e3)
        );
    }
    match (
        est(G_CACHED_1, F_TOKIO_NOW),
        est(G_CACHED_1, F_STD_NOW),
        est(G_CACHED_1, F_PROVIDER),
        est(G_CACHED_1, F_FLOOR),
    ) {
        (Some(tokio_now), Some(std_now), provider, floor) => {
            println!(
                "clock read, 1 task: tokio::time::Instant::now() {} vs std::time::Instant::now() {} \
                 → ratio {:.2} (tokio test-util build)",
                fmt_ns(tokio_now),
                fmt_ns(std_now),
                tokio_now / std_now
            );
            if let (Some(provider), Some(floor)) = (provider, floor) {
                let without_clock = provider - tokio_now;
                println!(
                    "  provider.token() minus its one clock read ≈ {} → ratio {:.2} to the floor \
                     (the rest of the fast path: read lock, compare, Arc clone)",
                    fmt_ns(without_clock),
                    without_clock / floor
                );
            }
        }
        _ => missing.push("clock reads"),
    }

    let e2e = [
        (
            "loopback reqwest",
            G_REQWEST,
            F_MW_AUTH,
            "AuthMiddleware",
            F_MW_STATIC,
            "static-header middleware",
            true,
        ),
        (
            "loopback reqwest (context)",
            G_REQWEST,
            F_MW_STATIC,
            "static-header middleware",
            F_BARE,
            "bare reqwest",
            false,
        ),
        (
            "loopback tower",
            G_TOWER,
            F_TOWER_AUTH,
            "AuthLayer",
            F_TOWER_STATIC,
            "map_request static header",
            true,
        ),
    ];
    for (label, group) in [
        (
            "in-process overhead, reqwest-middleware",
            G_OVERHEAD_REQWEST,
        ),
        ("in-process overhead, tower", G_OVERHEAD_TOWER),
    ] {
        let (variant, base) = if group == G_OVERHEAD_TOWER {
            (F_TOWER_AUTH, F_TOWER_STATIC)
        } else {
            (F_MW_AUTH, F_MW_STATIC)
        };
        match (est(group, variant), est(group, base)) {
            (Some(v), Some(b)) => println!(
                "{label}: auth {}/req vs static header {}/req → the auth wrapper adds {} per \
                 request (no network; the innermost service answers at once)",
                fmt_ns(v),
                fmt_ns(b),
                fmt_ns(v - b)
            ),
            _ => missing.push(group),
        }
    }
    for (label, group, variant, variant_name, base, base_name, has_goal) in e2e {
        match (est(group, variant), est(group, base)) {
            (Some(v), Some(b)) => {
                let throughput = b / v;
                let goal = if has_goal {
                    format!(" (goal ≥ 0.98: {})", verdict(throughput >= 0.98))
                } else {
                    String::new()
                };
                println!(
                    "{label}: {variant_name} {}/req vs {base_name} {}/req → throughput ratio \
                     {throughput:.3}{goal}",
                    fmt_ns(v),
                    fmt_ns(b)
                );
            }
            _ => missing.push(group),
        }
    }
    for pair in &report.interleaved {
        let goal = if pair.has_goal {
            format!(" (goal ≥ 0.98: {})", verdict(pair.ratio >= 0.98))
        } else {
            String::new()
        };
        println!(
            "loopback interleaved ({} block pairs × {} req), {}: {}/req vs {}/req → throughput \
             ratio {:.3}{goal}",
            pair.blocks,
            pair.per_block,
            pair.label,
            fmt_ns(pair.variant_ns),
            fmt_ns(pair.base_ns),
            pair.ratio
        );
    }
    if let Some(h) = &report.herd {
        let exact = h.requests.iter().all(|&n| n == 1);
        println!(
            "refresh herd, {} callers on a cold cache, 100 ms source: token requests per round \
             {:?} (goal exactly 1: {}); caller latency p50 {}, p99 {}, max {}; herd done in {}",
            h.callers,
            h.requests,
            verdict(exact),
            fmt_dur(h.p50),
            fmt_dur(h.p99),
            fmt_dur(h.max),
            fmt_dur(h.makespan)
        );
    }
    for (label, spike, has_goal) in [
        (
            "hourly spike, proactive refresh (4 s tokens, background refresh at 3.2 s)",
            &report.spike_proactive,
            true,
        ),
        (
            "hourly spike, lazy-only (proactive_margin 0, callers wait at 3.6 s)",
            &report.spike_lazy,
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
        println!(
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
        );
    }
    missing.dedup();
    if !missing.is_empty() {
        println!(
            "(no estimate from this run for: {}; filtered out or not saved)",
            missing.join(", ")
        );
    }
}
