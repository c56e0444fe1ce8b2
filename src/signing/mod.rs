//! Signing: keys and signers for JWT-bearer assertions
//! ([`JwtBearer::signed_by`](crate::JwtBearer::signed_by)), client assertions
//! ([`ClientAuth::PrivateKeyJwt`](crate::ClientAuth::PrivateKeyJwt)) and DPoP proofs
//! ([`DpopKey`](crate::dpop::DpopKey)).
//!
//! A [`SigningKey`] is a local key (RSA, P-256, Ed25519 or an HMAC secret), parsed once into
//! the backend's key pair; anything else that signs — a KMS, an HSM, Vault transit —
//! implements [`Signer`]. The crate builds the JWT (header, claims, encoding) and asks the
//! signer only for the signature.
//!
//! # Backends
//!
//! | feature | RS256, PS256, ES256, EdDSA | HS256 |
//! |---|---|---|
//! | `aws-lc` (implied by `rustls`, so on by default) | aws-lc-rs | RustCrypto `hmac` |
//! | without `aws-lc` (e.g. `native-tls` only) | RustCrypto: `rsa`, `p256` with precomputed tables, `ed25519-dalek` | RustCrypto `hmac` |
//!
//! Every key type signs in every feature combination, and nothing here installs a
//! process-wide crypto provider: an application's own choice for rustls or jsonwebtoken
//! stays its own. Keys are read the same way on both backends (RustCrypto's format crates),
//! so a key that one build accepts, the other accepts too; RS256 and EdDSA signatures are
//! byte-identical across the backends.

mod assertion;
#[cfg(feature = "aws-lc")]
mod aws_lc;
mod certificate;
mod key;
mod kinds;
mod pair;
mod parse;
mod rust_crypto;

use std::fmt;

pub(crate) use assertion::{ASSERTION_LIFETIME, Jws, mint};
pub use key::SigningKey;
pub(crate) use kinds::Kind;
pub(crate) use pair::KeyPair;
pub(crate) use parse::parse_private_pem;

use crate::error::Result;

/// A JWS signing algorithm (RFC 7518 §3, RFC 8037 for EdDSA).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SigningAlgorithm {
    /// HMAC with SHA-256, over a shared secret (DT's service accounts, `client_secret_jwt`).
    HS256,
    /// RSASSA-PKCS1-v1_5 with SHA-256: Google service accounts, most RSA keys.
    RS256,
    /// RSASSA-PSS with SHA-256 (and MGF1 with SHA-256, a 32-byte salt), for an RSA key that
    /// must use PSS (Microsoft Entra's certificate credentials, FAPI).
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

    /// The algorithm named `alg` in a JWK or a header, if this crate signs it.
    pub(crate) fn from_name(alg: &str) -> Option<Self> {
        Some(match alg {
            "HS256" => Self::HS256,
            "RS256" => Self::RS256,
            "PS256" => Self::PS256,
            "ES256" => Self::ES256,
            "EdDSA" => Self::EdDSA,
            _ => return None,
        })
    }
}

impl fmt::Display for SigningAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which implementation signs: for the crate's own tests and benchmarks, which compare the
/// two; applications get the one their features pick.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// aws-lc-rs (feature `aws-lc`).
    #[cfg(feature = "aws-lc")]
    AwsLc,
    /// The RustCrypto crates.
    RustCrypto,
}

impl Backend {
    /// The backend the features pick: aws-lc-rs when it is built, else RustCrypto.
    pub(crate) const DEFAULT: Backend = {
        #[cfg(feature = "aws-lc")]
        {
            Backend::AwsLc
        }
        #[cfg(not(feature = "aws-lc"))]
        {
            Backend::RustCrypto
        }
    };
}

/// Signs JWTs for the crate: a local [`SigningKey`], or a key that never leaves a KMS, an HSM
/// or Vault transit.
///
/// The crate builds the header (`alg` from [`algorithm`](Self::algorithm), `kid` from
/// [`key_id`](Self::key_id), `typ: JWT`, and `x5t#S256` / `x5t` when a certificate names
/// the key) and the claims, and calls [`sign`](Self::sign) with the JWS signing input
/// (`base64url(header) "." base64url(claims)`), once per assertion. A call that takes longer
/// than the token request's timeout is abandoned
/// ([`Error::SignerTimeout`](crate::Error::SignerTimeout), retried like a timeout). An error
/// built with [`Error::transient`](crate::Error::transient) (a throttled or unreachable KMS)
/// is retried, one built with [`Error::source`](crate::Error::source) is not; either reaches
/// the caller as [`Error::Signer`](crate::Error::Signer), "the signer failed: …".
///
/// Implement it with the [`async_trait`](crate::async_trait) macro this crate re-exports, so
/// that your manifest needs no `async-trait` of its own:
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
/// #[token_refresh::async_trait]
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

    /// The base64url SHA-256 thumbprint of the X.509 certificate of the key, the header's
    /// `x5t#S256` (RFC 7515 §4.1.8), which Microsoft Entra wants for certificate
    /// credentials. Default: none.
    fn x5t_s256(&self) -> Option<&str> {
        None
    }

    /// The base64url SHA-1 thumbprint of the certificate, the header's legacy `x5t`
    /// (RFC 7515 §4.1.7), for servers that still look it up. Default: none.
    fn x5t(&self) -> Option<&str> {
        None
    }

    /// The raw JWS signature of `message`: for ES256 the 64-byte `r ‖ s` (a KMS that returns
    /// a DER-encoded ECDSA signature must convert it), for RS256/PS256 the modulus-sized
    /// signature, for EdDSA 64 bytes.
    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>>;
}
