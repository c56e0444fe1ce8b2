//! `AuthLayer` with the bodies real stacks use: a proxy forwarding `hyper::body::Incoming`,
//! and large in-memory bodies, which must not be copied for a resend they cannot get.
//!
//! This binary counts allocations (its own global allocator), so it holds only these tests.
#![cfg(feature = "tower")]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use httpmock::prelude::*;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use token_refresh::{AuthLayer, AuthService, TokenProvider};
use tower::{Service, ServiceBuilder, ServiceExt};

/// Counts, per thread, allocations of at least [`LARGE`] bytes.
struct Counting;

const LARGE: usize = 1 << 20;

thread_local! {
    static LARGE_ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= LARGE {
            let _ = LARGE_ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size >= LARGE {
            let _ = LARGE_ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn large_allocations() -> usize {
    LARGE_ALLOCATIONS.with(Cell::get)
}

async fn provider(server: &MockServer) -> (TokenProvider, httpmock::Mock<'_>) {
    let mock = token_endpoint(server, |then| {
        then.status(200).json_body(token_json("tok", 3600));
    })
    .await;
    (TokenProvider::new(source(server)), mock)
}

/// A 32 MiB `Vec<u8>` body answered 200: the layer makes no copy of it (it is over the
/// replay limit, so it could not be resent anyway). The API runs on httpmock's own threads;
/// only this thread's allocations are counted, on a current-thread runtime.
#[tokio::test(flavor = "current_thread")]
async fn a_32_mib_vec_body_is_not_copied() {
    let server = MockServer::start_async().await;
    let (provider, _) = provider(&server).await;
    provider.token().await.unwrap(); // warm: the token request's own allocations are not the body's
    let api = server
        .mock_async(|when, then| {
            when.method(POST)
                .path("/upload")
                .header("authorization", "Bearer tok");
            then.status(200);
        })
        .await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    // The inner service turns the Vec into bytes without copying (Bytes::from(Vec)).
    let inner = tower::service_fn(move |request: Request<Vec<u8>>| {
        client.request(request.map(|body| Full::new(Bytes::from(body))))
    });
    let mut service = ServiceBuilder::new()
        .layer(AuthLayer::new(provider))
        .service(inner);
    let body = vec![7u8; 32 << 20];
    let request = Request::post(server.url("/upload")).body(body).unwrap();

    let before = large_allocations();
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    let after = large_allocations();
    assert_eq!(response.status(), 200);
    assert_eq!(api.calls_async().await, 1);
    assert_eq!(
        after - before,
        0,
        "allocations of 1 MiB or more while sending the body"
    );
}

/// The same body a little over the limit as a `String`: sent once, never copied, and its 401
/// comes back as it is.
#[tokio::test(flavor = "current_thread")]
async fn a_large_string_body_is_neither_copied_nor_resent() {
    let server = MockServer::start_async().await;
    let (provider, tokens) = provider(&server).await;
    provider.token().await.unwrap();
    let api = server
        .mock_async(|when, then| {
            when.method(POST).path("/upload");
            then.status(401);
        })
        .await;
    let client = Client::builder(TokioExecutor::new()).build_http::<String>();
    let service = AuthService::new(client, provider);
    let body = "x".repeat(2 << 20);
    let request = Request::post(server.url("/upload")).body(body).unwrap();
    let before = large_allocations();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(large_allocations() - before, 0);
    assert_eq!(response.status(), 401);
    assert_eq!(api.calls_async().await, 1, "not resent");
    assert_eq!(tokens.calls_async().await, 1);
}

/// A proxy that forwards incoming requests (`Request<Incoming>`) through `AuthLayer` to an
/// upstream API: it compiles as it is and authorizes what it forwards.
#[tokio::test]
async fn a_proxy_forwarding_incoming_bodies_authorizes_them() {
    let server = MockServer::start_async().await;
    let (provider, _) = provider(&server).await;
    let upstream = server
        .mock_async(|when, then| {
            when.method(POST)
                .path("/v2/echo")
                .header("authorization", "Bearer tok")
                .body("forwarded");
            then.status(200).body("ok");
        })
        .await;
    let upstream_base = server.base_url();
    let client = Client::builder(TokioExecutor::new()).build_http::<Incoming>();
    let forward = ServiceBuilder::new()
        .layer(AuthLayer::new(provider))
        .service(client);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            let path = request.uri().path_and_query().unwrap().as_str().to_owned();
            *request.uri_mut() = format!("{upstream_base}{path}").parse().unwrap();
            let forward = forward.clone();
            async move {
                let response = forward.oneshot(request).await.unwrap();
                let (parts, body) = response.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                Ok::<_, Infallible>(Response::from_parts(parts, Full::new(body)))
            }
        });
        hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await
            .unwrap();
    });

    let response = reqwest::Client::new()
        .post(format!("http://{proxy}/v2/echo"))
        .body("forwarded")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "ok");
    assert_eq!(upstream.calls_async().await, 1);
}
