//! The provider's failure policy: transient errors retried with backoff and `Retry-After`,
//! permanent ones failing fast, a cool-down after a failed refresh, recovery after an
//! outage, and sources that hang, panic or hand out expired tokens.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use httpmock::prelude::*;
use token_refresh::{AccessToken, Error, TokenProvider};
use tokio::time::advance;

#[tokio::test]
async fn transient_failures_are_retried_honouring_retry_after() {
    let server = MockServer::start_async().await;
    // 500, 503, then 429 asking for 1 s, then success: four attempts.
    let mocks = scripted_token_server(
        &server,
        vec![
            Reply::status(500),
            Reply::status(503).retry_after("0"),
            Reply::status(429).retry_after("1"),
            Reply::token("after-faults"),
        ],
    )
    .await;
    let provider = TokenProvider::builder(source(&server).jti(true))
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
        .build();
    let started = std::time::Instant::now();
    let token = provider.token().await.unwrap();
    assert_eq!(token.expose_secret(), "after-faults");
    for mock in &mocks {
        assert_eq!(mock.calls_async().await, 1);
    }
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 was waited for"
    );
}

#[tokio::test]
async fn retry_after_as_http_date_is_waited_for() {
    let server = MockServer::start_async().await;
    let date = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(2));
    let date: &'static str = Box::leak(date.into_boxed_str());
    let mocks = scripted_token_server(
        &server,
        vec![Reply::status(503).retry_after(date), Reply::token("later")],
    )
    .await;
    let provider = TokenProvider::new(source(&server).jti(true));
    let started = std::time::Instant::now();
    assert_eq!(provider.token().await.unwrap().expose_secret(), "later");
    assert_eq!(total_calls(&mocks).await, 2);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the date was honoured"
    );
}

#[tokio::test]
async fn persistent_transient_failure_gives_up_after_max_attempts() {
    let server = MockServer::start_async().await;
    let mock = token_endpoint(&server, |then| {
        then.status(503);
    })
    .await;
    let provider = fast_builder(&server).build();
    let e = provider.token().await.unwrap_err();
    assert!(
        matches!(e, Error::Retried { attempts, .. } if attempts == token_refresh::defaults::DEFAULT_MAX_ATTEMPTS),
        "{e:?}"
    );
    assert!(
        matches!(e.last_attempt(), Error::HttpStatus { status: 503, .. }),
        "{e:?}"
    );
    assert!(e.is_transient());
    assert!(e.to_string().contains("after 4 attempts"), "{e}");
    assert_eq!(
        mock.calls_async().await,
        token_refresh::defaults::DEFAULT_MAX_ATTEMPTS as usize
    );
    // During the cool-down callers get the error at once, without a request.
    let again = provider.token().await.unwrap_err();
    assert!(matches!(
        again.last_attempt(),
        Error::HttpStatus { status: 503, .. }
    ));
    assert_eq!(
        mock.calls_async().await,
        token_refresh::defaults::DEFAULT_MAX_ATTEMPTS as usize
    );
}

#[tokio::test]
async fn long_retry_after_ends_the_refresh_and_sets_the_cooldown() {
    let server = MockServer::start_async().await;
    let mock = token_endpoint(&server, |then| {
        then.status(429).header("retry-after", "120");
    })
    .await;
    let provider = fast_builder(&server).build();
    let e = provider.token().await.unwrap_err();
    assert_eq!(e.retry_after(), Some(Duration::from_secs(120)));
    assert_eq!(
        mock.calls_async().await,
        1,
        "no retry sooner than the server asked"
    );
    provider.token().await.unwrap_err();
    assert_eq!(mock.calls_async().await, 1, "cool-down honours Retry-After");
}

#[tokio::test]
async fn invalid_grant_fails_fast_with_one_request() {
    let server = MockServer::start_async().await;
    let mock = token_endpoint(&server, |then| {
        then.status(400).json_body(serde_json::json!({
            "error": "invalid_grant", "error_description": "JWT expired"
        }));
    })
    .await;
    let provider = fast_builder(&server).build();
    let e = provider.token().await.unwrap_err();
    assert_eq!(e.oauth_error(), Some("invalid_grant"));
    assert!(e.to_string().contains("JWT expired"));
    assert_eq!(mock.calls_async().await, 1);
}

