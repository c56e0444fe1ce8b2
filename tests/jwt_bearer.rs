//! The JWT-bearer grant against a real local server.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use httpmock::prelude::*;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde_json::{Value, json};
use token_refresh::{Error, JwtBearer, ServiceAccount, TokenSource};

fn form_field(body: &str, name: &str) -> Option<String> {
    body.split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.replace("%3A", ":"))
}

#[tokio::test]
async fn server_receives_a_verifiable_dt_assertion() {
    let server = MockServer::start_async().await;
    let received = Arc::new(Mutex::new(None::<(String, String)>));
    let sink = received.clone();
    let mock = server
        .mock_async(|when, then| {
            when.method(POST)
                .path("/oauth2/token")
                .header("content-type", "application/x-www-form-urlencoded")
                .is_true(move |req| {
                    let content_type = req
                        .headers()
                        .get("content-type")
                        .map(|v| v.to_str().unwrap().to_owned())
                        .unwrap_or_default();
                    *sink.lock().unwrap() = Some((req.body_string(), content_type));
                    true
                });
            then.status(200).json_body(token_json("tok-1", 3600));
        })
        .await;

    let token = source(&server).fetch_token().await.unwrap();
    assert_eq!(token.expose_secret(), "tok-1");
    assert_eq!(mock.calls_async().await, 1);

    let (body, content_type) = received.lock().unwrap().clone().unwrap();
    assert_eq!(content_type, "application/x-www-form-urlencoded");
    assert_eq!(
        form_field(&body, "grant_type").as_deref(),
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    );
    let assertion = form_field(&body, "assertion").unwrap();

    common::jsonwebtoken();
    let header = decode_header(&assertion).unwrap();
    assert_eq!(header.alg, Algorithm::HS256);
    assert_eq!(header.kid.as_deref(), Some(KEY_ID));
    assert_eq!(header.typ.as_deref(), Some("JWT"));

    let token_url = server.url("/oauth2/token");
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_audience(&[&token_url]);
    validation.set_issuer(&[EMAIL]);
    validation.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
    let claims = decode::<Value>(
        &assertion,
        &DecodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        &validation,
    )
    .unwrap()
    .claims;
    let object = claims.as_object().unwrap();
    let mut keys: Vec<_> = object.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["aud", "exp", "iat", "iss"], "exactly DT's claims");
    assert_eq!(claims["aud"], json!(token_url));
    assert_eq!(claims["iss"], json!(EMAIL));
    let iat = claims["iat"].as_u64().unwrap();
    let exp = claims["exp"].as_u64().unwrap();
    assert_eq!(exp - iat, 3600);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        iat <= now && iat + 30 >= now,
        "iat is now, backdated a little"
    );

    // A wrong key must not verify it.
    assert!(
        decode::<Value>(
            &assertion,
            &DecodingKey::from_secret(b"another secret").unwrap(),
            &validation
        )
        .is_err()
    );
}

#[tokio::test]
async fn sub_and_jti_are_opt_in() {
    let server = MockServer::start_async().await;
    let received = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = received.clone();
    server
        .mock_async(|when, then| {
            when.method(POST).path("/oauth2/token").is_true(move |req| {
                sink.lock().unwrap().push(req.body_string());
                true
            });
            then.status(200).json_body(token_json("tok", 3600));
        })
        .await;
    let source = source(&server).subject("someone").jti(true);
    source.fetch_token().await.unwrap();
    source.fetch_token().await.unwrap();
    let bodies = received.lock().unwrap().clone();
    let claims: Vec<Value> = bodies
        .iter()
        .map(|b| {
            let assertion = form_field(b, "assertion").unwrap();
            let payload = assertion.split('.').nth(1).unwrap();
            let json = base64_url_decode(payload);
            serde_json::from_slice(&json).unwrap()
        })
        .collect();
    assert_eq!(claims[0]["sub"], json!("someone"));
    assert!(claims[0]["jti"].is_string());
    assert_ne!(
        claims[0]["jti"], claims[1]["jti"],
        "jti is unique per assertion"
    );
}

fn base64_url_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let v = ALPHABET.iter().position(|&a| a == c).unwrap() as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[tokio::test]
async fn token_url_comes_from_the_credentials_file_account() {
    let server = MockServer::start_async().await;
    let mock = server
        .mock_async(|when, then| {
            when.method(POST).path("/custom/token");
            then.status(200).json_body(token_json("tok", 3600));
        })
        .await;
    let account =
        ServiceAccount::new(KEY_ID, EMAIL, SECRET).with_token_url(server.url("/custom/token"));
    let source = JwtBearer::new(account);
    assert_eq!(source.url(), server.url("/custom/token"));
    source.fetch_token().await.unwrap();
    assert_eq!(mock.calls_async().await, 1);
}

async fn fetch_with_response(status: u16, body: &str) -> (Error, usize) {
    let server = MockServer::start_async().await;
    let mock = token_endpoint(&server, |then| {
        then.status(status)
            .header("content-type", "application/json")
            .body(body);
    })
    .await;
    let error = source(&server).fetch_token().await.unwrap_err();
    (error, mock.calls_async().await)
}

