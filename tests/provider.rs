//! The token provider: single flight, margins, cancellation, faults, invalidation.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use httpmock::prelude::*;
use token_refresh::{AccessToken, Error, TokenProvider};
use tokio::sync::Barrier;
use tokio::time::{Instant, advance};

/// A provider over an in-process source that counts its calls, takes `latency` per fetch
/// and issues `t1`, `t2`, … each living `ttl`.
fn counting_provider(ttl: Duration, latency: Duration) -> (TokenProvider, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let provider = TokenProvider::new(move || {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let sent = Instant::now();
            tokio::time::sleep(latency).await;
            AccessToken::issued_at(format!("t{n}"), sent, ttl)
        }
    });
    (provider, calls)
}

/// Lets spawned tasks run without moving the paused clock.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_callers_cause_one_token_request() {
    let server = MockServer::start_async().await;
    let mock = token_endpoint(&server, |then| {
        then.status(200)
            .json_body(token_json("shared", 3600))
            .delay(Duration::from_millis(50));
    })
    .await;
    let provider = TokenProvider::new(source(&server));
    let barrier = Arc::new(Barrier::new(1000));
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let provider = provider.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                provider.token().await
            })
        })
        .collect();
    let mut tokens = Vec::new();
    for task in tasks {
        tokens.push(task.await.unwrap().unwrap());
    }
    assert_eq!(mock.calls_async().await, 1);
    assert!(
        tokens.iter().all(|t| t.ptr_eq(&tokens[0])),
        "all get the same token"
    );
    assert_eq!(tokens[0].expose_secret(), "shared");
}

