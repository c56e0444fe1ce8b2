//! `MinValidity` and `token_valid_for`: a request that must outlive the next minutes gets a
//! token that lasts that long, refreshing first (once, whoever asks) when the cached one
//! would expire sooner.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use token_refresh::{AccessToken, MinValidity, TokenProvider};
use tokio::time::Instant;

/// A source whose first token was issued 80 s ago and lives 100 s (20 s left); later ones
/// are fresh. Counts its calls.
fn aging_provider() -> (TokenProvider, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let provider = TokenProvider::builder(move || {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let now = Instant::now();
            let issued = if n == 1 {
                now - Duration::from_secs(80)
            } else {
                now
            };
            AccessToken::issued_at(format!("t{n}"), issued, Duration::from_secs(100))
        }
    })
    .build();
    (provider, calls)
}

#[tokio::test(start_paused = true)]
async fn a_token_with_20_s_left_is_refreshed_for_a_request_asking_60_s() {
    let (provider, calls) = aging_provider();
    let first = provider.token().await.unwrap();
    assert_eq!(first.expose_secret(), "t1");
    assert!(first.expires_in() <= Duration::from_secs(20));
    // A plain request is happy with it.
    assert!(provider.token().await.unwrap().ptr_eq(&first));
    let long = provider
        .token_valid_for(Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(long.expose_secret(), "t2");
    assert!(long.expires_in() >= Duration::from_secs(60));
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one refresh");
    // The fresh token is cached for everyone.
    assert!(provider.token().await.unwrap().ptr_eq(&long));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_asking_more_validity_share_one_refresh() {
    let (provider, calls) = aging_provider();
    provider.token().await.unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(100));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (provider, barrier) = (provider.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                provider.token_valid_for(Duration::from_secs(60)).await
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().expose_secret(), "t2");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// A demand beyond what the source issues is capped at half a token's lifetime: no storm.
#[tokio::test(start_paused = true)]
async fn a_demand_longer_than_tokens_live_causes_no_refresh_storm() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let provider = TokenProvider::new(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        async { AccessToken::new("short", Duration::from_secs(100)) }
    });
    for _ in 0..10 {
        provider
            .token_valid_for(Duration::from_secs(3600))
            .await
            .unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[cfg(feature = "tower")]
#[tokio::test(start_paused = true)]
async fn the_tower_layer_reads_the_request_extension() {
    use tower::{ServiceBuilder, ServiceExt};
    let (provider, calls) = aging_provider();
    provider.token().await.unwrap();
    let api = tower::service_fn(|request: http::Request<String>| async move {
        let auth = request.headers()["authorization"]
            .to_str()
            .unwrap()
            .to_owned();
        Ok::<_, Infallible>(http::Response::new(auth))
    });
    let service = ServiceBuilder::new()
        .layer(token_refresh::AuthLayer::new(provider))
        .service(api);
    let mut request = http::Request::get("https://api.example.com/stream")
        .body(String::new())
        .unwrap();
    request
        .extensions_mut()
        .insert(MinValidity(Duration::from_secs(60)));
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.body(), "Bearer t2");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[cfg(feature = "reqwest")]
#[tokio::test]
async fn the_reqwest_middleware_reads_the_request_extension() {
    use httpmock::prelude::*;
    let server = MockServer::start_async().await;
    let api = server
        .mock_async(|when, then| {
            when.method(GET)
                .path("/v2/stream")
                .header("authorization", "Bearer t2");
            then.status(200);
        })
        .await;
    let (provider, calls) = aging_provider();
    provider.token().await.unwrap();
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(token_refresh::AuthMiddleware::new(provider))
        .build();
    let response = client
        .get(server.url("/v2/stream"))
        .with_extension(MinValidity(Duration::from_secs(60)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(api.calls_async().await, 1);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // The response says which token authorized it.
    let token = response.extensions().get::<AccessToken>().unwrap();
    assert_eq!(token.expose_secret(), "t2");
}
