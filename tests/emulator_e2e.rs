//! The middleware end to end against the emulator: revocation, short TTLs, injected faults.
#![cfg(feature = "reqwest")]

use std::time::Duration;

use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use token_refresh::{AuthMiddleware, Error, JwtBearer, TokenProvider};
use token_refresh_emulator::{Emulator, Fault};

fn client_for(emulator: &Emulator) -> (ClientWithMiddleware, TokenProvider) {
    let provider = TokenProvider::builder(JwtBearer::new(emulator.account()))
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
        .cooldown(Duration::from_millis(100))
        .build();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(AuthMiddleware::new(provider.clone()))
        .build();
    (client, provider)
}

#[tokio::test]
async fn revoking_all_tokens_mid_stream_is_absorbed_by_one_retry() {
    let emulator = Emulator::start().await.unwrap();
    let (client, _) = client_for(&emulator);
    let url = format!("{}/projects", emulator.api_url());
    for i in 0..20 {
        if i == 10 {
            emulator.revoke_all();
        }
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200, "request {i}");
    }
    let stats = emulator.stats();
    assert_eq!(stats.token_requests, 2);
    assert_eq!(
        stats.api_unauthorized, 1,
        "only the request after the revocation saw a 401"
    );
    assert_eq!(stats.api_requests, 21);
}

#[tokio::test]
async fn short_ttl_tokens_are_refreshed_before_they_expire() {
    let emulator = Emulator::builder()
        .token_ttl(Duration::from_secs(1))
        .start()
        .await
        .unwrap();
    let (client, _) = client_for(&emulator);
    let body = serde_json::json!({"n": 1}).to_string();
    for i in 0..25 {
        let response = client
            .post(format!("{}/echo", emulator.api_url()))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "request {i}");
        assert_eq!(response.text().await.unwrap(), body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = emulator.stats();
    assert_eq!(
        stats.api_unauthorized, 0,
        "no request was sent with an expired token"
    );
    // 2.5 s of requests with 1 s tokens replaced at 80 % of their life: at least 3 tokens.
    assert!(stats.token_requests >= 3, "{stats:?}");
}

#[tokio::test]
async fn injected_faults_behave_as_the_provider_promises() {
    let emulator = Emulator::start().await.unwrap();
    let url = format!("{}/projects", emulator.api_url());

    // Transient: two 503s and a dropped connection, then success within one refresh.
    emulator.inject_fault(Fault::status(503), 2);
    emulator.inject_fault(Fault::DropConnection, 1);
    let (client, _) = client_for(&emulator);
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(emulator.stats().token_requests, 4);

    // Permanent: invalid_grant fails fast with one request and names the error.
    let emulator = Emulator::start().await.unwrap();
    emulator.inject_fault(Fault::oauth_error(400, "invalid_grant"), 1);
    let (client, _) = client_for(&emulator);
    let error = client
        .get(format!("{}/projects", emulator.api_url()))
        .send()
        .await
        .unwrap_err();
    let reqwest_middleware::Error::Middleware(inner) = &error else {
        panic!("expected a middleware error: {error:?}");
    };
    assert_eq!(
        Error::find(&**inner).and_then(Error::oauth_error),
        Some("invalid_grant")
    );
    let stats = emulator.stats();
    assert_eq!((stats.token_requests, stats.api_requests), (1, 0));

    // After the cool-down the provider recovers.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let response = client
        .get(format!("{}/projects", emulator.api_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(emulator.stats().token_requests, 2);
}
