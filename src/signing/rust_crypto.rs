//! The RustCrypto backend: `rsa` (RS256, PS256), `p256` with precomputed base-point tables
//! (ES256), `ed25519-dalek` (EdDSA). Used when the `aws-lc` feature is off, and by the
//! tests and benchmarks that compare the backends.

use p256::elliptic_curve::sec1::ToSec1Point as _;
use rsa::pkcs1::DecodeRsaPrivateKey as _;
use rsa::signature::{RandomizedSigner as _, SignatureEncoding as _, Signer as _};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::SigningAlgorithm;
use super::kinds::{Kind, PublicKey, invalid, unsupported};
use super::parse::Material;
use crate::error::{Error, Result};

/// A parsed key pair, ready to sign.
pub(super) enum Pair {
    Rsa(Box<Rsa>),
    P256(Box<p256::ecdsa::SigningKey>),
    Ed25519(Box<ed25519_dalek::SigningKey>),
}

/// An RSA key ready for both paddings.
pub(super) struct Rsa {
    pkcs1: rsa::pkcs1v15::SigningKey<Sha256>,
    pss: rsa::pss::SigningKey<Sha256>,
}

/// Loads `material` into a key pair, with its public key.
pub(super) fn load(material: &Material) -> Result<(Pair, PublicKey)> {
    match material {
        Material::Rsa(rsa_material) => {
            let key = rsa::PrivateKey::from_pkcs1_der(rsa_material.pkcs1())
                .map_err(|_| invalid("the RSA key's numbers do not form a valid key"))?;
            let public = rsa_material.public();
            Ok((
                Pair::Rsa(Box::new(Rsa {
                    pss: rsa::pss::SigningKey::new(key.clone()),
                    pkcs1: rsa::pkcs1v15::SigningKey::new(key),
                })),
                public,
            ))
        }
        Material::P256 { sec1 } => {
            let secret = p256::SecretKey::from_sec1_der(sec1)
                .map_err(|_| invalid("the EC P-256 private key is not a valid scalar"))?;
            let public = p256_public(&secret)?;
            Ok((
                Pair::P256(Box::new(p256::ecdsa::SigningKey::from(secret))),
                public,
            ))
        }
        Material::Ed25519 { seed } => {
            let key = ed25519_dalek::SigningKey::from_bytes(seed);
            let public = PublicKey::Ed25519(key.verifying_key().to_bytes());
            Ok((Pair::Ed25519(Box::new(key)), public))
        }
    }
}

fn p256_public(secret: &p256::SecretKey) -> Result<PublicKey> {
    let point = secret.public_key().to_sec1_point(false);
    let point: [u8; 65] = point
        .as_bytes()
        .try_into()
        .map_err(|_| invalid("the P-256 key has no public point"))?;
    Ok(PublicKey::P256(point))
}

/// A fresh key of `kind` (P-256 or Ed25519), from the operating system's random numbers.
pub(super) fn generate(kind: Kind) -> Result<(Pair, PublicKey)> {
    loop {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut *bytes)
            .map_err(|e| Error::Signing(format!("the system's random numbers failed: {e}")))?;
        match kind {
            Kind::Ed25519 => return load(&Material::Ed25519 { seed: bytes }),
            Kind::P256 => {
                // A 256-bit number at or above the group order (chance about 2^-32) is
                // not a scalar: draw again.
                let Ok(secret) = p256::SecretKey::from_slice(&bytes[..]) else {
                    continue;
                };
                let public = p256_public(&secret)?;
                return Ok((
                    Pair::P256(Box::new(p256::ecdsa::SigningKey::from(secret))),
                    public,
                ));
            }
            Kind::Rsa | Kind::Hmac => return Err(unsupported(kind)),
        }
    }
}

impl Pair {
    /// The raw JWS signature of `message`: PKCS#1 v1.5 (deterministic) or PSS with a random
    /// 32-byte salt for RSA, RFC 6979 ECDSA as `r ‖ s` for P-256, Ed25519.
    pub(super) fn sign(&self, algorithm: SigningAlgorithm, message: &[u8]) -> Result<Vec<u8>> {
        let failed = |e: rsa::signature::Error| Error::Signing(e.to_string());
        match (self, algorithm) {
            // Deterministic either way; the random numbers blind the private operation.
            (Pair::Rsa(rsa), SigningAlgorithm::RS256) => rsa
                .pkcs1
                .try_sign_with_rng(&mut getrandom::SysRng, message)
                .map(|s| s.to_vec())
                .map_err(failed),
            (Pair::Rsa(rsa), SigningAlgorithm::PS256) => rsa
                .pss
                .try_sign_with_rng(&mut getrandom::SysRng, message)
                .map(|s| s.to_vec())
                .map_err(failed),
            (Pair::P256(key), SigningAlgorithm::ES256) => {
                let signature: p256::ecdsa::Signature = key.try_sign(message).map_err(failed)?;
                Ok(signature.to_vec())
            }
            (Pair::Ed25519(key), SigningAlgorithm::EdDSA) => {
                Ok(ed25519_dalek::Signer::sign(&**key, message).to_vec())
            }
            _ => Err(Error::Signing(format!("this key cannot sign {algorithm}"))),
        }
    }
}
