//! Reading private keys as people have them — PEM files with one block or several (OpenSSL's
//! `EC PARAMETERS` before the key, key + certificate bundles), PKCS#8, PKCS#1 and SEC1 DER,
//! private JWKs — into [`Material`] that either backend loads. Errors say what is wrong and
//! how to fix it, never show key material.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use der::asn1::{ObjectIdentifier, OctetStringRef, UintRef};
use der::{Decode as _, Encode as _};
use serde_json::Value;
use zeroize::Zeroizing;

use super::kinds::{Kind, PublicKey, invalid};
use crate::error::Result;

/// RSA keys shorter than this are refused: NIST has disallowed them since 2013, and most
/// identity services reject their signatures.
const MIN_RSA_BITS: usize = 2048;

const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const RSASSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const P256_CURVE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// A private key, read and checked, before a backend loads it.
pub(crate) enum Material {
    Rsa(RsaMaterial),
    /// A SEC1 `ECPrivateKey` (RFC 5915) on P-256.
    P256 {
        sec1: Zeroizing<Vec<u8>>,
    },
    /// The 32-byte seed of RFC 8032.
    Ed25519 {
        seed: Zeroizing<[u8; 32]>,
    },
}

/// An RSA key: its PKCS#1 `RSAPrivateKey` DER, and its public numbers.
pub(crate) struct RsaMaterial {
    pkcs1: Zeroizing<Vec<u8>>,
    n: Vec<u8>,
    e: Vec<u8>,
    /// Whether the key was marked for PSS only (PKCS#8 `id-RSASSA-PSS`).
    pss_only: bool,
}

impl RsaMaterial {
    /// Checks a PKCS#1 `RSAPrivateKey` and its size.
    fn new(pkcs1: Zeroizing<Vec<u8>>, pss_only: bool, corrupt: &str) -> Result<Self> {
        let (n, e) = {
            let key = pkcs1::RsaPrivateKey::<UintRef<'_>>::from_der(&pkcs1)
                .map_err(|e| invalid(format!("{corrupt} ({e})")))?;
            (
                key.modulus.as_bytes().to_vec(),
                key.public_exponent.as_bytes().to_vec(),
            )
        };
        let bits = PublicKey::rsa_bits(&n);
        if bits < MIN_RSA_BITS {
            return Err(invalid(format!(
                "the RSA key has {bits} bits; at least {MIN_RSA_BITS} are required"
            )));
        }
        Ok(Self {
            pkcs1,
            n,
            e,
            pss_only,
        })
    }

    pub(crate) fn pkcs1(&self) -> &[u8] {
        &self.pkcs1
    }

    pub(crate) fn public(&self) -> PublicKey {
        PublicKey::Rsa {
            n: self.n.clone(),
            e: self.e.clone(),
        }
    }
}

impl Material {
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Material::Rsa(_) => Kind::Rsa,
            Material::P256 { .. } => Kind::P256,
            Material::Ed25519 { .. } => Kind::Ed25519,
        }
    }

    /// Whether the key may sign only PS256 (a PKCS#8 key marked `id-RSASSA-PSS`).
    pub(crate) fn pss_only(&self) -> bool {
        matches!(self, Material::Rsa(rsa) if rsa.pss_only)
    }
}

/// The labels of PEM blocks that hold a private key.
fn is_private_key(label: &str) -> bool {
    label == "PRIVATE KEY" || label == "ENCRYPTED PRIVATE KEY" || label.ends_with(" PRIVATE KEY")
}

