//! One provider, many Tokio runtimes, and bounded waits: no caller waits on a refresh that
//! nothing drives, a refresh lost with its runtime is restarted, waits are bounded, no token
//! inside its hard margin is handed out, and a runtime without a time driver gets an error
//! that says so.
//!
//! Real time with real local servers where sockets are involved; paused time only with
//! in-process sources.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use httpmock::prelude::*;
use token_refresh::{AccessToken, Error, TokenProvider};
use tokio::runtime::{Builder, Runtime};
use tokio::time::Instant;

/// Sleeps this thread until `at` (real time).
fn sleep_until(at: std::time::Instant) {
    std::thread::sleep(at.saturating_duration_since(std::time::Instant::now()));
}

fn current_thread() -> Runtime {
    Builder::new_current_thread().enable_all().build().unwrap()
}

/// A token endpoint that answers after `delay` with tokens living `expires_in` seconds.
async fn slow_endpoint(
    server: &MockServer,
    delay: Duration,
    expires_in: u64,
) -> httpmock::Mock<'_> {
    token_endpoint(server, |then| {
        then.status(200)
            .json_body(token_json("tok", expires_in))
            .delay(delay);
    })
    .await
}

/// A refresh started by a caller whose runtime then goes idle (its `block_on` returned) must
/// not hold up a caller on another runtime: that caller restarts it on its own runtime.
#[test]
fn a_refresh_stranded_on_an_idle_runtime_is_taken_over() {
    let server = MockServer::start();
    let mock = current_thread().block_on(slow_endpoint(&server, Duration::from_millis(300), 3600));
    let provider = TokenProvider::new(source(&server));

    // The caller gives up after 20 ms; the refresh it started stays on runtime A, which no
    // one runs any more.
    let idle = current_thread();
    let first = idle.block_on(async {
        tokio::time::timeout(Duration::from_millis(20), provider.token()).await
    });
    assert!(first.is_err(), "the first caller timed out");

    let other = current_thread();
    let token = other
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), provider.token()).await })
        .expect("the caller on another runtime must not hang")
        .expect("and gets a token");
    assert_eq!(token.expose_secret(), "tok");
    assert!(mock.calls() <= 2, "{} token requests", mock.calls());
    drop(idle);
}

/// The same through the proactive window: a caller on runtime A starts the background
/// refresh and A goes idle; once the token reaches its hard margin, a caller on runtime B
/// gets a fresh token instead of waiting forever.
#[test]
fn a_background_refresh_stranded_on_an_idle_runtime_is_taken_over() {
    let server = MockServer::start();
    // 2 s tokens: the proactive window runs from 0.4 s to 0.2 s before expiry, when the
    // hard margin begins.
    let mock = current_thread().block_on(slow_endpoint(&server, Duration::from_millis(100), 2));
    let provider = TokenProvider::new(source(&server));
    let b = current_thread();
    let first = b.block_on(provider.token()).unwrap();
    let expiry = first.expires_at().into_std();

    sleep_until(expiry - Duration::from_millis(300)); // into the proactive window
    let a = current_thread();
    let still = a.block_on(provider.token()).unwrap();
    assert!(
        still.ptr_eq(&first),
        "the proactive window keeps the current token"
    );
    // The background refresh was spawned on A, whose block_on has returned.

    sleep_until(expiry - Duration::from_millis(100)); // past the hard margin
    let fresh = b
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), provider.token()).await })
        .expect("no hang")
        .unwrap();
    assert!(!fresh.ptr_eq(&first));
    assert!(provider.usable_for(&fresh) > Duration::ZERO);
    assert!(mock.calls() <= 3, "{} token requests", mock.calls());
    drop(a);
}

