//! Does the client-credentials grant (RFC 6749 §4.4) send what the RFC says — the client
//! authenticated either way of §2.3.1, its scopes and parameters — fail fast on permanent
//! errors, recover from transient ones, and keep its secret out of everything people read?

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use common::*;
use httpmock::prelude::*;
use serde_json::json;
use token_refresh::{ClientAuth, ClientCredentials, Error, TokenProvider};

/// Bounds every provider call: a test that hangs fails instead.
const LIMIT: Duration = Duration::from_secs(5);

/// A client id and a secret with every character RFC 6749 §2.3.1's form-urlencoding changes:
/// `:` (Basic's separator), `+` (a space once decoded), `%`, a space and non-ASCII.
const ID: &str = "clïent:1+2%";
const CLIENT_SECRET: &str = "s3:cr+et% ü";
/// `ID` and `CLIENT_SECRET` form-urlencoded, written out by hand.
const ID_ENCODED: &str = "cl%C3%AFent%3A1%2B2%25";
const SECRET_ENCODED: &str = "s3%3Acr%2Bet%25+%C3%BC";

/// The headers and body of one request.
type Request = (http::HeaderMap, Vec<u8>);

/// The head and body of every request a [`serve`] server got.
#[derive(Clone, Default)]
struct Requests(Arc<Mutex<Vec<Request>>>);

impl Requests {
    fn record(&self, request: &Received) {
        self.0
            .lock()
            .unwrap()
            .push((request.headers.clone(), request.body.clone()));
    }
    fn only(&self) -> Request {
        let requests = self.0.lock().unwrap();
        assert_eq!(requests.len(), 1, "exactly one token request");
        requests[0].clone()
    }
}

/// A token endpoint that records every request and answers it with a token.
async fn recording_token_server() -> (Served, Requests) {
    let requests = Requests::default();
    let recorder = requests.clone();
    let server = serve(move |request| {
        recorder.record(&request);
        json_response(200, &token_json("cc-token", 3600), &[])
    })
    .await;
    (server, requests)
}

async fn token_of(provider: &TokenProvider) -> Result<String, Error> {
    let token = tokio::time::timeout(LIMIT, provider.token())
        .await
        .expect("the provider answered in time")?;
    Ok(token.expose_secret().to_owned())
}

/// Every form parameter of `body`, decoded, in order.
fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

/// One form-urlencoded value, decoded (`+` is a space).
fn form_decode(text: &str) -> String {
    form_value(format!("v={text}").as_bytes(), "v").unwrap()
}

/// The Base64 part of `Authorization: Basic …`, and the id and secret it carries, decoded as
/// RFC 6749 §2.3.1 says.
fn basic_credentials(headers: &http::HeaderMap) -> Option<(String, String, String)> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let b64 = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((b64.to_owned(), form_decode(id), form_decode(secret)))
}

#[tokio::test]
async fn basic_auth_form_urlencodes_id_and_secret_before_base64() {
    let (server, requests) = recording_token_server().await;
    let source = ClientCredentials::new(server.url("/oauth2/token"), ID, CLIENT_SECRET);
    let provider = TokenProvider::new(source);
    assert_eq!(token_of(&provider).await.unwrap(), "cc-token");
    assert_eq!(server.requests(), 1);

    let (headers, body) = requests.only();
    let (b64, id, secret) = basic_credentials(&headers).expect("HTTP Basic credentials");
    let expected =
        base64::engine::general_purpose::STANDARD.encode(format!("{ID_ENCODED}:{SECRET_ENCODED}"));
    assert_eq!(
        b64, expected,
        "base64(urlencode(id) \":\" urlencode(secret))"
    );
    assert_eq!((id.as_str(), secret.as_str()), (ID, CLIENT_SECRET));
    assert_eq!(
        headers.get(http::header::CONTENT_TYPE).unwrap(),
        "application/x-www-form-urlencoded"
    );
    // The form carries the grant and nothing of the client.
    assert_eq!(
        String::from_utf8(body).unwrap(),
        "grant_type=client_credentials"
    );
}

