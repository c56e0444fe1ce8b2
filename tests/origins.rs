//! Tokens stay with their origin: a redirect to another origin, or a request built for one,
//! never carries the token there — with the documented layer order, and with `for_origin`
//! in any order.
#![cfg(all(feature = "tower", feature = "reqwest"))]

mod common;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use httpmock::prelude::*;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use token_refresh::{AuthLayer, AuthMiddleware, TokenProvider};
use tower::{ServiceBuilder, ServiceExt};
use tower_http::follow_redirect::FollowRedirectLayer;

fn http_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// The API origin redirects (307) to another origin, which answers after one more hop of
/// its own (`/hop` → `/landing`). Returns the mocks that count requests reaching the other
/// origin with and without a token.
struct Redirecting {
    api: MockServer,
    other: MockServer,
    /// Ids of the mocks that catch requests reaching `other` with an `Authorization` header.
    leak_mocks: Vec<usize>,
}

impl Redirecting {
    async fn start() -> Self {
        let api = MockServer::start_async().await;
        let other = MockServer::start_async().await;
        let hop = other.url("/hop");
        api.mock_async(move |when, then| {
            when.method(GET).path("/start");
            then.status(307).header("location", hop.as_str());
        })
        .await;
        let landing = other.url("/landing");
        let mut leak_mocks = Vec::new();
        // Each route answers the same with or without a token; the ones with count leaks.
        for token in [false, true] {
            let landing = landing.clone();
            let hop = other
                .mock_async(move |when, then| {
                    let when = when.method(GET).path("/hop");
                    if token {
                        when.header_exists("authorization")
                    } else {
                        when.header_missing("authorization")
                    };
                    then.status(307).header("location", landing.as_str());
                })
                .await;
            let end = other
                .mock_async(move |when, then| {
                    let when = when.method(GET).path("/landing");
                    if token {
                        when.header_exists("authorization")
                    } else {
                        when.header_missing("authorization")
                    };
                    then.status(200);
                })
                .await;
            if token {
                leak_mocks.extend([hop.id(), end.id()]);
            }
        }
        Self {
            api,
            other,
            leak_mocks,
        }
    }

    /// Requests that reached the other origin with an `Authorization` header.
    async fn leaks(&self) -> usize {
        let mut leaks = 0;
        for id in &self.leak_mocks {
            leaks += httpmock::Mock::new(*id, &self.other).calls_async().await;
        }
        leaks
    }
}

async fn provider(server: &MockServer) -> TokenProvider {
    token_endpoint(server, |then| {
        then.status(200).json_body(token_json("tok", 3600));
    })
    .await;
    TokenProvider::new(source(server))
}

fn start(api: &MockServer) -> Request<Full<Bytes>> {
    Request::get(api.url("/start"))
        .body(Full::default())
        .unwrap()
}

#[tokio::test]
async fn documented_order_follow_redirect_inside_auth_layer() {
    let r = Redirecting::start().await;
    let service = ServiceBuilder::new()
        .layer(AuthLayer::new(provider(&r.api).await))
        .layer(FollowRedirectLayer::new())
        .service(http_client());
    let response = service.oneshot(start(&r.api)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(r.leaks().await, 0, "the other origin saw the token");
}

#[tokio::test]
async fn for_origin_with_follow_redirect_outside() {
    let r = Redirecting::start().await;
    let service = ServiceBuilder::new()
        .layer(FollowRedirectLayer::new())
        .layer(AuthLayer::new(provider(&r.api).await).for_origin(&r.api.base_url()))
        .service(http_client());
    let response = service.oneshot(start(&r.api)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(r.leaks().await, 0, "the other origin saw the token");
}

#[tokio::test]
async fn for_origin_with_follow_redirect_inside() {
    let r = Redirecting::start().await;
    let service = ServiceBuilder::new()
        .layer(AuthLayer::new(provider(&r.api).await).for_origin(&r.api.base_url()))
        .layer(FollowRedirectLayer::new())
        .service(http_client());
    let response = service.oneshot(start(&r.api)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(r.leaks().await, 0, "the other origin saw the token");
}

/// Without `for_origin` and with `FollowRedirect` outside (the order the docs warn
/// against), every hop is a new request to `AuthLayer`: the test shows why the order matters.
#[tokio::test]
async fn follow_redirect_outside_without_for_origin_is_why_the_order_matters() {
    let r = Redirecting::start().await;
    let service = ServiceBuilder::new()
        .layer(FollowRedirectLayer::new())
        .layer(AuthLayer::new(provider(&r.api).await))
        .service(http_client());
    service.oneshot(start(&r.api)).await.unwrap();
    assert!(r.leaks().await > 0);
}

#[tokio::test]
async fn tower_requests_for_another_origin_go_without_a_token() {
    let r = Redirecting::start().await;
    let landing = r
        .other
        .mock_async(|when, then| {
            when.path("/direct").header_missing("authorization");
            then.status(200);
        })
        .await;
    let service = ServiceBuilder::new()
        .layer(AuthLayer::new(provider(&r.api).await).for_origin(&r.api.base_url()))
        .service(http_client());
    let request = Request::get(r.other.url("/direct"))
        .body(Full::default())
        .unwrap();
    assert_eq!(service.oneshot(request).await.unwrap().status(), 200);
    assert_eq!(landing.calls_async().await, 1);
}

#[tokio::test]
async fn reqwest_requests_for_another_origin_go_without_a_token() {
    let r = Redirecting::start().await;
    let landing = r
        .other
        .mock_async(|when, then| {
            when.path("/direct").header_missing("authorization");
            then.status(200);
        })
        .await;
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(AuthMiddleware::new(provider(&r.api).await).for_origin(&r.api.base_url()))
        .build();
    let response = client.get(r.other.url("/direct")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(landing.calls_async().await, 1);
}

/// reqwest's own redirects: with `AuthMiddleware::redirect_policy` a redirect to another
/// origin is returned instead of followed, so no hop there can carry the token.
#[tokio::test]
async fn reqwest_redirect_policy_stops_at_another_origin() {
    let r = Redirecting::start().await;
    let reqwest = reqwest::Client::builder()
        .redirect(AuthMiddleware::redirect_policy())
        .build()
        .unwrap();
    let client = reqwest_middleware::ClientBuilder::new(reqwest)
        .with(AuthMiddleware::new(provider(&r.api).await))
        .build();
    let response = client.get(r.api.url("/start")).send().await.unwrap();
    assert_eq!(response.status(), 307);
    assert_eq!(r.leaks().await, 0);
}

/// An invalid origin is an error at the first request, not a panic and not a silent "every
/// origin".
#[tokio::test]
async fn an_invalid_origin_is_a_clear_error() {
    let r = Redirecting::start().await;
    let service = ServiceBuilder::new()
        .layer(AuthLayer::new(provider(&r.api).await).for_origin("api.example.com"))
        .service(http_client());
    let error = service.oneshot(start(&r.api)).await.unwrap_err();
    let token_error = token_refresh::Error::find(&*error).expect("a token error");
    assert!(
        matches!(token_error, token_refresh::Error::Config(_)),
        "{token_error:?}"
    );
    assert!(
        token_error.to_string().contains("api.example.com"),
        "{token_error}"
    );
}
