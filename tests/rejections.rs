//! The 401 policy against real local APIs: a real revocation is recovered from at once, an
//! API that rejects every token cannot turn calls into token requests, the server's reason
//! is read (RFC 6750 §3), and a 401 the token never caused refreshes nothing.
#![cfg(feature = "reqwest")]

mod common;

use std::sync::Arc;

use common::*;
use httpmock::prelude::*;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use token_refresh::{AuthMiddleware, TokenProvider};

fn client(provider: TokenProvider) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(AuthMiddleware::new(provider))
        .build()
}

/// A token endpoint issuing `tok-1`, `tok-2`, … (a fresh value per request), and a provider.
async fn issuing(server: &MockServer, count: usize) -> (TokenProvider, Vec<httpmock::Mock<'_>>) {
    let replies = (1..=count)
        .map(|n| Reply::token(&format!("tok-{n}")))
        .collect();
    let mocks = scripted_token_server(server, replies).await;
    (TokenProvider::new(source(server).jti(true)), mocks)
}

#[tokio::test]
async fn an_api_that_rejects_every_token_gets_a_handful_of_token_requests() {
    let server = MockServer::start_async().await;
    let (provider, tokens) = issuing(&server, 50).await;
    let api = server
        .mock_async(|when, then| {
            when.method(GET).path("/v2/projects");
            then.status(401)
                .header("www-authenticate", r#"Bearer error="invalid_token""#);
        })
        .await;
    let client = client(provider);
    for _ in 0..1_000 {
        let response = client.get(server.url("/v2/projects")).send().await.unwrap();
        assert_eq!(response.status(), 401);
    }
    let (token_requests, sends) = (total_calls(&tokens).await, api.calls_async().await);
    println!(
        "1,000 sequential calls to an always-401 API: {token_requests} token requests, {sends} sends"
    );
    assert!(token_requests <= 5, "{token_requests} token requests");
    assert!(sends <= 1_005, "{sends} sends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_to_an_api_that_rejects_every_token() {
    let server = MockServer::start_async().await;
    let (provider, tokens) = issuing(&server, 50).await;
    let api = server
        .mock_async(|when, then| {
            when.method(GET).path("/v2/projects");
            then.status(401);
        })
        .await;
    let client = client(provider);
    let limit = Arc::new(tokio::sync::Semaphore::new(100));
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..1_000 {
        let (client, limit, url) = (client.clone(), limit.clone(), server.url("/v2/projects"));
        calls.spawn(async move {
            let _slot = limit.acquire().await.unwrap();
            client.get(url).send().await.unwrap().status()
        });
    }
    while let Some(status) = calls.join_next().await {
        assert_eq!(status.unwrap(), 401);
    }
    let (token_requests, sends) = (total_calls(&tokens).await, api.calls_async().await);
    println!(
        "1,000 calls at concurrency 100 to an always-401 API: {token_requests} token requests, {sends} sends"
    );
    assert!(token_requests <= 5, "{token_requests} token requests");
}

#[tokio::test]
async fn a_real_revocation_is_recovered_from_at_once() {
    let server = MockServer::start_async().await;
    let (provider, tokens) = issuing(&server, 3).await;
    let accepts_first = api_route(&server, GET, "/v2/projects", "tok-1", 200).await;
    let client = client(provider);
    for _ in 0..10 {
        assert_eq!(
            client
                .get(server.url("/v2/projects"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    // tok-1 is revoked: the API now takes only tok-2.
    accepts_first.delete_async().await;
    let revoked = api_route(&server, GET, "/v2/projects", "tok-1", 401).await;
    let accepted = api_route(&server, GET, "/v2/projects", "tok-2", 200).await;
    let response = client.get(server.url("/v2/projects")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(revoked.calls_async().await, 1, "one rejected send");
    assert_eq!(accepted.calls_async().await, 1, "one resend");
    assert_eq!(total_calls(&tokens).await, 2, "one refresh");
}

#[tokio::test]
async fn insufficient_scope_is_returned_without_a_refresh() {
    let server = MockServer::start_async().await;
    let (provider, tokens) = issuing(&server, 3).await;
    let api = server
        .mock_async(|when, then| {
            when.method(GET).path("/v2/admin");
            then.status(401).header(
                "www-authenticate",
                r#"Bearer realm="dt", error="insufficient_scope", scope="admin""#,
            );
        })
        .await;
    let client = client(provider);
    for _ in 0..100 {
        assert_eq!(
            client
                .get(server.url("/v2/admin"))
                .send()
                .await
                .unwrap()
                .status(),
            401
        );
    }
    assert_eq!(total_calls(&tokens).await, 1, "token requests");
    assert_eq!(api.calls_async().await, 100, "sends");
}

#[tokio::test]
async fn invalid_token_or_no_reason_is_refreshed_and_resent_once() {
    for challenge in [
        Some(r#"Bearer error="invalid_token""#),
        Some("Bearer"),
        None,
    ] {
        let server = MockServer::start_async().await;
        let (provider, tokens) = issuing(&server, 3).await;
        let rejected = server
            .mock_async(|when, then| {
                when.method(GET)
                    .path("/v2/projects")
                    .header("authorization", "Bearer tok-1");
                let then = then.status(401);
                if let Some(challenge) = challenge {
                    then.header("www-authenticate", challenge);
                }
            })
            .await;
        let accepted = server
            .mock_async(|when, then| {
                when.method(GET)
                    .path("/v2/projects")
                    .header("authorization", "Bearer tok-2");
                then.status(200);
            })
            .await;
        let response = client(provider)
            .get(server.url("/v2/projects"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{challenge:?}");
        assert_eq!(rejected.calls_async().await, 1, "{challenge:?}");
        assert_eq!(accepted.calls_async().await, 1, "{challenge:?}");
        assert_eq!(total_calls(&tokens).await, 2, "{challenge:?}");
    }
}

/// The API redirects to another origin whose answer is 401. reqwest does not send the token
/// there, so that 401 says nothing about the token: nothing is invalidated.
#[tokio::test]
async fn a_401_from_another_origin_refreshes_nothing() {
    let server = MockServer::start_async().await;
    let elsewhere = MockServer::start_async().await;
    let (provider, tokens) = issuing(&server, 20).await;
    let foreign = elsewhere
        .mock_async(|when, then| {
            when.method(GET)
                .path("/login")
                .header_missing("authorization");
            then.status(401);
        })
        .await;
    let leaked = elsewhere
        .mock_async(|when, then| {
            when.method(GET)
                .path("/login")
                .header_exists("authorization");
            then.status(401);
        })
        .await;
    let redirect = server
        .mock_async(|when, then| {
            when.method(GET)
                .path("/v2/projects")
                .header("authorization", "Bearer tok-1");
            then.status(302).header("location", elsewhere.url("/login"));
        })
        .await;
    let client = client(provider);
    for _ in 0..10 {
        let response = client.get(server.url("/v2/projects")).send().await.unwrap();
        assert_eq!(response.status(), 401);
    }
    assert_eq!(redirect.calls_async().await, 10);
    assert_eq!(foreign.calls_async().await, 10);
    assert_eq!(
        leaked.calls_async().await,
        0,
        "the other origin never saw a token"
    );
    assert_eq!(
        total_calls(&tokens).await,
        1,
        "10 such calls ⇒ 1 token request"
    );
}