/// A runtime that shuts down mid-refresh takes the refresh task with it; the caller waiting
/// on another runtime restarts the refresh and gets a token, not an error.
#[test]
fn a_refresh_lost_with_its_runtime_is_restarted_by_a_waiter() {
    let server = MockServer::start();
    let mock = current_thread().block_on(slow_endpoint(&server, Duration::from_millis(300), 3600));
    let provider = TokenProvider::new(source(&server));
    let started = Arc::new(std::sync::Barrier::new(2));

    let doomed = {
        let (provider, started) = (provider.clone(), started.clone());
        std::thread::spawn(move || {
            let runtime = current_thread();
            runtime.block_on(async {
                tokio::spawn(async move { provider.token().await });
                tokio::task::yield_now().await; // the refresh task is spawned and running
                started.wait();
                tokio::time::sleep(Duration::from_millis(100)).await;
            });
            drop(runtime); // shuts down with the refresh task in flight
        })
    };
    started.wait();
    let waiter = current_thread();
    let token = waiter
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), provider.token()).await })
        .expect("no hang");
    doomed.join().unwrap();
    assert_eq!(token.expect("not RefreshAborted").expose_secret(), "tok");
    assert!(mock.calls() <= 2, "{} token requests", mock.calls());
}

/// What `#[tokio::test]`s sharing a static provider do: eight threads, each running one
/// short-lived runtime after another, with tokens short enough to be refreshed all the time.
/// No call may fail.
#[test]
fn eight_threads_of_short_lived_runtimes_never_fail() {
    let server = MockServer::start();
    let mock = current_thread().block_on(slow_endpoint(&server, Duration::from_millis(20), 1));
    let provider = TokenProvider::builder(source(&server))
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
        .build();
    let failures = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (provider, failures) = (provider.clone(), failures.clone());
            std::thread::spawn(move || {
                for _ in 0..90 {
                    let runtime = current_thread();
                    let result = runtime.block_on(async {
                        tokio::time::timeout(Duration::from_secs(10), provider.token()).await
                    });
                    match result {
                        Ok(Ok(token)) => assert!(token.expires_in() > Duration::ZERO),
                        Ok(Err(error)) => {
                            eprintln!("{error}");
                            failures.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(_) => panic!("a token() call hung"),
                    }
                    drop(runtime);
                    std::thread::sleep(Duration::from_millis(fastrand::u64(5..30)));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(failures.load(Ordering::SeqCst), 0, "of 720 calls");
    assert!(mock.calls() >= 2, "tokens were refreshed: {}", mock.calls());
}

/// The request's own timeout bounds the token wait: an identity service that accepts the
/// connection and never answers costs a request with `.timeout(300ms)` about 300 ms, not
/// the token request's 10 s and its retries.
#[tokio::test]
async fn a_request_timeout_bounds_the_token_wait() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/oauth2/token", silent.local_addr().unwrap());
    let _keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket); // accepted, never answered
        }
    });
    let provider = TokenProvider::new(token_refresh::JwtBearer::new(account()).token_url(url));
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(token_refresh::AuthMiddleware::new(provider))
        .build();
    let started = std::time::Instant::now();
    let error = client
        .get("http://127.0.0.1:9/v2/projects")
        .timeout(Duration::from_millis(300))
        .send()
        .await
        .unwrap_err();
    let waited = started.elapsed();
    let token_error = Error::find(&error).expect("a token error");
    assert!(
        matches!(token_error, Error::WaitTimeout { .. }),
        "{token_error:?}"
    );
    assert!(token_error.is_transient());
    assert!(
        waited < Duration::from_secs(2),
        "waited {waited:?} for a 300 ms request"
    );
}

