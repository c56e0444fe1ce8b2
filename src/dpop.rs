//! DPoP (RFC 9449) proofs: a key the client holds, and the signed JWT that proves it on a
//! request.
//!
//! A [`DpopKey`] is generated (ES256 by default, or EdDSA) or read from PEM (ES256, EdDSA or
//! RS256). Its header — `typ: dpop+jwt`, `alg` and the public `jwk` — is encoded once, so a
//! [`proof`](DpopKey::proof) costs its claims, one signature and base64: for ES256 and
//! EdDSA, the key is kept parsed (no per-proof key decoding, no recoverable signature), and
//! ES256 signs with P-256's precomputed base-point tables.
//!
//! ```
//! use token_refresh::dpop::DpopKey;
//!
//! let key = DpopKey::generate();
//! let proof = key.proof("POST", "https://auth.example.com/token?x=1", None, None)?;
//! assert_eq!(proof.split('.').count(), 3);
//! assert_eq!(key.thumbprint().len(), 43); // base64url of a SHA-256
//! # Ok::<(), token_refresh::Error>(())
//! ```

use std::fmt;
use std::io::Write as _;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::SigningAlgorithm;
use crate::error::{Error, Result};
use crate::signing::{self, Backend, KeyPair};

/// The `typ` of a DPoP proof (RFC 9449 §4.2).
pub const PROOF_TYPE: &str = "dpop+jwt";

/// The request header that carries a proof (RFC 9449 §4.1), lowercase.
pub const HEADER: &str = "dpop";
/// The response header that carries a server's nonce (RFC 9449 §8), lowercase.
pub const NONCE_HEADER: &str = "dpop-nonce";
/// Longest `DPoP-Nonce` kept: a server's nonce is a short opaque string; a huge one is not
/// copied into every proof.
const MAX_NONCE_LEN: usize = 512;

/// The usable `DPoP-Nonce` of a response, if it has one: text, trimmed, not empty, at most
/// [`MAX_NONCE_LEN`] bytes.
pub(crate) fn nonce_of(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get(NONCE_HEADER)?
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|n| !n.is_empty() && n.len() <= MAX_NONCE_LEN)
}

/// A DPoP key: the private key a client proves possession of, with its public JWK and
/// RFC 7638 thumbprint. Cheap to clone; the key is redacted in `Debug` and wiped on drop.
#[derive(Clone)]
pub struct DpopKey {
    inner: Arc<Inner>,
}

struct Inner {
    pair: KeyPair,
    algorithm: SigningAlgorithm,
    /// The public JWK, members in RFC 7638 order.
    jwk: Value,
    thumbprint: String,
    /// `base64url(header) + "."`, the same for every proof of this key.
    header: String,
}

impl DpopKey {
    /// A fresh P-256 key (ES256), the algorithm every DPoP server supports.
    ///
    /// # Panics
    ///
    /// Only if the operating system's random number generator fails.
    pub fn generate() -> Self {
        Self::generated(signing::Kind::P256)
    }

    /// A fresh Ed25519 key (EdDSA): the fastest proofs, for servers that list `EdDSA` in
    /// `dpop_signing_alg_values_supported`.
    ///
    /// # Panics
    ///
    /// Only if the operating system's random number generator fails.
    pub fn generate_ed25519() -> Self {
        Self::generated(signing::Kind::Ed25519)
    }

    fn generated(kind: signing::Kind) -> Self {
        KeyPair::generate(kind, Backend::DEFAULT)
            .and_then(|pair| Self::from_pair(pair, kind.default_algorithm()))
            .unwrap_or_else(|e| panic!("a fresh DPoP key: {e}"))
    }

    /// A key from PEM (PKCS#8, PKCS#1 or SEC1, alone or among other blocks): P-256 signs
    /// ES256, Ed25519 EdDSA, RSA (2048 bits or more) RS256 — PS256 with
    /// [`with_algorithm`](Self::with_algorithm). Fails with [`Error::InvalidKey`] saying
    /// what is wrong.
    pub fn from_pem(pem: impl AsRef<[u8]>) -> Result<Self> {
        Self::from_pem_on(pem, Backend::DEFAULT)
    }

