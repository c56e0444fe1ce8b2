//! The token provider: single flight, margins, cancellation, invalidation. Failures and
//! retries are in `retries.rs`, rejections in `rejections.rs` and `revocations.rs`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use httpmock::prelude::*;
use token_refresh::{AccessToken, TokenProvider};
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

/// The caller that finds the cache cold starts the fetch within its own first poll, not
/// after a scheduler round trip behind the herd it came with (on a single-threaded
/// runtime nothing else runs before that poll returns); cancelled right after, it leaves
/// the refresh running for everyone.
#[tokio::test(start_paused = true)]
async fn a_cold_callers_first_poll_starts_the_fetch_and_its_cancellation_does_not_stop_it() {
    let (provider, calls) =
        counting_provider(Duration::from_secs(3600), Duration::from_millis(100));
    let mut first = Box::pin(provider.token());
    let pending =
        std::future::poll_fn(|cx| std::task::Poll::Ready(first.as_mut().poll(cx).is_pending()))
            .await;
    assert!(pending);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the fetch started in that poll"
    );
    drop(first);
    assert_eq!(provider.token().await.unwrap().expose_secret(), "t1");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
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