/// Reads the private key of a PEM text: the one private-key block among any number of
/// blocks (parameters, certificates, public keys). Empty text, no private key, two private
/// keys, an encrypted key (PKCS#8 or legacy `Proc-Type: 4,ENCRYPTED`), a key that is not
/// RSA, P-256 or Ed25519, and corrupt DER each get an error saying so.
pub(crate) fn parse_private_pem(pem: &[u8]) -> Result<Material> {
    if pem.iter().all(u8::is_ascii_whitespace) {
        return Err(invalid("the PEM is empty"));
    }
    if std::str::from_utf8(pem).is_err() {
        return Err(invalid(
            "the key is not PEM text (binary DER?): convert it with `openssl pkey -inform DER \
             -in key.der -out key.pem`",
        ));
    }
    let blocks = pem::parse_many(pem).map_err(|e| {
        invalid(format!(
            "not a PEM block (-----BEGIN ...-----, base64, -----END ...-----): {e}"
        ))
    })?;
    if blocks.is_empty() {
        return Err(invalid(
            "no PEM block found (-----BEGIN ...-----, base64, -----END ...-----)",
        ));
    }
    let labels: Vec<String> = blocks.iter().map(|b| b.tag().to_owned()).collect();
    let mut keys = blocks.into_iter().filter(|b| is_private_key(b.tag()));
    let (Some(block), None) = (keys.next(), keys.next()) else {
        let private = labels.iter().filter(|l| is_private_key(l)).count();
        return Err(if private > 1 {
            invalid(format!(
                "found {private} private keys in one PEM ({}): give the one to sign with",
                labels.join(", ")
            ))
        } else if let [label] = labels.as_slice() {
            invalid(format!(
                "this is a {}, not a private key: give the private key it belongs to",
                label.to_lowercase()
            ))
        } else {
            invalid(format!(
                "found {} PEM blocks ({}), none a private key: give the private key",
                labels.len(),
                labels.join(", ")
            ))
        });
    };
    let encrypted = block
        .headers()
        .get("Proc-Type")
        .is_some_and(|p| p.to_ascii_uppercase().contains("ENCRYPTED"));
    let label = block.tag().to_owned();
    let der = Zeroizing::new(block.into_contents());
    if encrypted || label == "ENCRYPTED PRIVATE KEY" {
        return Err(invalid(
            "the key is encrypted: decrypt it first, e.g. `openssl pkey -in key.pem -out \
             plain.pem`",
        ));
    }
    match label.as_str() {
        "PRIVATE KEY" => parse_pkcs8(&der),
        "RSA PRIVATE KEY" => Ok(Material::Rsa(RsaMaterial::new(
            der,
            false,
            "the RSA PRIVATE KEY (PKCS#1) is corrupt",
        )?)),
        "EC PRIVATE KEY" => parse_sec1(&der, None, "the EC PRIVATE KEY (SEC1) is corrupt"),
        "OPENSSH PRIVATE KEY" => Err(invalid(
            "an OpenSSH private key: convert it to PKCS#8 with `ssh-keygen -p -m PKCS8 -f \
             FILE` (this rewrites FILE)",
        )),
        other => Err(invalid(format!(
            "a PEM block labelled {other:?}; expected PRIVATE KEY, RSA PRIVATE KEY or EC \
             PRIVATE KEY"
        ))),
    }
}

/// A PKCS#8 `PrivateKeyInfo`: RSA (or RSA for PSS), EC on P-256, Ed25519.
fn parse_pkcs8(der: &[u8]) -> Result<Material> {
    let info = pkcs8::PrivateKeyInfoRef::from_der(der)
        .map_err(|e| invalid(format!("the PRIVATE KEY (PKCS#8) is corrupt ({e})")))?;
    let private = info.private_key.as_bytes();
    let oid = info.algorithm.oid;
    if oid == RSA_ENCRYPTION || oid == RSASSA_PSS {
        RsaMaterial::new(
            Zeroizing::new(private.to_vec()),
            oid == RSASSA_PSS,
            "the RSA key inside the PKCS#8 PRIVATE KEY is corrupt",
        )
        .map(Material::Rsa)
    } else if oid == EC_PUBLIC_KEY {
        let curve = info
            .algorithm
            .parameters
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
        parse_sec1(
            private,
            curve,
            "the EC key inside the PKCS#8 PRIVATE KEY is corrupt",
        )
    } else if oid == ED25519 {
        let seed = <&OctetStringRef>::from_der(private).map_err(|e| {
            invalid(format!(
                "the Ed25519 key inside the PKCS#8 PRIVATE KEY is corrupt ({e})"
            ))
        })?;
        ed25519_seed(seed.as_bytes()).map(|seed| Material::Ed25519 { seed })
    } else {
        let name = match oid.to_string().as_str() {
            "1.3.101.113" => "Ed448",
            "1.3.101.110" | "1.3.101.111" => "an X25519/X448 key-agreement key",
            "1.2.840.10040.4.1" => "DSA",
            _ => "unknown",
        };
        Err(invalid(format!(
            "the PKCS#8 PRIVATE KEY is of an unsupported type ({name}, OID {oid}): RSA, EC \
             P-256 and Ed25519 are supported"
        )))
    }
}

/// A SEC1 `ECPrivateKey`, which must be on P-256 (named in it, or by `curve` from PKCS#8).
fn parse_sec1(der: &[u8], curve: Option<ObjectIdentifier>, corrupt: &str) -> Result<Material> {
    let key = sec1::EcPrivateKey::from_der(der).map_err(|e| invalid(format!("{corrupt} ({e})")))?;
    let curve = curve.or_else(|| key.parameters.and_then(|p| p.named_curve()));
    match curve {
        Some(curve) if curve == P256_CURVE => {}
        // No curve named: a 32-byte scalar is taken as P-256, the one curve supported.
        None if key.private_key.len() == 32 => {}
        Some(curve) => {
            let name = match curve.to_string().as_str() {
                "1.3.132.0.34" => "P-384",
                "1.3.132.0.35" => "P-521",
                "1.3.132.0.10" => "secp256k1",
                _ => "another curve",
            };
            return Err(invalid(format!(
                "the EC key is on {name} (OID {curve}), not P-256: only P-256 (ES256) is \
                 supported"
            )));
        }
        None => {
            return Err(invalid(
                "the EC key names no curve and is not 32 bytes: only P-256 (ES256) is \
                 supported",
            ));
        }
    }
    Ok(Material::P256 {
        sec1: Zeroizing::new(der.to_vec()),
    })
}

fn ed25519_seed(bytes: &[u8]) -> Result<Zeroizing<[u8; 32]>> {
    let seed: [u8; 32] = bytes
        .try_into()
        .map_err(|_| invalid("the Ed25519 private key is not 32 bytes"))?;
    Ok(Zeroizing::new(seed))
}

