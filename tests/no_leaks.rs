//! Secrets, assertions and tokens appear in no Debug/Display output and no log line.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use httpmock::prelude::*;
use token_refresh::{AccessToken, TokenProvider, TokenSource};

const TOKEN: &str = "tok-ZXhhbXBsZS1hY2Nlc3MtdG9rZW4";

#[tokio::test]
async fn no_secret_in_debug_display_or_logs() {
    let logs = LogCapture::global();
    let server = MockServer::start_async().await;
    let assertions = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = assertions.clone();
    server
        .mock_async(|when, then| {
            when.method(POST).path("/oauth2/token").is_true(move |req| {
                sink.lock().unwrap().push(req.body_string());
                true
            });
            then.status(200).json_body(token_json(TOKEN, 3600));
        })
        .await;

    let account = account();
    let source = source(&server);
    let provider = TokenProvider::new(source.clone());
    let token = provider.token().await.unwrap();
    assert_eq!(token.expose_secret(), TOKEN);

    let mut outputs = vec![
        format!("{account:?}"),
        format!("{source:?}"),
        format!("{provider:?}"),
        format!("{token:?}"),
        format!("{:?}", token.header_value()),
    ];

    // Errors from every failure path the server can produce.
    for (status, body) in [
        (
            400,
            r#"{"error":"invalid_grant","error_description":"bad assertion"}"#.to_owned(),
        ),
        (
            200,
            format!(r#"{{"access_token":"{TOKEN}","token_type":"mac"}}"#),
        ),
        (
            200,
            format!(r#"{{"access_token":"{TOKEN}","token_type":"bearer","expires_in":"soon"}}"#),
        ),
        (
            200,
            format!(r#"{{"access_token":{{"v":"{TOKEN}"}},"token_type":"bearer"}}"#),
        ),
        (200, format!(r#"{{"access_token":"{TOKEN}""#)),
        (503, format!("upstream said {TOKEN}")),
    ] {
        let server = MockServer::start_async().await;
        token_endpoint(&server, |then| {
            then.status(status).body(body.clone());
        })
        .await;
        let provider = TokenProvider::builder(common::source(&server))
            .max_attempts(1)
            .build();
        let error = provider.token().await.unwrap_err();
        outputs.push(format!("{error}"));
        outputs.push(format!("{error:?}"));
        outputs.push(format!("{provider:?}"));
    }
    let custom = TokenProvider::new(|| async { AccessToken::new(TOKEN, Duration::from_secs(60)) });
    custom.token().await.unwrap();
    outputs.push(format!("{custom:?}"));
    source.fetch_token().await.unwrap();

    let assertions = assertions.lock().unwrap().clone();
    assert!(!assertions.is_empty());
    let mut secrets = vec![SECRET.to_owned(), TOKEN.to_owned()];
    for body in &assertions {
        let assertion = body
            .split('&')
            .find_map(|p| p.strip_prefix("assertion="))
            .unwrap();
        secrets.push(assertion.to_owned());
        // The signature alone is secret too.
        secrets.push(assertion.rsplit('.').next().unwrap().to_owned());
    }
    // The mock server runs in this process and logs what it receives: that is the server's
    // side, not ours, so its events (which may span lines) are left out.
    let mut kept = Vec::new();
    let mut keep = true;
    for line in logs.text().lines() {
        if line.starts_with(|c: char| c.is_ascii_digit()) {
            keep = !line.contains(" httpmock::");
        }
        if keep {
            kept.push(line.to_owned());
        }
    }
    let logs = kept.join("\n");
    assert!(
        logs.contains("access token refreshed"),
        "logs were captured:\n{logs}"
    );
    for secret in &secrets {
        if let Some(line) = logs.lines().find(|l| l.contains(secret.as_str())) {
            panic!("a secret is in the logs: {line}");
        }
        for output in &outputs {
            assert!(!output.contains(secret.as_str()), "a secret is in {output}");
        }
    }
}
