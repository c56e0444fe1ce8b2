//! The X.509 certificate of a key: its thumbprints for the `x5t#S256` and `x5t` headers
//! (RFC 7515 §4.1.7–8), which Microsoft Entra uses to find the certificate credential an
//! assertion is signed with.

use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use der::Decode as _;
use sha1::Digest as _;
use x509_cert::Certificate;

use super::kinds::{PublicKey, invalid};
use crate::error::Result;

/// The base64url thumbprints of a certificate's DER.
#[derive(Clone, Debug)]
pub(crate) struct Thumbprints {
    /// SHA-256: `x5t#S256`.
    pub(crate) s256: String,
    /// SHA-1: `x5t`.
    pub(crate) sha1: String,
}

/// The thumbprints of the certificate in `pem` whose public key is `public`: `pem` may hold
/// one certificate, a chain, or a key + certificate bundle. None that matches, an expired
/// one, or no certificate at all is an [`Error::InvalidKey`](crate::Error::InvalidKey)
/// saying so.
pub(crate) fn thumbprints_for(pem: &[u8], public: &PublicKey) -> Result<Thumbprints> {
    let blocks = pem::parse_many(pem).map_err(|e| {
        invalid(format!(
            "the certificate is not PEM (-----BEGIN CERTIFICATE-----): {e}"
        ))
    })?;
    let certificates: Vec<_> = blocks.iter().filter(|b| b.tag() == "CERTIFICATE").collect();
    if certificates.is_empty() {
        return Err(invalid(format!(
            "found {} PEM blocks, none a CERTIFICATE",
            blocks.len()
        )));
    }
    for block in &certificates {
        let der = block.contents();
        let certificate = Certificate::from_der(der)
            .map_err(|e| invalid(format!("the CERTIFICATE is corrupt ({e})")))?;
        let tbs = certificate.tbs_certificate();
        if !same_key(tbs.subject_public_key_info(), public) {
            continue;
        }
        let not_after = tbs.validity().not_after.to_system_time();
        if not_after < SystemTime::now() {
            return Err(invalid(format!(
                "the certificate for this key expired on {}: servers refuse assertions \
                 that name it",
                httpdate::fmt_http_date(not_after)
            )));
        }
        return Ok(Thumbprints {
            s256: URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(der)),
            sha1: URL_SAFE_NO_PAD.encode(sha1::Sha1::digest(der)),
        });
    }
    Err(invalid(format!(
        "found {} certificate(s), none for this key: give the certificate issued for it",
        certificates.len()
    )))
}

/// Whether a certificate's `SubjectPublicKeyInfo` holds `public`.
fn same_key(spki: &x509_cert::spki::SubjectPublicKeyInfoOwned, public: &PublicKey) -> bool {
    let Some(bits) = spki.subject_public_key.as_bytes() else {
        return false;
    };
    match public {
        PublicKey::Rsa { n, e } => pkcs1::RsaPublicKey::<der::asn1::UintRef<'_>>::from_der(bits)
            .is_ok_and(|key| key.modulus.as_bytes() == n && key.public_exponent.as_bytes() == e),
        PublicKey::P256(point) => bits == point,
        PublicKey::Ed25519(x) => bits == x,
    }
}
