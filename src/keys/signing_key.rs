//! [`SigningKey`]: a local private key (RSA, P-256, Ed25519) or an HMAC secret.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use jsonwebtoken::EncodingKey;
use rsa::pkcs1::{DecodeRsaPrivateKey as _, EncodeRsaPrivateKey as _};
use rsa::traits::PublicKeyParts as _;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::{Signer, SigningAlgorithm};
use crate::error::{Error, Result};

/// RSA keys shorter than this are refused: NIST has disallowed them since 2013, and most
/// identity services reject their signatures.
const MIN_RSA_BITS: usize = 2048;

/// A private key that signs JWTs: RSA (RS256 by default, PS256 on request), EC P-256
/// (ES256), Ed25519 (EdDSA), or an HMAC secret (HS256).
///
/// - [`from_pem`](Self::from_pem) reads PKCS#8 (`BEGIN PRIVATE KEY`), PKCS#1
///   (`BEGIN RSA PRIVATE KEY`) and SEC1 (`BEGIN EC PRIVATE KEY`) PEM and tells the key types
///   apart; [`from_pem_file`](Self::from_pem_file) re-reads its file when it changes;
///   [`from_jwk`](Self::from_jwk) reads a private JWK; [`from_secret`](Self::from_secret)
///   takes an HMAC secret.
/// - [`key_id`](Self::key_id) sets the `kid` header; [`algorithm`](Self::algorithm) picks
///   PS256 over RS256 for an RSA key.
/// - The key is secret: `Debug` shows its type, `kid` and where it came from, never key
///   material, and the key bytes this crate holds are wiped when the last clone is dropped.
///   [`public_jwk`](Self::public_jwk) is what a server registers.
///
/// A `SigningKey` is a [`Signer`]; clones share the key.
///
/// ```
/// use token_refresh::{SigningAlgorithm, SigningKey};
///
/// let pem = "-----BEGIN PRIVATE KEY-----
/// MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC
/// -----END PRIVATE KEY-----";
/// let key = SigningKey::from_pem(pem)?.key_id("key-1");
/// assert_eq!(key.signing_algorithm(), SigningAlgorithm::EdDSA);
/// assert_eq!(key.public_jwk().unwrap()["kty"], "OKP");
/// assert!(!format!("{key:?}").contains("MC4CAQ"));
/// # Ok::<(), token_refresh::Error>(())
/// ```
#[derive(Clone)]
pub struct SigningKey {
    algorithm: SigningAlgorithm,
    key_id: Option<Arc<str>>,
    material: Arc<Material>,
}

enum Material {
    Loaded(Arc<Loaded>),
    File {
        path: PathBuf,
        current: Mutex<(Stamp, Arc<Loaded>)>,
    },
}

/// What identifies a version of a key file: its modification time and length.
type Stamp = (Option<SystemTime>, u64);

/// A parsed key: jsonwebtoken's key (wiped on drop) and what it is.
struct Loaded {
    key: EncodingKey,
    kind: Kind,
    /// The public JWK without `alg`/`kid`; `None` for an HMAC secret.
    public: Option<Value>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Rsa,
    P256,
    Ed25519,
    Hmac,
}

impl Kind {
    fn default_algorithm(self) -> SigningAlgorithm {
        match self {
            Kind::Rsa => SigningAlgorithm::RS256,
            Kind::P256 => SigningAlgorithm::ES256,
            Kind::Ed25519 => SigningAlgorithm::EdDSA,
            Kind::Hmac => SigningAlgorithm::HS256,
        }
    }

    fn signs(self, algorithm: SigningAlgorithm) -> bool {
        use SigningAlgorithm as A;
        matches!(
            (self, algorithm),
            (Kind::Rsa, A::RS256 | A::PS256)
                | (Kind::P256, A::ES256)
                | (Kind::Ed25519, A::EdDSA)
                | (Kind::Hmac, A::HS256)
        )
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Rsa => "an RSA key",
            Kind::P256 => "an EC P-256 key",
            Kind::Ed25519 => "an Ed25519 key",
            Kind::Hmac => "an HMAC secret",
        }
    }
}

fn invalid(problem: impl Into<String>) -> Error {
    Error::InvalidKey {
        problem: problem.into(),
    }
}