#[tokio::test(start_paused = true)]
async fn lazy_no_fetch_before_first_call() {
    let (provider, calls) = counting_provider(Duration::from_secs(3600), Duration::ZERO);
    advance(Duration::from_secs(10)).await;
    settle().await;
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    provider.token().await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn proactive_refresh_runs_once_in_the_background() {
    let latency = Duration::from_secs(2);
    let (provider, calls) = counting_provider(Duration::from_secs(3600), latency);
    let t1 = provider.token().await.unwrap();
    assert_eq!(t1.expose_secret(), "t1");

    // Just before the proactive point (5 min before expiry): no refresh.
    let fetched_at = t1.issued_at_instant();
    tokio::time::sleep_until(fetched_at + Duration::from_secs(3600 - 300 - 1)).await;
    for _ in 0..10 {
        assert!(provider.token().await.unwrap().ptr_eq(&t1));
    }
    settle().await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // Past it: callers get the old token at once, one refresh runs behind them.
    advance(Duration::from_secs(2)).await;
    let before = Instant::now();
    for _ in 0..50 {
        assert!(provider.token().await.unwrap().ptr_eq(&t1));
    }
    assert_eq!(Instant::now(), before, "no caller waited");
    settle().await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "exactly one background refresh"
    );

    // Once it lands, callers get the new token; still one refresh.
    advance(latency).await;
    settle().await;
    let t2 = provider.token().await.unwrap();
    assert_eq!(t2.expose_secret(), "t2");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn past_the_hard_margin_callers_wait_for_a_new_token() {
    let latency = Duration::from_secs(3);
    let (provider, calls) = counting_provider(Duration::from_secs(3600), latency);
    let t1 = provider.token().await.unwrap();
    // Nobody called during the proactive window; now 59 s are left (inside the 60 s margin).
    tokio::time::sleep_until(t1.expires_at() - Duration::from_secs(59)).await;
    let before = Instant::now();
    let t2 = provider.token().await.unwrap();
    assert_eq!(t2.expose_secret(), "t2");
    assert!(
        Instant::now() - before >= latency,
        "the caller waited for the refresh"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_59_second_token_is_usable() {
    let (provider, calls) = counting_provider(Duration::from_secs(59), Duration::ZERO);
    let t1 = provider.token().await.unwrap();
    advance(Duration::from_secs(30)).await;
    assert!(
        provider.token().await.unwrap().ptr_eq(&t1),
        "usable for most of its life"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // It is replaced before it expires.
    advance(Duration::from_secs(29)).await;
    let t = provider.token().await.unwrap();
    settle().await;
    assert!(t.expires_in() > Duration::ZERO);
    assert!(calls.load(Ordering::SeqCst) >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_callers_never_wedge_the_provider() {
    let server = MockServer::start_async().await;
    let mock = token_endpoint(&server, |then| {
        then.status(200)
            .json_body(token_json("survivor", 3600))
            .delay(Duration::from_millis(300));
    })
    .await;
    let provider = TokenProvider::new(source(&server));
    let mut kept = Vec::new();
    let mut cancelled = Vec::new();
    for i in 0..100 {
        let provider = provider.clone();
        let task = tokio::spawn(async move { provider.token().await });
        if i % 2 == 0 {
            cancelled.push(task)
        } else {
            kept.push(task)
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for task in &cancelled {
        task.abort();
    }
    for task in kept {
        assert_eq!(task.await.unwrap().unwrap().expose_secret(), "survivor");
    }
    let later = provider.token().await.unwrap();
    assert_eq!(later.expose_secret(), "survivor");
    assert_eq!(mock.calls_async().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_caller_cancelled_does_not_cancel_the_refresh() {
    let server = MockServer::start_async().await;
    let mock = token_endpoint(&server, |then| {
        then.status(200)
            .json_body(token_json("tok", 3600))
            .delay(Duration::from_millis(200));
    })
    .await;
    let provider = TokenProvider::new(source(&server));
    // The caller that starts the refresh goes away at once.
    let first = tokio::time::timeout(Duration::from_millis(20), provider.token()).await;
    assert!(first.is_err());
    assert_eq!(provider.token().await.unwrap().expose_secret(), "tok");
    assert_eq!(mock.calls_async().await, 1);
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_invalidations_refresh_once() {
    let server = MockServer::start_async().await;
    let mock = token_endpoint(&server, |then| {
        then.status(200).json_body(token_json("tok", 3600));
    })
    .await;
    let provider = TokenProvider::new(source(&server));
    let rejected = provider.token().await.unwrap();
    let barrier = Arc::new(Barrier::new(100));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (provider, rejected, barrier) =
                (provider.clone(), rejected.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                provider.invalidate(&rejected);
                provider.token().await.unwrap()
            })
        })
        .collect();
    for task in tasks {
        assert!(!task.await.unwrap().ptr_eq(&rejected));
    }
    assert_eq!(
        mock.calls_async().await,
        2,
        "one initial fetch, one refresh"
    );
}

#[tokio::test(start_paused = true)]
async fn invalidating_an_old_token_does_nothing() {
    let (provider, calls) = counting_provider(Duration::from_secs(3600), Duration::ZERO);
    let t1 = provider.token().await.unwrap();
    provider.invalidate(&t1);
    let t2 = provider.token().await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    provider.invalidate(&t1); // stale: t2 is cached now
    assert!(provider.token().await.unwrap().ptr_eq(&t2));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
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

/// A token rejected after its hard margin (a stream that outlived it) was due anyway:
/// dropping it does not arm the storm guard, so a real revocation right after is still
/// recovered from at once.
#[tokio::test(start_paused = true)]
async fn rejecting_an_expired_token_does_not_arm_the_storm_guard() {
    let (provider, calls) = counting_provider(Duration::from_secs(100), Duration::ZERO);
    let t1 = provider.token().await.unwrap();
    advance(Duration::from_secs(95)).await; // past its hard margin (10 s before expiry)
    assert!(provider.reject(&t1));
    let t2 = provider.token().await.unwrap();
    assert_eq!(t2.expose_secret(), "t2");
    // t2 is revoked at once: the guard lets this forced refresh through...
    assert!(provider.reject(&t2));
    let t3 = provider.token().await.unwrap();
    assert_eq!(t3.expose_secret(), "t3");
    // ...and holds the next one, moments later.
    assert!(!provider.reject(&t3));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}
