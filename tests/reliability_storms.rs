//! Storms: thousands of callers cancelled at random points across several refreshes, and a
//! burst of 401s for one revoked token.
//!
//! Both tests run on a multi-thread runtime with two workers and real time (they use
//! sockets). They assert outcomes and request counts, never durations.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{source, token_json};
use httpmock::prelude::*;
use reqwest_middleware::ClientBuilder;
use token_refresh::{AccessToken, AuthMiddleware, Error, JwtBearer, TokenProvider};
use token_refresh_emulator::Emulator;
use tokio::sync::Barrier;
use tokio::task::JoinSet;

/// Callers per round of the cancellation storm.
const CALLERS: usize = 10_000;
/// Refreshes the cancellation storm goes through.
const ROUNDS: usize = 5;
/// How long the token endpoint takes to answer: cancellations land before, during and after.
const ENDPOINT_DELAY: Duration = Duration::from_millis(50);
/// Proves "no hang".
const NO_HANG: Duration = Duration::from_secs(60);

/// How one caller of the storm ends.
#[derive(Debug)]
enum Ending {
    /// It got a token.
    Token(AccessToken),
    /// It got an error from the provider: never acceptable here.
    Error(Error),
    /// It was cancelled (timed out or aborted) before it got an answer.
    Cancelled,
}

/// One caller: `token()` that is cancelled at a random point, or not at all.
///
/// - 40 %: wrapped in `tokio::time::timeout` of 0–100 ms (0 cancels at the first await);
/// - 30 %: spawned as its own task, which is aborted after 0–100 ms;
/// - 30 %: left alone.
fn spawn_caller(set: &mut JoinSet<Ending>, provider: &TokenProvider, barrier: &Arc<Barrier>) {
    let provider = provider.clone();
    let barrier = barrier.clone();
    let kind = fastrand::u32(0..10);
    let cancel_after = Duration::from_micros(fastrand::u64(0..100_000));
    match kind {
        0..=3 => {
            set.spawn(async move {
                barrier.wait().await;
                match tokio::time::timeout(cancel_after, provider.token()).await {
                    Ok(Ok(token)) => Ending::Token(token),
                    Ok(Err(error)) => Ending::Error(error),
                    Err(_elapsed) => Ending::Cancelled,
                }
            });
        }
        4..=6 => {
            set.spawn(async move {
                barrier.wait().await;
                let caller = tokio::spawn(async move { provider.token().await });
                tokio::time::sleep(cancel_after).await;
                caller.abort(); // a no-op if it has finished
                match caller.await {
                    Ok(Ok(token)) => Ending::Token(token),
                    Ok(Err(error)) => Ending::Error(error),
                    Err(e) if e.is_cancelled() => Ending::Cancelled,
                    Err(e) => std::panic::resume_unwind(e.into_panic()),
                }
            });
        }
        _ => {
            set.spawn(async move {
                barrier.wait().await;
                match provider.token().await {
                    Ok(token) => Ending::Token(token),
                    Err(error) => Ending::Error(error),
                }
            });
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_storm_across_refreshes() {
    let server = MockServer::start_async().await;
    let mock = server
        .mock_async(|when, then| {
            when.method(POST).path("/oauth2/token");
            then.status(200)
                .json_body(token_json("storm-token", 3600))
                .delay(ENDPOINT_DELAY);
        })
        .await;
    let provider = TokenProvider::new(source(&server));

    let mut previous: Option<AccessToken> = None;
    for round in 1..=ROUNDS {
        // Round 1 starts with an empty cache; each later one with the last token rejected.
        if let Some(rejected) = &previous {
            provider.invalidate(rejected);
        }
        let barrier = Arc::new(Barrier::new(CALLERS));
        let mut set = JoinSet::new();
        for _ in 0..CALLERS {
            spawn_caller(&mut set, &provider, &barrier);
        }
        let (mut tokens, mut cancelled) = (Vec::new(), 0);
        let outcomes = tokio::time::timeout(NO_HANG, async {
            while let Some(ending) = set.join_next().await {
                match ending.expect("a caller panicked") {
                    Ending::Token(token) => tokens.push(token),
                    Ending::Error(error) => panic!("round {round}: a caller got {error:?}"),
                    Ending::Cancelled => cancelled += 1,
                }
            }
        })
        .await;
        assert!(outcomes.is_ok(), "round {round}: the storm hung");
        assert_eq!(tokens.len() + cancelled, CALLERS);
        // About 30 % of the callers are never cancelled; they all got this round's token.
        assert!(
            tokens.len() >= CALLERS / 5,
            "round {round}: {}",
            tokens.len()
        );
        assert!(cancelled > 0, "round {round}: nothing was cancelled");

        // The provider recovered: the next caller gets the round's token without waiting.
        let current = tokio::time::timeout(NO_HANG, provider.token())
            .await
            .expect("token() hung after the storm")
            .expect("token() failed after the storm");
        assert!(
            tokens.iter().all(|t| t.ptr_eq(&current)),
            "round {round}: every caller got the one token of this refresh"
        );
        if let Some(rejected) = &previous {
            assert!(!current.ptr_eq(rejected), "round {round}: a new token");
        }
        assert_eq!(
            mock.calls_async().await,
            round,
            "round {round}: exactly one token request per refresh"
        );
        previous = Some(current);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_of_401s_refreshes_once() {
    const REQUESTS: u64 = 1000;
    let emu = Arc::new(Emulator::start().await.unwrap());
    let provider = TokenProvider::new(JwtBearer::new(emu.account()));
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(AuthMiddleware::new(provider.clone()))
        .build();
    let url = format!("{}/projects", emu.api_url());

    // Token A is fetched and accepted.
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let before = emu.stats();
    assert_eq!(before.token_requests, 1);
    assert_eq!((before.api_requests, before.api_unauthorized), (1, 0));

    // The server rejects A from now on; 1000 requests still carry it from the cache.
    emu.revoke_all();
    let barrier = Arc::new(Barrier::new(REQUESTS as usize));
    let mut set = JoinSet::new();
    for _ in 0..REQUESTS {
        let (client, url, barrier) = (client.clone(), url.clone(), barrier.clone());
        set.spawn(async move {
            barrier.wait().await;
            let response = client.get(&url).send().await?;
            Ok::<_, reqwest_middleware::Error>(response.status().as_u16())
        });
    }
    let mut statuses = Vec::new();
    let joined = tokio::time::timeout(NO_HANG, async {
        while let Some(result) = set.join_next().await {
            statuses.push(result.expect("a request panicked"));
        }
    })
    .await;
    assert!(joined.is_ok(), "the requests hung");

    let failed: Vec<_> = statuses.iter().filter(|s| !matches!(s, Ok(200))).collect();
    assert!(
        failed.is_empty(),
        "{} of {REQUESTS} requests failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    let after = emu.stats();
    assert_eq!(
        after.token_requests, 2,
        "exactly one refresh for the whole burst"
    );
    let sent = after.api_requests - before.api_requests;
    let rejected = after.api_unauthorized - before.api_unauthorized;
    assert!(rejected >= 1, "some requests carried the revoked token");
    assert!(
        rejected <= REQUESTS,
        "{rejected} 401s: a request was rejected twice"
    );
    assert!(
        sent <= 2 * REQUESTS,
        "{sent} requests sent: more than twice each"
    );
    // Each request was sent once, plus once more exactly when it got a 401.
    assert_eq!(sent, REQUESTS + rejected);
}
