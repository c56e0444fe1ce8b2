//! Property tests of the two parsers that read untrusted bytes: the token endpoint's response
//! (`parse_token_response`) and the credentials file (`parse_credentials_json`).
//!
//! Neither may panic on any input; what they accept must be consistent with the input; what
//! they reject must not echo a secret; and a well-formed input must round-trip exactly.
//! 256 cases per property keep the whole file to a few seconds.

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde_json::{Map, Value, json};
use token_refresh::defaults::{DEFAULT_EXPIRES_IN, MAX_EXPIRES_IN};
use token_refresh::{Error, parse_credentials_json, parse_token_response};
use tokio::time::Instant;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        // proptest is built without its default features: no regression files.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------

/// Mostly 200, often another valid status, sometimes any `u16` at all.
fn status() -> impl Strategy<Value = u16> {
    prop_oneof![
        4 => Just(200u16),
        3 => 100u16..600,
        1 => any::<u16>(),
    ]
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..2048)
}

/// Any scalar JSON value, with extra weight on strings that look like numbers and like
/// token types.
fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("JSON has no NaN or infinity", |f| {
            serde_json::Number::from_f64(f).map(Value::Number)
        }),
        (-1e6f64..1e6).prop_map(Value::from),
        ".{0,24}".prop_map(Value::String),
        "[-+0-9 .eE]{0,12}".prop_map(Value::String),
        "[bB][eE][aA][rR][eE][rR]|mac|MAC|basic|".prop_map(Value::String),
    ]
}

/// Any JSON value, nested up to three levels.
fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::btree_map(".{0,8}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An object whose keys come mostly from `known`, sometimes random, each with any value.
fn object_with_keys(known: &'static [&'static str]) -> impl Strategy<Value = Map<String, Value>> {
    let key = prop_oneof![
        4 => proptest::sample::select(known).prop_map(str::to_owned),
        1 => ".{0,12}",
    ];
    proptest::collection::vec((key, json_value()), 0..8)
        .prop_map(|pairs| pairs.into_iter().collect())
}

const TOKEN_KEYS: &[&str] = &[
    "access_token",
    "token_type",
    "expires_in",
    "error",
    "error_description",
    "error_uri",
    "refresh_token",
    "scope",
];

/// A token response that is close to valid: each known field is missing, plausible or
/// random, so that both the success path and every error path are reached.
fn plausible_token_object() -> impl Strategy<Value = Map<String, Value>> {
    let access_token = prop_oneof![
        4 => "[!-~]{1,64}".prop_map(Value::String),
        1 => json_value(),
    ];
    let token_type = prop_oneof![
        4 => "[bB][eE][aA][rR][eE][rR]".prop_map(Value::String),
        1 => json_value(),
    ];
    let expires_in = prop_oneof![
        2 => (-10i64..200_000).prop_map(Value::from),
        1 => (-10.0f64..1e9).prop_map(Value::from),
        1 => (0u64..1_000_000).prop_map(|n| Value::String(n.to_string())),
        1 => json_value(),
    ];
    let error = prop_oneof![
        1 => "[a-z_]{1,24}".prop_map(Value::String),
        1 => json_value(),
    ];
    (
        proptest::option::weighted(0.9, access_token),
        proptest::option::weighted(0.9, token_type),
        proptest::option::weighted(0.7, expires_in),
        proptest::option::weighted(0.15, error),
        object_with_keys(TOKEN_KEYS),
    )
        .prop_map(|(access_token, token_type, expires_in, error, extra)| {
            let mut object = extra;
            for (key, value) in [
                ("access_token", access_token),
                ("token_type", token_type),
                ("expires_in", expires_in),
                ("error", error),
            ] {
                match value {
                    Some(value) => object.insert(key.to_owned(), value),
                    None => object.remove(key),
                };
            }
            object
        })
}

const ACCOUNT_KEYS: &[&str] = &["keyId", "secret", "email", "algorithm", "tokenEndpoint"];

