//! Discovery (RFC 8414 / OpenID Connect): the token endpoint found in the issuer's metadata,
//! fetched once for many token requests and again only after its TTL; a document naming
//! another issuer refused; OpenID's location used when RFC 8414's is missing.

mod common;

use std::time::Duration;

use common::{Received, json_response, serve};
use serde_json::json;
use token_refresh::{ClientCredentials, Error, TokenEndpoint, TokenSource};
use token_refresh_emulator::Emulator;

fn source(emulator: &Emulator, endpoint: TokenEndpoint) -> ClientCredentials {
    ClientCredentials::new(endpoint, emulator.client_id(), emulator.client_secret())
}

#[tokio::test]
async fn one_metadata_fetch_serves_a_thousand_token_requests() {
    let emulator = Emulator::start().await.unwrap();
    let source = source(&emulator, TokenEndpoint::discover(emulator.issuer()));
    for _ in 0..1_000 {
        source.fetch_token().await.unwrap();
    }
    let stats = emulator.stats();
    println!(
        "1,000 token requests: {} metadata fetches",
        stats.discovery_requests
    );
    assert_eq!(stats.discovery_requests, 1);
    assert_eq!(stats.token_successes, 1_000);
}

#[tokio::test]
async fn metadata_older_than_its_ttl_is_fetched_again() {
    let emulator = Emulator::start().await.unwrap();
    let endpoint = TokenEndpoint::discover(emulator.issuer()).discovery_ttl(Duration::ZERO);
    let source = source(&emulator, endpoint);
    for _ in 0..3 {
        source.fetch_token().await.unwrap();
    }
    assert_eq!(emulator.stats().discovery_requests, 3);
}

#[tokio::test]
async fn metadata_naming_another_issuer_is_refused_and_nothing_is_sent() {
    let emulator = Emulator::start().await.unwrap();
    emulator.set_metadata_issuer(Some("https://attacker.example".into()));
    let source = source(&emulator, TokenEndpoint::discover(emulator.issuer()));
    let error = source.fetch_token().await.unwrap_err();
    assert!(
        matches!(&error, Error::IssuerMismatch { found, .. } if found == "https://attacker.example"),
        "{error:?}"
    );
    assert!(!error.is_transient());
    assert_eq!(
        emulator.stats().token_requests,
        0,
        "no credentials went anywhere"
    );
}

#[tokio::test]
async fn the_metadata_says_what_the_server_supports() {
    let emulator = Emulator::start().await.unwrap();
    let endpoint = TokenEndpoint::discover(emulator.issuer());
    let metadata = endpoint.metadata().await.unwrap();
    assert_eq!(metadata.issuer(), emulator.issuer());
    assert_eq!(metadata.token_endpoint(), emulator.token_url());
    assert!(
        metadata
            .token_endpoint_auth_methods()
            .iter()
            .any(|m| m == "private_key_jwt")
    );
    assert!(
        metadata
            .token_endpoint_auth_signing_algs()
            .iter()
            .any(|a| a == "ES256")
    );
    assert!(metadata.grant_types().iter().any(|g| g == "refresh_token"));
    let error = TokenEndpoint::new(emulator.token_url())
        .metadata()
        .await
        .unwrap_err();
    assert!(
        matches!(error, token_refresh::Error::Config(_)) && error.to_string().contains("discover"),
        "{error}"
    );
}

#[tokio::test]
async fn openid_configuration_is_used_when_rfc_8414_metadata_is_missing() {
    let server = serve(|request: Received| match request.uri.path() {
        "/tenant/.well-known/openid-configuration" => {
            let issuer = format!(
                "http://{}/tenant",
                request.headers.get("host").unwrap().to_str().unwrap()
            );
            json_response(
                200,
                &json!({"issuer": issuer, "token_endpoint": format!("{issuer}/token")}),
                &[],
            )
        }
        "/tenant/token" => json_response(
            200,
            &json!({"access_token": "from-oidc", "token_type": "Bearer", "expires_in": 60}),
            &[],
        ),
        _ => json_response(404, &json!({}), &[]),
    })
    .await;
    let endpoint = TokenEndpoint::discover(server.url("/tenant"));
    let token = ClientCredentials::new(endpoint, "id", "secret")
        .fetch_token()
        .await
        .unwrap();
    assert_eq!(token.expose_secret(), "from-oidc");
    // RFC 8414's location (404), OpenID's, then the token request.
    assert_eq!(server.requests(), 3);
}

#[tokio::test]
async fn a_plain_http_issuer_elsewhere_than_loopback_is_refused_before_any_request() {
    let source = ClientCredentials::new(
        TokenEndpoint::discover("http://login.example.com"),
        "id",
        "secret",
    );
    let error = source.fetch_token().await.unwrap_err();
    assert!(
        matches!(&error, Error::Discovery { problem, .. } if problem.contains("http")),
        "{error:?}"
    );
}
