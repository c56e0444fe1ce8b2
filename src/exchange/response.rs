//! [`TokenResponse`](crate::TokenResponse): a token endpoint's RFC 6749 §5.1 answer, or its §5.2 error, turned
//! into a token or a precise [`Error`](crate::Error).

use std::fmt;
use std::time::Duration;

use secrecy::SecretString;
use serde_json::Value;
use tokio::time::Instant;

use super::dpop::Dpop;
use crate::defaults::{DEFAULT_EXPIRES_IN, MAX_EXPIRES_IN};
use crate::error::{Error, Result, Scrubber};
use crate::token::{AccessToken, is_b64token};

/// A token endpoint's whole answer: from [`TokenRequest::send_response`](crate::TokenRequest::send_response).
pub struct TokenResponse {
    token: AccessToken,
    refresh_token: Option<SecretString>,
    scope: Option<String>,
}

impl TokenResponse {
    /// The access token (with its `issued_token_type`, if the server sent one).
    pub fn token(&self) -> &AccessToken {
        &self.token
    }

    /// The access token, without the rest.
    pub fn into_token(self) -> AccessToken {
        self.token
    }

    /// The `refresh_token` the server sent, if any: a secret.
    pub fn refresh_token(&self) -> Option<&SecretString> {
        self.refresh_token.as_ref()
    }

    /// The `scope` the server granted, if it said (RFC 6749 §5.1).
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }
}

impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenResponse")
            .field("token", &self.token)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[REDACTED]"),
            )
            .field("scope", &self.scope)
            .finish()
    }
}

/// Turns a token endpoint's answer into a token or a precise error (RFC 6749 §5.1, §5.2);
/// text from the server goes through `scrubber`. `sent_at` is when the request went out: the
/// token's lifetime counts from then.
pub(crate) fn parse_response(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
    sent_at: Instant,
    scrubber: &Scrubber,
) -> Result<AccessToken> {
    parse_full(
        status,
        retry_after,
        body,
        sent_at,
        scrubber,
        Accept {
            not_applicable: false,
            dpop: None,
        },
    )
    .map(TokenResponse::into_token)
}

/// Which `token_type`s a token request accepts besides `Bearer`.
pub(super) struct Accept<'a> {
    /// `N_A` (a token exchange).
    pub(super) not_applicable: bool,
    /// `DPoP`, for a request that sent a proof; then `Bearer` only if allowed.
    pub(super) dpop: Option<&'a Dpop>,
}

/// [`parse_response`] keeping the whole answer, accepting the token types of `accept`.
pub(super) fn parse_full(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
    sent_at: Instant,
    scrubber: &Scrubber,
    accept: Accept<'_>,
) -> Result<TokenResponse> {
    let success = (200..300).contains(&status);
    let json = serde_json::from_slice::<Value>(body);
    let object = match &json {
        Ok(Value::Object(object)) => Some(object),
        _ => None,
    };
    // §5.2: an `error` member means failure, whatever the status (some servers send 200).
    if let Some(Value::String(error)) = object.and_then(|o| o.get("error")) {
        let text = |name: &str| match object.and_then(|o| o.get(name)) {
            Some(Value::String(s)) => Some(scrubber.text(s)),
            _ => None,
        };
        return Err(Error::OAuth {
            status,
            error: scrubber.text(error),
            description: text("error_description"),
            uri: text("error_uri"),
            retry_after,
        });
    }
    if !success {
        return Err(Error::HttpStatus {
            status,
            retry_after,
        });
    }
    let object = match (&json, object) {
        (_, Some(object)) => object,
        (Ok(_), None) => return Err(Error::InvalidJson("expected an object".into())),
        // serde_json's syntax errors give a line and column, never the input.
        (Err(e), None) => return Err(Error::InvalidJson(e.to_string())),
    };
    let invalid = |field, reason: &str| Error::InvalidField {
        field,
        reason: reason.into(),
    };
    let access_token = match object.get("access_token") {
        Some(Value::String(s)) if s.is_empty() => {
            return Err(invalid("access_token", "it is empty"));
        }
        Some(Value::String(s)) if !is_b64token(s) => {
            return Err(invalid(
                "access_token",
                "it is not an RFC 6750 b64token (letters, digits, -._~+/ and trailing =; \
                 no spaces or other characters)",
            ));
        }
        Some(Value::String(s)) => s,
        Some(_) => return Err(invalid("access_token", "it is not a string")),
        None => return Err(Error::MissingField("access_token")),
    };
    let mut bound = None;
    match object.get("token_type") {
        Some(Value::String(t)) if t.eq_ignore_ascii_case("bearer") => {
            if let Some(dpop) = accept.dpop
                && !dpop.allow_bearer
            {
                return Err(Error::DpopNotBound);
            }
        }
        Some(Value::String(t)) if t.eq_ignore_ascii_case("dpop") && accept.dpop.is_some() => {
            bound = accept.dpop.map(|dpop| dpop.key.clone());
        }
        Some(Value::String(t)) if accept.not_applicable && t == "N_A" => {}
        Some(Value::String(t)) => return Err(Error::UnsupportedTokenType(scrubber.text(t))),
        Some(_) => return Err(invalid("token_type", "it is not a string")),
        None => return Err(Error::MissingField("token_type")),
    }
    let expires_in = parse_expires_in(object.get("expires_in"))?;
    let text = |field: &'static str| match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Err(invalid(field, "it is empty")),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(invalid(field, "it is not a string")),
    };
    let refresh_token = text("refresh_token")?.map(|s| SecretString::from(s.to_owned()));
    let issued_token_type = text("issued_token_type")?;
    let scope = text("scope")?.map(|s| scrubber.text(s));
    let mut token = AccessToken::issued_at(access_token.as_str(), sent_at, expires_in)
        .map_err(|_| invalid("access_token", "it cannot be sent in an HTTP header"))?;
    if let Some(kind) = issued_token_type {
        token = token.with_issued_token_type(scrubber.text(kind));
    }
    if let Some(key) = bound {
        token = token.with_dpop(key);
    }
    Ok(TokenResponse {
        token,
        refresh_token,
        scope,
    })
}

