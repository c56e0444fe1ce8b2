//! `AuthMiddleware` on a reqwest-middleware client, against real local servers.
#![cfg(feature = "reqwest")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use httpmock::prelude::*;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use serde_json::json;
use token_refresh::{AuthMiddleware, Error, TokenProvider};
use tokio::sync::Barrier;

fn client(provider: TokenProvider) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(AuthMiddleware::new(provider))
        .build()
}

/// A token endpoint that issues `tokens` in order (then repeats the last), and a provider.
async fn issuing<'a>(
    server: &'a MockServer,
    tokens: &[&str],
) -> (TokenProvider, Vec<httpmock::Mock<'a>>) {
    let replies = tokens.iter().map(|t| Reply::token(t)).collect();
    let mocks = scripted_token_server(server, replies).await;
    (TokenProvider::new(source(server).jti(true)), mocks)
}

#[tokio::test]
async fn requests_carry_the_bearer_token() {
    let server = MockServer::start_async().await;
    let (provider, tokens) = issuing(&server, &["tok-1"]).await;
    let api = server
        .mock_async(|when, then| {
            when.method(GET)
                .path("/v2/projects")
                .header("authorization", "Bearer tok-1");
            then.status(200).json_body(json!({"projects": []}));
        })
        .await;
    let response = client(provider)
        .get(server.url("/v2/projects"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(api.calls_async().await, 1);
    assert_eq!(total_calls(&tokens).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_requests_on_a_cold_cache_fetch_one_token() {
    let server = MockServer::start_async().await;
    let token_mock = token_endpoint(&server, |then| {
        then.status(200)
            .json_body(token_json("tok", 3600))
            .delay(Duration::from_millis(50));
    })
    .await;
    let api = api_route(&server, GET, "/v2/projects", "tok", 200).await;
    let client = client(TokenProvider::new(source(&server)));
    let barrier = Arc::new(Barrier::new(50));
    let url = server.url("/v2/projects");
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (client, barrier, url) = (client.clone(), barrier.clone(), url.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                client.get(url).send().await.unwrap().status()
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    assert_eq!(token_mock.calls_async().await, 1);
    assert_eq!(api.calls_async().await, 50);
}

#[tokio::test]
async fn a_401_is_retried_once_with_a_fresh_token_and_the_same_body() {
    let server = MockServer::start_async().await;
    let (provider, tokens) = issuing(&server, &["tok-1", "tok-2"]).await;
    let body = json!({"name": "sensor", "value": 42});
    let revoked = server
        .mock_async(|when, then| {
            when.method(POST)
                .path("/v2/echo")
                .header("authorization", "Bearer tok-1");
            then.status(401)
                .header("www-authenticate", "Bearer error=\"invalid_token\"");
        })
        .await;
    let accepted = server
        .mock_async(|when, then| {
            when.method(POST)
                .path("/v2/echo")
                .header("authorization", "Bearer tok-2")
                .json_body(body.clone());
            then.status(200).json_body(json!({"echo": true}));
        })
        .await;
    let response = client(provider)
        .post(server.url("/v2/echo"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(revoked.calls_async().await, 1);
    assert_eq!(accepted.calls_async().await, 1);
    assert_eq!(total_calls(&tokens).await, 2);
}

#[tokio::test]
async fn two_401s_in_a_row_return_the_second() {
    let server = MockServer::start_async().await;
    let (provider, tokens) = issuing(&server, &["tok-1", "tok-2", "tok-3"]).await;
    let api = server
        .mock_async(|when, then| {
            when.method(GET).path("/v2/projects");
            then.status(401).body("second");
        })
        .await;
    let response = client(provider)
        .get(server.url("/v2/projects"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(api.calls_async().await, 2, "no third attempt");
    assert_eq!(total_calls(&tokens).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_401s_for_one_token_refreshes_once() {
    let server = MockServer::start_async().await;
    let (provider, tokens) = issuing(&server, &["tok-1", "tok-2", "tok-3"]).await;
    let client = client(provider.clone());
    provider.token().await.unwrap(); // tok-1 is cached, then revoked at the server
    api_route(&server, GET, "/v2/projects", "tok-1", 401).await;
    let accepted = api_route(&server, GET, "/v2/projects", "tok-2", 200).await;
    let barrier = Arc::new(Barrier::new(100));
    let url = server.url("/v2/projects");
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (client, barrier, url) = (client.clone(), barrier.clone(), url.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                client.get(url).send().await.unwrap().status()
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    assert_eq!(
        total_calls(&tokens).await,
        2,
        "exactly one extra token request"
    );
    assert_eq!(accepted.calls_async().await, 100);
}

#[tokio::test]
async fn a_streaming_body_gets_its_401_back() {
    let server = MockServer::start_async().await;
    let (provider, tokens) = issuing(&server, &["tok-1", "tok-2"]).await;
    let api = server
        .mock_async(|when, then| {
            when.method(POST).path("/v2/echo");
            then.status(401);
        })
        .await;
    // A wrapped body is a stream to reqwest: it cannot be cloned, so it cannot be resent.
    let stream = reqwest::Body::wrap(http_body_util::Full::new(bytes::Bytes::from("data")));
    let response = client(provider)
        .post(server.url("/v2/echo"))
        .body(stream)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(api.calls_async().await, 1);
    assert_eq!(total_calls(&tokens).await, 1, "no refresh is waited for");
}

#[tokio::test]
async fn a_403_is_returned_untouched() {
    let server = MockServer::start_async().await;
    let (provider, tokens) = issuing(&server, &["tok-1", "tok-2"]).await;
    let api = server
        .mock_async(|when, then| {
            when.method(GET).path("/v2/projects");
            then.status(403).body("forbidden");
        })
        .await;
    let response = client(provider)
        .get(server.url("/v2/projects"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(response.text().await.unwrap(), "forbidden");
    assert_eq!(api.calls_async().await, 1);
    assert_eq!(total_calls(&tokens).await, 1);
}

#[tokio::test]
async fn a_token_failure_is_a_middleware_error_that_error_find_finds() {
    let server = MockServer::start_async().await;
    token_endpoint(&server, |then| {
        then.status(400)
            .json_body(json!({"error": "invalid_client"}));
    })
    .await;
    let api = server
        .mock_async(|when, then| {
            when.any_request();
            then.status(200);
        })
        .await;
    let error = client(TokenProvider::new(source(&server)))
        .get(server.url("/v2/projects"))
        .send()
        .await
        .unwrap_err();
    let reqwest_middleware::Error::Middleware(inner) = &error else {
        panic!("expected a middleware error, got {error:?}");
    };
    let cause = Error::find(&**inner).expect("a token_refresh::Error");
    assert_eq!(cause.oauth_error(), Some("invalid_client"));
    assert!(error.to_string().contains("invalid_client"), "{error}");
    assert_eq!(
        api.calls_async().await,
        0,
        "the API is never called without a token"
    );
}

#[tokio::test]
async fn a_token_endpoint_that_is_down_is_reported() {
    let provider = TokenProvider::builder(
        token_refresh::JwtBearer::new(account()).token_url(closed_port_url()),
    )
    .max_attempts(1)
    .build();
    let error = client(provider)
        .get("https://api.example.com/v2/projects")
        .send()
        .await
        .unwrap_err();
    let reqwest_middleware::Error::Middleware(inner) = &error else {
        panic!("expected a middleware error, got {error:?}");
    };
    assert!(
        matches!(Error::find(&**inner), Some(Error::Connect(_))),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_caller_set_authorization_header_is_left_alone() {
    let server = MockServer::start_async().await;
    let (provider, tokens) = issuing(&server, &["tok-1"]).await;
    let api = server
        .mock_async(|when, then| {
            when.method(GET)
                .path("/v2/projects")
                .header("authorization", "Basic abc");
            then.status(401);
        })
        .await;
    let response = client(provider)
        .get(server.url("/v2/projects"))
        .header("authorization", "Basic abc")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(api.calls_async().await, 1);
    assert_eq!(total_calls(&tokens).await, 0);
}

#[tokio::test]
async fn plain_http_to_a_public_host_is_refused_unless_allowed() {
    let server = MockServer::start_async().await;
    let (provider, tokens) = issuing(&server, &["tok-1"]).await;
    let api = api_route(&server, GET, "/v2/projects", "tok-1", 200).await;
    // `api.example.com` resolves to the local mock server, but is not a loopback name.
    let reqwest = || {
        reqwest::Client::builder()
            .resolve("api.example.com", *server.address())
            .build()
            .unwrap()
    };
    let url = format!("http://api.example.com:{}/v2/projects", server.port());

    let strict = ClientBuilder::new(reqwest())
        .with(AuthMiddleware::new(provider.clone()))
        .build();
    let error = strict.get(&url).send().await.unwrap_err();
    let reqwest_middleware::Error::Middleware(inner) = &error else {
        panic!("expected a middleware error, got {error:?}");
    };
    assert!(matches!(
        Error::find(&**inner),
        Some(Error::InsecureTransport { .. })
    ));
    assert!(
        error.to_string().contains("allow_http"),
        "the error names the setting: {error}"
    );
    assert_eq!(total_calls(&tokens).await, 0);
    assert_eq!(api.calls_async().await, 0);

    let relaxed = ClientBuilder::new(reqwest())
        .with(AuthMiddleware::new(provider).allow_http(true))
        .build();
    assert_eq!(relaxed.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(api.calls_async().await, 1);

    // Loopback needs no setting (the other tests use 127.0.0.1).
}
