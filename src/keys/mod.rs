//! Signing keys and signers: what signs a JWT-bearer assertion
//! ([`JwtBearer::signed_by`](crate::JwtBearer::signed_by)) or a client assertion
//! ([`ClientAuth::PrivateKeyJwt`](crate::ClientAuth::PrivateKeyJwt)).
//!
//! A [`SigningKey`] is a local key (RSA, P-256, Ed25519 or an HMAC secret); anything else
//! that signs — a KMS, an HSM, Vault transit — implements [`Signer`]. The crate builds the
//! JWT (header, claims, encoding) and asks the signer only for the signature.

mod assertion;
mod signing_key;

use std::fmt;

pub(crate) use assertion::{ASSERTION_LIFETIME, Jws, backdated_iat, mint, random_jti};
pub use signing_key::SigningKey;
pub(crate) use signing_key::{Parsed, parse_private_pem, public_jwk_of};

use crate::error::Result;

/// A JWS signing algorithm (RFC 7518 §3, RFC 8037 for EdDSA).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SigningAlgorithm {
    /// HMAC with SHA-256, over a shared secret (DT's service accounts, `client_secret_jwt`).
    HS256,
    /// RSASSA-PKCS1-v1_5 with SHA-256: Google service accounts, most RSA keys.
    RS256,
    /// RSASSA-PSS with SHA-256 (and MGF1 with SHA-256), for an RSA key that must use PSS.
    PS256,
    /// ECDSA on P-256 with SHA-256; the signature is the 64-byte `r ‖ s` of RFC 7518 §3.4.
    ES256,
    /// Ed25519 (RFC 8037).
    EdDSA,
}

impl SigningAlgorithm {
    /// The `alg` header value, e.g. `"RS256"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::HS256 => "HS256",
            Self::RS256 => "RS256",
            Self::PS256 => "PS256",
            Self::ES256 => "ES256",
            Self::EdDSA => "EdDSA",
        }
    }

    pub(crate) fn jsonwebtoken(self) -> jsonwebtoken::Algorithm {
        match self {
            Self::HS256 => jsonwebtoken::Algorithm::HS256,
            Self::RS256 => jsonwebtoken::Algorithm::RS256,
            Self::PS256 => jsonwebtoken::Algorithm::PS256,
            Self::ES256 => jsonwebtoken::Algorithm::ES256,
            Self::EdDSA => jsonwebtoken::Algorithm::EdDSA,
        }
    }
}

impl fmt::Display for SigningAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Signs JWTs for the crate: a local [`SigningKey`], or a key that never leaves a KMS, an HSM
/// or Vault transit.
///
/// The crate builds the header (`alg` from [`algorithm`](Self::algorithm), `kid` from
/// [`key_id`](Self::key_id), `typ: JWT`) and the claims, and calls [`sign`](Self::sign) with
/// the JWS signing input (`base64url(header) "." base64url(claims)`), once per assertion.
/// A call that takes longer than the token request's timeout is abandoned
/// ([`Error::SignerTimeout`](crate::Error::SignerTimeout), retried like a timeout); the
/// signer's own error is passed on as it is: build it with
/// [`Error::transient`](crate::Error::transient) for a failure that retrying can help (a
/// throttled or unreachable KMS), else [`Error::source`](crate::Error::source).
///
/// ```
/// use token_refresh::{Error, Signer, SigningAlgorithm, SigningKey};
///
/// /// Stands in for a KMS client: signs with a key it holds, and counts its calls.
/// #[derive(Debug)]
/// struct Kms {
///     key: SigningKey,
///     calls: std::sync::atomic::AtomicUsize,
/// }
///
/// #[async_trait::async_trait]
/// impl Signer for Kms {
///     fn algorithm(&self) -> SigningAlgorithm {
///         SigningAlgorithm::ES256
///     }
///     fn key_id(&self) -> Option<&str> {
///         Some("kms-key-1")
///     }
///     async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
///         self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
///         self.key.sign(message).await // a KMS call would go here
///     }
/// }
/// ```
#[async_trait::async_trait]
pub trait Signer: Send + Sync + fmt::Debug + 'static {
    /// The algorithm the signature is made with: the header's `alg`.
    fn algorithm(&self) -> SigningAlgorithm;

    /// The key id, the header's `kid`, if the verifier needs one to find the key.
    fn key_id(&self) -> Option<&str>;

    /// The raw JWS signature of `message`: for ES256 the 64-byte `r ‖ s` (a KMS that returns
    /// a DER-encoded ECDSA signature must convert it), for RS256/PS256 the modulus-sized
    /// signature, for EdDSA 64 bytes.
    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>>;
}