/// What a private JWK holds: an asymmetric key, or an HMAC secret (`kty` `oct`).
pub(crate) enum JwkKey {
    Asymmetric {
        material: Material,
        /// The public members the JWK gave, to check against the key's own.
        public: Option<PublicKey>,
    },
    Secret(Zeroizing<Vec<u8>>),
}

/// Reads a private JWK (RFC 7517/7518): `RSA` with `n`, `e`, `d`, `p`, `q`, `dp`, `dq`,
/// `qi`; `EC` on `P-256` with `x`, `y`, `d`; `OKP` `Ed25519` with `d` (and `x`); `oct`
/// with `k`.
pub(crate) fn parse_jwk(jwk: &Value) -> Result<JwkKey> {
    let field = |name: &str| -> Result<Zeroizing<Vec<u8>>> {
        let text = jwk
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("the JWK lacks the {name} member")))?;
        URL_SAFE_NO_PAD
            .decode(text.trim_end_matches('='))
            .map(Zeroizing::new)
            .map_err(|_| invalid(format!("the JWK's {name} is not base64url")))
    };
    let private = |name: &str| {
        if jwk.get(name).is_none() {
            Err(invalid(format!(
                "a public JWK (no {name}): give the private key, with its {name} member"
            )))
        } else {
            field(name)
        }
    };
    let kty = jwk.get("kty").and_then(Value::as_str).unwrap_or_default();
    let crv = jwk.get("crv").and_then(Value::as_str).unwrap_or_default();
    match (kty, crv) {
        ("RSA", _) => {
            let d = private("d")?;
            let crt = |name: &str| {
                field(name).map_err(|_| {
                    invalid(format!(
                        "the RSA JWK lacks {name}: RFC 7518 §6.3.2 has p, q, dp, dq and qi \
                         come together"
                    ))
                })
            };
            let (n, e, p, q) = (field("n")?, field("e")?, crt("p")?, crt("q")?);
            let (dp, dq, qi) = (crt("dp")?, crt("dq")?, crt("qi")?);
            fn uint(bytes: &[u8]) -> Result<UintRef<'_>> {
                UintRef::new(bytes).map_err(|_| invalid("the RSA JWK has an empty number"))
            }
            let der = pkcs1::RsaPrivateKey {
                modulus: uint(&n)?,
                public_exponent: uint(&e)?,
                private_exponent: uint(&d)?,
                prime1: uint(&p)?,
                prime2: uint(&q)?,
                exponent1: uint(&dp)?,
                exponent2: uint(&dq)?,
                coefficient: uint(&qi)?,
                other_prime_infos: None,
            }
            .to_der()
            .map_err(|_| invalid("the RSA JWK's members do not encode"))?;
            let material = RsaMaterial::new(
                Zeroizing::new(der),
                false,
                "the RSA JWK's members do not form a key",
            )?;
            Ok(JwkKey::Asymmetric {
                material: Material::Rsa(material),
                public: None,
            })
        }
        ("EC", "P-256") => {
            let d = private("d")?;
            let (x, y) = (field("x")?, field("y")?);
            if d.len() != 32 || x.len() != 32 || y.len() != 32 {
                return Err(invalid(
                    "the EC JWK's d, x and y must be 32 bytes each on P-256",
                ));
            }
            let mut point = [0u8; 65];
            point[0] = 4;
            point[1..33].copy_from_slice(&x);
            point[33..].copy_from_slice(&y);
            let sec1 = sec1::EcPrivateKey {
                private_key: &d,
                parameters: Some(sec1::EcParameters::NamedCurve(P256_CURVE)),
                // Checked against the key's own after loading, with an error that says so.
                public_key: None,
            }
            .to_der()
            .map_err(|_| invalid("the EC JWK's members do not encode"))?;
            Ok(JwkKey::Asymmetric {
                material: Material::P256 {
                    sec1: Zeroizing::new(sec1),
                },
                public: Some(PublicKey::P256(point)),
            })
        }
        ("EC", other) => Err(invalid(format!(
            "an EC JWK on curve {other:?}: only P-256 (ES256) is supported"
        ))),
        ("OKP", "Ed25519") => {
            let seed = ed25519_seed(&private("d")?)?;
            let public = match jwk.get("x") {
                None => None,
                Some(_) => Some(PublicKey::Ed25519(
                    field("x")?
                        .as_slice()
                        .try_into()
                        .map_err(|_| invalid("the Ed25519 JWK's x is not 32 bytes"))?,
                )),
            };
            Ok(JwkKey::Asymmetric {
                material: Material::Ed25519 { seed },
                public,
            })
        }
        ("OKP", other) => Err(invalid(format!(
            "an OKP JWK on curve {other:?}: only Ed25519 is supported"
        ))),
        ("oct", _) => Ok(JwkKey::Secret(private("k")?)),
        (other, _) => Err(invalid(format!(
            "a JWK with kty {other:?}: expected RSA, EC, OKP or oct"
        ))),
    }
}
