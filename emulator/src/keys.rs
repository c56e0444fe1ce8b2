//! Registered public keys: JWT-bearer assertions and `private_key_jwt` client assertions
//! signed with RS256, PS256, ES256 or EdDSA, and `client_secret_jwt` ones (HS256 with the
//! client's secret).

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

use super::form::Rejection;
use super::jwt::{self, LEEWAY_SECS, Rules};

/// A public key a client or a service account registered, and whose assertions it signs.
#[derive(Clone)]
pub(super) struct RegisteredKey {
    /// Who signs with it: the assertion's `iss` (a service account, or a client id).
    issuer: String,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// The registered keys by `kid`, and the `jti`s seen when replays are checked.
#[derive(Default)]
pub(super) struct Registry {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    keys: HashMap<String, RegisteredKey>,
    check_replays: bool,
    seen: HashSet<String>,
}

/// What an assertion is verified with: a registered key, or an HMAC secret (the client's,
/// for `client_secret_jwt`).
pub(super) enum VerifyWith<'a> {
    Key(&'a RegisteredKey),
    Secret(&'a [u8]),
}

/// What the assertion is for: the grant itself, or the client's authentication.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    Grant,
    Client,
}

impl Purpose {
    fn reject(self, description: String) -> Rejection {
        match self {
            Purpose::Grant => Rejection::grant(description),
            Purpose::Client => Rejection::client(description),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Purpose::Grant => "assertion",
            Purpose::Client => "client assertion",
        }
    }
}

impl RegisteredKey {
    pub(super) fn issuer(&self) -> &str {
        &self.issuer
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers `jwk` (with `kid` and `alg`) for `issuer`.
    pub(super) fn register(&self, issuer: String, jwk: &Value) -> Result<(), String> {
        let kid = jwk
            .get("kid")
            .and_then(Value::as_str)
            .ok_or("the JWK has no kid")?
            .to_owned();
        let algorithm = match jwk.get("alg").and_then(Value::as_str) {
            Some("RS256") => Algorithm::RS256,
            Some("PS256") => Algorithm::PS256,
            Some("ES256") => Algorithm::ES256,
            Some("EdDSA") => Algorithm::EdDSA,
            Some(other) => return Err(format!("the JWK's alg {other:?} cannot be registered")),
            None => return Err("the JWK has no alg".into()),
        };
        let parsed: Jwk = serde_json::from_value(jwk.clone())
            .map_err(|e| format!("the JWK does not parse: {e}"))?;
        let key =
            DecodingKey::from_jwk(&parsed).map_err(|e| format!("the JWK is unusable: {e}"))?;
        self.lock().keys.insert(
            kid,
            RegisteredKey {
                issuer,
                algorithm,
                key,
            },
        );
        Ok(())
    }

    pub(super) fn check_replays(&self, on: bool) {
        let mut inner = self.lock();
        inner.check_replays = on;
        inner.seen.clear();
    }

    /// The key registered under `kid`.
    pub(super) fn get(&self, kid: Option<&str>) -> Option<RegisteredKey> {
        self.lock().keys.get(kid?).cloned()
    }

    /// Verifies an assertion signed with a registered key, or HS256 with a secret: signature, `alg` against the key's (no algorithm confusion),
    /// `iss` (and `sub` for a client assertion) against who registered it, `aud`,
    /// `exp`/`iat`, and `jti` against replays when they are checked.
    pub(super) fn verify(
        &self,
        assertion: &str,
        header: &Value,
        with: VerifyWith<'_>,
        issuer: &str,
        token_url: &str,
        purpose: Purpose,
    ) -> Result<(), Rejection> {
        let what = purpose.name();
        let (algorithm, decoding) = match with {
            VerifyWith::Key(key) => {
                if key.issuer != issuer {
                    return Err(purpose
                        .reject(format!("the {what}'s kid is registered for another issuer")));
                }
                (key.algorithm, key.key.clone())
            }
            VerifyWith::Secret(secret) => (
                Algorithm::HS256,
                DecodingKey::from_secret(secret)
                    .map_err(|_| purpose.reject(format!("the {what} needs a client secret")))?,
            ),
        };
        if jwt::algorithm(header) != Some(algorithm) {
            return Err(purpose.reject(format!(
                "the {what}'s alg {} is not the {algorithm:?} its key is registered for",
                header.get("alg").unwrap_or(&Value::Null)
            )));
        }
        let refuse = |e| {
            purpose.reject(format!(
                "the {what} does not verify ({})",
                jwt::describe(e, token_url)
            ))
        };
        let claims = jwt::verify(assertion, algorithm, &decoding).map_err(refuse)?;
        jwt::check(
            &claims,
            &Rules {
                issuer: Some(issuer),
                audience: Some(token_url),
                required: &["exp", "iat", "aud", "iss"],
                leeway: LEEWAY_SECS,
            },
        )
        .map_err(refuse)?;
        if purpose == Purpose::Client && claims.get("sub").and_then(Value::as_str) != Some(issuer) {
            return Err(purpose.reject(format!("the {what}'s sub must be the client id")));
        }
        if claims["iat"].as_f64().unwrap_or(f64::MAX) > jwt::now() + LEEWAY_SECS as f64 {
            return Err(purpose.reject(format!("the {what}'s iat is missing or in the future")));
        }
        let mut inner = self.lock();
        if inner.check_replays {
            let Some(jti) = claims.get("jti").and_then(Value::as_str) else {
                return Err(purpose.reject(format!("the {what} has no jti")));
            };
            if !inner.seen.insert(format!("{issuer}\u{0}{jti}")) {
                return Err(purpose.reject(format!("the {what}'s jti was used before")));
            }
        }
        Ok(())
    }
}
