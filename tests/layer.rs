//! `AuthLayer` / `AuthService` over a real HTTP client service (hyper-util) and tower
//! building blocks.
#![cfg(feature = "tower")]

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use httpmock::prelude::*;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use token_refresh::{AccessToken, AuthLayer, AuthService, BoxError, Error, TokenProvider};
use tower::{Service, ServiceBuilder, ServiceExt};

fn http_client<B>() -> Client<HttpConnector, B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Client::builder(TokioExecutor::new()).build_http()
}

async fn issuing<'a>(
    server: &'a MockServer,
    tokens: &[&str],
) -> (TokenProvider, Vec<httpmock::Mock<'a>>) {
    let replies = tokens.iter().map(|t| Reply::token(t)).collect();
    let mocks = scripted_token_server(server, replies).await;
    (TokenProvider::new(source(server).jti(true)), mocks)
}

fn get(url: String) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::default()).unwrap()
}

#[tokio::test]
async fn requests_carry_the_bearer_token() {
    let server = MockServer::start_async().await;
    let (provider, tokens) = issuing(&server, &["tok-1"]).await;
    let api = api_route(&server, GET, "/v2/projects", "tok-1", 200).await;
    let mut service = ServiceBuilder::new()
        .layer(AuthLayer::new(provider))
        .service(http_client());
    let response = service
        .ready()
        .await
        .unwrap()
        .call(get(server.url("/v2/projects")))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(api.calls_async().await, 1);
    assert_eq!(total_calls(&tokens).await, 1);
}

#[tokio::test]
async fn a_401_is_retried_once_with_the_same_body() {
    let server = MockServer::start_async().await;
    let (provider, tokens) = issuing(&server, &["tok-1", "tok-2"]).await;
    let body = json!({"value": 7});
    let revoked = api_route(&server, POST, "/v2/echo", "tok-1", 401).await;
    let accepted = server
        .mock_async(|when, then| {
            when.method(POST)
                .path("/v2/echo")
                .header("authorization", "Bearer tok-2")
                .json_body(body.clone());
            then.status(200);
        })
        .await;
    let service = AuthService::new(http_client(), provider);
    let request = Request::post(server.url("/v2/echo"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(revoked.calls_async().await, 1);
    assert_eq!(accepted.calls_async().await, 1);
    assert_eq!(total_calls(&tokens).await, 2);
}

#[tokio::test]
async fn two_401s_return_the_second_and_403_is_untouched() {
    let server = MockServer::start_async().await;
    let (provider, tokens) = issuing(&server, &["tok-1", "tok-2", "tok-3"]).await;
    let unauthorized = server
        .mock_async(|when, then| {
            when.method(GET).path("/v2/always-401");
            then.status(401);
        })
        .await;
    let forbidden = server
        .mock_async(|when, then| {
            when.method(GET).path("/v2/forbidden");
            then.status(403);
        })
        .await;
    let service = AuthService::new(http_client(), provider);
    let response = service
        .clone()
        .oneshot(get(server.url("/v2/always-401")))
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(unauthorized.calls_async().await, 2);
    assert_eq!(total_calls(&tokens).await, 2);

    let response = service
        .oneshot(get(server.url("/v2/forbidden")))
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(forbidden.calls_async().await, 1);
    assert_eq!(total_calls(&tokens).await, 2, "a 403 refreshes nothing");
}

#[tokio::test]
async fn a_boxed_body_is_recorded_and_resent_byte_identical() {
    let server = MockServer::start_async().await;
    let (provider, tokens) = issuing(&server, &["tok-1", "tok-2"]).await;
    let rejected = api_route(&server, POST, "/v2/echo", "tok-1", 401).await;
    let accepted = server
        .mock_async(|when, then| {
            when.method(POST)
                .path("/v2/echo")
                .header("authorization", "Bearer tok-2")
                .body("streamed in three chunks");
            then.status(200);
        })
        .await;
    let service = AuthService::new(http_client::<BoxBody<Bytes, Infallible>>(), provider);
    let chunks = ["streamed ", "in three ", "chunks"].map(|c| Ok(Frame::data(Bytes::from(c))));
    let body = StreamBody::new(tokio_stream::iter(chunks)).boxed();
    let request = Request::post(server.url("/v2/echo")).body(body).unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(rejected.calls_async().await, 1);
    assert_eq!(accepted.calls_async().await, 1);
    assert_eq!(total_calls(&tokens).await, 2);
}

#[tokio::test]
async fn a_body_over_the_replay_limit_gets_its_401_back() {
    let server = MockServer::start_async().await;
    let (provider, tokens) = issuing(&server, &["tok-1", "tok-2"]).await;
    let api = server
        .mock_async(|when, then| {
            when.method(POST).path("/v2/echo");
            then.status(401);
        })
        .await;
    let service = ServiceBuilder::new()
        .layer(AuthLayer::new(provider.clone()).replay_limit(8))
        .service(http_client::<BoxBody<Bytes, Infallible>>());
    let chunks = ["more than ", "eight bytes"].map(|c| Ok(Frame::data(Bytes::from(c))));
    let body = StreamBody::new(tokio_stream::iter(chunks)).boxed();
    let request = Request::post(server.url("/v2/echo")).body(body).unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(api.calls_async().await, 1, "not resent");
    // The rejected token was invalidated all the same: the next call fetches a new one.
    provider.token().await.unwrap();
    assert_eq!(total_calls(&tokens).await, 2);
}

#[tokio::test]
async fn an_empty_boxed_body_is_replayed() {
    let server = MockServer::start_async().await;
    let (provider, tokens) = issuing(&server, &["tok-1", "tok-2"]).await;
    api_route(&server, GET, "/v2/projects", "tok-1", 401).await;
    let accepted = api_route(&server, GET, "/v2/projects", "tok-2", 200).await;
    let service = AuthService::new(http_client::<BoxBody<Bytes, Infallible>>(), provider);
    let body = http_body_util::Empty::<Bytes>::new().boxed();
    let request = Request::get(server.url("/v2/projects")).body(body).unwrap();
    assert_eq!(service.oneshot(request).await.unwrap().status(), 200);
    assert_eq!(accepted.calls_async().await, 1);
    assert_eq!(total_calls(&tokens).await, 2);
}

#[tokio::test]
async fn a_token_failure_is_a_boxed_token_refresh_error() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let api = tower::service_fn(move |_req: Request<Full<Bytes>>| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Infallible>(Response::new(())) }
    });
    let provider = TokenProvider::builder(
        token_refresh::JwtBearer::new(account()).token_url(closed_port_url()),
    )
    .max_attempts(1)
    .build();
    let error: BoxError = AuthService::new(api, provider)
        .oneshot(get("https://api.example.com/v2/projects".into()))
        .await
        .unwrap_err();
    assert!(
        matches!(error.downcast_ref::<Error>(), Some(Error::Connect(_))),
        "{error}"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "the API is never called without a token"
    );
}