#[tokio::test]
async fn invalid_grant_carries_the_oauth_error() {
    let (error, hits) = fetch_with_response(
        400,
        r#"{"error":"invalid_grant","error_description":"Invalid JWT signature"}"#,
    )
    .await;
    assert_eq!(hits, 1);
    assert_eq!(error.oauth_error(), Some("invalid_grant"));
    assert!(!error.is_transient());
    let text = error.to_string();
    assert!(
        text.contains("invalid_grant") && text.contains("Invalid JWT signature"),
        "{text}"
    );
    match error {
        Error::OAuth {
            status,
            description,
            ..
        } => {
            assert_eq!(status, 400);
            assert_eq!(description.as_deref(), Some("Invalid JWT signature"));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn oauth_error_sent_with_200_is_an_error() {
    let (error, _) = fetch_with_response(
        200,
        r#"{"error":"invalid_client","error_uri":"https://example.com/help"}"#,
    )
    .await;
    assert!(
        matches!(&error, Error::OAuth { status: 200, uri: Some(u), .. } if u == "https://example.com/help")
    );
}

#[tokio::test]
async fn malformed_responses_are_distinct_errors() {
    let (e, _) = fetch_with_response(200, "<html>proxy error</html>").await;
    assert!(matches!(e, Error::InvalidJson(_)), "{e:?}");
    let (e, _) = fetch_with_response(200, r#"{"token_type":"bearer","expires_in":3600}"#).await;
    assert!(matches!(e, Error::MissingField("access_token")), "{e:?}");
    let (e, _) = fetch_with_response(200, r#"{"access_token":"x","token_type":"mac"}"#).await;
    assert!(
        matches!(&e, Error::UnsupportedTokenType(t) if t == "mac"),
        "{e:?}"
    );
    assert!(!e.to_string().contains("\"x\""));
    let (e, _) = fetch_with_response(200, r#"{"access_token":"x","expires_in":60}"#).await;
    assert!(matches!(e, Error::MissingField("token_type")), "{e:?}");
    let (e, _) = fetch_with_response(503, "").await;
    assert!(matches!(e, Error::HttpStatus { status: 503, .. }), "{e:?}");
    assert!(e.is_transient());
}

#[tokio::test]
async fn retry_after_is_parsed_from_seconds_and_dates() {
    let server = MockServer::start_async().await;
    token_endpoint(&server, |then| {
        then.status(429).header("retry-after", "7");
    })
    .await;
    let e = source(&server).fetch_token().await.unwrap_err();
    assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));

    let server = MockServer::start_async().await;
    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
    token_endpoint(&server, |then| {
        then.status(503).header("retry-after", date.as_str());
    })
    .await;
    let e = source(&server).fetch_token().await.unwrap_err();
    let after = e.retry_after().unwrap();
    assert!(
        after > Duration::from_secs(100) && after <= Duration::from_secs(120),
        "{after:?}"
    );
}

#[tokio::test]
async fn connection_refused_is_a_connect_error() {
    let source = JwtBearer::new(account()).token_url(closed_port_url());
    let e = source.fetch_token().await.unwrap_err();
    assert!(matches!(e, Error::Connect(_)), "{e:?}");
    assert!(e.is_transient());
}

#[tokio::test]
async fn slow_endpoint_times_out() {
    let server = MockServer::start_async().await;
    token_endpoint(&server, |then| {
        then.status(200)
            .json_body(token_json("late", 3600))
            .delay(Duration::from_secs(3));
    })
    .await;
    let source = source(&server).timeout(Duration::from_millis(200));
    let e = source.fetch_token().await.unwrap_err();
    assert!(
        matches!(e, Error::Timeout(d) if d == Duration::from_millis(200)),
        "{e:?}"
    );
    assert!(e.is_transient());
}

#[tokio::test]
async fn oversized_response_is_refused() {
    let big = format!(
        r#"{{"access_token":"{}","token_type":"bearer"}}"#,
        "a".repeat(token_refresh::defaults::MAX_RESPONSE_BYTES)
    );
    let (e, _) = fetch_with_response(200, &big).await;
    assert!(matches!(e, Error::ResponseTooLarge { .. }), "{e:?}");
}

#[tokio::test]
async fn empty_credentials_name_the_field() {
    let server = MockServer::start_async().await;
    let mock = token_endpoint(&server, |then| {
        then.status(200).json_body(token_json("tok", 3600));
    })
    .await;
    let account = ServiceAccount::new(KEY_ID, EMAIL, "");
    let e = JwtBearer::new(account)
        .token_url(server.url("/oauth2/token"))
        .fetch_token()
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::EmptyCredential {
                field: "service account secret"
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        mock.calls_async().await,
        0,
        "nothing is sent without a secret"
    );
}

#[tokio::test]
async fn plain_http_token_url_must_be_loopback() {
    let source = JwtBearer::new(account()).token_url("http://identity.example.com/oauth2/token");
    let e = source.fetch_token().await.unwrap_err();
    assert!(
        matches!(&e, Error::InsecureTransport { host, .. } if host == "identity.example.com"),
        "{e:?}"
    );
    // It says what would go, which setter allows it, and how for a discovered provider.
    let text = e.to_string();
    assert!(text.contains("the signed JWT assertion"), "{text}");
    assert!(text.contains("JwtBearer::allow_http(true)"), "{text}");
    assert!(text.contains("TokenProvider::discover()"), "{text}");
    assert!(!text.contains("access token"), "{text}");
}