/// A credentials file that is close to valid, or `{"serviceAccount": <anything>}`, or any
/// object with a few random keys around it.
fn credentials_value() -> impl Strategy<Value = Value> {
    let field = prop_oneof![
        3 => "[ -~]{0,40}".prop_map(Value::String),
        1 => json_value(),
    ];
    let algorithm = prop_oneof![
        3 => Just(Value::from("HS256")),
        1 => json_value(),
    ];
    let plausible = (
        proptest::option::weighted(0.9, field.clone()),
        proptest::option::weighted(0.9, field.clone()),
        proptest::option::weighted(0.9, field.clone()),
        proptest::option::weighted(0.5, algorithm),
        proptest::option::weighted(0.5, field),
        object_with_keys(ACCOUNT_KEYS),
    )
        .prop_map(|(key_id, secret, email, algorithm, endpoint, extra)| {
            let mut account = extra;
            for (key, value) in [
                ("keyId", key_id),
                ("secret", secret),
                ("email", email),
                ("algorithm", algorithm),
                ("tokenEndpoint", endpoint),
            ] {
                match value {
                    Some(value) => account.insert(key.to_owned(), value),
                    None => account.remove(key),
                };
            }
            Value::Object(account)
        });
    let service_account = prop_oneof![
        4 => plausible,
        1 => json_value(),
    ];
    (
        service_account,
        proptest::collection::btree_map(".{0,12}", json_value(), 0..3),
        proptest::bool::weighted(0.9),
    )
        .prop_map(|(account, extra, present)| {
            let mut root: Map<String, Value> = extra.into_iter().collect();
            if present {
                root.insert("serviceAccount".into(), account);
            } else {
                root.remove("serviceAccount");
            }
            Value::Object(root)
        })
}

// ---------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------

/// `secret` is worth looking for in error messages: long enough not to match by chance, and
/// present in `body` exactly once, verbatim (so no other field can carry it legitimately).
fn is_marker(secret: &str, body: &[u8]) -> bool {
    let body = String::from_utf8_lossy(body);
    secret.len() >= 12 && body.matches(secret).count() == 1
}

/// RFC 6750 §2.1 `b64token`, written out independently of the crate's check.
fn is_b64token(value: &str) -> bool {
    let body = value.trim_end_matches('=');
    !body.is_empty()
        && body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._~+/".contains(c))
}

/// Everything `parse_token_response` promises about one input.
fn check_token_response(
    status: u16,
    body: &[u8],
    retry_after: Option<Duration>,
) -> Result<(), TestCaseError> {
    let sent_at = Instant::now();
    let result = parse_token_response(status, retry_after, body, sent_at);
    let object = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Some(object),
        _ => None,
    };
    match &result {
        Ok(token) => {
            prop_assert!((200..300).contains(&status), "a token with HTTP {status}");
            let object = object.expect("a token from something that is not a JSON object");
            prop_assert!(
                !matches!(object.get("error"), Some(Value::String(_))),
                "a token from an error response"
            );
            prop_assert_eq!(
                object.get("access_token"),
                Some(&Value::from(token.expose_secret()))
            );
            prop_assert!(matches!(object.get("token_type"), Some(Value::String(t))
                    if t.eq_ignore_ascii_case("bearer")));
            prop_assert!(
                is_b64token(token.expose_secret()),
                "not a b64token accepted"
            );
            prop_assert_eq!(token.issued_at_instant(), sent_at);
            let lifetime = token.lifetime();
            prop_assert!(lifetime >= Duration::from_secs(1), "{lifetime:?}");
            prop_assert!(lifetime <= MAX_EXPIRES_IN, "{lifetime:?}");
            if matches!(object.get("expires_in"), None | Some(Value::Null)) {
                prop_assert_eq!(lifetime, DEFAULT_EXPIRES_IN);
            }
            let header = token.header_value();
            prop_assert!(header.is_sensitive());
            let expected = format!("Bearer {}", token.expose_secret());
            prop_assert_eq!(header.as_bytes(), expected.as_bytes());
        }
        Err(error) => {
            if status == 408 || status == 429 || (500..600).contains(&status) {
                prop_assert!(error.is_transient(), "HTTP {status} gave {error:?}");
            }
            if matches!(error, Error::HttpStatus { .. } | Error::OAuth { .. }) {
                prop_assert_eq!(error.retry_after(), retry_after);
            }
            // The token offered in a rejected response is not echoed.
            if let Some(Value::String(token)) = object.as_ref().and_then(|o| o.get("access_token"))
                && is_marker(token, body)
            {
                prop_assert!(!error.to_string().contains(token.as_str()), "{error}");
                prop_assert!(!format!("{error:?}").contains(token.as_str()), "{error:?}");
            }
        }
    }
    if !(200..300).contains(&status) {
        prop_assert!(result.is_err(), "HTTP {status} gave a token");
    }
    Ok(())
}

