//! RFC 9728 discovery from the resource itself: from only a client and an allowed issuer,
//! a protected API's 401 leads to its metadata, its authorization server and a token for it;
//! a hostile API cannot point the client (and its secret) at a server of its choosing.

use std::sync::Arc;

use reqwest_middleware::ClientBuilder;
use token_refresh::{AuthLayer, AuthMiddleware, OAuthClient};
use token_refresh_emulator::{Answer, Emulator, ScriptedServer};

async fn protected_emulator() -> Emulator {
    let emulator = Emulator::start().await.unwrap();
    emulator.publish_resource_metadata(true);
    emulator.require_resource(true);
    emulator
}

fn client_of(emulator: &Emulator) -> OAuthClient {
    OAuthClient::new(emulator.client_id(), emulator.client_secret())
}

#[tokio::test]
async fn cold_discovery_ends_in_200_and_the_next_thousand_calls_discover_nothing() {
    let emulator = protected_emulator().await;
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(AuthMiddleware::discovering(client_of(&emulator)).allow_issuers([emulator.issuer()]))
        .build();
    let url = format!("{}/projects", emulator.api_url());
    let first = client.get(&url).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let stats = emulator.stats();
    assert_eq!(
        (
            stats.resource_metadata_requests,
            stats.discovery_requests,
            stats.token_requests
        ),
        (1, 1, 1),
        "one metadata fetch, one AS discovery, one token request"
    );
    assert_eq!(stats.api_unauthorized, 1, "the one 401 that started it");
    for _ in 0..1_000 {
        assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    }
    let stats = emulator.stats();
    assert_eq!(
        (
            stats.resource_metadata_requests,
            stats.discovery_requests,
            stats.token_requests,
            stats.api_unauthorized
        ),
        (1, 1, 1, 1),
        "later calls carry the token at once"
    );
}

#[tokio::test]
async fn the_tower_layer_discovers_the_same_way() {
    use tower::{Service as _, ServiceExt as _};

    let emulator = protected_emulator().await;
    let mut service = tower::ServiceBuilder::new()
        .layer(AuthLayer::discovering(client_of(&emulator)).allow_issuers([emulator.issuer()]))
        .service(
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<bytes::Bytes>>(),
        );
    let url = format!("{}/projects", emulator.api_url());
    for _ in 0..3 {
        let request = http::Request::get(&url)
            .body(http_body_util::Full::default())
            .unwrap();
        let response = service.ready().await.unwrap().call(request).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let stats = emulator.stats();
    assert_eq!(
        (
            stats.resource_metadata_requests,
            stats.token_requests,
            stats.api_unauthorized
        ),
        (1, 1, 1)
    );
}

/// A hostile (or compromised) API whose metadata names an issuer the user never allowed:
/// the 401 comes back, and the client's secret goes nowhere — the issuer gets no request.
#[tokio::test]
async fn an_issuer_that_is_not_allowed_gets_no_request() {
    let emulator = Emulator::start().await.unwrap();
    let evil = ScriptedServer::start(|_| Answer::json(200, r#"{"issuer":"nope"}"#))
        .await
        .unwrap();
    let evil_issuer = evil.url("");
    let api_slot: Arc<std::sync::OnceLock<String>> = Arc::default();
    let api_origin = Arc::clone(&api_slot);
    let api = ScriptedServer::start(move |request| {
        let origin = api_origin.get().cloned().unwrap_or_default();
        if request
            .uri
            .starts_with("/.well-known/oauth-protected-resource")
        {
            return Answer::json(
                200,
                serde_json::json!({
                    "resource": format!("{origin}/mcp"),
                    "authorization_servers": [evil_issuer.clone()],
                }),
            );
        }
        Answer::json(401, r#"{"error":"unauthorized"}"#).header(
            "www-authenticate",
            format!(
                r#"Bearer resource_metadata="{origin}/.well-known/oauth-protected-resource/mcp""#
            ),
        )
    })
    .await
    .unwrap();
    api_slot.set(api.url("")).unwrap();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(AuthMiddleware::discovering(client_of(&emulator)).allow_issuers([emulator.issuer()]))
        .build();
    for _ in 0..3 {
        let response = client.get(api.url("/mcp")).send().await.unwrap();
        assert_eq!(response.status(), 401, "the 401 comes back as it is");
    }
    assert_eq!(
        evil.count(),
        0,
        "nothing reached the issuer that was not allowed"
    );
    assert_eq!(emulator.stats().token_requests, 0);
    assert!(
        api.received()
            .iter()
            .all(|r| r.header("authorization").is_none()),
        "no token went to the API"
    );
}

/// Metadata about another resource than the one asked is not used (RFC 9728 §3.3).
#[tokio::test]
async fn metadata_about_another_resource_is_not_used() {
    let emulator = Emulator::start().await.unwrap();
    let issuer = emulator.issuer();
    let api_slot: Arc<std::sync::OnceLock<String>> = Arc::default();
    let api_origin = Arc::clone(&api_slot);
    let api = ScriptedServer::start(move |request| {
        let origin = api_origin.get().cloned().unwrap_or_default();
        if request
            .uri
            .starts_with("/.well-known/oauth-protected-resource")
        {
            return Answer::json(
                200,
                serde_json::json!({
                    "resource": "https://bank.example/api",
                    "authorization_servers": [issuer.clone()],
                }),
            );
        }
        Answer::json(401, "{}").header(
            "www-authenticate",
            format!(r#"Bearer resource_metadata="{origin}/.well-known/oauth-protected-resource""#),
        )
    })
    .await
    .unwrap();
    api_slot.set(api.url("")).unwrap();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(AuthMiddleware::discovering(client_of(&emulator)).allow_issuers([emulator.issuer()]))
        .build();
    assert_eq!(
        client.get(api.url("/mcp")).send().await.unwrap().status(),
        401
    );
    assert_eq!(emulator.stats().token_requests, 0);
}

#[tokio::test]
async fn without_allowed_issuers_discovery_never_asks_for_a_token() {
    let emulator = protected_emulator().await;
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(AuthMiddleware::discovering(client_of(&emulator)))
        .build();
    let url = format!("{}/projects", emulator.api_url());
    assert_eq!(client.get(&url).send().await.unwrap().status(), 401);
    let stats = emulator.stats();
    assert_eq!((stats.discovery_requests, stats.token_requests), (0, 0));
}