    /// [`from_pem`](Self::from_pem) on the given backend, for the crate's tests and
    /// benchmarks, which compare the two.
    #[doc(hidden)]
    pub fn from_pem_on(pem: impl AsRef<[u8]>, backend: Backend) -> Result<Self> {
        let material = signing::parse_private_pem(pem.as_ref())?;
        let algorithm = if material.pss_only() {
            SigningAlgorithm::PS256
        } else {
            material.kind().default_algorithm()
        };
        Self::from_pair(KeyPair::load(&material, backend)?, algorithm)
    }

    /// A fresh P-256 key on the given backend, for the crate's benchmarks.
    #[doc(hidden)]
    pub fn generate_on(backend: Backend, eddsa: bool) -> Result<Self> {
        let kind = if eddsa {
            signing::Kind::Ed25519
        } else {
            signing::Kind::P256
        };
        Self::from_pair(KeyPair::generate(kind, backend)?, kind.default_algorithm())
    }

    /// Picks PS256 instead of RS256 for an RSA key (a server whose
    /// `dpop_signing_alg_values_supported` lists PS256 only); the other keys have one
    /// algorithm each. An algorithm the key cannot sign is an [`Error::InvalidKey`].
    /// Default: RS256 for RSA, ES256 for P-256, EdDSA for Ed25519.
    pub fn with_algorithm(self, algorithm: SigningAlgorithm) -> Result<Self> {
        let kind = self.inner.pair.kind();
        if !kind.signs(algorithm) || algorithm == SigningAlgorithm::HS256 {
            return Err(kind.cannot_sign(algorithm));
        }
        if algorithm == self.inner.algorithm {
            return Ok(self);
        }
        let inner = Arc::try_unwrap(self.inner).map_err(|_| Error::InvalidKey {
            problem: "pick the algorithm before cloning the DPoP key".into(),
        })?;
        Self::from_pair(inner.pair, algorithm)
    }

    fn from_pair(pair: KeyPair, algorithm: SigningAlgorithm) -> Result<Self> {
        let public = pair.public().ok_or_else(|| Error::InvalidKey {
            problem: "a DPoP key is EC P-256, Ed25519 or RSA, not an HMAC secret".into(),
        })?;
        let jwk = canonical_jwk(&public.jwk())?;
        let thumbprint = URL_SAFE_NO_PAD.encode(Sha256::digest(jwk.to_string().as_bytes()));
        let header = json!({ "typ": PROOF_TYPE, "alg": algorithm.name(), "jwk": jwk });
        let header = format!("{}.", URL_SAFE_NO_PAD.encode(header.to_string()));
        Ok(Self {
            inner: Arc::new(Inner {
                pair,
                algorithm,
                jwk,
                thumbprint,
                header,
            }),
        })
    }

    /// The algorithm of this key's proofs: ES256, EdDSA, RS256 or PS256.
    pub fn algorithm(&self) -> SigningAlgorithm {
        self.inner.algorithm
    }

    /// The public JWK that goes in every proof's header (only the members RFC 7638 hashes).
    pub fn public_jwk(&self) -> &Value {
        &self.inner.jwk
    }

    /// The RFC 7638 JWK SHA-256 thumbprint, base64url: what a server binds DPoP tokens to
    /// (`cnf.jkt`) and what `dpop_jkt` names.
    pub fn thumbprint(&self) -> &str {
        &self.inner.thumbprint
    }

