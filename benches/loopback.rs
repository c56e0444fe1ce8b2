//! End to end on loopback: how much throughput does the auth wrapper cost over a real
//! (loopback) connection?
//!
//! Sequential keep-alive HTTP/1.1 requests to an in-process hyper server answering `200 ok`,
//! through (a) a bare `reqwest::Client` with a static `Authorization` header, (b) a
//! `reqwest-middleware` client with a static-header middleware, (c) the same with
//! [`AuthMiddleware`]; (d) a hyper-util client behind [`AuthLayer`] and (e) behind
//! `map_request` adding a static header. The baseline of (c) is (b), of (d) is (e); (b)
//! against (a) is context.
//!
//! - `loopback_reqwest` (a, b, c) and `loopback_tower` (d, e) (criterion): the variants one
//!   after another.
//! - `loopback_interleaved`: each pair in 150 alternating blocks of 100 requests (AB, BA, …),
//!   the median of the per-block-pair throughput ratios, with an A-against-A control row.
//!
//! By default the server shares the client's current-thread runtime; with
//! `TOKEN_REFRESH_BENCH_SERVER=thread` it gets its own thread (see [`SERVER_ENV`]).
//!
//! ```text
//! cargo bench --bench loopback
//! TOKEN_REFRESH_BENCH_SERVER=thread cargo bench --bench loopback
//! ```
//!
//! At the end it prints its ratio lines: the throughput ratio of each variant to its
//! baseline (goal ≥ 0.98 for the two auth wrappers), from the criterion groups and then from
//! the interleaved blocks. `cargo test --benches` runs it once as a smoke test.

mod common;

use std::convert::Infallible;
use std::env;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{
    Args, Bench, F_MW_AUTH, F_MW_STATIC, F_TOWER_AUTH, F_TOWER_STATIC, MapFn, Mode, Paired, Ratios,
    StaticHeaderMiddleware, add_static_header, current_thread_runtime, fmt_ns, paired,
    static_header, verdict, warm_provider,
};
use criterion::Criterion;
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use reqwest_middleware::ClientWithMiddleware;
use token_refresh::{AuthLayer, AuthMiddleware, AuthService};
use tokio::runtime::Runtime;
use tower::util::MapRequest;
use tower::{Service, ServiceBuilder, ServiceExt};

const G_REQWEST: &str = "loopback_reqwest";
const G_TOWER: &str = "loopback_tower";
const F_BARE: &str = "bare_static_header";
const ID_INTERLEAVED: &str = "loopback_interleaved";
const INTERLEAVED_BLOCKS: usize = 150;
const INTERLEAVED_PER_BLOCK: u64 = 100;

fn main() {
    let mut bench = Bench::start();
    let interleaved = bench_loopback(&mut bench.criterion, &bench.args);
    bench.finish(&[ID_INTERLEAVED], |ratios| {
        print_ratios(ratios, &interleaved);
    });
}

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

type Hyper = HyperClient<HttpConnector, Full<Bytes>>;

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

/// The criterion groups, then the interleaved comparisons (if they run).
fn bench_loopback(c: &mut Criterion, args: &Args) -> Vec<Paired> {
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

    let mut interleaved = Vec::new();
    if !args.measures(ID_INTERLEAVED) {
        return interleaved;
    }
    let (blocks, per_block) = match args.mode {
        Mode::Test => (2, 5),
        _ => (INTERLEAVED_BLOCKS, INTERLEAVED_PER_BLOCK),
    };
    println!("{ID_INTERLEAVED}: {blocks} block pairs × {per_block} requests, alternating order");
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
        interleaved.push(pair);
    }
    interleaved
}

fn print_ratios(ratios: &mut Ratios, interleaved: &[Paired]) {
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
    for (label, group, variant, variant_name, base, base_name, has_goal) in e2e {
        match (
            ratios.estimate(group, variant),
            ratios.estimate(group, base),
        ) {
            (Some(v), Some(b)) => {
                let throughput = b / v;
                let goal = if has_goal {
                    format!(" (goal ≥ 0.98: {})", verdict(throughput >= 0.98))
                } else {
                    String::new()
                };
                ratios.line(format_args!(
                    "{label}: {variant_name} {}/req vs {base_name} {}/req → throughput ratio \
                     {throughput:.3}{goal}",
                    fmt_ns(v),
                    fmt_ns(b)
                ));
            }
            _ => ratios.missing(group),
        }
    }
    for pair in interleaved {
        let goal = if pair.has_goal {
            format!(" (goal ≥ 0.98: {})", verdict(pair.ratio >= 0.98))
        } else {
            String::new()
        };
        ratios.line(format_args!(
            "loopback interleaved ({} block pairs × {} req), {}: {}/req vs {}/req → throughput \
             ratio {:.3}{goal}",
            pair.blocks,
            pair.per_block,
            pair.label,
            fmt_ns(pair.variant_ns),
            fmt_ns(pair.base_ns),
            pair.ratio
        ));
    }
}
