//! Token endpoints that misbehave on purpose: they echo the assertion back, redirect it
//! elsewhere, issue tokens that are not tokens, and send `Retry-After` dates from a clock
//! an hour ahead. Nothing secret may leak, nothing may be sent elsewhere, and the errors
//! people read must say what happened.
#![cfg(feature = "reqwest")]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::*;
use serde_json::json;
use token_refresh::{AuthMiddleware, Error, JwtBearer, TokenProvider};

/// Every assertion the servers of a test received.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<String>>>);

impl Seen {
    fn record(&self, body: &[u8]) -> String {
        let assertion = form_value(body, "assertion").unwrap_or_default();
        self.0.lock().unwrap().push(assertion.clone());
        assertion
    }
    /// The assertions, their signatures, and the service account secret.
    fn secrets(&self) -> Vec<String> {
        let mut secrets = vec![SECRET.to_owned()];
        for assertion in self.0.lock().unwrap().iter() {
            secrets.push(assertion.clone());
            if let Some(signature) = assertion.rsplit('.').next() {
                secrets.push(signature.to_owned());
            }
        }
        secrets
    }
}

fn assert_no_secret(texts: &[String], secrets: &[String]) {
    for text in texts {
        for secret in secrets {
            assert!(!secret.is_empty());
            assert!(
                !text.contains(secret.as_str()),
                "leaked {secret:.12}… in: {text}"
            );
        }
    }
}

/// A token endpoint that echoes the assertion in every string it returns is scrubbed from
/// the error's `Display` and `Debug`, the middleware's error, the provider's `Debug` and the
/// logs.
#[tokio::test]
async fn echoed_assertions_never_leak() {
    let logs = LogCapture::global();
    let seen = Seen::default();
    let recorder = seen.clone();
    let server = serve(move |request| {
        let assertion = recorder.record(&request.body);
        let body = json!({
            "error": format!("invalid_grant:{assertion}"),
            "error_description": format!("bad assertion {assertion} (signed with {SECRET})"),
            "error_uri": format!("https://idp.example.com/help?assertion={assertion}"),
        });
        json_response(400, &body, &[])
    })
    .await;
    let provider =
        TokenProvider::builder(JwtBearer::new(account()).token_url(server.url("/token")))
            .max_attempts(1)
            .build();
    let error = provider.token().await.unwrap_err();
    assert_eq!(
        error.oauth_error().map(|e| e.starts_with("invalid_grant")),
        Some(true)
    );

    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(AuthMiddleware::new(provider.clone()))
        .build();
    let middleware_error = client
        .get(server.url("/v2/projects"))
        .send()
        .await
        .unwrap_err();

    // And a token_type that echoes it.
    let recorder = seen.clone();
    let echo_type = serve(move |request| {
        let assertion = recorder.record(&request.body);
        json_response(
            200,
            &json!({"access_token": "tok", "token_type": assertion}),
            &[],
        )
    })
    .await;
    let other =
        TokenProvider::builder(JwtBearer::new(account()).token_url(echo_type.url("/token")))
            .max_attempts(1)
            .build();
    let type_error = other.token().await.unwrap_err();
    assert!(
        matches!(type_error, Error::UnsupportedTokenType(_)),
        "{type_error:?}"
    );

    let texts = vec![
        error.to_string(),
        format!("{error:?}"),
        middleware_error.to_string(),
        format!("{middleware_error:?}"),
        format!("{provider:?}"),
        type_error.to_string(),
        format!("{type_error:?}"),
        format!("{other:?}"),
        logs.text(),
    ];
    assert!(server.requests() >= 1 && echo_type.requests() == 1);
    assert_no_secret(&texts, &seen.secrets());
    assert!(error.to_string().contains("[REDACTED]"), "{error}");
}