#[tokio::test]
async fn the_provider_recovers_after_an_outage() {
    let server = MockServer::start_async().await;
    let outage = token_endpoint(&server, |then| {
        then.status(503);
    })
    .await;
    let provider = fast_builder(&server).max_attempts(2).build();
    provider.token().await.unwrap_err();
    outage.delete_async().await;
    token_endpoint(&server, |then| {
        then.status(200).json_body(token_json("back", 3600));
    })
    .await;
    tokio::time::sleep(Duration::from_millis(250)).await; // the 200 ms cool-down passes
    assert_eq!(provider.token().await.unwrap().expose_secret(), "back");
}

#[tokio::test(start_paused = true)]
async fn a_failed_background_refresh_keeps_the_valid_token() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let provider = TokenProvider::builder(move || {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if n == 1 {
                AccessToken::new("first", Duration::from_secs(3600))
            } else {
                Err(Error::HttpStatus {
                    status: 503,
                    retry_after: None,
                })
            }
        }
    })
    .max_attempts(1)
    .build();
    let t1 = provider.token().await.unwrap();
    advance(Duration::from_secs(3600 - 200)).await; // inside the proactive window
    assert!(provider.token().await.unwrap().ptr_eq(&t1));
    settle().await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the background refresh ran and failed"
    );
    assert!(
        provider.token().await.unwrap().ptr_eq(&t1),
        "the valid token is kept"
    );
    settle().await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "no retry during the cool-down"
    );
    advance(token_refresh::defaults::DEFAULT_COOLDOWN).await;
    assert!(provider.token().await.unwrap().ptr_eq(&t1));
    settle().await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "retried after the cool-down"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hanging_source_times_out() {
    let provider = TokenProvider::builder(|| async {
        std::future::pending::<()>().await;
        AccessToken::new("never", Duration::from_secs(60))
    })
    .fetch_timeout(Duration::from_secs(5))
    .max_attempts(2)
    .backoff(Duration::from_millis(10), Duration::from_millis(10))
    .build();
    let e = provider.token().await.unwrap_err();
    assert!(
        matches!(e.last_attempt(), Error::Timeout(d) if *d == Duration::from_secs(5)),
        "{e:?}"
    );
    assert!(matches!(e, Error::Retried { attempts: 2, .. }), "{e:?}");
}

#[tokio::test(start_paused = true)]
async fn an_expired_token_from_a_source_is_an_error() {
    let provider = TokenProvider::builder(|| async { AccessToken::new("dead", Duration::ZERO) })
        .max_attempts(1)
        .build();
    assert!(matches!(
        provider.token().await.unwrap_err(),
        Error::ExpiredOnArrival { .. }
    ));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_source_does_not_wedge_or_get_hammered() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let provider = TokenProvider::builder(move || {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if n == 1 {
                panic!("a buggy token source");
            }
            AccessToken::new("recovered", Duration::from_secs(3600))
        }
    })
    .cooldown(Duration::from_secs(5))
    .build();
    assert!(matches!(provider.token().await, Err(Error::RefreshAborted)));
    assert!(matches!(provider.token().await, Err(Error::RefreshAborted)));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "no new attempt during the cool-down"
    );
    advance(Duration::from_secs(5)).await;
    assert_eq!(provider.token().await.unwrap().expose_secret(), "recovered");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn absurd_retry_after_and_settings_do_not_overflow() {
    let server = MockServer::start_async().await;
    let mock = token_endpoint(&server, |then| {
        then.status(429)
            .header("retry-after", "18446744073709551615");
    })
    .await;
    let provider = TokenProvider::builder(source(&server))
        .retry_budget(Duration::MAX)
        .cooldown(Duration::MAX)
        .build();
    let e = provider.token().await.unwrap_err();
    assert_eq!(e.retry_after(), Some(Duration::from_secs(u64::MAX)));
    // Waiting u64::MAX seconds is over the Retry-After cap: the refresh ends, and the
    // (saturated) cool-down holds.
    assert!(matches!(
        provider.token().await,
        Err(Error::HttpStatus { status: 429, .. })
    ));
    assert_eq!(mock.calls_async().await, 1);
}