/// Everything `parse_credentials_json` promises about one input.
fn check_credentials(body: &[u8]) -> Result<(), TestCaseError> {
    let result = parse_credentials_json(body);
    let account_json = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|root| root.get("serviceAccount").cloned());
    let text = |name: &str| match account_json.as_ref().and_then(|a| a.get(name)) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        _ => None,
    };
    match &result {
        Ok(account) => {
            prop_assert!(matches!(account_json, Some(Value::Object(_))));
            prop_assert_eq!(text("keyId"), Some(account.key_id().to_owned()));
            prop_assert_eq!(text("secret"), Some(account.expose_secret().to_owned()));
            prop_assert_eq!(text("email"), Some(account.email().to_owned()));
            prop_assert!(matches!(text("algorithm").as_deref(), None | Some("HS256")));
            prop_assert_eq!(
                text("tokenEndpoint"),
                account.token_url().map(str::to_owned)
            );
            if is_marker(account.expose_secret(), body) {
                let debug = format!("{account:?}");
                prop_assert!(!debug.contains(account.expose_secret()), "{debug}");
            }
        }
        Err(error) => {
            if let Some(secret) = text("secret")
                && is_marker(&secret, body)
            {
                prop_assert!(!error.to_string().contains(secret.as_str()), "{error}");
                prop_assert!(!format!("{error:?}").contains(secret.as_str()), "{error:?}");
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn token_response_arbitrary_bytes(status in status(), body in bytes()) {
        check_token_response(status, &body, None)?;
    }

    #[test]
    fn token_response_random_objects(
        status in status(),
        object in object_with_keys(TOKEN_KEYS),
    ) {
        let body = serde_json::to_vec(&Value::Object(object)).unwrap();
        check_token_response(status, &body, None)?;
    }

    #[test]
    fn token_response_plausible_objects(
        status in status(),
        object in plausible_token_object(),
        retry_after in proptest::option::of(0u64..100_000),
    ) {
        let body = serde_json::to_vec(&Value::Object(object)).unwrap();
        check_token_response(status, &body, retry_after.map(Duration::from_secs))?;
    }

    #[test]
    fn token_response_any_json(status in status(), value in json_value()) {
        let body = serde_json::to_vec(&value).unwrap();
        check_token_response(status, &body, None)?;
    }

    #[test]
    fn well_formed_token_response_round_trips(
        token in "[A-Za-z0-9._~+/-]{1,200}={0,2}",
        expires_in in 1u64..=86_400,
        token_type in "[bB][eE][aA][rR][eE][rR]",
        as_string in any::<bool>(),
    ) {
        let expires = if as_string { json!(expires_in.to_string()) } else { json!(expires_in) };
        let body = json!({
            "access_token": token,
            "token_type": token_type,
            "expires_in": expires,
        });
        let sent_at = Instant::now();
        let parsed = parse_token_response(200, None, body.to_string().as_bytes(), sent_at);
        let parsed = match parsed {
            Ok(parsed) => parsed,
            Err(error) => return Err(TestCaseError::fail(format!("{body}: {error:?}"))),
        };
        prop_assert_eq!(parsed.expose_secret(), token.as_str());
        prop_assert_eq!(parsed.lifetime(), Duration::from_secs(expires_in));
        prop_assert_eq!(parsed.expires_at(), sent_at + Duration::from_secs(expires_in));
    }

    #[test]
    fn credentials_arbitrary_bytes(body in bytes()) {
        check_credentials(&body)?;
    }

    #[test]
    fn credentials_json_shapes(value in credentials_value()) {
        let body = serde_json::to_vec(&value).unwrap();
        check_credentials(&body)?;
    }

    #[test]
    fn credentials_any_json(value in json_value()) {
        let body = serde_json::to_vec(&value).unwrap();
        check_credentials(&body)?;
    }

    #[test]
    fn well_formed_credentials_round_trip(
        key_id in "[ -~]{1,40}",
        secret in "[ -~]{1,80}",
        email in "[ -~]{1,60}",
        endpoint in proptest::option::of("https://[a-z]{1,12}\\.example/oauth2/token"),
        with_algorithm in any::<bool>(),
    ) {
        prop_assume!(!key_id.trim().is_empty());
        prop_assume!(!secret.trim().is_empty());
        prop_assume!(!email.trim().is_empty());
        let mut account = json!({"keyId": key_id, "secret": secret, "email": email});
        if with_algorithm {
            account["algorithm"] = json!("HS256");
        }
        if let Some(endpoint) = &endpoint {
            account["tokenEndpoint"] = json!(endpoint);
        }
        let body = json!({"serviceAccount": account}).to_string();
        let parsed = match parse_credentials_json(body.as_bytes()) {
            Ok(parsed) => parsed,
            Err(error) => return Err(TestCaseError::fail(format!("{error:?}"))),
        };
        prop_assert_eq!(parsed.key_id(), key_id.as_str());
        prop_assert_eq!(parsed.expose_secret(), secret.as_str());
        prop_assert_eq!(parsed.email(), email.as_str());
        prop_assert_eq!(parsed.token_url(), endpoint.as_deref());
    }
}
