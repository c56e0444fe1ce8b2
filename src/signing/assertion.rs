//! Minting a signed JWT (compact JWS) with any [`Signer`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::SecretString;
use serde_json::{Map, Value, json};

use super::Signer;
use crate::error::{Error, Result};

/// How far `iat` is backdated: a server whose clock runs a little behind ours would otherwise
/// reject the assertion as issued in the future.
const IAT_BACKDATE: Duration = Duration::from_secs(5);

/// Lifetime (`exp - iat`) of the assertions signed with a [`Signer`]: one is used once, at
/// once, so only clock skew needs room; RFC 7523 asks for a short one, the strictest servers
/// (Salesforce) want `exp` within 3 minutes, Entra and Okta within 5 to 10, Google an hour.
pub(crate) const ASSERTION_LIFETIME: Duration = Duration::from_secs(180);

/// The claims of one JWT, with `iat`, `exp` and a random `jti` filled in by [`Jws::new`].
pub(crate) struct Jws {
    claims: Map<String, Value>,
}

impl Jws {
    /// Claims issued now (backdated by [`IAT_BACKDATE`]) that expire `lifetime` later, with a
    /// fresh random `jti`, so that a server with replay checks accepts every retry.
    pub(crate) fn new(lifetime: Duration) -> Result<Self> {
        let iat = backdated_iat()?;
        let mut claims = Map::new();
        claims.insert("iat".into(), json!(iat));
        claims.insert("exp".into(), json!(iat + lifetime.as_secs()));
        claims.insert("jti".into(), json!(random_jti()));
        Ok(Self { claims })
    }

    /// Sets a claim, replacing one of the same name.
    pub(crate) fn claim(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.claims.insert(name.to_owned(), value.into());
        self
    }

    /// Leaves out `jti`: DT's assertions have none unless asked for.
    pub(crate) fn without_jti(mut self) -> Self {
        self.claims.remove("jti");
        self
    }

    /// Sets the extra claims a user asked for; `iat`, `exp` and `jti` stay the crate's.
    pub(crate) fn extra(mut self, extra: &[(String, Value)]) -> Self {
        for (name, value) in extra {
            if !matches!(name.as_str(), "iat" | "exp" | "jti") {
                self.claims.insert(name.clone(), value.clone());
            }
        }
        self
    }
}

/// Signs `jws` with `signer`: `timeout` bounds the signer's call. The header is `alg`,
/// `kid` (if any), `typ: JWT`, and the certificate thumbprints (if any), keys in
/// lexicographic order — for DT, `{"alg":"HS256","kid":KEY_ID,"typ":"JWT"}`.
pub(crate) async fn mint(signer: &dyn Signer, jws: Jws, timeout: Duration) -> Result<SecretString> {
    let mut header = Map::new();
    header.insert("alg".into(), json!(signer.algorithm().name()));
    header.insert("typ".into(), json!("JWT"));
    if let Some(kid) = signer.key_id() {
        header.insert("kid".into(), json!(kid));
    }
    if let Some(x5t) = signer.x5t_s256() {
        header.insert("x5t#S256".into(), json!(x5t));
    }
    if let Some(x5t) = signer.x5t() {
        header.insert("x5t".into(), json!(x5t));
    }
    let encode = |value: &Map<String, Value>| {
        serde_json::to_vec(value)
            .map(|json| URL_SAFE_NO_PAD.encode(json))
            .map_err(|e| Error::Signing(format!("the JWT does not serialize: {e}")))
    };
    let mut jwt = encode(&header)?;
    jwt.push('.');
    jwt.push_str(&encode(&jws.claims)?);
    let signature = tokio::time::timeout(timeout, signer.sign(jwt.as_bytes()))
        .await
        .map_err(|_| Error::SignerTimeout(timeout))?
        .map_err(|e| match e {
            // A signer's own error says so: "the signer failed: …".
            Error::Source { source, transient } => Error::Signer { source, transient },
            other => other,
        })?;
    if signature.is_empty() {
        return Err(Error::Signing(
            "the signer returned an empty signature".into(),
        ));
    }
    jwt.push('.');
    jwt.push_str(&URL_SAFE_NO_PAD.encode(signature));
    Ok(SecretString::from(jwt))
}

/// `iat` for an assertion signed now: Unix seconds, backdated by [`IAT_BACKDATE`].
fn backdated_iat() -> Result<u64> {
    Ok(SystemTime::now()
        .checked_sub(IAT_BACKDATE)
        .unwrap_or(UNIX_EPOCH)
        .duration_since(UNIX_EPOCH)
        .map_err(|_| Error::Signing("the system clock is before 1970".into()))?
        .as_secs())
}

/// A random 128-bit `jti`, as hex.
pub(crate) fn random_jti() -> String {
    format!("{:032x}", fastrand::u128(..))
}