impl SigningKey {
    /// Reads a PEM private key: PKCS#8 (`BEGIN PRIVATE KEY`; RSA, EC P-256 or Ed25519),
    /// PKCS#1 (`BEGIN RSA PRIVATE KEY`) or SEC1 (`BEGIN EC PRIVATE KEY`, P-256). The
    /// algorithm follows the key: RS256, ES256 or EdDSA. An encrypted key, a public key, a
    /// certificate, another curve or an RSA key under 2048 bits is an
    /// [`Error::InvalidKey`] saying so.
    pub fn from_pem(pem: impl AsRef<[u8]>) -> Result<Self> {
        Ok(Self::from_loaded(parse_pem(pem.as_ref())?))
    }

    /// Reads a PEM private key (as [`from_pem`](Self::from_pem)) from `path` now, and again
    /// whenever the file's modification time or length changes, so a key rotated on disk (a
    /// Kubernetes secret, a Vault agent template) is used for the next assertion. A file
    /// that cannot be read or parsed is an [`Error::KeyFile`] naming it; a rotated key must
    /// be of the same type (an RSA key stays RSA), else the next signature fails saying so.
    pub fn from_pem_file(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        let (stamp, loaded) = read_key_file(&path)?;
        let algorithm = loaded.kind.default_algorithm();
        Ok(Self {
            algorithm,
            key_id: None,
            material: Arc::new(Material::File {
                path,
                current: Mutex::new((stamp, Arc::new(loaded))),
            }),
        })
    }

    /// Reads a private JWK (RFC 7517): `kty` `RSA` (with `n`, `e`, `d`, `p`, `q`), `EC` with
    /// `crv` `P-256` (`x`, `y`, `d`), `OKP` with `crv` `Ed25519` (`x`, `d`), or `oct` (`k`,
    /// an HMAC secret). Its `kid` and `alg`, when present, become the key's; a JWK without
    /// its private part (`d`, or `k`) is an [`Error::InvalidKey`] saying so.
    pub fn from_jwk(jwk: &str) -> Result<Self> {
        let jwk = Zeroizing::new(jwk.to_owned());
        let value: Value =
            serde_json::from_str(&jwk).map_err(|_| invalid("the JWK is not a JSON object"))?;
        let loaded = parse_jwk(&value)?;
        let mut key = Self::from_loaded(loaded);
        if let Some(kid) = value.get("kid").and_then(Value::as_str) {
            key = key.key_id(kid);
        }
        if let Some(alg) = value.get("alg").and_then(Value::as_str) {
            let algorithm = match alg {
                "HS256" => SigningAlgorithm::HS256,
                "RS256" => SigningAlgorithm::RS256,
                "PS256" => SigningAlgorithm::PS256,
                "ES256" => SigningAlgorithm::ES256,
                "EdDSA" => SigningAlgorithm::EdDSA,
                other => {
                    return Err(invalid(format!(
                        "the JWK's alg {other:?} is not one of HS256, RS256, PS256, ES256, EdDSA"
                    )));
                }
            };
            key = key.algorithm(algorithm)?;
        }
        Ok(key)
    }

    /// An HMAC secret for HS256 (`client_secret_jwt`, or a server that shares a secret). An
    /// empty secret is an [`Error::InvalidKey`].
    pub fn from_secret(secret: impl AsRef<[u8]>) -> Result<Self> {
        let secret = secret.as_ref();
        if secret.is_empty() {
            return Err(invalid("the HMAC secret is empty"));
        }
        Ok(Self::from_loaded(Loaded {
            key: EncodingKey::from_secret(secret),
            kind: Kind::Hmac,
            public: None,
        }))
    }

    fn from_loaded(loaded: Loaded) -> Self {
        Self {
            algorithm: loaded.kind.default_algorithm(),
            key_id: None,
            material: Arc::new(Material::Loaded(Arc::new(loaded))),
        }
    }

    /// Sets the `kid` header of what this key signs, which the server uses to find the key
    /// (Google's `private_key_id`, the key name registered with the server). Default: none,
    /// or the JWK's `kid`.
    pub fn key_id(mut self, kid: impl Into<String>) -> Self {
        self.key_id = Some(Arc::from(kid.into()));
        self
    }

