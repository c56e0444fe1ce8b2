//! DPoP (RFC 9449) at the emulator's token endpoint: proofs are verified (signature with
//! the key in their own header, `typ`, `alg`, `htm`, `htu`, `iat`, `jti` replay, `nonce`
//! when demanded), and tokens are bound to the key's thumbprint.

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use super::jwt::{self, LEEWAY_SECS};

/// The emulator's DPoP state: the nonce it demands and the proofs it has seen.
#[derive(Default)]
pub(super) struct Dpop {
    /// Whether proofs at the token endpoint must carry the current nonce.
    pub(super) require_nonce: bool,
    /// Whether proofs at the API must carry the current nonce.
    pub(super) require_api_nonce: bool,
    /// The current nonce (rotated by `rotate_dpop_nonce`).
    pub(super) nonce: String,
    /// `jti`s of proofs accepted so far.
    seen: HashSet<String>,
}

/// Why a proof is refused.
pub(super) enum Refusal {
    /// The nonce is missing or stale: `use_dpop_nonce` (the answer carries the current one).
    UseNonce,
    /// Anything else: `invalid_dpop_proof`, saying which check failed.
    Invalid(String),
}

fn invalid(problem: impl Into<String>) -> Refusal {
    Refusal::Invalid(problem.into())
}

impl Dpop {
    /// A new nonce, replacing the current one.
    pub(super) fn rotate(&mut self) -> String {
        self.nonce = format!("n-{:016x}", fastrand::u64(..));
        self.nonce.clone()
    }

    /// Checks the `DPoP` header of a request to `htm` `htu` (with `ath` for `access_token`
    /// at the API, the nonce if `require_nonce`); returns the key's thumbprint.
    pub(super) fn check(
        &mut self,
        headers: &HeaderMap,
        htm: &str,
        htu: &str,
        access_token: Option<&str>,
        require_nonce: bool,
    ) -> Result<String, Refusal> {
        let mut proofs = headers.get_all(token_refresh::dpop::HEADER).iter();
        let proof = match (proofs.next(), proofs.next()) {
            (Some(proof), None) => proof
                .to_str()
                .map_err(|_| invalid("the DPoP header is not text"))?,
            (None, _) => return Err(invalid("the request has no DPoP proof")),
            (Some(_), Some(_)) => return Err(invalid("the request has more than one DPoP header")),
        };
        let header =
            jwt::header(proof).ok_or_else(|| invalid("the DPoP proof is not a well-formed JWT"))?;
        if header.get("typ").and_then(Value::as_str) != Some("dpop+jwt") {
            return Err(invalid("the DPoP proof's typ is not dpop+jwt"));
        }
        let algorithm = jwt::algorithm(&header)
            .filter(|alg| {
                matches!(
                    alg,
                    Algorithm::ES256 | Algorithm::EdDSA | Algorithm::RS256 | Algorithm::PS256
                )
            })
            .ok_or_else(|| invalid("the DPoP proof's alg is not an asymmetric algorithm"))?;
        let jwk_value = header
            .get("jwk")
            .ok_or_else(|| invalid("the DPoP proof's header has no jwk"))?;
        if ["d", "p", "q", "dp", "dq", "qi"]
            .iter()
            .any(|m| jwk_value.get(m).is_some())
        {
            return Err(invalid("the DPoP proof's jwk holds a private key"));
        }
        let jwk: Jwk = serde_json::from_value(jwk_value.clone())
            .map_err(|_| invalid("the DPoP proof's jwk is not a usable public key"))?;
        let key = DecodingKey::from_jwk(&jwk)
            .map_err(|_| invalid("the DPoP proof's jwk is not a usable public key"))?;
        let claims = jwt::verify(proof, algorithm, &key)
            .map_err(|_| invalid("the DPoP proof's signature does not verify"))?;
        let text = |name: &str| claims.get(name).and_then(Value::as_str);
        if text("htm") != Some(htm) {
            return Err(invalid(format!("the DPoP proof's htm is not {htm}")));
        }
        if text("htu") != Some(htu) {
            return Err(invalid(format!("the DPoP proof's htu is not {htu}")));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        match claims.get("iat").and_then(Value::as_u64) {
            Some(iat) if iat.abs_diff(now) <= LEEWAY_SECS => {}
            Some(_) => return Err(invalid("the DPoP proof's iat is not within 60 s of now")),
            None => return Err(invalid("the DPoP proof has no iat")),
        }
        let jti = text("jti")
            .filter(|j| !j.is_empty())
            .ok_or_else(|| invalid("the DPoP proof has no jti"))?;
        if let Some(token) = access_token {
            use base64::Engine as _;
            use sha2::Digest as _;
            let ath = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(sha2::Sha256::digest(token.as_bytes()));
            if text("ath") != Some(ath.as_str()) {
                return Err(invalid(
                    "the DPoP proof's ath is not the access token's hash",
                ));
            }
        }
        if require_nonce && text("nonce") != Some(self.nonce.as_str()) {
            return Err(Refusal::UseNonce);
        }
        if !self.seen.insert(jti.to_owned()) {
            return Err(invalid("the DPoP proof's jti was used before (a replay)"));
        }
        jwt::thumbprint(jwk_value).ok_or_else(|| invalid("the DPoP proof's jwk has no thumbprint"))
    }
}
