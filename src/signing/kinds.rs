//! The kinds of keys the crate signs with, what each signs, their public halves, and the
//! error a bad key gets.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::SigningAlgorithm;
use crate::error::Error;

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
