//! One documented way out for token errors: `token_refresh::Error::find` gets the token
//! error out of a `reqwest_middleware::Error` — alone, behind reqwest-tracing, behind
//! reqwest-retry (the stack the `AuthMiddleware` docs recommend) — out of a tower `BoxError`,
//! and out of a tonic `Status`.
#![cfg(feature = "reqwest")]

mod common;

use std::time::Duration;

use common::*;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use reqwest_retry::RetryTransientMiddleware;
use reqwest_retry::policies::ExponentialBackoff;
use reqwest_tracing::TracingMiddleware;
use token_refresh::{AuthMiddleware, Error, JwtBearer, TokenProvider};

/// A provider whose token endpoint is down: every token request fails with `Connect`.
fn failing_provider() -> TokenProvider {
    TokenProvider::builder(JwtBearer::new(account()).token_url(closed_port_url()))
        .max_attempts(1)
        .build()
}

fn retry() -> RetryTransientMiddleware<ExponentialBackoff> {
    let policy = ExponentialBackoff::builder()
        .retry_bounds(Duration::from_millis(1), Duration::from_millis(5))
        .build_with_max_retries(2);
    RetryTransientMiddleware::new_with_policy(policy)
}

async fn call(client: ClientWithMiddleware) -> reqwest_middleware::Error {
    client
        .get("https://api.example.com/v2/projects")
        .send()
        .await
        .unwrap_err()
}

fn assert_found(error: &reqwest_middleware::Error, stack: &str) {
    let found = Error::find(error).unwrap_or_else(|| panic!("{stack}: not found in {error:?}"));
    assert!(matches!(found, Error::Connect(_)), "{stack}: {found:?}");
    assert!(found.is_transient());
    // The message reaches the top, whatever wraps it.
    assert!(
        error
            .to_string()
            .contains("could not connect to the token endpoint"),
        "{stack}: {error}"
    );
}

#[tokio::test]
async fn behind_every_recommended_stack() {
    let alone = ClientBuilder::new(reqwest::Client::new())
        .with(AuthMiddleware::new(failing_provider()))
        .build();
    assert_found(&call(alone).await, "alone");

    let traced = ClientBuilder::new(reqwest::Client::new())
        .with(TracingMiddleware::default())
        .with(AuthMiddleware::new(failing_provider()))
        .build();
    assert_found(&call(traced).await, "tracing → auth");

    let retried = ClientBuilder::new(reqwest::Client::new())
        .with(retry())
        .with(AuthMiddleware::new(failing_provider()))
        .build();
    assert_found(&call(retried).await, "retry → auth");

    let recommended = ClientBuilder::new(reqwest::Client::new())
        .with(TracingMiddleware::default())
        .with(retry())
        .with(AuthMiddleware::new(failing_provider()))
        .build();
    assert_found(&call(recommended).await, "tracing → retry → auth");
}

/// A plain walk of `source()` finds it too, for code that does not know this crate.
#[tokio::test]
async fn a_plain_source_walk_finds_it_behind_retry() {
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(retry())
        .with(AuthMiddleware::new(failing_provider()))
        .build();
    let error = call(client).await;
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    let mut found = false;
    while let Some(e) = next {
        found |= e.downcast_ref::<Error>().is_some();
        next = e.source();
    }
    assert!(found, "{error:?}");
}

#[cfg(feature = "tower")]
#[tokio::test]
async fn out_of_a_tower_box_error() {
    use tower::ServiceExt;
    let api = tower::service_fn(|_: http::Request<String>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    });
    let service = token_refresh::AuthService::new(api, failing_provider());
    let request = http::Request::get("https://api.example.com/")
        .body(String::new())
        .unwrap();
    let error = service.oneshot(request).await.unwrap_err();
    assert!(
        matches!(Error::find(&*error), Some(Error::Connect(_))),
        "{error:?}"
    );
}

#[cfg(feature = "tonic")]
#[tokio::test]
async fn out_of_a_tonic_status() {
    use tower::ServiceBuilder;
    let emulator = token_refresh_emulator::Emulator::start().await.unwrap();
    let channel = tonic::transport::Endpoint::from_shared(emulator.origin())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let channel = ServiceBuilder::new()
        .layer(token_refresh::AuthLayer::new(failing_provider()))
        .service(channel);
    let mut client = token_refresh_emulator::grpc::EchoClient::new(channel);
    let status = client.unary("hi").await.unwrap_err();
    assert!(
        matches!(Error::find(&status), Some(Error::Connect(_))),
        "{status:?}"
    );
    assert_eq!(
        emulator.stats().grpc_calls,
        0,
        "nothing was sent without a token"
    );
}
