//! Per-request overhead: what does the auth wrapper itself add to a request, without a
//! network?
//!
//! Each wrapper runs in front of an innermost service that answers `200 ok` at once, so the
//! difference from its baseline is the wrapper's own cost:
//!
//! - `overhead_reqwest` (criterion): `AuthMiddleware` against a static-header middleware,
//!   in a `reqwest-middleware` client whose last middleware answers without sending.
//! - `overhead_tower` (criterion): `AuthLayer` against `map_request` adding a static header,
//!   over a `tower::service_fn`.
//!
//! Both on one task of a current-thread runtime, with a warm provider, and with routes
//! configured: the single provider bound to the request's origin (`for_origin`), and a
//! keyed provider (`keyed_*`) with three routes, the request matching the one with a path
//! prefix.
//!
//! Goals (issue 30): `AuthLayer` ≤ 1.5× `map_request`, `AuthMiddleware` ≤ 1.2× the
//! static-header middleware.
//!
//! ```text
//! cargo bench --bench overhead
//! ```
//!
//! At the end it prints its ratio lines: for each wrapper, its time per request, its
//! baseline's, and what it adds. `cargo test --benches` runs it once as a smoke test.

mod common;

use std::convert::Infallible;
use std::hint::black_box;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use common::{
    Bench, F_MW_AUTH, F_MW_STATIC, F_TOWER_AUTH, F_TOWER_STATIC, MapFn, Ratios,
    StaticHeaderMiddleware, add_static_header, current_thread_runtime, fmt_ns, static_header,
    verdict, warm_keyed, warm_provider,
};
use criterion::Criterion;
use http::{Extensions, Request, Response, Uri};
use http_body_util::Full;
use reqwest_middleware::{Middleware, Next};
use token_refresh::{AuthLayer, AuthMiddleware, KeyedTokenProvider, TokenParams};
use tower::{Service, ServiceBuilder, ServiceExt};

const G_OVERHEAD_REQWEST: &str = "overhead_reqwest";
const G_OVERHEAD_TOWER: &str = "overhead_tower";

/// The in-process URL: https, so the token may go there; never contacted.
const OVERHEAD_URL: &str = "https://api.example.com/v2/projects";
const ORIGIN: &str = "https://api.example.com";
const F_MW_KEYED: &str = "keyed_auth_middleware";
const F_TOWER_KEYED: &str = "keyed_auth_layer";

/// Three routes of a keyed provider; the request matches `{ORIGIN}/v2` (the middle key of
/// `warm_keyed`'s, so its token is cached).
fn routes(keyed: &KeyedTokenProvider, params: &TokenParams) -> [(String, TokenParams); 3] {
    let _ = keyed;
    [
        (
            "https://other.example.com".to_owned(),
            TokenParams::scope("scope-1"),
        ),
        (ORIGIN.to_owned(), TokenParams::scope("scope-2")),
        (format!("{ORIGIN}/v2"), params.clone()),
    ]
}

fn main() {
    let mut bench = Bench::start();
    bench_overhead(&mut bench.criterion);
    bench.finish(&[], print_ratios);
}

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

fn bench_overhead(c: &mut Criterion) {
    let rt = current_thread_runtime();
    let provider = warm_provider(&rt);

    let mw_static = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(StaticHeaderMiddleware(static_header()))
        .with(Canned)
        .build();
    let mw_auth = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(AuthMiddleware::new(provider.clone()).for_origin(ORIGIN))
        .with(Canned)
        .build();
    let (keyed, params) = warm_keyed(&rt, 3);
    let mut keyed_mw = AuthMiddleware::keyed(keyed.clone());
    for (target, p) in routes(&keyed, &params) {
        keyed_mw = keyed_mw.route(&target, p);
    }
    let mw_keyed = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(keyed_mw)
        .with(Canned)
        .build();
    let mut group = c.benchmark_group(G_OVERHEAD_REQWEST);
    for (name, client) in [
        (F_MW_STATIC, &mw_static),
        (F_MW_AUTH, &mw_auth),
        (F_MW_KEYED, &mw_keyed),
    ] {
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
        .layer(AuthLayer::new(provider).for_origin(ORIGIN))
        .service(instant);
    let mut keyed_layer = AuthLayer::keyed(keyed.clone());
    for (target, p) in routes(&keyed, &params) {
        keyed_layer = keyed_layer.route(&target, p);
    }
    let mut tower_keyed = ServiceBuilder::new().layer(keyed_layer).service(instant);
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
    group.bench_function(F_TOWER_KEYED, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let service = tower_keyed.ready().await.expect("always ready");
                    black_box(service.call(request()).await.expect("a response"));
                }
                start.elapsed()
            })
        });
    });
    group.finish();
}

fn print_ratios(ratios: &mut Ratios) {
    let lines = [
        (
            "in-process overhead, reqwest-middleware, for_origin",
            G_OVERHEAD_REQWEST,
            F_MW_AUTH,
            F_MW_STATIC,
            1.2,
        ),
        (
            "in-process overhead, reqwest-middleware, keyed with 3 routes",
            G_OVERHEAD_REQWEST,
            F_MW_KEYED,
            F_MW_STATIC,
            1.2,
        ),
        (
            "in-process overhead, tower, for_origin",
            G_OVERHEAD_TOWER,
            F_TOWER_AUTH,
            F_TOWER_STATIC,
            1.5,
        ),
        (
            "in-process overhead, tower, keyed with 3 routes",
            G_OVERHEAD_TOWER,
            F_TOWER_KEYED,
            F_TOWER_STATIC,
            1.5,
        ),
    ];
    for (label, group, variant, base, goal) in lines {
        match (
            ratios.estimate(group, variant),
            ratios.estimate(group, base),
        ) {
            (Some(v), Some(b)) => ratios.line(format_args!(
                "{label}: auth {}/req vs static header {}/req → ratio {:.2} (goal ≤ {goal}: {}); \
                 the auth wrapper adds {} per request (no network; the innermost service \
                 answers at once)",
                fmt_ns(v),
                fmt_ns(b),
                v / b,
                verdict(v / b <= goal),
                fmt_ns(v - b)
            )),
            _ => ratios.missing(group),
        }
    }
}
