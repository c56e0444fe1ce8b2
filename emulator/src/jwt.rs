//! Verifying JWTs: the signature through jsonwebtoken's RustCrypto provider, named
//! explicitly, and the registered claims checked here.
//!
//! `jsonwebtoken::decode` asks for the process-wide provider, which panics in a build where
//! both of jsonwebtoken's backends are enabled and nobody installed one — a test build of an
//! application that uses jsonwebtoken with `aws_lc_rs` next to this emulator is such a
//! build. Installing one here would take that choice from the application (its own
//! `install_default` would fail). So the emulator never touches the process-wide provider:
//! it builds a verifier from `rust_crypto::DEFAULT_PROVIDER` itself.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use sha2::Digest as _;

/// Clock skew allowed on `exp` and `iat`, in seconds: the leeway DT and most identity services
/// give.
pub(crate) const LEEWAY_SECS: u64 = 60;

/// Why a JWT was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// Not three base64url parts with a JSON header and claims.
    Malformed,
    /// The signature does not verify with the key, or the key cannot verify this `alg`.
    Signature,
    /// `exp` is in the past (beyond the leeway).
    Expired,
    /// `iss` is not the expected issuer.
    Issuer,
    /// `aud` does not contain the expected audience.
    Audience,
    /// A required claim is missing.
    Missing(&'static str),
    /// A claim has the wrong type.
    Format(&'static str),
}

/// What the claims must satisfy.
pub(crate) struct Rules<'a> {
    /// `iss` must equal this.
    pub(crate) issuer: Option<&'a str>,
    /// `aud` (a string or an array of strings) must contain this.
    pub(crate) audience: Option<&'a str>,
    /// Claims that must be present.
    pub(crate) required: &'a [&'static str],
    /// Seconds of clock skew allowed on `exp`.
    pub(crate) leeway: u64,
}

/// The JWT's header and claims as JSON, once its signature verified with `key` under
/// `algorithm` (the caller has matched the header's `alg` against what the key is for).
pub(crate) fn verify(
    token: &str,
    algorithm: Algorithm,
    key: &DecodingKey,
) -> Result<Value, Invalid> {
    let (message, signature) = token.rsplit_once('.').ok_or(Invalid::Malformed)?;
    let (_, claims) = message.split_once('.').ok_or(Invalid::Malformed)?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| Invalid::Malformed)?;
    let verifier =
        (DEFAULT_PROVIDER.verifier_factory)(&algorithm, key).map_err(|_| Invalid::Signature)?;
    verifier
        .verify(message.as_bytes(), &signature)
        .map_err(|_| Invalid::Signature)?;
    json_part(claims).ok_or(Invalid::Malformed)
}

/// An HS256 JWT with `header` and `claims`, signed with `secret` through the same
/// explicitly named provider.
pub(crate) fn sign_hs256(header: &Value, claims: &Value, secret: &[u8]) -> Option<String> {
    let key = jsonwebtoken::EncodingKey::from_secret(secret).ok()?;
    let signer = (DEFAULT_PROVIDER.signer_factory)(&Algorithm::HS256, &key).ok()?;
    let mut jwt = URL_SAFE_NO_PAD.encode(header.to_string());
    jwt.push('.');
    jwt.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = signer.try_sign(jwt.as_bytes()).ok()?;
    jwt.push('.');
    jwt.push_str(&URL_SAFE_NO_PAD.encode(signature));
    Some(jwt)
}

/// The header of a JWT, unverified.
pub(crate) fn header(token: &str) -> Option<Value> {
    let mut parts = token.split('.');
    let header = json_part(parts.next()?)?;
    (parts.count() == 2).then_some(header)
}

/// The `alg` of a header, as jsonwebtoken's algorithm.
pub(crate) fn algorithm(header: &Value) -> Option<Algorithm> {
    header.get("alg")?.as_str()?.parse().ok()
}

fn json_part(part: &str) -> Option<Value> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    serde_json::from_slice::<Value>(&bytes)
        .ok()
        .filter(Value::is_object)
}

/// Checks `exp`, `iss`, `aud` and the required claims.
pub(crate) fn check(claims: &Value, rules: &Rules<'_>) -> Result<(), Invalid> {
    for &name in rules.required {
        if claims.get(name).is_none() {
            return Err(Invalid::Missing(name));
        }
    }
    if let Some(exp) = claims.get("exp") {
        let exp = exp.as_f64().ok_or(Invalid::Format("exp"))?;
        if exp + (rules.leeway as f64) < now() {
            return Err(Invalid::Expired);
        }
    }
    if let Some(issuer) = rules.issuer {
        match claims.get("iss") {
            None => return Err(Invalid::Missing("iss")),
            Some(Value::String(iss)) if iss == issuer => {}
            Some(Value::String(_)) => return Err(Invalid::Issuer),
            Some(_) => return Err(Invalid::Format("iss")),
        }
    }
    if let Some(audience) = rules.audience {
        let ok = match claims.get("aud") {
            None => return Err(Invalid::Missing("aud")),
            Some(Value::String(aud)) => aud == audience,
            Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(audience)),
            Some(_) => return Err(Invalid::Format("aud")),
        };
        if !ok {
            return Err(Invalid::Audience);
        }
    }
    Ok(())
}

/// Unix time now, in (fractional) seconds.
pub(crate) fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The RFC 7638 SHA-256 thumbprint of a public JWK (`EC`, `OKP` or `RSA`), base64url.
pub(crate) fn thumbprint(jwk: &Value) -> Option<String> {
    let member = |name: &str| jwk.get(name).and_then(Value::as_str);
    // The required members in lexicographic order, without whitespace (RFC 7638 §3.2).
    let canonical = match member("kty")? {
        "EC" => format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            member("crv")?,
            member("x")?,
            member("y")?
        ),
        "OKP" => format!(
            r#"{{"crv":"{}","kty":"OKP","x":"{}"}}"#,
            member("crv")?,
            member("x")?
        ),
        "RSA" => format!(
            r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
            member("e")?,
            member("n")?
        ),
        _ => return None,
    };
    Some(URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(canonical.as_bytes())))
}

/// What an identity service says of an assertion refused for `invalid`.
pub(crate) fn describe(invalid: Invalid, token_url: &str) -> String {
    match invalid {
        Invalid::Signature => "the assertion's signature does not verify".into(),
        Invalid::Expired => "the assertion has expired (exp is in the past)".into(),
        Invalid::Issuer => "the assertion's iss is not the service account's email".into(),
        Invalid::Audience => {
            format!("the assertion's aud must be the token endpoint {token_url}")
        }
        Invalid::Missing(claim) => format!("the assertion lacks the {claim} claim"),
        Invalid::Format(claim) => format!("the assertion's {claim} claim is malformed"),
        Invalid::Malformed => "the assertion is not a well-formed JWT".into(),
    }
}
