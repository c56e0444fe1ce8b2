//! Soak tests: a steady request stream over many token lifetimes sees no failure and no 401,
//! and the number of token requests stays within a bound derived from the margins.
//!
//! - `soak_24_simulated_hours_through_tower`: 24 simulated hours under paused time, one
//!   request per simulated second (86,400 requests) through `AuthService` to an in-process
//!   API, with 60 s tokens from an in-process source. Runs in seconds of wall time.
//!
//! Its real-time twin, two real minutes against the emulator, is `tests/soak.rs`: a test
//! target of its own that `cargo test` leaves out (`cargo test --all-features --test soak`
//! runs it; CI does, as a step of its own).
//!
//! How the provider places a token's refresh points (see `provider.rs`): for a token of
//! lifetime L, the hard margin is min(60 s, L/10) and the proactive margin
//! max(min(300 s, L/5), hard margin). From `expiry - proactive` the next caller starts one
//! background refresh and keeps the old token; from `expiry - hard` the old token is not
//! used. Lifetimes count from when the token request was sent.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use token_refresh::{AccessToken, AuthLayer, TokenProvider};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

/// The in-process API's view of issued tokens: value → expiry.
type Issued = Arc<Mutex<HashMap<String, Instant>>>;

#[tokio::test(start_paused = true)]
async fn soak_24_simulated_hours_through_tower() {
    const TTL: Duration = Duration::from_secs(60);
    const REQUESTS: u64 = 24 * 3600; // one per simulated second
    // The token request takes 1.5 s, so requests arrive while a refresh is in flight.
    const LATENCY: Duration = Duration::from_millis(1500);

    let issued: Issued = Arc::default();
    let token_requests = Arc::new(AtomicU64::new(0));
    let source = {
        let (issued, token_requests) = (issued.clone(), token_requests.clone());
        move || {
            let n = token_requests.fetch_add(1, Ordering::SeqCst) + 1;
            let issued = issued.clone();
            async move {
                let sent_at = Instant::now();
                tokio::time::sleep(LATENCY).await;
                let token = AccessToken::issued_at(format!("t{n}"), sent_at, TTL)?;
                // The strictest server: its expiry is exactly the one the client assumes.
                issued
                    .lock()
                    .unwrap()
                    .insert(token.expose_secret().to_owned(), sent_at + TTL);
                Ok(token)
            }
        }
    };
    let provider = TokenProvider::new(source);

    let api_requests = Arc::new(AtomicU64::new(0));
    let api_unauthorized = Arc::new(AtomicU64::new(0));
    let api = {
        let (issued, api_requests, api_unauthorized) = (
            issued.clone(),
            api_requests.clone(),
            api_unauthorized.clone(),
        );
        service_fn(move |request: Request<Full<Bytes>>| {
            api_requests.fetch_add(1, Ordering::SeqCst);
            let token = request
                .headers()
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            let valid = token
                .and_then(|t| issued.lock().unwrap().get(t).copied())
                .is_some_and(|expiry| Instant::now() < expiry);
            let status = if valid {
                StatusCode::OK
            } else {
                api_unauthorized.fetch_add(1, Ordering::SeqCst);
                StatusCode::UNAUTHORIZED
            };
            let mut response = Response::new(Full::<Bytes>::default());
            *response.status_mut() = status;
            async move { Ok::<_, Infallible>(response) }
        })
    };
    let mut client = ServiceBuilder::new()
        .layer(AuthLayer::new(provider))
        .service(api);

    let (mut failed, mut waited) = (0u64, 0u64);
    for _ in 0..REQUESTS {
        let request = Request::get("https://api.example.com/v2/projects")
            .body(Full::<Bytes>::default())
            .unwrap();
        let before = Instant::now();
        let response = client.ready().await.unwrap().call(request).await;
        if !matches!(&response, Ok(r) if r.status() == StatusCode::OK) {
            failed += 1;
        }
        // Paused time moves only while the runtime waits, i.e. while this request waited
        // for a token.
        if Instant::now() != before {
            waited += 1;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    assert_eq!(failed, 0, "requests that did not get a 200");
    assert_eq!(
        api_unauthorized.load(Ordering::SeqCst),
        0,
        "401s at the API"
    );
    assert_eq!(
        api_requests.load(Ordering::SeqCst),
        REQUESTS,
        "each request sent exactly once"
    );
    assert_eq!(
        waited, 1,
        "only the very first request waits for a token; refreshes run in the background"
    );

    // The bound. TTL 60 s: proactive margin min(300, 60/5) = 12 s, hard margin
    // min(60, 60/10) = 6 s. A token is replaced no earlier than 48 s after its request was
    // sent (the proactive point) and must be replaced before 54 s (the hard margin; past it
    // a request would wait, which `waited == 1` rules out).
    // - Upper: consecutive token requests are at least 48 s apart. The requests span
    //   [0 s, 86,400.5 s] (the first waits 1.5 s for its token, then one per second), so
    //   at most floor(86,400.5 / 48) + 1 = 1801 token requests. With one request per whole
    //   second after the first, each refresh starts exactly 48 s after the previous one:
    //   1801 is also what a correct provider does.
    // - Lower: each token serves at most 54 s of the 86,400 s of requests, so at least
    //   ceil(86,400 / 54) = 1600 token requests.
    let tokens = token_requests.load(Ordering::SeqCst);
    assert!(
        (1600..=1801).contains(&tokens),
        "{tokens} token requests in 24 h of 60 s tokens"
    );
}
