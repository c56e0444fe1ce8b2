//! [`KeyPair`]: a key parsed once into the backend that signs with it, and its public key.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit as _, Mac as _};
use serde_json::{Value, json};
use zeroize::Zeroizing;

#[cfg(feature = "aws-lc")]
use super::aws_lc;
use super::parse::Material;
use super::{Backend, SigningAlgorithm, rust_crypto};
use crate::error::{Error, Result};

/// What kind of key a key pair is; each signs its own algorithms only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Rsa,
    P256,
    Ed25519,
    Hmac,
}

impl Kind {
    pub(crate) fn default_algorithm(self) -> SigningAlgorithm {
        match self {
            Kind::Rsa => SigningAlgorithm::RS256,
            Kind::P256 => SigningAlgorithm::ES256,
            Kind::Ed25519 => SigningAlgorithm::EdDSA,
            Kind::Hmac => SigningAlgorithm::HS256,
        }
    }

    pub(crate) fn signs(self, algorithm: SigningAlgorithm) -> bool {
        use SigningAlgorithm as A;
        matches!(
            (self, algorithm),
            (Kind::Rsa, A::RS256 | A::PS256)
                | (Kind::P256, A::ES256)
                | (Kind::Ed25519, A::EdDSA)
                | (Kind::Hmac, A::HS256)
        )
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Rsa => "an RSA key",
            Kind::P256 => "an EC P-256 key",
            Kind::Ed25519 => "an Ed25519 key",
            Kind::Hmac => "an HMAC secret",
        }
    }

    /// An [`Error::InvalidKey`] for asking this key for `algorithm`, naming what it signs.
    pub(crate) fn cannot_sign(self, algorithm: SigningAlgorithm) -> Error {
        invalid(format!(
            "{} cannot sign {algorithm} (it signs {})",
            self.name(),
            if self == Kind::Rsa {
                "RS256 or PS256".to_owned()
            } else {
                self.default_algorithm().to_string()
            }
        ))
    }
}

pub(crate) fn invalid(problem: impl Into<String>) -> Error {
    Error::InvalidKey {
        problem: problem.into(),
    }
}

pub(super) fn unsupported(kind: Kind) -> Error {
    Error::Signing(format!("{} cannot be generated here", kind.name()))
}

/// The public half of an asymmetric key.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum PublicKey {
    /// Modulus and public exponent, big-endian without leading zeros.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// The uncompressed SEC1 point, `04 ‖ x ‖ y`.
    P256([u8; 65]),
    Ed25519([u8; 32]),
}

impl PublicKey {
    /// The public JWK (RFC 7517), members in RFC 7638 order, without `alg`, `use` or `kid`.
    pub(crate) fn jwk(&self) -> Value {
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        match self {
            PublicKey::Rsa { n, e } => json!({ "e": b64(e), "kty": "RSA", "n": b64(n) }),
            PublicKey::P256(point) => json!({
                "crv": "P-256", "kty": "EC", "x": b64(&point[1..33]), "y": b64(&point[33..]),
            }),
            PublicKey::Ed25519(x) => json!({ "crv": "Ed25519", "kty": "OKP", "x": b64(x) }),
        }
    }

    /// The size of an RSA modulus in bits.
    pub(crate) fn rsa_bits(n: &[u8]) -> usize {
        let n = match n.iter().position(|b| *b != 0) {
            Some(first) => &n[first..],
            None => return 0,
        };
        n.len() * 8 - n[0].leading_zeros() as usize
    }
}

/// A key parsed once into its backend (or an HMAC secret), with its public key.
pub(crate) struct KeyPair {
    kind: Kind,
    public: Option<PublicKey>,
    imp: Imp,
}

enum Imp {
    /// The secret; HMAC keys are cheap to set up per signature.
    Hmac(Zeroizing<Vec<u8>>),
    #[cfg(feature = "aws-lc")]
    AwsLc(aws_lc::Pair),
    RustCrypto(rust_crypto::Pair),
}

impl KeyPair {
    /// Loads `material` into `backend`.
    pub(crate) fn load(material: &Material, backend: Backend) -> Result<Self> {
        let kind = material.kind();
        let (imp, public) = match backend {
            #[cfg(feature = "aws-lc")]
            Backend::AwsLc => {
                let (pair, public) = aws_lc::load(material)?;
                (Imp::AwsLc(pair), public)
            }
            Backend::RustCrypto => {
                let (pair, public) = rust_crypto::load(material)?;
                (Imp::RustCrypto(pair), public)
            }
        };
        Ok(Self {
            kind,
            public: Some(public),
            imp,
        })
    }

    /// A fresh P-256 or Ed25519 key on `backend`.
    pub(crate) fn generate(kind: Kind, backend: Backend) -> Result<Self> {
        let (imp, public) = match backend {
            #[cfg(feature = "aws-lc")]
            Backend::AwsLc => {
                let (pair, public) = aws_lc::generate(kind)?;
                (Imp::AwsLc(pair), public)
            }
            Backend::RustCrypto => {
                let (pair, public) = rust_crypto::generate(kind)?;
                (Imp::RustCrypto(pair), public)
            }
        };
        Ok(Self {
            kind,
            public: Some(public),
            imp,
        })
    }

    /// An HMAC secret (HS256). An empty one is an [`Error::InvalidKey`].
    pub(crate) fn hmac(secret: &[u8]) -> Result<Self> {
        if secret.is_empty() {
            return Err(invalid("the HMAC secret is empty"));
        }
        Ok(Self {
            kind: Kind::Hmac,
            public: None,
            imp: Imp::Hmac(Zeroizing::new(secret.to_vec())),
        })
    }

    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }

    /// The public key; `None` for an HMAC secret.
    pub(crate) fn public(&self) -> Option<&PublicKey> {
        self.public.as_ref()
    }

    /// The raw JWS signature of `message` with `algorithm`, which this key must sign.
    pub(crate) fn sign(&self, algorithm: SigningAlgorithm, message: &[u8]) -> Result<Vec<u8>> {
        if !self.kind.signs(algorithm) {
            return Err(self.kind.cannot_sign(algorithm));
        }
        match &self.imp {
            Imp::Hmac(secret) => Ok(hmac_sha256(secret, message).to_vec()),
            #[cfg(feature = "aws-lc")]
            Imp::AwsLc(pair) => pair.sign(algorithm, message),
            Imp::RustCrypto(pair) => pair.sign(algorithm, message),
        }
    }
}

/// HMAC-SHA256 of `message` under `key` (RustCrypto's `hmac`, in every build).
pub(crate) fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(message);
    mac.finalize().into_bytes().into()
}