/// [`parse_response`] without secrets to scrub, for the property tests.
#[doc(hidden)]
pub fn parse_token_response(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
    sent_at: Instant,
) -> Result<AccessToken> {
    parse_response(status, retry_after, body, sent_at, &Scrubber::default())
}

/// `expires_in`: a positive number of seconds (a numeric string is accepted, as some servers
/// send one); missing means [`DEFAULT_EXPIRES_IN`]; more than [`MAX_EXPIRES_IN`] is capped.
fn parse_expires_in(value: Option<&Value>) -> Result<Duration> {
    let invalid = |reason: String| Error::InvalidField {
        field: "expires_in",
        reason,
    };
    let seconds = match value {
        None | Some(Value::Null) => return Ok(DEFAULT_EXPIRES_IN),
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        Some(_) => None,
    }
    .filter(|s| s.is_finite())
    .ok_or_else(|| invalid("it is not a number of seconds".into()))?;
    if seconds < 1.0 {
        return Err(invalid(format!(
            "the token expires on arrival ({seconds} s)"
        )));
    }
    let capped = seconds.min(MAX_EXPIRES_IN.as_secs_f64());
    if capped < seconds {
        tracing::warn!(
            expires_in = seconds,
            cap = MAX_EXPIRES_IN.as_secs(),
            "token endpoint claims an implausibly long lifetime; capping it"
        );
    }
    Ok(Duration::from_secs(capped as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(status: u16, body: &str) -> Result<AccessToken> {
        parse_token_response(status, None, body.as_bytes(), Instant::now())
    }

    #[test]
    fn parses_a_dt_response() {
        let t = parse(
            200,
            r#"{"access_token":"tok","token_type":"bearer","expires_in":3600}"#,
        )
        .unwrap();
        assert_eq!(t.expose_secret(), "tok");
        assert_eq!(t.lifetime(), Duration::from_secs(3600));
    }

    #[test]
    fn token_type_is_case_insensitive() {
        assert!(parse(200, r#"{"access_token":"t","token_type":"BeArEr"}"#).is_ok());
        assert!(matches!(
            parse(200, r#"{"access_token":"t","token_type":"mac"}"#),
            Err(Error::UnsupportedTokenType(t)) if t == "mac"
        ));
    }

    #[test]
    fn access_tokens_must_be_b64tokens() {
        for bad in ["Bearer abc", " abc", "abc ", "a\tb", "tökén"] {
            let body = serde_json::json!({"access_token": bad, "token_type": "bearer"});
            assert!(
                matches!(
                    parse(200, &body.to_string()),
                    Err(Error::InvalidField {
                        field: "access_token",
                        ..
                    })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn expires_in_edge_cases() {
        let with = |v: &str| {
            parse(
                200,
                &format!(r#"{{"access_token":"t","token_type":"Bearer","expires_in":{v}}}"#),
            )
        };
        assert_eq!(with("null").unwrap().lifetime(), DEFAULT_EXPIRES_IN);
        assert_eq!(
            with("\"120\"").unwrap().lifetime(),
            Duration::from_secs(120)
        );
        assert_eq!(with("315360000").unwrap().lifetime(), MAX_EXPIRES_IN);
        for bad in ["0", "-5", "\"soon\"", "true"] {
            assert!(
                matches!(
                    with(bad),
                    Err(Error::InvalidField {
                        field: "expires_in",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn oauth_error_with_status_200() {
        let e = parse(
            200,
            r#"{"error":"invalid_grant","error_description":"bad"}"#,
        )
        .unwrap_err();
        assert_eq!(e.oauth_error(), Some("invalid_grant"));
        assert!(e.to_string().contains("bad"));
    }

    #[test]
    fn echoed_secrets_are_scrubbed() {
        let scrubber = Scrubber::default().secret("eyJhbGc.eyJpc3M.c2lnbmF0dXJl");
        let body = r#"{"error":"invalid_grant eyJhbGc.eyJpc3M.c2lnbmF0dXJl",
                       "error_description":"signature c2lnbmF0dXJl is wrong"}"#;
        let e = parse_response(400, None, body.as_bytes(), Instant::now(), &scrubber).unwrap_err();
        let text = format!("{e} {e:?}");
        assert!(!text.contains("c2lnbmF0dXJl"), "{text}");
    }
}
