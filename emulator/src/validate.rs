//! The token request checks: form decoding, the grant type, and per grant the JWT-bearer
//! assertion or the client's credentials.

use http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey};

use super::client_auth::Client;
use super::form::{Form, Rejection, parse_form};
use super::grants::is_token_type;
use super::jwt::{self, LEEWAY_SECS, Rules, describe};
use super::keys::{Purpose, Registry, VerifyWith};
use secrecy::ExposeSecret as _;
use token_refresh::ServiceAccount;
use token_refresh::{ClientCredentials, JwtBearer, RefreshToken, TokenExchange};

/// A token request that passed every check.
pub(super) enum Grant {
    /// The RFC 7523 JWT-bearer grant, DT's.
    JwtBearer,
    /// The RFC 6749 §4.4 client-credentials grant, with the `scope` asked for (echoed in the
    /// token response).
    ClientCredentials { scope: Option<String> },
    /// The RFC 6749 §6 refresh-token grant: the refresh token to spend.
    RefreshToken {
        refresh_token: String,
        scope: Option<String>,
    },
    /// The RFC 8693 token exchange: the subject token to record.
    TokenExchange { subject_token: String },
}

impl std::fmt::Debug for Grant {
    /// The grant without its tokens, which are secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::JwtBearer => f.write_str("JwtBearer"),
            Self::ClientCredentials { scope } | Self::RefreshToken { scope, .. } => f
                .debug_struct(match self {
                    Self::ClientCredentials { .. } => "ClientCredentials",
                    _ => "RefreshToken",
                })
                .field("scope", scope)
                .finish_non_exhaustive(),
            Self::TokenExchange { .. } => f.write_str("TokenExchange { .. }"),
        }
    }
}

/// Checks a whole token request: content type, form, grant type, and the grant's own
/// parameters.
pub(super) fn check_token_request(
    headers: &HeaderMap,
    body: &[u8],
    account: &ServiceAccount,
    client: &Client,
    keys: &Registry,
    token_url: &str,
) -> Result<Grant, Rejection> {
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    if !content_type.is_some_and(|t| t.eq_ignore_ascii_case("application/x-www-form-urlencoded")) {
        return Err(Rejection::request(
            "the request body must be application/x-www-form-urlencoded",
        ));
    }
    let form = parse_form(body)?;
    match form.get("grant_type") {
        None => Err(Rejection::request("the grant_type parameter is missing")),
        Some(JwtBearer::GRANT_TYPE) => match form.get("assertion") {
            None | Some("") => Err(Rejection::request("the assertion parameter is missing")),
            Some(assertion) => {
                let header = jwt::header(assertion)
                    .ok_or_else(|| Rejection::grant("the assertion is not a well-formed JWT"))?;
                match keys.get(header.get("kid").and_then(|k| k.as_str())) {
                    Some(key) => keys.verify(
                        assertion,
                        &header,
                        VerifyWith::Key(&key),
                        key.issuer(),
                        token_url,
                        Purpose::Grant,
                    )?,
                    None => check_assertion(assertion, account, token_url)?,
                }
                Ok(Grant::JwtBearer)
            }
        },
        Some(ClientCredentials::GRANT_TYPE) => {
            authenticate_client(headers, &form, client, keys, token_url)?;
            // `audience` is accepted and means nothing here: there is one API.
            let scope = form.get("scope").map(check_scope).transpose()?;
            Ok(Grant::ClientCredentials { scope })
        }
        Some(RefreshToken::GRANT_TYPE) => {
            authenticate_client(headers, &form, client, keys, token_url)?;
            let refresh_token = match form.get("refresh_token") {
                None | Some("") => {
                    return Err(Rejection::request("the refresh_token parameter is missing"));
                }
                Some(token) => token.to_owned(),
            };
            let scope = form.get("scope").map(check_scope).transpose()?;
            Ok(Grant::RefreshToken {
                refresh_token,
                scope,
            })
        }
        Some(TokenExchange::GRANT_TYPE) => {
            // Client authentication is optional for a token exchange (RFC 8693 §2.1), but
            // checked when the client offers it.
            let offers = headers.contains_key(http::header::AUTHORIZATION)
                || form.get("client_id").is_some()
                || form.get("client_assertion").is_some();
            if offers {
                authenticate_client(headers, &form, client, keys, token_url)?;
            }
            let subject_token = match form.get("subject_token") {
                None | Some("") => {
                    return Err(Rejection::request("the subject_token parameter is missing"));
                }
                Some(token) => token.to_owned(),
            };
            for (name, required) in [("subject_token_type", true), ("actor_token_type", false)] {
                match form.get(name) {
                    Some(kind) if is_token_type(kind) => {}
                    None if !required => {}
                    _ => {
                        return Err(Rejection::request(format!(
                            "{name} must be an urn:ietf:params:oauth:token-type: URI"
                        )));
                    }
                }
            }
            if form.get("actor_token").is_some() != form.get("actor_token_type").is_some() {
                return Err(Rejection::request(
                    "actor_token and actor_token_type go together",
                ));
            }
            Ok(Grant::TokenExchange { subject_token })
        }
        Some(_) => Err(Rejection::new(
            "unsupported_grant_type",
            format!(
                "grant_type must be {}, {}, {} or {}",
                JwtBearer::GRANT_TYPE,
                ClientCredentials::GRANT_TYPE,
                RefreshToken::GRANT_TYPE,
                TokenExchange::GRANT_TYPE,
            ),
        )),
    }
}

