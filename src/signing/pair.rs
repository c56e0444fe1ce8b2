//! [`KeyPair`]: a key parsed once into the backend that signs with it, and its public key.

use hmac::{KeyInit as _, Mac as _};
use zeroize::Zeroizing;

#[cfg(feature = "aws-lc")]
use super::aws_lc;
use super::kinds::{Kind, PublicKey, invalid};
use super::parse::Material;
use super::{Backend, SigningAlgorithm, rust_crypto};
use crate::error::Result;

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