/// A user-supplied client that follows redirects still never sends the assertion to another
/// origin: a 307 is not followed (the body cannot be resent), and the token an answer from
/// another origin carries (after a 302) is refused.
#[tokio::test]
async fn a_redirect_following_client_never_takes_the_assertion_elsewhere() {
    let seen = Seen::default();
    let recorder = seen.clone();
    let elsewhere = serve(move |request| {
        recorder.record(&request.body);
        json_response(200, &token_json("stolen", 3600), &[])
    })
    .await;
    for status in [307, 308, 302, 303, 301] {
        let target = elsewhere.url("/token");
        let origin = serve(move |_| {
            http::Response::builder()
                .status(status)
                .header("location", target.as_str())
                .body(String::new())
                .unwrap()
        })
        .await;
        let source = JwtBearer::new(account())
            .token_url(origin.url("/oauth2/token"))
            .http_client(reqwest::Client::new()); // follows up to 10 redirects
        let provider = TokenProvider::builder(source).max_attempts(1).build();
        let error = provider.token().await.unwrap_err();
        assert!(
            matches!(error, Error::Redirect { .. }),
            "{status}: {error:?}"
        );
        assert!(!error.is_transient());
        assert!(
            error.to_string().contains(&elsewhere.addr.to_string()),
            "{error}"
        );
        assert_eq!(origin.requests(), 1, "{status}");
    }
    let assertions: Vec<_> = seen.0.lock().unwrap().clone();
    assert!(
        assertions.iter().all(String::is_empty),
        "the other origin received an assertion"
    );
}

/// RFC 6750 §2.1: an access token is a `b64token`. Anything else is an `InvalidField` error
/// and is never cached.
#[tokio::test]
async fn tokens_that_are_not_b64tokens_are_refused_and_not_cached() {
    for bad in [
        "Bearer abc",
        "abc def",
        "\tabc",
        " abc",
        "abc ",
        "tökén",
        "a,b",
    ] {
        let server = serve(move |_| json_response(200, &token_json(bad, 3600), &[])).await;
        let provider =
            TokenProvider::builder(JwtBearer::new(account()).token_url(server.url("/token")))
                .max_attempts(1)
                .cooldown(Duration::ZERO)
                .build();
        let error = provider.token().await.unwrap_err();
        assert!(
            matches!(
                error,
                Error::InvalidField {
                    field: "access_token",
                    ..
                }
            ),
            "{bad:?}: {error:?}"
        );
        assert!(!error.to_string().contains(bad.trim()), "{error}");
        assert!(provider.token().await.is_err(), "{bad:?} was cached");
        assert_eq!(server.requests(), 2, "{bad:?}");
    }
}

/// A server whose clock runs an hour ahead and asks for 2 s with an HTTP-date gets 2 s, not
/// "give up at once and cool down for five minutes".
#[tokio::test]
async fn retry_after_dates_are_measured_against_the_servers_clock() {
    let answered = Arc::new(Mutex::new(0));
    let count = answered.clone();
    let server = serve(move |_| {
        let mut count = count.lock().unwrap();
        *count += 1;
        if *count == 1 {
            let server_now = SystemTime::now() + Duration::from_secs(3600);
            let date = httpdate::fmt_http_date(server_now);
            let retry = httpdate::fmt_http_date(server_now + Duration::from_secs(2));
            json_response(503, &json!({}), &[("date", &date), ("retry-after", &retry)])
        } else {
            json_response(200, &token_json("after-the-wait", 3600), &[])
        }
    })
    .await;
    let provider = TokenProvider::new(JwtBearer::new(account()).token_url(server.url("/token")));
    let started = std::time::Instant::now();
    let token = provider.token().await.unwrap();
    assert_eq!(token.expose_secret(), "after-the-wait");
    assert_eq!(server.requests(), 2);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "the wait was honoured"
    );
}

/// Errors name their variant in `Debug`, and a refresh that ends after retries says how many
/// attempts it made over how long, not just the last attempt's "timed out after 200ms".
#[tokio::test]
async fn errors_say_what_happened_and_how_often() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", silent.local_addr().unwrap());
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let provider = TokenProvider::builder(
        JwtBearer::new(account())
            .token_url(url)
            .timeout(Duration::from_millis(200)),
    )
    .max_attempts(3)
    .backoff(Duration::from_millis(10), Duration::from_millis(20))
    .build();
    let error = provider.token().await.unwrap_err();
    let text = error.to_string();
    assert!(text.contains("after 3 attempts over"), "{text}");
    assert!(text.contains("timed out after 200ms"), "{text}");
    let debug = format!("{error:?}");
    assert!(debug.starts_with("Retried {"), "{debug}");
    assert!(debug.contains("Timeout("), "{debug}");
    assert!(error.is_transient());
}