    /// A proof for a request with `method` (`htm`) to `uri` (`htu`, without its query and
    /// fragment), issued now, with a fresh `jti`; `access_token` adds `ath` (the base64url
    /// SHA-256 of the token, for requests to a resource server), `nonce` the server's
    /// `DPoP-Nonce`.
    pub fn proof(
        &self,
        method: &str,
        uri: &str,
        access_token: Option<&str>,
        nonce: Option<&str>,
    ) -> Result<String> {
        let htu = uri.split(['?', '#']).next().unwrap_or(uri);
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // The claims written straight into one buffer: a proof per request must cost its
        // signature and little else.
        let mut claims = Vec::with_capacity(256);
        let string = |claims: &mut Vec<u8>, text: &str| {
            // Writing a JSON string into a Vec cannot fail.
            let _ = serde_json::to_writer(claims, text);
        };
        claims.extend_from_slice(br#"{"htm":"#);
        string(&mut claims, method);
        claims.extend_from_slice(br#","htu":"#);
        string(&mut claims, htu);
        let _ = write!(
            claims,
            r#","iat":{iat},"jti":"{:032x}""#,
            fastrand::u128(..)
        );
        if let Some(token) = access_token {
            claims.extend_from_slice(br#","ath":""#);
            let mut ath = [0u8; 43];
            let written = URL_SAFE_NO_PAD
                .encode_slice(Sha256::digest(token.as_bytes()), &mut ath)
                .unwrap_or(0);
            claims.extend_from_slice(&ath[..written]);
            claims.push(b'"');
        }
        if let Some(nonce) = nonce {
            claims.extend_from_slice(br#","nonce":"#);
            string(&mut claims, nonce);
        }
        claims.push(b'}');
        let mut jwt = String::with_capacity(self.inner.header.len() + 512);
        jwt.push_str(&self.inner.header);
        URL_SAFE_NO_PAD.encode_string(&claims, &mut jwt);
        let signature = self.inner.pair.sign(self.inner.algorithm, jwt.as_bytes())?;
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut jwt);
        Ok(jwt)
    }
}

/// The JWK with only the required members, in lexicographic order (RFC 7638 §3.2), which is
/// what its thumbprint hashes and what proofs carry.
fn canonical_jwk(public: &Value) -> Result<Value> {
    let member = |name: &str| {
        public.get(name).cloned().ok_or_else(|| Error::InvalidKey {
            problem: format!("the public JWK lacks `{name}`"),
        })
    };
    // serde_json's map keeps its keys sorted, so `to_string` is the canonical form.
    Ok(match public.get("kty").and_then(Value::as_str) {
        Some("EC") => {
            json!({ "crv": member("crv")?, "kty": "EC", "x": member("x")?, "y": member("y")? })
        }
        Some("OKP") => json!({ "crv": member("crv")?, "kty": "OKP", "x": member("x")? }),
        Some("RSA") => json!({ "e": member("e")?, "kty": "RSA", "n": member("n")? }),
        _ => {
            return Err(Error::InvalidKey {
                problem: "a DPoP key is EC P-256, Ed25519 or RSA".into(),
            });
        }
    })
}

impl fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopKey")
            .field("algorithm", &self.algorithm())
            .field("thumbprint", &self.inner.thumbprint)
            .field("key", &"[REDACTED]")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(proof: &str) -> Value {
        let part = proof.split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn proofs_carry_what_rfc_9449_asks_for() {
        let key = DpopKey::generate();
        let proof = key
            .proof(
                "GET",
                "https://rs.example.com/v2/items?page=2#top",
                Some("tok3n"),
                Some("n-1"),
            )
            .unwrap();
        let header: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(proof.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header["typ"], PROOF_TYPE);
        assert_eq!(header["alg"], "ES256");
        assert_eq!(&header["jwk"], key.public_jwk());
        assert!(header["jwk"].get("d").is_none(), "no private member");
        let claims = claims(&proof);
        assert_eq!(claims["htm"], "GET");
        assert_eq!(claims["htu"], "https://rs.example.com/v2/items");
        assert_eq!(claims["nonce"], "n-1");
        assert_eq!(
            claims["ath"],
            URL_SAFE_NO_PAD.encode(Sha256::digest(b"tok3n"))
        );
        let again = key
            .proof("GET", "https://rs.example.com/", None, None)
            .unwrap();
        assert_ne!(claims["jti"], self::claims(&again)["jti"]);
        assert!(self::claims(&again).get("ath").is_none());
    }

    #[test]
    fn the_thumbprint_is_rfc_7638s() {
        // RFC 7638 §3.1's example key and thumbprint.
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        let canonical = canonical_jwk(&jwk).unwrap();
        let thumbprint = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.to_string().as_bytes()));
        assert_eq!(thumbprint, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }

    #[test]
    fn keys_stay_secret() {
        let key = DpopKey::generate_ed25519();
        let text = format!("{key:?}");
        assert!(
            text.contains("EdDSA") && text.contains("[REDACTED]"),
            "{text}"
        );
    }
}