/// An in-process API that answers with the status for the token it sees.
fn echo_api() -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<String>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(|req: Request<Full<Bytes>>| async move {
        let auth = req
            .headers()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        Ok::<_, Infallible>(Response::new(auth))
    })
}

fn static_provider() -> TokenProvider {
    TokenProvider::new(|| async { AccessToken::new("static", Duration::from_secs(3600)) })
}

#[tokio::test]
async fn plain_http_to_a_public_host_is_refused_unless_allowed() {
    let strict = ServiceBuilder::new()
        .layer(AuthLayer::new(static_provider()))
        .service(echo_api());
    let error = strict
        .oneshot(get("http://api.example.com/v2/projects".into()))
        .await
        .unwrap_err();
    assert!(matches!(
        error.downcast_ref::<Error>(),
        Some(Error::InsecureTransport { .. })
    ));
    assert!(error.to_string().contains("allow_http"));

    let relaxed = ServiceBuilder::new()
        .layer(AuthLayer::new(static_provider()).allow_http(true))
        .service(echo_api());
    let response = relaxed
        .oneshot(get("http://api.example.com/v2/projects".into()))
        .await
        .unwrap();
    assert_eq!(response.body(), "Bearer static");

    for loopback in [
        "http://127.0.0.1:9/x",
        "http://localhost/x",
        "http://[::1]:80/x",
    ] {
        let service = AuthService::new(echo_api(), static_provider());
        let response = service.oneshot(get(loopback.into())).await.unwrap();
        assert_eq!(response.body(), "Bearer static", "{loopback}");
    }
}

#[tokio::test]
async fn a_caller_set_authorization_header_is_left_alone() {
    let service = AuthService::new(echo_api(), static_provider());
    let request = Request::get("https://api.example.com/")
        .header("authorization", "Basic abc")
        .body(Full::default())
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.body(), "Basic abc");
}

#[tokio::test]
async fn poll_ready_back_pressure_is_respected() {
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let gate = release.clone();
    let api = tower::service_fn(move |_req: Request<Full<Bytes>>| {
        let gate = gate.clone();
        async move {
            let _permit = gate.acquire().await.unwrap();
            Ok::<_, Infallible>(Response::builder().status(StatusCode::OK).body(()).unwrap())
        }
    });
    let mut service = ServiceBuilder::new()
        .layer(AuthLayer::new(static_provider()))
        .concurrency_limit(1)
        .service(api);

    service.ready().await.unwrap();
    let first = tokio::spawn(service.call(get("https://api.example.com/1".into())));
    // The one slot is taken by the request in flight: the service is not ready.
    let mut clone = service.clone();
    let ready_now = std::future::poll_fn(|cx| Poll::Ready(clone.poll_ready(cx).is_ready())).await;
    assert!(
        !ready_now,
        "AuthService must pass the inner service's back-pressure through"
    );

    release.add_permits(1);
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    clone.ready().await.unwrap();
}

#[test]
fn service_is_clone_send_and_its_future_is_send() {
    fn assert_clone_send<T: Clone + Send + Sync>(_: &T) {}
    fn assert_send<T: Send>(_: &T) {}
    let _rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut service = AuthService::new(http_client::<Full<Bytes>>(), static_provider());
    assert_clone_send(&service);
    let future = service.call(get("https://api.example.com/".into()));
    assert_send(&future);
    let layer = AuthLayer::new(static_provider());
    assert_clone_send(&layer);
}

#[tokio::test]
async fn an_endless_token_wait_setting_does_not_overflow() {
    let service = ServiceBuilder::new()
        .layer(AuthLayer::new(static_provider()).max_token_wait(Duration::MAX))
        .service(echo_api());
    let response = service
        .oneshot(get("https://api.example.com/".into()))
        .await
        .unwrap();
    assert_eq!(response.body(), "Bearer static");
}