    /// Picks the algorithm: PS256 instead of RS256 for an RSA key; for the other keys there
    /// is one. An algorithm the key cannot sign is an [`Error::InvalidKey`]. Default: RS256
    /// for RSA, ES256 for P-256, EdDSA for Ed25519, HS256 for a secret.
    pub fn algorithm(mut self, algorithm: SigningAlgorithm) -> Result<Self> {
        let kind = self.loaded().kind;
        if !kind.signs(algorithm) {
            return Err(invalid(format!(
                "{} cannot sign {algorithm} (it signs {})",
                kind.name(),
                if kind == Kind::Rsa {
                    "RS256 or PS256".to_owned()
                } else {
                    kind.default_algorithm().to_string()
                }
            )));
        }
        self.algorithm = algorithm;
        Ok(self)
    }

    /// The algorithm this key signs with.
    pub fn signing_algorithm(&self) -> SigningAlgorithm {
        self.algorithm
    }

    /// The public key as a JWK (RFC 7517) with `alg`, `use: "sig"` and `kid` when set, to
    /// register with a server; `None` for an HMAC secret, which has no public part. For a
    /// key read from a file, the key as last read.
    pub fn public_jwk(&self) -> Option<Value> {
        let mut jwk = self.loaded().public.clone()?;
        jwk["alg"] = json!(self.algorithm.name());
        jwk["use"] = json!("sig");
        if let Some(kid) = &self.key_id {
            jwk["kid"] = json!(&**kid);
        }
        Some(jwk)
    }

    /// The key as last loaded, without looking at its file.
    fn loaded(&self) -> Arc<Loaded> {
        match &*self.material {
            Material::Loaded(loaded) => Arc::clone(loaded),
            Material::File { current, .. } => Arc::clone(&lock(current).1),
        }
    }