/// The client's authentication: by assertion if it sent one, else its secret.
fn authenticate_client(
    headers: &HeaderMap,
    form: &Form,
    client: &Client,
    keys: &Registry,
    token_url: &str,
) -> Result<(), Rejection> {
    if form.get("client_assertion_type").is_some() || form.get("client_assertion").is_some() {
        check_client_assertion(headers, form, client, keys, token_url)
    } else {
        client.authenticate(headers, form)
    }
}

/// Client authentication by assertion (RFC 7523 §2.2): `private_key_jwt` with a registered
/// key, or `client_secret_jwt` (HS256 with the client secret) when its `kid` is not one.
fn check_client_assertion(
    headers: &HeaderMap,
    form: &Form,
    client: &Client,
    keys: &Registry,
    token_url: &str,
) -> Result<(), Rejection> {
    const TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
    if form.get("client_assertion_type") != Some(TYPE) {
        return Err(Rejection::client(format!(
            "client_assertion_type must be {TYPE}"
        )));
    }
    if headers.contains_key(http::header::AUTHORIZATION) || form.get("client_secret").is_some() {
        return Err(Rejection::request(
            "the client authenticated both with an assertion and with its secret",
        ));
    }
    if form.get("client_id").is_some_and(|id| id != client.id) {
        return Err(Rejection::client("the client_id is not a known client"));
    }
    let assertion = match form.get("client_assertion") {
        None | Some("") => return Err(Rejection::client("the client_assertion is missing")),
        Some(assertion) => assertion,
    };
    let header = jwt::header(assertion)
        .ok_or_else(|| Rejection::client("the client assertion is not a well-formed JWT"))?;
    let key = keys.get(header.get("kid").and_then(|k| k.as_str()));
    let with = match &key {
        Some(key) => VerifyWith::Key(key),
        None => VerifyWith::Secret(client.secret.expose_secret().as_bytes()),
    };
    keys.verify(
        assertion,
        &header,
        with,
        &client.id,
        token_url,
        Purpose::Client,
    )
}

/// RFC 6749 §3.3: one or more scope tokens of `%x21 / %x23-5B / %x5D-7E`, separated by
/// single spaces. Anything else is `invalid_scope`.
fn check_scope(scope: &str) -> Result<String, Rejection> {
    let token_ok = |token: &str| {
        !token.is_empty()
            && token
                .bytes()
                .all(|b| matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E))
    };
    if scope.split(' ').all(token_ok) {
        Ok(scope.to_owned())
    } else {
        Err(Rejection::new(
            "invalid_scope",
            "the scope parameter is not a space-separated list of scope tokens",
        ))
    }
}

/// Validates a JWT-bearer assertion like DT's identity service.
fn check_assertion(
    assertion: &str,
    account: &ServiceAccount,
    token_url: &str,
) -> Result<(), Rejection> {
    let header = jwt::header(assertion)
        .ok_or_else(|| Rejection::grant("the assertion is not a well-formed JWT"))?;
    if jwt::algorithm(&header) != Some(Algorithm::HS256) {
        return Err(Rejection::grant("the assertion's alg must be HS256"));
    }
    match header.get("kid").and_then(|k| k.as_str()) {
        None => return Err(Rejection::grant("the assertion's header has no kid")),
        Some(kid) if kid != account.key_id() => {
            return Err(Rejection::grant(
                "the assertion's kid is not a known key id",
            ));
        }
        Some(_) => {}
    }

    let key = DecodingKey::from_secret(account.expose_secret().as_bytes())
        .map_err(|_| Rejection::grant("the service account has no secret"))?;
    let describe = |e| Rejection::grant(describe(e, token_url));
    let claims = jwt::verify(assertion, Algorithm::HS256, &key).map_err(describe)?;
    jwt::check(
        &claims,
        &Rules {
            issuer: Some(account.email()),
            audience: Some(token_url),
            required: &["exp", "iat", "aud", "iss"],
            leeway: LEEWAY_SECS,
        },
    )
    .map_err(describe)?;
    let iat = claims["iat"]
        .as_f64()
        .ok_or_else(|| Rejection::grant("the assertion's iat is not a number"))?;
    if iat > jwt::now() + LEEWAY_SECS as f64 {
        return Err(Rejection::grant("the assertion's iat is in the future"));
    }
    Ok(())
}
