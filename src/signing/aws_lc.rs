//! The aws-lc-rs backend (feature `aws-lc`, implied by `rustls`): RS256 and PS256 with
//! `RsaKeyPair`, ES256 with `EcdsaKeyPair`, EdDSA with `Ed25519KeyPair`, each parsed once.
//! Its own key pairs and calls: nothing goes through a process-wide provider.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    self as lc, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
    RsaKeyPair,
};

use super::SigningAlgorithm;
use super::kinds::{Kind, PublicKey, invalid, unsupported};
use super::parse::Material;
use crate::error::{Error, Result};

/// A parsed key pair, ready to sign.
pub(super) enum Pair {
    Rsa(Box<RsaKeyPair>),
    P256(Box<EcdsaKeyPair>),
    Ed25519(Box<Ed25519KeyPair>),
}

/// Seeds aws-lc's random generator, once per process. Its first use gathers entropy for
/// 30–40 ms (measured on a 2-vCPU KVM guest), and RS256, PS256 and ES256 signatures draw on
/// it: paid at the first signature, it would delay a cold start's first token request and
/// every caller waiting on it. Paid here, it lands where the key is loaded, at start-up.
fn seed_random_once() {
    use aws_lc_rs::rand::SecureRandom as _;
    static SEEDED: std::sync::Once = std::sync::Once::new();
    SEEDED.call_once(|| {
        // A failure here is met again, and reported, by the signature that needs it.
        let _ = SystemRandom::new().fill(&mut [0u8; 1]);
    });
}

/// Loads `material` into a key pair, with its public key.
pub(super) fn load(material: &Material) -> Result<(Pair, PublicKey)> {
    if !matches!(material, Material::Ed25519 { .. }) {
        seed_random_once();
    }
    match material {
        Material::Rsa(rsa) => {
            let pair = RsaKeyPair::from_der(rsa.pkcs1())
                .map_err(|_| invalid("the RSA key's numbers do not form a valid key"))?;
            Ok((Pair::Rsa(Box::new(pair)), rsa.public()))
        }
        Material::P256 { sec1 } => {
            let pair = EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, sec1)
                .map_err(|_| invalid("the EC P-256 private key is not a valid scalar"))?;
            let public = p256_public(&pair)?;
            Ok((Pair::P256(Box::new(pair)), public))
        }
        Material::Ed25519 { seed } => {
            let pair = Ed25519KeyPair::from_seed_unchecked(&seed[..])
                .map_err(|_| invalid("the Ed25519 private key is not 32 bytes"))?;
            let public = ed25519_public(&pair)?;
            Ok((Pair::Ed25519(Box::new(pair)), public))
        }
    }
}

fn p256_public(pair: &EcdsaKeyPair) -> Result<PublicKey> {
    let point: [u8; 65] = pair
        .public_key()
        .as_ref()
        .try_into()
        .map_err(|_| invalid("the P-256 key has no uncompressed public point"))?;
    Ok(PublicKey::P256(point))
}

fn ed25519_public(pair: &Ed25519KeyPair) -> Result<PublicKey> {
    let public: [u8; 32] = pair
        .public_key()
        .as_ref()
        .try_into()
        .map_err(|_| invalid("the Ed25519 public key is not 32 bytes"))?;
    Ok(PublicKey::Ed25519(public))
}

/// A fresh key of `kind` (P-256 or Ed25519).
pub(super) fn generate(kind: Kind) -> Result<(Pair, PublicKey)> {
    let failed = |_| Error::Signing("aws-lc could not generate a key".into());
    match kind {
        Kind::P256 => {
            let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).map_err(failed)?;
            let public = p256_public(&pair)?;
            Ok((Pair::P256(Box::new(pair)), public))
        }
        Kind::Ed25519 => {
            let pair = Ed25519KeyPair::generate().map_err(failed)?;
            let public = ed25519_public(&pair)?;
            Ok((Pair::Ed25519(Box::new(pair)), public))
        }
        Kind::Rsa | Kind::Hmac => Err(unsupported(kind)),
    }
}

impl Pair {
    /// The raw JWS signature of `message`: PKCS#1 v1.5 or PSS (salt as long as the hash)
    /// for RSA, `r ‖ s` for P-256, Ed25519.
    pub(super) fn sign(&self, algorithm: SigningAlgorithm, message: &[u8]) -> Result<Vec<u8>> {
        let failed = |_| Error::Signing(format!("aws-lc could not sign {algorithm}"));
        match (self, algorithm) {
            (Pair::Rsa(pair), SigningAlgorithm::RS256 | SigningAlgorithm::PS256) => {
                let padding: &'static dyn lc::RsaEncoding = if algorithm == SigningAlgorithm::RS256
                {
                    &lc::RSA_PKCS1_SHA256
                } else {
                    &lc::RSA_PSS_SHA256
                };
                let mut signature = vec![0; pair.public_modulus_len()];
                pair.sign(padding, &SystemRandom::new(), message, &mut signature)
                    .map_err(failed)?;
                Ok(signature)
            }
            (Pair::P256(pair), SigningAlgorithm::ES256) => pair
                .sign(&SystemRandom::new(), message)
                .map(|s| s.as_ref().to_vec())
                .map_err(failed),
            (Pair::Ed25519(pair), SigningAlgorithm::EdDSA) => {
                Ok(pair.sign(message).as_ref().to_vec())
            }
            _ => Err(Error::Signing(format!("this key cannot sign {algorithm}"))),
        }
    }
}