    /// The key to sign with now: for a file key, re-read if the file changed.
    fn current(&self) -> Result<Arc<Loaded>> {
        let Material::File { path, current } = &*self.material else {
            return Ok(self.loaded());
        };
        let stamp = stamp(path)?;
        let (known, loaded) = {
            let current = lock(current);
            (current.0, Arc::clone(&current.1))
        };
        if known == stamp {
            return Ok(loaded);
        }
        // A small file read once per assertion at most: not worth a blocking-pool hop.
        let (stamp, fresh) = read_key_file(path)?;
        if fresh.kind != loaded.kind {
            return Err(Error::KeyFile {
                path: path.clone(),
                problem: format!(
                    "now holds {}, but it held {} and signs {}: a rotated key must be of the \
                     same type",
                    fresh.kind.name(),
                    loaded.kind.name(),
                    self.algorithm
                ),
            });
        }
        let fresh = Arc::new(fresh);
        *lock(current) = (stamp, Arc::clone(&fresh));
        Ok(fresh)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn stamp(path: &Path) -> Result<Stamp> {
    let metadata = std::fs::metadata(path).map_err(|e| Error::KeyFile {
        path: path.to_owned(),
        problem: format!("cannot read: {e}"),
    })?;
    Ok((metadata.modified().ok(), metadata.len()))
}

fn read_key_file(path: &Path) -> Result<(Stamp, Loaded)> {
    let problem = |problem: String| Error::KeyFile {
        path: path.to_owned(),
        problem,
    };
    let stamp = stamp(path)?;
    let pem =
        Zeroizing::new(std::fs::read(path).map_err(|e| problem(format!("cannot read: {e}")))?);
    let loaded = parse_pem(&pem).map_err(|e| match e {
        Error::InvalidKey { problem: p } => problem(p),
        other => other,
    })?;
    Ok((stamp, loaded))
}

/// A private key read from PEM, before it becomes a [`Loaded`] key (or a DPoP key).
pub(crate) enum Parsed {
    Rsa(rsa::RsaPrivateKey),
    P256(p256::SecretKey),
    Ed25519(ed25519_dalek::SigningKey),
}

fn parse_pem(pem: &[u8]) -> Result<Loaded> {
    match parse_private_pem(pem)? {
        Parsed::Rsa(key) => rsa_key(&key),
        Parsed::P256(key) => p256_key(&key),
        Parsed::Ed25519(key) => ed25519_key(&key),
    }
}

/// The public JWK (without `alg`/`kid`) of a parsed key.
pub(crate) fn public_jwk_of(key: &Parsed) -> Result<Value> {
    let loaded = match key {
        Parsed::Rsa(key) => rsa_key(key)?,
        Parsed::P256(key) => p256_key(key)?,
        Parsed::Ed25519(key) => ed25519_key(key)?,
    };
    loaded
        .public
        .ok_or_else(|| invalid("the key has no public part"))
}

/// Reads a PKCS#8, PKCS#1 or SEC1 private key, telling RSA, P-256 and Ed25519 apart.
pub(crate) fn parse_private_pem(pem: &[u8]) -> Result<Parsed> {
    let text = std::str::from_utf8(pem).map_err(|_| invalid("the PEM is not text"))?;
    let (label, der) = p256::pkcs8::der::pem::decode_vec(text.trim().as_bytes())
        .map_err(|_| invalid("not a PEM block (-----BEGIN ...-----, base64, -----END ...-----)"))?;
    let der = Zeroizing::new(der);
    match label {
        "RSA PRIVATE KEY" => {
            let key = rsa::RsaPrivateKey::from_pkcs1_der(&der)
                .map_err(|_| invalid("the RSA PRIVATE KEY (PKCS#1) does not parse"))?;
            Ok(Parsed::Rsa(key))
        }
        "EC PRIVATE KEY" => {
            let key = p256::SecretKey::from_sec1_der(&der).map_err(|_| {
                invalid("the EC PRIVATE KEY is not a P-256 key: only P-256 (ES256) is supported")
            })?;
            Ok(Parsed::P256(key))
        }
        "PRIVATE KEY" => {
            use rsa::pkcs8::DecodePrivateKey as _;
            if let Ok(key) = rsa::RsaPrivateKey::from_pkcs8_der(&der) {
                return Ok(Parsed::Rsa(key));
            }
            if let Ok(key) = p256::SecretKey::from_pkcs8_der(&der) {
                return Ok(Parsed::P256(key));
            }
            if let Ok(key) = ed25519_dalek::SigningKey::from_pkcs8_der(&der) {
                return Ok(Parsed::Ed25519(key));
            }
            Err(invalid(
                "the PKCS#8 PRIVATE KEY is of an unsupported type: RSA, EC P-256 and Ed25519 \
                 are supported",
            ))
        }
        "ENCRYPTED PRIVATE KEY" => Err(invalid(
            "the key is encrypted: decrypt it first, e.g. `openssl pkcs8 -in key.pem -out \
             plain.pem`",
        )),
        "PUBLIC KEY" | "RSA PUBLIC KEY" | "CERTIFICATE" => Err(invalid(format!(
            "this is a {}, not a private key: give the private key it belongs to",
            label.to_lowercase()
        ))),
        other => Err(invalid(format!(
            "a PEM block labelled {other:?}; expected PRIVATE KEY, RSA PRIVATE KEY or EC \
             PRIVATE KEY"
        ))),
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn rsa_key(key: &rsa::RsaPrivateKey) -> Result<Loaded> {
    let bits = key.size() * 8;
    if bits < MIN_RSA_BITS {
        return Err(invalid(format!(
            "the RSA key has {bits} bits; at least {MIN_RSA_BITS} are required"
        )));
    }
    let der = key
        .to_pkcs1_der()
        .map_err(|_| invalid("the RSA key does not encode"))?;
    Ok(Loaded {
        key: EncodingKey::from_rsa_der(der.as_bytes()),
        kind: Kind::Rsa,
        public: Some(json!({
            "kty": "RSA",
            "n": b64(&key.n().to_bytes_be()),
            "e": b64(&key.e().to_bytes_be()),
        })),
    })
}

fn p256_key(key: &p256::SecretKey) -> Result<Loaded> {
    use p256::elliptic_curve::sec1::ToEncodedPoint as _;
    use p256::pkcs8::EncodePrivateKey as _;
    let der = key
        .to_pkcs8_der()
        .map_err(|_| invalid("the P-256 key does not encode"))?;
    let point = key.public_key().to_encoded_point(false);
    let (Some(x), Some(y)) = (point.x(), point.y()) else {
        return Err(invalid("the P-256 key has no public point"));
    };
    Ok(Loaded {
        key: EncodingKey::from_ec_der(der.as_bytes()),
        kind: Kind::P256,
        public: Some(json!({ "kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y) })),
    })
}

fn ed25519_key(key: &ed25519_dalek::SigningKey) -> Result<Loaded> {
    let der = key
        .to_pkcs8_der()
        .map_err(|_| invalid("the Ed25519 key does not encode"))?;
    Ok(Loaded {
        key: EncodingKey::from_ed_der(der.as_bytes()),
        kind: Kind::Ed25519,
        public: Some(json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": b64(key.verifying_key().as_bytes()),
        })),
    })
}

fn parse_jwk(jwk: &Value) -> Result<Loaded> {
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
            let number = |bytes: &[u8]| rsa::BigUint::from_bytes_be(bytes);
            let key = rsa::RsaPrivateKey::from_components(
                number(&field("n")?),
                number(&field("e")?),
                number(&d),
                vec![number(&field("p")?), number(&field("q")?)],
            )
            .map_err(|_| invalid("the RSA JWK's members do not form a valid key"))?;
            key.validate()
                .map_err(|_| invalid("the RSA JWK's members do not form a valid key"))?;
            rsa_key(&key)
        }
        ("EC", "P-256") => {
            let d = private("d")?;
            let key = p256::SecretKey::from_slice(&d)
                .map_err(|_| invalid("the EC JWK's d is not a P-256 private key"))?;
            let loaded = p256_key(&key)?;
            let public = loaded.public.as_ref().expect("an EC key has a public part");
            if jwk.get("x") != public.get("x") || jwk.get("y") != public.get("y") {
                return Err(invalid("the EC JWK's x and y do not belong to its d"));
            }
            Ok(loaded)
        }
        ("EC", other) => Err(invalid(format!(
            "an EC JWK on curve {other:?}: only P-256 (ES256) is supported"
        ))),
        ("OKP", "Ed25519") => {
            let d = private("d")?;
            let seed: [u8; 32] = d
                .as_slice()
                .try_into()
                .map_err(|_| invalid("the Ed25519 JWK's d is not 32 bytes"))?;
            let key = ed25519_dalek::SigningKey::from_bytes(&seed);
            let loaded = ed25519_key(&key)?;
            let public = loaded
                .public
                .as_ref()
                .expect("an Ed25519 key has a public part");
            if jwk.get("x").is_some() && jwk.get("x") != public.get("x") {
                return Err(invalid("the Ed25519 JWK's x does not belong to its d"));
            }
            Ok(loaded)
        }
        ("OKP", other) => Err(invalid(format!(
            "an OKP JWK on curve {other:?}: only Ed25519 is supported"
        ))),
        ("oct", _) => {
            let k = private("k")?;
            if k.is_empty() {
                return Err(invalid("the oct JWK's k is empty"));
            }
            Ok(Loaded {
                key: EncodingKey::from_secret(&k),
                kind: Kind::Hmac,
                public: None,
            })
        }
        (other, _) => Err(invalid(format!(
            "a JWK with kty {other:?}: expected RSA, EC, OKP or oct"
        ))),
    }
}

#[async_trait::async_trait]
impl Signer for SigningKey {
    fn algorithm(&self) -> SigningAlgorithm {
        self.algorithm
    }

    fn key_id(&self) -> Option<&str> {
        self.key_id.as_deref()
    }

    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        let loaded = self.current()?;
        crate::grants::jwt_bearer::install_crypto_provider();
        let signature =
            jsonwebtoken::crypto::sign(message, &loaded.key, self.algorithm.jsonwebtoken())
                // jsonwebtoken's errors name the failure kind, never the key.
                .map_err(|e| Error::Signing(e.to_string()))?;
        URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| Error::Signing("jsonwebtoken returned a malformed signature".into()))
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("SigningKey");
        s.field("algorithm", &self.algorithm)
            .field("key_id", &self.key_id.as_deref());
        if let Material::File { path, .. } = &*self.material {
            s.field("file", path);
        }
        s.field("key", &"[REDACTED]").finish()
    }
}