#[tokio::test]
async fn post_auth_sends_id_and_secret_in_the_form_only() {
    let (server, requests) = recording_token_server().await;
    let source = ClientCredentials::new(server.url("/oauth2/token"), ID, CLIENT_SECRET)
        .client_auth(ClientAuth::Post);
    let provider = TokenProvider::new(source);
    assert_eq!(token_of(&provider).await.unwrap(), "cc-token");
    assert_eq!(server.requests(), 1);

    let (headers, body) = requests.only();
    assert!(
        headers.get(http::header::AUTHORIZATION).is_none(),
        "no Authorization header with ClientAuth::Post"
    );
    let text = String::from_utf8(body.clone()).unwrap();
    assert!(
        text.contains(&format!("client_id={ID_ENCODED}"))
            && text.contains(&format!("client_secret={SECRET_ENCODED}")),
        "form-urlencoded: {text}"
    );
    let mut pairs = form_pairs(&body);
    pairs.sort();
    assert_eq!(
        pairs,
        [
            ("client_id".to_owned(), ID.to_owned()),
            ("client_secret".to_owned(), CLIENT_SECRET.to_owned()),
            ("grant_type".to_owned(), "client_credentials".to_owned()),
        ]
    );
}

#[tokio::test]
async fn scopes_audience_and_extra_parameters_are_sent() {
    let (server, requests) = recording_token_server().await;
    let source = ClientCredentials::new(server.url("/oauth2/token"), "id", "secret")
        .scope("a b")
        .scope("c")
        .scope("a")
        .audience("https://api.example.com")
        .param("resource", "https://api.example.com/v2");
    let provider = TokenProvider::new(source);
    token_of(&provider).await.unwrap();
    assert_eq!(server.requests(), 1);

    let (_, body) = requests.only();
    let pairs = form_pairs(&body);
    let values = |name: &str| -> Vec<String> {
        pairs
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    };
    assert_eq!(values("grant_type"), ["client_credentials"]);
    assert_eq!(values("scope"), ["a b c"], "once, space-joined, no repeats");
    assert_eq!(values("audience"), ["https://api.example.com"]);
    assert_eq!(values("resource"), ["https://api.example.com/v2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_callers_on_a_cold_cache_cause_one_token_request() {
    const CALLERS: usize = 1000;
    let server = MockServer::start_async().await;
    let mock = token_endpoint(&server, |then| {
        // Slow enough that every caller arrives while the one request is in flight.
        then.status(200)
            .json_body(token_json("shared", 3600))
            .delay(Duration::from_millis(200));
    })
    .await;
    let provider = TokenProvider::new(ClientCredentials::new(
        server.url("/oauth2/token"),
        "id",
        "secret",
    ));
    let barrier = Arc::new(tokio::sync::Barrier::new(CALLERS));
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..CALLERS {
        let (provider, barrier) = (provider.clone(), barrier.clone());
        callers.spawn(async move {
            barrier.wait().await;
            provider.token().await
        });
    }
    let results = tokio::time::timeout(LIMIT, callers.join_all())
        .await
        .expect("every caller got an answer in time");
    assert_eq!(results.len(), CALLERS);
    for result in &results {
        assert_eq!(result.as_ref().unwrap().expose_secret(), "shared");
    }
    assert_eq!(mock.calls_async().await, 1);
}

#[tokio::test]
async fn invalid_client_and_invalid_scope_fail_at_once_with_the_servers_text() {
    for (status, code, description) in [
        (
            401,
            "invalid_client",
            "client authentication failed: unknown client",
        ),
        (
            400,
            "invalid_scope",
            "scope admin is not granted to this client",
        ),
    ] {
        let server = serve(move |_| {
            json_response(
                status,
                &json!({"error": code, "error_description": description}),
                &[],
            )
        })
        .await;
        let source = ClientCredentials::new(server.url("/oauth2/token"), "id", "secret")
            .scope("read")
            .client_auth(ClientAuth::Post);
        let provider = TokenProvider::new(source);
        let error = token_of(&provider).await.unwrap_err();
        if code == "invalid_client" {
            assert!(
                error
                    .to_string()
                    .contains("check the client id and secret, the key"),
                "says what to check: {error}"
            );
        }
        assert_eq!(
            server.requests(),
            1,
            "{code}: a permanent error is not retried"
        );
        match &error {
            Error::OAuth {
                status: got_status,
                error: got,
                description: got_description,
                ..
            } => {
                assert_eq!(*got_status, status);
                assert_eq!(got, code);
                assert_eq!(got_description.as_deref(), Some(description));
            }
            other => panic!("{code}: expected Error::OAuth, got {other:?}"),
        }
        assert_eq!(error.oauth_error(), Some(code));
        assert!(!error.is_transient(), "{code}");
        let text = error.to_string();
        assert!(text.contains(description) && text.contains(code), "{text}");
    }
}

#[tokio::test]
async fn a_503_then_a_token_recovers_within_one_call() {
    let answered = Arc::new(AtomicUsize::new(0));
    let count = answered.clone();
    let server = serve(move |_| {
        if count.fetch_add(1, Ordering::SeqCst) == 0 {
            json_response(503, &json!({}), &[])
        } else {
            json_response(200, &token_json("after-503", 3600), &[])
        }
    })
    .await;
    let provider = TokenProvider::new(ClientCredentials::new(
        server.url("/oauth2/token"),
        "id",
        "secret",
    ));
    assert_eq!(token_of(&provider).await.unwrap(), "after-503");
    assert_eq!(server.requests(), 2);
    assert_eq!(answered.load(Ordering::SeqCst), 2);
}

/// The secret of this file's no-leak tests: unique to them, long enough to be scrubbed, and
/// with characters that form-urlencoding changes.
const LEAKY_ID: &str = "no-leak-client";
const LEAKY_SECRET: &str = "nL3ak-s3cr3t:+% ü-9c1f";

fn assert_no_secret(texts: &[String], secret: &str) {
    for text in texts {
        assert!(!text.contains(secret), "leaked {secret:.6}… in: {text}");
    }
}

/// The secret as the server decoded it, from Basic or from the form.
fn received_secret(request: &Received) -> String {
    basic_credentials(&request.headers)
        .map(|(_, _, secret)| secret)
        .or_else(|| form_value(&request.body, "client_secret"))
        .unwrap_or_default()
}

/// A server that echoes the client secret in every string of its `invalid_client` answer is
/// scrubbed from the error's `Display` and `Debug`; the source's and the provider's `Debug`
/// and the TRACE logs never show the secret.
#[tokio::test]
async fn the_client_secret_never_appears_in_debug_display_or_logs() {
    let logs = LogCapture::global();
    let server = serve(|request| {
        let secret = received_secret(&request);
        let body = json!({
            "error": "invalid_client",
            "error_description": format!("client secret {secret} is wrong"),
            "error_uri": format!("https://idp.example.com/help?secret={secret}"),
        });
        json_response(401, &body, &[("www-authenticate", "Basic realm=\"idp\"")])
    })
    .await;
    let mut texts = Vec::new();
    for auth in [ClientAuth::Basic, ClientAuth::Post] {
        let source = ClientCredentials::new(server.url("/oauth2/token"), LEAKY_ID, LEAKY_SECRET)
            .client_auth(auth.clone());
        texts.push(format!("{source:?}"));
        let provider = TokenProvider::new(source);
        let error = token_of(&provider).await.unwrap_err();
        assert_eq!(error.oauth_error(), Some("invalid_client"), "{auth:?}");
        let display = error.to_string();
        assert!(
            display.contains("client secret [REDACTED] is wrong"),
            "{auth:?}: the server's description, scrubbed: {display}"
        );
        texts.extend([display, format!("{error:?}"), format!("{provider:?}")]);
    }
    assert_eq!(server.requests(), 2);
    texts.push(logs.text());
    assert_no_secret(&texts, LEAKY_SECRET);
}

/// A server that echoes the request as it received it: the `Authorization` header and the
/// raw form.
async fn echoing_server() -> Served {
    serve(|request| {
        let authorization = request
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = String::from_utf8_lossy(&request.body).into_owned();
        let description = format!("rejected {authorization} with body {body}");
        json_response(
            401,
            &json!({"error": "invalid_client", "error_description": description}),
            &[],
        )
    })
    .await
}

/// The error texts of a run of `auth` against an [`echoing_server`].
async fn echoed_error_texts(auth: ClientAuth) -> Vec<String> {
    let server = echoing_server().await;
    let source = ClientCredentials::new(server.url("/oauth2/token"), LEAKY_ID, LEAKY_SECRET)
        .client_auth(auth);
    let provider = TokenProvider::new(source);
    let error = token_of(&provider).await.unwrap_err();
    assert_eq!(error.oauth_error(), Some("invalid_client"));
    assert_eq!(server.requests(), 1);
    let texts = vec![error.to_string(), format!("{error:?}")];
    assert!(
        texts[0].contains("rejected"),
        "the echo arrived: {}",
        texts[0]
    );
    texts
}

/// HTTP Basic sends the secret Base64-encoded: `base64(id ":" secret)` decodes straight back
/// to it, so a server that echoes the `Authorization` header must not get it into errors.
#[tokio::test]
async fn an_echoed_basic_credential_is_scrubbed() {
    let encoded = form_urlencoded::byte_serialize(LEAKY_SECRET.as_bytes()).collect::<String>();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{LEAKY_ID}:{encoded}"));
    let texts = echoed_error_texts(ClientAuth::Basic).await;
    assert_no_secret(&texts, &basic);
}

/// `ClientAuth::Post` sends the secret form-urlencoded: a server that echoes the raw form
/// must not get it into errors that way either.
#[tokio::test]
async fn an_echoed_form_encoded_secret_is_scrubbed() {
    let encoded = form_urlencoded::byte_serialize(LEAKY_SECRET.as_bytes()).collect::<String>();
    assert_ne!(encoded, LEAKY_SECRET, "the encoding changes the secret");
    let texts = echoed_error_texts(ClientAuth::Post).await;
    assert_no_secret(&texts, &encoded);
}

#[cfg(feature = "reqwest")]
#[tokio::test]
async fn emulator_tokens_work_on_the_api_with_both_client_authentications() {
    use token_refresh::AuthMiddleware;
    use token_refresh_emulator::Emulator;

    let default = Emulator::start().await.unwrap();
    let special = Emulator::builder()
        .client_id(ID)
        .client_secret(CLIENT_SECRET)
        .start()
        .await
        .unwrap();
    for emulator in [&default, &special] {
        for auth in [ClientAuth::Basic, ClientAuth::Post] {
            let before = emulator.stats();
            let provider =
                TokenProvider::new(emulator.client_credentials().client_auth(auth.clone()));
            let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
                .with(AuthMiddleware::new(provider).for_origin(&emulator.origin()))
                .build();
            let response = tokio::time::timeout(
                LIMIT,
                client
                    .get(format!("{}/projects", emulator.api_url()))
                    .send(),
            )
            .await
            .expect("answered in time")
            .unwrap();
            assert_eq!(response.status(), 200, "{auth:?}");
            let after = emulator.stats();
            assert_eq!(after.token_requests - before.token_requests, 1, "{auth:?}");
            assert_eq!(
                after.token_successes - before.token_successes,
                1,
                "{auth:?}"
            );
            assert_eq!(after.api_unauthorized, before.api_unauthorized, "{auth:?}");
            assert_eq!(after.api_requests - before.api_requests, 1, "{auth:?}");
        }
    }
}

#[tokio::test]
async fn an_empty_client_id_or_secret_is_reported_without_a_request() {
    let server = serve(|_| json_response(200, &token_json("never", 3600), &[])).await;
    for (id, secret, field) in [
        ("", "secret", "client_id"),
        (" \t", "secret", "client_id"),
        ("id", "", "client_secret"),
    ] {
        for auth in [ClientAuth::Basic, ClientAuth::Post] {
            let source =
                ClientCredentials::new(server.url("/oauth2/token"), id, secret).client_auth(auth);
            let provider = TokenProvider::new(source);
            let error = token_of(&provider).await.unwrap_err();
            assert!(
                matches!(error, Error::EmptyCredential { field: f } if f == field),
                "{id:?}/{secret:?}: {error:?}"
            );
            assert!(!error.is_transient());
            assert!(error.to_string().contains(field), "{error}");
        }
    }
    assert_eq!(server.requests(), 0);
}
