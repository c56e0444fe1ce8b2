//! DPoP through both integrations, against the emulator's API, which verifies each request's
//! proof (signature, `htm`, `htu`, `iat`, `jti` replay, `ath`, the token's key) and can demand
//! a nonce: `Authorization: DPoP` with a fresh proof per request, the nonce 401 answered once
//! with the body replayed and no refresh, nonces kept per origin, and tonic calls over DPoP.
#![cfg(all(feature = "reqwest", feature = "tower"))]

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use reqwest_middleware::ClientBuilder;
use token_refresh::dpop::DpopKey;
use token_refresh::{AuthLayer, AuthMiddleware, TokenProvider};
use token_refresh_emulator::Emulator;
use tower::{ServiceBuilder, ServiceExt};

fn provider(emulator: &Emulator) -> TokenProvider {
    TokenProvider::new(emulator.client_credentials().dpop(DpopKey::generate()))
}

fn reqwest_client(provider: TokenProvider) -> reqwest_middleware::ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(AuthMiddleware::new(provider))
        .build()
}

#[tokio::test]
async fn reqwest_requests_carry_dpop_and_a_fresh_proof_each() {
    let emulator = Emulator::start().await.unwrap();
    let client = reqwest_client(provider(&emulator));
    for _ in 0..3 {
        let response = client
            .get(format!("{}/projects", emulator.api_url()))
            .send()
            .await
            .unwrap();
        // The emulator refuses a replayed jti, a wrong htu or ath, and bearer use.
        assert_eq!(response.status(), 200);
    }
    let stats = emulator.stats();
    assert_eq!((stats.token_requests, stats.api_unauthorized), (1, 0));
}

#[tokio::test]
async fn a_nonce_401_is_answered_once_with_the_body_replayed_and_no_refresh() {
    let emulator = Emulator::start().await.unwrap();
    let client = reqwest_client(provider(&emulator));
    let echo = format!("{}/echo", emulator.api_url());
    assert_eq!(
        client
            .get(format!("{}/projects", emulator.api_url()))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    emulator.require_api_dpop_nonce(true);
    let response = client
        .post(&echo)
        .header("content-type", "application/json")
        .body(r#"{"replayed":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), r#"{"replayed":true}"#);
    let stats = emulator.stats();
    assert_eq!(stats.token_requests, 1, "a nonce is no reason to refresh");
    assert_eq!((stats.api_requests, stats.api_unauthorized), (3, 1));
    // The nonce is kept for the origin: the next request needs no dance.
    client.post(&echo).body("{}").send().await.unwrap();
    assert_eq!(emulator.stats().api_requests, 4);
    // Rotated mid-run: one more 401, one more resend.
    emulator.rotate_dpop_nonce();
    let response = client.post(&echo).body("{}").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let stats = emulator.stats();
    assert_eq!((stats.api_requests, stats.api_unauthorized), (6, 2));
    assert_eq!(stats.token_requests, 1);
}

#[tokio::test]
async fn a_hundred_concurrent_requests_meeting_a_new_nonce_are_each_resent_at_most_once() {
    let emulator = Arc::new(Emulator::start().await.unwrap());
    let client = reqwest_client(provider(&emulator));
    let url = format!("{}/projects", emulator.api_url());
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    emulator.require_api_dpop_nonce(true);
    let before = emulator.stats();
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { client.get(&url).send().await.unwrap().status() })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    let after = emulator.stats();
    let requests = after.api_requests - before.api_requests;
    println!(
        "100 concurrent requests meeting a nonce: {requests} API requests, {} token requests",
        after.token_requests - before.token_requests
    );
    assert!(requests <= 200, "{requests}");
    assert_eq!(after.token_requests, before.token_requests);
}

#[tokio::test]
async fn a_tower_stack_carries_dpop_and_replays_a_streaming_body_after_a_nonce_401() {
    use http_body_util::StreamBody;
    use http_body_util::combinators::BoxBody;
    use std::convert::Infallible;

    let emulator = Emulator::start().await.unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http::<BoxBody<Bytes, Infallible>>();
    let service = ServiceBuilder::new()
        .layer(AuthLayer::new(provider(&emulator)))
        .service(client);
    emulator.require_api_dpop_nonce(true);
    let chunks = vec![
        Ok::<_, Infallible>(http_body::Frame::data(Bytes::from_static(
            b"{\"streamed\":",
        ))),
        Ok(http_body::Frame::data(Bytes::from_static(b"true}"))),
    ];
    let body = StreamBody::new(tokio_stream::iter(chunks)).boxed();
    let request = http::Request::post(format!("{}/echo", emulator.api_url()))
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&text[..], br#"{"streamed":true}"#);
    let stats = emulator.stats();
    assert_eq!(
        (
            stats.api_requests,
            stats.api_unauthorized,
            stats.token_requests
        ),
        (2, 1, 1)
    );
}

#[cfg(feature = "tonic")]
#[tokio::test]
async fn tonic_calls_go_over_dpop() {
    use token_refresh_emulator::grpc::EchoClient;
    let emulator = Emulator::start().await.unwrap();
    let channel = tonic::transport::Endpoint::from_shared(emulator.origin())
        .unwrap()
        .connect()
        .await
        .unwrap();
    // A channel's requests name only their path: the proof's htu comes from the origin.
    let channel = ServiceBuilder::new()
        .layer(AuthLayer::new(provider(&emulator)).for_origin(&emulator.origin()))
        .service(channel);
    let mut client = EchoClient::new(channel);
    for _ in 0..2 {
        let answer = client.unary(Bytes::from_static(b"hello")).await.unwrap();
        assert_eq!(answer, Bytes::from_static(b"hello"));
    }
    let stats = emulator.stats();
    assert_eq!(
        (
            stats.grpc_calls,
            stats.grpc_unauthenticated,
            stats.token_requests
        ),
        (2, 0, 1)
    );
    assert_eq!(stats.dpop_tokens, 1);
}

#[tokio::test]
async fn a_bearer_token_is_still_sent_as_bearer() {
    let emulator = Emulator::start().await.unwrap();
    let client = reqwest_client(TokenProvider::new(emulator.client_credentials()));
    let response = client
        .get(format!("{}/projects", emulator.api_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(emulator.stats().dpop_tokens, 0);
}