/// With every setting at its default, no caller waits longer than the documented bound
/// (`DEFAULT_MAX_WAIT`, 30 s) for a token, however long the refresh goes on.
#[tokio::test(start_paused = true)]
async fn with_defaults_no_caller_waits_longer_than_the_documented_bound() {
    let provider = TokenProvider::new(|| async {
        std::future::pending::<()>().await;
        AccessToken::new("never", Duration::from_secs(60))
    });
    let started = Instant::now();
    let error = provider.token().await.unwrap_err();
    assert_eq!(started.elapsed(), token_refresh::defaults::DEFAULT_MAX_WAIT);
    assert!(token_refresh::defaults::DEFAULT_MAX_WAIT <= Duration::from_secs(30));
    assert!(
        matches!(error, Error::WaitTimeout { attempt: 1, .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("still running"), "{error}");
}

/// A caller that joins a refresh already under way (it waits at the flight's gate, without
/// a timer of its own) still gives up `max_wait` after it came: the refresh opens the gate
/// at its own `max_wait`, and the caller waits the rest with a timer.
#[tokio::test(start_paused = true)]
async fn a_caller_that_joins_a_stuck_refresh_gives_up_after_its_own_max_wait() {
    let provider = TokenProvider::builder(|| async {
        std::future::pending::<()>().await;
        AccessToken::new("never", Duration::from_secs(60))
    })
    .max_wait(Duration::from_secs(10))
    .build();
    let first = tokio::spawn({
        let provider = provider.clone();
        async move { provider.token().await }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = Instant::now();
    let error = provider.token().await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_secs(10));
    assert!(matches!(error, Error::WaitTimeout { .. }), "{error:?}");
    assert!(matches!(
        first.await.unwrap(),
        Err(Error::WaitTimeout { .. })
    ));
}

/// The tower integration has the same bound, settable per layer.
#[cfg(feature = "tower")]
#[tokio::test(start_paused = true)]
async fn a_tower_stack_bounds_the_token_wait_too() {
    use tower::ServiceExt;
    let provider = TokenProvider::new(|| async {
        std::future::pending::<()>().await;
        AccessToken::new("never", Duration::from_secs(60))
    });
    let api = tower::service_fn(|_: http::Request<String>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    });
    let service = tower::ServiceBuilder::new()
        .layer(token_refresh::AuthLayer::new(provider).max_token_wait(Duration::from_millis(300)))
        .service(api);
    let started = Instant::now();
    let error = service
        .oneshot(
            http::Request::get("https://api.example.com/")
                .body(String::new())
                .unwrap(),
        )
        .await
        .unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_millis(300));
    assert!(
        matches!(Error::find(&*error), Some(Error::WaitTimeout { .. })),
        "{error}"
    );
}

/// A token that reaches its hard margin while its slow refresh was running is a failed
/// attempt: no caller gets a token with `usable_for() == 0`.
#[tokio::test(start_paused = true)]
async fn no_token_inside_its_hard_margin_is_handed_out() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let provider = TokenProvider::builder(move || {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            let sent = Instant::now();
            if n == 0 {
                // 2 s on the way back, for a token that lives 2.1 s from the request: its
                // hard margin (a tenth) starts at 1.89 s.
                tokio::time::sleep(Duration::from_secs(2)).await;
                return AccessToken::issued_at("late", sent, Duration::from_millis(2_100));
            }
            AccessToken::issued_at("fresh", sent, Duration::from_secs(60))
        }
    })
    .backoff(Duration::from_millis(10), Duration::from_millis(10))
    .build();
    let waiters: Vec<_> = (0..10)
        .map(|_| {
            let provider = provider.clone();
            tokio::spawn(async move { provider.token().await })
        })
        .collect();
    for waiter in waiters {
        let token = waiter.await.unwrap().unwrap();
        assert_eq!(token.expose_secret(), "fresh");
        assert!(provider.usable_for(&token) > Duration::ZERO);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// A runtime built without the time driver gets an error that says to enable it, not a
/// panic inside the refresh reported as "aborted".
#[test]
fn a_runtime_without_the_time_driver_gets_a_clear_error() {
    let provider = TokenProvider::new(|| async { AccessToken::new("t", Duration::from_secs(60)) });
    let runtime = Builder::new_current_thread().enable_io().build().unwrap();
    let error = runtime.block_on(provider.token()).unwrap_err();
    assert!(matches!(error, Error::TimeDisabled), "{error:?}");
    assert!(error.to_string().contains("enable_time"), "{error}");
    // Asked again, the same answer, and still no panic.
    assert!(matches!(
        runtime.block_on(provider.token()),
        Err(Error::TimeDisabled)
    ));
}
